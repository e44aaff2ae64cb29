"""One transaction per pump per cycle: Modbus function 23 (write the heartbeat, then read the
telemetry block) on the simulator's real TCP endpoint and through the bridge's driver, and the
telemetry block decoded with one precompiled struct exactly as field by field."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump import _core
from ketapump.bridge.loop import LINK_LOST, ControlLoop, InfusionPlan, RunResult
from ketapump.clock import VirtualClock
from ketapump.config import kernel_config
from ketapump.errors import TransportError
from ketapump.sim.server import SimServer
from ketapump.wire.drivers.base import PumpTelemetry
from ketapump.wire.drivers.reference import PUMP_ALARMS, ReferencePumpDriver
from ketapump.wire.regmap import decode, load_register_map
from ketapump.wire.transports import open_transport
from ketapump.wire.transports.base import PumpRefusedError, RegisterTransport
from ketapump.wire.transports.modbus import ModbusTcpTransport
from ketapump.wire.transports.sim import _all_words
from simhelpers import serving
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

    async def _read(self, address: int, count: int, what: Callable[[], str]) -> list[int]:
        self.exchanges.append("read")
        return await super()._read(address, count, what)

    async def _write(self, address: int, values: list[int], what: Callable[[], str]) -> None:
        self.exchanges.append("write")
        await super()._write(address, values, what)

    async def _write_and_read(
        self, write_address: int, values: list[int], read_address: int, count: int, what: Callable[[], str]
    ) -> list[int]:
        self.exchanges.append("write+read")
        return await super()._write_and_read(write_address, values, read_address, count, what)


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


_MAP = load_register_map()
_ADDRESSES = sorted({r.address + i for r in _MAP.registers for i in range(r.words)})


def _outcome(transaction: Any) -> tuple[str, object]:
    """A request's result, or its error's type, text and code."""
    try:
        return "words", asyncio.run(transaction)
    except (PumpRefusedError, TransportError) as e:
        return type(e).__name__, (str(e), getattr(e, "code", None))


def _pump_registers(transport: RegisterTransport) -> list[tuple[int, list[int]]]:
    pump = transport.pump  # type: ignore[attr-defined]
    return [pump.read_registers(r.address, r.words) for r in _MAP.registers if r.access != "wo"]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*_ADDRESSES, -1, 0x10000, 200]) | st.integers(-2, 0x10001),
            st.lists(st.integers(-1, 0x10000), max_size=3)
            | st.lists(st.integers(0, 3), min_size=121, max_size=124),
            st.sampled_from([*_ADDRESSES, -1, 0x10000, 200]),
            st.sampled_from([0, 1, 2, 12, 19, 125, 126]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_the_simulators_write_then_read_is_the_general_paths(
    requests: list[tuple[int, list[int], int, int]],
) -> None:
    """sim:// does its write-then-read in one coroutine of its own: the same words, the same refusals
    (type, text, code) and the same pump afterwards as the base class's write, then read."""
    own = open_transport("sim://", clock=VirtualClock())
    general = open_transport("sim://", clock=VirtualClock())
    assert isinstance(own, RegisterTransport) and isinstance(general, RegisterTransport)
    for write_address, values, read_address, count in requests:

        def what() -> str:
            return "the combined request"  # a write-then-read names each half: this name is never used

        assert _outcome(own._write_and_read(write_address, values, read_address, count, what)) == _outcome(
            RegisterTransport._write_and_read(general, write_address, values, read_address, count, what)
        )
        assert _pump_registers(own) == _pump_registers(general)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.integers(-2, 0x10001) | st.integers() | st.floats(), max_size=5))
def test_the_simulators_word_check_is_the_generators(values: list[int]) -> None:
    """sim://'s check of written values (a plain loop) answers as the generator expression it replaced."""
    assert _all_words(values) == all(0 <= v <= 0xFFFF for v in values)


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


# ----- the control loop: one request per tick ------------------------------------------------------

LOOP_PLAN = InfusionPlan(rate_ml_h=60.0, volume_ml=0.3, syringe_diameter_mm=26.59)


class TickLog:
    """The loop's audit calls, with a marker in the transport's exchanges at each tick's kernel step
    (``on_tick``), so the exchanges between two markers are one tick's."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    warning = error = info

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


async def _loop_over_tcp(
    server: SimServer, *, one_transaction: bool, clock: VirtualClock, url_query: str = ""
) -> tuple[RunResult, list[str], TickLog, ReferencePumpDriver]:
    """A short infusion through the bridge's Modbus TCP transport on the simulator's real endpoint, on
    the loop's virtual clock (the server follows it)."""
    server.clock = clock
    host, port = str(server.endpoints["modbus_tcp"]).rsplit(":", 1)
    transport = CountingTcpTransport(
        f"modbus-tcp://{host}:{port}{url_query}", host=host, port=int(port), unit=1, timeout_s=0.5, retries=1
    )
    transport.exchanges = []
    driver = ReferencePumpDriver(transport, watchdog_ms=2000)
    driver._one_transaction = one_transaction
    log = TickLog()

    def on_tick(_out: _core.StepOutput, _telemetry: PumpTelemetry | None) -> None:
        transport.exchanges.append("|")

    loop = ControlLoop(driver, kernel_config(), clock, log, on_tick=on_tick)
    try:
        result = await loop.run(LOOP_PLAN)
    finally:
        await driver.close()
    return result, transport.exchanges, log, driver


def _ticks(exchanges: list[str]) -> list[list[str]]:
    """The exchanges from one tick's step to the next's: the command and beat of a tick, then the next
    tick's read."""
    ticks: list[list[str]] = [[]]
    for exchange in exchanges:
        if exchange == "|":
            ticks.append([])
        else:
            ticks[-1].append(exchange)
    return ticks[1:-1]  # the set-up before the first tick and the stop after the last are not ticks


