// Poll-driven sockets for what Node cannot create or adopt: Unix datagram and
// seqpacket sockets (and UDP, so that Node is never the only holder of a UDP fd).
//
// Each object owns its fd and drives it with a uv_poll_t (plus a uv_timer_t for
// retries) on the loop of the environment that created it, from
// napi_get_uv_event_loop, so it works the same in worker threads. The libuv
// handles live on the heap until libuv has closed them, which may be after the
// JS object is gone. One async cleanup hook per environment closes every handle
// still open when the environment is torn down (worker exit, process exit), and
// holds the teardown until libuv has finished with them: a worker's loop must
// hold no open handle when it is closed.
//
// JS callbacks run through MakeCallback in the object's async context, inside a
// HandleScope. An exception a callback throws becomes an uncaught exception of
// the process (napi_fatal_exception), as if a Node event listener had thrown it.
// After close(), nothing is ever called back.

#include "common.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <csignal>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <memory>
#include <unordered_set>
#include <vector>

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

namespace ecdysis {
namespace {

// Messages read (or connections accepted) per wakeup, so that one busy socket
// cannot starve the rest of the loop; level-triggered polling brings us back.
constexpr int kMessagesPerWakeup = 64;
constexpr int kAcceptsPerWakeup = 64;
// send() returns false once this many bytes wait in the queue (stream-like).
constexpr size_t kHighWaterMark = 64 * 1024;
// The receive buffer: at least SO_RCVBUF, never below the largest UDP payload.
constexpr size_t kMinReceiveSize = 64 * 1024;
constexpr size_t kMaxReceiveSize = 8 * 1024 * 1024;
// The most fds one message carries either way (SCM_RIGHTS).
constexpr size_t kMaxFdsPerMessage = 64;
// Retrying sends the kernel refused although poll said writable, backing off.
constexpr uint64_t kMaxSendRetryMs = 64;
// After EMFILE/ENFILE/ENOBUFS/ENOMEM on accept: the pending connection keeps the
// socket readable, so wait before trying again instead of spinning.
constexpr uint64_t kAcceptRetryMs = 100;

class PollOwner {
 public:
  virtual void OnPoll(int status, int events) = 0;
  virtual void OnTimer() = 0;
  // The environment is going away: close the handles and the fd, call nothing.
  virtual void OnTeardown() = 0;

 protected:
  ~PollOwner() = default;
};

struct EnvState;

// One object's libuv handles. Freed when libuv has closed both.
struct LoopHandles {
  uv_poll_t poll;
  uv_timer_t timer;
  PollOwner* owner = nullptr;  // nullptr once the owner let go of them
  EnvState* state = nullptr;
  int open = 2;
};

// Per environment (napi instance data): each worker thread has its own.
struct EnvState {
  std::unordered_set<LoopHandles*> handles;  // not yet closed by libuv
  napi_async_cleanup_hook_handle cleanup_hook = nullptr;
  bool tearing_down = false;
  // Shared by every socket of the environment: a message is copied out of it
  // into its own Buffer before any JS runs.
  std::vector<char> receive_buffer;
};

void FinishTeardownIfDone(EnvState* state) {
  if (!state->tearing_down || !state->handles.empty() || state->cleanup_hook == nullptr) return;
  napi_async_cleanup_hook_handle hook = state->cleanup_hook;
  state->cleanup_hook = nullptr;
  napi_remove_async_cleanup_hook(hook);  // tells Node this environment's teardown may go on
}

void OnHandleClosed(uv_handle_t* handle) {
  auto* handles = static_cast<LoopHandles*>(handle->data);
  if (--handles->open > 0) return;
  EnvState* state = handles->state;
  state->handles.erase(handles);
  delete handles;
  FinishTeardownIfDone(state);
}

void OnEnvTeardown(napi_async_cleanup_hook_handle, void* arg) {
  auto* state = static_cast<EnvState*>(arg);
  state->tearing_down = true;
  std::vector<LoopHandles*> open(state->handles.begin(), state->handles.end());
  for (LoopHandles* handles : open) {
    if (handles->owner != nullptr) handles->owner->OnTeardown();
  }
  FinishTeardownIfDone(state);
}

void PollThunk(uv_poll_t* poll, int status, int events) {
  auto* handles = static_cast<LoopHandles*>(poll->data);
  if (handles->owner != nullptr) handles->owner->OnPoll(status, events);
}

void TimerThunk(uv_timer_t* timer) {
  auto* handles = static_cast<LoopHandles*>(timer->data);
  if (handles->owner != nullptr) handles->owner->OnTimer();
}

Napi::FunctionReference Callback(const Napi::Object& callbacks, const char* name, bool required) {
  Napi::Value value = callbacks.Get(name);
  if (!required && value.IsUndefined()) return Napi::FunctionReference();
  if (!value.IsFunction()) throw TypeError(callbacks.Env(), std::string("callbacks.") + name + " must be a function");
  return Napi::Persistent(value.As<Napi::Function>());
}

Napi::Object ArgCallbacks(const Napi::CallbackInfo& info, size_t index, const char* usage) {
  if (info.Length() <= index || !info[index].IsObject()) throw TypeError(info.Env(), usage);
  return info[index].As<Napi::Object>();
}

int GetIntSockopt(Napi::Env env, int fd, int name) {
  int value = 0;
  socklen_t len = sizeof(value);
  if (getsockopt(fd, SOL_SOCKET, name, &value, &len) < 0) throw SystemError(env, errno, "getsockopt");
  return value;
}

// The error that made the kernel report POLLERR (reading SO_ERROR clears it).
// With none pending, what remains is on the error queue: drop it, or poll would
// report it again at once.
int TakeSocketError(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  if (err != 0) return err;
  char scratch[256];
  for (int i = 0; i < kMessagesPerWakeup; ++i) {
    iovec iov = {scratch, sizeof(scratch)};
    msghdr message;
    std::memset(&message, 0, sizeof(message));
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    if (RetryOnEintr([&] { return recvmsg(fd, &message, MSG_ERRQUEUE | MSG_DONTWAIT); }) < 0) break;
  }
  return 0;
}

// A message sent before SO_PASSCRED was on carries no credentials: the kernel
// reports pid 0 and the overflow uid (65534 unless changed), which is nobody's
// real identity there. (A sender in another pid namespace has pid 0 too, with
// its real uid.)
bool CredentialsKnown(const ucred& credentials) {
  static const uid_t overflow = [] {
    // Parsed by hand: newer glibc routes the scanf and strto* family to
    // symbols the prebuilds' glibc 2.28 floor lacks.
    uid_t value = 0;
    char text[16] = {0};
    FdGuard file(RetryOnEintr([] { return open("/proc/sys/kernel/overflowuid", O_RDONLY | O_CLOEXEC); }));
    ssize_t size = file.get() < 0 ? -1 : RetryOnEintr([&] { return read(file.get(), text, sizeof(text) - 1); });
    for (ssize_t i = 0; i < size && text[i] >= '0' && text[i] <= '9'; i++) value = value * 10 + static_cast<uid_t>(text[i] - '0');
    return size > 0 && value > 0 ? value : static_cast<uid_t>(65534);
  }();
  return credentials.pid != 0 || credentials.uid != overflow;
}

// What PacketSocket and SeqpacketServer share: the fd, the libuv handles, the
// reference that keeps the JS object alive while it can be called back, the
// async context, and calling back into JS.
template <typename T>
class PollWrap : public Napi::ObjectWrap<T>, public PollOwner {
 public:
  explicit PollWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<T>(info) {}

