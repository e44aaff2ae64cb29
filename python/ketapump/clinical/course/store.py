"""The store: :class:`CourseHistory` over one SQLite file, its schema (:data:`SCHEMA_VERSION`,
:data:`APPLICATION_ID`) and the schema's creation or check when a file is opened."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

from ketapump.clinical.course.location import _amount, _iso, _stamp, _text, _time, default_course_path
from ketapump.clinical.course.records import (
    Alarm,
    CourseSummary,
    InitialSeries,
    MaintenanceWindow,
    Note,
    Override,
    Patient,
    SeriesEntry,
    Session,
)
from ketapump.clinical.course.settings import CourseSettings, load_course_settings
from ketapump.errors import CourseError, CourseRecordNotFoundError

#: The schema this code reads and writes (``PRAGMA user_version``).
SCHEMA_VERSION: Final = 1
#: ``PRAGMA application_id`` of a course database: "KPCH" (ketapump course history).
APPLICATION_ID: Final = 0x4B504348
#: How long a write waits for another process's write lock before giving up (a CLI note while the
#: orchestrator writes).
BUSY_TIMEOUT_S: Final = 10.0

_SCHEMA: Final = """
CREATE TABLE patients (
    patient_id  TEXT PRIMARY KEY NOT NULL CHECK (length(patient_id) > 0),
    weight_kg   REAL NOT NULL CHECK (weight_kg > 0),
    height_cm   REAL CHECK (height_cm IS NULL OR height_cm > 0),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL CHECK (updated_at >= created_at)
);

CREATE TABLE sessions (
    session_id     TEXT PRIMARY KEY NOT NULL CHECK (length(session_id) > 0),
    patient_id     TEXT NOT NULL REFERENCES patients (patient_id),
    protocol       TEXT NOT NULL CHECK (length(protocol) > 0),
    weight_kg      REAL NOT NULL CHECK (weight_kg > 0),      -- the weight this session was dosed for
    started_at     TEXT NOT NULL,
    programmed_mg  REAL NOT NULL CHECK (programmed_mg > 0),
    log_path       TEXT,                                     -- the session's audit log
    ended_at       TEXT,
    delivered_mg   REAL CHECK (delivered_mg IS NULL OR delivered_mg >= 0),
    outcome        TEXT CHECK (outcome IS NULL OR length(outcome) > 0),
    CHECK ((ended_at IS NULL) = (delivered_mg IS NULL) AND (ended_at IS NULL) = (outcome IS NULL)),
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE INDEX sessions_by_patient ON sessions (patient_id, started_at);

CREATE TABLE alarms (
    alarm_id    INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (session_id),
    at          TEXT NOT NULL,
    code        TEXT NOT NULL CHECK (length(code) > 0),
    detail      TEXT NOT NULL
);
CREATE INDEX alarms_by_session ON alarms (session_id, at);

CREATE TABLE notes (
    note_id     INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (session_id),
    at          TEXT NOT NULL,
    text        TEXT NOT NULL CHECK (length(trim(text)) > 0)
);
CREATE INDEX notes_by_session ON notes (session_id, at);

CREATE TABLE overrides (
    override_id  INTEGER PRIMARY KEY,
    patient_id   TEXT NOT NULL REFERENCES patients (patient_id),
    session_id   TEXT REFERENCES sessions (session_id),      -- NULL: given before a session existed
    kind         TEXT NOT NULL CHECK (length(kind) > 0),     -- the rule or limit overridden
    reason       TEXT NOT NULL CHECK (length(trim(reason)) > 0),
    at           TEXT NOT NULL,
    who          TEXT CHECK (who IS NULL OR length(trim(who)) > 0)  -- NULL: no operator identity
);
CREATE INDEX overrides_by_patient ON overrides (patient_id, at);

CREATE TRIGGER alarms_append_only_u BEFORE UPDATE ON alarms
    BEGIN SELECT RAISE(ABORT, 'alarms are append-only'); END;
CREATE TRIGGER alarms_append_only_d BEFORE DELETE ON alarms
    BEGIN SELECT RAISE(ABORT, 'alarms are append-only'); END;
CREATE TRIGGER notes_append_only_u BEFORE UPDATE ON notes
    BEGIN SELECT RAISE(ABORT, 'notes are append-only'); END;
CREATE TRIGGER notes_append_only_d BEFORE DELETE ON notes
    BEGIN SELECT RAISE(ABORT, 'notes are append-only'); END;
CREATE TRIGGER overrides_append_only_u BEFORE UPDATE ON overrides
    BEGIN SELECT RAISE(ABORT, 'overrides are append-only'); END;
CREATE TRIGGER overrides_append_only_d BEFORE DELETE ON overrides
    BEGIN SELECT RAISE(ABORT, 'overrides are append-only'); END;
CREATE TRIGGER sessions_ended_immutable BEFORE UPDATE ON sessions WHEN OLD.ended_at IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'an ended session cannot be changed'); END;
CREATE TRIGGER sessions_no_delete BEFORE DELETE ON sessions
    BEGIN SELECT RAISE(ABORT, 'sessions cannot be deleted'); END;
