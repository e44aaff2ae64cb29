"""A serial port for the serial transports (``modbus-rtu://``, ``nesp://``, ``harvard://``), used from
worker threads.

pyserial blocks, so every exchange runs in a worker thread (:func:`asyncio.to_thread`) and the event
loop, which also runs the safety kernel, never waits on the wire. A :class:`threading.Lock` (not an
asyncio lock) guards the port: when the base class's timeout cancels an attempt, the worker thread
cannot be cancelled and must keep the port until it finishes, and an asyncio lock would be released
at the cancellation while the thread still reads. The port always has read and write timeouts, and
the transports give their workers a budget slightly below the base class's own timeout, so a silent
pump costs one timeout per attempt and leaves no thread behind.

PATH is a device (``/dev/ttyUSB0``, a PTY) or any pyserial URL (``socket://host:port``, ``spy://...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import serial  # type: ignore[import-untyped]

from ketapump.errors import TransportError

T = TypeVar("T")

log = logging.getLogger("ketapump.transport")

#: Seconds one blocking read waits before the worker re-checks its deadline and the port.
POLL_S = 0.02
#: Workers give up at this fraction of the attempt's timeout, before the base class cancels the attempt.
WORKER_SHARE = 0.9

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialLink:
    """One serial port, opened and closed from the event loop and used by one worker at a time."""

    def __init__(self, url: str, path: str, *, baud: int, parity: str = "N", timeout_s: float) -> None:
        self.url = url
        self.path = path
        self.baud = baud
        self.parity = parity
        self.timeout_s = timeout_s
        self._port: Any = None
        self._io_lock = threading.Lock()
        # Bumped by every close; an open that finishes after a close it did not see discards its port.
        self._generation = 0

    async def open(self) -> None:
        await self.close()
        generation = self._generation
        try:
            await asyncio.to_thread(self._open_sync, generation)
        except asyncio.CancelledError:
            self._generation += 1  # the worker, still opening, will close what it opens
            raise

    def _open_sync(self, generation: int) -> None:
        try:
            port = serial.serial_for_url(
                self.path,
                baudrate=self.baud,
                bytesize=serial.EIGHTBITS,
                parity=_PARITY[self.parity],
                stopbits=serial.STOPBITS_ONE,
                timeout=min(POLL_S, self.timeout_s),
                write_timeout=self.timeout_s,
            )
        except (serial.SerialException, ValueError, OSError) as e:
            raise TransportError(self.url, f"cannot open {self.path}: {e}") from e
        with self._io_lock:
            if generation != self._generation:
                port.close()
                raise TransportError(self.url, "connection abandoned (closed while opening)")
            self._port = port

    async def close(self) -> None:
        port, self._port = self._port, None
        self._generation += 1
        if port is None:
            return
        cancel = getattr(port, "cancel_read", None)
        if cancel is not None:
            with contextlib.suppress(Exception):
                cancel()  # wakes a worker left reading by a cancelled attempt
        await asyncio.to_thread(self._close_sync, port)

    def _close_sync(self, port: Any) -> None:
        with self._io_lock, contextlib.suppress(Exception):
            port.close()

    def is_open(self, port: Any) -> bool:
        """Whether ``port`` is still this link's open port (a worker checks between reads)."""
        return port is not None and self._port is port

    async def run(self, work: Callable[[Any], T]) -> T:
        """Runs ``work(port)`` in a worker thread holding the port's lock; TransportError when the link
        is not open, or was closed before the worker got the port."""
        port = self._port
        if port is None:
            raise TransportError(self.url, "not connected")

        def locked() -> T:
            with self._io_lock:
                if self._port is not port:
                    raise TransportError(self.url, "link closed")
                return work(port)

        return await asyncio.to_thread(locked)


class LineInStep:
    """What a command transport on a :class:`SerialLink` whose replies carry no request id keeps (New
    Era, Harvard): the link, whether the line is known to be in step (nothing late can still arrive),
    the replies discarded and the re-synchronisations made, and the read loop that fails fast on
    garbage. Mixed in before :class:`~ketapump.wire.transports.base.CommandTransport`."""

    url: str
    timeout_s: float
    _warn_discarded: Callable[..., None]  # the transport's (base class)

    def _open_line(self, url: str, path: str, *, baud: int, timeout_s: float) -> None:
        self.link = SerialLink(url, path, baud=baud, timeout_s=timeout_s)
        #: Replies (and runs of garbage) received that did not answer their request: never used.
        self.discarded = 0
        #: Re-synchronisations completed.
        self.resyncs = 0
        self._in_step = False

    async def _connect(self) -> None:
        self._in_step = False  # a reopened port: replies to an earlier session may still come
        await self.link.open()

    async def _close(self) -> None:
        await self.link.close()

    def _discard(self, data: bytes | bytearray, why: str) -> None:
        self.discarded += 1
        self._in_step = False
        self._warn_discarded("%s: discarded %s: %r", self.url, why, bytes(data[:32]))

    def _read_one(
        self, port: Any, buf: bytearray, deadline: float, take: Callable[[bytearray], T | None]
    ) -> T:
        """Reads until ``take`` takes one reply off the front of ``buf`` (None: more bytes needed;
        ValueError: the bytes can start no reply, which fails the attempt at once — the next one
        starts with a flushed line and a re-synchronisation)."""
        while True:
            try:
                reply = take(buf)
            except ValueError as e:
                self._discard(buf, "bytes that start no reply")
                raise TransportError(self.url, f"garbage on the line: {e}") from e
            if reply is not None:
                return reply
            if time.monotonic() >= deadline:
                got = f" (partial: {bytes(buf[:16])!r})" if buf else ""
                raise TimeoutError(f"no reply within {self.timeout_s:g} s{got}")
            if not self.link.is_open(port):
                raise TransportError(self.url, "link closed while waiting for the reply")
            buf += port.read(max(1, port.in_waiting))
