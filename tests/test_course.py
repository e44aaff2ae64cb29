"""The course history: real SQLite files, window edges, the course summary, killed writers, the CLI.

Everything runs against real database files in ``tmp_path``; the crash test kills a real writer process
with SIGKILL and checks the file with SQLite itself. Times are fixed (virtual), never the wall clock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_contract import assert_documented
from fshelpers import ketapump_with_read_only
from ketapump.cli import app
from ketapump.clinical.course import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Alarm,
    CourseHistory,
    CourseSettingsError,
    Note,
    Override,
    Session,
    default_course_path,
    load_course_settings,
    near_patient_ids,
    normalise_patient_id,
    schema,
)
from ketapump.errors import CourseError, CourseRecordNotFoundError, KetapumpError
from simhelpers import ketapump

T0 = dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.UTC)  # a Monday, 09:00 UTC
US = dt.timedelta(microseconds=1)
H = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
#: The initial series of the summary tests: Mon, Wed, Sat, Wed, Mon, Fri — six sessions over 18 days.
SERIES_DAYS = (0, 2, 5, 9, 14, 18)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "course.sqlite3"


@pytest.fixture
def history(db: Path) -> Iterator[CourseHistory]:
    with CourseHistory.create(db, at=T0 - DAY) as h:
        h.ensure_patient("p-1", 70.0, 175.0, at=T0 - DAY)
        yield h


def run_session(
    h: CourseHistory,
    session_id: str,
    start: dt.datetime,
    *,
    delivered_mg: float = 35.0,
    outcome: str = "complete",
    minutes: float = 41.0,
    patient: str = "p-1",
) -> Session:
    h.begin_session(session_id, patient, "KP-40MIN", start, 35.0, f"/logs/{session_id}.jsonl")
    return h.end_session(session_id, start + dt.timedelta(minutes=minutes), delivered_mg, outcome)


# --------------------------------------------------------------------------------------------------------
# The file: where it lives, schema, durability settings
# --------------------------------------------------------------------------------------------------------


def test_default_path_follows_xdg_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_course_path() == tmp_path / "data" / "ketapump" / "course.sqlite3"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in ("", "relative/dir"):  # empty or relative: ignored, as the XDG spec says
        monkeypatch.setenv("XDG_DATA_HOME", unset)
        assert default_course_path() == tmp_path / "home" / ".local" / "share" / "ketapump" / "course.sqlite3"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_course_path() == tmp_path / "home" / ".local" / "share" / "ketapump" / "course.sqlite3"


def test_the_default_path_is_used_and_a_database_is_created_only_explicitly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    where = tmp_path / "xdg" / "ketapump" / "course.sqlite3"
    with pytest.raises(CourseRecordNotFoundError, match=r"no such course database.*ketapump course init"):
        CourseHistory.open()
    assert not where.parent.exists()  # opening never creates, not even the directory
    with CourseHistory.create(at=T0) as made:
        assert made.path == where
        made_id = made.database_id
    with CourseHistory.open() as h:
        assert (h.path, h.database_id) == (where, made_id)
    with pytest.raises(CourseError, match="exists already"):
        CourseHistory.create(at=T0)  # never over a file, not even its own


def test_new_file_gets_schema_version_identity_and_durable_settings(history: CourseHistory, db: Path) -> None:
    conn = history._conn
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    # Seen by an independent connection: the file itself carries version, id and WAL mode.
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {
            "patients", "sessions", "alarms", "notes", "overrides", "database_identity", "log_seals",
            "actions", "observations", "medications",
            "scores", "standing_overrides",
        }  # fmt: skip
        (database_id,) = raw.execute("SELECT database_id FROM database_identity").fetchone()
        assert database_id == history.database_id and len(database_id) == 32
        with pytest.raises(sqlite3.DatabaseError, match="never changes"):
            raw.execute("UPDATE database_identity SET database_id = ?", ("0" * 32,))
    finally:
        raw.close()
    # Two databases never share an id: a log names the one history it was checked against.
    with CourseHistory.create(db.with_name("other.sqlite3"), at=T0) as other:
        assert other.database_id != history.database_id


def test_missing_and_mistyped_paths_are_refused_and_never_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "course.sqlite3"
    with pytest.raises(CourseRecordNotFoundError, match="no such course database") as info:
        CourseHistory.open(path)
    assert info.value.subject == str(path)
    assert not path.parent.exists()
    real = tmp_path / "base.sqlite3"
    CourseHistory.create(real, at=T0).close()
    mistyped = tmp_path / "base.sqlit3"
    with pytest.raises(CourseRecordNotFoundError, match=str(mistyped)):
        CourseHistory.open(mistyped)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.sqlite3"]


@pytest.mark.parametrize("content", [b"", b"\0" * 4096], ids=["emptied", "zeroed"])
def test_an_emptied_database_is_refused_and_left_as_it_is(tmp_path: Path, content: bytes) -> None:
    """`: > course.sqlite3` must not turn into a fresh, empty history that lets every dose cap pass."""
    db = tmp_path / "course.sqlite3"
    with CourseHistory.create(db, at=T0) as h:
        h.ensure_patient("p-1", 70.0, at=T0)
    db.write_bytes(content)
    with pytest.raises(CourseError) as info:
        CourseHistory.open(db)
    assert str(db) in str(info.value)
    assert "empty file" in str(info.value) if not content else "not a database" in str(info.value)
    assert db.read_bytes() == content  # nothing written into it
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()


def test_foreign_newer_older_and_damaged_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(CourseError, match="some other program"):
        CourseHistory.open(other)
    assert other.read_bytes() == before  # another program's file is not switched to WAL, or touched

    newer = tmp_path / "newer.sqlite3"
    CourseHistory.create(newer, at=T0).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CourseError, match=rf"newer ketapump \(schema {SCHEMA_VERSION + 1}"):
        CourseHistory.open(newer)

    older = _version_1_database(tmp_path / "older.sqlite3", ["p-1"])
    with pytest.raises(CourseError, match=r"has schema version 1; .* `ketapump course migrate ") as info:
        CourseHistory.open(older)
    assert f"ketapump course migrate {older}`" in str(info.value)

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database, it is a text file" * 100)
    with pytest.raises(CourseError, match="not a database") as info:
        CourseHistory.open(garbage)
    assert str(garbage) in str(info.value)


def _damage_a_table_page(db: Path) -> None:
    """Garbage over the sessions table's first page, as a bad sector or a stray write would leave."""
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sessions'").fetchone()
    conn.close()
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size + 8)
        f.write(b"\xa5" * (page_size - 16))


def test_a_database_with_a_damaged_page_is_refused_when_opened(tmp_path: Path) -> None:
    db = tmp_path / "course.sqlite3"
    with CourseHistory.create(db, at=T0) as h:
        h.ensure_patient("p-1", 70.0, at=T0)
        for i, day in enumerate(SERIES_DAYS):
            run_session(h, f"s-{i}", T0 + day * DAY)
    _damage_a_table_page(db)
    with pytest.raises(CourseError, match="is damaged") as info:
        CourseHistory.open(db)
    assert str(db) in str(info.value) and not isinstance(info.value, CourseRecordNotFoundError)


