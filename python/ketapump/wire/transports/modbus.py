"""``modbus-tcp://HOST:PORT?unit=1``: a Modbus TCP master on an asyncio protocol.

The bridge's own master, not pymodbus's client: on the poll path the client's CPU is the bridge's.
Over pymodbus's client the bridge spent 1.1–1.5× the CPU of bare pymodbus doing the same
transactions; on this master 0.6–0.8× ("A Modbus TCP master of our own" in docs/benchmarks.md).
pymodbus stays what the tests and benchmarks check this master against, as a client of the same
simulator.

Every reply must answer its own request, or the attempt fails (and the base class, which retries,
drops the connection first, so nothing of that exchange can reach a later request):

- its transaction id is the id of a request still waiting: any other reply (one whose request was
  cancelled, a stray frame) is discarded, counted in :attr:`ModbusTcpTransport.discarded` and logged
  (within the base class's budget for such warnings);
- its unit id is the request's, its function code the request's (or with the top bit set and one
  exception code: a refusal, :class:`~ketapump.wire.transports.base.PumpRefusedError`);
- a read (functions 3, 4 and 23) carries a byte count of 2 × the registers asked for and exactly
  that many bytes; a write echoes the address and the value (function 6) or the quantity (16).

A header that cannot start a Modbus TCP frame (protocol id not 0, a length out of 2..254) leaves no
way to find the next frame in the byte stream: the connection is dropped and every waiting request
fails. A connection that ended between requests (the pump closed it while idle) is replaced by the
next request before it is sent; requests made together share the one new connection, and a failed
attempt ends only the connection it used. The base class owns timeouts, retries, reconnection and the
requests' limits. ``--debug`` traces every frame sent and received to the diagnostics logger
``ketapump.transport``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable

from ketapump.errors import TransportError
from ketapump.wire.budget import LogBudget
from ketapump.wire.transports.base import MAX_READ, RegisterTransport, modbus_refusal

log = logging.getLogger("ketapump.transport")

#: Transaction id, protocol id, length (of unit id + PDU), unit id.
MBAP = struct.Struct(">HHHB")
#: Function, address, quantity (or value, for function 6): a read request and a write's echo.
ADDRESS_AND_QUANTITY = struct.Struct(">BHH")
#: Function 23's fixed part: read address, read quantity, write address, write quantity, byte count.
READ_WRITE = struct.Struct(">BHHHHB")
#: The MBAP length field counts the unit id and a PDU of 1..253 bytes.
LENGTHS = range(2, 255)

#: "reconnecting" lines a transport logs at once, then a second: one a minute (the rest are counted).
RECONNECT_LOG_BURST, RECONNECT_LOG_PER_S = 5, 1 / 60

#: ``>nH`` for every number of registers a request or a reply may carry (the base class checks it).
WORDS = [struct.Struct(f">{n}H") for n in range(MAX_READ + 1)]


class _Connection(asyncio.Protocol):
    """One TCP connection: frames the byte stream and hands each reply to the request waiting for its
    transaction id."""

    def __init__(self, url: str, warn_discarded: Callable[..., None]) -> None:
        self.url = url
        self._warn_discarded = warn_discarded
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        #: Why the connection can carry no more requests; None while it can.
        self.failed: str | None = None
        self.discarded = 0
        self._partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.failed is not None:  # closed while it was connecting
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.failed is not None:
            return  # the rest of a stream already given up on
        if self._partial:
            data, self._partial = self._partial + data, b""
        start, end = 0, len(data)
        while end - start >= MBAP.size:
            transaction, protocol, length, unit = MBAP.unpack_from(data, start)
            if protocol != 0 or length not in LENGTHS:
                self.fail(f"not a Modbus TCP frame: {data[start : start + 16].hex(' ')}")
                return
            frame_end = start + 6 + length
            if frame_end > end:
                break
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: rx %s", self.url, data[start:frame_end].hex(" "))
            self._deliver(transaction, unit, data[start + MBAP.size : frame_end])
            start = frame_end
        if start < end and self.failed is None:
            self._partial = data[start:]

    def _deliver(self, transaction: int, unit: int, pdu: bytes) -> None:
        future = self.waiting.pop(transaction, None)
        if future is None or future.done():
            self.discarded += 1
            self._warn_discarded(
                "%s: discarded a reply no request waits for (transaction %d): %s",
                self.url, transaction, pdu[:32].hex(" "),
            )  # fmt: skip
            return
        future.set_result((unit, pdu))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost: {exc}" if exc else "connection closed by the pump")

    def fail(self, why: str) -> None:
        """Ends the connection: every waiting request fails with ``why``, and so will any later one."""
        if self.failed is None:
            self.failed = why
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(TransportError(self.url, self.failed))
        self.waiting.clear()
        if self.transport is not None:
            self.transport.abort()


class ModbusTcpTransport(RegisterTransport):
    """``modbus-tcp://HOST:PORT?unit=1``."""

    def __init__(self, url: str, *, host: str, port: int, unit: int, timeout_s: float, retries: int) -> None:
        super().__init__(url, timeout_s=timeout_s, retries=retries)
        self.host, self.port, self.unit = host, port, unit
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._transaction = 0
        self._discarded_before = 0
        # A gateway that closes idle connections sooner than the poll period reconnects every request.
        self._reconnect_log = LogBudget(RECONNECT_LOG_BURST, RECONNECT_LOG_PER_S)

    @property
    def discarded(self) -> int:
        """Replies that answered no waiting request (a cancelled request's, a stray frame), over every
        connection so far: discarded, never used."""
        current = self._connection.discarded if self._connection is not None else 0
        return self._discarded_before + current

    def _link_lost(self) -> bool:
        # Failed (the pump hung up), or still being made for another request: either way a request
        # goes through _connect, which waits for the connection being made or makes a new one.
        connection = self._connection
        return connection is None or connection.failed is not None or connection.transport is None

    async def _connect(self) -> None:
        # One connection at a time: a request that reconnects while another does waits, then uses it.
        async with self._connecting:
            if not self._link_lost():
                return
            current = self._connection
            if current is not None:
                if current.failed is not None:  # ended between requests: no request failed to say so
                    suffix = self._reconnect_log.admit("more reconnections not logged")
                    if suffix is not None:
                        log.info("%s: reconnecting: %s%s", self.url, current.failed, suffix)
                await self._close()
            # Held before awaiting, so a connection closed while connecting aborts as soon as it is made.
            self._connection = connection = _Connection(self.url, self._warn_discarded)
            try:
                await asyncio.get_running_loop().create_connection(lambda: connection, self.host, self.port)
            except ValueError as e:  # a host name no resolver takes (UnicodeError)
                raise TransportError(self.url, f"cannot connect: {e}") from e
            if connection.failed is not None:
                raise TransportError(self.url, "cannot connect: the link was closed while connecting")

    def _link(self) -> object:
        return self._connection

    async def _drop(self, link: object) -> None:
        if link is None:
            # Failed while connecting or waiting to: a connection being made under the lock is another
            # request's, and a live one another request made; only an orphan of this one is closed.
            if not self._connecting.locked() and self._link_lost():
                await self._close()
        elif link is self._connection:
            await self._close()
        # else: already replaced (and ended) by another request's reconnection, which this leaves alone

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._discarded_before += connection.discarded
            connection.fail("connection closed")

    # -- requests ---------------------------------------------------------------------------------

    async def _exchange(self, pdu: bytes, what: Callable[[], str]) -> bytes:
        """Sends ``pdu`` and returns the reply's PDU, whose function is the request's; raises
        PumpRefusedError for an exception reply and TransportError for anything that is not a reply."""
        connection = self._connection
        if connection is None or connection.transport is None:
            raise TransportError(self.url, "not connected")
        if connection.failed is not None:
            raise TransportError(self.url, connection.failed)
        self._transaction = transaction = self._transaction % 0xFFFF + 1
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        connection.waiting[transaction] = future
        frame = MBAP.pack(transaction, 0, len(pdu) + 1, self.unit) + pdu
        connection.transport.write(frame)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: tx %s", self.url, frame.hex(" "))
        try:
            unit, reply = await future
        except asyncio.CancelledError:
            # Its reply came in the step before (a failure set there is not a reply).
            if future.done() and not future.cancelled() and future.exception() is None:
                if connection is self._connection:
                    connection.discarded += 1
                else:  # already closed: its count was taken
                    self._discarded_before += 1
                self._warn_discarded(
                    "%s: discarded the reply to a cancelled request (transaction %d)", self.url, transaction
                )
            raise
        finally:
            if connection.waiting.get(transaction) is future:
                del connection.waiting[transaction]
        function = pdu[0]
        if unit != self.unit:
            raise TransportError(self.url, f"{what()}: the reply came from unit {unit}, not {self.unit}")
        if reply[0] == function | 0x80 and len(reply) == 2:
            raise modbus_refusal(self.url, what(), reply[1])
        if reply[0] != function:
            raise TransportError(self.url, f"{what()}: not its reply: {reply[:16].hex(' ')}")
        return reply

    async def _registers(self, pdu: bytes, count: int, what: Callable[[], str]) -> list[int]:
        reply = await self._exchange(pdu, what)
        if len(reply) != 2 + 2 * count or reply[1] != 2 * count:
            raise TransportError(
                self.url, f"{what()}: {count} registers asked, the reply: {reply[:16].hex(' ')}"
            )
        return list(WORDS[count].unpack_from(reply, 2))

    # _read and _write_and_read return _registers' coroutine (one coroutine less per request).

    def _read(self, address: int, count: int, what: Callable[[], str]) -> Awaitable[list[int]]:
        return self._registers(ADDRESS_AND_QUANTITY.pack(self.read_function, address, count), count, what)

    async def _write(self, address: int, values: list[int], what: Callable[[], str]) -> None:
        if len(values) == 1 and self.write_single:
            pdu = ADDRESS_AND_QUANTITY.pack(6, address, values[0])
            echo = pdu
        else:
            echo = ADDRESS_AND_QUANTITY.pack(16, address, len(values))
            pdu = echo + bytes([2 * len(values)]) + WORDS[len(values)].pack(*values)
        reply = await self._exchange(pdu, what)
        if reply != echo:
            raise TransportError(self.url, f"{what()}: the reply does not echo the write: {reply.hex(' ')}")

    def _write_and_read(
        self, write_address: int, values: list[int], read_address: int, count: int, what: Callable[[], str]
    ) -> Awaitable[list[int]]:
        n = len(values)
        pdu = READ_WRITE.pack(23, read_address, count, write_address, n, 2 * n) + WORDS[n].pack(*values)
        return self._registers(pdu, count, what)
