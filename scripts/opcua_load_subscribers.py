#!/usr/bin/env python3
"""OPC UA client load for benchmarks: --clients asyncua sessions, each over
SignAndEncrypt (Basic256Sha256, its own self-signed certificate) with a
username, each with one subscription to every node in --nodes (publishing
interval --publishing-ms, sampling interval 0, queue 1: what an HMI asks).

Prints one line `ready <clients>` on stdout once every subscription is made,
then counts data changes until SIGTERM (or SIGINT), and prints one JSON line:
clients connected, data changes received in total and per client, seconds
between `ready` and the stop, and the errors met.

Run by scripts/bench_latency.py (--subscribers); usable alone:
  scripts/opcua_load_subscribers.py --url opc.tcp://127.0.0.1:4840/ \
      --nodes nodes.json --user hmi --password-env HMI_PASSWORD --pki /tmp/pki
where nodes.json is a JSON list of string NodeIds in --namespace-uri.
"""
import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import security_policies


class Counter:
    """asyncua handler: counts data changes."""

    def __init__(self):
        self.changes = 0

    def datachange_notification(self, node, val, data):
        self.changes += 1


async def connect(args, k):
    client = Client(url=args.url, timeout=30)
    client.application_uri = f"urn:ironbridge:bench:load-subscriber:{k}"
    pki = Path(args.pki) / f"client-{k}"
    pki.mkdir(parents=True, exist_ok=True)
    cert, key = await client.setup_self_signed_certificate(
        pki / "key.pem", pki / "cert.der")
    await client.set_security(
        security_policies.SecurityPolicyBasic256Sha256, str(cert), str(key),
        mode=ua.MessageSecurityMode.SignAndEncrypt)
    client.set_user(args.user)
    client.set_password(os.environ.get(args.password_env, ""))
    await client.connect()
    return client


async def run(args):
    with open(args.nodes) as f:
        names = json.load(f)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    clients, counters, errors = [], [], []
    try:
        for k in range(args.clients):
            client = await connect(args, k)
            clients.append(client)
            ns = await client.get_namespace_index(args.namespace_uri)
            counter = Counter()
            sub = await client.create_subscription(args.publishing_ms, counter)
            nodes = [client.get_node(ua.NodeId(n, ns)) for n in names]
            await sub.subscribe_data_change(nodes, sampling_interval=0, queuesize=1)
            counters.append(counter)
        print(f"ready {len(clients)}", flush=True)
        start = time.monotonic()
        base = [c.changes for c in counters]
        await stop.wait()
        seconds = time.monotonic() - start
        per_client = [c.changes - b for c, b in zip(counters, base)]
    except Exception as e:  # reported, not hidden: the bench prints it
        errors.append(f"{type(e).__name__}: {e}")
        seconds, per_client = 0.0, [c.changes for c in counters]
    finally:
        for client in clients:
            try:
                await client.disconnect()
            except Exception as e:
                errors.append(f"disconnect: {type(e).__name__}: {e}")
    print(json.dumps({"clients": len(clients), "changes": sum(per_client),
                      "changes_per_client": per_client, "seconds": round(seconds, 3),
                      "errors": errors}), flush=True)
    return 1 if errors else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--nodes", required=True, help="JSON list of string NodeIds")
    ap.add_argument("--namespace-uri", default="urn:ironbridge:gateway")
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--publishing-ms", type=float, default=100)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password-env", required=True)
    ap.add_argument("--pki", required=True, help="folder for the clients' certificates")
    args = ap.parse_args()
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
