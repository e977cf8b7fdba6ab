#!/usr/bin/env python3
"""Issue 10's latency figures: register change -> store, register change -> OPC UA.

A probe device (a pymodbus 3.11 Modbus TCP server in this process) holds 8
f32 holding registers (ABCD); the gateway polls it as machine `probe` (tags
p00..p07) every --poll-ms. At random intervals (uniform 150-350 ms, so the
changes are not phase-locked to the polls) this script writes a new marker
(1.0, 2.0, 3.0 ... as f32, exactly representable) into p00 and stamps the
change. Two paths are timed per marker, from that stamp:
  - store: until victoria-metrics (InfluxDB line protocol) has answered 2xx
    to the gateway's write carrying the marker. The gateway's [influx] url
    is a recording HTTP proxy in this process (a thread) that forwards every
    request to victoria-metrics and stamps each acknowledged write; the
    proxy's own forwarding (measured on 2 cores: +0.25 ms median, up to
    ~2 ms at p99 against a direct write) is part of the figure;
  - OPC UA: until an asyncua client, subscribed to the gateway's node
    Machines/probe/Tags/p00 over the anonymous loopback endpoint (requested
    publishing and sampling interval 0: the server's shortest; a queue of
    10, so a marker superseded within one publishing interval is still
    delivered), receives the data change carrying the marker.
Both paths include the wait for the next poll (0 to --poll-ms): a change is
only seen when the gateway reads it.
Beside the probe runs the issue's workload as load (--load-machines, default
10): `ironbridge-sim serve-registers` devices of 62 f32 each, polled every
--poll-ms, feeding the benchmark's model (benchmarks/make_model.py). The
probe is not fed to the model: its tags are not the model's inputs.

One gateway run per --flush-ms value (the [influx] flush interval),
--worker-threads value ([runtime] worker_threads; "default" leaves it out)
and --gateways binary (in turn, for A/B in one run), the rest of the set-up
shared. With --subscribers N, N more OPC UA clients
(scripts/opcua_load_subscribers.py, one process beside this one) subscribe
over SignAndEncrypt (Basic256Sha256, a username) to every tag and prediction
of the load machines, at --subscriber-publishing-ms: the load of HMIs and
SCADA on the gateway's OPC UA server. Each run also reports, over the marker
window, the gateway's CPU (user+sys, in cores), the scans it took of those
its polls asked, and the data changes each load subscriber received a
second. For each: p50, p90, p99, max, n and the markers
never seen (lost) per path, as JSON lines on stdout, then a table beside the
targets (store p99 <= poll + flush + 5 ms; OPC UA below async-opcua's 100 ms
publish tick). The JSON also splits each path at the gateway's own
timestamps (acquisition time of the stored line, SourceTimestamp of the
notification).

Clock: every stamp is time.time() in this one Python process (wall clock,
so that the gateway's timestamps compare with it; a clock step during a run
would spoil that split, not the latencies' order of magnitude). Its own
scheduling (asyncio loop, the proxy thread, the GIL) adds up to ~1 ms of
jitter to each stamp.

Usage: scripts/bench_latency.py --changes 200 --flush-ms 1000,100
       scripts/bench_latency.py --flush-ms 100 --worker-threads 1,2 --subscribers 5
(scripts/bench-latency.sh builds the release binaries first.)
"""
import argparse
import asyncio
import gzip
import http.client
import http.server
import json
import logging
import math
import os
import random
import secrets
import signal
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timezone

from asyncua import Client, ua
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import cpu_seconds, free_port, stop_processes  # noqa: E402
# The workload's devices, model and configuration: the same as the
# performance benchmark's.
from bench_reference import (F32, MODEL, ROOT, gateway_config, metric_totals,  # noqa: E402
                             start_register_banks, wait_port)

PROBE_TAGS = 8
NS_URI = "urn:ironbridge:gateway"
# async-opcua's subscription tick when [opcua.limits] does not change it.
OPCUA_TICK_MS = 100
WARMUP_S = 3
OPCUA_QUEUE = 10
LOAD_USER = "load"
LOAD_PASSWORD_ENV = "IRONBRIDGE_BENCH_LOAD_PASSWORD"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


