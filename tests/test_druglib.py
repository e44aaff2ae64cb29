"""The drug library (S12, S14): every hard limit refuses, every soft limit needs a reason, invalid files
are rejected with every problem listed, and the kernel built from the library enforces the hard limits
at run time. The comparisons are the Rust core's; these tests hold it to the bounds in the file."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump import _core
from ketapump.clinical.druglib import (
    LIMIT_TABLES,
    Confirmation,
    DrugEntry,
    DrugLibrary,
    DrugLibraryError,
    Order,
    applicable_limits,
    authorize,
    check,
    kernel_overrides,
    load_library,
    order_for,
)
from ketapump.clinical.protocol import Patient, load_protocol, plan_dose
from ketapump.config import kernel_config
from ketapump.errors import (
    ConfigurationError,
    ConfirmationRequired,
    InterlockError,
    LimitError,
    LimitRefused,
)

SHIPPED = Path(__file__).parent.parent / "python" / "ketapump" / "data" / "drug_library.toml"
KETAMINE = load_library().drug("ketamine")


def _strict_library() -> DrugEntry:
    """The shipped library with the course rules and the plausibility checks made hard as well (hard
    24 h, hard 4 sessions, height 100–250 cm, BMI ≤ 80, weight change ≤ 50 %, dosing weight ≥ 30 %)."""
    text = SHIPPED.read_text(encoding="utf-8")
    for table, bound in [
        ("[drugs.ketamine.hours_since_last_start]\n", "hard_min = 24.0\n"),
        ("[drugs.ketamine.sessions_in_7_days]\n", "hard_max = 4.0\n"),
        ("[drugs.ketamine.height_cm]\n", "hard_min = 100.0\nhard_max = 250.0\n"),
        ("[drugs.ketamine.bmi_kg_m2]\n", "hard_max = 80.0\n"),
        ("[drugs.ketamine.weight_change_pct]\n", "hard_max = 50.0\n"),
        ("[drugs.ketamine.dosing_weight_pct]\n", "hard_min = 30.0\n"),
    ]:
        assert table in text
        text = text.replace(table, table + bound)
    return DrugLibrary.model_validate(tomllib.loads(text)).drug("ketamine")


STRICT = _strict_library()

#: 70 kg, 0.5 mg/kg over 40 min at 1 mg/mL (52.5 mL/h, 35 mL); 35 mg given earlier this week, 72 h ago.
STANDARD = Order.infusion(
    weight_kg=70.0,
    concentration_mg_per_ml=1.0,
    dose_mg_per_kg=0.5,
    duration_min=40.0,
    given_7d_mg=35.0,
    hours_since_last_start=72.0,
    sessions_in_7_days=2,
)

KINDS = [name for name, _unit in _core.LIMIT_KINDS]


def _order(**changes: Any) -> Order:
    return dataclasses.replace(STANDARD, **changes)


def _by_kind(findings: list[Any]) -> dict[str, Any]:
    return {f.kind: f for f in findings}


# ----- the shipped file -------------------------------------------------------------------------------


def test_the_shipped_library_loads_and_the_standard_order_passes() -> None:
    library = load_library()
    assert library.schema_version == 1
    assert library.drug("ketamine").display_name.startswith("Ketamine")
    assert check(KETAMINE, STANDARD) == []
    assert authorize([], []).confirmed == ()


def test_the_tables_are_the_cores_kinds() -> None:
    """One list of kinds: the core's, the file's tables and the entry's fields agree."""
    assert [k for k in KINDS if k != "dosing_weight_kg"] == list(LIMIT_TABLES)
    tolerances = {"cap_tolerance_pct", "week_window_tolerance_h"}
    assert set(DrugEntry.model_fields) == {"display_name", *LIMIT_TABLES, *tolerances}
    assert dict(_core.LIMIT_KINDS)["dose_rate_mg_per_kg_h"] == "mg/kg/h"


def test_dose_arithmetic_of_an_infusion_order() -> None:
    """clinical-protocol.md: 0.5 mg/kg over 40 min, 70 kg → 35 mg, 52.5 mL/h at 1 mg/mL."""
    assert STANDARD.dose_rate_mg_per_kg_h == pytest.approx(0.75)
    assert STANDARD.vtbi_ml == pytest.approx(35.0)
    assert STANDARD.rate_ml_h == pytest.approx(52.5)
    assert STANDARD.dose_mg == pytest.approx(35.0)
    assert STANDARD.cumulative_7d_mg_per_kg == pytest.approx(1.0)
    at_2 = Order.infusion(weight_kg=70.0, concentration_mg_per_ml=2.0, dose_mg_per_kg=0.5, duration_min=40.0)
    assert at_2.rate_ml_h == pytest.approx(26.25)
    assert at_2.as_dict()["cumulative_1h_mg_per_kg"] == pytest.approx(0.5)


