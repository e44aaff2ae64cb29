"""`ketapump qa accuracy`: the IEC 60601-2-24 style accuracy test of a pump through the bridge.

The bridge runs the pump at the set rate for the test period (T = 120 min by default) while a balance
records the delivered mass every 30 s; the first half gives the start-up curve, the second half the
trumpet curve (:mod:`ketapump.qa.trumpet`). Balance sources:

- ``sim``: the gravimetric balance of the in-process simulated pump (``sim://`` only);
- ``csv:PATH``: a file of ``t_s,grams`` lines recorded by any balance (a header line is allowed).

Targets (safety-targets.md): S1 |A| ≤ 2 %; S2 |Ep| ≤ 5 % at P = 2 min (≤ 10 % at 1 mL/h) and
≤ 2 % for P ≥ 11 min at rates ≥ 5 mL/h.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from ketapump.qa.trumpet import Trumpet, trumpet

SAMPLE_MIN = 0.5


@dataclass(frozen=True)
class Verdict:
    s1_mean_error: bool
    s2_trumpet: bool


def verdict(result: Trumpet, rate_ml_h: float) -> Verdict:
    """S1 and S2 as safety-targets.md states them."""
    p2_limit = 10.0 if rate_ml_h < 5.0 else 5.0
    s2 = all(abs(v) <= p2_limit for v in result.ep.get(2.0, (0.0, 0.0)))
    if rate_ml_h >= 5.0:
        s2 = s2 and all(abs(v) <= 2.0 for p, pair in result.ep.items() if p >= 11.0 for v in pair)
    return Verdict(s1_mean_error=abs(result.mean_error_pct) <= 2.0, s2_trumpet=s2)


def readings_from_csv(path: Path) -> list[tuple[float, float]]:
    """``t_s,grams`` rows; raises ``ValueError`` naming the line of a malformed row."""
    rows: list[tuple[float, float]] = []
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or (n == 1 and not row[0].strip().replace(".", "", 1).isdigit()):
                continue
            try:
                t, g = float(row[0]), float(row[1])
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{n}: expected t_s,grams, got {row!r}") from None
            if not (math.isfinite(t) and math.isfinite(g)):
                raise ValueError(f"{path}:{n}: non-finite value")
            rows.append((t, g))
    return rows


def grams_every_sample(readings: list[tuple[float, float]], duration_min: float) -> list[float]:
    """The readings at 0, S, 2S … T (the balance's own 30 s samples), checked to be complete."""
    period_s = SAMPLE_MIN * 60.0
    by_slot = {round(t / period_s): g for t, g in readings if abs(t / period_s - round(t / period_s)) < 1e-3}
    slots = round(duration_min / SAMPLE_MIN)
    missing = [k for k in range(slots + 1) if k not in by_slot]
    if missing:
        raise ValueError(
            f"balance readings missing at {', '.join(f'{k * period_s:g} s' for k in missing[:5])}"
        )
    return [by_slot[k] for k in range(slots + 1)]


def plot(result: Trumpet, rate_ml_h: float, out_dir: Path, start_min: float) -> list[Path]:
    """The start-up curve and the trumpet curve as PNGs (headless)."""
    import matplotlib  # noqa: PLC0415 - plotting is optional at import time

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    startup = out_dir / "startup.png"
    fig, ax = plt.subplots(figsize=(8, 4))
    t = [p[0] for p in result.flow_ml_h]
    ax.plot(t, [p[1] for p in result.flow_ml_h], label="flow per 30 s sample")
    ax.axhline(rate_ml_h, color="black", linewidth=1, label=f"set rate {rate_ml_h:g} mL/h")
    ax.axvline(start_min, color="grey", linestyle="--", label="analysis period starts")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("flow (mL/h)")
    ax.set_title("Start-up curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(startup, dpi=100)
    plt.close(fig)
    trumpet_png = out_dir / "trumpet.png"
    fig, ax = plt.subplots(figsize=(8, 4))
    windows = sorted(result.ep)
    ax.plot(windows, [result.ep[p][0] for p in windows], "o-", label="Ep(max)")
    ax.plot(windows, [result.ep[p][1] for p in windows], "o-", label="Ep(min)")
    ax.axhline(result.mean_error_pct, color="black", linewidth=1, label=f"A = {result.mean_error_pct:.2f} %")
    ax.set_xlabel("observation window P (min)")
    ax.set_ylabel("error (%)")
    ax.set_title(f"Trumpet curve at {rate_ml_h:g} mL/h")
    ax.legend()
    fig.tight_layout()
    fig.savefig(trumpet_png, dpi=100)
    plt.close(fig)
    return [startup, trumpet_png]


def analyse(
    readings: list[tuple[float, float]],
    *,
    rate_ml_h: float,
    duration_min: float,
    density_g_per_ml: float = 1.0,
) -> Trumpet:
    """The trumpet analysis of a run's balance readings: the second half of the period is analysed."""
    grams = grams_every_sample(readings, duration_min)
    return trumpet(
        grams,
        rate_ml_h=rate_ml_h,
        sample_min=SAMPLE_MIN,
        start_min=duration_min / 2,
        density_g_per_ml=density_g_per_ml,
    )
