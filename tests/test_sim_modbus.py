"""The simulator over Modbus TCP and Modbus RTU on a PTY, driven by the real pymodbus client."""

from __future__ import annotations

import asyncio
import math
import os
import time
import tty

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException

from ketapump import _core
from simhelpers import REGMAP, keep_alive, read, rtu_client, serving, start_infusing, tcp_client, write
from wirehelpers import crc16

CLIENTS = {"tcp": tcp_client, "rtu": rtu_client}


@pytest.mark.parametrize("transport", CLIENTS)
def test_identity_and_telemetry(transport: str) -> None:
    async def body() -> None:
        async with serving() as server:
            client = await CLIENTS[transport](server)
            assert await read(client, "vendor_id") == 0x4B50
            assert await read(client, "map_version") == 1
            assert await read(client, "pump_max_rate_ml_h") == 1200.0
            assert await read(client, "alarm_bits") == 1  # power-up reset alarm
            assert await read(client, "syringe_present") == 1
            assert math.isclose(await read(client, "syringe_diameter_mm"), 26.59, rel_tol=1e-6)
            client.close()

    asyncio.run(body())


@pytest.mark.parametrize("transport", CLIENTS)
def test_refusals_use_the_documented_exceptions(transport: str) -> None:
    async def body() -> None:
        async with serving() as server:
            client = await CLIENTS[transport](server)
            cases = [
                ("vendor_id", 7, ExcCodes.ILLEGAL_ADDRESS),  # read-only
                ("line_pressure_mmhg", 1.0, ExcCodes.ILLEGAL_ADDRESS),
                ("rate_ml_h", 5000.0, ExcCodes.ILLEGAL_VALUE),  # out of range
                ("run_mode", 7, ExcCodes.ILLEGAL_VALUE),
                ("run_mode", 1, ExcCodes.DEVICE_FAILURE),  # start with the reset alarm latched
            ]
            for name, value, code in cases:
                rr = await write(client, name, value)
                assert rr.isError(), name
                assert rr.exception_code == code, (name, rr)
            rr = await client.read_holding_registers(8, count=1, device_id=1)  # unmapped
            assert rr.isError() and rr.exception_code == ExcCodes.ILLEGAL_ADDRESS
            # Half of a float.
            rr = await client.write_register(REGMAP["rate_ml_h"].address, 0x4252, device_id=1)
            assert rr.isError() and rr.exception_code == ExcCodes.ILLEGAL_ADDRESS
            assert await read(client, "rate_ml_h") == 0.0
            client.close()

    asyncio.run(body())


@pytest.mark.parametrize("transport", CLIENTS)
def test_infuses_at_the_commanded_rate(transport: str) -> None:
    async def body() -> None:
        pump = _core.SimPump("bd-plastipak-50", seed=1, slack_taken_up=True)
        async with serving(pump, time_scale=60.0) as server:
            client = await CLIENTS[transport](server)
            # At 60× the default 500 ms watchdog is 8 ms of real time: widen it to 10 s (167 ms real).
            assert not (await write(client, "watchdog_ms", 10_000)).isError()
            await start_infusing(client, 60.0)
            await keep_alive(client, 4.0, period=0.02)  # 4 s at 60× = 240 pump seconds
            first = await read(client, "infused_ml")
            t0 = pump.t_s
            await keep_alive(client, 3.0, period=0.02)
            rate = (await read(client, "infused_ml") - first) / (pump.t_s - t0) * 3600
            assert await read(client, "status") == 1
            assert rate == pytest.approx(60.0, rel=0.03)
            client.close()

    asyncio.run(body())


def test_rtu_is_silent_for_another_unit() -> None:
    """Like a real RS-485 device (pymodbus's own server answered exception 4)."""

    async def body() -> None:
        async with serving(modbus_tcp=False, nesp=False) as server:
            client = await rtu_client(server, timeout=0.3)
            with pytest.raises(ModbusIOException, match="No response"):
                await client.read_holding_registers(0, count=1, device_id=7)
            assert await read(client, "vendor_id") == 0x4B50  # still serving unit 1
            client.close()

    asyncio.run(body())


def test_rtu_round_trip_is_paced_at_the_baud_rate() -> None:
    async def body() -> None:
        async with serving(modbus_tcp=False, nesp=False) as server:
            client = await rtu_client(server)
            t = time.perf_counter()
            for _ in range(5):
                await read(client, "encoder_counts")
            per_request = (time.perf_counter() - t) / 5
            # read 2 registers: 8-byte request + 9-byte reply, 10 bits per byte
            floor = (8 + 9) * 10 / server.baud
            assert per_request >= floor
            client.close()

    asyncio.run(body())


def test_a_client_that_stops_reading_never_stalls_the_simulator(caplog: pytest.LogCaptureFixture) -> None:
    """Replies to a PTY client that never reads are dropped once the PTY is full (as on a real line);
    the other endpoints keep answering."""

    async def body() -> None:
        async with serving(pace=False) as server:
            fd = os.open(str(server.endpoints["modbus_rtu_pty"]), os.O_RDWR | os.O_NOCTTY)
            try:
                tty.setraw(fd)
                request = bytes.fromhex("0103001E0013")  # the telemetry block: a 43-byte reply
                frame = request + crc16(request)
                for _ in range(600):  # ~26 kB of replies nobody reads
                    os.write(fd, frame)
                    await asyncio.sleep(0.001)
                client = await tcp_client(server)
                t = time.perf_counter()
                assert await read(client, "vendor_id") == 0x4B50
                assert time.perf_counter() - t < 0.5
                client.close()
            finally:
                os.close(fd)

    asyncio.run(body())
    assert "reply bytes dropped" in caplog.text  # the PTY really filled up