def test_unknown_drug_names_the_known_ones() -> None:
    with pytest.raises(
        ConfigurationError, match=r"'propofol' is not in the drug library \(one of ketamine\)"
    ):
        load_library().drug("propofol")


def test_the_limits_that_apply_as_plain_data() -> None:
    limits = applicable_limits(KETAMINE)
    assert list(limits) == list(LIMIT_TABLES)
    assert limits["dose_mg_per_kg"] == {"unit": "mg/kg", "soft_min": 0.1, "soft_max": 0.75, "hard_max": 1.0}
    assert limits["hours_since_last_start"] == {"unit": "h", "soft_min": 44.0}
    assert limits["sessions_in_7_days"] == {"unit": "sessions", "soft_max": 3.0}


def test_the_order_a_protocol_plan_makes() -> None:
    """The standard protocol for 70 kg is the standard order (a first session: no course history)."""
    patient = Patient("p-1", 70.0)
    order = order_for(plan_dose(load_protocol("ketamine-depression"), patient), patient)
    assert order.dosing_weight_kg is None
    assert order.dose_mg_per_kg == 0.5
    assert order.dose_rate_mg_per_kg_h == pytest.approx(0.75)
    assert (order.duration_min, order.vtbi_ml) == (40.0, pytest.approx(35.0))
    assert (order.hours_since_last_start, order.sessions_in_7_days) == (None, 1)
    assert check(KETAMINE, order) == []


def test_a_tapered_plan_is_checked_at_its_peak_rate_on_its_dosing_weight() -> None:
    patient = Patient("p-2", 110.0, 165.0, "female")
    plan = plan_dose(load_protocol("ketamine-depression-tapered"), patient)
    order = order_for(plan, patient)
    assert plan.weight_basis == "adjusted"
    assert order.dosing_weight_kg == plan.basis_weight_kg < patient.weight_kg
    peak = plan.peak_rate_ml_h * plan.concentration_mg_per_ml / plan.basis_weight_kg
    assert order.dose_rate_mg_per_kg_h == pytest.approx(peak)
    assert order.dose_rate_mg_per_kg_h > plan.dose_rate_mg_per_kg_h
    overrides = kernel_overrides(KETAMINE, order)
    assert overrides["hard_cap_mg"] == pytest.approx(1.0 * plan.basis_weight_kg)
    assert plan.peak_rate_ml_h <= overrides["max_rate_ml_h"]


# ----- hard limits ------------------------------------------------------------------------------------

HARD_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("weight_kg", {"weight_kg": 260.0}, "weight 260.0 kg exceeds the hard maximum 250.0 kg"),
    (
        "dosing_weight_kg",
        {"dosing_weight_kg": 25.0},
        "dosing weight 25.0 kg is below the hard minimum 30.0 kg",
    ),
    (
        "concentration_mg_per_ml",
        {"concentration_mg_per_ml": 100.0},
        "concentration 100.0 mg/mL exceeds the hard maximum 10.0 mg/mL",
    ),
    (
        "dose_mg_per_kg",
        {"dose_mg_per_kg": 1.2, "cumulative_1h_mg_per_kg": 1.2, "cumulative_4h_mg_per_kg": 1.2},
        "dose 1.2 mg/kg exceeds the hard maximum 1.0 mg/kg per session",
    ),
    (
        "dose_rate_mg_per_kg_h",
        {"dose_rate_mg_per_kg_h": 2.5},
        "dose rate 2.5 mg/kg/h exceeds the hard maximum 2.0",
    ),
    ("duration_min", {"duration_min": 20.0}, "duration 20.0 min is below the hard minimum 30.0 min"),
    ("bolus_mg_per_kg", {"bolus_mg_per_kg": 0.3}, "bolus dose 0.3 mg/kg exceeds the hard maximum 0.2 mg/kg"),
    (
        "bolus_rate_mg_per_kg_min",
        {"bolus_rate_mg_per_kg_min": 0.2},
        "bolus rate 0.2 mg/kg/min exceeds the hard maximum 0.1 mg/kg/min",
    ),
    (
        "cumulative_1h_mg_per_kg",
        {"cumulative_1h_mg_per_kg": 1.1, "cumulative_4h_mg_per_kg": 1.1, "cumulative_7d_mg_per_kg": 1.6},
        "cumulative dose over the last hour 1.1 mg/kg exceeds the hard maximum 1.0 mg/kg",
    ),
    (
        "cumulative_4h_mg_per_kg",
        {"cumulative_4h_mg_per_kg": 1.1, "cumulative_7d_mg_per_kg": 1.6},
        "cumulative dose over the last 4 h 1.1 mg/kg exceeds the hard maximum 1.0 mg/kg",
    ),
    (
        "cumulative_7d_mg_per_kg",
        {"cumulative_7d_mg_per_kg": 3.2},
        "cumulative dose over the last 7 days 3.2 mg/kg exceeds the hard maximum 3.0 mg/kg",
    ),
    ("vtbi_ml", {"vtbi_ml": 130.0}, "volume to be infused 130.0 mL exceeds the hard maximum 120.0 mL"),
    (
        "hours_since_last_start",
        {"hours_since_last_start": 12.0},
        "time since the last session start 12.0 h is below the hard minimum 24.0 h",
    ),
    (
        "sessions_in_7_days",
        {"sessions_in_7_days": 5},
        "5 sessions in the last 7 days exceed the hard maximum 4",
    ),
    ("height_cm", {"height_cm": 66.0}, "height 66.0 cm is below the hard minimum 100.0 cm"),
    ("bmi_kg_m2", {"bmi_kg_m2": 90.0}, "body-mass index 90.0 kg/m² exceeds the hard maximum 80.0 kg/m²"),
    (
        "weight_change_pct",
        {"weight_change_pct": 114.3},
        "weight change since the last recorded weight 114.3 % exceeds the hard maximum 50.0 %",
    ),
    (
        "dosing_weight_pct",
        {"dosing_weight_kg": 43.1, "dosing_weight_pct": 28.7},
        "dosing weight as a share of the actual weight 28.7 % is below the hard minimum 30.0 %",
    ),
]