def f32_words(value):
    """ABCD: the big-endian f32, high word first."""
    return list(struct.unpack(">2H", struct.pack(">f", value)))


def marker_of(value):
    # Only whole numbers are markers; 0 is the register's value before any change.
    return int(value) if value == int(value) and value >= 1 else None


class StoreProxy(http.server.ThreadingHTTPServer):
    """Forwards everything to the store; stamps the acknowledged writes that
    carry a probe marker (marker -> first time, acquisition time)."""

    daemon_threads = True

    def __init__(self, store_port):
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.store_port = store_port
        self.lock = threading.Lock()
        self.stored = {}
        self.writes = 0
        self.write_errors = 0
        self.sample_line = None

    def record(self, t, status, headers, body):
        if not 200 <= status < 300:
            with self.lock:
                self.write_errors += 1
            return
        if "gzip" in headers.get("Content-Encoding", ""):
            body = gzip.decompress(body)
        found = {}
        for line in body.decode().splitlines():
            # process,machine=probe[,gateway=...] p00=1,p01=...,p07=... <ns>
            if not line.startswith(("process,machine=probe,", "process,machine=probe ")):
                continue
            _, fields, ns = line.rsplit(" ", 2)
            for field in fields.split(","):
                if field.startswith("p00="):
                    marker = marker_of(float(field[4:]))
                    if marker is not None:
                        acquired = int(ns) / 1e9
                        found[marker] = min(acquired, found.get(marker, acquired))
            if self.sample_line is None:
                self.sample_line = line
        with self.lock:
            self.writes += 1
            for marker, acquired in found.items():
                self.stored.setdefault(marker, (t, acquired))


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    # Keep-alive both ways, as between the gateway and a store it reaches directly.
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.store = None

    def finish(self):
        super().finish()
        if self.store:
            self.store.close()

    def log_message(self, *_):
        pass

    def forward(self, body):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        for attempt in (0, 1):
            if self.store is None:
                self.store = http.client.HTTPConnection("127.0.0.1", self.server.store_port, timeout=30)
            try:
                self.store.request(self.command, self.path, body, headers)
                response = self.store.getresponse()
                return response, response.read()
            except (http.client.HTTPException, OSError):
                # The store closed an idle keep-alive connection: once more on a new one.
                self.store.close()
                self.store = None
                if attempt:
                    raise

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length or self.command in ("POST", "PUT") else None
        response, data = self.forward(body)
        t = time.time()
        self.send_response_only(response.status, response.reason)
        for k, v in response.getheaders():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        # Parsed after the answer went back: the gateway does not wait for it.
        if self.command == "POST" and self.path.split("?")[0].endswith("/api/v2/write"):
            self.server.record(t, response.status, self.headers, body or b"")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any


class Watcher:
    """asyncua handler: marker -> first receipt time, SourceTimestamp."""

    def __init__(self):
        self.seen = {}

    def datachange_notification(self, node, val, data):
        t = time.time()
        marker = marker_of(val) if isinstance(val, (int, float)) else None
        if marker is not None and marker not in self.seen:
            source = data.monitored_item.Value.SourceTimestamp
            if source and source.tzinfo is None:
                source = source.replace(tzinfo=timezone.utc)
            self.seen[marker] = (t, source.timestamp() if source else None)


async def connect_opcua(url, gateway, log, timeout=60):
    # An OPC UA session rather than a bare TCP probe: the server logs an
    # error for every connection that closes before its Hello.
    deadline = time.time() + timeout
    while True:
        client = Client(url=url)
        try:
            await client.connect()
            return client
        except (OSError, asyncio.TimeoutError, ua.UaError):
            if gateway.poll() is not None:
                raise SystemExit(f"the gateway exited with {gateway.returncode}; see {log}")
            if time.time() > deadline:
                raise SystemExit(f"no OPC UA session at {url} after {timeout} s; see {log}")
            await asyncio.sleep(0.2)


