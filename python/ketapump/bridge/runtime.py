"""Setting up a run: where audit logs go, the control period and gains a transport allows at a time
scale, the driver for a pump URL (its watchdog sized from every term of the longest gap between two
heartbeats, :class:`LoopTiming`, and a time scale that cannot fit refused up front), and the syringe
catalogue.

Shared by ``ketapump run``, ``session`` and ``demo``, the QA runs and the pytest plugin.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ketapump import _core
from ketapump.clock import Clock, VirtualClock
from ketapump.config import default_kernel_settings, kernel_config
from ketapump.errors import ConfigurationError
from ketapump.wire import (
    HarvardDriver,
    HarvardTransport,
    NespTransport,
    NewEraDriver,
    PumpDriver,
    ReferencePumpDriver,
    RegisterTransport,
    Transport,
    open_transport,
    split_url,
)


def default_log_path() -> Path:
    """Where audit logs go unless ``--log`` says otherwise: ``$XDG_STATE_HOME/ketapump/logs``
    (``~/.local/state/ketapump/logs``), one file per run named by its UTC start time."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return base / "ketapump" / "logs" / f"run-{stamp}.jsonl"


#: Real time (s) one tick takes when the link answers at once: its round trips (a telemetry read, a
#: command, a heartbeat: 0.12 s is a 19-register RTU read plus two writes at 19 200 baud) and, for the
#: in-process simulator, the tick's own work (kernel step, audit commit). The control period is stretched
#: to at least this much real time, so a scaled run never falls behind its deadlines.
MIN_REAL_PERIOD_S = {"sim": 0.005, "modbus-tcp": 0.005, "modbus-rtu": 0.12, "nesp": 0.06, "harvard": 0.06}

#: Scheduling jitter a tick must absorb (real s): how late a tick may start plus how long its work may be
#: held up (preemption, a slow fsync) on this project's 2-core machine with both cores busy. Measured
#: (docs/benchmarks.md, "Why 150 ms of jitter"): 31 ms late and 17 ms held at most over 20 s beside
#: ``tools/busy 2``, 51 ms between two heartbeats at 60×; 150 ms keeps a margin of three for the rarer
#: stalls of a machine shared with builds.
JITTER_REAL_S = 0.15

#: The reference pump's watchdog range (docs/register-map.md, ``watchdog_ms``): 500 ms is its default,
#: and the longest it accepts is 10 s.
WATCHDOG_DEFAULT_MS = 500
WATCHDOG_MAX_MS = 10_000


def control_period_s(scheme: str, time_scale: float, requested: float | None, default: float) -> float:
    """The loop period (pump seconds): as requested, else the kernel default stretched so one tick's
    round trips fit in real time at this time scale."""
    if requested is not None:
        return requested
    return max(default, MIN_REAL_PERIOD_S[scheme] * time_scale)


def loop_settings(period_s: float, defaults: dict[str, float | bool]) -> dict[str, float]:
    """Kernel settings that depend on the loop period: staleness after five periods, and controller
    gains kept inside the discrete-time stability margin (kp·T ≤ 0.5, ki·T² ≤ 0.05) for the interval T
    between two controller decisions — the hold, or the period when that is longer — so a slow
    transport's long period cannot make the controller oscillate."""
    kp, ki = float(defaults["kp_per_s"]), float(defaults["ki_per_s2"])
    decision_s = max(period_s, float(defaults["control_hold_s"]))
    return {
        "control_period_s": period_s,
        "stale_after_s": max(float(defaults["stale_after_s"]), 5 * period_s),
        "kp_per_s": min(kp, 0.5 / decision_s),
        "ki_per_s2": min(ki, 0.05 / decision_s**2),
    }