def _version_1_database(path: Path, patients: list[str]) -> Path:
    """A database as ketapump wrote it at schema version 1 (the first step only), with ``patients``
    (ids as version 1 took them) and one ended session each."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    schema.STEPS[1](conn, "2025-01-06T09:00:00.000000Z")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    for i, patient in enumerate(patients):
        conn.execute(
            "INSERT INTO patients VALUES (?, 70.0, NULL, '2025-01-06T09:00:00.000000Z', "
            "'2025-01-06T09:00:00.000000Z')",
            (patient,),
        )
        conn.execute(
            "INSERT INTO sessions VALUES (?, ?, 'ketamine-depression', 70.0, '2025-01-06T09:00:00.000000Z',"
            " 35.0, NULL, '2025-01-06T09:45:00.000000Z', 35.0, 'complete')",
            (f"s-{i}", patient),
        )
        conn.execute(
            "INSERT INTO overrides (patient_id, session_id, kind, reason, at) VALUES (?, ?, 'k', 'r', "
            "'2025-01-06T09:00:00.000000Z')",
            (patient, f"s-{i}"),
        )
    conn.execute("COMMIT")
    conn.close()
    return path


def test_an_older_database_is_migrated_only_explicitly_with_a_backup(tmp_path: Path) -> None:
    db = _version_1_database(tmp_path / "course.sqlite3", ["PC ", "p-2"])
    with pytest.raises(CourseError, match="has schema version 1"):
        CourseHistory.open(db)  # never migrated implicitly
    done = CourseHistory.migrate(db, at=T0)
    assert (done.from_version, done.to_version) == (1, SCHEMA_VERSION)
    assert done.backup is not None and done.backup.name.startswith("course.sqlite3.v1-")
    raw = sqlite3.connect(done.backup)
    try:  # the backup is the whole version-1 database, ids as they were
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
        assert {r[0] for r in raw.execute("SELECT patient_id FROM patients")} == {"PC ", "p-2"}
    finally:
        raw.close()
    with CourseHistory.open(db) as h:
        # One rule for ids: "PC " is the patient "pc", sessions and overrides follow it.
        assert [s.session_id for s in h.sessions("pc")] == ["s-0"]
        assert [o.session_id for o in h.overrides("PC")] == ["s-0"]
        assert len(h.database_id) == 32
        # The triggers lifted for the rewrite are back.
        with pytest.raises(sqlite3.IntegrityError, match="an ended session cannot be changed"):
            h._conn.execute("UPDATE sessions SET outcome = 'x' WHERE session_id = 's-0'")
        with pytest.raises(sqlite3.IntegrityError, match="overrides are append-only"):
            h._conn.execute("UPDATE overrides SET reason = 'x'")
    again = CourseHistory.migrate(db, at=T0)
    assert again.backup is None and again.from_version == again.to_version == SCHEMA_VERSION


def test_a_migration_that_would_merge_two_patients_changes_nothing(tmp_path: Path) -> None:
    db = _version_1_database(tmp_path / "course.sqlite3", ["PC", "pc"])
    with pytest.raises(CourseError, match="'PC', 'pc' would all become 'pc': merge them first"):
        CourseHistory.migrate(db, at=T0)
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
        assert {r[0] for r in raw.execute("SELECT patient_id FROM patients")} == {"PC", "pc"}
    finally:
        raw.close()


def test_patient_ids_follow_one_rule_everywhere(history: CourseHistory) -> None:
    assert normalise_patient_id("  PC-7 ") == "pc-7"
    for bad in ("", "   ", "p 1", "p/1", "-p", "ü1", "x" * 65):
        with pytest.raises(CourseError, match="is not valid: a patient id is trimmed, lower-cased"):
            normalise_patient_id(bad)
    history.ensure_patient(" PC ", 70.0, at=T0)
    for spelling in ("pc", "PC", "Pc", "pc ", " PC "):
        assert history.patient(spelling).patient_id == "pc"
    run_session(history, "s-1", T0, patient="PC ")
    assert [s.session_id for s in history.sessions("pc")] == ["s-1"]
    assert history.delivered_mg_between("Pc", T0, T0 + H) == 35.0
    # The schema holds the rule too: a hand-made insert of an unnormalised id is refused.
    with pytest.raises(sqlite3.IntegrityError, match="a patient id is trimmed, lower-case"):
        history._conn.execute(
            "INSERT INTO patients VALUES ('PX', 70.0, NULL, '2025-01-06T09:00:00.000000Z', "
            "'2025-01-06T09:00:00.000000Z')"
        )


def test_near_patient_ids_are_found(history: CourseHistory) -> None:
    for known in ("pc-1", "anna.berg", "jo"):
        history.ensure_patient(known, 70.0, at=T0)
    assert history.near_patients("pc1") == ["pc-1"]  # separators only
    assert history.near_patients("pc_1") == ["pc-1"]
    assert history.near_patients("anna.brg") == ["anna.berg"]  # one deletion
    assert history.near_patients("anan.berg") == ["anna.berg"]  # neighbours swapped
    assert history.near_patients("anna.berx") == ["anna.berg"]  # one substitution
    assert history.near_patients("ja") == []  # short ids: only separators count
    assert history.near_patients("pc-1") == []  # the patient itself is not a near duplicate
    assert near_patient_ids("bob-2", ["bob-1", "bob-3", "bob-22"]) == ["bob-1", "bob-22", "bob-3"]


def test_a_log_seal_round_trips_and_is_written_once(history: CourseHistory) -> None:
    run_session(history, "s-1", T0)
    assert history.log_seal("s-1") is None
    seal = history.seal_log("s-1", "/logs/s-1.jsonl", 42, "ab" * 32, "k1", T0 + H)
    assert history.log_seal("s-1") == seal
    assert (seal.records, seal.head, seal.key_id) == (42, "ab" * 32, "k1")
    with pytest.raises(CourseError, match="sealed already"):
        history.seal_log("s-1", "/logs/s-1.jsonl", 43, "cd" * 32, "k1", T0 + H)
    with pytest.raises(CourseRecordNotFoundError):
        history.seal_log("s-404", "/logs/x.jsonl", 1, "ab" * 32, None, T0)


def test_course_errors_fit_the_hierarchy() -> None:
    assert issubclass(CourseError, KetapumpError) and issubclass(CourseError, ValueError)
    assert issubclass(CourseRecordNotFoundError, CourseError)
    assert issubclass(CourseRecordNotFoundError, LookupError)


# --------------------------------------------------------------------------------------------------------
# Round trips of every table
# --------------------------------------------------------------------------------------------------------


def test_patient_round_trip_and_weight_update(history: CourseHistory, db: Path) -> None:
    created = history.patient("p-1")
    assert (created.weight_kg, created.height_cm, created.created_at) == (70.0, 175.0, T0 - DAY)
    updated = history.ensure_patient("p-1", 72.5, at=T0 + 3 * DAY)  # no height given: kept
    assert (updated.weight_kg, updated.height_cm) == (72.5, 175.0)
    assert (updated.created_at, updated.updated_at) == (T0 - DAY, T0 + 3 * DAY)
    history.ensure_patient("p-2", 55.0, at=T0)
    history.close()
    with CourseHistory.open(db) as again:  # from the file, not from memory
        assert again.patient("p-1") == updated
        assert again.patient("p-2").height_cm is None


def test_session_round_trip_keeps_the_weight_it_was_dosed_for(history: CourseHistory, db: Path) -> None:
    started = history.begin_session("s-1", "p-1", "KP-40MIN", T0, 35.0, Path("/logs/s-1.jsonl"))
    assert started == Session("s-1", "p-1", "KP-40MIN", 70.0, T0, 35.0, "/logs/s-1.jsonl", None, None, None)
    assert started.in_progress and started.counted_mg == 35.0 and started.delivered_mg_per_kg is None
    history.ensure_patient("p-1", 80.0, at=T0 + 10 * H)  # weighed again later
    ended = history.end_session("s-1", T0 + 41 * dt.timedelta(minutes=1), 34.3, "complete")
    history.close()
    with CourseHistory.open(db) as again:
        s = again.session("s-1")
        assert s == ended
        assert s.ended_at == T0 + dt.timedelta(minutes=41)
        assert (s.delivered_mg, s.outcome, s.weight_kg) == (34.3, "complete", 70.0)
        assert s.delivered_mg_per_kg == pytest.approx(0.49)
        assert not s.in_progress and s.counted_mg == 34.3
        assert again.sessions("p-1") == (s,)


def test_alarm_note_and_override_round_trip(history: CourseHistory, db: Path) -> None:
    history.begin_session("s-1", "p-1", "KP-40MIN", T0, 35.0)
    offset = dt.timezone(dt.timedelta(hours=2))  # any aware time is stored as UTC
    a1 = history.record_alarm("s-1", (T0 + 20 * dt.timedelta(minutes=1)).astimezone(offset), "occlusion", "")
    a2 = history.record_alarm("s-1", T0 + 10 * dt.timedelta(minutes=1), "vitals_high_sbp", "SBP 184 mmHg")
    n1 = history.add_note("s-1", "dissociation at 35 min, settled", T0 + H)
    o1 = history.record_override("p-1", "s-1", "min_interval_h", "scheduled by Dr A", T0, who="nurse-7")
    o2 = history.record_override("p-1", None, "sessions_per_7d", "protocol amendment", T0 - H)
    assert a1 == Alarm("s-1", T0 + dt.timedelta(minutes=20), "occlusion", "")
    assert a1.at.utcoffset() == dt.timedelta(0)
    history.close()
    with CourseHistory.open(db) as again:
        assert again.alarms("s-1") == (a2, a1)  # in time order
        assert again.notes("s-1") == (n1,) == (Note("s-1", T0 + H, "dissociation at 35 min, settled"),)
        assert again.overrides("p-1") == (o2, o1)
        assert o2 == Override("p-1", None, "sessions_per_7d", "protocol amendment", T0 - H, None)


def test_history_is_append_only_in_the_file_itself(history: CourseHistory, db: Path) -> None:
    run_session(history, "s-1", T0)
    history.record_alarm("s-1", T0, "occlusion", "x")
    history.add_note("s-1", "ok", T0 + H)
    history.record_override("p-1", "s-1", "dose", "why", T0, who="dr")
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA foreign_keys = ON")
    try:
        for sql in (
            "UPDATE notes SET text = 'edited'",
            "DELETE FROM notes",
            "UPDATE alarms SET code = 'none'",
            "DELETE FROM alarms",
            "UPDATE overrides SET reason = 'other'",
            "DELETE FROM overrides",
            "UPDATE sessions SET delivered_mg = 1.0",  # ended: immutable
            "DELETE FROM sessions",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute(sql)
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            raw.execute("INSERT INTO alarms (session_id, at, code, detail) VALUES ('s-x', 'now', 'c', '')")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # ended without a delivered dose
            raw.execute(
                "INSERT INTO sessions VALUES ('s-2', 'p-1', 'P', 70, '2025', 35, NULL, '2026', NULL, 'ok')"
            )
    finally:
        raw.close()


def test_actions_observations_and_medications_round_trip_with_who(history: CourseHistory, db: Path) -> None:
    run_session(history, "s-1", T0)
    slow = history.record_action(
        "s-1", T0 + 20 * dt.timedelta(minutes=1), "slow", actor="operator", who="nurse A", source="keys",
        accepted=True, reason="nausea", detail={"to_fraction": 0.5, "ends_at_min": 45.1},
    )  # fmt: skip
    refused = history.record_action(
        "s-1", T0 + 21 * dt.timedelta(minutes=1), "resume", actor="operator", who="nurse A", source="web",
        accepted=False, why="vitals alarm active",
    )  # fmt: skip
    hold = history.record_action(
        "s-1", T0 + H, "hold", actor="vitals", who=None, source="engine", accepted=True
    )
    seen = history.record_observation("s-1", T0, "cadss", 14.0, scale="CADSS 0–92", who="dr-a")
    noted = history.record_observation("s-1", T0, "other", None, note="tingling lips", who="nurse A")
    given = history.record_medication("s-1", T0, "ondansetron", 4, "mg", "iv", reason="nausea", who="nurse A")
    history.close()
    with CourseHistory.open(db) as again:
        assert again.actions("s-1") == (slow, refused, hold)
        assert slow.detail == {"to_fraction": 0.5, "ends_at_min": 45.1} and not refused.accepted
        assert again.observations("s-1") == (seen, noted)
        assert again.medications("s-1") == (given,) and given.dose == 4.0


def test_automation_never_acts_in_a_persons_name_and_bad_records_are_refused(history: CourseHistory) -> None:
    run_session(history, "s-1", T0)
    with pytest.raises(CourseError, match="an action by the vitals names no person"):
        history.record_action(
            "s-1", T0, "release", actor="vitals", who="nurse A", source="engine", accepted=True
        )
    with pytest.raises(CourseError, match="actor must be operator, vitals or protocol"):
        history.record_action("s-1", T0, "pause", actor="robot", who=None, source="api", accepted=True)  # type: ignore[arg-type]
    with pytest.raises(CourseError, match="detail must be plain JSON"):
        history.record_action("s-1", T0, "slow", actor="operator", who="a", source="api", accepted=True,
                              detail={"x": float("nan")})  # fmt: skip
    with pytest.raises(CourseError, match="without a value needs a note"):
        history.record_observation("s-1", T0, "other", None)
    with pytest.raises(CourseError, match="finite number"):
        history.record_observation("s-1", T0, "nausea", float("inf"))
    with pytest.raises(CourseError, match="dose must be > 0"):
        history.record_medication("s-1", T0, "ondansetron", 0.0, "mg", "iv")
    with pytest.raises(CourseRecordNotFoundError):
        history.record_medication("s-404", T0, "ondansetron", 4.0, "mg", "iv")
    assert history.actions("s-1") == () and history.observations("s-1") == () == history.medications("s-1")


def test_the_new_tables_hold_their_rules_in_the_file_itself(history: CourseHistory, db: Path) -> None:
    run_session(history, "s-1", T0)
    history.record_action("s-1", T0, "pause", actor="operator", who="a", source="api", accepted=True)
    history.record_observation("s-1", T0, "nausea", 1.0)
    history.record_medication("s-1", T0, "ondansetron", 4.0, "mg", "iv")
    raw = sqlite3.connect(db)
    try:
        for sql in (
            "UPDATE actions SET reason = 'edited'",
            "DELETE FROM actions",
            "UPDATE observations SET value = 0",
            "DELETE FROM observations",
            "UPDATE medications SET dose = 40",
            "DELETE FROM medications",
            # the vitals acting in a person's name
            "INSERT INTO actions (session_id, at, action, actor, who, source, accepted, reason, why, detail) "
            "VALUES ('s-1', 'now', 'release', 'vitals', 'nurse A', 'engine', 1, '', '', '{}')",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute(sql)
    finally:
        raw.close()


def test_a_version_2_file_is_migrated_to_version_3_keeping_everything(tmp_path: Path) -> None:
    """Step 3 (the operator's hand) on a database written before it: names on notes, the actions,
    observations and medications tables, by the one explicit migration."""
    old = tmp_path / "v2.sqlite3"
    stamp = "2025-01-06T09:00:00.000000Z"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for step in (1, 2):  # version 2 exactly as it was shipped
        schema.STEPS[step](conn, stamp)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO patients VALUES ('p-1', 70, NULL, ?, ?)", (stamp, stamp))
    conn.execute(
        "INSERT INTO sessions VALUES ('s-1', 'p-1', 'P', 70, ?, 35, NULL, NULL, NULL, NULL)", (stamp,)
    )
    conn.execute(
        "INSERT INTO notes (session_id, at, text) VALUES ('s-1', '2025-01-06T10:00:00.000000Z', 'old')"
    )
    conn.execute("COMMIT")
    conn.close()
    with pytest.raises(CourseError, match="has schema version 2"):
        CourseHistory.open(old)  # never migrated implicitly
    done = CourseHistory.migrate(old, at=T0)
    assert (done.from_version, done.to_version) == (
        2,
        SCHEMA_VERSION,
    ) and SCHEMA_VERSION == 4  # through step 3 (and step 4)
    with CourseHistory.open(old) as h:
        assert h.notes("s-1") == (Note("s-1", T0 + H, "old", None),)  # written before names were kept
        h.record_action("s-1", T0 + H, "pause", actor="operator", who="a", source="api", accepted=True)
        assert len(h.actions("s-1")) == 1
        with pytest.raises(sqlite3.IntegrityError, match="actions are append-only"):
            h._conn.execute("DELETE FROM actions")


def test_writes_that_break_the_record_are_refused_and_write_nothing(history: CourseHistory) -> None:
    with pytest.raises(CourseRecordNotFoundError, match="patient p-9"):
        history.begin_session("s-1", "p-9", "KP-40MIN", T0, 35.0)
    history.begin_session("s-1", "p-1", "KP-40MIN", T0, 35.0)
    with pytest.raises(CourseError, match="already exists"):
        history.begin_session("s-1", "p-1", "KP-40MIN", T0 + DAY, 35.0)
    with pytest.raises(CourseError, match="no time zone"):
        history.record_alarm("s-1", dt.datetime(2025, 1, 6, 9, 5), "occlusion", "")
    with pytest.raises(CourseError, match="before the session started"):
        history.end_session("s-1", T0 - US, 35.0, "complete")
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(CourseError, match="delivered_mg"):
            history.end_session("s-1", T0 + H, bad, "complete")
    with pytest.raises(CourseError, match="programmed_mg"):
        history.begin_session("s-2", "p-1", "KP-40MIN", T0, 0.0)
    history.end_session("s-1", T0 + H, 35.0, "complete")
    with pytest.raises(CourseError, match="already ended"):
        history.end_session("s-1", T0 + 2 * H, 30.0, "operator")
    history.ensure_patient("p-2", 60.0, at=T0)
    with pytest.raises(CourseError, match="belongs to patient p-1, not p-2"):
        history.record_override("p-2", "s-1", "dose", "why", T0)
    with pytest.raises(CourseError, match="reason"):
        history.record_override("p-1", "s-1", "dose", "   ", T0)
    with pytest.raises(CourseRecordNotFoundError, match="session s-9"):
        history.record_alarm("s-9", T0, "occlusion", "")
    assert [s.session_id for s in history.sessions("p-1")] == ["s-1"]
    assert history.session("s-1").outcome == "complete"
    assert history.alarms("s-1") == () and history.overrides("p-2") == ()


def test_a_transaction_block_commits_all_or_nothing(history: CourseHistory, db: Path) -> None:
    with pytest.raises(CourseRecordNotFoundError), history.transaction():
        history.begin_session("s-1", "p-1", "KP-40MIN", T0, 35.0)
        history.record_alarm("s-1", T0, "occlusion", "")
        history.record_alarm("s-unknown", T0, "occlusion", "")  # fails: everything above is undone
    with pytest.raises(CourseRecordNotFoundError):
        history.session("s-1")
    with history.transaction():
        history.begin_session("s-1", "p-1", "KP-40MIN", T0, 35.0)
        with history.transaction():  # nested: joins the outer one
            history.record_alarm("s-1", T0, "occlusion", "")
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("SELECT count(*) FROM alarms").fetchone()[0] == 1
    finally:
        raw.close()


def test_a_second_process_handle_writes_while_the_first_is_open(history: CourseHistory, db: Path) -> None:
    """A CLI note while the orchestrator holds the file open: WAL lets both in, one writer at a time."""
    history.begin_session("s-1", "p-1", "KP-40MIN", T0, 35.0)
    with CourseHistory.open(db) as other:
        other.add_note("s-1", "from the other handle", T0 + H)
    history.record_alarm("s-1", T0 + 2 * H, "occlusion", "")
    assert [n.text for n in history.notes("s-1")] == ["from the other handle"]


def test_one_handle_is_safe_to_share_between_threads(history: CourseHistory) -> None:
    history.begin_session("s-1", "p-1", "KP-40MIN", T0, 35.0)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(25):
                history.record_alarm("s-1", T0 + dt.timedelta(seconds=100 * k + i), f"code_{k}", str(i))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(history.alarms("s-1")) == 100


# --------------------------------------------------------------------------------------------------------
# Journal notes: within 24 h of the end
# --------------------------------------------------------------------------------------------------------


def test_notes_are_due_within_24_h_of_the_end_and_a_late_one_is_kept_flagged(history: CourseHistory) -> None:
    ended = run_session(history, "s-1", T0).ended_at
    assert ended is not None
    assert history.add_note("s-1", "during the session", T0 + dt.timedelta(minutes=5)).late_h is None
    assert history.add_note("s-1", "on the edge", ended + 24 * H).late_h is None
    late = history.add_note("s-1", "two days on", ended + 72 * H)
    assert late.late_h == pytest.approx(48.0)
    with pytest.raises(CourseError, match="before the session started") as info:
        history.add_note("s-1", "too early", T0 - US)
    assert not isinstance(info.value, CourseRecordNotFoundError)
    assert info.value.subject == "session s-1"
    with pytest.raises(CourseError, match="before the session started"):
        history.add_note("s-1", "too early", T0 - US)
    with pytest.raises(CourseRecordNotFoundError, match="session s-2"):
        history.add_note("s-2", "which session?", T0)
    with pytest.raises(CourseError, match="text"):
        history.add_note("s-1", "  ", T0 + H)
    notes = history.notes("s-1")
    assert [(n.text, n.late_h is not None) for n in notes] == [
        ("during the session", False),
        ("on the edge", False),
        ("two days on", True),
    ]
    assert notes[-1].late_h == pytest.approx(48.0)


def test_notes_are_accepted_while_a_session_is_in_progress(history: CourseHistory) -> None:
    history.begin_session("s-1", "p-1", "KP-40MIN", T0, 35.0)
    history.add_note("s-1", "still infusing", T0 + 30 * DAY)  # no end yet: no 24 h window to run out
    assert len(history.notes("s-1")) == 1


# --------------------------------------------------------------------------------------------------------
# Window queries at their edges (both ends inclusive)
# --------------------------------------------------------------------------------------------------------


def test_last_start_includes_a_start_exactly_at_before(history: CourseHistory) -> None:
    assert history.last_start("p-1", T0) is None
    run_session(history, "s-1", T0)
    run_session(history, "s-2", T0 + 48 * H)
    assert history.last_start("p-1", T0 + 48 * H) == T0 + 48 * H  # the edge: included
    assert history.last_start("p-1", T0 + 48 * H - US) == T0  # one microsecond earlier: the one before
    assert history.last_start("p-1", T0 - US) is None
    assert history.last_start("p-1", T0 + 300 * DAY) == T0 + 48 * H
    with pytest.raises(CourseRecordNotFoundError, match="patient p-9"):
        history.last_start("p-9", T0)


def test_starts_between_includes_both_edges(history: CourseHistory) -> None:
    starts = [T0 + d * DAY for d in (0, 2, 4, 7)]
    for i, start in enumerate(starts):
        run_session(history, f"s-{i}", start, outcome="operator" if i == 1 else "complete")
    week = (T0, T0 + 7 * DAY)
    assert history.starts_between("p-1", *week) == tuple(starts)  # both edges, every outcome
    assert history.starts_between("p-1", T0 + US, T0 + 7 * DAY) == tuple(starts[1:])
    assert history.starts_between("p-1", T0, T0 + 7 * DAY - US) == tuple(starts[:3])
    assert history.starts_between("p-1", T0 + 2 * DAY, T0 + 2 * DAY) == (starts[1],)  # a zero-length window
    assert history.starts_between("p-1", T0 - 7 * DAY, T0 - US) == ()
    history.ensure_patient("p-2", 60.0, at=T0)
    assert history.starts_between("p-2", *week) == ()  # only this patient's sessions
    with pytest.raises(CourseError, match="before its start"):
        history.starts_between("p-1", T0 + DAY, T0)


def test_delivered_mg_between_counts_every_session_that_overlaps_the_window(history: CourseHistory) -> None:
    # s-a: T0 .. T0+40 min, 30 mg delivered; s-b: T0+3 d .. +40 min, 20 mg delivered.
    run_session(history, "s-a", T0, delivered_mg=30.0, minutes=40)
    run_session(history, "s-b", T0 + 3 * DAY, delivered_mg=20.0, minutes=40)
    end_a = T0 + dt.timedelta(minutes=40)
    assert history.delivered_mg_between("p-1", T0, T0 + 7 * DAY) == 50.0
    # A window starting exactly when s-a ended still counts it (it overlaps at one instant) …
    assert history.delivered_mg_between("p-1", end_a, T0 + 7 * DAY) == 50.0
    # … and one microsecond later it does not.
    assert history.delivered_mg_between("p-1", end_a + US, T0 + 7 * DAY) == 20.0
    # A window ending exactly when s-b starts counts s-b whole; one microsecond earlier it does not.
    assert history.delivered_mg_between("p-1", end_a + US, T0 + 3 * DAY) == 20.0
    assert history.delivered_mg_between("p-1", end_a + US, T0 + 3 * DAY - US) == 0.0
    # A window in the middle of s-a counts it whole (the dose is not pro-rated down).
    mid = T0 + dt.timedelta(minutes=20)
    assert history.delivered_mg_between("p-1", mid, mid) == 30.0


def test_a_session_in_progress_counts_its_programmed_dose_until_ended(history: CourseHistory) -> None:
    run_session(history, "s-a", T0, delivered_mg=30.0)
    history.begin_session("s-b", "p-1", "KP-40MIN", T0 + 2 * DAY, 35.0)  # programmed 35 mg, not ended
    assert history.delivered_mg_between("p-1", T0, T0 + 7 * DAY) == 65.0
    # Never ended (its process died): it keeps counting in every later window, the safe direction.
    assert history.delivered_mg_between("p-1", T0 + 60 * DAY, T0 + 67 * DAY) == 35.0
    assert history.delivered_mg_between("p-1", T0 - 7 * DAY, T0 + 2 * DAY - US) == 30.0
    history.end_session("s-b", T0 + 2 * DAY + H, 12.5, "interlock")  # stopped early: what it really gave
    assert history.delivered_mg_between("p-1", T0, T0 + 7 * DAY) == 42.5
    assert history.delivered_mg_between("p-1", T0 + 60 * DAY, T0 + 67 * DAY) == 0.0


# --------------------------------------------------------------------------------------------------------
# The course summary
# --------------------------------------------------------------------------------------------------------


def test_six_sessions_over_18_days_complete_the_initial_series(history: CourseHistory) -> None:
    for i, day in enumerate(SERIES_DAYS):
        run_session(history, f"s-{i + 1}", T0 + day * DAY, delivered_mg=35.0)
    # An infusion stopped by the operator on day 3 is listed but does not count.
    run_session(history, "s-x", T0 + 3 * DAY, delivered_mg=8.0, outcome="operator")
    summary = history.course_summary("p-1", T0 + 20 * DAY)
    ids = [e.session.session_id for e in summary.sessions]
    assert ids == ["s-1", "s-2", "s-x", "s-3", "s-4", "s-5", "s-6"]
    assert [e.counts for e in summary.sessions] == [True, True, False, True, True, True, True]
    assert [e.interval_h for e in summary.sessions] == [None, 48.0, 24.0, 48.0, 96.0, 120.0, 96.0]
    assert [e.session.delivered_mg_per_kg for e in summary.sessions] == pytest.approx(
        [0.5, 0.5, 8.0 / 70.0, 0.5, 0.5, 0.5, 0.5]
    )
    series = summary.initial_series
    assert (series.required, series.counted, series.complete) == (6, 6, True)
    assert series.first_start == T0 and series.deadline == T0 + 21 * DAY
    assert series.completed_at == T0 + 18 * DAY and series.on_schedule is True
    assert summary.maintenance is not None
    assert summary.maintenance.last_session_start == T0 + 18 * DAY
    assert summary.maintenance.due_from == T0 + 32 * DAY  # 2 weeks after the last
    assert summary.maintenance.overdue_after == T0 + 60 * DAY  # 6 weeks after the last
    assert summary.maintenance.status == "not_due"
    assert summary.open_sessions == ()


def test_an_incomplete_or_late_series_is_reported_not_refused(history: CourseHistory) -> None:
    for i, day in enumerate((0, 4, 8)):
        run_session(history, f"s-{i + 1}", T0 + day * DAY)
    summary = history.course_summary("p-1", T0 + 21 * DAY)
    series = summary.initial_series
    assert (series.counted, series.complete) == (3, False)
    assert series.completed_at is None and series.on_schedule is None
    assert series.deadline == T0 + 21 * DAY and series.past_deadline is False  # on the edge: not yet past
    assert history.course_summary("p-1", T0 + 21 * DAY + US).initial_series.past_deadline is True
    assert summary.maintenance is None
    for i, day in enumerate((12, 18, 25)):  # the sixth on day 25: complete, but later than 21 days
        run_session(history, f"s-{i + 4}", T0 + day * DAY)
    late = history.course_summary("p-1", T0 + 26 * DAY).initial_series
    assert (late.complete, late.completed_at, late.on_schedule) == (True, T0 + 25 * DAY, False)


def test_maintenance_window_edges_and_a_maintenance_session_restarts_it(history: CourseHistory) -> None:
    for i, day in enumerate(SERIES_DAYS):
        run_session(history, f"s-{i + 1}", T0 + day * DAY)
    last = T0 + 18 * DAY

    def status(now: dt.datetime) -> str:
        window = history.course_summary("p-1", now).maintenance
        assert window is not None
        return window.status

    assert status(last + 14 * DAY - US) == "not_due"
    assert status(last + 14 * DAY) == "due"
    assert status(last + 42 * DAY) == "due"
    assert status(last + 42 * DAY + US) == "overdue"
    # A maintenance infusion 4 weeks later restarts the window; one stopped early does not.
    run_session(history, "s-m1", last + 28 * DAY)
    run_session(history, "s-m2", last + 40 * DAY, outcome="interlock", delivered_mg=5.0)
    window = history.course_summary("p-1", last + 50 * DAY).maintenance
    assert window is not None
    assert window.last_session_start == last + 28 * DAY
    assert (window.due_from, window.overdue_after, window.status) == (last + 42 * DAY, last + 70 * DAY, "due")


def test_summary_lists_open_sessions_alarms_notes_and_overrides(history: CourseHistory) -> None:
    run_session(history, "s-1", T0)
    history.record_alarm("s-1", T0 + 10 * dt.timedelta(minutes=1), "occlusion", "310 mmHg")
    history.add_note("s-1", "tired afterwards", T0 + 5 * H)
    history.begin_session("s-2", "p-1", "KP-40MIN", T0 + 2 * DAY, 35.0)
    history.record_override("p-1", "s-2", "min_interval_h", "travel", T0 + 2 * DAY, who="dr-b")
    summary = history.course_summary("p-1", T0 + 3 * DAY)
    assert summary.open_sessions == ("s-2",)
    assert [a.code for a in summary.alarms] == ["occlusion"]
    assert [n.text for n in summary.notes] == ["tired afterwards"]
    assert [(o.kind, o.who) for o in summary.overrides] == [("min_interval_h", "dr-b")]
    body = summary.to_json()
    assert json.loads(json.dumps(body)) == body  # plain JSON
    assert body["sessions"][0]["session"]["started_at"] == "2025-01-06T09:00:00.000000Z"
    assert body["sessions"][0]["session"]["delivered_mg_per_kg"] == 0.5
    assert body["sessions"][1]["session"]["ended_at"] is None


def test_the_numbers_come_from_the_data_file(db: Path, tmp_path: Path) -> None:
    shipped = load_course_settings()
    assert shipped.initial_series.sessions == 6 and shipped.initial_series.within_days == 21
    assert (shipped.maintenance.due_from_days, shipped.maintenance.overdue_after_days) == (14, 42)
    assert shipped.journal.within_h == 24
    text = (Path(__file__).parents[1] / "python/ketapump/data/course.toml").read_text(encoding="utf-8")
    custom = tmp_path / "course.toml"
    custom.write_text(
        text.replace("sessions = 6 ", "sessions = 2 ")
        .replace("within_h = 24 ", "within_h = 1 ")
        .replace("due_from_days = 14 ", "due_from_days = 7 "),
        encoding="utf-8",
    )
    settings = load_course_settings(custom)
    with CourseHistory.create(db, at=T0, settings=settings) as h:
        h.ensure_patient("p-1", 70.0, at=T0)
        run_session(h, "s-1", T0)
        run_session(h, "s-2", T0 + 2 * DAY)
        summary = h.course_summary("p-1", T0 + 3 * DAY)
        assert summary.initial_series.complete
        assert summary.maintenance is not None and summary.maintenance.due_from == T0 + 9 * DAY
        late = h.add_note("s-2", "late by the custom rule", T0 + 2 * DAY + 2 * H)
        assert late.late_h is not None and late.late_h > 0


def test_a_bad_settings_file_names_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "course.toml"
    bad.write_text(
        textwrap.dedent(
            """
            schema_version = 1
            [initial_series]
            sessions = 0
            within_days = 21
            counted_outcomes = ["complete"]
            [maintenance]
            due_from_days = 42
            overdue_after_days = 14
            [journal]
            within_h = 24
            typo = 1
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(CourseSettingsError) as info:
        load_course_settings(bad)
    problems = "\n".join(info.value.problems)
    assert "initial_series.sessions" in problems
    assert "maintenance: Value error, overdue_after_days must not be less than due_from_days" in problems
    assert "journal.typo" in problems
    assert str(bad) in str(info.value)


# --------------------------------------------------------------------------------------------------------
# A writer killed mid-write
# --------------------------------------------------------------------------------------------------------

#: A writer that records sessions in a loop, each as one transaction: the session, ALARMS alarms, a note,
#: an override and its end. It prints "committed ID" after each commit, and, when told to, stops inside
#: a transaction (after two alarms) and prints "mid ID" so the parent can kill it there for certain.
WRITER = """
import datetime as dt, sys, time
from ketapump.clinical.course import CourseHistory

path, first, pause_at, alarms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0 = dt.datetime(2025, 1, 6, 9, tzinfo=dt.UTC)
with CourseHistory.open(path, create=True) as h:
    h.ensure_patient("p-crash", 70.0, at=t0)
    i = first
    while True:
        sid = f"s-{i:06d}"
        start = t0 + dt.timedelta(hours=i)
        with h.transaction():
            h.begin_session(sid, "p-crash", "KP-40MIN", start, 35.0, f"/logs/{sid}.jsonl")
            for k in range(alarms):
                h.record_alarm(sid, start + dt.timedelta(minutes=k), f"code_{k}", "detail " * 300)
                if i == pause_at and k == 1:
                    print(f"mid {sid}", flush=True)
                    time.sleep(300)
            h.add_note(sid, "note " * 200, start + dt.timedelta(minutes=30))
            h.record_override("p-crash", sid, "min_interval_h", "test", start, who="op")
            h.end_session(sid, start + dt.timedelta(minutes=41), 34.5, "complete")
        print(f"committed {sid}", flush=True)
        i += 1
"""
ALARMS = 5


def _check_all_or_nothing(db: Path) -> set[str]:
    """The file is intact and every session in it is whole; returns the sessions present."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = conn.execute(
            "SELECT s.session_id, s.ended_at IS NOT NULL, s.delivered_mg, s.outcome, "
            "(SELECT count(*) FROM alarms a WHERE a.session_id = s.session_id), "
            "(SELECT count(*) FROM notes n WHERE n.session_id = s.session_id), "
            "(SELECT count(*) FROM overrides o WHERE o.session_id = s.session_id) FROM sessions s"
        ).fetchall()
        orphans = conn.execute(
            "SELECT (SELECT count(*) FROM alarms) + (SELECT count(*) FROM notes) "
            "+ (SELECT count(*) FROM overrides)"
        ).fetchone()[0]
    finally:
        conn.close()
    for row in rows:
        assert row[1:] == (1, 34.5, "complete", ALARMS, 1, 1), f"half-written session {row}"
    assert orphans == len(rows) * (ALARMS + 2)
    return {row[0] for row in rows}


def test_history_survives_a_writer_killed_mid_write(db: Path) -> None:
    rng = random.Random(20250106)
    first, kills, mid_kills = 0, 8, 0
    reported: set[str] = set()
    present: set[str] = set()
    for round_ in range(kills):
        before = present
        pause_at = first + 2 if round_ in (1, 5) else -1  # two kills certainly inside a transaction
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(first), str(pause_at), str(ALARMS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        paused = None
        committed_now = 0
        while True:  # let it get going, then kill it at a random moment (or where it paused)
            line = proc.stdout.readline()
            assert line, f"writer died on its own: {proc.stderr.read() if proc.stderr else ''}"
            if line.startswith("mid "):
                paused = line.split()[1]
                break
            reported.add(line.split()[1])
            committed_now += 1
            if pause_at < 0 and committed_now >= 2:
                threading.Event().wait(rng.uniform(0.0, 0.05))
                break
        os.kill(proc.pid, signal.SIGKILL)
        # The rest of stdout through the same reader: readline() may already hold lines it read ahead,
        # which communicate() (reading the descriptor itself) would never see.
        rest = proc.stdout.read()
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        reported |= {line.split()[1] for line in rest.splitlines() if line.startswith("committed ")}
        present = _check_all_or_nothing(db)
        assert reported <= present, "a commit the writer reported was lost"
        # At most one session more: the one committed but killed before it could say so.
        assert len((present - before) - reported) <= 1
        if paused is not None:
            mid_kills += 1
            assert paused not in present
        first = max(int(s.removeprefix("s-")) for s in present) + 1
    assert mid_kills == 2
    # The library itself reopens the file (recovering the WAL) and reads the whole course.
    with CourseHistory.open(db) as h:
        sessions = h.sessions("p-crash")
        assert {s.session_id for s in sessions} == present
        assert len(sessions) >= 2 * kills
        assert h.course_summary("p-crash", T0 + 3000 * H).initial_series.complete


# --------------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    # Hermetic: an operator's name in the test runner's environment must not leak in.
    result = CliRunner().invoke(app, ["course", *args], env={"KETAPUMP_OPERATOR": None} | (env or {}))
    assert_documented(["course", *args], result.exit_code, result.stderr)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def course_db(db: Path) -> Path:
    """A database with a complete initial series for p-1 and an alarm, a note and an override."""
    with CourseHistory.create(db, at=T0) as h:
        h.ensure_patient("p-1", 70.0, 175.0, at=T0)
        for i, day in enumerate(SERIES_DAYS):
            run_session(h, f"s-{i + 1}", T0 + day * DAY)
        h.record_alarm("s-2", T0 + 2 * DAY + 10 * dt.timedelta(minutes=1), "occlusion", "310 mmHg")
        h.add_note("s-1", "felt floaty, fine by evening", T0 + 6 * H)
        h.record_override("p-1", "s-2", "min_interval_h", "weekend", T0 + 2 * DAY, who="dr-a")
        at = T0 + 4 * DAY + 20 * dt.timedelta(minutes=1)
        h.record_observation("s-3", at, "nausea", 2.0, scale="0–4", note="queasy", who="nurse A")
        h.record_action(
            "s-3", at, "slow", actor="operator", who="nurse A", source="keys", accepted=True,
            reason="nausea", detail={"to_fraction": 0.5},
        )  # fmt: skip
        h.record_medication("s-3", at, "ondansetron", 4.0, "mg", "iv", reason="nausea", who="nurse A")
        h.record_action("s-3", at, "hold", actor="vitals", who=None, source="engine", accepted=True)
    return db


def test_cli_show_prints_the_series_maintenance_alarms_and_notes(course_db: Path) -> None:
    code, out, err = _cli("show", "p-1", "--course-db", str(course_db), "--now", "2025-02-10T12:00:00Z")
    assert code == 0, err
    assert "patient p-1: 70 kg, 175 cm" in out
    assert out.count("complete") >= 6 and "2025-01-24 09:00Z" in out
    assert "6 of 6 counted sessions, complete on 2025-01-24 09:00Z" in out
    assert "due from 2025-02-07 09:00Z, overdue after 2025-03-07 09:00Z — DUE" in out
    assert "occlusion  310 mmHg" in out
    assert "felt floaty, fine by evening" in out
    assert "min_interval_h by dr-a: weekend" in out
    # What happened at the chair, per session, each with who did it.
    assert "session s-3 at the chair:" in out
    assert "slow by nurse A (keys): nausea" in out and "hold by the vitals (engine)" in out
    assert "observation nausea 2 (0–4) — queasy by nurse A" in out
    assert "medication ondansetron 4 mg iv for nausea by nurse A" in out


def test_cli_show_json(course_db: Path) -> None:
    code, out, err = _cli("show", "p-1", "--course-db", str(course_db), "--json", "--now", "2025-03-08")
    assert code == 0, err
    body = json.loads(out)
    assert body["initial_series"]["complete"] is True
    assert body["maintenance"]["status"] == "overdue"
    assert body["now"] == "2025-03-08T00:00:00.000000Z"  # no offset given: UTC
    assert [e["session"]["session_id"] for e in body["sessions"]] == [f"s-{i}" for i in range(1, 7)]
    assert [(o["kind"], o["value"], o["who"]) for o in body["observations"]] == [("nausea", 2.0, "nurse A")]
    assert [(m["drug"], m["dose"], m["route"]) for m in body["medications"]] == [("ondansetron", 4.0, "iv")]
    assert [(a["action"], a["actor"], a["who"]) for a in body["actions"]] == [
        ("slow", "operator", "nurse A"),
        ("hold", "vitals", None),
    ]


def test_cli_note_adds_a_note_and_flags_a_late_one(course_db: Path) -> None:
    ended = T0 + 18 * DAY + dt.timedelta(minutes=41)
    code, out, err = _cli(
        "note", "s-6", "slept well", "--course-db", str(course_db), "--at", (ended + 24 * H).isoformat(),
        "--operator", "nurse A",
    )  # fmt: skip
    assert code == 0, err
    assert "note added to session s-6" in out
    code, out, err = _cli(
        "note", "s-6", "late entry", "--course-db", str(course_db), "--at", (ended + 30 * H).isoformat(),
        env={"KETAPUMP_OPERATOR": "nurse B"},
    )  # fmt: skip
    assert code == 0, err
    assert "(LATE: 6.0 h after the journal window)" in out
    code, _, err = _cli(
        "note",
        "s-6",
        "too early",
        "--course-db",
        str(course_db),
        "--at",
        T0.isoformat(),
        "--operator",
        "nurse B",
    )
    assert code == 65
    assert str(course_db) in err and "session s-6" in err and "before the session started" in err
    with CourseHistory.open(course_db) as h:
        assert [(n.text, n.who) for n in h.notes("s-6")] == [
            ("slept well", "nurse A"),
            ("late entry", "nurse B"),
        ]
    code, out, err = _cli("show", "p-1", "--course-db", str(course_db))
    assert code == 0, err
    assert "late entry  (by nurse B)  (LATE: 6.0 h after the journal window)" in out


def test_cli_note_needs_the_operators_name(course_db: Path) -> None:
    code, _, err = _cli("note", "s-6", "slept well", "--course-db", str(course_db))
    assert code == 2 and "--operator NAME (or $KETAPUMP_OPERATOR) is required" in err
    code, _, err = _cli("note", "s-6", "slept well", "--course-db", str(course_db), "--operator", "  ")
    assert code == 2 and "must not be blank" in err
    within = (T0 + 18 * DAY + 2 * H).isoformat()
    code, _, err = _cli(
        "note", "s-6", "by env", "--course-db", str(course_db), "--at", within,
        env={"KETAPUMP_OPERATOR": "dr-a"},
    )  # fmt: skip
    assert code == 0, err
    with CourseHistory.open(course_db) as h:
        assert [(n.text, n.who) for n in h.notes("s-6")] == [("by env", "dr-a")]


def test_cli_unknown_patient_session_and_missing_database_exit_66(course_db: Path, tmp_path: Path) -> None:
    code, _, err = _cli("show", "p-404", "--course-db", str(course_db))
    assert code == 66
    assert f"{course_db}: patient p-404: is not in the course history" in err
    code, _, err = _cli("note", "s-404", "hello", "--course-db", str(course_db), "--operator", "nurse A")
    assert code == 66
    assert f"{course_db}: session s-404: is not in the course history" in err
    missing = tmp_path / "missing.sqlite3"
    for args in (["show", "p-1"], ["note", "s-1", "hello", "--operator", "nurse A"]):
        code, _, err = _cli(*args, "--course-db", str(missing))
        assert code == 66
        assert f"{missing}: no such course database" in err
    assert not missing.exists()  # a mistyped path is reported, not turned into an empty database


def test_cli_damaged_database_exits_65_and_bad_time_is_a_usage_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database " * 200)
    code, _, err = _cli("show", "p-1", "--course-db", str(garbage))
    assert code == 65
    assert str(garbage) in err and "not a database" in err
    code, _, err = _cli("show", "p-1", "--course-db", str(garbage), "--now", "yesterday")
    assert code == 2
    assert "'yesterday' is not an ISO-8601 time" in err


def test_cli_init_creates_a_database_once_and_migrate_upgrades_an_older_one(tmp_path: Path) -> None:
    db = tmp_path / "clinic" / "course.sqlite3"
    code, out, err = _cli("init", str(db))
    assert code == 0, err
    with CourseHistory.open(db) as h:
        assert out.strip() == f"created course database {db} (id {h.database_id})"
    code, _, err = _cli("init", str(db))
    assert code == os.EX_CANTCREAT and f"{db}: exists already" in err
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    assert _cli("init", str(empty))[0] == os.EX_CANTCREAT and empty.read_bytes() == b""
    older = _version_1_database(tmp_path / "older.sqlite3", ["p-1"])
    code, _, err = _cli("show", "p-1", "--course-db", str(older))
    assert code == os.EX_DATAERR and "ketapump course migrate" in err
    code, out, err = _cli("migrate", str(older))
    assert code == 0, err
    assert f"migrated {older} from schema 1 to {SCHEMA_VERSION}; backup: {older}.v1-" in out
    assert _cli("show", "p-1", "--course-db", str(older))[0] == 0
    code, out, _ = _cli("migrate", str(older))
    assert code == 0 and "nothing to do" in out


def test_cli_show_on_an_empty_file_refuses_and_leaves_it_untouched(tmp_path: Path) -> None:
    empty = tmp_path / "course.sqlite3"
    empty.touch()
    for args in (["show", "p-1"], ["note", "s-1", "hello", "--operator", "nurse A"]):
        code, out, err = _cli(*args, "--course-db", str(empty))
        assert code == os.EX_DATAERR, err
        assert f"{empty}: is an empty file, not a course database" in err and out == ""
        assert empty.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["course.sqlite3"]


def test_cli_damaged_page_exits_65_without_a_traceback(course_db: Path) -> None:
    _damage_a_table_page(course_db)
    for args in (["show", "p-1"], ["note", "s-1", "hello", "--operator", "nurse A"]):
        result = ketapump("course", *args, "--course-db", str(course_db), timeout=120)
        assert result.returncode == os.EX_DATAERR, result.stderr
        assert result.stderr.startswith(f"ketapump: {course_db}: is damaged")
        assert "Traceback" not in result.stderr


def test_cli_read_only_database_exits_74_without_a_traceback(course_db: Path) -> None:
    note = ketapump_with_read_only(
        course_db.parent, "course", "note", "s-6", "slept well", "--course-db", str(course_db),
        "--at", "2025-01-24T12:00:00Z", "--operator", "nurse A",
    )  # fmt: skip
    assert note.returncode == os.EX_IOERR, note.stderr
    assert note.stderr.startswith(f"ketapump: {course_db}: ") and "Traceback" not in note.stderr
    assert "read" in note.stderr  # read-only / readonly, as SQLite words it
    with CourseHistory.open(course_db) as h:
        assert h.notes("s-6") == ()


def test_cli_default_database_location_as_a_real_process(course_db: Path, tmp_path: Path) -> None:
    """The installed entry point, in its own process, finds the database under $XDG_DATA_HOME."""
    home = tmp_path / "xdg"
    (home / "ketapump").mkdir(parents=True)
    course_db.rename(home / "ketapump" / "course.sqlite3")
    for suffix in ("-wal", "-shm"):
        assert not Path(f"{course_db}{suffix}").exists()  # closed cleanly: nothing left beside it
    env = os.environ | {"XDG_DATA_HOME": str(home)}
    result = ketapump("course", "show", "p-1", "--json", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["initial_series"]["counted"] == 6
    result = ketapump(
        "course", "show", "p-1", env=os.environ | {"XDG_DATA_HOME": str(tmp_path / "empty")}, timeout=120
    )
    assert result.returncode == 66
    assert str(tmp_path / "empty" / "ketapump" / "course.sqlite3") in result.stderr


def test_a_second_session_cannot_begin_while_one_is_open_for_the_patient(history: CourseHistory) -> None:
    history.begin_session("s-open", "p-1", "ketamine-depression", T0, 35.0)
    with pytest.raises(
        CourseError, match=r"patient p-1: session s-open is in progress since 2025-01-06T09:00"
    ):
        history.begin_session("s-next", "p-1", "ketamine-depression", T0 + 3 * DAY, 35.0)
    assert [s.session_id for s in history.sessions("p-1")] == ["s-open"]  # nothing written
    # Another patient is not held up.
    history.ensure_patient("p-2", 60.0, None, at=T0)
    history.begin_session("s-other", "p-2", "ketamine-depression", T0 + H, 30.0)
    # Once ended, the next one begins.
    history.end_session("s-open", T0 + H, 35.0, "complete")
    history.begin_session("s-next", "p-1", "ketamine-depression", T0 + 3 * DAY, 35.0)


def test_cli_end_closes_a_session_a_crash_left_open_with_its_dose_and_a_reason(db: Path) -> None:
    with CourseHistory.create(db, at=T0) as h:
        h.ensure_patient("p-1", 70.0, 175.0, at=T0)
        h.begin_session("s-crash", "p-1", "ketamine-depression", T0, 35.0)
    at = (T0 + H).isoformat()
    code, _out, err = _cli(
        "end", "s-crash", "--delivered-mg", "12.5", "--reason", " ", "--course-db", str(db)
    )
    assert code == os.EX_DATAERR and "--reason must not be blank" in err
    args = (
        "end",
        "s-crash",
        "--delivered-mg",
        "12.5",
        "--reason",
        "power cut; log shows 12.5 mg",
        "--at",
        at,
    )
    code, out, err = _cli(*args, "--course-db", str(db))
    assert code == 0, err
    assert "session s-crash ended at 2025-01-06 10:00Z: 12.5 mg, ended_unfinished" in out
    with CourseHistory.open(db) as h:
        s = h.session("s-crash")
        assert (s.delivered_mg, s.outcome, s.ended_at) == (12.5, "ended_unfinished", T0 + H)
        assert [n.text for n in h.notes("s-crash")] == ["ended by hand: power cut; log shows 12.5 mg"]
    code, _out, err = _cli(*args, "--course-db", str(db))  # ended once
    assert code == os.EX_DATAERR and "already ended" in err
    code, _out, err = _cli("end", "nope", "--delivered-mg", "1", "--reason", "x", "--course-db", str(db))
    assert code == os.EX_NOINPUT, err
