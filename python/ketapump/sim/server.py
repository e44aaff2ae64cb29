"""Serve a simulated pump: Modbus TCP (pymodbus server), Modbus RTU and New Era ASCII on PTYs.

One :class:`~ketapump._core.SimPump` sits behind every endpoint; all of them run in one asyncio loop,
so the pump is never touched concurrently. Pump time is the clock's time (real time × scale,
:class:`~ketapump.clock.ScaledClock`); a ticker advances the pump between requests so its watchdog and
faults act with nobody asking.

Serial endpoints are PTYs: clients open the slave path (``/dev/pts/N``) as they would a real port.
A PTY ignores baud rate, so replies are paced here: a reply leaves after the wire time of the request
and of the reply at the configured baud (10 bits per byte, 8N1), plus any injected delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from ketapump import _core
from ketapump.clock import Clock
from ketapump.wire import RegisterMap, load_register_map

log = logging.getLogger(__name__)

#: How often the ticker advances the pump (real seconds).
TICK_S = 0.01
#: Longest pump-time step between the New Era port's periodic duties (its watchdog feed, safe mode).
POLL_STEP_S = 0.1
#: A dropped Modbus TCP reply is held this long (real seconds) so the client times out.
TCP_DROP_HOLD_S = 5.0
BITS_PER_BYTE = 10
WRITE_FUNCTIONS = frozenset({6, 16})

_DATATYPES = {"u16": DataType.UINT16, "i32": DataType.INT32, "f32": DataType.FLOAT32}


def wire_time_s(n_bytes: int, baud: int) -> float:
    """Seconds ``n_bytes`` take on an 8N1 line at ``baud``."""
    return n_bytes * BITS_PER_BYTE / baud


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
        if written < len(data):
            log.warning("%s: client not reading, %d reply bytes dropped", self.path, len(data) - written)
        return len(data) - written

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class SerialEndpoint:
    """A PTY served by a codec: ``process(line_s, data)`` returns ``[(reply, delay_ms), ...]``."""

    line: PtyLine
    baud: int
    pace: bool
    process: Callable[[float, bytes], list[tuple[bytes, int]]]
    idle: Callable[[float], list[tuple[bytes, int]]] | None = None
    queue: asyncio.Queue[tuple[float, bytes]] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None

    def on_readable(self) -> None:
        data = self.line.read()
        if not data:
            return
        request_wire = wire_time_s(len(data), self.baud) if self.pace else 0.0
        for reply, delay_ms in self.process(time.monotonic(), data):
            self.queue.put_nowait((request_wire + delay_ms / 1000.0, reply))

    async def write_replies(self) -> None:
        while True:
            wait_s, reply = await self.queue.get()
            if self.pace:
                wait_s += wire_time_s(len(reply), self.baud)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            self.line.write(reply)


class SimServer:
    """Serves one simulated pump on any of Modbus TCP, Modbus RTU (PTY) and New Era ASCII (PTY)."""

    def __init__(
        self,
        pump: _core.SimPump,
        clock: Clock,
        *,
        unit_id: int = 1,
        nesp_address: int = 0,
        baud: int = 19_200,
        pace: bool = True,
    ) -> None:
        self.pump = pump
        self.clock = clock
        self.unit_id = unit_id
        self.nesp_address = nesp_address
        self.baud = baud
        self.pace = pace
        self.regmap: RegisterMap = load_register_map()
        self.endpoints: dict[str, str | None] = {"modbus_tcp": None, "modbus_rtu_pty": None, "nesp_pty": None}
        self._tcp: ModbusTcpServer | None = None
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
    ) -> dict[str, str | None]:
        """Starts the chosen endpoints and returns their addresses."""
        loop = asyncio.get_running_loop()
        if modbus_tcp:
            self._tcp = ModbusTcpServer(
                self._modbus_device(), framer=FramerType.SOCKET, address=(bind, tcp_port)
            )
            await self._tcp.serve_forever(background=True)
            transport = cast(asyncio.Server, self._tcp.transport)
            host, port = transport.sockets[0].getsockname()[:2]
            self.endpoints["modbus_tcp"] = f"{host}:{port}"
        if modbus_rtu:
            rtu = _core.RtuPort(unit_id=self.unit_id, baud=self.baud)
            endpoint = SerialEndpoint(
                PtyLine(),
                self.baud,
                self.pace,
                process=lambda line_s, data: rtu.process(line_s, data, self._advanced()),
                idle=lambda line_s: rtu.idle(line_s, self._advanced()),
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
                    line_s, self.clock.now(), data, {self.nesp_address: self._advanced()}
                ),
            )
            self._add_serial(loop, endpoint)
            self.endpoints["nesp_pty"] = endpoint.line.path
        self._ticker = asyncio.create_task(self._tick())
        return dict(self.endpoints)

    def _add_serial(self, loop: asyncio.AbstractEventLoop, endpoint: SerialEndpoint) -> None:
        loop.add_reader(endpoint.line.master, endpoint.on_readable)
        endpoint.writer = asyncio.create_task(endpoint.write_replies())
        self._serial.append(endpoint)

    async def stop(self) -> None:
        """Stops every endpoint and closes the PTYs."""
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
            await self._tcp.shutdown()  # type: ignore[no-untyped-call]
            self._tcp = None

    async def _tick(self) -> None:
        while True:
            self._advanced()
            line_s = time.monotonic()
            for endpoint in self._serial:
                if endpoint.idle is not None:
                    for reply, delay_ms in endpoint.idle(line_s):
                        endpoint.queue.put_nowait((delay_ms / 1000.0, reply))
            await asyncio.sleep(TICK_S)

    def _advanced(self) -> _core.SimPump:
        """Advances the pump to the clock's time in steps of at most :data:`POLL_STEP_S` pump seconds,
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

    # ----- Modbus TCP --------------------------------------------------------------------------

    def _modbus_device(self) -> SimDevice:
        blocks = [
            SimData(
                r.address,
                values=0.0 if r.type == "f32" else 0,
                datatype=_DATATYPES[r.type],
                readonly=r.access == "ro",
            )
            for r in self.regmap.registers
        ]
        return SimDevice(id=self.unit_id, simdata=blocks, action=partial(_modbus_action, self))


async def _modbus_action(  # noqa: PLR0917 - the signature pymodbus calls
    server: SimServer,
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    current_registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """pymodbus hook: reads serve the firmware's live registers, writes go to the firmware.

    Communication faults act on the reply, as on the serial endpoints: the reply's fate is decided as
    the request arrives (so the write that sets a fault is still answered), the request is executed,
    then its answer is delayed or withheld (held until the client has given up).
    """
    pump = server._advanced()
    # pymodbus reads back after a single-register write (function 6) to build the echo: the fate is
    # decided once per request, on its first call. TCP has no checksum to corrupt.
    first_call = set_values is not None or function_code not in WRITE_FUNCTIONS
    drop, _corrupt, delay_ms = pump.comm_action() if first_call else (False, False, 0)
    if set_values is None:
        code, words = pump.read_registers(address, count)
        if not code:
            offset = address - start_address
            current_registers[offset : offset + count] = words
    else:
        code = pump.write_registers(address, [int(v) for v in set_values])
    if drop:
        await asyncio.sleep(TCP_DROP_HOLD_S)
    elif delay_ms:
        await asyncio.sleep(delay_ms / 1000.0)
    return ExcCodes(code) if code else None
