// Signalling a process by a pidfd, so that a pid checked first and signalled
// afterwards cannot have been reused in between (the CLI's --pid-file mode).
// pidfd_open(2) (Linux 5.3) and pidfd_send_signal(2) (Linux 5.1) have no glibc
// wrappers on older libcs: raw syscalls.

#include "common.h"

#include <sys/syscall.h>

#include <csignal>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

namespace ecdysis {
namespace {

// pidfdOpen(pid) -> fd referring to that process (close-on-exec: pidfd_open
// always sets it). ESRCH when there is no such process; ENOSYS before Linux 5.3.
Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt(info, 0, 1, INT_MAX, "pidfdOpen(pid): pid must be a positive integer");
  // Not interruptible (it does not sleep), so no EINTR to retry.
  long fd = syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  if (fd < 0) throw SystemError(env, errno, "pidfd_open", std::to_string(pid));
  return Napi::Number::New(env, static_cast<double>(fd));
}

// pidfdSendSignal(fd, signal): the signal goes to the process the pidfd was
// opened for, or nowhere: ESRCH once that process has exited, even if its pid
// now belongs to another one. Signal 0 only checks that it still exists.
Napi::Value PidfdSendSignal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int signal = ArgInt(info, 1, 0, SIGRTMAX, "pidfdSendSignal(fd, signal): signal must be a signal number");
  long rc = RetryOnEintr([&] { return syscall(SYS_pidfd_send_signal, fd, signal, nullptr, 0); });
  if (rc < 0) throw SystemError(env, errno, "pidfd_send_signal");
  return env.Undefined();
}

}  // namespace

void InitPidfd(Napi::Env env, Napi::Object exports) {
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen, "pidfdOpen"));
  exports.Set("pidfdSendSignal", Napi::Function::New(env, PidfdSendSignal, "pidfdSendSignal"));
}

}  // namespace ecdysis
