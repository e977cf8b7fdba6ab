#!/usr/bin/env python3
"""The performance issue's workload: IronBridge vs the reference Python
gateway (benchmarks/reference_gateway.py), side by side in one run.

Workload: --machines Modbus TCP devices (`ironbridge-sim serve-registers`,
one process, values new on every read) of 62 f32 holding registers each,
read as one 124-register block per scan; an 8 -> 32 -> 1 TorchScript model
(benchmarks/make_model.py, made into a temp folder) fed by every scan from
each machine's first 8 values; a local victoria-metrics as the InfluxDB-API
store. IronBridge also serves OPC UA (its [opcua] server is on, no client);
the reference does only with `python-opcua` among --contestants. The
contestant `node-red` is Node-RED with its modbus and influxdb nodes
(benchmarks/node-red/flow.py: the same reads and `process` points, no
model, no OPC UA, a write a scan), as in the issue's first table, and
`node-red-batched` the same writing 100 scans at a time; they are
installed on first use (benchmarks/setup-node-red.sh).

The contestants run one at a time, alternating (A, B, A, B ... for
--rounds rounds), at each --poll-ms (1 = saturated). For each it measures,
over a window after a warm-up:
  - values stored per second (process values + predictions), counted in
    victoria-metrics by acquisition time, as scripts/bench_e2e.py does,
  - its CPU (user+sys from /proc, all threads) per stored value, RSS,
  - predictions made, refused (IronBridge: ironbridge_inference_rejected_total
    over all reasons) and skipped (out of range), from its counters,
  - the devices' and victoria-metrics' CPU (they share the cores),
  - the gateway's context switches per second per thread name (JSON only:
    each voluntary one is a thread that waited and was woken),
  - the part of its CPU spent in the kernel (system time: the Modbus and
    HTTP traffic, wake-ups) and, for IronBridge, in the model's forwards
    (ironbridge_inference_latency_seconds_sum), printed per window after
    the table: the rest is the gateway's own code. (Its choices move the
    other two as well: how many forwards a tick, how many wake-ups.)
JSON lines on stdout, then a table.

Usage: scripts/bench_reference.py --rounds 2 --poll-ms 100,1 --seconds 20
(scripts/bench-reference.sh builds the release binaries first.)
"""
import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e as e2e  # noqa: E402
from bench_e2e import (ROOT, count_samples, cpu_and_system_seconds, cpu_seconds,  # noqa: E402
                       free_port, memory_kib, stop_processes)
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "node-red"))
import flow as node_red_flow  # noqa: E402

NODE_RED = os.path.join(ROOT, "benchmarks", "node-red", "node_modules", "node-red", "red.js")

# The workload: f32 values per machine, one 124-register read.
F32 = 62
MODEL = "bench-mlp"
# python: the reference's `tick` style; python-per-machine: its other style;
# python-opcua: `tick` with its asyncua server.
# ironbridge-disk: IronBridge with buffer = "disk" whatever --buffer says.
# node-red: Node-RED's modbus and influxdb nodes, no model, a write a scan
# (benchmarks/node-red/flow.py); node-red-batched: the same with a join node
# before the store, a write per NODE_RED_BATCH scans (or a second's).
CONTESTANTS = ("ironbridge", "ironbridge-disk", "ironbridge-baseline", "python",
               "python-per-machine", "python-opcua", "node-red", "node-red-batched")
NODE_RED_BATCH = 100


def wait_port(port, timeout=60, proc=None, log=None):
    # The gateways load libtorch and a model before they listen: more time
    # than bench_e2e's default.
    e2e.wait_port(port, timeout, proc, log)


