#!/usr/bin/env python3
"""OPC UA benchmark: load server -> gateway (one opcua machine) -> victoria-metrics.

Starts victoria-metrics, the OPC UA load server (`ironbridge-opcua-load`:
N Double variables, every one changed every --interval-ms with a fresh
SourceTimestamp) and the gateway (release builds, see scripts/bench-opcua.sh)
with one `protocol = "opcua"` machine that monitors all N variables in one
subscription (publishing and sampling interval --interval-ms, queue_size 10).
No model. After a warm-up it measures, over a window:
  - values per second stored in victoria-metrics, counted by acquisition
    time (the SourceTimestamp), against the changes the load server made in
    the window (N per tick, ticks from its --tick-log),
  - per variable the fewest and most values stored in the window,
  - the gateway's CPU time (user+sys from /proc) per stored value, and its
    resident memory (VmRSS at the end, VmHWM peak), and the WARN/ERROR lines
    it logged in the window,
  - the load server's and victoria-metrics' CPU (all share the machine),
  - the load server's own counters (ticks made, time spent in set_values).

Usage: scripts/bench_opcua.py --variables 1000 --interval-ms 100 --security sign-encrypt \
           --max-notifications-per-publish 1000
       scripts/bench_opcua.py --variables 1000 --interval-ms 100 --security none \
           --max-notifications-per-publish 1000
"""
import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e as e2e  # noqa: E402  (free_port, wait_port, cpu_seconds, memory_kib, count_samples)

NAMESPACE_URI = "urn:ironbridge:bench"
PASSWORD_ENV = "IRONBRIDGE_BENCH_OPCUA_PASSWORD"
USER = "bench"


def node_names(n):
    """The load server's NodeId strings (it pads to at least 4 digits)."""
    width = max(4, len(str(n - 1)))
    return [f"V{i:0{width}d}" for i in range(n)]


def gateway_config(args, tmp, vm, ua_port, server_port):
    if args.security == "none":
        security = 'security_policy = "None"\nsecurity_mode = "None"\n'
    else:
        security = (
            'security_policy = "Basic256Sha256"\nsecurity_mode = "SignAndEncrypt"\n'
            f'username = "{USER}"\npassword_env = "{PASSWORD_ENV}"\n'
        )
    parts = [f"""
[opcua]
port = {ua_port}
pki_dir = "{tmp}/pki"
insecure_loopback_endpoint = true

[influx]
url = "{vm}"
bucket = "bench"
flush_interval_ms = 1000

[[machines]]
name = "ua-load"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:{server_port}/"
{security}trust_server_certs = true
publishing_interval_ms = {args.interval_ms}
"""]
    for name in node_names(args.variables):
        parts.append(f"""
  [[machines.tags]]
  name = "{name.lower()}"
  node = "nsu={NAMESPACE_URI};s={name}"
  sampling_interval_ms = {args.sampling_ms if args.sampling_ms is not None else args.interval_ms}
  queue_size = {args.queue_size}
""")
    return "".join(parts)


def read_line(stream, timeout):
    """The next line of `stream`, or None after `timeout` seconds."""
    box = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else None


def per_series_counts(vm, selector, start_ms, end_ms):
    """Values per series with a timestamp in [start, end] (export API: the
    query API hides the last 30 s, victoria-metrics' latency offset)."""
    data = urllib.parse.urlencode(
        {"match[]": selector, "start": f"{start_ms / 1000:.3f}", "end": f"{end_ms / 1000:.3f}"}
    ).encode()
    counts = []
    with urllib.request.urlopen(f"{vm}/api/v1/export", data=data) as r:
        for line in r:
            if line.strip():
                counts.append(len(json.loads(line)["values"]))
    return counts


def problems_logged(path):
    """WARN and ERROR lines of a log so far."""
    with open(path) as f:
        return sum(1 for line in f if " WARN " in line or " ERROR " in line)


