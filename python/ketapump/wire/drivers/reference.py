"""Driver for the "ketapump reference pump" register map (docs/register-map.md), or any map in the same
schema (a bring-your-own map, ``?map=PATH``), over any register transport: Modbus TCP, Modbus RTU, or
the in-process simulator.

The map decides where each register is, how its value is scaled and laid out, which function codes
carry requests, and which registers exist: a register the map lacks is a feature the pump lacks
(:attr:`ReferencePumpDriver.missing_features`), never an error at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ketapump.wire.drivers.base import PumpDriver, PumpTelemetry
from ketapump.wire.regmap import Register, RegisterMap, load_register_map
from ketapump.wire.transports.base import MAX_READ, RegisterTransport
from ketapump.wire.transports.sim import SimTransport

#: Pump-side alarm bits (register ``alarm_bits``).
PUMP_ALARMS = {0: "reset", 1: "watchdog", 2: "motor_stall", 3: "end_of_travel", 4: "over_pressure"}
RUN_STOP, RUN_INFUSE, RUN_WITHDRAW = 0, 1, 2
#: The registers one telemetry sample reads (those the map has).
TELEMETRY = (
    "plunger_volume_ml",
    "line_pressure_mmhg",
    "air_in_line",
    "syringe_present",
    "end_of_travel",
    "motor_running",
    "alarm_bits",
    "infused_ml",
)
#: Where each field of a telemetry sample comes from, in PumpTelemetry's order: its register, and what
#: it is when the map lacks that register (a value, or another register; NaN if that is missing too).
SAMPLE_FIELDS: tuple[tuple[str, float | str], ...] = (
    ("plunger_volume_ml", "infused_ml"),
    ("line_pressure_mmhg", math.nan),
    ("motor_running", math.nan),
    ("air_in_line", 0.0),
    ("syringe_present", 1.0),
    ("end_of_travel", 0.0),
    ("alarm_bits", math.nan),
    ("infused_ml", math.nan),
)
#: The pump alarms each value of the alarm bits' low five bits names, worked out once.
ALARM_SETS = tuple(
    frozenset(name for bit, name in PUMP_ALARMS.items() if bits >> bit & 1)
    for bits in range(1 << len(PUMP_ALARMS))
)


def read_runs(registers: list[Register], regmap: RegisterMap) -> list[tuple[int, int]]:
    """``(address, count)`` reads covering ``registers``. Registers share one read when every address
    between them belongs to a readable register of the map (the reference pump's telemetry, 32–43, is
    one read across ``status``); an address the map lacks, or a write-only one, would be refused, so
    such a gap splits the reads."""
    readable = {r.address + i for r in regmap.registers if r.access != "wo" for i in range(r.words)}
    runs: list[tuple[int, int]] = []
    for r in sorted(registers, key=lambda r: r.address):
        if runs:
            start, count = runs[-1]
            end = start + count
            joined = r.address + r.words - start
            if end <= r.address and joined <= MAX_READ and readable.issuperset(range(end, r.address)):
                runs[-1] = (start, joined)
                continue
        runs.append((r.address, r.words))
    return runs


class ReferencePumpDriver(PumpDriver):
    """Typed operations on a register-map pump. Telemetry is one read per run of adjacent registers
    (one read, registers 32–43, on the reference pump)."""

    def __init__(
        self, transport: RegisterTransport, *, watchdog_ms: int = 500, regmap: RegisterMap | None = None
    ) -> None:
        self.transport = transport
        self.watchdog_ms = watchdog_ms
        self.map: RegisterMap = regmap or transport.register_map or load_register_map()
        self._telemetry = [self.map[name] for name in TELEMETRY if name in self.map]
        self._runs = read_runs(self._telemetry, self.map)
        # Worked out once, used every tick: the telemetry registers the map has, decoded in one step
        # from the words of the reads, then the fields' defaults; each field's index in that row.
        self._decode_telemetry = self.map.block_decoder(self._telemetry, self._runs)
        index = {r.name: i for i, r in enumerate(self._telemetry)}
        self._defaults = tuple(math.nan if isinstance(d, str) else d for _, d in SAMPLE_FIELDS)
        slots = []
        for i, (name, default) in enumerate(SAMPLE_FIELDS):
            source = name if name in index or not isinstance(default, str) else default
            slots.append(index.get(source, len(index) + i))
        self._slots = tuple(slots)
        names = {r.name for r in self.map.registers}
        self._encoders = {name: self.map.encoder(self.map[name]) for name in names}
        self._beat = 0
        if "line_pressure_mmhg" not in self.map:
            self.lacks = frozenset({"pressure_mmhg"})
        #: What this pump cannot do, one line each (empty for the reference pump).
        self.missing_features: tuple[str, ...] = tuple(self.map.missing_features())
        codes = self.map.function_codes
        transport.read_function = 3 if 3 in codes else 4
        transport.write_single = 6 in codes
        # A transport that must prove its line is in step (Modbus RTU) writes fresh values to the
        # heartbeat: any value is valid there, and a write only refreshes the watchdog, which the loop
        # refreshes every tick anyway.
        heartbeat = self.map.get("heartbeat")
        transport.sync_register = heartbeat.address if heartbeat is not None else None
        self._heartbeat_address = heartbeat.address if heartbeat is not None else -1
        # Function 23 where the map lists it and the telemetry is one read: the heartbeat and the
        # telemetry in one transaction.
        self._one_transaction = 23 in codes and heartbeat is not None and len(self._runs) == 1

    async def _write(self, name: str, value: float) -> None:
        await self.transport.write_registers(self.map[name].address, self._encoders[name](value))

    async def _read(self, name: str) -> float:
        register = self.map[name]
        words = await self.transport.read_registers(register.address, register.words)
        return self.map.decode(register, words)

    async def connect(self) -> None:
        """Connects and sets the watchdog period; a latched power-up alarm is left for the caller to
        see in the telemetry (and acknowledge explicitly), so a restart never goes unnoticed."""
        await self.transport.connect()
        if "watchdog_ms" in self.map:
            await self._write("watchdog_ms", self.watchdog_ms)

    async def close(self) -> None:
        await self.transport.close()

    async def identify(self) -> dict[str, str]:
        """The identity block (registers 0–5 on the reference pump; those its map has on another),
        one read per run of adjacent registers: vendor, model, firmware, map version, serial."""
        names = ("vendor_id", "model", "firmware_version", "map_version", "serial_number")
        present = [self.map[name] for name in names if name in self.map]
        words: dict[int, int] = {}
        for start, count in read_runs(present, self.map):
            for offset, word in enumerate(await self.transport.read_registers(start, count)):
                words[start + offset] = word
        return {
            r.name: f"{self.map.decode(r, [words[r.address + i] for i in range(r.words)]):g}" for r in present
        }

    async def set_syringe(self, diameter_mm: float) -> None:
        """Tells the pump the syringe's diameter; a pump whose map has no diameter register is set up
        on the pump itself (:attr:`missing_features` says so)."""
        if "syringe_diameter_mm" in self.map:
            await self._write("syringe_diameter_mm", diameter_mm)

    async def set_rate_ml_h(self, rate_ml_h: float) -> None:
        await self._write("rate_ml_h", rate_ml_h)

    async def start(self) -> None:
        await self._write("run_mode", RUN_INFUSE)

    async def withdraw(self, rate_ml_h: float) -> None:
        """Retracts at ``rate_ml_h`` (occlusion back-off), rate and direction in ONE write when the map
        puts ``run_mode`` right after ``rate_ml_h`` and the pump takes function 16: two writes would
        leave the pump infusing at the back-off rate into an occluded line between them. The firmware
        validates the whole write before applying any of it. Otherwise the pump is only stopped."""
        rate, mode = self.map["rate_ml_h"], self.map["run_mode"]
        if mode.address != rate.address + rate.words or 16 not in self.map.function_codes:
            await self.stop()
            return
        words = [*self.map.encode(rate, rate_ml_h), *self.map.encode(mode, RUN_WITHDRAW)]
        await self.transport.write_registers(rate.address, words)

    async def stop(self) -> None:
        await self._write("run_mode", RUN_STOP)

    async def simulate_syringe_change(self) -> bool:
        """On the in-process simulator (``sim://``): the operator's syringe change, register
        ``fault_load_syringe`` (a new full syringe of the same type). Any other pump: False."""
        if not isinstance(self.transport, SimTransport) or "fault_load_syringe" not in self.map:
            return False
        await self._write("fault_load_syringe", 1)
        return True

    async def read_telemetry(self) -> PumpTelemetry:
        if len(self._runs) == 1:
            ((start, count),) = self._runs
            return self._telemetry_from(await self.transport.read_registers(start, count))
        words: list[int] = []
        for start, count in self._runs:
            words += await self.transport.read_registers(start, count)
        return self._telemetry_from(words)

    @property
    def beats_with_telemetry(self) -> bool:
        return self._one_transaction

    async def heartbeat_and_read_telemetry(self) -> PumpTelemetry:
        """The heartbeat written and the telemetry read in one function 23 transaction (the pump
        applies the write first), or two requests where the map does not allow it."""
        if not self._one_transaction:
            return await super().heartbeat_and_read_telemetry()
        ((start, count),) = self._runs
        got = await self.transport.write_and_read_registers(
            self._heartbeat_address, self._encoders["heartbeat"](self._next_beat()), start, count
        )
        return self._telemetry_from(got)

    def _telemetry_from(self, words: Sequence[int]) -> PumpTelemetry:
        """The telemetry sample in ``words`` (those of the telemetry reads, one after the other), the
        map's missing registers defaulted."""
        values = (*self._decode_telemetry(words), *self._defaults)
        volume, pressure, motor, air, syringe, end, bits, infused = self._slots
        # int() of the alarm bits as before: a NaN (no register, or a float register holding NaN) raises.
        return PumpTelemetry.of(
            volume_ml=values[volume],
            pressure_mmhg=values[pressure],
            motor_running=values[motor] == 1,
            air_in_line=values[air] == 1,
            syringe_present=values[syringe] == 1,
            end_of_travel=values[end] == 1,
            pump_alarms=ALARM_SETS[int(values[bits]) & (len(ALARM_SETS) - 1)],
            infused_ml=values[infused],
        )

    async def read_delivered_ml(self) -> float:
        return await self._read("infused_ml")

    async def acknowledge_alarm(self) -> None:
        await self._write("alarm_ack", 1)

    async def heartbeat(self) -> None:
        """Refreshes the pump's watchdog; a pump without a heartbeat register has none to refresh."""
        if "heartbeat" not in self.map:
            return
        await self._write("heartbeat", self._next_beat())

    def _next_beat(self) -> int:
        self._beat = (self._beat + 1) % 65_536
        return self._beat
