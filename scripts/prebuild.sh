#!/usr/bin/env bash
# Builds the native addon for linux-x64 and linux-arm64 into native/prebuilds/<platform>-<arch>/, where
# node-gyp-build finds it at install and at load time, so that installing the package compiles nothing.
# N-API 8: one build per architecture serves every Node >= 20. npm runs this before `npm pack` and
# `npm publish` (prepack); the architecture that is not the host's is cross-compiled, with Debian's
# g++-aarch64-linux-gnu on amd64 (scripts/install-deps.sh installs it). A package missing either
# architecture is never made: any failure stops the pack.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# prebuildify moves the addon out of build/Release when done, so it builds in a copy of native/: the
# checkout's own source build (native/build, what the tests load) stays as it is.
work=$(mktemp -d "${TMPDIR:-/tmp}/tunnat-prebuild-XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$root/native/binding.gyp" "$root/native/tun.cc" "$work/"
# binding.gyp asks node for node-addon-api's include directory; from the copy it is found through NODE_PATH.
export NODE_PATH="$root/node_modules${NODE_PATH:+:$NODE_PATH}"

# node-gyp needs the running Node's headers. A Node installed with its headers (Debian's, the official
# tarball) has them in <prefix>/include/node: use them rather than downloading (npm_config_nodedir is what
# node-gyp reads, and what an npmrc's nodedir= sets).
if [ -z "${npm_config_nodedir:-}" ]; then
  prefix=$(dirname "$(dirname "$(command -v node)")")
  if [ -f "$prefix/include/node/node_api.h" ]; then export npm_config_nodedir="$prefix"; fi
fi
node_version=$(node -p process.versions.node)

case "$(uname -m)" in
  x86_64) host=x64 ;;
  aarch64) host=arm64 ;;
  *) host=$(uname -m) ;;
esac

rm -rf "$root/native/prebuilds"
for arch in x64 arm64; do
  if [ "$arch" = "$host" ]; then
    tool=
  else
    case "$arch" in
      x64) tool=x86_64-linux-gnu- ;;
      arm64) tool=aarch64-linux-gnu- ;;
    esac
    if ! command -v "${tool}g++" >/dev/null; then
      echo "scripts/prebuild.sh: ${tool}g++ not found, needed for the linux-$arch prebuild: run scripts/install-deps.sh" >&2
      exit 1
    fi
  fi
  echo "prebuild: linux-$arch${tool:+ (cross, ${tool}g++)}"
  rm -rf "$work/build"
  CC="${tool}gcc" CXX="${tool}g++" PREBUILD_STRIP_BIN="${tool}strip" PREBUILD_NODE_GYP="$root/node_modules/.bin/node-gyp" \
    "$root/node_modules/.bin/prebuildify" --napi --strip --target "$node_version" --arch "$arch" \
    --cwd "$work" --out "$root/native"
done
