#!/usr/bin/env python3
"""Scale curves of the performance issue's workload: CPU per value and
resident memory at 1, 10, 100, 1,000 machines (62 f32 tags each) and at
10, 100, 1,000 tags per machine (10 machines), so a user can size a box.

Each point is one run of scripts/bench_reference.py (its own store, devices
and model; see its docstring for what it measures) with --machines and
--tags set, the contestants alternating within the point. Then:
  - CPU µs per stored value at each point (flat = no step with scale),
  - the resident set without libtorch's own mappings (torch/lib/*.so),
    and what one more tag and one more machine cost in it: the slope
    between the curve's smallest and largest point.
JSON lines (bench_reference.py's, with the point) on stdout, then tables.

Usage: scripts/bench_scale.py [--poll-ms 100] [--seconds 20] [--rounds 1]
       [--machines 1,10,100,1000] [--tags 10,100,1000] [--contestants ironbridge,python]
(scripts/bench-scale.sh builds the release binaries first.)
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_reference import F32 as WORKLOAD_TAGS  # noqa: E402
# The workload: the machine curve's tag count (above), the tag
# curve's machines.
WORKLOAD_MACHINES = 10


def run_point(machines, tags, args):
    cmd = [sys.executable, os.path.join(HERE, "bench_reference.py"),
           "--machines", str(machines), "--tags", str(tags),
           "--poll-ms", str(args.poll_ms), "--rounds", str(args.rounds),
           "--seconds", str(args.seconds), "--warmup", str(args.warmup),
           "--contestants", args.contestants]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def curve_table(rows, key, label):
    kinds = sorted({r["gateway"] for r in rows}, key=lambda k: (not k.startswith("iron"), k))
    points = sorted({r[key] for r in rows})
    lines = [f"| {label} | values/s wanted | " + " | ".join(
        f"{k}: values/s stored, CPU cores, **µs/value**, RSS MiB (without torch libs)"
        for k in kinds) + " |",
        "|---:|---:|" + "---|" * len(kinds)]
    for p in points:
        at = [r for r in rows if r[key] == p]
        wanted = at[0]["machines"] * (at[0]["tags_per_machine"] + 1) * 1000 / at[0]["poll_ms"]
        cells = []
        for k in kinds:
            mine = [r for r in at if r["gateway"] == k]
            if not mine:
                cells.append("—")
                continue
            cells.append(", ".join([
                f"{median([r['values_per_s'] for r in mine]):,.0f}",
                f"{median([r['cpu_cores'] for r in mine]):.3f}",
                f"**{median([r['cpu_us_per_value'] for r in mine]):.2f}**",
                f"{median([r['rss_mib'] for r in mine]):.1f} "
                f"({median([r['rss_without_torch_libs_mib'] for r in mine]):.1f})"]))
        lines.append(f"| {p:,} | {wanted:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slope_kib(rows, key, per):
    """KiB of resident set (without torch libs) per unit of `key`, between
    the curve's smallest and largest point, per gateway kind."""
    out = {}
    for k in sorted({r["gateway"] for r in rows}):
        mine = [r for r in rows if r["gateway"] == k]
        lo, hi = min(r[key] for r in mine), max(r[key] for r in mine)
        if lo == hi:
            continue
        low = median([r["rss_without_torch_libs_mib"] for r in mine if r[key] == lo])
        high = median([r["rss_without_torch_libs_mib"] for r in mine if r[key] == hi])
        units = (hi - lo) * per(mine[0])
        out[k] = (high - low) * 1024 / units
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", default="1,10,100,1000",
                    help=f"the machine curve ({WORKLOAD_TAGS} tags each); empty: skip it")
    ap.add_argument("--tags", default="10,100,1000",
                    help=f"the tag curve ({WORKLOAD_MACHINES} machines); empty: skip it")
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--contestants", default="ironbridge,python")
    args = ap.parse_args()

    by_machines, by_tags = [], []
    for m in [int(x) for x in args.machines.split(",") if x]:
        by_machines += run_point(m, WORKLOAD_TAGS, args)
    for t in [int(x) for x in args.tags.split(",") if x]:
        if t == WORKLOAD_TAGS and any(r["machines"] == WORKLOAD_MACHINES for r in by_machines):
            rows = [r for r in by_machines if r["machines"] == WORKLOAD_MACHINES]
        else:
            rows = run_point(WORKLOAD_MACHINES, t, args)
        by_tags += rows
    print()
    if by_machines:
        print(f"Machines ({WORKLOAD_TAGS} f32 tags each), polls every {args.poll_ms} ms:\n")
        print(curve_table(by_machines, "machines", "machines"))
        for k, kib in slope_kib(by_machines, "machines", lambda r: 1).items():
            print(f"\n{k}: {kib:,.1f} KiB more resident (without torch libs) per machine")
        print()
    if by_tags:
        print(f"Tags per machine ({WORKLOAD_MACHINES} machines), polls every {args.poll_ms} ms:\n")
        print(curve_table(by_tags, "tags_per_machine", "tags per machine"))
        for k, kib in slope_kib(by_tags, "tags_per_machine",
                                lambda r: r["machines"]).items():
            print(f"\n{k}: {kib * 1024:,.0f} bytes more resident (without torch libs) per tag")


if __name__ == "__main__":
    sys.exit(main())