  // Reached when the JS object was collected (then it was idle: an active
  // object is referenced), or after teardown (then the handles are gone already).
  ~PollWrap() { ReleaseHandles(); }

  void OnPoll(int status, int events) override {
    Dispatch([&] { static_cast<T*>(this)->HandlePoll(status, events); });
  }

  void OnTimer() override {
    timer_active_ = false;
    Dispatch([&] { static_cast<T*>(this)->HandleTimer(); });
  }

  void OnTeardown() override {
    closed_ = true;
    ReleaseHandles();
  }

  // close(): idempotent. Closes the fd at once; nothing is called back afterwards.
  void Close(const Napi::CallbackInfo& info) { CloseNow(); }

  void CloseNow() {
    if (closed_) return;
    closed_ = true;
    ReleaseHandles();
    static_cast<T*>(this)->ReleaseState();
    callbacks_.Reset();
    UpdateReference();
  }

  // ref()/unref(): whether this object keeps the event loop alive while active
  // (like a Node handle's ref()/unref()).
  void RefLoop(const Napi::CallbackInfo& info) { SetLoopRef(true); }
  void UnrefLoop(const Napi::CallbackInfo& info) { SetLoopRef(false); }

  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

 protected:
  // Takes ownership of `fd`, once every argument was validated: from here on,
  // close() closes it. If this throws, the caller still owns the fd.
  void Attach(const Napi::CallbackInfo& info, int fd, const Napi::Object& callbacks, const char* resource_name) {
    Napi::Env env = info.Env();
    auto* state = env.GetInstanceData<EnvState>();
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) throw Napi::Error::New(env, "no event loop");
    async_context_ = std::make_unique<Napi::AsyncContext>(env, resource_name, info.This().As<Napi::Object>());
    auto handles = std::make_unique<LoopHandles>();
    // Also makes the fd non-blocking (O_NONBLOCK is shared with every dup of it).
    int err = uv_poll_init_socket(loop, &handles->poll, fd);
    if (err < 0) throw SystemError(env, -err, "uv_poll_init");
    uv_timer_init(loop, &handles->timer);  // only touches memory; cannot fail
    handles->poll.data = handles.get();
    handles->timer.data = handles.get();
    handles->owner = this;
    handles->state = state;
    state->handles.insert(handles.get());
    handles_ = handles.release();
    fd_ = fd;
    callbacks_ = Napi::Persistent(callbacks);
  }

  // Watch for these libuv events (UV_READABLE | UV_WRITABLE, or 0 to stop).
  void WatchFor(int events) {
    if (handles_ != nullptr && events != events_) {
      if (events == 0) {
        uv_poll_stop(&handles_->poll);
      } else {
        // Fails only with EEXIST (another handle polls this fd), which Attach ruled out.
        uv_poll_start(&handles_->poll, events, PollThunk);
      }
      events_ = events;
    }
    UpdateReference();
  }

  // libuv stopped the poll itself (it does on POLLERR): forget what we watched.
  void PollStopped() {
    if (handles_ != nullptr) uv_poll_stop(&handles_->poll);
    events_ = 0;
    UpdateReference();
  }

  void StartTimer(uint64_t ms) {
    if (handles_ == nullptr) return;
    uv_timer_start(&handles_->timer, TimerThunk, ms, 0);
    timer_active_ = true;
    UpdateReference();
  }

  void StopTimer() {
    if (handles_ != nullptr && timer_active_) uv_timer_stop(&handles_->timer);
    timer_active_ = false;
    UpdateReference();
  }

