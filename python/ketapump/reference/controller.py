"""Mirror of ``controller.rs``: the feed-forward + quiet PI volume controller."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from ketapump.errors import ConfigurationError
from ketapump.reference.f64 import NOT_FINITE, _fclamp

#: A decision is due once this little short of ``hold_s`` has passed (``HOLD_TOLERANCE_S``).
HOLD_TOLERANCE_S: Final = 1.0e-9


@dataclass(frozen=True)
class Gains:
    """Controller tuning, in kernel units (mL, s). Without ``deadband_ml`` and ``hold_s`` every step
    decides (the per-step PI)."""

    kp_per_s: float
    ki_per_s2: float
    integral_limit_ml_s: float
    slew_ml_s_per_s: float
    max_ml_s: float
    #: Volume error the controller leaves alone (mL).
    deadband_ml: float = 0.0
    #: Shortest time between two decisions (s).
    hold_s: float = 0.0
    #: The encoder's volume quantum (mL): with ``hold_s``, the smallest trim change worth making.
    quantum_ml: float = 0.0


@dataclass(frozen=True)
class ControlStatus:
    """The per-term breakdown of one controller step (all zero when the controller did not run)."""

    target_ml: float = 0.0
    error_ml: float = 0.0
    feed_forward_ml_s: float = 0.0
    #: The proportional and integral terms of the trim in force (decided on this step or held).
    proportional_ml_s: float = 0.0
    integral_ml_s: float = 0.0
    output_ml_s: float = 0.0
    saturated: bool = False
    slew_limited: bool = False
    #: The integral advanced on this step (a decision that anti-windup did not hold).
    integrating: bool = False
    #: No decision on this step: the trim was held from the last one.
    held: bool = False


class ReferenceController:
    """Quiet PI-with-feed-forward volume controller with anti-windup and a slew limit (``RateController``;
    the control law is in ``controller.rs``'s module documentation).

    A refused step raises :class:`~ketapump.errors.ConfigurationError` naming the offending input and
    leaves the state untouched, as the binding's ``RateController`` does.
    """

    def __init__(self, gains: Gains) -> None:
        self.gains = gains
        self.reset(0.0)

    def reset(self, measured_ml: float) -> None:
        """Tracks from ``measured_ml`` with no integral, no trim and a stopped motor (every start or
        resume); the next step decides.

        Like the core (and unlike the binding's ``RateController.reset``), a non-finite value is not refused.
        """
        self.target_ml = measured_ml
        self.integral_ml_s = 0.0
        self.last_output_ml_s = 0.0
        self.trim_ml_s = 0.0
        self.trim_proportional_ml_s = 0.0
        self.trim_integral_ml_s = 0.0
        self.since_decision_s: float | None = None

    def step(self, setpoint_ml_s: float, measured_ml: float, dt_s: float) -> ControlStatus:
        """One control step."""
        for name, value in (("setpoint_ml_s", setpoint_ml_s), ("measured_ml", measured_ml), ("dt_s", dt_s)):
            if not math.isfinite(value):
                raise ConfigurationError(name, NOT_FINITE)
        for name, value in (("setpoint_ml_s", setpoint_ml_s), ("dt_s", dt_s)):
            if value < 0.0:
                raise ConfigurationError(name, "must not be negative")
        g = self.gains
        target = self.target_ml + setpoint_ml_s * dt_s
        error = target - measured_ml
        elapsed = dt_s if self.since_decision_s is None else self.since_decision_s + dt_s
        deciding = self.since_decision_s is None or elapsed + HOLD_TOLERANCE_S >= g.hold_s
        integral = self.integral_ml_s
        trim, proportional, integral_term = (
            self.trim_ml_s,
            self.trim_proportional_ml_s,
            self.trim_integral_ml_s,
        )
        integrating = False
        if deciding:
            resolved = error - _fclamp(error, -g.deadband_ml, g.deadband_ml)
            wanted_proportional = g.kp_per_s * resolved
            candidate = _fclamp(
                self.integral_ml_s + resolved * elapsed, -g.integral_limit_ml_s, g.integral_limit_ml_s
            )
            unsaturated = setpoint_ml_s + wanted_proportional + g.ki_per_s2 * candidate
            # Anti-windup: hold the integral when saturated and the error pushes further out.
            winding_up = (unsaturated > g.max_ml_s and resolved > 0.0) or (
                unsaturated < 0.0 and resolved < 0.0
            )
            if not winding_up:
                integral = candidate
                integrating = True
            wanted_integral = g.ki_per_s2 * integral
            wanted = wanted_proportional + wanted_integral
            resolvable = g.quantum_ml / g.hold_s if g.hold_s > 0.0 else 0.0
            if wanted == 0.0 or abs(wanted - self.trim_ml_s) > resolvable:
                trim, proportional, integral_term = wanted, wanted_proportional, wanted_integral
        total = setpoint_ml_s + trim
        saturated_output = _fclamp(total, 0.0, g.max_ml_s)
        step_limit = g.slew_ml_s_per_s * dt_s
        slewed = _fclamp(
            _fclamp(saturated_output, self.last_output_ml_s - step_limit, self.last_output_ml_s + step_limit),
            0.0,
            g.max_ml_s,
        )

        # Finite inputs can still overflow (a huge dt or volume): refuse rather than poison the state.
        if not all(math.isfinite(v) for v in (target, error, integral, elapsed, slewed)):
            raise ConfigurationError("dt_s", NOT_FINITE)
        self.target_ml = target
        self.integral_ml_s = integral
        self.last_output_ml_s = slewed
        self.trim_ml_s, self.trim_proportional_ml_s, self.trim_integral_ml_s = (
            trim,
            proportional,
            integral_term,
        )
        self.since_decision_s = 0.0 if deciding else elapsed
        return ControlStatus(
            target_ml=target,
            error_ml=error,
            feed_forward_ml_s=setpoint_ml_s,
            proportional_ml_s=proportional,
            integral_ml_s=integral_term,
            output_ml_s=slewed,
            saturated=total < 0.0 or total > g.max_ml_s,
            slew_limited=slewed != saturated_output,
            integrating=integrating,
            held=not deciding,
        )
