"""Bring-your-own register maps, end to end: the simulator serves ``examples/register-maps/acme-sp200.toml``
(another unit id, layout, data types, scaling, word and byte order, function codes, no pressure sensor)
over Modbus TCP and RTU, and the bridge's driver reads the same file from the URL (``?map=PATH``).

Every value the driver writes or reads is checked against the raw registers an independent client
(pymodbus) reads, decoded here by hand from the map's rules; both parsers (Python and Rust) list the
same problems, with the same dotted paths, for the same broken files; the command line refuses a broken
map with exit 65 and every problem.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump import _core
from ketapump.clock import ScaledClock
from ketapump.sim import SimServer, serve_register_map
from ketapump.wire import (
    ReferencePumpDriver,
    RegisterMap,
    RegisterMapError,
    load_register_map,
    open_transport,
)
from ketapump.wire import parse_register_map as parse
from ketapump.wire.transports.base import PumpRefusedError, RegisterTransport
from simhelpers import ketapump, serving, sim_process, tcp_client

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "register-maps" / "acme-sp200.toml"
SHIPPED = load_register_map()
UNIT = 7


def swapped(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def by_hand(words: list[int], kind: str, gain: float = 1.0, offset: float = 0.0) -> float:
    """The example map's rules, applied independently: bytes swapped in each word, low word first."""
    fixed = [swapped(w) for w in words]
    if len(fixed) == 1:
        raw = float(struct.unpack(">h" if kind == "i16" else ">H", struct.pack(">H", fixed[0]))[0])
    else:
        data = struct.pack(">HH", fixed[1], fixed[0])
        raw = float(struct.unpack({"u32": ">I", "i32": ">i", "f32": ">f"}[kind], data)[0])
    return raw * gain + offset


# ----- the schema -------------------------------------------------------------------------------------


def test_the_example_map_differs_from_the_reference_in_every_dimension() -> None:
    example = parse(EXAMPLE.read_text())
    assert _core.SimPump().set_register_map(EXAMPLE.read_text()) == []  # the simulator takes it too
    assert example.unit_id != SHIPPED.unit_id
    assert (example.word_order, example.byte_order) == ("little", "little")
    assert (SHIPPED.word_order, SHIPPED.byte_order) == ("big", "big")
    assert set(example.function_codes) == {4, 16} and set(SHIPPED.function_codes) == {3, 4, 6, 16, 23}
    assert {r.type for r in example.registers} == {"u16", "i16", "u32", "i32"}
    assert any(r.gain != 1.0 for r in example.registers) and any(r.offset for r in example.registers)
    assert all(SHIPPED[r.name].address != r.address for r in example.registers)
    assert "line_pressure_mmhg" not in example and "line_pressure_mmhg" in SHIPPED
    assert example.missing_features() == ["no pressure: occlusion by stall only"]
    assert SHIPPED.missing_features() == []


