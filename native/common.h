// Shared by every part of the addon: fd ownership, Node-shaped errors, argument
// and address parsing. Header-only (inline) so each .cc stays one concern.
//
// Every binding validates its arguments, makes its syscall (retrying EINTR where
// the call can be interrupted), and throws an Error shaped like Node's own system
// errors: `code` ('EADDRINUSE'), negative `errno`, `syscall` ('bind'), and the
// address in the message. Every fd created here is close-on-exec: only what the
// library explicitly hands to the next generation (through spawn's stdio array)
// is inherited.

#ifndef ECDYSIS_NATIVE_COMMON_H_
#define ECDYSIS_NATIVE_COMMON_H_

#include <napi.h>
#include <uv.h>

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>

namespace ecdysis {

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
  // Movable, so that a queued message can own the fd it is sent through.
  FdGuard(FdGuard&& other) noexcept : fd_(other.release()) {}
  FdGuard& operator=(FdGuard&& other) noexcept {
    if (this != &other) {
      FdGuard old(fd_);
      fd_ = other.release();
    }
    return *this;
  }
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// Calls `call` again while it fails with EINTR (a signal arrived mid-call).
// Not for close(2) (the fd is gone after EINTR on Linux) nor connect(2) (a
// retried connect reports EALREADY).
template <typename Call>
inline auto RetryOnEintr(Call call) -> decltype(call()) {
  decltype(call()) result;
  do {
    result = call();
  } while (result < 0 && errno == EINTR);
  return result;
}

// Node's system error shape: message "<syscall> <CODE>[ <detail>]".
inline Napi::Error MakeSystemError(Napi::Env env, int err, const char* syscall, const std::string& detail) {
  const char* code = uv_err_name(-err);
  std::string message = std::string(syscall) + " " + code;
  if (!detail.empty()) message += " " + detail;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

// `where` is the address or path, appended to the message the way Node does
// ("bind EADDRINUSE 127.0.0.1:8080") and kept in `address`.
inline Napi::Error SystemError(Napi::Env env, int err, const char* syscall, const std::string& where = "") {
  Napi::Error error = MakeSystemError(env, err, syscall, where);
  if (!where.empty()) error.Set("address", Napi::String::New(env, where));
  return error;
}

// A socket option the kernel refused: "setsockopt EPERM IP_TRANSPARENT". The
// option is in the message and in `option`; the address stays in `address`.
inline Napi::Error OptionError(Napi::Env env, int err, const char* option, const std::string& where) {
  Napi::Error error = MakeSystemError(env, err, "setsockopt", option);
  error.Set("option", Napi::String::New(env, option));
  if (!where.empty()) error.Set("address", Napi::String::New(env, where));
  return error;
}

inline Napi::Error TypeError(Napi::Env env, const std::string& message, const char* code = "ERR_INVALID_ARG_TYPE") {
  Napi::Error error = Napi::TypeError::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

// A whole number, for a value already known to lie within int's range (a cast
// of a NaN or of a double outside it is undefined). Not std::floor: at -Os
// that is a call into libm, which the prebuilds must not need.
inline bool IsWhole(double value) { return static_cast<double>(static_cast<long long>(value)) == value; }

// An integer argument in [min, max]; `message` says what was expected.
inline int ArgInt(const Napi::CallbackInfo& info, size_t index, double min, double max, const char* message) {
  if (info.Length() <= index || !info[index].IsNumber()) throw TypeError(info.Env(), message);
  double value = info[index].As<Napi::Number>().DoubleValue();
  // Range first: casting a NaN or out-of-range double to int is undefined.
  if (!std::isfinite(value) || value < min || value > max || !IsWhole(value)) throw TypeError(info.Env(), message);
  return static_cast<int>(value);
}

inline int ArgFd(const Napi::CallbackInfo& info, size_t index) {
  return ArgInt(info, index, 0, INT_MAX, "fd must be a non-negative integer");
}

inline int ArgBacklog(const Napi::CallbackInfo& info, size_t index) {
  return ArgInt(info, index, 1, 65535, "backlog must be an integer between 1 and 65535");
}

inline int ArgPort(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || !info[index].IsNumber()) throw TypeError(info.Env(), "port must be a number");
  double value = info[index].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(value) || value < 0 || value > 65535 || !IsWhole(value)) {
    Napi::Error error = Napi::RangeError::New(info.Env(), "port must be an integer between 0 and 65535");
    error.Set("code", Napi::String::New(info.Env(), "ERR_SOCKET_BAD_PORT"));
    throw error;
  }
  return static_cast<int>(value);
}

inline std::string ArgString(const Napi::CallbackInfo& info, size_t index, const char* message) {
  if (info.Length() <= index || !info[index].IsString()) throw TypeError(info.Env(), message);
  return info[index].As<Napi::String>().Utf8Value();
}

// A Buffer or any other ArrayBufferView's bytes.
struct Bytes {
  const char* data;
  size_t length;
};

inline Bytes ArgBytes(const Napi::CallbackInfo& info, size_t index, const char* message) {
  if (info.Length() <= index || !info[index].IsBuffer()) throw TypeError(info.Env(), message);
  Napi::Buffer<char> buffer = info[index].As<Napi::Buffer<char>>();
  return Bytes{buffer.Data(), buffer.Length()};
}

// An options object; undefined means all defaults.
inline Napi::Object ArgOptions(const Napi::CallbackInfo& info, size_t index, const char* message) {
  if (info.Length() <= index || info[index].IsUndefined()) return Napi::Object::New(info.Env());
  if (!info[index].IsObject()) throw TypeError(info.Env(), message);
  return info[index].As<Napi::Object>();
}

// A missing or non-boolean option is off.
inline bool BoolOption(const Napi::Object& options, const char* name) {
  Napi::Value value = options.Get(name);
  return value.IsBoolean() && value.As<Napi::Boolean>().Value();
}

// A non-negative integer option; missing (undefined or null) is 0.
inline int IntOption(const Napi::Object& options, const char* name) {
  Napi::Value value = options.Get(name);
  if (value.IsUndefined() || value.IsNull()) return 0;
  double number = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
  if (!std::isfinite(number) || number < 0 || number > INT_MAX || !IsWhole(number)) {
    throw TypeError(options.Env(), std::string("options.") + name + " must be a non-negative integer");
  }
  return static_cast<int>(number);
}

inline int SetIntOption(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof(value));
}