@dataclass(frozen=True)
class LoopTiming:
    """The longest a pump may go without a heartbeat while the loop keeps time, term by term.

    Every term is in pump seconds. Between two heartbeats the pump waits one control period, plus what
    a tick takes in real time, scaled: its round trips (:data:`MIN_REAL_PERIOD_S`), one request that
    loses its replies and answers on the last attempt (timeout × (retries + 1); never on ``sim://``,
    which cannot lose a reply) and the scheduling jitter of a busy machine (:data:`JITTER_REAL_S`). On a
    virtual clock the pump's time stands still while the loop works: only the period counts.
    """

    url: str
    time_scale: float
    #: The control period, and whether the operator set it (``--period-s``) or it was derived.
    period_s: float
    period_requested: bool
    round_trips_s: float
    retries_s: float
    jitter_s: float

    @property
    def heartbeat_gap_s(self) -> float:
        return self.period_s + self.round_trips_s + self.retries_s + self.jitter_s

    @property
    def watchdog_ms(self) -> int:
        """The pump watchdog that outlasts the heartbeat gap (never below the pump's default)."""
        return max(WATCHDOG_DEFAULT_MS, math.ceil(1_000.0 * self.heartbeat_gap_s))

    def describe(self) -> str:
        """The terms, e.g. ``control period 2.4 s + round trips 2.4 s + …``."""
        return " + ".join(f"{name} {seconds:.3g} s" for name, seconds in self._terms())

    def _terms(self) -> list[tuple[str, float]]:
        terms = [("control period", self.period_s), ("round trips", self.round_trips_s)]
        terms += [("a retried request", self.retries_s), ("scheduling jitter", self.jitter_s)]
        return [(name, seconds) for name, seconds in terms if seconds > 0.0]

    def largest_term(self) -> str:
        return max(self._terms(), key=lambda term: term[1])[0]


def loop_timing(
    transport: Transport,
    period_s: float,
    time_scale: float,
    *,
    virtual: bool,
    period_requested: bool = False,
    jitter_real_s: float = JITTER_REAL_S,
) -> LoopTiming:
    """The :class:`LoopTiming` of a run on ``transport`` at ``time_scale`` with this control period;
    ``jitter_real_s`` is the scheduling jitter its loop must absorb (real s: more than
    :data:`JITTER_REAL_S` where one event loop carries several sessions, as ``serve`` does)."""
    scheme = split_url(transport.url)[0]
    real_s = 0.0 if virtual else time_scale
    retried = 0.0 if scheme == "sim" else transport.timeout_s * (transport.retries + 1)
    return LoopTiming(
        url=transport.url,
        time_scale=time_scale,
        period_s=period_s,
        period_requested=period_requested,
        round_trips_s=MIN_REAL_PERIOD_S[scheme] * real_s,
        retries_s=retried * real_s,
        jitter_s=jitter_real_s * real_s,
    )


def largest_time_scale(
    transport: Transport,
    requested_period_s: float | None,
    limit_s: float,
    jitter_real_s: float = JITTER_REAL_S,
) -> float:
    """The largest time scale at which a heartbeat gap stays within ``limit_s`` on this transport (its
    timeout and retries as given; the control period as requested or derived), rounded down to one
    decimal; 0 when none does."""
    default = float(default_kernel_settings()["control_period_s"])
    scheme = split_url(transport.url)[0]

    def gap(scale: float) -> float:
        period = control_period_s(scheme, scale, requested_period_s, default)
        timing = loop_timing(transport, period, scale, virtual=False, jitter_real_s=jitter_real_s)
        return timing.heartbeat_gap_s

    low, high = 0.0, 1.0
    while gap(high) <= limit_s and high < 1.0e6:
        low, high = high, high * 2.0
    for _ in range(60):  # the gap grows with the scale: bisect to well below the rounding
        middle = (low + high) / 2.0
        low, high = (middle, high) if gap(middle) <= limit_s else (low, middle)
    return math.floor(low * 10.0) / 10.0


def _refusal(
    timing: LoopTiming, limit_s: float, limit: str, advice: str, largest: float
) -> ConfigurationError:
    """Why a time scale cannot be held: the gap term by term, the largest term, the setting that shrinks
    it and the largest time scale that works with these settings."""
    scale = f"{largest:g}" if largest > 0 else "none (not even real time)"
    return ConfigurationError(
        "--time-scale",
        f"{timing.time_scale:g} is too fast for {timing.url}: the pump would have to go "
        f"{timing.heartbeat_gap_s:.3g} s (pump time) without a heartbeat, more than {limit} ({limit_s:g} s): "
        f"{timing.describe()}. The largest term is {timing.largest_term()}: {advice}. With these settings "
        f"the largest time scale is {scale}",
    )


