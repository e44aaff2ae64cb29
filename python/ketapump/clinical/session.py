"""The clinical session: from a reviewed plan to a complete, recorded session.

::

    plan ──▶ PRECHECK ──▶ TAKE_UP ──▶ INFUSION ──▶ OBSERVATION ──▶ DISCHARGE ──▶ COMPLETE
             │ limits       │ slack      │ ▲            │ ≥ min_minutes and
             │ baseline     │ taken up   │ │ resume     │ vitals within band
             │ checklist    ▼            ▼ │            │ (or max_minutes: the clinician decides)
             │           (kernel)      PAUSED ◀── vitals alarm, operator pause
             ▼
          ABORTED  ◀── a hard limit, an unconfirmed soft limit or checklist item (nothing delivered)

**One engine, many faces.** :class:`Session` is the only implementation of a clinical session. Commands
go in — :meth:`Session.pause`, :meth:`~Session.resume`, :meth:`~Session.stop`,
:meth:`~Session.acknowledge`, :meth:`~Session.end_observation`, :meth:`~Session.answer` — each with a
reason, its source (``cli``,
``signal``, ``api``, ``web``, ``script``) and the operator's name; typed events come out
(:mod:`ketapump.clinical.events`: phase, tick telemetry, vitals, findings, questions and answers, actions,
alarms, course records, the end) to every subscriber of :meth:`Session.subscribe`. The engine never
prints, never installs signal handlers and knows nothing of typer, HTTP or terminals: the CLI, the
console and the public API are adapters that turn their input into commands and the events into output.
A command is queued and carried out at the next control tick (within one control period); its
:class:`~ketapump.clinical.events.ActionTaken` event says whether it was carried out, or why not.

Questions (a checklist item, a reason for a soft limit) are events too: the session emits
:class:`~ketapump.clinical.events.QuestionAsked` and takes the operator's standing answer
(:meth:`Operator.answer`: a script, the CLI's ``--yes``/``--confirm``), or waits for
:meth:`Session.answer`.

What this module owns, and what it does not:

- **Limits are the Rust core's.** The order (dose, rate, concentration, weight, cumulative windows from
  the course history) is checked by :func:`ketapump.clinical.druglib.check`; hard findings refuse the session,
  soft ones need the operator's confirmation with a reason, which is logged and kept in the course
  history. The kernel runs with the configuration the library entry derives for this patient.
- **The pump is the control loop's** (:class:`ketapump.bridge.loop.ControlLoop`): the session only asks it
  to pause, resume or change rate (a phase's ramp or taper), and every request passes the kernel.
- **Vitals gate the infusion.** Each control tick the feed is polled and the gate updated; a crossing or
  a stale feed pauses the infusion at the next tick (within one control period of the reading) and
  raises an alarm. The operator resumes once the vitals are back within limits.
- **Everything is recorded**: every step, answer, confirmation, alarm and pause goes to the audit log
  (and the course history); the series behind the report's plots is sampled every few seconds.
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
from ketapump.clinical.course import CourseHistory
from ketapump.clinical.events import (
    ActionTaken,
    AlarmRaised,
    EventStream,
    FindingReported,
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
from ketapump.clinical.protocol import DosePlan, Patient, Protocol, plan_dose
from ketapump.clinical.report import SeriesEvent, SeriesPoint
from ketapump.clinical.vitals import (
    CHANNELS,
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
    CourseError,
    CourseRecordNotFoundError,
    KetapumpError,
    LimitError,
    TransportError,
)
from ketapump.wire import PumpDriver, PumpTelemetry

#: Seconds between two points of the report's series.
SERIES_EVERY_S = 5.0
#: Window over which the measured rate is estimated from the plunger (s).
RATE_WINDOW_S = 30.0
#: Observation is checked once a second.
OBSERVATION_STEP_S = 1.0
#: Relative change of the planned rate below which a phase's ramp is not sent to the kernel.
SCHEDULE_DEADBAND = 0.02


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
#: reason to proceed, or ``None`` to decline.
QuestionKind = Literal["checklist", "soft_limit", "baseline_vitals"]
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
    """The person at the chair, as the session sees them: standing answers to its questions, the rules
    for a vitals pause, and commands issued at any time through the session (:meth:`attach`)."""

    def attach(self, session: Session) -> None:
        """Called once as the session starts: the operator may now act through its commands."""

    def answer(self, question: Question) -> Answer | _Pending:
        """The standing answer to ``question``, or :data:`PENDING` to wait for :meth:`Session.answer`."""

    def resume_after_alarm(self, alarm_clear_s: float) -> bool:
        """The vitals have been back within limits for ``alarm_clear_s``: resume the infusion?"""

    def stop_after_pause(self, paused_s: float) -> bool:
        """The infusion has been paused by the vitals for ``paused_s``: stop it for good?"""


@dataclass
class ScriptedOperator:
    """An :class:`Operator` that answers from a script: the demo's, the tests' and the non-interactive
    CLI's operator.

    ``answers`` maps a checklist item to its answer (default: yes); ``reasons`` maps a limit kind to
    the reason given for it (default: decline); ``scheduled`` are ``(infusion_s, "pause"|"resume"|
    "stop", reason)``, issued as commands once the infusion has run that long; after a vitals alarm, the
    infusion is resumed once the vitals have been back within limits for ``resume_after_s`` (``None``:
    never), and stopped for good once it has been paused by the vitals for ``stop_after_s``.
    """

    answers: Mapping[str, bool] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)
    scheduled: Sequence[tuple[float, str, str]] = ()
    resume_after_s: float | None = 60.0
    stop_after_s: float = 1800.0
    _session: Session | None = None
    _pushed: list[tuple[str, str]] = field(default_factory=list)

    def attach(self, session: Session) -> None:
        self._session = session
        pushed, self._pushed = self._pushed, []
        for kind, reason in pushed:
            session.command(kind, reason, source="script")
        if self.scheduled:
            pending = deque(sorted(self.scheduled, key=lambda entry: entry[0]))
            infusion_start: list[float] = []

            def issue_due(event: SessionEvent) -> None:
                if not isinstance(event, Tick) or event.pump_state is None:
                    return
                if not infusion_start:
                    infusion_start.append(event.t_s)
                while pending and pending[0][0] <= event.t_s - infusion_start[0]:
                    _at, kind, reason = pending.popleft()
                    session.command(kind, reason, source="script")

            session.subscribe(issue_due)

    def push(self, kind: str, reason: str) -> None:
        """An operator command from outside the script, before or while the session runs."""
        if self._session is None:
            self._pushed.append((kind, reason))
        else:
            self._session.command(kind, reason, source="script")

    def answer(self, question: Question) -> Answer:
        if question.kind == "checklist":
            return self.answers.get(question.text, True)
        return self.reasons.get(question.subject)

    def resume_after_alarm(self, alarm_clear_s: float) -> bool:
        return self.resume_after_s is not None and alarm_clear_s >= self.resume_after_s

    def stop_after_pause(self, paused_s: float) -> bool:
        return paused_s >= self.stop_after_s


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

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "outcome": self.outcome,
            "programmed_mg": self.programmed_mg,
            "delivered_mg": self.delivered_mg,
            "delivered_ml": self.delivered_ml,
            "error_pct": 100.0 * (self.delivered_mg - self.programmed_mg) / self.programmed_mg,
            "alarms": self.alarms,
            "pauses": self.pauses,
            "confirmations": self.confirmations,
            "phases": [{"phase": p, "start_min": t / 60.0} for p, t in self.phases],
            "baseline": self.baseline,
            "observation_min": self.observation_min,
            "discharge_confirmed": self.discharge_confirmed,
            "plan": self.plan.as_dict(),
        }


class _Recorder:
    """The session's event log: forwards to the audit log, keeps what the report shows, and turns the
    control loop's alarm records into :class:`~ketapump.clinical.events.AlarmRaised` events."""

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
        elif event in {
            "alarm",
            "pump_alarm",
            "vitals_alarm",
            "phase_started",
            "paused",
            "resumed",
            "rate_changed",
        }:
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
    #: UTC time of the clock's zero on the course's calendar (a simulated session runs in virtual time).
    calendar_origin: datetime.datetime
    audit_path: str = ""
    #: Kernel settings that depend on the transport (control period, gains), from the CLI.
    loop_settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _InfusionTicks:
    """What the infusion's per-tick hook carries from one tick to the next."""

    plan: DosePlan
    volumes: deque[tuple[float, float]]
    started_s: float | None = None
    #: Who paused the infusion (``vitals`` or ``operator``), and since when, while it is paused.
    paused_by: str | None = None
    paused_since_s: float = 0.0
    #: Since when every vitals condition has been clear, while paused by the vitals.
    clear_since_s: float | None = None
    rate_ml_h: float = 0.0
    next_point_s: float = 0.0


