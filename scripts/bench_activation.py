#!/usr/bin/env python3
"""Time a model activation through a running gateway's OPC UA server, as an
operator's tool sees it (BENCHMARKS.md, "Model versions").

Connects as an admin over SignAndEncrypt, subscribes to the prediction
version of one machine (Machines/<machine>/Predictions/<model>/ModelVersion,
10 ms publishing), then ROUNDS times calls Models/<model>/Activate with the
other of two versions and measures:
  - call_ms: the Activate call, request to response (the gateway verifies,
    loads, warms up and swaps before it answers);
  - first_prediction_ms: from the call's start to the first notification of
    a prediction computed by the new version (its arrival at this client).
Prints one JSON line per round and a summary.

Usage: .venv/bin/python scripts/bench_activation.py opc.tcp://127.0.0.1:4840/ \
    --model spindle-wear --machine spindle-1 --versions 1.0.0 1.1.0 \
    --user admin --password-env IRONBRIDGE_ADMIN_PASSWORD --client-pki DIR [--rounds 5]

The gateway must trust the client certificate in DIR (made on first use):
the first run is refused and leaves it in the gateway's pki/rejected/.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import security_policies

NS_URI = "urn:ironbridge:gateway"


class VersionWatch:
    def __init__(self):
        self.changes = asyncio.Queue()

    def datachange_notification(self, node, val, data):
        self.changes.put_nowait((time.perf_counter(), val))


async def run(args):
    client = Client(url=args.url, timeout=120)
    client.application_uri = "urn:ironbridge:bench-activation"
    pki = Path(args.client_pki)
    pki.mkdir(parents=True, exist_ok=True)
    cert, key = await client.setup_self_signed_certificate(pki / "key.pem", pki / "cert.der")
    await client.set_security(
        security_policies.SecurityPolicyBasic256Sha256, str(cert), str(key),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    client.set_user(args.user)
    client.set_password(os.environ.get(args.password_env, ""))
    results = []
    async with client:
        ns = await client.get_namespace_index(NS_URI)

        def node(path):
            return client.get_node(ua.NodeId(path, ns, ua.NodeIdType.String))

        model = node(f"Models/{args.model}")
        activate = node(f"Models/{args.model}/Activate")
        active = await node(f"Models/{args.model}/ActiveVersion").read_value()
        watch = VersionWatch()
        sub = await client.create_subscription(10, watch)
        await sub.subscribe_data_change(
            node(f"Machines/{args.machine}/Predictions/{args.model}/ModelVersion"), sampling_interval=0
        )
        await asyncio.sleep(1.0)
        for i in range(args.rounds):
            target = args.versions[1] if active == args.versions[0] else args.versions[0]
            while not watch.changes.empty():
                watch.changes.get_nowait()
            t0 = time.perf_counter()
            await model.call_method(activate, ua.Variant(target, ua.VariantType.String))
            t_call = time.perf_counter()
            while True:
                at, version = await asyncio.wait_for(watch.changes.get(), 60)
                if version == target:
                    break
            result = {
                "round": i,
                "to": target,
                "call_ms": round((t_call - t0) * 1e3, 1),
                "first_prediction_ms": round((at - t0) * 1e3, 1),
            }
            print(json.dumps(result), flush=True)
            results.append(result)
            active = target
            await asyncio.sleep(args.pause_s)
        await sub.delete()
    calls = [r["call_ms"] for r in results]
    firsts = [r["first_prediction_ms"] for r in results]
    print(
        f"summary: Activate call median {statistics.median(calls):.1f} ms "
        f"({min(calls):.1f}-{max(calls):.1f}); call start to first prediction of the new "
        f"version median {statistics.median(firsts):.1f} ms ({min(firsts):.1f}-{max(firsts):.1f}); "
        f"{len(results)} rounds"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--model", required=True)
    p.add_argument("--machine", required=True)
    p.add_argument("--versions", nargs=2, required=True)
    p.add_argument("--user", default="admin")
    p.add_argument("--password-env", default="IRONBRIDGE_ADMIN_PASSWORD")
    p.add_argument("--client-pki", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pause-s", type=float, default=2.0)
    args = p.parse_args()
    try:
        asyncio.run(run(args))
    except ua.UaStatusCodeError as e:
        sys.exit(f"refused: {e}")


if __name__ == "__main__":
    main()
