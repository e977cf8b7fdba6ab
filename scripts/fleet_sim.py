#!/usr/bin/env python3
"""A fleet on one box: N gateways, one store, one MLflow registry.

Starts one victoria-metrics (the InfluxDB-API store every gateway writes
to), one `mlflow server` (sqlite, local artifacts) and N gateways, each
with its own simulated pump (`ironbridge-sim serve`), its own spool, PKI
and model folder, `[gateway] name = "fleet-NNN"`, and the pump's
bearing-wear model following the registry's alias `champion` with
`on_new = "shadow"` and a gate that promotes by itself (`disagreement`,
auto_promote). Version 1.0.0 (models/examples) is published first; every
gateway starts with it.

Then it measures, in a window of --window-s seconds with everything
running: each gateway's CPU (user+sys from /proc) and resident memory, and
the store's ingest rate (rows victoria-metrics inserted per second). Then
it publishes 1.1.0 (the same weights under a new version number: a
retrained model that agrees with the old one, so the gate passes) and moves
the alias, and reports how long until each gateway serves 1.1.0 (registry
poll, download, sha256, load, shadow, the gate's samples, promotion), read
from each gateway's /metrics (`ironbridge_model_state{version="1.1.0"}`).

Prints one JSON object on stdout (and a summary on stderr).

Usage: scripts/fleet_sim.py N [--window-s 20] [--poll-ms 500]
       [--registry-poll-s 2] [--gate-samples 30] [--bin-dir target/release]
(scripts/fleet-sim.sh builds the release binaries first.)
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import cpu_seconds, free_port, memory_kib, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
MODEL = "bearing-wear"
ALIAS = "champion"
EXAMPLE_VERSION = os.path.join(ROOT, "models", "examples", MODEL, "1.0.0")


def log(message):
    print(f"[fleet-sim] {message}", file=sys.stderr, flush=True)


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_http(url, what, deadline_s, proc=None, log_path=None):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = open(log_path).read()[-3000:] if log_path else ""
            raise SystemExit(f"{what} exited with {proc.returncode}:\n{tail}")
        try:
            http_get(url, timeout=2)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise SystemExit(f"{what} did not answer {url} within {deadline_s} s")


def pump_machine_block(sim_addr, poll_ms):
    """The example's pump-1 [[machines]] block (its tags in the units the
    model was trained on), pointed at `sim_addr`."""
    text = open(os.path.join(ROOT, "config", "example.toml")).read()
    heads = [m.start() for m in re.finditer(r"(?m)^\[\[machines\]\]$", text)]
    block = text[heads[0]:heads[1]]
    block = re.sub(r'(?m)^address = ".*"$', f'address = "{sim_addr}"', block, count=1)
    block = re.sub(r"(?m)^poll_interval_ms = \d+$", f"poll_interval_ms = {poll_ms}", block, count=1)
    return block


def gateway_config(i, vm_url, mlflow_url, sim_addr, opcua_port, http_port, args):
    return f"""# fleet-sim gateway {i}
[gateway]
name = "fleet-{i:03d}"
tags = {{ site = "fleet-sim" }}

[opcua]
host = "127.0.0.1"
port = {opcua_port}
pki_dir = "pki"
# Read-only, anonymous, loopback only: nobody logs in during the run.
insecure_loopback_endpoint = true

[influx]
url = "{vm_url}"
bucket = "fleet"
flush_interval_ms = 1000
spool_dir = "spool"

[http]
address = "127.0.0.1:{http_port}"

{pump_machine_block(sim_addr, args.poll_ms)}
[[models]]
name = "{MODEL}"
path = "models/{MODEL}"
version = "1.0.0"
machines = ["pump-1"]
registry = {{ kind = "mlflow", url = "{mlflow_url}", name = "{MODEL}", alias = "{ALIAS}", poll_interval_s = {args.registry_poll_s}, on_new = "shadow" }}
  [models.gate]
  metric = "disagreement"
  margin = 0.01
  min_samples = {args.gate_samples}
  auto_promote = true