// A socket address and how to show it in an error message.
struct SockAddr {
  sockaddr_storage storage;
  socklen_t length = 0;
  std::string where;

  SockAddr() { std::memset(&storage, 0, sizeof(storage)); }
  sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage); }
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  int family() const { return storage.ss_family; }
};

inline std::string InetWhere(int family, const std::string& host, int port) {
  return family == AF_INET6 ? "[" + host + "]:" + std::to_string(port) : host + ":" + std::to_string(port);
}

// A numeric IPv4 or IPv6 address (never DNS). `family` is AF_UNSPEC, or the
// family of the socket it is for: an IPv4 address for an AF_INET6 socket becomes
// v4-mapped (::ffff:a.b.c.d). Scope ids (fe80::1%eth0) go through getaddrinfo.
inline bool ParseInet(const std::string& host, int port, int family, SockAddr* out) {
  out->where = InetWhere(host.find(':') != std::string::npos ? AF_INET6 : AF_INET, host, port);
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    if (family == AF_INET6) {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out->storage);
      sin6->sin6_family = AF_INET6;
      sin6->sin6_port = htons(static_cast<uint16_t>(port));
      sin6->sin6_addr.s6_addr[10] = 0xff;
      sin6->sin6_addr.s6_addr[11] = 0xff;
      std::memcpy(&sin6->sin6_addr.s6_addr[12], &v4, sizeof(v4));
      out->length = sizeof(sockaddr_in6);
      return true;
    }
    auto* sin = reinterpret_cast<sockaddr_in*>(&out->storage);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<uint16_t>(port));
    sin->sin_addr = v4;
    out->length = sizeof(sockaddr_in);
    return true;
  }
  addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  hints.ai_family = family;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  bool ok = getaddrinfo(host.c_str(), service.c_str(), &hints, &found) == 0 && found != nullptr &&
            found->ai_addrlen <= sizeof(out->storage) && (family == AF_UNSPEC || found->ai_family == family);
  if (ok) {
    std::memcpy(&out->storage, found->ai_addr, found->ai_addrlen);
    out->length = found->ai_addrlen;
  }
  if (found != nullptr) freeaddrinfo(found);
  return ok;
}

