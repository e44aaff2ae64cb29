"""What the runner tells a face before and after a session, beyond running it: the pre-check's verdict
asked in advance (``check_session``: a console refuses with every finding before opening anything) and
the sessions a dead process left begun and never ended (``interrupted_sessions``, with the recovery
``ketapump run --resume`` offers)."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

import pytest

from ketapump.clinical import (
    CourseHistory,
    Patient,
    ScriptedOperator,
    SessionRunner,
    SessionSetup,
    check_session,
    interrupted_sessions,
    prepare_session,
)
from ketapump.errors import ConfirmationRequired, CourseRecordNotFoundError, LimitRefused

NOW = datetime.datetime.now(datetime.UTC)


def setup_for(tmp_path: Path, patient: Patient) -> SessionSetup:
    if not (tmp_path / "course.sqlite3").exists():
        CourseHistory.create(tmp_path / "course.sqlite3", at=NOW - datetime.timedelta(days=30)).close()
    return prepare_session(
        protocol="ketamine-depression",
        patient=patient,
        operator=ScriptedOperator(),
        operator_name="nurse T",
        course_db=tmp_path / "course.sqlite3",
        log=tmp_path / "audit.jsonl",
        out=tmp_path / "out",
    )


def test_a_hard_finding_is_a_refusal_with_every_finding_and_nothing_is_written(tmp_path: Path) -> None:
    setup = setup_for(tmp_path, Patient("p-light", 25.0, 175.0, "male"))
    check = check_session(setup, {"weight_kg": "reason given"})
    assert isinstance(check.refusal, LimitRefused)
    assert "weight_kg" in {f.kind for f in check.findings if f.severity == "hard"}
    assert {f.kind for f in check.refusal.findings} <= {f.kind for f in check.findings}
    assert not (tmp_path / "audit.jsonl").exists()
    with (
        CourseHistory.open(tmp_path / "course.sqlite3", readonly=True) as course,
        pytest.raises(CourseRecordNotFoundError),
    ):
        course.patient("p-light")  # nothing recorded


def test_a_course_rule_needs_a_reason_and_proceeds_with_one(tmp_path: Path) -> None:
    with CourseHistory.create(tmp_path / "course.sqlite3", at=NOW - datetime.timedelta(days=3)) as course:
        course.ensure_patient("p-1", 70.0, 175.0, at=NOW - datetime.timedelta(days=2))
        start = NOW - datetime.timedelta(hours=20)
        course.begin_session("earlier", "p-1", "ketamine-depression", start, 35.0)
        course.end_session("earlier", start + datetime.timedelta(hours=1), 35.0, "complete")
    setup = setup_for(tmp_path, Patient("p-1", 70.0, 175.0, "male"))
    unconfirmed = check_session(setup, {})
    assert isinstance(unconfirmed.refusal, ConfirmationRequired)
    assert [f.kind for f in unconfirmed.refusal.findings] == ["hours_since_last_start"]
    confirmed = check_session(setup, {"hours_since_last_start": "psychiatrist's order"})
    assert confirmed.refusal is None
    assert [f.kind for f in confirmed.findings] == ["hours_since_last_start"]


def test_a_new_patient_without_any_history_is_checked_as_a_first_session(tmp_path: Path) -> None:
    setup = setup_for(tmp_path, Patient("p-new", 70.0, 175.0, "male"))
    check = check_session(setup, {})
    assert check.refusal is None and check.findings == []


def test_a_session_left_in_progress_is_offered_for_resume_from_its_audit_log(tmp_path: Path) -> None:
    setup = setup_for(tmp_path, Patient("p-1", 70.0, 175.0, "male"))
    runner = SessionRunner.open(setup)

    async def run_until_infusing_then_die() -> None:
        # The process dies mid-infusion: its task is cancelled after the first telemetry summaries.
        task = asyncio.create_task(runner.run())
        session = runner.session
        while not session.phases or session.phases[-1][0] != "infusion" or session.ctx.clock.now() < 100.0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_until_infusing_then_die())
    # The cancelled session ended in the course history ("ended_error"): a killed process leaves no
    # such end. Simulate the kill by a course history that still holds the session in progress.
    with CourseHistory.create(tmp_path / "other.sqlite3", at=NOW) as course:
        course.ensure_patient("p-1", 70.0, 175.0, at=NOW)
        course.begin_session(setup.session_id, "p-1", "ketamine-depression", NOW, 35.0, setup.log_path)
        # Another chair's session, running in this process (one open session per patient: another one).
        course.ensure_patient("p-2", 80.0, 180.0, at=NOW)
        course.begin_session("running-here", "p-2", "ketamine-depression", NOW, 35.0, tmp_path / "p2.jsonl")
    (found,) = interrupted_sessions(tmp_path / "other.sqlite3", running={"running-here"})
    assert found.session_id == setup.session_id and found.problem == ""
    assert found.pump == "sim://" and found.rate_ml_h == 52.5 and found.volume_ml == 35.0
    assert found.delivered_ml is not None and found.delivered_ml > 0.0
    command = found.resume_command()
    assert command is not None and command[:2] == ["ketapump", "run"]
    assert command[command.index("--resume") + 1] == str(setup.log_path)
    assert json.loads(json.dumps(found.as_dict()))["resume_command"] == command


def test_no_history_means_no_interrupted_session_and_an_unreadable_log_is_named(tmp_path: Path) -> None:
    assert interrupted_sessions(tmp_path / "none.sqlite3") == []
    with CourseHistory.create(tmp_path / "c.sqlite3", at=NOW) as course:
        course.ensure_patient("p-1", 70.0, at=NOW)
        course.begin_session("s-gone", "p-1", "ketamine-depression", NOW, 35.0, tmp_path / "gone.jsonl")
    (found,) = interrupted_sessions(tmp_path / "c.sqlite3")
    assert "cannot read the audit log" in found.problem and found.resume_command() is None
