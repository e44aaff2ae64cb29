"""Slowing an infusion down, and what that does to the rest of the dose.

An operator slows the infusion to a fraction of the plan's rate, or to at most a rate; the plan's
schedule (its ramp, hold and taper) still decides the shape, and the pump never runs faster than the
plan (:class:`Pace`). The dose stays the dose: the rest takes longer. :func:`time_to_finish` says how
long the rest takes at a pace, and :func:`volume_within` how much of it a time budget allows, so the
session can say when the infusion now ends and, if that is past the maximum duration, how much would
not be given.

The schedule is followed by delivered volume (the session asks for ``plan.planned_rate_for_ml(
delivered)``, that is ``plan.rate_at(plan.time_for_ml(delivered))``), so these integrate over plan
time τ: at the plan's rate ``r(τ)`` the pump delivers what the plan would in ``dτ`` in
``dτ × r / pace.rate(r)`` seconds. Pure arithmetic; no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ketapump.clinical.protocol import DosePlan

#: Plan-time step of the integration (s); the schedule is linear within a segment.
STEP_S = 1.0


@dataclass(frozen=True)
class Pace:
    """The pace the pump runs at: ``fraction`` of the plan's rate, and at most ``cap_ml_h`` (``None``:
    no cap). ``Pace()`` is the plan itself."""

    fraction: float = 1.0
    cap_ml_h: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"a pace is a fraction in (0, 1] of the plan, not {self.fraction!r}")
        if self.cap_ml_h is not None and not self.cap_ml_h > 0.0:
            raise ValueError(f"a pace's cap must be above 0 mL/h, not {self.cap_ml_h!r}")

    @property
    def slowed(self) -> bool:
        return self.fraction < 1.0 or self.cap_ml_h is not None

    def rate(self, planned_ml_h: float) -> float:
        """The rate to run at where the plan runs at ``planned_ml_h`` (never above it)."""
        rate = planned_ml_h * self.fraction
        return min(rate, self.cap_ml_h) if self.cap_ml_h is not None else rate

    def stretch(self, planned_ml_h: float) -> float:
        """Seconds of running per second of plan time where the plan runs at ``planned_ml_h`` (≥ 1)."""
        stretch = 1.0 / self.fraction
        if self.cap_ml_h is not None:
            stretch = max(stretch, planned_ml_h / self.cap_ml_h)
        return stretch

    def describe(self) -> str:
        if self.cap_ml_h is not None:
            return f"at most {self.cap_ml_h:.3g} mL/h"
        return f"{100.0 * self.fraction:.3g} % of the plan" if self.slowed else "the plan"


PLAN = Pace()


def _plan_steps(plan: DosePlan, delivered_ml: float) -> list[tuple[float, float]]:
    """The rest of the schedule as (plan-time step, plan rate at its midpoint), from where the delivered
    volume has brought it."""
    start = plan.time_for_ml(delivered_ml)
    end = plan.segments[-1].end_s
    steps = []
    t = start
    while t < end:
        dt = min(STEP_S, end - t)
        steps.append((dt, plan.rate_at(t + dt / 2.0)))
        t += dt
    return steps


def time_to_finish(plan: DosePlan, delivered_ml: float, pace: Pace) -> float:
    """Seconds of running at ``pace`` the rest of the dose takes (pauses not counted)."""
    return sum(dt * pace.stretch(rate) for dt, rate in _plan_steps(plan, delivered_ml))


def volume_within(plan: DosePlan, delivered_ml: float, pace: Pace, seconds: float) -> float:
    """The volume (mL) ``seconds`` of running at ``pace`` deliver of the rest of the dose."""
    budget = max(seconds, 0.0)
    volume = 0.0
    for dt, rate in _plan_steps(plan, delivered_ml):
        if budget <= 0.0:
            break
        stretch = pace.stretch(rate)
        used = min(dt, budget / stretch)
        volume += rate * used / 3600.0
        budget -= used * stretch
    return min(volume, max(plan.volume_ml - delivered_ml, 0.0))


__all__ = ["PLAN", "STEP_S", "Pace", "time_to_finish", "volume_within"]