def metric_totals(url):
    """Counter name -> value summed over its labels (OpenMetrics text)."""
    totals = {}
    with urllib.request.urlopen(url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            m = re.match(r"^([a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)", line)
            if m:
                totals[m[1]] = totals.get(m[1], 0.0) + float(m[2])
    return totals


def gateway_config(tmp, vm, devices, names, poll_ms, buffer, ua_port, http_port, models,
                   f32_count, flush_ms=1000, extra="", model_settings=(), influx_settings=(),
                   opcua_settings=(), with_model=True, with_store=True):
    """Writes tmp/ironbridge.toml: the workload's machines (tags v00..,
    one block read) feeding the benchmark's model (none without machines),
    OPC UA on its loopback endpoint, [http], [influx] at `vm`; `extra` is
    TOML appended as is (more tables, more [[machines]]);
    `model_settings`, `influx_settings` and `opcua_settings` are
    `key = value` lines added to the model's table, [influx] and [opcua].
    `with_model` / `with_store` false leave out [[models]] / [influx]."""
    tags = "".join(f"""
  [[machines.tags]]
  name = "v{k:02d}"
  register = "holding"
  address = {2 * k}
  type = "f32"
""" for k in range(f32_count))
    parts = [f"""
[opcua]
port = {ua_port}
pki_dir = "{tmp}/pki"
insecure_loopback_endpoint = true
""" + "".join(f"{kv}\n" for kv in opcua_settings) + f"""
[http]
address = "127.0.0.1:{http_port}"
"""]
    if with_store:
        parts.append(f"""
[influx]
url = "{vm}"
bucket = "bench"
flush_interval_ms = {flush_ms}
buffer = "{buffer}"
{f'spool_dir = "{tmp}/spool"' if buffer == "disk" else ""}
dead_letter_path = "{tmp}/dead-letter.lp"
""" + "".join(f"{kv}\n" for kv in influx_settings))
    for name, device in zip(names, devices):
        parts.append(f"""
[[machines]]
name = "{name}"
protocol = "modbus-tcp"
address = "{device}"
poll_interval_ms = {poll_ms}
{tags}""")
    if names and with_model:
        parts.append(f"""
[[models]]
name = "{MODEL}"
path = "{models}/{MODEL}"
version = "1.0.0"
machines = {json.dumps(names)}
""" + "".join(f"{kv}\n" for kv in model_settings))
    parts.append(extra)
    path = os.path.join(tmp, "ironbridge.toml")
    with open(path, "w") as f:
        f.write("".join(parts))
    return path


def start_register_banks(machines, f32_count):
    """`ironbridge-sim serve-registers` with `machines` devices on free
    ports: the process and the devices' addresses."""
    device = subprocess.Popen(
        [f"{ROOT}/target/release/ironbridge-sim", "serve-registers",
         "--bind", "127.0.0.1:0", "--devices", str(machines), "--f32", str(f32_count)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "warn"})
    ready = ""
    while not ready.startswith("listening on "):
        ready = device.stdout.readline()
        if not ready:
            stop_processes([device])
            raise SystemExit("serve-registers did not start")
    return device, ready.split()[2:]


def start_workload(tmp, machines, f32_count, procs):
    """What every contestant works against: victoria-metrics (the store),
    the devices and the benchmark's model in `tmp`. The processes are
    appended to `procs` as they start; returns the workload's `env`."""
    vm_port = free_port()
    vm_proc = subprocess.Popen(
        ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{vm_port}",
         f"-storageDataPath={tmp}/vm", "-retentionPeriod=100y"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(vm_proc)
    wait_port(vm_port)
    device, devices = start_register_banks(machines, f32_count)
    procs.append(device)
    models = os.path.join(tmp, "models")
    subprocess.run([f"{ROOT}/.venv/bin/python", f"{ROOT}/benchmarks/make_model.py",
                    "--out", models], check=True, stdout=subprocess.DEVNULL)
    return {"tmp": tmp, "vm": f"http://127.0.0.1:{vm_port}", "vm_pid": vm_proc.pid,
            "device_pid": device.pid, "devices": devices, "models": models,
            "names": [f"machine-{i:03d}" for i in range(machines)]}


def start_reference(env, poll_ms, f32_count, stats_file, log, extra=()):
    """The reference Python gateway against `env`'s workload, once it is
    connected and about to poll (its first stats file says so); `extra`
    are more of its arguments."""
    cmd = [f"{ROOT}/.venv/bin/python", f"{ROOT}/benchmarks/reference_gateway.py",
           "--devices", ",".join(env["devices"]), "--names", ",".join(env["names"]),
           "--poll-ms", str(poll_ms), "--f32", str(f32_count),
           "--model", f"{env['models']}/{MODEL}/1.0.0",
           "--influx-url", env["vm"], "--bucket", "bench", "--stats", stats_file, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    # It connects to its machines one after the other.
    wait_for_stats(proc, stats_file, 60 + 0.2 * len(env["devices"]),
                   f"the reference gateway did not start; see {log}")
    return proc


def wait_for_stats(proc, stats_file, seconds, failure):
    """Until `proc` wrote its first stats file: before, SIGUSR1 would kill
    it. Stops it and exits with `failure` if it dies or `seconds` pass."""
    deadline = time.time() + seconds
    while not os.path.exists(stats_file):
        if proc.poll() is not None or time.time() > deadline:
            stop_processes([proc])
            raise SystemExit(failure)
        time.sleep(0.05)


def reference_stats(proc, stats_file):
    """The counters of the reference (or of bench_stages.py's bare reads)
    now: it writes them on SIGUSR1, with `dumps` counting its writes."""
    with open(stats_file) as f:
        before = json.load(f)["dumps"]
    proc.send_signal(signal.SIGUSR1)
    deadline = time.time() + 10
    while True:
        with open(stats_file) as f:
            s = json.load(f)
        if s["dumps"] != before:
            return s
        if time.time() > deadline:
            raise SystemExit(f"{proc.args[0]} did not answer SIGUSR1")
        time.sleep(0.01)


class Contestant:
    """One gateway process, started for one window."""

    def __init__(self, kind, env, poll_ms, args):
        self.kind, self.env, self.poll_ms, self.args = kind, env, poll_ms, args
        self.proc = None
        self.buffer = "disk" if kind == "ironbridge-disk" else args.buffer
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=env["tmp"])

    def start(self):
        env = self.env
        if self.kind.startswith("ironbridge"):
            # ironbridge-baseline runs --baseline with the defaults; the others
            # run this build with the settings asked for.
            under_test = self.kind != "ironbridge-baseline"
            self.http = f"http://127.0.0.1:{free_port()}"
            ua_port = free_port()
            config = gateway_config(self.tmp, env["vm"], env["devices"], env["names"],
                                    self.poll_ms, self.buffer, ua_port,
                                    self.http.rsplit(":", 1)[1], env["models"],
                                    self.args.tags,
                                    extra=(f"\n[runtime]\nworker_threads = {self.args.worker_threads}\n"
                                           if self.args.worker_threads and under_test else ""),
                                    model_settings=self.args.model_setting if under_test else [],
                                    influx_settings=self.args.influx_setting if under_test else [])
            binary = (self.args.baseline if not under_test
                      else f"{ROOT}/target/release/ironbridge")
            self.proc = subprocess.Popen(
                [binary, "run", "--config", config],
                stdout=subprocess.DEVNULL, stderr=open(f"{self.tmp}/gateway.log", "w"),
                env={**os.environ, "RUST_LOG": "warn",
                     **(dict(kv.split("=", 1) for kv in self.args.gateway_env)
                        if under_test else {})})
            log = f"{self.tmp}/gateway.log"
            wait_port(ua_port, proc=self.proc, log=log)
            wait_port(int(self.http.rsplit(":", 1)[1]), proc=self.proc, log=log)
        elif self.kind.startswith("node-red"):
            port = free_port()
            settings = node_red_flow.write(
                f"{self.tmp}/node-red", env["devices"], env["names"], self.poll_ms,
                self.args.tags, env["vm"], "bench", port,
                batch=NODE_RED_BATCH if self.kind == "node-red-batched" else None)
            log = f"{self.tmp}/node-red.log"
            self.proc = subprocess.Popen(
                ["node", NODE_RED, "--settings", settings],
                stdout=open(log, "w"), stderr=subprocess.STDOUT)
            # The editor listens once the flow is started; its Modbus
            # clients connect during the warm-up.
            wait_port(port, proc=self.proc, log=log)
        else:
            self.stats_file = os.path.join(self.tmp, "stats.json")
            extra = []
            if self.kind == "python-per-machine":
                extra += ["--style", "per-machine"]
            if self.kind == "python-opcua":
                ua_port = free_port()
                extra += ["--opcua-port", str(ua_port)]
            log = f"{self.tmp}/reference.log"
            self.proc = start_reference(env, self.poll_ms, self.args.tags, self.stats_file,
                                        log, extra)
            if self.kind == "python-opcua":
                wait_port(ua_port, proc=self.proc, log=log)

    def counters(self):
        """predictions made, refused, skipped (cumulative); what a
        contestant cannot tell is left out."""
        if self.kind.startswith("node-red"):
            # No model; its read errors and lost writes only go to its log.
            return {"predictions": 0, "refused": 0, "skipped": 0, "failed": 0}
        if self.kind.startswith("ironbridge"):
            t = metric_totals(f"{self.http}/metrics")
            return {"predictions": t.get("ironbridge_predictions_total", 0),
                    "refused": t.get("ironbridge_inference_rejected_total", 0),
                    "skipped": t.get("ironbridge_inference_rows_skipped_total", 0),
                    "failed": t.get("ironbridge_inference_failed_total", 0),
                    "points_dropped": t.get("ironbridge_sink_points_dropped_total", 0),
                    # Poll ticks passed over: a machine's poll (with what
                    # runs beside it) took longer than its interval.
                    "polls_skipped": t.get("ironbridge_source_polls_skipped_total", 0),
                    # Model forwards (queued batches and inline runs alike).
                    "forwards": t.get("ironbridge_inference_batches_total", 0),
                    # Their seconds (wall time of each forward on one
                    # intra-op thread: its CPU unless it was preempted).
                    "forward_seconds": t.get("ironbridge_inference_latency_seconds_sum", 0)}
        # The reference never refuses: it runs the model on every tick's scans.
        s = reference_stats(self.proc, self.stats_file)
        return {"predictions": s["predictions"], "refused": 0, "skipped": 0,
                "failed": 0, "points_dropped": 0, "read_errors": s["read_errors"]}

    def stop(self):
        if self.proc:
            stop_processes([self.proc], timeout=30)


def measure(kind, env, poll_ms, args, perf_data=None):
    c = Contestant(kind, env, poll_ms, args)
    perf = None
    try:
        c.start()
        time.sleep(args.warmup)
        if c.proc.poll() is not None:
            raise SystemExit(f"{kind} exited during warm-up; see {c.tmp}")
        k0 = c.counters()
        t0 = time.time()
        cpu0, sys0 = cpu_and_system_seconds(c.proc.pid)
        dev0, vm0 = (cpu_seconds(p) for p in (env["device_pid"], env["vm_pid"]))
        box0 = box_cpu_seconds()
        threads0 = thread_counters(c.proc.pid)
        if perf_data:
            # Software clock sampling: virtual machines often have no
            # hardware counters. Costs the profiled window a little CPU.
            perf = subprocess.Popen(
                ["perf", "record", "-q", "-F", str(args.perf_hz), "-e", "cpu-clock",
                 *(["--call-graph", args.perf_call_graph] if args.perf_call_graph else []),
                 "-p", str(c.proc.pid), "-o", perf_data, "--", "sleep", str(args.seconds)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(args.seconds)
        t1 = time.time()
        cpu1, sys1 = cpu_and_system_seconds(c.proc.pid)
        dev1, vm1 = (cpu_seconds(p) for p in (env["device_pid"], env["vm_pid"]))
        box1 = box_cpu_seconds()
        threads1 = thread_counters(c.proc.pid)
        k1 = c.counters()
        mem = memory_kib(c.proc.pid)
        split = torch_split_kib(c.proc.pid)
        load = os.getloadavg()[0]
        # Let the window's last values be flushed (1 s batches) before counting.
        time.sleep(2.5)
        start_ms, end_ms = int(t0 * 1000), int(t1 * 1000)
        process = count_samples(env["vm"], '{__name__=~"process_.*"}', start_ms, end_ms)
        predictions = count_samples(env["vm"], '{__name__=~"prediction_.*"}', start_ms, end_ms)
    finally:
        if perf:
            perf.wait()
        c.stop()
    window = t1 - t0
    values = process + predictions
    d = {k: k1[k] - k0[k] for k in k0}
    return {
        "gateway": kind,
        "buffer": c.buffer if kind.startswith("ironbridge") else None,
        "machines": args.machines,
        "poll_ms": poll_ms,
        "window_s": round(window, 1),
        "scans_wanted_per_s": round(args.machines * 1000 / poll_ms),
        "tags_per_machine": args.tags,
        "scans_stored_per_s": round(process / args.tags / window),
        "values_per_s": round(values / window),
        "predictions_stored_per_s": round(predictions / window),
        "predictions_made_per_s": round(d["predictions"] / window),
        "forwards_per_s": round(d["forwards"] / window) if "forwards" in d else None,
        "predictions_refused": int(d["refused"]),
        "predictions_skipped": int(d["skipped"]),
        "inference_failed": int(d["failed"]),
        "points_dropped": int(d["points_dropped"]) if "points_dropped" in d else None,
        "read_errors": int(d["read_errors"]) if "read_errors" in d else None,
        "polls_skipped": int(d["polls_skipped"]) if "polls_skipped" in d else None,
        "cpu_cores": round((cpu1 - cpu0) / window, 3),
        "cpu_us_per_value": round((cpu1 - cpu0) / max(values, 1) * 1e6, 2),
        # Of that CPU: the kernel's part (system time), and the forwards'.
        "kernel_us_per_value": round((sys1 - sys0) / max(values, 1) * 1e6, 2),
        "forward_us_per_value": (round(d["forward_seconds"] / max(values, 1) * 1e6, 2)
                                 if "forward_seconds" in d else None),
        "rss_mib": round(mem.get("VmRSS", 0) / 1024, 1),
        "peak_rss_mib": round(mem.get("VmHWM", 0) / 1024, 1),
        "rss_torch_libs_mib": round(split["torch_libs"] / 1024, 1),
        "rss_without_torch_libs_mib": round(split["rest"] / 1024, 1),
        "device_cpu_cores": round((dev1 - dev0) / window, 3),
        "store_cpu_cores": round((vm1 - vm0) / window, 3),
        "load_1min": round(load, 2),
        # The whole box in the window: every process's CPU (the three above
        # and the rest), and what the hypervisor took for other guests.
        "box_busy_cores": round((box1[0] - box0[0]) / window, 3),
        "box_steal_cores": round((box1[1] - box0[1]) / window, 3),
        # Per thread name: voluntary (it waited: a wake-up each) and
        # involuntary (preempted) context switches per second.
        "context_switches_per_s": switch_rates(threads0, threads1, window),
        # Per thread name: ms of CPU a second, and the time slices it came in.
        "thread_cpu_ms_per_s": thread_cpu(threads0, threads1, window),
    }


def thread_counters(pid):
    """Thread id -> (name, voluntary, involuntary context switches, CPU
    nanoseconds, time slices run), from /proc/PID/task (status and
    schedstat)."""
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                # on-CPU ns, waiting-to-run ns, time slices run
                cpu_ns, _, slices = (int(x) for x in f.read().split())
        except OSError:
            continue  # the thread ended meanwhile
        v = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])
        n = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])
        threads[tid] = (name, v, n, cpu_ns, slices)
    return threads


