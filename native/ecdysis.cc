// The native half of ecdysis: only the socket syscalls Node does not expose.
//
// Every binding validates its arguments, makes its syscall (retrying EINTR),
// and throws an Error shaped like Node's own system errors: `code` ('EADDRINUSE'),
// negative `errno`, `syscall` ('bind'), and the address in the message.
// Every fd created here is close-on-exec: only what the library explicitly
// hands to the next generation (through spawn's stdio array) is inherited.

#include <napi.h>
#include <uv.h>

#include <arpa/inet.h>
#include <cerrno>
#include <cmath>
#include <netdb.h>
#include <cstring>
#include <fcntl.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace {

// Owns an fd until released; closes it on every early return (RAII).
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) {
      int saved = errno;
      ::close(fd_);
      errno = saved;
    }
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// Node's system error shape. `where` is the address or path, appended to the
// message the way Node does ("bind EADDRINUSE 127.0.0.1:8080").
Napi::Error SystemError(Napi::Env env, int err, const char* syscall, const std::string& where = "") {
  const char* code = uv_err_name(-err);
  std::string message = std::string(syscall) + " " + code;
  if (!where.empty()) message += " " + where;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  if (!where.empty()) error.Set("address", Napi::String::New(env, where));
  return error;
}

Napi::Error TypeError(Napi::Env env, const std::string& message) {
  Napi::Error error = Napi::TypeError::New(env, message);
  error.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  return error;
}

// An integer argument in [min, max]; `message` says what was expected.
int ArgInt(const Napi::CallbackInfo& info, size_t index, double min, double max, const char* message) {
  if (info.Length() <= index || !info[index].IsNumber()) throw TypeError(info.Env(), message);
  double value = info[index].As<Napi::Number>().DoubleValue();
  // Range first: casting a NaN or out-of-range double to int is undefined.
  if (!std::isfinite(value) || value < min || value > max || value != std::floor(value)) throw TypeError(info.Env(), message);
  return static_cast<int>(value);
}

int ArgFd(const Napi::CallbackInfo& info, size_t index) {
  return ArgInt(info, index, 0, 2147483647, "fd must be a non-negative integer");
}

int ArgBacklog(const Napi::CallbackInfo& info, size_t index) {
  return ArgInt(info, index, 1, 65535, "backlog must be an integer between 1 and 65535");
}

bool BoolOption(const Napi::Object& options, const char* name) {
  Napi::Value value = options.Get(name);
  return value.IsBoolean() && value.As<Napi::Boolean>().Value();
}

int SetIntOption(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof(value));
}

std::string FormatInet(const sockaddr_storage& ss, std::string* host_out, int* port_out) {
  char host[INET6_ADDRSTRLEN] = {0};
  int port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
    port = ntohs(sin->sin_port);
  } else {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
    port = ntohs(sin6->sin6_port);
  }
  if (host_out) *host_out = host;
  if (port_out) *port_out = port;
  return ss.ss_family == AF_INET6 ? "[" + std::string(host) + "]:" + std::to_string(port)
                                  : std::string(host) + ":" + std::to_string(port);
}

