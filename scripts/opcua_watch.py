#!/usr/bin/env python3
"""Watch IronBridge over OPC UA: model versions, then live predictions.

Usage: .venv/bin/python scripts/opcua_watch.py [opc.tcp://127.0.0.1:4840/] [--seconds N]

Uses the demo's anonymous loopback endpoint (SecurityPolicy None). Against a
secure-only gateway, use an OPC UA client with a certificate the gateway trusts.
"""
import argparse
import asyncio
import sys

from asyncua import Client, ua

NS_URI = "urn:ironbridge:gateway"


class Printer:
    def __init__(self, names):
        self.names = names

    def datachange_notification(self, node, val, data):
        dv = data.monitored_item.Value
        name = self.names.get(node.nodeid, str(node.nodeid))
        status = dv.StatusCode_.name if hasattr(dv, "StatusCode_") else dv.StatusCode.name
        print(f"{dv.SourceTimestamp:%H:%M:%S.%f}  {name} = {val}  [{status}]", flush=True)


async def children(node):
    return {(await c.read_browse_name()).Name: c for c in await node.get_children()}


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="opc.tcp://127.0.0.1:4840/")
    parser.add_argument("--seconds", type=float, default=0, help="stop after N seconds (0: run until Ctrl-C)")
    args = parser.parse_args()

    async with Client(url=args.url) as client:
        ns = await client.get_namespace_index(NS_URI)
        root = await client.nodes.objects.get_child([f"{ns}:IronBridge"])
        top = await children(root)
        watched = {}
        for model_name, model in (await children(top["Models"])).items():
            info = await children(model)
            version = await info["ActiveVersion"].read_value()
            sha = await info["Sha256"].read_value()
            state = await info["State"].read_value()
            print(f"model {model_name}: version {version} ({state}), sha256 {sha}")
        for machine_name, machine in (await children(top["Machines"])).items():
            parts = await children(machine)
            if "Predictions" in parts:
                for model_name, model in (await children(parts["Predictions"])).items():
                    for out_name, out in (await children(model)).items():
                        watched[out.nodeid] = f"{machine_name}/{model_name}/{out_name}"
        if not watched:
            print("no prediction nodes found", file=sys.stderr)
            return 1
        sub = await client.create_subscription(500, Printer(watched))
        await sub.subscribe_data_change([client.get_node(n) for n in watched])
        if args.seconds > 0:
            await asyncio.sleep(args.seconds)
        else:
            while True:
                await asyncio.sleep(3600)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        pass
