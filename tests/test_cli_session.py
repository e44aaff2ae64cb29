"""The clinical commands end to end as a user runs them: ``ketapump dose``, ``ketapump demo`` and
``ketapump session`` in a subprocess, on the built-in simulator."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image
from pypdf import PdfReader

from cli_contract import assert_documented
from fshelpers import ketapump_on_a_small_disk, ketapump_with_read_only
from ketapump.clinical.course import CourseHistory
from sessionhelpers import short_observation_protocol
from simhelpers import ketapump, new_course_db

EXIT_INTERLOCK, EXIT_LIMIT, EXIT_ABORTED = 3, 6, 7


def test_dose_prints_the_numbers_and_the_limits_as_json() -> None:
    done = ketapump("dose", "--protocol", "ketamine-depression", "--weight-kg", "70", "--json")
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert (d["dose_mg"], d["volume_ml"], d["rate_ml_h"], d["duration_min"]) == (35.0, 35.0, 52.5, 40.0)
    assert d["syringe_fill_ml"] == 36.0 and d["allowed"] is True and d["findings"] == []
    assert d["limits"]["dose_mg_per_kg"]["hard_max"] == 1.0


def test_dose_refused_by_a_hard_limit_exits_6_naming_it(tmp_path: Path) -> None:
    protocol = tmp_path / "fast.toml"
    protocol.write_text(
        'schema_version = 1\nname = "fast"\n[drug]\nname = "ketamine"\nconcentration_mg_per_ml = 1.0\n'
        "[dose]\nmg_per_kg = 0.5\nduration_min = 10.0\n",
        encoding="utf-8",
    )
    done = ketapump("dose", "--protocol", str(protocol), "--weight-kg", "70")
    assert done.returncode == EXIT_LIMIT
    assert "duration 10.0 min is below the hard minimum 30.0 min" in done.stdout


def test_300_kg_lists_the_weight_vtbi_and_syringe_findings_exits_6_and_json_prints_them() -> None:
    """Pounds typed as kg: every finding, hard ones first, not exit 65 behind the syringe's capacity."""
    args = ("dose", "--protocol", "ketamine-depression", "--weight-kg", "300")
    done = ketapump(*args)
    assert done.returncode == EXIT_LIMIT, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(("HARD", "SOFT"))]
    # The syringe's capacity is soft: the session would run the dose as 3 syringes (hard limits refuse it).
    assert [line.split()[0] for line in lines] == ["HARD", "HARD", "SOFT"]
    assert "weight 300.0 kg exceeds the hard maximum 250.0 kg" in lines[0]
    assert "volume to be infused 150.0 mL exceeds the hard maximum 120.0 mL" in lines[1]
    assert "syringe fill 151.0 mL" in lines[2]
    assert "remedy: a concentration of at least 2.54 mg/mL" in done.stdout
    machine = ketapump(*args, "--json")
    assert machine.returncode == EXIT_LIMIT
    d = json.loads(machine.stdout)
    assert [(f["kind"], f["severity"]) for f in d["findings"]] == [
        ("weight_kg", "hard"),
        ("vtbi_ml", "hard"),
        ("syringe_fill_ml", "soft"),
    ]
    assert d["allowed"] is False and d["syringes_needed"] == 3
    assert len(d["findings"][2]["remedies"]) == 3


