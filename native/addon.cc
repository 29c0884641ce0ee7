// The native half of ecdysis: only the socket syscalls Node does not expose.
// Each part registers its own bindings; see common.h for the conventions they share.

#include "common.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ecdysis::InitSockets(env, exports);
  ecdysis::InitFilter(env, exports);
  ecdysis::InitPoll(env, exports);
  ecdysis::InitNotify(env, exports);
  ecdysis::InitPidfd(env, exports);
  ecdysis::InitPaths(env, exports);
  ecdysis::InitSpawn(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(ecdysis, Init)
