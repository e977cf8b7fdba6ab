#!/usr/bin/env python3
"""The reference gateway: the job IronBridge does, as the straightforward
script a plant's data engineer would write with pymodbus, torch and
influxdb-client. The performance benchmark (scripts/bench_reference.py)
runs it beside IronBridge on the same machines, model and store.

Two ways a data engineer writes it (--style):
- `tick` (default, the cheaper): every --poll-ms it reads every machine
  concurrently (asyncio.gather; one pymodbus async TCP client per machine,
  one 124-register read each, more with --f32 above 62), decodes 62 f32 per
  machine (--f32), runs the model
  once on the batch of this tick's scans, and writes the tick's points;
- `per-machine`: one asyncio task per machine, each polling on its own
  clock and running the model on its own scan (batch of 1).
Either way the model's row is the machine's first 8 values in the
manifest's input order, and every scan gives one `process` point (62
fields, or --f32) and one `prediction` point, handed to influxdb-client's batching
write API, which sends them from its own thread. The lines have the shape IronBridge writes
(`process,machine=M v00=...,... <ns>`, `prediction,machine=M,model=..,version=..
y=... <ns>`), stamped with the time each read returned.

What it does not do, and IronBridge does: check the inputs against the
manifest's ranges, verify the model's sha256, queue or bound anything,
reconnect with backoff, spool to disk, serve health or metrics. With
--opcua-port it also serves every value and prediction from an asyncua
server (anonymous, no security: a data engineer's first version); without
it, it has no OPC UA server.

With --read-only it only reads and decodes (tick style): no model, no
points, no store; what the reads alone cost (scripts/bench_stages.py).

A tick that runs late starts the next at once, without catching up (as
IronBridge's polls slip). The counters go to --stats (JSON) once it is
connected and about to poll, on SIGUSR1, and at the end (SIGTERM/SIGINT).
"""
import argparse
import asyncio
import json
import os
import signal
import sys
import time
import tomllib

import torch
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import WriteOptions
from pymodbus.client import AsyncModbusTcpClient

# The largest read of f32 values: 62 of them, 124 registers.
READ_F32 = 62


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", required=True,
                    help="comma-separated host:port, one per machine")
    ap.add_argument("--names", help="comma-separated machine names (default machine-000, ...)")
    ap.add_argument("--poll-ms", type=float, default=100)
    ap.add_argument("--f32", type=int, default=62,
                    help="f32 values per machine (holding registers 0..); more than 62 "
                         "take one read per 62")
    ap.add_argument("--model", required=True, help="a model version folder (manifest.toml)")
    ap.add_argument("--influx-url", required=True)
    ap.add_argument("--org", default="plant")
    ap.add_argument("--bucket", default="bench")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--flush-ms", type=int, default=1000)
    ap.add_argument("--style", choices=["tick", "per-machine"], default="tick")
    ap.add_argument("--opcua-port", type=int, help="also serve the values over OPC UA")
    ap.add_argument("--read-only", action="store_true",
                    help="read and decode each tick's scans, nothing more (tick style)")
    ap.add_argument("--stats", help="file the counters are written to on SIGUSR1 and at exit")
    return ap.parse_args()


class OpcUa:
    """One variable per tag and per prediction, under Objects/<machine>."""

    def __init__(self, port):
        from asyncua import Server
        self.server = Server()
        self.port = port
        self.nodes = {}

    async def start(self, machines, tags, outputs):
        await self.server.init()
        self.server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/")
        ns = await self.server.register_namespace("urn:reference-gateway")
        objects = self.server.nodes.objects
        for machine in machines:
            folder = await objects.add_object(ns, machine)
            for name in tags + outputs:
                self.nodes[machine, name] = await folder.add_variable(ns, name, 0.0)
        await self.server.start()

    async def publish(self, machine, names, values):
        for name, value in zip(names, values):
            await self.nodes[machine, name].write_value(float(value))

    async def stop(self):
        await self.server.stop()


