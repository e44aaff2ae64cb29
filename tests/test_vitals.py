"""The vitals feeds and gate (S13): every scripted crossing caught — a cuff reading at once, a
continuous channel once past its alarm delay —, single-sample artefacts and in-range noise never
raising, low limits and limits relative to baseline, stale feeds alarming after 2 × their interval and
not before, the end-of-observation band, the rules as clinician-owned data, cuff readings on request,
CSV replay and pushed readings with their error cases."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketapump.clinical.vitals import (
    CHANNELS,
    CORE_CHANNELS,
    CallbackVitalsFeed,
    Channel,
    CsvVitalsFeed,
    OnDemandVitalsFeed,
    PatientScript,
    ScriptedMonitor,
    VitalsAlarm,
    VitalsBaseline,
    VitalsDataError,
    VitalsFeed,
    VitalsGate,
    VitalsSample,
    demo_patient,
    load_patient_script,
    parse_patient_script,
    vitals_thresholds,
)
from ketapump.errors import ConfigurationError

TICK_HZ = 10
SESSION_S = 7200  # preparation aside: 40 min infusion and the observation, with margin
DEMO = demo_patient()
THRESHOLDS = vitals_thresholds()
BASELINE = DEMO.baseline


def with_events(script: PatientScript, *events: dict[str, Any], **changes: Any) -> PatientScript:
    """The script with ``events`` added (validated as a file would be)."""
    document = script.model_dump()
    document["event"] = [*document["event"], *events]
    for section, values in changes.items():
        document[section] = {**document[section], **values}
    return PatientScript.model_validate(document)


def drive(
    feed: VitalsFeed, gate: VitalsGate, until_s: float, *, hz: int = TICK_HZ, from_tick: int = 0
) -> tuple[list[tuple[float, VitalsAlarm]], list[VitalsSample]]:
    """The orchestrator's loop: poll and update every tick (exact tick times k / hz). Returns the alarms
    with the tick that raised them, and every reading seen."""
    alarms: list[tuple[float, VitalsAlarm]] = []
    seen: list[VitalsSample] = []
    for k in range(from_tick, round(until_s * hz) + 1):
        now = k / hz
        samples = feed.poll(now)
        seen += samples
        alarms += [(now, a) for a in gate.update(now, samples)]
    return alarms, seen


def first_past(samples: list[VitalsSample], channel: Channel, after_s: float = -math.inf) -> VitalsSample:
    """The first reading of ``channel`` past an absolute limit."""
    return next(
        s
        for s in samples
        if s.channel == channel and s.t_s >= after_s and THRESHOLDS.crossed(channel, s.value)
    )


# ----- the rules as data -------------------------------------------------------------------------


def test_the_defaults_are_the_clinical_protocol_rules() -> None:
    t = THRESHOLDS
    assert (t.sbp_max_mmhg, t.dbp_max_mmhg, t.hr_max_bpm, t.spo2_min_pct) == (180, 110, 120, 90)
    # Low limits are on by default: hypotension and bradycardia (clinical-protocol.md, "At the chair").
    assert (t.sbp_min_mmhg, t.hr_min_bpm) == (90, 50)
    assert t.limits("sbp") == (90, 180) and t.limits("dbp") == (None, 110) and t.limits("spo2") == (90, None)
    # Continuous channels ride out artefacts; the cuff's readings act at once.
    assert (t.alarm_delay_s("spo2"), t.alarm_delay_s("hr"), t.alarm_delay_s("sbp")) == (10, 10, 0)
    assert t.channels() == CORE_CHANNELS  # RR and EtCO₂ only when monitored
    assert (t.resume, t.resume_after_s, t.bp_recheck_s) == ("clinician", 120, 120)
    assert (
        t.stale_after_s("sbp"),
        t.stale_after_s("dbp"),
        t.stale_after_s("hr"),
        t.stale_after_s("spo2"),
    ) == (
        1200,
        1200,
        2,
        2,
    )
    assert (t.baseline_sbp_warn_mmhg, t.baseline_dbp_warn_mmhg, t.band_pct) == (140, 90, 20)
    # The limits are inclusive for the maxima and exclusive for SpO₂ (SpO₂ < 90 %).
    assert t.crossed("sbp", 180) and not t.crossed("sbp", 179.9)
    assert t.crossed("dbp", 110) and not t.crossed("dbp", 109)
    assert t.crossed("hr", 120) and not t.crossed("hr", 119)
    assert t.crossed("spo2", 89) and not t.crossed("spo2", 90)
    assert t.crossed("sbp", 89) and not t.crossed("sbp", 90)
    assert t.crossed("hr", 49) and not t.crossed("hr", 50)


def test_a_protocol_overrides_a_threshold_by_name() -> None:
    t = vitals_thresholds({"sbp_max_mmhg": 170, "bp_interval_s": 300})
    assert t.sbp_max_mmhg == 170 and t.stale_after_s("sbp") == 600
    assert t.hr_max_bpm == 120  # the rest stays the default
    assert vitals_thresholds().sbp_max_mmhg == 180  # and the defaults are not changed


def test_bad_overrides_are_refused_naming_every_field() -> None:
    with pytest.raises(ConfigurationError) as e:
        vitals_thresholds({"sbp_max": 170, "spo2_min_pct": 120, "stale_factor": 0.5}, where="protocol.vitals")
    assert isinstance(e.value, VitalsDataError)
    problems = "\n".join(e.value.problems)
    assert "protocol.vitals.sbp_max: Extra inputs are not permitted" in problems
    assert "protocol.vitals.spo2_min_pct:" in problems
    assert "protocol.vitals.stale_factor:" in problems
    assert len(e.value.problems) == 3


def test_the_demo_patient_loads_from_its_file() -> None:
    path = Path(str(resources.files("ketapump.data").joinpath("patients/demo.toml")))
    assert load_patient_script(path) == DEMO
    assert DEMO.name == "demo" and DEMO.event == [] and DEMO.response.peak_s == 2400


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("schema_version = 1\nnosuch = 1\n", "nosuch: Extra inputs are not permitted"),
        ("schema_version = 2\n", "schema_version:"),
        ("schema_version = 1\n[noise]\nhr_bpm = -1\n", "noise.hr_bpm:"),
        ("schema_version = 1\n[response]\npeak_s = 9000\n", "response: Value error, onset_s < peak_s"),
        (
            'schema_version = 1\n[[event]]\nkind = "crossing"\nchannel = "hr"\nat_s = 5\nduration_s = 1\n',
            "event.0.crossing.value: Field required",
        ),
        (
            'schema_version = 1\n[[event]]\nkind = "dropout"\nchannel = "temp"\nat_s = 5\nduration_s = 1\n',
            "event.0.dropout.channel:",
        ),
        ('schema_version = 1\n[[event]]\nkind = "spike"\n', "event.0:"),
        ("schema_version = 1\n[baseline\n", "is not valid TOML"),
    ],
)
def test_a_bad_patient_script_names_the_field(text: str, expected: str) -> None:
    with pytest.raises(VitalsDataError) as e:
        parse_patient_script(text, "p.toml")
    assert str(e.value).startswith("p.toml is not a valid patient script:")
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_a_missing_script_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        VitalsDataError, match=r"nope\.toml is not a valid patient script:\n  .*cannot be read"
    ) as e:
        load_patient_script(tmp_path / "nope.toml")
    assert e.value.not_found  # not there (exit 66), rather than wrong (65)
    (tmp_path / "bad.toml").write_text("schema_version = 2\n")
    with pytest.raises(VitalsDataError) as e:
        load_patient_script(tmp_path / "bad.toml")
    assert not e.value.not_found


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0.0, "bp", 120.0), "VitalsSample.channel"),
        ((math.nan, "hr", 70.0), "VitalsSample.t_s"),
        ((0.0, "hr", math.inf), "VitalsSample.value"),
        ((0.0, "spo2", math.nan), "VitalsSample.value"),
    ],
)
def test_a_reading_is_validated(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(VitalsDataError) as e:
        VitalsSample(*args)
    assert e.value.field == field


# ----- crossings ---------------------------------------------------------------------------------

CROSSINGS = (
    {"kind": "crossing", "channel": "sbp", "at_s": 1200.0, "duration_s": 600.0, "value": 186.0},
    {"kind": "crossing", "channel": "dbp", "at_s": 3000.0, "duration_s": 600.0, "value": 112.0},
    {"kind": "crossing", "channel": "hr", "at_s": 1500.5, "duration_s": 20.0, "value": 131.0},
    {"kind": "crossing", "channel": "spo2", "at_s": 2000.0, "duration_s": 30.0, "value": 87.0},
)


def test_scripted_crossings_of_each_channel_are_caught_at_once_or_past_their_alarm_delay() -> None:
    monitor = ScriptedMonitor(with_events(DEMO, *CROSSINGS))
    gate = VitalsGate(THRESHOLDS, BASELINE)
    alarms, seen = drive(monitor, gate, SESSION_S)
    crossings = [(tick, a) for tick, a in alarms if a.kind == "crossing"]
    assert [a.channel for _, a in crossings] == ["sbp", "hr", "spo2", "dbp"]  # in time order, once each
    assert not [a for _, a in alarms if a.kind == "stale"]
    for event in CROSSINGS:
        tick, alarm = next((t, a) for t, a in crossings if a.channel == event["channel"])
        reading = first_past(seen, event["channel"])
        # The first reading past the limit is the event's first reading (the HR event starts between two).
        assert reading.t_s == math.ceil(event["at_s"])
        # A cuff reading alarms at once; HR and SpO₂ once they have stayed past the limit for 10 s.
        delay = THRESHOLDS.alarm_delay_s(event["channel"])
        assert (alarm.since_s, alarm.t_s, alarm.value) == (reading.t_s, reading.t_s + delay, event["value"])
        assert alarm.limit in THRESHOLDS.limits(event["channel"])
        # Caught at the tick the reading arrived: within one 0.1 s tick, well inside S13's 1 s.
        assert 0 <= tick - alarm.t_s < 1 / TICK_HZ
    # Every excursion recovered, and the gate shows it.
    assert gate.active() == []
    assert crossings[0][1].detail == "SBP 186 mmHg ≥ 180 mmHg"
    assert crossings[2][1].detail == "SpO₂ 87 % < 90 % for 10 s"


def _first_reading_in(at_s: float, duration_s: float, interval: float) -> float | None:
    """The first time ``k × interval`` in ``[at_s, at_s + duration_s)`` (a short event can fall between
    two readings, the cuff's especially: then there is none)."""
    k = math.ceil(at_s / interval)
    first = k * interval if k * interval >= at_s else (k + 1) * interval
    return first if first < at_s + duration_s else None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    channel=st.sampled_from(CORE_CHANNELS),
    at_s=st.floats(min_value=0.0, max_value=3000.0),
    duration_s=st.floats(min_value=0.1, max_value=900.0),
    excess=st.floats(min_value=0.0, max_value=40.0),
    low=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_scripted_crossing_is_caught_once_past_its_delay_and_a_shorter_one_never(
    *, channel: Channel, at_s: float, duration_s: float, excess: float, low: bool, seed: int
) -> None:
    minimum, maximum = THRESHOLDS.limits(channel)
    if (low and minimum is None) or (not low and maximum is None):
        low = not low
    value = (minimum - 1 - excess / 4) if low else (maximum + excess)  # type: ignore[operator]
    script = with_events(
        DEMO,
        {"kind": "crossing", "channel": channel, "at_s": at_s, "duration_s": duration_s, "value": value},
        monitor={"seed": seed},
    )
    gate = VitalsGate(THRESHOLDS, BASELINE)
    alarms, seen = drive(ScriptedMonitor(script), gate, at_s + duration_s + 1)
    crossings = [(tick, a) for tick, a in alarms if a.kind == "crossing"]
    interval = THRESHOLDS.interval_s(channel)
    delay = THRESHOLDS.alarm_delay_s(channel)
    first = _first_reading_in(at_s, duration_s, interval)
    # The reading that has stayed past the limit for the delay: the first one at least `delay` later.
    raising = None if first is None else first + math.ceil(delay / interval - 1e-9) * interval
    if raising is None or raising >= at_s + duration_s:
        assert crossings == []  # an artefact shorter than the delay (or between two cuff readings)
        return
    assert first_past(seen, channel).t_s == first
    assert len(crossings) == 1
    tick, alarm = crossings[0]
    assert (alarm.channel, alarm.since_s, alarm.t_s, alarm.value, alarm.low) == (
        channel, first, raising, value, low
    )  # fmt: skip
    assert 0 <= tick - raising < 1 / TICK_HZ


@pytest.mark.parametrize("channel", ["spo2", "hr"])
def test_a_one_second_artefact_never_alarms_and_a_twenty_second_one_does_within_delay_plus_one_s(
    channel: Channel,
) -> None:
    value = 80.0 if channel == "spo2" else 150.0
    artefact = {"kind": "crossing", "channel": channel, "at_s": 600.0, "duration_s": 1.0, "value": value}
    real = {"kind": "crossing", "channel": channel, "at_s": 1200.0, "duration_s": 20.0, "value": value}
    gate = VitalsGate(THRESHOLDS, BASELINE)
    alarms, _ = drive(ScriptedMonitor(with_events(DEMO, artefact, real)), gate, 1300)
    [(tick, alarm)] = alarms
    assert alarm.since_s == 1200.0 and 1200.0 + 10.0 <= tick <= 1200.0 + 10.0 + 1.0
    assert alarm.detail.endswith("for 10 s")


def test_a_reading_back_in_range_restarts_the_alarm_delay() -> None:
    gate = VitalsGate(THRESHOLDS, BASELINE)
    raised = []
    # SpO₂ below 90 for 9 s, one reading back in range, below again: the delay starts over.
    for t in range(0, 30):
        value = 95 if t == 9 else 85
        raised += gate.update(float(t), [VitalsSample(float(t), "spo2", value)])
    assert [(a.since_s, a.t_s) for a in raised if a.kind == "crossing"] == [(10.0, 20.0)]
    assert gate.pending() == [] and [a.channel for a in gate.active() if a.kind == "crossing"] == ["spo2"]
    gate.update(30.0, [VitalsSample(30.0, "spo2", 84)])
    gate.update(31.0, [VitalsSample(31.0, "spo2", 97)])
    assert [a for a in gate.active() if a.kind == "crossing"] == []


@pytest.mark.parametrize(
    ("channel", "value", "detail"),
    [
        ("sbp", 85.0, "SBP 85 mmHg < 90 mmHg"),
        ("hr", 45.0, "HR 45 bpm < 50 bpm for 10 s"),
    ],
)
def test_low_limits_alarm_hypotension_and_bradycardia(channel: Channel, value: float, detail: str) -> None:
    event = {"kind": "crossing", "channel": channel, "at_s": 1200.0, "duration_s": 1200.0, "value": value}
    gate = VitalsGate(THRESHOLDS, BASELINE)
    alarms, _ = drive(ScriptedMonitor(with_events(DEMO, event)), gate, 2400)
    [(_tick, alarm)] = alarms
    assert alarm.low and alarm.detail == detail
    # Off when the clinician sets the minimum to 0.
    off = vitals_thresholds({f"{channel}_min_{'mmhg' if channel == 'sbp' else 'bpm'}": 0.0})
    assert off.limits(channel)[0] is None
    alarms, _ = drive(ScriptedMonitor(with_events(DEMO, event)), VitalsGate(off, BASELINE), 2400)
    assert alarms == []


def test_a_threshold_relative_to_baseline_is_the_lower_of_the_two() -> None:
    rules = vitals_thresholds({"sbp_rise_max_pct": 30.0})
    gate = VitalsGate(rules, BASELINE)  # baseline SBP 122: 30 % above is 158.6
    assert gate.limits("sbp") == (90.0, pytest.approx(158.6))
    assert VitalsGate(rules, BASELINE.model_copy(update={"sbp_mmhg": 150.0})).limits("sbp")[1] == 180.0
    assert gate.update(0.0, [VitalsSample(0.0, "sbp", 158.0)]) == []
    [alarm] = [a for a in gate.update(600.0, [VitalsSample(600.0, "sbp", 160.0)]) if a.kind == "crossing"]
    assert alarm.limit == pytest.approx(158.6) and not alarm.low
    assert THRESHOLDS.rise_max_pct("sbp") is None  # off by default


def test_bad_rules_name_the_field_low_above_high_and_a_resume_policy_that_does_not_exist() -> None:
    with pytest.raises(VitalsDataError) as e:
        vitals_thresholds({"hr_min_bpm": 130.0, "resume": "sometimes", "rr_monitored": "yes"})
    problems = "\n".join(e.value.problems)
    assert "vitals.resume:" in problems and "vitals.rr_monitored:" in problems
    with pytest.raises(VitalsDataError, match=r"hr_min_bpm \(130\) must be below hr_max_bpm \(120\)"):
        vitals_thresholds({"hr_min_bpm": 130.0})


def test_rr_and_etco2_are_watched_only_when_monitored() -> None:
    capnograph = DEMO.model_dump()
    capnograph["baseline"] |= {"rr_per_min": 14.0, "etco2_mmhg": 38.0}
    hypoventilation = {
        "kind": "crossing",
        "channel": "etco2",
        "at_s": 900.0,
        "duration_s": 60.0,
        "value": 58.0,
    }
    capnograph["event"] = [hypoventilation]
    script = PatientScript.model_validate(capnograph)
    seen = ScriptedMonitor(script).poll(60.0)
    assert {s.channel for s in seen} == set(CHANNELS)
    # Not monitored (the default): neither their readings nor their absence alarm.
    alarms, _ = drive(ScriptedMonitor(script), VitalsGate(THRESHOLDS, script.baseline), 1000)
    assert alarms == []
    # Monitored: EtCO₂ 58 mmHg past its 50 mmHg maximum for its 15 s delay alarms, and a missing RR is stale.
    rules = vitals_thresholds({"rr_monitored": True, "etco2_monitored": True})
    assert rules.channels() == CHANNELS
    alarms, _ = drive(ScriptedMonitor(script), VitalsGate(rules, script.baseline), 1000)
    [(_tick, alarm)] = alarms
    assert (alarm.channel, alarm.since_s, alarm.t_s) == ("etco2", 900.0, 915.0)
    without_rr = VitalsGate(rules, DEMO.baseline)
    alarms, _ = drive(ScriptedMonitor(DEMO), without_rr, 20)
    assert sorted(a.channel for _, a in alarms) == ["etco2", "rr"]


def test_the_simulated_cuff_takes_a_reading_on_request() -> None:
    crossing = {"kind": "crossing", "channel": "sbp", "at_s": 0.0, "duration_s": 650.0, "value": 190.0}
    monitor = ScriptedMonitor(with_events(DEMO, crossing))
    first = monitor.poll(0.0)
    assert [(s.channel, s.value) for s in first if s.channel == "sbp"] == [("sbp", 190.0)]
    assert monitor.request_reading(("sbp", "dbp"), 100.0)
    assert monitor.request_reading(("sbp", "dbp"), 110.0)  # already measuring: not started twice
    assert not monitor.request_reading(("hr",), 100.0)  # the continuous channels need no request
    assert monitor.requests == [(100.0, 130.0)]
    assert [s for s in monitor.poll(129.0) if s.channel in ("sbp", "dbp")] == []
    cuff = [s for s in monitor.poll(130.0) if s.channel in ("sbp", "dbp")]
    assert [(s.t_s, s.channel) for s in cuff] == [(130.0, "sbp"), (130.0, "dbp")]
    assert cuff[0].value == 190.0
    # The regular cycle goes on: the next reading at 600 s.
    assert [s.t_s for s in monitor.poll(600.0) if s.channel == "sbp"] == [600.0]
    assert isinstance(monitor, OnDemandVitalsFeed) and not isinstance(
        CallbackVitalsFeed(), OnDemandVitalsFeed
    )


def test_a_crossing_is_reported_once_its_recovery_is_visible_and_a_new_one_raises_again() -> None:
    gate = VitalsGate(vitals_thresholds({"hr_alarm_delay_s": 0.0}), BASELINE)
    hr = [(0, 80), (1, 125), (2, 130), (3, 124), (4, 100), (5, 121)]
    raised = []
    for t, v in hr:
        raised += [a for a in gate.update(t, [VitalsSample(t, "hr", v)]) if a.kind == "crossing"]
        active = [a.channel for a in gate.active() if a.kind == "crossing"]
        if t == 2:
            assert active == ["hr"]
        if t == 4:
            assert active == []  # back in range: the recovery shows
    assert [(a.t_s, a.value) for a in raised] == [(1, 125), (5, 121)]


def test_a_late_reading_past_a_limit_still_raises_but_never_clears_nor_refreshes() -> None:
    gate = VitalsGate(THRESHOLDS, BASELINE)
    gate.update(10, [VitalsSample(10, "sbp", 120)])
    late = gate.update(10.5, [VitalsSample(9, "sbp", 188)])  # a cuff reading: no delay to wait out
    assert [(a.kind, a.t_s) for a in late] == [("crossing", 9)]
    assert gate.latest("sbp") == VitalsSample(10, "sbp", 120)
    gate.update(10.6, [VitalsSample(8, "sbp", 115)])  # older than the newest: does not clear
    assert [a.kind for a in gate.active()] == ["crossing"]
    gate.update(11, [VitalsSample(11, "sbp", 121)])
    assert gate.active() == []
    # On a channel with an alarm delay a late reading cannot say how long the run lasted: ignored.
    gate.update(12, [VitalsSample(12, "hr", 80)])
    late = gate.update(12.5, [VitalsSample(11.5, "hr", 150)])
    assert [a for a in late if a.kind == "crossing"] == [] and gate.pending() == []


def test_the_gate_refuses_time_going_backwards_and_readings_from_the_future() -> None:
    gate = VitalsGate(THRESHOLDS, BASELINE)
    gate.update(5.0, [])
    with pytest.raises(VitalsDataError, match="now_s went backwards from 5 s to 4 s"):
        gate.update(4.0, [])
    with pytest.raises(VitalsDataError, match=r"hr reading \(6 s\) is later than now \(5 s\)"):
        gate.update(5.0, [VitalsSample(6.0, "hr", 70)])


# ----- in-range noise ----------------------------------------------------------------------------


def test_a_hundred_nominal_sessions_raise_nothing() -> None:
    """100 seeds of the demo patient, each a 2 h session driven at 10 Hz: 0 alarms (S13)."""
    readings = 0
    # The closest any reading came to its limit, per channel (positive: on the safe side).
    closest = dict.fromkeys(CORE_CHANNELS, math.inf)
    for seed in range(100):
        script = DEMO.model_copy(update={"monitor": DEMO.monitor.model_copy(update={"seed": seed})})
        gate = VitalsGate(THRESHOLDS, BASELINE)
        alarms, seen = drive(ScriptedMonitor(script), gate, SESSION_S)
        assert alarms == [], (seed, alarms[:3])
        assert gate.within_band()  # and back within ±20 % at the end
        readings += len(seen)
        for s in seen:
            low, high = THRESHOLDS.limits(s.channel)
            margins = [s.value - low] if low is not None else []
            margins += [high - s.value] if high is not None else []
            closest[s.channel] = min(closest[s.channel], *margins)
    assert readings >= 100 * 2 * SESSION_S  # HR and SpO₂ every second, and the cuff
    assert all(0 < margin < 60 for margin in closest.values()), closest


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    sbp=st.floats(106, 135),  # the bounded noise (≤ 15 mmHg) stays clear of the 90 mmHg minimum
    dbp=st.floats(55, 85),
    hr=st.floats(60, 95),  # and (≤ 9 bpm) of the 50 bpm minimum
    spo2=st.floats(95, 99),
    sbp_rise=st.floats(0, 25),
    dbp_rise=st.floats(0, 12),
    hr_rise=st.floats(0, 12),
    sd=st.floats(0, 1),
)
def test_in_range_noise_never_raises(
    *,
    seed: int,
    sbp: float,
    dbp: float,
    hr: float,
    spo2: float,
    sbp_rise: float,
    dbp_rise: float,
    hr_rise: float,
    sd: float,
) -> None:
    """Any patient whose baseline, response and bounded noise stay inside the limits raises nothing."""
    document = DEMO.model_dump()
    document["monitor"]["seed"] = seed
    document["baseline"] = {"sbp_mmhg": sbp, "dbp_mmhg": dbp, "hr_bpm": hr, "spo2_pct": spo2}
    document["response"] |= {"sbp_rise_mmhg": sbp_rise, "dbp_rise_mmhg": dbp_rise, "hr_rise_bpm": hr_rise}
    document["noise"] |= {"sbp_mmhg": 5 * sd, "dbp_mmhg": 3 * sd, "hr_bpm": 3 * sd, "spo2_pct": 0.6 * sd}
    script = PatientScript.model_validate(document)
    gate = VitalsGate(THRESHOLDS, script.baseline)
    alarms, seen = drive(ScriptedMonitor(script), gate, SESSION_S, hz=1)
    assert alarms == []
    assert len({s.value for s in seen if s.channel == "hr"}) > 1 or sd < 0.5  # the noise is there


