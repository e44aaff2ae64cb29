"""Driver for the "ketapump reference pump" register map (docs/register-map.md), over any register
transport: Modbus TCP, Modbus RTU, or the in-process simulator.
"""

from __future__ import annotations

from ketapump.wire.drivers.base import PumpDriver, PumpTelemetry
from ketapump.wire.regmap import RegisterMap, decode, encode, load_register_map
from ketapump.wire.transports.base import RegisterTransport

#: Pump-side alarm bits (register ``alarm_bits``).
PUMP_ALARMS = {0: "reset", 1: "watchdog", 2: "motor_stall", 3: "end_of_travel", 4: "over_pressure"}
RUN_STOP, RUN_INFUSE, RUN_WITHDRAW = 0, 1, 2


class ReferencePumpDriver(PumpDriver):
    """Typed operations on the reference pump. Telemetry is one block read (registers 30–48)."""

    def __init__(self, transport: RegisterTransport, *, watchdog_ms: int = 500) -> None:
        self.transport = transport
        self.watchdog_ms = watchdog_ms
        self.map: RegisterMap = load_register_map()
        first = self.map["encoder_counts"]
        last = self.map["heartbeat_age_ms"]
        self._telemetry_span = (first.address, last.address + last.words - first.address)
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
        start, count = self._telemetry_span
        words = await self.transport.read_registers(start, count)

        def value(name: str) -> float:
            r = self.map[name]
            return decode(r, words[r.address - start : r.address - start + r.words])

        bits = int(value("alarm_bits"))
        return PumpTelemetry(
            volume_ml=value("plunger_volume_ml"),
            pressure_mmhg=value("line_pressure_mmhg"),
            motor_running=value("motor_running") == 1,
            air_in_line=value("air_in_line") == 1,
            syringe_present=value("syringe_present") == 1,
            end_of_travel=value("end_of_travel") == 1,
            pump_alarms=frozenset(name for bit, name in PUMP_ALARMS.items() if bits >> bit & 1),
            infused_ml=value("infused_ml"),
        )

    async def read_delivered_ml(self) -> float:
        return await self._read("infused_ml")

    async def acknowledge_alarm(self) -> None:
        await self._write("alarm_ack", 1)

    async def heartbeat(self) -> None:
        self._beat = (self._beat + 1) % 65_536
        await self._write("heartbeat", self._beat)
