// Creating, describing and handling sockets: the kinds Node cannot create or
// adopt itself (Unix datagram and seqpacket), and the options Node does not set.
//
// Sockets are created SOCK_NONBLOCK as well as SOCK_CLOEXEC: libuv would set
// O_NONBLOCK itself on adoption, the addon's own poll handles need it, and a
// blocking socket would stall the event loop in every generation that inherits it
// (O_NONBLOCK belongs to the open file, shared by every dup and every generation).

#include "common.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

namespace ecdysis {
namespace {

// Options shared by TCP listeners and UDP sockets, set before bind. A refused
// option throws "setsockopt <CODE> <OPTION>".
void ApplyInetOptions(Napi::Env env, int fd, int family, const Napi::Object& options, const std::string& where) {
  auto set = [&](int level, int name, int value, const char* option_name) {
    if (SetIntOption(fd, level, name, value) < 0) throw OptionError(env, errno, option_name, where);
  };
  bool v6 = family == AF_INET6;
  if (BoolOption(options, "reuseAddr")) set(SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
  if (BoolOption(options, "reusePort")) set(SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
  // Always explicit on IPv6: the default comes from a sysctl (net.ipv6.bindv6only).
  if (v6) set(IPPROTO_IPV6, IPV6_V6ONLY, BoolOption(options, "ipv6Only") ? 1 : 0, "IPV6_V6ONLY");
  if (BoolOption(options, "freebind")) {
    if (v6) set(IPPROTO_IPV6, IPV6_FREEBIND, 1, "IPV6_FREEBIND");
    else set(IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND");
  }
  if (BoolOption(options, "transparent")) {
    if (v6) set(IPPROTO_IPV6, IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT");
    else set(IPPROTO_IP, IP_TRANSPARENT, 1, "IP_TRANSPARENT");
  }
  // Before listen(2): accepted connections inherit the sizes, and the TCP window
  // scale is chosen from the receive buffer at handshake time.
  int recv_size = IntOption(options, "recvBufferSize");
  int send_size = IntOption(options, "sendBufferSize");
  if (recv_size > 0) set(SOL_SOCKET, SO_RCVBUF, recv_size, "SO_RCVBUF");
  if (send_size > 0) set(SOL_SOCKET, SO_SNDBUF, send_size, "SO_SNDBUF");
}

void ApplyBufferOptions(Napi::Env env, int fd, const Napi::Object& options, const std::string& where) {
  int recv_size = IntOption(options, "recvBufferSize");
  int send_size = IntOption(options, "sendBufferSize");
  if (recv_size > 0 && SetIntOption(fd, SOL_SOCKET, SO_RCVBUF, recv_size) < 0) throw OptionError(env, errno, "SO_RCVBUF", where);
  if (send_size > 0 && SetIntOption(fd, SOL_SOCKET, SO_SNDBUF, send_size) < 0) throw OptionError(env, errno, "SO_SNDBUF", where);
}

// listenTcp(host, port, backlog, { reuseAddr, reusePort, ipv6Only, freebind,
//   transparent, fastOpen, deferAccept, recvBufferSize, sendBufferSize }) -> fd
Napi::Value ListenTcp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "listenTcp(host, port, backlog, options)";
  std::string host = ArgString(info, 0, usage);
  int port = ArgPort(info, 1);
  int backlog = ArgBacklog(info, 2);
  Napi::Object options = ArgOptions(info, 3, usage);
  int fast_open = IntOption(options, "fastOpen");
  int defer_accept = IntOption(options, "deferAccept");
  // Numeric only (no DNS here); getaddrinfo also understands IPv6 scope ids (fe80::1%eth0).
  SockAddr addr = ParseInetOrThrow(env, host, port, AF_UNSPEC);

  FdGuard fd(socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) throw SystemError(env, errno, "socket", addr.where);
  ApplyInetOptions(env, fd.get(), addr.family(), options, addr.where);
  if (fast_open > 0 && SetIntOption(fd.get(), IPPROTO_TCP, TCP_FASTOPEN, fast_open) < 0) {
    throw OptionError(env, errno, "TCP_FASTOPEN", addr.where);
  }
  if (defer_accept > 0 && SetIntOption(fd.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT, defer_accept) < 0) {
    throw OptionError(env, errno, "TCP_DEFER_ACCEPT", addr.where);
  }
  if (bind(fd.get(), addr.get(), addr.length) < 0) throw SystemError(env, errno, "bind", addr.where);
  if (listen(fd.get(), backlog) < 0) throw SystemError(env, errno, "listen", addr.where);
  return Napi::Number::New(env, fd.release());
}

// bindUdp(host, port, { reuseAddr, reusePort, ipv6Only, freebind, transparent,
//   recvBufferSize, sendBufferSize }) -> fd of a bound SOCK_DGRAM socket.
Napi::Value BindUdp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "bindUdp(host, port, options)";
  std::string host = ArgString(info, 0, usage);
  int port = ArgPort(info, 1);
  Napi::Object options = ArgOptions(info, 2, usage);
  SockAddr addr = ParseInetOrThrow(env, host, port, AF_UNSPEC);

  FdGuard fd(socket(addr.family(), SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) throw SystemError(env, errno, "socket", addr.where);
  ApplyInetOptions(env, fd.get(), addr.family(), options, addr.where);
  if (bind(fd.get(), addr.get(), addr.length) < 0) throw SystemError(env, errno, "bind", addr.where);
  return Napi::Number::New(env, fd.release());
}

// 'stream' (the default), 'dgram' or 'seqpacket' -> SOCK_*.
int ArgUnixType(const Napi::CallbackInfo& info, size_t index, bool allow_dgram) {
  const char* message = allow_dgram ? "type must be 'stream', 'dgram' or 'seqpacket'" : "type must be 'stream' or 'seqpacket'";
  if (info.Length() <= index || info[index].IsUndefined()) return SOCK_STREAM;
  if (!info[index].IsString()) throw TypeError(info.Env(), message);
  std::string type = info[index].As<Napi::String>().Utf8Value();
  if (type == "stream") return SOCK_STREAM;
  if (type == "seqpacket") return SOCK_SEQPACKET;
  if (type == "dgram" && allow_dgram) return SOCK_DGRAM;
  throw TypeError(info.Env(), message, "ERR_INVALID_ARG_VALUE");
}

// listenUnix(path, backlog, type = 'stream' | 'seqpacket', { mode, gid }) -> fd.
// A path starting with NUL is a Linux abstract name (no filesystem entry); a
// filesystem path with a mode is created with that mode (and group).
Napi::Value ListenUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "listenUnix(path, backlog, type, options)";
  std::string path = ArgString(info, 0, usage);
  int backlog = ArgBacklog(info, 1);
  int type = ArgUnixType(info, 2, false);
  FileOwnership ownership = ArgOwnership(ArgOptions(info, 3, usage));
  SockAddr addr = ParseUnixOrThrow(env, path, "bind");

  FdGuard fd(socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) throw SystemError(env, errno, "socket", addr.where);
  BindUnix(env, fd.get(), addr, ownership);
  if (listen(fd.get(), backlog) < 0) throw SystemError(env, errno, "listen", addr.where);
  return Napi::Number::New(env, fd.release());
}

// bindUnixDatagram(path, { recvBufferSize, sendBufferSize, mode, gid, passCredentials })
// -> fd of a bound AF_UNIX SOCK_DGRAM socket (path, or abstract name starting
// with NUL); a filesystem path with a mode is created with that mode (and
// group). passCredentials: SO_PASSCRED from before the bind, so that every
// datagram ever queued carries its sender's credentials.
Napi::Value BindUnixDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "bindUnixDatagram(path, options)";
  std::string path = ArgString(info, 0, usage);
  Napi::Object options = ArgOptions(info, 1, usage);
  FileOwnership ownership = ArgOwnership(options);
  SockAddr addr = ParseUnixOrThrow(env, path, "bind");

  FdGuard fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) throw SystemError(env, errno, "socket", addr.where);
  ApplyBufferOptions(env, fd.get(), options, addr.where);
  if (BoolOption(options, "passCredentials") && SetIntOption(fd.get(), SOL_SOCKET, SO_PASSCRED, 1) < 0) {
    throw OptionError(env, errno, "SO_PASSCRED", addr.where);
  }
  BindUnix(env, fd.get(), addr, ownership);
  return Napi::Number::New(env, fd.release());
}

// connectUnix(path, type = 'stream' | 'dgram' | 'seqpacket') -> fd of a connected,
// unbound client socket. Unix connects never wait: a full accept queue is EAGAIN,
// nobody listening ECONNREFUSED, no such path ENOENT.
// socketPair(type) -> [fd, fd]: a connected pair of Unix sockets, 'stream' or
// 'seqpacket', both non-blocking and close-on-exec (one end is handed to a child
// through spawn's stdio array, which clears close-on-exec there).
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string kind = ArgString(info, 0, "socketPair(type): type must be 'stream' or 'seqpacket'");
  int type = kind == "stream" ? SOCK_STREAM : kind == "seqpacket" ? SOCK_SEQPACKET : -1;
  if (type < 0) throw TypeError(env, "socketPair(type): type must be 'stream' or 'seqpacket'", "ERR_INVALID_ARG_VALUE");
  int fds[2];
  if (socketpair(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0) throw SystemError(env, errno, "socketpair");
  Napi::Array pair = Napi::Array::New(env, 2);
  pair.Set(0u, Napi::Number::New(env, fds[0]));
  pair.Set(1u, Napi::Number::New(env, fds[1]));
  return pair;
}

Napi::Value ConnectUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "connectUnix(path, type)");
  int type = ArgUnixType(info, 1, true);
  SockAddr addr = ParseUnixOrThrow(env, path, "connect");