def test_the_ketamine_response_peaks_around_minute_forty_and_resolves() -> None:
    monitor = ScriptedMonitor(DEMO)
    seen = monitor.poll(SESSION_S)

    def mean(channel: Channel, start: float, end: float) -> float:
        values = [s.value for s in seen if s.channel == channel and start <= s.t_s < end]
        return sum(values) / len(values)

    assert mean("hr", 0, 300) == pytest.approx(72, abs=2)
    assert mean("hr", 2280, 2520) == pytest.approx(80, abs=2)  # the peak: minute 38–42
    assert mean("hr", 6000, 7200) == pytest.approx(72, abs=2)  # back at baseline after 1.5 h
    bp = {s.t_s: s.value for s in seen if s.channel == "sbp"}
    assert max(bp, key=lambda t: bp[t]) in (1800.0, 2400.0, 3000.0)
    assert monitor.nominal(2400, "sbp") == 136 and monitor.nominal(5400, "sbp") == 122


def test_each_channel_rises_by_its_own_setting_of_the_response() -> None:
    changes = {"sbp": 1.0, "dbp": 2.0, "hr": 3.0, "spo2": -4.0, "rr": 5.0, "etco2": 6.0}
    fields = ["sbp_rise_mmhg", "dbp_rise_mmhg", "hr_rise_bpm", "spo2_change_pct", "rr_change_per_min",
              "etco2_change_mmhg"]  # fmt: skip
    response = DEMO.response.model_copy(update=dict(zip(fields, changes.values(), strict=True)))
    assert {c: response.rise(c) for c in CHANNELS} == changes


