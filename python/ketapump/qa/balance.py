"""A laboratory balance on a serial line (Mettler-Toledo MT-SICS), sampled on the pump's clock.

The IEC 60601-2-24 accuracy test weighs what the pump delivers every 30 s. A real rig has a balance on
a serial port; this module speaks the MT-SICS level-0 command ``SI`` ("send weight immediately") to it:

- request ``SI`` CR LF (a stable reading, ``S``, would never come: the mass rises all the time);
- reply ``S S <weight> <unit>`` (stable) or ``S D <weight> <unit>`` (dynamic) CR LF — both are a
  valid reading; ``S I`` (busy: retried a few times), ``S +`` / ``S -`` (overload / underload);
- errors ``ES`` (syntax), ``ET`` (transmission), ``EL`` (logical), alone on a line.

Anything else is an unintelligible reply and is reported, with the port and the bytes received
(docs/qa.md has the line protocol as implemented). The client does not know or care whether the
other end is a real balance or the simulated one of the tests.

:class:`SamplingClock` wraps the control loop's clock so the balance is read at every 30 s instant
of the pump's time: with virtual time the loop waits for the reading (time stands still meanwhile);
with real time the reading runs beside the loop and never delays a control tick.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import serial  # type: ignore[import-untyped]  # pyserial ships no type information

from ketapump.clock import Clock, VirtualClock
from ketapump.errors import TransportError

#: Grams per unit a SICS balance may report its weight in.
UNIT_GRAMS = {"g": 1.0, "mg": 1e-3, "kg": 1e3}

ERROR_REPLIES = {
    "ES": "ES (syntax error: the balance did not recognise the command)",
    "ET": "ET (transmission error: check the baud rate, parity and cable)",
    "EL": "EL (logical error: the balance cannot execute the command now)",
}


class BalanceError(TransportError):
    """The balance could not be reached or did not answer; ``endpoint`` is its port."""


class BalanceReplyError(BalanceError):
    """The balance answered, but not with a weight: an error reply, overload, or garbled bytes."""


@dataclass(frozen=True)
class Weighing:
    grams: float
    #: ``S S`` (stable) rather than ``S D`` (dynamic); both are valid ``SI`` readings.
    stable: bool


class BalanceBusyError(Exception):
    """``S I``: the balance is busy (taring, adjusting); the command may be repeated."""


def parse_si_reply(line: bytes) -> Weighing:
    """One ``SI`` reply line (with or without its CR LF) as a weighing.

    Raises :class:`BalanceBusyError` for ``S I`` and ``ValueError`` saying what was wrong for anything
    else that is not a weight.
    """
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"unintelligible reply {line!r} (not ASCII)") from None
    fields = text.split()
    if len(fields) == 1 and fields[0] in ERROR_REPLIES:
        raise ValueError(f"answered {ERROR_REPLIES[fields[0]]}")
    if fields[:1] != ["S"] or len(fields) < 2:
        raise ValueError(f"unintelligible reply {line!r}")
    status = fields[1]
    if status == "I" and len(fields) == 2:
        raise BalanceBusyError
    if status == "+" and len(fields) == 2:
        raise ValueError("answered S + (overload: more on the pan than the balance can weigh)")
    if status == "-" and len(fields) == 2:
        raise ValueError("answered S - (underload: the pan is missing or the balance is not tared)")
    if status not in {"S", "D"} or len(fields) != 4:
        raise ValueError(f"unintelligible reply {line!r}")
    value, unit = fields[2], fields[3]
    if unit not in UNIT_GRAMS:
        raise ValueError(f"reports its weight in {unit!r}; set the balance to g, mg or kg")
    try:
        weight = float(value)
    except ValueError:
        raise ValueError(f"unintelligible weight {value!r} in {line!r}") from None
    if not math.isfinite(weight):
        raise ValueError(f"unintelligible weight {value!r} in {line!r}")
    return Weighing(grams=weight * UNIT_GRAMS[unit], stable=status == "S")


class SicsBalance:
    """An MT-SICS balance on a serial port (a device path or a pyserial URL), 8N1, no handshake.

    ``spec`` is ``PORT`` optionally followed by ``?baud=9600&timeout=2`` (seconds per reply). Every
    error is a :class:`BalanceError` naming the port.
    """

    def __init__(self, port: str, *, baud: int = 9600, timeout_s: float = 2.0, busy_retries: int = 5) -> None:
        self.port = port
        self.baud = baud
        self.timeout_s = timeout_s
        self.busy_retries = busy_retries
        self._serial: Any = None  # a pyserial port (untyped)

    @classmethod
    def from_spec(cls, spec: str) -> SicsBalance:
        port, _, query = spec.partition("?")
        if not port:
            raise BalanceError(spec, "no serial port given (sics:PORT[?baud=9600&timeout=2])")
        options = dict(parse_qsl(query, keep_blank_values=True))
        unknown = sorted(set(options) - {"baud", "timeout"})
        if unknown:
            raise BalanceError(port, f"unknown option {unknown[0]!r} (baud, timeout)")
        try:
            baud = int(options.get("baud", "9600"))
            timeout_s = float(options.get("timeout", "2"))
        except ValueError as e:
            raise BalanceError(port, f"malformed option: {e}") from None
        if baud <= 0 or not (math.isfinite(timeout_s) and timeout_s > 0):
            raise BalanceError(port, "baud and timeout must be positive")
        return cls(port, baud=baud, timeout_s=timeout_s)

    def open(self) -> None:
        try:
            self._serial = serial.serial_for_url(
                self.port,
                baudrate=self.baud,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=self.timeout_s,
                write_timeout=self.timeout_s,
            )
        except (serial.SerialException, OSError, ValueError) as e:
            raise BalanceError(self.port, f"cannot open the balance's port: {e}") from e

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    def __enter__(self) -> SicsBalance:
        self.open()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _ask(self, command: bytes) -> bytes:
        port = self._serial
        if port is None:
            raise BalanceError(self.port, "not open")
        try:
            port.reset_input_buffer()  # a late reply to an earlier request is not this one's answer
            port.write(command + b"\r\n")
            line = bytes(port.read_until(b"\r\n"))
        except (serial.SerialException, OSError) as e:
            raise BalanceError(self.port, f"serial I/O failed: {e}") from e
        if not line.endswith(b"\r\n"):
            got = f" (got {line!r})" if line else ""
            raise BalanceError(
                self.port, f"no complete reply to {command.decode()} within {self.timeout_s:g} s{got}"
            )
        return line

    def weigh(self) -> Weighing:
        """``SI``: the weight now, stable or not. ``S I`` (busy) is asked again a few times."""
        for attempt in range(self.busy_retries + 1):
            line = self._ask(b"SI")
            try:
                return parse_si_reply(line)
            except BalanceBusyError:
                if attempt < self.busy_retries:
                    time.sleep(0.1)
            except ValueError as e:
                raise BalanceReplyError(self.port, f"SI {e}") from None
        raise BalanceReplyError(self.port, f"SI answered S I (busy) {self.busy_retries + 1} times")

    def grams(self) -> float:
        return self.weigh().grams


class SamplingClock:
    """The control loop's clock, reading a balance at every ``period_s`` instant of the pump's time.

    Readings are ``(t_s, grams)`` with ``t_s`` the sample instant (k × period). Over virtual time the
    loop waits for each reading, so the pump has not moved past the instant; over real time each
    reading runs in a worker thread beside the loop (a slow balance never delays a control tick), and
    a failed reading is raised at the loop's next sleep, which stops the pump.
    """

    def __init__(self, inner: Clock, read_grams: Callable[[], float], period_s: float = 30.0) -> None:
        self.inner = inner
        self.read_grams = read_grams
        self.period_s = period_s
        self.readings: list[tuple[float, float]] = []
        self._next = 0
        self._pending: list[asyncio.Task[None]] = []

    def now(self) -> float:
        return self.inner.now()

    async def _read(self, t_s: float) -> None:
        grams = await asyncio.to_thread(self.read_grams)
        self.readings.append((t_s, grams))

    async def sample_due(self) -> None:
        """Takes every reading whose instant has come."""
        self._raise_failed()
        while self._next * self.period_s <= self.inner.now() + 1e-9:
            t_s = self._next * self.period_s
            self._next += 1
            if isinstance(self.inner, VirtualClock):
                await self._read(t_s)
            else:
                self._pending.append(asyncio.create_task(self._read(t_s)))

    def _raise_failed(self) -> None:
        done = [task for task in self._pending if task.done()]
        self._pending = [task for task in self._pending if not task.done()]
        for task in done:
            task.result()  # re-raises a failed reading

    async def sleep_until(self, t_s: float) -> None:
        await self.sample_due()
        await self.inner.sleep_until(t_s)

    async def finish(self) -> list[tuple[float, float]]:
        """Waits for readings still under way; returns every reading in time order."""
        for task in self._pending:
            await task
        self._pending = []
        return sorted(self.readings)