  // Calls a JS callback the way Node calls its own listeners. Returns false when
  // the caller must stop: this object was closed, or the callback threw (then the
  // exception is the process's uncaught exception).
  //
  // The raw N-API call on purpose: when the callback ends this environment
  // (process.exit() in a worker, or worker.terminate() meanwhile), what is
  // "thrown" is V8's termination, not a value; node-addon-api would try to wrap
  // it in an Error, cannot run JS any more, and abort the process.
  bool Emit(const Napi::FunctionReference& callback, const std::initializer_list<napi_value>& args) {
    if (closed_) return false;
    if (callback.IsEmpty()) return true;
    napi_env env = this->Env();
    napi_value result = nullptr;
    napi_status status = napi_make_callback(env, *async_context_, callbacks_.Value(), callback.Value(), args.size(),
                                            args.begin(), &result);
    if (status == napi_ok) return !closed_;
    bool pending = false;
    napi_value exception = nullptr;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
        napi_get_and_clear_last_exception(env, &exception) == napi_ok) {
      // Node ignores this when the environment can no longer run JS.
      napi_fatal_exception(env, exception);
    }
    return false;
  }

  int fd_ = -1;
  bool closed_ = false;
  bool timer_active_ = false;

 private:
  // Runs a libuv callback's work inside a HandleScope, with the JS object held
  // (callbacks may close it and drop the last reference), then re-arms the poll.
  template <typename Work>
  void Dispatch(Work work) {
    napi_env env = this->Env();
    napi_handle_scope scope = nullptr;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    Guard(env, [&] {
      this->Value();  // a local handle: the object lives at least as long as this scope
      work();
    });
    if (!closed_) Guard(env, [&] { static_cast<T*>(this)->Rearm(); });
    napi_close_handle_scope(env, scope);
  }

  // An exception escaping `step` comes not from a callback (Emit handles those)
  // but from the addon's own N-API use, such as a failed allocation. It must not
  // unwind through libuv (a C++ abort): it becomes an uncaught exception too.
  template <typename Step>
  static void Guard(napi_env env, Step step) {
    try {
      step();
    } catch (const Napi::Error& error) {
      napi_fatal_exception(env, error.Value());
    } catch (const std::exception& error) {
      napi_value message = nullptr;
      napi_value exception = nullptr;
      if (napi_create_string_utf8(env, error.what(), NAPI_AUTO_LENGTH, &message) == napi_ok &&
          napi_create_error(env, nullptr, message, &exception) == napi_ok) {
        napi_fatal_exception(env, exception);
      }
    }
  }

  // The JS object must outlive any poll or timer that can call it back.
  void UpdateReference() {
    bool active = !closed_ && (events_ != 0 || timer_active_);
    if (active && !referenced_) {
      referenced_ = true;
      this->Ref();
    } else if (!active && referenced_) {
      referenced_ = false;
      this->Unref();
    }
  }

  void SetLoopRef(bool on) {
    if (handles_ == nullptr) return;
    auto apply = on ? uv_ref : uv_unref;
    apply(reinterpret_cast<uv_handle_t*>(&handles_->poll));
    apply(reinterpret_cast<uv_handle_t*>(&handles_->timer));
  }

