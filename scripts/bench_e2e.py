#!/usr/bin/env python3
"""End-to-end benchmark: simulator -> gateway -> victoria-metrics.

Starts victoria-metrics and the simulator (release builds, see
scripts/bench-e2e.sh), then the gateway with N machines polling the
simulator and the example model fed by all of them. After a warm-up it
measures, over a window:
  - values per second that reached the store (process values + predictions),
    counted in victoria-metrics by acquisition time,
  - the gateway's CPU time (user+sys from /proc) per stored value,
  - the gateway's resident memory (VmRSS at the end, VmHWM peak),
and the simulator's CPU for context (it shares the 2 cores).

Usage: scripts/bench_e2e.py --machines 50 --poll-ms 100 --seconds 30
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")
TAGS = """
  [[machines.tags]]
  name = "speed_rpm"
  register = "holding"
  address = 0
  type = "f32"
  [[machines.tags]]
  name = "motor_current_a"
  register = "holding"
  address = 2
  type = "f32"
  byte_order = "CDAB"
  [[machines.tags]]
  name = "run_seconds"
  register = "holding"
  address = 10
  type = "u64"
  byte_order = "BADC"
  [[machines.tags]]
  name = "discharge_pressure_bar"
  register = "holding"
  address = 20
  type = "f64"
  [[machines.tags]]
  name = "bearing_temp_c"
  register = "input"
  address = 0
  type = "i16"
  scale = 0.1
  [[machines.tags]]
  name = "vibration_mm_s"
  register = "input"
  address = 1
  type = "u32"
  byte_order = "DCBA"
  scale = 0.001
  [[machines.tags]]
  name = "flow_m3_h"
  register = "input"
  address = 3
  type = "i32"
  byte_order = "CDAB"
  scale = 0.01
  [[machines.tags]]
  name = "running"
  register = "coil"
  address = 0
  type = "bool"
  [[machines.tags]]
  name = "overtemp_alarm"
  register = "discrete_input"
  address = 0
  type = "bool"
"""
N_TAGS = TAGS.count("[[machines.tags]]")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30, proc=None, log=None):
    """Waits until something listens on `port`; fails early (with the tail of
    `log`) if `proc` exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc and proc.poll() is not None:
            raise SystemExit(f"exited with {proc.returncode} before listening on {port}; "
                             f"log: {open(log).read()[-2000:] if log else '-'}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def stop_processes(procs, timeout=20):
    """SIGTERM to each (newest first), then wait; kill what does not stop."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_seconds(pid):
    return cpu_and_system_seconds(pid)[0]


def cpu_and_system_seconds(pid):
    """The process's CPU seconds (user and system, all threads), and the
    system part alone, from one read of /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])
    return (user + system) / TICKS, system / TICKS


def memory_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def count_samples(vm, selector, start_ms, end_ms):
    urllib.request.urlopen(f"{vm}/internal/force_flush").read()
    data = urllib.parse.urlencode(
        {"match[]": selector, "start": f"{start_ms / 1000:.3f}", "end": f"{end_ms / 1000:.3f}"}
    ).encode()
    n = 0
    with urllib.request.urlopen(f"{vm}/api/v1/export", data=data) as r:
        for line in r:
            if line.strip():
                n += len(json.loads(line)["values"])
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=50)
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=int, default=0, help="the gateway default is 0")
    ap.add_argument("--buffer", choices=["disk", "memory"], default="disk",
                    help="[influx] buffer (the gateway default is disk: the spool)")
    args = ap.parse_args()

    target = os.path.join(ROOT, "target", "release")
    tmp = tempfile.mkdtemp(prefix="ironbridge-bench-")
    procs = []
    try:
        vm_port, sim_port, ua_port = free_port(), free_port(), free_port()
        vm = f"http://127.0.0.1:{vm_port}"
        procs.append(subprocess.Popen(
            ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{vm_port}",
             f"-storageDataPath={tmp}/vm", "-retentionPeriod=100y"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(vm_port)
        sim = subprocess.Popen(
            [f"{target}/ironbridge-sim", "serve", "--bind", f"127.0.0.1:{sim_port}",
             "--seed", "7", "--time-scale", "600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sim)
        wait_port(sim_port)

        machines = [f"pump-{i:03d}" for i in range(args.machines)]
        config = [f"""
[opcua]
port = {ua_port}
pki_dir = "{tmp}/pki"
insecure_loopback_endpoint = true

[influx]
url = "{vm}"
bucket = "bench"
flush_interval_ms = 1000
buffer = "{args.buffer}"
"""]
        for m in machines:
            config.append(f"""
[[machines]]
name = "{m}"
protocol = "modbus-tcp"
address = "127.0.0.1:{sim_port}"
poll_interval_ms = {args.poll_ms}
{TAGS}""")
        config.append(f"""
[[models]]
name = "bearing-wear"
path = "{ROOT}/models/examples/bearing-wear"
version = "1.0.0"
machines = {json.dumps(machines)}
max_batch = {args.max_batch}
max_wait_ms = {args.max_wait_ms}
""")
        path = os.path.join(tmp, "bench.toml")
        with open(path, "w") as f:
            f.write("".join(config))
        gw = subprocess.Popen([f"{target}/ironbridge", "run", "--config", path],
                              stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/gateway.log", "w"),
                              env={**os.environ, "RUST_LOG": "warn"})
        procs.append(gw)
        wait_port(ua_port)
        time.sleep(args.warmup)

        t0 = time.time()
        cpu0, sim0 = cpu_seconds(gw.pid), cpu_seconds(sim.pid)
        time.sleep(args.seconds)
        t1 = time.time()
        cpu1, sim1 = cpu_seconds(gw.pid), cpu_seconds(sim.pid)
        mem = memory_kib(gw.pid)
        # Let the last window's values be flushed before counting them.
        time.sleep(2.5)
        start_ms, end_ms = int(t0 * 1000), int(t1 * 1000)
        process = count_samples(vm, '{__name__=~"process_.*"}', start_ms, end_ms)
        predictions = count_samples(vm, '{__name__=~"prediction_.*"}', start_ms, end_ms)
        window = t1 - t0
        values = process + predictions
        polls_expected = args.machines * window * 1000 / args.poll_ms
        result = {
            "machines": args.machines,
            "buffer": args.buffer,
            "poll_ms": args.poll_ms,
            "window_s": round(window, 1),
            "process_values_per_s": round(process / window),
            "predictions_per_s": round(predictions / window),
            "values_per_s": round(values / window),
            "scans_expected_per_s": round(polls_expected / window),
            "scans_stored_per_s": round(process / N_TAGS / window),
            "gateway_cpu_s_per_s": round((cpu1 - cpu0) / window, 3),
            "gateway_cpu_us_per_value": round((cpu1 - cpu0) / max(values, 1) * 1e6, 2),
            "simulator_cpu_s_per_s": round((sim1 - sim0) / window, 3),
            "gateway_rss_mib": round(mem.get("VmRSS", 0) / 1024, 1),
            "gateway_peak_rss_mib": round(mem.get("VmHWM", 0) / 1024, 1),
        }
        print(json.dumps(result))
    finally:
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
