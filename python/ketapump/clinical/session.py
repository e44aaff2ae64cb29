"""The clinical session: from a reviewed plan to a complete, recorded session.

::

    plan ──▶ PRECHECK ──▶ TAKE_UP ──▶ INFUSION ──▶ OBSERVATION ──▶ DISCHARGE ──▶ COMPLETE
             │ limits       │ slack      │ ▲            │ ≥ min_minutes and
             │ baseline     │ taken up   │ │ released   │ vitals within band
             │ checklist    ▼            ▼ │            │ (or max_minutes: the clinician decides)
             │           (kernel)      HELD by {operator, vitals, limit} (see ketapump.clinical.holds)
             ▼
          ABORTED  ◀── a hard limit, an unconfirmed soft limit or checklist item (nothing delivered)

**One engine, many faces.** :class:`Session` is the only implementation of a clinical session. Commands
go in — :meth:`Session.pause`, :meth:`~Session.resume`, :meth:`~Session.slow`,
:meth:`~Session.restore_rate`, :meth:`~Session.stop`, :meth:`~Session.acknowledge`,
:meth:`~Session.end_observation`, :meth:`~Session.record_observation`,
:meth:`~Session.give_medication`, :meth:`~Session.answer` — each with a reason, its source (``cli``,
``signal``, ``keys``, ``api``, ``web``, ``script``) and the operator's name
(:mod:`ketapump.clinical.commands`); typed events come out (:mod:`ketapump.clinical.events`: phase, tick
telemetry, vitals, findings, questions and answers, actions, holds, alarms, course records, the end) to
every subscriber of :meth:`Session.subscribe`. The engine never prints, never installs signal handlers
and knows nothing of typer, HTTP or terminals: the CLI, the console and the public API are adapters that
turn their input into commands and the events into output. A command is checked when issued (a
``ValueError`` names what is wrong) and carried out at the next control tick (within one control
period); its :class:`~ketapump.clinical.events.ActionTaken` event says whether it was carried out, or
why not.

Questions (a checklist item, a reason for a soft limit, whether to go on past the maximum duration) are
events too: the session emits :class:`~ketapump.clinical.events.QuestionAsked` and takes the operator's
standing answer (:meth:`Operator.answer`: a script, the CLI's ``--yes``/``--confirm``), or waits for
:meth:`Session.answer`.

What this module owns, and what it does not:

- **Limits are the Rust core's.** The order (dose, rate, concentration, weight, cumulative windows from
  the course history) is checked by :func:`ketapump.clinical.druglib.check`; hard findings refuse the session,
  soft ones need the operator's confirmation with a reason, which is logged and kept in the course
  history. The kernel runs with the configuration the library entry derives for this patient.
- **The pump is the control loop's** (:class:`ketapump.bridge.loop.ControlLoop`): the session only asks it
  to pause, resume, stop or change rate (a phase's ramp or taper, an operator's slow-down), and every
  request passes the kernel.
- **Who holds the pump is explicit** (:class:`~ketapump.clinical.holds.Holds`): an operator's pause is
  only ever released by an operator; a vitals pause (a crossing past its alarm delay, a stale feed)
  is released as the protocol says (``vitals.resume``: the operator, or automatically once clear); the
  maximum duration holds the pump until its question is answered. Every change names its actor.
- **Slowing re-plans the rest of the dose** (:mod:`ketapump.clinical.pacing`): the dose stays, the
  infusion lasts longer, within the protocol's maximum duration (and the drug library's hard maximum);
  at the maximum the session says how much was not given and asks whether to continue or stop.
- **Everything is recorded**: every step, answer, confirmation, alarm, action, hold, observation and
  medication goes to the audit log and the course history (with who did it); the series behind the
  report's plots is sampled every few seconds.
- **Time is injected**: the session runs on the loop's clock, so a simulated session takes seconds.
- **Care is never skipped.** A stop ends the infusion, never the observation: once the pump is stopping,
  further stops are recorded and ignored, and the observation ends early only by
  :meth:`Session.end_observation` with a reason. A course-history write that fails mid-session stops the
  pump and ends the session with its records written (:class:`~ketapump.errors.CourseStorageError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import itertools
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from typing import Protocol as Interface

from ketapump import _core
from ketapump.bridge import ControlLoop, EventLog, InfusionPlan, RunResult
from ketapump.clinical import druglib
from ketapump.clinical.bedside import bedside
from ketapump.clinical.commands import (
    ACTIONS,
    PUMP_ACTIONS,
    Action,
    OperatorCommand,
    check_operator_name,
    make_command,
)
from ketapump.clinical.course import CourseHistory
from ketapump.clinical.events import (
    ActionTaken,
    AlarmRaised,
    BaselineRecorded,
    EventStream,
    FindingReported,
    HoldChanged,
    PhaseChanged,
    QuestionAnswered,
    QuestionAsked,
    RecordWritten,
    SessionEnded,
    SessionEvent,
    Source,
    Subscriber,
    Tick,
    VitalsRead,
)
from ketapump.clinical.holds import LIMIT, OPERATOR, VITALS, Change, Holds
from ketapump.clinical.pacing import PLAN, Pace, time_to_finish, volume_within
from ketapump.clinical.protocol import SITTER_ITEM, DosePlan, Patient, Protocol, Sitter, plan_dose
from ketapump.clinical.report import PlannedPoint, SeriesEvent, SeriesPoint
from ketapump.clinical.vitals import (
    CHANNELS,
    DISCRETE_CHANNELS,
    OnDemandVitalsFeed,
    PatientScript,
    ScriptedMonitor,
    VitalsAlarm,
    VitalsBaseline,
    VitalsFeed,
    VitalsGate,
    VitalsSample,
    VitalsThresholds,
    vitals_thresholds,
)
from ketapump.clock import Clock
from ketapump.config import kernel_config
from ketapump.errors import (
    ConfigurationError,
    CourseError,
    CourseRecordNotFoundError,
    KetapumpError,
    LimitError,
    TransportError,
)
from ketapump.wire import PumpDriver, PumpTelemetry

#: Seconds between two points of the report's series.
SERIES_EVERY_S = 5.0
#: The confirmation a discharge needs after an observation that ended with the vitals out of the band.
OBSERVATION_INCOMPLETE = "observation_incomplete"
#: Window over which the measured rate is estimated from the plunger (s).
RATE_WINDOW_S = 30.0
#: Observation is checked once a second.
OBSERVATION_STEP_S = 1.0
#: Relative change of the planned rate below which a phase's ramp is not sent to the kernel.
SCHEDULE_DEADBAND = 0.02
#: Volume left below which the end of the dose is taken as reached (the kernel ends it within a tick).
END_OF_DOSE_ML = 0.01
#: Who may stop the control loop (its run's reason then names them).
_STOPPERS: Final = frozenset({"operator", "vitals", "protocol"})
#: Kernel states in which the pump can be held, slowed or released.
_INFUSING: Final = frozenset({"running", "paused", "syringe_change"})


class Phase(enum.StrEnum):
    PRECHECK = "precheck"
    TAKE_UP = "take_up"
    INFUSION = "infusion"
    OBSERVATION = "observation"
    DISCHARGE = "discharge"
    COMPLETE = "complete"
    ABORTED = "aborted"


class SessionAbortedError(KetapumpError, RuntimeError):
    """The session ended before the infusion started (a checklist item was not confirmed, the
    baseline could not be recorded); nothing was delivered. ``phase`` and ``why`` say where and why."""

    def __init__(self, phase: str, why: str) -> None:
        super().__init__(f"session aborted in {phase}: {why}")
        self.phase = phase
        self.why = why


#: What a question takes: ``checklist`` → ``True``/``False``; ``soft_limit`` and ``baseline_vitals`` → the
#: reason to proceed, or ``None`` to decline; ``max_duration`` → the reason to continue past the
#: protocol's maximum duration (to the drug library's hard maximum), or ``None`` to stop there.
#: ``syringe_change`` → ``True`` once the operator has loaded the next syringe of a dose of several,
#: ``False`` to stop the infusion there.
QuestionKind = Literal["checklist", "soft_limit", "baseline_vitals", "max_duration", "syringe_change"]
Answer = bool | str | None


class _Pending:
    """The operator has no standing answer: the session waits for :meth:`Session.answer`."""

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Final = _Pending()


@dataclass(frozen=True)
class Question:
    """Something the session asks its operator (see :data:`QuestionKind`)."""

    question_id: str
    kind: QuestionKind
    #: The checklist's name (``pre``, ``discharge``), or the limit kind a reason is asked for.
    subject: str
    #: The checklist item or the finding's message, as a person reads it.
    text: str


class Operator(Interface):
    """The person at the chair, as the session sees them: standing answers to its questions, and
    commands issued at any time through the session (:meth:`attach`)."""

    def attach(self, session: Session) -> None:
        """Called once as the session starts: the operator may now act through its commands."""

    def answer(self, question: Question) -> Answer | _Pending:
        """The standing answer to ``question``, or :data:`PENDING` to wait for :meth:`Session.answer`."""

    def stop_after_pause(self, paused_s: float) -> bool:
        """A vitals condition has held the infusion for ``paused_s`` without clearing: stop it for good?"""


@dataclass(frozen=True)
class ScheduledCommand:
    """A command a :class:`ScriptedOperator` issues once the infusion has run ``at_s`` seconds."""

    at_s: float
    action: str
    reason: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ScriptedOperator:
    """An :class:`Operator` that acts from a script: the demo's, the tests' and the non-interactive
    CLI's operator. Its commands are issued in the session operator's name (or ``name``), with source
    ``script``.

    ``answers`` maps a checklist item to its answer (default: yes); ``reasons`` maps a limit kind (or
    ``max_duration``) to the reason given for it (default: decline); ``scheduled`` are
    :class:`ScheduledCommand` (or ``(infusion_s, action, reason)`` tuples), issued as commands once the
    infusion has run that long. ``resume_after_s`` is the scripted nurse's habit after a vitals pause:
    resume once the vitals have been clear that long (``None``: never; it never resumes a pause of
    its own: that is for its script). The vitals holding the infusion for ``stop_after_s`` stops it
    for good.
    """

    answers: Mapping[str, bool] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)
    scheduled: Sequence[ScheduledCommand | tuple[Any, ...]] = ()
    resume_after_s: float | None = 60.0
    stop_after_s: float = 1800.0
    name: str | None = None
    #: The answer to a syringe change (``True``: the next syringe is loaded; ``False``: stop there;
    #: ``None``: none in advance, the session waits for the person at the chair's ``answer``).
    syringe_changes: bool | None = True
    _session: Session | None = None
    _pushed: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    @classmethod
    def from_script(cls, script: PatientScript, **settings: Any) -> ScriptedOperator:
        """The nurse of a patient script: its ``[[nurse]]`` actions, scheduled."""
        scheduled = [ScheduledCommand(n.at_s, n.action, n.reason, n.args()) for n in script.nurse]
        return cls(scheduled=scheduled, **settings)

    def attach(self, session: Session) -> None:
        self._session = session
        pushed, self._pushed = self._pushed, []
        for kind, reason, args in pushed:
            self._issue(kind, reason, args)
        pending = deque(sorted((_scheduled(entry) for entry in self.scheduled), key=lambda c: c.at_s))
        infusion_start: list[float] = []
        resumed_hold: list[bool] = []

        def on_tick(event: SessionEvent) -> None:
            if not isinstance(event, Tick):
                return
            if not infusion_start:
                if event.pump_state is None:
                    return
                infusion_start.append(event.t_s)
            while pending and pending[0].at_s <= event.t_s - infusion_start[0]:
                due = pending.popleft()
                self._issue(due.action, due.reason, dict(due.args))
            # The nurse's habit: resume a pause only the vitals hold, once they have been clear long enough.
            if event.paused_by != (VITALS,):
                resumed_hold.clear()
            elif (
                self.resume_after_s is not None
                and not resumed_hold
                and event.vitals_clear_s is not None
                and event.vitals_clear_s >= self.resume_after_s
            ):
                resumed_hold.append(True)
                self._issue("resume", f"vitals back within limits for {self.resume_after_s:g} s", {})

        session.subscribe(on_tick)

    def _issue(self, action: str, reason: str, args: dict[str, Any]) -> None:
        assert self._session is not None
        self._session.command(action, reason, source="script", operator=self.name, **args)

    def push(self, kind: str, reason: str, **args: Any) -> None:
        """An operator command from outside the script, before or while the session runs."""
        if self._session is None:
            self._pushed.append((kind, reason, args))
        else:
            self._issue(kind, reason, args)

    def answer(self, question: Question) -> Answer | _Pending:
        if question.kind == "checklist":
            return self.answers.get(question.text, True)
        if question.kind == "syringe_change":
            return PENDING if self.syringe_changes is None else self.syringe_changes
        return self.reasons.get(question.subject)

    def stop_after_pause(self, paused_s: float) -> bool:
        return paused_s >= self.stop_after_s


def _scheduled(entry: ScheduledCommand | tuple[Any, ...]) -> ScheduledCommand:
    if isinstance(entry, ScheduledCommand):
        return entry
    return ScheduledCommand(*entry)


@dataclass
class SessionResult:
    session_id: str
    outcome: str
    plan: DosePlan
    programmed_mg: float
    delivered_mg: float
    delivered_ml: float
    run: RunResult | None
    phases: list[tuple[str, float]]
    alarms: list[dict[str, Any]]
    pauses: list[dict[str, Any]]
    confirmations: list[dict[str, Any]]
    baseline: dict[str, float]
    observation_min: float
    #: Every discharge checklist item was confirmed (if not, the unconfirmed items are alarms).
    discharge_confirmed: bool
    #: The vitals rules the session ran with (the protocol's overrides of the defaults).
    thresholds: VitalsThresholds
    points: list[SeriesPoint]
    events: list[SeriesEvent]
    #: The operator who ran the session (``None``: an anonymous QA run).
    operator: str | None = None
    #: Every action on the session, by whom (operator commands, the vitals' and the protocol's holds).
    actions: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    medications: list[dict[str, Any]] = field(default_factory=list)
    #: The band around the baseline that ends the observation (the protocol's ``observation.band_pct``).
    observation_band_pct: float = math.nan
    #: The sitter recorded for the discharge (``name``, ``phone``; ``None``: none recorded).
    sitter: dict[str, str] | None = None
    #: Each syringe change (a dose of several syringes): ``t_min``, ``syringe`` (the one loaded, from
    #: 2), ``delivered_ml`` before it, ``by`` (who confirmed it), ``simulated`` (the simulator loaded it).
    syringe_changes: list[dict[str, Any]] = field(default_factory=list)

    def planned_schedule(self, every_s: float = SERIES_EVERY_S) -> list[PlannedPoint]:
        """The plan's whole schedule on the session's clock, from the infusion's start (the take-up's)
        to the plan's end: what the plots continue past an infusion that ended early."""
        start = next((t for name, t in self.phases if name in (Phase.TAKE_UP, Phase.INFUSION)), None)
        if start is None:
            return []
        plan, end_s = self.plan, self.plan.segments[-1].end_s
        steps = math.ceil(end_s / every_s)
        return [
            PlannedPoint(start + t, plan.planned_ml(t) * plan.concentration_mg_per_ml, plan.rate_at(t))
            for t in (min(k * every_s, end_s) for k in range(steps + 1))
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "outcome": self.outcome,
            "operator": self.operator,
            "programmed_mg": self.programmed_mg,
            "delivered_mg": self.delivered_mg,
            "delivered_ml": self.delivered_ml,
            "error_pct": 100.0 * (self.delivered_mg - self.programmed_mg) / self.programmed_mg,
            "alarms": self.alarms,
            "pauses": self.pauses,
            "actions": self.actions,
            "observations": self.observations,
            "medications": self.medications,
            "syringe_changes": self.syringe_changes,
            "confirmations": self.confirmations,
            "phases": [{"phase": p, "start_min": t / 60.0} for p, t in self.phases],
            "baseline": self.baseline,
            "observation_min": self.observation_min,
            "discharge_confirmed": self.discharge_confirmed,
            "sitter": self.sitter,
            "plan": self.plan.as_dict(),
        }