def wait_for_values(vm, selector, timeout):
    """Waits until victoria-metrics holds some value of `selector`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        now_ms = int(time.time() * 1000)
        if e2e.count_samples(vm, selector, now_ms - 10_000, now_ms) > 0:
            return True
        time.sleep(1)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variables", type=int, default=1000)
    ap.add_argument("--interval-ms", type=int, default=100,
                    help="change period of the load server, and the publishing interval")
    ap.add_argument("--sampling-ms", type=float, default=None,
                    help="sampling_interval_ms of every tag (default: --interval-ms)")
    ap.add_argument("--queue-size", type=int, default=10)
    ap.add_argument("--security", choices=["sign-encrypt", "none"], default="sign-encrypt")
    ap.add_argument("--max-notifications-per-publish", type=int, default=0,
                    help="the load server's cap per publish response (0: none, async-opcua's default)")
    ap.add_argument("--first-value-timeout", type=float, default=30)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(e2e.ROOT, "target")),
                    help="cargo's target folder (default: $CARGO_TARGET_DIR or ./target)")
    args = ap.parse_args()

    release = os.path.join(args.target_dir, "release")
    tmp = tempfile.mkdtemp(prefix="ironbridge-bench-opcua-")
    env = {**os.environ, PASSWORD_ENV: secrets.token_urlsafe(16)}
    procs = []
    try:
        vm_port, ua_port = e2e.free_port(), e2e.free_port()
        vm = f"http://127.0.0.1:{vm_port}"
        vmetrics = subprocess.Popen(
            ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{vm_port}",
             f"-storageDataPath={tmp}/vm", "-retentionPeriod=100y"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(vmetrics)
        e2e.wait_port(vm_port)

        server_cmd = [f"{release}/ironbridge-opcua-load", "--bind", "127.0.0.1:0",
                      "--variables", str(args.variables), "--interval-ms", str(args.interval_ms),
                      "--pki-dir", f"{tmp}/server-pki", "--user", USER,
                      "--password-env", PASSWORD_ENV, "--trust-client-certs",
                      "--max-notifications-per-publish", str(args.max_notifications_per_publish),
                      "--tick-log", f"{tmp}/ticks.txt"]
        if args.security == "none":
            server_cmd.append("--insecure")
        server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, stderr=open(f"{tmp}/server.log", "w"),
                                  text=True, env=env)
        procs.append(server)
        ready = read_line(server.stdout, 30)
        if not ready or not ready.startswith("listening on opc.tcp://"):
            raise SystemExit(f"the load server did not start: {ready!r}\n{open(f'{tmp}/server.log').read()}")
        server_port = int(ready.split()[2].rstrip("/").rsplit(":", 1)[1])

        path = os.path.join(tmp, "bench.toml")
        with open(path, "w") as f:
            f.write(gateway_config(args, tmp, vm, ua_port, server_port))
        gw_log = f"{tmp}/gateway.log"
        gw = subprocess.Popen([f"{release}/ironbridge", "run", "--config", path],
                              stdout=subprocess.DEVNULL, stderr=open(gw_log, "w"),
                              env={**env, "RUST_LOG": "warn"})
        procs.append(gw)
        time.sleep(1)
        if gw.poll() is not None:
            raise SystemExit(f"the gateway stopped:\n{open(gw_log).read()[-4000:]}")
        e2e.wait_port(ua_port)
        if not wait_for_values(vm, '{__name__=~"process_.*"}', args.first_value_timeout):
            # Measured all the same: what a gateway that gets nothing costs.
            print("no value reached victoria-metrics; the gateway's last log lines:\n"
                  + "".join(open(gw_log).readlines()[-6:]), file=sys.stderr)
        time.sleep(args.warmup)

        warnings0 = problems_logged(gw_log)
        t0 = time.time()
        cpu0 = {name: e2e.cpu_seconds(p.pid) for name, p in
                (("gateway", gw), ("server", server), ("vm", vmetrics))}
        time.sleep(args.seconds)
        t1 = time.time()
        cpu1 = {name: e2e.cpu_seconds(p.pid) for name, p in
                (("gateway", gw), ("server", server), ("vm", vmetrics))}
        mem = e2e.memory_kib(gw.pid)
        warnings1 = problems_logged(gw_log)
        # Let the last window's values be flushed before counting them.
        time.sleep(2.5)
        start_ms, end_ms = int(t0 * 1000), int(t1 * 1000)
        window = (end_ms - start_ms) / 1000
        values = e2e.count_samples(vm, '{__name__=~"process_.*"}', start_ms, end_ms)
        per_series = per_series_counts(vm, '{__name__=~"process_.*"}', start_ms, end_ms)

        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gw.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server_out, _ = server.communicate(timeout=20)
            server_stats = json.loads(server_out.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            server_stats = {}

        with open(f"{tmp}/ticks.txt") as f:
            ticks = [int(line) for line in f if line.strip()]
        ticks_in_window = sum(1 for t in ticks if start_ms <= t <= end_ms)
        made = ticks_in_window * args.variables
        gaps = [b - a for a, b in zip(ticks, ticks[1:]) if start_ms <= a and b <= end_ms]
        cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}
        result = {
            "variables": args.variables,
            "interval_ms": args.interval_ms,
            "sampling_ms": args.sampling_ms if args.sampling_ms is not None else args.interval_ms,
            "security": args.security,
            "server_max_notifications_per_publish": args.max_notifications_per_publish,
            "window_s": round(window, 1),
            "changes_nominal_per_s": round(args.variables * 1000 / args.interval_ms),
            "server_ticks_in_window": ticks_in_window,
            "server_tick_gap_max_ms": max(gaps, default=0),
            "changes_made_per_s": round(made / window),
            "values_per_s": round(values / window),
            "values_stored": values,
            "changes_made": made,
            "stored_vs_made": round(values / max(made, 1), 4),
            "series": len(per_series),
            "per_series_min": min(per_series, default=0),
            "per_series_max": max(per_series, default=0),
            "gateway_cpu_s_per_s": round(cpu["gateway"] / window, 3),
            "gateway_cpu_us_per_value": round(cpu["gateway"] / max(values, 1) * 1e6, 2),
            "server_cpu_s_per_s": round(cpu["server"] / window, 3),
            "vm_cpu_s_per_s": round(cpu["vm"] / window, 3),
            "gateway_rss_mib": round(mem.get("VmRSS", 0) / 1024, 1),
            "gateway_peak_rss_mib": round(mem.get("VmHWM", 0) / 1024, 1),
            "gateway_warnings_before": warnings0,
            "gateway_warnings_in_window": warnings1 - warnings0,
            "server": server_stats,
        }
        print(json.dumps(result), flush=True)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("BENCH_KEEP_TMP"):
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
