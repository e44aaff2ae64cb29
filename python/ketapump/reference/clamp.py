"""Mirror of ``clamp.rs``: the single choke point for a forward rate."""

from __future__ import annotations

import math
import sys

from ketapump.reference.f64 import _fmin


def clamp_rate(
    requested_ml_s: float, max_ml_s: float, headroom_ml: float, period_s: float
) -> tuple[float, str]:
    """Clamps a requested forward rate (mL/s) into ``[0, min(max, headroom / period)]``.

    Returns the rate and the name of the branch that decided it (``ClampReason::as_str``).
    """
    if not math.isfinite(requested_ml_s):
        return 0.0, "non_finite"
    if requested_ml_s < 0.0:
        return 0.0, "negative"
    limits_valid = (
        math.isfinite(max_ml_s)
        and max_ml_s > 0.0
        and not math.isnan(headroom_ml)
        and math.isfinite(period_s)
        and period_s > 0.0
    )
    if not limits_valid:
        return 0.0, "no_limit"
    if headroom_ml <= 0.0:
        return 0.0, "dose_exhausted"
    capped = _fmin(requested_ml_s, max_ml_s)
    headroom_rate = _headroom_rate(headroom_ml, period_s)
    if headroom_rate == 0.0:
        return 0.0, "dose_exhausted"
    if capped > headroom_rate:
        return headroom_rate, "dose_headroom"
    if requested_ml_s > max_ml_s:
        return capped, "above_max"
    return requested_ml_s, "unchanged"


def _headroom_rate(headroom_ml: float, period_s: float) -> float:
    """``headroom / period`` rounded down so ``rate × period ≤ headroom``; zero when subnormal."""
    rate = headroom_ml / period_s
    if rate < sys.float_info.min:
        return 0.0
    while math.isfinite(rate) and rate * period_s > headroom_ml:
        rate = math.nextafter(rate, 0.0)
    return rate