class _Recorder:
    """The session's event log: forwards to the audit log, keeps what the report shows, and turns the
    control loop's alarm records into :class:`~ketapump.clinical.events.AlarmRaised` events."""

    #: Audit records the report marks on its time axis.
    KEPT: Final = frozenset(
        {
            "alarm",
            "pump_alarm",
            "vitals_alarm",
            "phase_started",
            "paused",
            "resumed",
            "rate_changed",
            "max_duration_reached",
            "cuff_reading_requested",
        }
    )

    def __init__(
        self, log: EventLog, clock: Clock, t0: float, on_alarm: Callable[[str, str, str], None]
    ) -> None:
        self.log, self.clock, self.t0 = log, clock, t0
        self.on_alarm = on_alarm
        self.events: list[SeriesEvent] = []
        self.take_up_done = False
        #: (session time, code) of every alarm the kernel or the pump raised, in order.
        self.raised: list[tuple[float, str]] = []

    def _keep(self, event: str, fields: dict[str, Any]) -> None:
        t = self.clock.now() - self.t0
        if event == "state_transition":
            if fields.get("cause") == "take_up_done":
                self.take_up_done = True
            if fields.get("to_state") in {"alarm", "paused", "running", "complete", "stopped"}:
                self.events.append(SeriesEvent(t, fields["to_state"], str(fields.get("cause", ""))))
        elif event in self.KEPT:
            codes = fields.get("raised", ()) if event == "alarm" else fields.get("pump_alarms", ())
            self.raised += [(t, str(code)) for code in codes]
            for code in codes if event in {"alarm", "pump_alarm"} else ():
                self.on_alarm("kernel" if event == "alarm" else "pump", str(code), event)
            detail = ", ".join(f"{k}={v}" for k, v in fields.items() if k not in {"delivered_ml"})
            self.events.append(SeriesEvent(t, event, detail))

    def info(self, event: str, **fields: Any) -> None:
        self._keep(event, fields)
        self.log.info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._keep(event, fields)
        self.log.warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._keep(event, fields)
        self.log.error(event, **fields)


@dataclass
class SessionContext:
    """Everything a session runs with, the records already open; built by
    :class:`~ketapump.clinical.runner.SessionRunner` (or a test) and handed to :class:`Session`."""

    session_id: str
    protocol: Protocol
    patient: Patient
    driver: PumpDriver
    clock: Clock
    log: EventLog
    course: CourseHistory
    library: druglib.DrugLibrary
    vitals: VitalsFeed
    operator: Operator
    #: UTC time of the clock's zero on the course's calendar, used when ``true_time`` is ``None`` (a test
    #: that lays a simulated course out on a calendar of its own).
    calendar_origin: datetime.datetime
    audit_path: str = ""
    #: The wall clock (UTC) every course-history record is stamped with. A session on a virtual or
    #: scaled clock then never writes a time later than now into a real course history: its simulated
    #: span is in the audit log's ``t_s`` (pump seconds), not in the calendar.
    true_time: Callable[[], datetime.datetime] | None = None
    #: Kernel settings that depend on the transport (control period, gains), from the CLI.
    loop_settings: Mapping[str, Any] = field(default_factory=dict)
    #: The operator running the session: every command and confirmation without a name of its own is
    #: theirs. Required unless the protocol allows anonymous QA runs (``session.allow_anonymous``).
    operator_name: str | None = None
    #: The face the session was started through (recorded with the plan).
    source: Source = "cli"
    #: Who takes the patient home, by name and phone (``None``: not recorded; a protocol whose discharge
    #: asks for the sitter then ends with the discharge not confirmed).
    sitter: Sitter | None = None


@dataclass
class _InfusionTicks:
    """What the infusion's per-tick hook carries from one tick to the next."""

    plan: DosePlan
    volumes: deque[tuple[float, float]]
    holds: Holds
    pace: Pace = PLAN
    started_s: float | None = None
    #: Since when a vitals condition has been active without a break, while the vitals hold the pump.
    vitals_active_since_s: float | None = None
    #: The rate the session last programmed in the kernel.
    rate_ml_h: float = 0.0
    next_point_s: float = 0.0
    #: The longest the infusion may last (s from its start; ``None``: no limit), the drug library's
    #: hard maximum beyond which nothing continues, and the pending question at the maximum.
    max_s: float | None = None
    hard_max_s: float | None = None
    max_question: tuple[Question, asyncio.Future[Answer]] | None = None
    #: Why the session itself stopped the infusion (``max_duration``, ``vitals``), for the outcome.
    stop_cause: str | None = None
    last_state: str = "armed"
    last_delivered_ml: float = 0.0
    last_remaining_ml: float = math.inf
    syringe: _SyringeChange | None = None


@dataclass
class _SyringeChange:
    """A dose of several syringes: where each change falls, and how far the one under way has come.

    ``stage``: ``None`` (infusing syringe ``index``), ``pausing`` (its share is given: the pump is
    being paused), ``changing`` (the kernel is told the syringe comes out), ``asking`` (the operator is
    asked to load the next one), ``loading`` (the simulator's stand-in for their hands), ``loaded`` (the
    kernel is told the new syringe is in; the hold is released once it has taken it)."""

    #: Cumulative delivered volume at which each syringe but the last is spent (mL).
    boundaries_ml: tuple[float, ...]
    #: What each new syringe holds (mL).
    fill_ml: float
    index: int = 0
    stage: str | None = None
    question: tuple[Question, asyncio.Future[Answer]] | None = None
    loading: asyncio.Future[bool] | None = None
    #: Who answered the change's question, and whether the simulator loaded the syringe.
    by: str | None = None
    simulated: bool = False

    @property
    def count(self) -> int:
        return len(self.boundaries_ml) + 1


@dataclass
class _CuffFollowUp:
    """When the cuff was last asked for a reading (a BP crossing is re-measured, not waited out)."""

    last_request_s: float | None = None
    unavailable_logged: bool = False


