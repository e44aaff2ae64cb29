"""The session report: what was programmed and delivered, what happened and when, with plots and data.

Why: a session must be reviewable afterwards by someone who was not there: the clinician signing it
off, a QA engineer checking a rig run. The orchestrator records one :class:`SeriesPoint` per control
tick (or per second) and a :class:`SeriesEvent` for every pause, alarm, confirmation and phase change;
this module turns them into

- four PNG plots (:func:`write_plots`): cumulative dose against the plan, commanded against measured
  rate, line pressure with its alarm threshold, vital signs with their limits; time in minutes, phases
  shaded, events marked;
- the data behind them (:func:`write_series_csv`, read back by :func:`read_series_csv`);
- a self-contained report (:func:`write_report`): Markdown with the plots beside it, or one HTML file
  with the plots embedded.

Plotting uses :class:`matplotlib.figure.Figure` with the Agg canvas directly: importing this module
changes no global matplotlib state (no ``matplotlib.use``, no pyplot), and matplotlib itself is imported
only when a plot is drawn (it is most of a command's start-up, and most commands draw none).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import math
import os
import textwrap
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from ketapump.clinical.vitals import LABELS, Channel, VitalsThresholds, vitals_thresholds
from ketapump.errors import ConfigurationError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NAN = math.nan

#: Line colours, by series (tests look for them in the images).
COLORS: dict[str, str] = {
    "programmed": "#bcbd22",
    "delivered": "#1f77b4",
    "commanded": "#ff7f0e",
    "measured": "#2ca02c",
    "pressure": "#9467bd",
    "threshold": "#d62728",
    "sbp": "#d62728",
    "dbp": "#1f77b4",
    "hr": "#ff7f0e",
    "spo2": "#17becf",
    "rr": "#2ca02c",
    "etco2": "#9467bd",
    "planned_rate": "#7f7f7f",
    "target": "#000000",
    "slowed": "#f4b6c2",
}
#: Marks of the actions on the time axis, by actor.
ACTOR_COLORS: dict[str, str] = {"operator": "#4b0082", "vitals": "#b00020", "protocol": "#8c564b"}
#: Phase shading, in order of first appearance.
PHASE_COLORS = ("#fde9c9", "#d8ecd5", "#d5e3f0", "#eadcf0", "#f6d5d5", "#e5e5e5")
#: Event markers by kind, in colours no series uses; other kinds are drawn in grey.
_ALARM_KINDS = {"alarm", "vitals_alarm"}
_PAUSE_KINDS = {"pause", "paused"}
_RESUME_KINDS = {"resume", "resumed"}
EVENT_STYLES: dict[str, tuple[str, str]] = {
    **dict.fromkeys(_ALARM_KINDS, ("#b00020", "-")),
    **dict.fromkeys(_PAUSE_KINDS, ("#e6a100", "--")),
    **dict.fromkeys(_RESUME_KINDS, ("#00a36c", "--")),
    "confirmation": ("#8c564b", ":"),
    "phase": ("#7f7f7f", ":"),
    "phase_started": ("#7f7f7f", ":"),
}
#: Phases and event kinds as a reader names them (any other: its identifier with spaces).
WORDS: dict[str, str] = {
    "take_up": "take-up",
    "phase_started": "phase started",
    "rate_changed": "rate changed",
    "vitals_alarm": "vitals alarm",
    "pump_alarm": "pump alarm",
    "max_duration_reached": "maximum duration reached",
    "cuff_reading_requested": "cuff reading requested",
}
#: Phases in which the pump runs the plan (their end is where the infusion ended).
INFUSING_PHASES = frozenset({"take_up", "infusion"})
PLOT_FILES = {
    "dose": "dose.png",
    "rate": "rate.png",
    "pressure": "pressure.png",
    "vitals": "vitals.png",
}
DPI = 100
DISCLAIMER = (
    "ketapump is engineering software for pump integration, QA and research rigs. It is not a certified "
    "medical device."
)


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """The session at one instant. Vitals are NaN when there is no reading at ``t_s``."""

    t_s: float
    phase: str
    #: The plan's cumulative dose at ``t_s`` (mg).
    programmed_mg: float
    delivered_mg: float
    commanded_rate_ml_h: float
    measured_rate_ml_h: float
    pressure_mmhg: float
    #: The occlusion alarm threshold in force (mmHg).
    threshold_mmhg: float
    sbp: float = NAN
    dbp: float = NAN
    hr: float = NAN
    spo2: float = NAN
    rr: float = NAN
    etco2: float = NAN
    #: The plan's rate at this point of its schedule, and the rate programmed (lower while slowed).
    planned_rate_ml_h: float = NAN
    programmed_rate_ml_h: float = NAN
    #: Who holds the pump paused (``operator+vitals``…; empty: nobody).
    held_by: str = ""


@dataclass(frozen=True, slots=True)
class SeriesEvent:
    """Something that happened at ``t_s``. Conventional kinds: ``phase`` (``detail``: the new phase),
    ``pause``, ``resume``, ``alarm``, ``confirmation``; any other kind is marked too."""

    t_s: float
    kind: str
    detail: str = ""


FIELDS = tuple(f.name for f in dataclasses.fields(SeriesPoint))
#: The fields that hold text; every other one is a number.
_TEXT_FIELDS = frozenset({"phase", "held_by"})


# ----- the data ----------------------------------------------------------------------------------


def write_series_csv(points: Sequence[SeriesPoint], path: Path) -> Path:
    """The points as CSV, one column per field; a missing value (NaN) is an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for p in points:
            writer.writerow(
                "" if isinstance(v, float) and math.isnan(v) else (repr(v) if isinstance(v, float) else v)
                for v in dataclasses.astuple(p)
            )
    return path


