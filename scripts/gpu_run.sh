#!/usr/bin/env bash
# On the GPU machine, from the repository root of the copied tree, with bundle/ made
# by scripts/gpu_bundle.sh: runs every test binary, then the benchmarks, writing a few
# files (the device, the test verdicts with the tail of any failure, JSON results) to
# $OUT (default ./gpu-results). One command, everything together.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out="${OUT:-$repo/gpu-results}"
mkdir -p "$out"
libs=/tmp/djinn-bundle-lib
mkdir -p "$libs" && tar -C "$libs" -xJf "$repo/bundle/lib.tar.xz"
export LD_LIBRARY_PATH="$libs/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
# The test binaries were built at /work/main with build/src/djinn beside them; recreate
# those paths here so the fixtures and the CLI under test are found.
if [ "$repo" != /work/main ]; then mkdir -p /work && ln -sfn "$repo" /work/main; fi
mkdir -p "$repo/build/src" && ln -sf "$repo/bundle/bin/djinn" "$repo/build/src/djinn"
djinn="$repo/bundle/bin/djinn"

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$djinn" run --model llama-tiny --device cuda --prompt-len 4 --max-new-tokens 2 2>&1 | head -3
} | tee "$out/device.txt"

failed=0
for t in bundle/bin/*_test; do
  name=$(basename "$t")
  [ "$name" = fuzz_decoder ] && continue
  if "$t" --gtest_brief=1 > "/tmp/$name.log" 2>&1; then
    echo "PASS $name"
  else
    echo "FAIL $name:"
    tail -n 40 "/tmp/$name.log"
    failed=$((failed + 1))
  fi
done | tee "$out/tests.txt"

# Benchmarks: the CPU backend of this machine (the cuda backend reports what it lacks).
"$djinn" bench decode --model gpt2 --prompt-len 128 --n-tokens 32 --json > "$out/bench_decode_cpu.json" 2> "$out/bench_decode_cpu.err"
"$djinn" bench decode --model gpt2 --device cuda --json > "$out/bench_decode_cuda.json" 2> "$out/bench_decode_cuda.err"
tail -n 2 "$out/bench_decode_cuda.err"
exit 0
