"""Planning a session: every finding together (limits, plausibility, the syringe), the course rules on an
ordinary clinic calendar, and the cumulative caps with the delivery tolerance.

The course rules run against a real course history (SQLite in ``tmp_path``) on a simulated calendar; the
comparisons are the Rust core's.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ketapump.clinical import druglib
from ketapump.clinical.course import CourseHistory
from ketapump.clinical.druglib import (
    Confirmation,
    authorize,
    load_library,
    order_for,
    review,
    window_start,
)
from ketapump.clinical.protocol import Patient, load_protocol, parse_protocol, plan_dose
from ketapump.clinical.session import ScriptedOperator
from ketapump.errors import ConfirmationRequired, LimitRefused
from test_session import run_session

KETAMINE = load_library().drug("ketamine")
STANDARD = load_protocol("ketamine-depression")  # 0.5 mg/kg over 40 min at 1 mg/mL, actual weight
TAPERED = load_protocol("ketamine-depression-tapered")  # adjusted weight
MONDAY = dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
H = dt.timedelta(hours=1)


def _findings(protocol: object, patient: Patient) -> list[druglib.LimitFinding]:
    plan = plan_dose(protocol, patient)  # type: ignore[arg-type]
    return review(KETAMINE, plan, order_for(plan, patient, entry=KETAMINE))


def _kinds(findings: list[druglib.LimitFinding]) -> list[tuple[str, str]]:
    return [(f.kind, f.severity) for f in findings]


# ----- every finding, together ------------------------------------------------------------------------


def test_300_kg_lists_weight_vtbi_and_syringe_findings_hard_first() -> None:
    """Pounds typed as kg: the weight and VTBI hard maxima are reported beside the syringe's capacity."""
    findings = _findings(STANDARD, Patient("p", 300.0))
    assert _kinds(findings) == [("weight_kg", "hard"), ("vtbi_ml", "hard"), ("syringe_fill_ml", "soft")]
    weight, vtbi, syringe = findings
    assert weight.message == "weight 300.0 kg exceeds the hard maximum 250.0 kg"
    assert vtbi.message == "volume to be infused 150.0 mL exceeds the hard maximum 120.0 mL"
    assert (syringe.value, syringe.limit, syringe.unit) == (151.0, 60.0, "mL")
    assert "3 syringes of 60 mL (2 syringe changes)" in syringe.remedies[1]
    with pytest.raises(LimitRefused) as info:
        authorize(findings, [])
    text = str(info.value)
    assert text.startswith("order is refused by 2 hard limits:")
    for finding in findings:
        assert finding.message in text


def test_134_kg_gets_the_syringe_finding_with_its_remedies_and_the_soft_vtbi_with_its_kind() -> None:
    findings = _findings(STANDARD, Patient("p", 134.0))
    # Runnable as two syringes: soft, confirmed like any soft finding.
    assert _kinds(findings) == [("vtbi_ml", "soft"), ("syringe_fill_ml", "soft")]
    syringe = findings[1]
    # 67 mg: 67 mL + 1 mL prime; 67 mg in 59 mL fits at 1.14 mg/mL.
    assert syringe.message == (
        "syringe fill 68.0 mL (67.0 mL + 1 mL line prime) exceeds the 60 mL of one bd-plastipak-60: "
        "the session runs it as 2 syringes (1 syringe change)"
    )
    assert syringe.remedies[0].startswith("a concentration of at least 1.14 mg/mL fits one bd-plastipak-60")
    assert syringe.remedies[1].startswith("2 syringes of 60 mL (1 syringe change): the session runs it so")
    with pytest.raises(ConfirmationRequired) as info:
        authorize(findings, [Confirmation("vtbi_ml", "reviewed")])
    assert "[soft: confirm as syringe_fill_ml=REASON]" in str(info.value)
    authorize(findings, [Confirmation("vtbi_ml", "reviewed"), Confirmation("syringe_fill_ml", "2 drawn up")])
    # Beyond the kernel's 16 syringes it is hard (not runnable).
    many = replace(plan_dose(STANDARD, Patient("p", 134.0)), syringe_fill_ml=17 * 60.0)
    (hard,) = [f for f in [druglib.syringe_finding(many)] if f is not None]
    assert hard.severity == "hard" and "more than the 16 one session may use" in hard.remedies[1]
    # At the concentration the remedy names, it fits one syringe.
    text = STANDARD.model_dump()
    text["drug"]["concentration_mg_per_ml"] = 1.14
    fitted = type(STANDARD).model_validate(text)
    assert "syringe_fill_ml" not in [f.kind for f in _findings(fitted, Patient("p", 134.0))]


def test_every_soft_refusal_names_its_kind() -> None:
    findings = _findings(STANDARD, Patient("p", 200.0, 170.0, "male"))  # BMI 69, weight above 180
    soft = [f for f in findings if f.severity == "soft"]
    assert {f.kind for f in soft} >= {"weight_kg", "bmi_kg_m2"}
    with pytest.raises(ConfirmationRequired) as info:
        authorize([f for f in findings if f.severity == "soft"], [])
    for f in soft:
        assert f"{f.message} [soft: confirm as {f.kind}=REASON]" in str(info.value)


