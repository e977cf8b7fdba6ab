#!/usr/bin/env python3
"""Remote inference against in-process, side by side in one run.

One gateway reads --machines simulated pumps (`ironbridge-sim serve`) every
--poll-ms and feeds the bearing-wear model (models/examples, 1.0.0) with
every scan, writing to a local victoria-metrics. It runs twice per round,
alternating: `backend = "local"` (libtorch in the gateway) and
`backend = "remote"` (each batch one KServe v2 request to MLServer 1.7.1
serving the same model through mlserver-mlflow, parallel_workers 0: one
process).

Per run, over --seconds after a warm-up, from the gateway's /metrics and
/proc:
  - predictions made per second;
  - forward latency per batch: mean (histogram sum / count) and the p50 and
    p99 bucket bounds of ironbridge_inference_latency_seconds (in-process:
    the libtorch call; remote: the HTTP round trip to the engine);
  - mean batch size;
  - CPU per prediction: the gateway's user+sys (and, remote, MLServer's)
    divided by the predictions made.
JSON lines on stdout, a table on stderr.

Usage: scripts/bench_remote.py --machines 10 --poll-ms 100 --seconds 20 --rounds 2
(scripts/bench-remote.sh builds the release binaries first.)
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import cpu_seconds, free_port, memory_kib, wait_port  # noqa: E402
from fleet_sim import EXAMPLE_VERSION, MODEL, PYTHON, ROOT, http_get, pump_machine_block, wait_http  # noqa: E402


class Processes:
    def __init__(self):
        self.procs = []

    def start(self, cmd, log_path, group=False, **kw):
        f = open(log_path, "w")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=group, **kw)
        self.procs.append((p, group))
        return p

    def stop(self, p, group=False):
        if p.poll() is None:
            (os.killpg(p.pid, signal.SIGTERM) if group else p.send_signal(signal.SIGTERM))
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            (os.killpg(p.pid, signal.SIGKILL) if group else p.kill())
            p.wait()

    def stop_all(self):
        for p, group in reversed(self.procs):
            try:
                self.stop(p, group)
            except ProcessLookupError:
                pass


def metrics(http_port):
    """name{labels} -> value for the model's series of interest."""
    out = {}
    for line in http_get(f"http://127.0.0.1:{http_port}/metrics").splitlines():
        if not line.startswith("ironbridge_") or f'model="{MODEL}"' not in line:
            continue
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out


def total(m, name, extra=""):
    return sum(v for k, v in m.items() if k.startswith(name + "{") and extra in k)


def buckets(m):
    """le -> cumulative count of the latency histogram (all versions)."""
    out = {}
    for k, v in m.items():
        if k.startswith("ironbridge_inference_latency_seconds_bucket{"):
            le = re.search(r'le="([^"]+)"', k).group(1)
            out[float(le)] = out.get(float(le), 0.0) + v
    return out


def quantile_bound(b0, b1, q):
    """Upper bound of the bucket holding quantile q of the observations
    between two snapshots."""
    deltas = sorted((le, b1.get(le, 0) - b0.get(le, 0)) for le in b1)
    count = deltas[-1][1] if deltas else 0
    if count <= 0:
        return None
    for le, cumulative in deltas:
        if cumulative >= q * count:
            return le
    return None


