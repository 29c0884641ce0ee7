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
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    }
  ]
}
