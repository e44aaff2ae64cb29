"""The store: :class:`CourseHistory` over one SQLite file (its schema, and how a file is checked, created
and migrated, are :mod:`~ketapump.clinical.course.schema`'s)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from ketapump.clinical.course import schema
from ketapump.clinical.course.location import (
    _amount,
    _iso,
    _stamp,
    _text,
    _time,
    default_course_path,
    near_patient_ids,
    normalise_patient_id,
)
from ketapump.clinical.course.outcomes import Score, check_score, trends
from ketapump.clinical.course.records import (
    ActionRecord,
    Alarm,
    CourseSummary,
    InitialSeries,
    LogSeal,
    MaintenanceWindow,
    Medication,
    Note,
    Observation,
    Override,
    Patient,
    SeriesEntry,
    Session,
    StandingOverride,
)
from ketapump.clinical.course.settings import CourseSettings, load_course_settings
from ketapump.errors import CourseError, CourseRecordNotFoundError, CourseStorageError

_SESSION_COLUMNS: Final = (
    "session_id, patient_id, protocol, weight_kg, started_at, programmed_mg, log_path, ended_at, "
    "delivered_mg, outcome"
)


def _session(row: sqlite3.Row) -> Session:
    return Session(
        session_id=row["session_id"],
        patient_id=row["patient_id"],
        protocol=row["protocol"],
        weight_kg=row["weight_kg"],
        started_at=_time(row["started_at"]),
        programmed_mg=row["programmed_mg"],
        log_path=row["log_path"],
        ended_at=None if row["ended_at"] is None else _time(row["ended_at"]),
        delivered_mg=row["delivered_mg"],
        outcome=row["outcome"],
    )


class CourseHistory:
    """The course history in one SQLite file. Open it with :meth:`open`; use it as a context manager or
    call :meth:`close`. One instance may be shared between threads (calls are serialised); several
    processes may open the same file (writes wait up to ``schema.BUSY_TIMEOUT_S`` for each other).
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path, settings: CourseSettings, database_id: str
    ) -> None:
        """Internal: wrap a configured connection. Use :meth:`open` or :meth:`create`."""
        self._conn = conn
        self.path = path
        self.settings = settings
        #: This database's id (32 hex digits), fixed when it was created: every session's audit log
        #: records it, naming the history its limits were checked against.
        self.database_id = database_id
        self._lock = threading.RLock()
        self._depth = 0

    # -- opening and closing --------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = False,
        readonly: bool = False,
        settings: CourseSettings | None = None,
    ) -> CourseHistory:
        """Open the course database at ``path`` (default: :func:`default_course_path`).

        Never creates a database unless ``create`` asks for one where no file exists (the demo's own
        records; otherwise :meth:`create`), never migrates one and never writes to a file before it is
        known to be a current course database. ``readonly`` opens for queries only.

        Raises :class:`~ketapump.errors.CourseRecordNotFoundError` when there is no file, and
        :class:`~ketapump.errors.CourseError` naming the file when it is empty, not SQLite, another
        program's, of an older or newer schema, or damaged;
        :class:`~ketapump.errors.CourseStorageError` when it cannot be read or written.
        """
        where = Path(path) if path is not None else default_course_path()
        if create and not os.path.lexists(where):
            return cls.create(where, at=_dt.datetime.now(_dt.UTC), settings=settings)
        subject = str(where)
        schema.check_file(where)
        conn = schema.connect(where, mode="ro" if readonly else "rw")
        try:
            database_id = schema.prepare(conn, subject, writable=not readonly)
        except sqlite3.Error as e:
            conn.close()
            raise schema.sqlite_error(subject, e) from e
        except BaseException:
            conn.close()
            raise
        return cls(conn, where, settings if settings is not None else load_course_settings(), database_id)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        at: _dt.datetime,
        settings: CourseSettings | None = None,
    ) -> CourseHistory:
        """Create a new course database at ``path`` (its directory too), created at ``at``: the explicit
        step behind ``ketapump course init``. An existing path, even an empty file, is refused and left as
        it is."""
        where = Path(path) if path is not None else default_course_path()
        subject = str(where)
        _stamp(subject, "at", at)
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o640)
            os.close(fd)
        except FileExistsError:
            raise CourseError(
                subject, "exists already; a course database is never created over a file"
            ) from None
        except OSError as e:
            raise CourseStorageError(subject, f"cannot be created: {e.strerror or e}") from e
        try:
            conn = schema.connect(where, mode="rw")
            try:
                database_id = schema.create_schema(conn, at)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as e:
            where.unlink(missing_ok=True)
            raise schema.sqlite_error(subject, e) from e
        except BaseException:
            where.unlink(missing_ok=True)  # ours, just made: never a half-created database left behind
            raise
        return cls(conn, where, settings if settings is not None else load_course_settings(), database_id)

    @staticmethod
    def check_path(path: str | os.PathLike[str] | None = None) -> Path:
        """The database path (default :func:`default_course_path`) once it is known to be there and to
        be an SQLite file, read without opening it (a session checks this before it asks anything);
        raises what :meth:`open` raises for a missing, empty or non-SQLite file."""
        where = Path(path) if path is not None else default_course_path()
        schema.check_file(where)
        return where

    @staticmethod
    def migrate(path: str | os.PathLike[str], *, at: _dt.datetime) -> schema.Migration:
        """Bring an older course database up to the current schema version, after a backup (see
        :func:`~ketapump.clinical.course.schema.migrate_file`): the explicit step behind ``ketapump course
        migrate``; :meth:`open` never migrates."""
        return schema.migrate_file(Path(path), at=at)

    def close(self) -> None:
        # Closing never fails a caller: every write was committed when its method returned.
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def __enter__(self) -> CourseHistory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes into one transaction: all of them are committed, or none.

        Each write method already runs in its own transaction; inside this block they join the outer
        one. An exception leaving the block rolls everything in it back. Nested blocks join the outermost.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield
                self._conn.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise schema.sqlite_error(str(self.path), e) from e
                raise
            finally:
                self._depth = 0

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Several reads from one consistent state of the file (a read transaction), even while another
        process writes. Inside a write transaction the reads simply join it."""
        with self._lock:
            if self._depth:
                yield
                return
            try:
                self._conn.execute("BEGIN DEFERRED")
                try:
                    yield
                finally:
                    if self._conn.in_transaction:
                        self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise schema.sqlite_error(str(self.path), e) from e

    # -- writes ---------------------------------------------------------------------------------------------

    def ensure_patient(
        self, patient_id: str, weight_kg: float, height_cm: float | None = None, *, at: _dt.datetime
    ) -> Patient:
        """Create the patient, or update an existing patient's weight (and height, when given).

        Sessions keep the weight they were dosed for, so a later change of weight leaves their mg/kg as
        it was. Weight plausibility is the drug library's check; here it only has to be positive.
        """
        patient_id = normalise_patient_id(patient_id)
        subject = f"patient {patient_id}"
        weight = _amount(subject, "weight_kg", weight_kg, allow_zero=False)
        height = None if height_cm is None else _amount(subject, "height_cm", height_cm, allow_zero=False)
        stamp = _stamp(subject, "at", at)
        with self.transaction():
            row = self._conn.execute(
                "SELECT created_at FROM patients WHERE patient_id = ?", (patient_id,)
            ).fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO patients (patient_id, weight_kg, height_cm, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (patient_id, weight, height, stamp, stamp),
                )
            else:
                if stamp < row["created_at"]:
                    raise CourseError(subject, f"at {stamp} is before the patient was created")
                self._conn.execute(
                    "UPDATE patients SET weight_kg = ?, height_cm = coalesce(?, height_cm), updated_at = ? "
                    "WHERE patient_id = ?",
                    (weight, height, stamp, patient_id),
                )
            return self.patient(patient_id)

    def begin_session(  # noqa: PLR0917 (the session orchestrator passes the record positionally)
        self,
        session_id: str,
        patient_id: str,
        protocol: str,
        started_at: _dt.datetime,
        programmed_mg: float,
        log_path: str | os.PathLike[str] | None = None,
    ) -> Session:
        """Record that a session started; it is in progress until :meth:`end_session`.

        Until then every dose window it overlaps counts its ``programmed_mg``. Refused
        (:class:`~ketapump.errors.CourseError`) while another session of the patient is in progress
        (:meth:`refuse_if_open`).
        """
        patient_id = normalise_patient_id(patient_id)
        subject = f"session {session_id}"
        _text(subject, "session_id", session_id)
        _text(subject, "protocol", protocol)
        stamp = _stamp(subject, "started_at", started_at)
        programmed = _amount(subject, "programmed_mg", programmed_mg, allow_zero=False)
        with self.transaction():
            patient = self.patient(patient_id)
            existing = self._conn.execute(
                "SELECT patient_id, started_at FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            if existing is not None:
                raise CourseError(
                    subject,
                    f"already exists (patient {existing['patient_id']}, started {existing['started_at']})",
                )
            self.refuse_if_open(patient_id)
            self._conn.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
                (
                    session_id,
                    patient_id,
                    protocol,
                    patient.weight_kg,
                    stamp,
                    programmed,
                    None if log_path is None else os.fspath(log_path),
                ),
            )
            return self.session(session_id)

    def open_sessions(self, patient_id: str) -> tuple[Session, ...]:
        """The patient's sessions still in progress (none, unless one is running or a crash left it)."""
        return tuple(s for s in self.sessions(patient_id) if s.in_progress)

    def refuse_if_open(self, patient_id: str) -> None:
        """Raises :class:`~ketapump.errors.CourseError` if a session of the patient is in progress: one
        patient has one infusion at a time, and a session a crash left open must be ended (with what its
        audit log says it delivered: ``ketapump course end``) before the next one starts."""
        for session in self.open_sessions(patient_id):
            raise CourseError(
                f"patient {patient_id}",
                f"session {session.session_id} is in progress since {_iso(session.started_at)}: one session "
                "at a time; if it is not running (a crash left it open), end it with `ketapump course end "
                f"{session.session_id} --delivered-mg MG --reason TEXT` from its audit log first",
            )

    def end_session(
        self, session_id: str, ended_at: _dt.datetime, delivered_mg: float, outcome: str
    ) -> Session:
        """Record how a session ended: when, the dose actually delivered, and the outcome (``complete``,
        ``interlock``, ``pump_alarm``, ``operator``, ``transport``…). A session ends once."""
        subject = f"session {session_id}"
        stamp = _stamp(subject, "ended_at", ended_at)
        delivered = _amount(subject, "delivered_mg", delivered_mg, allow_zero=True)
        _text(subject, "outcome", outcome)
        with self.transaction():
            session = self.session(session_id)
            if session.ended_at is not None:
                raise CourseError(subject, f"already ended at {_iso(session.ended_at)} ({session.outcome})")
            if ended_at < session.started_at:
                raise CourseError(
                    subject, f"ended_at {stamp} is before the session started ({_iso(session.started_at)})"
                )
            self._conn.execute(
                "UPDATE sessions SET ended_at = ?, delivered_mg = ?, outcome = ? WHERE session_id = ?",
                (stamp, delivered, outcome, session_id),
            )
            return self.session(session_id)

    def record_alarm(self, session_id: str, at: _dt.datetime, code: str, detail: str = "") -> Alarm:
        """Append an alarm (kernel interlock, pump alarm, vital-sign alarm…) to a session's record."""
        subject = f"session {session_id}"
        stamp = _stamp(subject, "at", at)
        _text(subject, "code", code)
        if not isinstance(detail, str):
            raise CourseError(subject, "detail must be text")
        with self.transaction():
            self.session(session_id)
            self._conn.execute(
                "INSERT INTO alarms (session_id, at, code, detail) VALUES (?, ?, ?, ?)",
                (session_id, stamp, code, detail),
            )
        return Alarm(session_id, _time(stamp), code, detail)

    def record_override(
        self,
        patient_id: str,
        session_id: str | None,
        kind: str,
        reason: str,
        at: _dt.datetime,
        *,
        who: str | None = None,
    ) -> Override:
        """Append a soft-limit or course-rule override: the rule or limit (``kind``), the reason given,
        when, and who confirmed it (``None`` where the caller has no operator identity, as in the demo).
        ``session_id`` may be ``None`` when the override was given before the session was begun; when
        given, the session must be this patient's."""
        patient_id = normalise_patient_id(patient_id)
        subject = f"patient {patient_id}"
        stamp = _stamp(subject, "at", at)
        _text(subject, "kind", kind)
        _text(subject, "reason", reason)
        if who is not None:
            _text(subject, "who", who)
        with self.transaction():
            self.patient(patient_id)
            if session_id is not None:
                owner = self.session(session_id).patient_id
                if owner != patient_id:
                    raise CourseError(
                        f"session {session_id}", f"belongs to patient {owner}, not {patient_id}"
                    )
            self._conn.execute(
                "INSERT INTO overrides (patient_id, session_id, kind, reason, at, who) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (patient_id, session_id, kind, reason, stamp, who),
            )
        return Override(patient_id, session_id, kind, reason, _time(stamp), who)

    def record_score(
        self,
        patient_id: str,
        instrument: str,
        score: int,
        at: _dt.datetime,
        *,
        session_id: str | None = None,
        who: str | None = None,
    ) -> Score:
        """Append a rating-scale score (PHQ-9 0–27, MADRS 0–60, whole numbers) for a visit, with who
        recorded it; ``session_id`` (the patient's) when it belongs to an infusion. Out of range, an
        unknown scale or another patient's session: :class:`CourseError`, nothing written."""
        subject = f"patient {patient_id}"
        stamp = _stamp(subject, "at", at)
        value = check_score(subject, instrument, score)
        if who is not None:
            _text(subject, "who", who)
        with self.transaction():
            self.patient(patient_id)
            if session_id is not None:
                self._own_session(patient_id, session_id)
            self._conn.execute(
                "INSERT INTO scores (patient_id, session_id, at, instrument, score, who) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (patient_id, session_id, stamp, instrument, value, who),
            )
        return Score(patient_id, session_id, _time(stamp), instrument, value, who)

    def scores(self, patient_id: str) -> tuple[Score, ...]:
        """The patient's scores in time order."""
        self.patient(patient_id)
        rows = self._read(
            "SELECT patient_id, session_id, at, instrument, score, who FROM scores WHERE patient_id = ? "
            "ORDER BY at, score_id",
            (patient_id,),
        )
        return tuple(
            Score(r["patient_id"], r["session_id"], _time(r["at"]), r["instrument"], r["score"], r["who"])
            for r in rows
        )

    def grant_standing_override(
        self,
        patient_id: str,
        kind: str,
        reason: str,
        *,
        who: str,
        granted_at: _dt.datetime,
        expires_at: _dt.datetime,
    ) -> StandingOverride:
        """Append a standing override: the soft limit or course rule ``kind`` is confirmed for every
        session of the patient that starts from ``granted_at`` up to ``expires_at`` (both included),
        with ``reason``, by ``who`` (required: a standing decision has an author). An expiry not after
        the grant: :class:`CourseError`."""
        subject = f"patient {patient_id}"
        granted = _stamp(subject, "granted_at", granted_at)
        expires = _stamp(subject, "expires_at", expires_at)
        for name, value in (("kind", kind), ("reason", reason), ("who", who)):
            _text(subject, name, value)
        if expires_at <= granted_at:
            raise CourseError(
                subject, f"a standing override must expire after it is granted ({expires} ≤ {granted})"
            )
        with self.transaction():
            self.patient(patient_id)
            self._conn.execute(
                "INSERT INTO standing_overrides (patient_id, kind, reason, who, granted_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (patient_id, kind, reason.strip(), who.strip(), granted, expires),
            )
        return StandingOverride(patient_id, kind, reason.strip(), who.strip(), _time(granted), _time(expires))

    def standing_overrides(
        self, patient_id: str, at: _dt.datetime | None = None
    ) -> tuple[StandingOverride, ...]:
        """The patient's standing overrides (in force at ``at`` when given), latest grant first."""
        self.patient(patient_id)
        sql = (
            "SELECT patient_id, kind, reason, who, granted_at, expires_at FROM standing_overrides "
            "WHERE patient_id = ?"
        )
        args: tuple[object, ...] = (patient_id,)
        if at is not None:
            stamp = _stamp(f"patient {patient_id}", "at", at)
            sql += " AND granted_at <= ? AND expires_at >= ?"
            args += (stamp, stamp)
        rows = self._read(sql + " ORDER BY granted_at DESC, standing_id DESC", args)
        return tuple(
            StandingOverride(
                r["patient_id"],
                r["kind"],
                r["reason"],
                r["who"],
                _time(r["granted_at"]),
                _time(r["expires_at"]),
            )
            for r in rows
        )

    def _own_session(self, patient_id: str, session_id: str) -> None:
        owner = self.session(session_id).patient_id
        if owner != patient_id:
            raise CourseError(f"session {session_id}", f"belongs to patient {owner}, not {patient_id}")

    def add_note(self, session_id: str, text: str, at: _dt.datetime, *, who: str | None = None) -> Note:
        """Attach a journal note, written by ``who``, to a session, from the session's start on. A note
        written more than ``journal.within_h`` (24 h) after the session ended is kept and flagged late
        (:attr:`Note.late_h`); one before the session started is refused (:class:`CourseError`), and
        one for an unknown session too (:class:`CourseRecordNotFoundError`)."""
        subject = f"session {session_id}"
        stamp = _stamp(subject, "at", at)
        _text(subject, "text", text)
        if who is not None:
            _text(subject, "who", who)
        with self.transaction():
            session = self.session(session_id)
            if at < session.started_at:
                raise CourseError(
                    subject, f"a note at {stamp} is before the session started ({_iso(session.started_at)})"
                )
            self._conn.execute(
                "INSERT INTO notes (session_id, at, text, who) VALUES (?, ?, ?, ?)",
                (session_id, stamp, text, who),
            )
        return Note(session_id, _time(stamp), text, who, self._late_h(session, at))

    def record_action(
        self,
        session_id: str,
        at: _dt.datetime,
        action: str,
        *,
        actor: Literal["operator", "vitals", "protocol"],
        who: str | None,
        source: str,
        accepted: bool,
        reason: str = "",
        why: str = "",
        detail: dict[str, Any] | None = None,
    ) -> ActionRecord:
        """Append an action on a session's infusion (see :class:`ActionRecord`). Only an operator's
        action names a person: ``who`` must be ``None`` for the vitals gate and the protocol."""
        subject = f"session {session_id}"
        stamp = _stamp(subject, "at", at)
        _text(subject, "action", action)
        _text(subject, "source", source)
        if actor not in ("operator", "vitals", "protocol"):
            raise CourseError(subject, f"actor must be operator, vitals or protocol, not {actor!r}")
        if who is not None:
            if actor != "operator":
                raise CourseError(subject, f"an action by the {actor} names no person (who={who!r})")
            _text(subject, "who", who)
        if not isinstance(accepted, bool):
            raise CourseError(subject, "accepted must be true or false")
        for name, value in (("reason", reason), ("why", why)):
            if not isinstance(value, str):
                raise CourseError(subject, f"{name} must be text")
        try:
            body = json.dumps(detail or {}, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise CourseError(subject, f"detail must be plain JSON data: {e}") from e
        with self.transaction():
            self.session(session_id)
            self._conn.execute(
                "INSERT INTO actions (session_id, at, action, actor, who, source, accepted, reason, why, "
                "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, stamp, action, actor, who, source, int(accepted), reason, why, body),
            )
        return ActionRecord(
            session_id, _time(stamp), action, actor, who, source, accepted, reason, why, json.loads(body)
        )

    def record_observation(
        self,
        session_id: str,
        at: _dt.datetime,
        kind: str,
        value: float | None,
        *,
        scale: str = "",
        note: str = "",
        who: str | None = None,
    ) -> Observation:
        """Append an observation (a side effect on its scale, or a note). Which kinds and scales exist
        is the bedside vocabulary's business (``data/bedside.toml``); here a value must be finite and an
        observation without one must have a note."""
        subject = f"session {session_id}"
        stamp = _stamp(subject, "at", at)
        _text(subject, "kind", kind)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise CourseError(subject, f"an observation's value must be a finite number, not {value!r}")
        if not isinstance(scale, str) or not isinstance(note, str):
            raise CourseError(subject, "scale and note must be text")
        if value is None and not note.strip():
            raise CourseError(subject, "an observation without a value needs a note")
        if who is not None:
            _text(subject, "who", who)
        stored = None if value is None else float(value)
        with self.transaction():
            self.session(session_id)
            self._conn.execute(
                "INSERT INTO observations (session_id, at, kind, value, scale, note, who) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_id, stamp, kind, stored, scale, note, who),
            )
        return Observation(session_id, _time(stamp), kind, stored, scale, note, who)

    def record_medication(  # noqa: PLR0917 (the record's fields, in the order people say them)
        self,
        session_id: str,
        at: _dt.datetime,
        drug: str,
        dose: float,
        unit: str,
        route: str,
        *,
        reason: str = "",
        who: str | None = None,
    ) -> Medication:
        """Append a medication given during a session."""
        subject = f"session {session_id}"
        stamp = _stamp(subject, "at", at)
        _text(subject, "drug", drug)
        amount = _amount(subject, "dose", dose, allow_zero=False)
        _text(subject, "unit", unit)
        _text(subject, "route", route)
        if not isinstance(reason, str):
            raise CourseError(subject, "reason must be text")
        if who is not None:
            _text(subject, "who", who)
        with self.transaction():
            self.session(session_id)
            self._conn.execute(
                "INSERT INTO medications (session_id, at, drug, dose, unit, route, reason, who) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, stamp, drug, amount, unit, route, reason, who),
            )
        return Medication(session_id, _time(stamp), drug, amount, unit, route, reason, who)

    def _late_h(self, session: Session, at: _dt.datetime) -> float | None:
        """Hours past the journal window a note at ``at`` is, or ``None`` within it (both ends in)."""
        if session.ended_at is None:
            return None
        late = (at - session.ended_at) / _dt.timedelta(hours=1) - self.settings.journal.within_h
        return late if late > 0 else None

    def seal_log(  # noqa: PLR0917 (one record's fields, in the table's order)
        self,
        session_id: str,
        log_path: str | os.PathLike[str],
        records: int,
        head: str,
        key_id: str | None,
        at: _dt.datetime,
    ) -> LogSeal:
        """Record how a session's audit log ended: its record count and the hash of its last record (the
        chain head), once it is closed. ``ketapump log verify`` compares the file with it, so closing
        records dropped from the file are caught. A session is sealed once."""
        subject = f"session {session_id}"
        stamp = _stamp(subject, "at", at)
        path = _text(subject, "log_path", os.fspath(log_path))
        if isinstance(records, bool) or not isinstance(records, int) or records < 1:
            raise CourseError(subject, f"records must be a positive count, not {records!r}")
        with self.transaction():
            self.session(session_id)
            if self.log_seal(session_id) is not None:
                raise CourseError(subject, "its audit log is sealed already")
            self._conn.execute(
                "INSERT INTO log_seals (session_id, log_path, records, head, key_id, sealed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, path, records, head, key_id, stamp),
            )
        return LogSeal(session_id, path, records, head, key_id, _time(stamp))

    def log_seal(self, session_id: str) -> LogSeal | None:
        """The seal of a session's audit log (:meth:`seal_log`), or ``None`` when it was never sealed."""
        rows = self._read(
            "SELECT session_id, log_path, records, head, key_id, sealed_at FROM log_seals "
            "WHERE session_id = ?",
            (session_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return LogSeal(
            r["session_id"], r["log_path"], r["records"], r["head"], r["key_id"], _time(r["sealed_at"])
        )

    def near_patients(self, patient_id: str) -> list[str]:
        """The patients already recorded whose id is near ``patient_id`` but not it (a typo would start a
        second course and hide the first from the course rules; see
        :func:`~ketapump.clinical.course.location.near_patient_ids`)."""
        patient_id = normalise_patient_id(patient_id)
        rows = self._read("SELECT patient_id FROM patients", ())
        return near_patient_ids(patient_id, (r["patient_id"] for r in rows))

    # -- reading records ------------------------------------------------------------------------------------

    def _read(self, sql: str, args: tuple[object, ...]) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise schema.sqlite_error(str(self.path), e) from e

    def patient(self, patient_id: str) -> Patient:
        patient_id = normalise_patient_id(patient_id)
        rows = self._read(
            "SELECT patient_id, weight_kg, height_cm, created_at, updated_at FROM patients "
            "WHERE patient_id = ?",
            (patient_id,),
        )
        if not rows:
            raise CourseRecordNotFoundError(f"patient {patient_id}", "is not in the course history")
        row = rows[0]
        return Patient(
            row["patient_id"],
            row["weight_kg"],
            row["height_cm"],
            _time(row["created_at"]),
            _time(row["updated_at"]),
        )

    def session(self, session_id: str) -> Session:
        rows = self._read(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,))
        if not rows:
            raise CourseRecordNotFoundError(f"session {session_id}", "is not in the course history")
        return _session(rows[0])

    def sessions(self, patient_id: str) -> tuple[Session, ...]:
        """The patient's sessions in order of start."""
        patient_id = normalise_patient_id(patient_id)
        self.patient(patient_id)
        rows = self._read(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE patient_id = ? ORDER BY started_at, session_id",
            (patient_id,),
        )
        return tuple(_session(row) for row in rows)

    def sessions_in_progress(self) -> tuple[Session, ...]:
        """Every patient's sessions that began and never ended, in order of start: running now
        somewhere, or interrupted (the process that ran them died)."""
        rows = self._read(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE ended_at IS NULL ORDER BY started_at, session_id",
            (),
        )
        return tuple(_session(row) for row in rows)

    def alarms(self, session_id: str) -> tuple[Alarm, ...]:
        self.session(session_id)
        rows = self._read(
            "SELECT session_id, at, code, detail FROM alarms WHERE session_id = ? ORDER BY at, alarm_id",
            (session_id,),
        )
        return tuple(Alarm(r["session_id"], _time(r["at"]), r["code"], r["detail"]) for r in rows)

    def notes(self, session_id: str) -> tuple[Note, ...]:
        session = self.session(session_id)
        rows = self._read(
            "SELECT session_id, at, text, who FROM notes WHERE session_id = ? ORDER BY at, note_id",
            (session_id,),
        )
        return tuple(
            Note(r["session_id"], _time(r["at"]), r["text"], r["who"], self._late_h(session, _time(r["at"])))
            for r in rows
        )

    def actions(self, session_id: str) -> tuple[ActionRecord, ...]:
        """The session's actions in the order they were taken."""
        self.session(session_id)
        rows = self._read(
            "SELECT session_id, at, action, actor, who, source, accepted, reason, why, detail FROM actions "
            "WHERE session_id = ? ORDER BY at, action_id",
            (session_id,),
        )
        return tuple(
            ActionRecord(
                r["session_id"],
                _time(r["at"]),
                r["action"],
                r["actor"],
                r["who"],
                r["source"],
                bool(r["accepted"]),
                r["reason"],
                r["why"],
                json.loads(r["detail"]),
            )
            for r in rows
        )

    def observations(self, session_id: str) -> tuple[Observation, ...]:
        self.session(session_id)
        rows = self._read(
            "SELECT session_id, at, kind, value, scale, note, who FROM observations WHERE session_id = ? "
            "ORDER BY at, observation_id",
            (session_id,),
        )
        return tuple(
            Observation(
                r["session_id"], _time(r["at"]), r["kind"], r["value"], r["scale"], r["note"], r["who"]
            )
            for r in rows
        )

    def medications(self, session_id: str) -> tuple[Medication, ...]:
        self.session(session_id)
        rows = self._read(
            "SELECT session_id, at, drug, dose, unit, route, reason, who FROM medications "
            "WHERE session_id = ? ORDER BY at, medication_id",
            (session_id,),
        )
        return tuple(
            Medication(
                r["session_id"],
                _time(r["at"]),
                r["drug"],
                r["dose"],
                r["unit"],
                r["route"],
                r["reason"],
                r["who"],
            )
            for r in rows
        )

    def overrides(self, patient_id: str) -> tuple[Override, ...]:
        patient_id = normalise_patient_id(patient_id)
        self.patient(patient_id)
        rows = self._read(
            "SELECT patient_id, session_id, kind, reason, at, who FROM overrides WHERE patient_id = ? "
            "ORDER BY at, override_id",
            (patient_id,),
        )
        return tuple(
            Override(r["patient_id"], r["session_id"], r["kind"], r["reason"], _time(r["at"]), r["who"])
            for r in rows
        )

    # -- the queries the course rules need ------------------------------------------------------------------

    def last_start(self, patient_id: str, before: _dt.datetime) -> _dt.datetime | None:
        """The latest session start at or before ``before`` (inclusive: a session starting at exactly
        ``before`` is returned), or ``None``. Sessions of every outcome count, in progress or not.

        For the 44 h rule, call it *before* :meth:`begin_session` of the new session, with the proposed
        start; called after, it returns the new session's own start.
        """
        patient_id = normalise_patient_id(patient_id)
        subject = f"patient {patient_id}"
        stamp = _stamp(subject, "before", before)
        self.patient(patient_id)
        rows = self._read(
            "SELECT max(started_at) AS last FROM sessions WHERE patient_id = ? AND started_at <= ?",
            (patient_id, stamp),
        )
        last = rows[0]["last"]
        return None if last is None else _time(last)

    def starts_between(
        self, patient_id: str, start: _dt.datetime, end: _dt.datetime
    ) -> tuple[_dt.datetime, ...]:
        """Starts of the patient's sessions in ``[start, end]`` (both ends included), in order; its
        length is the session count the "sessions per 7 days" rule needs. Every outcome counts."""
        patient_id = normalise_patient_id(patient_id)
        first, last = self._window(patient_id, start, end)
        rows = self._read(
            "SELECT started_at FROM sessions WHERE patient_id = ? AND started_at BETWEEN ? AND ? "
            "ORDER BY started_at",
            (patient_id, first, last),
        )
        return tuple(_time(r["started_at"]) for r in rows)

    def delivered_mg_between(self, patient_id: str, start: _dt.datetime, end: _dt.datetime) -> float:
        """The dose (mg) of every session that overlaps ``[start, end]`` (both ends included), for a
        cumulative-dose cap.

        Chosen so the total is never too low: a session counts whole if any part of it falls in the
        window (one that began before ``start`` but ended at or after it counts, as does one that starts
        exactly at ``end``); an ended session counts its delivered dose; a session still in progress, or
        never ended because its process died, counts its programmed dose and, having no end, overlaps every
        window from its start on until :meth:`end_session` records what it really delivered.
        """
        patient_id = normalise_patient_id(patient_id)
        first, last = self._window(patient_id, start, end)
        rows = self._read(
            "SELECT coalesce(sum(coalesce(delivered_mg, programmed_mg)), 0.0) AS mg FROM sessions "
            "WHERE patient_id = ? AND started_at <= ? AND (ended_at IS NULL OR ended_at >= ?)",
            (patient_id, last, first),
        )
        return float(rows[0]["mg"])

    def _window(self, patient_id: str, start: _dt.datetime, end: _dt.datetime) -> tuple[str, str]:
        patient_id = normalise_patient_id(patient_id)
        subject = f"patient {patient_id}"
        first, last = _stamp(subject, "start", start), _stamp(subject, "end", end)
        if last < first:
            raise CourseError(subject, f"window end {last} is before its start {first}")
        self.patient(patient_id)
        return first, last

    # -- the course -----------------------------------------------------------------------------------------

    def course_summary(self, patient_id: str, now: _dt.datetime) -> CourseSummary:
        """The patient's course as of ``now``: every session (date, dose, mg/kg, interval since the
        previous start), the initial series and, once it is complete, the maintenance window; with the
        alarms, journal notes, overrides (and standing ones) and the outcome scores' trends. Reported
        against ``settings``, never enforced."""
        patient_id = normalise_patient_id(patient_id)
        _stamp(f"patient {patient_id}", "now", now)
        with self._snapshot():
            patient = self.patient(patient_id)
            sessions = self.sessions(patient_id)
            alarms = tuple(a for s in sessions for a in self.alarms(s.session_id))
            notes = tuple(n for s in sessions for n in self.notes(s.session_id))
            overrides = self.overrides(patient_id)
            observations = tuple(o for s in sessions for o in self.observations(s.session_id))
            medications = tuple(m for s in sessions for m in self.medications(s.session_id))
            actions = tuple(a for s in sessions for a in self.actions(s.session_id))
            standing = self.standing_overrides(patient_id)
        series_cfg = self.settings.initial_series
        counted_outcomes = set(series_cfg.counted_outcomes)
        entries: list[SeriesEntry] = []
        previous: Session | None = None
        for s in sessions:
            hours = _dt.timedelta(hours=1)
            interval = None if previous is None else (s.started_at - previous.started_at) / hours
            entries.append(SeriesEntry(s, interval, s.outcome in counted_outcomes))
            previous = s
        counted = [e.session for e in entries if e.counts]
        required = series_cfg.sessions
        within = _dt.timedelta(days=series_cfg.within_days)
        complete = len(counted) >= required
        first = counted[0].started_at if counted else None
        deadline = None if first is None else first + within
        completed_at = counted[required - 1].started_at if complete else None
        series = InitialSeries(
            required=required,
            within_days=series_cfg.within_days,
            counted=len(counted),
            complete=complete,
            first_start=first,
            deadline=deadline,
            completed_at=completed_at,
            on_schedule=None if completed_at is None or deadline is None else completed_at <= deadline,
            past_deadline=not complete and deadline is not None and now > deadline,
        )
        maintenance = None
        if complete:
            cfg = self.settings.maintenance
            last = counted[-1].started_at
            due_from = last + _dt.timedelta(days=cfg.due_from_days)
            overdue_after = last + _dt.timedelta(days=cfg.overdue_after_days)
            status: Literal["not_due", "due", "overdue"] = (
                "not_due" if now < due_from else "due" if now <= overdue_after else "overdue"
            )
            maintenance = MaintenanceWindow(last, due_from, overdue_after, status)
        return CourseSummary(
            patient=patient,
            now=now,
            sessions=tuple(entries),
            initial_series=series,
            maintenance=maintenance,
            open_sessions=tuple(s.session_id for s in sessions if s.in_progress),
            alarms=tuple(sorted(alarms, key=lambda a: a.at)),
            notes=tuple(sorted(notes, key=lambda n: n.at)),
            overrides=overrides,
            observations=observations,
            medications=medications,
            actions=actions,
            standing_overrides=standing,
            outcomes=trends(self.scores(patient_id), self.settings.outcomes),
        )