def probe_toml(probe, args, workers):
    """The probe machine (tags p00..p07) and, if asked, the OPC UA tick, the
    load subscribers' user and the async worker threads: TOML appended to
    the workload's configuration."""
    limits = (f"\n[opcua.limits]\nmin_publishing_interval_ms = {args.opcua_min_publishing_ms}\n"
              if args.opcua_min_publishing_ms is not None else "")
    if args.subscribers:
        limits += (f'\n[[opcua.users]]\nusername = "{LOAD_USER}"\n'
                   f'password_env = "{LOAD_PASSWORD_ENV}"\n')
    if workers != "default":
        limits += f"\n[runtime]\nworker_threads = {workers}\n"
    tags = "".join(f"""
  [[machines.tags]]
  name = "p{k:02d}"
  register = "holding"
  address = {2 * k}
  type = "f32"
""" for k in range(PROBE_TAGS))
    return f"""{limits}
[[machines]]
name = "probe"
protocol = "modbus-tcp"
address = "{probe}"
poll_interval_ms = {args.poll_ms}
{tags}"""


def stop(proc):
    if proc:
        stop_processes([proc], timeout=30)


def load_nodes(names):
    """The string NodeIds of the load machines' tags and predictions."""
    nodes = []
    for name in names:
        nodes += [f"Machines/{name}/Tags/v{k:02d}" for k in range(F32)]
        nodes.append(f"Machines/{name}/Predictions/{MODEL}/y")
    return nodes


def start_subscribers(args, env, run_dir, ua_port, password):
    """The load subscribers' process, once every subscription is made."""
    nodes = os.path.join(run_dir, "load-nodes.json")
    with open(nodes, "w") as f:
        json.dump(load_nodes(env["names"]), f)
    proc = subprocess.Popen(
        [f"{ROOT}/.venv/bin/python", f"{ROOT}/scripts/opcua_load_subscribers.py",
         "--url", f"opc.tcp://127.0.0.1:{ua_port}/", "--nodes", nodes,
         "--clients", str(args.subscribers), "--publishing-ms", str(args.subscriber_publishing_ms),
         "--user", LOAD_USER, "--password-env", LOAD_PASSWORD_ENV,
         "--pki", os.path.join(run_dir, "load-pki")],
        stdout=subprocess.PIPE, stderr=open(os.path.join(run_dir, "subscribers.log"), "w"),
        text=True, env={**os.environ, LOAD_PASSWORD_ENV: password})
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.wait(timeout=30)
        raise SystemExit(f"the load subscribers did not start ({line.strip()!r}); see "
                         f"{run_dir}/subscribers.log")
    return proc


