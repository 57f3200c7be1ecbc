#!/usr/bin/env python3
"""Summarises several `djinn bench os-tax --json` runs: one row per run (floor, bare
ZeroMQ echo, micro_add's overhead as a multiple of the floor, full_forward's paired cold
minus warm with its CI), and per machine and transport the paired cold-minus-warm
differences of every server of every run pooled, their median with a bootstrap 95 % CI
(the commits pooled are listed: pool runs of code that times the same way).

One run's 25 fresh servers put its median within about a millisecond on a small VM,
where a CPU forward jitters by milliseconds; pooling runs narrows that.

usage: scripts/os_tax_summary.py RUN.json... [--json OUT.json]
  prints a Markdown table; --json also writes the rows and the pooled samples.
"""
import json
import random
import statistics
import sys


def median_ci95(samples, resamples=4000, seed=1):
    """Bootstrap 95 % CI of the median (percentiles of resampled medians)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(samples, k=len(samples))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def run_row(path):
    d = json.loads(open(path).read())
    rows = {r["op"]: r for r in d["rows"]}
    add, forward = rows["micro_add"], rows.get("full_forward", {})
    return {
        "file": path,
        "commit": d["machine"].get("git_commit", "?"),
        "cpu": d["machine"].get("cpu_model", "?"),
        "transport": d["transport"],
        "floor_us_p50": d["floor_us_p50"],
        "zmq_echo_us_p50": d["zmq_echo_us_p50"],
        "same_cpu_handoff_us_p50": d.get("same_cpu_handoff_us_p50"),
        "micro_add_overhead_us_p50": add["overhead_us_p50"],
        "micro_add_overhead_over_floor": add["overhead_over_floor"],
        "full_forward_cold_minus_warm_paired_us": forward.get("cold_minus_warm_paired_us"),
        "full_forward_cold_minus_warm_paired_ci95_us": forward.get("cold_minus_warm_paired_ci95_us"),
        "full_forward_cold_minus_warm_outside_compute_us": forward.get("cold_minus_warm_outside_compute_us"),
        "full_forward_paired_samples_us": forward.get("cold_minus_warm_paired_samples", []),
    }


def main():
    args = sys.argv[1:]
    out = None
    if "--json" in args:
        i = args.index("--json")
        if i + 1 >= len(args):
            sys.exit("--json needs a file name\n" + __doc__)
        out = args[i + 1]
        del args[i:i + 2]
    if not args:
        sys.exit(__doc__)
    runs = [run_row(p) for p in args]
    print("| run | commit | transport | floor µs | ZeroMQ echo µs | micro_add overhead µs | × floor (≤ 2) "
          "| full_forward cold − warm, ms (95 % CI) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        ci = r["full_forward_cold_minus_warm_paired_ci95_us"]
        forward = (f"{r['full_forward_cold_minus_warm_paired_us'] / 1e3:.2f} ({ci[0] / 1e3:.2f} .. {ci[1] / 1e3:.2f})"
                   if ci else "")
        print(f"| {r['file'].split('/')[-1]} | `{r['commit']}` | {r['transport']} | {r['floor_us_p50']:.1f} | "
              f"{r['zmq_echo_us_p50']:.1f} | {r['micro_add_overhead_us_p50']:.1f} | "
              f"{r['micro_add_overhead_over_floor']:.2f} | {forward} |")
    pooled = {}
    for cpu, transport in sorted({(r["cpu"], r["transport"]) for r in runs}):
        group = [r for r in runs if (r["cpu"], r["transport"]) == (cpu, transport)]
        samples = [s for r in group for s in r["full_forward_paired_samples_us"]]
        ratios = [r["micro_add_overhead_over_floor"] for r in group]
        if not samples:
            continue
        low, high = median_ci95(samples)
        commits = sorted({r["commit"] for r in group})
        pooled[f"{cpu} {transport}"] = {"cpu": cpu, "transport": transport, "commits": commits, "runs": len(group),
                                        "servers": len(samples),
                                        "full_forward_cold_minus_warm_paired_us": statistics.median(samples),
                                        "full_forward_cold_minus_warm_paired_ci95_us": [low, high],
                                        "micro_add_overhead_over_floor_range": [min(ratios), max(ratios)],
                                        "full_forward_paired_samples_us": samples}
        print(f"\n{cpu}, {transport}, {len(group)} runs (commits {', '.join(commits)}): micro_add overhead "
              f"{min(ratios):.2f}-{max(ratios):.2f} x the floor; full_forward cold minus warm over all {len(samples)} "
              f"servers: median {statistics.median(samples) / 1e3:.2f} ms (95 % CI {low / 1e3:.2f} .. {high / 1e3:.2f}).")
    if out:
        for r in runs:
            del r["full_forward_paired_samples_us"]  # kept once, pooled
        with open(out, "w") as f:
            json.dump({"runs": runs, "pooled": pooled}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