def config_text(backend, sims, vm_url, engine_url, http_port, opcua_port, poll_ms):
    machines = []
    for i, addr in enumerate(sims):
        block = pump_machine_block(addr, poll_ms)
        machines.append(re.sub(r'(?m)^name = "pump-1"$', f'name = "pump-{i + 1}"', block, count=1))
    remote = ""
    if backend == "remote":
        remote = f'backend = "remote"\nurl = "{engine_url}"\nprotocol = "kserve-v2"\ntimeout_ms = 2000\n'
    names = ", ".join(f'"pump-{i + 1}"' for i in range(len(sims)))
    return f"""[gateway]
name = "bench-{backend}"
[opcua]
host = "127.0.0.1"
port = {opcua_port}
pki_dir = "pki"
insecure_loopback_endpoint = true
[influx]
url = "{vm_url}"
bucket = "bench"
buffer = "memory"
[http]
address = "127.0.0.1:{http_port}"
{''.join(machines)}
[[models]]
name = "{MODEL}"
path = "models/{MODEL}"
version = "1.0.0"
machines = [{names}]
{remote}"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=10)
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ironbridge-remote-")
    procs = Processes()
    rows = []
    try:
        vm_port = free_port()
        vm_url = f"http://127.0.0.1:{vm_port}"
        vm = procs.start(["victoria-metrics", f"-httpListenAddr=127.0.0.1:{vm_port}",
                          f"-storageDataPath={work}/vm"], f"{work}/vm.log")
        wait_http(f"{vm_url}/health", "victoria-metrics", 30, vm, f"{work}/vm.log")
        # The engine: the same model as an MLflow pytorch model.
        subprocess.run([PYTHON, os.path.join(ROOT, "models", "training", "mlflow_model.py"),
                        EXAMPLE_VERSION, f"{work}/mlflow-model"], check=True, capture_output=True)
        engine_dir = f"{work}/engine"
        os.makedirs(engine_dir)
        engine_port = free_port()
        with open(f"{engine_dir}/model-settings.json", "w") as f:
            json.dump({"name": MODEL, "implementation": "mlserver_mlflow.MLflowRuntime",
                       "parameters": {"uri": f"{work}/mlflow-model"}}, f)
        with open(f"{engine_dir}/settings.json", "w") as f:
            json.dump({"http_port": engine_port, "grpc_port": free_port(),
                       "metrics_port": free_port(), "parallel_workers": 0,
                       "host": "127.0.0.1"}, f)
        env = dict(os.environ, PATH=os.path.join(ROOT, ".venv", "bin") + ":" + os.environ["PATH"])
        engine = procs.start([os.path.join(ROOT, ".venv", "bin", "mlserver"), "start", engine_dir],
                             f"{work}/mlserver.log", group=True, env=env)
        engine_url = f"http://127.0.0.1:{engine_port}"
        wait_http(f"{engine_url}/v2/models/{MODEL}/ready", "MLServer", 120, engine,
                  f"{work}/mlserver.log")
        sims = []
        for i in range(args.machines):
            log = f"{work}/sim-{i}.log"
            sim = procs.start([os.path.join(args.bin_dir, "ironbridge-sim"), "serve", "--bind",
                               "127.0.0.1:0", "--seed", str(7 + i), "--time-scale", "600"], log)
            deadline = time.time() + 30
            while True:
                found = re.search(r"listening on (\S+)", open(log).read())
                if found:
                    sims.append(found.group(1))
                    break
                if sim.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"simulator {i} did not start: {open(log).read()}")
                time.sleep(0.05)
        for round_ in range(args.rounds):
            for backend in ("local", "remote"):
                gdir = f"{work}/{backend}-{round_}"
                os.makedirs(f"{gdir}/models/{MODEL}")
                shutil.copytree(EXAMPLE_VERSION, f"{gdir}/models/{MODEL}/1.0.0")
                http_port = free_port()
                with open(f"{gdir}/gateway.toml", "w") as f:
                    f.write(config_text(backend, sims, vm_url, engine_url, http_port, free_port(),
                                        args.poll_ms))
                gw = procs.start([os.path.join(args.bin_dir, "ironbridge"), "run", "--config",
                                  f"{gdir}/gateway.toml"], f"{gdir}/gateway.log",
                                 env=dict(os.environ, RUST_LOG="warn"))
                wait_port(http_port, timeout=60, proc=gw, log=f"{gdir}/gateway.log")
                time.sleep(args.warmup)
                m0, t0 = metrics(http_port), time.time()
                g0, e0 = cpu_seconds(gw.pid), cpu_seconds(engine.pid)
                time.sleep(args.seconds)
                m1, t1 = metrics(http_port), time.time()
                g1, e1 = cpu_seconds(gw.pid), cpu_seconds(engine.pid)
                rss = memory_kib(gw.pid).get("VmRSS", 0)
                procs.stop(gw)
                elapsed = t1 - t0
                d = lambda name, extra="": total(m1, name, extra) - total(m0, name, extra)  # noqa: E731
                predictions = d("ironbridge_predictions_total")
                calls = d("ironbridge_inference_latency_seconds_count")
                engine_cpu = (e1 - e0) if backend == "remote" else 0.0
                row = {
                    "round": round_ + 1,
                    "backend": backend,
                    "predictions_per_s": round(predictions / elapsed, 1),
                    "failed": d("ironbridge_inference_failed_total"),
                    "rejected": d("ironbridge_inference_rejected_total"),
                    "batch_mean": round(d("ironbridge_inference_batch_size_sum") / calls, 2) if calls else None,
                    "latency_mean_ms": round(1000 * d("ironbridge_inference_latency_seconds_sum") / calls, 3) if calls else None,
                    "latency_p50_ms_le": (lambda v: v and 1000 * v)(quantile_bound(buckets(m0), buckets(m1), 0.5)),
                    "latency_p99_ms_le": (lambda v: v and 1000 * v)(quantile_bound(buckets(m0), buckets(m1), 0.99)),
                    "gateway_cpu_us_per_prediction": round(1e6 * (g1 - g0) / predictions, 1) if predictions else None,
                    "engine_cpu_us_per_prediction": round(1e6 * engine_cpu / predictions, 1) if predictions else None,
                    "gateway_rss_mib": round(rss / 1024, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'round':>5} {'backend':>7} {'pred/s':>7} {'batch':>6} {'lat mean ms':>11} "
          f"{'p50<=':>7} {'p99<=':>7} {'gw µs/pred':>10} {'engine µs/pred':>14}", file=sys.stderr)
    for r in rows:
        print(f"{r['round']:>5} {r['backend']:>7} {r['predictions_per_s']:>7} {r['batch_mean']!s:>6} "
              f"{r['latency_mean_ms']!s:>11} {r['latency_p50_ms_le']!s:>7} {r['latency_p99_ms_le']!s:>7} "
              f"{r['gateway_cpu_us_per_prediction']!s:>10} {r['engine_cpu_us_per_prediction']!s:>14}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
