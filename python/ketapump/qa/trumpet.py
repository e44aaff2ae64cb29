"""The IEC 60601-2-24 gravimetric accuracy analysis ("trumpet curve"), as a pure function.

Method (safety-targets.md; verify against the licensed standard before claiming conformance):

- balance readings W_i (g) every S minutes; flow per sample Q_i = 60·(W_i − W_{i−1}) / (S·d) (mL/h),
  d the density (g/mL);
- the analysis period is the second hour: the samples whose interval ends after ``start_min``;
- mean error A = 100·(Q − r)/r with Q the mean flow over the analysis period, r the set rate;
- for each observation window P (min): slide a window of P/S consecutive samples one sample at a time
  through the analysis period; average 100·(Q_i − r)/r over each position; Ep(max) and Ep(min) are the
  largest and smallest of those averages.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

IEC_WINDOWS_MIN: tuple[float, ...] = (2.0, 5.0, 11.0, 19.0, 31.0)


@dataclass(frozen=True)
class Trumpet:
    #: Mean error over the analysis period, A (%).
    mean_error_pct: float
    #: Window P (min) → (Ep(max), Ep(min)) (%).
    ep: dict[float, tuple[float, float]]
    #: Flow per sample over the whole run, (t_min at the end of the interval, Q_i mL/h).
    flow_ml_h: list[tuple[float, float]]


def flows_ml_h(grams: Sequence[float], sample_min: float, density_g_per_ml: float) -> list[float]:
    """Q_i = 60·(W_i − W_{i−1}) / (S·d) for consecutive readings."""
    if sample_min <= 0 or density_g_per_ml <= 0:
        raise ValueError("sample interval and density must be positive")
    scale = 60.0 / (sample_min * density_g_per_ml)
    return [(b - a) * scale for a, b in itertools.pairwise(grams)]


def trumpet(
    grams: Sequence[float],
    *,
    rate_ml_h: float,
    sample_min: float = 0.5,
    start_min: float = 60.0,
    density_g_per_ml: float = 1.0,
    windows_min: Sequence[float] = IEC_WINDOWS_MIN,
) -> Trumpet:
    """Mean error and Ep(max)/Ep(min) per window from balance readings taken every ``sample_min``
    from t = 0 (``grams[k]`` read at k·S). Raises ``ValueError`` when the analysis period is shorter
    than a window, a window is not a whole number of samples, or an input is not finite."""
    if not (math.isfinite(rate_ml_h) and rate_ml_h > 0):
        raise ValueError(f"rate_ml_h must be positive, not {rate_ml_h}")
    if not all(math.isfinite(w) for w in grams):
        raise ValueError("balance readings must be finite")
    q = flows_ml_h(grams, sample_min, density_g_per_ml)
    times = [(i + 1) * sample_min for i in range(len(q))]
    analysed = [qi for t, qi in zip(times, q, strict=True) if t > start_min + 1e-9]
    if not analysed:
        raise ValueError(f"no samples after {start_min} min")
    errors = [100.0 * (qi - rate_ml_h) / rate_ml_h for qi in analysed]
    mean_flow = sum(analysed) / len(analysed)
    ep: dict[float, tuple[float, float]] = {}
    for p in windows_min:
        n = p / sample_min
        if abs(n - round(n)) > 1e-9 or round(n) < 1:
            raise ValueError(f"window {p} min is not a whole number of {sample_min}-min samples")
        width = round(n)
        if width > len(errors):
            raise ValueError(f"window {p} min is longer than the analysis period")
        averages = [sum(errors[k : k + width]) / width for k in range(len(errors) - width + 1)]
        ep[p] = (max(averages), min(averages))
    return Trumpet(
        mean_error_pct=100.0 * (mean_flow - rate_ml_h) / rate_ml_h,
        ep=ep,
        flow_ml_h=list(zip(times, q, strict=True)),
    )