// listenTcp(host: string, port: number, backlog: number,
//           { reuseAddr, reusePort, ipv6Only }) -> fd
Napi::Value ListenTcp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsNumber() || !info[3].IsObject()) {
    throw TypeError(env, "listenTcp(host, port, backlog, options)");
  }
  std::string host = info[0].As<Napi::String>().Utf8Value();
  double port_value = info[1].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(port_value) || port_value < 0 || port_value > 65535 || port_value != std::floor(port_value)) {
    throw Napi::RangeError::New(env, "port must be an integer between 0 and 65535");
  }
  int port = static_cast<int>(port_value);
  int backlog = ArgBacklog(info, 2);
  Napi::Object options = info[3].As<Napi::Object>();

  sockaddr_storage ss;
  std::memset(&ss, 0, sizeof(ss));
  socklen_t len = 0;
  // Numeric only (no DNS here); getaddrinfo also understands IPv6 scope ids (fe80::1%eth0).
  addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  if (getaddrinfo(host.c_str(), service.c_str(), &hints, &found) == 0 && found != nullptr &&
      found->ai_addrlen <= sizeof(ss)) {
    std::memcpy(&ss, found->ai_addr, found->ai_addrlen);
    len = found->ai_addrlen;
  }
  if (found != nullptr) freeaddrinfo(found);
  if (len == 0) {
    Napi::Error error = Napi::TypeError::New(env, "host must be an IPv4 or IPv6 address: " + host);
    error.Set("code", Napi::String::New(env, "ERR_INVALID_IP_ADDRESS"));
    throw error;
  }
  std::string where = ss.ss_family == AF_INET6 ? "[" + host + "]:" + std::to_string(port)
                                               : host + ":" + std::to_string(port);

  FdGuard fd(socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) throw SystemError(env, errno, "socket", where);
  if (BoolOption(options, "reuseAddr") && SetIntOption(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1) < 0) {
    throw SystemError(env, errno, "setsockopt", where);
  }
  if (BoolOption(options, "reusePort") && SetIntOption(fd.get(), SOL_SOCKET, SO_REUSEPORT, 1) < 0) {
    throw SystemError(env, errno, "setsockopt", where);
  }
  if (ss.ss_family == AF_INET6 &&
      SetIntOption(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, BoolOption(options, "ipv6Only") ? 1 : 0) < 0) {
    throw SystemError(env, errno, "setsockopt", where);
  }
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) < 0) throw SystemError(env, errno, "bind", where);
  if (listen(fd.get(), backlog) < 0) throw SystemError(env, errno, "listen", where);
  return Napi::Number::New(env, fd.release());
}

// listenUnix(path: string, backlog: number) -> fd. A path starting with NUL is a
// Linux abstract name (no filesystem entry).
Napi::Value ListenUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString()) throw TypeError(env, "listenUnix(path, backlog)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int backlog = ArgBacklog(info, 1);
  bool abstract = !path.empty() && path[0] == '\0';
  std::string where = abstract ? "@" + path.substr(1) : path;

  sockaddr_un sun;
  std::memset(&sun, 0, sizeof(sun));
  sun.sun_family = AF_UNIX;
  // A filesystem path needs room for its terminating NUL; an abstract name does not.
  size_t limit = abstract ? sizeof(sun.sun_path) : sizeof(sun.sun_path) - 1;
  if (path.empty() || path.size() > limit) throw SystemError(env, ENAMETOOLONG, "bind", where);
  std::memcpy(sun.sun_path, path.data(), path.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1));

  FdGuard fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) throw SystemError(env, errno, "socket", where);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&sun), len) < 0) throw SystemError(env, errno, "bind", where);
  if (listen(fd.get(), backlog) < 0) throw SystemError(env, errno, "listen", where);
  return Napi::Number::New(env, fd.release());
}

// dupCloexec(fd) -> a new close-on-exec fd for the same open socket.
Napi::Value DupCloexec(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) throw SystemError(info.Env(), errno, "dup");
  return Napi::Number::New(info.Env(), copy);
}

// setCloexec(fd, on): inherited fds arrive without close-on-exec; the library sets
// it so that nothing it did not register leaks into a later generation.
Napi::Value SetCloexec(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  bool on = info.Length() < 2 || info[1].ToBoolean().Value();
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0) throw SystemError(info.Env(), errno, "fcntl");
  int next = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
  if (next != flags && fcntl(fd, F_SETFD, next) < 0) throw SystemError(info.Env(), errno, "fcntl");
  return info.Env().Undefined();
}

// close(fd). EINTR after close on Linux means the fd is gone: never retry.
Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  if (::close(fd) < 0 && errno != EINTR) throw SystemError(info.Env(), errno, "close");
  return info.Env().Undefined();
}

// refuseNewConnections(fd): for a TCP listener about to close for good. Attaches
// a socket filter that drops SYN segments (SYN without ACK), so the kernel stops
// completing new handshakes while handshakes already under way still finish.
// A dropped SYN is retransmitted by the client about a second later and then
// meets the closed port: a clean refusal, never a reset of a connection that
// was already carrying a request.
Napi::Value RefuseNewConnections(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  // At filter time skb->data is the TCP header; byte 13 holds the flags.
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, 0),
      BPF_STMT(BPF_RET | BPF_K, 0xFFFFFFFF),
  };
  struct sock_fprog program = {static_cast<unsigned short>(sizeof(code) / sizeof(code[0])), code};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof(program)) < 0) {
    throw SystemError(info.Env(), errno, "setsockopt");
  }
  return info.Env().Undefined();
}

