// Unix socket files. bind(2) creates the file; its mode and group must be the
// ones asked for from that moment on, and nothing may be done to the path by
// name afterwards: in a directory another user can write, that user can swap
// the path for a symlink to any file between two calls (a chmod through it
// changes that file), and can connect while the mode is still the umask's.
// So the file is created with its final mode and group. An existing file (a
// later release asks for another mode) is changed only through an O_PATH fd
// of the path itself, never of what a link there points to.

#include "common.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/fsuid.h>
#include <sys/stat.h>

#include <cstdio>

namespace ecdysis {
namespace {

constexpr int kPermissionBits = 0777;

struct BindJob {
  int fd;
  const SockAddr* addr;
  FileOwnership ownership;
  bool isolated = false;  // the thread had its own umask and group, and called bind
  int err = 0;            // bind's errno
};

// On its own short-lived thread. unshare(CLONE_FS) gives the thread its own
// umask (otherwise one for the whole process: another thread creating a file
// meanwhile would get ours); the fs gid is per thread already. The kernel gives
// the file the socket inode's mode (0777) minus the umask, and the fs gid as
// group (a setgid directory's own group otherwise), so the file is born final.
void BindOnOwnThread(void* arg) {
  auto* job = static_cast<BindJob*>(arg);
  if (unshare(CLONE_FS) < 0) return;  // refused by a seccomp filter (Docker's default profile)
  umask(static_cast<mode_t>(~job->ownership.mode & kPermissionBits));
  if (job->ownership.gid >= 0) {
    gid_t gid = static_cast<gid_t>(job->ownership.gid);
    setfsgid(gid);
    // setfsgid reports no error; an invalid gid changes nothing and returns the current one.
    if (setfsgid(static_cast<gid_t>(-1)) != static_cast<int>(gid)) return;  // needs CAP_SETGID for a supplementary group
  }
  job->isolated = true;
  if (bind(job->fd, job->addr->get(), job->addr->length) < 0) job->err = errno;
}

// The path no longer names the file this service bound (someone replaced it):
// ENOTSOCK for another kind of file, EEXIST for another socket file.
Napi::Error NotOurFile(Napi::Env env, const struct stat& st, const std::string& where, const char* why) {
  Napi::Error error = MakeSystemError(env, S_ISSOCK(st.st_mode) ? EEXIST : ENOTSOCK, "fstat", where + ": " + why);
  error.Set("address", Napi::String::New(env, where));
  return error;
}

std::string ProcFdPath(int fd) {
  char path[32];
  std::snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  return path;
}

// Where a thread cannot have its own umask or group: the file is created with
// mode 0 (the socket inode's, set with fchmod before bind), which nobody but
// root can connect to, then given its group and mode through an O_PATH fd of
// the path, and only if that is a socket file of this uid with a single link,
// as the one bind just made is (a file swapped in is another user's, or a link
// to one of ours: two links).
void BindThenSet(Napi::Env env, int fd, const SockAddr& addr, const FileOwnership& ownership) {
  if (fchmod(fd, 0) < 0) throw SystemError(env, errno, "fchmod", addr.where);
  if (bind(fd, addr.get(), addr.length) < 0) throw SystemError(env, errno, "bind", addr.where);
  const char* path = reinterpret_cast<const sockaddr_un*>(&addr.storage)->sun_path;
  FdGuard file(RetryOnEintr([&] { return open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC); }));
  if (file.get() < 0) throw SystemError(env, errno, "open", addr.where);
  struct stat st;
  if (fstat(file.get(), &st) < 0) throw SystemError(env, errno, "fstat", addr.where);
  if (!S_ISSOCK(st.st_mode) || st.st_uid != geteuid() || st.st_nlink != 1) {
    throw NotOurFile(env, st, addr.where, "replaced after bind");
  }
  if (ownership.gid >= 0 && fchownat(file.get(), "", static_cast<uid_t>(-1), static_cast<gid_t>(ownership.gid), AT_EMPTY_PATH) < 0) {
    throw SystemError(env, errno, "fchownat", addr.where);
  }
  if (chmod(ProcFdPath(file.get()).c_str(), static_cast<mode_t>(ownership.mode)) < 0) throw SystemError(env, errno, "chmod", addr.where);
}

// A file created in a setgid directory gets the directory's group, whatever
// the fs gid: then the group is set afterwards (BindThenSet).
bool DirectoryDecidesGroup(const char* path, long long gid) {
  if (gid < 0) return false;
  std::string dir(path);
  size_t slash = dir.rfind('/');
  dir = slash == std::string::npos ? "." : slash == 0 ? "/" : dir.substr(0, slash);
  // open + fstat rather than stat: prebuilds link against glibc 2.28, which has no stat64 symbol.
  FdGuard directory(RetryOnEintr([&] { return open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC); }));
  struct stat st;
  return directory.get() >= 0 && fstat(directory.get(), &st) == 0 && (st.st_mode & S_ISGID) != 0 && st.st_gid != static_cast<gid_t>(gid);
}

