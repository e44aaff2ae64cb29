"""One transaction per pump per cycle: Modbus function 23 (write the heartbeat, then read the
telemetry block) on the simulator's real TCP endpoint and through the bridge's driver, and the
telemetry block decoded with one precompiled struct exactly as field by field."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump import _core
from ketapump.clock import VirtualClock
from ketapump.wire.drivers.base import PumpTelemetry
from ketapump.wire.drivers.reference import PUMP_ALARMS, ReferencePumpDriver
from ketapump.wire.regmap import decode, load_register_map
from ketapump.wire.transports import open_transport
from ketapump.wire.transports.base import PumpRefusedError, RegisterTransport
from ketapump.wire.transports.modbus import ModbusTcpTransport
from wirehelpers import ThreadedSim, check_pdu, mbap, read_n, read_pdu, split_mbap

TELEMETRY_ADDRESS, TELEMETRY_COUNT, HEARTBEAT = 30, 19, 24


def fc23_pdu(read_address: int, count: int, write_address: int, values: list[int]) -> bytes:
    n = len(values)
    return struct.pack(f">BHHHHB{n}H", 23, read_address, count, write_address, n, 2 * n, *values)


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(_core.SimPump("bd-plastipak-50", seed=5), pace=False) as running:
        yield running


def test_fc23_on_the_tcp_endpoint_writes_then_reads(sim: ThreadedSim) -> None:
    with sim.tcp() as sock:
        request = fc23_pdu(HEARTBEAT, 2, HEARTBEAT, [4321])
        sock.sendall(mbap(7, 1, request))
        [(transaction, unit, reply)] = split_mbap(read_n(sock, 9 + 4))
        check_pdu(request, reply)
        # The read sees the write: heartbeat 4321, then the watchdog period.
        assert (transaction, unit) == (7, 1)
        assert struct.unpack(">BBHH", reply)[:3] == (23, 4, 4321)
        # The telemetry block, heartbeat written alongside: the same words a plain read returns.
        sock.sendall(mbap(8, 1, fc23_pdu(TELEMETRY_ADDRESS, TELEMETRY_COUNT, HEARTBEAT, [1])))
        [(_, _, block)] = split_mbap(read_n(sock, 9 + 2 * TELEMETRY_COUNT))
        assert block[:2] == bytes([23, 2 * TELEMETRY_COUNT])
        sock.sendall(mbap(9, 1, read_pdu(HEARTBEAT, 1)))
        [(_, _, beat)] = split_mbap(read_n(sock, 9 + 2))
        assert beat == bytes([3, 2, 0, 1])


def test_a_refused_fc23_writes_nothing(sim: ThreadedSim) -> None:
    before = sim.registers()
    with sim.tcp() as sock:
        # A valid heartbeat write with a read outside the map: exception 2, and no write.
        sock.sendall(mbap(1, 1, fc23_pdu(0xFF00, 1, HEARTBEAT, [77])))
        [(_, _, reply)] = split_mbap(read_n(sock, 9))
        assert reply == bytes([0x97, 2])
        # A rate write beyond the limits with a valid read: exception 3, and no write.
        sock.sendall(mbap(2, 1, fc23_pdu(TELEMETRY_ADDRESS, 2, 20, [0x7F80, 0])))  # +inf mL/h
        [(_, _, reply)] = split_mbap(read_n(sock, 9))
        assert reply == bytes([0x97, 3])
        sock.sendall(mbap(3, 1, read_pdu(HEARTBEAT, 1)))
        [(_, _, beat)] = split_mbap(read_n(sock, 11))
        assert beat != bytes([3, 2, 0, 77])
    assert sim.registers() == before


class CountingTcpTransport(ModbusTcpTransport):
    """The bridge's Modbus TCP transport, counting the exchanges it makes."""

    exchanges: list[str]

    async def _read(self, address: int, count: int) -> list[int]:
        self.exchanges.append("read")
        return await super()._read(address, count)

    async def _write(self, address: int, values: list[int]) -> None:
        self.exchanges.append("write")
        await super()._write(address, values)

    async def _write_and_read(
        self, write_address: int, values: list[int], read_address: int, count: int
    ) -> list[int]:
        self.exchanges.append("write+read")
        return await super()._write_and_read(write_address, values, read_address, count)


