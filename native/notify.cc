// Talking to a service manager and knowing who is on the other end of a Unix
// socket: sd_notify-style datagrams and SO_PEERCRED.

#include "common.h"

namespace ecdysis {
namespace {

// notify(socketPath, message): one datagram to an AF_UNIX SOCK_DGRAM socket, as
// sd_notify(3) sends it. The path is a filesystem path or an abstract name written
// with a leading '@' (NOTIFY_SOCKET's convention). The socket is fresh, close-on-
// exec and non-blocking: a service manager that stopped reading makes this throw
// EAGAIN instead of stalling the event loop. MSG_NOSIGNAL: never SIGPIPE.
Napi::Value Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "notify(socketPath, message): socketPath must be a string");
  std::string message = ArgString(info, 1, "notify(socketPath, message): message must be a string");
  if (!path.empty() && path[0] == '@') path[0] = '\0';
  SockAddr to = ParseUnixOrThrow(env, path, "sendto");

  FdGuard fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) throw SystemError(env, errno, "socket", to.where);
  ssize_t sent = RetryOnEintr([&] {
    return sendto(fd.get(), message.data(), message.size(), MSG_NOSIGNAL, to.get(), to.length);
  });
  if (sent < 0) throw SystemError(env, errno, "sendto", to.where);
  return env.Undefined();
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
  exports.Set("peerCredentials", Napi::Function::New(env, PeerCredentials, "peerCredentials"));
}

}  // namespace ecdysis