"""


def serving_version(http_port):
    """The version `ironbridge_model_state` says serves the model, or None."""
    try:
        body = http_get(f"http://127.0.0.1:{http_port}/metrics", timeout=2)
    except (urllib.error.URLError, OSError):
        return None
    for line in body.splitlines():
        if line.startswith("ironbridge_model_state{") and f'model="{MODEL}"' in line:
            found = re.search(r'version="([^"]*)"', line)
            if found:
                return found.group(1)
    return None


def vm_rows_inserted(vm_url):
    total = 0.0
    for line in http_get(f"{vm_url}/metrics").splitlines():
        if line.startswith("vm_rows_inserted_total{") and 'type="influx"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def publish(mlflow_url, folder, alias=None):
    cmd = [PYTHON, os.path.join(ROOT, "models", "training", "publish_to_mlflow.py"), folder,
           "--mlflow", mlflow_url, "--no-serving-flavor"]
    if alias:
        cmd += ["--alias", alias]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def set_alias(mlflow_url, version):
    body = json.dumps({"name": MODEL, "alias": ALIAS, "version": str(version)}).encode()
    request = urllib.request.Request(
        f"{mlflow_url}/api/2.0/mlflow/registered-models/alias", data=body, method="POST",
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


def copy_version(src, dst, old, new):
    shutil.copytree(src, dst)
    manifest = os.path.join(dst, "manifest.toml")
    text = open(manifest).read()
    text = re.sub(rf'(?m)^version = "{re.escape(old)}"$', f'version = "{new}"', text, count=1)
    open(manifest, "w").write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gateways", type=int)
    ap.add_argument("--window-s", type=float, default=20)
    ap.add_argument("--poll-ms", type=int, default=500, help="each gateway's pump poll interval")
    ap.add_argument("--registry-poll-s", type=int, default=2)
    ap.add_argument("--gate-samples", type=int, default=30)
    ap.add_argument("--rollout-deadline-s", type=float, default=600)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--keep", help="run in this folder and keep it (default: a temp folder)")
    args = ap.parse_args()
    n = args.gateways
    if n < 1:
        raise SystemExit("N must be at least 1")
    work = args.keep or tempfile.mkdtemp(prefix="ironbridge-fleet-")
    os.makedirs(work, exist_ok=True)
    procs = []  # (name, Popen, own process group)

    def start(name, cmd, log_path, env=None, cwd=None, group=False):
        f = open(log_path, "w")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                             start_new_session=group)
        procs.append((name, p, group))
        return p

    try:
        # The store.
        vm_port = free_port()
        vm_url = f"http://127.0.0.1:{vm_port}"
        vm = start("victoria-metrics", ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{vm_port}",
                   f"-storageDataPath={work}/vm", "-retentionPeriod=100y"], f"{work}/vm.log")
        wait_http(f"{vm_url}/health", "victoria-metrics", 30, vm, f"{work}/vm.log")
        # The registry (uvicorn and a job runner are its children: own group).
        ml_port = free_port()
        mlflow_url = f"http://127.0.0.1:{ml_port}"
        mlflow = start("mlflow", [PYTHON, "-m", "mlflow", "server", "--backend-store-uri",
                       f"sqlite:///{work}/mlflow.db", "--artifacts-destination", f"{work}/artifacts",
                       "--host", "127.0.0.1", "--port", str(ml_port), "--workers", "1"],
                       f"{work}/mlflow.log", group=True,
                       # its temporary files (db_init_lock-*) removed with the work folder
                       env=dict(os.environ, TMPDIR=work))
        wait_http(f"{mlflow_url}/health", "mlflow server", 120, mlflow, f"{work}/mlflow.log")
        published = os.path.join(work, "published")
        copy_version(EXAMPLE_VERSION, os.path.join(published, "1.0.0"), "1.0.0", "1.0.0")
        copy_version(EXAMPLE_VERSION, os.path.join(published, "1.1.0"), "1.0.0", "1.1.0")
        first = publish(mlflow_url, os.path.join(published, "1.0.0"), alias=ALIAS)
        log(f"published 1.0.0 as registry version {first['version']} ({ALIAS})")

        # The machines and the gateways.
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        gateways = []
        for i in range(n):
            gdir = os.path.join(work, f"gw-{i:03d}")
            os.makedirs(os.path.join(gdir, "models", MODEL))
            shutil.copytree(EXAMPLE_VERSION, os.path.join(gdir, "models", MODEL, "1.0.0"))
            sim = start(f"sim-{i}", [os.path.join(args.bin_dir, "ironbridge-sim"), "serve",
                        "--bind", "127.0.0.1:0", "--seed", str(7 + i), "--time-scale", "600"],
                        f"{gdir}/sim.log")
            deadline = time.time() + 30
            sim_addr = None
            while time.time() < deadline and sim_addr is None:
                found = re.search(r"listening on (\S+)", open(f"{gdir}/sim.log").read())
                if found:
                    sim_addr = found.group(1)
                elif sim.poll() is not None:
                    raise SystemExit(f"simulator {i} exited: {open(f'{gdir}/sim.log').read()}")
                else:
                    time.sleep(0.05)
            if sim_addr is None:
                raise SystemExit(f"simulator {i} did not say where it listens")
            gateways.append({"name": f"fleet-{i:03d}", "index": i, "dir": gdir,
                             "sim_addr": sim_addr, "log": f"{gdir}/gateway.log"})

        def launch(g):
            # Ports picked now and bound by the gateway a moment later: in
            # between, another process's outgoing connection may take one
            # (same ephemeral range), so a start that fails on it is retried.
            g["http_port"], opcua_port = free_port(), free_port()
            config = os.path.join(g["dir"], "gateway.toml")
            with open(config, "w") as f:
                f.write(gateway_config(g["index"], vm_url, mlflow_url, g["sim_addr"], opcua_port,
                                       g["http_port"], args))
            g["proc"] = start(g["name"], [os.path.join(args.bin_dir, "ironbridge"), "run",
                              "--config", config], g["log"], env=env)

        for g in gateways:
            launch(g)
        started = time.time()
        for g in gateways:
            for attempt in range(3):
                try:
                    wait_port(g["http_port"], timeout=120, proc=g["proc"], log=g["log"])
                    break
                except SystemExit:
                    if attempt == 2 or "Address already in use" not in open(g["log"]).read():
                        raise
                    log(f"{g['name']}: a port was taken before it bound it; starting it again")
                    launch(g)
        while True:
            versions = [serving_version(g["http_port"]) for g in gateways]
            if all(v == "1.0.0" for v in versions):
                break
            if time.time() - started > 180:
                raise SystemExit(f"not every gateway serves 1.0.0: {versions}")
            time.sleep(0.5)
        log(f"{n} gateways serve 1.0.0 ({time.time() - started:.1f} s after the first start)")

        # Steady state: CPU per gateway, memory, the store's ingest rate.
        time.sleep(3)
        cpu0 = [cpu_seconds(g["proc"].pid) for g in gateways]
        rows0, t0 = vm_rows_inserted(vm_url), time.time()
        time.sleep(args.window_s)
        cpu1 = [cpu_seconds(g["proc"].pid) for g in gateways]
        rows1, t1 = vm_rows_inserted(vm_url), time.time()
        elapsed = t1 - t0
        cpu_share = [(b - a) / elapsed for a, b in zip(cpu0, cpu1)]
        rss = [memory_kib(g["proc"].pid).get("VmRSS", 0) for g in gateways]
        ingest = (rows1 - rows0) / elapsed

        # The rollout: 1.1.0 published, then the alias moved.
        second = publish(mlflow_url, os.path.join(published, "1.1.0"))
        moved = time.time()
        set_alias(mlflow_url, second["version"])
        log(f"alias {ALIAS} moved to registry version {second['version']} (1.1.0)")
        serving_at = {}
        while len(serving_at) < n:
            for g in gateways:
                if g["name"] not in serving_at and serving_version(g["http_port"]) == "1.1.0":
                    serving_at[g["name"]] = time.time() - moved
                if g["proc"].poll() is not None:
                    raise SystemExit(f"{g['name']} exited: {open(g['log']).read()[-3000:]}")
            if time.time() - moved > args.rollout_deadline_s:
                break
            time.sleep(0.25)
        times = sorted(serving_at.values())
        # Which gateways the store tells apart (the `gateway` tag).
        in_store = json.loads(http_get(f"{vm_url}/api/v1/label/gateway/values"))["data"]
        result = {
            "gateways": n,
            "poll_ms": args.poll_ms,
            "registry_poll_s": args.registry_poll_s,
            "gate_samples": args.gate_samples,
            "window_s": round(elapsed, 1),
            "cpu_per_gateway_pct": {
                "median": round(100 * statistics.median(cpu_share), 2),
                "max": round(100 * max(cpu_share), 2),
                "total": round(100 * sum(cpu_share), 1),
            },
            "rss_per_gateway_mib": {
                "median": round(statistics.median(rss) / 1024, 1),
                "max": round(max(rss) / 1024, 1),
            },
            "store_rows_per_s": round(ingest, 1),
            "gateways_in_store": sorted(in_store),
            "rollout_s": {
                "served": len(times),
                "first": round(times[0], 1) if times else None,
                "median": round(statistics.median(times), 1) if times else None,
                "all": round(times[-1], 1) if len(times) == n else None,
            },
        }
        print(json.dumps(result))
        log(f"{n} gateways: CPU per gateway median {result['cpu_per_gateway_pct']['median']} % "
            f"(all {result['cpu_per_gateway_pct']['total']} % of one core), RSS median "
            f"{result['rss_per_gateway_mib']['median']} MiB, store {ingest:.0f} rows/s; "
            f"1.1.0 served by {len(times)}/{n}: first {result['rollout_s']['first']} s, "
            f"all {result['rollout_s']['all']} s after the alias moved")
        if len(times) < n:
            return 1
        return 0
    finally:
        for name, p, group in reversed(procs):
            if p.poll() is None:
                try:
                    if group:
                        os.killpg(p.pid, signal.SIGTERM)
                    else:
                        p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, p, group in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                if group:
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    p.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
