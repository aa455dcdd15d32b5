{
  "targets": [
    {
      "target_name": "tunnat_native",
      "sources": ["tun.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags_cc": ["-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"]
    }
  ]
}