def test_the_monitor_is_seeded_and_independent_of_how_often_it_is_polled() -> None:
    once = ScriptedMonitor(DEMO).poll(1800)
    often = ScriptedMonitor(DEMO)
    ticked = [s for k in range(18001) for s in often.poll(k / 10)]
    assert ticked == once
    other = DEMO.model_copy(update={"monitor": DEMO.monitor.model_copy(update={"seed": 8})})
    assert ScriptedMonitor(other).poll(1800) != once
    # A reading is on its channel's schedule, in time order, each returned once.
    assert [s.t_s for s in once if s.channel == "sbp"] == [0, 600, 1200, 1800]
    assert [s.t_s for s in once] == sorted(s.t_s for s in once)
    assert often.poll(1800) == []


class _AlwaysLookingMonitor(ScriptedMonitor):
    """The monitor without its early return: every poll walks the streams and the requests."""

    def poll(self, now_s: float) -> list[VitalsSample]:
        self._next_due_s = -math.inf
        return super().poll(now_s)


#: A poll's step forward (s): the control tick, odd steps, long gaps, and none at all.
_POLL_STEPS = st.one_of(
    st.sampled_from([0.0, 0.1, 0.3, 0.7, 1.0, 2.5, 29.9, 30.0, 121.0]),
    st.floats(min_value=0.0, max_value=200.0, allow_nan=False),
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    start_s=st.sampled_from([0.0, -300.0, 3.3, 1e6 + 0.1]),
    intervals=st.tuples(*[st.sampled_from([0.1, 0.7, 1.0, 2.5, 5.0, 120.0])] * 5),
    cuff_measure_s=st.sampled_from([0.0, 0.05, 7.0]),
    steps=st.lists(st.tuples(_POLL_STEPS, st.booleans()), min_size=1, max_size=120),
)
def test_a_poll_between_readings_returns_what_walking_every_stream_returns(
    start_s: float, intervals: tuple[float, ...], cuff_measure_s: float, steps: list[tuple[float, bool]]
) -> None:
    """``poll`` returns at once until its next reading is due (most control ticks): the same readings,
    at the same calls, as a monitor that walks every stream and request on every poll, whatever the
    streams' intervals, the start and the cuff requests between polls."""
    bp, hr, spo2, rr, etco2 = intervals
    monitor_settings = {
        "bp_interval_s": bp, "hr_interval_s": hr, "spo2_interval_s": spo2, "rr_interval_s": rr,
        "etco2_interval_s": etco2, "cuff_measure_s": cuff_measure_s,
    }  # fmt: skip
    dropout = {"kind": "dropout", "channel": "hr", "at_s": 20.0, "duration_s": 9.0}
    script = with_events(
        DEMO, dropout, monitor=monitor_settings, baseline={"rr_per_min": 14.0, "etco2_mmhg": 38.0}
    )
    fast = ScriptedMonitor(script, start_s=start_s)
    general = _AlwaysLookingMonitor(script, start_s=start_s)
    now = start_s
    for step_s, ask_for_cuff in steps:
        now += step_s
        if ask_for_cuff:
            assert fast.request_reading(("sbp", "dbp"), now) == general.request_reading(("sbp", "dbp"), now)
        assert fast.poll(now) == general.poll(now)
    assert fast.requests == general.requests


