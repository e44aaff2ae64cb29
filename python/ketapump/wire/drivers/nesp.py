"""Driver for New Era NE-1000 / NE-500 syringe pumps (also sold as WPI Aladdin, Landgraf LA).

New Era pumps have no pressure sensor, no air-in-line detector and no syringe-presence switch, so the
driver reports those as missing (:attr:`NewEraDriver.lacks`) and the safety kernel falls back to stall
and delivered-volume checks. Volume comes from the pump's own dispensed counters (``DIS``).

Alarm replies (``AA A?<t>``) mean the command was *not* executed, and receiving one acknowledges the
alarm in the pump. So the driver never lets an alarm vanish: every alarm it receives is kept and
reported by the next :meth:`NewEraDriver.read_telemetry`, and a command answered by an alarm is either
re-sent once (where that is always safe: the first command after connecting, which meets the power-up
alarm as nesp-lib expects, stop, and the telemetry queries) or refused with :class:`PumpRefusedError`
(anything that changes settings or starts the motor, so a stall is never silently overridden).
"""

from __future__ import annotations

import contextlib
import math
import re

from ketapump.errors import ConfigurationError, TransportError
from ketapump.wire.drivers.base import PumpDriver, PumpTelemetry
from ketapump.wire.transports.base import PumpRefusedError
from ketapump.wire.transports.nesp import NespTransport

__all__ = ["ALARM_NAMES", "RATE_UNITS_PER_ML_H", "NewEraDriver", "format_number"]

#: Alarm type letters (after ``A?``) and the names ketapump reports them under.
ALARM_NAMES = {
    "R": "reset",
    "S": "motor_stall",
    "T": "timeout",
    "E": "program_error",
    "O": "phase_out_of_range",
}
#: Rate units and how many of them make one mL/h.
RATE_UNITS_PER_ML_H = {"MH": 1.0, "UH": 1000.0, "MM": 1.0 / 60.0, "UM": 1000.0 / 60.0}
#: Status letters of a moving plunger: infusing, withdrawing, purging.
MOVING = frozenset("IWX")
#: Status letters of a motor at rest: program stopped, paused.
AT_REST = frozenset("SP")

_VERSION = re.compile(r"NE(\d+)(?:X\d+)?V(\d+\.\d+)")
_DISPENSED = re.compile(r"I(\d*\.?\d*)W(\d*\.?\d*)(ML|UL)")
_RATE = re.compile(r"\d*\.?\d*(MH|UH|MM|UM)")


def format_number(value: float) -> str:
    """A number as the pump reads it: at most 4 digits and one decimal point, ≤ 3 decimals, keeping
    as many significant digits as fit (``52.5`` → ``"52.50"``, ``1200`` → ``"1200"``).

    Raises ValueError when the value does not fit (≥ 9999.5) or would round to zero.
    """
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a non-negative finite number: {value}")
    for decimals in (3, 2, 1, 0):
        text = f"{value:.{decimals}f}"
        if sum(c.isdigit() for c in text) <= 4:
            if float(text) == 0 and value != 0:
                raise ValueError(f"{value} rounds to zero in 4 digits")
            return text
    raise ValueError(f"{value} does not fit in 4 digits")