@pytest.mark.parametrize("one_transaction", [True, False])
def test_the_control_loop_makes_one_request_per_tick_on_the_modbus_server(one_transaction: bool) -> None:
    """With function 23 the loop's steady tick is ONE request (heartbeat and telemetry); without it, two
    (read, heartbeat). A rate is written only in the ticks whose command changed."""

    async def body() -> None:
        pump = _core.SimPump("bd-plastipak-50", seed=5, slack_taken_up=True)
        async with serving(pump, pace=False, modbus_rtu=False, nesp=False) as server:
            result, exchanges, log, _driver = await _loop_over_tcp(
                server, one_transaction=one_transaction, clock=VirtualClock()
            )
        assert result.state == "complete"
        ticks = _ticks(exchanges)
        assert len(ticks) > 100
        steady = ["write+read"] if one_transaction else ["write", "read"]
        commands = log.names().count("command")
        # Every tick is its steady traffic, plus a write (rate, start or stop) per command it sent.
        assert sum(t != steady for t in ticks) <= commands
        assert sum(len(t) for t in ticks) <= len(steady) * len(ticks) + 2 * commands
        assert all(t[-len(steady) :] == steady for t in ticks)

    asyncio.run(body())


@pytest.mark.parametrize(("fault", "value"), [("fault_comm_drop_pct", 100), ("fault_comm_silent", 1)])
def test_a_link_lost_mid_transaction_ends_the_run_as_on_two_requests(fault: str, value: int) -> None:
    """Replies lost from mid-run on: the one-transaction loop counts the same failures per tick, records
    the same events and ends the same way (link lost, stop unconfirmed) as the two-request loop; its
    heartbeat after a failed transaction is tried on its own."""

    async def run(one_transaction: bool) -> tuple[RunResult, list[str], list[list[str]], float]:
        pump = _core.SimPump("bd-plastipak-50", seed=5, slack_taken_up=True)
        pump.schedule(8.0, fault, value)
        clock = VirtualClock()
        async with serving(pump, pace=False, modbus_rtu=False, nesp=False) as server:
            result, exchanges, log, _driver = await _loop_over_tcp(
                server, one_transaction=one_transaction, clock=clock
            )
        after = log.names()[log.names().index("telemetry_failed") :]
        lost = [fields for name, fields in log.events if name == "transport_lost"]
        assert lost and lost[0]["consecutive_failures"] == 4
        return result, after, _ticks(exchanges)[-2:], clock.now()

    def same(one: RunResult, two: RunResult) -> bool:
        return (one.state, one.reason, one.alarms, one.pump_alarms, one.stop_confirmed, one.detail) == (
            two.state, two.reason, two.alarms, two.pump_alarms, two.stop_confirmed, two.detail,
        )  # fmt: skip

    combined, combined_events, combined_ticks, combined_end = asyncio.run(run(True))
    separate, separate_events, separate_ticks, separate_end = asyncio.run(run(False))
    assert combined.state == LINK_LOST and combined.reason == "transport" and not combined.stop_confirmed
    assert same(combined, separate)
    assert combined_events == separate_events == [
        "telemetry_failed", "command_failed", "telemetry_failed", "command_failed", "pump_stop_failed",
        "transport_lost",
    ]  # fmt: skip
    assert combined_end == separate_end  # as many ticks: the link is given up on as soon
    # After a failed transaction (both attempts) the beat is its own request, retried as any request,
    # as on the two-request path; then the next tick's transaction.
    assert combined_ticks[-1] == ["write", "write", "write+read", "write+read"]
    assert separate_ticks[-1] == ["write", "write", "read", "read"]


class _LosesEveryFifthTransaction(ReferencePumpDriver):
    """The reference pump on sim:// whose combined request fails at every fifth tick before reaching the
    pump (heartbeat lost with the sample); notes the pump's heartbeat age at each tick's start."""

    ages_ms: list[float]
    calls = 0

    async def heartbeat_and_read_telemetry(self) -> PumpTelemetry:
        pump = self.transport.pump  # type: ignore[attr-defined]
        pump.advance_to(self.transport.clock.now())  # type: ignore[attr-defined]
        self.ages_ms.append(pump.value("heartbeat_age_ms"))
        self.calls += 1
        if self.calls % 5 == 0:
            raise TransportError(self.transport.url, "write 1 at 24 and read 12 at 32: no answer")
        return await super().heartbeat_and_read_telemetry()


def test_a_failed_transaction_still_refreshes_the_watchdog_within_the_tick() -> None:
    """The beat a failed transaction lost is sent on its own in the same tick: at every tick's start the
    pump last heard the bridge at most one control period before, as with two requests."""
    clock = VirtualClock()
    pump = _core.SimPump("bd-plastipak-50", seed=5, slack_taken_up=True)
    transport = open_transport("sim://", clock=clock, pump=pump)
    assert isinstance(transport, RegisterTransport)
    driver = _LosesEveryFifthTransaction(transport)
    driver.ages_ms = []
    log = TickLog()
    loop = ControlLoop(driver, kernel_config(), clock, log)
    result = asyncio.run(loop.run(LOOP_PLAN))
    assert result.state == "complete"
    failed = log.names().count("telemetry_failed")
    assert failed >= 10 and not log.names().count("command_failed")
    ticks = driver.ages_ms[1:]  # the first is the set-up's, before any beat
    assert len(ticks) > 50 and max(ticks) <= 1_000.0 * loop.period_s + 1.0
