"""Hand-computed unit tests of the pure-Python reference model (``ketapump.reference``).

Every expected value is worked out in the comment next to it, from the formulas in ``clamp.rs``,
``controller.rs`` and ``kernel.rs``; none is copied from running the code.
"""

from __future__ import annotations

import math

import pytest

from ketapump.config import default_kernel_settings
from ketapump.errors import ConfigurationError, InterlockError, StateTransitionError
from ketapump.reference import (
    ALARMS,
    ControlStatus,
    Gains,
    ReferenceController,
    ReferenceKernel,
    clamp_rate,
)

# Limits used by the clamp tests: ceiling 0.1 mL/s, 10 mL left, 0.1 s period.
MAX, HEADROOM, PERIOD = 0.1, 10.0, 0.1

# Gains used by the controller tests (those of controller.rs's own tests).
GAINS = Gains(kp_per_s=2.0, ki_per_s2=0.5, integral_limit_ml_s=0.01, slew_ml_s_per_s=1.0, max_ml_s=0.33)


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-15)


# ----- clamp_rate -----------------------------------------------------------------------------------


def test_clamp_passes_a_request_inside_every_limit() -> None:
    # capped = min(0.05, 0.1) = 0.05; headroom rate = 10 / 0.1 = 100; 0.05 <= 100 and 0.05 <= 0.1.
    assert clamp_rate(0.05, MAX, HEADROOM, PERIOD) == (0.05, "unchanged")
    # Zero is a valid request: not negative, passes unchanged.
    assert clamp_rate(0.0, MAX, HEADROOM, PERIOD) == (0.0, "unchanged")
    # Exactly at the ceiling: 0.1 > 0.1 is false, so unchanged (not above_max).
    assert clamp_rate(0.1, MAX, HEADROOM, PERIOD) == (0.1, "unchanged")


def test_clamp_cuts_to_the_ceiling() -> None:
    # capped = min(6, 0.1) = 0.1 <= headroom rate 100; 6 > 0.1 so above_max with 0.1.
    assert clamp_rate(6.0, MAX, HEADROOM, PERIOD) == (0.1, "above_max")
    # An infinite headroom is a valid limit (not NaN): headroom rate inf, still above_max.
    assert clamp_rate(6.0, MAX, math.inf, PERIOD) == (0.1, "above_max")


def test_clamp_cuts_the_last_period_to_the_headroom() -> None:
    # headroom rate = 0.25 / 0.5 = 0.5 mL/s (exact in binary); request 0.8 with ceiling 1.0:
    # capped = 0.8 > 0.5, so the rate is 0.5 and one period delivers exactly the 0.25 mL left.
    assert clamp_rate(0.8, 1.0, 0.25, 0.5) == (0.5, "dose_headroom")
    # The request equal to the headroom rate is not cut: 0.5 > 0.5 is false.
    assert clamp_rate(0.5, 1.0, 0.25, 0.5) == (0.5, "unchanged")
    # Headroom wins over the ceiling when both bind: capped = min(6, 1) = 1 > 0.5.
    assert clamp_rate(6.0, 1.0, 0.25, 0.5) == (0.5, "dose_headroom")
    # 0.002 mL over 0.1 s: 0.02 mL/s, below the 0.05 requested.
    rate, reason = clamp_rate(0.05, MAX, 0.002, PERIOD)
    assert reason == "dose_headroom"
    assert rate * PERIOD == approx(0.002)


def test_clamp_refuses_non_finite_and_negative_requests_first() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        # Checked before the limits: even with invalid limits the reason is non_finite.
        assert clamp_rate(bad, MAX, HEADROOM, PERIOD) == (0.0, "non_finite")
        assert clamp_rate(bad, math.nan, math.nan, 0.0) == (0.0, "non_finite")
    assert clamp_rate(-0.01, MAX, HEADROOM, PERIOD) == (0.0, "negative")
    assert clamp_rate(-1.0e300, math.nan, HEADROOM, PERIOD) == (0.0, "negative")


@pytest.mark.parametrize(
    ("max_ml_s", "headroom_ml", "period_s"),
    [
        (math.nan, HEADROOM, PERIOD),
        (0.0, HEADROOM, PERIOD),
        (-1.0, HEADROOM, PERIOD),
        (math.inf, HEADROOM, PERIOD),
        (MAX, math.nan, PERIOD),
        (MAX, HEADROOM, 0.0),
        (MAX, HEADROOM, math.nan),
        (MAX, HEADROOM, math.inf),
    ],
)
def test_clamp_missing_limits_mean_zero(max_ml_s: float, headroom_ml: float, period_s: float) -> None:
    assert clamp_rate(0.05, max_ml_s, headroom_ml, period_s) == (0.0, "no_limit")


