"""Properties of the safety kernel over the Python API, for any sequence of samples and commands.

The plant in these tests is ideal: the plunger follows every command exactly and the encoder quantises
the volume. Samples are then corrupted at random (NaN, ∞, negative, huge, stale, repeated and reordered
timestamps, creeping volume), and operator commands — valid or not — are interleaved.

Invariants checked at every tick:
- the command is finite, ≥ 0, ≤ the ceiling; ``hold`` exactly when zero; forward only while running,
  retract only in alarm;
- the motor volume commanded by a program never exceeds VTBI × (1 + tolerance) plus the take-up bound
  plus what compliance stores below the occlusion threshold (with the loop contract: ticks no further
  apart than the control period);
- invalid input in a monitored state ends in a latched alarm, never an exception;
- alarms stay latched until acknowledged, and nothing runs between an alarm and its acknowledgement.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ketapump import _core
from ketapump.config import default_kernel_settings, kernel_config
from ketapump.errors import KetapumpError
from ketapump.reference.f64 import PRESSURE_MAX_MMHG, PRESSURE_MIN_MMHG, VOLUME_MAX_ML, VOLUME_MIN_ML

DEFAULTS = default_kernel_settings()
PERIOD = DEFAULTS["control_period_s"]
MONITORED = {"armed", "running", "paused", "alarm", "stopped"}
# Values outside the kernel's plausibility bounds (a pressure of -5 mmHg is a reading: see `siphon`).
GARBAGE_VOLUME = [math.nan, math.inf, -math.inf, -1.0e9, 1.0e12, VOLUME_MIN_ML - 1.0, VOLUME_MAX_ML + 1.0]
GARBAGE_PRESSURE = [
    *[math.nan, math.inf, -math.inf, -1.0e9, 1.0e12],
    *[PRESSURE_MIN_MMHG - 1.0, PRESSURE_MAX_MMHG + 1.0],
]

OPERATOR = st.sampled_from(
    ["none"] * 60
    + ["start", "pause", "resume", "stop", "acknowledge", "silence", "unload", "load", "set_rate"]
)
SAMPLE = st.sampled_from(
    ["good"] * 60
    + ["nan_volume", "inf_pressure", "garbage_volume", "garbage_pressure", "stale", "reordered", "repeat"]
    + ["creep", "air", "no_syringe", "end_of_travel", "high_pressure", "siphon", "future"]
)
RATES = st.one_of(
    st.floats(min_value=0.1, max_value=120.0),
    st.sampled_from([52.5 * 60, 52.5 * 1000, 0.0, -1.0, math.nan, math.inf]),
)


@dataclass
class Plant:
    """An ideal syringe: the plunger follows the command; the encoder quantises."""

    quantum_ml: float
    volume_ml: float = 0.0
    extra_ml: float = 0.0
    motor_ml: float = 0.0  # forward motor volume since load
    history: list[str] = field(default_factory=list)

    def advance(self, direction: str, rate_ml_h: float, dt_s: float) -> None:
        moved = rate_ml_h / 3600.0 * dt_s
        if direction == "forward":
            self.volume_ml += moved
            self.motor_ml += moved
        elif direction == "retract":
            self.volume_ml -= moved

    def encoder_ml(self) -> float:
        return math.floor((self.volume_ml + self.extra_ml) / self.quantum_ml) * self.quantum_ml


def apply_operator(kernel: _core.SafetyKernel, action: str, rate: float, vtbi: float) -> None:
    """Runs one operator command; refusals are expected and must be ketapump errors."""
    calls = {
        "start": kernel.start,
        "pause": kernel.pause,
        "resume": kernel.resume,
        "stop": kernel.stop,
        "acknowledge": kernel.acknowledge,
        "silence": kernel.silence,
        "unload": kernel.unload,
        "load": lambda: kernel.load(52.5, vtbi),
        "set_rate": lambda: kernel.set_rate(rate),
    }
    if action == "none":
        return
    with contextlib.suppress(KetapumpError):
        calls[action]()


def make_sample(
    kind: str, now: float, last_t: float, plant: Plant
) -> tuple[float, float, float, dict[str, bool]]:
    """Returns (t_s, volume_ml, pressure_mmhg, flags) for a sample of the given kind."""
    t, volume, pressure, flags = now, plant.encoder_ml(), 20.0, {}
    if kind == "nan_volume":
        volume = math.nan
    elif kind == "inf_pressure":
        pressure = math.inf
    elif kind == "garbage_volume":
        volume = GARBAGE_VOLUME[int(now * 10) % len(GARBAGE_VOLUME)]
    elif kind == "garbage_pressure":
        pressure = GARBAGE_PRESSURE[int(now * 10) % len(GARBAGE_PRESSURE)]
    elif kind == "stale":
        t = now - 10.0
    elif kind == "reordered":
        t = last_t - 0.05
    elif kind == "repeat":
        t = last_t
    elif kind == "future":
        t = now + 5.0
    elif kind == "creep":
        plant.extra_ml += 0.05
        volume = plant.encoder_ml()
    elif kind == "air":
        flags["air_in_line"] = True
    elif kind == "no_syringe":
        flags["syringe_present"] = False
    elif kind == "end_of_travel":
        flags["end_of_travel"] = True
    elif kind == "high_pressure":
        pressure = 900.0
    elif kind == "siphon":
        pressure = -5.0  # the syringe below the patient: below zero, and plausible
    return t, volume, pressure, flags


def is_invalid(kind: str) -> bool:
    return kind in {"nan_volume", "inf_pressure", "garbage_volume", "garbage_pressure", "reordered", "future"}


# Found by the random search: the oracle once took -5 mmHg for garbage (the kernel rightly accepted it).
RAMP_THEN_AIR_THEN_GARBAGE = [
    *[("none", "good", dt, 1.0) for dt in (0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.01, 0.01, 0.01)],
    ("none", "air", 0.01, 1.0),
    ("none", "garbage_pressure", 0.1, 1.0),
]


@settings(max_examples=150, deadline=None)
@example(vtbi=1.0, take_up=False, script=RAMP_THEN_AIR_THEN_GARBAGE)
@example(vtbi=1.0, take_up=False, script=[*RAMP_THEN_AIR_THEN_GARBAGE[:-1], ("none", "siphon", 0.1, 1.0)])
@given(
    vtbi=st.floats(min_value=0.5, max_value=50.0),
    take_up=st.booleans(),
    script=st.lists(
        st.tuples(OPERATOR, SAMPLE, st.sampled_from([PERIOD, PERIOD / 2, PERIOD / 10, 0.0]), RATES),
        min_size=1,
        max_size=400,
    ),
)
def test_invariants_hold_for_any_sequence(
    vtbi: float, take_up: bool, script: list[tuple[str, str, float, float]]
) -> None:
    cfg = kernel_config()
    ceiling = cfg.ceiling_ml_h
    kernel = _core.SafetyKernel(cfg)
    plant = Plant(quantum_ml=cfg.volume_quantum_ml)
    kernel.load(52.5, vtbi, take_up=take_up)
    now, last_t = 0.0, 0.0
    out = kernel.step(now, now, plant.encoder_ml(), 20.0)
    kernel.start()
    alarm_unacknowledged = False
    latched: set[str] = set()
    for action, kind, dt, rate in script:
        before = kernel.state
        apply_operator(kernel, action, rate, vtbi)
        if action == "load" and before != kernel.state:
            plant.motor_ml = 0.0
        if action == "acknowledge" and kernel.state == "stopped" and before == "alarm":
            alarm_unacknowledged = False
            latched = set()
        plant.advance(out.direction, out.rate_ml_h, dt)
        now += dt
        t, volume, pressure, flags = make_sample(kind, now, last_t, plant)
        monitored = kernel.state in MONITORED
        out = kernel.step(now, t, volume, pressure, **flags)
        if not is_invalid(kind) and kind != "stale":
            last_t = max(last_t, t)

        # The command is always a safe number.
        assert math.isfinite(out.rate_ml_h)
        assert 0.0 <= out.rate_ml_h <= ceiling + 1e-9
        assert (out.direction == "hold") == (out.rate_ml_h == 0.0)
        if out.direction == "forward":
            assert out.state == "running"
        if out.direction == "retract":
            assert out.state == "alarm"
        # Motor volume commanded by the program stays inside the dose tolerance plus the take-up bound.
        stored = DEFAULTS["compliance_ml_per_mmhg"] * DEFAULTS["occlusion_threshold_mmhg"]
        bound = vtbi * (1 + DEFAULTS["dose_tolerance"]) + DEFAULTS["take_up_max_ml"] + stored
        assert plant.motor_ml <= bound + 1e-9
        # Invalid input in a monitored state ends in a latched alarm.
        if monitored and is_invalid(kind):
            assert out.state == "alarm"
            assert "telemetry_invalid" in out.alarms
        # Latching: alarms only accumulate until acknowledged; nothing runs in between.
        assert latched <= set(out.alarms)
        latched = set(out.alarms)
        if out.state == "alarm":
            alarm_unacknowledged = True
        if alarm_unacknowledged:
            assert out.state in {"alarm"}, (action, kind, out)


@settings(max_examples=200, deadline=None)
@example(pressure=-5.0, volume=0.0, air=True)
@example(pressure=PRESSURE_MIN_MMHG, volume=VOLUME_MIN_ML, air=False)
@example(pressure=PRESSURE_MAX_MMHG, volume=VOLUME_MAX_ML, air=False)
@example(pressure=math.nextafter(PRESSURE_MIN_MMHG, -math.inf), volume=0.0, air=False)
@example(pressure=0.0, volume=math.nextafter(VOLUME_MAX_ML, math.inf), air=False)
@given(
    pressure=st.one_of(st.floats(min_value=PRESSURE_MIN_MMHG, max_value=PRESSURE_MAX_MMHG), st.floats()),
    volume=st.one_of(st.floats(min_value=VOLUME_MIN_ML, max_value=VOLUME_MAX_ML), st.floats()),
    air=st.booleans(),
)
def test_a_sample_is_invalid_exactly_when_a_reading_is_outside_the_plausible_bounds(
    pressure: float, volume: float, air: bool
) -> None:
    """The first sample of a newly loaded syringe: no earlier position to jump from, so only the bounds
    decide; an implausible sample's flags are not believed either."""
    kernel = _core.SafetyKernel(kernel_config())
    kernel.load(52.5, 35.0)
    out = kernel.step(0.0, 0.0, volume, pressure, air_in_line=air)
    plausible = (
        PRESSURE_MIN_MMHG <= pressure <= PRESSURE_MAX_MMHG and VOLUME_MIN_ML <= volume <= VOLUME_MAX_ML
    )
    assert ("telemetry_invalid" in out.alarms) == (not plausible), out
    assert ("air_in_line" in out.alarms) == (air and plausible), out


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.1, -0.1, 1e300])
            ),
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_arbitrary_floats_never_crash_and_never_exceed_the_ceiling(
    steps: list[tuple[float, float, float, float]],
) -> None:
    cfg = kernel_config()
    kernel = _core.SafetyKernel(cfg)
    kernel.load(52.5, 35.0)
    kernel.step(0.0, 0.0, 0.0, 20.0)  # the plunger's position: a start needs it
    kernel.start()
    now = 0.0
    for dt, t, volume, pressure in steps:
        now = now + dt if math.isfinite(now + dt) else dt
        out = kernel.step(now, t, volume, pressure)
        assert math.isfinite(out.rate_ml_h)
        assert 0.0 <= out.rate_ml_h <= cfg.ceiling_ml_h
        if out.state != "running":
            assert out.direction in {"hold", "retract"}


