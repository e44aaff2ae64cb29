"""Setting up a run: where audit logs go, the control period and gains a transport allows at a time
scale, the driver (with a watchdog sized for its retries) for a pump URL, and the syringe catalogue.

Shared by ``ketapump run``, ``ketapump session``, the QA tests and the pytest plugin.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from ketapump import _core
from ketapump.clock import Clock
from ketapump.errors import ConfigurationError
from ketapump.wire import (
    NespTransport,
    NewEraDriver,
    PumpDriver,
    ReferencePumpDriver,
    RegisterTransport,
    open_transport,
)


def default_log_path() -> Path:
    """Where audit logs go unless ``--log`` says otherwise: ``$XDG_STATE_HOME/ketapump/logs``
    (``~/.local/state/ketapump/logs``), one file per run named by its UTC start time."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return base / "ketapump" / "logs" / f"run-{stamp}.jsonl"


#: Shortest real time per tick each transport needs for a telemetry read, a command and a heartbeat.
MIN_REAL_PERIOD_S = {"sim": 0.0, "modbus-tcp": 0.005, "modbus-rtu": 0.12, "nesp": 0.06}


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


def make_driver(
    url: str, clock: Clock, period_s: float, time_scale: float, *, sim_pump: _core.SimPump | None = None
) -> PumpDriver:
    """The driver for a pump URL: New Era for ``nesp://``, the reference register map otherwise.

    The pump's watchdog must outlast one fully retried request plus two loop periods (or a single lost
    reply would stop the pump), five loop periods, and 100 ms of real scheduling jitter; never less than
    its 500 ms default. A URL whose retries need more than the pump allows (10 s) is refused.
    ``sim_pump`` is the simulated pump a ``sim://`` URL runs (default: one built from the URL).
    """
    transport = open_transport(url, clock=clock, pump=sim_pump)
    if isinstance(transport, NespTransport):
        return NewEraDriver(transport)
    assert isinstance(transport, RegisterTransport)
    retried_s = transport.timeout_s * (transport.retries + 1) * time_scale + 2 * period_s
    watchdog_ms = max(500.0, 1_000.0 * retried_s, 5_000.0 * period_s, 100.0 * time_scale)
    if watchdog_ms > 10_000.0:
        raise ConfigurationError(
            "pump",
            f"URL {url!r}: timeout × (retries + 1) needs a pump watchdog of {watchdog_ms:.0f} ms (max 10000)",
        )
    return ReferencePumpDriver(transport, watchdog_ms=int(watchdog_ms))


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