def _mutate(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


BROKEN = {
    "unknown keys and bad orders": lambda t: _mutate(
        t, 'word_order = "little"', 'word_order = "middle"\ncolour = 1'
    ),
    "function codes": lambda t: _mutate(t, "function_codes = [4, 16]", "function_codes = [4, 5, 4]"),
    "no write function": lambda t: _mutate(t, "function_codes = [4, 16]", "function_codes = [4]"),
    "type, name, access": lambda t: _mutate(
        _mutate(
            t, 'name = "model"\naddress = 1001\ntype = "u16"', 'name = "modell"\naddress = 1001\ntype = "u8"'
        ),
        'name = "heartbeat"\naddress = 1204\ntype = "u16"\naccess = "rw"',
        'name = "heartbeat"\naddress = 1204\ntype = "u16"\naccess = "ro"',
    ),
    "overlap and a missing required register": lambda t: _mutate(
        _mutate(t, 'name = "run_mode"\naddress = 1202', 'name = "run_mode"\naddress = 1201'),
        'name = "alarm_ack"',
        'name = "alarm_ack_gone"',
    ),
    "scaling and range": lambda t: _mutate(
        _mutate(t, "gain = 0.001", "gain = 0"), "min = 1.0\nmax = 35.0", "min = 35.0\nmax = 1.0"
    ),
    "not TOML": lambda t: t + "\n[[register\n",
    "bad values": lambda t: _mutate(
        _mutate(t, "unit_id = 7", "unit_id = 300"), "schema_version = 1", 'schema_version = "1"'
    ),
    "a duplicate and a bad address": lambda t: _mutate(
        _mutate(t, 'name = "status"', 'name = "alarm_bits"'), "address = 1314", "address = 65535"
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_both_parsers_list_every_problem_with_the_same_paths(case: str) -> None:
    text = BROKEN[case](EXAMPLE.read_text())
    with pytest.raises(RegisterMapError) as refused:
        parse(text, source="broken.toml")
    python = sorted(refused.value.pairs)
    rust = sorted(_core.SimPump().set_register_map(text))
    if case == "not TOML":  # both parsers say where; their TOML libraries word it differently
        assert [p for p, _ in python] == [p for p, _ in rust] == ["toml"]
    else:
        assert python == rust
    assert len(python) >= (1 if case == "not TOML" else 2)  # every problem, not only the first


def test_the_paths_name_what_is_wrong() -> None:
    pairs = dict(
        (path, message)
        for case in ("type, name, access", "overlap and a missing required register", "scaling and range")
        for path, message in _problems(BROKEN[case](EXAMPLE.read_text()))
    )
    assert (
        pairs["register[1].name"] == "modell is not a register of the reference pump (docs/register-map.md)"
    )
    assert pairs["register[1].type"] == "must be one of u16, i16, u32, i32, f32"
    assert pairs["register[9].access"] == "must be rw, as the reference pump's heartbeat"
    assert pairs["register[7].address"] == "run_mode overlaps rate_ml_h at address 1201"
    assert pairs["register"] == "needs alarm_ack (the bridge cannot run a pump without it)"
    assert pairs["register[6].gain"] == "must be a finite number other than 0"
    assert pairs["register[5].max"] == "is below min"


def _problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(RegisterMapError) as refused:
        parse(text)
    return refused.value.pairs


def test_the_shipped_map_is_a_valid_map_of_its_own() -> None:
    text = (ROOT / "python" / "ketapump" / "data" / "register_map.toml").read_text()
    assert parse(text).registers == SHIPPED.registers
    assert _core.SimPump().set_register_map(text) == []


def test_the_command_line_refuses_a_broken_map_listing_every_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(BROKEN["type, name, access"](EXAMPLE.read_text()))
    done = ketapump("sim", "--register-map", str(broken), timeout=60)
    assert done.returncode == 65
    for path in ("register[1].name", "register[1].type", "register[9].access"):
        assert path in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    done = ketapump("sim", "--register-map", str(tmp_path / "missing.toml"), timeout=60)
    assert done.returncode == 66 and "cannot be read" in done.stderr
    done = ketapump(
        "run", "--rate-ml-h", "60", "--volume-ml", "1", "--log", str(tmp_path / "a.jsonl"),
        "--pump", f"modbus-tcp://127.0.0.1:1?map={broken}", timeout=60,
    )  # fmt: skip
    assert done.returncode == 65
    for path in ("register[1].name", "register[1].type", "register[9].access"):
        assert path in done.stderr, done.stderr
    assert not (tmp_path / "a.jsonl").exists()  # refused before anything was recorded


# ----- the wire ---------------------------------------------------------------------------------------


RawRead = Callable[[int, int], Awaitable[list[int]]]


@asynccontextmanager
async def byo_pump(endpoint: str) -> AsyncIterator[tuple[SimServer, ReferencePumpDriver, RawRead]]:
    """The example map served on ``endpoint``; the driver from the URL's ``map``, and raw register
    reads: over TCP an independent client's (pymodbus, function 4); on the RTU line, which one master
    owns, the simulator's request handler's own answer (the words its RTU framing carries)."""
    pump = _core.SimPump("bd-plastipak-50", seed=6, slack_taken_up=True)
    serve_register_map(pump, EXAMPLE)
    async with serving(
        pump, modbus_tcp=endpoint == "tcp", modbus_rtu=endpoint == "rtu", nesp=False
    ) as server:
        client = await tcp_client(server) if endpoint == "tcp" else None

        async def raw(address: int, count: int) -> list[int]:
            if client is None:
                code, words = server.advanced().read_registers(address, count)
                assert code == 0, code
                return words
            rr = await client.read_input_registers(address, count=count, device_id=UNIT)
            assert not rr.isError(), rr
            return list(rr.registers)

        if endpoint == "tcp":
            url = f"modbus-tcp://{server.endpoints['modbus_tcp']}?timeout=0.5&map={EXAMPLE}"
        else:
            url = f"modbus-rtu://{server.endpoints['modbus_rtu_pty']}?timeout=0.5&map={EXAMPLE}"
        transport = open_transport(url, clock=ScaledClock())
        assert isinstance(transport, RegisterTransport)
        driver = ReferencePumpDriver(transport, watchdog_ms=500)
        await driver.connect()
        try:
            yield server, driver, raw
        finally:
            await driver.close()
            if client is not None:
                client.close()


@pytest.mark.parametrize("endpoint", ["tcp", "rtu"])
def test_identity_scaling_and_word_order_against_raw_registers(endpoint: str) -> None:
    async def body() -> None:
        async with byo_pump(endpoint) as (server, driver, raw):
            assert driver.transport.unit == UNIT  # type: ignore[attr-defined]  # the map's default
            identity = await raw(1000, 6)
            assert by_hand(identity[0:1], "u16") == 0x4B50  # 'KP', bytes swapped on the wire
            assert identity[0] == 0x504B
            assert by_hand(identity[3:4], "u16") == 3  # map_version: the served map's
            assert by_hand(identity[4:6], "u32") == 1  # serial number 1, low word first
            # The rate in µL/h, u32, low word first, bytes swapped.
            await driver.set_rate_ml_h(52.5)
            words = await raw(1200, 2)
            assert by_hand(words, "u32", 0.001) == pytest.approx(52.5)
            assert words == [swapped(52_500 & 0xFFFF), swapped(52_500 >> 16)]
            assert server.advanced().value("rate_ml_h") == pytest.approx(52.5)
            # The diameter in 0.01 mm.
            await driver.set_syringe(26.59)
            assert by_hand(await raw(1100, 1), "u16", 0.01) == pytest.approx(26.59)
            # The watchdog in 10 ms steps: the driver's 500 ms is raw 50.
            assert await raw(1205, 1) == [swapped(50)]
            assert server.advanced().value("watchdog_ms") == 500
            # Telemetry: the plunger volume is u32 with an offset of -200 mL; counters in 10 nL.
            await driver.acknowledge_alarm()
            await driver.start()
            for _ in range(10):
                await driver.heartbeat()
                await asyncio.sleep(0.05)
            sample = await driver.read_telemetry()
            plunger = by_hand(await raw(1302, 2), "u32", 0.0001, -200.0)
            infused = by_hand(await raw(1310, 2), "u32", 1e-05)
            assert sample.volume_ml == pytest.approx(plunger, abs=1e-3)
            assert sample.infused_ml == pytest.approx(infused, abs=1e-4)
            assert sample.motor_running and by_hand(await raw(1307, 1), "u16") == 1
            assert sample.pressure_mmhg != sample.pressure_mmhg  # NaN: this pump has no sensor
            assert driver.lacks == frozenset({"pressure_mmhg"})
            await driver.stop()

    asyncio.run(body())


@pytest.mark.parametrize("endpoint", ["tcp", "rtu"])
def test_function_codes_ranges_and_units_are_the_maps(endpoint: str) -> None:
    async def body() -> None:
        async with byo_pump(endpoint) as (server, driver, _raw):
            transport = driver.transport
            # Functions 3 and 6 are not this pump's: exception 1 over the wire, nothing changed.
            transport.read_function, transport.write_single = 3, True
            with pytest.raises(PumpRefusedError) as refused:
                await transport.read_registers(1200, 2)
            assert refused.value.code == 1
            with pytest.raises(PumpRefusedError) as refused:
                await transport.write_registers(1202, [swapped(1)])
            assert refused.value.code == 1 and server.advanced().run_mode == 0
            transport.read_function, transport.write_single = 4, False
            # The reference pump's addresses are not mapped here.
            with pytest.raises(PumpRefusedError) as refused:
                await transport.read_registers(20, 2)
            assert refused.value.code == 2
            # The map's own range (600 mL/h) refuses what the reference pump would take.
            with pytest.raises(PumpRefusedError) as refused:
                await driver.set_rate_ml_h(900.0)
            assert refused.value.code == 3
            if endpoint == "tcp":  # the reference pump's unit is another device here
                client = await tcp_client(server)
                rr = await client.read_input_registers(1000, count=1, device_id=1)
                client.close()
                assert rr.isError() and rr.exception_code == 0x0B

    asyncio.run(body())


@pytest.mark.parametrize("endpoint", ["tcp", "rtu"])
def test_heartbeat_and_the_watchdog_stop(endpoint: str) -> None:
    async def body() -> None:
        async with byo_pump(endpoint) as (server, driver, raw):
            await driver.acknowledge_alarm()
            await driver.set_rate_ml_h(60.0)
            await driver.start()
            before = server.advanced().value("heartbeat")
            await driver.heartbeat()
            assert server.advanced().value("heartbeat") != before
            assert by_hand(await raw(1316, 1), "u16") < 200  # heartbeat_age_ms: just refreshed
            # No heartbeat for twice the 500 ms watchdog: the pump stops itself and latches the alarm.
            await asyncio.sleep(1.2)
            sample = await driver.read_telemetry()
            assert not sample.motor_running and "watchdog" in sample.pump_alarms
            assert by_hand(await raw(1309, 1), "u16") == 2  # alarm_bits: bit 1, watchdog

    asyncio.run(body())


@pytest.mark.parametrize("endpoint", ["tcp", "rtu"])
def test_withdraw_is_one_write_in_the_maps_layout(endpoint: str) -> None:
    async def body() -> None:
        async with byo_pump(endpoint) as (server, driver, _raw):
            await driver.acknowledge_alarm()
            await driver.withdraw(30.0)
            pump = server.advanced()
            assert (pump.run_mode, pump.value("rate_ml_h")) == (2, 30.0)
            await driver.stop()

    asyncio.run(body())


def test_ketapump_run_on_ketapump_sim_with_the_example_map(tmp_path: Path) -> None:
    scale = "10"
    args = ("--register-map", str(EXAMPLE), "--time-scale", scale, "--no-nesp", "--seed", "3")
    with sim_process(*args) as (_proc, endpoints):
        log = tmp_path / "run.jsonl"
        done = ketapump(
            "run", "--rate-ml-h", "60", "--volume-ml", "0.5", "--time-scale", scale, "--log", str(log),
            "--pump", f"modbus-tcp://{endpoints['modbus_tcp']}?map={EXAMPLE}", "--json", timeout=240,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "no pressure: occlusion by stall only" in done.stderr  # reported up front
        assert '"state": "complete"' in done.stdout or '"state":"complete"' in done.stdout
        # 1 mL: the overdose bound is 2 % of the dose, and a pump without a pressure sensor cannot have
        # its drive's release predicted at the end; at 0.2 mL a late last tick under load (one RTU tick
        # is 1.2 s of pump time at 10×) overran it (0.2046 mL, an overdose alarm, in a CI run).
        rtu = f"modbus-rtu://{endpoints['modbus_rtu_pty']}?map={EXAMPLE}"
        done = ketapump(
            "run", "--rate-ml-h", "60", "--volume-ml", "1.0", "--time-scale", scale,
            "--log", str(tmp_path / "rtu.jsonl"), "--pump", rtu, "--json", timeout=240,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


@st.composite
def _block(draw: st.DrawFn) -> tuple[object, list[object], list[tuple[int, int]], list[int]]:
    """A map layout, registers of every type and scaling with gaps between them, the reads that cover
    them (1–3, split between registers), the registers in any order, and the words the reads return."""
    shipped = load_register_map()
    regmap = dataclasses.replace(
        shipped,
        word_order=draw(st.sampled_from(["big", "little"])),
        byte_order=draw(st.sampled_from(["big", "little"])),
    )
    address = draw(st.integers(0, 100))
    registers = []
    for i in range(draw(st.integers(1, 8))):
        address += draw(st.integers(0, 2))  # a gap of unread words inside a read
        register = dataclasses.replace(
            shipped["plunger_volume_ml"],
            name=f"r{i}",
            address=address,
            type=draw(st.sampled_from(["u16", "i16", "u32", "i32", "f32"])),
            gain=draw(st.sampled_from([1.0, 0.01, 0.1, 2.5, -1.0])),
            offset=draw(st.sampled_from([0.0, -40.0, 273.15])),
        )
        registers.append(register)
        address += register.words
    cuts = sorted(draw(st.sets(st.integers(1, len(registers) - 1), max_size=2))) if len(registers) > 1 else []
    reads: list[tuple[int, int]] = []
    for group in (registers[a:b] for a, b in zip([0, *cuts], [*cuts, len(registers)], strict=True)):
        free = group[0].address - (reads[-1][0] + reads[-1][1] if reads else 0)  # unread words before it
        start = group[0].address - draw(st.integers(0, min(2, free)))
        reads.append((start, group[-1].address + group[-1].words - start))
    words = draw(
        st.lists(st.integers(0, 0xFFFF), min_size=sum(c for _, c in reads), max_size=sum(c for _, c in reads))
    )
    return regmap, draw(st.permutations(registers)), reads, words


@settings(max_examples=400, deadline=None, derandomize=True)
@given(_block())
def test_a_block_decoder_gives_what_decode_gives_register_by_register_to_the_bit(
    block: tuple[object, list[object], list[tuple[int, int]], list[int]],
) -> None:
    """The driver decodes its telemetry block in one step (:meth:`RegisterMap.block_decoder`: one
    ``struct`` format for the whole read); every register must come out exactly as :meth:`decode`
    gives it from its own words: every type, scaling, word and byte order, gaps, several reads, any
    order of the registers, NaN payloads and negative zeros included."""
    regmap, registers, reads, words = block
    assert isinstance(regmap, RegisterMap)
    at = {}
    for start, count in reads:
        for offset in range(count):
            at[start + offset] = len(at)
    expected = [regmap.decode(r, [words[at[r.address + i]] for i in range(r.words)]) for r in registers]  # type: ignore[attr-defined]
    got = regmap.block_decoder(registers, reads)(words)  # type: ignore[arg-type]
    assert [struct.pack(">d", v) for v in got] == [struct.pack(">d", v) for v in expected]


def test_a_block_decoder_refuses_a_register_outside_its_reads_and_a_wrong_length() -> None:
    volume, pressure = SHIPPED["plunger_volume_ml"], SHIPPED["line_pressure_mmhg"]
    with pytest.raises(ValueError, match="line_pressure_mmhg: not whole"):
        SHIPPED.block_decoder([volume, pressure], [(32, 3)])  # pressure's second word unread
    decode = SHIPPED.block_decoder([volume, pressure], [(32, 4)])
    with pytest.raises(ValueError, match="3 words where the reads give 4"):
        decode([0, 0, 0])


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(["heartbeat", "rate_ml_h", "run_mode", "syringe_diameter_mm", "watchdog_ms"]),
    value=st.one_of(
        st.integers(-(2**40), 2**40),
        st.integers(-2, 0x10001),
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=-1e39, max_value=1e39),
        st.booleans(),
    ),
)
def test_a_registers_encoder_gives_what_encode_gives(name: str, value: float) -> None:
    """The driver encodes the heartbeat and the rate with :meth:`RegisterMap.encoder` (worked out once);
    it gives :meth:`encode`'s words, and refuses exactly what it refuses, with the same message."""
    register = SHIPPED[name]

    def outcome(encode: Callable[[float], list[int]]) -> object:
        try:
            return encode(value)
        except (ValueError, OverflowError) as e:
            return (type(e), str(e))

    assert outcome(SHIPPED.encoder(register)) == outcome(lambda v: SHIPPED.encode(register, v))


def test_a_map_file_is_data_not_code() -> None:
    # The map is TOML read with tomllib: nothing in it runs, and a key the schema does not know is
    # refused rather than ignored.
    text = EXAMPLE.read_text() + '\n[extra]\ncommand = "rm -rf /"\n'
    assert ("extra", "is not a register-map key") in _problems(text)
    assert tomllib.loads(EXAMPLE.read_text())["unit_id"] == UNIT
