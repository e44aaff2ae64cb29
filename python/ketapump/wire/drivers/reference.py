"""Driver for the "ketapump reference pump" register map (docs/register-map.md), over any register
transport: Modbus TCP, Modbus RTU, or the in-process simulator.
"""

from __future__ import annotations

import struct

from ketapump.wire.drivers.base import PumpDriver, PumpTelemetry
from ketapump.wire.regmap import RegisterMap, decode, encode, load_register_map
from ketapump.wire.transports.base import RegisterTransport

#: Big-endian struct codes of a register type (high word first, as the map's word order says).
_STRUCT_CODES = {"u16": "H", "i32": "i", "f32": "f"}
#: The telemetry the driver reports, by register name.
_TELEMETRY_FIELDS = (
    "plunger_volume_ml",
    "line_pressure_mmhg",
    "motor_running",
    "air_in_line",
    "syringe_present",
    "end_of_travel",
    "alarm_bits",
    "infused_ml",
)


class TelemetryBlock:
    """The telemetry block's layout, compiled once: its words become values with two struct calls
    (the words to bytes, the bytes to one value per register) instead of a decode per field."""

    def __init__(self, regmap: RegisterMap, first: str, last: str) -> None:
        start, end = regmap[first], regmap[last]
        self.address = start.address
        self.count = end.address + end.words - start.address
        registers = sorted(
            (r for r in regmap.registers if self.address <= r.address < self.address + self.count),
            key=lambda r: r.address,
        )
        if sum(r.words for r in registers) != self.count:
            raise ValueError(f"the telemetry block {first}..{last} has a gap or a split register")
        self._words = struct.Struct(f">{self.count}H")
        self._values = struct.Struct(">" + "".join(_STRUCT_CODES[r.type] for r in registers))
        index = {r.name: i for i, r in enumerate(registers)}
        self._picks = tuple(index[name] for name in _TELEMETRY_FIELDS)

    def decode(self, words: list[int]) -> PumpTelemetry:
        values = self._values.unpack(self._words.pack(*words))
        volume, pressure, running, air, present, end, bits, infused = (values[i] for i in self._picks)
        return PumpTelemetry(
            volume_ml=float(volume),
            pressure_mmhg=float(pressure),
            motor_running=running == 1,
            air_in_line=air == 1,
            syringe_present=present == 1,
            end_of_travel=end == 1,
            pump_alarms=frozenset(name for bit, name in PUMP_ALARMS.items() if bits >> bit & 1),
            infused_ml=float(infused),
        )


#: Pump-side alarm bits (register ``alarm_bits``).
PUMP_ALARMS = {0: "reset", 1: "watchdog", 2: "motor_stall", 3: "end_of_travel", 4: "over_pressure"}
RUN_STOP, RUN_INFUSE, RUN_WITHDRAW = 0, 1, 2


class ReferencePumpDriver(PumpDriver):
    """Typed operations on the reference pump. Telemetry is one block read (registers 30–48)."""

    def __init__(self, transport: RegisterTransport, *, watchdog_ms: int = 500) -> None:
        self.transport = transport
        self.watchdog_ms = watchdog_ms
        self.map: RegisterMap = load_register_map()
        self._telemetry = TelemetryBlock(self.map, "encoder_counts", "heartbeat_age_ms")
        self._heartbeat_address = self.map["heartbeat"].address
        # Function 23 where the map lists it: the heartbeat and the telemetry in one transaction.
        self._one_transaction = 23 in self.map.function_codes
        self._beat = 0
        # A transport that must prove its line is in step (Modbus RTU) writes fresh values to the
        # heartbeat: any value is valid there, and a write only refreshes the watchdog, which the loop
        # refreshes every tick anyway.
        transport.sync_register = self.map["heartbeat"].address

    async def _write(self, name: str, value: float) -> None:
        register = self.map[name]
        await self.transport.write_registers(register.address, encode(register, value))

    async def _read(self, name: str) -> float:
        register = self.map[name]
        return decode(register, await self.transport.read_registers(register.address, register.words))

    async def connect(self) -> None:
        """Connects and sets the watchdog period; a latched power-up alarm is left for the caller to
        see in the telemetry (and acknowledge explicitly), so a restart never goes unnoticed."""
        await self.transport.connect()
        await self._write("watchdog_ms", self.watchdog_ms)

    async def close(self) -> None:
        await self.transport.close()

    async def identify(self) -> dict[str, str]:
        """The identity block (registers 0–5), one read: vendor, model, firmware, map version, serial."""
        names = ("vendor_id", "model", "firmware_version", "map_version", "serial_number")
        first = self.map[names[0]].address
        last = self.map[names[-1]]
        words = await self.transport.read_registers(first, last.address + last.words - first)
        identity = {}
        for name in names:
            r = self.map[name]
            identity[name] = f"{decode(r, words[r.address - first : r.address - first + r.words]):g}"
        return identity

    async def set_syringe(self, diameter_mm: float) -> None:
        await self._write("syringe_diameter_mm", diameter_mm)

    async def set_rate_ml_h(self, rate_ml_h: float) -> None:
        await self._write("rate_ml_h", rate_ml_h)

    async def start(self) -> None:
        await self._write("run_mode", RUN_INFUSE)

    async def withdraw(self, rate_ml_h: float) -> None:
        """Retracts at ``rate_ml_h`` (occlusion back-off), rate and direction in ONE write (registers
        20–22): two writes would leave the pump infusing at the back-off rate into an occluded line
        between them. The firmware validates the whole write before applying any of it."""
        rate, mode = self.map["rate_ml_h"], self.map["run_mode"]
        assert mode.address == rate.address + rate.words, "rate_ml_h and run_mode are adjacent"
        await self.transport.write_registers(rate.address, [*encode(rate, rate_ml_h), RUN_WITHDRAW])

    async def stop(self) -> None:
        await self._write("run_mode", RUN_STOP)

    async def read_telemetry(self) -> PumpTelemetry:
        block = self._telemetry
        return block.decode(await self.transport.read_registers(block.address, block.count))

    async def heartbeat_and_read_telemetry(self) -> PumpTelemetry:
        """The heartbeat written and the telemetry read in one function 23 transaction (the pump
        applies the write first), or two requests where the map does not list function 23."""
        if not self._one_transaction:
            return await super().heartbeat_and_read_telemetry()
        block = self._telemetry
        words = await self.transport.write_and_read_registers(
            self._heartbeat_address, [self._next_beat()], block.address, block.count
        )
        return block.decode(words)

    async def read_delivered_ml(self) -> float:
        return await self._read("infused_ml")

    async def acknowledge_alarm(self) -> None:
        await self._write("alarm_ack", 1)

    async def heartbeat(self) -> None:
        await self.transport.write_registers(self._heartbeat_address, [self._next_beat()])

    def _next_beat(self) -> int:
        self._beat = (self._beat + 1) % 65_536
        return self._beat
