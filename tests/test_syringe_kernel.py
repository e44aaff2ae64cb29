"""The safety kernel's syringe change, through the binding: the whole-dose invariant as a property.

An ideal syringe pump stands in for the hardware: forward commands first cross the syringe's slack
and then push its plunger, the encoder reports the plunger quantised to whole counts, and a syringe
change puts in a new syringe whose plunger reads anywhere. Whatever the sequence of changes (when,
how full the new syringe is, where its plunger reads, how much slack it has, stops and restarts
between), the kernel never lets the dose's delivered volume pass its VTBI (the whole dose's limit),
never lets the drug pass the cumulative cap, and never pushes a plunger past what its syringe holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketapump import _core
from ketapump.config import kernel_config
from ketapump.errors import ConfigurationError, StateTransitionError

PERIOD_S = 0.1


@dataclass
class IdealPump:
    """One syringe at a time on a lead screw with slack; volumes in mL."""

    quantum_ml: float
    fill_ml: float
    reads_ml: float = 0.0
    pushed_ml: float = 0.0
    slack_ml: float = 0.0

    def advance(self, direction: str, rate_ml_h: float) -> None:
        if direction != "forward":
            return
        moved = rate_ml_h / 3600.0 * PERIOD_S
        absorbed = min(self.slack_ml, moved)
        self.slack_ml -= absorbed
        self.pushed_ml += moved - absorbed

    def encoder_ml(self) -> float:
        return math.floor((self.reads_ml + self.pushed_ml) / self.quantum_ml + 1e-9) * self.quantum_ml


@dataclass(frozen=True)
class Change:
    at_tick: int
    fill_fraction: float
    reads_ml: float
    slack_ml: float
    #: Stop (and start again) instead of pause and resume.
    stop: bool


CHANGES = st.builds(
    Change,
    at_tick=st.integers(1, 900),
    fill_fraction=st.sampled_from([1.0, 1.0, 0.5, 0.1]),
    reads_ml=st.floats(-5.0, 60.0),
    slack_ml=st.sampled_from([0.0, 0.01, 0.2]),
    stop=st.booleans(),
)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    fill_ml=st.sampled_from([1.0, 2.0]),
    syringes=st.integers(2, 4),
    vtbi_fraction=st.floats(0.05, 1.0),
    rate_ml_h=st.floats(30.0, 120.0),
    tolerance=st.sampled_from([0.0, 0.02]),
    changes=st.lists(CHANGES, max_size=5, unique_by=lambda c: c.at_tick // 10),
)
def test_delivery_never_passes_the_whole_dose_across_any_syringe_changes(  # noqa: PLR0917
    fill_ml: float,
    syringes: int,
    vtbi_fraction: float,
    rate_ml_h: float,
    tolerance: float,
    changes: list[Change],
) -> None:
    config = kernel_config(
        syringe_fill_ml=fill_ml,
        dose_tolerance=tolerance,
        control_period_s=PERIOD_S,
        concentration_mg_per_ml=1.0,
        hard_cap_mg=120.0,
    )
    quantum = config.volume_quantum_ml
    vtbi = vtbi_fraction * syringes * fill_ml
    kernel = _core.SafetyKernel(config)
    pump = IdealPump(quantum, fill_ml, slack_ml=0.01)
    now = 0.0
    out = kernel.step(now, now, pump.encoder_ml(), 0.0)
    kernel.load(rate_ml_h, vtbi, True, syringes)
    kernel.start()
    given_before_ml = 0.0  # what earlier syringes pushed
    swaps = 0
    due = {c.at_tick: c for c in changes}
    pending: list[tuple[int, str, Change]] = []
    for tick in range(1, 1_600):
        pump.advance(out.direction, out.rate_ml_h)
        now = tick * PERIOD_S
        out = kernel.step(now, now, pump.encoder_ml(), 0.0)
        # The invariants: the dose's limit across syringes, the cap, and no plunger past its syringe.
        assert out.delivered_ml <= vtbi * (1.0 + tolerance) + quantum
        assert kernel.cumulative_mg <= 120.0 + quantum
        assert pump.pushed_ml <= pump.fill_ml + quantum
        # Each syringe's plunger reference is quantised once: within a count per syringe.
        assert math.isclose(out.delivered_ml, given_before_ml + pump.pushed_ml, abs_tol=(2 + swaps) * quantum)
        if tick in due and out.state == "running":
            change = due[tick]
            (kernel.stop if change.stop else kernel.pause)()
            pending = [(tick + 1, "change", change)]
        for at, what, change in list(pending):
            if at != tick:
                continue
            pending.remove((at, what, change))
            if what == "change":
                kernel.change_syringe()
                given_before_ml += pump.pushed_ml
                swaps += 1
                pump = IdealPump(
                    quantum, fill_ml * change.fill_fraction, change.reads_ml, 0.0, change.slack_ml
                )
                pending.append((tick + 2, "loaded", change))
            elif what == "loaded":
                kernel.syringe_loaded(pump.fill_ml)
                # Not from the old syringe's position: motion waits for the new one's first sample.
                with pytest.raises(StateTransitionError, match="position"):
                    (kernel.start if change.stop else kernel.resume)()
                pending.append((tick + 1, "go", change))
            elif what == "go":
                (kernel.start if change.stop else kernel.resume)()
        if out.state in {"complete", "alarm"}:
            # An alarm (the flow window sees a syringe run dry that was not changed in time) holds the
            # motor: the invariants above held up to it.
            break
    # A dose that ended is the whole VTBI (or the syringes it was given ran dry first: then it holds).
    if out.state == "complete":
        assert math.isclose(out.delivered_ml, vtbi, abs_tol=2 * quantum)


def test_the_change_is_refused_outside_a_safe_state() -> None:
    kernel = _core.SafetyKernel(kernel_config(control_period_s=PERIOD_S))
    kernel.step(0.0, 0.0, 0.0, 0.0)
    with pytest.raises(StateTransitionError):
        kernel.change_syringe()  # idle: no program
    kernel.load(60.0, 10.0, False)
    kernel.start()
    kernel.step(0.1, 0.1, 0.0, 0.0)
    with pytest.raises(StateTransitionError):
        kernel.change_syringe()  # running
    kernel.pause()
    with pytest.raises(StateTransitionError):
        kernel.change_syringe()  # the motor was commanded forward until this tick
    kernel.step(0.2, 0.2, 0.0, 0.0)
    kernel.change_syringe()
    assert kernel.state == "syringe_change"
    with pytest.raises(ConfigurationError) as refused:
        kernel.syringe_loaded(1_000.0)
    assert refused.value.field == "syringe_fill_ml"
    assert kernel.state == "syringe_change"


@pytest.mark.parametrize("syringes", [0, -1, 17, 2**40])
def test_a_syringe_count_out_of_range_is_refused(syringes: int) -> None:
    kernel = _core.SafetyKernel(kernel_config())
    with pytest.raises(ConfigurationError) as refused:
        kernel.load(60.0, 10.0, True, syringes)
    assert refused.value.field == "syringes"
    assert kernel.state == "idle"
