"""KP-40MIN in Rust (one run, and lockstep lanes) ends exactly as the pure-Python reference model: the
same state, alarms, volumes and trace hash. (How fast is benches/test_kernel_bench.py's business.)"""

from __future__ import annotations

import pytest

from ketapump import _core
from ketapump.config import default_kernel_settings, kernel_config
from ketapump.errors import ConfigurationError
from ketapump.reference import KP40MIN_OVERRIDES, run_kp40min

# The reference model's whole run, recorded (it takes ~40–60 s of Python; to record it again:
# `run_kp40min(default_kernel_settings() | KP40MIN_OVERRIDES)`, as the benchmark does): the rate changes,
# the occlusion alarm at 25:11.75 and the ~15 minutes of the stopped drive after it.
WHOLE_RUN_OF_THE_REFERENCE_MODEL = {
    "ticks": 2_400_000,
    "state": "alarm",
    "alarms": ["occlusion_slope"],
    "first_alarm_tick": 1_511_750,
    "delivered_ml": 6.6826398125,
    "plunger_ml": 6.682696796866524,
    "pressure_mmhg": 4.8894007273261955e-46,
    "trace_hash": 6753773047801339346,
}

# A prefix, run on both models here: the take-off transient and 40 folds of the trace hash (the whole
# run is compared with the record above; the benchmark runs both models on it).
TICKS = 40_000


@pytest.fixture(scope="module")
def reference() -> dict[str, object]:
    return run_kp40min(default_kernel_settings() | KP40MIN_OVERRIDES, TICKS)


def test_rust_ends_as_the_reference_model(reference: dict[str, object]) -> None:
    rust = _core.run_kp40min(kernel_config(**KP40MIN_OVERRIDES), TICKS)
    assert rust == reference
    assert rust["ticks"] == TICKS and rust["state"] == "running"


@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
def test_every_lane_ends_as_the_reference_model(reference: dict[str, object], lanes: int) -> None:
    outcomes = _core.run_kp40min_lanes(kernel_config(**KP40MIN_OVERRIDES), 11, lanes, TICKS)
    assert outcomes == [reference] * 11


def test_a_lane_count_without_a_group_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="lanes"):
        _core.run_kp40min_lanes(kernel_config(**KP40MIN_OVERRIDES), 4, 3, 10)


def test_the_whole_run_ends_as_the_reference_models_whole_run() -> None:
    """Past the prefix: the rate changes, the alarm, and the stopped drive whose flow the plant sets to
    zero once it is subnormal (rust/scenario: why), all to the bit."""
    rust = _core.run_kp40min(kernel_config(**KP40MIN_OVERRIDES))
    assert rust == WHOLE_RUN_OF_THE_REFERENCE_MODEL
