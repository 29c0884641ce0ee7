/*
 * Usage: musl-load ADDON.node STUBS.so [SELFTEST.so]
 *
 * Built with musl-gcc, so musl's own dynamic linker runs it: the nearest thing
 * to a musl Node that Debian provides. STUBS.so defines every N-API and libuv
 * function the addon imports from Node (never called); with those in the
 * global scope, the addon must load with every other symbol bound at once
 * (RTLD_NOW) and its constructors run. SELFTEST.so, when given, is a C++
 * library built with the addon's musl toolchain: its ecdysis_selftest() throws
 * and catches an exception, which needs the static unwinder and the
 * _dl_find_object in compat.c to work under musl.
 */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s ADDON.node STUBS.so [SELFTEST.so]\n", argv[0]);
    return 2;
  }
  if (!dlopen(argv[2], RTLD_NOW | RTLD_GLOBAL)) {
    fprintf(stderr, "stubs: %s\n", dlerror());
    return 1;
  }
  void *addon = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!addon) {
    fprintf(stderr, "addon: %s\n", dlerror());
    return 1;
  }
  if (!dlsym(addon, "napi_register_module_v1")) {
    fprintf(stderr, "addon: no napi_register_module_v1\n");
    return 1;
  }
  if (argc > 3) {
    void *selftest = dlopen(argv[3], RTLD_NOW | RTLD_LOCAL);
    int (*run)(void) = selftest ? (int (*)(void))dlsym(selftest, "ecdysis_selftest") : 0;
    if (!run) {
      fprintf(stderr, "selftest: %s\n", dlerror());
      return 1;
    }
    int result = run();
    if (result != 0) {
      fprintf(stderr, "selftest: check %d failed\n", result);
      return 1;
    }
  }
  printf("loaded by musl%s\n", argc > 3 ? "; C++ exceptions unwind" : "");
  return 0;
}
