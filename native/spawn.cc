// Starting the next generation without fork(2). libuv's uv_spawn forks on
// Linux: the kernel copies the page tables of the whole (possibly large) heap,
// and the serving loop waits for the child's exec. glibc's posix_spawn uses
// clone(CLONE_VM | CLONE_VFORK): the child shares the parent's memory until its
// exec, so nothing is copied and the call lasts about as long as the exec; on a
// busy machine, until the child gets a core for it. spawnProcessAsync makes
// that call on a thread of libuv's pool: the serving loop only prepares the
// start (the arguments, the file actions, the fd copies) and gets the result
// on a later turn.
//
// The child's fds are laid out by file actions: every source fd is first
// duplicated (close-on-exec) above the highest target, so that no dup2 onto a
// target can overwrite a source still to be placed, and so that a source that
// already sits at its target number still has its close-on-exec flag cleared
// (dup2 onto itself would leave it). The duplicates vanish at the exec, and the
// parent closes its own right after the call. Everything else the process holds
// is close-on-exec already (Node, libuv and this addon open every fd so).
//
// The child is watched and reaped by a ProcessWatch (poll.cc) on a pidfd:
// libuv only waits for the pids it spawned itself, so this child is never
// Node's.

#include "common.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <csignal>
#include <memory>
#include <vector>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

// dlsym moved from libdl into libc in glibc 2.34 (dlsym@@GLIBC_2.34); its first
// version is still there, and binding to it keeps the addon loadable on the
// glibc 2.28 the prebuilds promise (scripts/prebuild/build.ts checks).
#if defined(__GLIBC__) && defined(__x86_64__)
__asm__(".symver dlsym,dlsym@GLIBC_2.2.5");
#elif defined(__GLIBC__) && defined(__aarch64__)
__asm__(".symver dlsym,dlsym@GLIBC_2.17");
#endif

namespace ecdysis {
namespace {

// glibc 2.29 on (musl 1.1.24 on); the prebuilds target 2.28, so looked up at run time.
using AddChdir = int (*)(posix_spawn_file_actions_t*, const char*);

AddChdir FindAddChdir() {
  static AddChdir found = reinterpret_cast<AddChdir>(dlsym(RTLD_DEFAULT, "posix_spawn_file_actions_addchdir_np"));
  return found;
}

bool PidfdWorks() {
  static const bool works = [] {
    long fd = syscall(SYS_pidfd_open, getpid(), 0);
    if (fd < 0) return false;
    ::close(static_cast<int>(fd));
    return true;
  }();
  return works;
}

std::vector<std::string> ArgStrings(const Napi::CallbackInfo& info, size_t index, const char* message) {
  if (info.Length() <= index || !info[index].IsArray()) throw TypeError(info.Env(), message);
  Napi::Array list = info[index].As<Napi::Array>();
  std::vector<std::string> out;
  out.reserve(list.Length());
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value value = list.Get(i);
    if (!value.IsString()) throw TypeError(info.Env(), message);
    std::string text = value.As<Napi::String>().Utf8Value();
    if (text.find('\0') != std::string::npos) throw TypeError(info.Env(), message, "ERR_INVALID_ARG_VALUE");
    out.push_back(std::move(text));
  }
  return out;
}

std::vector<char*> NullTerminated(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (auto& text : strings) out.push_back(text.data());
  out.push_back(nullptr);
  return out;
}

// Frees the spawn attributes and file actions on every way out.
struct SpawnSetup {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attributes;
  bool actions_ready = false;
  bool attributes_ready = false;
  std::vector<FdGuard> copies;
  ~SpawnSetup() {
    if (actions_ready) posix_spawn_file_actions_destroy(&actions);
    if (attributes_ready) posix_spawnattr_destroy(&attributes);
  }
};

// spawnFeatures() -> { chdir, pidfd }: whether spawnProcess can set the child's
// working directory (glibc 2.29 on) and the child can be watched (Linux 5.3 on).
Napi::Value SpawnFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("chdir", Napi::Boolean::New(env, FindAddChdir() != nullptr));
  out.Set("pidfd", Napi::Boolean::New(env, PidfdWorks()));
  return out;
}

// A start prepared on the JavaScript thread (arguments checked, attributes and
// file actions built, the sources duplicated) and run on any thread: the run
// touches only what the job owns.
struct SpawnJob {
  std::string file;
  std::vector<std::string> argv;
  std::vector<std::string> environment;
  SpawnSetup setup;
  // The outcome: pid and pidfd, or the error and the call that failed.
  pid_t pid = 0;
  int pidfd = -1;
  int error = 0;
  const char* syscall = nullptr;

