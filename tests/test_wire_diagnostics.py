"""Wire diagnostics: one structured event per rejected frame on every endpoint (endpoint, peer, reason,
first bytes in hex, length), rate-limited so a flood cannot fill a disk, never a traceback; pymodbus's
own logger quiet unless ``--debug``; ``ketapump sim --debug`` traces every frame."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time

import pytest

from ketapump.sim.server import WireDiagnostics
from ketapump.wire import open_transport
from ketapump.wire.budget import LogBudget
from ketapump.wire.transports.base import DISCARD_LOG_BURST, DISCARD_LOG_PER_S
from simhelpers import sim_process
from wirehelpers import ThreadedSim, crc16, mbap, read_pdu, read_until_quiet, rtu


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == name]


def test_a_log_budget_allows_a_burst_then_a_steady_rate_and_counts_the_rest() -> None:
    clock = FakeClock()
    budget = LogBudget(3, 2.0, clock)
    assert [budget.allow() for _ in range(5)] == [True, True, True, False, False]
    assert budget.suppressed == 2
    budget.left_out(4)  # counted elsewhere (a codec's rejects not kept)
    assert budget.take_suppressed() == 6 and budget.suppressed == 0 and budget.take_suppressed() == 0
    clock.t = 0.25  # half a token: still none
    assert not budget.allow()
    clock.t = 0.5  # 2 a second: one token since the start
    assert budget.allow() and not budget.allow()
    clock.t = 100.0  # refilled to the burst, never past it
    assert [budget.allow() for _ in range(4)] == [True, True, True, False]
    assert budget.take_suppressed() == 3


@pytest.mark.parametrize(
    ("url", "source"),
    [
        ("modbus-rtu:///dev/no-such-pty?baud=19200&unit=1", "rtu.py"),
        ("nesp:///dev/no-such-pty?address=0&baud=19200", "serial.py"),
        ("harvard:///dev/no-such-pty?address=0&baud=115200", "serial.py"),
    ],
)
def test_a_serial_links_discards_are_counted_whole_and_logged_within_a_budget(
    caplog: pytest.LogCaptureFixture, url: str, source: str
) -> None:
    """Garbage on a serial line (tests/test_modbus_tcp_master.py floods Modbus TCP the same way): each
    discard counted, a burst of warnings naming the link's own code, then one a second, the next one
    logged saying how many were left out."""
    link = open_transport(url)
    clock = FakeClock()
    link._discard_log = LogBudget(DISCARD_LOG_BURST, DISCARD_LOG_PER_S, clock)
    caplog.set_level(logging.WARNING, logger="ketapump.transport")
    for _ in range(DISCARD_LOG_BURST + 5):
        link._discard(b"\x00\xff garbage", "bytes that are no reply")  # type: ignore[attr-defined]
    assert link.discarded == DISCARD_LOG_BURST + 5  # type: ignore[attr-defined]
    records = [r for r in caplog.records if "discarded bytes that are no reply" in r.getMessage()]
    assert len(records) == DISCARD_LOG_BURST
    assert all(r.pathname.endswith(source) for r in records)
    assert not any("not logged" in r.getMessage() for r in records)
    caplog.clear()
    clock.t = 1.0 / DISCARD_LOG_PER_S
    link._discard(b"more", "bytes that are no reply")  # type: ignore[attr-defined]
    [record] = caplog.records
    assert record.getMessage().endswith("(5 more discards not logged)")


def test_rejections_are_rate_limited_and_the_left_out_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ketapump.sim")
    clock = FakeClock()
    diagnostics = WireDiagnostics("modbus_rtu", clock=clock)
    bad = [("bad CRC", bytes(range(16)), 300)] * 100
    diagnostics.rejected("/dev/pts/9", (bad, 7))  # 7 more the codec did not even keep
    events = _events(caplog, "frame_rejected")
    assert len(events) == WireDiagnostics.BURST
    assert events[0] == {
        "event": "frame_rejected",
        "endpoint": "modbus_rtu",
        "peer": "/dev/pts/9",
        "reason": "bad CRC",
        "head": " ".join(f"{b:02x}" for b in range(16)),
        "length": 300,
        "suppressed": 7,
        "logger": "ketapump.sim.wire",
        "level": "warning",
        "timestamp": events[0]["timestamp"],
    }
    clock.t = 1.0  # one second refills PER_S tokens
    diagnostics.rejected("/dev/pts/9", (bad[:10], 0))
    later = _events(caplog, "frame_rejected")[WireDiagnostics.BURST :]
    assert len(later) == WireDiagnostics.PER_S
    assert later[0]["suppressed"] == 100 - WireDiagnostics.BURST  # the flood's left-outs, reported once
    assert all("suppressed" not in e for e in later[1:])


def test_every_endpoint_reports_its_rejected_frames(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ketapump.sim")
    with ThreadedSim(pace=False) as sim:
        with sim.tcp() as sock:
            sock.sendall(mbap(1, 1, read_pdu(0, 1), protocol=9))
            read_until_quiet(sock, 0.1)
            peer = "{}:{}".format(*sock.getsockname())
        with sim.pty("modbus_rtu_pty") as fd:
            frame = bytearray(rtu(1, read_pdu(0, 1)))
            frame[-1] ^= 0xFF
            os.write(fd, bytes(frame))
            assert read_until_quiet(fd, 0.1) == b""  # silent
        with sim.pty("nesp_pty") as fd:
            os.write(fd, b"\x02\x03")
            assert read_until_quiet(fd, 0.1).endswith(b"?COM\x03")
        rtu_path, nesp_path = sim.server.endpoints["modbus_rtu_pty"], sim.server.endpoints["nesp_pty"]
    events = {e["endpoint"]: e for e in _events(caplog, "frame_rejected")}
    assert events["modbus_tcp"]["peer"] == peer
    assert events["modbus_tcp"]["reason"] == "protocol id 9 is not Modbus (0)"
    assert events["modbus_rtu"]["peer"] == rtu_path and events["modbus_rtu"]["reason"] == "bad CRC"
    assert events["modbus_rtu"]["head"] == bytes(frame).hex(" ")
    assert events["nesp"]["peer"] == nesp_path
    assert events["nesp"]["reason"] == "safe packet length byte 3 (at least 4)"
    assert not any(r.exc_info for r in caplog.records)


def test_a_flood_of_rejected_frames_is_bounded_and_fully_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ketapump.sim")
    flood = 5_000
    with ThreadedSim(pace=False) as sim, sim.pty("modbus_rtu_pty") as fd:
        frame = rtu(2, read_pdu(0, 1))  # valid, for another unit: silence, and a rejection each
        t0 = time.monotonic()
        for _ in range(flood // 500):  # a PTY holds a few kB: feed it as a line would, in bursts
            data = frame * 500
            while data:
                data = data[os.write(fd, data) :]
            time.sleep(0.01)
        time.sleep(1.0 / WireDiagnostics.PER_S + 0.3)  # a token for the report of the left-out ones
        os.write(fd, frame)
        time.sleep(0.3)
        elapsed = time.monotonic() - t0
    events = _events(caplog, "frame_rejected")
    assert len(events) <= WireDiagnostics.BURST + WireDiagnostics.PER_S * elapsed + 1
    assert len(events) + sum(int(e.get("suppressed", 0)) for e in events) == flood + 1  # type: ignore[call-overload]
    assert all(len(str(e["head"])) <= 16 * 3 for e in events)


def test_ketapump_sim_writes_json_diagnostics_and_traces_only_with_debug() -> None:
    for debug in (False, True):
        with sim_process(*(["--debug"] if debug else [])) as (proc, endpoints):
            host, port = str(endpoints["modbus_tcp"]).rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=2) as sock:
                sock.sendall(mbap(1, 1, read_pdu(0, 4)))
                assert len(read_until_quiet(sock, 0.2)) == 17
                sock.sendall(mbap(2, 1, read_pdu(0, 1), length=0))  # an impossible header
                read_until_quiet(sock, 0.2)
            fd = os.open(str(endpoints["modbus_rtu_pty"]), os.O_RDWR | os.O_NOCTTY)
            os.write(fd, b"\x01\x03\x00\x00\x00\x01" + crc16(b"junk"))
            time.sleep(0.2)
            os.close(fd)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert proc.stderr is not None
            proc.stderr.seek(0)
            lines = proc.stderr.read().splitlines()
        records = [json.loads(line) for line in lines]  # every line is JSON: no raw dumps, no tracebacks
        rejected = [r for r in records if r["event"] == "frame_rejected"]
        assert {(r["endpoint"], r["reason"]) for r in rejected} == {
            ("modbus_tcp", "MBAP length 0 outside 2..=254"),
            ("modbus_rtu", "bad CRC"),
        }
        frames = [r for r in records if r["event"] == "frame"]
        if debug:
            assert {(r["endpoint"], r["direction"]) for r in frames} >= {
                ("modbus_tcp", "rx"),
                ("modbus_tcp", "tx"),
                ("modbus_rtu", "rx"),
            }
        else:
            assert frames == []
        assert all(r["logger"].startswith("ketapump.") for r in records)