def test_clamp_no_headroom_means_zero() -> None:
    # headroom <= 0 (including -inf, which is not NaN so the limits are "valid").
    for headroom in (0.0, -3.0, -math.inf):
        assert clamp_rate(0.05, MAX, headroom, PERIOD) == (0.0, "dose_exhausted")


# ----- ReferenceController --------------------------------------------------------------------------


def test_controller_on_target_output_is_the_feed_forward() -> None:
    c = ReferenceController(GAINS)
    c.reset(0.0)
    # target = 0 + 0.01·1 = 0.01 = measured, so e = 0, P = 0, I = 0: output = setpoint = 0.01.
    s = c.step(0.01, 0.01, 1.0)
    assert s.error_ml == 0.0
    assert s.output_ml_s == 0.01
    assert (s.saturated, s.slew_limited, s.integrating) == (False, False, True)


def test_controller_lagging_volume_raises_the_rate_then_holds_the_integral() -> None:
    c = ReferenceController(GAINS)
    c.reset(0.0)
    # Step 1: target = 0.01, e = 0.01, P = 2·0.01 = 0.02, I = clamp(0 + 0.01·1) = 0.01 (at the limit),
    # ki·I = 0.005: u = 0.01 + 0.02 + 0.005 = 0.035 (inside [0, 0.33], slew ±1).
    s = c.step(0.01, 0.0, 1.0)
    assert s.target_ml == approx(0.01)
    assert s.proportional_ml_s == approx(0.02)
    assert s.integral_ml_s == approx(0.005)
    assert s.output_ml_s == approx(0.035)
    # Step 2: the plunger caught up (measured 0.02 = target 0.02): e = 0, P = 0, I stays 0.01:
    # u = 0.01 + 0 + 0.005 = 0.015; the change 0.035 → 0.015 is within the slew of 1·1.
    s = c.step(0.01, 0.02, 1.0)
    assert s.error_ml == approx(0.0)
    assert s.integral_ml_s == approx(0.005)
    assert s.output_ml_s == approx(0.015)
    assert not s.slew_limited


def test_controller_output_never_negative_when_ahead() -> None:
    c = ReferenceController(GAINS)
    c.reset(1.0)
    # target = 1, e = 1 − 2 = −1, P = −2, candidate I = clamp(−1) = −0.01: u = −2.005 < 0 with e < 0, so
    # anti-windup holds I at 0: sum = 0 − 2 + 0 = −2 → saturated to 0.
    s = c.step(0.0, 2.0, 1.0)
    assert s.output_ml_s == 0.0
    assert s.integral_ml_s == 0.0
    assert s.saturated
    assert not s.integrating


def test_controller_anti_windup_holds_integral_when_saturated_high() -> None:
    c = ReferenceController(Gains(2.0, 0.5, 0.01, 1.0e9, 0.33))
    c.reset(0.0)
    # target = 0.3, e = 0.3, P = 0.6, candidate I = clamp(0.3) = 0.01: u = 0.3 + 0.6 + 0.005 = 0.905 > 0.33
    # with e > 0: hold I at 0. sum = 0.9 → 0.33.
    s = c.step(0.3, 0.0, 1.0)
    assert s == ControlStatus(
        target_ml=0.3,
        error_ml=0.3,
        feed_forward_ml_s=0.3,
        proportional_ml_s=0.6,
        integral_ml_s=0.0,
        output_ml_s=0.33,
        saturated=True,
        slew_limited=False,
        integrating=False,
    )


def test_controller_integral_is_bounded() -> None:
    c = ReferenceController(Gains(0.0, 0.5, 0.01, 1.0e9, 100.0))
    c.reset(0.0)
    # kp = 0, e = 0 − (−1) = 1 every step: I would grow by 1 per step but is clamped to 0.01,
    # so the integral term is 0.5·0.01 = 0.005 from the first step on.
    for _ in range(5):
        s = c.step(0.0, -1.0, 1.0)
        assert s.integral_ml_s == approx(0.005)
        assert s.output_ml_s == approx(0.005)


