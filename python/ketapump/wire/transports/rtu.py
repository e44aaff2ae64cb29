"""``modbus-rtu://PATH?baud=19200&parity=N&unit=1``: a Modbus RTU master that proves every reply answers
its own request.

RTU has no transaction id: a read reply carries only the unit, the function and the data. A reply
that arrives after its request timed out is, byte for byte, a valid answer to the next read of the
same size (a general-purpose master took the rate for the syringe diameter this way). So this master:

1. keeps the 3.5-character inter-frame silence before it sends, and flushes stale input;
2. checks every reply: unit id, function code, CRC, byte count (reads), echoed address and value or
   quantity (writes); anything else on the line is discarded and counted in :attr:`discarded`, never
   used, and the attempt fails;
3. knows when the line may still carry a late reply (after a timeout, a discarded frame, garbage,
   bytes waiting before a request, a reopened port) and then **re-synchronises** before the next
   request: it writes a fresh 16-bit value to :attr:`sync_register` (the reference pump's
   ``heartbeat``, set by its driver) and discards everything until that exact echo comes back. A pump
   answers in order, so once the echo is back no older reply can still arrive, however late it was.
   Without a sync register it can only wait for the line to stay silent for half the attempt's
   budget: that drains a reply up to that much later than the timeout, but not a later one, nor a
   queue of late replies (a best effort; the reference pump's driver always sets the register).

Each attempt (re-synchronisation included) stays within the base class's timeout; pyserial runs in a
worker thread (:mod:`ketapump.wire.transports.serial`).
"""

from __future__ import annotations

import logging
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ketapump.errors import TransportError
from ketapump.wire.transports.base import RegisterTransport, modbus_refusal
from ketapump.wire.transports.serial import WORKER_SHARE, SerialLink

log = logging.getLogger("ketapump.transport")

#: A reply candidate that stops growing for this long (s) while incomplete is not a frame.
STALL_S = 0.02
#: Longest RTU frame.
MAX_FRAME = 256