class Session:
    """The session engine: runs one session, takes commands, emits events (see the module docstring).

    :meth:`run` returns a :class:`SessionResult`, or raises before anything is delivered
    (:class:`~ketapump.errors.LimitRefused`, :class:`~ketapump.errors.ConfirmationRequired`,
    :class:`SessionAbortedError`); every way it ends emits one
    :class:`~ketapump.clinical.events.SessionEnded`. Constructing it raises
    :class:`~ketapump.errors.ConfigurationError` (nothing written) for a session without an operator's
    name whose protocol does not allow anonymous runs.
    """

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.session_id = ctx.session_id
        self.operator_name = _session_operator(ctx)
        self.t0 = ctx.clock.now()
        self.stream = EventStream()
        self.rec = _Recorder(ctx.log, ctx.clock, self.t0, self._alarm_event)
        self.thresholds = vitals_thresholds(ctx.protocol.vitals, where="vitals")
        self.phases: list[tuple[str, float]] = []
        self.alarms: list[dict[str, Any]] = []
        self.pauses: list[dict[str, Any]] = []
        self.confirmations: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.observations: list[dict[str, Any]] = []
        self.medications: list[dict[str, Any]] = []
        #: Each syringe change of a dose of several: when, at what delivered volume, by whom.
        self.syringe_changes: list[dict[str, Any]] = []
        self.points: list[SeriesPoint] = []
        self.gate: VitalsGate | None = None
        #: What the kernel last measured as delivered (mL), for a session that fails mid-infusion.
        self._delivered_ml = 0.0
        self._latest: dict[str, float] = {}
        self._commands: deque[OperatorCommand] = deque()
        self._questions: dict[str, tuple[Question, asyncio.Future[Answer]]] = {}
        #: Who gave each answer, by question id (a standing answer is the session operator's).
        self._answered_by: dict[str, str | None] = {}
        self._question_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended = False
        #: How the session ended (the :class:`~ketapump.clinical.events.SessionEnded` outcome), once it has.
        self.outcome: str | None = None
        #: The control loop while the pump runs (a failed course write stops it).
        self._control: ControlLoop | None = None
        #: Set once the pump was told to stop for good: a further stop is recorded and ignored.
        self._stopping = False
        #: The first course-history write that failed mid-session; the session ends with it.
        self._course_failure: CourseError | None = None
        self._run_result: RunResult | None = None
        self._observation_min = 0.0
        self._discharged = False
        #: How the observation fell short of its end (vitals not back within the band), when it did and no
        #: operator's reason came with it (an operator's early end has one).
        self._observation_unsettled: str | None = None
        #: The operator's accepted ``end_observation``, once given.
        self._observation_ended_by: OperatorCommand | None = None
        #: Course-history writes waiting for the session to be begun there (actions in the pre-check).
        self._unrecorded: list[Callable[[], None]] | None = []
        self._cuff = _CuffFollowUp()
        #: An operator stopped the session while it waited on a question (see :meth:`_stop_while_asking`).
        self._stopped_asking = False

    # ----- commands in, events out -------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Calls ``subscriber`` with every later event (on the session's event loop); returns the
        function that unsubscribes it."""
        return self.stream.subscribe(subscriber)

    def command(
        self,
        action: str,
        reason: str = "",
        *,
        source: Source = "api",
        operator: str | None = None,
        **args: Any,
    ) -> None:
        """Queues an operator command for the next control tick (safe to call from any thread).

        ``action`` is one of :data:`~ketapump.clinical.commands.ACTIONS`, with its arguments
        (:mod:`ketapump.clinical.commands`); ``operator`` defaults to the session's operator. A command
        that is wrong in itself (an unknown action, a missing reason, an argument out of range) is a
        ``ValueError`` at once; the :class:`~ketapump.clinical.events.ActionTaken` event says whether
        the session carried it out."""
        who = self.operator_name if operator is None else operator
        cmd = make_command(action, reason, source=source, operator=who, **args)
        self._commands.append(cmd)
        if action == "stop" and self._loop is not None:
            # A stop does not wait for the answer to a pending question (a checklist item in a browser).
            self._loop.call_soon_threadsafe(self._stop_while_asking)

    def pause(self, reason: str, *, source: Source = "api", operator: str | None = None) -> None:
        """Pause the infusion: held until an operator resumes it, whatever the vitals do."""
        self.command("pause", reason, source=source, operator=operator)

    def resume(self, reason: str = "", *, source: Source = "api", operator: str | None = None) -> None:
        """Release the operator's pause, and a vitals pause whose conditions have cleared (refused while
        a vitals condition is active)."""
        self.command("resume", reason, source=source, operator=operator)

    def slow(
        self,
        reason: str,
        *,
        to_fraction: float | None = None,
        to_rate_ml_h: float | None = None,
        source: Source = "api",
        operator: str | None = None,
    ) -> None:
        """Run at ``to_fraction`` of the plan's rate, or at most ``to_rate_ml_h`` (through the kernel's
        rate path); the rest of the dose takes longer, within the maximum duration."""
        self.command(
            "slow",
            reason,
            source=source,
            operator=operator,
            to_fraction=to_fraction,
            to_rate_ml_h=to_rate_ml_h,
        )

    def restore_rate(self, reason: str = "", *, source: Source = "api", operator: str | None = None) -> None:
        """Back to the plan's rate after a slow-down."""
        self.command("restore_rate", reason, source=source, operator=operator)

    def stop(self, reason: str, *, source: Source = "api", operator: str | None = None) -> None:
        """Stop: before the infusion the session is aborted (nothing delivered); during it the pump
        stops for good and the session goes on to the observation. A stop while the pump is already
        stopping, or during the observation, is recorded and refused: it never shortens the observation."""
        self.command("stop", reason, source=source, operator=operator)

    def end_observation(self, reason: str, *, source: Source = "api", operator: str | None = None) -> None:
        """End the observation before its minimum or before the vitals are back within the band: the
        operator's explicit decision, refused without a reason, recorded with who and why."""
        self.command("end_observation", reason, source=source, operator=operator)

    def acknowledge(
        self,
        reason: str = "",
        *,
        alarm: str | None = None,
        source: Source = "api",
        operator: str | None = None,
    ) -> None:
        """The operator has seen ``alarm`` (a code raised in this session; ``None``: every alarm so
        far). Recorded; an alarm never clears by itself. ``reason`` comes first, as it always has, so a
        face that acknowledged with a reason keeps doing so."""
        self.command("acknowledge", reason, source=source, operator=operator, alarm=alarm)

    def record_observation(
        self,
        kind: str,
        value: float | None = None,
        note: str = "",
        *,
        source: Source = "api",
        operator: str | None = None,
    ) -> None:
        """Record a side effect or state on its scale (``data/bedside.toml``: nausea 0–4, CADSS 0–92, …)."""
        self.command(
            "record_observation", "", source=source, operator=operator, kind=kind, value=value, note=note
        )

    def give_medication(
        self,
        drug: str,
        dose: float,
        unit: str,
        route: str,
        reason: str = "",
        *,
        source: Source = "api",
        operator: str | None = None,
    ) -> None:
        """Record a medication given (drug, dose, unit, route) at this moment."""
        self.command(
            "give_medication", reason, source=source, operator=operator, drug=drug, dose=dose, unit=unit,
            route=route,
        )  # fmt: skip

    def answer(
        self, question_id: str, value: Answer, *, source: Source = "api", operator: str | None = None
    ) -> bool:
        """Answers a pending question (safe to call from any thread); ``False`` if none has that id.
        The answer, its source and the operator's name go to the audit log (``question_answered``).

        A checklist or syringe-change question takes ``True`` or ``False``; a soft limit, baseline or
        maximum-duration question a reason (a non-blank string) or ``None`` to decline. Any other answer
        is a ``ValueError``. ``operator`` (default: the session's operator) is recorded with the answer."""
        pending = self._questions.get(question_id)
        if pending is None or self._loop is None:
            return False
        question, future = pending
        if question.kind in {"checklist", "syringe_change"}:
            if not isinstance(value, bool):
                raise ValueError(
                    f"question {question_id} ({question.kind}) takes True or False, got {value!r}"
                )
        elif not (value is None or (isinstance(value, str) and value.strip())):
            raise ValueError(f"question {question_id} ({question.kind}) takes a reason or None: {value!r}")
        who = check_operator_name(operator) if operator is not None else self.operator_name

        def settle() -> None:
            if not future.done():
                self._answered_by[question_id] = who
                future.set_result(value)
                self._answered(question, value, source, who)

        self._loop.call_soon_threadsafe(settle)
        return True

    def pending_questions(self) -> list[Question]:
        """The questions the session is waiting on."""
        return [q for q, f in self._questions.values() if not f.done()]

    def _event(self, kind: type[SessionEvent], **fields: Any) -> None:
        """Emits an event of ``kind`` now."""
        self._emit(kind, fields, self._t())

    def _emit(self, kind: type[SessionEvent], fields: dict[str, Any], t: float) -> None:
        """Emits an event of ``kind`` with ``fields`` (a dict of the caller's own, completed here) at
        session time ``t``."""
        fields["session_id"], fields["t_s"] = self.session_id, t
        self.stream.emit(kind.of(fields))

    def _take_commands(self) -> list[OperatorCommand]:
        taken = []
        while self._commands:
            taken.append(self._commands.popleft())
        return taken

    def _acted(
        self, cmd: OperatorCommand, *, accepted: bool, why: str = "", detail: Mapping[str, Any] | None = None
    ) -> None:
        """An operator's command was carried out (or refused, ``why``): the event, the audit record and
        the course record (observations and medications have their own)."""
        detail = {**cmd.args, **(detail or {})}
        self._event(
            ActionTaken,
            action=cmd.action,
            reason=cmd.reason,
            source=cmd.source,
            operator=cmd.operator,
            accepted=accepted,
            why=why,
            detail=detail,
        )
        fields = {"reason": cmd.reason, "source": cmd.source, "operator": cmd.operator, "detail": detail}
        if accepted:
            self.rec.info("operator_action", action=cmd.action, why=why, **fields)
        else:
            self.rec.warning("request_refused", request=cmd.action, why=why, **fields)
        self._action_record(
            cmd.action,
            "operator",
            cmd.operator,
            cmd.source,
            cmd.reason,
            accepted=accepted,
            why=why,
            detail=detail,
            # An observation or a medication has its own course record.
            course=not (accepted and cmd.action in {"record_observation", "give_medication"}),
        )

    def _automatic(
        self, action: str, actor: Literal["vitals", "protocol"], reason: str, **detail: Any
    ) -> None:
        """An action the session took itself (the vitals gate, the protocol): recorded in its actor's
        name, never a person's."""
        self._action_record(action, actor, None, "engine", reason, accepted=True, why="", detail=detail)

    def _action_record(
        self,
        action: str,
        actor: Literal["operator", "vitals", "protocol"],
        who: str | None,
        source: str,
        reason: str,
        *,
        accepted: bool,
        why: str,
        detail: Mapping[str, Any],
        course: bool = True,
    ) -> None:
        """One action on the session, by ``actor`` (and ``who``, an operator's name): kept for the report
        and, with ``course``, written to the course history's actions."""
        self.actions.append(
            {
                "t_min": self._t() / 60.0,
                "action": action,
                "by": (who or "(anonymous)") if actor == "operator" else actor,
                "actor": actor,
                "source": source,
                "reason": reason,
                "accepted": accepted,
                "why": why,
                "detail": dict(detail),
            }
        )
        if not course:
            return
        at = self._calendar()
        self._record(
            "action",
            lambda: self.ctx.course.record_action(
                self.session_id,
                at,
                action,
                actor=actor,
                who=who,
                source=source,
                accepted=accepted,
                reason=reason,
                why=why,
                detail=dict(detail),
            ),
            action=action,
            accepted=accepted,
            actor=actor,
        )

    def _held(self, change: Change, actor: str, reason: str, operator: str | None = None) -> None:
        """Who holds the pump changed: the event and the audit record."""
        fields = {
            "holders": change.left,
            "added": change.added,
            "released": change.released,
            "actor": actor,
            "operator": operator,
            "reason": reason,
        }
        self._event(HoldChanged, **fields)
        self.rec.info("hold_changed", **fields)

    def _record(self, record: str, write: Callable[[], Any], **detail: Any) -> None:
        """A course-history write: now (through :meth:`_course_write`: one that fails stops the pump), or
        once the session has been begun there (the pre-check's actions; dropped with a session that never
        starts, whose audit log keeps them)."""

        def write_and_tell() -> None:
            write()
            self._recorded(record, **detail)

        if self._unrecorded is not None:
            self._unrecorded.append(write_and_tell)
        elif self._course_write(record, write):
            self._recorded(record, **detail)

    def _acknowledged(self, cmd: OperatorCommand) -> None:
        # Kernel and pump alarms join ``self.alarms`` when the infusion ends; the recorder has them now.
        codes = [a["code"] for a in self.alarms if "code" in a] + [code for _t, code in self.rec.raised]
        raised = list(dict.fromkeys(codes))
        alarm = cmd.args.get("alarm")
        if alarm is not None and alarm not in raised:
            self._acted(cmd, accepted=False, why=f"no alarm {alarm} was raised in this session")
            return
        self.rec.info(
            "alarms_acknowledged",
            alarms=[alarm] if alarm is not None else raised,
            reason=cmd.reason,
            source=cmd.source,
            operator=cmd.operator,
        )
        self._acted(cmd, accepted=True)

    def _observed(self, cmd: OperatorCommand) -> None:
        """An observation or a medication, in any phase: the audit log, the course history, the report."""
        at, t = self._calendar(), self._t()
        args = cmd.args
        if cmd.action == "record_observation":
            kind, value, note = args["kind"], args.get("value"), args.get("note", "")
            scale = bedside().kinds[kind].scale
            self.observations.append(
                {"t_min": t / 60.0, "kind": kind, "value": value, "scale": scale, "note": note,
                 "by": cmd.operator or "(anonymous)"}
            )  # fmt: skip
            self.rec.info(
                "observation_recorded", kind=kind, value=value, scale=scale, note=note, source=cmd.source,
                operator=cmd.operator,
            )  # fmt: skip
            self._record(
                "observation",
                lambda: self.ctx.course.record_observation(
                    self.session_id, at, kind, value, scale=scale, note=note, who=cmd.operator
                ),
                kind=kind,
            )
        else:
            drug, dose, unit, route = args["drug"], args["dose"], args["unit"], args["route"]
            self.medications.append(
                {"t_min": t / 60.0, "drug": drug, "dose": dose, "unit": unit, "route": route,
                 "reason": cmd.reason, "by": cmd.operator or "(anonymous)"}
            )  # fmt: skip
            self.rec.info(
                "medication_given", drug=drug, dose=dose, unit=unit, route=route, reason=cmd.reason,
                source=cmd.source, operator=cmd.operator,
            )  # fmt: skip
            self._record(
                "medication",
                lambda: self.ctx.course.record_medication(
                    self.session_id, at, drug, dose, unit, route, reason=cmd.reason, who=cmd.operator
                ),
                drug=drug,
            )
        self._acted(cmd, accepted=True)

    def _outside_infusion(self, phase: str) -> bool:
        """Commands while no pump runs; ``True`` if one ends the phase. Before the infusion a stop aborts
        the session. During the observation a stop is recorded and refused (a signal burst never cuts it
        short); only ``end_observation`` with a reason ends it."""
        ends = False
        for cmd in self._take_commands():
            if cmd.action == "stop" and phase == "precheck":
                ends = True
                self._acted(cmd, accepted=True)
            elif cmd.action == "stop":
                why = f"the {phase} continues: a stop does not end it (end_observation with a reason does)"
                self._acted(cmd, accepted=False, why=why)
            elif cmd.action == "end_observation" and phase == "observation":
                if cmd.reason.strip():
                    ends = True
                    self._observation_ended_by = cmd
                    self._acted(cmd, accepted=True)
                else:
                    self._acted(cmd, accepted=False, why="ending the observation early needs a reason")
            elif cmd.action == "acknowledge":
                self._acknowledged(cmd)
            elif cmd.action in {"record_observation", "give_medication"}:
                self._observed(cmd)
            else:
                self._acted(cmd, accepted=False, why=f"no {_command_scope(cmd.action)} is running ({phase})")
        return ends

    def _course_write(self, record: str, write: Callable[..., object], *args: Any) -> bool:
        """A course-history write during the infusion or the observation. One that fails stops the pump
        (the session cannot be kept on record), is logged and ends the session once its care is done;
        later writes are not attempted. Returns whether it was written."""
        if self._course_failure is not None:
            return False
        try:
            write(*args)
        except CourseError as e:
            self._course_failure = e
            self.rec.error("course_write_failed", record=record, error=str(e))
            self.alarms.append(
                {"t_min": self._t() / 60.0, "source": "course", "code": "course_history_unwritable"}
            )
            self._alarm_event("course", "course_history_unwritable", str(e))
            if self._control is not None and not self._stopping:
                self._stopping = True
                self._control.request_stop(by="course")
            return False
        return True

    def _stop_while_asking(self) -> None:
        """A stop while the pre-check waits on a question (a checklist item on a console's card): the
        session is aborted at once, nothing delivered, the stop carried out and recorded. In any other
        phase the stop waits its turn as usual (during the observation and discharge it is refused:
        ``end_observation`` ends the observation)."""
        waiting = [f for _q, f in self._questions.values() if not f.done()]
        phase = self.phases[-1][0] if self.phases else Phase.PRECHECK.value
        if not waiting or phase != Phase.PRECHECK:
            return
        if not self._stopped_asking:
            if not any(c.action == "stop" for c in self._commands):
                return
            self._outside_infusion(phase)
            self._stopped_asking = True
            self.rec.warning("operator_stop_requested", phase=phase)
        for future in waiting:
            future.set_exception(SessionAbortedError(phase, "stopped by the operator"))

    def _ask_later(
        self, kind: QuestionKind, subject: str, text: str
    ) -> tuple[Question, asyncio.Future[Answer]]:
        """Asks the operator without waiting: the future holds their standing answer at once, or the
        one :meth:`answer` brings later."""
        question = Question(f"q{next(self._question_ids)}", kind, subject, text)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        # Pending before it is announced: a subscriber may answer while the event is delivered.
        self._questions[question.question_id] = (question, future)
        future.add_done_callback(lambda _f: self._questions.pop(question.question_id, None))
        self._event(
            QuestionAsked,
            question_id=question.question_id,
            question=kind,
            subject=subject,
            text=text,
        )
        standing = self.ctx.operator.answer(question)
        if not future.done() and not isinstance(standing, _Pending):
            self._answered_by[question.question_id] = self.operator_name
            future.set_result(standing)
            self._answered(question, standing, "script", self.operator_name)
        elif not future.done():
            self._stop_while_asking()  # a stop already given is not held up by this question
        return question, future

    async def _ask(self, kind: QuestionKind, subject: str, text: str) -> Answer:
        """Asks the operator; their standing answer, or the one :meth:`answer` brings."""
        _question, future = self._ask_later(kind, subject, text)
        return await future

    def _answered(self, question: Question, value: Answer, source: Source, who: str | None) -> None:
        fields = {"question": question.kind, "subject": question.subject, "answer": value, "source": source}
        self._event(QuestionAnswered, question_id=question.question_id, operator=who, **fields)
        self.rec.info(
            "question_answered", question_id=question.question_id, text=question.text, operator=who, **fields
        )

    def _alarm_event(self, source: str, code: str, detail: str) -> None:
        self._event(AlarmRaised, source=source, code=code, detail=detail)

    def _recorded(self, record: str, **detail: Any) -> None:
        self._event(RecordWritten, record=record, detail=detail)

    def _tick(self, **fields: Any) -> None:
        """The tick's event; its callers build ``fields`` only when ``self.stream.subscribed``."""
        t = self._t()
        fields["phase"] = self.phases[-1][0] if self.phases else Phase.PRECHECK.value
        fields["phase_elapsed_s"] = t - (self.phases[-1][1] if self.phases else 0.0)
        fields["vitals"] = dict(self._latest)
        self._emit(Tick, fields, t)

    def _idle_tick(self, plan: DosePlan | None) -> None:
        """A tick while no pump runs: the pre-check's waits and the observation, once a second."""
        if not self.stream.subscribed:
            return
        delivered_ml = self._delivered_ml
        concentration = plan.concentration_mg_per_ml if plan else 0.0
        self._tick(
            pump_state=None,
            delivered_ml=delivered_ml,
            planned_ml=plan.volume_ml if plan else 0.0,
            delivered_mg=delivered_ml * concentration,
            programmed_mg=self.points[-1].programmed_mg if self.points else 0.0,
            commanded_rate_ml_h=0.0,
            measured_rate_ml_h=0.0,
            pressure_mmhg=math.nan,
            occlusion_threshold_mmhg=self.points[-1].threshold_mmhg if self.points else math.nan,
            alarms=(),
            paused_by=(),
        )

    # ----- helpers ------------------------------------------------------------------------------

    def _t(self) -> float:
        return self.ctx.clock.now() - self.t0

    def _calendar(self) -> datetime.datetime:
        return self._calendar_at(self.ctx.clock.now())

    def _calendar_at(self, clock_s: float) -> datetime.datetime:
        """The course-history time of clock second ``clock_s``: the wall clock's now when the session
        has one (``true_time``: a record made later never carries an earlier or future time), else the
        test's calendar."""
        if self.ctx.true_time is not None:
            return self.ctx.true_time()
        return self.ctx.calendar_origin + datetime.timedelta(seconds=clock_s)

    def _phase(self, phase: Phase) -> None:
        previous = self.phases[-1][0] if self.phases else None
        self.phases.append((phase.value, self._t()))
        self.rec.info("phase_started", phase=phase.value)
        self._event(PhaseChanged, phase=phase.value, previous=previous)

    def _poll_vitals(self) -> list[VitalsAlarm]:
        """Reads the feed, updates the gate and the latest readings; returns newly raised alarms."""
        assert self.gate is not None
        now = self._t()
        samples = self.ctx.vitals.poll(now)
        for s in samples:
            self._latest[s.channel] = s.value
            self._event(VitalsRead, channel=s.channel, value=s.value, reading_t_s=s.t_s)
        return self.gate.update(now, samples)

    def _vitals_alarm(self, alarm: VitalsAlarm, phase: str, *, record: bool = True) -> None:
        """Logs a vitals alarm (and, once the session is in the course history, records it there)."""
        code = f"vitals_{alarm.kind}_{alarm.channel}"
        fields = {"code": code, "channel": alarm.channel, "reading_t_s": alarm.t_s, "limit": alarm.limit}
        if alarm.kind == "crossing":
            fields |= {"value": alarm.value, "low": alarm.low, "since_s": alarm.since_s}
        else:
            fields |= {"age_s": alarm.age_s}
        self.alarms.append(
            {"t_min": self._t() / 60.0, "source": "vitals", "phase": phase, "detail": alarm.detail, **fields}
        )
        self.rec.error("vitals_alarm", phase=phase, detail=alarm.detail, **fields)
        self._alarm_event("vitals", code, alarm.detail)
        if record:
            at = self._calendar()
            self._record(
                "alarm",
                lambda: self.ctx.course.record_alarm(self.ctx.session_id, at, code, alarm.detail),
                code=code,
            )

    def _follow_up_cuff(self) -> None:
        """A BP crossing is re-measured rather than waited out: the cuff is asked for a reading at once
        and again every ``bp_recheck_s`` while the crossing lasts (where the feed can take one)."""
        assert self.gate is not None
        active = self.gate.active()
        if not active:  # the usual tick: nothing to follow up
            return
        crossing = [a for a in active if a.kind == "crossing" and a.channel in DISCRETE_CHANNELS]
        if not crossing:
            return
        t, cuff = self._t(), self._cuff
        if cuff.last_request_s is not None and t - cuff.last_request_s < self.thresholds.bp_recheck_s:
            return
        cuff.last_request_s = t
        feed = self.ctx.vitals
        why = "; ".join(a.detail for a in crossing)
        if isinstance(feed, OnDemandVitalsFeed) and feed.request_reading(DISCRETE_CHANNELS, t):
            self.rec.info("cuff_reading_requested", why=why)
        elif not cuff.unavailable_logged:
            cuff.unavailable_logged = True
            self.rec.warning(
                "cuff_reading_unavailable", why=why, detail="this feed takes no reading on request"
            )

    # ----- the phases ---------------------------------------------------------------------------

    async def run(self) -> SessionResult:
        """Runs the session to its end (see the class docstring); callable once."""
        if self._loop is not None:
            raise RuntimeError("a session runs once")
        self._loop = asyncio.get_running_loop()
        self.ctx.operator.attach(self)
        plan: DosePlan | None = None
        try:
            self._phase(Phase.PRECHECK)
            plan = self._plan()
            result = await self._run(plan)
        except BaseException as e:
            self._end(_failed_outcome(e), plan, detail=str(e))
            raise
        self._end(result.outcome, plan)
        return result

    def _end(self, outcome: str, plan: DosePlan | None, *, detail: str = "") -> None:
        self._ended = True
        self.outcome = outcome
        concentration = plan.concentration_mg_per_ml if plan else 0.0
        self._event(
            SessionEnded,
            outcome=outcome,
            delivered_mg=self._delivered_ml * concentration,
            programmed_mg=plan.dose_mg if plan else 0.0,
            detail=detail,
        )

    async def _run(self, plan: DosePlan) -> SessionResult:
        ctx = self.ctx
        order, entry = await self._authorize(plan)
        await self._baseline()
        await self._checklist("pre", ctx.protocol.checklists.pre, abort=True)
        self._stop_if_asked("precheck")
        # The pump must answer before the session enters the course history: an unreachable pump is not
        # a session start (it would count against the next session's course rules).
        try:
            await ctx.driver.connect()
        except TransportError as e:
            self.rec.error("pump_unreachable", error=str(e))
            raise
        patient = ctx.patient
        ctx.course.ensure_patient(
            patient.patient_id, patient.weight_kg, patient.height_cm, at=self._calendar()
        )
        self._recorded("patient", patient_id=patient.patient_id)
        ctx.course.begin_session(
            ctx.session_id,
            ctx.patient.patient_id,
            ctx.protocol.name,
            self._calendar(),
            plan.dose_mg,
            ctx.audit_path,
        )
        self._recorded("session_begun", programmed_mg=plan.dose_mg, operator=self.operator_name)
        try:
            for c in self.confirmations:
                ctx.course.record_override(
                    ctx.patient.patient_id, ctx.session_id, c["kind"], c["reason"], self._calendar(),
                    who=c["by"],
                )  # fmt: skip
                self._recorded("override", kind=c["kind"])
            unrecorded, self._unrecorded = self._unrecorded or [], None
            for write in unrecorded:
                write()
            run, stop_cause = await self._infuse(plan, order, entry)
            self._run_result = run
            delivered_ml = run.session_delivered_ml
            delivered_mg = delivered_ml * plan.concentration_mg_per_ml
            self._observation_min = await self._observe(plan) if delivered_ml > 0 else 0.0
            self._phase(Phase.DISCHARGE)
            self._discharged = await self._discharge()
            if self._course_failure is not None:
                raise self._course_failure
        except BaseException as e:
            # The loop has already told the pump to stop. The course history must not keep a session
            # "in progress" for ever (its programmed dose would count in every later window): it ends
            # with what the kernel last measured, and why (if the history can still be written at all).
            delivered = self._delivered_ml * plan.concentration_mg_per_ml
            with contextlib.suppress(Exception):
                self.rec.error("session_failed", error=repr(e), delivered_mg=delivered)
            self._course_failure = None  # the end is recorded whether or not an earlier write failed
            ended = self._course_write(
                "session_ended",
                ctx.course.end_session,
                ctx.session_id,
                self._calendar(),
                delivered,
                "ended_error",
            )
            if ended:
                self._recorded("session_ended", outcome="ended_error", delivered_mg=delivered)
            raise
        if run.reason == "complete":
            outcome = "complete"
        else:
            outcome = f"ended_{stop_cause if run.reason in _STOPPERS and stop_cause else run.reason}"
        ctx.course.end_session(ctx.session_id, self._calendar(), delivered_mg, outcome)
        self._recorded("session_ended", outcome=outcome, delivered_mg=delivered_mg)
        self._phase(Phase.COMPLETE)
        self.rec.info(
            "session_complete",
            outcome=outcome,
            programmed_mg=plan.dose_mg,
            delivered_mg=delivered_mg,
            delivered_ml=delivered_ml,
            observation_min=self._observation_min,
            discharge_confirmed=self._discharged,
        )
        return self.result(plan, outcome)

    def result(self, plan: DosePlan, outcome: str | None = None) -> SessionResult:
        """What the session did so far, as a :class:`SessionResult`: the whole result once it completed,
        and for a session that ended any other way (``outcome``, default :attr:`outcome`) what it had
        reached, so its report is written whatever the ending."""
        delivered_ml = (
            self._run_result.session_delivered_ml if self._run_result is not None else self._delivered_ml
        )
        return SessionResult(
            session_id=self.ctx.session_id,
            outcome=outcome or self.outcome or "failed",
            plan=plan,
            programmed_mg=plan.dose_mg,
            delivered_mg=delivered_ml * plan.concentration_mg_per_ml,
            delivered_ml=delivered_ml,
            run=self._run_result,
            phases=self.phases,
            alarms=self.alarms,
            pauses=self.pauses,
            confirmations=self.confirmations,
            baseline=self.gate.baseline.model_dump(exclude_none=True) if self.gate else {},
            observation_min=self._observation_min,
            discharge_confirmed=self._discharged,
            thresholds=self.thresholds,
            # A session that ended before its first point still has one: its report always has a series.
            points=self.points or [self._idle_point(self._t(), 0.0, 0.0, math.nan)],
            events=self.rec.events,
            operator=self.operator_name,
            actions=self.actions,
            observations=self.observations,
            medications=self.medications,
            observation_band_pct=self.ctx.protocol.observation.band_pct,
            sitter=self.ctx.sitter.as_dict() if self.ctx.sitter else None,
            syringe_changes=self.syringe_changes,
        )

    def _plan(self) -> DosePlan:
        plan = plan_dose(self.ctx.protocol, self.ctx.patient)
        self.rec.info(
            "session_planned",
            patient=self.ctx.patient.patient_id,
            operator=self.operator_name,
            source=self.ctx.source,
            **plan.as_dict(),
        )
        return plan

    async def _authorize(self, plan: DosePlan) -> tuple[druglib.Order, druglib.DrugEntry]:
        """Checks the order against the drug library and the course (in the Rust core); asks the
        operator for a reason for every soft finding; refuses on any hard one."""
        ctx = self.ctx
        history: CourseHistory | None = ctx.course
        try:
            ctx.course.patient(ctx.patient.patient_id)
        except CourseRecordNotFoundError:
            history = None  # a new patient: recorded only once the session starts
            await self._confirm_new_patient()
        else:
            ctx.course.refuse_if_open(ctx.patient.patient_id)  # before anything is asked or the pump touched
        at = self._calendar()
        order, entry, findings = check_order(plan, ctx.patient, ctx.library, ctx.course, at)
        self.rec.info(
            "limits_checked",
            findings=[f.as_dict() for f in findings],
            order=order.as_dict(),
        )
        for f in findings:
            self._event(
                FindingReported,
                finding=f.kind,
                severity=f.severity,
                message=f.message,
            )
        confirmations = []
        confirmed_by: dict[str, str | None] = {}
        standing: dict[str, tuple[str, str]] = {}  # kind → (reason, who granted it)
        if history is not None:
            for o in history.standing_overrides(ctx.patient.patient_id, at):  # the latest grant first
                until = o.expires_at.strftime("%Y-%m-%d %H:%MZ")
                standing.setdefault(
                    o.kind, (f"standing override by {o.who} until {until}: {o.reason}", o.who)
                )
        if not any(f.severity == "hard" for f in findings):  # a hard finding refuses whatever is answered
            for f in findings:
                if f.severity != "soft":
                    continue
                if f.kind in standing:  # decided in advance, with its author and expiry: not asked again
                    standing_reason, granted_by = standing[f.kind]
                    confirmations.append(druglib.Confirmation(f.kind, standing_reason))
                    confirmed_by[f.kind] = granted_by
                    continue
                question, future = self._ask_later("soft_limit", f.kind, f.message)
                reason = await future
                if isinstance(reason, str):
                    confirmations.append(druglib.Confirmation(f.kind, reason))
                    confirmed_by[f.kind] = self._by(question)
        authorization = druglib.authorize(findings, confirmations)  # raises on hard/unconfirmed
        for fields in authorization.events():
            by = confirmed_by.get(fields["kind"], self.operator_name)
            self.confirmations.append({k: fields[k] for k in ("kind", "message", "reason")} | {"by": by})
            self.rec.warning("soft_limit_confirmed", operator=by, **fields)
        return order, entry

    async def _confirm_new_patient(self) -> None:
        """A new patient id near a recorded one may be a typo that would start a second course, hidden
        from the course rules: it proceeds only with the operator's reason (``new_patient``)."""
        patient_id = self.ctx.patient.patient_id
        finding = new_patient_finding(self.ctx.course, patient_id)
        if finding is None:
            return
        message = finding.message
        question, future = self._ask_later("soft_limit", NEW_PATIENT, message)
        reason = await future
        if not isinstance(reason, str) or not reason.strip():
            self.rec.error("new_patient_not_confirmed", patient=patient_id, near=list(finding.near))
            raise SessionAbortedError("precheck", f"{message} Not confirmed with a reason (new_patient)")
        by = self._by(question)
        self.confirmations.append({"kind": "new_patient", "message": message, "reason": reason, "by": by})
        self.rec.warning(
            "soft_limit_confirmed", kind="new_patient", message=message, reason=reason, operator=by
        )

    def _by(self, question: Question) -> str | None:
        """Who answered ``question`` (a standing answer is the session operator's)."""
        return self._answered_by.get(question.question_id, self.operator_name)

    async def _baseline(self) -> None:
        """Waits for a first reading of every watched channel (at most two BP intervals) and records it
        as the baseline; a baseline above the warning levels needs a confirmation with a reason."""
        ctx = self.ctx
        channels = set(self.thresholds.channels())
        readings: list[VitalsSample] = []
        deadline = self._t() + max(self.thresholds.stale_after_s(c) for c in channels)
        while channels - {s.channel for s in readings}:
            if self._t() > deadline:
                missing = sorted(channels - {s.channel for s in readings})
                self.rec.error("baseline_missing", channels=missing)
                raise SessionAbortedError("precheck", f"no baseline reading of {', '.join(missing)}")
            readings += ctx.vitals.poll(self._t())
            if channels - {s.channel for s in readings}:
                self._stop_if_asked("precheck")
                self._idle_tick(None)
                await ctx.clock.sleep_until(ctx.clock.now() + OBSERVATION_STEP_S)
        baseline = VitalsBaseline.from_samples(readings, self.thresholds.channels())
        self.gate = VitalsGate(self.thresholds, baseline)
        self._latest = {s.channel: s.value for s in readings}
        self.rec.info("baseline_recorded", **baseline.model_dump(exclude_none=True))
        watched = self.thresholds.channels()
        self._event(
            BaselineRecorded,
            baseline={c: v for c in watched if (v := baseline.value(c)) is not None},
            limits={c: self.gate.limits(c) for c in watched},
            rise_max_pct={c: r for c in watched if (r := self.thresholds.rise_max_pct(c)) is not None},
            band_pct=ctx.protocol.observation.band_pct,
        )
        # A patient already past a limit is not started: the gate would never see the crossing "arrive".
        # (The alarm delay of a continuous channel is not waited out here: at rest there is no artefact
        # to ride out that a second reading would not show, and nothing has been given yet.)
        out_of_range = self.gate.out_of_range(readings)
        self.gate.update(self._t(), readings)
        for alarm in out_of_range:
            self._vitals_alarm(alarm, "precheck", record=False)
        if out_of_range:
            details = "; ".join(a.detail for a in out_of_range)
            raise SessionAbortedError("precheck", f"vitals out of range at baseline: {details}")
        for warning in self.gate.baseline_warnings():
            question, future = self._ask_later("baseline_vitals", "baseline_vitals", warning)
            reason = await future
            if not isinstance(reason, str) or not reason.strip():
                self.rec.error("baseline_refused", warning=warning)
                raise SessionAbortedError("precheck", f"{warning}, not confirmed")
            by = self._by(question)
            self.confirmations.append(
                {"kind": "baseline_vitals", "message": warning, "reason": reason, "by": by}
            )
            self.rec.warning(
                "soft_limit_confirmed", kind="baseline_vitals", message=warning, reason=reason, operator=by
            )

    async def _discharge(self) -> bool:
        """The discharge: refused (not confirmed, an alarm naming what is missing) while the observation
        ended before the vitals were back within the band and no operator gave a reason for it; else
        its checklist, then the sitter recorded for the session (a protocol's ``checklists.sitter``)."""
        checklists = self.ctx.protocol.checklists
        unsettled = self._observation_unsettled
        if unsettled is not None:
            question, future = self._ask_later("soft_limit", OBSERVATION_INCOMPLETE, unsettled)
            reason = await future
            if not isinstance(reason, str) or not reason.strip():
                why = (
                    f"discharge cannot be confirmed: {unsettled}, and no operator's reason "
                    f"was given (confirm {OBSERVATION_INCOMPLETE}=REASON)"
                )
                self.rec.error("discharge_refused", why=why)
                self.alarms.append(
                    {
                        "t_min": self._t() / 60.0,
                        "source": "discharge",
                        "code": "discharge_refused",
                        "why": why,
                    }
                )
                self._alarm_event("discharge", "discharge_refused", why)
                return False
            by = self._by(question)
            self.confirmations.append(
                {"kind": OBSERVATION_INCOMPLETE, "message": unsettled, "reason": reason, "by": by}
            )
            self.rec.warning(
                "soft_limit_confirmed",
                kind=OBSERVATION_INCOMPLETE,
                message=unsettled,
                reason=reason,
                operator=by,
            )
        confirmed = await self._checklist("discharge", checklists.discharge, abort=False)
        if not checklists.sitter:
            return confirmed
        sitter = self.ctx.sitter
        if sitter is None:
            self._not_confirmed("discharge", SITTER_ITEM, "no sitter's name and phone were recorded")
            return False
        self.rec.info("sitter_recorded", name=sitter.name, phone=sitter.phone)
        return await self._checklist("discharge", [sitter.item], abort=False) and confirmed

    async def _checklist(self, name: str, items: Sequence[str], *, abort: bool) -> bool:
        """Asks every item; returns whether all were confirmed. An unconfirmed item aborts the session
        (``abort``: the pre-check, nothing delivered yet) or is an alarm for the clinician (discharge)."""
        confirmed = True
        for item in items:
            question, future = self._ask_later("checklist", name, item)
            answer = await future is True
            self.rec.info(
                "checklist_answered", checklist=name, item=item, confirmed=answer, operator=self._by(question)
            )
            if not answer and abort:
                raise SessionAbortedError(name, f"checklist item not confirmed: {item}")
            if not answer:
                confirmed = False
                self._not_confirmed(name, item)
        return confirmed

    def _not_confirmed(self, name: str, item: str, why: str = "") -> None:
        """A checklist item not confirmed (``why``: it could not be asked): an alarm for the clinician."""
        self.rec.error("checklist_not_confirmed", checklist=name, item=item, **({"why": why} if why else {}))
        alarm = {
            "t_min": self._t() / 60.0,
            "source": "checklist",
            "code": f"{name}_not_confirmed",
            "item": item,
        }
        self.alarms.append(alarm | ({"why": why} if why else {}))
        self._alarm_event("checklist", f"{name}_not_confirmed", f"{item}: {why}" if why else item)

    def _stop_if_asked(self, phase: str) -> None:
        """An operator stop before the infusion starts aborts the session: nothing is delivered."""
        if self._outside_infusion(phase):
            self.rec.warning("operator_stop_requested", phase=phase)
            raise SessionAbortedError(phase, "stopped by the operator")

    def _max_duration_s(self, plan: DosePlan, entry: druglib.DrugEntry) -> tuple[float | None, float | None]:
        """The infusion's maximum duration (s): the protocol's, never past the drug library's hard
        maximum; and that hard maximum (``None``: no such limit)."""
        hard_min = entry.duration_min.hard_max
        hard = hard_min * 60.0 if hard_min is not None else None
        own = plan.max_duration_min * 60.0 if plan.max_duration_min is not None else None
        if own is None:
            return hard, hard
        if hard is not None and own > hard:
            self.rec.warning(
                "max_duration_capped", protocol_min=plan.max_duration_min, drug_library_hard_max_min=hard_min
            )
            return hard, hard
        return own, hard

    async def _infuse(
        self, plan: DosePlan, order: druglib.Order, entry: druglib.DrugEntry
    ) -> tuple[RunResult, str | None]:
        """The infusion, to its end; returns the run and why the session itself stopped it, if it did."""
        ctx = self.ctx
        # The drug library's limits come last: nothing the transport set-up passes can loosen them.
        settings = {
            **ctx.loop_settings,
            **druglib.kernel_overrides(entry, order),
            "concentration_mg_per_ml": plan.concentration_mg_per_ml,
            "syringe_diameter_mm": plan.syringe_diameter_mm,
            "syringe_capacity_ml": plan.syringe_capacity_ml,
            # A dose of several syringes: each is filled to its capacity (the kernel's limits are the
            # whole dose's, its syringe level each syringe's).
            "syringe_fill_ml": min(plan.syringe_fill_ml, plan.syringe_capacity_ml),
        }
        config = kernel_config(**settings)
        occlusion_threshold = float(config.as_dict()["occlusion_threshold_mmhg"])
        loop = ControlLoop(ctx.driver, config, ctx.clock, self.rec, on_tick=None)
        max_s, hard_max_s = self._max_duration_s(plan, entry)
        tick = _InfusionTicks(
            plan,
            volumes=deque(),
            holds=Holds(self.thresholds.resume, self.thresholds.resume_after_s),
            rate_ml_h=plan.rate_at(0.0),
            max_s=max_s,
            hard_max_s=hard_max_s,
        )
        shares = plan.syringe_volumes_ml
        if len(shares) > 1:
            tick.syringe = _SyringeChange(
                boundaries_ml=tuple(itertools.accumulate(shares[:-1])), fill_ml=plan.syringe_capacity_ml
            )
            self.rec.info("syringes_planned", syringes=len(shares), volumes_ml=list(shares))
        self._phase(Phase.TAKE_UP if ctx.protocol.take_up.enabled else Phase.INFUSION)

        def on_tick(out: _core.StepOutput, telemetry: PumpTelemetry | None) -> None:
            t = self._t()
            self._delivered_ml = out.delivered_ml
            tick.last_state, tick.last_delivered_ml = out.state, out.delivered_ml
            tick.last_remaining_ml = out.remaining_ml
            if tick.started_s is None:
                tick.started_s = t
                if isinstance(ctx.vitals, ScriptedMonitor):
                    ctx.vitals.mark_infusion_start(t)  # the simulated patient responds from now
            if self.phases[-1][0] == Phase.TAKE_UP and (self.rec.take_up_done or out.delivered_ml > 0.01):
                self._phase(Phase.INFUSION)
            if telemetry is not None:
                tick.volumes.append((t, telemetry.volume_ml))
                while tick.volumes and tick.volumes[0][0] < t - RATE_WINDOW_S:
                    tick.volumes.popleft()
            planned_rate = plan.planned_rate_for_ml(out.delivered_ml)
            holds = tick.holds
            clear = holds.clear_since_s
            if self.stream.subscribed:  # the tick's event, built for its readers only
                self._tick(
                    pump_state=out.state,
                    delivered_ml=out.delivered_ml,
                    planned_ml=plan.volume_ml,
                    delivered_mg=out.delivered_ml * plan.concentration_mg_per_ml,
                    programmed_mg=plan.planned_ml(max(t - tick.started_s, 0.0))
                    * plan.concentration_mg_per_ml,
                    commanded_rate_ml_h=out.rate_ml_h if out.direction == "forward" else 0.0,
                    measured_rate_ml_h=_measured_rate_ml_h(tick.volumes),
                    pressure_mmhg=telemetry.pressure_mmhg if telemetry is not None else math.nan,
                    occlusion_threshold_mmhg=occlusion_threshold,
                    alarms=tuple(out.alarms),
                    paused_by=holds.holders,
                    planned_rate_ml_h=planned_rate,
                    programmed_rate_ml_h=tick.rate_ml_h,
                    vitals_clear_s=t - clear if clear is not None and VITALS in holds.holders else None,
                )
            self._gate_infusion(loop, tick, out, t)
            for cmd in self._take_commands():
                self._infusion_command(loop, tick, cmd, out, t)
            self._watch_duration(loop, tick, out, t)
            if tick.syringe is not None:
                self._watch_syringe(loop, tick, tick.syringe, out, t)
            # A phase's ramp or taper follows the delivered volume, so a pause shifts it, not skips it; a
            # slow-down scales it. Never faster than the plan.
            if out.state == "running":
                rate = tick.pace.rate(planned_rate)
                if abs(rate - tick.rate_ml_h) > SCHEDULE_DEADBAND * tick.rate_ml_h:
                    tick.rate_ml_h = rate
                    loop.request_rate(rate, "protocol phase schedule")
            if t >= tick.next_point_s:
                tick.next_point_s = t + SERIES_EVERY_S
                self._point(
                    t,
                    out=out,
                    telemetry=telemetry,
                    tick=tick,
                    threshold=occlusion_threshold,
                    planned_rate=planned_rate,
                )

        loop.on_tick = on_tick
        ip = InfusionPlan(
            rate_ml_h=plan.rate_at(0.0),
            volume_ml=plan.volume_ml,
            syringe_diameter_mm=plan.syringe_diameter_mm,
            take_up=ctx.protocol.take_up.enabled,
            syringes=len(shares),
        )
        self._control = loop
        try:
            run = await loop.run(ip)
        finally:
            self._control = None
            if tick.max_question is not None and not tick.max_question[1].done():
                tick.max_question[1].cancel()  # the infusion ended: nothing left to decide
            asked = tick.syringe.question if tick.syringe is not None else None
            if asked is not None and not asked[1].done():
                asked[1].cancel()
        if not self.points:  # ended before its first tick (an interlock at the start): one point
            self.points.append(self._idle_point(self._t(), 0.0, 0.0, occlusion_threshold))
        # One source for the delivered dose: the run's final measure (after an alarm's back-off it is
        # below the last tick's) closes the series, so report, plots and the summary print one number.
        self._delivered_ml = run.session_delivered_ml
        final_mg = run.session_delivered_ml * plan.concentration_mg_per_ml
        last = self.points[-1]
        if final_mg != last.delivered_mg:
            self.points.append(
                self._idle_point(max(self._t(), last.t_s), last.programmed_mg, final_mg, last.threshold_mmhg)
            )
        raised = {code: t for t, code in reversed(self.rec.raised)}  # each alarm at its first raising
        for code in run.alarms + run.pump_alarms:
            t = raised.get(code, self._t())
            record = {"t_min": t / 60.0, "source": "pump", "phase": "infusion", "code": code}
            self.alarms.append(record)
            at = self._calendar_at(self.t0 + t)
            self._course_write(
                "alarm", ctx.course.record_alarm, ctx.session_id, at, code, run.detail or run.reason
            )
        return run, tick.stop_cause

    def _infusion_command(
        self, loop: ControlLoop, tick: _InfusionTicks, cmd: OperatorCommand, out: _core.StepOutput, t: float
    ) -> None:
        """An operator command during the infusion: handed to the control loop (and so to the kernel)."""
        action = cmd.action
        if action == "stop" and self._stopping:
            # A second SIGINT, a double click: recorded, never escalated into anything else.
            self._acted(cmd, accepted=False, why="the pump is already stopping; the observation follows")
        elif action == "stop":
            self.rec.info(
                "operator_stop_requested", reason=cmd.reason, source=cmd.source, operator=cmd.operator
            )
            self._stopping = True
            loop.request_stop()
            self._acted(cmd, accepted=True)
        elif action == "end_observation":
            self._acted(cmd, accepted=False, why="no observation is running (infusion)")
        elif action == "acknowledge":
            self._acknowledged(cmd)
        elif action in {"record_observation", "give_medication"}:
            self._observed(cmd)
        elif out.state not in _INFUSING:
            self._acted(cmd, accepted=False, why=f"the pump is not infusing ({out.state})")
        elif action == "pause":
            change = tick.holds.operator_pause()
            if change.accepted:
                if change.kernel == "pause":
                    loop.request_pause(f"operator: {cmd.reason}")
                self.pauses.append(
                    {"t_min": t / 60.0, "by": "operator", "who": cmd.operator, "reason": cmd.reason}
                )
                self._held(change, OPERATOR, cmd.reason, cmd.operator)
            self._acted(cmd, accepted=change.accepted, why=change.why, detail={"holders": list(change.left)})
        elif action == "resume":
            assert self.gate is not None
            active = self.gate.active()
            detail = "; ".join(a.detail for a in active)
            change = tick.holds.operator_resume(vitals_active=bool(active), active_detail=detail)
            if change.accepted:
                if change.kernel == "resume":
                    loop.request_resume(f"operator: {cmd.reason}" if cmd.reason else "operator")
                self._held(change, OPERATOR, cmd.reason, cmd.operator)
            self._acted(
                cmd,
                accepted=change.accepted,
                why=change.why,
                detail={"released": list(change.released), "holders": list(change.left)},
            )
        elif action == "slow":
            self._slow(loop, tick, cmd, out, t)
        else:  # restore_rate
            if not tick.pace.slowed:
                self._acted(cmd, accepted=False, why="not slowed")
                return
            tick.pace = PLAN
            planned = tick.plan.planned_rate_for_ml(out.delivered_ml)
            tick.rate_ml_h = planned
            loop.request_rate(planned, f"operator restored the plan's rate: {cmd.reason}".rstrip(": "))
            self._acted(cmd, accepted=True, detail=self._replan(tick, out, t))

    def _slow(
        self, loop: ControlLoop, tick: _InfusionTicks, cmd: OperatorCommand, out: _core.StepOutput, t: float
    ) -> None:
        """A slow-down: a new pace, through the kernel's rate path, and the rest of the dose re-planned."""
        planned = tick.plan.planned_rate_for_ml(out.delivered_ml)
        fraction, cap = cmd.args.get("to_fraction"), cmd.args.get("to_rate_ml_h")
        if cap is not None and cap >= planned:
            self._acted(
                cmd, accepted=False, why=f"{cap:g} mL/h is not slower than the plan's {planned:.3g} mL/h"
            )
            return
        tick.pace = Pace(fraction=fraction) if fraction is not None else Pace(cap_ml_h=cap)
        rate = tick.pace.rate(planned)
        tick.rate_ml_h = rate
        loop.request_rate(rate, f"operator slowed to {tick.pace.describe()}: {cmd.reason}")
        self._acted(cmd, accepted=True, detail=self._replan(tick, out, t))

    def _replan(self, tick: _InfusionTicks, out: _core.StepOutput, t: float) -> dict[str, Any]:
        """When the infusion now ends at its pace, and what the maximum duration would leave ungiven."""
        plan, pace = tick.plan, tick.pace
        elapsed = t - (tick.started_s if tick.started_s is not None else t)
        ends_s = elapsed + time_to_finish(plan, out.delivered_ml, pace)
        info: dict[str, Any] = {
            "pace": pace.describe(),
            "rate_ml_h": tick.rate_ml_h,
            "ends_at_min": ends_s / 60.0,
            "max_min": tick.max_s / 60.0 if tick.max_s is not None else None,
        }
        if tick.max_s is not None and ends_s > tick.max_s:
            within = volume_within(plan, out.delivered_ml, pace, tick.max_s - elapsed)
            short_ml = max(plan.volume_ml - out.delivered_ml - within, 0.0)
            if short_ml > END_OF_DOSE_ML:
                info["not_given_by_max_mg"] = short_ml * plan.concentration_mg_per_ml
        self.rec.info("infusion_replanned", **info)
        return info

    def _watch_duration(
        self, loop: ControlLoop, tick: _InfusionTicks, out: _core.StepOutput, t: float
    ) -> None:
        """At the maximum duration the pump is held and the operator asked whether to continue (to the
        drug library's hard maximum) or stop; at the hard maximum it stops."""
        if tick.max_s is None or tick.started_s is None or out.state not in _INFUSING:
            return
        if tick.max_question is not None:
            question, future = tick.max_question
            if future.done():
                tick.max_question = None
                self._max_duration_answered(loop, tick, future.result(), self._by(question))
            return
        if t - tick.started_s < tick.max_s or LIMIT in tick.holds.holders or tick.stop_cause is not None:
            return
        short_ml = max(out.remaining_ml, 0.0)
        if short_ml <= END_OF_DOSE_ML:
            return  # the dose is in: the kernel ends it at this tick
        plan = tick.plan
        short_mg = short_ml * plan.concentration_mg_per_ml
        reached = f"maximum duration ({tick.max_s / 60.0:g} min) reached"
        not_given = f"{short_mg:.2f} mg ({100.0 * short_ml / plan.volume_ml:.1f} %) not given"
        change = tick.holds.limit_hold()
        if change.kernel == "pause":
            loop.request_pause(reached)
        self._held(change, "protocol", f"{reached}; {not_given}")
        self._automatic("hold", "protocol", f"{reached}; {not_given}", not_given_mg=short_mg)
        self.rec.warning("max_duration_reached", max_min=tick.max_s / 60.0, not_given_mg=short_mg)
        self.alarms.append(
            {"t_min": t / 60.0, "source": "protocol", "code": "max_duration_reached", "detail": not_given}
        )
        self._alarm_event("protocol", "max_duration_reached", f"{reached}; {not_given}")
        at = self._calendar()
        self._record(
            "alarm",
            lambda: self.ctx.course.record_alarm(self.session_id, at, "max_duration_reached", not_given),
            code="max_duration_reached",
        )
        if tick.hard_max_s is not None and tick.max_s >= tick.hard_max_s:
            self._stop_at_max(loop, tick, f"{reached}: the drug library's hard maximum; {not_given}")
            return
        further = f"{tick.hard_max_s / 60.0:g} min" if tick.hard_max_s is not None else "the end of the dose"
        text = (
            f"The infusion reached its maximum duration ({tick.max_s / 60.0:g} min) with {not_given}. "
            f"Continue to {further} (give a reason), or stop here?"
        )
        tick.max_question = self._ask_later("max_duration", "max_duration", text)

    def _max_duration_answered(
        self, loop: ControlLoop, tick: _InfusionTicks, answer: Answer, by: str | None
    ) -> None:
        if not isinstance(answer, str):
            self._stop_at_max(loop, tick, "maximum duration reached: the operator stopped the infusion there")
            return
        tick.max_s = tick.hard_max_s
        message = "continued past the protocol's maximum duration"
        self.confirmations.append({"kind": "max_duration", "message": message, "reason": answer, "by": by})
        self.rec.warning(
            "soft_limit_confirmed", kind="max_duration", reason=answer, operator=by, message=message
        )
        at = self._calendar()
        self._record(
            "override",
            lambda: self.ctx.course.record_override(
                self.ctx.patient.patient_id, self.session_id, "max_duration", answer, at, who=by
            ),
            kind="max_duration",
        )
        change = tick.holds.limit_release()
        if change.kernel == "resume":
            loop.request_resume("continued past the maximum duration")
        self._held(change, "protocol", f"continued: {answer}", by)
        self._automatic("release", "protocol", f"continued past the maximum duration: {answer}")

    def _watch_syringe(
        self, loop: ControlLoop, tick: _InfusionTicks, change: _SyringeChange, out: _core.StepOutput, t: float
    ) -> None:
        """A dose of several syringes: once a syringe has given its planned share the pump is paused
        (by its own hold, which no operator's resume or vitals release lifts), the kernel told the
        syringe comes out, and the operator asked to load the next one; once they confirm, the new
        syringe goes in (the simulator loads it on ``sim://``), the kernel takes it and the infusion
        resumes with the new syringe's take-up. Declining stops the infusion there. One stage per tick:
        each waits for the kernel state the previous one asked for."""
        if tick.stop_cause is not None or self._stopping:
            return
        if change.stage is None:
            due = (
                change.index < len(change.boundaries_ml)
                and out.delivered_ml >= change.boundaries_ml[change.index]
            )
            if due and out.state == "running":
                hold = tick.holds.syringe_hold()
                if hold.kernel == "pause":
                    loop.request_pause(f"syringe {change.index + 1} of {change.count} has given its share")
                self._held(hold, "protocol", f"syringe {change.index + 1} of {change.count} spent")
                self.rec.info("syringe_spent", syringe=change.index + 1, delivered_ml=out.delivered_ml)
                change.stage = "pausing"
        elif change.stage == "pausing" and out.state == "paused" and out.direction == "hold":
            loop.request_syringe_change(f"syringe {change.index + 1} of {change.count} comes out")
            change.stage = "changing"
        elif change.stage == "changing" and out.state == "syringe_change":
            text = (
                f"Syringe {change.index + 1} of {change.count} has given its share "
                f"({out.delivered_ml:.1f} of {tick.plan.volume_ml:.1f} mL). Load syringe "
                f"{change.index + 2} ({change.fill_ml:g} mL, {tick.plan.syringe}, "
                f"{tick.plan.concentration_mg_per_ml:g} mg/mL) and confirm; decline to stop the infusion."
            )
            self._automatic("syringe_change", "protocol", text, syringe=change.index + 2)
            change.question = self._ask_later("syringe_change", f"syringe {change.index + 2}", text)
            change.stage = "asking"
        elif change.stage == "asking" and change.question is not None and change.question[1].done():
            question, future = change.question
            change.question = None
            change.by = self._by(question)
            if future.result() is not True:
                why = f"syringe {change.index + 2} not loaded: the operator stopped the infusion"
                tick.stop_cause = "syringe_change"
                self.rec.warning("syringe_change_declined", syringe=change.index + 2, operator=change.by)
                self._automatic("stop", "protocol", why)
                loop.request_stop(by="protocol")
                return
            change.loading = asyncio.ensure_future(self.ctx.driver.simulate_syringe_change())
            change.stage = "loading"
        elif change.stage == "loading" and change.loading is not None and change.loading.done():
            try:
                change.simulated = change.loading.result()
            except Exception as e:  # the simulated pump refused: stop, never resume on the old syringe
                tick.stop_cause = "syringe_change"
                self.rec.error("syringe_load_failed", error=str(e))
                loop.request_stop(by="protocol")
                return
            loop.request_syringe_loaded(change.fill_ml, f"syringe {change.index + 2} loaded")
            change.stage = "loaded"
        elif change.stage == "loaded" and out.state == "paused":
            record = {
                "t_min": t / 60.0,
                "syringe": change.index + 2,
                "of": change.count,
                "delivered_ml": out.delivered_ml,
                "fill_ml": change.fill_ml,
                "by": change.by,
                "simulated": change.simulated,
            }
            self.syringe_changes.append(record)
            self.rec.info("syringe_changed", **record)
            release = tick.holds.syringe_release()
            if release.kernel == "resume":
                loop.request_resume(f"syringe {change.index + 2} loaded: take-up, then the plan's rate")
            self._held(release, "protocol", f"syringe {change.index + 2} loaded", change.by)
            change.index += 1
            change.stage = None

    def _stop_at_max(self, loop: ControlLoop, tick: _InfusionTicks, why: str) -> None:
        tick.stop_cause = "max_duration"
        self.rec.warning("infusion_stopped_at_max_duration", why=why)
        self._automatic("stop", "protocol", why)
        loop.request_stop(by="protocol")

    def _gate_infusion(
        self, loop: ControlLoop, tick: _InfusionTicks, out: _core.StepOutput, t: float
    ) -> None:
        """Vitals during the infusion: an active condition holds the pump (alongside an operator's pause,
        never taking it over); once every condition has cleared, the vitals' hold is released as the
        protocol says, and never anyone else's."""
        assert self.gate is not None
        for alarm in self._poll_vitals():
            self._vitals_alarm(alarm, "infusion")
        self._follow_up_cuff()
        if out.state not in _INFUSING:
            return
        active = self.gate.active()
        change = tick.holds.vitals(active=bool(active), now_s=t)
        if change.added == VITALS:
            detail = "; ".join(a.detail for a in active)
            if change.kernel == "pause":
                loop.request_pause(f"vitals: {detail}")
            else:
                self.rec.warning("pause_held_by_vitals", reason=detail, holders=list(change.left))
            self.pauses.append({"t_min": t / 60.0, "by": "vitals", "reason": detail})
            self._held(change, VITALS, detail)
            self._automatic("hold", "vitals", detail, holders=list(change.left))
        elif VITALS in change.released:
            why = f"vitals within limits for {self.thresholds.resume_after_s:g} s (vitals.resume = auto)"
            if change.kernel == "resume":
                loop.request_resume(why)
            self._held(change, VITALS, why)
            self._automatic("release", "vitals", why, holders=list(change.left))
        # The operator's standing rule: vitals that stay out of range this long end the infusion. Only the
        # time a condition is active counts (once clear, waiting for the operator's resume is not theirs).
        if not active or VITALS not in tick.holds.holders:
            tick.vitals_active_since_s = None
            return
        if tick.vitals_active_since_s is None:
            tick.vitals_active_since_s = t
        since = tick.vitals_active_since_s
        if tick.stop_cause is None and self.ctx.operator.stop_after_pause(t - since):
            minutes = (t - since) / 60.0
            tick.stop_cause = "vitals"
            self.rec.warning("infusion_abandoned", paused_min=minutes)
            self._automatic("stop", "vitals", f"the vitals kept the infusion paused for {minutes:.1f} min")
            self._stopping = True
            loop.request_stop(by="vitals")

    def _point(
        self,
        t: float,
        *,
        out: _core.StepOutput,
        telemetry: PumpTelemetry | None,
        tick: _InfusionTicks,
        threshold: float,
        planned_rate: float,
    ) -> None:
        plan = tick.plan
        measured = _measured_rate_ml_h(tick.volumes)
        started = self.phases[1][1] if len(self.phases) > 1 else 0.0
        self.points.append(
            SeriesPoint(
                t_s=t,
                phase=self.phases[-1][0],
                programmed_mg=plan.planned_ml(max(t - started, 0.0)) * plan.concentration_mg_per_ml,
                delivered_mg=out.delivered_ml * plan.concentration_mg_per_ml,
                commanded_rate_ml_h=out.rate_ml_h if out.direction == "forward" else 0.0,
                measured_rate_ml_h=measured,
                pressure_mmhg=telemetry.pressure_mmhg if telemetry is not None else math.nan,
                threshold_mmhg=threshold,
                planned_rate_ml_h=planned_rate,
                programmed_rate_ml_h=tick.rate_ml_h,
                held_by="+".join(tick.holds.holders),
                **self._vitals_now(),
            )
        )

    def _idle_point(
        self, t: float, programmed_mg: float, delivered_mg: float, threshold: float
    ) -> SeriesPoint:
        """A point of the series while the pump is not infusing (observation, an infusion that never
        started)."""
        return SeriesPoint(
            t_s=t,
            phase=self.phases[-1][0],
            programmed_mg=programmed_mg,
            delivered_mg=delivered_mg,
            commanded_rate_ml_h=0.0,
            measured_rate_ml_h=0.0,
            pressure_mmhg=math.nan,
            threshold_mmhg=threshold,
            **self._vitals_now(),
        )

    def _vitals_now(self) -> dict[str, Any]:
        return {ch: self._latest.get(ch, math.nan) for ch in CHANNELS}

    async def _observe(self, plan: DosePlan) -> float:
        """Observation: at least ``min_minutes`` and until every channel is within the band of its
        baseline; at ``max_minutes`` it ends with a logged warning for the clinician."""
        ctx = self.ctx
        spec = ctx.protocol.observation
        self._phase(Phase.OBSERVATION)
        start = self._t()
        last_delivered = self.points[-1].delivered_mg if self.points else 0.0
        programmed = self.points[-1].programmed_mg if self.points else 0.0
        threshold = self.points[-1].threshold_mmhg if self.points else math.nan
        next_point = start
        assert self.gate is not None
        while True:
            await ctx.clock.sleep_until(ctx.clock.now() + OBSERVATION_STEP_S)
            t = self._t()
            for alarm in self._poll_vitals():
                self._vitals_alarm(alarm, "observation")
            self._follow_up_cuff()
            elapsed_min = (t - start) / 60.0
            if self._outside_infusion("observation"):
                taken = self._observation_ended_by
                assert taken is not None
                self.rec.warning(
                    "observation_ended",
                    minutes=elapsed_min,
                    why=f"ended early by the operator: {taken.reason}",
                    source=taken.source,
                    operator=taken.operator,
                )
                self.alarms.append(
                    {"t_min": t / 60.0, "source": "observation", "code": "observation_ended_early"}
                )
                self._alarm_event("observation", "observation_ended_early", taken.reason)
                return elapsed_min
            settled = self.gate.within_band(spec.band_pct) and not self.gate.active()
            ending = (elapsed_min >= spec.min_minutes and settled) or elapsed_min >= spec.max_minutes
            if t >= next_point or ending:
                next_point = t + SERIES_EVERY_S
                self.points.append(self._idle_point(t, programmed, last_delivered, threshold))
            self._idle_tick(plan)
            if elapsed_min >= spec.min_minutes and settled:
                self.rec.info(
                    "observation_ended", minutes=elapsed_min, why="minimum elapsed, vitals within band"
                )
                return elapsed_min
            if elapsed_min >= spec.max_minutes:
                self.rec.warning(
                    "observation_ended",
                    minutes=elapsed_min,
                    why="maximum reached with vitals still out of band: the clinician decides",
                )
                self.alarms.append(
                    {"t_min": t / 60.0, "source": "observation", "code": "vitals_not_back_in_band"}
                )
                self._observation_unsettled = (
                    f"the observation ended at its maximum ({spec.max_minutes:g} min) with the vitals not "
                    f"back within ±{spec.band_pct:g} % of baseline"
                )
                self._alarm_event("observation", "vitals_not_back_in_band", "maximum observation reached")
                return elapsed_min