@settings(max_examples=200, deadline=None)
@given(
    requested=st.floats(allow_nan=True, allow_infinity=True),
    max_ml_s=st.floats(allow_nan=True, allow_infinity=True),
    headroom=st.floats(allow_nan=True, allow_infinity=True),
    period=st.floats(allow_nan=True, allow_infinity=True),
)
# Found by hypothesis: a subnormal headroom rate rounded so one period delivered more than the headroom.
@example(requested=1.0, max_ml_s=1.0, headroom=4.3496695075888296e-244, period=1.6811467107373967e75)
def test_clamp_is_always_in_range(requested: float, max_ml_s: float, headroom: float, period: float) -> None:
    rate, reason = _core.clamp_rate(requested, max_ml_s, headroom, period)
    assert math.isfinite(rate)
    assert rate >= 0.0
    if rate > 0.0:
        assert rate <= max_ml_s
        assert rate * period <= headroom
    else:
        assert reason in {
            "non_finite",
            "negative",
            "no_limit",
            "dose_exhausted",
            "unchanged",
            "dose_headroom",
        }


def test_end_of_dose_stops_within_one_tick() -> None:
    """A full program on the ideal plant completes and delivers within one step-volume of the VTBI."""
    cfg = kernel_config()
    kernel = _core.SafetyKernel(cfg)
    plant = Plant(quantum_ml=cfg.volume_quantum_ml)
    vtbi = 2.0
    kernel.load(52.5, vtbi, take_up=False)
    now = 0.0
    out = kernel.step(now, now, 0.0, 20.0)
    kernel.start()
    for _ in range(20_000):
        plant.advance(out.direction, out.rate_ml_h, PERIOD)
        now += PERIOD
        out = kernel.step(now, now, plant.encoder_ml(), 20.0)
        if out.state == "complete":
            break
    assert out.state == "complete", out
    step_volume = 52.5 / 3600 * PERIOD
    assert abs(plant.volume_ml - vtbi) <= step_volume
    # The next tick commands nothing.
    now += PERIOD
    assert kernel.step(now, now, plant.encoder_ml(), 20.0).direction == "hold"


def test_overflowing_time_step_raises_a_clock_alarm_not_a_panic() -> None:
    """Regression: finite times whose difference overflows once poisoned the controller and panicked."""
    kernel = _core.SafetyKernel(kernel_config())
    kernel.load(52.5, 35.0)
    kernel.step(-1e308, -1e308, 0.0, 20.0)
    kernel.start()
    for _ in range(3):
        out = kernel.step(1e308, 1e308, 0.0, 20.0)
        assert out.direction == "hold"
    assert "clock_invalid" in kernel.alarms
