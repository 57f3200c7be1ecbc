#!/usr/bin/env bash
# Builds djinn with the CUDA backend (sm_90) on this machine and packs what the GPU
# machine needs into bundle/ (git-ignored, must stay under 64 MiB): the djinn binary,
# the test binaries, the non-system shared libraries they load (ldd, minus glibc (libmvec too),
# libstdc++/libgcc and CUDA, which the GPU machine has; xz-compressed) and
# scripts/gpu_run.sh. The golden fixtures travel with the tree (tests/golden). Then, on the GPU machine: `bash bundle/gpu_run.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
./scripts/build.sh -DDJINN_CUDA=ON
rm -rf bundle
mkdir -p bundle/bin bundle/lib
cp build/src/djinn bundle/bin/
for t in build/tests/*_test; do cp "$t" bundle/bin/; done
strip --strip-debug bundle/bin/*  # debug info is most of their size
cp scripts/gpu_run.sh bundle/
system_libs='^(linux-vdso|ld-linux|libc\.|libm\.|libmvec\.|libdl\.|libpthread\.|librt\.|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libnvidia)'
for binary in bundle/bin/*; do
  ldd "$binary" | awk '$3 ~ /^\// {print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $system_libs ]] || cp -n "$path" bundle/lib/
  done
done
# OpenBLAS alone is ~36 MiB: ship the libraries xz-compressed; gpu_run.sh unpacks them.
tar -C bundle -cJf bundle/lib.tar.xz lib && rm -rf bundle/lib
size_kib=$(du -sk bundle | cut -f1)
echo "djinn: bundle/ is $((size_kib / 1024)) MiB ($(ls bundle/bin | wc -l) binaries, $(tar -tJf bundle/lib.tar.xz | grep -c '\.so') libraries)" >&2
if [ "$size_kib" -gt $((64 * 1024)) ]; then
  echo "djinn: bundle/ is over 64 MiB" >&2
  exit 1
fi
