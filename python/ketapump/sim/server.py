"""Serve a simulated pump: Modbus TCP (loopback socket), Modbus RTU, New Era ASCII and the Harvard
Apparatus Elite command set on PTYs.

One :class:`~ketapump._core.SimPump` sits behind every endpoint; all of them run in one asyncio loop,
so the pump is never touched concurrently. Pump time is the clock's time (real time × scale,
:class:`~ketapump.clock.ScaledClock`); a ticker advances the pump between requests so its watchdog and
faults act with nobody asking.

Both Modbus endpoints answer through the same request handler in ``hw-sim`` (``modbus.rs``): TCP
and RTU differ only in framing, so every request gets the same answer byte for byte on either, and
exactly the register map's function codes and exceptions (``docs/register-map.md``). The TCP side
is a plain asyncio protocol around the Rust MBAP codec: it enforces the connection rules (an
impossible header closes the connection, so does an idle or non-reading client) and keeps each
connection's replies in request order, delayed ones included.

Serial endpoints are PTYs: clients open the slave path (``/dev/pts/N``) as they would a real port.
A PTY ignores baud rate, so replies are paced here: a reply leaves after the wire time of the request
and of the reply at the configured baud (10 bits per byte, 8N1), plus any injected delay.

Every frame a codec rejects becomes one rate-limited diagnostics event (:class:`WireDiagnostics`,
logger ``ketapump.sim.wire``); with that logger at DEBUG every frame in and out is traced too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ketapump import _core
from ketapump.clock import Clock, sleep_until_monotonic
from ketapump.sim.harvard import HarvardPort
from ketapump.wire import (
    TCP_IDLE_TIMEOUT_S,
    TCP_MAX_UNREAD_BYTES,
    LogBudget,
    RegisterMap,
    RegisterMapError,
    load_register_map,
    read_register_map,
)

#: How often the ticker advances the pump (real seconds).
TICK_S = 0.01
#: Longest pump-time step between the New Era port's periodic duties (its watchdog feed, safe mode).
POLL_STEP_S = 0.1
BITS_PER_BYTE = 10
#: Connections the Modbus TCP listener queues before accepting them (many clients may connect at once).
TCP_BACKLOG = 256
#: Bytes of a traced frame shown in a ``--debug`` event.
TRACE_BYTES = 256

#: ``(reason, first bytes, length)`` rows and the number the codec did not keep.
Rejects = tuple[list[tuple[str, bytes, int]], int]


def wire_time_s(n_bytes: int, baud: int) -> float:
    """Seconds ``n_bytes`` take on an 8N1 line at ``baud``."""
    return n_bytes * BITS_PER_BYTE / baud


def _wire_logger() -> Any:
    """A structlog logger on the stdlib logger ``ketapump.sim.wire``: the diagnostics stream renders its
    events as JSON lines (``bridge.audit.configure_diagnostics``), and nothing global is configured."""
    return structlog.wrap_logger(
        logging.getLogger("ketapump.sim.wire"),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


class WireDiagnostics:
    """Diagnostics of one endpoint: one ``frame_rejected`` event per rejected frame (endpoint, peer,
    reason, first bytes in hex, length), rate-limited by a token bucket so a flood of garbage cannot
    fill a disk; the events left out are counted and reported as ``suppressed`` on the next one.

    At DEBUG, :meth:`trace` also records every frame in and out (first :data:`TRACE_BYTES` bytes).
    """

    #: Events allowed in a burst, and per second after it.
    BURST = 20
    PER_S = 5.0

    def __init__(self, endpoint: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self._log = _wire_logger()
        self._budget = LogBudget(self.BURST, self.PER_S, clock)

    @property
    def suppressed(self) -> int:
        """Events left out since the last one logged."""
        return self._budget.suppressed

    def _emit(self, level: int, event: str, **fields: object) -> None:
        suppressed = self._budget.take_suppressed()
        if suppressed:
            fields["suppressed"] = suppressed
        self._log.log(level, event, endpoint=self.endpoint, **fields)

    def rejected(self, peer: str, rejects: Rejects) -> None:
        """Reports what a codec rejected (its ``take_rejects()``)."""
        rows, not_kept = rejects
        self._budget.left_out(not_kept)
        for reason, head, length in rows:
            if self._budget.allow():
                self._emit(
                    logging.WARNING,
                    "frame_rejected",
                    peer=peer,
                    reason=reason,
                    head=head.hex(" "),
                    length=length,
                )

    def closed(self, peer: str, reason: str) -> None:
        """Reports a connection the endpoint closed itself (idle, not reading, lost framing)."""
        if self._budget.allow():
            self._emit(logging.INFO, "connection_closed", peer=peer, reason=reason)

    def dropped(self, peer: str, n_bytes: int) -> None:
        """Reports reply bytes a serial line dropped because its client does not read them."""
        if self._budget.allow():
            self._emit(
                logging.WARNING,
                "replies_dropped",
                peer=peer,
                reason=f"client not reading, {n_bytes} reply bytes dropped",
            )

    def trace(self, peer: str, direction: str, data: bytes) -> None:
        """A DEBUG event per frame, in (``rx``) or out (``tx``)."""
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                "frame",
                endpoint=self.endpoint,
                peer=peer,
                direction=direction,
                data=data[:TRACE_BYTES].hex(" "),
                length=len(data),
            )


class PtyLine:
    """One PTY: the simulator holds the master; clients open :attr:`path`.

    Both ends are raw (no echo, no line discipline). The slave stays open here too, so a client that
    closes and reopens the port does not leave the master reading EIO.
    """

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def read(self) -> bytes:
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return b""

    def write(self, data: bytes) -> int:
        """Writes what the PTY accepts and drops the rest, as a real line drops bytes nobody reads: a
        client that stops reading must never stall the simulator. Returns the bytes dropped."""
        try:
            written = os.write(self.master, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return len(data)
        return len(data) - written

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class SerialEndpoint:
    """A PTY served by a codec: ``process(line_s, data)`` returns ``[(reply, delay_ms), ...]`` and
    ``take_rejects()`` what the codec discarded since."""

    line: PtyLine
    baud: int
    pace: bool
    process: Callable[[float, bytes], list[tuple[bytes, int]]]
    take_rejects: Callable[[], Rejects]
    diagnostics: WireDiagnostics
    idle: Callable[[float], list[tuple[bytes, int]]] | None = None
    queue: asyncio.Queue[tuple[float, bytes]] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None

    def on_readable(self) -> None:
        data = self.line.read()
        if not data:
            return
        now = time.monotonic()
        self.diagnostics.trace(self.line.path, "rx", data)
        # The request's last byte is in, at 19 200 baud, its wire time after its first byte was sent.
        request_wire = wire_time_s(len(data), self.baud) if self.pace else 0.0
        self._queue(self.process(now, data), now + request_wire)

    def on_tick(self, line_s: float) -> None:
        if self.idle is not None:
            self._queue(self.idle(line_s), time.monotonic())

    def _queue(self, replies: list[tuple[bytes, int]], ready_at: float) -> None:
        for reply, delay_ms in replies:
            self.queue.put_nowait((ready_at + delay_ms / 1000.0, reply))
        self.diagnostics.rejected(self.line.path, self.take_rejects())

    async def write_replies(self) -> None:
        """Each reply leaves when it is ready and the previous one has left, and is written when its
        last byte would have crossed the line: absolute deadlines (``time.monotonic()``), so the time
        spent between replies is not added to the next one's wait."""
        line_free_at = -math.inf
        while True:
            ready_at, reply = await self.queue.get()
            due = max(ready_at, line_free_at)
            if self.pace:
                due += wire_time_s(len(reply), self.baud)
            line_free_at = due
            await sleep_until_monotonic(due)
            self.diagnostics.trace(self.line.path, "tx", reply)
            dropped = self.line.write(reply)
            if dropped:
                self.diagnostics.dropped(self.line.path, dropped)


