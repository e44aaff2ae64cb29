"""``sim://``: the simulated pump firmware in-process, without sockets.

The same register-map driver that talks to a real pump over Modbus talks to this transport; only
the bytes on the wire are skipped. The pump advances to the injected clock's time before every
request, so with a :class:`~ketapump.clock.VirtualClock` a whole session runs faster than real time.

A request is a call into the simulated firmware that returns at once: it does not yield to the event
loop (a control tick yields once, where its clock waits). Yielding at every read and write tripled the
event-loop rounds of a tick, each a poll of the operating system, for nothing to wait on.
"""

from __future__ import annotations

from collections.abc import Callable

from ketapump import _core
from ketapump.clock import Clock
from ketapump.wire.transports.base import (
    MAX_READ,
    MAX_WRITE,
    RegisterTransport,
    describe_read,
    describe_write,
    modbus_refusal,
)


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

    # The firmware answers at once, so the request hooks are coroutines around two plain calls: a
    # write-then-read is then one coroutine rather than three (the general path's, and one each for
    # the write and the read), at every control tick.

    async def _read(self, address: int, count: int, what: Callable[[], str]) -> list[int]:
        return self._read_now(address, count, what)

    async def _write(self, address: int, values: list[int], what: Callable[[], str]) -> None:
        self._write_now(address, values, what)

    async def _write_and_read(
        self, write_address: int, values: list[int], read_address: int, count: int, what: Callable[[], str]
    ) -> list[int]:
        """The write, then the read, as two exchanges (the general path's order, refusals and names)."""
        self._write_now(write_address, values, describe_write(write_address, values))
        return self._read_now(read_address, count, describe_read(read_address, count))

    def _read_now(self, address: int, count: int, what: Callable[[], str]) -> list[int]:
        self.pump.advance_to(self.clock.now())
        # Checked as the wire's request handler orders them: the quantity (3), then the address (2).
        if not 1 <= count <= MAX_READ:
            code = 3
        elif not 0 <= address <= 0xFFFF:
            code = 2
        else:
            code, words = self.pump.read_registers(address, count)
            if not code:
                return words
        raise modbus_refusal(self.url, what(), code)

    def _write_now(self, address: int, values: list[int], what: Callable[[], str]) -> None:
        self.pump.advance_to(self.clock.now())
        if not (1 <= len(values) <= MAX_WRITE and _all_words(values)):
            code = 3
        elif not 0 <= address <= 0xFFFF:
            code = 2
        else:
            code = self.pump.write_registers(address, values)
            if not code:
                return
        raise modbus_refusal(self.url, what(), code)


def _all_words(values: list[int]) -> bool:
    """Whether every value fits a 16-bit register: ``all(0 <= v <= 0xFFFF for v in values)`` without a
    generator, which cost more than the simulated firmware's write it guards."""
    for v in values:  # noqa: SIM110 (the generator is what this avoids)
        if not 0 <= v <= 0xFFFF:
            return False
    return True
