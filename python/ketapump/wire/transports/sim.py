"""``sim://``: the simulated pump firmware in-process, without sockets.

The same register-map driver that talks to a real pump over Modbus talks to this transport; only
the bytes on the wire are skipped. The pump advances to the injected clock's time before every
request, so with a :class:`~ketapump.clock.VirtualClock` a whole session runs faster than real time.
"""

from __future__ import annotations

import asyncio

from ketapump import _core
from ketapump.clock import Clock
from ketapump.wire.transports.base import PumpRefusedError, RegisterTransport
from ketapump.wire.transports.modbus import MODBUS_EXCEPTIONS


class SimTransport(RegisterTransport):
    def __init__(
        self, url: str, pump: _core.SimPump, clock: Clock, *, timeout_s: float, retries: int
    ) -> None:
        super().__init__(url, timeout_s=timeout_s, retries=retries)
        self.pump = pump
        self.clock = clock

    async def _connect(self) -> None:
        self.pump.advance_to(self.clock.now())

    async def _close(self) -> None:
        return None

    def _refused(self, code: int, what: str) -> PumpRefusedError:
        name = MODBUS_EXCEPTIONS.get(code, "exception")
        return PumpRefusedError(self.url, f"{what} refused: Modbus exception {code} ({name})", code)

    async def _read(self, address: int, count: int) -> list[int]:
        await asyncio.sleep(0)
        self.pump.advance_to(self.clock.now())
        if not (0 <= address <= 0xFFFF and 0 < count <= 125):
            raise self._refused(2, f"read {count} at {address}")
        code, words = self.pump.read_registers(address, count)
        if code:
            raise self._refused(code, f"read {count} at {address}")
        return words

    async def _write(self, address: int, values: list[int]) -> None:
        await asyncio.sleep(0)
        self.pump.advance_to(self.clock.now())
        if not (0 <= address <= 0xFFFF and values and all(0 <= v <= 0xFFFF for v in values)):
            raise self._refused(2, f"write at {address}")
        code = self.pump.write_registers(address, values)
        if code:
            raise self._refused(code, f"write at {address}")