inline SockAddr ParseInetOrThrow(Napi::Env env, const std::string& host, int port, int family) {
  SockAddr addr;
  if (!ParseInet(host, port, family, &addr)) {
    Napi::Error error = Napi::TypeError::New(env, "host must be an IPv4 or IPv6 address: " + host);
    error.Set("code", Napi::String::New(env, "ERR_INVALID_IP_ADDRESS"));
    throw error;
  }
  return addr;
}

// How a Unix address shows in messages: an abstract name as "@name".
inline std::string UnixWhere(const std::string& path) {
  return !path.empty() && path[0] == '\0' ? "@" + path.substr(1) : path;
}

// A filesystem path, or a Linux abstract name starting with NUL (no filesystem entry).
inline SockAddr ParseUnixOrThrow(Napi::Env env, const std::string& path, const char* syscall) {
  SockAddr addr;
  addr.where = UnixWhere(path);
  bool abstract = !path.empty() && path[0] == '\0';
  auto* sun = reinterpret_cast<sockaddr_un*>(&addr.storage);
  sun->sun_family = AF_UNIX;
  // A filesystem path needs room for its terminating NUL; an abstract name does not.
  size_t limit = abstract ? sizeof(sun->sun_path) : sizeof(sun->sun_path) - 1;
  if (path.empty() || path.size() > limit) throw SystemError(env, ENAMETOOLONG, syscall, addr.where);
  std::memcpy(sun->sun_path, path.data(), path.size());
  addr.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1));
  return addr;
}

// An IP address as text; link-local IPv6 keeps its scope ("fe80::1%eth0") so a
// reply can go back to it.
inline std::string InetHost(const sockaddr_storage& ss, int* port) {
  char host[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
    if (port) *port = ntohs(sin->sin_port);
    return host;
  }
  const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
  inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
  if (port) *port = ntohs(sin6->sin6_port);
  std::string text = host;
  if (sin6->sin6_scope_id != 0) {
    char name[IF_NAMESIZE] = {0};
    text += "%";
    text += if_indextoname(sin6->sin6_scope_id, name) != nullptr ? std::string(name) : std::to_string(sin6->sin6_scope_id);
  }
  return text;
}

// A Unix address as the kernel returned it: a path (NUL-terminated inside
// sun_path), an abstract name (leading NUL kept), or "" for an unbound socket.
inline std::string UnixPath(const sockaddr_storage& ss, socklen_t length) {
  const auto* sun = reinterpret_cast<const sockaddr_un*>(&ss);
  size_t size = length > offsetof(sockaddr_un, sun_path) ? length - offsetof(sockaddr_un, sun_path) : 0;
  if (size > sizeof(sun->sun_path)) size = sizeof(sun->sun_path);
  if (size == 0) return "";
  if (sun->sun_path[0] == '\0') return std::string(sun->sun_path, size);
  return std::string(sun->sun_path, strnlen(sun->sun_path, size));
}

// A socket file's mode and group as asked for; -1: as the umask and the
// directory make them. A group is given only with a mode.
struct FileOwnership {
  int mode = -1;
  long long gid = -1;
};

// { mode, gid } of an options object (paths.cc).
FileOwnership ArgOwnership(const Napi::Object& options);

// bind(2) to a Unix address; a filesystem path with a mode is created with
// that mode and group (paths.cc). Throws a Node-shaped error.
void BindUnix(Napi::Env env, int fd, const SockAddr& addr, const FileOwnership& ownership);

// The parts of the addon, each registering its bindings on `exports`.
void InitSockets(Napi::Env env, Napi::Object exports);
void InitFilter(Napi::Env env, Napi::Object exports);
void InitPoll(Napi::Env env, Napi::Object exports);
void InitNotify(Napi::Env env, Napi::Object exports);
void InitPidfd(Napi::Env env, Napi::Object exports);
void InitPaths(Napi::Env env, Napi::Object exports);
void InitSpawn(Napi::Env env, Napi::Object exports);

}  // namespace ecdysis

#endif  // ECDYSIS_NATIVE_COMMON_H_