def test_every_kind_has_a_hard_case() -> None:
    assert sorted(kind for kind, _, _ in HARD_CASES) == sorted(KINDS)


@pytest.mark.parametrize(("kind", "changes", "message"), HARD_CASES, ids=[c[0] for c in HARD_CASES])
def test_every_hard_limit_refuses_naming_the_limit(kind: str, changes: dict[str, Any], message: str) -> None:
    order = _order(**changes)
    findings = check(STRICT, order)
    finding = _by_kind(findings)[kind]
    assert (finding.severity, finding.kind) == ("hard", kind)
    assert finding.message.startswith(message)
    # Nothing lifts a hard limit: not a confirmation of it, not of everything found.
    everything = [Confirmation(f.kind, "the clinician insists") for f in findings]
    with pytest.raises(LimitRefused) as info:
        authorize(findings, everything)
    assert kind in [f.kind for f in info.value.findings]
    assert message in str(info.value)
    assert info.value.field == "order"
    assert all(f.severity == "hard" for f in info.value.findings)
    # ... and no kernel configuration is derived for it.
    with pytest.raises(LimitRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        kernel_overrides(STRICT, order)


def test_all_hard_findings_are_listed_in_one_refusal() -> None:
    order = _order(
        concentration_mg_per_ml=100.0, weight_kg=20.0, duration_min=20.0, dose_rate_mg_per_kg_h=2.5
    )
    with pytest.raises(LimitRefused) as info:
        authorize(check(KETAMINE, order), [])
    kinds = [f.kind for f in info.value.findings]
    assert kinds == ["weight_kg", "concentration_mg_per_ml", "dose_rate_mg_per_kg_h", "duration_min"]
    assert str(info.value).startswith("order is refused by 4 hard limits:\n  weight 20.0 kg is below")
    assert len(info.value.problems) == 4


def test_undiluted_ketamine_is_refused() -> None:
    """S12: 100 mg/mL (and the 50 mg/mL vial) is never given undiluted IV; 1 and 2 mg/mL pass; 10 mg/mL
    needs a reason."""
    for vial in (100.0, 50.0):
        order = Order.infusion(
            weight_kg=70.0, concentration_mg_per_ml=vial, dose_mg_per_kg=0.5, duration_min=40.0
        )
        with pytest.raises(
            LimitRefused, match=rf"concentration {vial} mg/mL exceeds the hard maximum 10.0 mg/mL"
        ):
            authorize(check(KETAMINE, order), [Confirmation("concentration_mg_per_ml", "only vial in stock")])
    for diluted in (1.0, 2.0):
        order = Order.infusion(
            weight_kg=70.0, concentration_mg_per_ml=diluted, dose_mg_per_kg=0.5, duration_min=40.0
        )
        assert check(KETAMINE, order) == []
    order = Order.infusion(
        weight_kg=70.0, concentration_mg_per_ml=10.0, dose_mg_per_kg=0.5, duration_min=40.0
    )
    (finding,) = check(KETAMINE, order)
    assert (finding.kind, finding.severity, finding.limit) == ("concentration_mg_per_ml", "soft", 2.0)


FLOAT_FIELDS = [f.name for f in dataclasses.fields(Order) if f.name != "sessions_in_7_days"]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_inputs_are_refused(field: str, bad: float) -> None:
    findings = check(KETAMINE, _order(**{field: bad}))
    finding = _by_kind(findings)[field]
    assert (finding.severity, finding.bound, finding.limit) == ("hard", "non_finite", None)
    assert finding.message.endswith("is not a finite number")
    with pytest.raises(LimitRefused, match="is not a finite number"):
        authorize(findings, [])
    with pytest.raises(LimitRefused):
        kernel_overrides(KETAMINE, _order(**{field: bad}))


@pytest.mark.parametrize(
    ("changes", "kind", "message"),
    [
        ({"weight_kg": 0.0}, "weight_kg", "weight 0.0 kg must be more than 0.0 kg"),
        ({"bolus_mg_per_kg": -0.1}, "bolus_mg_per_kg", "bolus dose -0.1 mg/kg is negative"),
        (
            {"cumulative_7d_mg_per_kg": 0.2},
            "cumulative_7d_mg_per_kg",
            "cumulative dose over the last 7 days 0.2 mg/kg is less than this order's own dose 0.5 mg/kg",
        ),
        (
            {"sessions_in_7_days": 0},
            "sessions_in_7_days",
            "0 sessions in the last 7 days: the count must include",
        ),
    ],
)
def test_impossible_values_are_hard_findings(changes: dict[str, Any], kind: str, message: str) -> None:
    finding = _by_kind(check(KETAMINE, _order(**changes)))[kind]
    assert (finding.severity, finding.bound) == ("hard", "floor")
    assert finding.message.startswith(message)


def test_a_negative_session_count_is_a_programming_error() -> None:
    with pytest.raises(ConfigurationError, match=r"sessions_in_7_days -1 is below the allowed minimum \(0\)"):
        check(KETAMINE, _order(sessions_in_7_days=-1))


# ----- soft limits ------------------------------------------------------------------------------------

SOFT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("weight_kg", {"weight_kg": 200.0}, "weight 200.0 kg exceeds the soft maximum 180.0 kg"),
    (
        "dosing_weight_kg",
        {"dosing_weight_kg": 35.0},
        "dosing weight 35.0 kg is below the soft minimum 40.0 kg",
    ),
    (
        "concentration_mg_per_ml",
        {"concentration_mg_per_ml": 10.0},
        "concentration 10.0 mg/mL exceeds the soft maximum 2.0 mg/mL",
    ),
    (
        "dose_mg_per_kg",
        {"dose_mg_per_kg": 0.8, "cumulative_1h_mg_per_kg": 0.8, "cumulative_4h_mg_per_kg": 0.8},
        "dose 0.8 mg/kg exceeds the soft maximum 0.75 mg/kg per session",
    ),
    (
        "dose_rate_mg_per_kg_h",
        {"dose_rate_mg_per_kg_h": 1.5},
        "dose rate 1.5 mg/kg/h exceeds the soft maximum 1.125 mg/kg/h",
    ),
    ("duration_min", {"duration_min": 35.0}, "duration 35.0 min is below the soft minimum 40.0 min"),
    ("bolus_mg_per_kg", {"bolus_mg_per_kg": 0.1}, "bolus dose 0.1 mg/kg exceeds the soft maximum 0.0 mg/kg"),
    (
        "bolus_rate_mg_per_kg_min",
        {"bolus_rate_mg_per_kg_min": 0.08},
        "bolus rate 0.08 mg/kg/min exceeds the soft maximum 0.05 mg/kg/min",
    ),
    (
        "cumulative_1h_mg_per_kg",
        {"cumulative_1h_mg_per_kg": 0.9, "cumulative_4h_mg_per_kg": 0.5},
        "cumulative dose over the last hour 0.9 mg/kg exceeds the soft maximum 0.75 mg/kg",
    ),
    (
        "cumulative_4h_mg_per_kg",
        {"cumulative_4h_mg_per_kg": 0.9},
        "cumulative dose over the last 4 h 0.9 mg/kg exceeds the soft maximum 0.75 mg/kg",
    ),
    (
        "cumulative_7d_mg_per_kg",
        {"cumulative_7d_mg_per_kg": 2.5},
        "cumulative dose over the last 7 days 2.5 mg/kg exceeds the soft maximum 2.25 mg/kg",
    ),
    ("vtbi_ml", {"vtbi_ml": 70.0}, "volume to be infused 70.0 mL exceeds the soft maximum 60.0 mL"),
    (
        "hours_since_last_start",
        {"hours_since_last_start": 30.0},
        "time since the last session start 30.0 h is below the soft minimum 44.0 h",
    ),
    (
        "sessions_in_7_days",
        {"sessions_in_7_days": 4},
        "4 sessions in the last 7 days exceed the soft maximum 3",
    ),
    (
        "height_cm",
        {"height_cm": 120.0},
        "height 120.0 cm is below the soft minimum 130.0 cm (inches typed as cm?)",
    ),
    (
        "bmi_kg_m2",
        {"bmi_kg_m2": 45.0},
        "body-mass index 45.0 kg/m² exceeds the soft maximum 40.0 kg/m² on an actual-weight protocol",
    ),
    (
        "weight_change_pct",
        {"weight_change_pct": 12.5},
        "weight change since the last recorded weight 12.5 % exceeds the soft maximum 10.0 %",
    ),
    (
        "dosing_weight_pct",
        {"dosing_weight_kg": 45.0, "dosing_weight_pct": 35.0},
        "dosing weight as a share of the actual weight 35.0 % is below the soft minimum 40.0 % "
        "(check height and weight)",
    ),
]


