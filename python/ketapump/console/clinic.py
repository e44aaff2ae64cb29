"""The chairs a ``ketapump serve`` hosts, each running its sessions through the same runner and engine the
CLI uses, and everything the HTTP API asks of them.

A chair starts a session in the CLI's three steps (:mod:`ketapump.clinical.runner`): ``prepare_session``
validates the request (every problem listed), ``check_session`` puts the order to the drug library and
the course rules (a hard finding refuses, a soft one needs a reason: every finding listed), then
``SessionRunner.open`` opens the audit log and the course history and the session runs as a task of the
server's event loop. The chair's :class:`~ketapump.console.view.ChairView` and every connected event
stream subscribe to the session's events; nothing a client does (or fails to do) reaches the engine
except the commands it sends.

Failures are :class:`ConsoleError`: an HTTP status, a stable ``code`` and a message, with the details a
client needs (``problems``, ``findings``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ketapump.bridge import default_log_path
from ketapump.clinical import (
    CONFIRMABLE,
    PENDING,
    ActionTaken,
    CourseHistory,
    Patient,
    Question,
    ScriptedOperator,
    SessionEvent,
    SessionRunner,
    Sitter,
    Source,
    check_operator_name,
    check_session,
    interrupted_sessions,
    prepare_session,
)
from ketapump.console.actions import ActionSpec
from ketapump.console.config import SHARED_LOOP_JITTER_S, ChairConfig, ClinicConfig
from ketapump.console.stream import Subscription
from ketapump.console.view import ChairView, SessionInfo
from ketapump.errors import (
    ConfigurationError,
    CourseError,
    CourseRecordNotFoundError,
    KetapumpError,
    LimitRefused,
)

_log = logging.getLogger("ketapump.console")

#: How long an action request waits for the engine to say whether it was carried out (real s).
ACTION_WAIT_S = 2.0


class ConsoleError(Exception):
    """A request the console refuses: ``status`` (HTTP), ``code`` (stable), ``message`` and details."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


# ----- requests ---------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Who is acting: recorded in the audit log with every command.
    operator: str = Field(min_length=1, max_length=80)

    @field_validator("operator")
    @classmethod
    def _named(cls, value: str) -> str:
        return check_operator_name(value)  # as the engine records it


class PatientIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    weight_kg: float = Field(gt=0, allow_inf_nan=False)
    height_cm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    sex: Literal["female", "male"] | None = None


