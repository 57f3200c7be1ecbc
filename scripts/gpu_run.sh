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

# The CUDA tests (cross-backend ops, golden fixtures on cuda); the CPU suites are CI's.
for t in bundle/bin/backend_cuda_test; do
  name=$(basename "$t")
  if "$t" --gtest_brief=1 > "$out/$name.log" 2>&1; then echo "PASS $name"; else echo "FAIL $name:"; tail -n 60 "$out/$name.log"; fi
done | tee "$out/tests.txt"

# GPU benchmarks, each with its baseline measured in the same run (see bench_decode.h,
# bench_swap.cc). DJINN_GPU_BENCH selects a subset: decode13b, gpt2, swap, pool.
want() { [[ " ${DJINN_GPU_BENCH:-gpt2 decode13b swap pool} " == *" $1 "* ]]; }
bench() {  # name, then the djinn arguments
  local name=$1; shift
  echo "== $name: djinn $*"
  "$djinn" "$@" --json > "$out/$name.json" 2> "$out/$name.err" || { echo "FAILED ($?)"; tail -n 5 "$out/$name.err"; }
}
if want gpt2; then bench bench_decode_gpt2_cuda bench decode --model gpt2 --device cuda --prompt-len 128 --n-tokens 32; fi
if want decode13b; then
  bench bench_decode_llama13b_cuda bench decode --model llama-2-13b --dtype f16 --device cuda \
    --prompt-len 2048 --n-tokens 32 --repeats 2 --batches 8,16
fi
if want swap; then bench bench_swap_cuda bench swap --device cuda --max-mb 1024; fi
if want pool; then
  # A server with a 96 GiB pinned host pool: seconds until it answers Stats, and how
  # much of the pool is ready then and later.
  start=$(date +%s%N)
  "$djinn" serve --device cuda --listen tcp://127.0.0.1:5599 --host-swap-pool-gb 96 > "$out/serve96.log" 2>&1 &
  server=$!
  for i in $(seq 1 300); do
    if "$djinn" client --server tcp://127.0.0.1:5599 stats > /tmp/stats.json 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "serving after $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee "$out/serve96.txt"
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
    ready=$("$djinn" client --server tcp://127.0.0.1:5599 stats 2>/dev/null | python3 -c 'import json,sys; p=json.load(sys.stdin)["vmu"]["host_pool"]; print(p["ready_bytes"], p["capacity"], p["ready_seconds"])' 2>&1)
    echo "t=${elapsed}ms ready capacity ready_seconds: $ready" | tee -a "$out/serve96.txt"
    case "$ready" in *" -1"*) sleep 1;; *) break;; esac
  done
  kill -INT $server; wait $server
fi
for f in "$out"/*.json; do
  python3 - "$f" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[1].split("/")[-1], {k: d[k] for k in ("prefill_ms", "decode_ms_per_token_p50", "targets") if k in d})
for r in d.get("batched", []): print("  batch", r["batch"], round(r["step_ms_p50"], 3), "ms", round(r.get("pct_of_copy_bandwidth", 0), 1), "%")
for r in d.get("rows", []): print("  ", r["bytes"], {k: round(v, 1) for k, v in r.items() if k.endswith("gbps")})
PY
done
exit 0