def stop_subscribers(proc):
    """SIGTERM, then their JSON summary."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"errors": [f"no summary, exit {proc.returncode}"]}


async def run(env, args, flush_ms, workers, binary):
    """One gateway run: returns marker -> change time, store and OPC UA stamps."""
    run_dir = os.path.join(env["tmp"], f"flush-{flush_ms}-workers-{workers}-{time.time_ns()}")
    os.makedirs(run_dir, exist_ok=True)
    # Protocol address 0 is the block's index 1 (pymodbus adds 1, see
    # tests/peers/modbus_server.py); the values beside p00 never change.
    block = ModbusSequentialDataBlock(1, [w for k in range(PROBE_TAGS) for w in f32_words(0.5 * k)])
    context = ModbusServerContext(devices=ModbusDeviceContext(hr=block), single=True)
    probe = ModbusTcpServer(context, address=("127.0.0.1", 0))
    proxy = StoreProxy(env["vm_port"])
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    gateway = client = subscribers = None
    load = {}
    log = os.path.join(run_dir, "gateway.log")
    try:
        await probe.serve_forever(background=True)
        probe_port = probe.transport.sockets[0].getsockname()[1]
        ua_port, http_port = free_port(), free_port()
        config = gateway_config(run_dir, f"http://127.0.0.1:{proxy.server_port}",
                                env["devices"], env["names"], args.poll_ms, "memory", ua_port,
                                http_port, env["models"], F32, flush_ms=flush_ms,
                                extra=probe_toml(f"127.0.0.1:{probe_port}", args, workers),
                                opcua_settings=["trust_client_certs = true"] if args.subscribers
                                else [])
        password = secrets.token_urlsafe(16)
        gateway = subprocess.Popen(
            [binary, "run", "--config", config],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"),
            env={**os.environ, "RUST_LOG": "warn", LOAD_PASSWORD_ENV: password})
        # In a thread: the probe must answer the gateway's first polls meanwhile.
        await asyncio.to_thread(wait_port, http_port, proc=gateway, log=log)
        client = await connect_opcua(f"opc.tcp://127.0.0.1:{ua_port}/", gateway, log)
        ns = await client.get_namespace_index(NS_URI)
        watcher = Watcher()
        sub = await client.create_subscription(0, watcher)
        # asyncua asks again with the server's revision; what it asked last is what was granted.
        revised_ms = sub.parameters.RequestedPublishingInterval
        # A queue, not the default 1: two markers that reach the server within
        # one publishing interval are both timed instead of the older dropped.
        await sub.subscribe_data_change(
            client.get_node(ua.NodeId("Machines/probe/Tags/p00", ns)), sampling_interval=0,
            queuesize=OPCUA_QUEUE)
        if args.subscribers:
            # In a thread: the probe must keep answering meanwhile.
            subscribers = await asyncio.to_thread(start_subscribers, args, env, run_dir, ua_port,
                                                  password)
        await asyncio.sleep(WARMUP_S)
        if gateway.poll() is not None:
            raise SystemExit(f"the gateway exited during warm-up; see {log}")

        metrics = f"http://127.0.0.1:{http_port}/metrics"
        scans_before = (await asyncio.to_thread(metric_totals, metrics)).get(
            "ironbridge_source_scans_total", 0)
        cpu_before, window_start = cpu_seconds(gateway.pid), time.monotonic()
        load_cpu_before = cpu_seconds(subscribers.pid) if subscribers else 0.0
        changed = {}
        for marker in range(1, args.changes + 1):
            await asyncio.sleep(random.uniform(0.15, 0.35))
            block.setValues(1, f32_words(float(marker)))
            changed[marker] = time.time()
        window = time.monotonic() - window_start
        cpu = cpu_seconds(gateway.pid) - cpu_before
        scans = (await asyncio.to_thread(metric_totals, metrics)).get(
            "ironbridge_source_scans_total", 0) - scans_before
        machines = len(env["names"]) + 1
        load = {"window_s": round(window, 1), "gateway_cores": round(cpu / window, 4),
                "scans_taken": round(scans / (machines * window * 1000 / args.poll_ms), 4)}
        if subscribers:
            load["subscribers_cores"] = round(
                (cpu_seconds(subscribers.pid) - load_cpu_before) / window, 3)
            totals = await asyncio.to_thread(stop_subscribers, subscribers)
            subscribers = None
            per_client = totals.get("changes_per_client", [])
            seconds = totals.get("seconds") or 1.0
            load["subscriber_changes_per_s"] = [round(c / seconds) for c in per_client]
            load["subscriber_errors"] = totals.get("errors", [])
        await asyncio.sleep(flush_ms / 1000 + 2)
        await client.disconnect()
        client = None
        await asyncio.to_thread(stop, gateway)
        if gateway.returncode != 0:
            print(f"warning: the gateway exited with {gateway.returncode}; see {log}", file=sys.stderr)
    finally:
        if client:
            try:
                await client.disconnect()
            except Exception:
                pass
        if subscribers:
            await asyncio.to_thread(stop, subscribers)
        await asyncio.to_thread(stop, gateway)
        await probe.shutdown()
        proxy.shutdown()
        proxy.server_close()
    with open(log, errors="replace") as f:
        warnings = sum(1 for line in f if " WARN " in line or " ERROR " in line)
    return {"changed": changed, "stored": dict(proxy.stored), "notified": dict(watcher.seen),
            "revised_ms": revised_ms, "writes": proxy.writes, "write_errors": proxy.write_errors,
            "sample_line": proxy.sample_line, "gateway_warnings": warnings, "load": load}


def percentile(sorted_ms, p):
    # Nearest rank: a value that was measured.
    return sorted_ms[max(0, math.ceil(p / 100 * len(sorted_ms)) - 1)]


def summary(prefix, changed, seen):
    """Latency (ms) per marker from its change to the path's stamp, and the
    split at the gateway's timestamp."""
    total = sorted((seen[m][0] - t) * 1000 for m, t in changed.items() if m in seen)
    out = {f"{prefix}_n": len(total), f"{prefix}_lost": len(changed) - len(total)}
    if total:
        out.update({f"{prefix}_{k}_ms": round(percentile(total, p), 1)
                    for k, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))})
        out[f"{prefix}_mean_ms"] = round(sum(total) / len(total), 1)
    # change -> gateway's timestamp, gateway's timestamp -> stamp here (p50 / p99).
    stamped = [(m, seen[m]) for m in changed if m in seen and seen[m][1] is not None]
    if stamped:
        before = sorted((s[1] - changed[m]) * 1000 for m, s in stamped)
        after = sorted((s[0] - s[1]) * 1000 for _, s in stamped)
        out[f"{prefix}_change_to_gateway_stamp_ms"] = [round(percentile(before, 50), 1),
                                                       round(percentile(before, 99), 1)]
        out[f"{prefix}_gateway_stamp_to_here_ms"] = [round(percentile(after, 50), 1),
                                                     round(percentile(after, 99), 1)]
    return out


