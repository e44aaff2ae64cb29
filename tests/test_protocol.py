"""Protocol files and the dose they give: validation (every problem with its dotted path), the dose
arithmetic of clinical-protocol.md, weight bases, phases."""

from __future__ import annotations

import dataclasses
import math
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump.clinical.druglib import load_library
from ketapump.clinical.protocol import (
    Patient,
    ProtocolError,
    Segment,
    Sitter,
    _clamp,
    ideal_body_weight_kg,
    load_protocol,
    parse_protocol,
    plan_dose,
    shipped_protocols,
)
from ketapump.clinical.vitals import load_patient_script
from ketapump.errors import ConfigurationError
from ketapump.sim import load_scenario

MINIMAL = """
schema_version = 1
name = "p"
[drug]
name = "ketamine"
concentration_mg_per_ml = 1.0
[dose]
mg_per_kg = 0.5
duration_min = 40.0
"""


def test_every_shipped_protocol_loads_and_plans() -> None:
    names = shipped_protocols()
    assert "ketamine-depression" in names and len(names) >= 3
    for name in names:
        protocol = load_protocol(name)
        assert protocol.name == name
        plan = plan_dose(protocol, Patient("p", 70.0, 175.0, "female"))
        assert math.isclose(plan.planned_ml(plan.duration_min * 60.0), plan.volume_ml, rel_tol=1e-9)


@pytest.mark.parametrize(
    ("weight_kg", "dose_mg", "rate_ml_h"),
    # clinical-protocol.md, "Dose arithmetic": 0.5 mg/kg over 40 min at 1 mg/mL.
    [(50.0, 25.0, 37.5), (70.0, 35.0, 52.5)],
)
def test_the_standard_protocol_matches_the_reference_table(
    weight_kg: float, dose_mg: float, rate_ml_h: float
) -> None:
    plan = plan_dose(load_protocol("ketamine-depression"), Patient("p", weight_kg))
    assert math.isclose(plan.dose_mg, dose_mg)
    assert math.isclose(plan.volume_ml, dose_mg)  # 1 mg/mL
    assert math.isclose(plan.rate_ml_h, rate_ml_h)
    assert plan.duration_min == 40.0
    assert math.isclose(plan.dose_rate_mg_per_kg_h, 0.75)
    assert math.isclose(plan.syringe_fill_ml, dose_mg + 1.0)  # + the line prime


def test_a_dose_the_syringe_cannot_hold_is_planned_and_counts_its_syringes() -> None:
    """The plan is arithmetic: a dose one syringe cannot hold is planned (whether it may run is the
    review's finding, tests/test_druglib.py), with the syringes it takes and the concentration that fits."""
    protocol = load_protocol("ketamine-depression")
    assert plan_dose(protocol, Patient("p", 118.0)).syringes_needed == 1  # 59 + 1 mL: exactly full
    # 120 kg at 1 mg/mL: 60 mL + 1 mL prime in a 60 mL syringe.
    plan = plan_dose(protocol, Patient("p", 120.0))
    assert (plan.syringe_fill_ml, plan.syringe_capacity_ml, plan.syringes_needed) == (61.0, 60.0, 2)
    assert math.isclose(plan.concentration_for_one_syringe_mg_per_ml, 60.0 / 59.0)
    assert plan.as_dict()["syringes_needed"] == 2
    assert plan_dose(protocol, Patient("p", 300.0)).syringes_needed == 3  # 151 mL


def test_ideal_and_adjusted_weight_follow_the_formulas() -> None:
    # Devine: 180 cm male = 50 + 2.3 × (70.87 − 60) = 75.0 kg.
    assert math.isclose(ideal_body_weight_kg(180.0, "male"), 50 + 2.3 * (180 / 2.54 - 60))
    tapered = load_protocol("ketamine-depression-tapered")  # adjusted, factor 0.4, 2 mg/mL
    patient = Patient("p", 120.0, 165.0, "female")
    ibw = ideal_body_weight_kg(165.0, "female")
    plan = plan_dose(tapered, patient)
    assert math.isclose(plan.basis_weight_kg, ibw + 0.4 * (120.0 - ibw))
    assert math.isclose(plan.dose_mg, 0.5 * plan.basis_weight_kg)
    assert math.isclose(plan.volume_ml, plan.dose_mg / 2.0)


@pytest.mark.parametrize(("height_cm", "sex", "missing"), [(None, "male", "height_cm"), (170.0, None, "sex")])
def test_ideal_or_adjusted_weight_without_height_or_sex_is_refused(
    height_cm: float | None, sex: str | None, missing: str
) -> None:
    ideal = parse_protocol(MINIMAL.replace("mg_per_kg = 0.5", 'mg_per_kg = 0.5\nweight_basis = "ideal"'))
    with pytest.raises(ConfigurationError, match=rf"patient\.{missing} is required"):
        plan_dose(ideal, Patient("p", 80.0, height_cm, sex))  # type: ignore[arg-type]


