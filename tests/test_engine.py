"""The session engine's contract: commands in, typed events out, on the real kernel and simulated pump.

Every face (CLI, console, public API) drives :class:`ketapump.clinical.session.Session` through these
commands and reads these events, so they are tested here once, on whole sessions in virtual time.
"""

from __future__ import annotations

import ast
import asyncio
import datetime
import itertools
import json
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ketapump import _core
from ketapump.clinical import (
    PENDING,
    ActionTaken,
    AlarmRaised,
    CourseHistory,
    FindingReported,
    HoldChanged,
    Patient,
    PhaseChanged,
    Question,
    QuestionAnswered,
    QuestionAsked,
    RecordWritten,
    ScriptedOperator,
    Session,
    SessionAbortedError,
    SessionContext,
    SessionEnded,
    SessionEvent,
    SessionResult,
    Tick,
    VitalsRead,
    demo_patient,
    load_library,
    load_protocol,
    plan_dose,
)
from ketapump.clinical.events import EventStream
from ketapump.clinical.protocol import Sitter
from ketapump.clinical.vitals import PatientScript, ScriptedMonitor
from ketapump.clock import VirtualClock
from ketapump.errors import CourseStorageError, LimitRefused
from ketapump.wire import ReferencePumpDriver, RegisterTransport, open_transport
from sessionhelpers import AuditRecords

NOW = datetime.datetime(2026, 11, 22, 9, 0, tzinfo=datetime.UTC)
PATIENT = Patient("p-1", weight_kg=70.0, height_cm=175.0, sex="male")
OPERATOR = "nurse on duty"
PACKAGE = Path(__file__).resolve().parents[1] / "python" / "ketapump"