def read_series_csv(path: Path) -> list[SeriesPoint]:
    """Reads :func:`write_series_csv`'s file back; raises :class:`ConfigurationError` naming the line."""
    points = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != FIELDS:
            raise ConfigurationError(f"{path}:1:", f"header must be {','.join(FIELDS)}")
        for n, row in enumerate(reader, start=2):
            if len(row) != len(FIELDS):
                raise ConfigurationError(f"{path}:{n}:", f"has {len(row)} columns, not {len(FIELDS)}")
            try:
                values = {
                    name: cell if name in _TEXT_FIELDS else (float(cell) if cell or name == "t_s" else NAN)
                    for name, cell in zip(FIELDS, row, strict=True)
                }
                points.append(SeriesPoint(**values))  # type: ignore[arg-type]
            except ValueError:
                raise ConfigurationError(f"{path}:{n}:", "has a value that is not a number") from None
    return points


def _column(points: Sequence[SeriesPoint], name: str) -> np.ndarray:
    return np.array([getattr(p, name) for p in points], dtype=float)


def phase_spans(points: Sequence[SeriesPoint]) -> list[tuple[str, float, float]]:
    """Contiguous runs of one phase: ``(phase, start_s, end_s)``; a run ends where the next begins."""
    spans: list[tuple[str, float, float]] = []
    for p in points:
        if spans and spans[-1][0] == p.phase:
            spans[-1] = (p.phase, spans[-1][1], p.t_s)
        else:
            if spans:
                spans[-1] = (spans[-1][0], spans[-1][1], p.t_s)
            spans.append((p.phase, p.t_s, p.t_s))
    return spans


# ----- plots -------------------------------------------------------------------------------------


