"""Raw wire access for tests: frames built by hand (independently of the codecs under test), blocking
clients on a socket or a PTY, parsers that check every reply is well formed, and a simulator running
on its own thread so synchronous clients (hypothesis, third-party libraries) can drive it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import struct
import threading
import time
import tty
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ketapump import _core
from ketapump.clock import ScaledClock
from ketapump.sim.server import SimServer

T = TypeVar("T")

#: Modbus exception codes a reply may carry (the map's four and TCP's gateway code).
EXCEPTION_CODES = {1, 2, 3, 4, 11}


def crc16(data: bytes) -> bytes:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def rtu(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body)


def mbap(transaction: int, unit: int, pdu: bytes, *, protocol: int = 0, length: int | None = None) -> bytes:
    n = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", transaction, protocol, n, unit) + pdu


def read_pdu(address: int, count: int, function: int = 3) -> bytes:
    return struct.pack(">BHH", function, address, count)


def write1_pdu(address: int, value: int) -> bytes:
    return struct.pack(">BHH", 6, address, value)


def writen_pdu(address: int, values: list[int]) -> bytes:
    return struct.pack(f">BHHB{len(values)}H", 16, address, len(values), 2 * len(values), *values)


def check_pdu(request: bytes | None, pdu: bytes) -> None:
    """A reply PDU is well formed: a normal reply of its function's shape, or an exception with a known
    code. With the ``request`` PDU, it must answer that request."""
    assert pdu, "empty reply PDU"
    function = pdu[0]
    if function & 0x80:
        assert len(pdu) == 2 and pdu[1] in EXCEPTION_CODES, pdu.hex(" ")
        if request is not None:
            assert function == (request[0] | 0x80) & 0xFF, (request.hex(" "), pdu.hex(" "))
        return
    assert function in (3, 4, 6, 16, 23), pdu.hex(" ")
    if request is not None:
        assert function == request[0], (request.hex(" "), pdu.hex(" "))
    if function in (3, 4, 23):
        assert len(pdu) == 2 + pdu[1] and pdu[1] % 2 == 0 and pdu[1] > 0, pdu.hex(" ")
        if request is not None:
            assert pdu[1] == 2 * struct.unpack(">H", request[3:5])[0]
    elif function == 6:
        assert len(pdu) == 5
        if request is not None:
            assert pdu == request, (request.hex(" "), pdu.hex(" "))
    else:
        assert len(pdu) == 5
        if request is not None:
            assert pdu == request[:5]


def split_mbap(stream: bytes) -> list[tuple[int, int, bytes]]:
    """Cuts a reply stream into MBAP frames ``(transaction, unit, pdu)``, asserting each header."""
    frames = []
    while stream:
        assert len(stream) >= 8, stream.hex(" ")
        transaction, protocol, length, unit = struct.unpack(">HHHB", stream[:7])
        assert protocol == 0 and 2 <= length <= 254, stream[:8].hex(" ")
        assert len(stream) >= 6 + length, stream.hex(" ")
        frames.append((transaction, unit, stream[7 : 6 + length]))
        stream = stream[6 + length :]
    return frames


def split_rtu(stream: bytes, unit: int = 1) -> list[bytes]:
    """Cuts a reply stream into RTU frames (their PDUs), asserting unit, length rules and CRC."""
    pdus = []
    while stream:
        assert len(stream) >= 5 and stream[0] == unit, stream.hex(" ")
        function = stream[1]
        n = 5 if function & 0x80 else 5 + stream[2] if function in (3, 4) else 8
        frame, stream = stream[:n], stream[n:]
        assert len(frame) == n and crc16(frame[:-2]) == frame[-2:], frame.hex(" ")
        pdus.append(frame[1:-2])
    return pdus


def read_until_quiet(fd_or_sock: int | socket.socket, quiet_s: float, *, limit_s: float = 5.0) -> bytes:
    """Everything that arrives until nothing has for ``quiet_s`` (or ``limit_s`` in all, or EOF)."""
    out = bytearray()
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        ready, _, _ = select.select([fd_or_sock], [], [], quiet_s)
        if not ready:
            break
        data = fd_or_sock.recv(65536) if isinstance(fd_or_sock, socket.socket) else os.read(fd_or_sock, 65536)
        if not data:
            break
        out += data
    return bytes(out)


def read_n(fd_or_sock: int | socket.socket, n: int, *, limit_s: float = 2.0) -> bytes:
    """Exactly ``n`` bytes, or what arrived of them within ``limit_s`` (or before EOF)."""
    out = bytearray()
    end = time.monotonic() + limit_s
    while len(out) < n:
        ready, _, _ = select.select([fd_or_sock], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        want = n - len(out)
        data = fd_or_sock.recv(want) if isinstance(fd_or_sock, socket.socket) else os.read(fd_or_sock, want)
        if not data:
            break
        out += data
    return bytes(out)


def open_pty(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return fd


class ThreadedSim:
    """A :class:`SimServer` on its own event-loop thread. :meth:`call` runs a function on that thread,
    the only safe way to touch the pump while it is served."""

    def __init__(self, pump: _core.SimPump | None = None, time_scale: float = 1.0, **server: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = SimServer(
            pump or _core.SimPump("bd-plastipak-50", seed=1), ScaledClock(time_scale), **server
        )
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedSim:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    @property
    def tcp_address(self) -> tuple[str, int]:
        host, port = str(self.server.endpoints["modbus_tcp"]).rsplit(":", 1)
        return host, int(port)

    @contextlib.contextmanager
    def tcp(self, timeout_s: float = 2.0) -> Iterator[socket.socket]:
        sock = socket.create_connection(self.tcp_address, timeout=timeout_s)
        try:
            yield sock
        finally:
            sock.close()

    @contextlib.contextmanager
    def pty(self, endpoint: str) -> Iterator[int]:
        fd = open_pty(str(self.server.endpoints[endpoint]))
        try:
            yield fd
        finally:
            os.close(fd)

    def registers(self) -> dict[str, float]:
        """Every register a rejected frame must not change (settings, commands, faults; not telemetry
        that moves by itself)."""
        regmap = self.server.regmap

        def snapshot() -> dict[str, float]:
            pump = self.server.advanced()
            return {
                r.name: pump.value(r.name)
                for r in regmap.registers
                if r.block in {"syringe", "command", "fault"}
                and r.access != "wo"
                and r.name != "syringe_volume_ml"
            } | {"alarm_bits": pump.value("alarm_bits")}

        return self.call(snapshot)
