"""The bridge's Modbus TCP master against a scripted server on a real loopback socket: every reply must
answer its own request (transaction id, unit, function, byte count, echo), anything else fails the
attempt with a clear error and is never used; a refusal is an answer, not retried; a stream that is
not Modbus TCP drops the connection; a request the protocol cannot carry is refused before it is
sent. The contract suite (tests/test_contract.py) and tests/test_one_transaction.py run the same
master against the simulator's server on well-formed traffic."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump import _core
from ketapump.clock import ScaledClock
from ketapump.errors import PumpTimeoutError, TransportError
from ketapump.wire.budget import LogBudget
from ketapump.wire.transports import open_transport
from ketapump.wire.transports.base import (
    DISCARD_LOG_BURST,
    DISCARD_LOG_PER_S,
    PumpRefusedError,
    RegisterTransport,
)
from ketapump.wire.transports.modbus import (
    RECONNECT_LOG_BURST,
    RECONNECT_LOG_PER_S,
    ModbusTcpTransport,
    _Connection,
)
from wirehelpers import mbap

Frame = tuple[int, int, bytes]  # transaction, unit, PDU
#: What the scripted server sends for a request: chunks written one after another (None: hang up).
Answer = Callable[[Frame], list[bytes] | None]


def no_warnings(message: str, *args: object) -> None:
    """A connection's discard warnings, where a test checks only the count."""


def register(address: int) -> int:
    return (address * 7 + 3) % 0x10000


def normal(frame: Frame) -> list[bytes]:
    """A well-formed reply: register n holds ``register(n)``; writes are echoed."""
    transaction, unit, pdu = frame
    function = pdu[0]
    if function in (3, 4, 23):
        address, count = struct.unpack_from(">HH", pdu, 1)
        words = [register(address + i) for i in range(count)]
        return [mbap(transaction, unit, struct.pack(f">BB{count}H", function, 2 * count, *words))]
    return [mbap(transaction, unit, pdu[:5])]


