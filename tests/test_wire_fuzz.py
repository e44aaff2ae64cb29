"""Seeded, bounded fuzzing of the live simulator endpoints (Modbus TCP, Modbus RTU, New Era), and the
function codes outside the map.

Each hypothesis example is one batch of random or mutated frames on a fresh connection (TCP) or the
PTY. Invariants: the server never crashes; every reply is a well-formed reply of its protocol (or
nothing); a batch in which no write was accepted leaves every register as it was; and afterwards a
valid request on a fresh connection is answered correctly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketapump import _core
from ketapump.wire import load_register_map
from wirehelpers import (
    ThreadedSim,
    check_pdu,
    crc16,
    mbap,
    read_n,
    read_pdu,
    read_until_quiet,
    rtu,
    split_mbap,
    split_rtu,
    write1_pdu,
    writen_pdu,
)

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # seeded: the same batches every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
COMM_FAULTS = ("fault_comm_drop_pct", "fault_comm_delay_ms", "fault_comm_corrupt_pct", "fault_comm_silent")
#: Register addresses a generated write may name (the communication faults excluded: a write that
#: silenced or corrupted the line would end the fuzzing, not test it).
ADDRESSES = st.integers(0, 130).filter(lambda a: not 114 <= a <= 117) | st.integers(0, 0xFFFF)
IDENTITY = bytes.fromhex("03 08 4b 50 00 01 00 64 00 01")  # vendor, model, firmware, map version


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(_core.SimPump("bd-plastipak-50", seed=11), pace=False) as running:
        yield running


def _calm(sim: ThreadedSim) -> None:
    """Undoes what accepted frames may have left: communication faults, a running motor."""

    def reset() -> None:
        pump = sim.server.advanced()
        for name in COMM_FAULTS:
            pump.inject(name, 0)
        pump.write_registers(22, [0])

    sim.call(reset)


# ----- frames ----------------------------------------------------------------------------------------

pdus = st.one_of(
    st.builds(read_pdu, ADDRESSES, st.integers(0, 200), st.sampled_from([3, 4])),
    st.builds(write1_pdu, ADDRESSES, st.integers(0, 0xFFFF)),
    st.builds(writen_pdu, ADDRESSES, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8)),
    st.binary(min_size=1, max_size=20),  # any function code, any data
)


@st.composite
def mutated(draw: st.DrawFn, frame: bytes) -> bytes:
    """``frame`` with bytes flipped, dropped, inserted or cut."""
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "drop", "insert", "cut"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "drop" and data:
            del data[i]
        elif op == "insert":
            data.insert(i, draw(st.integers(0, 255)))
        elif op == "cut":
            del data[i:]
    return bytes(data)


@st.composite
def tcp_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "header", "noise"]))
    transaction = draw(st.integers(0, 0xFFFF))
    unit = draw(st.sampled_from([1, 1, 1, 0, 255, 7]))
    pdu = draw(pdus)
    if kind == "valid":
        return mbap(transaction, unit, pdu)
    if kind == "mutated":
        return draw(mutated(mbap(transaction, unit, pdu)))
    if kind == "header":
        return mbap(
            transaction, unit, pdu, protocol=draw(st.integers(0, 3)), length=draw(st.integers(0, 0xFFFF))
        )
    return draw(st.binary(max_size=300))


@st.composite
def rtu_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "noise"]))
    unit = draw(st.sampled_from([1, 1, 1, 2]))  # no broadcast: it executes without a reply to check
    pdu = draw(pdus)
    if kind == "valid":
        return rtu(unit, pdu)
    if kind == "mutated":
        frame = draw(mutated(rtu(unit, pdu)))
        # Keep mutations CRC-broken, or they could be a write to a communication fault.
        return frame if len(frame) < 4 or crc16(frame[:-2]) != frame[-2:] else frame + b"\x00"
    return draw(st.binary(max_size=300))


# ----- Modbus TCP -------------------------------------------------------------------------------------


def _assert_answered_correctly(sim: ThreadedSim) -> None:
    with sim.tcp() as sock:
        sock.sendall(mbap(0x1234, 1, read_pdu(0, 4)))
        assert split_mbap(read_n(sock, 7 + len(IDENTITY))) == [(0x1234, 1, IDENTITY)]


@FUZZ
@given(batch=st.lists(tcp_frames(), min_size=1, max_size=6), together=st.booleans())
def test_tcp_random_and_mutated_frames(sim: ThreadedSim, batch: list[bytes], together: bool) -> None:
    _calm(sim)
    before = sim.registers()
    stream = b""
    with sim.tcp() as sock:
        try:
            if together:
                sock.sendall(b"".join(batch))
            else:
                for frame in batch:
                    sock.sendall(frame)
            stream = read_until_quiet(sock, 0.05, limit_s=2.0)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server closed a stream whose framing it lost
    replies = split_mbap(stream)
    for _transaction, unit, pdu in replies:
        check_pdu(None, pdu)
        if unit not in {0, 1, 255}:
            assert pdu[1:] == bytes([11]), pdu.hex(" ")  # another unit: the gateway exception
    accepted_write = any(pdu[0] in (6, 16) for _, _, pdu in replies)
    if not accepted_write:
        assert sim.registers() == before
    _calm(sim)
    _assert_answered_correctly(sim)


def test_tcp_replies_answer_their_requests_in_order(sim: ThreadedSim) -> None:
    """Valid requests sent back to back on one connection: one reply each, in order, each answering its
    own request (transaction id, unit, function and shape)."""
    _calm(sim)
    requests = [
        (7, 1, read_pdu(0, 4)),
        (8, 255, read_pdu(30, 19, function=4)),
        (9, 0, write1_pdu(25, 777)),
        (10, 1, writen_pdu(20, [0x4270, 0])),  # rate 60.0
        (11, 9, read_pdu(0, 1)),
        (12, 1, read_pdu(0, 0)),
        (13, 1, write1_pdu(0, 1)),
        (14, 1, bytes([5, 0, 22, 0xFF, 0])),
    ]
    with sim.tcp() as sock:
        sock.sendall(b"".join(mbap(*r) for r in requests))
        replies = split_mbap(read_until_quiet(sock, 0.1))
    assert [(t, u) for t, u, _ in replies] == [(t, u) for t, u, _ in requests]
    for (_, _, request), (_, _, reply) in zip(requests, replies, strict=True):
        check_pdu(request, reply)
    assert [reply[1] for _, _, reply in replies[4:]] == [11, 3, 2, 1]
    assert replies[0][2] == IDENTITY


# ----- Modbus RTU -------------------------------------------------------------------------------------


@FUZZ
@given(batch=st.lists(rtu_frames(), min_size=1, max_size=5))
def test_rtu_random_and_mutated_frames(sim: ThreadedSim, batch: list[bytes]) -> None:
    _calm(sim)
    before = sim.registers()
    with sim.pty("modbus_rtu_pty") as fd:
        for frame in batch:
            os.write(fd, frame)
            time.sleep(0.004)  # a silence longer than 3.5 characters ends each frame
        replies = split_rtu(read_until_quiet(fd, 0.04, limit_s=2.0))
        for pdu in replies:
            check_pdu(None, pdu)
        if not any(pdu[0] in (6, 16) for pdu in replies):
            assert sim.registers() == before
        _calm(sim)
        time.sleep(0.004)
        os.write(fd, rtu(1, read_pdu(0, 4)))
        assert split_rtu(read_n(fd, 3 + len(IDENTITY))) == [IDENTITY]


# ----- New Era ----------------------------------------------------------------------------------------

#: Noise for New Era lines: no STX (a safe frame it started would swallow the packets after it until a
#: 0.5 s silence) and no letters that spell a command (noise must never be a valid set).
NE_ALPHABET = b"\x03\x05\x060123456789XYZ.*? abc\xff"


def _safe(data: bytes) -> bytes:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return bytes([2, len(data) + 4]) + data + crc.to_bytes(2, "big") + b"\x03"


def _ne_replies(stream: bytes) -> list[str]:
    """Cuts a New Era reply stream into replies (data), asserting each frame."""
    out = []
    while stream:
        assert stream[0] == 2 and len(stream) >= 5, stream
        if 0x30 <= stream[1] <= 0x39:  # basic: STX data ETX
            end = stream.index(3)
            data = stream[1:end]
            stream = stream[end + 1 :]
        else:
            n = stream[1]
            frame, stream = stream[: n + 1], stream[n + 1 :]
            assert frame[-1] == 3, frame
            data = frame[2:-3]
            assert _safe(data) == frame, frame
        text = data.decode("ascii")
        assert text[:2].isdigit() and text[2] in "IWSPTUXA", text
        out.append(text)
    return out


@st.composite
def ne_broken(draw: st.DrawFn) -> bytes:
    """A packet the pump must not execute: noise, a damaged safe frame, an overlong line, a safe frame
    with an impossible length."""
    kind = draw(st.sampled_from(["noise", "safe", "overlong", "length"]))
    if kind == "noise":
        return bytes(draw(st.lists(st.sampled_from(NE_ALPHABET), max_size=60))).replace(b"\r", b"") + b"\r"
    if kind == "safe":
        command = draw(st.sampled_from([b"0RUN", b"0RAT10MH", b"0DIA12.5", b"0VOL5", b"0STP"]))
        frame = bytearray(_safe(command))
        # Past the address and the byte after it (a digit there would make it address 0N): for pump 0.
        i = draw(st.integers(4, len(frame) - 1))
        frame[i] ^= draw(st.integers(1, 255))
        return bytes(frame) + (b"" if frame[-1] == 3 else b"\x03")
    if kind == "overlong":
        return b"0RAT" + b"5" * draw(st.integers(253, 2000)) + b"\r"
    return bytes([2, draw(st.integers(0, 3))]) + b"0RUN\x12\x34\x03"


@FUZZ
@given(batch=st.lists(ne_broken(), min_size=1, max_size=5))
def test_new_era_broken_packets_are_answered_and_never_executed(sim: ThreadedSim, batch: list[bytes]) -> None:
    _calm(sim)
    state = sim.call(
        lambda: (sim.server.pump.value("rate_ml_h"), sim.server.pump.value("syringe_diameter_mm"))
    )
    with sim.pty("nesp_pty") as fd:
        os.write(fd, b"0\r")  # the power-up alarm (first example only) is acknowledged here
        read_until_quiet(fd, 0.03)
        for packet in batch:
            os.write(fd, packet)  # every generated packet ends itself (CR or ETX): no gap needed
        replies = _ne_replies(read_until_quiet(fd, 0.04, limit_s=3.0))
        structured = sum(1 for p in batch if p[:1] == b"\x02" or p.startswith(b"0RAT"))
        assert structured <= len(replies) <= len(batch)  # one reply per packet; noise may be silent
        for reply in replies:
            assert reply[3:] == "" or "?" in reply[3:], reply  # a status, or a refusal
        assert sim.server.pump.run_mode == 0
        after = sim.call(
            lambda: (sim.server.pump.value("rate_ml_h"), sim.server.pump.value("syringe_diameter_mm"))
        )
        assert after == state
        os.write(fd, b"0VER\r")
        assert _ne_replies(read_n(fd, 17)) == ["00SNE1000V3.928"]


# ----- function codes outside the map -----------------------------------------------------------------

OUTSIDE = [code for code in range(256) if code not in (3, 4, 6, 16, 23)]


def test_every_function_code_outside_the_map_is_exception_1_and_changes_nothing(sim: ThreadedSim) -> None:
    """Coil writes above all: fc5 'coil 22 ON' and fc15 once started the motor over TCP."""
    _calm(sim)
    sim.call(lambda: sim.server.pump.write_registers(23, [1]))  # no alarm latched: a start would work
    before = sim.registers()
    payloads = {5: bytes([0, 22, 0xFF, 0]), 15: bytes([0, 22, 0, 1, 1, 1])}
    with sim.tcp() as sock:
        for code in OUTSIDE:
            pdu = bytes([code]) + payloads.get(code, bytes([0, 22, 0, 1]))
            sock.sendall(mbap(code, 1, pdu))
            [(transaction, unit, reply)] = split_mbap(read_n(sock, 9))
            assert (transaction, unit, reply) == (code, 1, bytes([code | 0x80, 1])), code
        assert read_until_quiet(sock, 0.05) == b""  # nothing more than one reply each
    with sim.pty("modbus_rtu_pty") as fd:
        for code in OUTSIDE:
            pdu = bytes([code]) + payloads.get(code, bytes([0, 22, 0, 1]))
            os.write(fd, rtu(1, pdu))
            assert split_rtu(read_n(fd, 5)) == [bytes([code | 0x80, 1])], code
        assert read_until_quiet(fd, 0.05) == b""
    assert sim.registers() == before
    assert sim.server.pump.run_mode == 0


@pytest.mark.parametrize("endpoint", ["tcp", "rtu"])
def test_structure_and_quantity_errors_are_exception_3_on_both(sim: ThreadedSim, endpoint: str) -> None:
    _calm(sim)
    cases = [
        (read_pdu(0, 0), 3),
        (read_pdu(0, 126), 3),
        (read_pdu(0xFFFF, 126, function=4), 3),
        (read_pdu(8, 1), 2),
        (bytes([16, 0, 25, 0, 0, 0]), 3),
        (bytes([16, 0, 25, 0, 1, 4, 0, 100, 0, 0]), 3),
        (bytes([16, 0, 25, 0, 124, 8]) + bytes(8), 3),  # more than 123 registers
        (write1_pdu(23, 1), None),  # a write-only register: echoed exactly
        (write1_pdu(26, 1), None),
    ]
    for request, code in cases:
        if endpoint == "tcp":
            with sim.tcp() as sock:
                sock.sendall(mbap(1, 1, request))
                [(_, _, reply)] = split_mbap(read_until_quiet(sock, 0.05))
        else:
            with sim.pty("modbus_rtu_pty") as fd:
                os.write(fd, rtu(1, request))
                [reply] = split_rtu(read_until_quiet(fd, 0.05))
        expected = request if code is None else bytes([request[0] | 0x80, code])
        assert reply == expected, (request.hex(" "), reply.hex(" "))


def test_the_fuzz_addresses_never_name_a_communication_fault() -> None:
    """The generators' exclusion is what keeps the line usable; keep it in step with the map."""
    regmap = load_register_map()
    assert {regmap[name].address for name in COMM_FAULTS} == set(range(114, 118))