def crc16_modbus(data: bytes) -> bytes:
    """CRC-16/MODBUS of ``data``, as sent: low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def frame_gap_s(baud: int) -> float:
    """The RTU inter-frame silence: 3.5 characters of 11 bits, at least 1.75 ms."""
    return max(3.5 * 11 / baud, 1.75e-3)


@dataclass(frozen=True)
class Expected:
    """What the reply to one request must look like."""

    unit: int
    function: int
    #: Length of the normal reply frame.
    length: int
    #: Bytes 2.. the normal reply must start with: the byte count of a read, the address and value
    #: (function 6) or address and quantity (function 16) of a write.
    starts: bytes


def read_request(unit: int, address: int, count: int, function: int = 3) -> tuple[bytes, Expected]:
    body = struct.pack(">BBHH", unit, function, address, count)
    return body + crc16_modbus(body), Expected(unit, function, 5 + 2 * count, bytes([2 * count]))


def write_request(
    unit: int, address: int, values: list[int], *, single: bool = True
) -> tuple[bytes, Expected]:
    """Function 6 for one value (when ``single``), 16 otherwise."""
    if len(values) == 1 and single:
        body = struct.pack(">BBHH", unit, 6, address, values[0])
        return body + crc16_modbus(body), Expected(unit, 6, 8, body[2:6])
    body = struct.pack(f">BBHHB{len(values)}H", unit, 16, address, len(values), 2 * len(values), *values)
    return body + crc16_modbus(body), Expected(unit, 16, 8, body[2:6])


class Verdict(Enum):
    NEED = "need more bytes"
    OURS = "the reply"
    FOREIGN = "a valid frame that does not answer this request"
    CORRUPT = "the reply's shape with a bad CRC"
    GARBAGE = "bytes that start no frame"


def classify(buf: bytes | bytearray, expected: Expected) -> tuple[Verdict, int]:
    """What the bytes at the start of ``buf`` are, and how many bytes that verdict covers (for NEED: how
    many ``buf`` must hold before a verdict; for GARBAGE: 1, the byte to drop)."""
    if len(buf) < 3:
        return Verdict.NEED, 3
    unit, function = buf[0], buf[1]
    if function & 0x80:
        length = 5
    elif function in (3, 4):
        length = 5 + buf[2]
    elif function in (5, 6, 15, 16):
        length = 8
    else:
        return Verdict.GARBAGE, 1
    if len(buf) < length:
        return Verdict.NEED, length
    frame = bytes(buf[:length])
    ours = unit == expected.unit
    if crc16_modbus(frame[:-2]) != frame[-2:]:
        # The header and length of this request's reply with a bad checksum: a corrupted reply.
        # Anything else is noise; its first byte is dropped and the rest looked at again.
        if ours and (function, length) in (
            (expected.function, expected.length),
            (expected.function | 0x80, 5),
        ):
            return Verdict.CORRUPT, length
        return Verdict.GARBAGE, 1
    exception = function == expected.function | 0x80
    normal = (
        function == expected.function and length == expected.length and frame[2:].startswith(expected.starts)
    )
    return (Verdict.OURS if ours and (exception or normal) else Verdict.FOREIGN), length


class ModbusRtuTransport(RegisterTransport):
    """``modbus-rtu://PATH?baud=19200&parity=N&unit=1``; PATH may be a pyserial URL (see the module)."""

    def __init__(
        self, url: str, *, path: str, baud: int, parity: str, unit: int, timeout_s: float, retries: int
    ) -> None:
        super().__init__(url, timeout_s=timeout_s, retries=retries)
        self.path, self.baud, self.parity, self.unit = path, baud, parity, unit
        self.link = SerialLink(url, path, baud=baud, parity=parity, timeout_s=timeout_s)
        #: A read-write register that reads back what is written and that a write to never harms (the
        #: reference pump's ``heartbeat``); None: re-synchronise by silence (see the module).
        self.sync_register: int | None = None
        #: Frames (and runs of garbage) received that did not answer their request: discarded, never used.
        self.discarded = 0
        #: Re-synchronisations completed.
        self.resyncs = 0
        self.gap_s = frame_gap_s(baud)
        self._in_step = False
        self._nonce = secrets.randbelow(0x10000)
        self._quiet_since = 0.0

    # -- link -------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        self._in_step = False  # a reopened port: replies to an earlier session may still come
        await self.link.open()

    async def _close(self) -> None:
        await self.link.close()

    # -- requests ---------------------------------------------------------------------------------

    async def _read(self, address: int, count: int, what: Callable[[], str]) -> list[int]:
        request, expected = read_request(self.unit, address, count, self.read_function)
        reply = await self._exchange(request, expected, what)
        return list(struct.unpack(f">{count}H", reply[3 : 3 + 2 * count]))

    async def _write(self, address: int, values: list[int], what: Callable[[], str]) -> None:
        request, expected = write_request(self.unit, address, values, single=self.write_single)
        await self._exchange(request, expected, what)

    async def _exchange(self, request: bytes, expected: Expected, what: Callable[[], str]) -> bytes:
        budget_s = self.timeout_s * WORKER_SHARE
        reply = await self.link.run(lambda port: self._transact_sync(port, request, expected, budget_s))
        if reply[1] & 0x80:
            raise modbus_refusal(self.url, what(), reply[2])
        return reply

    # -- the worker -------------------------------------------------------------------------------

    def _transact_sync(self, port: Any, request: bytes, expected: Expected, budget_s: float) -> bytes:
        """Sends ``request`` and returns its reply frame (worker thread, port lock held)."""
        deadline = time.monotonic() + budget_s
        if not self._quiet_line(port, deadline):
            self._in_step = False
        if not self._in_step:
            self._resync(port, deadline)
        self._send(port, request)
        self._in_step = False  # until its reply is in
        return self._receive(port, expected, deadline, resyncing=False)

    def _quiet_line(self, port: Any, deadline: float) -> bool:
        """Waits for the inter-frame silence; False if bytes were waiting (the line is not in step)."""
        clean = True
        while True:
            waiting = port.in_waiting
            if waiting:
                self._discard(port.read(waiting), "bytes waiting before a request")
                clean = False
                self._quiet_since = time.monotonic()
            wait_s = self._quiet_since + self.gap_s - time.monotonic()
            if wait_s <= 0:
                return clean
            if time.monotonic() + wait_s > deadline:
                raise TimeoutError("the line never fell silent")
            time.sleep(wait_s)

    def _send(self, port: Any, request: bytes) -> None:
        port.reset_input_buffer()
        log.debug("%s: tx %s", self.url, request.hex(" "))
        port.write(request)
        # The last byte leaves the UART this long after the write returns (the OS buffers it).
        self._quiet_since = time.monotonic() + len(request) * 11 / self.baud

    def _resync(self, port: Any, deadline: float) -> None:
        if self.sync_register is None:
            self._wait_for_silence(port, min(deadline, time.monotonic() + (deadline - time.monotonic()) / 2))
        else:
            self._nonce = (self._nonce + 1) % 0x10000
            probe, expected = write_request(
                self.unit, self.sync_register, [self._nonce], single=self.write_single
            )
            self._send(port, probe)
            while True:
                reply = self._receive(port, expected, deadline, resyncing=True)
                if not reply[1] & 0x80:
                    break
                self._discard(reply, "an exception reply while re-synchronising")
            self._quiet_line(port, deadline)
        self.resyncs += 1
        self._in_step = True

    def _wait_for_silence(self, port: Any, until: float) -> None:
        """Discards everything until ``until``; TimeoutError if bytes were still arriving then."""
        last_byte = time.monotonic()
        while time.monotonic() < until:
            data = port.read(max(1, port.in_waiting))
            if data:
                self._discard(data, "a late reply")
                last_byte = time.monotonic()
        if time.monotonic() - last_byte < self.gap_s:
            raise TimeoutError("the line kept talking while waiting for it to fall silent")

    def _receive(self, port: Any, expected: Expected, deadline: float, *, resyncing: bool) -> bytes:
        """Reads until the frame that answers ``expected``. While re-synchronising, everything else is
        discarded and reading goes on; otherwise anything else fails the attempt."""
        buf = bytearray()
        grew = time.monotonic()
        while True:
            verdict, n = classify(buf, expected)
            if verdict is Verdict.OURS:
                frame = bytes(buf[:n])
                if len(buf) > n:
                    self._discard(buf[n:], "bytes after the reply")
                    raise TransportError(self.url, f"bytes followed the reply: {bytes(buf[n:16]).hex(' ')}")
                if not resyncing:
                    self._in_step = True
                log.debug("%s: rx %s", self.url, frame.hex(" "))
                return frame
            if verdict is Verdict.CORRUPT:
                self._discard(buf[:n], "a reply with a bad CRC")
                if not resyncing:
                    raise TransportError(self.url, "the reply failed its CRC")
                del buf[:n]
                continue
            if verdict in (Verdict.FOREIGN, Verdict.GARBAGE):
                self._discard(buf[:n], verdict.value)
                if verdict is Verdict.FOREIGN and not resyncing:
                    raise TransportError(
                        self.url, f"a frame that does not answer the request: {bytes(buf[:n]).hex(' ')}"
                    )
                del buf[:n]
                continue
            # NEED: more bytes, unless the candidate has stopped growing (then its first byte is noise).
            now = time.monotonic()
            if buf and now - grew > max(STALL_S, 5 * self.gap_s):
                self._discard(buf[:1], Verdict.GARBAGE.value)
                del buf[:1]
                grew = now
                continue
            if now >= deadline:
                got = f" (partial: {bytes(buf[:16]).hex(' ')})" if buf else ""
                raise TimeoutError(f"no reply within {self.timeout_s:g} s{got}")
            if not self.link.is_open(port):
                raise TransportError(self.url, "link closed while waiting for the reply")
            data = port.read(min(max(1, n - len(buf)), MAX_FRAME))
            if data:
                buf += data
                grew = time.monotonic()
                self._quiet_since = grew

    def _discard(self, data: bytes | bytearray, why: str) -> None:
        self.discarded += 1
        self._in_step = False
        self._warn_discarded("%s: discarded %s: %s", self.url, why, bytes(data[:32]).hex(" "))


__all__ = ["Expected", "ModbusRtuTransport", "Verdict", "classify", "crc16_modbus", "frame_gap_s"]