def test_the_driver_beats_and_reads_in_one_transaction_over_tcp(sim: ThreadedSim) -> None:
    host, port = sim.tcp_address
    transport = CountingTcpTransport(
        f"modbus-tcp://{host}:{port}", host=host, port=port, unit=1, timeout_s=2.0, retries=0
    )
    transport.exchanges = []
    driver = ReferencePumpDriver(transport)

    async def cycle() -> tuple[PumpTelemetry, PumpTelemetry, float]:
        await driver.connect()
        transport.exchanges.clear()
        combined = await driver.heartbeat_and_read_telemetry()
        exchanges = list(transport.exchanges)
        plain = await driver.read_telemetry()
        beat = await driver._read("heartbeat")
        await driver.close()
        assert exchanges == ["write+read"]
        return combined, plain, beat

    combined, plain, beat = asyncio.run(cycle())
    assert combined.syringe_present and combined == plain  # an idle pump: nothing moves between them
    assert beat == 1  # the driver's first beat reached the pump


def test_without_fc23_in_the_map_the_driver_makes_two_requests() -> None:
    transport = open_transport("sim://", clock=VirtualClock())
    assert isinstance(transport, RegisterTransport)
    driver = ReferencePumpDriver(transport)
    driver._one_transaction = False
    calls: list[str] = []
    transport.write_registers = _spy(calls, "write", transport.write_registers)  # type: ignore[method-assign]
    transport.read_registers = _spy(calls, "read", transport.read_registers)  # type: ignore[method-assign]

    async def cycle() -> float:
        await driver.connect()
        calls.clear()
        await driver.heartbeat_and_read_telemetry()
        return await driver._read("heartbeat")

    asyncio.run(cycle())
    assert calls[:2] == ["write", "read"]


def _spy(calls: list[str], name: str, method: object) -> object:
    async def spied(*args: object) -> object:
        calls.append(name)
        return await method(*args)  # type: ignore[operator]

    return spied


def test_a_refused_transaction_is_the_pumps_answer() -> None:
    """sim:// (write then read under one deadline) refuses a write the pump refuses, with its code."""
    transport = open_transport("sim://", clock=VirtualClock())
    assert isinstance(transport, RegisterTransport)

    async def refused() -> None:
        await transport.connect()
        await transport.write_and_read_registers(30, [1], TELEMETRY_ADDRESS, TELEMETRY_COUNT)

    with pytest.raises(PumpRefusedError) as e:
        asyncio.run(refused())
    assert e.value.code == 2


def _field_by_field(words: list[int]) -> PumpTelemetry:
    """The telemetry decoded one register at a time, straight from the map."""
    regmap = load_register_map()

    def value(name: str) -> float:
        r = regmap[name]
        offset = r.address - TELEMETRY_ADDRESS
        return decode(r, words[offset : offset + r.words])

    bits = int(value("alarm_bits"))
    return PumpTelemetry(
        volume_ml=value("plunger_volume_ml"),
        pressure_mmhg=value("line_pressure_mmhg"),
        motor_running=value("motor_running") == 1,
        air_in_line=value("air_in_line") == 1,
        syringe_present=value("syringe_present") == 1,
        end_of_travel=value("end_of_travel") == 1,
        pump_alarms=frozenset(name for bit, name in PUMP_ALARMS.items() if bits >> bit & 1),
        infused_ml=value("infused_ml"),
    )


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), min_size=TELEMETRY_COUNT, max_size=TELEMETRY_COUNT))
def test_the_drivers_telemetry_decodes_as_field_by_field(words: list[int]) -> None:
    """What one function 23 reply (or one read) of the block carries is decoded as the map says."""
    driver = ReferencePumpDriver(open_transport("sim://", clock=VirtualClock()))  # type: ignore[arg-type]
    ((start, count),) = driver._runs  # the telemetry registers' words inside the block
    fast = driver._telemetry_from(words[start - TELEMETRY_ADDRESS : start - TELEMETRY_ADDRESS + count])
    slow = _field_by_field(words)
    for name in ("volume_ml", "pressure_mmhg", "infused_ml"):
        assert _same(getattr(fast, name), getattr(slow, name)), name
    for name in ("motor_running", "air_in_line", "syringe_present", "end_of_travel", "pump_alarms"):
        assert getattr(fast, name) == getattr(slow, name), name
