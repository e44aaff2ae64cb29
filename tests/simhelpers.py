"""Helpers for tests that run the simulator: an in-process server, the real `ketapump sim` process."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

from cli_contract import assert_documented
from ketapump import _core
from ketapump.clock import ScaledClock
from ketapump.qa.pytest_plugin import running_sim
from ketapump.sim.server import SimServer
from ketapump.wire.regmap import load_register_map

REGMAP = load_register_map()


@contextlib.asynccontextmanager
async def serving(
    pump: _core.SimPump | None = None, time_scale: float = 1.0, pace: bool = True, **endpoints: Any
) -> AsyncIterator[SimServer]:
    """An in-process simulator serving ``pump`` (a fresh 50 mL pump by default)."""
    server = SimServer(pump or _core.SimPump("bd-plastipak-50", seed=1), ScaledClock(time_scale), pace=pace)
    await server.start(**endpoints)
    try:
        yield server
    finally:
        await server.stop()


async def tcp_client(server: SimServer, timeout: float = 1.0) -> AsyncModbusTcpClient:
    host, port = str(server.endpoints["modbus_tcp"]).rsplit(":", 1)
    client = AsyncModbusTcpClient(host, port=int(port), timeout=timeout, retries=0)
    assert await client.connect()
    return client


async def rtu_client(server: SimServer, timeout: float = 1.0) -> AsyncModbusSerialClient:
    client = AsyncModbusSerialClient(
        str(server.endpoints["modbus_rtu_pty"]),
        framer=FramerType.RTU,
        baudrate=server.baud,
        timeout=timeout,
        retries=0,
    )
    assert await client.connect()
    return client


Client = AsyncModbusTcpClient | AsyncModbusSerialClient


async def read(client: Client, name: str) -> float:
    """Reads a register by name and decodes it."""
    r = REGMAP[name]
    rr = await client.read_holding_registers(r.address, count=r.words, device_id=1)
    assert not rr.isError(), rr
    if r.type == "f32":
        return float(client.convert_from_registers(rr.registers, client.DATATYPE.FLOAT32))
    if r.type == "i32":
        return float(client.convert_from_registers(rr.registers, client.DATATYPE.INT32))
    return float(rr.registers[0])


async def write(client: Client, name: str, value: float) -> Any:
    """Writes a register by name; returns the pymodbus response (check ``isError()``)."""
    r = REGMAP[name]
    if r.type == "f32":
        words = client.convert_to_registers(value, client.DATATYPE.FLOAT32)
        return await client.write_registers(r.address, words, device_id=1)
    if r.type == "i32":
        words = client.convert_to_registers(int(value), client.DATATYPE.INT32)
        return await client.write_registers(r.address, words, device_id=1)
    return await client.write_register(r.address, int(value), device_id=1)


async def start_infusing(client: Client, rate_ml_h: float) -> None:
    for name, value in (("alarm_ack", 1), ("rate_ml_h", rate_ml_h), ("heartbeat", 1), ("run_mode", 1)):
        rr = await write(client, name, value)
        assert not rr.isError(), (name, rr)


async def keep_alive(client: Client, seconds: float, period: float = 0.1) -> None:
    """Refreshes the heartbeat for ``seconds`` of real time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    beat = 2
    while loop.time() < end:
        await write(client, "heartbeat", beat % 65536)
        beat += 1
        await asyncio.sleep(period)


#: Runs the real ``ketapump sim`` and yields it with its endpoint line; always terminated.
sim_process = running_sim


def ketapump(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs the real ``ketapump`` command line in a subprocess, as a user would; its exit code must be
    one the README documents for the command (:mod:`cli_contract`)."""
    done = subprocess.run(
        [sys.executable, "-m", "ketapump", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert_documented(args, done.returncode, done.stderr)
    return done


def new_course_db(path: Path) -> Path:
    """A new, empty course database at ``path``, made as a user makes one (``ketapump course init``)."""
    done = ketapump("course", "init", str(path))
    assert done.returncode == 0, done.stderr
    return path