  FdGuard fd(socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) throw SystemError(env, errno, "socket", addr.where);
  // No EINTR retry: a non-blocking Unix connect does not sleep, so cannot be interrupted.
  if (connect(fd.get(), addr.get(), addr.length) < 0) throw SystemError(env, errno, "connect", addr.where);
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
// Datagram sockets are never listening; an unbound Unix socket has no path.
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
  out.Set("listening", Napi::Boolean::New(env, type != SOCK_DGRAM && listening != 0));

  sockaddr_storage ss;
  std::memset(&ss, 0, sizeof(ss));
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) throw SystemError(env, errno, "getsockname");
  if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    // The bound address as the kernel has it, without a scope suffix.
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
    out.Set("address", Napi::String::New(env, host));
    out.Set("port", Napi::Number::New(env, port));
  } else if (ss.ss_family == AF_UNIX) {
    std::string path = UnixPath(ss, len);
    if (!path.empty()) out.Set("path", Napi::String::New(env, path));
  }
  return out;
}

// socketOptions(fd) -> the options listenTcp/bindUdp/bindUnixDatagram set, read
// back from the kernel. Buffer sizes are as the kernel reports them (it doubles
// the requested size for its own bookkeeping and caps it at net.core.[rw]mem_max).
// Options that do not apply to the socket are left out.
Napi::Value SocketOptions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  Napi::Object out = Napi::Object::New(env);
  auto get = [&](int level, int name, int* value) {
    socklen_t len = sizeof(*value);
    *value = 0;
    return getsockopt(fd, level, name, value, &len) == 0;
  };
  int domain = 0, type = 0, value = 0;
  if (!get(SOL_SOCKET, SO_DOMAIN, &domain)) throw SystemError(env, errno, "getsockopt");
  get(SOL_SOCKET, SO_TYPE, &type);
  if (get(SOL_SOCKET, SO_RCVBUF, &value)) out.Set("recvBufferSize", Napi::Number::New(env, value));
  if (get(SOL_SOCKET, SO_SNDBUF, &value)) out.Set("sendBufferSize", Napi::Number::New(env, value));
  if (domain != AF_INET && domain != AF_INET6) return out;
  bool v6 = domain == AF_INET6;
  auto flag = [&](const char* key, int level, int name) {
    if (get(level, name, &value)) out.Set(key, Napi::Boolean::New(env, value != 0));
  };
  flag("reuseAddr", SOL_SOCKET, SO_REUSEADDR);
  flag("reusePort", SOL_SOCKET, SO_REUSEPORT);
  if (v6) flag("ipv6Only", IPPROTO_IPV6, IPV6_V6ONLY);
  flag("freebind", v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_FREEBIND : IP_FREEBIND);
  flag("transparent", v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT);
  if (type == SOCK_STREAM) {
    if (get(IPPROTO_TCP, TCP_FASTOPEN, &value)) out.Set("fastOpen", Napi::Number::New(env, value));
    // Read back rounded up to the kernel's SYN-ACK retransmission steps (5 -> 7).
    if (get(IPPROTO_TCP, TCP_DEFER_ACCEPT, &value)) out.Set("deferAccept", Napi::Number::New(env, value));
  }
  return out;
}