def test_every_kind_has_a_soft_case() -> None:
    assert sorted(kind for kind, _, _ in SOFT_CASES) == sorted(KINDS)


@pytest.mark.parametrize("entry", [KETAMINE, STRICT], ids=["shipped", "strict"])
@pytest.mark.parametrize(("kind", "changes", "message"), SOFT_CASES, ids=[c[0] for c in SOFT_CASES])
def test_every_soft_limit_needs_a_reason_and_passes_with_one(
    entry: DrugEntry, kind: str, changes: dict[str, Any], message: str
) -> None:
    findings = check(entry, _order(**changes))
    assert all(f.severity == "soft" for f in findings), findings
    finding = _by_kind(findings)[kind]
    assert finding.message == message
    # Unconfirmed: refused until confirmed, naming the limit.
    with pytest.raises(ConfirmationRequired) as info:
        authorize(findings, [])
    assert kind in [f.kind for f in info.value.findings]
    assert message in str(info.value)
    # Every other finding confirmed but this one: still refused, and only this one is listed.
    others = [Confirmation(f.kind, "reviewed") for f in findings if f.kind != kind]
    with pytest.raises(ConfirmationRequired) as info:
        authorize(findings, others)
    assert [f.kind for f in info.value.findings] == [kind]
    # A blank reason is not a reason.
    for blank in ("", "   ", "\t\n"):
        with pytest.raises(ConfirmationRequired):
            authorize(findings, [*others, Confirmation(kind, blank)])
    # Confirmed with a reason: passes, and the reason comes back for the audit log.
    reason = f"  consultant approved {kind}  "
    authorization = authorize(findings, [*others, Confirmation(kind, reason)])
    confirmed = {f.kind: (f, r) for f, r in authorization.confirmed}
    assert set(confirmed) == {f.kind for f in findings}
    assert confirmed[kind] == (finding, reason.strip())
    (event,) = [e for e in authorization.events() if e["kind"] == kind]
    assert event == {
        "kind": kind,
        "value": finding.value,
        "limit": finding.limit,
        "unit": finding.unit,
        "message": message,
        "reason": reason.strip(),
    }
    # A soft finding does not stop the kernel configuration: it was confirmed before the session.
    assert kernel_overrides(entry, _order(**changes))["hard_cap_mg"] > 0