class SitterIn(BaseModel):
    """The person who takes the patient home (the CLI's ``--sitter-name`` and ``--sitter-phone``),
    checked as the engine checks them (:class:`~ketapump.clinical.Sitter`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    phone: str = Field(min_length=1, max_length=40)

    @model_validator(mode="after")
    def _plausible(self) -> SitterIn:
        self.checked()  # a ValueError naming the field becomes the 422's problem
        return self

    def checked(self) -> Sitter:
        return Sitter(self.name, self.phone)


class StartRequest(_Request):
    """Start a session on a chair (the CLI's ``ketapump session`` options, as JSON)."""

    patient: PatientIn
    #: A protocol file or shipped name (default: the chair's).
    protocol: str | None = None
    #: A reason per limit kind (``--confirm KIND=REASON``): each soft finding needs one.
    confirmations: dict[str, str] = Field(default_factory=dict)
    #: ``ask``: each checklist item waits for an answer on the chair's card; ``confirmed``: the operator
    #: confirms every item now (the CLI's ``--yes``).
    checklist: Literal["ask", "confirmed"] = "ask"
    #: A standing order: resume a pause only the vitals hold once they have been clear this long (s),
    #: recorded as the ``standing order``'s (source ``script``). None: an operator resumes it from the
    #: card (or the protocol's ``vitals.resume = "auto"`` does).
    resume_after_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    #: The vitals holding the infusion this long (min) stop it for good.
    stop_after_min: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    #: Who takes the patient home, asked for at discharge (without one the discharge is not confirmed).
    sitter: SitterIn | None = None

    @field_validator("confirmations")
    @classmethod
    def _known_kinds(cls, reasons: dict[str, str]) -> dict[str, str]:
        for kind, reason in reasons.items():
            if kind not in CONFIRMABLE:
                raise ValueError(f"{kind!r} is not a limit kind ({', '.join(CONFIRMABLE)})")
            if not reason.strip():
                raise ValueError(f"the reason for {kind} is blank")
        return {kind: reason.strip() for kind, reason in reasons.items()}


class ActionRequest(_Request):
    """An operator action on a chair's session: why, and the values the action takes (``GET
    /api/actions`` lists them)."""

    reason: str = Field(default="", max_length=500)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("reason")
    @classmethod
    def _trimmed(cls, value: str) -> str:
        return value.strip()  # as the engine records it


class AnswerRequest(_Request):
    """The answer to a question the session waits on: ``true``/``false`` for a checklist item, and for a
    syringe change (``true``: the next syringe is loaded; ``false``: stop the infusion there); a reason
    (or ``null`` to decline) for a soft limit or an elevated baseline."""

    value: bool | str | None


# ----- the operator a console session runs with ----------------------------------------------------

#: Who the audit log names for a start request's standing order (``resume_after_s``), and for a chair's
#: scripted nurse (``nurse = "script"``): never the person who started the session.
STANDING_ORDER = "standing order"
SCRIPTED_NURSE = "scripted nurse"


@dataclass
class ConsoleOperator(ScriptedOperator):
    """The standing answers a start request gave (its reasons; every checklist item when
    ``confirm_checklists``); every other question waits for an answer from the chair's card."""

    confirm_checklists: bool = False

    def answer(self, question: Question) -> Any:
        if question.kind == "checklist":
            return True if self.confirm_checklists else PENDING
        reason = self.reasons.get(question.subject)
        return reason if reason is not None else PENDING


# ----- a chair ------------------------------------------------------------------------------------------


@dataclass
class _ActionWaiter:
    action: str
    operator: str
    reason: str
    future: asyncio.Future[ActionTaken]


class Chair:
    """One chair: its settings, its current (or last) session, its view and its clients."""

    def __init__(self, config: ChairConfig, *, pk: str) -> None:
        self.config = config
        self.view = ChairView(config.id, config.title, config.pump, pk=pk)
        self.runner: SessionRunner | None = None
        self.task: asyncio.Task[None] | None = None
        self.streams: set[Subscription] = set()
        self._waiters: list[_ActionWaiter] = []

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def snapshot(self) -> dict[str, Any]:
        return self.view.snapshot() | {"default_protocol": self.config.protocol}

    def _on_event(self, event: SessionEvent) -> None:
        """The session's subscriber: the view, then every client; nothing here may disturb the session."""
        self.view.apply(event)
        for stream in list(self.streams):
            stream.offer(self.id, event)
        if isinstance(event, ActionTaken) and self._waiters:
            for waiter in list(self._waiters):
                if (waiter.action, waiter.operator, waiter.reason) == (
                    event.action,
                    event.operator,
                    event.reason,
                ) and not waiter.future.done():
                    waiter.future.set_result(event)
                    self._waiters.remove(waiter)
                    break

    def _changed(self) -> None:
        for stream in list(self.streams):
            stream.touch(self.id)

    def begin(self, runner: SessionRunner, info: SessionInfo) -> None:
        self.runner = runner
        self.view.begin(info)
        runner.session.subscribe(self._on_event)
        self.task = asyncio.create_task(self._run(runner), name=f"chair {self.id} session {info.session_id}")
        self._changed()

    async def _run(self, runner: SessionRunner) -> None:
        try:
            outcome = await runner.run()
            self.view.outcome = outcome.summary()
            if outcome.error is not None:  # what ended a session that did not complete (runner.run's)
                self.view.error = str(outcome.error)
        except asyncio.CancelledError:
            self.view.error = "the console shut down: the pump was told to stop"
            raise
        except KetapumpError as e:
            self.view.error = str(e)
        except Exception as e:  # a defect: shown on the chair, never taking the server down
            _log.exception("chair %s: session failed", self.id)
            self.view.error = f"internal error: {e!r}"
        finally:
            self._changed()

    def session_or_refuse(self) -> SessionRunner:
        if self.runner is None or not self.busy:
            raise ConsoleError(409, "no_session", f"chair {self.id} runs no session")
        return self.runner

    async def act(self, spec: ActionSpec, request: ActionRequest, source: Source) -> dict[str, Any]:
        """Sends an action; returns the engine's verdict once it comes (within :data:`ACTION_WAIT_S`), or
        that it is queued (the session waits on a question, say)."""
        runner = self.session_or_refuse()
        problems = spec.check(request.reason, request.params)
        if problems:
            raise ConsoleError(422, "invalid_action", f"{spec.name} cannot be sent", problems=problems)
        future: asyncio.Future[ActionTaken] = asyncio.get_running_loop().create_future()
        waiter = _ActionWaiter(spec.command, request.operator, request.reason, future)
        self._waiters.append(waiter)
        try:
            spec.send(
                runner.session, request.reason, request.params, source=source, operator=request.operator
            )
        except ValueError as e:  # the engine finds the command wrong in itself: nothing was queued
            self._waiters.remove(waiter)
            raise ConsoleError(422, "invalid_action", f"{spec.name}: {e}", problems=[str(e)]) from e
        try:
            taken = await asyncio.wait_for(asyncio.shield(future), ACTION_WAIT_S)
        except TimeoutError:
            return {"chair": self.id, "action": spec.name, "status": "queued"}
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return {"chair": self.id, "status": "done" if taken.accepted else "refused", **taken.as_dict()}

    def answer(self, question_id: str, request: AnswerRequest, source: Source) -> dict[str, Any]:
        runner = self.session_or_refuse()
        try:
            found = runner.session.answer(
                question_id, request.value, source=source, operator=request.operator
            )
        except ValueError as e:
            raise ConsoleError(422, "invalid_answer", str(e)) from e
        if not found:
            raise ConsoleError(
                404, "question_not_found", f"chair {self.id} waits on no question {question_id}"
            )
        return {"chair": self.id, "question_id": question_id, "status": "answered"}

    def record(self, limit: int, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The session's record: its audit-log entries (the last ``limit``, leaving out the event names
        in ``exclude``), and its outcome."""
        info = self.view.info
        if info is None:
            raise ConsoleError(404, "no_session", f"chair {self.id} has run no session")
        entries: list[dict[str, Any]] = []
        total = 0
        try:
            with Path(info.log).open(encoding="utf-8") as f:
                for line in f:
                    entry = json.loads(line)
                    if entry.get("session_id") == info.session_id:
                        total += 1
                        if entry.get("event") not in exclude:
                            entries.append(entry)
        except (OSError, json.JSONDecodeError) as e:
            raise ConsoleError(503, "record_unreadable", f"cannot read the audit log {info.log}: {e}") from e
        return {
            "chair": self.id,
            "session_id": info.session_id,
            "log": info.log,
            "entries": entries[-limit:],
            "total": total,
            "outcome": self.view.outcome,
            "error": self.view.error,
        }


# ----- the clinic ---------------------------------------------------------------------------------------


@dataclass
class Clinic:
    """Every chair of a ``serve`` (see the module docstring)."""

    config: ClinicConfig
    chairs: dict[str, Chair] = field(init=False)

    def __post_init__(self) -> None:
        pk = self.config.clinic.pk_model
        self.chairs = {c.id: Chair(c, pk=pk) for c in self.config.chair}

    @property
    def name(self) -> str:
        return self.config.clinic.name

    def chair(self, chair_id: str) -> Chair:
        try:
            return self.chairs[chair_id]
        except KeyError:
            raise ConsoleError(404, "chair_not_found", f"no chair {chair_id!r}") from None

    def log_dir(self) -> Path:
        return self.config.clinic.log_dir or default_log_path().parent

    def start(self, chair_id: str, request: StartRequest, source: Source) -> dict[str, Any]:
        """Starts a session on a chair (see the module docstring); returns the chair's card."""
        chair = self.chair(chair_id)
        if chair.busy:
            raise ConsoleError(409, "chair_busy", f"chair {chair_id} already runs a session")
        settings = self.config.clinic
        session_id = uuid.uuid4().hex
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        p = request.patient
        nurse = chair.config.nurse == "script"
        operator = ConsoleOperator(
            reasons=request.confirmations,
            confirm_checklists=request.checklist == "confirmed",
            scheduled=chair.config.nurse_script(),
            resume_after_s=request.resume_after_s,
            stop_after_s=request.stop_after_min * 60.0,
            name=SCRIPTED_NURSE if nurse else STANDING_ORDER,
        )
        try:
            setup = prepare_session(
                protocol=request.protocol or chair.config.protocol,
                patient=Patient(p.id, p.weight_kg, p.height_cm, p.sex),
                operator=operator,
                operator_name=request.operator,
                pump=chair.config.pump,
                vitals=chair.config.vitals,
                course_db=settings.course_db,
                log=self.log_dir() / f"{chair_id}-{stamp}-{session_id[:8]}.jsonl",
                out=settings.out_dir / chair_id / f"{stamp}-{session_id[:8]}",
                time_scale=settings.time_scale,
                jitter_real_s=SHARED_LOOP_JITTER_S,
                sitter=request.sitter.checked() if request.sitter else None,
            )
        except CourseError as e:  # the clinic's course history is gone or damaged since start-up
            raise ConsoleError(503, "records_unavailable", f"the course history cannot be used: {e}") from e
        except ConfigurationError as e:
            listed = getattr(e, "problems", None)
            problems = [f"{e.field}: {p}" for p in listed] if listed else [str(e)]
            raise ConsoleError(422, "invalid_session", str(e), problems=problems) from e
        except OSError as e:
            raise ConsoleError(422, "invalid_session", str(e), problems=[str(e)]) from e
        setup.session_id, setup.source = session_id, source
        check = check_session(setup, request.confirmations)
        if check.refusal is not None:
            refused = isinstance(check.refusal, LimitRefused)
            raise ConsoleError(
                422,
                "limit_refused" if refused else "confirmation_required",
                str(check.refusal),
                findings=[f.as_dict() for f in check.findings],
                needs_reason=[]
                if refused
                else sorted({f.kind for f in check.findings if f.severity == "soft"}),
            )
        try:
            runner = SessionRunner.open(setup)
        except (OSError, ValueError, KetapumpError) as e:
            raise ConsoleError(503, "records_unavailable", f"cannot open the session's records: {e}") from e
        chair.begin(runner, SessionInfo.of(runner, started_by=request.operator, source=source))
        return chair.snapshot()

    def interrupted(self) -> list[dict[str, Any]]:
        """Sessions the course history holds as begun and never ended that no chair here runs: a
        ``serve`` (or ``session``) killed mid-session. Each with its chair, if its pump is a chair's."""
        running = {c.view.info.session_id for c in self.chairs.values() if c.busy and c.view.info}
        by_pump = {c.config.pump: c.id for c in self.chairs.values()}
        return [
            s.as_dict() | {"chair": by_pump.get(s.pump or "")}
            for s in interrupted_sessions(self.config.clinic.course_db, running=running)
        ]

    def course(self, patient_id: str) -> dict[str, Any]:
        """A patient's course: the summary, and every session with its alarms, notes, actions,
        observations and medications."""
        try:
            history = CourseHistory.open(self.config.clinic.course_db, readonly=True)
        except CourseRecordNotFoundError as e:
            raise ConsoleError(404, "no_course_history", str(e)) from e
        try:
            summary = history.course_summary(patient_id, datetime.datetime.now(datetime.UTC))
            sessions = [
                {
                    "session": _plain(dataclasses.asdict(s)),
                    "alarms": [_plain(dataclasses.asdict(a)) for a in history.alarms(s.session_id)],
                    "notes": [_plain(dataclasses.asdict(n)) for n in history.notes(s.session_id)],
                    "actions": [_plain(dataclasses.asdict(a)) for a in history.actions(s.session_id)],
                    "observations": [
                        _plain(dataclasses.asdict(o)) for o in history.observations(s.session_id)
                    ],
                    "medications": [_plain(dataclasses.asdict(m)) for m in history.medications(s.session_id)],
                }
                for s in history.sessions(patient_id)
            ]
            overrides = [_plain(dataclasses.asdict(o)) for o in history.overrides(patient_id)]
        except CourseRecordNotFoundError as e:
            raise ConsoleError(404, "patient_not_found", str(e)) from e
        finally:
            history.close()
        return {
            "patient_id": patient_id,
            "summary": summary.to_json(),
            "sessions": sessions,
            "overrides": overrides,
        }

    def subscribe(self, chair_ids: list[str]) -> Subscription:
        stream = Subscription(lambda chair: self.chairs[chair].snapshot())
        for chair_id in chair_ids:
            self.chairs[chair_id].streams.add(stream)
        return stream

    def unsubscribe(self, stream: Subscription) -> None:
        stream.close()
        for chair in self.chairs.values():
            chair.streams.discard(stream)

    async def close(self) -> None:
        """Ends the server's sessions: each task is cancelled, so its control loop tells the pump to stop
        and the session's records are closed (the course history records it ended early)."""
        tasks = [c.task for c in self.chairs.values() if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for chair in self.chairs.values():
            for stream in list(chair.streams):
                self.unsubscribe(stream)


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    """A course record as JSON: times as ISO text."""
    return {k: v.isoformat() if isinstance(v, datetime.datetime) else v for k, v in record.items()}


__all__ = [
    "ActionRequest",
    "AnswerRequest",
    "Chair",
    "Clinic",
    "ConsoleError",
    "ConsoleOperator",
    "PatientIn",
    "SitterIn",
    "StartRequest",
]