// hasPendingConnection(fd): a listening socket has a connection waiting in its
// accept queue (poll(POLLIN) with a zero timeout).
Napi::Value HasPendingConnection(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  struct pollfd entry = {fd, POLLIN, 0};
  int ready = RetryOnEintr([&] { return poll(&entry, 1, 0); });
  if (ready < 0) throw SystemError(info.Env(), errno, "poll");
  if (entry.revents & POLLNVAL) throw SystemError(info.Env(), EBADF, "poll");
  return Napi::Boolean::New(info.Env(), (entry.revents & POLLIN) != 0);
}

// pendingBytes(fd): ioctl SIOCINQ. For a datagram socket, the size of the next
// datagram (0 when none); for a stream, the unread bytes.
Napi::Value PendingBytes(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int bytes = 0;
  if (RetryOnEintr([&] { return ioctl(fd, SIOCINQ, &bytes); }) < 0) throw SystemError(info.Env(), errno, "ioctl");
  return Napi::Number::New(info.Env(), bytes);
}

// sendDatagram(fd, data, address?, port?) -> bytes sent. One non-blocking
// sendto(2): to an IP and port on an AF_INET/AF_INET6 socket, to a path (or NUL-
// prefixed abstract name; port ignored) on an AF_UNIX socket, or to the connected
// peer when address is undefined. A full queue throws EAGAIN.
Napi::Value SendDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "sendDatagram(fd, data, address, port)";
  int fd = ArgFd(info, 0);
  Bytes data = ArgBytes(info, 1, "data must be a Buffer");
  if (info.Length() < 3 || info[2].IsUndefined()) {
    ssize_t sent = RetryOnEintr([&] { return send(fd, data.data, data.length, MSG_DONTWAIT | MSG_NOSIGNAL); });
    if (sent < 0) throw SystemError(env, errno, "send");
    return Napi::Number::New(env, static_cast<double>(sent));
  }
  std::string address = ArgString(info, 2, usage);
  int domain = 0;
  socklen_t len = sizeof(domain);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) throw SystemError(env, errno, "getsockopt");
  SockAddr to = domain == AF_UNIX ? ParseUnixOrThrow(env, address, "sendto")
                                  : ParseInetOrThrow(env, address, ArgPort(info, 3), domain);
  ssize_t sent = RetryOnEintr([&] {
    return sendto(fd, data.data, data.length, MSG_DONTWAIT | MSG_NOSIGNAL, to.get(), to.length);
  });
  if (sent < 0) throw SystemError(env, errno, "sendto", to.where);
  return Napi::Number::New(env, static_cast<double>(sent));
}

}  // namespace

