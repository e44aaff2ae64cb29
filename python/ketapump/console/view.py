"""What a chair shows: the session engine's events reduced to one state, the same for the browser's card,
the terminal's card and the API's ``GET /api/chairs/{id}``.

:class:`ChairView` is fed every event of the chair's current session (:meth:`ChairView.apply`, on the
session's event loop) and answers a JSON-ready :meth:`~ChairView.snapshot` at any time, the series
behind the detail page's plots and the recent event log. It holds no clinical logic: every number comes
from an event or from the session's plan, except the predicted plasma concentration, which it feeds to
the clinical layer's model (:class:`ketapump.clinical.PlasmaEstimator`) and labels as a model estimate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ketapump.clinical import (
    ActionTaken,
    AlarmRaised,
    BaselineRecorded,
    FindingReported,
    PhaseChanged,
    PlasmaEstimator,
    QuestionAnswered,
    QuestionAsked,
    SessionEnded,
    SessionEvent,
    SessionRunner,
    Tick,
    VitalsRead,
    pk_model,
    vitals,
)

#: Seconds of session time between two points of a chair's plotted series.
SERIES_EVERY_S = 5.0
#: How many events the chair's log keeps (the audit log keeps them all).
LOG_SIZE = 300
#: A vital's trend compares its newest reading with the one at least this long before (session s).
TREND_SPAN_S = 60.0
#: Readings closer than this fraction of the value show as steady.
TREND_STEADY = 0.02


def _finite(value: float | None) -> float | None:
    """A number for JSON: ``None`` for NaN, infinities and no value."""
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class SessionInfo:
    """What a chair shows of its session that no event carries: who, what, the plan and the limits."""

    session_id: str
    patient: dict[str, Any]
    protocol: str
    plan: dict[str, Any]
    #: Each watched channel's absolute limits (an alarm below ``low`` or at ``high`` and above; ``None``:
    #: none of that kind): ``{"sbp": {"low": 90, "high": 180, "label": "SBP", "unit": "mmHg"}}``. Once
    #: the baseline is recorded, the card's vitals show the limits in force (some relative to it).
    limits: dict[str, dict[str, Any]]
    observation_min: float
    log: str
    out: str
    pump: str
    started_by: str | None = None
    source: str = "cli"
    #: Who takes the patient home (``name``, ``phone``; ``None``: none recorded, so the discharge will
    #: not be confirmed).
    sitter: dict[str, str] | None = None

    @classmethod
    def of(cls, runner: SessionRunner, *, started_by: str | None = None, source: str = "cli") -> SessionInfo:
        setup, session = runner.setup, runner.session
        thresholds = session.thresholds
        limits: dict[str, dict[str, Any]] = {}
        for channel in thresholds.channels():  # the channels this session watches
            low, high = thresholds.limits(channel)
            limits[channel] = {
                "low": low,
                "high": high,
                "label": vitals.LABELS[channel],
                "unit": vitals.UNITS[channel],
            }
        p = setup.patient
        return cls(
            session_id=setup.session_id,
            patient={"id": p.patient_id, "weight_kg": p.weight_kg, "height_cm": p.height_cm, "sex": p.sex},
            protocol=setup.protocol.name,
            plan=setup.plan.as_dict(),
            limits=limits,
            observation_min=setup.protocol.observation.min_minutes,
            log=str(setup.log_path),
            out=str(setup.out),
            pump=setup.pump_url,
            started_by=started_by,
            source=source,
            sitter=setup.sitter.as_dict() if setup.sitter else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "patient": self.patient,
            "protocol": self.protocol,
            "plan": self.plan,
            "limits": self.limits,
            "observation_min": self.observation_min,
            "log": self.log,
            "out": self.out,
            "pump": self.pump,
            "started_by": self.started_by,
            "source": self.source,
            "sitter": self.sitter,
        }


@dataclass
class _Vital:
    value: float
    t_s: float
    history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=600))


class ChairView:
    """One chair's state, reduced from its session's events (see the module docstring)."""

    def __init__(self, chair_id: str, name: str, pump: str, *, pk: str = "clements") -> None:
        self.chair_id, self.name, self.pump = chair_id, name, pump
        self.pk_model = pk_model(pk)
        self.info: SessionInfo | None = None
        self._reset()

    def _reset(self) -> None:
        self.tick: Tick | None = None
        self.phase: str | None = None
        #: The patient's baseline and the limits it sets (the pre-check's event), once recorded.
        self.baseline: BaselineRecorded | None = None
        self.vitals: dict[str, _Vital] = {}
        self.alarms: list[dict[str, Any]] = []
        self.findings: list[dict[str, Any]] = []
        self.questions: dict[str, dict[str, Any]] = {}
        self.last_action: dict[str, Any] | None = None
        #: The observations and medications recorded at the chair (newest last).
        self.observations: list[dict[str, Any]] = []
        self.medications: list[dict[str, Any]] = []
        self.ended: dict[str, Any] | None = None
        #: What a face adds when the session is over: the runner's summary, or why it failed.
        self.outcome: dict[str, Any] | None = None
        self.error: str | None = None
        self.points: list[dict[str, Any]] = []
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self._next_point_s = 0.0
        self._plasma: PlasmaEstimator | None = None

    # ----- input ------------------------------------------------------------------------------------

    def begin(self, info: SessionInfo) -> None:
        """A new session on this chair: everything shown of the last one is cleared."""
        self._reset()
        self.info = info
        self._plasma = PlasmaEstimator(self.pk_model, float(info.patient["weight_kg"]))

    def apply(self, event: SessionEvent) -> None:
        """Takes one event of the chair's session (the session's subscriber)."""
        if isinstance(event, Tick):
            self._take_tick(event)
            return
        if isinstance(event, VitalsRead):
            self._take_vital(event)
            return
        self.log.append(event.as_dict())
        if isinstance(event, PhaseChanged):
            self.phase = event.phase
        elif isinstance(event, AlarmRaised):
            self.alarms.append(
                {
                    "t_s": event.t_s,
                    "source": event.source,
                    "code": event.code,
                    "detail": event.detail,
                    "acknowledged": False,
                }
            )
        elif isinstance(event, BaselineRecorded):
            self.baseline = event
        elif isinstance(event, FindingReported):
            self.findings.append(
                {"finding": event.finding, "severity": event.severity, "message": event.message}
            )
        elif isinstance(event, QuestionAsked):
            self.questions[event.question_id] = {
                "question_id": event.question_id,
                "question": event.question,
                "subject": event.subject,
                "text": event.text,
            }
        elif isinstance(event, QuestionAnswered):
            self.questions.pop(event.question_id, None)
        elif isinstance(event, ActionTaken):
            self.last_action = event.as_dict()
            if event.accepted:
                self._take_action(event)
        elif isinstance(event, SessionEnded):
            self.ended = event.as_dict()
            self.questions.clear()

    def _take_action(self, event: ActionTaken) -> None:
        """What an action carried out changes on the card: acknowledged alarms, the bedside records."""
        detail, who = (
            dict(event.detail),
            {"t_s": event.t_s, "operator": event.operator, "reason": event.reason},
        )
        if event.action == "acknowledge":
            code = detail.get("alarm")  # none: every alarm so far
            for alarm in self.alarms:
                if code is None or alarm["code"] == code:
                    alarm["acknowledged"] = True
        elif event.action == "record_observation":
            self.observations.append({**who, **detail})
        elif event.action == "give_medication":
            self.medications.append({**who, **detail})

    def _take_tick(self, tick: Tick) -> None:
        self.tick = tick
        self.phase = tick.phase
        for channel, value in tick.vitals.items():
            if channel not in self.vitals:  # the baseline's readings come with the ticks, not as events
                self.vitals[channel] = _Vital(value, tick.t_s)
                self.vitals[channel].history.append((tick.t_s, value))
        cp = self._plasma.advance(tick.t_s, tick.delivered_mg) if self._plasma is not None else math.nan
        if tick.t_s >= self._next_point_s:
            self._next_point_s = tick.t_s + SERIES_EVERY_S
            self.points.append(
                {
                    "t_s": tick.t_s,
                    "phase": tick.phase,
                    "delivered_mg": tick.delivered_mg,
                    "programmed_mg": tick.programmed_mg,
                    "commanded_rate_ml_h": tick.commanded_rate_ml_h,
                    "measured_rate_ml_h": _finite(tick.measured_rate_ml_h),
                    "pressure_mmhg": _finite(tick.pressure_mmhg),
                    "threshold_mmhg": _finite(tick.occlusion_threshold_mmhg),
                    "plasma_ug_ml": _finite(cp),
                    **{ch: _finite(v.value) for ch, v in self.vitals.items()},
                }
            )

    def _take_vital(self, reading: VitalsRead) -> None:
        vital = self.vitals.get(reading.channel)
        if vital is None:
            vital = self.vitals[reading.channel] = _Vital(reading.value, reading.reading_t_s)
        vital.value, vital.t_s = reading.value, reading.reading_t_s
        vital.history.append((reading.reading_t_s, reading.value))

    # ----- output -----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``idle`` (no session yet), ``active`` (a session runs) or ``ended``."""
        if self.info is None:
            return "idle"
        return "ended" if self.ended is not None or self.error is not None else "active"

    def snapshot(self) -> dict[str, Any]:
        """Everything a card shows, as JSON."""
        t = self.tick
        info = self.info
        return {
            "chair": self.chair_id,
            "name": self.name,
            "pump": self.pump,
            "state": self.state,
            "session": info.as_dict() if info is not None else None,
            "phase": self.phase,
            "t_s": t.t_s if t else None,
            "phase_elapsed_s": t.phase_elapsed_s if t else None,
            "remaining_s": self._remaining_s(),
            "pump_state": t.pump_state if t else None,
            "paused_by": list(t.paused_by) if t else [],
            "planned_rate_ml_h": _finite(t.planned_rate_ml_h) if t else None,
            "programmed_rate_ml_h": _finite(t.programmed_rate_ml_h) if t else None,
            "slowed": self._slowed(),
            "vitals_clear_s": t.vitals_clear_s if t else None,
            "delivered_ml": t.delivered_ml if t else 0.0,
            "planned_ml": t.planned_ml if t and t.planned_ml else (info.plan["volume_ml"] if info else None),
            "delivered_mg": t.delivered_mg if t else 0.0,
            "programmed_mg": t.programmed_mg if t else 0.0,
            "dose_mg": info.plan["dose_mg"] if info else None,
            "commanded_rate_ml_h": t.commanded_rate_ml_h if t else None,
            "measured_rate_ml_h": _finite(t.measured_rate_ml_h) if t else None,
            "pressure_mmhg": _finite(t.pressure_mmhg) if t else None,
            "occlusion_threshold_mmhg": _finite(t.occlusion_threshold_mmhg) if t else None,
            "kernel_alarms": list(t.alarms) if t else [],
            "vitals": self._vitals(),
            "alarms": list(self.alarms),
            "findings": list(self.findings),
            "questions": list(self.questions.values()),
            "last_action": self.last_action,
            "observations": list(self.observations),
            "medications": list(self.medications),
            "plasma": self._plasma_estimate(),
            "ended": self.ended,
            "outcome": self.outcome,
            "error": self.error,
        }

    def _slowed(self) -> bool:
        """Whether the operator has the infusion running slower than the plan."""
        t = self.tick
        if t is None or not (math.isfinite(t.planned_rate_ml_h) and math.isfinite(t.programmed_rate_ml_h)):
            return False
        return t.programmed_rate_ml_h < t.planned_rate_ml_h * (1.0 - 1e-6)

    def _remaining_s(self) -> float | None:
        """Of the infusion: the volume left at the commanded rate; of the observation: its minimum."""
        t, info = self.tick, self.info
        if t is None or info is None:
            return None
        if t.pump_state is not None:
            rate = t.commanded_rate_ml_h or float(info.plan["rate_ml_h"])
            left = max(t.planned_ml - t.delivered_ml, 0.0)
            return left / rate * 3600.0 if rate > 0 else None
        if t.phase == "observation":
            return max(info.observation_min * 60.0 - t.phase_elapsed_s, 0.0)
        return None

    def _vitals(self) -> dict[str, dict[str, Any]]:
        """Each vital: its newest value and trend, the alarm limits in force (``low``, ``high``; until
        the baseline is recorded, the absolute ones), and once it is, the baseline, the allowed rise over
        it where the rules set one (``rise_max_pct``; ``high_relative``: that rise is the maximum in
        force) and the observation's band around it (``band_low``–``band_high``, ``within_band``)."""
        out: dict[str, dict[str, Any]] = {}
        limits = self.info.limits if self.info else {}
        base = self.baseline
        for channel in [c for c in vitals.CHANNELS if c in limits or c in self.vitals]:
            vital = self.vitals.get(channel)
            limit = limits.get(channel, {})
            absolute_high = limit.get("high")
            low, high = limit.get("low"), absolute_high
            entry: dict[str, Any] = {
                "label": vitals.LABELS[channel],
                "unit": vitals.UNITS[channel],
                "value": None,
                "t_s": None,
                "trend": None,
                "past_limit": False,
                "baseline": None,
                "rise_max_pct": None,
                "high_relative": False,
                "band_pct": None,
                "band_low": None,
                "band_high": None,
                "within_band": None,
            }
            value = base.baseline.get(channel) if base is not None else None
            if base is not None and value is not None:
                low, high = base.limits.get(channel, (low, high))
                band = base.band_pct / 100.0
                entry |= {
                    "baseline": value,
                    "rise_max_pct": base.rise_max_pct.get(channel),
                    "high_relative": high is not None and high != absolute_high,
                    "band_pct": base.band_pct,
                    "band_low": value * (1.0 - band),
                    "band_high": value * (1.0 + band),
                }
            entry |= {"low": low, "high": high}
            if vital is not None:
                entry |= {"value": vital.value, "t_s": vital.t_s, "trend": _trend(vital)}
                entry["past_limit"] = (low is not None and vital.value < low) or (
                    high is not None and vital.value >= high
                )
                if entry["baseline"] is not None:
                    entry["within_band"] = entry["band_low"] <= vital.value <= entry["band_high"]
            out[channel] = entry
        return out

    def _plasma_estimate(self) -> dict[str, Any]:
        m = self.pk_model
        value = self._plasma.concentration_ug_ml if self._plasma is not None else None
        return {
            "ug_ml": _finite(value),
            "model": m.name,
            "title": m.title,
            "citation": m.citation,
            "label": f"model estimate ({m.title})",
        }


def _trend(vital: _Vital) -> str:
    """``up``, ``down`` or ``steady``: the newest reading against the latest one ``TREND_SPAN_S``
    before it (the previous one when there is none that old)."""
    newest_t, newest = vital.history[-1]
    before = None
    for t, value in reversed(vital.history):
        before = value
        if newest_t - t >= TREND_SPAN_S:
            break
    if before is None or abs(newest - before) <= TREND_STEADY * abs(before):
        return "steady"
    return "up" if newest > before else "down"


__all__ = ["SERIES_EVERY_S", "ChairView", "SessionInfo"]
