"""The course database's schema, one numbered step per version, and the rules for opening a file.

A course database is created only by an explicit step (:meth:`CourseHistory.create`, ``ketapump course
init``) and an older one is brought up to date only by an explicit migration with a backup first
(:func:`migrate_file`, ``ketapump course migrate``). Opening never creates, never migrates and never
writes to a file that is not a current course database:

* a missing path, an empty file, a file that is not SQLite, another program's SQLite file, a newer or an
  older schema, and a damaged file are each refused with the path named; the checks that decide this read
  the file and never write it (an emptied database stays empty: it is evidence);
* every SQLite error becomes a :class:`~ketapump.errors.CourseError`: damaged or refused data, or a
  :class:`~ketapump.errors.CourseStorageError` when the file cannot be read or written (read-only, full,
  an I/O error, locked by another writer for too long).

The schema is :data:`STEPS`, applied in order: a new database runs every step, a migration the steps
above the file's version, in one transaction (:func:`_apply_steps`, shared by both). A step is one
self-contained change; a new version adds a step, never edits an old one. Adding version N:

1. write ``_STEP_N`` (its DDL) and ``_step_N(conn, stamp)`` (runs it, then moves any existing rows; it
   must not commit: it runs inside the migration's transaction, so a failure leaves the file unchanged);
2. register it in :data:`STEPS` (``SCHEMA_VERSION`` follows);
3. add a test that migrates a version N-1 file and opens the result (``tests/test_course.py``'s
   ``_version_1_database`` shows how to build an older file: its steps, its ``user_version``, rows).
"""

from __future__ import annotations

import datetime as _dt
import os
import sqlite3
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ketapump.clinical.course.location import _stamp, normalise_patient_id
from ketapump.errors import CourseError, CourseRecordNotFoundError, CourseStorageError
from ketapump.validation import file_kind

#: ``PRAGMA application_id`` of a course database: "KPCH" (ketapump course history).
APPLICATION_ID: Final = 0x4B504348
#: How long a write waits for another process's write lock before giving up (a CLI note while the
#: orchestrator writes).
BUSY_TIMEOUT_S: Final = 10.0
#: The first bytes of every SQLite database file.
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"

_STEP_1: Final = """
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

# Step 2: the database knows itself (an id every audit log records), each session's audit log is sealed
# (its record count and chain head at the end), and patient ids follow one rule.
_STEP_2: Final = """
CREATE TABLE database_identity (
    singleton    INTEGER PRIMARY KEY NOT NULL CHECK (singleton = 1),
    database_id  TEXT NOT NULL CHECK (length(database_id) = 32 AND database_id NOT GLOB '*[^0-9a-f]*'),
    created_at   TEXT NOT NULL
);
CREATE TRIGGER database_identity_fixed_u BEFORE UPDATE ON database_identity
    BEGIN SELECT RAISE(ABORT, 'the database id never changes'); END;
CREATE TRIGGER database_identity_fixed_d BEFORE DELETE ON database_identity
    BEGIN SELECT RAISE(ABORT, 'the database id never changes'); END;

CREATE TABLE log_seals (
    session_id  TEXT PRIMARY KEY NOT NULL REFERENCES sessions (session_id),
    log_path    TEXT NOT NULL CHECK (length(log_path) > 0),
    records     INTEGER NOT NULL CHECK (records > 0),
    head        TEXT NOT NULL CHECK (length(head) = 64 AND head NOT GLOB '*[^0-9a-f]*'),
    key_id      TEXT,
    sealed_at   TEXT NOT NULL
);
CREATE TRIGGER log_seals_append_only_u BEFORE UPDATE ON log_seals
    BEGIN SELECT RAISE(ABORT, 'log seals are append-only'); END;
CREATE TRIGGER log_seals_append_only_d BEFORE DELETE ON log_seals
    BEGIN SELECT RAISE(ABORT, 'log seals are append-only'); END;

CREATE TRIGGER patients_id_normalised BEFORE INSERT ON patients
    WHEN NEW.patient_id <> lower(trim(NEW.patient_id)) OR NEW.patient_id GLOB '*[^a-z0-9._-]*'
        OR NEW.patient_id NOT GLOB '[a-z0-9]*' OR length(NEW.patient_id) > 64
    BEGIN SELECT RAISE(ABORT, 'a patient id is trimmed, lower-case, a-z 0-9 . _ - (see docs/course.md)'); END;
"""


def _append_only(*tables: str) -> str:
    """Triggers that refuse every update and delete of ``tables``' rows (the file keeps its own rules)."""
    return "".join(
        f"CREATE TRIGGER {table}_append_only_{kind} BEFORE {verb} ON {table}\n"
        f"    BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END;\n"
        for table in tables
        for kind, verb in (("u", "UPDATE"), ("d", "DELETE"))
    )


