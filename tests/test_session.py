"""The clinical session end to end on the simulated pump: the real kernel, the simulated firmware and
physics, the scripted patient monitor, a real audit log and a real course-history database."""

from __future__ import annotations

import asyncio
import datetime
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ketapump import _core
from ketapump.bridge import audit
from ketapump.clinical import druglib
from ketapump.clinical.course import CourseHistory
from ketapump.clinical.protocol import SITTER_ITEM, Patient, Sitter, load_protocol, parse_protocol
from ketapump.clinical.session import (
    ScriptedOperator,
    Session,
    SessionAbortedError,
    SessionContext,
    SessionResult,
)
from ketapump.clinical.vitals import PatientScript, ScriptedMonitor, demo_patient
from ketapump.clock import VirtualClock
from ketapump.errors import (
    AuditWriteError,
    ConfirmationRequired,
    CourseRecordNotFoundError,
    LimitRefused,
    TransportError,
)
from ketapump.wire.drivers.reference import ReferencePumpDriver
from ketapump.wire.transports import open_transport
from ketapump.wire.transports.base import RegisterTransport

NOW = datetime.datetime(2026, 11, 22, 9, 0, tzinfo=datetime.UTC)
PATIENT = Patient("p-1", weight_kg=70.0, height_cm=175.0, sex="male")
OPERATOR = "nurse on duty"
SITTER = Sitter("Ann Lee", "+44 20 7946 0958")


@dataclass
class Run:
    result: SessionResult | None
    error: BaseException | None
    events: list[dict[str, Any]]
    pump: _core.SimPump
    db: Path
    log: Path

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


def run_session(
    tmp_path: Path,
    *,
    protocol: str = "ketamine-depression",
    script: PatientScript | None = None,
    operator: ScriptedOperator | None = None,
    history: Sequence[tuple[float, float]] = (),
    seed: int = 0,
    durable_log: bool = False,
    memory: MemoryLog | None = None,
    faults: Sequence[tuple[str, float]] = (),
    pump_url: str = "sim://",
    scheduled: Sequence[tuple[float, str, float]] = (),
    resistance_mmhg_s_per_ml: float | None = None,
    now: datetime.datetime = NOW,
    session_id: str = "s-new",
    sitter: Sitter | None = SITTER,
) -> Run:
    """One session; ``history`` holds earlier sessions as (hours before NOW, delivered mg).

    With ``durable_log`` the events go to a real audit file (fsync per record); otherwise to memory,
    which keeps the many sessions of this module quick (the audit writer has its own tests)."""
    db, log = tmp_path / "course.sqlite3", tmp_path / "audit.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    clock = VirtualClock()
    pump = _core.SimPump(
        "bd-plastipak-60", seed=seed, fill_ml=40.0, resistance_mmhg_s_per_ml=resistance_mmhg_s_per_ml
    )
    for name, value in faults:
        pump.inject(name, value)
    for at_s, name, value in scheduled:
        pump.schedule(at_s, name, value)
    transport = open_transport(pump_url, clock=clock, pump=pump)
    assert isinstance(transport, RegisterTransport)
    writer = audit.AuditWriter.open(log) if durable_log else None
    memory = memory or MemoryLog()
    result: SessionResult | None = None
    error: BaseException | None = None
    with CourseHistory.open(db, create=True) as course:
        if history:
            course.ensure_patient(PATIENT.patient_id, PATIENT.weight_kg, PATIENT.height_cm, at=NOW)
        for i, (hours_before, mg) in enumerate(history):
            start = NOW - datetime.timedelta(hours=hours_before)
            course.begin_session(f"old-{i}", PATIENT.patient_id, "ketamine-depression", start, mg)
            course.end_session(f"old-{i}", start + datetime.timedelta(minutes=40), mg, "complete")
        ctx = SessionContext(
            session_id=session_id,
            protocol=load_protocol(protocol) if "\n" not in protocol else parse_protocol(protocol),
            patient=PATIENT,
            driver=ReferencePumpDriver(transport),
            clock=clock,
            log=audit.audit_logger(writer, session_id=session_id) if writer else memory,
            course=course,
            library=druglib.load_library(None),
            vitals=ScriptedMonitor(script or demo_patient()),
            operator=operator or ScriptedOperator(),
            calendar_origin=now,
            operator_name=OPERATOR,
            audit_path=str(log),
            sitter=sitter,
        )
        try:
            result = asyncio.run(Session(ctx).run())
        except Exception as e:
            error = e
    if writer is not None:
        writer.close()
        events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    else:
        events = memory.events
    return Run(result, error, events, pump, db, log)


