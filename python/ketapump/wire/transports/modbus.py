"""Modbus transports over pymodbus's async clients: ``modbus-tcp://`` and ``modbus-rtu://``.

pymodbus's own retries are off: the base class retries, reconnects and maps errors, so every
transport behaves the same way.
"""

from __future__ import annotations

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from ketapump.errors import TransportError
from ketapump.wire.transports.base import PumpRefusedError, RegisterTransport

MODBUS_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    6: "server device busy",
}


class _ModbusTransport(RegisterTransport):
    """Shared request code; subclasses build the client."""

    def __init__(self, url: str, *, unit: int, timeout_s: float, retries: int) -> None:
        super().__init__(url, timeout_s=timeout_s, retries=retries)
        self.unit = unit
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        raise NotImplementedError

    async def _connect(self) -> None:
        # Held before awaiting, so a connect cancelled by the timeout is still closed by _close.
        self._client = client = self._make_client()
        if not await client.connect():
            await self._close()
            raise TransportError(self.url, "cannot connect")

    async def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _live(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is None:
            raise TransportError(self.url, "not connected")
        return self._client

    def _check(self, response: object, what: str) -> None:
        if getattr(response, "isError", lambda: False)():
            code = int(getattr(response, "exception_code", 0) or 0)
            name = MODBUS_EXCEPTIONS.get(code, "exception")
            raise PumpRefusedError(self.url, f"{what} refused: Modbus exception {code} ({name})", code)

    async def _read(self, address: int, count: int) -> list[int]:
        try:
            rr = await self._live().read_holding_registers(address, count=count, device_id=self.unit)
        except ModbusException as e:
            raise TransportError(self.url, str(e)) from e
        self._check(rr, f"read {count} at {address}")
        if len(rr.registers) != count:
            raise TransportError(self.url, f"read {count} at {address}: got {len(rr.registers)} registers")
        return list(rr.registers)

    async def _write(self, address: int, values: list[int]) -> None:
        client = self._live()
        try:
            if len(values) == 1:
                rr = await client.write_register(address, values[0], device_id=self.unit)
            else:
                rr = await client.write_registers(address, values, device_id=self.unit)
        except ModbusException as e:
            raise TransportError(self.url, str(e)) from e
        self._check(rr, f"write at {address}")


class ModbusTcpTransport(_ModbusTransport):
    """``modbus-tcp://HOST:PORT?unit=1``."""

    def __init__(self, url: str, *, host: str, port: int, unit: int, timeout_s: float, retries: int) -> None:
        super().__init__(url, unit=unit, timeout_s=timeout_s, retries=retries)
        self.host, self.port = host, port

    def _make_client(self) -> AsyncModbusTcpClient:
        return AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0
        )


class ModbusRtuTransport(_ModbusTransport):
    """``modbus-rtu://PATH?baud=19200&parity=N&unit=1``; PATH may be a pyserial URL."""

    def __init__(
        self, url: str, *, path: str, baud: int, parity: str, unit: int, timeout_s: float, retries: int
    ) -> None:
        super().__init__(url, unit=unit, timeout_s=timeout_s, retries=retries)
        self.path, self.baud, self.parity = path, baud, parity

    def _make_client(self) -> AsyncModbusSerialClient:
        return AsyncModbusSerialClient(
            self.path,
            framer=FramerType.RTU,
            baudrate=self.baud,
            parity=self.parity,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
        )
