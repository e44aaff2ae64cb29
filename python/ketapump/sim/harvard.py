"""The Harvard Apparatus Pump 11 Elite command set, served on a PTY by the simulated pump.

A Python codec in the simulator's layer, on the same :class:`~ketapump._core.SimPump` (physics and
firmware) as every other endpoint: each command becomes the register reads and writes the reference
firmware already checks, so the plant, its limits and its faults are the same whichever wire asks.
(The New Era codec is Rust, in ``hw-sim``; this one was written here to land the family in one step:
it needs nothing the firmware does not already expose.) Written from ``docs/harvard-protocol.md``,
independently of the host's transport, so that the two sides of the PTY check each other.

What a real Elite does not have, the endpoint bridges: the reference firmware's power-up alarm is
acknowledged when the endpoint starts (an Elite latches none), and the firmware's watchdog is set to
its longest (10 s) and fed by every command the pump accepts (an Elite has none; see the driver's
``missing_features``).
"""

from __future__ import annotations

import re

from ketapump import _core
from ketapump.wire import RegisterMap

__all__ = ["ELITE_VERSION", "HarvardPort"]

ELITE_VERSION = "11 ELITE I/W Single 3.0.4"
#: The longest request line kept (bytes); a longer one is answered ``Command error`` and dropped.
MAX_LINE = 80
STALL_BIT = 2
#: The firmware's longest watchdog (the register's maximum).
WATCHDOG_MS = 10_000
#: Rate units and how many mL/h one of them is.
RATE_UNITS = {
    f"{volume}/{time}": per_ml * per_h
    for volume, per_ml in (("ml", 1.0), ("ul", 1e-3), ("nl", 1e-6), ("pl", 1e-9))
    for time, per_h in (("h", 1.0), ("hr", 1.0), ("min", 60.0), ("s", 3600.0))
}
_REQUEST = re.compile(r"(\d{0,2})([a-z]*)(?: (.*))?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

Rejects = tuple[list[tuple[str, bytes, int]], int]


class HarvardPort:
    """One serial line's worth of the Elite protocol for the pump at ``address``."""

    def __init__(self, pump_at: object, regmap: RegisterMap, address: int = 0) -> None:
        #: Returns the pump advanced to now (the server's ``advanced``).
        self.pump_at = pump_at
        self.regmap = regmap
        self.address = address
        self._buf = bytearray()
        self._rejects: list[tuple[str, bytes, int]] = []

    # ----- the codec the server's SerialEndpoint drives --------------------------------------------

    def process(self, line_s: float, data: bytes) -> list[tuple[bytes, int]]:
        """Requests in ``data`` (any split) → ``[(reply, delay_ms), ...]``."""
        del line_s
        self._buf += data
        replies: list[tuple[bytes, int]] = []
        while True:
            end = self._buf.find(b"\r")
            if end < 0:
                if len(self._buf) > MAX_LINE:
                    self._reject("line too long", bytes(self._buf))
                    self._buf.clear()
                    replies += self._reply([], "Command error")
                return replies
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._buf.startswith(b"\n"):
                del self._buf[:1]
            replies += self._line(raw.lstrip(b"\n"))

    def take_rejects(self) -> Rejects:
        rows, self._rejects = self._rejects, []
        return rows, 0

    def prepare(self) -> None:
        """Bridges what an Elite lacks, once, at start: the firmware's power-up alarm is acknowledged
        (an Elite latches none) and its watchdog set to the longest (an Elite has none; the commands
        the pump accepts feed it)."""
        pump = self.pump()
        self._write(pump, "alarm_ack", 1)
        self._write(pump, "watchdog_ms", WATCHDOG_MS)

    # ----- one request -------------------------------------------------------------------------

    def pump(self) -> _core.SimPump:
        pump = self.pump_at()  # type: ignore[operator]
        assert isinstance(pump, _core.SimPump)
        return pump

    def _line(self, raw: bytes) -> list[tuple[bytes, int]]:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            text = None
        if text is None or not text.isprintable():
            self._reject("not printable ASCII", raw)
            return self._reply([], "Command error")
        match = _REQUEST.fullmatch(text.strip())
        if match is None:
            self._reject("malformed request", raw)
            return self._reply([], "Command error")
        if match[1] and int(match[1]) != self.address:
            return []  # another pump's request: a daisy chain's other pumps stay silent
        pump = self.pump()
        body, error = self._execute(pump, match[2], (match[3] or "").strip())
        if error is None:
            pump.heartbeat()
        return self._reply(body, error)

    def _execute(self, pump: _core.SimPump, command: str, args: str) -> tuple[list[str], str | None]:
        """(body lines, error) for one command."""
        if command == "":
            return ([], None) if not args else ([], "Unknown command")
        if command == "ver":
            return [ELITE_VERSION], None
        if command in {"irun", "stp", "civolume", "ctvolume"}:
            if args:
                return [], "Argument error"
            if command == "civolume":
                return [], self._write(pump, "clear_counters", 1)
            if command == "ctvolume":
                return [], None  # no target is ever set: nothing to clear
            return [], self._write(pump, "run_mode", 1 if command == "irun" else 0)
        if command == "ivolume":
            return ([f"{pump.motor_infused_ml:.5g} ml"], None) if not args else ([], "Argument error")
        if command == "diameter":
            if not args:
                return [f"{pump.value('syringe_diameter_mm'):.4f} mm"], None
            if not _NUMBER.fullmatch(args):
                return [], "Argument error"
            return [], self._write(pump, "syringe_diameter_mm", float(args))
        if command == "irate":
            if not args:
                return [f"{pump.value('rate_ml_h'):.5g} ml/hr"], None
            number, _, units = args.partition(" ")
            if not _NUMBER.fullmatch(number) or units not in RATE_UNITS:
                return [], "Argument error"
            return [], self._write(pump, "rate_ml_h", float(number) * RATE_UNITS[units])
        return [], "Unknown command"

    def _write(self, pump: _core.SimPump, name: str, value: float) -> str | None:
        """Writes a register; the firmware's refusal as the Elite's error (3: ``Out of range``)."""
        register = self.regmap[name]
        code = pump.write_registers(register.address, self.regmap.encode(register, value))
        if code == 0:
            return None
        return "Out of range" if code == 3 else "Command error"

    def _prompt(self, pump: _core.SimPump) -> str:
        if int(pump.value("alarm_bits")) >> STALL_BIT & 1:
            return "*"
        return ">" if pump.value("motor_running") else ":"

    def _reply(self, body: list[str], error: str | None) -> list[tuple[bytes, int]]:
        pump = self.pump()
        drop, corrupt, delay_ms = pump.comm_action()
        if drop:
            return []
        head = f"{self.address:02d}{self._prompt(pump)}"
        lines = [*body, *([error] if error else [])]
        reply = ("\r\n" + "".join(f"{head}{line}\r\n" for line in lines) + f"{head}\r\n").encode("ascii")
        if corrupt:
            middle = len(reply) // 2
            reply = reply[:middle] + bytes([reply[middle] ^ 0x5A]) + reply[middle + 1 :]
        return [(reply, delay_ms)]

    def _reject(self, reason: str, data: bytes) -> None:
        self._rejects.append((reason, data[:16], len(data)))
