#!/usr/bin/env python3
"""Where the CPU of issue 10's workload goes, by what the gateway does: the
same machines (`ironbridge-sim serve-registers`), polled at --poll-ms by
gateways that do less and less, alternating in rounds, one at a time:

  ironbridge                 the full gateway (model, store, OPC UA server)
  ironbridge-no-model        without [[models]]
  ironbridge-no-model-no-store  without [[models]] and [influx]: polls and
                             its OPC UA server only
  tokio-modbus-read          connectors/examples/bare_modbus_poll.rs: one
                             tokio worker, tokio-modbus clients reading and
                             decoding the same blocks every poll,
                             nothing else: the floor under a Rust gateway
  python                     benchmarks/reference_gateway.py (tick style)
  python-read                the same script with --read-only: its reads
                             and decoding only
  ironbridge-baseline        the full gateway from --baseline BINARY (another
                             build, for a before/after; not by default)

--binary BINARY replaces the release build in the other ironbridge stages;
either may be a script that prepares the box and then `exec`s the gateway
(its process is the one measured).

For each window it prints the process's CPU (all threads, from
/proc/PID/task/*/schedstat: nanoseconds, not clock ticks) per second and
per value asked (machines x tags / poll interval). That compares the
stages only where each takes every poll asked, as at 100 ms (values
stored are bench_reference.py's business: there every value asked is
stored, BENCHMARKS.md §32). Saturated, compare per value taken: the
gateway's scans are counted from its /metrics, the reference's and the
bare reads' from what they write on SIGUSR1. For the gateway also the polls
it passed over and (with the model) its forwards a second and their time
per value asked.

Usage: scripts/bench-stages.sh --rounds 3 --seconds 20 [--poll-ms 1]
(it builds the release binaries and the example, then runs this script).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_reference as ref  # noqa: E402
from bench_e2e import ROOT, free_port, stop_processes  # noqa: E402

STAGES = ("ironbridge", "ironbridge-no-model", "ironbridge-no-model-no-store",
          "tokio-modbus-read", "python", "python-read", "ironbridge-baseline")


def cpu_ns(pid):
    """On-CPU nanoseconds of every thread of `pid` alive now."""
    return sum(t[3] for t in ref.thread_counters(pid).values())


def start(stage, env, args, tmp):
    """The process of one stage, started and ready to poll; its /metrics
    address (the gateway's) or None; the file it writes its scans to on
    SIGUSR1 (the reference's and the bare reads') or None."""
    devices, names, poll_ms = env["devices"], env["names"], args.poll_ms
    if stage.startswith("ironbridge"):
        http, ua = free_port(), free_port()
        config = ref.gateway_config(tmp, env["vm"], devices, names, poll_ms, "memory", ua, http,
                                    env["models"], args.tags,
                                    with_model="no-model" not in stage,
                                    with_store="no-store" not in stage)
        log = f"{tmp}/gateway.log"
        binary = args.baseline if stage == "ironbridge-baseline" else args.binary
        proc = subprocess.Popen([binary, "run", "--config", config],
                                stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                                env={**os.environ, "RUST_LOG": "warn"})
        ref.wait_port(ua, proc=proc, log=log)
        ref.wait_port(http, proc=proc, log=log)
        return proc, f"http://127.0.0.1:{http}", None
    stats = os.path.join(tmp, "stats.json")
    if stage == "tokio-modbus-read":
        proc = subprocess.Popen([f"{ROOT}/target/release/examples/bare_modbus_poll",
                                 str(poll_ms), str(args.tags), stats, *devices])
        ref.wait_for_stats(proc, stats, 10, "bare_modbus_poll did not start")
        return proc, None, stats
    return ref.start_reference(env, poll_ms, args.tags, stats, f"{tmp}/reference.log",
                               ["--read-only"] if stage == "python-read" else []), None, stats


def gateway_counters(metrics):
    """Scans taken, polls passed over, model forwards and their seconds."""
    t = ref.metric_totals(f"{metrics}/metrics")
    return (t.get("ironbridge_source_scans_total", 0),
            t.get("ironbridge_source_polls_skipped_total", 0),
            t.get("ironbridge_inference_batches_total", 0),
            t.get("ironbridge_inference_latency_seconds_sum", 0))


def measure(stage, env, args):
    tmp = tempfile.mkdtemp(prefix=f"stage-{stage}-", dir=env["tmp"])
    proc, metrics, stats = start(stage, env, args, tmp)
    try:
        time.sleep(args.warmup)
        if proc.poll() is not None:
            raise SystemExit(f"{stage} exited during warm-up; see {tmp}")
        k0 = gateway_counters(metrics) if metrics else None
        p0 = ref.reference_stats(proc, stats)["scans"] if stats else None
        n0, t0 = cpu_ns(proc.pid), time.time()
        time.sleep(args.seconds)
        n1, t1 = cpu_ns(proc.pid), time.time()
        k1 = gateway_counters(metrics) if metrics else None
        p1 = ref.reference_stats(proc, stats)["scans"] if stats else None
    finally:
        stop_processes([proc], timeout=30)
    window = t1 - t0
    asked = args.machines * args.tags * 1000 / args.poll_ms
    r = {"stage": stage, "poll_ms": args.poll_ms, "machines": args.machines,
         "tags_per_machine": args.tags, "window_s": round(window, 1),
         "cpu_ms_per_s": round((n1 - n0) / 1e6 / window, 3),
         "cpu_us_per_value_asked": round((n1 - n0) / 1e3 / window / asked, 3)}
    # Scans taken.
    scans = (k1[0] - k0[0] if k0 else p1 - p0 if stats else None)
    if scans is not None:
        r["scans_per_s"] = round(scans / window, 1)
        r["cpu_us_per_value_taken"] = round((n1 - n0) / 1e3 / max(scans * args.tags, 1), 3)
    if k0:
        r["polls_skipped"] = int(k1[1] - k0[1])
        if "no-model" not in stage:
            r["forwards_per_s"] = round((k1[2] - k0[2]) / window, 1)
            r["forward_us_per_value_asked"] = round((k1[3] - k0[3]) * 1e6 / window / asked, 3)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=10)
    ap.add_argument("--tags", type=int, default=ref.F32, help="f32 registers a machine")
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--binary", metavar="BINARY", default=f"{ROOT}/target/release/ironbridge",
                    help="the gateway binary the stages ironbridge, ironbridge-no-model and "
                         "ironbridge-no-model-no-store run (default: the release build)")
    ap.add_argument("--baseline", metavar="BINARY",
                    help="the gateway binary the stage ironbridge-baseline runs")
    ap.add_argument("--stages", default=",".join(STAGES[:-1]),
                    help=f"comma-separated, run in this order each round: {', '.join(STAGES)}")
    args = ap.parse_args()
    stages = args.stages.split(",")
    if not set(stages) <= set(STAGES):
        ap.error(f"--stages: choose from {', '.join(STAGES)}")
    if "ironbridge-baseline" in stages and not args.baseline:
        ap.error("the stage ironbridge-baseline needs --baseline BINARY")
    tmp = tempfile.mkdtemp(prefix="ironbridge-bench-stages-")
    procs, results = [], []
    try:
        env = ref.start_workload(tmp, args.machines, args.tags, procs)
        for _ in range(args.rounds):
            for stage in stages:
                r = measure(stage, env, args)
                results.append(r)
                print(json.dumps(r), flush=True)
    finally:
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    for key in ("cpu_us_per_value_asked", "cpu_us_per_value_taken"):
        print(f"{args.machines} machines x {args.tags} f32, {args.poll_ms} ms polls: "
              f"{key}, per round (median)")
        for stage in stages:
            mine = [r[key] for r in results if r["stage"] == stage and key in r]
            if mine:
                print(f"  {stage:30} {', '.join(f'{x:.2f}' for x in mine)}  "
                      f"({statistics.median(mine):.2f})")


if __name__ == "__main__":
    main()
