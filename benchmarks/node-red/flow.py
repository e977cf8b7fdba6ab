#!/usr/bin/env python3
"""The Node-RED contestant of the performance benchmark: the flow a plant's
engineer draws for the job without the model, made for the benchmark's
machines.

Per machine, a `modbus-read` node (node-red-contrib-modbus, its own TCP
client and poll timer) reads the holding registers every --poll-ms, one
124-register read per 62 f32 (as IronBridge and the reference gateway
do); every read's answer goes to one `function` node that decodes the f32
(big-endian words, high word first) into the fields `v00`.. and the
machine's name as tag, stamped with the time the answer came, and on to one
`influxdb out` node (node-red-contrib-influxdb, InfluxDB 2.0 API) that
writes measurement `process`, precision ms, to the store. That node sends
every message as its own write (it flushes its write API per message): the
straightforward flow has no batching node before it.

With --batch N the function node's points go through a `join` node
instead (N messages, or what came in a second) to an `influxdb batch`
node: one write per N scans, what an engineer who knows the store adds.

What it does not do, beside the other contestants: no model, no
predictions, no OPC UA server, no spool.

Usage: flow.py --devices H:P,... --names A,... --poll-ms 100 --f32 62
       --influx-url URL --bucket B --out DIR [--batch N]
writes DIR/flows.json, DIR/flows_cred.json and DIR/settings.js; then
`node benchmarks/node-red/node_modules/node-red/red.js --settings
DIR/settings.js` runs it (benchmarks/setup-node-red.sh installs Node-RED).
"""
import argparse
import json
import os

# f32 a read: 124 registers, what one Modbus request carries comfortably.
READ_F32 = 62

FIELDS = """\
// The answer's registers as f32, high word first, from the answer's bytes.
// The first tag's number from the read's register address.
const buf = msg.responseBuffer.buffer;
const first = msg.input.payload.address / 2;
const fields = {};
for (let k = 0; k < buf.length / 4; k++) {
    fields["v" + String(first + k).padStart(2, "0")] = buf.readFloatBE(4 * k);
}
"""

# For `influxdb out`: [fields, tags], the time as the field `time`.
DECODE = FIELDS + """\
fields.time = Date.now();
msg.payload = [fields, { machine: msg.topic }];
return msg;
"""

# For `influxdb batch`: one point of the array the join node makes.
DECODE_POINT = FIELDS + """\
msg.payload = {
    measurement: "process", fields: fields, tags: { machine: msg.topic }, timestamp: Date.now(),
};
return msg;
"""


