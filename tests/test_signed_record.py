"""The record a clinician signs: the report's fields read back, and the delivered dose the same in the
report, the series behind the plots and the machine summary after an alarm.

Runs the real runner (audit log, course history, report) on the in-process simulator in virtual time,
with an occlusion scheduled on the simulated pump.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
from importlib import resources
from pathlib import Path

from ketapump.clinical import ScriptedOperator, SessionRunner, prepare_session
from ketapump.clinical.protocol import Patient
from ketapump.clinical.report import outcome_words
from ketapump.wire import ReferencePumpDriver, SimTransport
from simhelpers import new_course_db


def _rows(report: str) -> dict[str, str]:
    """The two-column rows of the report's tables (``| label | value |``)."""
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def test_the_report_names_everything_a_signature_needs_and_agrees_after_an_alarm(tmp_path: Path) -> None:
    setup = prepare_session(
        protocol="ketamine-depression",
        patient=Patient("p-signed", 70.0, 175.0, "male"),
        operator=ScriptedOperator(),
        operator_name="nurse-a",
        pump="sim://",
        course_db=new_course_db(tmp_path / "course.sqlite3"),
        log=tmp_path / "audit.jsonl",
        out=tmp_path / "out",
    )
    driver = setup.driver
    assert isinstance(driver, ReferencePumpDriver) and isinstance(driver.transport, SimTransport)
    driver.transport.pump.schedule(190.0, "fault_occlusion", 1.0)  # a clamped line mid-infusion
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    runner = SessionRunner.open(setup)
    outcome = asyncio.run(runner.run())
    summary = outcome.summary()
    assert summary["outcome"] == "ended_interlock"

    report = outcome.report.read_text(encoding="utf-8")
    rows = _rows(report)
    shipped = resources.files("ketapump.data").joinpath("protocols", "ketamine-depression.toml")
    assert rows["Protocol file SHA-256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert rows["Patient"] == "p-signed"
    assert rows["Operator"] == "nurse-a"
    assert rows["Pump"] == "sim://"
    assert rows["Syringe"] == "bd-plastipak-60 (60 mL), filled with 36.0 mL"
    assert rows["Concentration"] == "1 mg/mL ketamine"
    assert rows["Rate"] == "52.50 mL/h mean, 52.50 mL/h peak"
    assert rows["Clock"] == "virtual time (simulated)"
    assert rows["Software"].startswith("ketapump ") and "safety core" in rows["Software"]
    assert rows["Outcome"] == outcome_words("ended_interlock") == "ended early: interlock"
    for key in ("Started", "Ended"):
        utc, _, local = rows[key].partition(" UTC (")
        at = dt.datetime.strptime(utc, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
        assert before <= at <= dt.datetime.now(dt.UTC) and local.endswith(")")
    assert rows["Baseline vitals"].startswith("SBP ") and "sbp_mmhg" not in report
    assert rows["Vitals at discharge"].startswith("SBP ") and "SpO₂" in rows["Vitals at discharge"]
    # The phase table does not call an alarm's end "complete".
    phase_rows = [line for line in report.splitlines() if line.startswith("| ended (")]
    assert phase_rows and "ended early: interlock" in phase_rows[0]
    assert "| complete |" not in report

    # One delivered dose: the summary (JSON), the report and the series the plots are drawn from.
    delivered = f"{summary['delivered_mg']:.2f} mg"
    assert rows["Delivered"].startswith(delivered)
    with (setup.out / "series.csv").open(encoding="utf-8") as f:
        series = list(csv.DictReader(f))
    assert f"{float(series[-1]['delivered_mg']):.2f} mg" == delivered
    infusion_end = max(float(r["delivered_mg"]) for r in series if r["phase"] == "observation")
    assert f"{infusion_end:.2f} mg" == delivered