def test_script_time_follows_the_infusion_start() -> None:
    event = {"kind": "crossing", "channel": "hr", "at_s": 60.0, "duration_s": 5.0, "value": 140.0}
    monitor = ScriptedMonitor(with_events(DEMO, event), start_s=0.0)
    monitor.mark_infusion_start(300.0)  # after a 5 min preparation
    seen = monitor.poll(600)
    assert first_past(seen, "hr").t_s == 360.0
    assert monitor.nominal(300 + 2400, "hr") == 80 and monitor.nominal(300, "hr") == 72


# ----- stale feeds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "last_reading_s", "at_s", "duration_s", "resumes_s"),
    [
        ("hr", 599.0, 600.0, 30.0, 630.0),
        ("spo2", 1199.0, 1199.5, 10.0, 1210.0),
        ("bp", 600.0, 1200.0, 900.0, 2400.0),  # the cuff's readings at 1200 and 1800 are lost
    ],
)
def test_a_dropout_raises_stale_after_twice_the_interval_and_not_before(
    channel: str, last_reading_s: float, at_s: float, duration_s: float, resumes_s: float
) -> None:
    dropout = {"kind": "dropout", "channel": channel, "at_s": at_s, "duration_s": duration_s}
    monitor = ScriptedMonitor(with_events(DEMO, dropout))
    gate = VitalsGate(THRESHOLDS, BASELINE)
    channels = ("sbp", "dbp") if channel == "bp" else (channel,)
    limit = THRESHOLDS.stale_after_s(channels[0])
    due = last_reading_s + limit
    # Up to the tick at exactly 2 × the interval: nothing.
    alarms, _ = drive(monitor, gate, due)
    assert alarms == []
    # The next tick: stale, once per channel, with the age of the newest reading.
    alarms, _ = drive(monitor, gate, due + 0.1, from_tick=round(due * TICK_HZ) + 1)
    assert [(a.kind, a.channel) for _, a in alarms] == [("stale", c) for c in channels]
    assert all(a.age_s == pytest.approx(limit + 0.1) and a.limit == limit for _, a in alarms)
    assert "feed stale: newest reading" in alarms[0][1].detail
    assert not gate.within_band()  # a stale channel never passes the end-of-observation check
    # Active until the feed returns, and not raised again meanwhile.
    alarms, _ = drive(monitor, gate, resumes_s + 1, from_tick=round(due * TICK_HZ) + 2)
    assert alarms == []
    assert gate.active() == []