def flow(devices, names, poll_ms, f32, influx_url, bucket, batch=None):
    """The flow's nodes (Node-RED's flows.json) and their credentials;
    `batch`: scans a write (None: one, through `influxdb out`)."""
    tab = "bench-tab"
    nodes = [{"id": tab, "type": "tab", "label": "IronBridge benchmark", "disabled": False}]
    influx = "bench-influx"
    nodes.append({
        "id": influx, "type": "influxdb", "hostname": "127.0.0.1", "port": "8086",
        "protocol": "http", "database": "", "name": "store", "usetls": False,
        "tls": "", "influxdbVersion": "2.0", "url": influx_url, "timeout": "10",
        "rejectUnauthorized": False,
    })
    decode, join, write = "bench-decode", "bench-join", "bench-write"
    nodes.append({"id": decode, "type": "function", "z": tab, "name": "f32 fields",
                  "func": DECODE_POINT if batch else DECODE, "outputs": 1, "timeout": 0,
                  "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 400,
                  "y": 100, "wires": [[join if batch else write]]})
    if batch:
        nodes.append({"id": join, "type": "join", "z": tab, "name": f"{batch} scans",
                      "mode": "custom", "build": "array", "property": "payload",
                      "propertyType": "msg", "key": "topic", "joiner": "\\n",
                      "joinerType": "str", "useparts": False, "accumulate": False,
                      "timeout": "1", "count": str(batch), "reduce": False,
                      "reduceRight": False, "reduceExp": "", "reduceInit": "",
                      "reduceInitType": "", "reduceFixup": "", "x": 500, "y": 100,
                      "wires": [[write]]})
        nodes.append({"id": write, "type": "influxdb batch", "z": tab, "influxdb": influx,
                      "name": "process", "precision": "", "retentionPolicy": "",
                      "database": "", "precisionV18FluxV20": "ms",
                      "retentionPolicyV18Flux": "", "org": "", "bucket": bucket,
                      "x": 650, "y": 100, "wires": []})
    else:
        nodes.append({"id": write, "type": "influxdb out", "z": tab, "influxdb": influx,
                      "name": "process", "measurement": "process", "precision": "",
                      "retentionPolicy": "", "database": "", "precisionV18FluxV20": "ms",
                      "retentionPolicyV18Flux": "", "org": "", "bucket": bucket,
                      "x": 600, "y": 100, "wires": []})
    for i, (device, name) in enumerate(zip(devices, names)):
        host, port = device.rsplit(":", 1)
        client = f"bench-client-{i}"
        nodes.append({
            "id": client, "type": "modbus-client", "name": name, "clienttype": "tcp",
            "bufferCommands": True, "stateLogEnabled": False, "queueLogEnabled": False,
            "failureLogEnabled": True, "tcpHost": host, "tcpPort": port,
            "tcpType": "DEFAULT", "serialPort": "/dev/ttyUSB", "serialType": "RTU-BUFFERD",
            "serialBaudrate": "9600", "serialDatabits": "8", "serialStopbits": "1",
            "serialParity": "none", "serialConnectionDelay": "100",
            "serialAsciiResponseStartDelimiter": "0x3A", "unit_id": "1",
            "commandDelay": "1", "clientTimeout": "1000", "reconnectOnTimeout": True,
            "reconnectTimeout": "2000", "parallelUnitIdsAllowed": True,
        })
        for first in range(0, f32, READ_F32):
            count = min(READ_F32, f32 - first)
            read = f"bench-read-{i}-{first}"
            nodes.append({
                "id": read, "type": "modbus-read", "z": tab, "name": f"{name} v{first:02d}",
                "topic": name, "showStatusActivities": False, "logIOActivities": False,
                "showErrors": False, "unitid": "1", "dataType": "HoldingRegister",
                "adr": str(2 * first), "quantity": str(2 * count), "rate": str(poll_ms),
                "rateUnit": "ms", "delayOnStart": False, "startDelayTime": "",
                "server": client, "useIOFile": False, "ioFile": "", "useIOForPayload": False,
                "emptyMsgOnFail": False, "x": 150, "y": 100 + 40 * i, "wires": [[decode], []],
            })
    # victoria-metrics takes any token; InfluxDB would want a real one.
    credentials = {influx: {"token": "benchmark"}}
    return nodes, credentials


def settings(out, port):
    """A settings file: the editor on loopback, warnings only, flows in `out`."""
    return f"""module.exports = {{
    uiHost: "127.0.0.1",
    uiPort: {port},
    userDir: {json.dumps(out)},
    flowFile: "flows.json",
    credentialSecret: false,
    logging: {{ console: {{ level: "warn", metrics: false, audit: false }} }},
    editorTheme: {{ projects: {{ enabled: false }} }},
    functionGlobalContext: {{}},
}};
"""


def write(out, devices, names, poll_ms, f32, influx_url, bucket, port, batch=None):
    os.makedirs(out, exist_ok=True)
    nodes, credentials = flow(devices, names, poll_ms, f32, influx_url, bucket, batch)
    with open(os.path.join(out, "flows.json"), "w") as f:
        json.dump(nodes, f, indent=1)
    with open(os.path.join(out, "flows_cred.json"), "w") as f:
        json.dump(credentials, f)
    path = os.path.join(out, "settings.js")
    with open(path, "w") as f:
        f.write(settings(out, port))
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", required=True, help="comma-separated host:port")
    ap.add_argument("--names", required=True, help="comma-separated machine names")
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--f32", type=int, default=62)
    ap.add_argument("--influx-url", required=True)
    ap.add_argument("--bucket", default="bench")
    ap.add_argument("--port", type=int, default=1880, help="the editor's port")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, help="scans a write, through join and influxdb batch")
    args = ap.parse_args()
    print(write(args.out, args.devices.split(","), args.names.split(","), args.poll_ms,
                args.f32, args.influx_url, args.bucket, args.port, args.batch))


if __name__ == "__main__":
    main()