  // Stops and closes the libuv handles (freed once libuv is done with them) and
  // the fd. Touches no JS, so it is safe at environment teardown.
  void ReleaseHandles() {
    if (handles_ == nullptr) return;
    LoopHandles* handles = handles_;
    handles_ = nullptr;
    handles->owner = nullptr;
    // uv_close stops the poll at once (the fd leaves epoll), so closing the fd
    // right after is safe.
    uv_close(reinterpret_cast<uv_handle_t*>(&handles->poll), OnHandleClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(&handles->timer), OnHandleClosed);
    events_ = 0;
    timer_active_ = false;
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

  LoopHandles* handles_ = nullptr;
  int events_ = 0;
  bool referenced_ = false;
  std::unique_ptr<Napi::AsyncContext> async_context_;
  Napi::ObjectReference callbacks_;  // `this` for the callbacks
};

// new PacketSocket(fd, mode, { onMessage, onError, onEnd?, onDrain? }, { receiveFds?, credentials? })
//   'datagram': an unconnected (or connected) SOCK_DGRAM socket, Unix or UDP;
//     each message comes with its sender's address (and port for UDP).
//   'connected': a SOCK_SEQPACKET connection; no addresses; a 0-byte read is the
//     end of the connection.
// fds a peer passes with a message (SCM_RIGHTS) are taken only with
// `receiveFds` ('connected' mode: the hand-over channel between generations).
// Otherwise recvmsg gets no room for them and the kernel drops them (closes its
// references and sets MSG_CTRUNC): a peer cannot make this process hold an fd.
// `credentials` ('datagram' mode, Unix; implied when the socket has SO_PASSCRED
// already): SO_PASSCRED, and each message comes
// with its sender's { pid, uid, gid } (pid in this pid namespace), the uid of
// which send() can require of the socket file it replies to.
class PacketSocket : public PollWrap<PacketSocket> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "PacketSocket",
                       {
                           InstanceMethod("startReading", &PacketSocket::StartReading),
                           InstanceMethod("stopReading", &PacketSocket::StopReading),
                           InstanceMethod("send", &PacketSocket::Send),
                           InstanceMethod("sendWithFds", &PacketSocket::SendWithFds),
                           InstanceMethod("shutdown", &PacketSocket::Shutdown),
                           InstanceMethod("close", &PacketSocket::Close),
                           InstanceMethod("ref", &PacketSocket::RefLoop),
                           InstanceMethod("unref", &PacketSocket::UnrefLoop),
                           InstanceAccessor("writableLength", &PacketSocket::WritableLength, nullptr),
                           InstanceAccessor("writableHighWaterMark", &PacketSocket::HighWaterMark, nullptr),
                           InstanceAccessor("fd", &PacketSocket::GetFd, nullptr),
                       });
  }

  explicit PacketSocket(const Napi::CallbackInfo& info) : PollWrap<PacketSocket>(info) {
    Napi::Env env = info.Env();
    int fd = ArgFd(info, 0);
    std::string mode = ArgString(info, 1, "mode must be 'datagram' or 'connected'");
    if (mode != "datagram" && mode != "connected") {
      throw TypeError(env, "mode must be 'datagram' or 'connected'", "ERR_INVALID_ARG_VALUE");
    }
    connected_ = mode == "connected";
    Napi::Object callbacks = ArgCallbacks(info, 2, "new PacketSocket(fd, mode, callbacks)");
    on_message_ = Callback(callbacks, "onMessage", true);
    on_error_ = Callback(callbacks, "onError", true);
    on_end_ = Callback(callbacks, "onEnd", false);
    on_drain_ = Callback(callbacks, "onDrain", false);
    int type = GetIntSockopt(env, fd, SO_TYPE);
    if (connected_ && type != SOCK_SEQPACKET) {
      throw TypeError(env, "mode 'connected' needs a SOCK_SEQPACKET socket", "ERR_INVALID_ARG_VALUE");
    }
    if (!connected_ && type != SOCK_DGRAM) {
      throw TypeError(env, "mode 'datagram' needs a SOCK_DGRAM socket", "ERR_INVALID_ARG_VALUE");
    }
    Napi::Object options = ArgOptions(info, 3, "options must be an object");
    receive_fds_ = BoolOption(options, "receiveFds");
    if (receive_fds_ && !connected_) throw TypeError(env, "options.receiveFds is for a 'connected' PacketSocket", "ERR_INVALID_ARG_VALUE");
    credentials_ = BoolOption(options, "credentials");
    domain_ = GetIntSockopt(env, fd, SO_DOMAIN);
    if (credentials_ && (connected_ || domain_ != AF_UNIX)) {
      throw TypeError(env, "options.credentials is for a Unix 'datagram' PacketSocket", "ERR_INVALID_ARG_VALUE");
    }
    // Senders' credentials are attached to what is sent from now on (a socket
    // created for it has the option from before its bind).
    if (credentials_ && SetIntOption(fd, SOL_SOCKET, SO_PASSCRED, 1) < 0) throw SystemError(env, errno, "setsockopt");
    // A Unix datagram socket bound with SO_PASSCRED (bindUnixDatagram's
    // passCredentials) reports its senders without being asked.
    if (!connected_ && domain_ == AF_UNIX && GetIntSockopt(env, fd, SO_PASSCRED) != 0) credentials_ = true;
    size_t rcvbuf = static_cast<size_t>(std::max(0, GetIntSockopt(env, fd, SO_RCVBUF)));
    receive_size_ = std::min(std::max(kMinReceiveSize, rcvbuf), kMaxReceiveSize);
    Attach(info, fd, callbacks, "ecdysis:PacketSocket");
  }

  void HandlePoll(int status, int events) {
    if (status < 0) {
      PollStopped();
      int err = TakeSocketError(fd_);
      // A seqpacket peer that closed with our messages unread: what it sent is
      // still readable, then the end. Anything else is reported.
      if (err != 0 && !(connected_ && (err == ECONNRESET || err == EPIPE))) {
        Emit(on_error_, {SystemError(Env(), err, connected_ ? "recv" : "recvmsg").Value()});
      }
      return;
    }
    if ((events & UV_WRITABLE) && !Flush(false)) return;
    if ((events & UV_READABLE) && reading_) ReadMessages();
  }

  void HandleTimer() { Flush(true); }

  void Rearm() {
    int events = 0;
    if (reading_ && !ended_) events |= UV_READABLE;
    if (!queue_.empty() && !timer_active_) events |= UV_WRITABLE;
    WatchFor(events);
  }

  void ReleaseState() {
    reading_ = false;
    for (Outgoing& dropped : queue_) CloseFds(dropped.fds);
    queue_.clear();
    queued_bytes_ = 0;
    on_message_.Reset();
    on_error_.Reset();
    on_end_.Reset();
    on_drain_.Reset();
  }

 private:
  struct Outgoing {
    std::vector<char> data;
    bool addressed = false;
    SockAddr to;
    // Duplicates (close-on-exec) of fds to pass with the message, owned by the
    // queue: closed once sent or dropped.
    std::vector<int> fds;
    // The checked socket file a reply goes to (`to` is /proc/self/fd/N of it).
    FdGuard via{-1};
  };

  static void CloseFds(std::vector<int>& fds) {
    for (int fd : fds) close(fd);
    fds.clear();
  }

  void StartReading(const Napi::CallbackInfo& info) {
    if (closed_ || ended_) return;
    reading_ = true;
    Rearm();
  }

  // Messages wait in the kernel meanwhile (and senders get EAGAIN, or UDP drops).
  void StopReading(const Napi::CallbackInfo& info) {
    reading_ = false;
    if (!closed_) Rearm();
  }

  // A reply to a Unix path goes only to a socket file of the sender: the path is
  // opened O_PATH|O_NOFOLLOW (a symlink the sender put there is never followed),
  // must be a socket owned by `owner`, and the datagram goes through
  // /proc/self/fd/N of that very file, so nothing can be swapped in meanwhile.
  void CheckReplyPath(Napi::Env env, const std::string& path, int owner, Outgoing* message) {
    FdGuard file(RetryOnEintr([&] { return open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC); }));
    if (file.get() < 0) throw SystemError(env, errno, "sendto", path);
    struct stat st;
    if (fstat(file.get(), &st) < 0) throw SystemError(env, errno, "sendto", path);
    if (!S_ISSOCK(st.st_mode) || st.st_uid != static_cast<uid_t>(owner)) {
      Napi::Error error = MakeSystemError(env, S_ISSOCK(st.st_mode) ? EPERM : ENOTSOCK, "sendto",
                                          path + ": not a socket file of the sender (uid " + std::to_string(owner) + ")");
      error.Set("address", Napi::String::New(env, path));
      throw error;
    }
    char via[32];
    std::snprintf(via, sizeof(via), "/proc/self/fd/%d", file.get());
    message->to = ParseUnixOrThrow(env, via, "sendto");
    message->to.where = UnixWhere(path);
    message->via = std::move(file);
  }

  // send(data, address?, port?, owner?) -> false once the queue holds at least
  // the high-water mark; onDrain follows when it is empty again. `owner` (a uid;
  // Unix filesystem paths only): see CheckReplyPath.
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Bytes data = ArgBytes(info, 0, "data must be a Buffer");
    Outgoing message;
    message.addressed = info.Length() > 1 && !info[1].IsUndefined();
    const char* syscall = message.addressed ? "sendto" : "send";
    if (connected_) {
      if (message.addressed) throw TypeError(env, "a 'connected' PacketSocket sends to its peer: pass no address", "ERR_INVALID_ARG_VALUE");
      // Linux delivers an empty seqpacket message as a 0-byte read: the peer
      // could not tell it from the end of the connection.
      if (data.length == 0) throw TypeError(env, "an empty message cannot be sent on a 'connected' socket", "ERR_INVALID_ARG_VALUE");
    } else if (message.addressed) {
      std::string address = ArgString(info, 1, "address must be a string");
      message.to = domain_ == AF_UNIX ? ParseUnixOrThrow(env, address, syscall)
                                      : ParseInetOrThrow(env, address, ArgPort(info, 2), domain_);
      if (info.Length() > 3 && !info[3].IsUndefined()) {
        int owner = ArgInt(info, 3, 0, INT_MAX, "owner must be a uid");
        if (domain_ != AF_UNIX) throw TypeError(env, "owner is for Unix paths", "ERR_INVALID_ARG_VALUE");
        if (address[0] != '\0') CheckReplyPath(env, address, owner, &message);
      }
    }
    if (closed_) throw SystemError(env, EBADF, syscall, message.to.where);
    if (shutdown_requested_) throw SystemError(env, EPIPE, syscall);
    if (queue_.empty()) {
      if (SendOne(data.data, data.length, message) >= 0) return Napi::Boolean::New(env, true);
      if (errno != EAGAIN && errno != EWOULDBLOCK) throw SystemError(env, errno, syscall, message.to.where);
    }
    message.data.assign(data.data, data.data + data.length);
    queued_bytes_ += data.length;
    queue_.push_back(std::move(message));
    Rearm();
    bool below = queued_bytes_ < kHighWaterMark;
    if (!below) need_drain_ = true;
    return Napi::Boolean::New(env, below);
  }

  // sendWithFds(data, fds): 'connected' mode only; the fds go with the message
  // (SCM_RIGHTS); the caller keeps its own. Same queueing as send().
  Napi::Value SendWithFds(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!connected_) throw TypeError(env, "sendWithFds() is for a 'connected' PacketSocket", "ERR_INVALID_ARG_VALUE");
    Bytes data = ArgBytes(info, 0, "data must be a Buffer");
    if (data.length == 0) throw TypeError(env, "an empty message cannot be sent on a 'connected' socket", "ERR_INVALID_ARG_VALUE");
    if (info.Length() < 2 || !info[1].IsArray()) throw TypeError(env, "fds must be an array of fds");
    Napi::Array list = info[1].As<Napi::Array>();
    if (list.Length() > kMaxFdsPerMessage) throw TypeError(env, "at most 64 fds per message", "ERR_OUT_OF_RANGE");
    Outgoing message;
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value value = list.Get(i);
      double number = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
      if (!std::isfinite(number) || number < 0 || number > 2147483647 || !IsWhole(number)) {
        throw TypeError(env, "every fd must be a non-negative integer");
      }
      message.fds.push_back(static_cast<int>(number));
    }
    if (closed_) throw SystemError(env, EBADF, "sendmsg");
    if (shutdown_requested_) throw SystemError(env, EPIPE, "sendmsg");
    if (queue_.empty()) {
      if (SendOne(data.data, data.length, message) >= 0) {
        message.fds.clear();  // the caller's own fds: not ours to close
        return Napi::Boolean::New(env, true);
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK) throw SystemError(env, errno, "sendmsg");
    }
    // Queued: keep duplicates, so the caller may close its fds at once.
    for (int& fd : message.fds) {
      int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (copy < 0) {
        int err = errno;
        for (int& done : message.fds) {
          if (&done == &fd) break;
          close(done);
        }
        throw SystemError(env, err, "fcntl");
      }
      fd = copy;
    }
    message.data.assign(data.data, data.data + data.length);
    queued_bytes_ += data.length;
    queue_.push_back(std::move(message));
    Rearm();
    bool below = queued_bytes_ < kHighWaterMark;
    if (!below) need_drain_ = true;
    return Napi::Boolean::New(env, below);
  }

  // shutdown(): 'connected' mode only. The peer reads the end once every queued
  // message was sent; sending afterwards throws EPIPE.
  void Shutdown(const Napi::CallbackInfo& info) {
    if (!connected_) throw TypeError(info.Env(), "shutdown() is for a 'connected' PacketSocket", "ERR_INVALID_ARG_VALUE");
    if (closed_ || shutdown_requested_) return;
    shutdown_requested_ = true;
    if (queue_.empty()) {
      shut_down_ = true;
      if (shutdown(fd_, SHUT_WR) < 0 && errno != ENOTCONN) throw SystemError(info.Env(), errno, "shutdown");
    }
  }

  Napi::Value WritableLength(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(queued_bytes_));
  }

  Napi::Value HighWaterMark(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(kHighWaterMark));
  }

  ssize_t SendOne(const char* data, size_t length, const Outgoing& message) {
    int flags = MSG_DONTWAIT | MSG_NOSIGNAL;
    if (!message.fds.empty()) {
      iovec iov = {const_cast<char*>(data), length};
      std::vector<char> control(CMSG_SPACE(sizeof(int) * message.fds.size()), 0);
      msghdr msg;
      std::memset(&msg, 0, sizeof(msg));
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(sizeof(int) * message.fds.size());
      std::memcpy(CMSG_DATA(cmsg), message.fds.data(), sizeof(int) * message.fds.size());
      return RetryOnEintr([&] { return sendmsg(fd_, &msg, flags); });
    }
    return RetryOnEintr([&] {
      return message.addressed ? sendto(fd_, data, length, flags, message.to.get(), message.to.length)
                               : send(fd_, data, length, flags);
    });
  }

  // Sends queued messages until the queue is empty or the kernel pushes back.
  // Returns false when the caller must stop (closed, or a callback threw).
  bool Flush(bool from_timer) {
    Napi::Env env = Env();
    bool progressed = false;
    while (!queue_.empty()) {
      Outgoing& head = queue_.front();
      ssize_t sent = SendOne(head.data.data(), head.data.size(), head);
      if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (progressed) return true;  // the kernel took some: POLLOUT tells when it takes more
        // Writable according to poll, yet refused: poll does not cover this
        // destination (an unconnected Unix datagram socket whose receiver's queue
        // is full) or the message is larger than the free space poll reported.
        // Nothing will say when it fits: retry on a timer, backing off.
        retry_ms_ = from_timer ? std::min(std::max<uint64_t>(retry_ms_ * 2, 1), kMaxSendRetryMs) : 1;
        StartTimer(retry_ms_);
        return true;
      }
      const char* syscall = head.addressed ? "sendto" : "send";
      if (sent < 0) {
        int err = errno;
        std::string where = head.to.where;
        if (connected_ && (err == EPIPE || err == ECONNRESET || err == ENOTCONN)) {
          // The connection is gone: nothing queued can be delivered any more.
          for (Outgoing& dropped : queue_) CloseFds(dropped.fds);
          queue_.clear();
          queued_bytes_ = 0;
          need_drain_ = false;
        } else {
          queued_bytes_ -= head.data.size();
          CloseFds(head.fds);
          queue_.pop_front();
        }
        if (!Emit(on_error_, {SystemError(env, err, syscall, where).Value()})) return false;
        continue;
      }
      progressed = true;
      queued_bytes_ -= head.data.size();
      CloseFds(head.fds);
      queue_.pop_front();
    }
    retry_ms_ = 0;
    if (shutdown_requested_ && !shut_down_) {
      shut_down_ = true;
      if (shutdown(fd_, SHUT_WR) < 0 && errno != ENOTCONN) {
        if (!Emit(on_error_, {SystemError(env, errno, "shutdown").Value()})) return false;
      }
    }
    if (need_drain_) {
      need_drain_ = false;
      if (!Emit(on_drain_, {})) return false;
    }
    return true;
  }

  void ReadMessages() {
    Napi::Env env = Env();
    std::vector<char>& buffer = env.GetInstanceData<EnvState>()->receive_buffer;
    if (buffer.size() < receive_size_) buffer.resize(receive_size_);
    for (int i = 0; i < kMessagesPerWakeup && reading_ && !ended_ && !closed_; ++i) {
      Napi::HandleScope scope(env);
      sockaddr_storage from;
      iovec iov = {buffer.data(), receive_size_};
      msghdr message;
      std::memset(&message, 0, sizeof(message));
      if (!connected_) {
        message.msg_name = &from;
        message.msg_namelen = sizeof(from);
      }
      message.msg_iov = &iov;
      message.msg_iovlen = 1;
      // Room for fds passed with a message (SCM_RIGHTS), made close-on-exec on
      // arrival, only where they are asked for; without it the kernel drops them.
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
      if (receive_fds_) {
        message.msg_control = control;
        message.msg_controllen = sizeof(control);
      } else if (credentials_) {
        // Room for the credentials only: the kernel drops any fds (MSG_CTRUNC).
        message.msg_control = control;
        message.msg_controllen = CMSG_SPACE(sizeof(ucred));
      }
      // MSG_TRUNC: the result is the message's real size, even when it did not fit.
      ssize_t size = RetryOnEintr([&] { return recvmsg(fd_, &message, MSG_DONTWAIT | MSG_TRUNC | MSG_CMSG_CLOEXEC); });
      std::vector<int> fds;
      Napi::Value sender = env.Undefined();
      if (size >= 0 && message.msg_control != nullptr) {
        for (cmsghdr* cmsg = CMSG_FIRSTHDR(&message); cmsg != nullptr; cmsg = CMSG_NXTHDR(&message, cmsg)) {
          if (cmsg->cmsg_level != SOL_SOCKET) continue;
          if (cmsg->cmsg_type == SCM_CREDENTIALS && cmsg->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
            ucred credentials;
            std::memcpy(&credentials, CMSG_DATA(cmsg), sizeof(credentials));
            if (CredentialsKnown(credentials)) {
              Napi::Object object = Napi::Object::New(env);
              object.Set("pid", Napi::Number::New(env, credentials.pid));
              object.Set("uid", Napi::Number::New(env, credentials.uid));
              object.Set("gid", Napi::Number::New(env, credentials.gid));
              sender = object;
            }
          }
          if (cmsg->cmsg_type != SCM_RIGHTS) continue;
          size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          const int* received = reinterpret_cast<const int*>(CMSG_DATA(cmsg));
          fds.insert(fds.end(), received, received + count);
        }
        if (!receive_fds_) CloseFds(fds);  // none fit; never kept where not asked for
      }
      // Without room for fds, MSG_CTRUNC only says that the kernel dropped the
      // ones a peer passed: the message itself is whole.
      if (size >= 0 && receive_fds_ && (message.msg_flags & MSG_CTRUNC)) {
        CloseFds(fds);
        if (!Emit(on_error_, {MakeSystemError(env, EMSGSIZE, "recvmsg", "fds passed with a message were dropped: more than 64").Value()})) return;
        continue;
      }
      if (size < 0) {
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        // The peer closed with our messages unread: read on to what it sent, then the end.
        if (connected_ && err == ECONNRESET) continue;
        Emit(on_error_, {SystemError(env, err, "recvmsg").Value()});
        return;
      }
      if (connected_ && size == 0) {
        CloseFds(fds);
        ended_ = true;
        Emit(on_end_, {});
        return;
      }
      if ((message.msg_flags & MSG_TRUNC) || static_cast<size_t>(size) > receive_size_) {
        Napi::Error error = MakeSystemError(env, EMSGSIZE, "recvmsg",
                                            "message of " + std::to_string(size) + " bytes dropped: larger than the " +
                                                std::to_string(receive_size_) + "-byte receive buffer");
        error.Set("size", Napi::Number::New(env, static_cast<double>(size)));
        CloseFds(fds);
        if (!Emit(on_error_, {error.Value()})) return;
        continue;
      }
      Napi::Value data = Napi::Buffer<char>::Copy(env, buffer.data(), static_cast<size_t>(size));
      Napi::Value address = env.Undefined();
      Napi::Value port = env.Undefined();
      if (!connected_ && message.msg_namelen > 0) {
        if (from.ss_family == AF_INET || from.ss_family == AF_INET6) {
          int number = 0;
          address = Napi::String::New(env, InetHost(from, &number));
          port = Napi::Number::New(env, number);
        } else if (from.ss_family == AF_UNIX) {
          // An unbound sender has no address; an abstract one starts with NUL.
          std::string path = UnixPath(from, message.msg_namelen);
          if (!path.empty()) address = Napi::String::New(env, path);
        }
      }
      if (credentials_) {
        if (!Emit(on_message_, {data, address, port, env.Undefined(), sender})) return;
        continue;
      }
      if (fds.empty()) {
        if (!Emit(on_message_, {data, address, port})) return;
        continue;
      }
      // The fds belong to JS from here on.
      Napi::Array passed = Napi::Array::New(env, fds.size());
      for (size_t k = 0; k < fds.size(); k++) passed.Set(static_cast<uint32_t>(k), Napi::Number::New(env, fds[k]));
      if (!Emit(on_message_, {data, address, port, passed})) return;
    }
  }

  bool connected_ = false;
  bool receive_fds_ = false;
  bool credentials_ = false;
  int domain_ = AF_UNSPEC;
  size_t receive_size_ = kMinReceiveSize;
  bool reading_ = false;
  bool ended_ = false;
  bool shutdown_requested_ = false;
  bool shut_down_ = false;
  bool need_drain_ = false;
  uint64_t retry_ms_ = 0;
  std::deque<Outgoing> queue_;
  size_t queued_bytes_ = 0;
  Napi::FunctionReference on_message_;
  Napi::FunctionReference on_error_;
  Napi::FunctionReference on_end_;
  Napi::FunctionReference on_drain_;
};