#: The operator commands the session takes (:meth:`Session.command`).
Action = Literal["pause", "resume", "stop", "acknowledge", "end_observation"]
ACTIONS: Final = ("pause", "resume", "stop", "acknowledge", "end_observation")


@dataclass(frozen=True)
class _Command:
    action: str
    reason: str
    source: Source
    operator: str | None
    accepted: bool = False

    def taken(self, accepted: bool) -> _Command:
        return _Command(self.action, self.reason, self.source, self.operator, accepted)


class Session:
    """The session engine: runs one session, takes commands, emits events (see the module docstring).

    :meth:`run` returns a :class:`SessionResult`, or raises before anything is delivered
    (:class:`~ketapump.errors.LimitRefused`, :class:`~ketapump.errors.ConfirmationRequired`,
    :class:`SessionAbortedError`); every way it ends emits one
    :class:`~ketapump.clinical.events.SessionEnded`.
    """

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.session_id = ctx.session_id
        self.t0 = ctx.clock.now()
        self.stream = EventStream()
        self.rec = _Recorder(ctx.log, ctx.clock, self.t0, self._alarm_event)
        self.thresholds = vitals_thresholds(ctx.protocol.vitals, where="vitals")
        self.phases: list[tuple[str, float]] = []
        self.alarms: list[dict[str, Any]] = []
        self.pauses: list[dict[str, Any]] = []
        self.confirmations: list[dict[str, Any]] = []
        self.points: list[SeriesPoint] = []
        self.gate: VitalsGate | None = None
        #: What the kernel last measured as delivered (mL), for a session that fails mid-infusion.
        self._delivered_ml = 0.0
        self._latest: dict[str, float] = {}
        self._commands: deque[_Command] = deque()
        #: Every command carried out or refused, in order.
        self._actions: list[_Command] = []
        self._questions: dict[str, tuple[Question, asyncio.Future[Answer]]] = {}
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

    # ----- commands in, events out -------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Calls ``subscriber`` with every later event (on the session's event loop); returns the
        function that unsubscribes it."""
        return self.stream.subscribe(subscriber)

    def command(
        self, action: str, reason: str, *, source: Source = "api", operator: str | None = None
    ) -> None:
        """Queues an operator command for the next control tick (safe to call from any thread).

        ``action`` is one of :data:`ACTIONS`; the :class:`~ketapump.clinical.events.ActionTaken` event
        says whether it was carried out. An unknown action is a ``ValueError`` at once."""
        if action not in ACTIONS:
            raise ValueError(f"unknown session command {action!r} (one of {', '.join(ACTIONS)})")
        self._commands.append(_Command(action, reason, source, operator))

    def pause(self, reason: str, *, source: Source = "api", operator: str | None = None) -> None:
        """Pause the infusion (held until the operator resumes it)."""
        self.command("pause", reason, source=source, operator=operator)

    def resume(self, reason: str = "", *, source: Source = "api", operator: str | None = None) -> None:
        """Resume a paused infusion (refused while a vitals condition is active)."""
        self.command("resume", reason, source=source, operator=operator)

    def stop(self, reason: str, *, source: Source = "api", operator: str | None = None) -> None:
        """Stop: before the infusion the session is aborted (nothing delivered); during it the pump
        stops for good and the session goes on to the observation. A stop while the pump is already
        stopping, or during the observation, is recorded and refused: it never shortens the observation."""
        self.command("stop", reason, source=source, operator=operator)

    def end_observation(self, reason: str, *, source: Source = "api", operator: str | None = None) -> None:
        """End the observation before its minimum or before the vitals are back within the band: the
        operator's explicit decision, refused without a reason, recorded with who and why."""
        self.command("end_observation", reason, source=source, operator=operator)

    def acknowledge(self, reason: str = "", *, source: Source = "api", operator: str | None = None) -> None:
        """The operator has seen the latched alarms (recorded; an alarm never clears by itself)."""
        self.command("acknowledge", reason, source=source, operator=operator)

    def answer(self, question_id: str, value: Answer, *, source: Source = "api") -> bool:
        """Answers a pending question (safe to call from any thread); ``False`` if none has that id.

        A checklist question takes ``True`` or ``False``; a soft limit or baseline question a reason (a
        non-blank string) or ``None`` to decline. Any other answer is a ``ValueError``."""
        pending = self._questions.get(question_id)
        if pending is None or self._loop is None:
            return False
        question, future = pending
        if question.kind == "checklist":
            if not isinstance(value, bool):
                raise ValueError(f"question {question_id} (checklist) takes True or False, got {value!r}")
        elif not (value is None or (isinstance(value, str) and value.strip())):
            raise ValueError(f"question {question_id} ({question.kind}) takes a reason or None: {value!r}")

        def settle() -> None:
            if not future.done():
                future.set_result(value)
                self._answered(question, value, source)

        self._loop.call_soon_threadsafe(settle)
        return True

    def pending_questions(self) -> list[Question]:
        """The questions the session is waiting on."""
        return [q for q, f in self._questions.values() if not f.done()]

    def _emit(self, event: SessionEvent) -> None:
        self.stream.emit(event)

    def _take_commands(self) -> list[_Command]:
        taken = []
        while self._commands:
            taken.append(self._commands.popleft())
        return taken

    def _acted(self, cmd: _Command, *, accepted: bool, why: str = "") -> None:
        self._actions.append(cmd.taken(accepted))
        self._emit(
            ActionTaken(
                session_id=self.session_id,
                t_s=self._t(),
                action=cmd.action,
                reason=cmd.reason,
                source=cmd.source,
                operator=cmd.operator,
                accepted=accepted,
                why=why,
            )
        )
        fields = {"reason": cmd.reason, "source": cmd.source, "operator": cmd.operator}
        if accepted:
            self.rec.info("operator_action", action=cmd.action, **fields)
        else:
            self.rec.warning("request_refused", request=cmd.action, why=why, **fields)

    def _acknowledged(self, cmd: _Command) -> None:
        self.rec.info(
            "alarms_acknowledged",
            alarms=[a["code"] for a in self.alarms if "code" in a],
            reason=cmd.reason,
            source=cmd.source,
            operator=cmd.operator,
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
                    self._acted(cmd, accepted=True)
                else:
                    self._acted(cmd, accepted=False, why="ending the observation early needs a reason")
            elif cmd.action == "acknowledge":
                self._acknowledged(cmd)
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
                self._control.request_stop()
            return False
        return True

    async def _ask(self, kind: QuestionKind, subject: str, text: str) -> Answer:
        """Asks the operator; their standing answer, or the one :meth:`answer` brings."""
        question = Question(f"q{next(self._question_ids)}", kind, subject, text)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        # Pending before it is announced: a subscriber may answer while the event is delivered.
        self._questions[question.question_id] = (question, future)
        try:
            self._emit(
                QuestionAsked(
                    session_id=self.session_id,
                    t_s=self._t(),
                    question_id=question.question_id,
                    question=kind,
                    subject=subject,
                    text=text,
                )
            )
            standing = self.ctx.operator.answer(question)
            if not future.done() and not isinstance(standing, _Pending):
                future.set_result(standing)
                self._answered(question, standing, "script")
            return await future
        finally:
            del self._questions[question.question_id]

    def _answered(self, question: Question, value: Answer, source: Source) -> None:
        self._emit(
            QuestionAnswered(
                session_id=self.session_id,
                t_s=self._t(),
                question_id=question.question_id,
                question=question.kind,
                subject=question.subject,
                answer=value,
                source=source,
            )
        )

    def _alarm_event(self, source: str, code: str, detail: str) -> None:
        self._emit(
            AlarmRaised(session_id=self.session_id, t_s=self._t(), source=source, code=code, detail=detail)
        )

    def _recorded(self, record: str, **detail: Any) -> None:
        self._emit(RecordWritten(session_id=self.session_id, t_s=self._t(), record=record, detail=detail))

    def _tick(self, **fields: Any) -> None:
        self._emit(
            Tick(
                session_id=self.session_id,
                t_s=self._t(),
                phase=self.phases[-1][0] if self.phases else Phase.PRECHECK.value,
                phase_elapsed_s=self._t() - (self.phases[-1][1] if self.phases else 0.0),
                vitals=dict(self._latest),
                **fields,
            )
        )

    def _idle_tick(self, plan: DosePlan | None) -> None:
        """A tick while no pump runs: the pre-check's waits and the observation, once a second."""
        delivered_ml = self._delivered_ml
        concentration = plan.concentration_mg_per_ml if plan else 0.0
        self._tick(
            pump_state=None,
            delivered_ml=delivered_ml,
            planned_ml=plan.volume_ml if plan else 0.0,
            delivered_mg=delivered_ml * concentration,
            programmed_mg=self.points[-1].programmed_mg if self.points else 0.0,
            commanded_rate_ml_h=0.0,
            pressure_mmhg=math.nan,
            occlusion_threshold_mmhg=self.points[-1].threshold_mmhg if self.points else math.nan,
            alarms=(),
            paused_by=None,
        )

    # ----- helpers ------------------------------------------------------------------------------

    def _t(self) -> float:
        return self.ctx.clock.now() - self.t0

    def _calendar(self) -> datetime.datetime:
        return self.ctx.calendar_origin + datetime.timedelta(seconds=self.ctx.clock.now())

    def _phase(self, phase: Phase) -> None:
        previous = self.phases[-1][0] if self.phases else None
        self.phases.append((phase.value, self._t()))
        self.rec.info("phase_started", phase=phase.value)
        self._emit(
            PhaseChanged(session_id=self.session_id, t_s=self._t(), phase=phase.value, previous=previous)
        )

    def _poll_vitals(self) -> list[VitalsAlarm]:
        """Reads the feed, updates the gate and the latest readings; returns newly raised alarms."""
        assert self.gate is not None
        now = self._t()
        samples = self.ctx.vitals.poll(now)
        for s in samples:
            self._latest[s.channel] = s.value
            self._emit(
                VitalsRead(
                    session_id=self.session_id, t_s=now, channel=s.channel, value=s.value, reading_t_s=s.t_s
                )
            )
        return self.gate.update(now, samples)

    def _vitals_alarm(self, alarm: VitalsAlarm, phase: str, *, record: bool = True) -> None:
        """Logs a vitals alarm (and, once the session is in the course history, records it there)."""
        code = f"vitals_{alarm.kind}_{alarm.channel}"
        fields = {"code": code, "channel": alarm.channel, "reading_t_s": alarm.t_s, "limit": alarm.limit}
        fields |= {"value": alarm.value} if alarm.kind == "crossing" else {"age_s": alarm.age_s}
        self.alarms.append(
            {"t_min": self._t() / 60.0, "source": "vitals", "phase": phase, "detail": alarm.detail, **fields}
        )
        self.rec.error("vitals_alarm", phase=phase, detail=alarm.detail, **fields)
        self._alarm_event("vitals", code, alarm.detail)
        if record and self._course_write(
            "alarm", self.ctx.course.record_alarm, self.ctx.session_id, self._calendar(), code, alarm.detail
        ):
            self._recorded("alarm", code=code)

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
        self._emit(
            SessionEnded(
                session_id=self.session_id,
                t_s=self._t(),
                outcome=outcome,
                delivered_mg=self._delivered_ml * concentration,
                programmed_mg=plan.dose_mg if plan else 0.0,
                detail=detail,
            )
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
        self._recorded("session_begun", programmed_mg=plan.dose_mg)
        try:
            for c in self.confirmations:
                ctx.course.record_override(
                    ctx.patient.patient_id, ctx.session_id, c["kind"], c["reason"], self._calendar()
                )
                self._recorded("override", kind=c["kind"])
            run = self._run_result = await self._infuse(plan, order, entry)
            delivered_ml = run.session_delivered_ml
            delivered_mg = delivered_ml * plan.concentration_mg_per_ml
            self._observation_min = await self._observe(plan) if delivered_ml > 0 else 0.0
            self._phase(Phase.DISCHARGE)
            self._discharged = await self._checklist(
                "discharge", ctx.protocol.checklists.discharge, abort=False
            )
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
        outcome = "complete" if run.reason == "complete" else f"ended_{run.reason}"
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
            baseline=self.gate.baseline.model_dump() if self.gate else {},
            observation_min=self._observation_min,
            discharge_confirmed=self._discharged,
            thresholds=self.thresholds,
            # A session that ended before its first point still has one: its report always has a series.
            points=self.points or [self._idle_point(self._t(), 0.0, 0.0, math.nan)],
            events=self.rec.events,
        )

    def _plan(self) -> DosePlan:
        plan = plan_dose(self.ctx.protocol, self.ctx.patient)
        self.rec.info("session_planned", patient=self.ctx.patient.patient_id, **plan.as_dict())
        return plan

    async def _authorize(self, plan: DosePlan) -> tuple[druglib.Order, druglib.DrugEntry]:
        """Checks the order against the drug library and the course (in the Rust core); asks the
        operator for a reason for every soft finding; refuses on any hard one."""
        ctx = self.ctx
        entry = ctx.library.drug(plan.drug)
        try:
            ctx.course.patient(ctx.patient.patient_id)
            history: CourseHistory | None = ctx.course
        except CourseRecordNotFoundError:
            history = None  # a new patient: this is the course's first session (recorded only once it starts)
            await self._confirm_new_patient()
        order = druglib.order_for(plan, ctx.patient, history, self._calendar() if history else None)
        findings = druglib.check(entry, order)
        self.rec.info(
            "limits_checked",
            findings=[f.as_dict() for f in findings],
            order=order.as_dict(),
        )
        for f in findings:
            self._emit(
                FindingReported(
                    session_id=self.session_id,
                    t_s=self._t(),
                    finding=f.kind,
                    severity=f.severity,
                    message=f.message,
                )
            )
        confirmations = []
        if not any(f.severity == "hard" for f in findings):  # a hard finding refuses whatever is answered
            for f in findings:
                if f.severity != "soft":
                    continue
                reason = await self._ask("soft_limit", f.kind, f.message)
                if isinstance(reason, str):
                    confirmations.append(druglib.Confirmation(f.kind, reason))
        authorization = druglib.authorize(findings, confirmations)  # raises on hard/unconfirmed
        for fields in authorization.events():
            self.confirmations.append({k: fields[k] for k in ("kind", "message", "reason")})
            self.rec.warning("soft_limit_confirmed", **fields)
        return order, entry

    async def _confirm_new_patient(self) -> None:
        """A new patient id near a recorded one may be a typo that would start a second course, hidden
        from the course rules: it proceeds only with the operator's reason (``new_patient``)."""
        patient_id = self.ctx.patient.patient_id
        near = self.ctx.course.near_patients(patient_id)
        if not near:
            return
        message = (
            f"patient {patient_id} is not in the course history, but {', '.join(near)} "
            f"{'is' if len(near) == 1 else 'are'}: a new patient, or a typo (the course rules would not "
            "count the other's sessions)?"
        )
        reason = await self._ask("soft_limit", "new_patient", message)
        if not isinstance(reason, str) or not reason.strip():
            self.rec.error("new_patient_not_confirmed", patient=patient_id, near=near)
            raise SessionAbortedError("precheck", f"{message} Not confirmed with a reason (new_patient)")
        self.confirmations.append({"kind": "new_patient", "message": message, "reason": reason})
        self.rec.warning("soft_limit_confirmed", kind="new_patient", message=message, reason=reason)

    async def _baseline(self) -> None:
        """Waits for a first reading of every channel (at most two BP intervals) and records it as the
        baseline; a baseline above the warning levels needs a confirmation with a reason."""
        ctx = self.ctx
        readings: list[VitalsSample] = []
        deadline = self._t() + max(self.thresholds.stale_after_s(c) for c in CHANNELS)
        while set(CHANNELS) - {s.channel for s in readings}:
            if self._t() > deadline:
                missing = sorted(set(CHANNELS) - {s.channel for s in readings})
                self.rec.error("baseline_missing", channels=missing)
                raise SessionAbortedError("precheck", f"no baseline reading of {', '.join(missing)}")
            readings += ctx.vitals.poll(self._t())
            if set(CHANNELS) - {s.channel for s in readings}:
                self._stop_if_asked("precheck")
                self._idle_tick(None)
                await ctx.clock.sleep_until(ctx.clock.now() + OBSERVATION_STEP_S)
        baseline = VitalsBaseline.from_samples(readings)
        self.gate = VitalsGate(self.thresholds, baseline)
        self._latest = {s.channel: s.value for s in readings}
        self.rec.info("baseline_recorded", **baseline.model_dump())
        # A patient already past a limit is not started: the gate would never see the crossing "arrive".
        out_of_range = self.gate.update(self._t(), readings)
        for alarm in out_of_range:
            self._vitals_alarm(alarm, "precheck", record=False)
        if out_of_range:
            details = "; ".join(a.detail for a in out_of_range)
            raise SessionAbortedError("precheck", f"vitals out of range at baseline: {details}")
        for warning in self.gate.baseline_warnings():
            reason = await self._ask("baseline_vitals", "baseline_vitals", warning)
            if not isinstance(reason, str) or not reason.strip():
                self.rec.error("baseline_refused", warning=warning)
                raise SessionAbortedError("precheck", f"{warning}, not confirmed")
            self.confirmations.append({"kind": "baseline_vitals", "message": warning, "reason": reason})
            self.rec.warning("soft_limit_confirmed", kind="baseline_vitals", message=warning, reason=reason)

    async def _checklist(self, name: str, items: Sequence[str], *, abort: bool) -> bool:
        """Asks every item; returns whether all were confirmed. An unconfirmed item aborts the session
        (``abort``: the pre-check, nothing delivered yet) or is an alarm for the clinician (discharge)."""
        confirmed = True
        for item in items:
            answer = await self._ask("checklist", name, item) is True
            self.rec.info("checklist_answered", checklist=name, item=item, confirmed=answer)
            if not answer and abort:
                raise SessionAbortedError(name, f"checklist item not confirmed: {item}")
            if not answer:
                confirmed = False
                self.rec.error("checklist_not_confirmed", checklist=name, item=item)
                self.alarms.append(
                    {
                        "t_min": self._t() / 60.0,
                        "source": "checklist",
                        "code": f"{name}_not_confirmed",
                        "item": item,
                    }
                )
                self._alarm_event("checklist", f"{name}_not_confirmed", item)
        return confirmed

    def _stop_if_asked(self, phase: str) -> None:
        """An operator stop before the infusion starts aborts the session: nothing is delivered."""
        if self._outside_infusion(phase):
            self.rec.warning("operator_stop_requested", phase=phase)
            raise SessionAbortedError(phase, "stopped by the operator")

    async def _infuse(self, plan: DosePlan, order: druglib.Order, entry: druglib.DrugEntry) -> RunResult:
        ctx = self.ctx
        # The drug library's limits come last: nothing the transport set-up passes can loosen them.
        settings = {
            **ctx.loop_settings,
            **druglib.kernel_overrides(entry, order),
            "concentration_mg_per_ml": plan.concentration_mg_per_ml,
            "syringe_diameter_mm": plan.syringe_diameter_mm,
            "syringe_capacity_ml": plan.syringe_capacity_ml,
            "syringe_fill_ml": plan.syringe_fill_ml,
        }
        config = kernel_config(**settings)
        occlusion_threshold = float(config.as_dict()["occlusion_threshold_mmhg"])
        loop = ControlLoop(ctx.driver, config, ctx.clock, self.rec, on_tick=None)
        tick = _InfusionTicks(plan, volumes=deque(), rate_ml_h=plan.rate_at(0.0))
        self._phase(Phase.TAKE_UP if ctx.protocol.take_up.enabled else Phase.INFUSION)

        def on_tick(out: _core.StepOutput, telemetry: PumpTelemetry | None) -> None:
            t = self._t()
            self._delivered_ml = out.delivered_ml
            if tick.started_s is None:
                tick.started_s = t
                if isinstance(ctx.vitals, ScriptedMonitor):
                    ctx.vitals.mark_infusion_start(t)  # the simulated patient responds from now
            if self.phases[-1][0] == Phase.TAKE_UP and (self.rec.take_up_done or out.delivered_ml > 0.01):
                self._phase(Phase.INFUSION)
            self._tick(
                pump_state=out.state,
                delivered_ml=out.delivered_ml,
                planned_ml=plan.volume_ml,
                delivered_mg=out.delivered_ml * plan.concentration_mg_per_ml,
                programmed_mg=plan.planned_ml(max(t - tick.started_s, 0.0)) * plan.concentration_mg_per_ml,
                commanded_rate_ml_h=out.rate_ml_h if out.direction == "forward" else 0.0,
                pressure_mmhg=telemetry.pressure_mmhg if telemetry is not None else math.nan,
                occlusion_threshold_mmhg=occlusion_threshold,
                alarms=tuple(out.alarms),
                paused_by=tick.paused_by if out.state == "paused" else None,
            )
            self._gate_infusion(loop, tick, out, t)
            for cmd in self._take_commands():
                self._infusion_command(loop, tick, cmd, t)
            # A phase's ramp or taper follows the delivered volume, so a pause shifts it, not skips it.
            if len(plan.segments) > 1 and out.state == "running":
                rate = plan.rate_at(plan.time_for_ml(out.delivered_ml))
                if abs(rate - tick.rate_ml_h) > SCHEDULE_DEADBAND * tick.rate_ml_h:
                    tick.rate_ml_h = rate
                    loop.request_rate(rate, "protocol phase schedule")
            if telemetry is not None:
                tick.volumes.append((t, telemetry.volume_ml))
                while tick.volumes and tick.volumes[0][0] < t - RATE_WINDOW_S:
                    tick.volumes.popleft()
            if t >= tick.next_point_s:
                tick.next_point_s = t + SERIES_EVERY_S
                self._point(t, out, telemetry, tick, occlusion_threshold)

        loop.on_tick = on_tick
        ip = InfusionPlan(
            rate_ml_h=plan.rate_at(0.0),
            volume_ml=plan.volume_ml,
            syringe_diameter_mm=plan.syringe_diameter_mm,
            take_up=ctx.protocol.take_up.enabled,
        )
        self._control = loop
        try:
            run = await loop.run(ip)
        finally:
            self._control = None
        if not self.points:  # ended before its first tick (an interlock at the start): one point
            self.points.append(self._idle_point(self._t(), 0.0, 0.0, occlusion_threshold))
        raised = {code: t for t, code in reversed(self.rec.raised)}  # each alarm at its first raising
        for code in run.alarms + run.pump_alarms:
            t = raised.get(code, self._t())
            record = {"t_min": t / 60.0, "source": "pump", "phase": "infusion", "code": code}
            self.alarms.append(record)
            at = self.ctx.calendar_origin + datetime.timedelta(seconds=self.t0 + t)
            self._course_write(
                "alarm", ctx.course.record_alarm, ctx.session_id, at, code, run.detail or run.reason
            )
        return run

    def _infusion_command(self, loop: ControlLoop, tick: _InfusionTicks, cmd: _Command, t: float) -> None:
        """An operator command during the infusion: handed to the control loop (and so to the kernel)."""
        if cmd.action == "stop" and self._stopping:
            # A second SIGINT, a double click: recorded, never escalated into anything else.
            self._acted(cmd, accepted=False, why="the pump is already stopping; the observation follows")
        elif cmd.action == "stop":
            self.rec.info(
                "operator_stop_requested", reason=cmd.reason, source=cmd.source, operator=cmd.operator
            )
            self._stopping = True
            loop.request_stop()
            self._acted(cmd, accepted=True)
        elif cmd.action == "end_observation":
            self._acted(cmd, accepted=False, why="no observation is running (infusion)")
        elif cmd.action == "pause":
            loop.request_pause(f"operator: {cmd.reason}")
            self.pauses.append({"t_min": t / 60.0, "by": "operator", "reason": cmd.reason})
            tick.paused_by = "operator"
            self._acted(cmd, accepted=True)
        elif cmd.action == "acknowledge":
            self._acknowledged(cmd)
        elif self.gate is not None and self.gate.active():
            # The operator cannot resume into an active vitals alarm.
            self._acted(cmd, accepted=False, why="vitals alarm active")
        else:
            loop.request_resume(f"operator: {cmd.reason}")
            tick.paused_by = None
            self._acted(cmd, accepted=True)

    def _gate_infusion(
        self, loop: ControlLoop, tick: _InfusionTicks, out: _core.StepOutput, t: float
    ) -> None:
        """Vitals during the infusion: a new alarm pauses at the next tick; once every condition has
        cleared, the operator decides when to resume."""
        assert self.gate is not None
        for alarm in self._poll_vitals():
            self._vitals_alarm(alarm, "infusion")
        active = self.gate.active()
        # Level-triggered: whatever paused or resumed it before, a vitals condition that is active pauses
        # a running pump at the next tick, and takes over an operator's pause (so only the vitals rule,
        # clear for the operator's standing time, resumes it).
        if active and tick.paused_by != "vitals" and out.state in {"running", "paused"}:
            detail = "; ".join(a.detail for a in active)
            if out.state == "running":
                loop.request_pause(f"vitals: {detail}")
            else:
                self.rec.warning("pause_held_by_vitals", reason=detail)
            self.pauses.append({"t_min": t / 60.0, "by": "vitals", "reason": detail})
            tick.paused_by, tick.paused_since_s, tick.clear_since_s = "vitals", t, None
        if tick.paused_by != "vitals" or out.state != "paused":
            return
        if self.ctx.operator.stop_after_pause(t - tick.paused_since_s):
            self.rec.warning("infusion_abandoned", paused_min=(t - tick.paused_since_s) / 60.0)
            self._stopping = True
            loop.request_stop()
            return
        if self.gate.active():
            tick.clear_since_s = None
        elif tick.clear_since_s is None:
            tick.clear_since_s = t
        elif self.ctx.operator.resume_after_alarm(t - tick.clear_since_s):
            loop.request_resume("vitals back within limits; operator resumed")
            tick.paused_by = tick.clear_since_s = None

    def _point(
        self,
        t: float,
        out: _core.StepOutput,
        telemetry: PumpTelemetry | None,
        tick: _InfusionTicks,
        threshold: float,
    ) -> None:
        plan, volumes = tick.plan, tick.volumes
        measured = math.nan
        if len(volumes) >= 2 and volumes[-1][0] > volumes[0][0]:
            (ta, va), (tb, vb) = volumes[0], volumes[-1]
            measured = (vb - va) / (tb - ta) * 3600.0
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

    def _vitals_now(self) -> dict[str, float]:
        return {ch: self._latest.get(ch, math.nan) for ch in ("sbp", "dbp", "hr", "spo2")}

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
            elapsed_min = (t - start) / 60.0
            if self._outside_infusion("observation"):
                taken = [a for a in self._actions if a.action == "end_observation" and a.accepted][-1]
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
                self._alarm_event("observation", "vitals_not_back_in_band", "maximum observation reached")
                return elapsed_min


def _command_scope(action: str) -> str:
    """What must be running for ``action`` to apply, for a refusal's reason."""
    return "observation" if action == "end_observation" else "infusion"


def _failed_outcome(error: BaseException) -> str:
    """How a session that raised ended, for its :class:`~ketapump.clinical.events.SessionEnded`."""
    if isinstance(error, LimitError):
        return "refused"
    if isinstance(error, SessionAbortedError):
        return "aborted"
    return "failed"


__all__ = [
    "ACTIONS",
    "PENDING",
    "Answer",
    "Operator",
    "Phase",
    "Question",
    "QuestionKind",
    "ScriptedOperator",
    "Session",
    "SessionAbortedError",
    "SessionContext",
    "SessionResult",
]
