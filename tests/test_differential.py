"""Differential tests: the Rust kernel (``ketapump._core``) against the pure-Python reference model.

Randomized scenarios (hypothesis) drive both implementations with the same operator commands and the
same telemetry, produced by a small ideal syringe plant with random perturbations: occlusion pressure
ramps, stalls, encoder slips, NaN/inf/negative/implausible values, repeated, reordered, future and
missing timestamps, clock faults and operator commands with invalid arguments. At every tick the
discrete outputs (direction, state, alarms, raised, clamp, near_empty, annunciate, trace) must be
identical and the float outputs must agree within ``ketapump.reference.TOLERANCE``; every operator
command must raise the same exception (class and attributes) in both.

The number of random scenarios per test is ``KETAPUMP_DIFF_EXAMPLES`` (default 200).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

core = pytest.importorskip("ketapump._core")

from ketapump.config import default_kernel_settings, kernel_config  # noqa: E402
from ketapump.errors import (  # noqa: E402
    ConfigurationError,
    InterlockError,
    KetapumpError,
    StateTransitionError,
)
from ketapump.reference import (  # noqa: E402
    ALARMS,
    TOLERANCE,
    Gains,
    ReferenceController,
    ReferenceKernel,
    clamp_rate,
)

EXAMPLES = int(os.environ.get("KETAPUMP_DIFF_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

STEP_FIELDS_EXACT = ("direction", "state", "alarms", "raised", "clamp", "near_empty", "annunciate")
STEP_FIELDS_CLOSE = ("rate_ml_h", "delivered_ml", "remaining_ml")
CONTROL_FIELDS_EXACT = ("saturated", "slew_limited", "integrating", "held")
CONTROL_FIELDS_CLOSE = (
    "target_ml",
    "error_ml",
    "feed_forward_ml_s",
    "proportional_ml_s",
    "integral_ml_s",
    "output_ml_s",
)
ERROR_ATTRIBUTES: dict[type[KetapumpError], tuple[str, ...]] = {
    ConfigurationError: ("field", "problem"),
    StateTransitionError: ("state", "command", "why"),
    InterlockError: ("alarm", "detail"),
}


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)


def error_signature(error: BaseException | None) -> tuple[Any, ...] | None:
    if error is None:
        return None
    attributes = ERROR_ATTRIBUTES.get(type(error), ())  # type: ignore[call-overload]
    return (type(error), *(getattr(error, name) for name in attributes))


# ----- the pair under test ------------------------------------------------------------------------------


class KernelPair:
    """The Rust kernel and the reference model side by side; every call is made on both and compared."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        raw = default_kernel_settings()
        raw.update(overrides)
        self.config = kernel_config(**overrides)
        self.rust = core.SafetyKernel(self.config)
        self.ref = ReferenceKernel(raw)
        self.tick = 0
        self.log: list[str] = []
        self.seen_states: set[str] = set()
        self.seen_causes: set[str] = set()
        self.seen_clamps: set[str] = set()
        self.seen_directions: set[str] = set()
        self.seen_flags: set[str] = set()

    def where(self) -> str:
        return f"tick {self.tick}; last calls: {self.log[-6:]}"

    def mismatch(self, name: str, rust: Any, ref: Any) -> str:
        return f"{name}: rust {getattr(rust, name)!r} vs reference {getattr(ref, name)!r} at {self.where()}"

    def command(self, name: str, *args: Any) -> bool:
        """Runs an operator command on both; asserts the same outcome. Returns True if it succeeded."""
        self.log.append(f"{name}{args}")
        outcomes: list[BaseException | None] = []
        for kernel in (self.rust, self.ref):
            try:
                getattr(kernel, name)(*args)
            except KetapumpError as error:
                outcomes.append(error)
            else:
                outcomes.append(None)
        rust_error, ref_error = outcomes
        assert error_signature(rust_error) == error_signature(ref_error), (
            f"{name}{args}: rust {rust_error!r} vs reference {ref_error!r} at {self.where()}"
        )
        if rust_error is not None:
            self.seen_flags.add(f"{name} -> {type(rust_error).__name__}")
            if getattr(rust_error, "why", ""):
                self.seen_flags.add(f"{name} -> position unknown")
        self.compare_views()
        return rust_error is None

    def step(self, *args: Any, **flags: bool) -> Any:
        self.log.append(f"step{args}{flags or ''}")
        out = self.rust.step(*args, **flags)
        expected = self.ref.step(*args, **flags)
        for name in STEP_FIELDS_EXACT:
            assert getattr(out, name) == getattr(expected, name), self.mismatch(name, out, expected)
        for name in STEP_FIELDS_CLOSE:
            assert close(getattr(out, name), getattr(expected, name)), self.mismatch(name, out, expected)
        control = getattr(out, "control", None)
        if control is not None:
            for name in CONTROL_FIELDS_EXACT:
                assert getattr(control, name) == getattr(expected.control, name), (
                    f"control.{name} {self.where()}"
                )
            for name in CONTROL_FIELDS_CLOSE:
                assert close(getattr(control, name), getattr(expected.control, name)), (
                    f"control.{name}: rust {getattr(control, name)!r} vs reference "
                    f"{getattr(expected.control, name)!r} at {self.where()}"
                )
        self.compare_views()
        self.seen_states.add(out.state)
        self.seen_clamps.add(out.clamp)
        self.seen_directions.add(out.direction)
        if out.near_empty:
            self.seen_flags.add("near_empty")
        if out.alarms and not out.annunciate:
            self.seen_flags.add("silenced")
        self.tick += 1
        return out

    def compare_views(self) -> None:
        assert self.rust.state == self.ref.state, f"state {self.where()}"
        assert tuple(self.rust.alarms) == self.ref.alarms, f"alarms {self.where()}"
        for name in ("delivered_ml", "commanded_ml", "cumulative_mg", "syringe_left_ml"):
            assert close(getattr(self.rust, name), getattr(self.ref, name)), (
                f"{name}: rust {getattr(self.rust, name)!r} vs reference {getattr(self.ref, name)!r} "
                f"at {self.where()}"
            )

    def compare_traces(self) -> None:
        """Drains both trace rings and compares them event by event (and the overflow counts)."""
        assert self.rust.trace_dropped == self.ref.trace_dropped, f"trace_dropped {self.where()}"
        if self.ref.trace_dropped:
            self.seen_flags.add("trace_dropped")
        rust_events = self.rust.drain_trace()
        ref_events = self.ref.drain_trace()
        rust_view = [(e.seq, e.from_state, e.to_state, e.cause) for e in rust_events]
        ref_view = [(e.seq, e.from_state, e.to_state, e.cause) for e in ref_events]
        assert rust_view == ref_view, f"trace: rust {rust_view} vs reference {ref_view} at {self.where()}"
        for r, p in zip(rust_events, ref_events, strict=True):
            assert close(r.t_s, p.t_s), f"trace t_s {r!r} vs {p!r} at {self.where()}"
            assert close(r.delivered_ml, p.delivered_ml), (
                f"trace delivered_ml {r!r} vs {p!r} at {self.where()}"
            )
            self.seen_causes.add(r.cause)


