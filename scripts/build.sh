#!/usr/bin/env bash
# Configures (once) and builds djinn into build/ (or $DJINN_BUILD_DIR). Extra
# arguments go to CMake's configure step, e.g. -DDJINN_CUDA=OFF. The compiler's
# chatter goes to build/build.log and is shown only when the build fails.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${DJINN_BUILD_DIR:-build}"
mkdir -p "$build_dir"
log="$build_dir/build.log"
if [ ! -f "$build_dir/build.ninja" ] || [ $# -gt 0 ]; then
  if ! cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDJINN_WERROR=ON "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "djinn: configure failed (log: $log)" >&2
    exit 1
  fi
fi
echo "djinn: building in $build_dir (log: $log)" >&2
start=$(date +%s)
if ! cmake --build "$build_dir" -- -j"$(nproc)" >>"$log" 2>&1; then
  grep -E -B2 -A12 'error|FAILED' "$log" | head -n 200 >&2
  echo "djinn: build failed (full log: $log)" >&2
  exit 1
fi
echo "djinn: built in $(( $(date +%s) - start )) s" >&2