# ----- plausibility -----------------------------------------------------------------------------------


def test_150_kg_with_a_height_of_66_cm_is_flagged_on_an_adjusted_weight_protocol() -> None:
    """Inches typed as cm: dosed on a 43.1 kg adjusted weight, 21.5 mg instead of ~49 mg."""
    patient = Patient("p", 150.0, 66.0, "male")
    plan = plan_dose(TAPERED, patient)
    assert math.isclose(plan.basis_weight_kg, 43.1, abs_tol=0.05)
    findings = _findings(TAPERED, patient)
    kinds = dict(_kinds(findings))
    assert kinds["height_cm"] == "soft"
    assert kinds["dosing_weight_pct"] == "soft"
    share = next(f for f in findings if f.kind == "dosing_weight_pct")
    assert math.isclose(share.value, 43.1 / 150.0 * 100.0, abs_tol=0.05)
    # The same typo on an actual-weight protocol: the height and the BMI (344 kg/m²).
    kinds = dict(_kinds(_findings(STANDARD, patient)))
    assert kinds["height_cm"] == "soft" and kinds["bmi_kg_m2"] == "soft"


def test_the_bmi_is_checked_only_on_an_actual_weight_protocol_with_a_height() -> None:
    heavy = Patient("p", 130.0, 170.0, "female")  # BMI 45
    assert "bmi_kg_m2" in dict(_kinds(_findings(STANDARD, heavy)))
    assert "bmi_kg_m2" not in dict(_kinds(_findings(TAPERED, heavy)))
    assert "bmi_kg_m2" not in dict(_kinds(_findings(STANDARD, Patient("p", 130.0))))
    assert dict(_kinds(_findings(STANDARD, Patient("p", 70.0, 175.0, "male")))) == {}


@pytest.fixture
def history(tmp_path: Path) -> Iterator[CourseHistory]:
    with CourseHistory.create(tmp_path / "course.sqlite3", at=MONDAY - 30 * DAY) as h:
        yield h


def test_a_weight_far_from_the_last_recorded_one_is_flagged(history: CourseHistory) -> None:
    history.ensure_patient("p", 70.0, 175.0, at=MONDAY - 7 * DAY)
    for weight, flagged in [(70.0, False), (76.9, False), (77.5, True), (62.0, True), (154.0, True)]:
        patient = Patient("p", weight, 175.0, "male")
        plan = plan_dose(STANDARD, patient)
        order = order_for(plan, patient, history, MONDAY, entry=KETAMINE)
        assert math.isclose(order.weight_change_pct or 0.0, abs(weight - 70.0) / 70.0 * 100.0)
        kinds = dict(_kinds(review(KETAMINE, plan, order)))
        assert (kinds.get("weight_change_pct") == "soft") == flagged, weight


def test_numbers_print_as_a_clinician_reads_them() -> None:
    fmt = druglib._number
    assert fmt(0.999999, "dose_mg_per_kg") == "1.0"
    assert fmt(1.125, "dose_rate_mg_per_kg_h") == "1.125"
    assert fmt(0.00169111, "hours_since_last_start") == "0.0017"
    # Printed apart from the limit it crossed, never equal to it.
    assert fmt(3.0000043, "cumulative_7d_mg_per_kg", apart_from=3.0) == "3.000004"
    assert fmt(3.0, "cumulative_7d_mg_per_kg", apart_from=3.0) == "3.0"


# ----- the course rules on a clinic's calendar --------------------------------------------------------


def test_three_full_doses_a_week_on_the_simulator_are_allowed_and_a_fourth_is_refused(tmp_path: Path) -> None:
    """Three 1.0 mg/kg sessions (Mon, Wed, Fri) run on the simulated pump, each delivering what the
    simulator delivers (a hair over the dose): the third is within the 3.0 mg/kg cap (confirmed as a
    soft finding above 2.25), and a fourth on Sunday is refused by the hard cap."""
    full_dose_kinds = ("dose_mg_per_kg", "cumulative_1h_mg_per_kg", "cumulative_4h_mg_per_kg")
    reasons = dict.fromkeys((*full_dose_kinds, "cumulative_7d_mg_per_kg"), "full-dose course")
    delivered = []
    for day in (0, 2, 4):
        run = run_session(
            tmp_path, protocol=FULL_DOSE, now=MONDAY + day * DAY, session_id=f"full-{day}",
            operator=ScriptedOperator(reasons=reasons),
        )  # fmt: skip
        assert run.error is None, run.error
        assert run.result is not None and run.result.outcome == "complete"
        delivered.append(run.result.delivered_mg)
    # The simulator delivers a hair over: before the third, 2.0000x mg/kg, so the third's total is above
    # 3.0 mg/kg, which a cap compared without the delivery tolerance would have refused outright.
    assert delivered[0] + delivered[1] > 140.0
    fourth = run_session(
        tmp_path, protocol=FULL_DOSE, now=MONDAY + 6 * DAY, session_id="full-6",
        operator=ScriptedOperator(reasons=reasons | {"sessions_in_7_days": "x"}),
    )  # fmt: skip
    assert isinstance(fourth.error, LimitRefused)
    assert [f.kind for f in fourth.error.findings] == ["cumulative_7d_mg_per_kg"]


