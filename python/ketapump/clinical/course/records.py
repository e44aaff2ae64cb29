"""The records the course history hands out: patients, sessions, alarms, notes, overrides, the operator's
actions, observations and medications of each session, and the course summary (series, initial series,
maintenance window). Frozen values; the store creates them."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, Literal

from ketapump.clinical.course.location import _iso
from ketapump.clinical.course.outcomes import Trend


@dataclasses.dataclass(frozen=True)
class Patient:
    patient_id: str
    weight_kg: float
    height_cm: float | None
    created_at: _dt.datetime
    updated_at: _dt.datetime


@dataclasses.dataclass(frozen=True)
class Session:
    """One infusion session. ``weight_kg`` is the weight it was dosed for (the patient's weight when it
    began); ``ended_at``, ``delivered_mg`` and ``outcome`` are ``None`` while it is in progress."""

    session_id: str
    patient_id: str
    protocol: str
    weight_kg: float
    started_at: _dt.datetime
    programmed_mg: float
    log_path: str | None
    ended_at: _dt.datetime | None
    delivered_mg: float | None
    outcome: str | None

    @property
    def in_progress(self) -> bool:
        return self.ended_at is None

    @property
    def counted_mg(self) -> float:
        """The dose a window query counts: delivered once ended, the programmed dose until then."""
        return self.programmed_mg if self.delivered_mg is None else self.delivered_mg

    @property
    def delivered_mg_per_kg(self) -> float | None:
        return None if self.delivered_mg is None else self.delivered_mg / self.weight_kg


@dataclasses.dataclass(frozen=True)
class Alarm:
    session_id: str
    at: _dt.datetime
    code: str
    detail: str


@dataclasses.dataclass(frozen=True)
class LogSeal:
    """How a session's audit log ended, recorded once it was closed: its path, the number of records and
    the hash of the last one (the chain head), and the id of the key that authenticated it."""

    session_id: str
    log_path: str
    records: int
    head: str
    key_id: str | None
    sealed_at: _dt.datetime


@dataclasses.dataclass(frozen=True)
class Note:
    """A journal note; ``who`` wrote it (``None``: written before operator names were recorded).
    ``late_h``: how many hours after the journal window (``journal.within_h`` after the session ended)
    it was written, ``None`` when within it. A late note is kept and flagged."""

    session_id: str
    at: _dt.datetime
    text: str
    who: str | None = None
    late_h: float | None = None


@dataclasses.dataclass(frozen=True)
class ActionRecord:
    """Something done to a session's infusion, and by whom: an operator's command (``actor`` is
    ``operator``, ``who`` their name, ``source`` the channel it came through) whether carried out
    (``accepted``) or refused (``why``), or the vitals gate or the protocol holding or releasing the
    pump (``actor`` ``vitals`` or ``protocol``, ``who`` ``None``). ``detail`` holds the action's
    arguments and what it did (the holders left, a new rate, …)."""

    session_id: str
    at: _dt.datetime
    action: str
    actor: str
    who: str | None
    source: str
    accepted: bool
    reason: str
    why: str
    detail: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Observation:
    """A side effect or state the nurse recorded: its ``kind`` (nausea, dissociation, …), its ``value``
    on ``scale`` (``None`` for a kind without one), a note, and who recorded it."""

    session_id: str
    at: _dt.datetime
    kind: str
    value: float | None
    scale: str
    note: str
    who: str | None


@dataclasses.dataclass(frozen=True)
class Medication:
    """A medication given during a session (an antiemetic for nausea, …), and who gave it."""

    session_id: str
    at: _dt.datetime
    drug: str
    dose: float
    unit: str
    route: str
    reason: str
    who: str | None


@dataclasses.dataclass(frozen=True)
class Override:
    """A soft limit or course rule overridden: what (``kind``), why, when, by whom, and for which session
    (``None`` when it was given before the session existed)."""

    patient_id: str
    session_id: str | None
    kind: str
    reason: str
    at: _dt.datetime
    who: str | None


@dataclasses.dataclass(frozen=True)
class StandingOverride:
    """A soft limit or course rule (``kind``) confirmed in advance for every session of the patient that
    starts from ``granted_at`` up to ``expires_at``: why, and who decided it."""

    patient_id: str
    kind: str
    reason: str
    who: str
    granted_at: _dt.datetime
    expires_at: _dt.datetime


@dataclasses.dataclass(frozen=True)
class SeriesEntry:
    """A session in the course listing: ``interval_h`` since the previous session's start (``None`` for
    the first), and whether it ``counts`` toward the series (its outcome is one of the counted ones)."""

    session: Session
    interval_h: float | None
    counts: bool


@dataclasses.dataclass(frozen=True)
class InitialSeries:
    """The initial series: the first ``required`` counted sessions, expected within ``within_days`` of the
    first (``deadline``). ``completed_at`` is the start of the last of them once the series is complete;
    ``on_schedule`` says whether that was by the deadline (``None`` while incomplete), ``past_deadline``
    whether an incomplete series has run past it."""

    required: int
    within_days: float
    counted: int
    complete: bool
    first_start: _dt.datetime | None
    deadline: _dt.datetime | None
    completed_at: _dt.datetime | None
    on_schedule: bool | None
    past_deadline: bool


@dataclasses.dataclass(frozen=True)
class MaintenanceWindow:
    """When the next maintenance infusion falls, counted from the start of the last counted session:
    ``not_due`` before ``due_from``, ``due`` from ``due_from`` up to and including ``overdue_after``,
    ``overdue`` after it. Reported, not enforced."""

    last_session_start: _dt.datetime
    due_from: _dt.datetime
    overdue_after: _dt.datetime
    status: Literal["not_due", "due", "overdue"]


@dataclasses.dataclass(frozen=True)
class CourseSummary:
    """A patient's course as of ``now``. ``maintenance`` is ``None`` until the initial series is
    complete; ``open_sessions`` names sessions begun but never ended (each keeps counting its programmed
    dose in every dose window until it is ended)."""

    patient: Patient
    now: _dt.datetime
    sessions: tuple[SeriesEntry, ...]
    initial_series: InitialSeries
    maintenance: MaintenanceWindow | None
    open_sessions: tuple[str, ...]
    alarms: tuple[Alarm, ...]
    notes: tuple[Note, ...]
    overrides: tuple[Override, ...]
    observations: tuple[Observation, ...] = ()
    medications: tuple[Medication, ...] = ()
    actions: tuple[ActionRecord, ...] = ()
    standing_overrides: tuple[StandingOverride, ...] = ()
    #: Each rating scale's trend (baseline, latest, response, remission), by scale.
    outcomes: dict[str, Trend] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; times as UTC ISO-8601 with ``Z``."""

        def plain(value: object) -> object:
            if isinstance(value, _dt.datetime):
                return _iso(value)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        body = plain(dataclasses.asdict(self))
        assert isinstance(body, dict)
        for entry, out in zip(self.sessions, body["sessions"], strict=True):
            out["session"]["delivered_mg_per_kg"] = entry.session.delivered_mg_per_kg
        return body