# ----- a small ideal plant -------------------------------------------------------------------------------


@dataclass
class Plant:
    """A syringe on a lead screw with slack, an encoder, and a line that can occlude.

    Forward motion first takes up the slack, then advances the plunger; while the line is occluded the
    advanced volume goes into the line's compliance and raises the pressure, otherwise the pressure
    relaxes toward its baseline. Retraction lowers the pressure the same way. A stall holds the plunger,
    a slip offsets the encoder, a siphon moves the plunger with the motor stopped.
    """

    quantum_ml: float
    baseline_mmhg: float
    slack_ml: float
    compliance_ml_per_mmhg: float
    volume_ml: float = 0.0
    pressure_mmhg: float = 0.0
    occluded: bool = False
    stalled_ticks: int = 0
    slip_ml: float = 0.0
    siphon_ml_s: float = 0.0
    relax_s: float = 2.0

    def __post_init__(self) -> None:
        self.pressure_mmhg = self.baseline_mmhg

    def advance(self, direction: str, rate_ml_h: float, dt_s: float) -> None:
        moved = rate_ml_h / 3600.0 * dt_s
        if direction == "forward":
            if self.stalled_ticks > 0:
                self.stalled_ticks -= 1
                moved = 0.0
            absorbed = min(self.slack_ml, moved)
            self.slack_ml -= absorbed
            moved -= absorbed
        elif direction == "retract":
            moved = -moved
        else:
            moved = 0.0
        self.volume_ml += moved + self.siphon_ml_s * dt_s
        if self.occluded:
            self.pressure_mmhg += moved / self.compliance_ml_per_mmhg
        else:
            self.pressure_mmhg += moved / self.compliance_ml_per_mmhg * 0.01
            decay = math.exp(-dt_s / self.relax_s)
            self.pressure_mmhg = self.baseline_mmhg + (self.pressure_mmhg - self.baseline_mmhg) * decay

    def encoder_ml(self) -> float:
        return round(self.volume_ml / self.quantum_ml) * self.quantum_ml + self.slip_ml


# ----- strategies ----------------------------------------------------------------------------------------

BAD_NUMBERS = (math.nan, math.inf, -math.inf, -1.0, 0.0, -0.0, 1.0e9)
RATE_SLIPS = (60.0 * 60.0, 1_000.0 * 60.0, 2_000.0, 2_000.5, 150.0, 250.0)

#: Operator rates: valid under every generated ceiling (>= 10 mL/h), near or above it, or garbage.
RATES = st.one_of(
    st.floats(0.5, 10.0),
    st.floats(0.5, 10.0),
    st.floats(0.5, 250.0),
    st.sampled_from([*BAD_NUMBERS, *RATE_SLIPS]),
    st.floats(allow_nan=True, allow_infinity=True),
)
#: Operator volumes to be infused: mostly small and valid, sometimes too large or garbage.
VTBIS = st.one_of(
    st.floats(0.005, 1.0),
    st.floats(0.005, 1.0),
    st.floats(0.005, 60.0),
    st.sampled_from([*BAD_NUMBERS, 1_000.0, 1_000.5]),
)


MOSTLY_TRUE = st.sampled_from([True, True, True, False])


