"""Several Modbus units on one line for IronBridge's tests, served by pymodbus 3.11.

One server answers for several unit ids: on a serial port with RTU framing
(the far end of a socat pty pair), over TCP with RTU framing (as serial
device servers speak it), or over plain Modbus TCP. Each unit holds values
that depend on its id, so an answer delivered to the wrong unit shows.

Each unit's behaviour is read from a control file before every request, so a
test can change it while polling goes on:

    (no file)  answer normally
    silent     never answer (as a unit that is switched off)
    gateway    answer every request with exception 0B (gateway target failed)

Beside the normal tags, every unit serves two blocks for exception tests:
input register BUSY_ADDRESS answers 06 (busy) to two requests out of three,
and holding registers from HOLDING_SIZE on do not exist (exception 02).

The layout with the values this peer computed (by `struct`, see
modbus_server.py) is written as JSON once the server listens.

Usage: modbus_line_server.py LAYOUT_JSON CONTROL_DIR UNITS MODE [ARG]
  UNITS: comma-separated unit ids, e.g. 1,2,3
  MODE serial DEVICE BAUD PARITY   (PARITY N, E or O)
  MODE tcp-rtu                     (port chosen by the kernel, in the layout)
  MODE tcp                         (same, plain Modbus TCP framing)
"""

import asyncio
import json
import os
import sys

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from modbus_server import expected_for, words_for

HOLDING_SIZE = 100
INPUT_SIZE = 200
BITS_SIZE = 16
BUSY_ADDRESS = 150
READ_INPUT_REGISTERS = 4


class ScriptedUnit(ModbusDeviceContext):
    """A unit whose behaviour a control file sets, request by request."""

    def __init__(self, unit, control_dir, **blocks):
        super().__init__(**blocks)
        self.unit = unit
        self.control_path = os.path.join(control_dir, f"unit-{unit}")
        self.busy_asks = 0
        self.requests = 0

    def mode(self):
        try:
            with open(self.control_path, encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def getValues(self, func_code, address, count=1):
        self.requests += 1
        mode = self.mode()
        if mode == "silent":
            # The server is started with ignore_missing_devices: it sends
            # nothing, exactly as for a unit id nobody has.
            raise NoSuchIdException(f"unit {self.unit} is silent")
        if mode == "gateway":
            return ExcCodes.GATEWAY_NO_RESPONSE
        if func_code == READ_INPUT_REGISTERS and address == BUSY_ADDRESS:
            self.busy_asks += 1
            if self.busy_asks % 3 != 0:
                return ExcCodes.DEVICE_BUSY
        return super().getValues(func_code, address, count)


def unit_layout(unit):
    """Registers and tags of one unit; values depend on the unit id."""
    holding = [0] * HOLDING_SIZE
    inputs = [0] * INPUT_SIZE
    coils = [False] * BITS_SIZE
    tags = []

    def put(table, register, name, type_name, fmt, value, order, address, scale=1.0):
        words = words_for(fmt, value, order)
        table[address : address + len(words)] = words
        tag = {
            "name": name,
            "register": register,
            "address": address,
            "type": type_name,
            "byte_order": order,
            "scale": scale,
        }
        return {"tag": tag, "expected": expected_for(type_name, fmt, value, scale)}

    tags.append(put(holding, "holding", "count", "u16", "H", 1000 * unit + 7, "ABCD", 0))
    tags.append(put(holding, "holding", "delta", "i32", "i", -100_000 * unit - 3, "CDAB", 1))
    tags.append(put(holding, "holding", "level", "f32", "f", 12.5 * unit + 0.3, "ABCD", 4))
    tags.append(put(inputs, "input", "energy", "f64", "d", -1234.5678 * unit, "DCBA", 10))
    tags.append(put(inputs, "input", "temp", "i16", "h", -10 * unit, "ABCD", 20, scale=0.1))
    coils[0] = unit % 2 == 1
    coils[1] = True
    for addr in (0, 1):
        tags.append(
            {
                "tag": {"name": f"coil_{addr}", "register": "coil", "address": addr, "type": "bool"},
                "expected": {"bool": coils[addr]},
            }
        )
    busy = put(inputs, "input", "busy_value", "u16", "H", 4242 + unit, "ABCD", BUSY_ADDRESS)
    device = dict(
        # pymodbus adds 1 to the protocol address: blocks start at 1.
        hr=ModbusSequentialDataBlock(1, holding),
        ir=ModbusSequentialDataBlock(1, inputs),
        co=ModbusSequentialDataBlock(1, coils),
        di=ModbusSequentialDataBlock(1, [False] * BITS_SIZE),
    )
    return device, {"unit": unit, "tags": tags, "busy_tag": busy}


async def main():
    layout_path, control_dir, units_arg, mode = sys.argv[1:5]
    units = [int(u) for u in units_arg.split(",")]
    devices = {}
    layout = {"holding_size": HOLDING_SIZE, "units": []}
    for unit in units:
        blocks, unit_info = unit_layout(unit)
        devices[unit] = ScriptedUnit(unit, control_dir, **blocks)
        layout["units"].append(unit_info)
    context = ModbusServerContext(devices=devices, single=False)

    if mode == "serial":
        device, baud, parity = sys.argv[5], int(sys.argv[6]), sys.argv[7]
        server = ModbusSerialServer(
            context,
            framer=FramerType.RTU,
            port=device,
            baudrate=baud,
            parity=parity,
            bytesize=8,
            stopbits=1,
            ignore_missing_devices=True,
        )
    elif mode in ("tcp-rtu", "tcp"):
        server = ModbusTcpServer(
            context,
            framer=FramerType.RTU if mode == "tcp-rtu" else FramerType.SOCKET,
            address=("127.0.0.1", 0),
            ignore_missing_devices=True,
        )
    else:
        raise SystemExit(f"unknown mode {mode}")
    await server.serve_forever(background=True)
    if mode != "serial":
        layout["port"] = server.transport.sockets[0].getsockname()[1]
    tmp = layout_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(layout, f, indent=1)
    os.replace(tmp, layout_path)
    print(f"modbus_line_server: units {units} ({mode})", flush=True)
    await server.serving


if __name__ == "__main__":
    asyncio.run(main())