def switch_rates(before, after, window):
    """Thread name -> [voluntary (the thread waited: one wake-up each),
    involuntary (preempted)] switches per second over the window, summed
    over the threads of that name alive at its end."""
    rates = {}
    for tid, (name, v, n, _, _) in after.items():
        _, v0, n0, _, _ = before.get(tid, (name, 0, 0, 0, 0))
        rate = rates.setdefault(name, [0, 0])
        rate[0] += (v - v0) / window
        rate[1] += (n - n0) / window
    return {name: [round(v), round(n)] for name, (v, n) in rates.items()}


def thread_cpu(before, after, window):
    """Thread name -> [ms of CPU a second, time slices a second] over the
    window, summed over the threads of that name alive at its end: which
    thread the process's CPU goes to, and in how many pieces."""
    rates = {}
    for tid, (name, _, _, ns, slices) in after.items():
        _, _, _, ns0, slices0 = before.get(tid, (name, 0, 0, 0, 0))
        rate = rates.setdefault(name, [0, 0])
        rate[0] += (ns - ns0) / 1e6 / window
        rate[1] += (slices - slices0) / window
    return {name: [round(ms, 2), round(n)] for name, (ms, n) in rates.items()}


def smaps_split(pid):
    """Resident KiB by kind of mapping, from /proc/PID/smaps: libtorch's own
    libraries (the shared libraries torch ships: libtorch*, libc10*,
    libgomp*, ... under torch/lib), the binary's text and data, the heap,
    other anonymous memory, other libraries."""
    kinds = collections.Counter()
    kind = "other"
    # The program's own file, whatever it is named (memory_split.py
    # --binary, a copy in /tmp for an A/B run).
    exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 6)
            if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:
                path = head[5].strip() if len(head) > 5 else ""
                if "/torch/lib/" in path:
                    kind = "libtorch's libraries"
                elif path.removesuffix(" (deleted)") == exe:
                    kind = "the binary's text" if "x" in head[1] else "the binary's data"
                elif path == "[heap]":
                    kind = "heap (main arena)"
                elif path == "":
                    kind = "other anonymous (arenas, stacks)"
                elif path.startswith("/"):
                    kind = "other libraries"
                else:
                    kind = "other"
            elif line.startswith("Rss:"):
                kinds[kind] += int(line.split()[1])
    return kinds