def _advice(transport: Transport, timing: LoopTiming, limit_s: float) -> str:
    """The setting that shrinks the largest term of a gap that exceeds ``limit_s``."""
    term = timing.largest_term()
    if term == "a retried request":
        spare = limit_s - (timing.heartbeat_gap_s - timing.retries_s)
        timeout = math.floor(spare / (timing.time_scale * (transport.retries + 1)) * 1_000.0) / 1_000.0
        fits = (
            f" (timeout={timeout:g} with retries={transport.retries} fits at this scale)"
            if timeout >= 1e-3
            else ""
        )
        return f"give the URL a shorter timeout or fewer retries{fits}"
    if term == "control period" and timing.period_requested:
        return "ask for a shorter --period-s, or leave the period to the transport"
    return "lower the time scale"


def run_kernel_config(driver: PumpDriver, period_s: float) -> _core.KernelConfig:
    """The kernel configuration for a plain run on ``driver`` at ``period_s``: the shipped defaults, the
    gains and staleness that period needs (:func:`loop_settings`), and no pressure checks on a pump that
    measures no line pressure (its occlusion is then detected by stall and delivered volume only)."""
    settings = loop_settings(period_s, default_kernel_settings())
    return kernel_config(**settings, has_pressure_sensor="pressure_mmhg" not in driver.lacks)


def make_driver(
    url: str,
    clock: Clock,
    period_s: float,
    time_scale: float,
    *,
    sim_pump: _core.SimPump | None = None,
    period_requested: bool = False,
    jitter_real_s: float = JITTER_REAL_S,
) -> PumpDriver:
    """The driver for a pump URL: New Era for ``nesp://``, Harvard for ``harvard://``, the reference
    register map otherwise.

    The reference pump's watchdog is set from the run's :class:`LoopTiming`, so that it outlasts the
    longest heartbeat gap the loop can produce; a New Era pump's safe-mode timeout (the URL's ``safe``)
    must outlast it too. A time scale whose gap does not fit (the reference pump's 10 s watchdog, the
    safe-mode timeout) is refused with a :class:`~ketapump.errors.ConfigurationError` (field
    ``--time-scale``) naming every term, the largest one, the setting that shrinks it and the largest time
    scale that works. ``sim_pump`` is the simulated pump a ``sim://`` URL runs (default: one built from
    the URL); ``period_requested`` says the operator chose the period (``--period-s``);
    ``jitter_real_s`` is the scheduling jitter the loop must absorb (see :func:`loop_timing`).
    """
    transport = open_transport(url, clock=clock, pump=sim_pump)
    virtual = isinstance(clock, VirtualClock)
    timing = loop_timing(
        transport,
        period_s,
        time_scale,
        virtual=virtual,
        period_requested=period_requested,
        jitter_real_s=jitter_real_s,
    )
    requested = period_s if period_requested else None
    if isinstance(transport, NespTransport):
        safe_s = float(transport.safe_s)
        if 0.0 < safe_s < timing.heartbeat_gap_s:
            advice = f"raise the URL's safe (up to 255 s), or {_advice(transport, timing, safe_s)}"
            largest = largest_time_scale(transport, requested, safe_s, jitter_real_s)
            limit = f"its safe-mode timeout (safe={transport.safe_s})"
            raise _refusal(timing, safe_s, limit, advice, largest)
        return NewEraDriver(transport)
    if isinstance(transport, HarvardTransport):
        return HarvardDriver(transport)  # no watchdog to size: the driver lists it as missing
    assert isinstance(transport, RegisterTransport)
    if timing.watchdog_ms > WATCHDOG_MAX_MS:
        limit_s = WATCHDOG_MAX_MS / 1_000.0
        largest = largest_time_scale(transport, requested, limit_s, jitter_real_s)
        raise _refusal(
            timing, limit_s, "the longest pump watchdog", _advice(transport, timing, limit_s), largest
        )
    return ReferencePumpDriver(transport, watchdog_ms=timing.watchdog_ms)


def syringe_spec(name: str) -> tuple[float, float]:
    """``(capacity_ml, inner_diameter_mm)`` of a catalogue syringe; an unknown name is refused, naming
    the catalogue."""
    catalogue = _core.SimPump.catalogue()
    for entry, capacity, diameter in catalogue:
        if entry == name:
            return capacity, diameter
    known = ", ".join(entry for entry, _, _ in catalogue)
    raise ConfigurationError("syringe", f"{name!r} is not in the catalogue ({known})")


def syringe_diameter_mm(name: str) -> float:
    """The inner diameter of a catalogue syringe (see :func:`syringe_spec`)."""
    return syringe_spec(name)[1]
