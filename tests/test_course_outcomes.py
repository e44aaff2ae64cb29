"""Outcome scores and standing overrides in the course history: real SQLite files, the schema's own
checks, a version-1 file brought up to date, the CLI (score, allow, show with its trend PNG) and a
session that a standing override confirms without asking."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import matplotlib.image
import pytest
from typer.testing import CliRunner

from ketapump.cli import app
from ketapump.clinical.course import SCHEMA_VERSION, CourseHistory, schema
from ketapump.errors import ConfirmationRequired, CourseError
from test_session import NOW, PATIENT, run_session

T0 = dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
H = dt.timedelta(hours=1)


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["course", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "course.sqlite3"
    with CourseHistory.create(path, at=T0 - DAY) as h:
        h.ensure_patient("p-1", 70.0, 175.0, at=T0 - DAY)
        for i, day in enumerate((0, 2, 4)):
            h.begin_session(f"s-{i}", "p-1", "ketamine-depression", T0 + day * DAY, 35.0)
            h.end_session(f"s-{i}", T0 + day * DAY + H, 35.0, "complete")
    return path


def test_scores_are_recorded_with_who_and_refused_out_of_range(db: Path) -> None:
    with CourseHistory.open(db) as h:
        h.record_score("p-1", "phq9", 21, T0 - H, who="dr-a")  # the assessment before the course
        h.record_score("p-1", "madrs", 34, T0 - H, who="dr-a")
        h.record_score("p-1", "phq9", 9, T0 + 4 * DAY + 2 * H, session_id="s-2", who="nurse-b")
        for instrument, bad in (("phq9", 28), ("madrs", 61), ("phq9", -1)):
            with pytest.raises(CourseError, match="is not a whole number from 0 to"):
                h.record_score("p-1", instrument, bad, T0)
        with pytest.raises(CourseError, match="not a rating scale"):
            h.record_score("p-1", "hamd", 10, T0)
        h.ensure_patient("p-2", 60.0, None, at=T0)
        with pytest.raises(CourseError, match="belongs to patient p-1"):
            h.record_score("p-2", "phq9", 10, T0, session_id="s-0")
        scores = h.scores("p-1")
        assert [(s.instrument, s.score, s.who, s.session_id) for s in scores] == [
            ("phq9", 21, "dr-a", None),
            ("madrs", 34, "dr-a", None),
            ("phq9", 9, "nurse-b", "s-2"),
        ]
        summary = h.course_summary("p-1", T0 + 5 * DAY)
        assert summary.outcomes["phq9"].response and summary.outcomes["phq9"].change_pct == pytest.approx(
            100 * 12 / 21
        )
        assert summary.outcomes["madrs"].status == "baseline only"
        assert summary.to_json()["outcomes"]["phq9"]["latest"] == 9
    # The file itself refuses what the code would: a score out of range, an edit, a delete.
    raw = sqlite3.connect(db)
    for statement in (
        "INSERT INTO scores (patient_id, at, instrument, score) VALUES ('p-1', 'x', 'madrs', 61)",
        "INSERT INTO scores (patient_id, at, instrument, score) VALUES ('p-1', 'x', 'phq9', 2.5)",
        "UPDATE scores SET score = 0",
        "DELETE FROM scores",
    ):
        with pytest.raises(sqlite3.DatabaseError):
            raw.execute(statement)
    raw.close()


def test_a_version_3_file_is_migrated_to_the_scores_and_standing_overrides(tmp_path: Path) -> None:
    """Step 4 on a file of the version before it: refused on open (with the command that migrates it),
    migrated with a backup, its rows kept, the new tables there."""
    old = tmp_path / "v3.sqlite3"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")  # as ketapump writes its files
    conn.execute("BEGIN")
    for step in (1, 2, 3):
        schema.STEPS[step](conn, "2025-01-06T09:00:00.000000Z")
    conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 3")
    conn.execute("INSERT INTO patients VALUES ('p-old', 70, NULL, '2025-01-01T00:00:00.000000Z', "
                 "'2025-01-01T00:00:00.000000Z')")  # fmt: skip
    conn.execute("COMMIT")
    conn.close()
    with pytest.raises(CourseError, match="course migrate"):
        CourseHistory.open(old)
    migration = CourseHistory.migrate(old, at=T0)
    assert migration.backup is not None and migration.backup.exists()
    with CourseHistory.open(old) as h:
        assert h.patient("p-old").weight_kg == 70
        h.record_score("p-old", "phq9", 15, T0)
    raw = sqlite3.connect(old)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    raw.close()


def test_standing_overrides_have_an_author_a_reason_and_an_expiry(db: Path) -> None:
    with CourseHistory.open(db) as h:
        o = h.grant_standing_override(
            "p-1", "hours_since_last_start", "Mon/Wed/Fri course", who="dr-a",
            granted_at=T0, expires_at=T0 + 14 * DAY,
        )  # fmt: skip
        assert (o.kind, o.who) == ("hours_since_last_start", "dr-a")
        with pytest.raises(CourseError, match="must expire after it is granted"):
            h.grant_standing_override("p-1", "vtbi_ml", "x", who="dr-a", granted_at=T0, expires_at=T0)
        with pytest.raises(CourseError, match="who"):
            h.grant_standing_override("p-1", "vtbi_ml", "x", who=" ", granted_at=T0, expires_at=T0 + DAY)
        assert h.standing_overrides("p-1", T0 + 14 * DAY) == (o,)  # both edges in force
        assert h.standing_overrides("p-1", T0 + 14 * DAY + dt.timedelta(microseconds=1)) == ()
        assert h.standing_overrides("p-1", T0 - H) == ()


def test_cli_score_allow_and_show_with_the_trend_png(db: Path, tmp_path: Path) -> None:
    base = ("--course-db", str(db))
    code, _, err = _cli("score", "p-1", "--phq9", "20", *base, "--at", (T0 - H).isoformat())
    assert code == 2 and "--operator" in err  # who rated it is required
    for at, phq, madrs in ((T0 - H, 20, 30), (T0 + 2 * DAY, 12, 20), (T0 + 4 * DAY, 4, 9)):
        code, out, err = _cli(
            "score", "p-1", "--phq9", str(phq), "--madrs", str(madrs), "--operator", "dr-a", *base,
            "--at", at.isoformat(),
        )  # fmt: skip
        assert code == 0, err
        assert f"PHQ-9 {phq}, MADRS {madrs}" in out and "by dr-a" in out
    code, _, err = _cli("score", "p-1", "--phq9", "30", "--operator", "dr-a", *base)
    assert code == 65 and "PHQ-9 score 30 is not a whole number from 0 to 27" in err
    code, out, err = _cli(
        "allow", "p-1", "hours_since_last_start", "--reason", "weekend clinic", "--until",
        (T0 + 30 * DAY).isoformat(), "--operator", "dr-a", *base, "--at", T0.isoformat(),
    )  # fmt: skip
    assert code == 0, err
    code, _, err = _cli(
        "allow", "p-1", "nonsense", "--reason", "x", "--until", "2030-01-01", "--operator", "a", *base
    )
    assert code == 65 and "'nonsense' is not a limit kind" in err
    png = tmp_path / "plots" / "trend.png"
    code, out, err = _cli("show", "p-1", *base, "--now", (T0 + 5 * DAY).isoformat(), "--plot", str(png))
    assert code == 0, err
    assert "PHQ-9: 20 → 12 → 4, -80 % from baseline — REMISSION" in out
    assert "MADRS: 30 → 20 → 9, -70 % from baseline — REMISSION" in out
    assert (
        "hours_since_last_start by dr-a from 2025-01-06 09:00Z until 2025-02-05 09:00Z: weekend clinic" in out
    )
    image = matplotlib.image.imread(png)
    assert image.shape[0] >= 400 and image.std() > 0.01
    code, out, _ = _cli("show", "p-1", *base, "--json")
    body = json.loads(out)
    assert body["outcomes"]["madrs"]["points"][-1][1] == 9
    assert body["standing_overrides"][0]["who"] == "dr-a"
    with CourseHistory.open(db) as h:
        h.ensure_patient("p-none", 60.0, None, at=T0)
    code, _, err = _cli("show", "p-none", *base, "--plot", str(png))
    assert code == 65 and "no PHQ-9 or MADRS scores to plot" in err


def test_a_standing_override_confirms_its_soft_finding_in_a_session_without_asking(tmp_path: Path) -> None:
    """The course rule (24 h since the last start < 44 h) is confirmed by the standing override, recorded
    with its author and expiry as the session's override; an expired one asks again (and, unanswered by a
    scripted operator without a reason, refuses)."""
    for expires, confirmed in ((NOW + 7 * DAY, True), (NOW - H, False)):
        folder = tmp_path / ("in-force" if confirmed else "expired")
        folder.mkdir()
        with CourseHistory.create(folder / "course.sqlite3", at=NOW - 30 * DAY) as h:
            h.ensure_patient(PATIENT.patient_id, PATIENT.weight_kg, PATIENT.height_cm, at=NOW - 30 * DAY)
            h.grant_standing_override(
                PATIENT.patient_id, "hours_since_last_start", "daily inpatient course", who="dr-a",
                granted_at=NOW - 10 * DAY, expires_at=expires,
            )  # fmt: skip
        run = run_session(folder, history=[(24.0, 35.0)])
        if not confirmed:
            assert isinstance(run.error, ConfirmationRequired)
            continue
        assert run.error is None and run.result is not None
        (confirmation,) = run.result.confirmations
        assert confirmation["kind"] == "hours_since_last_start"
        assert confirmation["reason"].startswith("standing override by dr-a until ")
        assert confirmation["reason"].endswith(": daily inpatient course")
        with CourseHistory.open(folder / "course.sqlite3") as h:
            (override,) = h.overrides(PATIENT.patient_id)
            assert override.session_id == "s-new" and "dr-a" in override.reason


def test_the_maintenance_summary_names_the_outcome(tmp_path: Path) -> None:
    db = tmp_path / "course.sqlite3"
    with CourseHistory.create(db, at=T0 - DAY) as h:
        h.ensure_patient("p-1", 70.0, 175.0, at=T0 - DAY)
        h.record_score("p-1", "phq9", 22, T0 - H, who="dr-a")
        for i, day in enumerate((0, 2, 4, 7, 9, 11)):
            h.begin_session(f"s-{i}", "p-1", "ketamine-depression", T0 + day * DAY, 35.0)
            h.end_session(f"s-{i}", T0 + day * DAY + H, 35.0, "complete")
        h.record_score("p-1", "phq9", 10, T0 + 11 * DAY + 2 * H, session_id="s-5", who="dr-a")
    code, out, err = _cli("show", "p-1", "--course-db", str(db), "--now", (T0 + 30 * DAY).isoformat())
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("maintenance:")]
    assert line.endswith("— DUE as of 2025-02-05 09:00Z (outcomes: PHQ-9 response)")