@pytest.mark.parametrize("weight", [0.0, -70.0, math.nan, math.inf])
def test_a_weight_that_is_not_a_positive_number_is_refused(weight: float) -> None:
    with pytest.raises(ConfigurationError, match=r"patient\.weight_kg"):
        plan_dose(load_protocol("ketamine-depression"), Patient("p", weight))


def test_phases_deliver_the_dose_in_the_duration_with_the_shape_asked() -> None:
    plan = plan_dose(load_protocol("ketamine-depression-tapered"), Patient("p", 70.0, 175.0, "male"))
    ramp, hold, taper = plan.segments
    assert (ramp.kind, hold.kind, taper.kind) == ("ramp", "hold", "taper")
    assert math.isclose(ramp.from_ml_h, hold.from_ml_h / 2) and math.isclose(taper.to_ml_h, hold.to_ml_h / 2)
    assert math.isclose(plan.planned_ml(40 * 60.0), plan.volume_ml, rel_tol=1e-12)
    # Trapezoids: 5 min at 75 % + 30 min at 100 % + 5 min at 75 % of the hold rate.
    assert math.isclose(hold.from_ml_h * (0.75 * 5 + 30 + 0.75 * 5) / 60.0, plan.volume_ml)
    for ml in (0.0, 1.0, 5.0, plan.volume_ml / 2, plan.volume_ml - 0.1):
        assert math.isclose(plan.planned_ml(plan.time_for_ml(ml)), ml, abs_tol=1e-9)


STEPPED = (
    MINIMAL
    + """
[[phases]]
kind = "hold"
duration_min = 10.0
[[phases]]
kind = "taper"
duration_min = 7.0
from_pct = 100.0
to_pct = 40.0
[[phases]]
kind = "hold"
duration_min = 16.0
from_pct = 40.0
to_pct = 40.0
[[phases]]
kind = "ramp"
duration_min = 7.0
from_pct = 40.0
to_pct = 100.0
"""
)


@pytest.mark.parametrize(
    ("source", "patient"),
    [
        ("ketamine-depression", Patient("p", 70.0)),
        ("ketamine-depression", Patient("p", 53.3)),
        ("ketamine-depression-60min", Patient("p", 88.8)),
        ("ketamine-depression-tapered", Patient("p", 70.0, 175.0, "male")),
        ("ketamine-depression-tapered", Patient("p", 131.0, 162.0, "female")),
        (STEPPED, Patient("p", 61.7)),
    ],
)
def test_the_planned_rate_by_delivered_volume_is_the_bisections_answer_to_the_bit(
    source: str, patient: Patient
) -> None:
    """A session asks every tick for the plan's rate at its delivered volume; the shortcut inside a
    constant-rate segment must give exactly ``rate_at(time_for_ml(v))``: on a fine grid, at every
    segment's boundary volumes and their neighbouring floats, and past either end."""
    protocol = parse_protocol(source) if source.startswith("\n") else load_protocol(source)
    plan = plan_dose(protocol, patient)
    assert any(s.from_ml_h == s.to_ml_h for s in plan.segments)  # the shortcut is exercised
    volumes = [plan.volume_ml * i / 1_000 for i in range(-10, 1_011)]
    for segment in plan.segments:
        for t in (segment.start_s, segment.end_s):
            at = plan.planned_ml(t)
            for v in (at, at * (1 + 1e-9), at * (1 - 1e-9), at * (1 + 2e-9), at * (1 - 2e-9)):
                volumes += [v, math.nextafter(v, math.inf), math.nextafter(v, -math.inf)]
    for v in volumes:
        assert plan.planned_rate_for_ml(v) == plan.rate_at(plan.time_for_ml(v)), v