class MemoryLog:
    """The session's events in memory, shaped like audit records; with ``fail_at_command`` the N-th
    pump command fails to be recorded, as a full disk would make the audit log fail."""

    def __init__(self, fail_at_command: int | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail_at_command = fail_at_command

    def info(self, event: str, **fields: Any) -> None:
        if event == "command" and self.fail_at_command is not None:
            self.fail_at_command -= 1
            if self.fail_at_command == 0:
                raise AuditWriteError("memory", "no space left on device")
        self.events.append({"event": event, **fields})

    warning = error = info


def recorded_sessions(db: Path) -> tuple[Any, ...]:
    """The patient's sessions in the course history (none if the patient was never recorded)."""
    with CourseHistory.open(db) as course:
        try:
            return course.sessions(PATIENT.patient_id)
        except CourseRecordNotFoundError:
            return ()


def script_with(*events: dict[str, Any], **overrides: Any) -> PatientScript:
    base = demo_patient().model_dump()
    base["event"] = list(events)
    base.update(overrides)
    return PatientScript.model_validate(base)


# ----- a whole session -----------------------------------------------------------------------------


def test_a_nominal_session_runs_every_phase_delivers_the_dose_and_records_everything(tmp_path: Path) -> None:
    run = run_session(tmp_path, durable_log=True)
    assert run.error is None, run.error
    r = run.result
    assert r is not None and r.outcome == "complete"
    assert [p for p, _ in r.phases] == [
        "precheck", "take_up", "infusion", "observation", "discharge", "complete"
    ]  # fmt: skip
    # S3: a normal session ends within ±2 % — by the pump's plunger and by what reached the patient.
    assert math.isclose(r.delivered_mg, 35.0, rel_tol=0.02)
    assert math.isclose(run.pump.delivered_ml, 35.0, rel_tol=0.02)
    infusion = dict(r.phases)
    assert 39.5 <= (infusion["observation"] - infusion["infusion"]) / 60.0 <= 41.0
    assert r.observation_min >= 30.0
    assert r.alarms == [] and r.pauses == []
    # Every step and answer is in the audit log, and the log verifies.
    assert audit.verify(run.log).ok
    answered = run.named("checklist_answered")
    protocol = load_protocol("ketamine-depression")
    checklists = protocol.checklists
    assert [a["item"] for a in answered] == checklists.pre + checklists.discharge + [SITTER.item]
    assert all(a["confirmed"] for a in answered)
    for event in ("session_planned", "limits_checked", "baseline_recorded", "observation_ended"):
        assert run.named(event), event
    assert [e["phase"] for e in run.named("phase_started")] == [p for p, _ in r.phases]
    # The course history holds the session, ended, with its dose.
    with CourseHistory.open(run.db) as course:
        (session,) = course.sessions(PATIENT.patient_id)
        assert session.outcome == "complete"
        assert math.isclose(session.delivered_mg, r.delivered_mg)


# ----- vitals gating (S13) -------------------------------------------------------------------------

CROSSINGS = {"sbp": 190.0, "dbp": 115.0, "hr": 130.0, "spo2": 85.0}


@pytest.mark.parametrize("channel", sorted(CROSSINGS))
def test_a_scripted_crossing_pauses_within_one_second_and_the_session_completes_after_it(
    tmp_path: Path, channel: str
) -> None:
    crossing = {"kind": "crossing", "channel": channel, "at_s": 1500.0, "duration_s": 400.0}
    run = run_session(tmp_path, script=script_with(crossing | {"value": CROSSINGS[channel]}))
    assert run.error is None, run.error
    r = run.result
    assert r is not None
    (alarm,) = run.named("vitals_alarm")
    assert alarm["code"] == f"vitals_crossing_{channel}" and alarm["value"] == CROSSINGS[channel]
    paused = [e for e in run.named("state_transition") if e["to_state"] == "paused"]
    assert len(paused) == 1
    assert 0.0 <= paused[0]["t_s"] - alarm["reading_t_s"] <= 1.0
    assert [p["by"] for p in r.pauses] == ["vitals"]
    # Resumed by the operator once clear; the whole dose still arrives (no catch-up, just later).
    assert run.named("resumed")
    assert r.outcome == "complete" and math.isclose(r.delivered_mg, 35.0, rel_tol=0.02)
    with CourseHistory.open(run.db) as course:
        assert [a.code for a in course.alarms("s-new")] == [f"vitals_crossing_{channel}"]


def test_vitals_that_stay_out_of_range_keep_the_infusion_paused_until_the_stop_rule_ends_it(
    tmp_path: Path,
) -> None:
    crossing = {"kind": "crossing", "channel": "hr", "at_s": 600.0, "duration_s": 1e6, "value": 130.0}
    operator = ScriptedOperator(stop_after_s=900.0)
    protocol = load_protocol("ketamine-depression").model_dump()
    protocol["observation"] |= {"min_minutes": 5.0, "max_minutes": 10.0}
    run = run_session(tmp_path, protocol=_toml(protocol), script=script_with(crossing), operator=operator)
    r = run.result
    assert r is not None
    assert not run.named("resumed")
    assert run.named("infusion_abandoned")[0]["paused_min"] >= 15.0
    # The session stopped it on the vitals' account: the record names no operator for it.
    assert r.outcome == "ended_vitals"
    (stop,) = [a for a in r.actions if a["action"] == "stop"]
    assert (stop["actor"], stop["by"], stop["source"]) == ("vitals", "vitals", "engine")
    assert not run.named("operator_stop") and [e["by"] for e in run.named("automatic_stop")] == ["vitals"]
    assert [e["reason"] for e in run.named("session_ended")] == ["vitals"]
    # About ten minutes' worth of the dose (52.5 mL/h) was given before the pause, and no more.
    assert 8.0 < r.delivered_mg < 10.5
    # Observation ran to its maximum and says the vitals never came back; without an operator's reason for
    # that, the discharge is refused.
    assert [a["code"] for a in r.alarms[-2:]] == ["vitals_not_back_in_band", "discharge_refused"]
    assert r.discharge_confirmed is False
    with CourseHistory.open(run.db) as course:
        (session,) = course.sessions(PATIENT.patient_id)
        assert session.outcome == "ended_vitals"
        assert math.isclose(session.delivered_mg, r.delivered_mg)
        stops = [a for a in course.actions("s-new") if a.action == "stop"]
        assert [(a.actor, a.who) for a in stops] == [("vitals", None)]


@pytest.mark.parametrize("seed", range(5))
def test_in_range_noise_never_pauses(tmp_path: Path, seed: int) -> None:
    base = demo_patient().model_dump()
    base["monitor"]["seed"] = seed
    run = run_session(tmp_path, script=PatientScript.model_validate(base), seed=seed)
    assert run.result is not None
    assert run.result.alarms == [] and run.result.pauses == []
    assert not run.named("paused")


def test_a_stale_feed_alarms_and_pauses(tmp_path: Path) -> None:
    dropout = {"kind": "dropout", "channel": "spo2", "at_s": 900.0, "duration_s": 30.0}
    run = run_session(tmp_path, script=script_with(dropout))
    assert run.result is not None
    (alarm,) = run.named("vitals_alarm")
    assert alarm["code"] == "vitals_stale_spo2"
    assert alarm["age_s"] > 2.0  # 2 × the 1 s interval
    assert [p["by"] for p in run.result.pauses] == ["vitals"]
    assert run.result.outcome == "complete"


def test_observation_does_not_end_before_the_vitals_are_back_in_band(tmp_path: Path) -> None:
    # A strong, slow response: SBP +40 mmHg (33 % of baseline) at minute 40, resolved only by minute 120.
    script = script_with(
        response={
            "sbp_rise_mmhg": 40.0,
            "dbp_rise_mmhg": 10.0,
            "hr_rise_bpm": 10.0,
            "spo2_change_pct": 0.0,
            "onset_s": 0.0,
            "peak_s": 2400.0,
            "resolved_s": 7200.0,
        }
    )
    run = run_session(tmp_path, script=script)
    r = run.result
    assert r is not None
    assert r.observation_min > 35.0  # well past the 30 min minimum
    (ended,) = run.named("observation_ended")
    assert ended["why"] == "minimum elapsed, vitals within band"
    # At every point of the series after the minimum and before the end, some vital was out of band.
    base = {"sbp": r.baseline["sbp_mmhg"], "dbp": r.baseline["dbp_mmhg"], "hr": r.baseline["hr_bpm"]}
    base["spo2"] = r.baseline["spo2_pct"]
    start = dict(r.phases)["observation"]
    end = start + r.observation_min * 60.0

    def in_band(point: Any) -> bool:
        return all(abs(getattr(point, ch) - b) <= 0.2 * b for ch, b in base.items())

    waited = [p for p in r.points if start + 30 * 60.0 <= p.t_s < end - 1.0]
    assert waited and not any(in_band(p) for p in waited)
    assert in_band(r.points[-1])


# ----- limits, confirmations and course rules (S12, S14) --------------------------------------------


def test_a_hard_limit_refuses_before_anything_is_delivered_or_recorded(tmp_path: Path) -> None:
    undiluted = load_protocol("ketamine-depression").model_dump()
    undiluted["drug"]["concentration_mg_per_ml"] = 100.0
    run = run_session(tmp_path, protocol=_toml(undiluted))
    assert isinstance(run.error, LimitRefused)
    assert [f.kind for f in run.error.findings] == ["concentration_mg_per_ml"]
    assert run.pump.delivered_ml == 0.0
    assert recorded_sessions(run.db) == ()


@pytest.mark.parametrize(
    ("history", "kind"),
    [
        ([(24.0, 35.0)], "hours_since_last_start"),  # < 44 h since the last start
        ([(150.0, 35.0), (100.0, 35.0), (50.0, 35.0)], "sessions_in_7_days"),  # a 4th in 7 days
        ([(144.0, 70.0), (72.0, 70.0)], "cumulative_7d_mg_per_kg"),  # 2.0 + 0.5 > 2.25 mg/kg
    ],
)
def test_course_rules_block_unless_overridden_with_a_logged_reason(
    tmp_path: Path, history: list[tuple[float, float]], kind: str
) -> None:
    blocked = run_session(tmp_path / "blocked", history=history)
    assert isinstance(blocked.error, ConfirmationRequired)
    assert [f.kind for f in blocked.error.findings] == [kind]
    assert blocked.pump.delivered_ml == 0.0
    reason = "clinician reviewed the course: maintenance schedule agreed"
    allowed = run_session(
        tmp_path / "allowed", history=history, operator=ScriptedOperator(reasons={kind: reason})
    )
    assert allowed.error is None and allowed.result is not None
    assert allowed.result.outcome == "complete"
    (confirmed,) = [e for e in allowed.named("soft_limit_confirmed") if e["kind"] == kind]
    assert confirmed["reason"] == reason
    with CourseHistory.open(allowed.db) as course:
        assert [(o.kind, o.reason) for o in course.overrides(PATIENT.patient_id)] == [(kind, reason)]


def test_an_unconfirmed_precheck_item_aborts_with_nothing_delivered(tmp_path: Path) -> None:
    item = load_protocol("ketamine-depression").checklists.pre[1]
    run = run_session(tmp_path, operator=ScriptedOperator(answers={item: False}))
    assert isinstance(run.error, SessionAbortedError) and item in str(run.error)
    assert run.pump.delivered_ml == 0.0
    assert run.named("checklist_answered")[-1] == run.named("checklist_answered")[-1] | {
        "item": item,
        "confirmed": False,
    }


def test_the_operator_pauses_and_resumes(tmp_path: Path) -> None:
    operator = ScriptedOperator(scheduled=[(600.0, "pause", "patient asked"), (900.0, "resume", "ready")])
    run = run_session(tmp_path, operator=operator)
    r = run.result
    assert r is not None and r.outcome == "complete"
    assert [e["reason"] for e in run.named("paused")] == ["operator: patient asked"]
    assert [e["reason"] for e in run.named("resumed")] == ["operator: ready"]
    phases = dict(r.phases)
    assert (phases["observation"] - phases["infusion"]) / 60.0 >= 44.5  # 40 min + the 5 min pause
    assert math.isclose(r.delivered_mg, 35.0, rel_tol=0.02)


@pytest.mark.parametrize("resistance", [None, 14_400.0], ids=["nominal", "high-resistance"])
def test_a_phased_protocol_follows_its_ramp_and_taper(tmp_path: Path, resistance: float | None) -> None:
    # Also on a high-resistance line (4 mmHg per mL/h, ~120 mmHg at the hold rate): each 2 % step
    # raises the working pressure more, still no false alarm from the armed slope detector.
    run = run_session(tmp_path, protocol="ketamine-depression-tapered", resistance_mmhg_s_per_ml=resistance)
    r = run.result
    assert r is not None and r.outcome == "complete"
    rates = [e["rate_ml_h"] for e in run.named("rate_changed")]
    hold = r.plan.peak_rate_ml_h
    assert rates and max(rates) <= hold * 1.0001 and min(rates) < 0.6 * hold
    assert math.isclose(r.delivered_mg, r.programmed_mg, rel_tol=0.02)
    # Dozens of small steps (2 %), and no false alarm: the slope detector stays armed through them.
    assert len(rates) > 50 and not r.alarms


def test_an_occlusion_during_the_ramp_is_caught_by_the_slope_detector(tmp_path: Path) -> None:
    # The line is closed 3 min into the tapered protocol's 5-min ramp (~22 mL/h, rising 2 % every ~9 s).
    # Each small step no longer re-arms the slope detector (it used to, so it stayed silent through the
    # whole ramp and the flow check or the threshold caught the occlusion later).
    run = run_session(
        tmp_path, protocol="ketamine-depression-tapered", scheduled=[(190.0, "fault_occlusion", 1.0)]
    )
    r = run.result
    assert r is not None and r.run is not None
    assert run.named("alarm")[0]["raised"] == ["occlusion_slope"], r.run.alarms
    # Seen within 30 s (the threshold alone would need ~70 s from the ~35 mmHg working pressure).
    assert r.alarms[0]["code"] == "occlusion_slope" and r.alarms[0]["t_min"] * 60.0 - 190.0 < 30.0
    during_ramp = [e["rate_ml_h"] for e in run.named("rate_changed")]
    assert len(during_ramp) > 10 and max(during_ramp) < 0.9 * r.plan.peak_rate_ml_h


def _toml(document: dict[str, Any]) -> str:
    """A protocol document back as TOML (tests change shipped protocols)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in document.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                tables.append((f"[{key}]", item))
        elif value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    for name, table in tables:
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


def test_a_session_that_fails_mid_infusion_stops_the_pump_and_is_ended_in_the_course_history(
    tmp_path: Path,
) -> None:
    run = run_session(tmp_path, memory=MemoryLog(fail_at_command=5))  # a trim after the start
    assert isinstance(run.error, AuditWriteError)
    (failed,) = run.named("session_failed")
    assert run.pump.value("motor_running") == 0
    with CourseHistory.open(run.db) as course:
        (session,) = course.sessions(PATIENT.patient_id)
        assert session.outcome == "ended_error"
        assert 0.0 < session.delivered_mg == failed["delivered_mg"] < 35.0


# ----- review findings: the gate is level-triggered, the pre-check can stop, nothing is lost ---------


def test_vitals_already_out_of_range_at_baseline_abort_the_precheck(tmp_path: Path) -> None:
    base = demo_patient().model_dump()
    base["baseline"] |= {"hr_bpm": 130.0}
    run = run_session(tmp_path, script=PatientScript.model_validate(base))
    assert isinstance(run.error, SessionAbortedError)
    assert "vitals out of range at baseline: HR" in str(run.error)
    assert run.named("vitals_alarm")[0]["code"] == "vitals_crossing_hr"
    assert run.pump.delivered_ml == 0.0 and not run.named("command")
    assert recorded_sessions(run.db) == ()


def test_the_operator_cannot_resume_into_an_active_vitals_alarm(tmp_path: Path) -> None:
    crossing = {"kind": "crossing", "channel": "hr", "at_s": 600.0, "duration_s": 1500.0, "value": 140.0}
    # The 26-min hold takes the infusion past the protocol's 60-min maximum: the nurse continues.
    operator = ScriptedOperator(
        scheduled=[(700.0, "resume", "looks fine to me")],
        resume_after_s=60.0,
        reasons={"max_duration": "held for tachycardia; finish the dose"},
    )
    run = run_session(tmp_path, script=script_with(crossing), operator=operator)
    r = run.result
    assert r is not None
    refused = [e for e in run.named("request_refused") if e["why"].startswith("vitals alarm active")]
    assert refused and refused[0]["reason"] == "looks fine to me"
    # The pump never ran while HR was past its limit (allowing the one tick the pause takes).
    paused_at = r.pauses[0]["t_min"] * 60.0
    running_high = [
        p for p in r.points if p.hr >= 120.0 and p.commanded_rate_ml_h > 0 and p.t_s > paused_at + 0.2
    ]
    assert running_high == []
    # Resumed by the (scripted) operator once the vitals had been clear for a minute, in their name.
    resumed, continued = run.named("resumed")
    assert resumed["reason"] == "operator: vitals back within limits for 60 s"
    assert continued["reason"] == "continued past the maximum duration"
    action = next(e for e in run.named("operator_action") if e["action"] == "resume")
    assert (action["operator"], action["source"]) == (OPERATOR, "script")
    assert r.outcome == "complete"


def test_a_stop_before_the_infusion_aborts_with_nothing_delivered_or_recorded(tmp_path: Path) -> None:
    operator = ScriptedOperator()
    operator.push("stop", "operator signal SIGINT")
    run = run_session(tmp_path, operator=operator)
    assert isinstance(run.error, SessionAbortedError) and "stopped by the operator" in str(run.error)
    assert run.pump.delivered_ml == 0.0 and not run.named("command")
    assert recorded_sessions(run.db) == ()


def test_an_unconfirmed_discharge_item_is_an_alarm_and_the_discharge_is_not_confirmed(tmp_path: Path) -> None:
    item = load_protocol("ketamine-depression").checklists.discharge[2]
    run = run_session(tmp_path, operator=ScriptedOperator(answers={item: False}))
    r = run.result
    assert r is not None and r.outcome == "complete"
    assert r.discharge_confirmed is False
    assert r.alarms[-1] == r.alarms[-1] | {"code": "discharge_not_confirmed", "item": item}
    assert run.named("checklist_not_confirmed")[0]["item"] == item


def test_an_interlock_before_the_first_tick_ends_the_session_with_a_report_point(tmp_path: Path) -> None:
    run = run_session(tmp_path, faults=[("fault_air", 1.0)])
    r = run.result
    assert r is not None, run.error
    assert r.outcome == "ended_interlock" and r.delivered_mg == 0.0
    assert "air_in_line" in [a["code"] for a in r.alarms]
    assert len(r.points) >= 1 and r.observation_min == 0.0
    with CourseHistory.open(run.db) as course:
        (session,) = course.sessions(PATIENT.patient_id)
        assert session.outcome == "ended_interlock"
        assert [a.code for a in course.alarms("s-new")] == ["air_in_line"]


def test_an_unreachable_pump_is_not_a_session_start_in_the_course_history(tmp_path: Path) -> None:
    run = run_session(tmp_path, pump_url="modbus-tcp://127.0.0.1:1?timeout=0.1&retries=0")
    assert isinstance(run.error, TransportError) and "127.0.0.1:1" in str(run.error)
    assert run.named("pump_unreachable")
    assert recorded_sessions(run.db) == ()


# ----- discharge: the sitter by name and phone, and never after an unfinished observation without a reason


def _short_observation() -> str:
    protocol = load_protocol("ketamine-depression").model_dump()
    protocol["observation"] |= {"min_minutes": 5.0, "max_minutes": 10.0}
    return _toml(protocol)


#: HR stays 40 % above the demo patient's baseline from just after the infusion (not past its 120 limit):
#: the observation reaches its maximum with the vitals out of the band.
RAISED_HR = {"kind": "crossing", "channel": "hr", "at_s": 2460.0, "duration_s": 1e6, "value": 100.0}


def test_a_settled_observation_is_discharged_with_the_sitter_asked_for_by_name_and_phone(
    tmp_path: Path,
) -> None:
    run = run_session(tmp_path)
    r = run.result
    assert r is not None and r.outcome == "complete"
    assert r.discharge_confirmed is True and not run.named("discharge_refused")
    assert r.sitter == {"name": "Ann Lee", "phone": "+44 20 7946 0958"}
    (recorded,) = run.named("sitter_recorded")
    assert (recorded["name"], recorded["phone"]) == ("Ann Lee", "+44 20 7946 0958")
    asked = [e["item"] for e in run.named("checklist_answered") if e["checklist"] == "discharge"]
    assert asked == [*load_protocol("ketamine-depression").checklists.discharge, SITTER.item]
    assert SITTER.item == "sitter present: Ann Lee, phone +44 20 7946 0958"


def test_a_discharge_without_a_recorded_sitter_is_not_confirmed(tmp_path: Path) -> None:
    run = run_session(tmp_path, sitter=None)
    r = run.result
    assert r is not None and r.outcome == "complete" and r.sitter is None
    assert r.discharge_confirmed is False
    assert r.alarms[-1] == r.alarms[-1] | {
        "code": "discharge_not_confirmed",
        "item": SITTER_ITEM,
        "why": "no sitter's name and phone were recorded",
    }
    assert run.named("checklist_not_confirmed")[-1]["item"] == SITTER_ITEM


def test_a_sitter_the_operator_does_not_see_is_not_confirmed(tmp_path: Path) -> None:
    run = run_session(tmp_path, operator=ScriptedOperator(answers={SITTER.item: False}))
    r = run.result
    assert r is not None and r.discharge_confirmed is False
    assert r.alarms[-1] == r.alarms[-1] | {"code": "discharge_not_confirmed", "item": SITTER.item}


def test_a_discharge_after_an_observation_that_ended_out_of_band_without_a_reason_is_refused(
    tmp_path: Path,
) -> None:
    run = run_session(tmp_path, protocol=_short_observation(), script=script_with(RAISED_HR))
    r = run.result
    assert r is not None and r.outcome == "complete"
    assert r.discharge_confirmed is False
    assert [a["code"] for a in r.alarms[-2:]] == ["vitals_not_back_in_band", "discharge_refused"]
    why = r.alarms[-1]["why"]
    assert why == (
        "discharge cannot be confirmed: the observation ended at its maximum (10 min) with the vitals not "
        "back within ±20 % of baseline, and no operator's reason was given "
        "(confirm observation_incomplete=REASON)"
    )
    assert run.named("discharge_refused")[0]["why"] == why
    # Refused outright: not one discharge item was asked, the sitter's included.
    assert not [e for e in run.named("checklist_answered") if e["checklist"] == "discharge"]


def test_a_discharge_after_an_observation_that_ended_out_of_band_goes_ahead_with_the_operators_reason(
    tmp_path: Path,
) -> None:
    reason = "reviewed by Dr B: HR 100 with no symptoms, patient alert"
    operator = ScriptedOperator(reasons={"observation_incomplete": reason})
    run = run_session(
        tmp_path, protocol=_short_observation(), script=script_with(RAISED_HR), operator=operator
    )
    r = run.result
    assert r is not None and r.discharge_confirmed is True
    assert r.alarms[-1]["code"] == "vitals_not_back_in_band"
    assert r.confirmations[-1] == {
        "kind": "observation_incomplete",
        "message": "the observation ended at its maximum (10 min) with the vitals not back within ±20 % of "
        "baseline",
        "reason": reason,
        "by": OPERATOR,
    }
    assert run.named("soft_limit_confirmed")[-1]["kind"] == "observation_incomplete"


def test_an_observation_the_operator_ended_early_with_a_reason_can_be_discharged(tmp_path: Path) -> None:
    operator = ScriptedOperator(scheduled=[(2500.0, "end_observation", "transferred to the ward")])
    run = run_session(tmp_path, operator=operator)
    r = run.result
    assert r is not None and r.observation_min < 5.0
    assert [a["code"] for a in r.alarms] == ["observation_ended_early"]
    assert r.discharge_confirmed is True and not run.named("discharge_refused")