def box_cpu_seconds():
    """The whole box's CPU seconds so far, busy (user, nice, system, irq,
    softirq; guest time is in user) and stolen (taken by the hypervisor for
    other guests), from /proc/stat's first line. A window with steal, or a
    box busy beyond the contestants, is not comparable with one without."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / e2e.TICKS, steal / e2e.TICKS


def torch_split_kib(pid):
    """Resident KiB in libtorch's own mappings and in the rest (the
    program, its heap and stacks)."""
    kinds = smaps_split(pid)
    torch_libs = kinds["libtorch's libraries"]
    return {"torch_libs": torch_libs, "rest": sum(kinds.values()) - torch_libs}


def table(results):
    head = ("| gateway | poll | values/s | scans/s (wanted) | predictions/s made | refused "
            "| CPU cores | CPU µs/value | RSS MiB (without torch's libraries) | device cores "
            "| store cores | box busy (stolen) cores |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['gateway'].split('-disk')[0]}{'/' + r['buffer'] if r['buffer'] else ''} | {r['poll_ms']} ms "
            f"| {r['values_per_s']:,} | {r['scans_stored_per_s']:,} ({r['scans_wanted_per_s']:,}) "
            f"| {r['predictions_made_per_s']:,} | {r['predictions_refused']:,} "
            f"| {r['cpu_cores']} | {r['cpu_us_per_value']} "
            f"| {r['peak_rss_mib']} ({r['rss_without_torch_libs_mib']}) "
            f"| {r['device_cpu_cores']} | {r['store_cpu_cores']} "
            f"| {r['box_busy_cores']} ({r['box_steal_cores']}) |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=10)
    ap.add_argument("--tags", type=int, default=F32,
                    help="f32 tags per machine (8-4096; 62 fit one Modbus read, more take "
                         "one read per 62)")
    ap.add_argument("--poll-ms", default="100,1",
                    help="comma-separated poll intervals; 1 = saturated")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--buffer", choices=["disk", "memory"], default="memory",
                    help="IronBridge's [influx] buffer (the reference has none)")
    ap.add_argument("--perf", metavar="FILE",
                    help="after the rounds, one more IronBridge window at the shortest poll "
                         "under `perf record` into FILE (not in the table); prints its top symbols")
    ap.add_argument("--perf-call-graph", metavar="MODE",
                    help="record call chains too, with perf's --call-graph MODE (`dwarf`: "
                         "release builds have no frame pointers); read them with "
                         "`perf report -i FILE --children`")
    ap.add_argument("--perf-hz", type=int, default=499,
                    help="perf's sampling rate (at 100 ms polls the gateway is idle most of "
                         "the time: 5000 gives enough samples)")
    ap.add_argument("--gateway-env", metavar="NAME=VALUE", action="append", default=[],
                    help="environment of the gateway under test (not the baseline's), "
                         "e.g. TOKIO_WORKER_THREADS=1; repeatable")
    ap.add_argument("--worker-threads", type=int, metavar="N",
                    help="[runtime] worker_threads of the gateway under test (not the "
                         "baseline's; default: the gateway's, one per core)")
    ap.add_argument("--model-setting", metavar="KEY=VALUE", action="append", default=[],
                    help="a line added to the [[models]] table of the gateway under test "
                         "(not the baseline's), e.g. max_wait_ms=1; repeatable")
    ap.add_argument("--influx-setting", metavar="KEY=VALUE", action="append", default=[],
                    help="a line added to the [influx] table of the gateway under test "
                         "(not the baseline's), e.g. gzip=false; repeatable")
    ap.add_argument("--baseline", metavar="BINARY",
                    help="the gateway binary the contestant ironbridge-baseline runs (another "
                         "build, e.g. main's, for a before/after in one run)")
    ap.add_argument("--contestants", default="ironbridge,python",
                    help=f"comma-separated, run in this order each round: {', '.join(CONTESTANTS)}")
    args = ap.parse_args()
    kinds = args.contestants.split(",")
    if not set(kinds) <= set(CONTESTANTS):
        ap.error(f"--contestants: choose from {', '.join(CONTESTANTS)}")
    if "ironbridge-baseline" in kinds and not args.baseline:
        ap.error("the contestant ironbridge-baseline needs --baseline BINARY")
    if not 8 <= args.tags <= 4096:
        ap.error("--tags: 8 to 4096 (the model reads each machine's first 8)")

    if any(k.startswith("node-red") for k in kinds):
        # Node-RED and its nodes, pinned; returns at once when installed.
        subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "setup-node-red.sh")], check=True)

    tmp = tempfile.mkdtemp(prefix="ironbridge-bench-ref-")
    procs = []
    results = []
    try:
        env = start_workload(tmp, args.machines, args.tags, procs)
        for poll_ms in [int(p) for p in args.poll_ms.split(",")]:
            for _ in range(args.rounds):
                for kind in kinds:
                    r = measure(kind, env, poll_ms, args)
                    results.append(r)
                    print(json.dumps(r), flush=True)
        if args.perf:
            poll_ms = min(int(p) for p in args.poll_ms.split(","))
            r = measure("ironbridge", env, poll_ms, args, perf_data=os.path.abspath(args.perf))
            print(json.dumps({**r, "profiled": True}), flush=True)
        print()
        print(table(results))
        for poll_ms in sorted({r["poll_ms"] for r in results}, reverse=True):
            for ours in [k for k in kinds if k.startswith("ironbridge")]:
                mine = [r for r in results if r["poll_ms"] == poll_ms and r["gateway"] == ours]
                refs = [k for k in kinds if k.startswith(("python", "node-red"))]
                if ours == "ironbridge" and "ironbridge-baseline" in kinds:
                    refs.append("ironbridge-baseline")
                for ref in refs:
                    theirs = [r for r in results if r["poll_ms"] == poll_ms and r["gateway"] == ref]
                    pairs = " / ".join(f"{a['cpu_us_per_value'] / b['cpu_us_per_value']:.2f}"
                                       for a, b in zip(mine, theirs))
                    # A round whose two windows lost different shares of
                    # the box to other guests compares the box, not the
                    # gateways.
                    steal = " / ".join(f"{a['box_steal_cores']}, {b['box_steal_cores']}"
                                       for a, b in zip(mine, theirs))
                    print(f"poll {poll_ms} ms: {ours} / {ref} CPU per value, per round: {pairs} "
                          f"(cores stolen from the box: {steal})")
        # The kernel's side of its traffic and wake-ups, libtorch's forwards,
        # and what is left: the gateway's own code.
        for r in results:
            if r["forward_us_per_value"] is None:
                continue
            floor = r["kernel_us_per_value"] + r["forward_us_per_value"]
            print(f"{r['gateway']} {r['poll_ms']} ms: {r['cpu_us_per_value']} µs a value, of "
                  f"which kernel {r['kernel_us_per_value']} + forwards "
                  f"{r['forward_us_per_value']} = {floor:.2f}; the rest "
                  f"{r['cpu_us_per_value'] - floor:.2f}")
        if args.perf:
            print(f"\ntop symbols by self time ({args.perf}):")
            report = subprocess.run(
                ["perf", "report", "-i", args.perf, "--no-children", "--sort", "dso,symbol",
                 "--stdio", "-g", "none", "--percent-limit", "0.7"],
                capture_output=True, text=True)
            rows = [re.sub(r"[\s-]+$", "", line) for line in report.stdout.splitlines()
                    if line.strip() and not line.startswith("#")]
            print("\n".join(rows[:25]))
    finally:
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