async def main():
    args = parse_args()
    devices = [d.rsplit(":", 1) for d in args.devices.split(",")]
    names = (args.names.split(",") if args.names
             else [f"machine-{i:03d}" for i in range(len(devices))])
    tags = [f"v{k:02d}" for k in range(args.f32)]
    reads = [(2 * k, 2 * min(READ_F32, args.f32 - k)) for k in range(0, args.f32, READ_F32)]

    with open(os.path.join(args.model, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)
    model_name, version = manifest["name"], manifest["version"]
    inputs = [tags.index(i["name"]) for i in manifest["inputs"]]
    outputs = [o["name"] for o in manifest["outputs"]]
    # One thread, as IronBridge's model runs (intra_op_threads = 1): the
    # other core is the Modbus and HTTP side's.
    torch.set_num_threads(1)
    model = torch.jit.load(os.path.join(args.model, manifest["file"])).eval()

    influx = InfluxDBClient(url=args.influx_url, token="", org=args.org)
    write_api = influx.write_api(write_options=WriteOptions(
        batch_size=args.batch_size, flush_interval=args.flush_ms))

    clients = []
    for host, port in devices:
        client = AsyncModbusTcpClient(host, port=int(port))
        await client.connect()
        clients.append(client)

    opcua = None
    if args.opcua_port:
        opcua = OpcUa(args.opcua_port)
        await opcua.start(names, tags, outputs)

    stats = {"dumps": 0, "ticks": 0, "scans": 0, "predictions": 0, "read_errors": 0}

    def dump_stats():
        stats["dumps"] += 1  # tells the reader this dump is a new one
        if args.stats:
            tmp = args.stats + ".tmp"
            with open(tmp, "w") as f:
                json.dump(stats, f)
            os.replace(tmp, args.stats)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump_stats)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dump_stats()  # the first one says: connected, about to poll

    async def scan(client):
        values = []
        for start, count in reads:
            try:
                reply = await client.read_holding_registers(start, count=count, device_id=1)
            except Exception:  # a dead link: count it, try again next tick
                return None
            if reply.isError():
                return None
            part = client.convert_from_registers(
                reply.registers, data_type=client.DATATYPE.FLOAT32)
            # pymodbus gives a bare float for one value
            values.extend(part if isinstance(part, list) else [part])
        return time.time_ns(), values

    async def handle(results):
        """Model and points for one batch of scans: [(name, result or None)]."""
        points, rows, scanned = [], [], []
        for name, result in results:
            if result is None:
                stats["read_errors"] += 1
                continue
            ts, values = result
            point = Point("process").tag("machine", name).time(ts, WritePrecision.NS)
            for tag, value in zip(tags, values):
                point.field(tag, value)
            points.append(point)
            rows.append([values[i] for i in inputs])
            scanned.append((name, ts, values))
        if rows:
            with torch.no_grad():
                predicted = model(torch.tensor(rows, dtype=torch.float32)).tolist()
            for (name, ts, values), outs in zip(scanned, predicted):
                point = (Point("prediction").tag("machine", name).tag("model", model_name)
                         .tag("version", version).time(ts, WritePrecision.NS))
                for output, value in zip(outputs, outs):
                    point.field(output, value)
                points.append(point)
                if opcua:
                    await opcua.publish(name, tags + outputs, list(values) + outs)
            write_api.write(bucket=args.bucket, record=points)
        stats["scans"] += len(rows)
        stats["predictions"] += len(rows)

    async def every_poll(step):
        """Runs step() every --poll-ms; a late one starts the next at once."""
        period = args.poll_ms / 1000
        next_tick = time.monotonic()
        while not stop.is_set():
            await step()
            stats["ticks"] += 1
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
            else:
                next_tick = time.monotonic()
                await asyncio.sleep(0)  # let the other tasks and signals run

    if args.read_only:
        async def tick():
            results = await asyncio.gather(*(scan(c) for c in clients))
            for result in results:
                if result is None:
                    stats["read_errors"] += 1
                else:
                    stats["scans"] += 1
        await every_poll(tick)
    elif args.style == "tick":
        async def tick():
            results = await asyncio.gather(*(scan(c) for c in clients))
            await handle(list(zip(names, results)))
        await every_poll(tick)
    else:
        def machine(name, client):
            async def poll():
                await handle([(name, await scan(client))])
            return every_poll(poll)
        await asyncio.gather(*(machine(n, c) for n, c in zip(names, clients)))

    dump_stats()
    write_api.close()
    influx.close()
    for client in clients:
        client.close()
    if opcua:
        await opcua.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