# Step 3, the operator's hand: who wrote each journal note, and each session's operator actions (and the
# vitals gate's and the protocol's holds), observations of side effects and medications given.
_STEP_3: Final = """
ALTER TABLE notes ADD COLUMN who TEXT CHECK (who IS NULL OR length(trim(who)) > 0);

CREATE TABLE actions (
    action_id   INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (session_id),
    at          TEXT NOT NULL,
    action      TEXT NOT NULL CHECK (length(action) > 0),    -- pause, resume, slow, hold, release, …
    actor       TEXT NOT NULL CHECK (actor IN ('operator', 'vitals', 'protocol')),
    who         TEXT CHECK (who IS NULL OR length(trim(who)) > 0),  -- the operator's name
    source      TEXT NOT NULL CHECK (length(source) > 0),    -- cli, signal, keys, api, web, script, engine
    accepted    INTEGER NOT NULL CHECK (accepted IN (0, 1)),
    reason      TEXT NOT NULL,
    why         TEXT NOT NULL,                               -- why it was refused, or what it left
    detail      TEXT NOT NULL CHECK (json_valid(detail)),
    CHECK (actor = 'operator' OR who IS NULL)                -- automation never acts in a person's name
);
CREATE INDEX actions_by_session ON actions (session_id, at);

CREATE TABLE observations (
    observation_id INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (session_id),
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (length(kind) > 0),      -- nausea, dissociation, cadss, …
    value       REAL,                                        -- on the kind's scale; NULL: none
    scale       TEXT NOT NULL,
    note        TEXT NOT NULL,
    who         TEXT CHECK (who IS NULL OR length(trim(who)) > 0),
    CHECK (value IS NOT NULL OR length(trim(note)) > 0)
);
CREATE INDEX observations_by_session ON observations (session_id, at);

CREATE TABLE medications (
    medication_id INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (session_id),
    at          TEXT NOT NULL,
    drug        TEXT NOT NULL CHECK (length(trim(drug)) > 0),
    dose        REAL NOT NULL CHECK (dose > 0),
    unit        TEXT NOT NULL CHECK (length(unit) > 0),
    route       TEXT NOT NULL CHECK (length(route) > 0),
    reason      TEXT NOT NULL,
    who         TEXT CHECK (who IS NULL OR length(trim(who)) > 0)
);
CREATE INDEX medications_by_session ON medications (session_id, at);
""" + _append_only("actions", "observations", "medications")


# Step 4: each visit's rating-scale scores (PHQ-9, MADRS: ranges checked by the file) and standing
# per-patient overrides of a soft limit or course rule, with their author and expiry.
_STEP_4: Final = """
CREATE TABLE scores (
    score_id    INTEGER PRIMARY KEY,
    patient_id  TEXT NOT NULL REFERENCES patients (patient_id),
    session_id  TEXT REFERENCES sessions (session_id),       -- NULL: a visit without an infusion
    at          TEXT NOT NULL,
    instrument  TEXT NOT NULL CHECK (instrument IN ('phq9', 'madrs')),
    score       INTEGER NOT NULL CHECK (
        typeof(score) = 'integer' AND score >= 0
        AND score <= CASE instrument WHEN 'phq9' THEN 27 ELSE 60 END
    ),
    who         TEXT CHECK (who IS NULL OR length(trim(who)) > 0)
);
CREATE INDEX scores_by_patient ON scores (patient_id, at);

CREATE TABLE standing_overrides (
    standing_id  INTEGER PRIMARY KEY,
    patient_id   TEXT NOT NULL REFERENCES patients (patient_id),
    kind         TEXT NOT NULL CHECK (length(kind) > 0),     -- the soft limit or course rule it confirms
    reason       TEXT NOT NULL CHECK (length(trim(reason)) > 0),
    who          TEXT NOT NULL CHECK (length(trim(who)) > 0),
    granted_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL CHECK (expires_at > granted_at)
);
CREATE INDEX standing_overrides_by_patient ON standing_overrides (patient_id, kind, expires_at);
""" + _append_only("scores", "standing_overrides")


def _step_1(conn: sqlite3.Connection, _created_at: str) -> None:
    for statement in _statements(_STEP_1):
        conn.execute(statement)


def _step_2(conn: sqlite3.Connection, created_at: str) -> None:
    for statement in _statements(_STEP_2):
        conn.execute(statement)
    conn.execute(
        "INSERT INTO database_identity (singleton, database_id, created_at) VALUES (1, ?, ?)",
        (uuid.uuid4().hex, created_at),
    )
    _normalise_existing_patient_ids(conn)