def test_controller_slew_limits_the_change_per_step() -> None:
    c = ReferenceController(Gains(2.0, 0.5, 0.01, 0.01, 0.33))
    c.reset(0.0)
    # target = 0.1, e = 0.1, P = 0.2, u = 0.2 + 0.2 + 0.005 > 0.33 → held I, sum 0.4 → 0.33; slew
    # limit 0.01·0.5 = 0.005 from a stopped motor: output 0.005.
    s = c.step(0.2, 0.0, 0.5)
    assert s.slew_limited
    assert s.output_ml_s == approx(0.005)
    # Next step, same inputs: the limit moves with the last output: at most 0.005 + 0.005 = 0.01.
    s = c.step(0.2, 0.0, 0.5)
    assert s.output_ml_s == approx(0.01)


def test_controller_refuses_bad_input_without_changing_state() -> None:
    c = ReferenceController(GAINS)
    c.reset(0.0)
    c.step(0.01, 0.0, 1.0)
    before = (c.target_ml, c.integral_ml_s, c.last_output_ml_s)
    for args, name in [
        ((math.nan, 0.0, 0.1), "setpoint_ml_s"),
        ((0.01, math.inf, 0.1), "measured_ml"),
        ((0.01, 0.0, math.nan), "dt_s"),
        ((-0.01, 0.0, 0.1), "setpoint_ml_s"),
        ((0.01, 0.0, -0.1), "dt_s"),
    ]:
        with pytest.raises(ConfigurationError) as info:
            c.step(*args)
        assert info.value.field == name
    assert (c.target_ml, c.integral_ml_s, c.last_output_ml_s) == before


def test_controller_reset_forgets_history_so_no_catch_up() -> None:
    c = ReferenceController(GAINS)
    c.reset(0.0)
    c.step(0.01, 0.0, 10.0)
    c.reset(3.0)
    # After reset: target = 3, I = 0, last output 0; dt = 0 means a slew window of 0: output 0.
    s = c.step(0.01, 3.0, 0.0)
    assert s.error_ml == 0.0
    assert s.output_ml_s == 0.0


# ----- ReferenceKernel (a few hand-checked points) ----------------------------------------------------


def kernel(**overrides: float | bool) -> ReferenceKernel:
    settings = default_kernel_settings()
    settings.update(overrides)
    return ReferenceKernel(settings)


def test_kernel_derives_units_like_from_raw() -> None:
    cfg = kernel().config
    # Bore 26.59 mm: area = π·26.59²/4 = 555.30 mm² = 0.55530 mL/mm; / 3200 counts/mm = 1.7353e-4 mL.
    assert cfg.volume_quantum_ml == pytest.approx(1.7353e-4, rel=1e-4)
    # Ceiling min(120, 200, 1200) = 120 mL/h = 0.03333 mL/s; take-up min(120, 120)/3600 likewise.
    assert cfg.max_rate_ml_s == approx(120.0 / 3600.0)
    assert cfg.take_up_rate_ml_s == approx(120.0 / 3600.0)
    # Back-off 300 mL/h is above the 120 mL/h ceiling, so it is cut to 0.03333 mL/s; slew 1e6 mL/h/s =
    # 277.78 mL/s/s.
    assert cfg.backoff_rate_ml_s == approx(120.0 / 3600.0)
    assert kernel(backoff_rate_ml_h=60.0).config.backoff_rate_ml_s == approx(60.0 / 3600.0)
    assert cfg.slew_ml_s_per_s == approx(1.0e6 / 3600.0)
    # A take-up rate above the ceiling is cut to the ceiling.
    assert kernel(take_up_rate_ml_h=600.0).config.take_up_rate_ml_s == approx(120.0 / 3600.0)


@pytest.mark.parametrize(
    ("rate", "vtbi", "field", "problem"),
    [
        (math.nan, 10.0, "rate_ml_h", "must be a finite number"),
        (-1.0, 10.0, "rate_ml_h", "is below the allowed minimum"),
        (0.0, 10.0, "rate_ml_h", "is below the allowed minimum"),
        (2_500.0, 10.0, "rate_ml_h", "is above the allowed maximum"),
        (121.0, 10.0, "rate_ml_h", "is above the hard limit max_rate_ml_h"),
        (10.0, math.inf, "vtbi_ml", "must be a finite number"),
        (10.0, 0.0, "vtbi_ml", "is below the allowed minimum"),
        (10.0, 1_001.0, "vtbi_ml", "is above the allowed maximum"),
        (10.0, 51.0, "vtbi_ml", "is inconsistent with syringe_fill_ml"),
    ],
)
def test_kernel_load_validates_the_program(rate: float, vtbi: float, field: str, problem: str) -> None:
    k = kernel()
    with pytest.raises(ConfigurationError) as info:
        k.load(rate, vtbi)
    assert (info.value.field, info.value.problem) == (field, problem)
    assert k.state == "idle"
    assert k.drain_trace() == []


