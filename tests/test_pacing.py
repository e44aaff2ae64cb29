"""Slowing down re-plans the rest of the dose (``ketapump.clinical.pacing``): never faster than the plan,
the dose unchanged, the time it takes and what a time budget allows, on plain and phased plans."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump.clinical.pacing import PLAN, Pace, time_to_finish, volume_within
from ketapump.clinical.protocol import DosePlan, Patient, load_protocol, plan_dose

PATIENT = Patient("p", weight_kg=70.0, height_cm=175.0, sex="male")
FLAT = plan_dose(load_protocol("ketamine-depression"), PATIENT)  # 35 mL at 52.5 mL/h over 40 min
TAPERED = plan_dose(load_protocol("ketamine-depression-tapered"), PATIENT)


def test_a_pace_never_runs_faster_than_the_plan() -> None:
    assert PLAN.rate(52.5) == 52.5 and not PLAN.slowed
    assert Pace(fraction=0.5).rate(52.5) == 26.25
    assert Pace(cap_ml_h=20.0).rate(52.5) == 20.0 and Pace(cap_ml_h=20.0).rate(10.0) == 10.0
    assert Pace(fraction=0.5).describe() == "50 % of the plan"
    assert Pace(cap_ml_h=20.0).describe() == "at most 20 mL/h"
    for bad in ({"fraction": 0.0}, {"fraction": 1.5}, {"cap_ml_h": 0.0}, {"fraction": math.nan}):
        with pytest.raises(ValueError):
            Pace(**bad)


def test_half_the_rate_takes_twice_the_time_for_the_rest() -> None:
    assert time_to_finish(FLAT, 0.0, PLAN) == pytest.approx(2400.0)
    assert time_to_finish(FLAT, 17.5, PLAN) == pytest.approx(1200.0)
    assert time_to_finish(FLAT, 17.5, Pace(fraction=0.5)) == pytest.approx(2400.0)
    assert time_to_finish(FLAT, 35.0, Pace(fraction=0.5)) == pytest.approx(0.0, abs=1e-6)


def test_a_time_budget_gives_what_the_pace_delivers_in_it() -> None:
    half = Pace(fraction=0.5)
    # 10 min at 26.25 mL/h is 4.375 mL; more time than the rest needs gives the rest, never more.
    assert volume_within(FLAT, 17.5, half, 600.0) == pytest.approx(4.375, rel=1e-3)
    assert volume_within(FLAT, 17.5, half, 10_000.0) == pytest.approx(17.5, rel=1e-6)
    assert volume_within(FLAT, 17.5, half, 0.0) == 0.0


def test_a_cap_only_slows_the_part_of_a_taper_above_it() -> None:
    hold = TAPERED.peak_rate_ml_h
    cap = Pace(cap_ml_h=0.8 * hold)
    stretched = time_to_finish(TAPERED, 0.0, cap)
    assert TAPERED.duration_min * 60.0 < stretched < TAPERED.duration_min * 60.0 / 0.8


@settings(max_examples=60, derandomize=True)
@given(
    plan=st.sampled_from([FLAT, TAPERED]),
    done=st.floats(0.0, 1.0),
    fraction=st.floats(0.1, 1.0),
    budget_s=st.floats(0.0, 7200.0),
)
def test_the_rest_of_the_dose_is_never_more_than_the_rest_and_all_of_it_given_time(
    plan: DosePlan, done: float, fraction: float, budget_s: float
) -> None:
    delivered = done * plan.volume_ml
    pace = Pace(fraction=fraction)
    rest = plan.volume_ml - delivered
    finish = time_to_finish(plan, delivered, pace)
    assert finish >= time_to_finish(plan, delivered, PLAN) - 1e-6
    within = volume_within(plan, delivered, pace, budget_s)
    assert 0.0 <= within <= rest + 1e-9
    if budget_s >= finish + 1.0:
        assert within == pytest.approx(rest, rel=1e-3, abs=1e-3)