// acceptNewConnections(fd): removes the filter refuseNewConnections attached.
Napi::Value AcceptNewConnections(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int unused = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof(unused)) < 0) {
    throw SystemError(info.Env(), errno, "setsockopt");
  }
  return info.Env().Undefined();
}

// acceptQueueLength(fd): connections a TCP listener has established that nobody
// has accepted yet (TCP_INFO's tcpi_unacked is the accept backlog for a listener).
Napi::Value AcceptQueueLength(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  struct tcp_info tcp;
  std::memset(&tcp, 0, sizeof(tcp));
  socklen_t len = sizeof(tcp);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &tcp, &len) < 0) throw SystemError(info.Env(), errno, "getsockopt");
  return Napi::Number::New(info.Env(), tcp.tcpi_unacked);
}

const char* DomainName(int domain) {
  switch (domain) {
    case AF_INET: return "inet";
    case AF_INET6: return "inet6";
    case AF_UNIX: return "unix";
    default: return "other";
  }
}

const char* TypeName(int type) {
  switch (type) {
    case SOCK_STREAM: return "stream";
    case SOCK_DGRAM: return "dgram";
    case SOCK_SEQPACKET: return "seqpacket";
    default: return "other";
  }
}

// describe(fd) -> { socket, domain, type, listening, address, port, path, inode, cloexec }.
// A closed fd throws EBADF; an fd that is not a socket returns { socket: false }.
Napi::Value Describe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  Napi::Object out = Napi::Object::New(env);
  struct stat st;
  if (fstat(fd, &st) < 0) throw SystemError(env, errno, "fstat");
  int fdflags = fcntl(fd, F_GETFD);
  out.Set("inode", Napi::Number::New(env, static_cast<double>(st.st_ino)));
  out.Set("cloexec", Napi::Boolean::New(env, fdflags >= 0 && (fdflags & FD_CLOEXEC)));
  out.Set("socket", Napi::Boolean::New(env, S_ISSOCK(st.st_mode)));
  if (!S_ISSOCK(st.st_mode)) return out;

  int domain = 0, type = 0, listening = 0;
  socklen_t optlen = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &optlen) < 0) throw SystemError(env, errno, "getsockopt");
  optlen = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &optlen) < 0) throw SystemError(env, errno, "getsockopt");
  optlen = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &optlen) < 0) listening = 0;
  out.Set("domain", Napi::String::New(env, DomainName(domain)));
  out.Set("type", Napi::String::New(env, TypeName(type)));
  out.Set("listening", Napi::Boolean::New(env, listening != 0));

  sockaddr_storage ss;
  std::memset(&ss, 0, sizeof(ss));
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) throw SystemError(env, errno, "getsockname");
  if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    std::string host;
    int port = 0;
    FormatInet(ss, &host, &port);
    out.Set("address", Napi::String::New(env, host));
    out.Set("port", Napi::Number::New(env, port));
  } else if (ss.ss_family == AF_UNIX) {
    const auto* sun = reinterpret_cast<const sockaddr_un*>(&ss);
    size_t path_len = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    std::string path(sun->sun_path, path_len);
    // Filesystem paths come back NUL-terminated; abstract names keep their leading NUL.
    if (!path.empty() && path[0] != '\0') path = std::string(path.c_str());
    out.Set("path", Napi::String::New(env, path));
  }
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("listenTcp", Napi::Function::New(env, ListenTcp, "listenTcp"));
  exports.Set("listenUnix", Napi::Function::New(env, ListenUnix, "listenUnix"));
  exports.Set("dupCloexec", Napi::Function::New(env, DupCloexec, "dupCloexec"));
  exports.Set("setCloexec", Napi::Function::New(env, SetCloexec, "setCloexec"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("describe", Napi::Function::New(env, Describe, "describe"));
  exports.Set("refuseNewConnections", Napi::Function::New(env, RefuseNewConnections, "refuseNewConnections"));
  exports.Set("acceptNewConnections", Napi::Function::New(env, AcceptNewConnections, "acceptNewConnections"));
  exports.Set("acceptQueueLength", Napi::Function::New(env, AcceptQueueLength, "acceptQueueLength"));
  return exports;
}

}  // namespace

NODE_API_MODULE(ecdysis, Init)
