#!/bin/sh
# npm run bench:compare -- REF [compare.js options]
#
# Builds git REF (a commit, tag or branch of this checkout) in a temporary worktree and runs
# bench/compare.ts against it: the microbenchmarks of REF and of this checkout's build, interleaved in
# the same processes. Exit 1 if an established-packet case is more than 5 % slower here.
set -eu
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: npm run bench:compare -- REF [--only SUITES] [--match TEXT] [--rounds N] [--procs N] [--json PATH] [--default-jit]" >&2
  exit 2
fi
ref=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
rev=$(git -C "$root" rev-parse --verify --quiet "$ref^{commit}") || { echo "bench:compare: no commit $ref" >&2; exit 2; }
tmp=$(mktemp -d /tmp/tunnat-compare.XXXXXX)
cleanup() {
  git -C "$root" worktree remove --force "$tmp/tree" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
git -C "$root" worktree add --detach "$tmp/tree" "$rev" >/dev/null
# The same dependencies as this checkout: only the code under test differs.
ln -s "$root/node_modules" "$tmp/tree/node_modules"
echo "building $ref ($rev) …" >&2
(cd "$tmp/tree" && "$root/node_modules/.bin/tsc" -p tsconfig.build.json)
(cd "$root" && "$root/node_modules/.bin/tsc" -p tsconfig.build.json)
node "$root/dist/bench/compare.js" --before "$tmp/tree" --after "$root" "$@"