_TIMES = st.one_of(
    st.floats(min_value=-100.0, max_value=10_000.0, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1e-300, math.inf, -math.inf]),
)
_SEGMENT_ROWS = st.lists(
    st.tuples(
        st.sampled_from([0.1, 1.0, 60.0, 1e-9]),  # a gap (or an overlap) after the previous segment
        st.sampled_from([1e-9, 0.3, 60.0, 600.0, 1234.5, 0.0]),  # duration (0: no duration)
        st.sampled_from([0.0, 0.5, 17.5, 52.5, 1e-7, -3.0, math.inf]),
        st.sampled_from([0.0, 0.5, 17.5, 52.5, 1e-7, -3.0, math.inf]),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    rows=_SEGMENT_ROWS,
    layout=st.sampled_from(["back to back", "back to back", "back to back", "gaps", "overlaps"]),
    times=st.lists(_TIMES, min_size=1, max_size=30),
)
def test_the_planned_volume_is_the_sum_of_every_segments_volume_to_the_bit(
    rows: list[tuple[float, float, float, float]], layout: str, times: list[float]
) -> None:
    """``planned_ml`` works out only the segment under way in a schedule of back-to-back segments: the
    same float as adding up every segment's volume, at any time (before the start, on every boundary
    and its neighbouring floats, past the end), and any other schedule (a gap, an overlap, a segment of
    no duration, a rate that is not finite) is added up in full."""
    segments, t = [], 0.0
    for gap_s, duration_s, from_ml_h, to_ml_h in rows:
        start = {"back to back": t, "gaps": t + gap_s, "overlaps": t - gap_s}[layout]
        segments.append(Segment("hold", start, start + duration_s, from_ml_h, to_ml_h))
        t = start + duration_s
    base = plan_dose(parse_protocol(MINIMAL), Patient("p", 70.0))
    plan = dataclasses.replace(base, segments=tuple(segments), volume_ml=sum(r[2] for r in rows) or 1.0)
    for segment in segments:
        for edge in (segment.start_s, segment.end_s):
            times += [edge, math.nextafter(edge, math.inf), math.nextafter(edge, -math.inf)]
    for t_s in times:
        try:
            expected: float | type[Exception] = plan._summed_planned_ml(t_s)
        except ZeroDivisionError:  # a segment of no duration
            expected = ZeroDivisionError
        if expected is ZeroDivisionError:
            with pytest.raises(ZeroDivisionError):
                plan.planned_ml(t_s)
        else:
            assert str(plan.planned_ml(t_s)) == str(expected), t_s  # to the bit, signed zeros included


@pytest.mark.parametrize(
    "name", ["ketamine-depression", "ketamine-depression-60min", "ketamine-depression-tapered"]
)
def test_a_shipped_plans_volume_is_the_sum_of_every_segments_volume_every_tenth_of_a_second(
    name: str,
) -> None:
    plan = plan_dose(load_protocol(name), Patient("p", 83.0, 180.0, "female"))
    assert plan._whole_volumes is not None  # the shortcut is taken
    for k in range(-10, round(plan.segments[-1].end_s * 10) + 100):
        assert plan.planned_ml(k / 10) == plan._summed_planned_ml(k / 10), k


@given(
    x=st.floats() | st.sampled_from([0.0, -0.0]),
    bounds=st.tuples(st.floats() | st.sampled_from([0.0, -0.0]), st.floats() | st.sampled_from([0.0, -0.0])),
)
@settings(max_examples=200, derandomize=True)
def test_a_clamp_is_min_of_max_to_the_bit(x: float, bounds: tuple[float, float]) -> None:
    low, high = bounds
    assert str(_clamp(x, low, high)) == str(min(max(x, low), high))


def test_a_rate_instead_of_a_duration_gives_the_duration() -> None:
    text = MINIMAL.replace("duration_min = 40.0", "rate_ml_h = 35.0")
    plan = plan_dose(parse_protocol(text), Patient("p", 70.0))
    assert math.isclose(plan.duration_min, 60.0)


def test_every_problem_of_an_invalid_file_is_listed_with_its_dotted_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
schema_version = 2
name = "Bad Name"
colour = "red"
[drug]
name = "ketamine"
concentration_mg_per_ml = "one"
[dose]
mg_per_kg = -0.5
weight_basis = "lean"
duration_min = 40.0
rate_ml_h = 52.5
[[phases]]
kind = "ramp"
duration_min = 5.0
from_pct = 100.0
to_pct = 50.0
[syringe]
name = "no-such-syringe"
[observation]
min_minutes = 60.0
max_minutes = 30.0
""",
        encoding="utf-8",
    )
    with pytest.raises(ProtocolError) as caught:
        load_protocol(bad)
    text = "\n".join(caught.value.problems)
    for path in (
        "schema_version:",
        "name:",
        "colour:",
        "drug.concentration_mg_per_ml:",
        "dose.mg_per_kg:",
        "dose.weight_basis:",
        "phases.0:",
        "syringe:",
        "observation:",
    ):
        assert path in text, path
    assert "Extra inputs are not permitted" in text
    assert str(bad) in str(caught.value)


def test_phases_must_fill_the_duration() -> None:
    text = MINIMAL + '[[phases]]\nkind = "hold"\nduration_min = 30.0\n'
    with pytest.raises(ProtocolError, match=r"the phases last 30 min but dose\.duration_min is 40 min"):
        parse_protocol(text)


def test_unknown_names_unreadable_files_and_bad_toml_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="neither a file nor a shipped protocol"):
        load_protocol("no-such-protocol")
    with pytest.raises(ProtocolError, match="cannot be read"):
        load_protocol(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("schema_version = = 1", encoding="utf-8")
    with pytest.raises(ProtocolError, match="not valid TOML"):
        load_protocol(broken)


def test_vitals_overrides_are_checked_with_the_protocol() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_protocol(MINIMAL + "[vitals]\nhr_max_bmp = 115\nsbp_max_mmhg = -3\n")
    (problem,) = caught.value.problems
    assert problem.startswith("vitals:")
    assert "vitals.hr_max_bmp: Extra inputs are not permitted" in problem
    assert "vitals.sbp_max_mmhg" in problem


def test_strings_are_never_coerced_to_numbers_or_booleans(tmp_path: Path) -> None:
    """A data file says 0.5 or true: "0.5", "yes" and 1-for-true are refused, each with its path, in
    protocols, drug libraries, scenarios and patient scripts alike (the old lax types read them)."""
    protocol = parse_protocol_text(
        'schema_version = 1\nname = "lax"\n[drug]\nname = "ketamine"\nconcentration_mg_per_ml = "1.0"\n'
        '[dose]\nmg_per_kg = "0.5"\nduration_min = 40\n[take_up]\nenabled = "yes"\n'
        '[observation]\nmin_minutes = "30"\n'
    )
    for path in (
        "drug.concentration_mg_per_ml",
        "dose.mg_per_kg",
        "take_up.enabled",
        "observation.min_minutes",
    ):
        assert f"{path}: Input should be a valid" in protocol, path
    assert "duration_min" not in protocol  # an integer is a number
    library = tmp_path / "library.toml"
    library.write_text(
        'schema_version = 1\n[drugs.ketamine.dose_mg_per_kg]\nhard_max = "1.0"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigurationError, match=r"drugs\.ketamine\.dose_mg_per_kg\.hard_max"):
        load_library(library)
    scenario = tmp_path / "scenario.toml"
    scenario.write_text('schema_version = 1\n[pump]\nseed = "7"\nslack_taken_up = 1\n', encoding="utf-8")
    with pytest.raises(ConfigurationError) as info:
        load_scenario(scenario)
    assert "pump.seed" in str(info.value) and "pump.slack_taken_up" in str(info.value)
    script = tmp_path / "patient.toml"
    script.write_text('schema_version = 1\n[baseline]\nsbp_mmhg = "122"\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"baseline\.sbp_mmhg"):
        load_patient_script(script)


def parse_protocol_text(text: str) -> str:
    """The problems an invalid protocol text is refused with (one string)."""
    with pytest.raises(ProtocolError) as info:
        parse_protocol(text)
    return str(info.value)


@pytest.mark.parametrize("name", shipped_protocols())
def test_every_shipped_protocol_checks_the_iv_line_the_sitter_and_driving(name: str) -> None:
    checklists = load_protocol(name).checklists
    assert "IV placed and patent" in checklists.pre
    assert checklists.sitter is True  # by the name and phone recorded (Sitter), not a line of text
    assert "no driving until the next day" in checklists.discharge


def test_the_sitter_as_a_line_of_text_is_refused_with_where_it_is_recorded_instead() -> None:
    shipped = resources.files("ketapump.data").joinpath("protocols", "ketamine-depression.toml")
    text = shipped.read_text(encoding="utf-8").replace(
        '"no driving until the next day",',
        '"no driving until the next day", "Sitter present (name and phone recorded)",',
    )
    message = parse_protocol_text(text)
    assert "checklists.discharge" in message and "recorded as fields (checklists.sitter = true" in message


@pytest.mark.parametrize(
    ("name", "phone"),
    [
        ("Ann Lee", "+44 20 7946 0958"),
        ("  Jo  ", "(202) 555-0142"),
        ("Dr. O'Neil", "030/1234567"),
        ("李", "0612345678"),
    ],
)
def test_a_sitter_is_a_name_and_a_plausible_phone(name: str, phone: str) -> None:
    sitter = Sitter(name, phone)
    assert sitter.as_dict() == {"name": name.strip(), "phone": phone.strip()}


@pytest.mark.parametrize(
    ("name", "phone", "field"),
    [
        ("", "+44 20 7946 0958", "sitter name"),
        ("   ", "+44 20 7946 0958", "sitter name"),
        ("a\tb", "+44 20 7946 0958", "sitter name"),
        ("x" * 101, "+44 20 7946 0958", "sitter name"),
        ("Ann Lee", "", "sitter phone"),
        ("Ann Lee", "12345", "sitter phone"),  # too short for a number
        ("Ann Lee", "+1234567890123456", "sitter phone"),  # more digits than E.164 allows
        ("Ann Lee", "call her at the desk", "sitter phone"),
        ("Ann Lee", "0612345678 ext 2", "sitter phone"),
        ("Ann Lee", "++44 20 7946 0958", "sitter phone"),
    ],
)
def test_a_sitter_without_a_name_or_a_plausible_phone_is_refused(name: str, phone: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} "):
        Sitter(name, phone)