def test_a_session_refused_by_its_findings_lists_them_all_with_kinds_and_json_prints_them(
    tmp_path: Path,
) -> None:
    db = new_course_db(tmp_path / "c.sqlite3")

    def session(weight: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return ketapump(
            "session", "--protocol", "ketamine-depression", "--patient", "p", "--weight-kg", weight,
            "--operator", "nurse-a", "--yes", "--course-db", str(db),
            "--log", str(tmp_path / f"{weight}-{len(extra)}.jsonl"), "--out", str(tmp_path / "out"), *extra,
        )  # fmt: skip

    refused = session("300", "--json")
    assert refused.returncode == EXIT_LIMIT
    d = json.loads(refused.stdout)
    assert d["outcome"] == "refused"
    assert [f["kind"] for f in d["findings"]] == ["weight_kg", "vtbi_ml", "syringe_fill_ml"]
    # 134 kg: the syringe finding (soft: run as two syringes) with its remedies, naming its KIND.
    refused = session("134", "--confirm", "vtbi_ml=large patient, reviewed")
    assert refused.returncode == EXIT_LIMIT
    assert (
        "syringe fill 68.0 mL (67.0 mL + 1 mL line prime) exceeds the 60 mL of one bd-plastipak-60: "
        "the session runs it as 2 syringes (1 syringe change)"
    ) in refused.stderr
    assert "[soft: confirm as syringe_fill_ml=REASON]" in refused.stderr
    machine = session("134", "--json")
    assert machine.returncode == EXIT_LIMIT
    d = json.loads(machine.stdout)
    assert d["needs_confirmation"] == ["vtbi_ml", "syringe_fill_ml"]
    syringe = next(f for f in d["findings"] if f["kind"] == "syringe_fill_ml")
    assert syringe["remedies"][0].startswith("a concentration of at least 1.14 mg/mL")
    assert syringe["remedies"][1].startswith("2 syringes of 60 mL (1 syringe change): the session runs it so")


def test_134_kg_runs_as_two_syringes_on_sim_and_delivers_the_planned_dose(tmp_path: Path) -> None:
    """The standard protocol at 1 mg/mL for 134 kg: 67 mL, more than one 60 mL syringe. The session
    pauses after the first syringe's share, asks for the next syringe (confirmed by the operator,
    recorded), the simulator loads it, the new slack is taken up, and the dose is delivered whole."""
    log = tmp_path / "log.jsonl"
    done = ketapump(
        "session", "--protocol", "ketamine-depression", "--patient", "p-134", "--weight-kg", "134",
        "--operator", "nurse A", "--yes", "--course-db", str(new_course_db(tmp_path / "c.sqlite3")),
        "--log", str(log), "--out", str(tmp_path / "out"), "--json",
        "--confirm", "vtbi_ml=large patient, reviewed", "--confirm", "syringe_fill_ml=two syringes drawn up",
        "--sitter-name", "Sam Doe", "--sitter-phone", "+44 20 7946 0958",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["outcome"] == "complete" and d["alarms"] == [] and d["log_verified"] is True
    assert d["programmed_mg"] == 67.0
    assert math.isclose(d["delivered_mg"], 67.0, rel_tol=0.02)
    (change,) = d["syringe_changes"]
    assert change | {"syringe": 2, "of": 2, "by": "nurse A", "simulated": True} == change
    # The first syringe gave its planned share (half the dose), not its last drop.
    assert math.isclose(change["delivered_ml"], 33.5, abs_tol=0.2)
    assert {c["kind"] for c in d["confirmations"]} == {"vtbi_ml", "syringe_fill_ml"}
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    asked = [e for e in events if e["event"] == "question_answered" and e.get("question") == "syringe_change"]
    assert [(e["answer"], e["operator"]) for e in asked] == [(True, "nurse A")]
    causes = [e["cause"] for e in events if e["event"] == "state_transition"]
    # The kernel: paused, the change, the new syringe loaded, resumed with its own take-up.
    i = causes.index("change_syringe")
    assert causes[i - 1 : i + 4] == ["pause", "change_syringe", "syringe_loaded", "resume", "take_up_done"]
    assert causes.count("take_up_done") == 2 and causes[-1] == "dose_complete"
    # The signed record names both syringes and the change, with who confirmed it.
    report = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| Syringe | 2 × bd-plastipak-60 (60 mL), giving 33.5 + 33.5 mL" in report
    changes = report.split("## Syringe changes", 1)[1].split("##", 1)[0]
    assert "nurse A" in changes and "| 2 |" in changes
    assert "| Discharge | confirmed |" in report


def test_150_kg_with_66_cm_is_flagged_and_its_session_names_the_kinds_to_confirm(tmp_path: Path) -> None:
    """Inches typed as cm on an adjusted-weight protocol: dosed on 43.1 kg without a word before."""
    args = ("--protocol", "ketamine-depression-tapered", "--weight-kg", "150", "--height-cm", "66")
    done = ketapump("dose", *args, "--sex", "male", "--json")
    assert done.returncode == 0, done.stderr  # soft findings: the session asks for their reasons
    d = json.loads(done.stdout)
    assert d["needs_confirmation"] == ["height_cm", "dosing_weight_pct"]
    session = ketapump(
        "session", *args, "--sex", "male", "--patient", "p", "--operator", "nurse-a", "--yes",
        "--course-db", str(new_course_db(tmp_path / "c.sqlite3")), "--log", str(tmp_path / "log.jsonl"),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert session.returncode == EXIT_LIMIT
    assert "height 66.0 cm is below the soft minimum 130.0 cm" in session.stderr
    assert "[soft: confirm as height_cm=REASON]" in session.stderr
    assert "[soft: confirm as dosing_weight_pct=REASON]" in session.stderr


def test_invalid_protocol_and_library_files_list_every_problem_and_exit_65(tmp_path: Path) -> None:
    protocol = tmp_path / "bad.toml"
    protocol.write_text(
        'schema_version = 1\nname = "bad"\nextra = 1\n[drug]\nname = "ketamine"\n'
        'concentration_mg_per_ml = "x"\n[dose]\nmg_per_kg = 0.5\n',
        encoding="utf-8",
    )
    done = ketapump("dose", "--protocol", str(protocol), "--weight-kg", "70")
    assert done.returncode == os.EX_DATAERR
    for path in ("extra:", "drug.concentration_mg_per_ml:", "dose:"):
        assert path in done.stderr, path
    library = tmp_path / "library.toml"
    library.write_text(
        "schema_version = 1\n[drugs.ketamine.dose_mg_per_kg]\nsoft_max = 1.5\nhard_max = 1.0\n"
        '[drugs.ketamine.weight_kg]\nhard_min = "thirty"\nsurprise = 2\n',
        encoding="utf-8",
    )
    done = ketapump(
        "dose", "--protocol", "ketamine-depression", "--weight-kg", "70", "--library", str(library)
    )
    assert done.returncode == os.EX_DATAERR
    for path in ("drugs.ketamine.dose_mg_per_kg", "drugs.ketamine.weight_kg.hard_min", "surprise"):
        assert path in done.stderr, path
    done = ketapump("dose", "--protocol", "ketamine-depression-tapered", "--weight-kg", "120")
    assert done.returncode == os.EX_DATAERR and "patient.height_cm is required" in done.stderr


def test_a_session_with_invalid_input_writes_nothing(tmp_path: Path) -> None:
    out, log, db = tmp_path / "out", tmp_path / "log.jsonl", tmp_path / "course.sqlite3"
    common = [
        "session",
        "--patient",
        "p",
        "--yes",
        "--operator",
        "nurse T",
        "--out",
        str(out),
        "--log",
        str(log),
        "--course-db",
        str(db),
    ]
    for args in (
        ["--protocol", "ketamine-depression-tapered", "--weight-kg", "70"],  # no height or sex
        ["--protocol", "ketamine-depression", "--weight-kg", "70", "--confirm", "no_such_limit=because"],
        ["--protocol", "ketamine-depression", "--weight-kg", "70", "--pump", "bogus://x"],
    ):
        done = ketapump(*common, *args)
        assert done.returncode == os.EX_DATAERR, (args, done.stderr)
        assert not out.exists() and not log.exists() and not db.exists(), args


def test_a_session_needs_its_operators_name_and_writes_nothing_without_it(tmp_path: Path) -> None:
    out, log, db = tmp_path / "out", tmp_path / "log.jsonl", tmp_path / "course.sqlite3"
    env = {k: v for k, v in os.environ.items() if k != "KETAPUMP_OPERATOR"}
    args = ["session", "--protocol", "ketamine-depression", "--patient", "p", "--weight-kg", "70", "--yes"]
    args += ["--out", str(out), "--log", str(log), "--course-db", str(db)]
    done = ketapump(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert "--operator NAME (or $KETAPUMP_OPERATOR)" in done.stderr and "ketamine-depression" in done.stderr
    blank = ketapump(*args, "--operator", " ", env=env)
    assert blank.returncode == 2 and "must not be blank" in blank.stderr
    assert not out.exists() and not log.exists() and not db.exists()
    # A QA protocol may allow anonymous runs (and the environment may name the operator instead).
    shipped = resources.files("ketapump.data").joinpath("protocols", "ketamine-depression.toml")
    qa = tmp_path / "qa.toml"
    qa.write_text(
        shipped.read_text(encoding="utf-8") + "\n[session]\nallow_anonymous = true\n", encoding="utf-8"
    )
    qa_args = ["--protocol", str(qa), "--json", "--vitals", "sim"]
    new_course_db(db)  # nothing was written without the name; the anonymous run needs its history
    anonymous = ketapump(*args, *qa_args, env=env, timeout=600)
    assert anonymous.returncode == 0, anonymous.stderr
    assert json.loads(anonymous.stdout)["operator"] is None


def test_the_demo_runs_a_whole_session_and_writes_a_verified_log_a_report_and_real_plots(
    tmp_path: Path,
) -> None:
    done = ketapump("demo", "--json", "--out", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["outcome"] == "complete"
    assert math.isclose(d["delivered_mg"], d["programmed_mg"], rel_tol=0.02)
    assert d["alarms"] == [] and d["log_verified"] is True
    # The demo's nurse: nausea at minute 20, slowed to half with an antiemetic, the plan's rate at minute 30.
    assert d["operator"] == "demo operator"
    assert [(a["action"], a["by"]) for a in d["actions"] if a["action"] in {"slow", "restore_rate"}] == [
        ("slow", "demo operator"),
        ("restore_rate", "demo operator"),
    ]
    assert [(m["drug"], m["dose"], m["unit"], m["route"]) for m in d["medications"]] == [
        ("ondansetron", 4.0, "mg", "iv")
    ]
    assert [(o["kind"], o["value"]) for o in d["observations"]] == [("nausea", 2.0), ("nausea", 0.0)]
    verify = ketapump("log", "verify", d["log"])
    assert verify.returncode == 0 and "OK" in verify.stdout
    report = Path(d["report"]).read_text(encoding="utf-8")
    assert f"{d['delivered_mg']:.2f} mg" in report
    assert len(d["plots"]) == 4
    for plot in d["plots"]:
        pixels = image.imread(plot)
        assert pixels.ndim == 3 and pixels.shape[0] >= 400 and pixels.shape[1] >= 800
        colours = np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)
        assert len(colours) > 100, plot  # drawn, not blank


def test_sessions_on_the_cli_follow_the_course_rules(tmp_path: Path) -> None:
    db = tmp_path / "course.sqlite3"
    env = os.environ | {"XDG_STATE_HOME": str(tmp_path / "state")}
    # The patient's previous session started 30 h ago (the course history, written through its API).
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=30)
    with CourseHistory.create(db, at=started) as course:
        course.ensure_patient("p-7", 70.0, None, at=started)
        course.begin_session("earlier", "p-7", "ketamine-depression", started, 35.0)
        course.end_session("earlier", started + datetime.timedelta(minutes=45), 35.0, "complete")

    def session(*extra: str) -> subprocess.CompletedProcess[str]:
        return ketapump(
            "session", "--protocol", "ketamine-depression", "--patient", "p-7", "--weight-kg", "70",
            "--yes", "--operator", "nurse T", "--course-db", str(db), "--out", str(tmp_path / "out"),
            "--json", *extra, env=env,
        )  # fmt: skip

    blocked = session()
    assert blocked.returncode == EXIT_LIMIT
    assert re.search(
        r"time since the last session start 30\.0\d* h is below the soft minimum 44\.0 h", blocked.stderr
    )
    assert session("--confirm", "hours_since_last_start=  ").returncode == os.EX_DATAERR  # no reason
    reason = "psychiatrist approved an early session"
    overridden = session("--confirm", f"hours_since_last_start={reason}")
    assert overridden.returncode == 0, overridden.stderr
    (confirmation,) = json.loads(overridden.stdout)["confirmations"]
    assert confirmation == confirmation | {"kind": "hours_since_last_start", "reason": reason}
    show = ketapump("course", "show", "p-7", "--course-db", str(db), "--json")
    assert show.returncode == 0, show.stderr
    assert reason in show.stdout


def test_the_course_history_cannot_be_emptied_mistyped_or_sidestepped(tmp_path: Path) -> None:
    """The course rules hold across every way around them: a patient id spelt differently, an emptied
    database, a mistyped path (each once let a second full dose through)."""
    db = new_course_db(tmp_path / "base.sqlite3")
    env = os.environ | {"XDG_STATE_HOME": str(tmp_path / "state")}

    def session(patient: str, course_db: Path = db) -> subprocess.CompletedProcess[str]:
        return ketapump(
            "session", "--protocol", "ketamine-depression", "--patient", patient, "--weight-kg", "70",
            "--yes", "--operator", "nurse T", "--course-db", str(course_db), "--out", str(tmp_path / "out"),
            "--json", env=env,
        )  # fmt: skip

    first = session("pc")
    assert first.returncode == 0, first.stderr
    for spelling in ("PC ", " Pc", "pc"):
        again = session(spelling)
        assert again.returncode == EXIT_LIMIT, (spelling, again.stderr)
    show = json.loads(ketapump("course", "show", "PC", "--course-db", str(db), "--json").stdout)
    assert [e["session"]["patient_id"] for e in show["sessions"]] == ["pc"]
    bad_id = session("p c")
    assert bad_id.returncode == os.EX_DATAERR and "is not valid: a patient id is trimmed" in bad_id.stderr

    mistyped = tmp_path / "base.sqlit3"
    refused = session("pc", mistyped)
    assert refused.returncode == os.EX_NOINPUT
    assert f"{mistyped}: no such course database" in refused.stderr and not mistyped.exists()

    db.write_bytes(b"")  # `: > base.sqlite3`
    refused = session("pc")
    assert refused.returncode == os.EX_DATAERR, refused.stderr
    assert f"{db}: is an empty file, not a course database" in refused.stderr
    assert db.read_bytes() == b"" and "Traceback" not in refused.stderr


def test_outputs_that_cannot_be_written_are_refused_before_anything_starts(tmp_path: Path) -> None:
    db = new_course_db(tmp_path / "course.sqlite3")
    before = db.read_bytes()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    common = ["session", "--protocol", "ketamine-depression", "--patient", "p-1", "--weight-kg", "70"]
    common += ["--yes", "--operator", "nurse T", "--course-db", str(db)]
    for args, option in (
        (["--out", str(blocker / "out"), "--log", str(tmp_path / "log.jsonl")], "--out"),
        (["--out", str(tmp_path / "out"), "--log", str(blocker / "log.jsonl")], "--log"),
        (["--out", str(blocker), "--log", str(tmp_path / "log.jsonl")], "--out"),
    ):
        done = ketapump(*common, *args)
        assert done.returncode == os.EX_CANTCREAT, done.stderr
        assert done.stderr.startswith(f"ketapump: {option} ") and str(blocker) in done.stderr
        assert not (tmp_path / "log.jsonl").exists() and not (tmp_path / "out").exists()
    assert db.read_bytes() == before


def test_a_read_only_or_damaged_course_database_is_refused_without_a_traceback(tmp_path: Path) -> None:
    db = new_course_db(tmp_path / "db" / "course.sqlite3")
    args = ["session", "--protocol", "ketamine-depression", "--patient", "p-1", "--weight-kg", "70", "--yes"]
    args += ["--operator", "nurse T", "--course-db", str(db), "--log", str(tmp_path / "log.jsonl")]
    args += ["--out", str(tmp_path / "out")]
    read_only = ketapump_with_read_only(db.parent, *args)
    assert read_only.returncode == os.EX_IOERR, read_only.stderr
    assert read_only.stderr.startswith(f"ketapump: {db}: ") and "Traceback" not in read_only.stderr
    with db.open("r+b") as f:  # garbage over the schema's page
        f.seek(100)
        f.write(b"\xa5" * 3000)
    damaged = ketapump(*args)
    assert damaged.returncode == os.EX_DATAERR, damaged.stderr
    assert f"{db}: " in damaged.stderr and "Traceback" not in damaged.stderr
    assert not (tmp_path / "out").exists()


def test_a_malformed_number_option_is_a_usage_error() -> None:
    done = ketapump("session", "--protocol", "ketamine-depression", "--patient", "p", "--weight-kg", "70kg")
    assert done.returncode == 2 and "--weight-kg" in done.stderr


@pytest.mark.parametrize("answer", ["n"])
def test_an_unconfirmed_checklist_item_on_the_terminal_aborts_before_the_pump_moves(
    tmp_path: Path, answer: str
) -> None:
    done = ketapump(
        "session", "--protocol", "ketamine-depression", "--patient", "p", "--weight-kg", "70",
        "--operator", "nurse T",
        "--course-db", str(new_course_db(tmp_path / "c.sqlite3")), "--log", str(tmp_path / "log.jsonl"),
        "--out", str(tmp_path / "out"), stdin=f"{answer}\n" * 8, timeout=120,
    )  # fmt: skip
    assert done.returncode == EXIT_ABORTED, done.stderr
    assert "checklist item not confirmed: IV placed and patent" in done.stderr
    events = [json.loads(line)["event"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "command" not in events and "checklist_answered" in events


def _session_process(tmp_path: Path, patient: str, db: Path, log: Path, out: Path) -> subprocess.Popen[str]:
    """``ketapump session`` on the simulator at 60× real time (a short transport timeout keeps the pump's
    watchdog inside its limit at that scale) with a 5-min observation, as a background process."""
    protocol = short_observation_protocol(tmp_path)
    return subprocess.Popen(
        [sys.executable, "-m", "ketapump", "session", "--protocol", str(protocol),
         "--pump", "sim://?timeout=0.02", "--time-scale", "60", "--patient", patient, "--weight-kg", "70",
         "--yes", "--json", "--operator", "nurse T", "--course-db", str(db), "--log", str(log),
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_phase(proc: subprocess.Popen[str], log: Path, phase: str, poll_s: float = 0.05) -> None:
    """Returns once the session's log records the start of ``phase``."""
    deadline = time.monotonic() + 120
    while f'"phase":"{phase}"' not in (log.read_text(encoding="utf-8") if log.exists() else ""):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{phase} never started"
        time.sleep(poll_s)


def _end_session(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[str, str]:
    """Waits for a background session to end (killed if it outlasts ``timeout``); its exit code must be
    one the README documents. Returns its stdout and stderr."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_documented(["session"], proc.returncode, stderr)
    return stdout, stderr


def test_signals_pause_resume_and_stop_a_running_session_which_still_observes_and_records(
    tmp_path: Path,
) -> None:
    log, db = tmp_path / "log.jsonl", new_course_db(tmp_path / "course.sqlite3")
    proc = _session_process(tmp_path, "p-9", db, log, tmp_path / "out")

    def events() -> list[dict[str, object]]:
        return (
            [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
            if log.exists()
            else []
        )

    def wait_for(event: str, deadline_s: float = 60.0, **fields: object) -> None:
        end = time.monotonic() + deadline_s
        while not any(e["event"] == event and e | fields == e for e in events()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < end, f"no {event} event"
            time.sleep(0.05)

    try:
        wait_for("phase_started")
        wait_for("phase_started", phase="infusion")
        time.sleep(1.0)  # a minute of pump time
        proc.send_signal(signal.SIGUSR1)
        wait_for("paused")
        time.sleep(1.0)
        proc.send_signal(signal.SIGUSR2)
        wait_for("resumed")
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
    except BaseException:
        proc.kill()
        raise
    out, err = _end_session(proc)
    assert proc.returncode == EXIT_INTERLOCK, err
    summary = json.loads(out)
    assert summary["outcome"] == "ended_operator" and summary["log_verified"]
    assert 0.0 < summary["delivered_mg"] < 10.0  # about 3 min of 52.5 mL/h at 1 mg/mL
    names = [e["event"] for e in events()]
    assert names.index("paused") < names.index("resumed") < names.index("operator_stop_requested")
    assert "observation_ended" in names and "session_complete" in names
    show = ketapump("course", "show", "p-9", "--course-db", str(db), "--json")
    assert show.returncode == 0 and "ended_operator" in show.stdout


@pytest.mark.parametrize("sigints", [2, 3])
def test_a_burst_of_sigints_during_the_infusion_still_gives_the_full_observation_and_a_report(
    tmp_path: Path, sigints: int
) -> None:
    """Two or three SIGINTs 0.2 s apart: the first stops the pump, the others are recorded and ignored;
    the observation runs its full minimum, and the summary, the report and the closing records follow."""
    log, db, out = tmp_path / "log.jsonl", new_course_db(tmp_path / "course.sqlite3"), tmp_path / "out"
    proc = _session_process(tmp_path, "p-9", db, log, out)
    try:
        _wait_for_phase(proc, log, "infusion")
        time.sleep(0.5)
        for _ in range(sigints):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        raise
    stdout, stderr = _end_session(proc)
    assert proc.returncode == EXIT_INTERLOCK, stderr
    summary = json.loads(stdout)
    assert summary["outcome"] == "ended_operator" and summary["log_verified"] is True
    assert summary["observation_min"] >= 5.0
    assert Path(summary["report"]).is_file() and (out / "series.csv").is_file()
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    refused = [r for r in records if r["event"] == "request_refused" and r.get("request") == "stop"]
    assert len(refused) == sigints - 1 and all(r["source"] == "signal" for r in refused)
    assert [r["event"] for r in records][-2:] == ["session_complete", "log_closed"]
    verify = ketapump("log", "verify", str(log))
    assert verify.returncode == 0 and f"its end matches {db}" in verify.stdout


def test_a_stop_during_take_up_ends_the_infusion_and_is_recorded(tmp_path: Path) -> None:
    """The documented rule: from take-up on the pump has moved, so the session is in the course history
    and a stop ends the infusion (exit 3); only a stop before the pump moves aborts (exit 7)."""
    log, db = tmp_path / "log.jsonl", new_course_db(tmp_path / "course.sqlite3")
    proc = _session_process(tmp_path, "p-3", db, log, tmp_path / "out")
    try:
        _wait_for_phase(proc, log, "take_up", poll_s=0.01)
        proc.send_signal(signal.SIGTERM)
    except BaseException:
        proc.kill()
        raise
    stdout, stderr = _end_session(proc)
    assert proc.returncode == EXIT_INTERLOCK, stderr
    assert json.loads(stdout)["outcome"] == "ended_operator"
    show = ketapump("course", "show", "p-3", "--course-db", str(db), "--json")
    (entry,) = json.loads(show.stdout)["sessions"]
    assert entry["session"]["outcome"] == "ended_operator"


def test_a_disk_filling_mid_session_ends_it_with_every_record_closed(tmp_path: Path) -> None:
    """The audit log on a 64 KiB file system fills during the infusion: the pump is stopped, the session
    is ended in the course history (not left "in progress"), the report is written, the summary printed
    (exit 74), and the log verifies up to the end its writer marked, its seal in the history."""
    db, out = new_course_db(tmp_path / "course.sqlite3"), tmp_path / "out"
    mount, kept = tmp_path / "small", tmp_path / "kept"
    done = ketapump_on_a_small_disk(
        mount, 64, kept,
        "session", "--protocol", "ketamine-depression", "--patient", "p-5", "--weight-kg", "70", "--yes",
        "--json", "--operator", "nurse T", "--course-db", str(db), "--out", str(out),
        "--log", str(mount / "audit.jsonl"),
    )  # fmt: skip
    assert done.returncode == os.EX_IOERR, done.stderr
    assert "No space left on device" in done.stderr and "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["outcome"] == "failed" and summary["log_verified"] is True
    assert 0.0 < summary["delivered_mg"] < 35.0
    assert Path(summary["report"]).is_file() and len(summary["plots"]) == 4
    with CourseHistory.open(db) as course:
        (session,) = course.sessions("p-5")
        assert session.outcome == "ended_error" and not session.in_progress
        assert session.delivered_mg == pytest.approx(summary["delivered_mg"])
        seal = course.log_seal(session.session_id)
    log = kept / "audit.jsonl"
    verify = ketapump("log", "verify", str(log), "--course-db", str(db))
    assert verify.returncode == 0, verify.stderr
    assert "incomplete tail marked by its writer" in verify.stdout and "its end matches" in verify.stdout
    assert seal is not None and seal.records == len(log.read_text(encoding="utf-8").splitlines())


def test_a_file_or_shipped_name_not_found_exits_66_and_invalid_content_65(tmp_path: Path) -> None:
    # sysexits: 66 (EX_NOINPUT) when there is nothing to read, 65 (EX_DATAERR) when what was read is wrong.
    missing = str(tmp_path / "missing.toml")
    dose = ["dose", "--weight-kg", "70"]
    for args in (
        ["--protocol", missing],
        ["--protocol", "no-such-protocol"],
        ["--protocol", "ketamine-depression", "--library", missing],
    ):
        done = ketapump(*dose, *args)
        assert done.returncode == os.EX_NOINPUT, (args, done.stderr)
        assert "missing.toml" in done.stderr or "neither a file nor a shipped protocol" in done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("schema_version = 1\nname = \n", encoding="utf-8")
    for args in (["--protocol", str(bad)], ["--protocol", "ketamine-depression", "--library", str(bad)]):
        done = ketapump(*dose, *args)
        assert done.returncode == os.EX_DATAERR and "is not valid TOML" in done.stderr, (args, done.stderr)
    out, log, db = tmp_path / "out", tmp_path / "log.jsonl", tmp_path / "course.sqlite3"
    session = [
        "session",
        "--patient",
        "p",
        "--weight-kg",
        "70",
        "--yes",
        "--operator",
        "nurse T",
        "--out",
        str(out),
    ]
    session += ["--log", str(log)]
    for args in (
        ["--protocol", missing],
        ["--protocol", "no-such-protocol"],
        ["--protocol", "ketamine-depression", "--library", missing],
        ["--protocol", "ketamine-depression", "--vitals", "csv:/nonexistent.csv"],
        ["--protocol", "ketamine-depression", "--vitals", f"sim:{missing}"],
    ):
        done = ketapump(*session, "--course-db", str(db), *args)
        assert done.returncode == os.EX_NOINPUT, (args, done.stderr)
        assert not out.exists() and not log.exists() and not db.exists(), args
    for args in (["--protocol", str(bad)], ["--protocol", "ketamine-depression", "--vitals", f"sim:{bad}"]):
        done = ketapump(*session, "--course-db", str(db), *args)
        assert done.returncode == os.EX_DATAERR and not db.exists(), (args, done.stderr)
    # The simulator's scenario file alike (it exits before serving anything).
    done = ketapump("sim", "--scenario", missing)
    assert done.returncode == os.EX_NOINPUT and "missing.toml" in done.stderr
    done = ketapump("sim", "--scenario", str(bad))
    assert done.returncode == os.EX_DATAERR and "is not valid TOML" in done.stderr


def test_a_virtual_time_session_records_true_times_and_a_second_open_session_is_refused(
    tmp_path: Path,
) -> None:
    """A simulated session runs 70 pump minutes in seconds: its course records carry the wall clock (no
    time later than now, none before it began), not its real start plus 70 simulated minutes."""
    db = new_course_db(tmp_path / "course.sqlite3")
    env = os.environ | {"XDG_STATE_HOME": str(tmp_path / "state")}

    def session(patient: str) -> subprocess.CompletedProcess[str]:
        return ketapump(
            "session", "--protocol", "ketamine-depression", "--patient", patient, "--weight-kg", "70",
            "--operator", "nurse-a", "--yes", "--course-db", str(db), "--out", str(tmp_path / "out"),
            "--json", env=env,
        )  # fmt: skip

    before = datetime.datetime.now(datetime.UTC)
    done = session("p-true")
    after = datetime.datetime.now(datetime.UTC)
    assert done.returncode == 0, done.stderr
    with CourseHistory.open(db) as course:
        (s,) = course.sessions("p-true")
        assert s.ended_at is not None
        assert before <= s.started_at <= s.ended_at <= after
        stamps = [course.patient("p-true").updated_at]
        stamps += [a.at for a in course.alarms(s.session_id)] + [o.at for o in course.overrides("p-true")]
        assert all(before <= t <= after for t in stamps), stamps
        # A session a crash left open: the next one is refused before the pump moves.
        course.ensure_patient("p-open", 70.0, None, at=before)
        course.begin_session("crashed", "p-open", "ketamine-depression", before, 35.0)
    refused = session("p-open")
    assert refused.returncode == os.EX_DATAERR, refused.stderr
    assert "session crashed is in progress since" in refused.stderr
    assert "ketapump course end crashed" in refused.stderr
    with CourseHistory.open(db) as course:
        assert [s.session_id for s in course.sessions("p-open")] == ["crashed"]


def test_the_sitter_is_given_by_name_and_phone_checked_before_anything_is_written(tmp_path: Path) -> None:
    out, log, db = tmp_path / "out", tmp_path / "log.jsonl", tmp_path / "course.sqlite3"
    common = [
        "session", "--protocol", str(short_observation_protocol(tmp_path)), "--patient", "p-s", "--weight-kg",
        "70", "--yes", "--operator", "nurse T", "--out", str(out), "--log", str(log), "--course-db", str(db),
    ]  # fmt: skip
    for args, option, words in (
        (["--sitter-name", "Ann Lee"], "--sitter-phone", "is needed too"),
        (["--sitter-phone", "+44 20 7946 0958"], "--sitter-name", "is needed too"),
        (
            ["--sitter-name", "Ann Lee", "--sitter-phone", "ask at the desk"],
            "--sitter-phone",
            "not a phone number",
        ),
        (
            ["--sitter-name", " ", "--sitter-phone", "+44 20 7946 0958"],
            "--sitter-name",
            "printable characters",
        ),
    ):
        done = ketapump(*common, *args)
        assert done.returncode == os.EX_DATAERR, (args, done.stderr)
        assert option in done.stderr and words in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert_documented(["session"], done.returncode, done.stderr)
        assert not out.exists() and not log.exists() and not db.exists(), args
    new_course_db(db)
    # The same run writes its report in every form asked for, Markdown first.
    done = ketapump(
        *common, "--sitter-name", "Ann Lee", "--sitter-phone", "+44 20 7946 0958", "--json",
        "--report", "md", "--report", "html", "--report", "pdf", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sitter"] == {"name": "Ann Lee", "phone": "+44 20 7946 0958"}
    assert summary["discharge_confirmed"] is True and summary["alarms"] == []
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| Sitter | Ann Lee, phone +44 20 7946 0958 |" in report
    assert summary["report"] == str(out / "report.md")
    assert summary["reports"] == [str(out / f"report.{form}") for form in ("md", "html", "pdf")]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Ann Lee, phone +44 20 7946 0958" in html and html.count("data:image/png;base64,") == 4
    pdf = PdfReader(out / "report.pdf", strict=True)
    text = "".join(page.extract_text() for page in pdf.pages)
    assert "p-s" in text and "Ann Lee" in text


def test_a_report_form_not_offered_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out, log, db = tmp_path / "out", tmp_path / "log.jsonl", new_course_db(tmp_path / "course.sqlite3")
    for forms in (["docx"], ["md", "md"]):
        done = ketapump(
            "session", "--protocol", "ketamine-depression", "--patient", "p-r", "--weight-kg", "70", "--yes",
            "--operator", "nurse T", "--out", str(out), "--log", str(log), "--course-db", str(db),
            *(arg for form in forms for arg in ("--report", form)),
        )  # fmt: skip
        assert done.returncode == os.EX_DATAERR, (forms, done.stderr)
        assert "md, html, pdf" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert_documented(["session"], done.returncode, done.stderr)
        assert not out.exists() and not log.exists(), forms