def test_the_stale_factor_is_a_setting() -> None:
    gate = VitalsGate(vitals_thresholds({"stale_factor": 3.0}), BASELINE)
    monitor = ScriptedMonitor(
        with_events(DEMO, {"kind": "dropout", "channel": "hr", "at_s": 100, "duration_s": 60})
    )
    alarms, _ = drive(monitor, gate, 200)
    [(tick, alarm)] = alarms
    assert (alarm.channel, tick) == ("hr", 102.1)  # newest reading at 99 s, limit 3 s


def test_a_channel_never_read_goes_stale_from_the_first_update() -> None:
    gate = VitalsGate(THRESHOLDS, BASELINE)
    feed = CallbackVitalsFeed()
    raised: list[VitalsAlarm] = []
    for k in range(100, 131):
        now = k / 10
        feed.push_reading(now, sbp=120, dbp=80, hr=70)  # SpO₂ never reported
        raised += gate.update(now, feed.poll(now))
    assert [(a.channel, a.t_s) for a in raised] == [("spo2", 12.1)]


class _AlwaysCheckingGate(VitalsGate):
    """The gate without its early return: every update checks every channel for staleness."""

    def update(self, now_s: float, samples: Iterable[VitalsSample]) -> list[VitalsAlarm]:
        self._quiet_until_s = -math.inf
        return super().update(now_s, samples)


