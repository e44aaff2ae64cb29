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
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.lines import Line2D
from matplotlib.text import Annotation

from ketapump.clinical import ScriptedOperator, SessionOutcome, SessionRunner, SessionSetup, prepare_session
from ketapump.clinical.protocol import Patient
from ketapump.clinical.report import NOT_GIVEN, draw_plots, outcome_words
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


@dataclass(frozen=True)
class Signed:
    setup: SessionSetup
    outcome: SessionOutcome
    before: dt.datetime


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    """One session on the simulator that an occlusion ends mid-infusion, with its records."""
    tmp_path = tmp_path_factory.mktemp("signed")
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
    return Signed(setup, asyncio.run(runner.run()), before)


def test_the_report_names_everything_a_signature_needs_and_agrees_after_an_alarm(signed: Signed) -> None:
    setup, outcome, before = signed.setup, signed.outcome, signed.before
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


# ----- the plots, read back as matplotlib artists and checked against the session's data -------------


def _figures(outcome: SessionOutcome) -> dict[str, Any]:
    r = outcome.result
    return draw_plots(
        r.points, r.events, thresholds=r.thresholds, actions=r.actions, observations=r.observations,
        medications=r.medications, planned=r.planned_schedule(), baseline=r.baseline,
        band_pct=r.observation_band_pct,
    )  # fmt: skip


def _annotations(ax: Any) -> dict[str, Annotation]:
    return {a.get_text(): a for a in ax.texts if isinstance(a, Annotation)}


def _line(ax: Any, label: str) -> Line2D:
    [line] = [line for line in ax.get_lines() if line.get_label() == label]
    return line


def test_the_rate_plot_marks_the_target_and_labels_the_take_up(signed: Signed) -> None:
    r = signed.outcome.result
    ax = _figures(signed.outcome)["rate"].axes[0]
    target = r.plan.peak_rate_ml_h
    annotations = _annotations(ax)
    label = annotations[f"target {target:.2f} mL/h"]
    assert label.xy[1] == target  # the label sits on the target line …
    assert [x for x in ax.get_lines() if x.get_linestyle() == "-." and set(x.get_ydata()) == {target}]
    # … and the take-up's spike is named as such, at the take-up's own peak in the series.
    take_up = [p for p in r.points if p.phase == "take_up"]
    assert take_up, "the session ran a take-up"
    peak = max(take_up, key=lambda p: p.commanded_rate_ml_h)
    assert peak.commanded_rate_ml_h > 2 * target  # the spike that read as an overshoot
    [spike] = [a for text, a in annotations.items() if text.startswith("take-up:")]
    assert spike.xy == (peak.t_s / 60.0, peak.commanded_rate_ml_h)
    assert (
        f"{peak.commanded_rate_ml_h:.0f} mL/h" in spike.get_text() and "not an overshoot" in spike.get_text()
    )
    assert "take-up" in [t.get_text() for t in ax.get_legend().get_texts()]  # the phase in words


def test_the_plan_continues_dashed_past_the_alarm_to_its_end(signed: Signed) -> None:
    r = signed.outcome.result
    assert r.outcome == "ended_interlock" and r.delivered_mg < 0.9 * r.programmed_mg
    figures = _figures(signed.outcome)
    start = next(t for name, t in r.phases if name == "take_up")
    plan_end_min = (start + r.plan.duration_min * 60.0) / 60.0
    infusion_end = max(p.t_s for p in r.points if p.phase in ("take_up", "infusion")) / 60.0
    dose = _line(figures["dose"].axes[0], NOT_GIVEN)
    x, y = dose.get_xdata(), dose.get_ydata()
    assert dose.get_linestyle() == ":"
    assert x[0] <= infusion_end < x[1] and abs(x[-1] - plan_end_min) < 1e-9
    assert abs(y[-1] - r.plan.dose_mg) < 1e-9  # to the whole planned dose
    programmed = _line(figures["dose"].axes[0], "programmed (plan)")
    assert max(programmed.get_ydata()) < y[-1]  # the programmed line alone stopped short of it
    rate = _line(figures["rate"].axes[0], NOT_GIVEN)
    assert abs(rate.get_xdata()[-1] - plan_end_min) < 1e-9 and set(rate.get_ydata()) == {
        r.plan.peak_rate_ml_h
    }


def test_the_vitals_limits_are_labelled_at_their_ends_and_the_legend_hides_nothing(signed: Signed) -> None:
    r = signed.outcome.result
    fig = _figures(signed.outcome)["vitals"]
    fig.canvas.draw()
    bp = fig.axes[0]
    annotations = _annotations(bp)
    t = r.thresholds
    for channel, sign, limit in (
        ("SBP", "≥", t.sbp_max_mmhg),
        ("DBP", "≥", t.dbp_max_mmhg),
        ("SBP", "<", t.sbp_min_mmhg),
    ):
        label = annotations[f"{channel} {sign} {limit:g}"]
        assert label.xy == (1.0, limit) and label.get_ha() == "right"  # at the line's right end
        low, high = bp.get_ylim()
        assert low < limit < high  # inside the axes, not on their edge
    styles = {
        line.get_ydata()[0]: line.get_linestyle()
        for line in bp.get_lines()
        if len(set(line.get_ydata())) == 1
        and line.get_ydata()[0] in (r.thresholds.sbp_max_mmhg, r.thresholds.dbp_max_mmhg)
    }
    assert styles[r.thresholds.sbp_max_mmhg] != styles[r.thresholds.dbp_max_mmhg]  # told apart by style too
    for ax in fig.axes:  # every legend beside its plot: it covers no line and no limit
        legend = ax.get_legend()
        assert legend is not None
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())
        assert not any(
            "≥" in x.get_text() or "<" in x.get_text() for x in legend.get_texts()
        )  # limits: labelled


def test_the_band_that_ends_the_observation_is_drawn_over_the_observation(signed: Signed) -> None:
    r = signed.outcome.result
    fig = _figures(signed.outcome)["vitals"]
    band_pct = r.observation_band_pct
    assert band_pct == 20.0  # the protocol's
    observed = [p.t_s / 60.0 for p in r.points if p.phase == "observation"]
    for ax, channel, key in ((fig.axes[0], "SBP", "sbp_mmhg"), (fig.axes[1], "HR", "hr_bpm")):
        [band] = [
            c for c in ax.collections
            if isinstance(c, PolyCollection) and c.get_label().startswith(f"{channel} ±20 % of baseline")
        ]  # fmt: skip
        vertices = band.get_paths()[0].vertices
        base = r.baseline[key]
        assert abs(vertices[:, 1].min() - base * 0.8) < 1e-9 and abs(vertices[:, 1].max() - base * 1.2) < 1e-9
        assert (
            abs(vertices[:, 0].min() - observed[0]) < 1e-9 and abs(vertices[:, 0].max() - observed[-1]) < 1e-9
        )
        assert "ends the observation" in band.get_label()