def _step_3(conn: sqlite3.Connection, _created_at: str) -> None:
    for statement in _statements(_STEP_3):
        conn.execute(statement)


def _step_4(conn: sqlite3.Connection, _created_at: str) -> None:
    for statement in _statements(_STEP_4):
        conn.execute(statement)


#: Version → the step that brings a database from the version before it to this one.
STEPS: Final[dict[int, Callable[[sqlite3.Connection, str], None]]] = {
    1: _step_1,
    2: _step_2,
    3: _step_3,
    4: _step_4,
}
#: The schema this code reads and writes (``PRAGMA user_version``).
SCHEMA_VERSION: Final = max(STEPS)


def _normalise_existing_patient_ids(conn: sqlite3.Connection) -> None:
    """Rewrites version-1 patient ids to the one rule (``"PC "`` → ``"pc"``). Two ids that become one, or
    an id the rule cannot express, stop the migration: merging two patients' records is a clinician's
    decision, never a migration's."""
    ids = [row[0] for row in conn.execute("SELECT patient_id FROM patients")]
    renames: dict[str, str] = {}
    problems: list[str] = []
    for old in ids:
        try:
            new = normalise_patient_id(old)
        except CourseError as e:
            problems.append(e.problem)
            continue
        if new != old:
            renames[old] = new
    targets: dict[str, list[str]] = {}
    for old in ids:
        targets.setdefault(renames.get(old, old), []).append(old)
    problems += [
        f"patient ids {', '.join(repr(o) for o in sorted(olds))} would all become {new!r}: merge them first"
        for new, olds in targets.items()
        if len(olds) > 1
    ]
    if problems:
        raise CourseError("patient ids", "cannot be normalised: " + "; ".join(problems))
    if not renames:
        return
    # The append-only and immutable triggers guard against edits, not against this one rewrite: lifted
    # inside the migration's transaction and restored exactly as they were.
    guarded = ("overrides_append_only_u", "sessions_ended_immutable")
    marks = ", ".join("?" * len(guarded))
    query = f"SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name IN ({marks})"
    saved = [row[0] for row in conn.execute(query, guarded)]
    conn.execute("PRAGMA defer_foreign_keys = ON")
    for name in guarded:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    for old, new in renames.items():
        for table in ("patients", "sessions", "overrides"):
            conn.execute(f"UPDATE {table} SET patient_id = ? WHERE patient_id = ?", (new, old))
    for sql in saved:
        conn.execute(sql)


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


# --------------------------------------------------------------------------------------------------------
# SQLite errors
# --------------------------------------------------------------------------------------------------------

# Primary result codes (https://sqlite.org/rescode.html).
_DAMAGED: Final = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_REFUSED: Final = {19, 20, 25}  # SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_RANGE


def sqlite_error(subject: str, error: sqlite3.Error) -> CourseError:
    """The course error for an SQLite error on the database ``subject``: damaged (a corrupt page, not a
    database), refused by the schema's rules, or a storage failure (read-only, full, I/O, locked…)."""
    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    if code in _DAMAGED or "malformed" in str(error):
        return CourseError(subject, f"is damaged: {error}")
    if code in _REFUSED:
        return CourseError(subject, f"refused by the schema: {error}")
    return CourseStorageError(subject, f"cannot be read or written: {error}")


# --------------------------------------------------------------------------------------------------------
# Opening a file
# --------------------------------------------------------------------------------------------------------


def check_file(where: Path) -> None:
    """Refuses, before SQLite touches it, a path that cannot be a course database: missing, not a regular
    file, empty, or not SQLite. Reads at most the 16-byte header; never writes."""
    subject = str(where)
    try:
        st = os.stat(where)
    except FileNotFoundError:
        raise CourseRecordNotFoundError(
            subject, f"no such course database (create one with `ketapump course init {where}`)"
        ) from None
    except OSError as e:
        raise CourseStorageError(subject, f"cannot be read: {e.strerror or e}") from e
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise CourseError(subject, f"is {kind}, not a course database")
    if st.st_size == 0:
        raise CourseError(
            subject,
            "is an empty file, not a course database: refused and left as it is (a database is created "
            "only by `ketapump course init`; an emptied one is restored from its backup)",
        )
    try:
        with open(where, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as e:
        raise CourseStorageError(subject, f"cannot be read: {e.strerror or e}") from e
    if head != _SQLITE_MAGIC:
        raise CourseError(subject, "is not a database (no SQLite header), not a course database")


def connect(where: Path, *, mode: str) -> sqlite3.Connection:
    """An SQLite connection in autocommit mode (transactions are explicit) with foreign keys on.
    ``mode`` is SQLite's URI mode: ``rw`` (never creates a file), ``ro`` or ``rwc``."""
    subject = str(where)
    uri = f"file:{urllib.parse.quote(str(where.absolute()))}?mode={mode}"
    try:
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
        )
    except sqlite3.Error as e:
        raise sqlite_error(subject, e) from e
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        if conn.execute("PRAGMA foreign_keys").fetchone()[0] != 1:
            raise CourseError(subject, "this SQLite cannot enforce foreign keys")
    except BaseException as e:
        conn.close()
        if isinstance(e, sqlite3.Error):
            raise sqlite_error(subject, e) from e
        raise
    return conn