@st.composite
def kernel_overrides(draw: st.DrawFn) -> dict[str, Any]:
    """Valid settings that make the interlocks reachable within a few hundred ticks."""
    # 4 ms: faster than ESTIMATOR_INTERVAL_S, so the estimators run on every third sample (or every
    # second, with jitter) and both kernels must thin them alike.
    period = draw(st.sampled_from([0.004, 0.05, 0.1, 0.1, 0.1, 0.25, 0.5]))
    hard_max = draw(st.sampled_from([200.0, 200.0, 2_000.0]))
    return {
        "control_period_s": period,
        "stale_after_s": period * draw(st.sampled_from([1.0, 2.0, 10.0, 20.0])),
        "syringe_fill_ml": draw(st.sampled_from([0.5, 1.0, 2.0, 5.0, 50.0])),
        "concentration_mg_per_ml": draw(st.sampled_from([1.0, 1.0, 10.0, 50.0])),
        "prior_delivered_mg": draw(st.sampled_from([0.0, 0.0, 60.0, 119.0])),
        "hard_max_rate_ml_h": hard_max,
        "max_rate_ml_h": draw(st.floats(10.0, hard_max)),
        "pump_max_rate_ml_h": draw(st.sampled_from([60.0, 1_200.0, 1_200.0])),
        "dose_tolerance": draw(st.sampled_from([0.0, 0.02, 0.1])),
        "has_pressure_sensor": draw(MOSTLY_TRUE),
        "occlusion_threshold_mmhg": draw(st.floats(20.0, 300.0)),
        "slope_detector": draw(MOSTLY_TRUE),
        "slope_rise_mmhg": draw(st.floats(2.0, 40.0)),
        "slope_fraction": draw(st.floats(0.05, 1.0)),
        "slope_arm_delay_s": draw(st.sampled_from([0.0, 0.5, 2.0, 60.0])),
        "slope_rearm_increase": draw(st.sampled_from([0.0, 0.1, 0.1, 0.5])),
        "slope_sustain_s": draw(st.sampled_from([0.0, 0.0, 1.0, 5.0])),
        "slope_hold_fraction": draw(st.sampled_from([0.0, 0.0, 0.8, 1.0])),
        "slope_sustained_rise_mmhg": draw(st.sampled_from([2.0, 25.0, 1000.0])),
        "pressure_filter_s": draw(st.floats(0.1, 5.0)),
        "pressure_baseline_s": draw(st.floats(1.0, 120.0)),
        "compliance_ml_per_mmhg": draw(st.floats(0.0005, 0.01)),
        # 0.41, 0 (off) and 0.10 µL/mmHg on the default 26.59 mm bore (below every compliance drawn).
        "drive_stiffness_n_per_mm": draw(st.sampled_from([100.0, 100.0, 0.0, 400.0])),
        "backoff": draw(MOSTLY_TRUE),
        "backoff_margin_mmhg": draw(st.floats(0.0, 40.0)),
        "backoff_rate_ml_h": draw(st.floats(10.0, 600.0)),
        "stall_volume_ml": draw(st.floats(0.002, 0.05)),
        "flow_window_s": draw(st.sampled_from([1.0, 3.0, 10.0, 120.0])),
        "flow_tolerance": draw(st.floats(0.02, 0.5)),
        "flow_min_volume_ml": draw(st.floats(0.0, 0.02)),
        "uncommanded_volume_ml": draw(st.floats(0.001, 0.1)),
        "encoder_mismatch_ml": draw(st.sampled_from([0.001, 0.02, 0.02, 1.0e3])),
        "near_empty_ml": draw(st.floats(0.0, 2.0)),
        "near_empty_s": draw(st.floats(0.0, 300.0)),
        "take_up_rate_ml_h": draw(st.floats(10.0, 1_200.0)),
        "take_up_max_ml": draw(st.sampled_from([0.0, 0.01, 0.1, 0.5])),
        "take_up_detect_ml": draw(st.sampled_from([0.0, 0.001, 0.005])),
        "kp_per_s": draw(st.sampled_from([0.0, 0.5, 2.0, 10.0])),
        "ki_per_s2": draw(st.sampled_from([0.0, 0.5, 5.0])),
        "integral_limit_ml_s": draw(st.sampled_from([0.0, 0.01, 0.1])),
        "slew_ml_h_per_s": draw(st.sampled_from([10.0, 1_000.0, 1.0e6])),
        # The quiet controller (the shipped 2 counts, 10 s), a per-tick one, and holds a tick or two long.
        "control_deadband_counts": draw(st.sampled_from([2.0, 0.0, 1.0, 5.0])),
        "control_hold_s": draw(st.sampled_from([10.0, 0.0, 0.1, 0.25, 1.0])),
        "silence_s": draw(st.sampled_from([0.0, 1.0, 120.0])),
    }


# What a perturbed tick does differently from a quiet one.
CLOCK_FAULTS = ["jitter", "jitter", "same", "backwards", "nan", "inf", "gap", "huge_gap"]
SAMPLE_TIME_FAULTS = ["repeat", "older", "lagging", "future", "nan", "inf"]
VOLUME_FAULTS = ["nan", "inf", "-inf", "negative", "huge", "jump"]
PRESSURE_FAULTS = ["nan", "inf", "implausible", "spike"]
PLANT_EVENTS = [
    "occlude",
    "occlude",
    "clear_occlusion",
    "stall",
    "slip_forward",
    "slip_back",
    "siphon",
    "stop_siphon",
    "swap_syringe",
    "air",
    "no_syringe",
    "end_of_travel",
]
COMMANDS = [
    "load",
    "start",
    "start",
    "pause",
    "resume",
    "resume",
    "stop",
    "acknowledge",
    "acknowledge",
    "acknowledge",
    "silence",
    "unload",
    "set_rate",
    "set_rate",
    "change_syringe",
    "syringe_loaded",
]
#: Syringe counts for ``load``: mostly one, sometimes a dose of several, sometimes out of range.
SYRINGE_COUNTS = st.sampled_from([1, 1, 1, 2, 3, 16, 0, 17, -1])


@dataclass(frozen=True)
class Tick:
    """One tick of a scenario; the defaults are a quiet tick (clean sample, no event, no command)."""

    clock: str = "normal"
    sample_time: str = "now"
    volume: str = "true"
    pressure: str = "true"
    event: str = "none"
    command: str = "none"
    #: A second command in the same tick, right after ``command`` (a resume with the syringe loaded).
    then: str = "none"
    amount: float = 0.5
    rate: float = 30.0
    vtbi: float = 0.5
    take_up: bool = True
    syringes: int = 1


QUIET = Tick()
AMOUNT = st.floats(0.0, 1.0)