"""

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
    processes may open the same file (writes wait up to :data:`BUSY_TIMEOUT_S` for each other).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, settings: CourseSettings) -> None:
        """Internal: wrap a configured connection. Use :meth:`open`."""
        self._conn = conn
        self.path = path
        self.settings = settings
        self._lock = threading.RLock()
        self._depth = 0

    # -- opening and closing --------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        settings: CourseSettings | None = None,
    ) -> CourseHistory:
        """Open (or, with ``create``, create) the course database at ``path`` (default:
        :func:`default_course_path`), creating its directory and schema as needed.

        Raises :class:`CourseRecordNotFoundError` when the file is missing and ``create`` is false, and
        :class:`CourseError` naming the file when it cannot be opened, is not a course database, or was
        written by a newer ketapump.
        """
        where = Path(path) if path is not None else default_course_path()
        subject = str(where)
        if create:
            try:
                where.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CourseError(subject, f"cannot create its directory: {e.strerror or e}") from e
        elif not where.exists():
            raise CourseRecordNotFoundError(subject, "no such course database")
        # mode=rw never creates a file, so a mistyped path is reported instead of becoming an empty database.
        uri = f"file:{urllib.parse.quote(str(where.absolute()))}?mode={'rwc' if create else 'rw'}"
        try:
            conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
            )
        except sqlite3.Error as e:
            raise CourseError(subject, f"cannot open: {e}") from e
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            if conn.execute("PRAGMA foreign_keys").fetchone()[0] != 1:
                raise CourseError(subject, "this SQLite cannot enforce foreign keys")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            _prepare_schema(conn, subject)
        except sqlite3.Error as e:
            conn.close()
            raise CourseError(subject, f"cannot be used as a course database: {e}") from e
        except BaseException:
            conn.close()
            raise
        return cls(conn, where, settings if settings is not None else load_course_settings())

    def close(self) -> None:
        with self._lock:
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
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
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
            self._conn.execute("BEGIN DEFERRED")
            try:
                yield
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    # -- writes ---------------------------------------------------------------------------------------------

    def ensure_patient(
        self, patient_id: str, weight_kg: float, height_cm: float | None = None, *, at: _dt.datetime
    ) -> Patient:
        """Create the patient, or update an existing patient's weight (and height, when given).

        Sessions keep the weight they were dosed for, so a later change of weight leaves their mg/kg as
        it was. Weight plausibility is the drug library's check; here it only has to be positive.
        """
        subject = f"patient {patient_id}"
        _text(subject, "patient_id", patient_id)
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

        Until then every dose window it overlaps counts its ``programmed_mg``.
        """
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

    def add_note(self, session_id: str, text: str, at: _dt.datetime) -> Note:
        """Attach a journal note to a session. Accepted from the session's start until
        ``journal.within_h`` (24 h) after it ended, both ends included; refused otherwise with a
        :class:`CourseError`, and for an unknown session with :class:`CourseRecordNotFoundError`."""
        subject = f"session {session_id}"
        stamp = _stamp(subject, "at", at)
        _text(subject, "text", text)
        within_h = self.settings.journal.within_h
        with self.transaction():
            session = self.session(session_id)
            if at < session.started_at:
                raise CourseError(
                    subject, f"a note at {stamp} is before the session started ({_iso(session.started_at)})"
                )
            if session.ended_at is not None:
                late_h = (at - session.ended_at) / _dt.timedelta(hours=1)
                if late_h > within_h:
                    raise CourseError(
                        subject,
                        f"a note at {stamp} is {late_h:.1f} h after the session ended "
                        f"({_iso(session.ended_at)}); journal notes are accepted for {within_h:g} h",
                    )
            self._conn.execute(
                "INSERT INTO notes (session_id, at, text) VALUES (?, ?, ?)", (session_id, stamp, text)
            )
        return Note(session_id, _time(stamp), text)

    # -- reading records ------------------------------------------------------------------------------------

    def _read(self, sql: str, args: tuple[object, ...]) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def patient(self, patient_id: str) -> Patient:
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
        self.patient(patient_id)
        rows = self._read(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE patient_id = ? ORDER BY started_at, session_id",
            (patient_id,),
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
        self.session(session_id)
        rows = self._read(
            "SELECT session_id, at, text FROM notes WHERE session_id = ? ORDER BY at, note_id", (session_id,)
        )
        return tuple(Note(r["session_id"], _time(r["at"]), r["text"]) for r in rows)

    def overrides(self, patient_id: str) -> tuple[Override, ...]:
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
        first, last = self._window(patient_id, start, end)
        rows = self._read(
            "SELECT coalesce(sum(coalesce(delivered_mg, programmed_mg)), 0.0) AS mg FROM sessions "
            "WHERE patient_id = ? AND started_at <= ? AND (ended_at IS NULL OR ended_at >= ?)",
            (patient_id, last, first),
        )
        return float(rows[0]["mg"])

    def _window(self, patient_id: str, start: _dt.datetime, end: _dt.datetime) -> tuple[str, str]:
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
        alarms, journal notes and overrides. Reported against ``settings``, never enforced."""
        _stamp(f"patient {patient_id}", "now", now)
        with self._snapshot():
            patient = self.patient(patient_id)
            sessions = self.sessions(patient_id)
            alarms = tuple(a for s in sessions for a in self.alarms(s.session_id))
            notes = tuple(n for s in sessions for n in self.notes(s.session_id))
            overrides = self.overrides(patient_id)
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
        )


def _prepare_schema(conn: sqlite3.Connection, subject: str) -> None:
    """Create the schema in a new file (one transaction), or check an existing file is ours and current."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if version == 0 and app_id == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise CourseError(subject, "is an SQLite file of some other program, not a course database")
            for statement in _statements(_SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif app_id != APPLICATION_ID:
            raise CourseError(subject, f"is not a course database (application_id {app_id:#x})")
        elif version > SCHEMA_VERSION:
            raise CourseError(
                subject,
                f"was written by a newer ketapump (schema {version}; this one reads {SCHEMA_VERSION})",
            )
        elif version != SCHEMA_VERSION:
            raise CourseError(subject, f"has unknown schema version {version}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterator[str]:
    """The schema's statements one by one (``executescript`` would commit our transaction first)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete statement in the schema: {buffer.strip()[:60]}")