  void Run() {
    std::vector<char*> argv_pointers = NullTerminated(argv);
    std::vector<char*> env_pointers = NullTerminated(environment);
    int err = posix_spawn(&pid, file.c_str(), &setup.actions, &setup.attributes, argv_pointers.data(), env_pointers.data());
    if (err != 0) {
      error = err;
      syscall = "posix_spawn";
      pid = 0;
      return;
    }
    long fd = syscall_pidfd_open(pid);
    if (fd < 0) {
      // Cannot happen for a child not yet reaped, short of ENOSYS or EMFILE
      // (spawnFeatures says which): the caller must not be left with a child
      // it cannot watch. Kill and reap it here.
      error = errno;
      syscall = "pidfd_open";
      kill(pid, SIGKILL);
      int status = 0;
      RetryOnEintr([&] { return waitpid(pid, &status, 0); });
      return;
    }
    pidfd = static_cast<int>(fd);
  }

  // On the JavaScript thread: { pid, pidfd }, or the error to throw or pass on.
  Napi::Value Result(Napi::Env env, Napi::Error* failure) {
    if (error != 0) {
      bool spawn = std::string(syscall) == "posix_spawn";
      Napi::Error e = SystemError(env, error, syscall, spawn ? file : std::to_string(pid));
      // libuv has no name for it (a file with the execute bit that is no program).
      if (spawn && error == ENOEXEC) {
        e.Set("code", Napi::String::New(env, "ENOEXEC"));
        e.Set("message", Napi::String::New(env, "posix_spawn ENOEXEC " + file));
      }
      *failure = e;
      return env.Undefined();
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("pid", Napi::Number::New(env, pid));
    out.Set("pidfd", Napi::Number::New(env, static_cast<double>(pidfd)));
    pidfd = -1;  // the caller's now
    return out;
  }

  // A child nobody was told about (its environment went away first) is not left running unwatched.
  ~SpawnJob() {
    if (pidfd < 0) return;
    ::close(pidfd);
    kill(pid, SIGKILL);
    int status = 0;
    RetryOnEintr([&] { return waitpid(pid, &status, 0); });
  }

  static long syscall_pidfd_open(pid_t pid) { return ::syscall(SYS_pidfd_open, pid, 0); }
};

// Checks the arguments and builds the job (see spawnProcess below).
std::unique_ptr<SpawnJob> PrepareSpawn(const Napi::CallbackInfo& info, const char* usage) {
  Napi::Env env = info.Env();
  auto job = std::make_unique<SpawnJob>();
  job->file = ArgString(info, 0, usage);
  job->argv = ArgStrings(info, 1, usage);
  job->environment = ArgStrings(info, 2, usage);
  bool chdir = info.Length() > 3 && !info[3].IsNull() && !info[3].IsUndefined();
  std::string cwd = chdir ? ArgString(info, 3, usage) : std::string();
  if (info.Length() <= 4 || !info[4].IsArray()) throw TypeError(env, usage);
  Napi::Array fd_list = info[4].As<Napi::Array>();
  std::vector<int> fds;
  for (uint32_t i = 0; i < fd_list.Length(); i++) {
    Napi::Value value = fd_list.Get(i);
    if (!value.IsNumber()) throw TypeError(env, "spawnProcess: fds must be integers (-1 for none)");
    double fd = value.As<Napi::Number>().DoubleValue();
    if (!(fd >= -1 && fd <= INT_MAX) || !IsWhole(fd)) throw TypeError(env, "spawnProcess: fds must be integers (-1 for none)");
    fds.push_back(static_cast<int>(fd));
  }
  const std::string& file = job->file;
  if (file.empty() || job->argv.empty()) throw TypeError(env, "spawnProcess: file and argv[0] are required", "ERR_INVALID_ARG_VALUE");
  if (file.find('\0') != std::string::npos || cwd.find('\0') != std::string::npos) {
    throw TypeError(env, "spawnProcess: file and cwd must not contain NUL", "ERR_INVALID_ARG_VALUE");
  }
  AddChdir add_chdir = FindAddChdir();
  if (chdir && add_chdir == nullptr) throw SystemError(env, ENOSYS, "posix_spawn_file_actions_addchdir_np");

  SpawnSetup& setup = job->setup;
  int err = posix_spawn_file_actions_init(&setup.actions);
  if (err != 0) throw SystemError(env, err, "posix_spawn_file_actions_init");
  setup.actions_ready = true;
  err = posix_spawnattr_init(&setup.attributes);
  if (err != 0) throw SystemError(env, err, "posix_spawnattr_init");
  setup.attributes_ready = true;

  // As libuv does for its children: no blocked signal, every disposition back
  // to the default (Node ignores SIGPIPE; an ignored signal stays so across exec).
  sigset_t none;
  sigset_t all;
  sigemptyset(&none);
  sigfillset(&all);
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  posix_spawnattr_setsigmask(&setup.attributes, &none);
  posix_spawnattr_setsigdefault(&setup.attributes, &all);
  err = posix_spawnattr_setflags(&setup.attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  if (err != 0) throw SystemError(env, err, "posix_spawnattr_setflags");

  if (chdir) {
    err = add_chdir(&setup.actions, cwd.c_str());
    if (err != 0) throw SystemError(env, err, "posix_spawn_file_actions_addchdir_np", cwd);
  }
  int targets = static_cast<int>(fds.size());
  for (int target = 0; target < targets; target++) {
    int source = fds[target];
    if (source < 0) {
      if (target <= 2) {
        err = posix_spawn_file_actions_addopen(&setup.actions, target, "/dev/null", target == 0 ? O_RDONLY : O_RDWR, 0);
        if (err != 0) throw SystemError(env, err, "posix_spawn_file_actions_addopen");
      }
      continue;  // above 2, closed: nothing below `targets` is inherited unless placed
    }
    // Above every target: no dup2 of this layout can overwrite it. Owned by
    // the job: the caller may close its own fds as soon as this returns.
    int copy = fcntl(source, F_DUPFD_CLOEXEC, targets);
    if (copy < 0) throw SystemError(env, errno, "fcntl", std::to_string(source));
    setup.copies.emplace_back(copy);
    err = posix_spawn_file_actions_adddup2(&setup.actions, copy, target);
    if (err != 0) throw SystemError(env, err, "posix_spawn_file_actions_adddup2");
  }
  // fds below `targets` that this process holds without close-on-exec and that
  // the layout leaves out must not reach the child either.
  for (int target = 3; target < targets; target++) {
    if (fds[target] >= 0) continue;
    int flags = fcntl(target, F_GETFD);
    if (flags >= 0 && !(flags & FD_CLOEXEC)) {
      err = posix_spawn_file_actions_addclose(&setup.actions, target);
      if (err != 0) throw SystemError(env, err, "posix_spawn_file_actions_addclose");
    }
  }
  return job;
}

// spawnProcess(file, argv, env, cwd, fds) -> { pid, pidfd }
//   file: the program, a path (no PATH search); argv: its argv, argv[0] first;
//   env: "NAME=value" strings; cwd: a directory, or null for this process's own;
//   fds: the child's fds from 0 on: fds[i] becomes the child's fd i, -1 leaves
//   fd i closed in the child (fds 0-2: /dev/null). Nothing else is inherited.
// The pidfd (close-on-exec) belongs to the caller: hand it to a ProcessWatch,
// which reaps the child. Throws a system error (syscall 'posix_spawn') when the
// program or the directory cannot be used: ENOENT, EACCES, ENOEXEC...
// Returns once the child has exec'd (glibc's posix_spawn waits for it).
Napi::Value SpawnProcess(const Napi::CallbackInfo& info) {
  std::unique_ptr<SpawnJob> job = PrepareSpawn(info, "spawnProcess(file, argv, env, cwd, fds)");
  job->Run();
  Napi::Error failure;
  Napi::Value out = job->Result(info.Env(), &failure);
  if (!failure.IsEmpty()) throw failure;
  return out;
}

// Runs a prepared start on a thread of libuv's pool (no thread of the addon's
// own: the prebuilds stay within what glibc 2.28 exports), then calls back on
// the JavaScript thread.
class SpawnWorker : public Napi::AsyncWorker {
 public:
  SpawnWorker(Napi::Function callback, std::unique_ptr<SpawnJob> job) : Napi::AsyncWorker(callback, "ecdysis spawn"), job_(std::move(job)) {}

  void Execute() override { job_->Run(); }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    Napi::Error failure;
    Napi::Value out = job_->Result(env, &failure);
    if (failure.IsEmpty()) Callback().Call({env.Null(), out});
    else Callback().Call({failure.Value()});
    job_.reset();  // the fd copies close now
  }

 private:
  std::unique_ptr<SpawnJob> job_;
};

// spawnProcessAsync(file, argv, env, cwd, fds, callback): spawnProcess's start
// on a thread of libuv's pool, so that the calling thread does not wait for
// the child's exec (on a busy machine, until the child gets a core). The
// arguments are checked, and the fds duplicated, before this returns: the
// caller may close its own at once. callback(error, { pid, pidfd }) runs on the
// calling thread; until then the start keeps the event loop alive.
Napi::Value SpawnProcessAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "spawnProcessAsync(file, argv, env, cwd, fds, callback)";
  if (info.Length() <= 5 || !info[5].IsFunction()) throw TypeError(env, usage);
  std::unique_ptr<SpawnJob> job = PrepareSpawn(info, usage);
  (new SpawnWorker(info[5].As<Napi::Function>(), std::move(job)))->Queue();
  return env.Undefined();
}

}  // namespace

void InitSpawn(Napi::Env env, Napi::Object exports) {
  exports.Set("spawnFeatures", Napi::Function::New(env, SpawnFeatures, "spawnFeatures"));
  exports.Set("spawnProcess", Napi::Function::New(env, SpawnProcess, "spawnProcess"));
  exports.Set("spawnProcessAsync", Napi::Function::New(env, SpawnProcessAsync, "spawnProcessAsync"));
}

}  // namespace ecdysis