class ScriptedPump:
    """A Modbus TCP server on 127.0.0.1 that answers each request with ``answer(frame)``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[Frame] = []
        self.connections = 0
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def hang_up(self) -> None:
        """Closes every connection between requests, as a pump or gateway closing idle links does."""
        for writer in self._writers:
            writer.close()
            await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                transaction, protocol, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                assert protocol == 0
                frame = (transaction, unit, await reader.readexactly(length - 1))
                self.requests.append(frame)
                chunks = self.answer(frame)
                if chunks is None:
                    writer.close()
                    return
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the master hung up
        finally:
            writer.close()


@asynccontextmanager
async def scripted(
    answer: Answer, *, retries: int = 0, timeout: float = 5.0
) -> AsyncIterator[tuple[ScriptedPump, ModbusTcpTransport]]:
    pump = ScriptedPump(answer)
    server = await asyncio.start_server(pump._serve, "127.0.0.1", 0)
    pump.port = server.sockets[0].getsockname()[1]
    transport = open_transport(f"modbus-tcp://127.0.0.1:{pump.port}?timeout={timeout}&retries={retries}")
    assert isinstance(transport, ModbusTcpTransport)
    try:
        await transport.connect()
        yield pump, transport
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()


async def in_flight(
    pump: ScriptedPump, transport: ModbusTcpTransport
) -> tuple[asyncio.Future[list[int]], _Connection]:
    """A read sent and waiting for its reply (the pump holds it), and the connection it waits on."""
    request = asyncio.ensure_future(transport.read_registers(10, 1))
    while not pump.requests:
        await asyncio.sleep(0.001)
    assert transport._connection is not None
    return request, transport._connection


async def until_disconnected(transport: ModbusTcpTransport) -> None:
    """Returns once the master has seen its connection end (the pump's FIN is in)."""
    while transport.connected:
        await asyncio.sleep(0.001)


def test_reads_writes_and_function_23_on_well_formed_replies() -> None:
    async def body() -> None:
        async with scripted(normal) as (pump, transport):
            assert await transport.read_registers(30, 3) == [register(30), register(31), register(32)]
            await transport.write_registers(24, [9])
            await transport.write_registers(20, [1, 2])
            assert await transport.write_and_read_registers(24, [5], 100, 2) == [register(100), register(101)]
            pdus = [pdu for _, _, pdu in pump.requests]
            assert pdus == [
                struct.pack(">BHH", 3, 30, 3),
                struct.pack(">BHH", 6, 24, 9),
                struct.pack(">BHHBHH", 16, 20, 2, 4, 1, 2),
                struct.pack(">BHHHHBH", 23, 100, 2, 24, 1, 2, 5),
            ]
            transactions = [t for t, _, _ in pump.requests]
            assert len(set(transactions)) == 4 and all(u == 1 for _, u, _ in pump.requests)

    asyncio.run(body())


def test_a_reply_read_byte_by_byte_and_two_replies_in_one_segment() -> None:
    held: list[Frame] = []

    def answer(frame: Frame) -> list[bytes]:
        if struct.unpack_from(">H", frame[2], 1)[0] == 40:
            # Two concurrent reads at 40: both replies in one write, the later request's first.
            held.append(frame)
            if len(held) < 2:
                return []
            return [b"".join(reversed([normal(f)[0] for f in held]))]
        reply = normal(frame)[0]
        return [reply[i : i + 1] for i in range(len(reply))]

    async def body() -> None:
        async with scripted(answer) as (_, transport):
            assert await transport.read_registers(7, 2) == [register(7), register(8)]
            a, b = await asyncio.gather(transport.read_registers(40, 1), transport.read_registers(40, 3))
            assert a == [register(40)] and b == [register(40), register(41), register(42)]

    asyncio.run(body())


def test_a_reply_no_request_waits_for_is_discarded_and_never_used() -> None:
    def answer(frame: Frame) -> list[bytes]:
        transaction, unit, pdu = frame
        stale = struct.pack(">BBHH", pdu[0], 4, 0xDEAD, 0xBEEF)  # a late answer to an earlier read
        return [mbap((transaction - 1) % 0x10000, unit, stale), *normal(frame)]

    async def body() -> None:
        async with scripted(answer) as (_, transport):
            assert await transport.read_registers(10, 2) == [register(10), register(11)]
            assert transport.discarded == 1
            assert await transport.read_registers(10, 2) == [register(10), register(11)]
            assert transport.discarded == 2

    asyncio.run(body())


def test_a_flood_of_stray_replies_is_counted_whole_and_logged_within_a_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A device answering at random cannot flood the log: a burst of warnings, then at most one a
    second, each discard still counted, and the next warning logged says how many were left out."""
    clock = [0.0]

    def strays_then_the_reply(frame: Frame) -> list[bytes]:
        transaction, unit, _ = frame
        strays = [
            mbap((transaction + 1000 + i) % 0x10000, unit, struct.pack(">BBH", 3, 2, i)) for i in range(100)
        ]
        return [b"".join(strays), *normal(frame)]

    async def body() -> None:
        async with scripted(strays_then_the_reply) as (_, transport):
            transport._discard_log = LogBudget(DISCARD_LOG_BURST, DISCARD_LOG_PER_S, lambda: clock[0])
            caplog.set_level(logging.WARNING, logger="ketapump.transport")
            assert await transport.read_registers(10, 1) == [register(10)]
            assert transport.discarded == 100
            warnings = [r.getMessage() for r in caplog.records if "discarded a reply" in r.getMessage()]
            assert len(warnings) == DISCARD_LOG_BURST
            assert all(r.pathname.endswith("modbus.py") for r in caplog.records)  # the master's own line
            assert not any("not logged" in w for w in warnings)
            caplog.clear()
            clock[0] += 1.0 / DISCARD_LOG_PER_S  # one more warning's worth
            assert await transport.read_registers(10, 1) == [register(10)]
            assert transport.discarded == 200
            [warning] = [r.getMessage() for r in caplog.records if "discarded a reply" in r.getMessage()]
            assert warning.endswith(f"({100 - DISCARD_LOG_BURST} more discards not logged)")

    asyncio.run(body())


def reply_pdu(pdu: bytes) -> Answer:
    return lambda frame: [mbap(frame[0], frame[1], pdu)]


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (lambda f: [mbap(f[0], 2, normal(f)[0][7:])], "the reply came from unit 2, not 1"),
        (reply_pdu(struct.pack(">BBH", 4, 2, 1)), "not its reply: 04 02 00 01"),
        (reply_pdu(struct.pack(">BBH", 3, 4, 1)), "2 registers asked, the reply: 03 04 00 01"),
        (reply_pdu(struct.pack(">BBHHH", 3, 4, 1, 2, 3)), "2 registers asked"),
        (reply_pdu(struct.pack(">BBHH", 3, 5, 1, 2)), "2 registers asked, the reply: 03 05 00 01 00 02"),
        (reply_pdu(bytes([0x83, 2, 0])), "not its reply: 83 02 00"),
        (reply_pdu(bytes([0x83])), "not its reply: 83"),
    ],
    ids=["other-unit", "other-function", "short", "long", "byte-count", "long-exception", "short-exception"],
)
def test_a_read_reply_that_does_not_answer_the_request_fails_the_attempt(answer: Answer, why: str) -> None:
    async def body() -> None:
        async with scripted(answer, retries=1) as (pump, transport):
            with pytest.raises(TransportError, match="failed after 2 attempts") as failed:
                await transport.read_registers(10, 2)
            assert why in str(failed.value) and "127.0.0.1" in str(failed.value)
            assert not isinstance(failed.value, PumpRefusedError | PumpTimeoutError)
            assert len(pump.requests) == 2 and pump.connections == 2  # retried, on a new connection

    asyncio.run(body())


@pytest.mark.parametrize(
    ("values", "echo"),
    [
        ([9], struct.pack(">BHH", 6, 24, 8)),
        ([9], struct.pack(">BHH", 6, 25, 9)),
        ([1, 2], struct.pack(">BHH", 16, 24, 3)),
        ([1, 2], struct.pack(">BHH", 16, 23, 2)),
    ],
    ids=[
        "function-6-other-value",
        "function-6-other-address",
        "function-16-other-quantity",
        "function-16-other-address",
    ],
)
def test_a_write_whose_echo_differs_fails(values: list[int], echo: bytes) -> None:
    async def body() -> None:
        async with scripted(reply_pdu(echo)) as (_, transport):
            with pytest.raises(TransportError, match="the reply does not echo the write"):
                await transport.write_registers(24, values)

    asyncio.run(body())


@pytest.mark.parametrize(
    ("call", "function"),
    [
        (lambda t: t.read_registers(0xFF00, 1), 3),
        (lambda t: t.write_registers(0xFF00, [1]), 6),
        (lambda t: t.write_registers(0xFF00, [1, 2]), 16),
        (lambda t: t.write_and_read_registers(24, [1], 0xFF00, 1), 23),
    ],
    ids=["function-3", "function-6", "function-16", "function-23"],
)
def test_an_exception_reply_is_a_refusal_answered_once(
    call: Callable[[ModbusTcpTransport], Awaitable[object]], function: int
) -> None:
    async def body() -> None:
        async with scripted(reply_pdu(bytes([0x80 | function, 2])), retries=2) as (pump, transport):
            with pytest.raises(
                PumpRefusedError, match=r"Modbus exception 2 \(illegal data address\)"
            ) as refused:
                await call(transport)
            assert refused.value.code == 2
            assert len(pump.requests) == 1 and pump.requests[0][2][0] == function

    asyncio.run(body())


def test_an_exception_reply_from_another_unit_is_not_a_refusal() -> None:
    async def body() -> None:
        async with scripted(lambda f: [mbap(f[0], 9, bytes([0x83, 2]))]) as (_, transport):
            with pytest.raises(TransportError, match="the reply came from unit 9, not 1") as failed:
                await transport.read_registers(10, 2)
            assert not isinstance(failed.value, PumpRefusedError)

    asyncio.run(body())


@pytest.mark.parametrize(
    "header",
    [
        lambda t: struct.pack(">HHHB", t, 1, 5, 1),  # protocol id 1
        lambda t: struct.pack(">HHHB", t, 0, 1, 1),  # length 1: no PDU
        lambda t: struct.pack(">HHHB", t, 0, 255, 1),  # length beyond 254
    ],
    ids=["protocol-id", "length-1", "length-255"],
)
def test_a_stream_that_is_not_modbus_tcp_fails_the_request(header: Callable[[int], bytes]) -> None:
    async def body() -> None:
        async with scripted(lambda f: [header(f[0]) + b"\x03\x04\x00\x01\x00\x02"]) as (_, transport):
            with pytest.raises(TransportError, match="not a Modbus TCP frame") as failed:
                await transport.read_registers(10, 2)
            assert not isinstance(failed.value, PumpTimeoutError)

    asyncio.run(body())


def test_a_bad_header_fails_every_waiting_request_and_the_rest_of_the_stream_is_ignored() -> None:
    """Once a header cannot be Modbus TCP, no later byte can be trusted to start a frame: the valid
    reply behind it is not handed over, every waiting request fails, and so does the connection."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        connection = _Connection("modbus-tcp://test", no_warnings)
        waiting = {t: loop.create_future() for t in (1, 2)}
        connection.waiting.update(waiting)
        reply = struct.pack(">BBH", 3, 2, 7)
        connection.data_received(struct.pack(">HHHB", 1, 1, 5, 1) + reply + mbap(2, 1, reply))
        connection.data_received(mbap(1, 1, reply))
        for future in waiting.values():
            with pytest.raises(
                TransportError, match="modbus-tcp://test: not a Modbus TCP frame: 00 01 00 01"
            ):
                future.result()
        assert connection.waiting == {} and connection.discarded == 0
        assert connection.failed is not None and connection.failed.startswith("not a Modbus TCP frame")

    asyncio.run(body())


def test_a_pump_that_hangs_up_fails_every_waiting_request_at_once_not_at_the_timeout() -> None:
    def answer(frame: Frame) -> list[bytes] | None:
        return [] if frame[2] == struct.pack(">BHH", 3, 10, 2) else None  # hangs up at the second

    async def body() -> None:
        async with scripted(answer, timeout=30.0) as (pump, transport):
            both = asyncio.gather(
                transport.read_registers(10, 2), transport.read_registers(11, 2), return_exceptions=True
            )
            results = await asyncio.wait_for(both, 10.0)
            assert len(pump.requests) == 2
            for failed in results:
                assert isinstance(failed, TransportError) and not isinstance(failed, PumpTimeoutError)
                assert "connection closed by the pump" in str(failed)

    asyncio.run(body())


def test_a_link_the_pump_closed_while_idle_is_not_connected_and_the_next_request_reconnects() -> None:
    """With no retries, the first request after the pump closed an idle connection still succeeds: the
    master knows the connection is gone, so the request reconnects first instead of failing on it."""

    async def body() -> None:
        async with scripted(normal, retries=0) as (pump, transport):
            assert await transport.read_registers(10, 1) == [register(10)]
            assert transport.connected
            await pump.hang_up()
            await asyncio.wait_for(until_disconnected(transport), 10.0)
            assert await transport.read_registers(11, 1) == [register(11)]
            assert transport.connected and pump.connections == 2
            await transport.connect()  # connected again: nothing to do
            assert pump.connections == 2

    asyncio.run(body())


def test_requests_at_once_after_the_pump_closed_an_idle_link_share_one_new_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Requests (and a connect) made together after an idle close all wait for the one new
    connection: none goes out on the half-made one, none fails, and the reconnection says why."""

    async def body() -> None:
        async with scripted(normal, retries=0) as (pump, transport):
            await pump.hang_up()
            await asyncio.wait_for(until_disconnected(transport), 10.0)
            caplog.set_level(logging.INFO, logger="ketapump.transport")
            together = asyncio.gather(
                transport.read_registers(1, 1),
                transport.read_registers(2, 1),
                transport.connect(),
                transport.read_registers(3, 1),
            )
            assert await asyncio.wait_for(together, 10.0) == [
                [register(1)],
                [register(2)],
                None,
                [register(3)],
            ]
            assert transport.connected and pump.connections == 2
            logged = [(r.levelno, r.getMessage()) for r in caplog.records]
            assert logged == [(logging.INFO, f"{transport.url}: reconnecting: connection closed by the pump")]

    asyncio.run(body())


def test_requests_failed_together_each_retry_on_one_new_connection() -> None:
    """The pump hangs up with two requests waiting: both fail at once, and each retry uses the one new
    connection. A failed attempt ends only the connection it used, never the one another request's
    retry is making (the second failure closed the first retry's half-made connection before)."""
    hung_up = [False]

    def answer(frame: Frame) -> list[bytes] | None:
        if hung_up[0]:
            return normal(frame)
        if frame[2] == struct.pack(">BHH", 3, 11, 1):
            hung_up[0] = True
            return None  # hangs up at the second request, the first still waiting
        return []

    async def body() -> None:
        async with scripted(answer, retries=1) as (pump, transport):
            both = asyncio.gather(transport.read_registers(10, 1), transport.read_registers(11, 1))
            assert await asyncio.wait_for(both, 10.0) == [[register(10)], [register(11)]]
            assert pump.connections == 2 and transport.connected

    asyncio.run(body())


def test_a_failed_attempt_ends_only_a_connection_of_its_own() -> None:
    """Each branch of ``_drop``: an attempt that failed on a connection another request has since
    replaced, or before it had one while another request connects or has connected, leaves that
    connection alone; one that failed on the current connection, or left a half-made orphan, ends it."""

    async def body() -> None:
        async with scripted(normal) as (_, transport):
            live = transport._connection
            assert live is not None and live.transport is not None
            old = _Connection(transport.url, no_warnings)
            await transport._drop(old)  # failed on a connection already replaced
            await transport._drop(None)  # failed before it had one; another request's is live
            assert transport._connection is live and live.failed is None
            await transport._drop(live)  # failed on the current one
            assert transport._connection is None and live.failed == "connection closed"

            half_made = transport._connection = _Connection(transport.url, no_warnings)
            async with transport._connecting:  # another request is making it
                await transport._drop(None)
            assert transport._connection is half_made and half_made.failed is None
            await transport._drop(None)  # nobody is: this attempt's own orphan
            assert transport._connection is None and half_made.failed == "connection closed"

    asyncio.run(body())


def test_a_link_closed_after_every_reply_logs_its_reconnections_within_a_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway whose idle timeout is shorter than the poll period: every request reconnects, and
    the log gets a few lines, then one a minute saying how many were left out."""
    clock = [0.0]

    async def body() -> None:
        async with scripted(normal) as (pump, transport):
            transport._reconnect_log = LogBudget(RECONNECT_LOG_BURST, RECONNECT_LOG_PER_S, lambda: clock[0])
            caplog.set_level(logging.INFO, logger="ketapump.transport")
            for address in range(RECONNECT_LOG_BURST + 3):
                await pump.hang_up()
                await asyncio.wait_for(until_disconnected(transport), 10.0)
                assert await transport.read_registers(address, 1) == [register(address)]
            lines = [r.getMessage() for r in caplog.records]
            assert (
                lines
                == [f"{transport.url}: reconnecting: connection closed by the pump"] * RECONNECT_LOG_BURST
            )
            caplog.clear()
            clock[0] += 1 / RECONNECT_LOG_PER_S
            await pump.hang_up()
            await asyncio.wait_for(until_disconnected(transport), 10.0)
            assert await transport.read_registers(99, 1) == [register(99)]
            [line] = [r.getMessage() for r in caplog.records]
            assert line.endswith("connection closed by the pump (3 more reconnections not logged)")
            assert pump.connections == RECONNECT_LOG_BURST + 5

    asyncio.run(body())


def test_connect_replaces_a_link_the_pump_closed() -> None:
    async def body() -> None:
        async with scripted(normal) as (pump, transport):
            await pump.hang_up()
            await asyncio.wait_for(until_disconnected(transport), 10.0)
            await asyncio.wait_for(transport.connect(), 10.0)
            assert transport.connected and pump.connections == 2
            assert await transport.read_registers(12, 1) == [register(12)]

    asyncio.run(body())


def test_closing_the_link_fails_a_request_in_flight_at_once() -> None:
    async def body() -> None:
        async with scripted(lambda _: [], timeout=30.0) as (pump, transport):
            request = asyncio.ensure_future(transport.read_registers(10, 2))
            while not pump.requests:
                await asyncio.sleep(0.001)
            await transport.close()
            with pytest.raises(TransportError, match="connection closed") as failed:
                await asyncio.wait_for(request, 10.0)
            assert not isinstance(failed.value, PumpTimeoutError)
            assert not transport.connected

    asyncio.run(body())


def test_no_reply_is_a_timeout_naming_the_endpoint() -> None:
    async def body() -> None:
        async with scripted(lambda _: [], timeout=0.05, retries=1) as (pump, transport):
            with pytest.raises(
                PumpTimeoutError, match=r"read 2 at 10: no answer within 0.05 s after 2 attempts"
            ) as e:
                await transport.read_registers(10, 2)
            assert f"modbus-tcp://127.0.0.1:{pump.port}" in str(e.value)
            assert len(pump.requests) == 2 and pump.connections == 2

    asyncio.run(body())


def test_a_refused_connection_says_cannot_connect() -> None:
    async def body() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        transport = open_transport(f"modbus-tcp://127.0.0.1:{port}?timeout=2")
        with pytest.raises(TransportError, match=rf"modbus-tcp://127\.0\.0\.1:{port}.*cannot connect"):
            await transport.connect()
        assert not transport.connected
        await transport.close()

    asyncio.run(body())


def test_transaction_ids_wrap_from_65535_to_1_never_0() -> None:
    async def body() -> None:
        async with scripted(normal) as (pump, transport):
            transport._transaction = 0xFFFE  # as after 65 534 requests
            for _ in range(3):
                assert await transport.read_registers(10, 1) == [register(10)]
            assert [t for t, _, _ in pump.requests] == [0xFFFF, 1, 2]

    asyncio.run(body())


def test_the_discarded_count_outlives_a_reconnection() -> None:
    stale_first = [True]

    def answer(frame: Frame) -> list[bytes]:
        own = normal(frame)
        if stale_first[0]:
            stale_first[0] = False
            return [mbap(frame[0] ^ 0x100, 1, own[0][7:]), *own]  # a stray reply, then its own
        return [mbap(frame[0], 5, own[0][7:])]  # another unit's

    async def body() -> None:
        async with scripted(answer, retries=1) as (pump, transport):
            assert await transport.read_registers(10, 1) == [register(10)]
            assert transport.discarded == 1
            with pytest.raises(TransportError, match="from unit 5"):
                await transport.read_registers(10, 1)
            assert pump.connections == 2 and transport.discarded == 1  # counted before the reconnection

    asyncio.run(body())


def test_function_4_and_function_16_for_one_register_where_the_map_asks_for_them() -> None:
    async def body() -> None:
        async with scripted(normal) as (pump, transport):
            transport.read_function, transport.write_single = 4, False
            assert await transport.read_registers(30, 2) == [register(30), register(31)]
            await transport.write_registers(24, [9])
            assert [pdu for _, _, pdu in pump.requests] == [
                struct.pack(">BHH", 4, 30, 2),
                struct.pack(">BHHBH", 16, 24, 1, 2, 9),
            ]

    asyncio.run(body())


@pytest.mark.parametrize(
    ("call", "why"),
    [
        (lambda t: t.read_registers(0, 0), "Modbus carries 1 to 125 registers, not 0"),
        (lambda t: t.read_registers(0, 126), "Modbus carries 1 to 125 registers, not 126"),
        (lambda t: t.read_registers(65535, 2), "registers 65535..65536 are not all in 0..65535"),
        (lambda t: t.write_registers(0, list(range(124))), "Modbus carries 1 to 123 registers, not 124"),
        (lambda t: t.write_registers(0, [0x10000]), "a register holds 0..65535"),
        (lambda t: t.write_registers(0, [-1]), "a register holds 0..65535"),
        (lambda t: t.write_registers(0, []), "Modbus carries 1 to 123 registers, not 0"),
        (lambda t: t.write_and_read_registers(0, list(range(122)), 0, 1), "1 to 121 registers, not 122"),
        (lambda t: t.write_and_read_registers(0, [1], 0, 126), "1 to 125 registers, not 126"),
        (lambda t: t.write_and_read_registers(24, [0x10000], 30, 1), "a register holds 0..65535"),
        (lambda t: t.write_and_read_registers(65535, [1, 2], 30, 1), "registers 65535..65536 are not all"),
        (lambda t: t.write_registers(65534, [1, 2, 3]), "registers 65534..65536 are not all in 0..65535"),
    ],
)
def test_a_request_the_protocol_cannot_carry_is_refused_before_it_is_sent(
    call: Callable[[ModbusTcpTransport], object], why: str
) -> None:
    async def body() -> None:
        async with scripted(normal) as (pump, transport):
            with pytest.raises(TransportError, match=r"127\.0\.0\.1") as failed:
                await call(transport)  # type: ignore[misc]
            assert why in str(failed.value)
            assert pump.requests == []
            # Nothing was sent, retried or lost: the same connection serves the next request.
            assert await transport.read_registers(10, 1) == [register(10)]
            assert pump.connections == 1 and len(pump.requests) == 1

    asyncio.run(body())


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(1, 125), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    stray=st.booleans(),
)
def test_any_split_of_the_stream_hands_each_reply_to_its_own_request(
    counts: list[int], cuts: list[int], stray: bool
) -> None:
    """However TCP segments the replies (and with a reply no request waits for among them), each
    waiting request gets exactly its own reply, in any order of arrival."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        connection = _Connection("modbus-tcp://test", no_warnings)
        futures = {t: loop.create_future() for t in range(1, len(counts) + 1)}
        connection.waiting.update(futures)
        replies = {
            t: struct.pack(f">BB{n}H", 3, 2 * n, *range(t, t + n))
            for t, n in zip(futures, counts, strict=True)
        }
        stream = b"".join(mbap(t, 1, replies[t]) for t in reversed(futures))
        if stray:
            stream = mbap(999, 1, replies[1]) + stream
        positions = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        for a, b in itertools.pairwise(positions):
            connection.data_received(stream[a:b])
        assert {t: f.result() for t, f in futures.items()} == {t: (1, r) for t, r in replies.items()}
        assert connection.waiting == {} and connection.discarded == int(stray)
        assert connection.failed is None

    asyncio.run(body())


def test_a_reply_to_a_request_cancelled_a_moment_before_is_discarded() -> None:
    """A request cancelled by its deadline leaves its future in the table until its task runs again;
    a reply arriving in between is discarded, not set on the cancelled future."""

    async def body() -> None:
        connection = _Connection("modbus-tcp://test", no_warnings)
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        connection.waiting[5] = future
        future.cancel()
        connection.data_received(mbap(5, 1, struct.pack(">BBH", 3, 2, 1)))
        assert connection.discarded == 1 and connection.waiting == {} and connection.failed is None

    asyncio.run(body())


def test_a_reply_that_arrives_in_the_step_its_request_is_cancelled_is_counted_as_discarded() -> None:
    async def body() -> None:
        async with scripted(lambda _: []) as (pump, transport):
            request, connection = await in_flight(pump, transport)
            # The reply and the cancellation in one step, by hand.
            connection.data_received(normal(pump.requests[0])[0])
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            assert transport.discarded == 1

    asyncio.run(body())


def test_a_link_closed_while_it_connects_is_not_connected_and_its_socket_is_aborted() -> None:
    async def body() -> None:
        async with scripted(normal) as (_, transport):
            await transport.close()
            connecting = asyncio.ensure_future(transport.connect())
            while transport._connection is None:  # the connection exists; its socket is connecting
                await asyncio.sleep(0)
            connection = transport._connection
            assert connection.transport is None
            await transport.close()
            with pytest.raises(TransportError, match="the link was closed while connecting"):
                await connecting
            assert not transport.connected
            assert connection.transport is not None and connection.transport.is_closing()

    asyncio.run(body())


def test_two_requests_reconnecting_at_once_share_one_new_connection() -> None:
    async def body() -> None:
        async with scripted(normal, retries=0) as (pump, transport):
            await transport.close()
            a, b = await asyncio.gather(transport.read_registers(10, 1), transport.read_registers(11, 1))
            assert (a, b) == ([register(10)], [register(11)])
            assert pump.connections == 2  # the fixture's, then one for both

    asyncio.run(body())


def test_a_connect_on_a_failed_connection_closes_it_before_making_the_next() -> None:
    async def body() -> None:
        async with scripted(normal) as (pump, transport):
            first = transport._connection
            assert first is not None and first.transport is not None
            await transport._connect()  # a live connection: kept
            assert transport._connection is first and not first.transport.is_closing()
            first.failed = "failed by hand"
            await transport._connect()
            assert transport._connection is not first and first.transport.is_closing()
            assert await transport.read_registers(10, 1) == [register(10)]
            assert pump.connections == 2

    asyncio.run(body())


def test_a_host_name_no_resolver_takes_is_a_transport_error() -> None:
    async def body() -> None:
        transport = open_transport("modbus-tcp://a..b:502?timeout=2")
        with pytest.raises(TransportError, match=r"modbus-tcp://a\.\.b:502.*cannot connect"):
            await transport.connect()
        assert not transport.connected

    asyncio.run(body())


def test_the_in_process_simulators_link_refuses_the_same_requests() -> None:
    """The limits are the base class's: every register link refuses what Modbus cannot carry."""

    async def body() -> None:
        transport = open_transport(
            "sim://", clock=ScaledClock(1.0), pump=_core.SimPump("bd-plastipak-50", seed=1)
        )
        assert isinstance(transport, RegisterTransport)
        await transport.connect()
        with pytest.raises(TransportError, match="read 126 at 0: Modbus carries 1 to 125 registers, not 126"):
            await transport.read_registers(0, 126)
        with pytest.raises(TransportError, match=r"write 1 at 24: a register holds 0\.\.65535, not \[65536"):
            await transport.write_registers(24, [65536])
        await transport.close()

    asyncio.run(body())


def test_a_failure_in_the_step_its_request_is_cancelled_is_not_counted_as_a_reply() -> None:
    async def body() -> None:
        async with scripted(lambda _: []) as (pump, transport):
            request, connection = await in_flight(pump, transport)
            connection.fail("the pump hung up")  # and the deadline's cancellation in the same step
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            assert transport.discarded == 0

    asyncio.run(body())


def test_a_reply_discarded_by_its_cancellation_after_a_close_is_still_counted() -> None:
    async def body() -> None:
        async with scripted(lambda _: []) as (pump, transport):
            request, connection = await in_flight(pump, transport)
            closing = asyncio.ensure_future(transport.close())  # runs before the request resumes
            connection.data_received(normal(pump.requests[0])[0])
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await closing
            assert transport.discarded == 1

    asyncio.run(body())