// setSocketFileMode(path, inode, mode, gid?) -> whether anything changed. The
// file at `path` gets `mode` (and group `gid`) if it is still the socket file
// with that inode: opened O_PATH|O_NOFOLLOW (a link is never followed), then
// changed through that fd. ENOTSOCK or EEXIST when the path names another file.
Napi::Value SetSocketFileMode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "setSocketFileMode(path, inode, mode, gid)";
  std::string path = ArgString(info, 0, usage);
  if (path.empty() || path[0] == '\0' || path.find('\0') != std::string::npos) throw TypeError(env, "path must be a filesystem path");
  double inode = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
  if (!(inode >= 0)) throw TypeError(env, "inode must be a non-negative number");
  int mode = ArgInt(info, 2, 0, kPermissionBits, "mode must be an integer between 0 and 0o777");
  long long gid = info.Length() > 3 && !info[3].IsUndefined() ? ArgInt(info, 3, 0, INT_MAX, "gid must be a non-negative integer") : -1;

  FdGuard file(RetryOnEintr([&] { return open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC); }));
  if (file.get() < 0) throw SystemError(env, errno, "open", path);
  struct stat st;
  if (fstat(file.get(), &st) < 0) throw SystemError(env, errno, "fstat", path);
  if (!S_ISSOCK(st.st_mode) || static_cast<double>(st.st_ino) != inode || st.st_nlink != 1) {
    throw NotOurFile(env, st, path, "not the socket file this service bound");
  }
  int current = static_cast<int>(st.st_mode & kPermissionBits);
  bool regroup = gid >= 0 && st.st_gid != static_cast<gid_t>(gid);
  if (current == mode && !regroup) return Napi::Boolean::New(env, false);
  std::string via = ProcFdPath(file.get());
  // Narrow first, so that neither the old group nor the new one ever has more than both modes allow.
  int narrowed = current & mode;
  if (regroup && narrowed != current && chmod(via.c_str(), static_cast<mode_t>(narrowed)) < 0) throw SystemError(env, errno, "chmod", path);
  if (regroup && fchownat(file.get(), "", static_cast<uid_t>(-1), static_cast<gid_t>(gid), AT_EMPTY_PATH) < 0) {
    throw SystemError(env, errno, "fchownat", path);
  }
  if (chmod(via.c_str(), static_cast<mode_t>(mode)) < 0) throw SystemError(env, errno, "chmod", path);
  return Napi::Boolean::New(env, true);
}

}  // namespace

FileOwnership ArgOwnership(const Napi::Object& options) {
  Napi::Env env = options.Env();
  FileOwnership ownership;
  Napi::Value mode = options.Get("mode");
  if (!mode.IsUndefined()) {
    double value = mode.IsNumber() ? mode.As<Napi::Number>().DoubleValue() : -1;
    if (!(value >= 0 && value <= kPermissionBits && IsWhole(value))) throw TypeError(env, "options.mode must be an integer between 0 and 0o777");
    ownership.mode = static_cast<int>(value);
  }
  Napi::Value gid = options.Get("gid");
  if (!gid.IsUndefined()) {
    double value = gid.IsNumber() ? gid.As<Napi::Number>().DoubleValue() : -1;
    if (!(value >= 0 && value <= INT_MAX && IsWhole(value))) throw TypeError(env, "options.gid must be a non-negative integer");
    if (ownership.mode < 0) throw TypeError(env, "options.gid needs options.mode", "ERR_INVALID_ARG_VALUE");
    ownership.gid = static_cast<long long>(value);
  }
  return ownership;
}

void BindUnix(Napi::Env env, int fd, const SockAddr& addr, const FileOwnership& ownership) {
  const char* path = reinterpret_cast<const sockaddr_un*>(&addr.storage)->sun_path;
  if (path[0] == '\0' || ownership.mode < 0) {
    if (bind(fd, addr.get(), addr.length) < 0) throw SystemError(env, errno, "bind", addr.where);
    return;
  }
  if (DirectoryDecidesGroup(path, ownership.gid)) return BindThenSet(env, fd, addr, ownership);
  BindJob job{fd, &addr, ownership};
  uv_thread_t thread;
  // libuv's thread, not the addon's own: node exports it, so the addon needs no newer libc.
  if (uv_thread_create(&thread, BindOnOwnThread, &job) == 0) uv_thread_join(&thread);
  if (!job.isolated) return BindThenSet(env, fd, addr, ownership);
  if (job.err != 0) throw SystemError(env, job.err, "bind", addr.where);
}

void InitPaths(Napi::Env env, Napi::Object exports) {
  exports.Set("setSocketFileMode", Napi::Function::New(env, SetSocketFileMode, "setSocketFileMode"));
}

}  // namespace ecdysis