def test_hard_findings_win_over_confirmable_soft_ones() -> None:
    findings = check(KETAMINE, _order(concentration_mg_per_ml=100.0, hours_since_last_start=30.0))
    assert {f.severity for f in findings} == {"hard", "soft"}
    with pytest.raises(LimitRefused) as info:
        authorize(findings, [Confirmation("hours_since_last_start", "patient travelling")])
    assert [f.kind for f in info.value.findings] == ["concentration_mg_per_ml"]
    assert isinstance(info.value, LimitError)
    assert isinstance(info.value, ConfigurationError)


def test_confirmations_of_other_kinds_are_ignored() -> None:
    assert authorize([], [Confirmation("dose_mg_per_kg", "just in case")]).confirmed == ()


def test_first_session_has_no_interval_rule() -> None:
    assert check(KETAMINE, _order(hours_since_last_start=None, sessions_in_7_days=1)) == []


# ----- invalid files ----------------------------------------------------------------------------------

BAD_LIBRARY = """\
schema_version = 1

[drugs.ketamine]
display_name = "Ketamine"
colour = "blue"

[drugs.ketamine.dose_mg_per_kg]
soft_max = 1.2
hard_max = 1.0

[drugs.ketamine.duration_min]
hard_min = 60.0
hard_max = 30.0

[drugs.ketamine.weight_kg]
hard_min = 30.0
soft_min = 20.0
hard_max = "250"

[drugs.ketamine.concentration_mg_per_ml]
soft_min = 3.0
soft_max = 2.0

[drugs.ketamine.vtbi_ml]
hard_max = nan

[drugs.ketamine.bolus_mg_per_kg]
hard_maximum = 0.2

[drugs.ketamine.dose_rate_mg_per_kg_h]
soft_max = -1.0

[drugs.propofol]
display_name = 7
"""


