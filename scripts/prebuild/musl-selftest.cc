// Built with the musl prebuild's toolchain and flags, and run by musl-load.c:
// what the addon relies on from the statically linked, glibc-built libstdc++
// and libgcc_eh, exercised under musl. Returns 0, or the number of the check
// that failed.
#include <stdexcept>
#include <string>
#include <vector>

namespace {
[[gnu::noinline]] void Throw(const std::string& what) { throw std::runtime_error(what); }
}  // namespace

extern "C" int ecdysis_selftest() {
  // A throw that unwinds through a frame, caught by type with its message.
  try {
    Throw(std::string("bind EADDRINUSE ") + std::to_string(8080));
    return 1;
  } catch (const std::runtime_error& err) {
    if (std::string(err.what()) != "bind EADDRINUSE 8080") return 2;
  }
  // Rethrow and catch-all, as node-addon-api's callback wrapper does.
  try {
    try {
      std::vector<int> v;
      (void)v.at(3);
      return 3;
    } catch (...) {
      throw;
    }
  } catch (const std::out_of_range&) {
  }
  return 0;
}
