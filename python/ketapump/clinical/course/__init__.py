"""Course history: each patient's infusion sessions, alarms, journal notes and overrides, and each
session's operator actions, observations of side effects and medications given, kept in SQLite.

A course of ketamine infusions lasts weeks: an initial series of six over 2–3 weeks, then maintenance
every 2–6 weeks. The rules that decide whether a new session may start (44 h since the last start, at
most three sessions in any 7 days, a 7-day cumulative dose cap) need the earlier sessions, and the
clinician needs the course at a glance. The rules themselves are checked elsewhere (the drug-library limit
check); this module keeps the history, answers the window queries the rules need, and reports the
course (:meth:`CourseHistory.course_summary`, ``ketapump course show``).

How the store is kept trustworthy:

* **Crash-safe writes.** Every logical write (one method call, or several under
  :meth:`CourseHistory.transaction`) is one SQLite transaction, begun with ``BEGIN IMMEDIATE`` so it holds
  the write lock from its first statement. The file runs in WAL mode with ``synchronous=FULL``: when a
  method returns, its commit is on disk, and a process killed mid-write leaves the previous state, never
  half a session. A method that raises has written nothing.
* **Invariants in the schema, not only in Python.** Foreign keys are on; CHECK constraints hold an ended
  session's end time, delivered dose and outcome together and keep times ordered; alarms, notes and
  overrides are append-only and an ended session is immutable (triggers refuse the change). Another
  program editing the file with the ``sqlite3`` shell meets the same rules.
* **Time is an argument.** Every method that records or compares a time takes it as a timezone-aware
  ``datetime``; nothing here reads the wall clock (the session runner stamps records with the wall
  clock in UTC, whatever clock the pump runs on; the CLI defaults to "now"). Times are stored as
  fixed-width UTC ISO-8601 text (``2025-01-06T09:00:00.000000Z``), which sorts chronologically as text
  and reads well in a shell.
* **Never silently replaced.** A database is created only by an explicit step (:meth:`CourseHistory.create`,
  ``ketapump course init``) and carries an id of its own (:attr:`CourseHistory.database_id`) that every
  session's audit log records. Opening a path that is missing, empty, not SQLite, another program's file
  or damaged is an error naming the path; nothing is created in its place and the file is left as it was.
* **Versioned.** ``PRAGMA user_version`` holds :data:`SCHEMA_VERSION` and ``PRAGMA application_id`` marks
  the file as ours; a file from a newer ketapump is refused, and an older one is migrated only by an
  explicit step with a backup first (:meth:`CourseHistory.migrate`, ``ketapump course migrate``).
* **One patient, one id.** Patient ids are normalised by one rule (:data:`PATIENT_ID_RULE`: trimmed,
  lower-cased, ``a-z 0-9 . _ -``), so ``"PC "`` and ``"pc"`` are one patient; a new id close to a known one
  is reported (:meth:`CourseHistory.near_patients`).

Window edges: :meth:`~CourseHistory.last_start`, :meth:`~CourseHistory.starts_between` and
:meth:`~CourseHistory.delivered_mg_between` include both ends of their window. In a limit check, counting
a session that sits exactly on the edge is the safe error; missing it is not.

The course's numbers (6 sessions, 21 days, 14–42 days, 24 h for journal notes) are clinician-owned
defaults in ``data/course.toml`` (:func:`load_course_settings`), not constants in this code.

The package, one module per part:

* :mod:`~ketapump.clinical.course.settings`: :class:`CourseSettings` and :func:`load_course_settings`,
  the clinician-owned numbers;
* :mod:`~ketapump.clinical.course.location`: :func:`default_course_path`, and how times, text and
  amounts are checked and stored;
* :mod:`~ketapump.clinical.course.records`: the records handed out (:class:`Patient`, :class:`Session`,
  :class:`Alarm`, :class:`Note`, :class:`Override`, :class:`SeriesEntry`, :class:`InitialSeries`,
  :class:`MaintenanceWindow`, :class:`CourseSummary`);
* :mod:`~ketapump.clinical.course.schema`: the SQLite schema as numbered steps, and how a file is checked,
  created and migrated;
* :mod:`~ketapump.clinical.course.store`: :class:`CourseHistory`.

Import the names below from this package (``from ketapump.clinical.course import CourseHistory``).
"""

from __future__ import annotations

from ketapump.clinical.course.location import (
    PATIENT_ID_RULE,
    default_course_path,
    near_patient_ids,
    normalise_patient_id,
)
from ketapump.clinical.course.outcomes import INSTRUMENTS, Score, Trend, plot_trend
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
from ketapump.clinical.course.schema import APPLICATION_ID, SCHEMA_VERSION, Migration
from ketapump.clinical.course.settings import CourseSettings, CourseSettingsError, load_course_settings
from ketapump.clinical.course.store import CourseHistory

__all__ = [
    "APPLICATION_ID",
    "INSTRUMENTS",
    "PATIENT_ID_RULE",
    "SCHEMA_VERSION",
    "ActionRecord",
    "Alarm",
    "CourseHistory",
    "CourseSettings",
    "CourseSettingsError",
    "CourseSummary",
    "InitialSeries",
    "LogSeal",
    "MaintenanceWindow",
    "Medication",
    "Migration",
    "Note",
    "Observation",
    "Override",
    "Patient",
    "Score",
    "SeriesEntry",
    "Session",
    "StandingOverride",
    "Trend",
    "default_course_path",
    "load_course_settings",
    "near_patient_ids",
    "normalise_patient_id",
    "plot_trend",
]