#: One update: the step forward (s), and readings as (channel, how long ago (s), value; None: from the
#: future, refused).
_UPDATES = st.tuples(
    st.one_of(
        st.sampled_from([0.0, 0.1, 0.1, 0.1, 0.2, 0.3, 1.0, 1.5, 2.0, 10.0]),
        st.floats(min_value=0.0, max_value=30.0, allow_nan=False),
    ),
    st.lists(
        st.tuples(
            st.sampled_from(CHANNELS),
            st.sampled_from([0.0, 0.0, 0.1, 0.5, 3.0]),
            st.sampled_from([60.0, 75.0, 97.0, 130.0, 85.0, 200.0, None]),
        ),
        max_size=3,
    ),
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    start_s=st.sampled_from([0.0, 0.1, -50.0, 86400.3]),
    stale_factor=st.sampled_from([1.0, 1.5, 2.0, 3.3]),
    intervals=st.tuples(*[st.sampled_from([0.1, 0.3, 1.0, 5.0, 7.7])] * 3),
    updates=st.lists(_UPDATES, min_size=1, max_size=150),
)
def test_a_quiet_update_raises_what_checking_every_channel_for_staleness_raises(
    start_s: float,
    stale_factor: float,
    intervals: tuple[float, ...],
    updates: list[tuple[float, list[tuple[Channel, float, float | None]]]],
) -> None:
    """``update`` returns at once when it brings no reading and no channel can have gone stale since the
    last check (most control ticks): the same alarms, at the same updates, as a gate that checks every
    channel each time, with stale times landing between ticks or on them, late readings and refused
    ones."""
    bp, hr, spo2 = intervals
    rules = vitals_thresholds(
        {"stale_factor": stale_factor, "bp_interval_s": bp, "hr_interval_s": hr, "spo2_interval_s": spo2,
         "rr_monitored": True, "hr_alarm_delay_s": 1.0}
    )  # fmt: skip
    fast, general = VitalsGate(rules, BASELINE), _AlwaysCheckingGate(rules, BASELINE)
    now = start_s
    for step_s, readings in updates:
        now += step_s
        samples = [
            VitalsSample(now + 1.0 if value is None else now - ago_s, channel, value or 97.0)
            for channel, ago_s, value in readings
        ]
        try:
            raised = fast.update(now, samples)
        except VitalsDataError as refused:
            with pytest.raises(VitalsDataError, match=re.escape(str(refused))):
                general.update(now, samples)
            continue
        assert raised == general.update(now, samples)
        assert fast.active() == general.active() and fast.pending() == general.pending()


