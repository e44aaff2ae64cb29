"""``modbus-tcp://HOST:PORT?unit=1`` over pymodbus's async TCP client.

pymodbus's own retries are off: the base class retries, reconnects and maps errors, so every
transport behaves the same way. A Modbus TCP reply carries its request's transaction id, and pymodbus
matches replies to requests by it, so a late reply is never taken for the answer to a later request
(``tests/test_wire_integrity.py`` proves it against injected delays); the base class also drops the
connection after a failed attempt. Modbus RTU has no such id: its master is
:mod:`ketapump.wire.transports.rtu`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from ketapump.errors import TransportError
from ketapump.wire.transports.base import RegisterTransport, modbus_refusal


class ModbusTcpTransport(RegisterTransport):
    """``modbus-tcp://HOST:PORT?unit=1``."""

    def __init__(self, url: str, *, host: str, port: int, unit: int, timeout_s: float, retries: int) -> None:
        super().__init__(url, timeout_s=timeout_s, retries=retries)
        self.host, self.port, self.unit = host, port, unit
        self._client: AsyncModbusTcpClient | None = None

    async def _connect(self) -> None:
        # Held before awaiting, so a connect cancelled by the timeout is still closed by _close.
        self._client = client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0
        )
        if not await client.connect():
            await self._close()
            raise TransportError(self.url, "cannot connect")

    async def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _live(self) -> AsyncModbusTcpClient:
        if self._client is None:
            raise TransportError(self.url, "not connected")
        return self._client

    def _check(self, response: object, what: Callable[[], str]) -> None:
        is_error = getattr(response, "isError", None)
        if is_error is not None and is_error():
            raise modbus_refusal(self.url, what(), int(getattr(response, "exception_code", 0) or 0))

    # _read and _write_and_read return _registers' coroutine (one coroutine less per request).

    def _read(self, address: int, count: int) -> Awaitable[list[int]]:
        client = self._live()
        read = client.read_input_registers if self.read_function == 4 else client.read_holding_registers
        return self._registers(
            lambda: read(address, count=count, device_id=self.unit),
            count,
            lambda: f"read {count} at {address}",
        )

    async def _registers(
        self, send: Callable[[], Awaitable[Any]], count: int, what: Callable[[], str]
    ) -> list[int]:
        """The registers the reply to ``send()`` carries: exactly ``count`` of them, or an error naming
        ``what()`` (pymodbus may refuse a request as it builds it: inside the same mapping)."""
        try:
            rr = await send()
        except ModbusException as e:
            raise TransportError(self.url, str(e)) from e
        self._check(rr, what)
        registers: list[int] = rr.registers
        if len(registers) != count:
            raise TransportError(self.url, f"{what()}: got {len(registers)} registers")
        return registers

    async def _write(self, address: int, values: list[int]) -> None:
        client = self._live()
        try:
            if len(values) == 1 and self.write_single:
                rr = await client.write_register(address, values[0], device_id=self.unit)
            else:
                rr = await client.write_registers(address, values, device_id=self.unit)
        except ModbusException as e:
            raise TransportError(self.url, str(e)) from e
        self._check(rr, lambda: f"write at {address}")

    def _write_and_read(
        self, write_address: int, values: list[int], read_address: int, count: int
    ) -> Awaitable[list[int]]:
        client = self._live()
        return self._registers(
            lambda: client.readwrite_registers(
                read_address=read_address,
                read_count=count,
                write_address=write_address,
                values=values,
                device_id=self.unit,
            ),
            count,
            lambda: f"write {len(values)} at {write_address} and read {count} at {read_address}",
        )