void InitSockets(Napi::Env env, Napi::Object exports) {
  exports.Set("listenTcp", Napi::Function::New(env, ListenTcp, "listenTcp"));
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  exports.Set("bindUdp", Napi::Function::New(env, BindUdp, "bindUdp"));
  exports.Set("listenUnix", Napi::Function::New(env, ListenUnix, "listenUnix"));
  exports.Set("bindUnixDatagram", Napi::Function::New(env, BindUnixDatagram, "bindUnixDatagram"));
  exports.Set("connectUnix", Napi::Function::New(env, ConnectUnix, "connectUnix"));
  exports.Set("dupCloexec", Napi::Function::New(env, DupCloexec, "dupCloexec"));
  exports.Set("setCloexec", Napi::Function::New(env, SetCloexec, "setCloexec"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("describe", Napi::Function::New(env, Describe, "describe"));
  exports.Set("socketOptions", Napi::Function::New(env, SocketOptions, "socketOptions"));
  exports.Set("hasPendingConnection", Napi::Function::New(env, HasPendingConnection, "hasPendingConnection"));
  exports.Set("pendingBytes", Napi::Function::New(env, PendingBytes, "pendingBytes"));
  exports.Set("sendDatagram", Napi::Function::New(env, SendDatagram, "sendDatagram"));
}

}  // namespace ecdysis