def _command_scope(action: str) -> str:
    """What must be running for ``action`` to apply, for a refusal's reason."""
    return "observation" if action == "end_observation" else "infusion"


def _session_operator(ctx: SessionContext) -> str | None:
    """The session's operator, checked; ``None`` only where the protocol allows anonymous QA runs."""
    if ctx.operator_name is None:
        if not ctx.protocol.session.allow_anonymous:
            raise ConfigurationError(
                "operator",
                f"is required: protocol {ctx.protocol.name!r} does not allow a session without its "
                "operator's name (session.allow_anonymous is for QA runs)",
            )
        return None
    try:
        return check_operator_name(ctx.operator_name)
    except ValueError as e:
        raise ConfigurationError("operator", str(e)) from None


def _measured_rate_ml_h(volumes: deque[tuple[float, float]]) -> float:
    """The rate the pump's volume counter shows over the window (NaN until it spans some time)."""
    if len(volumes) >= 2 and volumes[-1][0] > volumes[0][0]:
        (ta, va), (tb, vb) = volumes[0], volumes[-1]
        return (vb - va) / (tb - ta) * 3600.0
    return math.nan


def check_order(
    plan: DosePlan,
    patient: Patient,
    library: druglib.DrugLibrary,
    course: CourseHistory | None,
    at: datetime.datetime,
) -> tuple[druglib.Order, druglib.DrugEntry, list[druglib.LimitFinding]]:
    """The order ``plan`` makes for ``patient`` starting at ``at``, with the totals of the patient's
    course (none: a new patient, or no history), its drug's library entry and every finding the Rust
    core reports against it. What the session's pre-check refuses or asks a reason for; a face may ask
    it before starting (:func:`ketapump.clinical.runner.check_session`). Writes nothing."""
    entry = library.drug(plan.drug)
    history = course
    if course is not None:
        try:
            course.patient(patient.patient_id)
        except CourseRecordNotFoundError:
            history = None  # a new patient: this is the course's first session (recorded once it starts)
    order = druglib.order_for(plan, patient, history, at if history else None, entry=entry)
    return order, entry, druglib.review(entry, plan, order)