#: Clean telemetry: only plant events (occlusion, stall, slip, siphon, flags) disturb the run.
PLANT_TICKS = st.builds(Tick, event=st.sampled_from(PLANT_EVENTS), amount=AMOUNT)
COMMAND_TICKS = st.builds(
    Tick,
    command=st.sampled_from(COMMANDS),
    # Now and then the syringe is swapped under the operator's commands (declared or not).
    event=st.sampled_from(["none"] * 9 + ["swap_syringe"]),
    rate=RATES,
    vtbi=VTBIS,
    take_up=st.booleans(),
    syringes=SYRINGE_COUNTS,
)
#: One fault at a time, an operator command, or (rarely) everything at once.
NOISY_TICKS = st.one_of(
    st.builds(Tick, clock=st.sampled_from(CLOCK_FAULTS), amount=AMOUNT),
    st.builds(Tick, sample_time=st.sampled_from(SAMPLE_TIME_FAULTS), amount=AMOUNT),
    st.builds(Tick, volume=st.sampled_from(VOLUME_FAULTS), amount=AMOUNT),
    st.builds(Tick, pressure=st.sampled_from(PRESSURE_FAULTS), amount=AMOUNT),
    PLANT_TICKS,
    COMMAND_TICKS,
    COMMAND_TICKS,
    st.builds(
        Tick,
        clock=st.sampled_from(["normal", *CLOCK_FAULTS]),
        sample_time=st.sampled_from(["now", *SAMPLE_TIME_FAULTS]),
        volume=st.sampled_from(["true", *VOLUME_FAULTS]),
        pressure=st.sampled_from(["true", *PRESSURE_FAULTS]),
        event=st.sampled_from(["none", *PLANT_EVENTS]),
        command=st.sampled_from(["none", *COMMANDS]),
        amount=AMOUNT,
        rate=RATES,
        vtbi=VTBIS,
        take_up=st.booleans(),
    ),
)


@dataclass(frozen=True)
class Scenario:
    overrides: dict[str, Any]
    rate: float
    vtbi: float
    take_up: bool
    load_before_first_step: bool
    #: Start right after loading (otherwise the kernel stays armed until a random start command).
    auto_start: bool
    #: Loaded before the first step, also try a start before it (refused: no position yet).
    start_before_first_step: bool
    slack_ml: float
    baseline_mmhg: float
    start_time_s: float
    #: The plant's line compliance (stiffer than the kernel's worst case: faster occlusion ramps).
    plant_compliance_ml_per_mmhg: float
    length: int
    #: Tick index → a tick that is not quiet; every other tick is :data:`QUIET`.
    perturbations: dict[int, Tick]
    #: Drain and compare the trace rings every this many ticks (large values overflow the ring).
    drain_every: int = 1
    #: The program's syringe count.
    syringes: int = 1


@st.composite
def scenarios(draw: st.DrawFn, kind: str) -> Scenario:
    """``kind``: "noisy" (every fault), "plant" (clean telemetry, plant faults), "operator" (clean
    telemetry, random operator commands), "occlusion" (clean telemetry, the line occludes) or
    "syringes" (clean telemetry, a dose of several syringes changed at random times)."""
    overrides = draw(kernel_overrides())
    if kind == "occlusion":
        overrides["has_pressure_sensor"] = True
    ceiling = min(
        overrides["max_rate_ml_h"], overrides["hard_max_rate_ml_h"], overrides["pump_max_rate_ml_h"]
    )
    fill = overrides["syringe_fill_ml"]
    cap_ml = (120.0 - overrides["prior_delivered_mg"]) / overrides["concentration_mg_per_ml"]
    syringes = draw(st.integers(2, 3)) if kind == "syringes" else 1
    if draw(st.integers(0, 9)) > 0:  # mostly a valid program
        rate = ceiling * draw(st.floats(0.01, 1.0))
        vtbi = min(draw(st.floats(0.005, 2.0 * syringes)), 0.999 * min(syringes * fill, cap_ml))
    else:
        rate, vtbi = draw(RATES), draw(VTBIS)
    length = draw(st.integers(1, 600))
    last = max(length - 1, 0)
    ticks = st.integers(0, last)
    if kind == "noisy":
        perturbations = draw(st.dictionaries(ticks, NOISY_TICKS, max_size=40))
    elif kind == "plant":
        perturbations = draw(st.dictionaries(ticks, PLANT_TICKS, max_size=4))
    elif kind == "operator":
        perturbations = draw(st.dictionaries(ticks, COMMAND_TICKS, max_size=20))
    elif kind == "syringes":
        perturbations = {}
        for at in draw(st.lists(st.integers(0, max(last - 4, 0)), max_size=4)):
            fill_ml = draw(st.sampled_from([fill, fill, 0.5 * fill, math.nan, 1.0e3]))
            amount = draw(AMOUNT)
            perturbations[at] = Tick(command="pause")
            perturbations[at + 1] = Tick(command="change_syringe")
            perturbations[at + 2] = Tick(event=draw(st.sampled_from(["no_syringe", "end_of_travel"])))
            go = draw(st.sampled_from(["resume", "stop", "start"]))
            # Sometimes the operator resumes (or starts) in the same tick, before the new plunger's sample.
            at_once = draw(st.booleans())
            perturbations[at + 3] = Tick(
                command="syringe_loaded",
                then=go if at_once else "none",
                event="swap_syringe",
                vtbi=fill_ml,
                amount=amount,
            )
            perturbations[at + 4] = Tick(command=go)
    else:
        follow_up = st.builds(Tick, command=st.sampled_from(["acknowledge", "start", "silence", "stop"]))
        perturbations = draw(st.dictionaries(ticks, follow_up, max_size=6))
        perturbations[draw(ticks)] = Tick(event="occlude")
        if draw(st.booleans()):
            perturbations[draw(ticks)] = Tick(event="clear_occlusion")
    return Scenario(
        overrides=overrides,
        rate=rate,
        vtbi=vtbi,
        take_up=draw(st.booleans()),
        load_before_first_step=draw(st.booleans()),
        auto_start=draw(st.sampled_from([True, True, True, False])),
        start_before_first_step=draw(st.sampled_from([False, False, False, True])),
        slack_ml=draw(st.sampled_from([0.0, 0.0, 0.002, 0.05, 0.2, 0.7])),
        baseline_mmhg=draw(st.floats(-20.0, 60.0)),
        start_time_s=draw(st.sampled_from([0.0, 0.0, -50.0, 1.0e6, 12_345.678])),
        plant_compliance_ml_per_mmhg=overrides["compliance_ml_per_mmhg"] * draw(st.floats(0.02, 1.0)),
        length=length,
        perturbations=perturbations,
        drain_every=draw(st.sampled_from([1, 1, 1, 7, 200])),
        syringes=syringes,
    )