// new SeqpacketServer(fd, { onConnection(fd), onError(err) }) for a listening
// Unix seqpacket (or stream) socket: accepts while started and hands each new
// connection's fd (non-blocking, close-on-exec) to JS, which owns it from then on.
class SeqpacketServer : public PollWrap<SeqpacketServer> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "SeqpacketServer",
                       {
                           InstanceMethod("start", &SeqpacketServer::Start),
                           InstanceMethod("stop", &SeqpacketServer::Stop),
                           InstanceMethod("close", &SeqpacketServer::Close),
                           InstanceMethod("ref", &SeqpacketServer::RefLoop),
                           InstanceMethod("unref", &SeqpacketServer::UnrefLoop),
                           InstanceAccessor("fd", &SeqpacketServer::GetFd, nullptr),
                       });
  }

  explicit SeqpacketServer(const Napi::CallbackInfo& info) : PollWrap<SeqpacketServer>(info) {
    Napi::Env env = info.Env();
    int fd = ArgFd(info, 0);
    Napi::Object callbacks = ArgCallbacks(info, 1, "new SeqpacketServer(fd, callbacks)");
    on_connection_ = Callback(callbacks, "onConnection", true);
    on_error_ = Callback(callbacks, "onError", true);
    if (GetIntSockopt(env, fd, SO_ACCEPTCONN) == 0) {
      throw TypeError(env, "fd must be a listening socket", "ERR_INVALID_ARG_VALUE");
    }
    Attach(info, fd, callbacks, "ecdysis:SeqpacketServer");
  }

  void HandlePoll(int status, int events) {
    if (status < 0) {
      PollStopped();
      int err = TakeSocketError(fd_);
      if (err != 0) Emit(on_error_, {SystemError(Env(), err, "accept").Value()});
      return;
    }
    Napi::Env env = Env();
    for (int i = 0; i < kAcceptsPerWakeup && accepting_ && !closed_; ++i) {
      int client = RetryOnEintr([&] { return accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC); });
      if (client < 0) {
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        if (err == ECONNABORTED) continue;  // that client gave up; the next may be there
        if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
          PollStopped();
          StartTimer(kAcceptRetryMs);
        }
        Emit(on_error_, {SystemError(env, err, "accept").Value()});
        return;
      }
      Napi::HandleScope scope(env);
      if (!Emit(on_connection_, {Napi::Number::New(env, client)})) return;
    }
  }

  void HandleTimer() {}

  void Rearm() { WatchFor(accepting_ && !timer_active_ ? UV_READABLE : 0); }

  void ReleaseState() {
    accepting_ = false;
    on_connection_.Reset();
    on_error_.Reset();
  }

 private:
  void Start(const Napi::CallbackInfo& info) {
    if (closed_) return;
    accepting_ = true;
    Rearm();
  }

  // Connections wait in the kernel's accept queue until start() or close().
  void Stop(const Napi::CallbackInfo& info) {
    accepting_ = false;
    if (closed_) return;
    StopTimer();
    Rearm();
  }

  bool accepting_ = false;
  Napi::FunctionReference on_connection_;
  Napi::FunctionReference on_error_;
};