# ----- baseline and the end of observation -------------------------------------------------------


@pytest.mark.parametrize(
    ("sbp", "dbp", "warnings"),
    [
        (122, 78, []),
        (140, 90, []),
        (150, 85, ["baseline SBP 150 mmHg is above 140 mmHg"]),
        (130, 95, ["baseline DBP 95 mmHg is above 90 mmHg"]),
        (150, 95, ["baseline SBP 150 mmHg is above 140 mmHg", "baseline DBP 95 mmHg is above 90 mmHg"]),
    ],
)
def test_a_baseline_above_140_over_90_is_a_soft_warning(sbp: float, dbp: float, warnings: list[str]) -> None:
    baseline = VitalsBaseline(sbp_mmhg=sbp, dbp_mmhg=dbp, hr_bpm=70, spo2_pct=98)
    assert VitalsGate(THRESHOLDS, baseline).baseline_warnings() == warnings


def test_within_band_is_false_while_a_channel_is_out_and_true_after_it_returns() -> None:
    # HR 95 bpm is 32 % above the 72 bpm baseline but below the 120 bpm alarm: out of band, no alarm.
    excursion = {"kind": "crossing", "channel": "hr", "at_s": 6000.0, "duration_s": 300.0, "value": 95.0}
    monitor = ScriptedMonitor(with_events(DEMO, excursion))
    gate = VitalsGate(THRESHOLDS, BASELINE)
    assert not gate.within_band()  # no reading yet
    band: dict[float, bool] = {}
    for k in range(0, 7000 * TICK_HZ + 1, TICK_HZ):  # once a second is enough here
        now = k / TICK_HZ
        assert gate.update(now, monitor.poll(now)) == []
        band[now] = gate.within_band()
    assert all(band[t] for t in range(5400, 6000))  # the response has resolved
    assert not any(band[t] for t in range(6000, 6300))
    assert all(band[t] for t in range(6300, 7001))
    assert gate.deviation_pct("hr") == pytest.approx(100 * (gate.latest("hr").value - 72) / 72)  # type: ignore[union-attr]
    # A tighter band is a setting, or asked for directly.
    assert not VitalsGate(vitals_thresholds({"band_pct": 0.1}), BASELINE).within_band()
    assert not gate.within_band(pct=0.01)


def test_the_baseline_is_the_mean_of_the_preparation_readings() -> None:
    samples = ScriptedMonitor(DEMO).poll(299)
    baseline = VitalsBaseline.from_samples(samples)
    assert baseline.sbp_mmhg == next(s.value for s in samples if s.channel == "sbp")
    assert baseline.hr_bpm == pytest.approx(72, abs=2) and baseline.spo2_pct == pytest.approx(98, abs=1)
    with pytest.raises(VitalsDataError, match="baseline has no reading of sbp, dbp"):
        VitalsBaseline.from_samples([s for s in samples if s.channel not in ("sbp", "dbp")])


# ----- recorded readings -------------------------------------------------------------------------


