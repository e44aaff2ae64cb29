"""Outcome scores: the depression rating scales recorded per visit, their trend, response and remission.

Two scales, each a whole number in its validated range: **PHQ-9** (patient self-report, 0–27) and
**MADRS** (clinician-rated, 0–60). The course's first score of a scale is its **baseline**; the latest
is compared with it:

* change = (baseline − latest) / baseline × 100 % (positive: better);
* **response**: a reduction of at least ``outcomes.response_reduction_pct`` (50 %) from the baseline;
* **remission**: the latest score at or below the scale's remission threshold (PHQ-9 ≤ 4, MADRS ≤ 10).

The thresholds are clinician-owned numbers in ``data/course.toml`` (``[outcomes]``). A baseline of 0
has no percentage change (``None``), so it is never a response. Pure functions: the store records the
scores, :func:`trends` reads them, :func:`plot_trend` draws them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from ketapump.clinical.course.settings import OutcomeSettings
from ketapump.errors import CourseError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Instrument = Literal["phq9", "madrs"]

#: Every scale: its name for people and its validated range (inclusive).
INSTRUMENTS: Final[dict[str, tuple[str, int, int]]] = {
    "phq9": ("PHQ-9", 0, 27),
    "madrs": ("MADRS", 0, 60),
}


def check_score(subject: str, instrument: str, score: int) -> int:
    """``score`` if it is a whole number within ``instrument``'s range; :class:`CourseError` naming the
    scale, the value and the range otherwise (an unknown scale names the known ones)."""
    if instrument not in INSTRUMENTS:
        raise CourseError(subject, f"{instrument!r} is not a rating scale (one of {', '.join(INSTRUMENTS)})")
    label, low, high = INSTRUMENTS[instrument]
    if isinstance(score, bool) or not isinstance(score, int) or not low <= score <= high:
        raise CourseError(subject, f"{label} score {score!r} is not a whole number from {low} to {high}")
    return score


@dataclasses.dataclass(frozen=True)
class Score:
    """One rating at one visit: the scale, the score, when, who recorded it, and the session it belongs
    to (``None``: a visit without an infusion, e.g. the assessment before the course)."""

    patient_id: str
    session_id: str | None
    at: _dt.datetime
    instrument: str
    score: int
    who: str | None


@dataclasses.dataclass(frozen=True)
class Trend:
    """A scale's course: every score in time order, the baseline (the first) and the latest, the change
    in % of the baseline, and whether that is a response and a remission by the course's thresholds."""

    instrument: str
    label: str
    points: tuple[tuple[_dt.datetime, int], ...]
    baseline: int
    latest: int
    change_pct: float | None
    response: bool
    remission: bool
    response_reduction_pct: float
    remission_max: int

    @property
    def status(self) -> str:
        """In words: ``remission``, ``response``, ``no response yet`` (one score: ``baseline only``)."""
        if len(self.points) < 2:
            return "baseline only"
        if self.remission:
            return "remission"
        return "response" if self.response else "no response yet"


def trends(scores: Iterable[Score], settings: OutcomeSettings) -> dict[str, Trend]:
    """One :class:`Trend` per scale that has scores, in :data:`INSTRUMENTS` order."""
    by_scale: dict[str, list[tuple[_dt.datetime, int]]] = {}
    for s in sorted(scores, key=lambda s: s.at):
        by_scale.setdefault(s.instrument, []).append((s.at, s.score))
    result = {}
    for instrument, (label, _low, _high) in INSTRUMENTS.items():
        points = by_scale.get(instrument)
        if not points:
            continue
        baseline, latest = points[0][1], points[-1][1]
        change = None if baseline == 0 else (baseline - latest) / baseline * 100.0
        reduction = settings.response_reduction_pct
        remission_max = settings.remission_max(instrument)
        result[instrument] = Trend(
            instrument=instrument,
            label=label,
            points=tuple(points),
            baseline=baseline,
            latest=latest,
            change_pct=change,
            # Compared in whole points so a 50 % reduction is a response however the division rounds.
            response=len(points) > 1 and baseline > 0 and (baseline - latest) * 100 >= reduction * baseline,
            remission=len(points) > 1 and latest <= remission_max,
            response_reduction_pct=reduction,
            remission_max=remission_max,
        )
    return result


def plot_trend(course_trends: Sequence[Trend], path: Path, *, title: str) -> Path:
    """Writes :func:`trend_figure` as a PNG at ``path``."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 (a plotting library is loaded only when a plot is drawn)

    fig = trend_figure(course_trends, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def trend_figure(course_trends: Sequence[Trend], *, title: str) -> Figure:
    """Every scale's scores over the course, each in its own panel with its baseline, the score that
    would be a response (baseline less the reduction) and the remission threshold, in that order."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = max(1, len(course_trends))
    fig, axes = plt.subplots(panels, 1, figsize=(9, 3.2 * panels), squeeze=False)
    for ax, trend in zip(axes[:, 0], course_trends, strict=False):
        times = [t for t, _ in trend.points]
        values = [v for _, v in trend.points]
        high = INSTRUMENTS[trend.instrument][2]
        ax.plot(times, values, "o-", color="tab:blue", label=f"{trend.label} score")
        ax.axhline(trend.baseline, color="grey", linestyle=":", label=f"baseline {trend.baseline}")
        response_at = trend.baseline * (1 - trend.response_reduction_pct / 100.0)
        ax.axhline(
            response_at,
            color="tab:orange",
            linestyle="--",
            label=f"response: ≤ {response_at:g} (−{trend.response_reduction_pct:g} %)",
        )
        ax.axhline(
            trend.remission_max,
            color="tab:green",
            linestyle="--",
            label=f"remission: ≤ {trend.remission_max}",
        )
        ax.set_ylim(0, high)
        ax.set_ylabel(f"{trend.label} (0–{high})")
        ax.set_title(f"{trend.label}: {trend.status}")
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("visit (UTC)")
    fig.suptitle(title)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


__all__ = [
    "INSTRUMENTS",
    "Instrument",
    "Score",
    "Trend",
    "check_score",
    "plot_trend",
    "trend_figure",
    "trends",
]