# ----- the scenario runner -------------------------------------------------------------------------------


def operate(pair: KernelPair, command: str, tick: Tick) -> None:
    """Issues ``command`` to both kernels with the tick's arguments."""
    match command:
        case "none":
            pass
        case "load":
            pair.command("load", tick.rate, tick.vtbi, tick.take_up, tick.syringes)
        case "syringe_loaded":
            pair.command("syringe_loaded", tick.vtbi)
        case "set_rate":
            pair.command("set_rate", tick.rate)
        case name:
            pair.command(name)


def run_scenario(scenario: Scenario) -> KernelPair:
    try:
        pair = KernelPair(scenario.overrides)
    except ConfigurationError:
        reject()
    period = scenario.overrides["control_period_s"]
    stale = scenario.overrides["stale_after_s"]
    plant = Plant(
        quantum_ml=pair.config.volume_quantum_ml,
        baseline_mmhg=scenario.baseline_mmhg,
        slack_ml=scenario.slack_ml,
        compliance_ml_per_mmhg=scenario.plant_compliance_ml_per_mmhg,
    )
    clock = scenario.start_time_s
    last_t = clock
    program = (scenario.rate, scenario.vtbi, scenario.take_up, scenario.syringes)

    loaded = scenario.load_before_first_step and pair.command("load", *program)
    if loaded and scenario.start_before_first_step:
        pair.command("start")
    out = pair.step(clock, clock, plant.encoder_ml(), plant.pressure_mmhg)
    if not scenario.load_before_first_step:
        loaded = pair.command("load", *program)
    if loaded and scenario.auto_start:
        pair.command("start")
    pair.compare_traces()

    for i in range(scenario.length):
        tick = scenario.perturbations.get(i, QUIET)
        # Real time always advances; the plant follows the command the kernels gave on the last tick.
        dt = {
            "jitter": period * (0.5 + tick.amount),
            "gap": stale * (1.5 + 3.0 * tick.amount),
            "huge_gap": 3_600.0 * (1.0 + tick.amount),
            "same": 0.0,
        }.get(tick.clock, period)
        plant.advance(out.direction, out.rate_ml_h, dt)
        clock += dt

        match tick.event:
            case "occlude":
                plant.occluded = True
            case "clear_occlusion":
                plant.occluded = False
            case "stall":
                plant.stalled_ticks += 1 + int(40 * tick.amount)
            case "slip_forward":
                plant.slip_ml += 1.5 * tick.amount
            case "slip_back":
                plant.slip_ml -= 1.5 * tick.amount
            case "siphon":
                plant.siphon_ml_s = 0.01 * tick.amount
            case "stop_siphon":
                plant.siphon_ml_s = 0.0
            case "swap_syringe":  # a new syringe: its plunger reads anywhere, its slack is open
                plant.volume_ml = 10.0 * tick.amount
                plant.slack_ml = 0.2 * tick.amount

        now = {
            "backwards": clock - 1.0 - tick.amount,
            "nan": math.nan,
            "inf": math.inf if tick.amount < 0.5 else -math.inf,
        }.get(tick.clock, clock)
        t_s = {
            "repeat": last_t,
            "older": last_t - 0.5 - tick.amount,
            "lagging": clock - period * 3.0 * tick.amount,
            "future": clock + 0.01 + tick.amount,
            "nan": math.nan,
            "inf": math.inf,
        }.get(tick.sample_time, clock)
        if math.isfinite(t_s):
            last_t = t_s
        volume = {
            "nan": math.nan,
            "inf": math.inf,
            "-inf": -math.inf,
            "negative": -5.0 * tick.amount - 0.001,
            "huge": 1.0e6,
            "jump": plant.encoder_ml() + 1.0 + 5.0 * tick.amount,
        }.get(tick.volume, plant.encoder_ml())
        pressure = {
            "nan": math.nan,
            "inf": math.inf,
            "implausible": -400.0 - tick.amount,
            "spike": 250.0 + 800.0 * tick.amount,
        }.get(tick.pressure, plant.pressure_mmhg)
        flags = {
            "motor_running": out.direction != "hold",
            "air_in_line": tick.event == "air",
            "syringe_present": tick.event != "no_syringe",
            "end_of_travel": tick.event == "end_of_travel",
        }
        out = pair.step(now, t_s, volume, pressure, **flags)

        operate(pair, tick.command, tick)
        operate(pair, tick.then, tick)
        if i % scenario.drain_every == 0:
            pair.compare_traces()
    pair.compare_traces()
    return pair


