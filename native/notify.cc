// Talking to a service manager and knowing who is on the other end of a Unix
// socket: sd_notify-style datagrams and SO_PEERCRED.

#include "common.h"

#include <sys/prctl.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <vector>

namespace ecdysis {
namespace {

// The signal's name as Node spells it ("SIGTERM"), or nullptr for an unusual number.
const char* SignalName(int signal) {
  switch (signal) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGSYS: return "SIGSYS";
    default: return nullptr;
  }
}

// The most fds one notification carries (the fd store takes them one name at a time).
constexpr size_t kMaxNotifyFds = 253;

// notify(socketPath, message[, fds]): one datagram to an AF_UNIX SOCK_DGRAM
// socket, as sd_notify(3) sends it, with `fds` attached by SCM_RIGHTS when given
// (sd_pid_notify_with_fds: FDSTORE=1). The path is a filesystem path or an
// abstract name written with a leading '@' (NOTIFY_SOCKET's convention). The
// socket is fresh, close-on-exec and non-blocking: a service manager that stopped
// reading makes this throw EAGAIN instead of stalling the event loop.
// MSG_NOSIGNAL: never SIGPIPE. The fds stay open here: the receiver gets copies.
Napi::Value Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "notify(socketPath, message[, fds]): socketPath must be a string");
  std::string message = ArgString(info, 1, "notify(socketPath, message[, fds]): message must be a string");
  std::vector<int> fds;
  if (info.Length() > 2 && !info[2].IsUndefined()) {
    if (!info[2].IsArray()) throw TypeError(env, "notify(socketPath, message[, fds]): fds must be an array of fds");
    Napi::Array list = info[2].As<Napi::Array>();
    if (list.Length() > kMaxNotifyFds) throw TypeError(env, "notify(): at most 253 fds", "ERR_OUT_OF_RANGE");
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value value = list.Get(i);
      double number = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
      if (!std::isfinite(number) || number < 0 || number > 2147483647 || !IsWhole(number)) {
        throw TypeError(env, "notify(): every fd must be a non-negative integer");
      }
      fds.push_back(static_cast<int>(number));
    }
  }
  if (!path.empty() && path[0] == '@') path[0] = '\0';
  SockAddr to = ParseUnixOrThrow(env, path, "sendto");

  FdGuard fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) throw SystemError(env, errno, "socket", to.where);
  iovec iov;
  iov.iov_base = const_cast<char*>(message.data());
  iov.iov_len = message.size();
  msghdr msg;
  std::memset(&msg, 0, sizeof(msg));
  msg.msg_name = const_cast<sockaddr*>(to.get());
  msg.msg_namelen = to.length;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t sent = RetryOnEintr([&] { return sendmsg(fd.get(), &msg, MSG_NOSIGNAL); });
  if (sent < 0) throw SystemError(env, errno, "sendmsg", to.where);
  return env.Undefined();
}

// setChildSubreaper(on): PR_SET_CHILD_SUBREAPER, so that orphaned descendants
// (an old generation's successor, once it exits) are re-parented to this
// process rather than to init, and reaped here (`ecdysis run`).
Napi::Value SetChildSubreaper(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBoolean()) throw TypeError(env, "setChildSubreaper(on): on must be a boolean");
  if (prctl(PR_SET_CHILD_SUBREAPER, info[0].As<Napi::Boolean>().Value() ? 1 : 0, 0, 0, 0) < 0) throw SystemError(env, errno, "prctl");
  return env.Undefined();
}

// reapChildren([leave]) -> [{ pid, exitCode, signal }]: every child that has
// exited, reaped, except the pids in `leave`: the children Node spawned itself,
// which libuv must reap (a child libuv never sees exit keeps its handle active,
// and the process alive, for ever). Each exited child is looked at first
// (waitid with WNOWAIT); one to leave ends the round, since waitid would report
// it again: libuv reaps it on its own SIGCHLD, and the next round goes on.
Napi::Value ReapChildren(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<pid_t> leave;
  if (info.Length() >= 1 && !info[0].IsUndefined()) {
    if (!info[0].IsArray()) throw TypeError(env, "reapChildren(leave): leave must be an array of pids");
    Napi::Array list = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value pid = list.Get(i);
      if (!pid.IsNumber()) throw TypeError(env, "reapChildren(leave): leave must be an array of pids");
      leave.push_back(static_cast<pid_t>(pid.As<Napi::Number>().Int32Value()));
    }
  }
  Napi::Array out = Napi::Array::New(env);
  uint32_t count = 0;
  for (;;) {
    siginfo_t exited;
    std::memset(&exited, 0, sizeof(exited));
    int rc = RetryOnEintr([&] { return waitid(P_ALL, 0, &exited, WEXITED | WNOHANG | WNOWAIT); });
    if (rc < 0) {
      if (errno == ECHILD) break;
      throw SystemError(env, errno, "waitid");
    }
    if (exited.si_pid == 0) break;
    if (std::find(leave.begin(), leave.end(), exited.si_pid) != leave.end()) break;
    int status = 0;
    pid_t pid = RetryOnEintr([&] { return waitpid(exited.si_pid, &status, WNOHANG); });
    if (pid <= 0) break;
    Napi::Object child = Napi::Object::New(env);
    child.Set("pid", Napi::Number::New(env, pid));
    if (WIFEXITED(status)) {
      child.Set("exitCode", Napi::Number::New(env, WEXITSTATUS(status)));
      child.Set("signal", env.Null());
    } else if (WIFSIGNALED(status)) {
      child.Set("exitCode", env.Null());
      const char* name = SignalName(WTERMSIG(status));
      child.Set("signal", name ? Napi::Value(Napi::String::New(env, name)) : Napi::Value(Napi::Number::New(env, WTERMSIG(status))));
    } else {
      continue;
    }
    out.Set(count++, child);
  }
  return out;
}

// peerCredentials(fd) -> { pid, uid, gid } of the process at the other end of a
// Unix socket, as the kernel recorded them at connect(2) (or socketpair(2)).
Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  struct ucred credentials;
  std::memset(&credentials, 0, sizeof(credentials));
  socklen_t len = sizeof(credentials);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &len) < 0) throw SystemError(env, errno, "getsockopt");
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, credentials.pid));
  out.Set("uid", Napi::Number::New(env, credentials.uid));
  out.Set("gid", Napi::Number::New(env, credentials.gid));
  return out;
}

}  // namespace

void InitNotify(Napi::Env env, Napi::Object exports) {
  exports.Set("notify", Napi::Function::New(env, Notify, "notify"));
  exports.Set("setChildSubreaper", Napi::Function::New(env, SetChildSubreaper, "setChildSubreaper"));
  exports.Set("reapChildren", Napi::Function::New(env, ReapChildren, "reapChildren"));
  exports.Set("peerCredentials", Napi::Function::New(env, PeerCredentials, "peerCredentials"));
}

}  // namespace ecdysis
