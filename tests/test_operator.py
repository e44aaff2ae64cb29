"""The operator's hand on whole sessions (virtual time, the real kernel, the simulated pump and patient,
a real course history): sticky pauses the vitals never take over, a vitals pause released as the
protocol says, slowing down through the kernel with the rest of the dose re-planned, side effects and
medications on record, every action with its actor in the audit log and the course history, and the
refined vitals gate (alarm delays, low limits, a cuff reading on request)."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

from ketapump import _core
from ketapump.clinical import (
    ActionTaken,
    CourseHistory,
    HoldChanged,
    Patient,
    QuestionAsked,
    ScheduledCommand,
    ScriptedOperator,
    Session,
    SessionContext,
    SessionEvent,
    SessionResult,
    Tick,
    demo_patient,
    load_library,
    load_protocol,
)
from ketapump.clinical.protocol import Protocol, Sitter
from ketapump.clinical.report import ACTOR_COLORS, COLORS, write_plots, write_report
from ketapump.clinical.vitals import PatientScript, ScriptedMonitor
from ketapump.clock import VirtualClock
from ketapump.errors import ConfigurationError
from ketapump.wire import ReferencePumpDriver, RegisterTransport, open_transport
from sessionhelpers import AuditRecords

NOW = datetime.datetime(2026, 11, 22, 9, 0, tzinfo=datetime.UTC)
PATIENT = Patient("p-1", weight_kg=70.0, height_cm=175.0, sex="male")
NURSE = "nurse A"
ONDANSETRON = {"drug": "ondansetron", "dose": 4.0, "unit": "mg", "route": "iv"}
DOSE_MG = 35.0  # 0.5 mg/kg × 70 kg at 1 mg/mL: 35 mL at 52.5 mL/h over 40 min


def protocol(vitals: dict[str, Any] | None = None, **observation: float) -> Protocol:
    """The standard protocol with vitals overrides and a shorter observation (these tests are about the
    infusion)."""
    document = load_protocol("ketamine-depression").model_dump()
    document["vitals"] = vitals or {}
    document["observation"] |= {"min_minutes": 1.0, "max_minutes": 20.0, **observation}
    return Protocol.model_validate(document)


def script(*events: dict[str, Any]) -> PatientScript:
    document = demo_patient().model_dump()
    document["event"] = list(events)
    document["nurse"] = []
    return PatientScript.model_validate(document)


@dataclass
class Run:
    result: SessionResult
    events: list[SessionEvent]
    log: AuditRecords
    db: Path
    monitor: ScriptedMonitor

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def ticks(self) -> list[Tick]:
        return [t for t in self.of(Tick) if t.pump_state is not None]

    def infusion_start(self) -> float:
        return self.ticks()[0].t_s

    def course(self) -> CourseHistory:
        return CourseHistory.open(self.db)


def run(
    tmp_path: Path,
    *,
    operator: ScriptedOperator | None = None,
    patient: PatientScript | None = None,
    rules: Protocol | None = None,
    before: Callable[[Session], None] | None = None,
) -> Run:
    clock = VirtualClock()
    pump = _core.SimPump("bd-plastipak-60", seed=0, fill_ml=40.0)
    transport = open_transport("sim://", clock=clock, pump=pump)
    assert isinstance(transport, RegisterTransport)
    log = AuditRecords()
    monitor = ScriptedMonitor(patient or script())
    db = tmp_path / "course.sqlite3"
    with CourseHistory.create(db, at=NOW) as course:
        session = Session(
            SessionContext(
                session_id="s-1",
                protocol=rules or protocol(),
                patient=PATIENT,
                driver=ReferencePumpDriver(transport),
                clock=clock,
                log=log,
                course=course,
                library=load_library(None),
                vitals=monitor,
                operator=operator or ScriptedOperator(),
                calendar_origin=NOW,
                operator_name=NURSE,
                sitter=Sitter("a sitter", "+44 20 7946 0000"),
            )
        )
        events: list[SessionEvent] = []
        session.subscribe(events.append)
        if before is not None:
            before(session)
        result = asyncio.run(session.run())
    return Run(result, events, log, db, monitor)


def nurse(*entries: tuple[Any, ...], **settings: Any) -> ScriptedOperator:
    """A scripted nurse: ``(infusion_s, action, reason, {args})`` entries."""
    return ScriptedOperator(scheduled=[ScheduledCommand(*entry) for entry in entries], **settings)


def held_spans(ticks: Sequence[Tick]) -> list[tuple[float, float, tuple[str, ...]]]:
    """Runs of ticks with the same holders (start, end, holders)."""
    spans: list[tuple[float, float, tuple[str, ...]]] = []
    for t in ticks:
        if spans and spans[-1][2] == t.paused_by:
            spans[-1] = (spans[-1][0], t.t_s, t.paused_by)
        else:
            spans.append((t.t_s, t.t_s, t.paused_by))
    return spans


def no_pump_motion_while_held(ticks: Sequence[Tick]) -> None:
    """The pump never runs while anyone holds it (the hold reaches the kernel at the tick it appears)."""
    for t in ticks:
        if t.paused_by:
            assert t.pump_state != "running" and t.commanded_rate_ml_h == 0.0, t


# ----- an operator's pause is sticky ----------------------------------------------------------------


@pytest.mark.parametrize("policy", ["clinician", "auto"])
def test_an_operator_pause_survives_a_vitals_crossing_and_its_clearing(tmp_path: Path, policy: str) -> None:
    # The case: paused for "patient panicking"; a 60-s desaturation during the pause; the vitals
    # clear. Even with vitals.resume = "auto" (after 30 s), only the operator's resume at 25 min releases it.
    desaturation = {"kind": "crossing", "channel": "spo2", "at_s": 700.0, "duration_s": 60.0, "value": 85.0}
    operator = nurse((600.0, "pause", "patient panicking"), (1500.0, "resume", "settled"))
    r = run(
        tmp_path,
        operator=operator,
        patient=script(desaturation),
        rules=protocol({"resume": policy, "resume_after_s": 30.0}),
    )
    assert r.result.outcome == "complete" and math.isclose(r.result.delivered_mg, DOSE_MG, rel_tol=0.02)
    start = r.infusion_start()
    ticks = r.ticks()
    no_pump_motion_while_held(ticks)
    spans = [(round(a - start), round(b - start), h) for a, b, h in held_spans(ticks) if h]
    # Held by the operator, then by both from the desaturation (past its 10 s delay) on; under "auto" the
    # vitals release their own hold 30 s after clearing, leaving the operator's — until the operator's
    # resume. Under "clinician" both wait for it.
    assert spans[0][0] == 600 and 709 <= spans[1][0] <= 712 and spans[-1][1] == 1500
    if policy == "auto":
        assert [h for *_, h in spans] == [("operator",), ("operator", "vitals"), ("operator",)]
        assert 760 + 30 <= spans[2][0] <= 760 + 32
    else:
        assert [h for *_, h in spans] == [("operator",), ("operator", "vitals")]
    # One resume in the whole record, and it is the operator's.
    assert [e["reason"] for e in r.log.named("resumed")] == ["operator: settled"]
    (resume,) = [a for a in r.of(ActionTaken) if a.action == "resume"]
    released = ["operator"] if policy == "auto" else ["operator", "vitals"]
    assert (resume.accepted, resume.operator, resume.detail["released"]) == (True, NURSE, released)
    holds = [(h.actor, h.added, h.released, h.holders) for h in r.of(HoldChanged)]
    assert holds[0] == ("operator", "operator", (), ("operator",))
    assert holds[1] == ("vitals", "vitals", (), ("operator", "vitals"))
    assert holds[-1] == ("operator", None, ("operator",) if policy == "auto" else ("operator", "vitals"), ())
    # The course history says who did what, and never names a person for the vitals.
    with r.course() as course:
        rows = [(a.action, a.actor, a.who) for a in course.actions("s-1")]
    expected_vitals = [("hold", "vitals", None)] + ([("release", "vitals", None)] if policy == "auto" else [])
    assert rows == [("pause", "operator", NURSE), *expected_vitals, ("resume", "operator", NURSE)]


def test_an_operator_pause_nobody_resumes_ends_at_the_maximum_duration_with_the_shortfall(
    tmp_path: Path,
) -> None:
    desaturation = {"kind": "crossing", "channel": "spo2", "at_s": 700.0, "duration_s": 60.0, "value": 85.0}
    r = run(tmp_path, operator=nurse((600.0, "pause", "patient panicking")), patient=script(desaturation))
    assert not r.log.named("resumed")  # nothing ever resumed it
    assert r.result.outcome == "ended_max_duration"
    # 10 min of 52.5 mL/h was given; the rest is reported as not given, and asked about.
    (reached,) = r.log.named("max_duration_reached")
    assert reached["not_given_mg"] == pytest.approx(DOSE_MG - r.result.delivered_mg, abs=0.05)
    assert 8.0 < r.result.delivered_mg < 9.5
    (question,) = [q for q in r.of(QuestionAsked) if q.question == "max_duration"]
    assert "not given" in question.text
    assert [a["code"] for a in r.result.alarms] == ["vitals_crossing_spo2", "max_duration_reached"]
    # The protocol stopped it, and the audit log says so: no operator stop anywhere in it.
    assert not r.log.named("operator_stop") and not r.log.named("operator_stop_requested")
    assert [e["by"] for e in r.log.named("automatic_stop")] == ["protocol"]
    assert [e["reason"] for e in r.log.named("session_ended")] == ["protocol"]
    with r.course() as course:
        (session,) = course.sessions("p-1")
        assert session.outcome == "ended_max_duration"
        assert "max_duration_reached" in [a.code for a in course.alarms("s-1")]
        stops = [(a.action, a.actor, a.who) for a in course.actions("s-1") if a.action == "stop"]
        assert stops == [("stop", "protocol", None)]


def test_an_operator_may_pause_while_the_vitals_hold_the_pump_and_both_must_be_released(
    tmp_path: Path,
) -> None:
    tachycardia = {"kind": "crossing", "channel": "hr", "at_s": 600.0, "duration_s": 120.0, "value": 130.0}
    operator = nurse(
        (640.0, "pause", "keep it paused, checking the line"),
        (700.0, "resume", "too early"),  # the vitals are still out: refused, both holds stay
        (900.0, "resume", "line checked, HR settled"),
        resume_after_s=None,
    )
    r = run(tmp_path, operator=operator, patient=script(tachycardia))
    assert r.result.outcome == "complete"
    actions = [(a.action, a.accepted) for a in r.of(ActionTaken)]
    assert actions == [("pause", True), ("resume", False), ("resume", True)]
    refused = r.of(ActionTaken)[1]
    assert refused.why.startswith("vitals alarm active: HR 130 bpm") and refused.detail["holders"] == [
        "operator",
        "vitals",
    ]
    start = r.infusion_start()
    spans = [(round(a - start), h) for a, _b, h in held_spans(r.ticks()) if h]
    assert [h for _a, h in spans] == [("vitals",), ("operator", "vitals")]
    assert r.of(ActionTaken)[2].detail["released"] == ["operator", "vitals"]


# ----- a vitals pause resumes as the protocol says ---------------------------------------------------


def test_a_vitals_pause_under_clinician_resume_waits_for_the_operator(tmp_path: Path) -> None:
    tachycardia = {"kind": "crossing", "channel": "hr", "at_s": 600.0, "duration_s": 60.0, "value": 130.0}
    operator = nurse((1200.0, "resume", "reviewed: HR back to 80"), resume_after_s=None)
    r = run(tmp_path, operator=operator, patient=script(tachycardia), rules=protocol({"resume": "clinician"}))
    start = r.infusion_start()
    (span,) = [(a - start, b - start) for a, b, h in held_spans(r.ticks()) if h]
    assert 610.0 <= span[0] <= 611.0 and span[1] == pytest.approx(1200.0, abs=0.1)  # clear at 660, held on
    (resume,) = r.of(ActionTaken)
    assert resume.operator == NURSE and resume.detail["released"] == ["vitals"]
    assert [e["reason"] for e in r.log.named("resumed")] == ["operator: reviewed: HR back to 80"]
    assert r.result.outcome == "complete"


def test_a_vitals_pause_under_auto_resume_is_released_by_the_session_in_its_own_name(tmp_path: Path) -> None:
    tachycardia = {"kind": "crossing", "channel": "hr", "at_s": 600.0, "duration_s": 60.0, "value": 130.0}
    r = run(
        tmp_path,
        operator=ScriptedOperator(resume_after_s=None),
        patient=script(tachycardia),
        rules=protocol({"resume": "auto", "resume_after_s": 120.0}),
    )
    start = r.infusion_start()
    (span,) = [(a - start, b - start) for a, b, h in held_spans(r.ticks()) if h]
    assert span[1] == pytest.approx(660.0 + 120.0, abs=1.1)  # clear from the first reading in range
    (resumed,) = r.log.named("resumed")
    assert "vitals.resume = auto" in resumed["reason"] and "operator" not in resumed["reason"]
    assert r.of(ActionTaken) == []  # no operator acted
    assert r.of(HoldChanged)[-1].actor == "vitals" and r.of(HoldChanged)[-1].operator is None
    with r.course() as course:
        assert [(a.action, a.actor, a.who, a.source) for a in course.actions("s-1")] == [
            ("hold", "vitals", None, "engine"),
            ("release", "vitals", None, "engine"),
        ]


# ----- slowing down ------------------------------------------------------------------------------------


def test_slow_to_half_and_back_extends_the_infusion_and_still_delivers_the_dose(tmp_path: Path) -> None:
    operator = nurse(
        (1500.0, "slow", "nausea", {"to_fraction": 0.5}),
        (2100.0, "restore_rate", "nausea resolved"),
    )
    r = run(tmp_path, operator=operator)
    assert r.result.outcome == "complete"
    assert math.isclose(r.result.delivered_mg, DOSE_MG, rel_tol=0.02)
    # Through the kernel's rate path: the rate changes are the kernel's, logged as such.
    changes = [(e["rate_ml_h"], e["reason"]) for e in r.log.named("rate_changed")]
    assert changes[0] == (26.25, "operator slowed to 50 % of the plan: nausea")
    assert changes[1][0] == 52.5 and changes[1][1].startswith("operator restored the plan's rate")
    start = r.infusion_start()
    slowed = [t for t in r.ticks() if 1510.0 < t.t_s - start < 2090.0]
    assert all(t.programmed_rate_ml_h == 26.25 and t.planned_rate_ml_h == 52.5 for t in slowed)
    assert sum(t.commanded_rate_ml_h for t in slowed) / len(slowed) == pytest.approx(26.25, rel=0.02)
    # Ten minutes at half the rate: the infusion ends five minutes later, as the slow-down said.
    (slow,) = [a for a in r.of(ActionTaken) if a.action == "slow"]
    # Had it stayed slowed: 13.1 mL left at 26.25 mL/h, ending at 55 min, within the 60-min maximum.
    assert slow.detail["ends_at_min"] == pytest.approx(55.0, abs=0.3) and slow.detail["max_min"] == 60.0
    assert "not_given_by_max_mg" not in slow.detail
    (restore,) = [a for a in r.of(ActionTaken) if a.action == "restore_rate"]
    assert restore.detail["ends_at_min"] == pytest.approx(45.0, abs=0.2)
    phases = dict(r.result.phases)
    assert (phases["observation"] - phases["infusion"]) / 60.0 == pytest.approx(45.0, abs=0.5)


@pytest.mark.parametrize("continue_reason", [None, "patient settled, clinician agrees to finish the dose"])
def test_slowed_past_the_maximum_duration_stops_with_the_shortfall_or_continues_with_a_reason(
    tmp_path: Path, continue_reason: str | None
) -> None:
    reasons = {"max_duration": continue_reason} if continue_reason else {}
    operator = nurse((600.0, "slow", "nausea", {"to_fraction": 0.5}), reasons=reasons)
    r = run(tmp_path, operator=operator)
    (slow,) = [a for a in r.of(ActionTaken) if a.action == "slow"]
    # 26.25 mL left at 26.25 mL/h: the rest takes an hour, so the infusion would end at 70 min, and by the
    # 60-min maximum 4.4 mg would not be given. Said at once.
    assert slow.detail["ends_at_min"] == pytest.approx(70.0, abs=0.2)
    assert slow.detail["not_given_by_max_mg"] == pytest.approx(4.375, abs=0.1)
    (reached,) = r.log.named("max_duration_reached")
    assert reached["not_given_mg"] == pytest.approx(4.375, abs=0.15)
    (question,) = [q for q in r.of(QuestionAsked) if q.question == "max_duration"]
    assert "Continue to 120 min" in question.text
    start = r.infusion_start()
    if continue_reason is None:
        assert r.result.outcome == "ended_max_duration"
        assert r.result.delivered_mg == pytest.approx(DOSE_MG - 4.375, abs=0.15)
        assert max(t.t_s for t in r.ticks()) - start < 60.0 * 60.0 + 2.0
    else:
        assert r.result.outcome == "complete"
        assert math.isclose(r.result.delivered_mg, DOSE_MG, rel_tol=0.02)
        phases = dict(r.result.phases)
        assert (phases["observation"] - phases["infusion"]) / 60.0 == pytest.approx(70.0, abs=0.5)
        (override,) = [c for c in r.result.confirmations if c["kind"] == "max_duration"]
        assert override["reason"] == continue_reason and override["by"] == NURSE
        with r.course() as course:
            assert [(o.kind, o.who) for o in course.overrides("p-1")] == [("max_duration", NURSE)]


def test_a_slow_that_is_not_slower_or_comes_outside_the_infusion_is_refused(tmp_path: Path) -> None:
    def too_soon(session: Session) -> None:
        session.slow("before anything runs", to_fraction=0.5)

    operator = nurse(
        (600.0, "slow", "cap above the plan", {"to_rate_ml_h": 60.0}), (700.0, "restore_rate", "")
    )
    r = run(tmp_path, operator=operator, before=too_soon)
    refused = [(a.action, a.why) for a in r.of(ActionTaken) if not a.accepted]
    assert refused == [
        ("slow", "no infusion is running (precheck)"),
        ("slow", "60 mL/h is not slower than the plan's 52.5 mL/h"),
        ("restore_rate", "not slowed"),
    ]
    assert not [e for e in r.log.named("rate_changed") if "operator" in e["reason"]]
    with pytest.raises(ValueError, match="to_fraction must be between 0 and 1"):
        Session.command(_idle_session(tmp_path), "slow", "x", to_fraction=1.5)


def _idle_session(tmp_path: Path) -> Session:
    """A session that never runs: for the checks made when a command is issued."""
    clock = VirtualClock()
    transport = open_transport(
        "sim://", clock=clock, pump=_core.SimPump("bd-plastipak-60", seed=0, fill_ml=40.0)
    )
    assert isinstance(transport, RegisterTransport)
    with CourseHistory.create(tmp_path / "idle.sqlite3", at=NOW) as course:
        return Session(
            SessionContext(
                session_id="s-idle", protocol=protocol(), patient=PATIENT,
                driver=ReferencePumpDriver(transport), clock=clock, log=AuditRecords(), course=course,
                library=load_library(None), vitals=ScriptedMonitor(script()), operator=ScriptedOperator(),
                calendar_origin=NOW, operator_name=NURSE,
            )
        )  # fmt: skip


# ----- every action on record ------------------------------------------------------------------------


def pixels_of(image: Any, color: str, tolerance: float = 0.06) -> Any:
    rgb = np.array([int(color[i : i + 2], 16) / 255.0 for i in (1, 3, 5)])
    return np.all(np.abs(image[:, :, :3] - rgb) <= tolerance, axis=2)


def test_the_report_and_plots_show_every_action_with_actor_and_reason_and_the_slowed_section(
    tmp_path: Path,
) -> None:
    operator = nurse(
        (1500.0, "record_observation", "", {"kind": "nausea", "value": 2.0, "note": "queasy"}),
        (1510.0, "slow", "nausea", {"to_fraction": 0.5}),
        (1560.0, "give_medication", "nausea", ONDANSETRON),
        (2110.0, "restore_rate", "nausea resolved"),
    )
    r = run(tmp_path, operator=operator)
    res = r.result
    lists = {"actions": res.actions, "observations": res.observations, "medications": res.medications}
    plots = write_plots(res.points, res.events, tmp_path / "out", thresholds=res.thresholds, **lists)
    summary = res.summary()
    report = write_report(summary, res.points, res.events, tmp_path / "out", plots=plots).read_text()
    assert "| Operator | nurse A |" in report
    assert f"| {_clock_of(res, 1510.0)} | slow | nurse A | operator | script | nausea | yes |" in report
    assert "## Observations" in report and "| nausea | 2 | 0–4 clinician rating" in report
    assert "## Medications" in report and "| ondansetron | 4 | mg | iv | nausea | nurse A |" in report
    dose, rate = imread(plots[0]), imread(plots[1])
    # The slowed section is shaded on the rate plot (and only there): ten of the ~47 minutes plotted, about
    # a fifth of the 900-pixel axis (and the legend's patch).
    slowed = pixels_of(rate, COLORS["slowed"]).any(axis=0)
    assert 150 < np.count_nonzero(slowed) < 260
    assert np.count_nonzero(pixels_of(dose, COLORS["slowed"])) == 0
    # Each action is marked on both time axes, in the operator's colour, and listed with actor and reason.
    for image in (dose, rate):
        assert np.count_nonzero(pixels_of(image, ACTOR_COLORS["operator"])) > 300
        assert image.shape[0] > 450  # the list of actions below the plot


def _clock_of(result: SessionResult, infusion_s: float) -> str:
    """How the report writes the session time ``infusion_s`` into the infusion."""
    start = dict(result.phases)["take_up"]
    t = round(start + infusion_s)
    return f"{t // 3600}:{t // 60 % 60:02d}:{t % 60:02d}"


def test_every_action_is_an_audit_event_with_actor_and_reason_and_a_course_record(tmp_path: Path) -> None:
    operator = nurse(
        (300.0, "record_observation", "", {"kind": "anxiety", "value": 3.0, "note": "panicky"}),
        (310.0, "pause", "patient anxious"),
        (400.0, "resume", "reassured"),
        (900.0, "record_observation", "", {"kind": "nausea", "value": 2.0}),
        (905.0, "slow", "nausea", {"to_rate_ml_h": 30.0}),
        (960.0, "give_medication", "nausea", ONDANSETRON),
        (1500.0, "restore_rate", "settled"),
        (1600.0, "record_observation", "", {"kind": "cadss", "value": 12.0}),
        (1700.0, "acknowledge", "seen", {}),
        (1800.0, "stop", "patient asked to stop"),
        (1820.0, "record_observation", "", {"kind": "dissociation", "value": 1.0, "note": "fading"}),
    )
    r = run(tmp_path, operator=operator)
    assert r.result.outcome == "ended_operator"
    done = r.of(ActionTaken)
    assert [a.action for a in done] == [
        "record_observation", "pause", "resume", "record_observation", "slow", "give_medication",
        "restore_rate", "record_observation", "acknowledge", "stop", "record_observation",
    ]  # fmt: skip
    assert all(a.accepted and a.operator == NURSE and a.source == "script" for a in done)
    # In the audit log: each with who, from where and why.
    logged = r.log.named("operator_action")
    assert [(e["action"], e["operator"], e["source"], e["reason"]) for e in logged] == [
        (a.action, NURSE, "script", a.reason) for a in done
    ]
    # In the course history: the pump actions, the observations and the medication, each with who.
    with r.course() as course:
        assert [(a.action, a.who, a.reason) for a in course.actions("s-1")] == [
            ("pause", NURSE, "patient anxious"),
            ("resume", NURSE, "reassured"),
            ("slow", NURSE, "nausea"),
            ("restore_rate", NURSE, "settled"),
            ("acknowledge", NURSE, "seen"),
            ("stop", NURSE, "patient asked to stop"),
        ]
        assert [(o.kind, o.value, o.who) for o in course.observations("s-1")] == [
            ("anxiety", 3.0, NURSE), ("nausea", 2.0, NURSE), ("cadss", 12.0, NURSE),
            ("dissociation", 1.0, NURSE),
        ]  # fmt: skip
        (given,) = course.medications("s-1")
        assert (given.drug, given.dose, given.unit, given.route, given.who) == (
            "ondansetron",
            4.0,
            "mg",
            "iv",
            NURSE,
        )
        assert course.observations("s-1")[0].scale == "0–4 clinician rating"
    # In the result the report is written from.
    assert [m["drug"] for m in r.result.medications] == ["ondansetron"]
    assert len(r.result.observations) == 4 and len(r.result.actions) == len(done)


def test_a_session_without_an_operator_does_not_start_unless_the_protocol_allows_anonymous_qa_runs(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    transport = open_transport(
        "sim://", clock=clock, pump=_core.SimPump("bd-plastipak-60", seed=0, fill_ml=40.0)
    )
    assert isinstance(transport, RegisterTransport)

    def context(rules: Protocol, name: str | None) -> SessionContext:
        return SessionContext(
            session_id="s-x", protocol=rules, patient=PATIENT, driver=ReferencePumpDriver(transport),
            clock=clock, log=AuditRecords(), course=course, library=load_library(None),
            vitals=ScriptedMonitor(script()), operator=ScriptedOperator(), calendar_origin=NOW,
            operator_name=name,
        )  # fmt: skip

    with CourseHistory.create(tmp_path / "c.sqlite3", at=NOW) as course:
        with pytest.raises(ConfigurationError, match="operator is required: protocol 'ketamine-depression'"):
            Session(context(protocol(), None))
        for bad in ("", "   ", "a\tb", "x" * 81):
            with pytest.raises(ConfigurationError, match="operator"):
                Session(context(protocol(), bad))
        qa = protocol().model_copy(
            update={"session": protocol().session.model_copy(update={"allow_anonymous": True})}
        )
        assert Session(context(qa, None)).operator_name is None
        assert Session(context(protocol(), "  nurse A ")).operator_name == NURSE


# ----- the vitals gate at the chair ------------------------------------------------------------------


def test_a_one_second_spo2_artefact_never_pauses_and_a_twenty_second_desaturation_does(
    tmp_path: Path,
) -> None:
    artefact = {"kind": "crossing", "channel": "spo2", "at_s": 600.0, "duration_s": 1.0, "value": 80.0}
    desaturation = {"kind": "crossing", "channel": "spo2", "at_s": 1200.0, "duration_s": 20.0, "value": 86.0}
    r = run(tmp_path, patient=script(artefact, desaturation))
    (alarm,) = r.log.named("vitals_alarm")
    start = r.infusion_start()
    assert alarm["since_s"] - start == pytest.approx(1200.0, abs=1.0)  # the first reading of the run
    delay = 10.0
    paused = [e for e in r.log.named("state_transition") if e["to_state"] == "paused"]
    assert len(paused) == 1
    # S13: paused within delay + 1 s of the desaturation's first reading.
    assert 0.0 <= paused[0]["t_s"] - alarm["since_s"] <= delay + 1.0
    assert r.result.outcome == "complete" and math.isclose(r.result.delivered_mg, DOSE_MG, rel_tol=0.02)


@pytest.mark.parametrize(("channel", "value"), [("sbp", 85.0), ("hr", 45.0)])
def test_low_limits_pause_hypotension_and_bradycardia(tmp_path: Path, channel: str, value: float) -> None:
    low = {"kind": "crossing", "channel": channel, "at_s": 900.0, "duration_s": 700.0, "value": value}
    r = run(tmp_path, patient=script(low))
    (alarm,) = r.log.named("vitals_alarm")
    assert alarm["code"] == f"vitals_crossing_{channel}" and alarm["low"] is True
    assert "<" in alarm["detail"]
    paused = [e for e in r.log.named("state_transition") if e["to_state"] == "paused"]
    assert len(paused) == 1 and 0.0 <= paused[0]["t_s"] - alarm["reading_t_s"] <= 1.0
    assert [p["by"] for p in r.result.pauses] == ["vitals"]


@pytest.mark.parametrize(
    ("channel", "value", "detail"), [("rr", 6.0, "RR 6 /min < 8 /min"), ("etco2", 58.0, "EtCO₂ 58")]
)
def test_a_monitored_capnograph_pauses_on_rr_or_etco2_past_its_delay_and_not_when_unmonitored(
    tmp_path: Path, channel: str, value: float, detail: str
) -> None:
    patient = script(
        {"kind": "crossing", "channel": channel, "at_s": 900.0, "duration_s": 60.0, "value": value}
    )
    patient = patient.model_copy(
        update={"baseline": patient.baseline.model_copy(update={"rr_per_min": 14.0, "etco2_mmhg": 38.0})}
    )
    monitored = protocol({"rr_monitored": True, "etco2_monitored": True})
    r = run(
        tmp_path / "monitored",
        operator=ScriptedOperator(resume_after_s=30.0),
        patient=patient,
        rules=monitored,
    )
    (alarm,) = r.log.named("vitals_alarm")
    start = r.infusion_start()
    assert alarm["code"] == f"vitals_crossing_{channel}" and alarm["detail"].startswith(detail)
    assert alarm["since_s"] - start == pytest.approx(900.0, abs=5.0)  # the capnograph reads every 5 s
    paused = [e for e in r.log.named("state_transition") if e["to_state"] == "paused"]
    # Past its 15-s delay, paused within 1 s; held by the vitals, and released by the operator once clear.
    assert len(paused) == 1 and 15.0 <= paused[0]["t_s"] - alarm["since_s"] <= 15.0 + 1.0
    assert [p["by"] for p in r.result.pauses] == ["vitals"]
    assert r.result.outcome == "complete" and math.isclose(r.result.delivered_mg, DOSE_MG, rel_tol=0.02)
    assert r.result.baseline[f"{channel}_per_min" if channel == "rr" else f"{channel}_mmhg"] > 0
    # The same patient without a capnograph on the protocol: nothing is watched, nothing pauses.
    unwatched = run(tmp_path / "unmonitored", patient=patient)
    assert not unwatched.log.named("vitals_alarm") and not unwatched.result.pauses


def test_a_bp_crossing_asks_the_cuff_for_a_reading_at_once_and_again_while_it_lasts(
    tmp_path: Path,
) -> None:
    # SBP 190 from the cuff reading at 20 min (script time) for 90 s: the cuff's next cycle would be at
    # 30 min. Asked at once, it reads 190 again 30 s later; asked again after bp_recheck_s (120 s), normal.
    high = {"kind": "crossing", "channel": "sbp", "at_s": 1100.0, "duration_s": 1e3, "value": 190.0}
    r = run(tmp_path, patient=script(high))
    requests = r.log.named("cuff_reading_requested")
    (alarm,) = [a for a in r.log.named("vitals_alarm") if a["channel"] == "sbp"]
    assert requests and requests[0]["why"].startswith("SBP 190 mmHg ≥ 180 mmHg")
    asked, due = r.monitor.requests[0]
    assert asked == pytest.approx(alarm["reading_t_s"], abs=0.2) and due - asked == 30.0
    assert len(r.monitor.requests) >= 2  # re-measured while the crossing lasts, every 2 min


def test_a_bp_recovery_seen_by_the_requested_reading_ends_the_pause_long_before_the_next_cycle(
    tmp_path: Path,
) -> None:
    high = {"kind": "crossing", "channel": "sbp", "at_s": 0.0, "duration_s": 1.0, "value": 190.0}
    # The cuff cycles at 0, 600, 1200… session seconds; the infusion starts a few seconds in, so the reading
    # at 600 falls at about 590 s script time: put the crossing there.
    r0 = run(tmp_path / "probe")
    start = r0.infusion_start()
    reading = 600.0 - start
    high |= {"at_s": reading - 0.5, "duration_s": 20.0}
    r = run(tmp_path / "real", patient=script(high))
    (alarm,) = r.log.named("vitals_alarm")
    assert alarm["reading_t_s"] == 600.0
    (asked, due), *_ = r.monitor.requests
    assert asked == pytest.approx(600.0, abs=0.2)
    # Back in range at the requested reading (30 s later): the scripted nurse resumes a minute after.
    (resumed,) = r.log.named("resumed")
    (span,) = [(a, b) for a, b, h in held_spans(r.ticks()) if h]
    assert span[1] < due + 60.0 + 1.0 < 1200.0  # well before the next cycle at 1200 s
    assert resumed["reason"].startswith("operator: vitals back within limits")


# ----- any sequence of actions and vitals events -----------------------------------------------------

ACTION = st.one_of(
    st.tuples(st.just("pause"), st.just("patient anxious"), st.just({})),
    st.tuples(st.just("resume"), st.just("ready"), st.just({})),
    st.tuples(
        st.just("slow"), st.just("nausea"), st.builds(lambda f: {"to_fraction": f}, st.floats(0.2, 0.9))
    ),
    st.tuples(
        st.just("slow"), st.just("nausea"), st.builds(lambda q: {"to_rate_ml_h": q}, st.floats(5.0, 60.0))
    ),
    st.tuples(st.just("restore_rate"), st.just("settled"), st.just({})),
)
VITALS_EVENT = st.builds(
    lambda channel, at, duration: {
        "kind": "crossing",
        "channel": channel,
        "at_s": at,
        "duration_s": duration,
        "value": {"hr": 131.0, "spo2": 86.0, "sbp": 188.0}[channel],
    },
    st.sampled_from(["hr", "spo2", "sbp"]),
    st.floats(0.0, 2400.0),
    st.floats(1.0, 600.0),
)


# Each example is a whole simulated session (seconds on an idle machine, up to a minute beside two busy
# cores): a few of them, with the time they need under load.
@pytest.mark.timeout(1200)
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    actions=st.lists(st.tuples(st.floats(0.0, 2700.0), ACTION), max_size=8),
    vitals=st.lists(VITALS_EVENT, max_size=3),
    policy=st.sampled_from(["clinician", "auto"]),
)
@example(  # the case: a desaturation during an operator's pause, under "auto"
    actions=[(600.0, ("pause", "patient panicking", {})), (1500.0, ("resume", "settled", {}))],
    vitals=[{"kind": "crossing", "channel": "spo2", "at_s": 700.0, "duration_s": 60.0, "value": 86.0}],
    policy="auto",
)
def test_any_sequence_of_actions_and_vitals_never_runs_held_nor_faster_than_the_plan_and_names_resumers(
    tmp_path_factory: pytest.TempPathFactory,
    actions: list[tuple[float, tuple[str, str, dict[str, Any]]]],
    vitals: list[dict[str, Any]],
    policy: str,
) -> None:
    entries = [(at, action, reason, args) for at, (action, reason, args) in actions]
    r = run(
        tmp_path_factory.mktemp("sequence"),
        operator=nurse(*entries, resume_after_s=90.0),
        patient=script(*vitals),
        rules=protocol({"resume": policy, "resume_after_s": 60.0}),
    )
    ticks = r.ticks()
    start = ticks[0].t_s
    plan_ml_h = 52.5
    no_pump_motion_while_held(ticks)
    for t in ticks:
        # Never faster than the plan: what the session programs, and what the plan would have given by now.
        assert t.programmed_rate_ml_h <= t.planned_rate_ml_h * (1 + 1e-9) <= plan_ml_h * (1 + 1e-9)
        assert t.delivered_ml <= plan_ml_h * (t.t_s - start) / 3600.0 + 0.1
    assert r.result.delivered_mg <= DOSE_MG * 1.02
    # Every resume in the record has its actor: an operator by name, or (under "auto") the vitals releasing
    # their own hold while no operator held the pump, or the operator's answer at the maximum duration.
    operator_resumes = [e for e in r.log.named("operator_action") if e["action"] == "resume"]
    automatic = [e for e in r.log.named("hold_changed") if e["actor"] == "vitals" and e["released"]]
    for e in r.log.named("resumed"):
        reason = e["reason"]
        assert (
            reason.startswith("operator") or "vitals.resume = auto" in reason or "maximum duration" in reason
        )
    by_operator = [e for e in r.log.named("resumed") if e["reason"].startswith("operator")]
    assert len(by_operator) <= len(operator_resumes)
    for e in r.log.named("operator_action") + r.log.named("request_refused"):
        assert e["operator"] == NURSE
    for e in automatic:
        assert policy == "auto" and "operator" not in e["released"] and e["operator"] is None
    for e in r.log.named("hold_changed"):
        if "operator" in e["released"]:
            assert e["actor"] == "operator" and e["operator"] == NURSE
    with r.course() as course:
        for a in course.actions("s-1"):
            assert (a.actor == "operator") == (a.who == NURSE)
            if a.action in {"resume", "release"} and a.actor != "operator":
                assert a.actor in {"vitals", "protocol"} and (a.actor != "vitals" or policy == "auto")
    for a, b in itertools.pairwise(ticks):
        assert b.delivered_ml >= a.delivered_ml - 1e-9
