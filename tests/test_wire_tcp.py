"""The simulator's Modbus TCP connections: stream hygiene (impossible headers close, idle and
non-reading clients are closed), unit-id rules, many clients at once, and diagnostics without
tracebacks."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from ketapump import _core
from wirehelpers import ThreadedSim, mbap, read_n, read_pdu, read_until_quiet, split_mbap, write1_pdu

IDENTITY = bytes.fromhex("03 08 4b 50 00 01 00 64 00 01")


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(_core.SimPump("bd-plastipak-50", seed=3), pace=False, tcp_idle_timeout_s=0.5) as running:
        yield running


def _closed(sock: socket.socket, within_s: float = 2.0) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) within ``within_s``."""
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


@pytest.mark.parametrize(
    "header",
    [
        mbap(1, 1, read_pdu(0, 1), protocol=1),
        mbap(1, 1, read_pdu(0, 1), protocol=0xFFFF),
        mbap(1, 1, b"", length=0),
        mbap(1, 1, b"", length=1),
        mbap(1, 1, read_pdu(0, 1), length=255),
        mbap(1, 1, read_pdu(0, 1), length=0xFFFF),
    ],
    ids=["protocol-1", "protocol-ffff", "length-0", "length-1", "length-255", "length-ffff"],
)
def test_an_impossible_header_closes_the_connection(
    sim: ThreadedSim, header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ketapump.sim")
    with sim.tcp() as sock:
        sock.sendall(mbap(1, 1, read_pdu(0, 4)))
        assert split_mbap(read_n(sock, 17)) == [(1, 1, IDENTITY)]
        sock.sendall(header + mbap(2, 1, read_pdu(0, 4)))
        assert _closed(sock)
    # One event for the rejected frame, one for the close; no traceback anywhere.
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    assert [e["event"] for e in events] == ["frame_rejected", "connection_closed"], events
    assert events[0]["head"].startswith(header[:6].hex(" ")) and events[0]["endpoint"] == "modbus_tcp"
    assert not any(r.exc_info for r in caplog.records)
    with sim.tcp() as sock:  # the server itself is fine
        sock.sendall(mbap(3, 1, read_pdu(0, 4)))
        assert split_mbap(read_n(sock, 17)) == [(3, 1, IDENTITY)]


def test_garbage_with_a_plausible_header_is_answered_then_the_stream_goes_on(sim: ThreadedSim) -> None:
    """Framing garbage on a kept-open connection either closes it or is answered, never left pending:
    a valid header carrying a junk PDU gets an exception, and the next request is answered."""
    with sim.tcp() as sock:
        sock.sendall(mbap(1, 1, b"\x42\x99\x98") + mbap(2, 1, read_pdu(0, 4)))
        assert split_mbap(read_n(sock, 9 + 17)) == [(1, 1, bytes([0xC2, 1])), (2, 1, IDENTITY)]


def test_an_idle_connection_is_closed_and_a_talking_one_is_not(sim: ThreadedSim) -> None:
    with sim.tcp() as idle, sim.tcp() as talking:
        t0 = time.monotonic()
        for i in range(8):
            talking.sendall(mbap(i, 1, read_pdu(0, 4)))
            assert split_mbap(read_n(talking, 17)) == [(i, 1, IDENTITY)]
            time.sleep(0.1)
        assert _closed(idle, within_s=2.0)
        assert time.monotonic() - t0 >= 0.5  # not before the idle timeout
        talking.sendall(mbap(99, 1, read_pdu(0, 4)))
        assert split_mbap(read_n(talking, 17)) == [(99, 1, IDENTITY)]


def test_a_client_that_never_reads_is_disconnected(
    sim: ThreadedSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ketapump.sim")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(sim.tcp_address)
    burst = b"".join(mbap(i, 1, read_pdu(30, 19)) for i in range(1000))
    with pytest.raises(OSError):  # reset by the server once its unread replies pass the limit
        for _ in range(200):
            sock.sendall(burst)
            time.sleep(0.005)
    sock.close()
    assert any(
        isinstance(r.msg, dict) and r.msg.get("reason") == "client not reading its replies"
        for r in caplog.records
    )


def test_unit_ids_the_pump_answers_and_the_gateway_exception_for_others(
    sim: ThreadedSim, caplog: pytest.LogCaptureFixture
) -> None:
    with sim.tcp() as sock:
        for unit in (1, 0, 255):
            sock.sendall(mbap(unit, unit, read_pdu(0, 4)))
            assert split_mbap(read_n(sock, 17)) == [(unit, unit, IDENTITY)]
        for unit in (2, 7, 247):
            sock.sendall(mbap(unit, unit, write1_pdu(22, 1)))
            assert split_mbap(read_n(sock, 9)) == [(unit, unit, bytes([0x86, 0x0B]))]
    assert sim.server.pump.run_mode == 0
    assert not any(r.exc_info or r.levelno >= logging.ERROR for r in caplog.records)


def test_two_hundred_clients_at_once() -> None:
    with ThreadedSim(pace=False) as sim:  # the default idle timeout: connecting 200 takes a while
        _two_hundred_clients(sim)


def _two_hundred_clients(sim: ThreadedSim) -> None:
    socks = [socket.create_connection(sim.tcp_address, timeout=5) for _ in range(200)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(mbap(i, 1, read_pdu(0, 4)))
        for i, sock in enumerate(socks):
            assert split_mbap(read_n(sock, 17, limit_s=5)) == [(i, 1, IDENTITY)]
    finally:
        for sock in socks:
            sock.close()
    with sim.tcp() as sock:
        sock.sendall(mbap(1, 1, read_pdu(0, 4)))
        assert split_mbap(read_n(sock, 17)) == [(1, 1, IDENTITY)]


def test_delayed_replies_keep_their_order_and_dropped_ones_are_never_sent(sim: ThreadedSim) -> None:
    sim.call(lambda: sim.server.pump.inject("fault_comm_delay_ms", 150))
    with sim.tcp() as sock:
        sock.sendall(mbap(1, 1, read_pdu(0, 4)))
        sim.call(lambda: sim.server.pump.inject("fault_comm_delay_ms", 0))
        sock.sendall(mbap(2, 1, read_pdu(0, 4)))
        # The second was answered at once, but leaves after the first.
        assert [t for t, _, _ in split_mbap(read_n(sock, 34))] == [1, 2]
        sim.call(lambda: sim.server.pump.inject("fault_comm_drop_pct", 100))
        sock.sendall(mbap(3, 1, read_pdu(0, 4)))
        sim.call(lambda: sim.server.pump.inject("fault_comm_drop_pct", 0))
        sock.sendall(mbap(4, 1, read_pdu(0, 4)))
        assert split_mbap(read_n(sock, 17)) == [(4, 1, IDENTITY)]
        assert read_until_quiet(sock, 0.2) == b""