def test_an_invalid_library_lists_every_problem_with_its_dotted_path(tmp_path: Path) -> None:
    path = tmp_path / "library.toml"
    path.write_text(BAD_LIBRARY, encoding="utf-8")
    with pytest.raises(DrugLibraryError) as info:
        load_library(path)
    problems = info.value.problems
    assert sorted(problems) == sorted(
        [
            "drugs.ketamine.colour: Extra inputs are not permitted",
            "drugs.ketamine.dose_mg_per_kg.soft_max: soft_max 1.2 is above hard_max 1.0",
            "drugs.ketamine.duration_min.hard_max: hard_max 30.0 is below hard_min 60.0",
            "drugs.ketamine.weight_kg.hard_max: Input should be a valid number",
            "drugs.ketamine.weight_kg.soft_min: soft_min 20.0 is below hard_min 30.0",
            "drugs.ketamine.concentration_mg_per_ml.soft_max: soft_max 2.0 is below soft_min 3.0",
            "drugs.ketamine.vtbi_ml.hard_max: Input should be a finite number",
            "drugs.ketamine.bolus_mg_per_kg.hard_maximum: Extra inputs are not permitted",
            "drugs.ketamine.dose_rate_mg_per_kg_h.soft_max: Input should be greater than or equal to 0",
            "drugs.propofol.display_name: Input should be a valid string",
        ]
    ), problems
    assert isinstance(info.value, ConfigurationError)
    assert info.value.field == str(path)
    assert str(info.value).startswith(f"{path} is not a valid drug library:\n  ")
    assert all(p in str(info.value) for p in problems)


@pytest.mark.parametrize(
    ("limit", "path"),
    [
        ("soft_min = 0.5\nhard_min = 1.0", "soft_min: soft_min 0.5 is below hard_min 1.0"),
        ("soft_min = 3.0\nhard_max = 2.0", "soft_min: soft_min 3.0 is above hard_max 2.0"),
        ("soft_max = 0.5\nhard_min = 1.0", "soft_max: soft_max 0.5 is below hard_min 1.0"),
    ],
)
def test_every_soft_outside_hard_relation_is_caught(tmp_path: Path, limit: str, path: str) -> None:
    file = tmp_path / "library.toml"
    file.write_text(f'schema_version = 1\n[drugs.x]\ndisplay_name = "X"\n[drugs.x.vtbi_ml]\n{limit}\n')
    with pytest.raises(DrugLibraryError) as info:
        load_library(file)
    assert info.value.problems == [f"drugs.x.vtbi_ml.{path}"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("schema_version = 2\n[drugs.x]\ndisplay_name = 'X'\n", "schema_version: Input should be 1"),
        (
            "schema_version = 1\n[drugs]\n",
            "drugs: Dictionary should have at least 1 item after validation, not 0",
        ),
        ("drugs = {}\n", "schema_version: Field required"),
        ("schema_version = 1\n[drugs.x]\n", "drugs.x.display_name: Field required"),
        ("schema_version = [\n", "is not valid TOML"),
    ],
)
def test_structural_problems(tmp_path: Path, text: str, problem: str) -> None:
    file = tmp_path / "library.toml"
    file.write_text(text)
    with pytest.raises(DrugLibraryError) as info:
        load_library(file)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_an_unreadable_library_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DrugLibraryError, match="cannot be read"):
        load_library(tmp_path / "missing.toml")


def test_a_library_without_a_delivery_limit_delivers_nothing(tmp_path: Path) -> None:
    """Layered limits: a missing hard maximum of anything delivered is zero, not unlimited."""
    file = tmp_path / "library.toml"
    file.write_text('schema_version = 1\n[drugs.x]\ndisplay_name = "X"\n')
    entry = load_library(file).drug("x")
    findings = check(entry, STANDARD)
    hard = {f.kind: f.limit for f in findings if f.severity == "hard"}
    assert hard == {
        "concentration_mg_per_ml": 0.0,
        "dose_mg_per_kg": 0.0,
        "dose_rate_mg_per_kg_h": 0.0,
        "cumulative_1h_mg_per_kg": 0.0,
        "cumulative_4h_mg_per_kg": 0.0,
        "cumulative_7d_mg_per_kg": 0.0,
        "vtbi_ml": 0.0,
    }
    assert len(findings) == len(hard)  # no bound on weight, duration or the course rules


