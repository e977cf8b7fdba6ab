"""Independent Modbus TCP client (pymodbus 3.11) for IronBridge's Modbus server.

Does what the arguments ask, in order, and prints one JSON object on stdout:

  {"requests": [{"request": "read_input:64:64", "registers": [...]},
                {"request": "write_register:0:1", "exception": 1}, ...],
   "map": {"directory": {...}, "blocks": [{...}, ...]}}

--request KIND:ADDRESS:ARG, repeatable, with KIND one of
  read_input, read_holding, read_coils, read_discrete   ARG = count
  write_register                                        ARG = value
  write_registers                                       ARG = values, '/'-separated
  raw_read_input   function 04 sent as raw bytes over its own socket, for
                   counts pymodbus refuses to send (it checks 1..125 itself)
An answer is {"registers": [...]} / {"bits": [...]} / {"written": true}, or
{"exception": CODE} for a Modbus exception response.

--map reads the directory at address 0 and then every block, one read per
block, and decodes them with `struct` from docs/modbus-map.md (not from the
gateway's code): big-endian words, high word first; the version is ASCII,
two characters per register, NUL padded. An f32 is given as
{"bits": int, "value": float or null, "nan": bool} since JSON has no NaN.
"""

import argparse
import json
import math
import socket
import struct
import sys

from pymodbus.client import ModbusTcpClient
from pymodbus.pdu import ExceptionResponse

DIRECTORY_WORDS = 10
BLOCK_WORDS = 64


def answer(response, field):
    if isinstance(response, ExceptionResponse) or response.isError():
        return {"exception": getattr(response, "exception_code", None)}
    if field == "registers":
        return {"registers": list(response.registers)}
    if field == "bits":
        return {"bits": [bool(b) for b in response.bits]}
    return {"written": True}


def raw_read_input(host, port, unit, address, count):
    """Function 04 as bytes: MBAP header (transaction 1, protocol 0, length,
    unit) and PDU (function, address, count)."""
    pdu = struct.pack(">BHH", 4, address, count)
    frame = struct.pack(">HHHB", 1, 0, len(pdu) + 1, unit) + pdu
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(frame)
        header = recv_exactly(s, 7)
        _, _, length, _ = struct.unpack(">HHHB", header)
        body = recv_exactly(s, length - 1)
    function = body[0]
    if function & 0x80:
        return {"exception": body[1]}
    n = body[1] // 2
    return {"registers": list(struct.unpack(f">{n}H", body[2 : 2 + 2 * n]))}


def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-answer")
        data += chunk
    return data


def f32(raw, offset):
    (bits,) = struct.unpack_from(">I", raw, offset)
    (value,) = struct.unpack_from(">f", raw, offset)
    nan = math.isnan(value)
    return {"bits": bits, "value": None if nan else value, "nan": nan}


def read_words(client, unit, address, count):
    response = client.read_input_registers(address, count=count, device_id=unit)
    if isinstance(response, ExceptionResponse) or response.isError():
        raise RuntimeError(f"read {address}+{count}: {response}")
    return struct.pack(f">{count}H", *response.registers)


def read_map(client, unit):
    raw = read_words(client, unit, 0, DIRECTORY_WORDS)
    magic, layout, block_count, block_size, first_block, max_outputs = struct.unpack_from(">6H", raw, 0)
    (clock_ms,) = struct.unpack_from(">Q", raw, 12)
    directory = {
        "magic": magic,
        "layout_version": layout,
        "block_count": block_count,
        "block_size": block_size,
        "first_block_address": first_block,
        "max_outputs": max_outputs,
        "gateway_clock_ms": clock_ms,
    }
    blocks = []
    for i in range(block_count):
        address = first_block + i * block_size
        raw = read_words(client, unit, address, BLOCK_WORDS)
        (sequence,) = struct.unpack_from(">I", raw, 0)
        status, output_count = struct.unpack_from(">HH", raw, 4)
        (acquired_ms,) = struct.unpack_from(">Q", raw, 8)
        version = raw[16:48].rstrip(b"\0").decode("ascii")
        machine_index, model_index = struct.unpack_from(">HH", raw, 48)
        (outage_ms,) = struct.unpack_from(">Q", raw, 56)
        blocks.append(
            {
                "address": address,
                "sequence": sequence,
                "status": status,
                "output_count": output_count,
                "inputs_acquired_ms": acquired_ms,
                "version": version,
                "machine_index": machine_index,
                "model_index": model_index,
                "outage_reported_ms": outage_ms,
                "outputs": [f32(raw, 64 + 4 * k) for k in range(output_count)],
                "unused_outputs": [f32(raw, 64 + 4 * k) for k in range(output_count, max_outputs)],
            }
        )
    return {"directory": directory, "blocks": blocks}


def run(args):
    client = ModbusTcpClient(args.host, port=args.port, timeout=10, retries=0)
    if not client.connect():
        return {"connected": False}
    result = {"connected": True, "requests": []}
    try:
        for spec in args.request:
            kind, address, arg = spec.split(":")
            address = int(address)
            unit = args.unit
            if kind == "read_input":
                out = answer(client.read_input_registers(address, count=int(arg), device_id=unit), "registers")
            elif kind == "read_holding":
                out = answer(client.read_holding_registers(address, count=int(arg), device_id=unit), "registers")
            elif kind == "read_coils":
                out = answer(client.read_coils(address, count=int(arg), device_id=unit), "bits")
            elif kind == "read_discrete":
                out = answer(client.read_discrete_inputs(address, count=int(arg), device_id=unit), "bits")
            elif kind == "write_register":
                out = answer(client.write_register(address, int(arg), device_id=unit), "written")
            elif kind == "write_registers":
                values = [int(v) for v in arg.split("/")]
                out = answer(client.write_registers(address, values, device_id=unit), "written")
            elif kind == "raw_read_input":
                out = raw_read_input(args.host, args.port, unit, address, int(arg))
            else:
                raise SystemExit(f"unknown request kind {kind!r}")
            out["request"] = spec
            result["requests"].append(out)
        if args.map:
            result["map"] = read_map(client, args.unit)
    finally:
        client.close()
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--unit", type=int, default=1)
    p.add_argument("--request", action="append", default=[])
    p.add_argument("--map", action="store_true")
    args = p.parse_args()
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