@SETTINGS
@given(scenarios("noisy"))
def test_kernel_matches_reference_model(scenario: Scenario) -> None:
    """Faulty telemetry, clock faults, plant faults and random operator commands."""
    run_scenario(scenario)


@SETTINGS
@given(scenarios("plant"))
def test_kernel_matches_reference_model_on_clean_telemetry(scenario: Scenario) -> None:
    """Clean telemetry for long enough to reach completion, flow windows and the plant-fault detectors."""
    run_scenario(scenario)


@SETTINGS
@given(scenarios("operator"))
def test_kernel_matches_reference_model_under_operator_commands(scenario: Scenario) -> None:
    """Clean telemetry, random (valid and invalid) operator commands: pause, resume, set_rate, reload..."""
    run_scenario(scenario)


@SETTINGS
@given(scenarios("syringes"))
def test_kernel_matches_reference_model_through_syringe_changes(scenario: Scenario) -> None:
    """A dose of several syringes, paused, changed (the syringe out, a new plunger reference, new
    slack), loaded with a valid or refused fill, and resumed or stopped at random times."""
    run_scenario(scenario)


@SETTINGS
@given(scenarios("occlusion"))
def test_kernel_matches_reference_model_through_occlusions(scenario: Scenario) -> None:
    """The line occludes: pressure and slope detectors, back-off, then acknowledge and restart."""
    run_scenario(scenario)


# ----- deterministic scenarios (fixed coverage of the main paths) -----------------------------------------


def fixed_scenario(
    length: int,
    perturbations: dict[int, Tick] | None = None,
    *,
    rate: float = 120.0,
    vtbi: float = 5.0,
    take_up: bool = False,
    slack_ml: float = 0.0,
    **overrides: Any,
) -> Scenario:
    settings_ = {"control_period_s": 0.1, "stale_after_s": 1.0, "compliance_ml_per_mmhg": 0.0028}
    settings_.update(overrides)
    return Scenario(
        overrides=settings_,
        rate=rate,
        vtbi=vtbi,
        take_up=take_up,
        load_before_first_step=False,
        auto_start=True,
        start_before_first_step=False,
        slack_ml=slack_ml,
        baseline_mmhg=10.0,
        start_time_s=0.0,
        plant_compliance_ml_per_mmhg=settings_["compliance_ml_per_mmhg"],
        length=length,
        perturbations=perturbations or {},
    )


def test_nominal_infusion_with_take_up_completes() -> None:
    pair = run_scenario(fixed_scenario(80, vtbi=0.1, take_up=True, slack_ml=0.01))
    assert {"take_up_done", "dose_complete"} <= pair.seen_causes
    assert pair.rust.state == "complete"


def test_occlusion_backs_off() -> None:
    scenario = fixed_scenario(
        400, {20: Tick(event="occlude")}, occlusion_threshold_mmhg=60.0, slope_detector=False
    )
    pair = run_scenario(scenario)
    assert "occlusion_pressure" in pair.seen_causes
    assert "retract" in pair.seen_directions


def test_slope_detector() -> None:
    scenario = fixed_scenario(
        300, {60: Tick(event="occlude")}, slope_arm_delay_s=1.0, slope_rise_mmhg=5.0, flow_window_s=3.0
    )
    pair = run_scenario(scenario)
    assert "occlusion_slope" in pair.seen_causes


def ramp(step: float) -> dict[int, Tick]:
    """A rate ramp from 30 mL/h in steps of ``step`` (fraction) every 5 ticks from tick 30, the line
    occluding at tick 60."""
    perturbations = {
        30 + 5 * k: Tick(command="set_rate", rate=30.0 * (1.0 + step) ** (k + 1)) for k in range(30)
    }
    perturbations[60] = Tick(event="occlude")
    return perturbations


def test_a_ramp_in_small_steps_keeps_the_slope_detector_armed() -> None:
    # +2 % every 0.5 s with a 2 s arm delay: armed throughout, so the slope detector sees the occlusion.
    settings = {"slope_arm_delay_s": 2.0, "slope_rise_mmhg": 5.0, "occlusion_threshold_mmhg": 100.0}
    pair = run_scenario(fixed_scenario(300, ramp(0.02), rate=30.0, **settings))
    assert "set_rate" in pair.seen_causes
    assert "occlusion_slope" in pair.seen_causes
    # +12 % steps (to 900 mL/h) re-arm it every 0.5 s: it never fires, the threshold does.
    ceiling = {"max_rate_ml_h": 1_000.0, "hard_max_rate_ml_h": 2_000.0}
    pair = run_scenario(fixed_scenario(300, ramp(0.12), rate=30.0, **ceiling, **settings))
    assert "occlusion_pressure" in pair.seen_causes
    assert "occlusion_slope" not in pair.seen_causes


def test_stall_and_flow_deviation() -> None:
    scenario = fixed_scenario(
        200, {30: Tick(event="stall", amount=1.0)}, flow_window_s=2.0, stall_volume_ml=0.05
    )
    pair = run_scenario(scenario)
    assert {"stall", "flow_deviation"} & pair.seen_causes


def occluded_then(event: Tick, **overrides: Any) -> KernelPair:
    """The line occludes at tick 20 (threshold 300 mmHg, slope detector off); at tick 60, with ~57 mmHg
    stored above the 10 mmHg baseline, ``event`` happens."""
    perturbations = {20: Tick(event="occlude"), 60: event}
    return run_scenario(fixed_scenario(300, perturbations, slope_detector=False, **overrides))


def test_stall_in_an_occluded_line_backs_off() -> None:
    # The encoder cross-check, which sees a jam first, out of the way: the stall check on its own.
    pair = occluded_then(Tick(event="stall", amount=1.0), encoder_mismatch_ml=1.0e3)
    assert "stall" in pair.seen_causes
    assert not {"occlusion_pressure", "occlusion_slope"} & pair.seen_causes
    assert "retract" in pair.seen_directions