# ----- the kernel enforces the hard limits at run time ------------------------------------------------


def test_kernel_overrides_derive_from_the_hard_limits() -> None:
    # 2.0 mg/kg/h × 70 kg ÷ 1 mg/mL = 140 mL/h; 1.0 mg/kg × 70 kg = 70 mg (the 7-day window leaves 175).
    assert kernel_overrides(KETAMINE, STANDARD) == {
        "concentration_mg_per_ml": 1.0,
        "max_rate_ml_h": 140.0,
        "hard_cap_mg": 70.0,
    }
    at_2 = kernel_overrides(KETAMINE, _order(concentration_mg_per_ml=2.0))
    assert at_2["max_rate_ml_h"] == 70.0
    # Adjusted-weight dosing: the dosing weight, not the actual weight, sets the ceiling and the cap.
    obese = kernel_overrides(
        KETAMINE, _order(weight_kg=150.0, dosing_weight_kg=100.0), device_max_rate_ml_h=1000.0
    )
    assert (obese["max_rate_ml_h"], obese["hard_cap_mg"]) == (200.0, 100.0)
    # Never above the device's own hard limit (the kernel default: 200 mL/h).
    heavy = kernel_overrides(KETAMINE, _order(weight_kg=170.0))
    assert heavy["max_rate_ml_h"] == 200.0
    with pytest.raises(ConfigurationError, match="device_max_rate_ml_h must be a positive finite rate"):
        kernel_overrides(KETAMINE, STANDARD, device_max_rate_ml_h=math.nan)


def test_the_kernel_refuses_a_rate_above_the_hard_dose_rate() -> None:
    """The real kernel, configured from the library for a 70-kg patient at 1 mg/mL, refuses 141 mL/h
    (2.01 mg/kg/h) at load, and latches an alarm when it is set while infusing."""
    config = kernel_config(**kernel_overrides(KETAMINE, STANDARD))
    assert config.ceiling_ml_h == 140.0
    kernel = _core.SafetyKernel(config)
    kernel.step(0.0, 0.0, 0.0, 0.0)  # first telemetry sample
    with pytest.raises(
        ConfigurationError, match=r"^rate_ml_h 141 is above the hard limit max_rate_ml_h \(140\)$"
    ):
        kernel.load(141.0, STANDARD.vtbi_ml)
    assert kernel.state == "idle"
    kernel.load(STANDARD.rate_ml_h, STANDARD.vtbi_ml, take_up=False)
    kernel.start()
    volume_ml = 0.0
    for tick in range(1, 11):
        out = kernel.step(tick * 0.1, tick * 0.1, volume_ml, 0.0, motor_running=True)
        assert (out.state, out.direction, out.rate_ml_h) == ("running", "forward", pytest.approx(52.5))
        volume_ml += out.rate_ml_h / 3600.0 * 0.1
    with pytest.raises(InterlockError, match="rate_command_invalid"):
        kernel.set_rate(150.0)
    assert "rate_command_invalid" in kernel.alarms
    out = kernel.step(1.1, 1.1, volume_ml, 0.0, motor_running=True)
    assert (out.state, out.direction, out.rate_ml_h) == ("alarm", "hold", 0.0)
    # Within the hard dose rate a change is accepted once the alarm is cleared.
    kernel.acknowledge()
    kernel.set_rate(140.0)


def test_the_kernel_refuses_a_volume_above_what_the_windows_leave() -> None:
    """2.2 mg/kg given this week: (3.0 × 1.02 − 2.2) × 70 kg = 60.2 mg left (the cap's 2 % delivery
    tolerance included); the kernel refuses 61 mL at 1 mg/mL."""
    order = Order.infusion(
        weight_kg=70.0,
        concentration_mg_per_ml=1.0,
        dose_mg_per_kg=0.5,
        duration_min=40.0,
        given_7d_mg=154.0,
        hours_since_last_start=50.0,
        sessions_in_7_days=3,
    )
    (finding,) = check(KETAMINE, order)
    assert (finding.kind, finding.severity) == ("cumulative_7d_mg_per_kg", "soft")
    overrides = kernel_overrides(KETAMINE, order)
    assert KETAMINE.cap_tolerance_pct == 2.0
    assert overrides["hard_cap_mg"] == pytest.approx(60.2)
    kernel = _core.SafetyKernel(kernel_config(**overrides, syringe_capacity_ml=100.0, syringe_fill_ml=62.0))
    with pytest.raises(
        ConfigurationError, match=r"^vtbi_ml 61 is above the hard limit hard_cap_mg \(60\.2\)$"
    ):
        kernel.load(52.5, 61.0)
    kernel.load(52.5, order.vtbi_ml)
    assert kernel.state == "armed"