#: The kind of the new-patient finding (``--confirm new_patient=REASON``).
NEW_PATIENT: Final = "new_patient"


@dataclass(frozen=True)
class NewPatientFinding:
    """A patient id the course history does not hold, one typo from ids it does: a second course that
    would hide the first from the course rules, or a new patient. A soft finding: it proceeds only with
    a reason (``new_patient``)."""

    patient_id: str
    #: The recorded ids it is near.
    near: tuple[str, ...]
    kind: str = NEW_PATIENT
    severity: str = "soft"

    @property
    def message(self) -> str:
        near = ", ".join(self.near)
        return (
            f"patient {self.patient_id} is not in the course history, but {near} "
            f"{'is' if len(self.near) == 1 else 'are'}: a new patient, or a typo (the course rules would "
            "not count the other's sessions)?"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "patient_id": self.patient_id,
            "near": list(self.near),
        }


def new_patient_finding(course: CourseHistory, patient_id: str) -> NewPatientFinding | None:
    """The new-patient finding for ``patient_id`` against ``course`` (see :class:`NewPatientFinding`);
    ``None`` for a recorded patient or a new one near nobody. Reads the history, writes nothing."""
    try:
        course.patient(patient_id)
    except CourseRecordNotFoundError:
        near = course.near_patients(patient_id)
        return NewPatientFinding(patient_id, tuple(near)) if near else None
    return None


def _failed_outcome(error: BaseException) -> str:
    """How a session that raised ended, for its :class:`~ketapump.clinical.events.SessionEnded`."""
    if isinstance(error, LimitError):
        return "refused"
    if isinstance(error, SessionAbortedError):
        return "aborted"
    return "failed"


__all__ = [
    "ACTIONS",
    "NEW_PATIENT",
    "OBSERVATION_INCOMPLETE",
    "PENDING",
    "PUMP_ACTIONS",
    "Action",
    "Answer",
    "NewPatientFinding",
    "Operator",
    "Phase",
    "Question",
    "QuestionKind",
    "ScheduledCommand",
    "ScriptedOperator",
    "Session",
    "SessionAbortedError",
    "SessionContext",
    "SessionResult",
    "check_order",
    "new_patient_finding",
]
