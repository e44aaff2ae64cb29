"""Driver for Harvard Apparatus Pump 11 Elite / PHD ULTRA syringe pumps (the "Elite" command set).

These pumps have no pressure sensor, no air-in-line detector and no syringe-presence switch (listed in
:attr:`HarvardDriver.lacks`: the kernel falls back to stall and delivered-volume checks), and **no
communication watchdog**: a pump left infusing keeps infusing when the bridge goes away. Volume comes
from the pump's infused-volume counter (``ivolume``), the state from the prompt every reply carries:
a stall (``*``) is reported as the pump alarm ``motor_stall``.
"""

from __future__ import annotations

import math
import re

from ketapump.errors import ConfigurationError, TransportError
from ketapump.wire.drivers.base import PumpDriver, PumpTelemetry
from ketapump.wire.transports.harvard import HarvardReply, HarvardTransport

__all__ = ["VOLUME_UNITS_PER_ML", "HarvardDriver"]

#: Volume units of the replies and how many of them make one mL.
VOLUME_UNITS_PER_ML = {"ml": 1.0, "ul": 1e3, "nl": 1e6, "pl": 1e9}
#: Prompts of a moving plunger.
MOVING = frozenset({">", "<"})
_VOLUME = re.compile(r"(\S+) (ml|ul|nl|pl)")
_VERSION = re.compile(r"(11 ELITE|PHD ULTRA) ([ -~]*) (\d+\.\d+\.\d+)")


def _number(value: float) -> str:
    """A number as the pump reads it: plain decimal, up to 4 decimals (``26.59``, ``0.5``)."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


class HarvardDriver(PumpDriver):
    """A Harvard Apparatus pump behind a :class:`HarvardTransport`."""

    lacks = frozenset({"pressure_mmhg", "air_in_line", "syringe_present"})
    missing_features = (
        "no pressure sensor: occlusion by stall only",
        "no communication watchdog: the pump keeps running if the bridge stops",
    )

    def __init__(self, transport: HarvardTransport) -> None:
        self.transport = transport
        #: From ``ver`` at connect, e.g. ``"11 ELITE I/W Single"`` and ``"3.0.4"``.
        self.model: str | None = None
        self.firmware: str | None = None
        self._alarms: set[str] = set()

    async def _send(self, text: str) -> HarvardReply:
        reply = await self.transport.exchange(text)
        if reply.prompt == "*":
            self._alarms.add("motor_stall")
        return reply

    async def connect(self) -> None:
        """Opens the link and reads the model (``ver``)."""
        await self.transport.connect()
        reply = await self._send("ver")
        match = _VERSION.fullmatch(reply.body[0])
        if match is None:  # the transport already checked the shape: a defect if reached
            raise TransportError(self.transport.url, f"not a Harvard pump: ver answered {reply!r}")
        self.model, self.firmware = f"{match[1]} {match[2]}", match[3]

    async def identify(self) -> dict[str, str]:
        """Model and firmware from ``ver`` (read at connect); no serial number is reported."""
        return {"model": self.model or "", "firmware": self.firmware or ""}

    async def close(self) -> None:
        await self.transport.close()

    async def set_syringe(self, diameter_mm: float) -> None:
        if not (math.isfinite(diameter_mm) and diameter_mm > 0):
            raise ConfigurationError("diameter_mm", f"must be a positive finite number, not {diameter_mm}")
        await self._send(f"diameter {_number(diameter_mm)}")

    async def set_rate_ml_h(self, rate_ml_h: float) -> None:
        """``irate <n> ml/h``, or ``ul/h`` below 1 mL/h so small rates keep their digits."""
        if not (math.isfinite(rate_ml_h) and rate_ml_h > 0):
            raise ConfigurationError("rate_ml_h", f"must be a positive finite number, not {rate_ml_h}")
        if rate_ml_h < 1.0:
            await self._send(f"irate {_number(rate_ml_h * 1000.0)} ul/h")
        else:
            await self._send(f"irate {_number(rate_ml_h)} ml/h")

    async def start(self) -> None:
        """Infuse continuously: ``ctvolume`` clears any target (the kernel, not the pump, decides when
        to stop), then ``irun``. A stalled pump refuses ``irun`` (``Command error``)."""
        await self._send("ctvolume")
        await self._send("irun")

    async def stop(self) -> None:
        await self._send("stp")

    async def _infused_ml(self) -> tuple[str, float]:
        reply = await self._send("ivolume")
        match = _VOLUME.fullmatch(reply.body[0])
        try:
            assert match is not None
            return reply.prompt, float(match[1]) / VOLUME_UNITS_PER_ML[match[2]]
        except (AssertionError, ValueError) as e:
            raise TransportError(self.transport.url, f"unexpected ivolume reply {reply!r}") from e

    async def read_telemetry(self) -> PumpTelemetry:
        prompt, infused = await self._infused_ml()
        alarms, self._alarms = frozenset(self._alarms), set()
        return PumpTelemetry(
            volume_ml=infused,
            pressure_mmhg=math.nan,
            motor_running=prompt in MOVING,
            pump_alarms=alarms,
            infused_ml=infused,
        )

    async def read_delivered_ml(self) -> float:
        return (await self._infused_ml())[1]

    async def acknowledge_alarm(self) -> None:
        """A stall is cleared at the pump (its display); this reads the state, keeping what it finds
        recorded for the next telemetry sample."""
        await self._send("")

    async def heartbeat(self) -> None:
        """A prompt query (an empty request). The pump has no watchdog to refresh: this proves the
        link, and the simulator counts it as its firmware's heartbeat."""
        await self._send("")