# ----- property: the core agrees with the file --------------------------------------------------------

_FLOORS_STRICT = {"weight_kg", "dosing_weight_kg", "concentration_mg_per_ml", "dose_mg_per_kg"}
_FLOORS_STRICT |= {"dose_rate_mg_per_kg_h", "duration_min", "vtbi_ml", "height_cm", "bmi_kg_m2"}
_FLOORS_STRICT |= {"dosing_weight_pct"}
_DELIVERED = {
    "concentration_mg_per_ml",
    "dose_mg_per_kg",
    "dose_rate_mg_per_kg_h",
    "bolus_mg_per_kg",
    "bolus_rate_mg_per_kg_min",
    "cumulative_1h_mg_per_kg",
    "cumulative_4h_mg_per_kg",
    "cumulative_7d_mg_per_kg",
    "vtbi_ml",
}


def _outside_hard_bounds(entry: DrugEntry, kind: str, value: float, order: dict[str, Any]) -> bool:
    """Whether ``value`` is outside what the file (and the documented floors) allow, hard."""
    if not math.isfinite(value):
        return True
    if kind in _FLOORS_STRICT:
        floor_ok = value > 0
    elif kind.startswith("cumulative_"):
        # The total must include this order's dose (if the dose is a number: else it must not be negative).
        dose = order["dose_mg_per_kg"]
        floor_ok = value >= (dose if math.isfinite(dose) else 0.0)
    elif kind == "sessions_in_7_days":
        floor_ok = value >= 1
    else:
        floor_ok = value >= 0
    limit = entry.limit(kind)
    hard_max = limit.hard_max if limit.hard_max is not None else (0.0 if kind in _DELIVERED else math.inf)
    if kind.startswith("cumulative_"):
        hard_max *= 1 + entry.cap_tolerance_pct / 100  # the documented delivery tolerance of the caps
    hard_min = limit.hard_min if limit.hard_min is not None else -math.inf
    return not (floor_ok and hard_min <= value <= hard_max)


def _values(upper: float) -> st.SearchStrategy[float]:
    return st.one_of(
        st.floats(min_value=-0.1 * upper, max_value=1.5 * upper),
        st.sampled_from([0.0, upper, math.nan, math.inf, -math.inf]),
        st.floats(allow_nan=True, allow_infinity=True),
    )


orders = st.builds(
    Order,
    weight_kg=_values(300.0),
    concentration_mg_per_ml=_values(12.0),
    dose_mg_per_kg=_values(1.2),
    dose_rate_mg_per_kg_h=_values(2.5),
    duration_min=_values(150.0),
    vtbi_ml=_values(150.0),
    dosing_weight_kg=st.none() | _values(300.0),
    bolus_mg_per_kg=_values(0.3),
    bolus_rate_mg_per_kg_min=_values(0.15),
    cumulative_1h_mg_per_kg=st.none() | _values(1.2),
    cumulative_4h_mg_per_kg=st.none() | _values(1.2),
    cumulative_7d_mg_per_kg=st.none() | _values(3.5),
    hours_since_last_start=st.none() | _values(60.0),
    sessions_in_7_days=st.integers(min_value=0, max_value=6),
    height_cm=st.none() | _values(260.0),
    bmi_kg_m2=st.none() | _values(90.0),
    weight_change_pct=st.none() | _values(60.0),
    dosing_weight_pct=st.none() | _values(100.0),
)


@settings(max_examples=400, deadline=None)
@given(order=orders, strict=st.booleans())
def test_no_hard_finding_means_within_the_hard_bounds_of_the_file(order: Order, strict: bool) -> None:
    entry = STRICT if strict else KETAMINE
    values = order.as_dict()
    hard = {f.kind for f in check(entry, order) if f.severity == "hard"}
    for kind in KINDS:
        value = values[kind]
        if value is None:  # no previous session; the actual weight is the dosing weight
            assert kind not in hard
            continue
        outside = _outside_hard_bounds(entry, kind, float(value), values)
        assert (kind in hard) == outside, (kind, value)
    if not hard:
        # No hard finding ⇒ each value is within its hard bounds, and the kernel settings exist.
        assert all(
            not _outside_hard_bounds(entry, k, float(values[k]), values)
            for k in KINDS
            if values[k] is not None
        )
        if values["dose_mg_per_kg"] >= 1e-9:  # smaller doses vanish in the window totals' rounding
            overrides = kernel_overrides(entry, order)
            assert overrides["max_rate_ml_h"] > 0 and overrides["hard_cap_mg"] > 0
