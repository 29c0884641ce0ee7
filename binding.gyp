{
  "targets": [
    {
      "target_name": "ecdysis",
      "sources": [
        "native/addon.cc",
        "native/sockets.cc",
        "native/filter.cc",
        "native/poll.cc",
        "native/notify.cc",
        "native/pidfd.cc",
        "native/paths.cc",
        "native/spawn.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      # NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS: a binding that throws while its
      # environment is terminating (worker.terminate(), process.exit() in a
      # worker) must not abort the process because JS cannot take the exception.
      "defines": ["NAPI_VERSION=8", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      # dlsym (posix_spawn_file_actions_addchdir_np): libdl before glibc 2.34.
      "libraries": ["-ldl"],
      # Small rather than fast: every process of a service maps the whole
      # object (the kernel's fault-around maps a small file in one go), and
      # what it runs is a syscall at a time. -Os, unused sections dropped and
      # only the module's entry exported: 264 -> 140 kB of sections, 268 ->
      # 148 KiB of every process's RSS (g++ 12, x64).
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Os", "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-ffunction-sections", "-fdata-sections"],
      "cflags!": ["-O3"],
      "cflags_cc!": ["-O3"],
      "ldflags": ["-Wl,--gc-sections", "-Wl,-O1"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    }
  ]
}