def schema_version(conn: sqlite3.Connection, subject: str) -> int:
    """The file's schema version, once it is known to be a course database (reads only)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if app_id != APPLICATION_ID:
        if app_id == 0 and version == 0:
            raise CourseError(subject, "is an SQLite file of some other program, not a course database")
        raise CourseError(subject, f"is not a course database (application_id {app_id:#x})")
    if version > SCHEMA_VERSION:
        raise CourseError(
            subject, f"was written by a newer ketapump (schema {version}; this one reads {SCHEMA_VERSION})"
        )
    if version < 1:
        raise CourseError(subject, f"has unknown schema version {version}")
    return version


def check_integrity(conn: sqlite3.Connection, subject: str) -> None:
    """SQLite's quick check: a damaged page is found when the file is opened, not mid-session."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise CourseError(subject, f"is damaged: {'; '.join(problems)}")


def prepare(conn: sqlite3.Connection, subject: str, *, writable: bool) -> str:
    """Checks an opened file is a current, intact course database, sets its durable journal, and returns
    its database id. Reads first and writes (the journal mode) only once the file is known to be ours."""
    version = schema_version(conn, subject)
    if version < SCHEMA_VERSION:
        raise CourseError(
            subject,
            f"has schema version {version}; this ketapump reads {SCHEMA_VERSION}: migrate it explicitly "
            f"with `ketapump course migrate {subject}` (a backup is kept)",
        )
    check_integrity(conn, subject)
    if writable:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    return str(conn.execute("SELECT database_id FROM database_identity").fetchone()[0])


def create_schema(conn: sqlite3.Connection, at: _dt.datetime) -> str:
    """Builds every step into a new, empty database in one transaction; returns the new database id.
    The header (application id, version) is checkpointed into the file itself before returning."""
    created = _stamp("course database", "at", at)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    _apply_steps(conn, 0, created)
    return str(conn.execute("SELECT database_id FROM database_identity").fetchone()[0])


def _apply_steps(conn: sqlite3.Connection, version: int, stamp: str) -> None:
    """The steps above ``version`` in one transaction, the header marked current; then checkpointed, so
    the file itself (not only its WAL) carries the new version. Version 0 is a new database: it must be
    empty inside the transaction (another process cannot slip its own schema in between)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise CourseError("course database", "is not empty")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            STEPS[step](conn, stamp)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_checkpoint(FULL)")


# --------------------------------------------------------------------------------------------------------
# Migrating
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """What :func:`migrate_file` did: the versions, and the backup of the file as it was (``None`` when
    the file was already current and nothing was done)."""

    path: Path
    from_version: int
    to_version: int
    backup: Path | None


def migrate_file(where: Path, *, at: _dt.datetime) -> Migration:
    """Brings an older course database to :data:`SCHEMA_VERSION`: a complete backup first (SQLite's
    online backup, synced, beside the file as ``NAME.vN-TIME.bak``), then every missing step in one
    transaction. A current file is left as it is. Raises :class:`~ketapump.errors.CourseError` naming the
    file for anything that is not an older course database, and when a step cannot apply (nothing is
    changed then; the backup stays)."""
    subject = str(where)
    stamp = _stamp(subject, "at", at)
    check_file(where)
    conn = connect(where, mode="rw")
    try:
        try:
            version = schema_version(conn, subject)
            if version == SCHEMA_VERSION:
                return Migration(where, version, version, None)
            check_integrity(conn, subject)
            backup = where.with_name(f"{where.name}.v{version}-{stamp.replace(':', '')}.bak")
            _backup(conn, backup)
            _apply_steps(conn, version, stamp)
        except sqlite3.Error as e:
            raise sqlite_error(subject, e) from e
    finally:
        conn.close()
    return Migration(where, version, SCHEMA_VERSION, backup)


def _backup(conn: sqlite3.Connection, backup: Path) -> None:
    """A complete copy of the database at ``backup`` (which must not exist), synced to disk."""
    if backup.exists():
        raise CourseError(str(backup), "exists already; the backup never overwrites a file")
    target = sqlite3.connect(backup)
    try:
        conn.backup(target)
    finally:
        target.close()
    fd = os.open(backup, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(backup.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
