#!/usr/bin/env python3
"""Files a GPU run's results into the repo: copies the benchmark JSONs that
scripts/gpu_run.sh wrote (unpacked from gpu-results.tar.gz) into bench/results/cuda/
and writes bench/results/cuda/README.md, a short table of every target against its
baseline measured in the same run, naming the GPU, the date and the commit.

usage: scripts/gpu_results.py RESULTS_DIR [OUT_DIR]
"""
import json
import pathlib
import shutil
import sys


def load(folder, name):
    path = folder / name
    if not path.exists() or path.stat().st_size == 0:
        return None
    return json.loads(path.read_text())


def main():
    src = pathlib.Path(sys.argv[1])
    out = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "bench/results/cuda")
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.json")):
        if f.stat().st_size > 0:
            shutil.copy(f, out / f.name)
    for f in ("tests.txt", "serve96.txt", "device.txt"):
        if (src / f).exists():
            shutil.copy(src / f, out / f)

    decode = load(src, "bench_decode_llama13b_cuda.json")
    nographs = load(src, "bench_decode_llama13b_cuda_nographs.json")
    nogemv = load(src, "bench_decode_llama13b_cuda_nogemv.json")
    swap = load(src, "bench_swap_cuda.json")
    nopdl = load(src, "bench_decode_llama13b_cuda_nopdl.json")
    gpt2 = load(src, "bench_decode_gpt2_cuda.json")
    ostax_runs = [r for r in (load(src, "bench_os_tax_cuda.json"), load(src, "bench_os_tax_cuda_ipc.json")) if r]
    any_result = decode or swap or gpt2 or (ostax_runs[0] if ostax_runs else None)
    machine = any_result["machine"] if any_result else {}
    gpu = machine.get("gpu", {}).get("name", "?")
    date = (src / "device.txt").read_text().splitlines()[0].replace("date: ", "") if (src / "device.txt").exists() else "?"
    lines = [
        "# GPU results",
        "",
        f"GPU: **{gpu}** ({machine.get('logical_cores', '?')} host cores), run {date}, "
        f"commit `{machine.get('git_commit', '?')}`. Made by `scripts/gpu_run.sh` on the GPU machine and filed by "
        "`scripts/gpu_results.py`; every ratio is against a baseline measured in the same run.",
        "",
        "| what | measured | baseline (same run) | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def row(what, measured, baseline, ratio, target, met):
        lines.append(f"| {what} | {measured} | {baseline} | {ratio} | {target} | {'yes' if met else '**no**'} |")

    if decode:
        b = decode["baselines"]
        t = decode["targets"]
        m = decode["model"]
        copy, gemm = b["copy"]["gbps"], b["gemm"]["tflops"]
        row(f"{m['name']} {m['dtype']} decode step, context {decode['prompt_len']}",
            f"{decode['decode_ms_per_token_p50']:.2f} ms p50",
            f"{m['weight_bytes'] / 1e9:.1f} GB / {copy:.0f} GB/s copy = {t['decode_bound_ms']:.2f} ms",
            f"{t['decode_step_over_bound']:.2f}x", "<= 1.25x", t["decode_step_over_bound"] <= 1.25)
        row(f"{m['name']} prefill {decode['prompt_len']} tokens", f"{decode['prefill_ms']:.1f} ms = "
            f"{decode['prefill_tflops']:.0f} TFLOP/s", f"cuBLAS {b['gemm']['input']} 8192^3: {gemm:.0f} TFLOP/s",
            f"{t['prefill_pct_of_gemm']:.1f}%", ">= 60%", t["prefill_pct_of_gemm"] >= 60)
        for r in decode.get("batched", []):
            row(f"batched decode x{r['batch']}, context {r['context']}", f"{r['step_ms_p50']:.2f} ms/step, "
                f"{r['achieved_gbps']:.0f} GB/s", f"copy {copy:.0f} GB/s", f"{r['pct_of_copy_bandwidth']:.1f}%",
                ">= 75%", r["pct_of_copy_bandwidth"] >= 75)
        s = decode.get("decode_during_swaps") or {}
        if s and s.get("slowdown_pct") is not None:
            row("decode step while a session swaps (1.7 GB each way)", f"{s['decode_ms_p50_during_swaps']:.2f} ms p50",
                f"{s['decode_ms_p50_quiet']:.2f} ms with no swap in flight", f"{s['slowdown_pct']:+.1f}%",
                "<= +15%", s["slowdown_pct"] <= 15)
    if swap:
        for r in swap["rows"]:
            mib = round(r["bytes"] / 2**20)  # a session size rounded to whole slots
            row(f"swap-out {mib} MiB", f"{r['out_gbps']:.1f} GB/s", f"pinned cudaMemcpyAsync {r['raw_out_gbps']:.1f}",
                f"{r['out_pct_of_raw']:.0f}%", ">= 90%", r["out_pct_of_raw"] >= 90)
            row(f"swap-in {mib} MiB", f"{r['in_gbps']:.1f} GB/s", f"pinned cudaMemcpyAsync {r['raw_in_gbps']:.1f}",
                f"{r['in_pct_of_raw']:.0f}%", ">= 90%", r["in_pct_of_raw"] >= 90)
            row(f"swap both ways at once {mib} MiB", f"{r['both_gbps']:.1f} GB/s total",
                f"raw both {r['raw_both_gbps']:.1f}", "", ">= 85 GB/s", r["both_gbps"] >= 85)
    short_both = [r for r in swap["rows"] if r["both_gbps"] < 85] if swap else []
    both_note = None
    if short_both:
        # Two copies that overlap perfectly finish when the slower one does alone: the
        # most both ways can reach is twice the slower direction's raw throughput.
        both_note = ("Both ways at once below 85 GB/s: " + "; ".join(
            f"{round(r['bytes'] / 2**20)} MiB {r['both_gbps']:.1f} GB/s, raw both {r['raw_both_gbps']:.1f}, at most "
            f"{2 * min(r['raw_out_gbps'], r['raw_in_gbps']):.1f} if the two raw copies overlapped perfectly"
            for r in short_both) + ". Swaps of at most 4 MiB issued while the device is idle are waited for as they "
            "are issued (Note [Waited small swaps], cuda_backend.cc), so two of them run one after the other.")
    if (src / "serve96.txt").exists():
        text = (src / "serve96.txt").read_text().splitlines()
        first = text[0] if text else "?"
        ms = int(first.split()[2]) if first.startswith("serving after") else None
        row("`djinn serve --host-swap-pool-gb 96`: answering Stats", first.replace("serving after ", ""),
            "", "", "<= 15 s", ms is not None and ms <= 15000)
        done = [l for l in text if not l.endswith("-1.0")][-1:] if len(text) > 1 else []
        if done:
            lines.append("")
            lines.append(f"Pinned pool fully ready (96 GiB, populated in parallel and registered chunk by chunk in the "
                         f"background): `{done[0]}`.")
    lines.append("")
    if both_note:
        lines.append(both_note)
    if swap and all("in_step_follows_pct_of_raw" in r for r in swap["rows"]):
        lines.append("Swap-in as a step on a swapped session issues it (`SwapUse::kStepFollows`: ordered before the step "
                     "on the device, never waited for as it is issued, timed by events), against the same raw copy: " +
                     ", ".join(f"{round(r['bytes'] / 2**20)} MiB {r['in_step_follows_pct_of_raw']:.0f}%"
                               for r in swap["rows"]) + ".")
    if nographs and decode:
        lines.append(f"Step capture (CUDA graphs) off, same GPU, same run: decode step "
                     f"{nographs['decode_ms_per_token_p50']:.2f} ms p50 (on: {decode['decode_ms_per_token_p50']:.2f}); "
                     + ", ".join(f"batched x{r['batch']} {r['step_ms_p50']:.2f} ms = {r['pct_of_copy_bandwidth']:.1f}%"
                                 for r in nographs.get("batched", [])) + ".")
    if nogemv and decode:
        lines.append(f"Decode products through cuBLASLt instead of the GEMV kernel (`DJINN_CUDA_GEMV=0`), same run: "
                     f"decode step {nogemv['decode_ms_per_token_p50']:.2f} ms p50 "
                     f"(GEMV: {decode['decode_ms_per_token_p50']:.2f}).")
    if nopdl and decode:
        lines.append(f"Kernels launched without programmatic dependent launch (`DJINN_CUDA_PDL=0`), same run: "
                     f"decode step {nopdl['decode_ms_per_token_p50']:.2f} ms p50 "
                     f"(with: {decode['decode_ms_per_token_p50']:.2f}); "
                     + ", ".join(f"batched x{r['batch']} {r['step_ms_p50']:.2f} ms = {r['pct_of_copy_bandwidth']:.1f}%"
                                 for r in nopdl.get("batched", [])) + ".")
    if gpt2:
        lines.append(f"gpt2 f32 on cuda: prefill 128 tokens {gpt2['prefill_ms']:.2f} ms, decode "
                     f"{gpt2['decode_ms_per_token_p50']:.3f} ms/token p50.")
    for ostax in ostax_runs:
        floor = ostax["floor_us_p50"]
        rows = {r["op"]: r for r in ostax["rows"]}
        parts = [f"{r['op']} native {r['native_us_p50']:.0f} µs, warm {r['warm_us_p50']:.0f} µs, cold {r['cold_us']:.0f} µs"
                 for r in ostax["rows"]]
        line = (f"os-tax on cuda over {ostax['transport']} (commit `{ostax['machine'].get('git_commit', '?')}`; floor "
                f"{floor:.1f} µs, bare ZeroMQ echo {ostax['zmq_echo_us_p50']:.1f} µs = "
                f"{ostax['zmq_echo_us_p50'] / floor:.2f} x floor"
                + (f", same-CPU hand-off {ostax['same_cpu_handoff_us_p50']:.1f} µs, 4 per ZeroMQ round trip"
                   if "same_cpu_handoff_us_p50" in ostax else "")
                + "): " + "; ".join(parts) + ".")
        add = rows.get("micro_add")
        if add:
            line += (f" micro_add overhead over native {add['overhead_us_p50']:.1f} µs = "
                     f"**{add['overhead_over_floor']:.2f} x** the floor (target ≤ 2).")
        forward = rows.get("full_forward")
        if forward and "cold_minus_warm_paired_us" in forward:
            ci = forward.get("cold_minus_warm_paired_ci95_us")
            ci_text = f"95 % CI {ci[0] / 1e3:.2f} .. {ci[1] / 1e3:.2f}; " if ci else ""
            line += (f" full_forward cold minus warm, paired per server: **{forward['cold_minus_warm_paired_us'] / 1e3:.2f} ms**"
                     f" ({ci_text}target ≤ 2), of which "
                     f"{forward['cold_minus_warm_outside_compute_us'] / 1e3:.2f} ms outside the server's compute.")
        lines.append(line)
    for name, what in (("profile_decode_llama13b.err", "single-session decode, 64 steps, short context"),
                       ("profile_decode_llama13b_batch8.err", "the same plus 64 batched steps of 8 sessions")):
        if (src / name).exists():
            text = (src / name).read_text()
            if "cuda op profile" in text:
                table = text[text.index("cuda op profile"):].splitlines()
                body = [table[0]] + [l for l in table[1:] if l.startswith("  ")]
                lines.append("")
                lines.append(f"GPU time by op ({what}; `DJINN_CUDA_OP_PROFILE=1`, steps uncaptured):")
                lines.append("")
                lines.append("```")
                lines.extend(body)
                lines.append("```")
    if (src / "tests.txt").exists():
        lines.append("")
        lines.append("CUDA tests on this GPU: " + " ".join((src / "tests.txt").read_text().split()) + ".")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main()
