/*
 * Linked into every prebuilt addon (scripts/prebuild/build.ts), never into a
 * build from source.
 *
 * Prebuilds link libstdc++ statically (-static-libstdc++, its symbols hidden
 * by --exclude-libs), so they load whatever libstdc++ the host has, or none: a
 * glibc host may have one older than this compiler's, and Debian has no musl
 * build of libstdc++ at all. The musl build also links libgcc's unwinder
 * statically (musl-gcc's way); glibc builds use the host's libgcc_s, which
 * every Node binary loads anyway. Those archives were compiled against
 * Debian's glibc 2.36 and refer to symbols that older glibc, or musl, lacks.
 * Each one is defined here, hidden, so the addon binds to its own copy and the
 * dynamic loader never looks for it. The result needs glibc 2.28 (as Node's
 * own Linux binaries do) or musl.
 */
#define _GNU_SOURCE
#include <link.h>
#include <stdint.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HIDDEN __attribute__((visibility("hidden")))

/*
 * glibc >= 2.32 sets this while the process has one thread, letting libstdc++
 * skip atomic reference counts. Zero is always correct: atomics everywhere.
 */
HIDDEN char __libc_single_threaded = 0;

/*
 * glibc >= 2.36. Pulled in with std::random_device, which the addon never
 * constructs; correct anyway: the kernel's random bytes.
 */
HIDDEN uint32_t arc4random(void) {
  uint32_t value = 0;
  while (getrandom(&value, sizeof value, 0) != (ssize_t)sizeof value) {
  }
  return value;
}

#ifndef __GLIBC__
/*
 * musl only. The static unwinder (libgcc_eh, built for glibc >= 2.35) finds a
 * frame's unwind tables only through _dl_find_object: without it every C++
 * throw would terminate the process, and node-addon-api reports every
 * JavaScript error with a throw. This answers the same question with
 * dl_iterate_phdr, which musl has:
 * which loaded object maps `pc`, and where its PT_GNU_EH_FRAME is. The layout
 * is glibc's x86_64 `struct dl_find_object` (the only musl target built).
 */
#ifndef __x86_64__
#error "struct dl_find_object below is x86_64's layout"
#endif
struct dl_find_object {
  unsigned long long dlfo_flags;
  void *dlfo_map_start;
  void *dlfo_map_end;
  void *dlfo_link_map;
  void *dlfo_eh_frame;
  unsigned long long reserved[7];
};

struct lookup {
  uintptr_t pc;
  struct dl_find_object *result;
};

static int find_in_object(struct dl_phdr_info *info, size_t size, void *data) {
  struct lookup *lookup = data;
  uintptr_t start = UINTPTR_MAX, end = 0, eh_frame = 0;
  int contains = 0;
  (void)size;
  for (size_t i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *phdr = &info->dlpi_phdr[i];
    uintptr_t from = info->dlpi_addr + phdr->p_vaddr;
    if (phdr->p_type == PT_LOAD) {
      uintptr_t to = from + phdr->p_memsz;
      if (lookup->pc >= from && lookup->pc < to) contains = 1;
      if (from < start) start = from;
      if (to > end) end = to;
    } else if (phdr->p_type == PT_GNU_EH_FRAME) {
      eh_frame = from;
    }
  }
  if (!contains) return 0;
  *lookup->result = (struct dl_find_object){
      .dlfo_map_start = (void *)start,
      .dlfo_map_end = (void *)end,
      .dlfo_eh_frame = (void *)eh_frame,
  };
  return 1;
}

HIDDEN int _dl_find_object(void *pc, struct dl_find_object *result) {
  struct lookup lookup = {(uintptr_t)pc, result};
  return dl_iterate_phdr(find_in_object, &lookup) ? 0 : -1;
}
#endif

#ifdef __GLIBC__
/*
 * glibc >= 2.33 exports fstat64; before, <sys/stat.h> routed it to
 * __fxstat64, whose first argument differs per architecture. The system call
 * itself is the same everywhere this is built (x86_64, aarch64: the kernel's
 * struct stat is glibc's struct stat64), and it is what glibc 2.33 makes.
 */
HIDDEN int fstat64(int fd, struct stat64 *buf) {
  return (int)syscall(SYS_fstat, fd, buf);
}
#endif