def test_encoder_mismatch_in_an_occluded_line_backs_off() -> None:
    pair = occluded_then(Tick(event="stall", amount=1.0))
    assert "encoder_mismatch" in pair.seen_causes
    assert not {"occlusion_pressure", "occlusion_slope", "stall"} & pair.seen_causes
    assert "retract" in pair.seen_directions


def test_flow_deviation_in_an_occluded_line_backs_off() -> None:
    pair = occluded_then(
        Tick(event="stall", amount=1.0), flow_window_s=2.0, stall_volume_ml=0.5, encoder_mismatch_ml=1.0e3
    )
    assert "flow_deviation" in pair.seen_causes
    assert not {"occlusion_pressure", "occlusion_slope", "stall"} & pair.seen_causes
    assert "retract" in pair.seen_directions


def test_air_in_an_occluded_line_does_not_back_off() -> None:
    pair = occluded_then(Tick(event="air"))
    assert "air_in_line" in pair.seen_causes
    assert "retract" not in pair.seen_directions


def test_dose_ends_early_by_the_drive_release() -> None:
    # The line occludes early (pressure up ~1.2 mmHg a tick at 120 mL/h): the dose completes with the
    # plunger short by what the compressed drive still pushes; reported as delivered in both.
    scenario = fixed_scenario(120, {5: Tick(event="occlude")}, vtbi=0.1, slope_detector=False)
    pair = run_scenario(scenario)
    assert "dose_complete" in pair.seen_causes
    assert pair.ref.drive_release_ml > 0.005
    assert math.isclose(pair.rust.delivered_ml, 0.1, abs_tol=0.005)


def test_operator_round_trip() -> None:
    commands = {5: "pause", 8: "resume", 12: "set_rate", 15: "stop", 16: "start", 20: "pause", 22: "stop"}
    perturbations = {i: Tick(command=name) for i, name in commands.items()}
    perturbations[23] = Tick(command="unload")
    pair = run_scenario(fixed_scenario(40, perturbations, rate=60.0, vtbi=2.0, take_up=True))
    assert {"pause", "resume", "set_rate", "stop", "start", "unload"} <= pair.seen_causes
    assert pair.rust.state == "idle"


def test_invalid_rate_change_latches_in_both() -> None:
    perturbations = {5: Tick(command="set_rate", rate=52.5 * 60.0), 6: Tick(command="set_rate", rate=30.0)}
    perturbations[7] = Tick(command="acknowledge")
    pair = run_scenario(fixed_scenario(10, perturbations))
    assert "rate_command_invalid" in pair.seen_causes
    assert "set_rate -> InterlockError" in pair.seen_flags
    assert "set_rate -> StateTransitionError" in pair.seen_flags
    assert pair.rust.state == "stopped"


# ----- the choke point and the controller on their own --------------------------------------------------

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
NEAR_FLOAT = st.one_of(st.floats(-1.0, 1.0), st.sampled_from([0.0, -0.0, 0.1, 0.25, 0.5, 1.0]), ANY_FLOAT)


@SETTINGS
@given(requested=NEAR_FLOAT, max_ml_s=NEAR_FLOAT, headroom_ml=NEAR_FLOAT, period_s=NEAR_FLOAT)
def test_clamp_rate_matches(requested: float, max_ml_s: float, headroom_ml: float, period_s: float) -> None:
    rust_rate, rust_reason = core.clamp_rate(requested, max_ml_s, headroom_ml, period_s)
    ref_rate, ref_reason = clamp_rate(requested, max_ml_s, headroom_ml, period_s)
    assert rust_reason == ref_reason
    assert close(rust_rate, ref_rate)


GAIN = st.floats(0.0, 20.0)
CONTROL_INPUT = st.one_of(
    st.tuples(st.floats(0.0, 0.5), st.floats(-10.0, 10.0), st.floats(0.0, 2.0)),
    st.tuples(st.floats(0.0, 0.5), st.floats(-10.0, 10.0), st.floats(0.0, 2.0)),
    st.tuples(st.sampled_from([math.nan, -0.01, 0.01]), st.floats(-10.0, 10.0), st.sampled_from([-0.1, 0.1])),
    st.tuples(st.floats(0.0, 0.5), st.sampled_from([math.nan, math.inf]), st.floats(0.0, 2.0)),
    st.tuples(st.floats(0.0, 0.5), st.floats(-10.0, 10.0), st.sampled_from([math.nan, math.inf, -1.0])),
)