def test_long_and_wide_csv_replay_the_same_readings(tmp_path: Path) -> None:
    long = tmp_path / "long.csv"
    long.write_text(
        "# a recording\nt_s,channel,value\n0,sbp,121\n0,dbp,77\n0,hr,70\n1,hr,71\n1,spo2,98\n\n2.5,hr,125\n"
    )
    wide = tmp_path / "wide.csv"
    wide.write_text("t_s,sbp,dbp,hr,spo2\n0,121,77,70,\n1,,,71,98\n2.5,,,125,\n")
    for path in (long, wide):
        feed = CsvVitalsFeed(path)
        assert feed.poll(0.5) == [
            VitalsSample(0, "sbp", 121),
            VitalsSample(0, "dbp", 77),
            VitalsSample(0, "hr", 70),
        ]
        assert feed.poll(0.5) == []  # each reading once
        assert feed.poll(10) == [
            VitalsSample(1, "hr", 71),
            VitalsSample(1, "spo2", 98),
            VitalsSample(2.5, "hr", 125),
        ]
    shifted = CsvVitalsFeed(wide, offset_s=100)
    assert shifted.poll(99) == [] and shifted.poll(101)[0] == VitalsSample(100, "sbp", 121)
    # Through the gate (HR acting at once): the HR reading of 125 is caught.
    gate = VitalsGate(vitals_thresholds({"hr_alarm_delay_s": 0.0}), BASELINE)
    alarms, _ = drive(CsvVitalsFeed(long), gate, 3)
    assert [(tick, a.channel, a.value) for tick, a in alarms] == [(2.5, "hr", 125)]


def test_the_shipped_example_recording_replays_in_range() -> None:
    path = Path(str(resources.files("ketapump.data").joinpath("patients/demo_vitals.csv")))
    feed = CsvVitalsFeed(path)
    assert {s.channel for s in feed.samples} == set(CORE_CHANNELS)
    gate = VitalsGate(THRESHOLDS, BASELINE)
    alarms, seen = drive(feed, gate, 300)
    assert alarms == [] and len(seen) == len(feed.samples) and gate.within_band()


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("", None, "has no header and no readings"),
        ("time,hr\n0,70\n", 1, "header must be 't_s,channel,value' or 't_s' then channel columns"),
        ("t_s,hr,hr\n0,70,71\n", 1, "names a channel column twice"),
        (
            "t_s,channel,value\n0,hr,70\n1,bpm,71\n",
            3,
            "channel 'bpm' is not one of sbp, dbp, hr, spo2, rr, etco2",
        ),
        ("t_s,channel,value\n0,hr,seventy\n", 2, "hr 'seventy' is not a number"),
        ("t_s,channel,value\n0,hr,nan\n", 2, "hr 'nan' is not a finite number"),
        ("t_s,hr\nzero,70\n", 2, "t_s 'zero' is not a number"),
        ("t_s,hr\n0,70\n2,71\n1,72\n", 4, "t_s goes backwards (1 s after 2 s)"),
        ("t_s,sbp,dbp\n0,120\n", 2, "has 2 columns, the header 3"),
    ],
)
def test_a_bad_recording_is_refused_naming_the_file_and_line(
    tmp_path: Path, text: str, line: int | None, problem: str
) -> None:
    path = tmp_path / "rec.csv"
    path.write_text(text)
    with pytest.raises(VitalsDataError) as e:
        CsvVitalsFeed(path)
    assert e.value.field == (f"{path}:{line}:" if line else f"{path}:")
    assert problem in str(e.value)
    assert str(e.value).startswith(f"{path}:")


def test_a_missing_recording_is_named(tmp_path: Path) -> None:
    with pytest.raises(VitalsDataError, match=r"gone\.csv: cannot be read: No such file") as e:
        CsvVitalsFeed(tmp_path / "gone.csv")
    assert e.value.not_found


# ----- pushed readings ---------------------------------------------------------------------------


def test_pushed_readings_are_returned_in_time_order_once_and_future_ones_wait() -> None:
    feed = CallbackVitalsFeed()
    feed.push(VitalsSample(2.0, "hr", 72))
    feed.push_reading(1.0, sbp=130, dbp=85)
    feed.push(VitalsSample(5.0, "spo2", 97))
    assert feed.poll(3.0) == [
        VitalsSample(1.0, "sbp", 130),
        VitalsSample(1.0, "dbp", 85),
        VitalsSample(2.0, "hr", 72),
    ]
    assert feed.poll(3.0) == []
    assert feed.poll(5.0) == [VitalsSample(5.0, "spo2", 97)]


def test_pushes_from_many_threads_are_each_delivered_once() -> None:
    feed = CallbackVitalsFeed()
    per_thread, threads = 2000, 4
    delivered: list[VitalsSample] = []

    def monitor(i: int) -> None:
        for k in range(per_thread):
            feed.push(VitalsSample(k * 0.01, "hr", 60 + i))

    workers = [threading.Thread(target=monitor, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    now = 0.0
    while any(w.is_alive() for w in workers):
        delivered += feed.poll(now)
        now = min(now + 0.5, per_thread * 0.01)
    for w in workers:
        w.join()
    delivered += feed.poll(per_thread * 0.01)
    assert len(delivered) == per_thread * threads
    assert len({(s.t_s, s.value) for s in delivered}) == per_thread * threads


def test_bad_pushes_are_refused() -> None:
    feed = CallbackVitalsFeed()
    with pytest.raises(TypeError, match="push takes a VitalsSample, not tuple"):
        feed.push((0.0, "hr", 70.0))  # type: ignore[arg-type]
    with pytest.raises(VitalsDataError, match="push_reading needs at least one of"):
        feed.push_reading(0.0)
    with pytest.raises(VitalsDataError, match=r"VitalsSample\.value of dbp must be a finite number"):
        feed.push_reading(0.0, sbp=120, dbp=math.nan)
    assert feed.poll(10) == []  # nothing of a refused reading was queued
