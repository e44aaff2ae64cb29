"""The console's pieces without a server: the chair view reduced from a real session's events, the card
drawn from it, the per-client stream's throttling and bounds, the action table, the clinic file."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import math
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ketapump.bridge.runtime import JITTER_REAL_S
from ketapump.clinical import (
    ActionTaken,
    AlarmRaised,
    CourseHistory,
    PhaseChanged,
    PlasmaEstimator,
    ScriptedOperator,
    SessionRunner,
    Tick,
    VitalsRead,
    bedside,
    commands,
    pk_model,
    prepare_session,
)
from ketapump.clinical import Patient as ClinicalPatient
from ketapump.console import (
    ACTIONS,
    SHARED_LOOP_JITTER_S,
    ActionParam,
    ActionSpec,
    ChairView,
    ClinicConfigError,
    SessionInfo,
    Subscription,
    available_actions,
    engine_commands,
    load_clinic,
    render_card,
)
from ketapump.errors import ConfigurationError


def _tick(t: float, delivered_mg: float = 0.0, **fields: object) -> Tick:
    base = {
        "session_id": "s", "t_s": t, "phase": "infusion", "pump_state": "running",
        "delivered_ml": delivered_mg, "planned_ml": 35.0, "delivered_mg": delivered_mg,
        "programmed_mg": delivered_mg,
        "commanded_rate_ml_h": 52.5, "pressure_mmhg": 40.0, "occlusion_threshold_mmhg": 300.0, "alarms": (),
        "paused_by": (), "phase_elapsed_s": t,
    }  # fmt: skip
    return Tick(**(base | fields))  # type: ignore[arg-type]


# ----- the view of a real session -------------------------------------------------------------------


def _viewed_session(tmp_path: Path, protocol: str = "ketamine-depression") -> tuple[SessionRunner, ChairView]:
    """A session on virtual time (ready to run) and a chair view fed its events."""
    CourseHistory.create(tmp_path / "course.sqlite3", at=datetime.datetime.now(datetime.UTC)).close()
    setup = prepare_session(
        protocol=protocol,
        patient=ClinicalPatient("p-1", 70.0, 175.0, "male"),
        operator=ScriptedOperator(),
        operator_name="nurse T",
        course_db=tmp_path / "course.sqlite3",
        log=tmp_path / "audit.jsonl",
        out=tmp_path / "out",
    )
    runner = SessionRunner.open(setup)
    view = ChairView("chair-1", "Chair 1", "sim://")
    view.begin(SessionInfo.of(runner, started_by="nurse A", source="api"))
    runner.session.subscribe(view.apply)
    return runner, view


def test_the_view_of_a_whole_session_shows_what_the_engine_reported(tmp_path: Path) -> None:
    runner, view = _viewed_session(tmp_path)
    seen: list[dict[str, object]] = []
    runner.session.subscribe(lambda e: seen.append(view.snapshot()) if isinstance(e, PhaseChanged) else None)
    mid: list[dict[str, object]] = []
    runner.session.subscribe(
        lambda e: mid.append(view.snapshot()) if isinstance(e, Tick) and 1200 < e.t_s < 1201 else None
    )
    outcome = asyncio.run(runner.run())
    card = view.snapshot()
    assert card["state"] == "ended" and card["ended"]["outcome"] == "complete"  # type: ignore[index]
    assert math.isclose(card["delivered_mg"], outcome.result.delivered_mg, rel_tol=1e-9)  # type: ignore[arg-type]
    assert [s["phase"] for s in seen] == [
        "precheck",
        "take_up",
        "infusion",
        "observation",
        "discharge",
        "complete",
    ]
    # Mid-infusion: the plan, the rates, the pressure, every vital with its limit, the model estimate.
    m = mid[0]
    assert m["pump_state"] == "running" and m["dose_mg"] == 35.0
    assert m["measured_rate_ml_h"] == pytest.approx(m["commanded_rate_ml_h"], rel=0.05)
    assert 0 < m["pressure_mmhg"] < m["occlusion_threshold_mmhg"]  # type: ignore[operator]
    assert m["remaining_s"] == pytest.approx(1200.0, rel=0.05)
    vitals = m["vitals"]
    assert set(vitals) == {"sbp", "dbp", "hr", "spo2"}  # type: ignore[arg-type]
    assert all(v["value"] is not None and v["high"] is not None for k, v in vitals.items() if k != "spo2")  # type: ignore[attr-defined]
    assert vitals["spo2"]["low"] == 90.0 and vitals["spo2"]["high"] is None  # type: ignore[index]
    assert vitals["sbp"]["low"] == 90.0 and vitals["sbp"]["high"] == 180.0  # type: ignore[index]
    plasma = m["plasma"]
    assert plasma["label"] == "model estimate (Clements 1981)" and plasma["ug_ml"] > 0.05  # type: ignore[index]
    # The series: a point every 5 s of session time, the estimate on each.
    points = view.points
    gaps = [b["t_s"] - a["t_s"] for a, b in itertools.pairwise(points)]
    assert points and min(gaps) >= 5.0 - 1e-9
    assert all(p["plasma_ug_ml"] is not None for p in points)
    assert card["session"]["started_by"] == "nurse A"  # type: ignore[index]


def test_the_card_shows_each_vitals_limits_in_force_relative_to_the_baseline_and_its_band(
    tmp_path: Path,
) -> None:
    # A protocol whose rules set maxima relative to the baseline (SBP + 40 %, HR + 50 %; DBP none).
    shipped = resources.files("ketapump.data").joinpath("protocols", "ketamine-depression.toml")
    protocol = tmp_path / "relative.toml"
    rules = "\n[vitals]\nsbp_rise_max_pct = 40.0\nhr_rise_max_pct = 50.0\n"
    protocol.write_text(shipped.read_text(encoding="utf-8") + rules, encoding="utf-8")
    runner, view = _viewed_session(tmp_path, str(protocol))
    before: list[dict[str, Any]] = []
    mid: list[dict[str, Any]] = []
    runner.session.subscribe(
        lambda e: before.append(view.snapshot()) if isinstance(e, PhaseChanged) and not before else None
    )
    runner.session.subscribe(
        lambda e: mid.append(view.snapshot()) if isinstance(e, Tick) and 1200 < e.t_s < 1201 else None
    )
    assert asyncio.run(runner.run()).result.outcome == "complete"
    # Before the baseline: the absolute limits, no baseline.
    sbp = before[0]["vitals"]["sbp"]
    assert (sbp["high"], sbp["baseline"], sbp["high_relative"]) == (180.0, None, False)
    assert sbp["within_band"] is None
    # Once it is recorded: the gate's own limits in force, each relative one named, and the band.
    gate = runner.session.gate
    assert gate is not None
    vitals = mid[0]["vitals"]
    for channel, relative in (("sbp", True), ("hr", True), ("dbp", False), ("spo2", False)):
        v, base = vitals[channel], gate.baseline.value(channel)
        assert base is not None and v["baseline"] == base
        assert (v["low"], v["high"]) == gate.limits(channel), channel
        assert v["high_relative"] is relative, channel
        assert (v["band_pct"], v["band_low"], v["band_high"]) == (20.0, base * 0.8, base * 1.2)
        assert v["within_band"] is (abs(v["value"] - base) <= 0.2 * base), channel
    assert vitals["sbp"]["high"] == pytest.approx(vitals["sbp"]["baseline"] * 1.4)
    assert vitals["sbp"]["high"] < 180.0
    assert vitals["sbp"]["rise_max_pct"] == 40.0 and vitals["dbp"]["rise_max_pct"] is None
    assert (vitals["dbp"]["high"], vitals["spo2"]["low"]) == (110.0, 90.0)
    # The terminal card says the same.
    text = _text(mid[0])
    high = f"{round(vitals['sbp']['high'], 1):g}"
    assert f"alarm < 90 or ≥ {high} (baseline +40 %)" in text
    assert f"{vitals['sbp']['baseline']:g} (band ±20 %" in text


def test_the_plasma_estimate_is_the_model_fed_with_the_delivered_dose() -> None:
    view = ChairView("c", "C", "sim://")
    view.info = None
    view._plasma = PlasmaEstimator(pk_model("clements"), 70.0)
    independent = PlasmaEstimator(pk_model("clements"), 70.0)
    for n in range(0, 600):
        t = n * 0.5
        view.apply(_tick(t, delivered_mg=t * 35.0 / 2400.0))
        independent.advance(t, t * 35.0 / 2400.0)
    assert view.snapshot()["plasma"]["ug_ml"] == pytest.approx(independent.concentration_ug_ml, rel=1e-12)


def test_alarms_latch_until_acknowledged_and_vitals_show_their_trend() -> None:
    view = ChairView("c", "C", "sim://")
    view.apply(
        AlarmRaised(session_id="s", t_s=1.0, source="vitals", code="vitals_crossing_sbp", detail="SBP 186")
    )
    assert [a["acknowledged"] for a in view.snapshot()["alarms"]] == [False]
    refused = ActionTaken(
        session_id="s", t_s=2.0, action="acknowledge", reason="", source="web", operator="n", accepted=False
    )
    view.apply(refused)
    assert not view.snapshot()["alarms"][0]["acknowledged"]
    view.apply(
        ActionTaken(
            session_id="s",
            t_s=3.0,
            action="acknowledge",
            reason="seen",
            source="web",
            operator="n",
            accepted=True,
        )
    )
    assert view.snapshot()["alarms"][0]["acknowledged"]
    for t, value in ((0.0, 80.0), (30.0, 82.0), (70.0, 95.0)):
        view.apply(VitalsRead(session_id="s", t_s=t, channel="hr", value=value, reading_t_s=t))
    assert view.snapshot()["vitals"]["hr"]["trend"] == "up"
    view.apply(VitalsRead(session_id="s", t_s=200.0, channel="hr", value=95.5, reading_t_s=200.0))
    assert view.snapshot()["vitals"]["hr"]["trend"] == "steady"


def test_the_terminal_card_draws_the_same_state() -> None:
    view = ChairView("chair-2", "Chair 2", "sim://")
    idle = _text(view.snapshot())
    assert "Chair 2" in idle and "idle" in idle
    view.info = SessionInfo(
        session_id="s", patient={"id": "p-9", "weight_kg": 81.0, "height_cm": None, "sex": None},
        protocol="ketamine-depression", plan={"dose_mg": 40.5, "volume_ml": 40.5, "rate_ml_h": 60.75},
        limits={"hr": {"low": 50.0, "high": 120.0, "label": "HR", "unit": "bpm"}}, observation_min=30.0,
        log="a.jsonl", out="out", pump="sim://",
    )  # fmt: skip
    view.apply(
        _tick(
            100.0,
            delivered_mg=1.5,
            pump_state="paused",
            paused_by=("operator", "vitals"),
            vitals={"hr": 121.0},
        )
    )
    view.apply(
        AlarmRaised(
            session_id="s",
            t_s=100.0,
            source="vitals",
            code="vitals_crossing_hr",
            detail="HR 121 bpm ≥ 120 bpm",
        )
    )
    text = _text(view.snapshot())
    expected_texts = (
        "p-9 (81 kg) — ketamine-depression", "PAUSED by operator and vitals", "1.50 of 40.50 mg",
        "alarm < 50 or ≥ 120",
        "ALARM: vitals_crossing_hr", "model estimate", "52.5 mL/h commanded",
    )  # fmt: skip
    for expected in expected_texts:
        assert expected in text, expected


def _text(card: dict[str, object]) -> str:
    console = Console(record=True, width=120)
    console.print(render_card(card))
    return console.export_text()


# ----- the stream: ticks throttled per client, nothing else ever dropped -------------------------------


def test_a_client_gets_each_chairs_newest_tick_at_most_every_interval_and_every_other_event() -> None:
    async def scenario() -> None:
        sub = Subscription(lambda chair: {"chair": chair, "card": True}, tick_interval_s=0.2, max_pending=50)
        for n in range(30):  # 30 ticks of chair a within one interval
            sub.offer("a", _tick(float(n)))
        sub.offer("a", PhaseChanged(session_id="s", t_s=1.0, phase="observation", previous="infusion"))
        sub.offer("b", VitalsRead(session_id="s", t_s=1.0, channel="hr", value=70.0, reading_t_s=1.0))
        text, wait = sub._batch(now=100.0)
        assert text.count("event: tick") == 1 and '"t_s":29.0' in text  # the newest only
        assert text.count("event: phase") == 1 and "event: vitals" not in text
        assert text.count("event: chair") == 1 and wait is None
        sub.offer("a", _tick(30.0))
        text, wait = sub._batch(now=100.1)
        assert text == "" and wait == pytest.approx(0.1)  # not yet due
        text, wait = sub._batch(now=100.2)
        assert '"t_s":30.0' in text and '"emitted_at"' in text
        sub.touch("b")
        assert sub._batch(now=100.3)[0].count("event: chair") == 1
        for n in range(51):  # a client that never reads: closed, never buffered without bound
            sub.offer("a", PhaseChanged(session_id="s", t_s=float(n), phase="p", previous=None))
        assert sub.closed and "too far behind" in sub.reason

    asyncio.run(scenario())


def test_the_stream_starts_with_every_card_and_ends_with_why_it_was_closed() -> None:
    async def scenario() -> list[str]:
        sub = Subscription(lambda chair: {"chair": chair})
        chunks = sub.messages(["a", "b"])
        first = await anext(chunks)
        sub.close("the console is shutting down")
        rest = [chunk async for chunk in chunks]
        return [first, *rest]

    first, last = asyncio.run(scenario())
    assert first.count("event: chair") == 2
    assert last.startswith("event: closed") and "shutting down" in last


# ----- the action table -----------------------------------------------------------------------------------


def test_every_engine_command_is_one_table_row_and_only_those_are_offered() -> None:
    # Generic over the engine: every command it takes has a row (a route, a button, a form) ...
    rows = {a.command: a for a in ACTIONS}
    assert set(engine_commands()) <= rows.keys(), set(engine_commands()) - rows.keys()
    # ... and only the rows whose command it takes are offered, in the table's order, STOP last.
    offered = available_actions()
    assert [a.command for a in offered.values()] == [
        a.command for a in ACTIONS if a.command in engine_commands()
    ]
    assert list(offered)[-1] == "stop" and offered["stop"].style == "danger"
    assert offered["stop"].shown_when == frozenset()  # never hidden while a session runs
    hidden = ActionSpec("bolus", "give_bolus", "Bolus", "required", "Why?")
    assert "give_bolus" not in engine_commands()
    assert hidden.command not in {a.command for a in offered.values()}


def test_each_rows_reason_and_values_are_the_engines() -> None:
    # A form asks for a reason exactly where the engine requires one, and for the values it takes.
    for spec in available_actions().values():
        # end_observation's reason the engine demands when it carries it out; the form asks it up front.
        required = commands.REASON_REQUIRED | {"end_observation"}
        assert (spec.reason == "required") == (spec.command in required), spec.name
        with pytest.raises(ValueError, match="takes no"):
            commands.make_command(spec.command, "why", source="web", operator="n", not_a_value=1)
        for param in spec.params:  # each value the row offers is one the command takes
            try:
                commands.make_command(spec.command, "why", source="web", operator="n", **{param.name: None})
            except ValueError as e:
                assert "takes no" not in str(e), (spec.name, param.name)
    # A choice's options are the bedside vocabulary's.
    observation = {p.name: p for p in available_actions()["observation"].params}
    assert [c["value"] for c in observation["kind"].choices()] == list(bedside.bedside().kinds)
    medication = {p.name: p for p in available_actions()["medication"].params}
    assert [c["value"] for c in medication["route"].choices()] == bedside.bedside().medication.routes


def test_a_request_is_checked_as_a_form_would_be_before_it_is_sent() -> None:
    pause = available_actions()["pause"]
    assert pause.check("", {}) == ["reason: pause needs a reason"]
    assert pause.check("why", {"rate": 1}) == ["params.rate: pause takes no such value"]
    assert available_actions()["resume"].check("", {}) == []
    dose = ActionSpec(
        "dose",
        "give_dose",
        "Dose",
        "optional",
        "Why?",
        params=(
            ActionParam("mg", "number", "Dose", "mg"),
            ActionParam("route", "choice", "Route", vocabulary="routes"),
            ActionParam("note", "text", "Note", required=False),
        ),
    )
    assert dose.check("", {"mg": "half", "route": 3}) == [
        "params.mg: must be a number",
        "params.route: must be text",
    ]
    assert dose.check("", {}) == ["params.mg: dose needs it", "params.route: dose needs it"]
    assert dose.check("", {"mg": 2, "route": "iv", "note": None}) == []  # an optional value left out
    described = dose.as_dict()
    assert [p["name"] for p in described["params"]] == ["mg", "route", "note"]
    assert described["params"][2]["required"] is False


# ----- the clinic file ---------------------------------------------------------------------------------


def test_a_clinic_file_is_checked_whole_with_every_problem_named(tmp_path: Path) -> None:
    path = tmp_path / "clinic.toml"
    path.write_text(
        'schema_version = 1\n[clinic]\npk_model = "propofol"\ntime_scale = 0\n'
        '[[chair]]\nid = "Chair 1"\npump = "sim://"\nspeed = 3\n[[chair]]\nid = "c"\npump = "sim://"\n'
        '[[chair]]\nid = "c"\npump = "sim://"\n',
        encoding="utf-8",
    )
    with pytest.raises(ClinicConfigError) as caught:
        load_clinic(path)
    problems = "\n".join(caught.value.problems)
    for expected in (
        "clinic.pk_model",
        "clinic.time_scale",
        "chair.0.id",
        "chair.0.speed",
        "chair ids must be unique: c",
    ):
        assert expected in problems, expected
    path.write_text(
        'schema_version = 1\n[clinic]\ntime_scale = 60\n[[chair]]\nid = "a"\npump = "sim://"\n'
        '[[chair]]\nid = "b"\npump = "modbus-tcp://127.0.0.1:1?timeout=5"\nvitals = "sim:/no/such.toml"\n',
        encoding="utf-8",
    )
    with pytest.raises(ClinicConfigError) as caught:
        load_clinic(path)
    problems = "\n".join(caught.value.problems)
    assert "chair[0].pump" in problems and "watchdog" in problems  # 60x on a default sim:// URL
    assert "chair[1].vitals" in problems
    with pytest.raises(ClinicConfigError) as missing:
        load_clinic(tmp_path / "none.toml")
    assert missing.value.not_found
    # The course history is never created by serve: a missing one is named with the command that makes it.
    absent = tmp_path / "no-course.sqlite3"
    path.write_text(
        f'schema_version = 1\n[clinic]\ncourse_db = "{absent}"\n[[chair]]\nid = "a"\npump = "sim://"\n',
        encoding="utf-8",
    )
    with pytest.raises(ClinicConfigError) as no_course:
        load_clinic(path)
    assert no_course.value.problems == [
        f"clinic.course_db: {absent} does not exist: create it with `ketapump course init {absent}`"
    ]
    assert not absent.exists()


def test_a_shared_loop_sizes_each_chairs_watchdog_for_its_jitter_and_refuses_a_scale_it_cannot_hold(
    tmp_path: Path,
) -> None:
    # Every chair of a serve ticks on one event loop beside the HTTP server: its pump's watchdog outlasts
    # SHARED_LOOP_JITTER_S of real scheduling delay, where a lone session's outlasts JITTER_REAL_S.
    patient = ClinicalPatient("p-1", 70.0, 175.0, "male")
    course = tmp_path / "course.sqlite3"
    CourseHistory.create(course, at=datetime.datetime.now(datetime.UTC)).close()

    def setup(scale: float, jitter: float | None) -> Any:
        return prepare_session(
            protocol="ketamine-depression",
            patient=patient,
            operator=ScriptedOperator(),
            operator_name="nurse T",
            pump="sim://",
            course_db=course,
            log=tmp_path / "unused.jsonl",
            out=tmp_path,
            time_scale=scale,
            jitter_real_s=jitter,
        )

    lone, shared = setup(10.0, None), setup(10.0, SHARED_LOOP_JITTER_S)
    assert SHARED_LOOP_JITTER_S > JITTER_REAL_S
    assert shared.driver.watchdog_ms - lone.driver.watchdog_ms == pytest.approx(
        1_000.0 * 10.0 * (SHARED_LOOP_JITTER_S - JITTER_REAL_S), abs=1.0
    )
    assert shared.driver.watchdog_ms >= 1_000.0 * 10.0 * SHARED_LOOP_JITTER_S
    setup(30.0, None)  # a lone session holds 30x ...
    with pytest.raises(ConfigurationError, match="largest time scale is 19") as refused:
        setup(30.0, SHARED_LOOP_JITTER_S)  # ... a chair of a serve cannot
    assert "scheduling jitter" in str(refused.value)
    path = tmp_path / "clinic.toml"
    path.write_text(
        f'schema_version = 1\n[clinic]\ntime_scale = 30\ncourse_db = "{course}"\n'
        '[[chair]]\nid = "a"\npump = "sim://"\n',
        encoding="utf-8",
    )
    with pytest.raises(ClinicConfigError, match=r"chair\[0\]\.pump: .*largest time scale is 19"):
        load_clinic(path)
