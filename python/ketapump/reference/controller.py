"""Mirror of ``controller.rs``: the feed-forward + PI volume controller."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ketapump.errors import ConfigurationError
from ketapump.reference.f64 import NOT_FINITE, _fclamp


@dataclass(frozen=True)
class Gains:
    """Controller tuning, in kernel units (mL, s)."""

    kp_per_s: float
    ki_per_s2: float
    integral_limit_ml_s: float
    slew_ml_s_per_s: float
    max_ml_s: float


@dataclass(frozen=True)
class ControlStatus:
    """The per-term breakdown of one controller step (all zero when the controller did not run)."""

    target_ml: float = 0.0
    error_ml: float = 0.0
    feed_forward_ml_s: float = 0.0
    proportional_ml_s: float = 0.0
    integral_ml_s: float = 0.0
    output_ml_s: float = 0.0
    saturated: bool = False
    slew_limited: bool = False
    integrating: bool = False


class ReferenceController:
    """PI-with-feed-forward volume controller with anti-windup and a slew limit (``RateController``).

    A refused step raises :class:`~ketapump.errors.ConfigurationError` naming the offending input and
    leaves the state untouched, as the binding's ``RateController`` does.
    """

    def __init__(self, gains: Gains) -> None:
        self.gains = gains
        self.target_ml = 0.0
        self.integral_ml_s = 0.0
        self.last_output_ml_s = 0.0

    def reset(self, measured_ml: float) -> None:
        """Tracks from ``measured_ml`` with no integral and a stopped motor (every start or resume).

        Like the core (and unlike the binding's ``RateController.reset``), a non-finite value is not refused.
        """
        self.target_ml = measured_ml
        self.integral_ml_s = 0.0
        self.last_output_ml_s = 0.0

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
        proportional = g.kp_per_s * error
        candidate = _fclamp(self.integral_ml_s + error * dt_s, -g.integral_limit_ml_s, g.integral_limit_ml_s)
        unsaturated = setpoint_ml_s + proportional + g.ki_per_s2 * candidate
        # Anti-windup: hold the integral when saturated and the error pushes further out.
        winding_up = (unsaturated > g.max_ml_s and error > 0.0) or (unsaturated < 0.0 and error < 0.0)
        integral = self.integral_ml_s if winding_up else candidate
        total = setpoint_ml_s + proportional + g.ki_per_s2 * integral
        saturated_output = _fclamp(total, 0.0, g.max_ml_s)
        step_limit = g.slew_ml_s_per_s * dt_s
        slewed = _fclamp(
            _fclamp(saturated_output, self.last_output_ml_s - step_limit, self.last_output_ml_s + step_limit),
            0.0,
            g.max_ml_s,
        )

        # Finite inputs can still overflow (a huge dt or volume): refuse rather than poison the state.
        if not all(math.isfinite(v) for v in (target, error, integral, slewed)):
            raise ConfigurationError("dt_s", NOT_FINITE)
        self.target_ml = target
        self.integral_ml_s = integral
        self.last_output_ml_s = slewed
        return ControlStatus(
            target_ml=target,
            error_ml=error,
            feed_forward_ml_s=setpoint_ml_s,
            proportional_ml_s=proportional,
            integral_ml_s=g.ki_per_s2 * integral,
            output_ml_s=slewed,
            saturated=total < 0.0 or total > g.max_ml_s,
            slew_limited=slewed != saturated_output,
            integrating=not winding_up,
        )
