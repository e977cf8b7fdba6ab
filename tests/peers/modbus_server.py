"""A Modbus TCP machine for IronBridge's tests, served by pymodbus 3.11.

Serves known values of every type in every byte order (holding and input
registers) plus coils and discrete inputs, and writes the tag layout with the
expected values as JSON, so the Rust tests compare against what this
independent peer computed, not against constants of their own.

The register words come from Python's `struct`, by the definition of each
byte order rather than by the decoder's algorithm: the byte stream of the value
is big-endian (A first) or little-endian, and the words are cut from that
stream high byte first or low byte first:

    ABCD: big-endian stream,    high byte first
    DCBA: little-endian stream, high byte first
    BADC: big-endian stream,    low byte first
    CDAB: little-endian stream, low byte first

Usage: modbus_server.py PORT LAYOUT_JSON   (PORT 0: any free port, written to the layout)
"""

import asyncio
import json
import os
import struct
import sys
from fractions import Fraction

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer

HOLDING_SIZE = 1000
INPUT_SIZE = 1000
BITS_SIZE = 100

# struct format and a value that uses every byte (sign bits, > 2**53, ...).
VALUES = {
    "u16": ("H", 54321),
    "i16": ("h", -12345),
    "u32": ("I", 4_000_000_000),
    "i32": ("i", -123456789),
    "u64": ("Q", 0xF102030405060708),
    "i64": ("q", -9876543210123456),
    "f32": ("f", 123.456),
    "f64": ("d", -1234.5678),
}
ORDERS = {
    "ABCD": (">", ">"),
    "DCBA": ("<", ">"),
    "BADC": (">", "<"),
    "CDAB": ("<", "<"),
}


def words_for(fmt, value, order):
    stream, word = ORDERS[order]
    raw = struct.pack(stream + fmt, value)
    return list(struct.unpack(f"{word}{len(raw) // 2}H", raw))


def expected_for(type_name, fmt, value, scale=1.0, offset=0.0):
    # What the device holds after the round trip through its own width
    # (123.456 becomes the nearest f32).
    stored = struct.unpack(">" + fmt, struct.pack(">" + fmt, value))[0]
    if scale != 1.0 or offset != 0.0:
        if isinstance(stored, int):
            # The gateway's contract (README, Modbus tags): an integer at a
            # scale and offset written with up to 9 decimals is the f64
            # nearest to the exact result, the decimals read as written
            # (-40 at offset 273.15 is 233.15, not -40 + 273.15 =
            # 233.14999999999998). Worked out here in exact fractions, which
            # Python rounds to float once.
            exact = Fraction(stored) * Fraction(repr(scale)) + Fraction(repr(offset))
            return float_expected(float(exact))
        return float_expected(stored * scale + offset)
    if type_name.startswith("f"):
        return float_expected(stored)
    if type_name.startswith("u"):
        return {"uint": stored}
    return {"int": stored}


def float_expected(x):
    # The bits make the comparison exact whatever the JSON float parser does.
    return {"float": {"bits": struct.unpack(">Q", struct.pack(">d", x))[0], "value": x}}


def build():
    holding = [0] * HOLDING_SIZE
    inputs = [0] * INPUT_SIZE
    coils = [False] * BITS_SIZE
    discretes = [False] * BITS_SIZE
    tags = []

    def put(table, register, name, type_name, order, address, scale=1.0, offset=0.0, value=None):
        fmt, typical = VALUES[type_name]
        value = typical if value is None else value
        words = words_for(fmt, value, order)
        table[address : address + len(words)] = words
        tag = {
            "name": name,
            "register": register,
            "address": address,
            "type": type_name,
            "byte_order": order,
            "scale": scale,
            "offset": offset,
        }
        tags.append({"tag": tag, "expected": expected_for(type_name, fmt, value, scale, offset)})
        return address + len(words)

    # Holding: every type in every order; one free register between types,
    # so a poll needs several reads.
    address = 0
    for type_name in VALUES:
        for order in ORDERS:
            address = put(holding, "holding", f"{type_name}_{order.lower()}", type_name, order, address)
        address += 1

    # Input registers, elsewhere, including scaled values.
    address = 100
    for type_name, order in [("u16", "ABCD"), ("i32", "CDAB"), ("f64", "DCBA"), ("u64", "BADC")]:
        address = put(inputs, "input", f"in_{type_name}_{order.lower()}", type_name, order, address)
    put(inputs, "input", "in_i16_scaled", "i16", "ABCD", 120, scale=0.1, offset=-5.0)
    put(inputs, "input", "in_u32_scaled", "u32", "CDAB", 130, scale=0.001)
    # Where `raw * scale + offset` in floating point misses the decimal.
    put(inputs, "input", "in_i16_kelvin", "i16", "ABCD", 140, offset=273.15, value=-40)
    put(inputs, "input", "in_u16_tenths", "u16", "ABCD", 142, scale=0.1, value=3)

    # Bits: a pattern with a gap, in both bit tables.
    for register, table, start in [("coil", coils, 0), ("discrete_input", discretes, 10)]:
        for i, bit in enumerate([True, False, True, True, False, False, True, False, True]):
            addr = start + i + (5 if i >= 6 else 0)
            table[addr] = bit
            tags.append(
                {
                    "tag": {"name": f"{register}_{addr}", "register": register, "address": addr, "type": "bool"},
                    "expected": {"bool": bit},
                }
            )

    # pymodbus' device context adds 1 to the protocol address before it asks
    # the block, so blocks start at 1 to put protocol address 0 at index 0.
    device = ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, holding),
        ir=ModbusSequentialDataBlock(1, inputs),
        co=ModbusSequentialDataBlock(1, coils),
        di=ModbusSequentialDataBlock(1, discretes),
    )
    layout = {"holding_size": HOLDING_SIZE, "tags": tags}
    return ModbusServerContext(devices=device, single=True), layout


async def main():
    port = int(sys.argv[1])
    layout_path = sys.argv[2]
    context, layout = build()
    server = ModbusTcpServer(context, address=("127.0.0.1", port))
    # Listen first, then write the layout with the port actually bound: the
    # test waits for the file, so it never mistakes another process on a
    # guessed port for this server (PORT 0 lets the kernel choose).
    await server.serve_forever(background=True)
    layout["port"] = server.transport.sockets[0].getsockname()[1]
    tmp = layout_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(layout, f, indent=1)
    os.replace(tmp, layout_path)
    print(f"modbus_server: serving {len(layout['tags'])} tags on 127.0.0.1:{layout['port']}", flush=True)
    await server.serving


if __name__ == "__main__":
    asyncio.run(main())