class TcpConnection(asyncio.Protocol):
    """One Modbus TCP connection: bytes to the Rust codec, replies back in request order.

    A reply leaves at ``max(arrival + injected delay, the previous reply's departure)``, so a delayed
    reply never lets a later one overtake it; a dropped reply is never sent.
    """

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.codec = _core.ModbusTcpConnection(server.unit_id)
        self.diagnostics = server.tcp_diagnostics
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._loop = asyncio.get_running_loop()
        self._last_rx = self._loop.time()
        self._last_reply_at = 0.0
        self._pending: set[asyncio.TimerHandle] = set()
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.tcp_clients.add(self)
        self._arm_idle(self.server.tcp_idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self._idle is not None:
            self._idle.cancel()
        self.server.tcp_clients.discard(self)

    def data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        self.diagnostics.trace(self.peer, "rx", data)
        replies = self.codec.process(data, self.server.advanced())
        self.diagnostics.rejected(self.peer, self.codec.take_rejects())
        for reply, delay_ms in replies:
            self._send(reply, delay_ms / 1000.0)
        if self.codec.closed:
            self.close("the stream lost its MBAP framing")

    def close(self, reason: str) -> None:
        """Closes the connection (replies already written still go out), recording why."""
        if self.transport is not None and not self.transport.is_closing():
            self.diagnostics.closed(self.peer, reason)
            self.transport.close()

    def _send(self, reply: bytes, delay_s: float) -> None:
        now = self._loop.time()
        at = max(now + delay_s, self._last_reply_at)
        self._last_reply_at = at
        if at <= now:
            self._write(reply)
            return
        handle: asyncio.TimerHandle

        def send_later() -> None:
            self._pending.discard(handle)
            self._write(reply)

        handle = self._loop.call_at(at, send_later)
        self._pending.add(handle)

    def _write(self, reply: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.server.tcp_max_unread_bytes:
            self.diagnostics.closed(self.peer, "client not reading its replies")
            transport.abort()
            return
        self.diagnostics.trace(self.peer, "tx", reply)
        transport.write(reply)

    def _arm_idle(self, after_s: float) -> None:
        self._idle = self._loop.call_later(after_s, self._check_idle)

    def _check_idle(self) -> None:
        idle_s = self._loop.time() - self._last_rx
        limit = self.server.tcp_idle_timeout_s
        if idle_s >= limit:
            self.close(f"idle for {limit:g} s")
        else:
            self._arm_idle(limit - idle_s)


def serve_register_map(pump: _core.SimPump, path: str | os.PathLike[str]) -> RegisterMap:
    """Makes ``pump`` answer Modbus with the bring-your-own map at ``path`` (``ketapump sim
    --register-map``) and returns it. The file is checked by both parsers (the bridge's, here, and the
    simulator's, in Rust); :class:`~ketapump.wire.RegisterMapError` lists every problem, and the pump
    keeps its map."""
    regmap = read_register_map(path)
    text = Path(path).read_text(encoding="utf-8")
    refused = pump.set_register_map(text)
    if refused:  # the two parsers disagree: a defect, reported as the simulator's problems
        raise RegisterMapError(str(path), refused)
    return regmap


class SimServer:
    """Serves one simulated pump on any of Modbus TCP, Modbus RTU (PTY) and New Era ASCII (PTY); the
    Modbus endpoints answer the unit id of the map the pump serves (``unit_id`` overrides it)."""

    def __init__(
        self,
        pump: _core.SimPump,
        clock: Clock,
        *,
        unit_id: int | None = None,
        nesp_address: int = 0,
        baud: int = 19_200,
        pace: bool = True,
        tcp_idle_timeout_s: float = TCP_IDLE_TIMEOUT_S,
        tcp_max_unread_bytes: int = TCP_MAX_UNREAD_BYTES,
    ) -> None:
        self.pump = pump
        self.clock = clock
        self.unit_id = pump.unit_id if unit_id is None else unit_id
        self.nesp_address = nesp_address
        self.baud = baud
        self.pace = pace
        self.tcp_idle_timeout_s = tcp_idle_timeout_s
        self.tcp_max_unread_bytes = tcp_max_unread_bytes
        self.regmap: RegisterMap = load_register_map()
        self.endpoints: dict[str, str | None] = {"modbus_tcp": None, "modbus_rtu_pty": None, "nesp_pty": None}
        self.harvard_address = 0
        self.tcp_diagnostics = WireDiagnostics("modbus_tcp")
        self.tcp_clients: set[TcpConnection] = set()
        self._tcp: asyncio.Server | None = None
        self._serial: list[SerialEndpoint] = []
        self._ticker: asyncio.Task[None] | None = None
        self._nesp: _core.NespPort | None = None

    # ----- lifecycle ---------------------------------------------------------------------------

    async def start(
        self,
        *,
        modbus_tcp: bool = True,
        tcp_port: int = 0,
        bind: str = "127.0.0.1",
        modbus_rtu: bool = True,
        nesp: bool = True,
        harvard: bool = False,
    ) -> dict[str, str | None]:
        """Starts the chosen endpoints and returns their addresses (``harvard_pty`` only when asked
        for: the Elite endpoint acknowledges the pump's power-up alarm, which the others report)."""
        loop = asyncio.get_running_loop()
        if modbus_tcp:
            self._tcp = await loop.create_server(
                lambda: TcpConnection(self), bind, tcp_port, backlog=TCP_BACKLOG
            )
            host, port = self._tcp.sockets[0].getsockname()[:2]
            self.endpoints["modbus_tcp"] = f"{host}:{port}"
        if modbus_rtu:
            rtu = _core.RtuPort(unit_id=self.unit_id, baud=self.baud)
            endpoint = SerialEndpoint(
                PtyLine(),
                self.baud,
                self.pace,
                process=lambda line_s, data: rtu.process(line_s, data, self.advanced()),
                take_rejects=rtu.take_rejects,
                diagnostics=WireDiagnostics("modbus_rtu"),
                idle=lambda line_s: rtu.idle(line_s, self.advanced()),
            )
            self._add_serial(loop, endpoint)
            self.endpoints["modbus_rtu_pty"] = endpoint.line.path
        if nesp:
            port = _core.NespPort()
            self._nesp = port
            endpoint = SerialEndpoint(
                PtyLine(),
                self.baud,
                self.pace,
                process=lambda line_s, data: port.process(
                    line_s, self.clock.now(), data, {self.nesp_address: self.advanced()}
                ),
                take_rejects=port.take_rejects,
                diagnostics=WireDiagnostics("nesp"),
            )
            self._add_serial(loop, endpoint)
            self.endpoints["nesp_pty"] = endpoint.line.path
        if harvard:
            elite = HarvardPort(self.advanced, self.regmap, self.harvard_address)
            elite.prepare()
            endpoint = SerialEndpoint(
                PtyLine(),
                self.baud,
                self.pace,
                process=elite.process,
                take_rejects=elite.take_rejects,
                diagnostics=WireDiagnostics("harvard"),
            )
            self._add_serial(loop, endpoint)
            self.endpoints["harvard_pty"] = endpoint.line.path
        self._ticker = asyncio.create_task(self._tick())
        return dict(self.endpoints)

    def _add_serial(self, loop: asyncio.AbstractEventLoop, endpoint: SerialEndpoint) -> None:
        loop.add_reader(endpoint.line.master, endpoint.on_readable)
        endpoint.writer = asyncio.create_task(endpoint.write_replies())
        self._serial.append(endpoint)

    async def stop(self) -> None:
        """Stops every endpoint, closes the connections and the PTYs."""
        loop = asyncio.get_running_loop()
        tasks = [t for t in (self._ticker, *(e.writer for e in self._serial)) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for endpoint in self._serial:
            loop.remove_reader(endpoint.line.master)
            endpoint.line.close()
        self._serial.clear()
        if self._tcp is not None:
            self._tcp.close()
            for client in list(self.tcp_clients):
                if client.transport is not None:
                    client.transport.abort()
            await self._tcp.wait_closed()
            self._tcp = None

    async def _tick(self) -> None:
        while True:
            self.advanced()
            line_s = time.monotonic()
            for endpoint in self._serial:
                endpoint.on_tick(line_s)
            await asyncio.sleep(TICK_S)

    def advanced(self) -> _core.SimPump:
        """The pump, advanced to the clock's time in steps of at most :data:`POLL_STEP_S` pump seconds,
        running the New Era port's periodic duties at each, as firmware would between packets —
        whatever the time scale."""
        now = self.clock.now()
        t = self.pump.t_s
        while True:
            t = min(now, t + POLL_STEP_S)
            self.pump.advance_to(t)
            if self._nesp is not None:
                self._nesp.poll(t, {self.nesp_address: self.pump})
            if t >= now:
                return self.pump