@SETTINGS
@given(
    kp=GAIN,
    ki=GAIN,
    limit=st.floats(0.0, 1.0),
    slew=st.floats(0.001, 1.0e3),
    max_ml_s=st.floats(0.001, 1.0),
    start=st.floats(-10.0, 10.0),
    deadband=st.sampled_from([0.0, 0.001, 0.5]),
    hold=st.sampled_from([0.0, 0.5, 2.0, 10.0]),
    quantum=st.sampled_from([0.0, 0.0005, 0.1]),
    inputs=st.lists(CONTROL_INPUT, min_size=1, max_size=50),
)
def test_rate_controller_matches(
    *,
    kp: float,
    ki: float,
    limit: float,
    slew: float,
    max_ml_s: float,
    start: float,
    deadband: float,
    hold: float,
    quantum: float,
    inputs: list[tuple[float, float, float]],
) -> None:
    rust = core.RateController(
        kp_per_s=kp,
        ki_per_s2=ki,
        integral_limit_ml_s=limit,
        slew_ml_s_per_s=slew,
        max_ml_s=max_ml_s,
        deadband_ml=deadband,
        hold_s=hold,
        quantum_ml=quantum,
    )
    ref = ReferenceController(Gains(kp, ki, limit, slew, max_ml_s, deadband, hold, quantum))
    rust.reset(start)
    ref.reset(start)
    for setpoint, measured, dt in inputs:
        rust_error = ref_error = None
        try:
            rust_status = rust.step(setpoint, measured, dt)
        except ConfigurationError as error:
            rust_error = error
        try:
            ref_status = ref.step(setpoint, measured, dt)
        except ConfigurationError as error:
            ref_error = error
        # The error class must agree (the binding's choice of input name is not part of the contract).
        assert (rust_error is None) == (ref_error is None), (setpoint, measured, dt, rust_error, ref_error)
        if rust_error is not None:
            continue
        for name in CONTROL_FIELDS_EXACT:
            assert getattr(rust_status, name) == getattr(ref_status, name), name
        for name in CONTROL_FIELDS_CLOSE:
            assert close(getattr(rust_status, name), getattr(ref_status, name)), name


def test_alarm_names_match() -> None:
    assert tuple(core.ALARMS) == ALARMS


def test_a_dose_of_two_syringes_matches_and_completes() -> None:
    """Fill 1 mL, 1.5 mL over two syringes: the kernel holds at the first syringe's end, the change
    re-references the plunger (it reads 0.3 mL on the new syringe) and the dose completes in both."""
    swap = {
        330: Tick(command="pause"),
        331: Tick(command="change_syringe"),
        332: Tick(event="no_syringe"),
        333: Tick(command="syringe_loaded", event="swap_syringe", amount=0.03, vtbi=1.0),
        334: Tick(command="resume"),
    }
    scenario = fixed_scenario(700, swap, vtbi=1.5, take_up=True, slack_ml=0.01, syringe_fill_ml=1.0)
    pair = run_scenario(replace(scenario, syringes=2))
    assert {"change_syringe", "syringe_loaded", "take_up_done", "dose_complete"} <= pair.seen_causes
    assert "syringe_change" in pair.seen_states
    assert pair.rust.state == "complete"
    assert math.isclose(pair.rust.delivered_ml, 1.5, abs_tol=2 * pair.config.volume_quantum_ml)


def test_motion_waits_for_the_plungers_position_in_both() -> None:
    """A start before the first sample, a resume in the same tick as the new syringe, and a syringe
    swapped undeclared (the jump stays invalid) then unloaded and loaded again: the same refusals, the
    same references, the same alarms."""
    swap = {
        100: Tick(command="pause"),
        101: Tick(command="change_syringe"),
        103: Tick(command="syringe_loaded", then="resume", event="swap_syringe", amount=0.03, vtbi=1.0),
        104: Tick(command="resume"),
        200: Tick(command="stop"),
        202: Tick(event="swap_syringe", amount=0.9),  # undeclared: the plunger jumps
        500: Tick(command="acknowledge", then="unload"),
        502: Tick(command="load", rate=120.0, vtbi=0.5, take_up=False),
        503: Tick(command="start"),
    }
    scenario = fixed_scenario(800, swap, vtbi=1.5, take_up=True, slack_ml=0.01, syringe_fill_ml=1.0)
    pair = run_scenario(
        replace(scenario, syringes=2, load_before_first_step=True, start_before_first_step=True)
    )
    assert {"start -> position unknown", "resume -> position unknown"} <= pair.seen_flags
    assert {"syringe_loaded", "unload", "dose_complete"} <= pair.seen_causes
    assert "telemetry_invalid" in pair.seen_causes
    assert pair.rust.state == "complete"


def test_a_syringe_swapped_between_programs_is_referenced_alike() -> None:
    """Unloaded, a new syringe sampled while idle and a start right after the load; then unloaded and
    loaded again in one go, the swap seen only by the armed kernel's first sample: both kernels take
    the new plunger as the reference (no jump, no refusal) and both programs complete."""
    swaps = {
        150: Tick(command="unload"),
        152: Tick(event="swap_syringe", amount=0.5),  # seen while idle
        154: Tick(command="load", then="start", rate=120.0, vtbi=0.2, take_up=False),
        300: Tick(command="unload", then="load", rate=120.0, vtbi=0.2, take_up=False),
        301: Tick(event="swap_syringe", amount=0.1),  # seen first by the armed kernel
        302: Tick(command="start"),
    }
    pair = run_scenario(fixed_scenario(450, swaps, vtbi=0.3))
    assert not any(flag.endswith("position unknown") for flag in pair.seen_flags), pair.seen_flags
    assert "telemetry_invalid" not in pair.seen_causes
    assert {"unload", "dose_complete"} <= pair.seen_causes
    assert pair.rust.state == "complete"
    # The last program measured from its own syringe's plunger, not the one before it.
    assert math.isclose(pair.rust.delivered_ml, 0.2, abs_tol=2 * pair.config.volume_quantum_ml)


def test_a_plunger_jumping_on_after_the_end_alarms_in_both() -> None:
    """Complete, then the plunger reading jumps forward 1.5 mL in one tick: rejected as a sample and
    alarmed as uncommanded delivery (held), alike; the same jump backward alarms in neither."""
    for event, alarmed in (("slip_forward", True), ("slip_back", False)):
        pair = run_scenario(fixed_scenario(200, {100: Tick(event=event, amount=1.0)}, vtbi=0.1))
        assert "dose_complete" in pair.seen_causes
        assert ("uncommanded_delivery" in pair.rust.alarms) is alarmed, (event, pair.rust.alarms)
        assert pair.rust.state == ("alarm" if alarmed else "complete")
