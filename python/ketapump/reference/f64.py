"""Constants shared with the Rust core, and Rust's ``f64`` semantics: ``min``/``max`` ignore NaN and
``clamp`` panics on a NaN bound."""

from __future__ import annotations

import math
import sys
from typing import Final

#: Agreement with the Rust kernel: ``math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)``.
TOLERANCE: Final = 1e-9

S_PER_H: Final = 3_600.0
#: ``f64::MIN`` (the most negative finite double), the seed of the staleness fold.
F64_MIN: Final = -sys.float_info.max
#: Capacity of the trace ring (``trace::TRACE_CAPACITY``).
TRACE_CAPACITY: Final = 64
#: Checkpoints in the flow-deviation window (``kernel::FLOW_POINTS``).
FLOW_POINTS: Final = 13
#: The estimators (pressure filter, slope detector, flow window) run on a fresh sample at least this long
#: after the one they last ran on (``kernel::ESTIMATOR_INTERVAL_S``).
ESTIMATOR_INTERVAL_S: Final = 0.0095
#: The longest an alarm may be silenced (``config::MAX_SILENCE_S``).
MAX_SILENCE_S: Final = 120.0

#: Alarm names in code order (``Alarm::ALL``); an alarm's code is its index.
ALARMS: Final = (
    "overdose",
    "cumulative_cap",
    "rate_command_invalid",
    "telemetry_invalid",
    "telemetry_stale",
    "occlusion_pressure",
    "occlusion_slope",
    "stall",
    "flow_deviation",
    "syringe_empty",
    "air_in_line",
    "syringe_missing",
    "uncommanded_delivery",
    "reverse_motion",
    "clock_invalid",
    "encoder_mismatch",
)

# Unit-check problems (``UnitProblem::as_str``).
NOT_FINITE: Final = "must be a finite number"
BELOW_MINIMUM: Final = "is below the allowed minimum"
ABOVE_MAXIMUM: Final = "is above the allowed maximum"

# Ranges of the unit newtypes used by program validation (``units.rs``).
MILLILITRES_MAX: Final = 1_000.0
ML_PER_HOUR_MAX: Final = 2_000.0

# Telemetry plausibility bounds, inclusive (``PLAUSIBLE_VOLUME_ML``, ``PLAUSIBLE_PRESSURE_MMHG``).
VOLUME_MIN_ML: Final = -1_000.0
VOLUME_MAX_ML: Final = 10_000.0
PRESSURE_MIN_MMHG: Final = -300.0
PRESSURE_MAX_MMHG: Final = 5_000.0

# Directions (``Direction::as_str``).
HOLD: Final = "hold"
FORWARD: Final = "forward"
RETRACT: Final = "retract"


class RustPanicError(RuntimeError):
    """Raised where the Rust code would panic (``f64::clamp`` with NaN or crossed bounds)."""


def _fmin(a: float, b: float) -> float:
    """``f64::min``: NaN is ignored (the other argument is returned)."""
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return b if b < a else a


def _fmax(a: float, b: float) -> float:
    """``f64::max``: NaN is ignored (the other argument is returned)."""
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return b if b > a else a


def _fclamp(x: float, lo: float, hi: float) -> float:
    """``f64::clamp``: panics unless ``lo <= hi``; a NaN ``x`` passes through."""
    if not lo <= hi:
        raise RustPanicError(f"f64::clamp with min={lo!r} > max={hi!r} or a NaN bound")
    # max(x, lo) keeps x unless lo > x, exactly Rust's `if self < min { self = min }` (NaN stays NaN).
    x = max(x, lo)
    return min(x, hi)
