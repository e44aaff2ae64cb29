"""A kernel-guarded infusion from Python: the control loop of ``ketapump run`` (the bridge's
:class:`~ketapump.bridge.ControlLoop`, every command decided by the Rust safety kernel), recorded in the
same hash-chained audit log, on a pump opened with :func:`ketapump.open_pump`."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ketapump import _core
from ketapump.api.pump import AsyncPump, Pump
from ketapump.bridge import (
    AuditWriter,
    ControlLoop,
    InfusionPlan,
    RunResult,
    audit_logger,
    default_log_path,
    run_kernel_config,
)
from ketapump.errors import AuditWriteError, ConfigurationError
from ketapump.wire import PumpTelemetry

#: Seconds between telemetry summaries in the audit log (as ``ketapump run``: a resume's recovery points).
SUMMARY_EVERY_S = 10.0


@dataclass(frozen=True)
class InfusionTick:
    """One control tick of a guarded infusion, as :func:`infuse` hands it to ``on_tick``."""

    #: Pump time (s) on the pump handle's clock.
    t_s: float
    #: The kernel's state: ``idle``, ``take_up``, ``running``, ``paused``, ``alarm``, ``complete``, …
    state: str
    #: The rate the kernel commanded on this tick (mL/h).
    rate_ml_h: float
    delivered_ml: float
    remaining_ml: float
    #: Latched kernel alarms.
    alarms: tuple[str, ...]
    #: The telemetry the kernel decided on (``None`` when the read failed).
    telemetry: PumpTelemetry | None


InfusionResult = RunResult


def _check(rate_ml_h: float, volume_ml: float) -> None:
    for name, value in (("rate_ml_h", rate_ml_h), ("volume_ml", volume_ml)):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and value > 0):
            raise ConfigurationError(name, f"must be a finite number > 0, not {value!r}")


async def infuse_async(
    pump: AsyncPump,
    rate_ml_h: float,
    volume_ml: float,
    *,
    log: str | os.PathLike[str] | None = None,
    on_tick: Callable[[InfusionTick], None] | None = None,
    take_up: bool = True,
) -> InfusionResult:
    """Infuses ``volume_ml`` at ``rate_ml_h`` on ``pump`` under the safety kernel and returns how it ended.

    The result's ``state`` is ``complete``, ``alarm``, ``stopped`` or ``link_lost`` and its ``reason``
    ``complete``, ``interlock``, ``pump_alarm``, ``transport`` or ``operator`` (as ``ketapump run``'s exit
    codes); ``delivered_ml`` is what the plunger measured. Every step goes to the audit log ``log``
    (default: a new file under ``$XDG_STATE_HOME/ketapump/logs``, as ``ketapump run``). ``on_tick`` is
    called every control tick; cancelling the call (or Ctrl-C in :func:`infuse`) stops the pump first.

    Raises :class:`~ketapump.errors.ConfigurationError` for a non-positive rate or volume or a rate the
    kernel refuses, :class:`~ketapump.errors.TransportError` when the pump cannot be reached at the start,
    and :class:`~ketapump.errors.AuditWriteError` when the log cannot be written (the pump is stopped).
    """
    _check(rate_ml_h, volume_ml)
    path = Path(log) if log is not None else default_log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = AuditWriter.open(path)
    except (OSError, ValueError) as e:
        raise AuditWriteError(str(path), f"cannot open the audit log: {e}") from e
    events = audit_logger(writer, session_id=uuid.uuid4().hex, pump=pump.info.url)
    clock = pump.clock

    def tick(out: _core.StepOutput, telemetry: PumpTelemetry | None) -> None:
        if on_tick is not None:
            on_tick(
                InfusionTick(
                    t_s=clock.now(),
                    state=out.state,
                    rate_ml_h=out.rate_ml_h,
                    delivered_ml=out.delivered_ml,
                    remaining_ml=out.remaining_ml,
                    alarms=tuple(out.alarms),
                    telemetry=telemetry,
                )
            )

    plan = InfusionPlan(
        rate_ml_h=rate_ml_h,
        volume_ml=volume_ml,
        syringe_diameter_mm=pump.syringe_diameter_mm,
        take_up=take_up,
    )
    try:
        loop = ControlLoop(
            pump.driver,
            run_kernel_config(pump.driver, pump.period_s),
            clock,
            events,
            period_s=pump.period_s,
            on_tick=tick,
            summary_every_s=SUMMARY_EVERY_S,
        )
        async with pump._guard():
            return await loop.run(plan)
    finally:
        writer.close()


def infuse(
    pump: Pump,
    rate_ml_h: float,
    volume_ml: float,
    *,
    log: str | os.PathLike[str] | None = None,
    on_tick: Callable[[InfusionTick], None] | None = None,
    take_up: bool = True,
) -> InfusionResult:
    """:func:`infuse_async` for a blocking :class:`~ketapump.Pump`. ``on_tick`` runs on the pump's
    background thread. The call takes as long as the infusion (pump time over the handle's time scale);
    Ctrl-C stops the pump and raises ``KeyboardInterrupt``."""
    _check(rate_ml_h, volume_ml)
    return pump.run(
        infuse_async(pump.async_pump, rate_ml_h, volume_ml, log=log, on_tick=on_tick, take_up=take_up)
    )