def _begin(history: CourseHistory, sid: str, start: dt.datetime, mg: float, delivered: float) -> None:
    history.begin_session(sid, "p", "ketamine-depression", start, mg)
    history.end_session(sid, start + 40 * dt.timedelta(minutes=1), delivered, "complete")


def _course_findings(history: CourseHistory, at: dt.datetime, protocol: object = STANDARD) -> list[str]:
    patient = Patient("p", 70.0, 175.0, "male")
    plan = plan_dose(protocol, patient)  # type: ignore[arg-type]
    order = order_for(plan, patient, history, at, entry=KETAMINE)
    course_kinds = {"hours_since_last_start", "sessions_in_7_days", "cumulative_7d_mg_per_kg"}
    return [f"{f.kind}:{f.severity}" for f in review(KETAMINE, plan, order) if f.kind in course_kinds]


#: Mon/Wed/Fri for two weeks, each visit starting up to an hour off 09:00 (minutes).
MWF_OFFSETS_MIN = [(0, 0), (2, 55), (4, -50), (7, -60), (9, 40), (11, -15)]


def test_a_monday_wednesday_friday_course_with_varying_start_times_raises_no_course_finding(
    history: CourseHistory,
) -> None:
    history.ensure_patient("p", 70.0, 175.0, at=MONDAY - DAY)
    for i, (day, minutes) in enumerate(MWF_OFFSETS_MIN):
        at = MONDAY + day * DAY + dt.timedelta(minutes=minutes)
        assert _course_findings(history, at) == [], f"session {i + 1} on day {day}"
        _begin(history, f"s{i}", at, 35.0, 35.00015)


def test_a_fourth_session_inside_a_true_week_is_a_finding(history: CourseHistory) -> None:
    history.ensure_patient("p", 70.0, 175.0, at=MONDAY - DAY)
    for i, day in enumerate((0, 2, 4)):
        _begin(history, f"s{i}", MONDAY + day * DAY, 35.0, 35.0)
    # Sunday (6 days after Monday) is a fourth session within 7 days.
    assert _course_findings(history, MONDAY + 6 * DAY) == ["sessions_in_7_days:soft"]
    # So is next Monday 12 h earlier than this Monday's visit (6.5 days): the tolerance's edge.
    assert _course_findings(history, MONDAY + 6.5 * DAY) == ["sessions_in_7_days:soft"]
    assert _course_findings(history, MONDAY + 6.5 * DAY + dt.timedelta(seconds=1)) == []
    assert window_start(KETAMINE, "7d", MONDAY + 7 * DAY) == MONDAY + 12 * H


def test_three_full_doses_a_week_stay_under_the_hard_cap_despite_the_simulators_overdelivery(
    history: CourseHistory,
) -> None:
    """1.0 mg/kg three times a week is 3.0 mg/kg, the hard cap: each session delivering 70.00015 mg
    (the simulator's few µL over) must not make the third a hard refusal. It stays a soft finding (above
    2.25 mg/kg), which a clinician confirms."""
    full = parse_protocol(FULL_DOSE)
    history.ensure_patient("p", 70.0, 175.0, at=MONDAY - DAY)
    _begin(history, "s0", MONDAY, 70.0, 70.00015)
    _begin(history, "s1", MONDAY + 2 * DAY, 70.0, 70.00015)
    third = MONDAY + 4 * DAY
    assert _course_findings(history, third, full) == ["cumulative_7d_mg_per_kg:soft"]
    patient = Patient("p", 70.0, 175.0, "male")
    plan = plan_dose(full, patient)
    order = order_for(plan, patient, history, third, entry=KETAMINE)
    assert order.cumulative_7d_mg_per_kg is not None and order.cumulative_7d_mg_per_kg > 3.0
    # The kernel's cap still leaves the whole third dose.
    assert druglib.kernel_overrides(KETAMINE, order)["hard_cap_mg"] >= plan.dose_mg
    # A real fourth dose in the week is refused, hard.
    _begin(history, "s2", third, 70.0, 70.00015)
    assert "cumulative_7d_mg_per_kg:hard" in _course_findings(history, MONDAY + 6 * DAY, full)


FULL_DOSE = """
schema_version = 1
name = "ketamine-full-dose"
title = "Ketamine 1.0 mg/kg over 60 min"
[drug]
name = "ketamine"
concentration_mg_per_ml = 2.0
[dose]
mg_per_kg = 1.0
weight_basis = "actual"
duration_min = 60.0
[syringe]
name = "bd-plastipak-60"
"""