class Chair:
    """One session on the simulated pump, its events collected, ready for commands."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        operator: Any = None,
        patient: Patient = PATIENT,
        script: PatientScript | None = None,
    ) -> None:
        self.clock = VirtualClock()
        self.pump = _core.SimPump("bd-plastipak-60", seed=0, fill_ml=40.0)
        transport = open_transport("sim://", clock=self.clock, pump=self.pump)
        assert isinstance(transport, RegisterTransport)
        self.log = AuditRecords()
        self.course = CourseHistory.create(tmp_path / "course.sqlite3", at=NOW)
        self.session = Session(
            SessionContext(
                session_id="s-1",
                protocol=load_protocol("ketamine-depression"),
                patient=patient,
                driver=ReferencePumpDriver(transport),
                clock=self.clock,
                log=self.log,
                course=self.course,
                library=load_library(None),
                vitals=ScriptedMonitor(script or demo_patient()),
                operator=operator or ScriptedOperator(),
                calendar_origin=NOW,
                operator_name=OPERATOR,
                sitter=Sitter("a sitter", "+44 20 7946 0000"),
            )
        )
        self.events: list[SessionEvent] = []
        self.session.subscribe(self.events.append)

    def on(self, kind: type[SessionEvent], handler: Callable[[Any], None]) -> None:
        self.session.subscribe(lambda e: handler(e) if isinstance(e, kind) else None)

    def run(self) -> SessionResult:
        try:
            return asyncio.run(self.session.run())
        finally:
            self.course.close()

    def of(self, kind: type[SessionEvent]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def infusion_ticks(self) -> list[Tick]:
        return [t for t in self.of(Tick) if t.pump_state is not None]


def at_infusion_time(chair: Chair, seconds: float, action: Callable[[], None]) -> None:
    """Calls ``action`` once, from the tick at which the infusion has run ``seconds``."""
    start: list[float] = []
    done: list[bool] = []

    def check(tick: Tick) -> None:
        if tick.pump_state is None or done:
            return
        if not start:
            start.append(tick.t_s)
        if tick.t_s - start[0] >= seconds:
            done.append(True)
            action()

    chair.on(Tick, check)


# ----- events out ----------------------------------------------------------------------------------


def test_a_session_emits_its_phases_ticks_questions_records_and_one_end(tmp_path: Path) -> None:
    chair = Chair(tmp_path)
    result = chair.run()
    assert result.outcome == "complete"
    phases = [(e.previous, e.phase) for e in chair.of(PhaseChanged)]
    assert phases == [
        (None, "precheck"), ("precheck", "take_up"), ("take_up", "infusion"), ("infusion", "observation"),
        ("observation", "discharge"), ("discharge", "complete"),
    ]  # fmt: skip
    # Tick telemetry at every control tick of the infusion (10 Hz), and once a second otherwise.
    ticks = chair.infusion_ticks()
    span = ticks[-1].t_s - ticks[0].t_s
    assert len(ticks) >= 2 * span
    assert all(b.t_s > a.t_s for a, b in itertools.pairwise(ticks))
    assert all(b.delivered_ml >= a.delivered_ml - 1e-9 for a, b in itertools.pairwise(ticks))
    assert math.isclose(ticks[-1].delivered_mg, result.delivered_mg, rel_tol=1e-9)
    assert ticks[0].planned_ml == result.plan.volume_ml
    assert {t.phase for t in ticks} == {"take_up", "infusion"}
    assert all(t.pressure_mmhg < t.occlusion_threshold_mmhg for t in ticks if math.isfinite(t.pressure_mmhg))
    # The measured rate (the pump's volume counter over 30 s) follows the commanded one mid-infusion.
    middle = [t for t in ticks if t.phase == "infusion" and 600.0 < t.t_s - ticks[0].t_s < 1800.0]
    assert middle and all(
        math.isclose(t.measured_rate_ml_h, t.commanded_rate_ml_h, rel_tol=0.05) for t in middle
    )
    observation = [t for t in chair.of(Tick) if t.phase == "observation"]
    assert len(observation) >= 60 * result.observation_min - 2
    # Every vitals reading, every checklist question with its answer, every course record.
    assert {v.channel for v in chair.of(VitalsRead)} == {"sbp", "dbp", "hr", "spo2"}
    protocol = load_protocol("ketamine-depression")
    asked = chair.of(QuestionAsked)
    sitter = ["sitter present: a sitter, phone +44 20 7946 0000"]  # by the name and phone recorded
    assert [q.text for q in asked] == protocol.checklists.pre + protocol.checklists.discharge + sitter
    answered = {a.question_id: a for a in chair.of(QuestionAnswered)}
    assert all(answered[q.question_id].answer is True for q in asked)
    assert all(answered[q.question_id].source == "script" for q in asked)
    records = [r.record for r in chair.of(RecordWritten)]
    assert records[:2] == ["patient", "session_begun"] and records[-1] == "session_ended"
    (end,) = chair.of(SessionEnded)
    assert end is chair.events[-1]
    assert end.outcome == "complete" and math.isclose(end.delivered_mg, result.delivered_mg)
    # Every event is JSON with its kind.
    kinds = {json.loads(json.dumps(e.as_dict()))["kind"] for e in chair.events}
    assert {"phase", "tick", "vitals", "question", "answer", "record", "ended"} <= kinds


def test_a_refused_order_emits_its_findings_and_ends_refused(tmp_path: Path) -> None:
    chair = Chair(tmp_path, patient=Patient("p-1", weight_kg=25.0, height_cm=175.0, sex="male"))
    with pytest.raises(LimitRefused):
        chair.run()
    hard = [f for f in chair.of(FindingReported) if f.severity == "hard"]
    assert "weight_kg" in {f.finding for f in hard}
    assert chair.of(QuestionAsked) == []  # a hard finding is not put to the operator
    (end,) = chair.of(SessionEnded)
    assert end.outcome == "refused" and end.delivered_mg == 0.0
    assert chair.pump.delivered_ml == 0.0


# ----- commands in ---------------------------------------------------------------------------------


def test_pause_and_resume_commands_take_effect_at_the_next_tick_and_are_recorded(tmp_path: Path) -> None:
    chair = Chair(tmp_path)
    session = chair.session
    at_infusion_time(chair, 600.0, lambda: session.pause("patient anxious", source="web", operator="nurse A"))
    at_infusion_time(chair, 900.0, lambda: session.resume("settled", source="web", operator="nurse A"))
    result = chair.run()
    assert result.outcome == "complete" and math.isclose(result.delivered_mg, 35.0, rel_tol=0.02)
    actions = chair.of(ActionTaken)
    assert [(a.action, a.accepted, a.source, a.operator) for a in actions] == [
        ("pause", True, "web", "nurse A"),
        ("resume", True, "web", "nurse A"),
    ]
    # The pump is held from the tick after the command until the resume, and nothing is delivered.
    ticks = chair.infusion_ticks()
    paused = [t for t in ticks if actions[0].t_s < t.t_s <= actions[1].t_s]
    assert paused and paused[0].t_s - actions[0].t_s <= 0.1 + 1e-9
    held = [t for t in paused if t.pump_state == "paused"]
    assert len(held) >= len(paused) - 2 and all(t.paused_by == ("operator",) for t in held)
    # Only the compressed drive's relaxation follows the stop (~0.02 mL), far below the 0.1 mL allowance.
    assert held[-1].delivered_ml - held[0].delivered_ml < 0.05
    # The audit log names who did what, from where.
    recorded = chair.log.named("operator_action")
    assert [(r["action"], r["source"], r["operator"], r["reason"]) for r in recorded] == [
        ("pause", "web", "nurse A", "patient anxious"),
        ("resume", "web", "nurse A", "settled"),
    ]


def test_a_resume_into_an_active_vitals_alarm_is_refused_and_says_why(tmp_path: Path) -> None:
    crossing = {"kind": "crossing", "channel": "hr", "at_s": 900.0, "duration_s": 300.0, "value": 130.0}
    base = demo_patient().model_dump() | {"event": [crossing]}
    chair = Chair(tmp_path, script=PatientScript.model_validate(base))
    # As the crossing raises its alarm, the operator tries to resume straight into it.
    chair.on(AlarmRaised, lambda a: chair.session.resume("looks fine") if a.source == "vitals" else None)
    chair.run()
    refused = [a for a in chair.of(ActionTaken) if a.action == "resume"]
    assert refused and not refused[0].accepted
    assert refused[0].why == "vitals alarm active: HR 130 bpm ≥ 120 bpm for 10 s"
    assert chair.log.named("request_refused")[0]["why"] == refused[0].why


def test_a_stop_before_the_infusion_aborts_with_nothing_delivered(tmp_path: Path) -> None:
    chair = Chair(tmp_path)
    stopped: list[bool] = []

    def stop_once(_q: QuestionAsked) -> None:
        if not stopped:
            stopped.append(True)
            chair.session.stop("patient declined", source="web")

    chair.on(QuestionAsked, stop_once)
    with pytest.raises(SessionAbortedError, match="stopped by the operator"):
        chair.run()
    assert chair.pump.delivered_ml == 0.0
    (end,) = chair.of(SessionEnded)
    assert end.outcome == "aborted"
    assert [a.action for a in chair.of(ActionTaken) if a.accepted] == ["stop"]


def test_commands_outside_the_infusion_are_refused_with_the_phase(tmp_path: Path) -> None:
    chair = Chair(tmp_path)
    chair.on(PhaseChanged, lambda p: chair.session.pause("too late") if p.phase == "observation" else None)
    chair.run()
    (refused,) = chair.of(ActionTaken)
    assert not refused.accepted and refused.why == "no infusion is running (observation)"


def test_an_acknowledgement_is_recorded_with_the_latched_alarms(tmp_path: Path) -> None:
    chair = Chair(tmp_path)
    chair.pump.schedule(300.0, "fault_occlusion", 1.0)
    chair.on(
        AlarmRaised,
        lambda a: chair.session.acknowledge("line clamp found closed", alarm=a.code, operator="nurse B"),
    )
    result = chair.run()
    assert result.outcome == "ended_interlock"
    (ack, *_) = [a for a in chair.of(ActionTaken) if a.action == "acknowledge"]
    assert ack.accepted and ack.operator == "nurse B"
    (record, *_) = chair.log.named("alarms_acknowledged")
    assert record["reason"] == "line clamp found closed"


def test_an_unknown_command_is_refused_at_once(tmp_path: Path) -> None:
    chair = Chair(tmp_path)
    with pytest.raises(ValueError, match="unknown session command 'bolus'"):
        chair.session.command("bolus", "now")
    assert chair.session.answer("q-none", True) is False
    chair.course.close()


# ----- care is never skipped -------------------------------------------------------------------------


def test_stops_during_the_observation_are_recorded_and_refused(tmp_path: Path) -> None:
    """A burst of stops (a second and third SIGINT) never shortens the observation."""
    chair = Chair(tmp_path)
    at_infusion_time(chair, 600.0, lambda: chair.session.stop("SIGINT", source="signal"))
    stops: list[float] = []

    def stop_again(event: PhaseChanged) -> None:
        if event.phase == "observation":
            for _ in range(3):
                chair.session.stop("SIGINT again", source="signal")
            stops.append(event.t_s)

    chair.on(PhaseChanged, stop_again)
    result = chair.run()
    assert result.outcome == "ended_operator" and stops
    assert result.observation_min >= load_protocol("ketamine-depression").observation.min_minutes
    stop_actions = [a for a in chair.of(ActionTaken) if a.action == "stop"]
    assert [a.accepted for a in stop_actions] == [True, False, False, False]
    assert all("the observation continues" in a.why for a in stop_actions[1:])
    refused = [r for r in chair.log.named("request_refused") if r["request"] == "stop"]
    assert len(refused) == 3 and all(r["source"] == "signal" for r in refused)
    assert chair.log.named("observation_ended")[0]["why"] == "minimum elapsed, vitals within band"


def test_a_second_stop_while_the_pump_is_stopping_is_recorded_and_ignored(tmp_path: Path) -> None:
    chair = Chair(tmp_path)
    at_infusion_time(chair, 300.0, lambda: [chair.session.stop("SIGINT", source="signal") for _ in range(2)])
    result = chair.run()
    stop_actions = [(a.accepted, a.why) for a in chair.of(ActionTaken) if a.action == "stop"]
    assert stop_actions == [(True, ""), (False, "the pump is already stopping; the observation follows")]
    assert len(chair.log.named("operator_stop_requested")) == 1
    assert result.observation_min >= 30.0


def test_only_end_observation_with_a_reason_ends_the_observation_early(tmp_path: Path) -> None:
    chair = Chair(tmp_path)

    def at_observation(event: PhaseChanged) -> None:
        if event.phase == "observation":
            chair.session.end_observation("   ", operator="dr-a")  # no reason: refused
            chair.session.end_observation("patient transferred to the ward", source="web", operator="dr-a")
        if event.phase == "infusion":
            chair.session.end_observation("too early", operator="dr-a")  # nothing to end yet

    chair.on(PhaseChanged, at_observation)
    result = chair.run()
    ends = [(a.accepted, a.why) for a in chair.of(ActionTaken) if a.action == "end_observation"]
    assert ends == [
        (False, "no observation is running (infusion)"),
        (False, "ending the observation early needs a reason"),
        (True, ""),
    ]
    assert result.observation_min < 1.0
    (ended,) = chair.log.named("observation_ended")
    assert ended["why"] == "ended early by the operator: patient transferred to the ward"
    assert (ended["operator"], ended["source"]) == ("dr-a", "web")
    assert [a["code"] for a in result.alarms] == ["observation_ended_early"]


def test_a_course_history_that_stops_taking_writes_mid_infusion_stops_the_pump_and_ends_the_session(
    tmp_path: Path,
) -> None:
    """SQLite refuses every write from 600 s into the infusion (the connection turned read-only, as a
    read-only remount or a full disk does); the vitals alarm at 900 s cannot be recorded: the pump is
    stopped, the patient still observed, and the session ends with the storage error."""
    crossing = {"kind": "crossing", "channel": "hr", "at_s": 900.0, "duration_s": 60.0, "value": 130.0}
    chair = Chair(
        tmp_path, script=PatientScript.model_validate(demo_patient().model_dump() | {"event": [crossing]})
    )
    at_infusion_time(chair, 600.0, lambda: chair.course._conn.execute("PRAGMA query_only = ON"))
    with pytest.raises(CourseStorageError, match="cannot be read or written"):
        chair.run()
    assert chair.pump.run_mode == 0
    assert 10.0 < chair.pump.delivered_ml < 20.0  # stopped at the failed write (~15 min of 40)
    names = [r["event"] for r in chair.log.records]
    assert "course_write_failed" in names and "session_failed" in names
    # Stopped in the session's name, never an operator's.
    assert names.index("course_write_failed") < names.index("automatic_stop") and "operator_stop" not in names
    assert [r["by"] for r in chair.log.named("automatic_stop")] == ["course"]
    assert "observation_ended" in names  # the patient was observed all the same
    (end,) = chair.of(SessionEnded)
    assert end.outcome == "failed" and end.delivered_mg > 10.0
    # What the session reached is still a whole result (the runner writes its report from it).
    partial = chair.session.result(plan_dose(load_protocol("ketamine-depression"), PATIENT))
    assert partial.outcome == "failed" and partial.delivered_mg == pytest.approx(end.delivered_mg)
    assert [p for p, _t in partial.phases][-2:] == ["observation", "discharge"]
    # The history never saw the end: the session stays open and keeps counting its programmed dose.
    with CourseHistory.open(tmp_path / "course.sqlite3") as course:
        assert course.session("s-1").in_progress


def test_a_new_patient_near_a_recorded_one_needs_a_reason(tmp_path: Path) -> None:
    chair = Chair(tmp_path, patient=Patient("p1", weight_kg=70.0, height_cm=175.0, sex="male"))
    chair.course.ensure_patient("p-1", 70.0, at=NOW - datetime.timedelta(days=3))
    with pytest.raises(SessionAbortedError, match="patient p1 is not in the course history, but p-1 is"):
        chair.run()
    assert chair.pump.delivered_ml == 0.0
    (asked,) = [q for q in chair.of(QuestionAsked) if q.subject == "new_patient"]
    assert asked.question == "soft_limit"
    confirmed = Chair(
        tmp_path / "again",
        patient=Patient("p1", weight_kg=70.0, height_cm=175.0, sex="male"),
        operator=ScriptedOperator(reasons={"new_patient": "twin sibling, checked the ID card"}),
    )
    confirmed.course.ensure_patient("p-1", 70.0, at=NOW - datetime.timedelta(days=3))
    assert confirmed.run().outcome == "complete"
    with CourseHistory.open(tmp_path / "again" / "course.sqlite3") as course:
        assert [(o.kind, o.reason) for o in course.overrides("p1")] == [
            ("new_patient", "twin sibling, checked the ID card")
        ]


@pytest.mark.parametrize(
    ("issue", "message"),
    [
        (lambda s: s.pause(""), "pause needs a reason"),
        (lambda s: s.stop("  "), "stop needs a reason"),
        (lambda s: s.slow("nausea"), "exactly one of to_fraction and to_rate_ml_h"),
        (lambda s: s.slow("nausea", to_fraction=0.5, to_rate_ml_h=20.0), "exactly one of"),
        (lambda s: s.slow("nausea", to_fraction=0.0), "between 0 and 1"),
        (lambda s: s.slow("nausea", to_rate_ml_h=math.inf), "finite number"),
        (lambda s: s.record_observation("hunger", 2), "unknown observation kind 'hunger'"),
        (lambda s: s.record_observation("nausea", 5), "off its scale"),
        (lambda s: s.record_observation("nausea"), "needs a value on its scale"),
        (lambda s: s.record_observation("other", 1.0, "x"), "takes no value"),
        (lambda s: s.record_observation("other"), "needs a note"),
        (lambda s: s.give_medication("ondansetron", 4, "mg", "iv-push"), "unknown route 'iv-push'"),
        (lambda s: s.give_medication("ondansetron", -4, "mg", "iv"), "positive finite number"),
        (lambda s: s.give_medication(" ", 4, "mg", "iv"), "drug's name"),
        (lambda s: s.pause("anxious", operator="\x1b[2J"), "control characters"),
        (lambda s: s.command("pause", "anxious", to_fraction=0.5), "pause takes no to_fraction"),
    ],
)
def test_a_command_that_is_wrong_in_itself_is_refused_when_issued(
    tmp_path: Path, issue: Callable[[Session], None], message: str
) -> None:
    chair = Chair(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        issue(chair.session)
    chair.course.close()


def test_hold_and_action_events_carry_who_and_what_in_their_json(tmp_path: Path) -> None:
    chair = Chair(tmp_path)
    at_infusion_time(chair, 600.0, lambda: chair.session.pause("patient anxious", source="web"))
    at_infusion_time(chair, 700.0, lambda: chair.session.resume("settled", source="web"))
    chair.run()
    holds = [json.loads(json.dumps(h.as_dict())) for h in chair.of(HoldChanged)]
    assert [(h["kind"], h["holders"], h["actor"], h["operator"]) for h in holds] == [
        ("hold", ["operator"], "operator", OPERATOR),
        ("hold", [], "operator", OPERATOR),
    ]
    (pause, resume) = [a.as_dict() for a in chair.of(ActionTaken)]
    assert pause["detail"] == {"holders": ["operator"]} and resume["detail"]["released"] == ["operator"]
    ticks = chair.infusion_ticks()
    assert {t.paused_by for t in ticks} == {(), ("operator",)}
    assert all(t.planned_rate_ml_h == 52.5 == t.programmed_rate_ml_h for t in ticks)


# ----- questions -----------------------------------------------------------------------------------


class WaitingOperator(ScriptedOperator):
    """Has no standing answer to checklist questions: the session waits for :meth:`Session.answer`."""

    def answer(self, question: Question) -> Any:
        return PENDING if question.kind == "checklist" else super().answer(question)


def test_a_question_without_a_standing_answer_waits_for_an_answer_from_another_thread(tmp_path: Path) -> None:
    chair = Chair(tmp_path, operator=WaitingOperator())

    def answer_from_a_thread(q: QuestionAsked) -> None:
        # A browser's request arrives on another thread; the session is waiting on its own loop.
        assert [p.question_id for p in chair.session.pending_questions()] in ([], [q.question_id])
        threading.Thread(
            target=chair.session.answer,
            args=(q.question_id, True),
            kwargs={"source": "web", "operator": "nurse C"},
        ).start()

    chair.on(QuestionAsked, answer_from_a_thread)
    result = chair.run()
    assert result.outcome == "complete"
    answers = chair.of(QuestionAnswered)
    assert answers and all(a.source == "web" and a.answer is True for a in answers)
    assert all(a.operator == "nurse C" for a in answers)
    assert len(answers) == len(chair.of(QuestionAsked))
    # Who answered, from where, is in the audit log with the question.
    recorded = chair.log.named("question_answered")
    assert [r["text"] for r in recorded] == [q.text for q in chair.of(QuestionAsked)]
    assert all(r["source"] == "web" and r["operator"] == "nurse C" and r["answer"] for r in recorded)


def test_a_no_to_a_precheck_question_aborts_before_anything_is_delivered(tmp_path: Path) -> None:
    chair = Chair(tmp_path, operator=WaitingOperator())

    def answer(q: QuestionAsked) -> None:
        with pytest.raises(ValueError, match="takes True or False, got 'yes'"):
            chair.session.answer(q.question_id, "yes", source="web")
        chair.session.answer(q.question_id, False, source="web")

    chair.on(QuestionAsked, answer)
    with pytest.raises(SessionAbortedError, match="checklist item not confirmed"):
        chair.run()
    assert chair.pump.delivered_ml == 0.0
    assert chair.of(SessionEnded)[0].outcome == "aborted"


def test_a_stop_while_a_precheck_question_waits_aborts_at_once(tmp_path: Path) -> None:
    chair = Chair(tmp_path, operator=WaitingOperator())
    # The browser's STOP while a checklist item waits for the nurse: no answer ever comes.
    chair.on(QuestionAsked, lambda q: chair.session.stop("patient left", source="web", operator="nurse D"))
    with pytest.raises(SessionAbortedError, match="stopped by the operator"):
        chair.run()
    assert chair.pump.delivered_ml == 0.0
    (stop,) = chair.of(ActionTaken)
    assert (stop.action, stop.accepted, stop.operator) == ("stop", True, "nurse D")
    assert chair.of(SessionEnded)[0].outcome == "aborted"
    assert chair.log.named("operator_action")[0]["reason"] == "patient left"


def test_a_stop_while_a_discharge_question_waits_is_refused_and_the_question_still_waits(
    tmp_path: Path,
) -> None:
    chair = Chair(tmp_path, operator=WaitingOperator())
    stopped: list[str] = []

    def answer_or_stop(q: QuestionAsked) -> None:
        if q.subject == "discharge" and not stopped:
            stopped.append(q.question_id)  # STOP first: the discharge is not cut short by it
            chair.session.stop("patient collected early", source="web", operator="nurse D")
            threading.Timer(0.2, chair.session.answer, (q.question_id, True), {"source": "web"}).start()
        else:
            chair.session.answer(q.question_id, True, source="web")

    chair.on(QuestionAsked, answer_or_stop)
    result = chair.run()
    assert result.outcome == "complete" and result.discharge_confirmed
    assert ("stop", True) not in [(a.action, a.accepted) for a in chair.of(ActionTaken)]


# ----- delivery ------------------------------------------------------------------------------------


def test_a_failing_subscriber_is_dropped_and_the_infusion_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chair = Chair(tmp_path)
    calls: list[int] = []

    def broken(_event: SessionEvent) -> None:
        calls.append(1)
        raise RuntimeError("the browser went away")

    chair.session.subscribe(broken)
    result = chair.run()
    assert result.outcome == "complete" and len(calls) == 1
    assert "subscriber failed" in caplog.text


def test_a_slow_consumer_loses_old_ticks_never_other_events() -> None:
    async def scenario() -> list[SessionEvent]:
        stream = EventStream()
        queue, unsubscribe = stream.queue(maxsize=5)
        phase = PhaseChanged(session_id="s", t_s=0.0, phase="infusion", previous="take_up")
        stream.emit(phase)
        for n in range(20):
            stream.emit(_tick(float(n)))
        end = SessionEnded(session_id="s", t_s=30.0, outcome="complete", delivered_mg=1.0, programmed_mg=1.0)
        stream.emit(end)
        unsubscribe()
        stream.emit(_tick(99.0))
        return [queue.get_nowait() for _ in range(queue.qsize())]

    got = asyncio.run(scenario())
    assert isinstance(got[0], PhaseChanged) and isinstance(got[-1], SessionEnded)
    ticks = [e.t_s for e in got if isinstance(e, Tick)]
    assert ticks == sorted(ticks) and ticks[-1] == 19.0 and 99.0 not in ticks
    assert len(got) <= 6


def _tick(t: float) -> Tick:
    return Tick(
        session_id="s", t_s=t, phase="infusion", pump_state="running", delivered_ml=t, planned_ml=35.0,
        delivered_mg=t, programmed_mg=t, commanded_rate_ml_h=52.5, pressure_mmhg=40.0,
        occlusion_threshold_mmhg=300.0, alarms=(), paused_by=(), phase_elapsed_s=t,
    )  # fmt: skip


def test_the_engine_prints_nothing_and_knows_no_terminal_signal_or_web_framework(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    for module in ("session.py", "events.py", "runner.py"):
        tree = ast.parse((PACKAGE / "clinical" / module).read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not imported & {"typer", "rich", "signal", "click", "starlette", "fastapi"}, module
        calls = {
            n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        assert "print" not in calls, module
    Chair(tmp_path).run()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
