#!/usr/bin/env bash
# On the GPU machine, from the repository root of the copied tree, with bundle/ made
# by scripts/gpu_bundle.sh: runs the CUDA tests, then the GPU benchmarks, writing the
# device, the test verdicts and logs and the JSON results to a folder, packed at the
# end into $OUT/gpu-results.tar.gz (the device tool returns at most 8 files) beside a
# summary.txt. One command, everything together.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
final="${OUT:-$repo/gpu-results}"
out=/tmp/djinn-gpu-results
rm -rf "$out" && mkdir -p "$out" "$final"
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
# bench_swap.cc). DJINN_GPU_BENCH selects a subset: gpt2, decode13b, profile, swap, ostax, pool.
want() { [[ " ${DJINN_GPU_BENCH:-gpt2 decode13b profile swap ostax pool} " == *" $1 "* ]]; }
bench() {  # name, then the djinn arguments
  local name=$1; shift
  echo "== $name: djinn $*"
  "$djinn" "$@" --json > "$out/$name.json" 2> "$out/$name.err" || { echo "FAILED ($?)"; tail -n 5 "$out/$name.err"; }
}
if want gpt2; then bench bench_decode_gpt2_cuda bench decode --model gpt2 --device cuda --prompt-len 128 --n-tokens 32; fi
if want decode13b; then
  bench bench_decode_llama13b_cuda bench decode --model llama-2-13b --dtype f16 --device cuda \
    --prompt-len 2048 --n-tokens 32 --repeats 2 --batches 8,16 --swap-during --host-swap-pool-gb 8
  # The same decode with step capture (CUDA graphs) off: what replaying a step saves.
  export DJINN_CUDA_GRAPHS=0
  bench bench_decode_llama13b_cuda_nographs bench decode --model llama-2-13b --dtype f16 \
    --device cuda --prompt-len 2048 --n-tokens 32 --repeats 1 --batches 16
  unset DJINN_CUDA_GRAPHS
  # And with the decode products through cuBLAS(Lt) instead of the GEMV kernel.
  export DJINN_CUDA_GEMV=0
  bench bench_decode_llama13b_cuda_nogemv bench decode --model llama-2-13b --dtype f16 \
    --device cuda --prompt-len 2048 --n-tokens 32 --repeats 1
  unset DJINN_CUDA_GEMV
  # And with every kernel launched the plain way (no programmatic dependent launch).
  export DJINN_CUDA_PDL=0
  bench bench_decode_llama13b_cuda_nopdl bench decode --model llama-2-13b --dtype f16 \
    --device cuda --prompt-len 2048 --n-tokens 32 --repeats 1 --batches 16
  unset DJINN_CUDA_PDL
fi
if want profile; then
  # Where a decode step's GPU time goes, by op kind (DJINN_CUDA_OP_PROFILE=1: steps run
  # uncaptured, each op between two events; the table is logged on stderr at exit).
  # Short prompts keep prefill out of the totals; the second run adds batched steps of 8.
  export DJINN_CUDA_OP_PROFILE=1
  bench profile_decode_llama13b bench decode --model llama-2-13b --dtype f16 --device cuda --prompt-len 16 \
    --n-tokens 64 --repeats 1
  bench profile_decode_llama13b_batch8 bench decode --model llama-2-13b --dtype f16 --device cuda --prompt-len 16 \
    --n-tokens 64 --repeats 1 --batches 8
  unset DJINN_CUDA_OP_PROFILE
  grep -A30 "cuda op profile" "$out/profile_decode_llama13b.err" | head -25
fi
if want swap; then bench bench_swap_cuda bench swap --device cuda --max-mb 1024; fi
if want ostax; then
  bench bench_os_tax_cuda bench os-tax --device cuda --listen tcp
  bench bench_os_tax_cuda_ipc bench os-tax --device cuda --listen ipc
fi
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
  for i in $(seq 1 40); do
    elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
    ready=$("$djinn" client --server tcp://127.0.0.1:5599 stats 2>/dev/null | python3 -c 'import json,sys; p=json.load(sys.stdin)["vmu"]["host_pool"]; print(p["ready_bytes"], p["capacity"], p["ready_seconds"])' 2>&1)
    echo "t=${elapsed}ms ready capacity ready_seconds: $ready" | tee -a "$out/serve96.txt"
    case "$ready" in *" -1"*) sleep 1;; *) break;; esac
  done
  kill -INT $server; wait $server
fi
for f in "$out"/*.json; do
  [ -s "$f" ] || continue
  python3 - "$f" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[1].split("/")[-1], {k: d[k] for k in ("prefill_ms", "decode_ms_per_token_p50", "targets") if k in d})
s = d.get("decode_during_swaps") or {}
if s: print("  during swaps", {k: s[k] for k in ("decode_ms_p50_quiet", "decode_ms_p50_during_swaps", "slowdown_pct", "swap_out_gbps", "swap_in_gbps")})
for r in d.get("rows", []) if d.get("benchmark") == "os-tax" else []: print("  ", {k: v for k, v in r.items() if k != "samples"})
for r in d.get("batched", []): print("  batch", r["batch"], round(r["step_ms_p50"], 3), "ms", round(r.get("pct_of_copy_bandwidth", 0), 1), "%")
for r in d.get("rows", []) if d.get("benchmark") == "swap" else []: print("  ", r["bytes"], {k: round(v, 1) for k, v in r.items() if k.endswith("gbps")})
PY
done 2>&1 | tee "$out/summary.txt"
tar -C "$out" -czf "$final/gpu-results.tar.gz" .
cp "$out/summary.txt" "$out/tests.txt" "$final/"
exit 0