def table(results):
    head = ("| gateway | poll | flush | load machines | workers | load subscribers "
            "| OPC UA publishing (revised) | path | n | lost "
            "| p50 ms | p90 ms | p99 ms | max ms | target | p99 meets it |")
    lines = [head, "|---|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        for path, target in (("store", r["store_target_ms"]), ("opcua", r["opcua_target_ms"])):
            cells = [r.get(f"{path}_{k}_ms", "–") for k in ("p50", "p90", "p99", "max")]
            op = "≤" if path == "store" else "<"
            met = "–" if f"{path}_p99_ms" not in r else (
                "yes" if (r[f"{path}_p99_ms"] <= target if path == "store"
                          else r[f"{path}_p99_ms"] < target) else "no")
            lines.append(
                f"| {os.path.basename(r['gateway'])} | {r['poll_ms']} ms | {r['flush_ms']} ms "
                f"| {r['load_machines']} "
                f"| {r['worker_threads']} | {r['subscribers']} "
                f"| {r['opcua_revised_publishing_ms']:g} ms | {'store' if path == 'store' else 'OPC UA'} "
                f"| {r[f'{path}_n']} | {r[f'{path}_lost']} | " + " | ".join(map(str, cells))
                + f" | {op} {target} ms | {met} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poll-ms", type=int, default=100, help="every machine's poll interval")
    ap.add_argument("--flush-ms", default="1000,100",
                    help="comma-separated [influx] flush_interval_ms values, one run each")
    ap.add_argument("--changes", type=int, default=200, help="markers per run")
    ap.add_argument("--load-machines", type=int, default=10,
                    help="the issue's devices beside the probe (0: none, and no model)")
    ap.add_argument("--opcua-min-publishing-ms", type=int,
                    help="[opcua.limits] min_publishing_interval_ms (default: the gateway's)")
    ap.add_argument("--worker-threads", default="default",
                    help="comma-separated [runtime] worker_threads values (\"default\": the "
                         "gateway's), one run each per flush interval; repeats allowed")
    ap.add_argument("--subscribers", type=int, default=0,
                    help="SignAndEncrypt OPC UA clients subscribed to every load tag and "
                         "prediction (scripts/opcua_load_subscribers.py)")
    ap.add_argument("--subscriber-publishing-ms", type=float, default=100,
                    help="the load subscribers' requested publishing interval")
    ap.add_argument("--gateways", default=f"{ROOT}/target/release/ironbridge",
                    help="comma-separated gateway binaries, one run each per flush interval and "
                         "worker setting, in turn (A/B in one run)")
    ap.add_argument("--keep", metavar="DIR", help="keep configurations and logs in DIR")
    args = ap.parse_args()
    flushes = [int(v) for v in args.flush_ms.split(",")]
    workers_list = [w.strip() for w in args.worker_threads.split(",")]
    for w in workers_list:
        if w != "default" and not (w.isdigit() and int(w) > 0):
            ap.error(f"--worker-threads: {w!r} is neither \"default\" nor a positive number")
    # Their warnings (revised session timeout and publishing interval) are
    # expected here; the revised interval is in the results.
    for name in ("pymodbus", "asyncua"):
        logging.getLogger(name).setLevel(logging.ERROR)

    if args.keep:
        tmp = os.path.abspath(args.keep)
        os.makedirs(tmp, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="ironbridge-bench-latency-")
    procs = []
    results = []
    try:
        vm_port = free_port()
        procs.append(subprocess.Popen(
            ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{vm_port}",
             f"-storageDataPath={tmp}/vm", "-retentionPeriod=100y"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(vm_port)
        devices, names, models = [], [], None
        if args.load_machines:
            device, devices = start_register_banks(args.load_machines, F32)
            procs.append(device)
            names = [f"machine-{i:03d}" for i in range(args.load_machines)]
            models = os.path.join(tmp, "models")
            subprocess.run([f"{ROOT}/.venv/bin/python", f"{ROOT}/benchmarks/make_model.py",
                            "--out", models], check=True, stdout=subprocess.DEVNULL)
        env = {"tmp": tmp, "vm_port": vm_port, "devices": devices, "names": names, "models": models}
        binaries = [b.strip() for b in args.gateways.split(",")]
        for flush_ms, workers, binary in [(f, w, b) for f in flushes for w in workers_list
                                          for b in binaries]:
            raw = asyncio.run(run(env, args, flush_ms, workers, binary))
            if raw["sample_line"]:
                print(f"stored probe line (flush {flush_ms} ms): {raw['sample_line']}", file=sys.stderr)
            r = {"poll_ms": args.poll_ms, "flush_ms": flush_ms, "load_machines": args.load_machines,
                 "gateway": binary, "worker_threads": workers, "subscribers": args.subscribers,
                 "changes": len(raw["changed"]),
                 "opcua_min_publishing_ms": args.opcua_min_publishing_ms,
                 "opcua_revised_publishing_ms": raw["revised_ms"],
                 "store_target_ms": args.poll_ms + flush_ms + 5,
                 "opcua_target_ms": OPCUA_TICK_MS,
                 **summary("store", raw["changed"], raw["stored"]),
                 **summary("opcua", raw["changed"], raw["notified"]),
                 "store_writes": raw["writes"], "store_write_errors": raw["write_errors"],
                 "gateway_warnings": raw["gateway_warnings"], **raw["load"]}
            results.append(r)
            print(json.dumps(r), flush=True)
            for path, seen in (("store", raw["stored"]), ("OPC UA", raw["notified"])):
                missing = sorted(set(raw["changed"]) - set(seen))
                if missing:
                    print(f"flush {flush_ms} ms: {len(missing)} markers never seen at the {path}: "
                          f"{missing[:20]}{' ...' if len(missing) > 20 else ''}", file=sys.stderr)
        print()
        print(table(results))
        print()
        print("| gateway | flush | workers | load subscribers | gateway CPU (cores) | scans taken "
              "| changes/s per load subscriber | load subscribers' CPU (cores) |")
        print("|---|---:|---|---:|---:|---:|---|---:|")
        for r in results:
            print(f"| {os.path.basename(r['gateway'])} | {r['flush_ms']} ms | {r['worker_threads']} "
                  f"| {r['subscribers']} "
                  f"| {r['gateway_cores']} | {r['scans_taken']} "
                  f"| {' / '.join(map(str, r.get('subscriber_changes_per_s', []))) or '–'} "
                  f"| {r.get('subscribers_cores', '–')} |")
    finally:
        stop_processes(procs)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