def test_kernel_load_respects_the_cumulative_cap() -> None:
    # 30 mg already given + 50 mL at 2 mg/mL = 130 mg > 120 mg cap; 45 mL gives 120 mg, which is allowed.
    k = kernel(concentration_mg_per_ml=2.0, prior_delivered_mg=30.0)
    with pytest.raises(ConfigurationError) as info:
        k.load(10.0, 50.0)
    assert (info.value.field, info.value.problem) == ("vtbi_ml", "is above the hard limit hard_cap_mg")
    k.load(10.0, 45.0)
    assert k.state == "armed"


def test_kernel_first_infusing_ticks_by_hand() -> None:
    # The per-tick PI (no deadband, no hold) with the gains the arithmetic below uses.
    k = kernel(kp_per_s=2.0, ki_per_s2=0.5, control_deadband_counts=0.0, control_hold_s=0.0)
    k.load(36.0, 1.0, take_up=False)  # 36 mL/h = 0.01 mL/s
    out = k.step(0.0, 0.0, 0.0, 0.0)
    assert (out.state, out.direction, out.clamp) == ("armed", "hold", "unchanged")
    k.start()
    out = k.step(0.1, 0.1, 0.0, 0.0)
    # First infusing tick after a start: the controller restarts on target (reset to 0 − 0.01·0.1, so
    # this step's target lands on the measured 0): e ≈ 0, output = feed-forward 0.01 mL/s = 36 mL/h.
    assert (out.state, out.direction, out.clamp) == ("running", "forward", "unchanged")
    assert out.rate_ml_h == pytest.approx(36.0, rel=1e-12)
    assert out.remaining_ml == 1.0
    out = k.step(0.3, 0.3, 0.0024, 0.0)
    # Without a take-up the plunger's first motion ends the run-in: the controller restarts on target
    # there (target = measured 0.0024), so this tick is the feed-forward again.
    assert out.rate_ml_h == pytest.approx(36.0, rel=1e-12)
    assert out.delivered_ml == pytest.approx(0.0024, rel=1e-12)
    out = k.step(0.5, 0.5, 0.0048, 0.0)
    # dt = 0.2: target = 0.0024 + 0.01·0.2 = 0.0044, measured 0.0048 (ahead): e = −0.0004, P = 2·e =
    # −0.0008, I = e·0.2 = −0.00008 → ki·I = −0.00004: u = 0.01 − 0.0008 − 0.00004 = 0.00916 mL/s =
    # 32.976 mL/h, inside every limit (headroom rate min(0.9952 mL, 1.018 mL) / 0.1 s ≈ 10 mL/s).
    assert out.rate_ml_h == pytest.approx(32.976, rel=1e-9)
    assert out.delivered_ml == pytest.approx(0.0048, rel=1e-12)
    assert out.remaining_ml == pytest.approx(0.9952, rel=1e-12)
    # 0.01 mL/s held from 0.1 s to 0.5 s: 0.004 mL commanded.
    assert k.commanded_ml == pytest.approx(0.004, rel=1e-12)
    assert [(e.from_state, e.to_state, e.cause) for e in k.drain_trace()] == [
        ("idle", "armed", "load"),
        ("armed", "running", "start"),
    ]


def test_kernel_operator_errors() -> None:
    k = kernel()
    with pytest.raises(StateTransitionError) as transition:
        k.start()
    assert (transition.value.state, transition.value.command) == ("idle", "start")
    k.load(60.0, 5.0)
    k.step(0.0, 0.0, 0.0, 0.0)
    k.start()
    with pytest.raises(InterlockError) as interlock:
        k.set_rate(60.0 * 60.0)  # a unit slip (mL/min typed as mL/h): refused and latched
    assert interlock.value.alarm == "rate_command_invalid"
    assert interlock.value.detail == "rate_ml_h is above the allowed maximum"
    assert k.state == "alarm"
    assert k.alarms == ("rate_command_invalid",)
    with pytest.raises(StateTransitionError):
        k.set_rate(30.0)  # not while in alarm
    k.acknowledge()
    assert (k.state, k.alarms) == ("stopped", ())


def test_alarm_names_are_in_code_order() -> None:
    assert ALARMS[0] == "overdose"
    assert ALARMS[5] == "occlusion_pressure"
    assert ALARMS[14] == "clock_invalid"
    assert ALARMS[-1] == "encoder_mismatch"
    assert len(ALARMS) == 16
