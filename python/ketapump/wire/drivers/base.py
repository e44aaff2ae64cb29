"""The pump-driver contract: typed methods with units in their names, one driver per pump family.

A driver turns a transport's registers or commands into pump operations. Every method:

- MUST raise :class:`~ketapump.errors.TransportError` (or ``PumpTimeoutError``) when the pump cannot be
  reached, and ``PumpRefusedError`` when the pump refused the operation; it MUST NOT hang;
- MUST NOT retry a refused operation, and MUST NOT start the motor as a side effect of anything but
  :meth:`PumpDriver.start`.

Telemetry a pump family does not measure is reported as missing in :attr:`PumpDriver.lacks` and as
NaN / ``None`` in :class:`PumpTelemetry`; the safety kernel is configured accordingly (no pressure
sensor → stall and delivered-volume checks only).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PumpTelemetry:
    """One telemetry sample, as the driver read it."""

    #: Plunger volume counter (mL), the kernel's measured volume.
    volume_ml: float
    #: Line pressure (mmHg); NaN when the pump has no pressure sensor.
    pressure_mmhg: float = math.nan
    motor_running: bool = False
    air_in_line: bool = False
    syringe_present: bool = True
    end_of_travel: bool = False
    #: Pump-side alarms latched in the pump itself (names, e.g. ``"watchdog"``, ``"reset"``).
    pump_alarms: frozenset[str] = field(default_factory=frozenset)
    #: Volume infused since the pump's counters were cleared (mL).
    infused_ml: float = 0.0

    @classmethod
    def of(
        cls,
        *,
        volume_ml: float,
        pressure_mmhg: float,
        motor_running: bool,
        air_in_line: bool,
        syringe_present: bool,
        end_of_travel: bool,
        pump_alarms: frozenset[str],
        infused_ml: float,
    ) -> PumpTelemetry:
        """The sample with every field given: what a driver builds for every pump at every
        control cycle. The same object the constructor makes (equal, hashed and frozen alike), without
        the frozen dataclass's ``object.__setattr__`` per field, which cost as much as decoding the
        sample."""
        sample = object.__new__(cls)
        object.__setattr__(
            sample,
            "__dict__",
            {
                "volume_ml": volume_ml,
                "pressure_mmhg": pressure_mmhg,
                "motor_running": motor_running,
                "air_in_line": air_in_line,
                "syringe_present": syringe_present,
                "end_of_travel": end_of_travel,
                "pump_alarms": pump_alarms,
                "infused_ml": infused_ml,
            },
        )
        return sample


class PumpDriver(ABC):
    """Operations on one pump. Drivers are async and own no control logic."""

    #: Telemetry fields this pump family cannot provide (e.g. ``{"pressure_mmhg"}``).
    lacks: frozenset[str] = frozenset()
    #: What this pump cannot do, one line each for the operator to read before a run (e.g. "no
    #: pressure: occlusion by stall only" for a register map without a pressure register).
    missing_features: tuple[str, ...] = ()

    @abstractmethod
    async def connect(self) -> None:
        """Opens the link and prepares the pump (e.g. acknowledges a power-up alarm)."""

    @abstractmethod
    async def close(self) -> None: ...

    async def identify(self) -> dict[str, str]:
        """What the pump says it is, read from the pump (model, firmware, serial number where it has
        one), each as text. A session's record keeps it, and a resume continues only on the same pump."""
        return {}

    @abstractmethod
    async def set_syringe(self, diameter_mm: float) -> None: ...

    @abstractmethod
    async def set_rate_ml_h(self, rate_ml_h: float) -> None: ...

    @abstractmethod
    async def start(self) -> None:
        """Starts infusing at the set rate."""

    @abstractmethod
    async def stop(self) -> None:
        """Stops the motor. Safe to call in any state."""

    async def withdraw(self, rate_ml_h: float) -> None:
        """Retracts the plunger at ``rate_ml_h`` (the kernel's occlusion back-off). Pumps that cannot
        are simply stopped: the back-off is a bolus reduction, never a requirement for safety."""
        await self.stop()

    @abstractmethod
    async def read_telemetry(self) -> PumpTelemetry: ...

    @abstractmethod
    async def read_delivered_ml(self) -> float:
        """Volume infused according to the pump's own counter (mL)."""

    @abstractmethod
    async def acknowledge_alarm(self) -> None: ...

    @abstractmethod
    async def heartbeat(self) -> None:
        """Proves the bridge is alive (register heartbeat, or a status query in New Era safe mode)."""

    async def simulate_syringe_change(self) -> bool:
        """The simulator's stand-in for the operator's hands at a syringe change: a simulated pump loads
        a new full syringe and this returns True. A real pump returns False: the operator swapped the
        syringe physically (the bridge takes up its slack when the infusion resumes)."""
        return False

    @property
    def beats_with_telemetry(self) -> bool:
        """Whether :meth:`heartbeat_and_read_telemetry` is one transaction with the pump (the control
        loop then makes it its tick's only request); False: a heartbeat and a read, as two requests."""
        return False

    async def heartbeat_and_read_telemetry(self) -> PumpTelemetry:
        """A control cycle's traffic: the heartbeat, then the telemetry. Drivers whose pump can do
        both in one transaction override this (and :attr:`beats_with_telemetry`)."""
        await self.heartbeat()
        return await self.read_telemetry()