// new ProcessWatch(pidfd, pid, { onExit(exitCode, signal) }): watches a child
// this process started with spawnProcess (spawn.cc) through its pidfd, which it
// owns from then on, and reaps it once it has exited (waitid on its pid: a pid
// is never reused before its parent reaps it). onExit gets the exit code, or
// null and the signal number; the pidfd is closed then. kill(signal) sends
// through the pidfd: after the exit it sends nothing and returns false.
class ProcessWatch : public PollWrap<ProcessWatch> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "ProcessWatch",
                       {
                           InstanceMethod("kill", &ProcessWatch::Kill),
                           InstanceMethod("close", &ProcessWatch::Close),
                           InstanceMethod("ref", &ProcessWatch::RefLoop),
                           InstanceMethod("unref", &ProcessWatch::UnrefLoop),
                           InstanceAccessor("fd", &ProcessWatch::GetFd, nullptr),
                       });
  }

  explicit ProcessWatch(const Napi::CallbackInfo& info) : PollWrap<ProcessWatch>(info) {
    int fd = ArgFd(info, 0);
    pid_ = ArgInt(info, 1, 1, INT_MAX, "new ProcessWatch(pidfd, pid, callbacks): pid must be a positive integer");
    Napi::Object callbacks = ArgCallbacks(info, 2, "new ProcessWatch(pidfd, pid, callbacks)");
    on_exit_ = Callback(callbacks, "onExit", true);
    Attach(info, fd, callbacks, "ecdysis:ProcessWatch");
    Rearm();
  }

  void HandlePoll(int status, int events) {
    siginfo_t exited;
    std::memset(&exited, 0, sizeof(exited));
    int rc = RetryOnEintr([&] { return waitid(P_PID, static_cast<id_t>(pid_), &exited, WEXITED | WNOHANG); });
    if (rc < 0 || exited.si_pid == 0) {
      // ECHILD: reaped by someone else (a SIGCHLD set to SIG_IGN, a waitpid(-1)
      // elsewhere): it has exited all the same, its status is lost.
      if (rc < 0 && errno == ECHILD) return Exited(Env().Null(), Env().Null());
      if (status < 0) PollStopped();
      return;
    }
    Napi::Env env = Env();
    if (exited.si_code == CLD_EXITED) return Exited(Napi::Number::New(env, exited.si_status), env.Null());
    Exited(env.Null(), Napi::Number::New(env, exited.si_status));
  }

  void HandleTimer() {}

  void Rearm() { WatchFor(exited_ ? 0 : UV_READABLE); }

  void ReleaseState() { on_exit_.Reset(); }

 private:
  void Exited(Napi::Value code, Napi::Value signal) {
    exited_ = true;
    WatchFor(0);
    Napi::FunctionReference callback = std::move(on_exit_);
    Emit(callback, {code, signal});
    CloseNow();  // the pidfd; nothing more to call back
  }

  Napi::Value Kill(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int signal = ArgInt(info, 0, 0, SIGRTMAX, "kill(signal): signal must be a signal number");
    if (closed_ || exited_) return Napi::Boolean::New(env, false);
    long rc = RetryOnEintr([&] { return syscall(SYS_pidfd_send_signal, fd_, signal, nullptr, 0); });
    if (rc < 0) {
      if (errno == ESRCH) return Napi::Boolean::New(env, false);
      throw SystemError(env, errno, "pidfd_send_signal");
    }
    return Napi::Boolean::New(env, true);
  }

  pid_t pid_ = 0;
  bool exited_ = false;
  Napi::FunctionReference on_exit_;
};

}  // namespace

void InitPoll(Napi::Env env, Napi::Object exports) {
  auto* state = new EnvState();
  env.SetInstanceData<EnvState>(state);  // deleted when the environment is, after the hook below finished
  if (napi_add_async_cleanup_hook(env, OnEnvTeardown, state, &state->cleanup_hook) != napi_ok) {
    throw Napi::Error::New(env, "ecdysis: could not register its environment cleanup hook");
  }
  exports.Set("PacketSocket", PacketSocket::Define(env));
  exports.Set("SeqpacketServer", SeqpacketServer::Define(env));
  exports.Set("ProcessWatch", ProcessWatch::Define(env));
}

}  // namespace ecdysis