def _figure(rows: int = 1, height_in: float = 4.5) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (see the module docstring)
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(10, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    return fig, [a for row in axes for a in row]


def _decorate(
    ax: Axes, spans: list[tuple[str, float, float]], events: Sequence[SeriesEvent], *, legend: bool
) -> None:
    """Phases shaded, events as vertical lines, one legend entry per phase and event kind."""
    colors: dict[str, str] = {}
    for phase, start, end in spans:
        label = words(phase) if legend and phase not in colors else None
        color = colors.setdefault(phase, PHASE_COLORS[len(colors) % len(PHASE_COLORS)])
        ax.axvspan(start / 60.0, end / 60.0, color=color, alpha=0.6, linewidth=0, label=label, zorder=0)
    seen: set[str] = set()
    for e in events:
        color, style = EVENT_STYLES.get(e.kind, ("#bbbbbb", "-."))
        label = words(e.kind) if legend and e.kind not in seen else None
        seen.add(e.kind)
        ax.axvline(e.t_s / 60.0, color=color, linestyle=style, linewidth=1.2, label=label, zorder=1)


def words(name: str) -> str:
    """A phase or event kind as a reader names it (``take_up`` is "take-up")."""
    return WORDS.get(name, name.replace("_", " "))


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _timeline(
    actions: Sequence[Mapping[str, Any]],
    observations: Sequence[Mapping[str, Any]],
    medications: Sequence[Mapping[str, Any]],
) -> list[tuple[float, str, str, bool]]:
    """Every action, observation and medication as (time s, label naming the actor and the reason,
    colour, carried out)."""
    marks: list[tuple[float, str, str, bool]] = []
    for a in actions:
        t = _seconds(a, _TIME_KEYS)
        recorded = a.get("action") in {"record_observation", "give_medication"} and a.get("accepted", True)
        if t is None or (recorded and (observations or medications)):
            continue  # listed below with what was seen or given
        reason = f": {a['reason']}" if a.get("reason") else ""
        refused = "" if a.get("accepted", True) else f" — refused ({a.get('why', '')})"
        label = f"{a.get('action')} by {a.get('by', a.get('actor', '?'))}{reason}{refused}"
        color = ACTOR_COLORS.get(str(a.get("actor")), "#555555")
        marks.append((t, label, color, bool(a.get("accepted", True))))
    for o in observations:
        t = _seconds(o, _TIME_KEYS)
        if t is not None:
            value = "" if o.get("value") is None else f" {_text(o.get('value'))}"
            marks.append((t, f"{o.get('kind')}{value} by {o.get('by', '?')}", ACTOR_COLORS["operator"], True))
    for m in medications:
        t = _seconds(m, _TIME_KEYS)
        if t is not None:
            given = f"{m.get('drug')} {_text(m.get('dose'))} {m.get('unit')} {m.get('route')}"
            marks.append((t, f"{given} by {m.get('by', '?')}", ACTOR_COLORS["operator"], True))
    return sorted(marks, key=lambda mark: mark[0])


def _figure_with_timeline(marks: Sequence[tuple[float, str, str, bool]]) -> tuple[Figure, Axes]:
    """A plot, and below it (when there are actions) the numbered list of what was done, by whom and
    why; each number marks its moment on the plot's time axis."""
    if not marks:
        fig, (ax,) = _figure()
        return fig, ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (see the module docstring)
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = math.ceil(len(marks) / 2)
    fig = Figure(figsize=(10, 4.5 + 0.16 * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax, notes = fig.subplots(2, 1, height_ratios=[4.5, 0.16 * rows + 0.1])
    notes.axis("off")
    for n, (t, label, color, accepted) in enumerate(marks, start=1):
        x = t / 60.0
        ax.axvline(x, color=color, linestyle="-" if accepted else ":", linewidth=1.0, zorder=2)
        ax.annotate(str(n), xy=(x, 1.0), xycoords=("data", "axes fraction"), fontsize=7, color=color,
                    ha="center", va="bottom", xytext=(0, 1), textcoords="offset points")  # fmt: skip
        column, row = divmod(n - 1, rows)
        notes.text(0.5 * column, 1.0 - (row + 0.5) / rows, f"{n}  {_clock(t)}  {label}", fontsize=7,
                   color=color, va="center", ha="left", transform=notes.transAxes, clip_on=True)  # fmt: skip
    return fig, ax


def _spans(t_s: np.ndarray, flags: np.ndarray) -> list[tuple[float, float]]:
    """The runs of consecutive points where ``flags`` holds, as (start s, end s)."""
    spans: list[tuple[float, float]] = []
    start: float | None = None
    for i, flag in enumerate(flags):
        if flag and start is None:
            start = float(t_s[i])
        if start is not None and (not flag or i == len(flags) - 1):
            spans.append((start, float(t_s[i])))
            start = None
    return spans


def write_plots(
    points: Sequence[SeriesPoint],
    events: Sequence[SeriesEvent],
    out_dir: Path,
    *,
    only: Collection[str] | None = None,
    **drawing: Any,
) -> list[Path]:
    """:func:`draw_plots`' figures as PNGs in ``out_dir`` (see :data:`PLOT_FILES`): dose, rate,
    pressure and vitals, in that order; ``only``: those named, the others neither drawn nor rendered
    (so two processes can share the work)."""
    figures = draw_plots(points, events, only=only, **drawing)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_save(figure, out_dir / PLOT_FILES[name]) for name, figure in figures.items()]


class _Frame(NamedTuple):
    """What the four figures share: the series, its events and the time axis with its marks."""

    points: Sequence[SeriesPoint]
    events: Sequence[SeriesEvent]
    t_min: np.ndarray
    spans: list[tuple[str, float, float]]
    marks: list[tuple[float, str, str, bool]]
    after_end: list[PlannedPoint]


def draw_plots(
    points: Sequence[SeriesPoint],
    events: Sequence[SeriesEvent],
    *,
    only: Collection[str] | None = None,
    thresholds: VitalsThresholds | None = None,
    actions: Sequence[Mapping[str, Any]] = (),
    observations: Sequence[Mapping[str, Any]] = (),
    medications: Sequence[Mapping[str, Any]] = (),
    planned: Sequence[PlannedPoint] = (),
    baseline: Mapping[str, float] | None = None,
    band_pct: float | None = None,
) -> dict[str, Figure]:
    """The four figures, by :data:`PLOT_FILES`' names: dose, rate, pressure and vitals; ``only``: those
    named.

    ``thresholds`` are the vital-sign limits drawn (the shipped defaults if not given), each labelled at
    its right end. ``actions``, ``observations`` and ``medications`` (records with a time, as in the
    session's summary) are marked on the time axis of the dose and rate plots with their actor and
    reason; the rate plot marks the target rate and labels the take-up, shades the spans the infusion
    ran slowed and hatches those it was held. ``planned`` is the plan's whole schedule on the session's
    clock (:class:`PlannedPoint`): where the infusion ended before it, the plan continues dashed as
    "planned, not given". ``baseline`` (by channel, ``sbp`` or ``sbp_mmhg``) and ``band_pct`` draw the
    band around the baseline that ends the observation, over the observation. Legends sit beside the
    plots, never over them.
    """
    unknown = sorted(set(only or ()) - PLOT_FILES.keys())
    if unknown:
        names = ", ".join(PLOT_FILES)
        raise ConfigurationError("only", f"names no plot: {', '.join(unknown)} (the plots: {names})")
    if not points:
        raise ConfigurationError("points", "is empty: there is nothing to plot")
    frame = _Frame(
        points,
        events,
        _column(points, "t_s") / 60.0,
        phase_spans(points),
        _timeline(actions, observations, medications),
        _after_infusion(points, planned),
    )
    drawers: dict[str, Callable[[], Figure]] = {
        "dose": lambda: _dose_figure(frame),
        "rate": lambda: _rate_figure(frame, planned),
        "pressure": lambda: _pressure_figure(frame),
        "vitals": lambda: _vitals_figure(frame, thresholds or vitals_thresholds(), baseline, band_pct),
    }
    return {name: draw() for name, draw in drawers.items() if only is None or name in only}


def _dose_figure(frame: _Frame) -> Figure:
    points, events, t_min, spans, marks, after_end = frame
    fig, ax = _figure_with_timeline(marks)
    _decorate(ax, spans, events, legend=True)
    ax.plot(t_min, _column(points, "delivered_mg"), color=COLORS["delivered"], linewidth=3, label="delivered")
    ax.plot(t_min, _column(points, "programmed_mg"), color=COLORS["programmed"], linestyle="--",
            linewidth=1.5, label="programmed (plan)")  # fmt: skip
    if after_end:
        ax.plot([p.t_s / 60.0 for p in after_end], [p.cumulative_mg for p in after_end],
                color=COLORS["programmed"], linestyle=":", linewidth=2, label=NOT_GIVEN)  # fmt: skip
    ax.set_ylabel("cumulative dose (mg)")
    ax.set_title("Cumulative dose against the plan")
    _finish(ax)
    return fig


def _rate_figure(frame: _Frame, planned: Sequence[PlannedPoint]) -> Figure:
    points, events, t_min, spans, marks, after_end = frame
    fig, ax = _figure_with_timeline(marks)
    _decorate(ax, spans, events, legend=True)
    t_s = _column(points, "t_s")
    planned_rate, programmed = _column(points, "planned_rate_ml_h"), _column(points, "programmed_rate_ml_h")
    with np.errstate(invalid="ignore"):
        slowed = programmed < planned_rate * (1.0 - 1e-6)
    for n, (start, end) in enumerate(_spans(t_s, slowed)):
        ax.axvspan(start / 60.0, end / 60.0, color=COLORS["slowed"], linewidth=0, zorder=0.5,
                   label="slowed by the operator" if n == 0 else None)  # fmt: skip
    held = np.array([bool(p.held_by) for p in points])
    for n, (start, end) in enumerate(_spans(t_s, held)):
        ax.axvspan(start / 60.0, end / 60.0, facecolor="none", edgecolor="#555555", hatch="//",
                   linewidth=0, zorder=0.6, label="held (paused)" if n == 0 else None)  # fmt: skip
    if not np.all(np.isnan(planned_rate)):
        ax.plot(t_min, planned_rate, color=COLORS["planned_rate"], linestyle="--", linewidth=1.2,
                drawstyle="steps-post", label="plan")  # fmt: skip
    if after_end:  # over the target line it often lies on
        ax.plot([p.t_s / 60.0 for p in after_end], [p.rate_ml_h for p in after_end],
                color=COLORS["programmed"], linestyle=":", linewidth=2.5, drawstyle="steps-post",
                zorder=3, label=NOT_GIVEN)  # fmt: skip
    target = target_rate_ml_h(points, planned)
    if target is not None:
        ax.axhline(target, color=COLORS["target"], linestyle="-.", linewidth=1.2, zorder=1.5)
        _label_line(ax, target, f"target {target:.2f} mL/h", COLORS["target"])
    ax.plot(t_min, _column(points, "commanded_rate_ml_h"), color=COLORS["commanded"], linewidth=2,
            drawstyle="steps-post", label="commanded")  # fmt: skip
    ax.plot(t_min, _column(points, "measured_rate_ml_h"), color=COLORS["measured"], linewidth=1.5,
            label="measured")  # fmt: skip
    take_up = take_up_peak(points)
    if take_up is not None:
        at_s, rate = take_up
        ax.annotate(f"take-up: plunger slack closed at {rate:.0f} mL/h (not an overshoot)",
                    xy=(at_s / 60.0, rate), xytext=(12, -4), textcoords="offset points", ha="left",
                    va="top", fontsize="small", color=COLORS["commanded"],
                    arrowprops={"arrowstyle": "->", "color": COLORS["commanded"]})  # fmt: skip
    ax.set_ylabel("rate (mL/h)")
    ax.set_title("Commanded and measured rate against the plan")
    _finish(ax)
    return fig


def _pressure_figure(frame: _Frame) -> Figure:
    points, events, t_min, spans, _, _ = frame
    fig, (ax,) = _figure()
    _decorate(ax, spans, events, legend=True)
    ax.plot(t_min, _column(points, "pressure_mmhg"), color=COLORS["pressure"], linewidth=1.5,
            label="line pressure")  # fmt: skip
    ax.plot(t_min, _column(points, "threshold_mmhg"), color=COLORS["threshold"], linestyle="--",
            linewidth=2, drawstyle="steps-post", label="occlusion alarm threshold")  # fmt: skip
    ax.set_ylabel("pressure (mmHg)")
    ax.set_title("Line pressure and the occlusion alarm threshold")
    _finish(ax)
    return fig


def _vitals_figure(
    frame: _Frame, limits: VitalsThresholds, baseline: Mapping[str, float] | None, band_pct: float | None
) -> Figure:
    points, events, t_min, spans, _, _ = frame
    panels: list[tuple[tuple[Channel, ...], str]] = [
        (("sbp", "dbp"), "mmHg"),
        (("hr",), "bpm"),
        (("spo2",), "%"),
    ]
    # The capnograph's channels, when the session had them.
    capnograph: tuple[tuple[Channel, str], ...] = (("rr", "/min"), ("etco2", "mmHg"))
    panels += [
        ((channel,), unit) for channel, unit in capnograph if not np.all(np.isnan(_column(points, channel)))
    ]
    observation = [(start, end) for phase, start, end in spans if phase == "observation"]
    bands = observation_band(baseline, band_pct)
    fig, axes = _figure(rows=len(panels), height_in=8.0 + 2.0 * (len(panels) - 3))
    for i, (ax, (channels, unit)) in enumerate(zip(axes, panels, strict=True)):
        _decorate(ax, spans, events, legend=i == 0)
        drawn: list[float] = []
        for channel in channels:
            values = _column(points, channel)
            have = ~np.isnan(values)
            sparse = np.count_nonzero(have) < 0.2 * len(values)
            # A sparse channel (the cuff) is drawn through its readings; a continuous one keeps its gaps.
            x, y = (t_min[have], values[have]) if sparse else (t_min, values)
            ax.plot(x, y, color=COLORS[channel], linewidth=1.5, marker="o" if sparse else None,
                    markersize=4, label=LABELS[channel])  # fmt: skip
            drawn += [float(v) for v in values[have]]
            if channel in bands:
                low, high = bands[channel]
                for n, (start, end) in enumerate(observation):
                    ax.fill_between([start / 60.0, end / 60.0], low, high, color=COLORS[channel], alpha=0.12,
                                    linewidth=0, zorder=0.8, label=f"{LABELS[channel]} {band_words(band_pct)}"
                                    if n == 0 else None)  # fmt: skip
                drawn += [low, high]
            # Limits are labelled at their right end (not in the legend), each channel in its own style.
            for limit, sign in zip(limits.limits(channel), ("<", "≥"), strict=True):
                if limit is not None:
                    ax.axhline(limit, color=COLORS[channel], linestyle=LIMIT_STYLES.get(channel, "--"),
                               linewidth=1.2)  # fmt: skip
                    _label_line(ax, limit, f"{LABELS[channel]} {sign} {limit:g}", COLORS[channel])
                    drawn.append(limit)
        if drawn:  # every limit and band inside the axes, with room for its label
            low, high = min(drawn), max(drawn)
            margin = 0.08 * (high - low or 1.0)
            ax.set_ylim(low - margin, high + margin)
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        _legend(ax, fontsize="x-small")
    axes[0].set_title("Vital signs and their alarm limits")
    axes[-1].set_xlabel("time (min)")
    return fig


@dataclass(frozen=True, slots=True)
class PlannedPoint:
    """The plan at one instant of its schedule, on the session's clock: what it has given by then and
    its rate."""

    t_s: float
    cumulative_mg: float
    rate_ml_h: float


#: The legend's words for the plan after the infusion ended early.
NOT_GIVEN = "planned, not given (the infusion ended early)"
#: Alarm-limit line styles by channel: SBP and DBP share a panel, so their limits differ in style too.
LIMIT_STYLES: dict[str, str] = {"sbp": "--", "dbp": ":"}


def _after_infusion(points: Sequence[SeriesPoint], planned: Sequence[PlannedPoint]) -> list[PlannedPoint]:
    """The plan's schedule from where the infusion ended to the plan's end, when the infusion ended
    before the plan did (an alarm, a stop): empty otherwise."""
    infusing = [p.t_s for p in points if p.phase in INFUSING_PHASES]
    if not infusing or not planned:
        return []
    ended_s = infusing[-1]
    rest = [p for p in planned if p.t_s > ended_s]
    if not rest:
        return []
    before = [p for p in planned if p.t_s <= ended_s]
    return ([before[-1]] if before else []) + rest


def target_rate_ml_h(points: Sequence[SeriesPoint], planned: Sequence[PlannedPoint] = ()) -> float | None:
    """The plan's target rate (its highest scheduled rate, mL/h), from the schedule or the series."""
    rates = [p.rate_ml_h for p in planned] or [p.planned_rate_ml_h for p in points]
    finite = [r for r in rates if math.isfinite(r) and r > 0]
    return max(finite) if finite else None


def take_up_peak(points: Sequence[SeriesPoint]) -> tuple[float, float] | None:
    """When the take-up's commanded rate peaked, and that rate: ``(t_s, mL/h)`` (``None``: no take-up)."""
    take_up = [p for p in points if p.phase == "take_up" and p.commanded_rate_ml_h > 0]
    if not take_up:
        return None
    peak = max(take_up, key=lambda p: p.commanded_rate_ml_h)
    return peak.t_s, peak.commanded_rate_ml_h


def observation_band(
    baseline: Mapping[str, float] | None, band_pct: float | None
) -> dict[str, tuple[float, float]]:
    """Each channel's band around its baseline that ends the observation: ``(low, high)`` (SpO₂ never
    above 100 %)."""
    if not baseline or band_pct is None or not math.isfinite(band_pct):
        return {}
    bands = {}
    for key, value in baseline.items():
        number = _number(value)
        if number is not None and math.isfinite(number):
            channel = str(key).split("_")[0]
            high = number * (1.0 + band_pct / 100.0)
            bands[channel] = (
                number * (1.0 - band_pct / 100.0),
                min(high, 100.0) if channel == "spo2" else high,
            )
    return bands


def band_words(band_pct: float | None) -> str:
    return f"±{band_pct:g} % of baseline (ends the observation)"


def _label_line(ax: Axes, y: float, text: str, color: str) -> None:
    """A horizontal line's label at its right end, just above it, inside the axes."""
    ax.annotate(text, xy=(1.0, y), xycoords=("axes fraction", "data"), xytext=(-4, 2),
                textcoords="offset points", ha="right", va="bottom", fontsize="x-small", color=color,
                gid="limit-label")  # fmt: skip


def _legend(ax: Axes, fontsize: str) -> None:
    """The legend beside the plot (right of the axes), so it never hides a line or a limit."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=fontsize,
              framealpha=0.8)  # fmt: skip


def _finish(ax: Axes) -> None:
    ax.set_xlabel("time (min)")
    ax.grid(True, alpha=0.3)
    _legend(ax, fontsize="small")


# ----- the report --------------------------------------------------------------------------------

Block = tuple[str, Any]


def _clock(t_s: float | None) -> str:
    """Session time as ``h:mm:ss`` (``—`` when unknown)."""
    if t_s is None or not math.isfinite(t_s):
        return "—"
    sign, t = ("-" if t_s < 0 else ""), round(abs(t_s))
    return f"{sign}{t // 3600}:{t // 60 % 60:02d}:{t % 60:02d}"


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "; ".join(_text(v) for v in value)
    return str(value)


def _amount(mg: Any, ml: Any) -> str:
    parts = []
    if isinstance(mg, int | float):
        parts.append(f"{mg:.2f} mg")
    if isinstance(ml, int | float):
        parts.append(f"{ml:.2f} mL")
    return " / ".join(parts) or "—"


#: Keys that give a row's session time, in seconds or minutes.
_TIME_KEYS = {"t_s": 1.0, "t_min": 60.0, "start_s": 1.0, "start_min": 60.0}
_END_KEYS = {"end_s": 1.0, "end_min": 60.0, "resumed_s": 1.0, "resumed_min": 60.0}


def _seconds(row: Mapping[str, Any], keys: Mapping[str, float]) -> float | None:
    for key, scale in keys.items():
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value) * scale
    return None


def _record_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """A table of records: their time first, then every other key (in first-seen order); an end time
    (``resumed_s``, ``end_min`` …) is shown as a session time too."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in _TIME_KEYS and k not in columns]

    def cell(row: Mapping[str, Any], key: str) -> str:
        if key in _END_KEYS:
            return _clock(_seconds(row, {key: _END_KEYS[key]}))
        return _text(row.get(key))

    header = ["time", *(c.rsplit("_", 1)[0] if c in _END_KEYS else c for c in columns)]
    return header, [[_clock(_seconds(r, _TIME_KEYS)), *(cell(r, c) for c in columns)] for r in rows]


def _events_table(events: Sequence[SeriesEvent], kinds: set[str]) -> tuple[list[str], list[list[str]]]:
    return ["time", "event", "detail"], [
        [_clock(e.t_s), e.kind, e.detail or "—"] for e in events if e.kind in kinds
    ]


def _pauses_from_events(events: Sequence[SeriesEvent]) -> tuple[list[str], list[list[str]]]:
    rows: list[list[str]] = []
    open_row: list[str] | None = None
    for e in sorted(events, key=lambda e: e.t_s):
        if e.kind in _PAUSE_KINDS and open_row is None:
            open_row = [_clock(e.t_s), "not resumed", e.detail or "—"]
            rows.append(open_row)
        elif e.kind in _RESUME_KINDS and open_row is not None:
            open_row[1] = _clock(e.t_s)
            open_row = None
    return ["paused", "resumed", "reason"], rows


def _phases(summary: Mapping[str, Any], points: Sequence[SeriesPoint]) -> list[list[str]]:
    given = summary.get("phases")
    if not given:
        return [[name, _clock(start), _clock(end)] for name, start, end in phase_spans(points)]
    last = points[-1].t_s if points else None
    rows = []
    for i, phase in enumerate(given):
        start = _seconds(phase, _TIME_KEYS)
        end = _seconds(phase, _END_KEYS)
        if end is None:
            end = _seconds(given[i + 1], _TIME_KEYS) if i + 1 < len(given) else last
        if start is not None and end is not None:
            end = max(start, end)
        rows.append([_text(phase.get("name", phase.get("phase"))), _clock(start), _clock(end)])
    outcome = summary.get("outcome")
    if rows and rows[-1][0] == "complete" and outcome not in (None, "complete"):
        rows[-1][0] = f"ended ({outcome_words(outcome)})"  # the session's end, not a complete dose
    return rows


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


#: What a signed record names beside the numbers (``ketapump.clinical.runner.record_fields``), with the
#: label a clinician reads.
_RECORD_LABELS = {
    "clock": "Clock",
    "pump": "Pump",
    "syringe": "Syringe",
    "concentration": "Concentration",
    "rate": "Rate",
    "protocol_sha256": "Protocol file SHA-256",
    "software": "Software",
    "sitter": "Sitter",
}

#: How a session ended, in words (the outcome codes of the course history and the session's result).
_OUTCOME_WORDS = {
    "refused": "refused before anything was given",
    "aborted": "aborted in the pre-check: nothing was given",
    "failed": "failed: see the audit log",
    "ended_unfinished": "ended by hand after a crash left it open",
}


#: Vital signs by their keys in a summary (``sbp_mmhg``) and in a series point (``sbp``): label and unit.
_VITALS_WORDS = {
    "sbp": ("SBP", "mmHg"),
    "dbp": ("DBP", "mmHg"),
    "hr": ("HR", "/min"),
    "spo2": ("SpO₂", "%"),
    "rr": ("RR", "/min"),
    "etco2": ("EtCO₂", "mmHg"),
}


def _vitals_words(vitals: Mapping[str, Any]) -> str:
    """``SBP 123 mmHg, DBP 78 mmHg, HR 71 /min, SpO₂ 98 %``; an unknown channel keeps its name."""
    parts = []
    for key, value in vitals.items():
        label, unit = _VITALS_WORDS.get(str(key).split("_")[0], (str(key), ""))
        number = _number(value)
        shown = "—" if number is None or math.isnan(number) else f"{number:.0f}"
        parts.append(f"{label} {shown} {unit}".rstrip())
    return ", ".join(parts) if parts else "—"


def _last_vitals(points: Sequence[SeriesPoint]) -> dict[str, float]:
    """Each channel's last reading of the session (the vitals at discharge)."""
    last: dict[str, float] = {}
    for point in points:
        for channel in ("sbp", "dbp", "hr", "spo2"):
            value = getattr(point, channel)
            if not math.isnan(value):
                last[channel] = value
    return last


def outcome_words(outcome: Any) -> str:
    """A session's outcome as a clinician reads it: ``ended_pump_alarm`` is "ended early: pump alarm"."""
    if not isinstance(outcome, str):
        return _text(outcome)
    if outcome in _OUTCOME_WORDS:
        return _OUTCOME_WORDS[outcome]
    if outcome.startswith("ended_"):
        return "ended early: " + outcome.removeprefix("ended_").replace("_", " ")
    return outcome.replace("_", " ")


def _summary_rows(summary: Mapping[str, Any], points: Sequence[SeriesPoint]) -> list[list[str]]:
    given_plan = summary.get("plan")
    plan: Mapping[str, Any] = given_plan if isinstance(given_plan, Mapping) else {}
    programmed_mg = _number(summary.get("programmed_mg", plan.get("dose_mg")))
    delivered_mg = _number(summary.get("delivered_mg"))
    if delivered_mg is None and points:
        delivered_mg = points[-1].delivered_mg
    share = ""
    if programmed_mg and delivered_mg is not None:
        share = f" ({100.0 * (delivered_mg - programmed_mg) / programmed_mg:+.2f} % of programmed)"
    duration = _number(summary.get("duration_s"))
    if duration is None and points:
        duration = points[-1].t_s - points[0].t_s
    protocol = summary.get("protocol")
    if protocol is None and plan:
        parts = [
            f"{prefix}{_text(plan[key])}{unit}"
            for key, prefix, unit in (
                ("protocol", "", ""),
                ("drug", "", ""),
                ("dose_mg_per_kg", "", " mg/kg"),
                ("weight_kg", "at ", " kg"),
                ("duration_min", "over ", " min"),
                ("concentration_mg_per_ml", "at ", " mg/mL"),
            )
            if key in plan
        ]
        protocol = ", ".join(parts)
    rows = [
        ["Session", _text(summary.get("session_id"))],
        ["Patient", _text(summary.get("patient"))],
        ["Protocol", _text(protocol)],
        ["Programmed", _amount(programmed_mg, summary.get("programmed_ml", plan.get("volume_ml")))],
        ["Delivered", _amount(delivered_mg, summary.get("delivered_ml")) + share],
        *(
            [label, _text(summary[key])]
            for label, key in (("Started", "started_at"), ("Ended", "ended_at"))
            if key in summary
        ),
        ["Duration", _clock(duration)],
        ["Outcome", outcome_words(summary.get("outcome"))],
    ]
    if "operator" in summary:
        rows.insert(2, ["Operator", _text(summary["operator"] or "(anonymous QA run)")])
    rows += [[label, _text(summary[key])] for key, label in _RECORD_LABELS.items() if key in summary]
    if "baseline" in summary:
        baseline = summary["baseline"]
        rows.append(["Baseline vitals", _vitals_words(baseline) if isinstance(baseline, Mapping) else "—"])
    discharge = _last_vitals(points)
    if discharge:
        rows.append(["Vitals at discharge", _vitals_words(discharge)])
    if "observation_min" in summary:
        rows.append(["Observation", f"{_text(summary['observation_min'])} min"])
    if "discharge_confirmed" in summary:
        confirmed = summary["discharge_confirmed"]
        rows.append(["Discharge", "confirmed" if confirmed else "not confirmed (see the alarms)"])
    return rows


def _audit_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    audit = summary.get("audit_log")
    if not isinstance(audit, Mapping):
        audit = {
            "path": audit if audit is not None else summary.get("log"),
            "verified": summary.get("log_verified"),
        }
    verified = audit.get("verified")
    verdict = "not verified" if verified is None else "verified" if verified else "FAILED verification"
    rows = [["Path", _text(audit.get("path"))], ["Verification", verdict]]
    if audit.get("detail"):
        rows.append(["Detail", _text(audit.get("detail"))])
    return rows


#: Summary keys the report places itself; any other is listed under "Other".
_KNOWN_KEYS = {
    "title", "session_id", "patient", "protocol", "plan", "programmed_mg", "delivered_mg", "programmed_ml",
    "delivered_ml", "error_pct", "started_at", "ended_at", "duration_s", "outcome", "baseline",
    "observation_min", "notes", "phases", "alarms", "pauses", "confirmations", "audit_log", "log",
    "log_verified", "operator", "actions", "observations", "medications", "syringe_changes",
    "discharge_confirmed", *_RECORD_LABELS,
}  # fmt: skip


def _blocks(
    summary: Mapping[str, Any],
    points: Sequence[SeriesPoint],
    events: Sequence[SeriesEvent],
    plots: Sequence[Path],
    series_csv: Path,
) -> list[Block]:
    """The report's content, independent of its format."""
    blocks: list[Block] = [
        ("h1", _text(summary.get("title", "Ketamine infusion session report"))),
        ("note", DISCLAIMER),
        ("h2", "Summary"),
        ("table", (["", ""], _summary_rows(summary, points))),
    ]
    if summary.get("notes"):
        blocks += [("h2", "Notes"), ("list", [_text(n) for n in summary["notes"]])]
    blocks += [("h2", "Phases"), ("table", (["phase", "start", "end"], _phases(summary, points)))]
    sections = (
        ("Alarms", "alarms", _ALARM_KINDS),
        ("Pauses", "pauses", None),
        ("Confirmations", "confirmations", {"confirmation"}),
    )
    for title, key, kinds in sections:
        if key in summary:
            table = _record_table(summary[key])
        elif kinds is None:
            table = _pauses_from_events(events)
        else:
            table = _events_table(events, kinds)
        blocks += [("h2", title), ("table", table)]
    # Who did what, when and why: every action on the infusion, and what was seen and given.
    for title, key in (
        ("Actions", "actions"),
        ("Observations", "observations"),
        ("Medications", "medications"),
    ):
        if key in summary:
            blocks += [("h2", title), ("table", _record_table(summary[key]))]
    if summary.get("syringe_changes"):  # a dose of several syringes: each change, who confirmed it
        blocks += [("h2", "Syringe changes"), ("table", _record_table(summary["syringe_changes"]))]
    blocks += [("h2", "Audit log"), ("table", (["", ""], _audit_rows(summary)))]
    other = [[str(k), _text(v)] for k, v in summary.items() if k not in _KNOWN_KEYS]
    if other:
        blocks += [("h2", "Other"), ("table", (["", ""], other))]
    titles = ["Cumulative dose", "Commanded and measured rate", "Line pressure", "Vital signs"]
    blocks.append(("h2", "Plots"))
    blocks += [
        ("img", (title, Path(os.path.relpath(path, series_csv.parent)), path))
        for title, path in zip(titles, plots, strict=True)
    ]
    blocks += [
        ("h2", "Data"),
        ("p", f"The data behind the plots: {series_csv.name} ({len(points)} points, {len(events)} events)."),
    ]
    return blocks


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for kind, body in blocks:
        if kind == "h1":
            lines += [f"# {body}", ""]
        elif kind == "h2":
            lines += [f"## {body}", ""]
        elif kind == "note":
            lines += [f"> {body}", ""]
        elif kind == "p":
            lines += [body, ""]
        elif kind == "list":
            lines += [f"- {_md_cell(item)}" for item in body] + [""]
        elif kind == "table":
            header, rows = body
            if not rows:
                lines += ["None.", ""]
                continue
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            title, relative, _ = body
            lines += [f"![{title}]({relative.as_posix()})", ""]
    return "\n".join(lines)


def _html(blocks: list[Block]) -> str:
    e = html.escape
    title = next((body for kind, body in blocks if kind == "h1"), "Session report")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1040px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        ".note{background:#fff4d6;padding:6px}img{max-width:100%}</style>",
        "</head><body>",
    ]
    for kind, body in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{e(body)}</{kind}>")
        elif kind == "note":
            parts.append(f'<p class="note">{e(body)}</p>')
        elif kind == "p":
            parts.append(f"<p>{e(body)}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in body) + "</ul>")
        elif kind == "table":
            header, rows = body
            if not rows:
                parts.append("<p>None.</p>")
                continue
            head = "".join(f"<th>{e(h)}</th>" for h in header) if any(header) else ""
            parts.append("<table>" + (f"<tr>{head}</tr>" if head else ""))
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        elif kind == "img":
            title, _, path = body
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{e(title)}" src="data:image/png;base64,{data}"></figure>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


#: A PDF page (A4, portrait) and the report's text on it: monospaced, so its tables keep their columns.
PDF_PAGE_IN = (8.27, 11.69)
_PDF_LINES_PER_PAGE = 64
_PDF_COLUMNS = 118


def _pdf_lines(blocks: list[Block]) -> list[tuple[str, str]]:
    """The report's text as ``(style, line)``, wrapped to the page (the plots go on pages of their own)."""
    lines: list[tuple[str, str]] = []
    for kind, body in blocks:
        if kind == "img":
            continue
        style = kind if kind in ("h1", "h2") else "text"
        text = _markdown([(kind, body)]).rstrip("\n")
        for line in text.splitlines() or [""]:
            wrapped = textwrap.wrap(line, _PDF_COLUMNS, subsequent_indent="    ") or [""]
            lines += [(style, part) for part in wrapped]
        lines.append(("text", ""))
    return lines


def _pdf(blocks: list[Block], summary: Mapping[str, Any], path: Path) -> None:
    """The report as a PDF: its text pages, then one page per plot (the PNGs the Markdown report links).
    matplotlib writes it with the fonts it ships (DejaVu): no system font is needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (loaded only when drawn)
    from matplotlib.backends.backend_pdf import PdfPages  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.image import imread  # noqa: PLC0415

    title = next((str(body) for kind, body in blocks if kind == "h1"), "Session report")
    metadata = {
        "Title": f"{title}: patient {_text(summary.get('patient'))}, "
        f"session {_text(summary.get('session_id'))}",
        "Creator": "ketapump",
        "CreationDate": None,
    }
    lines = _pdf_lines(blocks)
    sizes = {"h1": 13.0, "h2": 10.0, "text": 6.8}
    with PdfPages(path, metadata=metadata) as pdf:
        for start in range(0, len(lines), _PDF_LINES_PER_PAGE):
            fig = Figure(figsize=PDF_PAGE_IN)
            FigureCanvasAgg(fig)
            for row, (style, line) in enumerate(lines[start : start + _PDF_LINES_PER_PAGE]):
                weight = "normal" if style == "text" else "bold"
                y = 0.96 - row * (0.92 / _PDF_LINES_PER_PAGE)
                fig.text(
                    0.06, y, line, family="DejaVu Sans Mono", fontsize=sizes[style], weight=weight, va="top"
                )
            pdf.savefig(fig)
        for kind, body in blocks:
            if kind != "img":
                continue
            caption, _, image = body
            fig = Figure(figsize=PDF_PAGE_IN)
            FigureCanvasAgg(fig)
            ax = fig.add_axes((0.04, 0.2, 0.92, 0.72))
            ax.imshow(imread(image), interpolation="none")  # the PNG's own pixels, not resampled
            ax.set_axis_off()
            ax.set_title(caption, fontsize=11)
            pdf.savefig(fig)


def write_report(
    summary: Mapping[str, Any],
    points: Sequence[SeriesPoint],
    events: Sequence[SeriesEvent],
    out_dir: Path,
    *,
    fmt: Literal["md", "html", "pdf"] = "md",
    thresholds: VitalsThresholds | None = None,
    plots: Sequence[Path] | None = None,
) -> Path:
    """Writes the report (``report.md`` with the plots beside it, one self-contained ``report.html``, or
    ``report.pdf``: the same text, then a page per plot) and ``series.csv`` into ``out_dir``; returns the
    report's path. The plots are drawn unless ``plots``
    passes those :func:`write_plots` already wrote.

    ``summary`` keys, all optional (a missing value shows as ``—``; a missing list is taken from
    ``events``):

    - ``title``, ``session_id``, ``patient``, ``protocol`` (text or a mapping), ``plan`` (a mapping:
      ``protocol``, ``drug``, ``dose_mg``, ``volume_ml``, … fill what is not given), ``outcome``;
    - ``programmed_mg``, ``programmed_ml``, ``delivered_mg``, ``delivered_ml``, ``duration_s``,
      ``started_at``, ``ended_at`` (wall-clock text), ``baseline``, ``observation_min``, ``notes``;
    - ``phases``: records with ``name`` or ``phase``, a start (``start_s`` or ``start_min``) and
      optionally an end (``end_s``/``end_min``; else the next phase's start);
    - ``alarms``, ``pauses``, ``confirmations``, ``actions``, ``observations``, ``medications``:
      records with a time (``t_s`` or ``t_min``) and any other fields (``detail``, ``reason``, ``by``,
      ``resumed_min`` …), each shown as a column; ``operator``;
    - ``audit_log`` (``path``, ``verified``, ``detail``), or ``log`` and ``log_verified``.

    Any other key is listed under "Other".
    """
    if fmt not in ("md", "html", "pdf"):
        raise ConfigurationError("fmt", f"must be 'md', 'html' or 'pdf', not {fmt!r}")
    if plots is None:
        plots = write_plots(
            points, events, out_dir, thresholds=thresholds, actions=summary.get("actions", ()),
            observations=summary.get("observations", ()), medications=summary.get("medications", ()),
        )  # fmt: skip
    if len(plots) != len(PLOT_FILES):
        raise ConfigurationError("plots", f"must be the {len(PLOT_FILES)} plots of write_plots")
    out_dir.mkdir(parents=True, exist_ok=True)
    series_csv = write_series_csv(points, out_dir / "series.csv")
    blocks = _blocks(summary, points, events, plots, series_csv)
    path = out_dir / f"report.{fmt}"
    if fmt == "pdf":
        _pdf(blocks, summary, path)
    else:
        path.write_text(_markdown(blocks) if fmt == "md" else _html(blocks), encoding="utf-8")
    return path