class NewEraDriver(PumpDriver):
    """A New Era pump behind a :class:`NespTransport`.

    The pump has no pressure, air-in-line or syringe-presence sensors: those telemetry fields are
    listed in :attr:`lacks` and reported as NaN / defaults.
    """

    lacks = frozenset({"pressure_mmhg", "air_in_line", "syringe_present"})

    def __init__(self, transport: NespTransport) -> None:
        self.transport = transport
        #: From ``VER`` at connect, e.g. ``"NE1000"`` and ``"3.928"``.
        self.model: str | None = None
        self.firmware: str | None = None
        self._alarms: set[str] = set()
        self._rate_units: str | None = None

    # -- helpers ----------------------------------------------------------------------------------

    def _note_alarm(self, reply: str) -> str | None:
        """Records an alarm reply; returns its name, or None when ``reply`` is not an alarm."""
        if reply[2] != "A":
            return None
        name = ALARM_NAMES.get(reply[4], f"alarm_{reply[4]}")
        self._alarms.add(name)
        return name

    async def _send(self, text: str, *, resend_after_alarm: bool = False) -> str:
        """Sends ``text``; an alarm reply is recorded and, if allowed, the command re-sent once (the
        alarm was acknowledged by being received), otherwise refused."""
        reply = await self.transport.command(text)
        alarm = self._note_alarm(reply)
        if alarm is not None and resend_after_alarm:
            reply = await self.transport.command(text)
            alarm = self._note_alarm(reply)
        if alarm is not None:
            raise PumpRefusedError(
                self.transport.url, f"{text!r} not executed: pump alarm {alarm} ({reply[3:]})", reply[2:]
            )
        return reply

    def _data(self, reply: str) -> str:
        return reply[3:]

    async def _dispensed_ml(self) -> tuple[str, float, float]:
        """``DIS`` → (status letter, infused mL, withdrawn mL)."""
        reply = await self._send("DIS", resend_after_alarm=True)
        match = _DISPENSED.fullmatch(self._data(reply))
        if match is None:
            raise TransportError(self.transport.url, f"unexpected DIS reply {reply!r}")
        try:
            infused, withdrawn = float(match[1]), float(match[2])
        except ValueError as e:
            raise TransportError(self.transport.url, f"unexpected DIS reply {reply!r}") from e
        scale = 1.0 if match[3] == "ML" else 0.001
        return reply[2], infused * scale, withdrawn * scale

    async def _status(self) -> str:
        """A status query (empty command); returns the status letter, recording an alarm."""
        reply = await self.transport.command("")
        self._note_alarm(reply)
        return reply[2]

    # -- PumpDriver -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Opens the link, sets the URL's mode (``SAF<n>``: safe mode with an n-second watchdog, or
        ``SAF0`` for basic mode, which also leaves a safe mode a previous session left on) and reads
        the model. The first command meets the pump's power-up alarm and is re-sent once."""
        await self.transport.connect()
        had_reset = "reset" in self._alarms
        await self._send(f"SAF{self.transport.safe_s}", resend_after_alarm=True)
        if not had_reset:
            # The power-up alarm is expected here and handled; other alarms (a watchdog timeout left by
            # a previous session) are real news and stay recorded.
            self._alarms.discard("reset")
        reply = await self._send("VER")
        match = _VERSION.search(self._data(reply))
        if match is None:
            raise TransportError(self.transport.url, f"not a New Era pump: VER answered {reply!r}")
        self.model, self.firmware = f"NE{match[1]}", match[2]

    async def identify(self) -> dict[str, str]:
        """Model and firmware from ``VER`` (read at connect); a New Era pump reports no serial number."""
        return {"model": self.model or "", "firmware": self.firmware or ""}

    async def close(self) -> None:
        """Closes the link. A pump in safe mode that says it is at rest (stopped or paused) is first
        put back in basic mode (``SAF0``): nobody talks to it any more, and in safe mode it would
        latch a communication-timeout alarm (``A?T``) a few seconds later for the next user to find.
        A pump still moving, or one that does not answer, keeps safe mode: its watchdog stopping the
        motor when the bridge goes away is the point of safe mode."""
        if self.transport.safe_s > 0 and self.transport.connected:
            with contextlib.suppress(TransportError):
                if await self._status() in AT_REST:
                    await self._send("SAF0")
        await self.transport.close()

    async def set_syringe(self, diameter_mm: float) -> None:
        try:
            number = format_number(diameter_mm)
        except ValueError as e:
            raise ConfigurationError("diameter_mm", f"cannot be sent to the pump: {e}") from e
        await self._send(f"DIA{number}")
        self._rate_units = None  # the pump may reset its rate with the diameter

    async def set_rate_ml_h(self, rate_ml_h: float) -> None:
        """Sets the rate, in mL/h (``MH``) unless the value needs µL/h (``UH``, below 1 mL/h, for 4
        significant digits) or mL/min (``MM``, above what 4 digits hold in mL/h). The pump refuses a
        change of units while pumping (``?NA``), so while it runs the current units are kept."""
        if not (math.isfinite(rate_ml_h) and rate_ml_h > 0):
            raise ConfigurationError("rate_ml_h", f"must be a positive finite number, not {rate_ml_h}")
        wanted = "UH" if rate_ml_h < 1.0 else "MH" if rate_ml_h < 9999.5 else "MM"
        units = wanted
        if wanted != self._rate_units and await self._status() in MOVING:
            units = self._rate_units or await self._current_rate_units()
        try:
            number = format_number(rate_ml_h * RATE_UNITS_PER_ML_H[units])
        except ValueError as e:
            raise ConfigurationError("rate_ml_h", f"{rate_ml_h} mL/h cannot be sent in {units}: {e}") from e
        await self._send(f"RAT{number}{units}")
        self._rate_units = units

    async def _current_rate_units(self) -> str:
        reply = await self._send("RAT")
        match = _RATE.fullmatch(self._data(reply))
        if match is None:
            raise TransportError(self.transport.url, f"unexpected RAT reply {reply!r}")
        return match[1]

    async def start(self) -> None:
        """Infuse, continuously (``VOL0``: the kernel, not a pump-side target, decides when to stop),
        then ``RUN``. A pending alarm refuses the start instead of being overridden."""
        await self._send("DIRINF")
        await self._send("VOL0")
        await self._send("RUN")

    async def stop(self) -> None:
        """``STP``; a running pump pauses (``P``), so a second ``STP`` stops it (``S``). An alarm
        reply means STP was not executed and is re-sent: stopping is always safe to repeat."""
        reply = await self._send("STP", resend_after_alarm=True)
        if reply[2] == "P":
            await self._send("STP", resend_after_alarm=True)

    async def read_telemetry(self) -> PumpTelemetry:
        await self._status()
        status, infused, withdrawn = await self._dispensed_ml()
        alarms, self._alarms = frozenset(self._alarms), set()
        return PumpTelemetry(
            volume_ml=infused - withdrawn,
            pressure_mmhg=math.nan,
            motor_running=status in MOVING,
            pump_alarms=alarms,
            infused_ml=infused,
        )

    async def read_delivered_ml(self) -> float:
        _status, infused, _withdrawn = await self._dispensed_ml()
        return infused

    async def acknowledge_alarm(self) -> None:
        """A status query: the pump acknowledges an alarm by sending it as a reply. The alarm stays
        recorded for the next telemetry sample so it is not lost."""
        await self._status()

    async def heartbeat(self) -> None:
        """A status query, which resets the safe-mode watchdog."""
        await self._status()
