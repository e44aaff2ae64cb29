"""Bad configuration raises a clear, specific exception that names the field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ketapump import _core
from ketapump.config import default_kernel_settings, kernel_config
from ketapump.errors import ConfigurationError, KetapumpError

FLOAT_FIELDS = sorted(k for k, v in default_kernel_settings().items() if not isinstance(v, bool))


def test_defaults_build_a_valid_config() -> None:
    cfg = kernel_config()
    assert cfg.as_dict() == default_kernel_settings()
    assert cfg.ceiling_ml_h == 120.0
    assert 0 < cfg.volume_quantum_ml < 1e-3


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_numeric_field_refuses_non_finite(field: str, bad: float) -> None:
    with pytest.raises(ConfigurationError) as info:
        kernel_config(**{field: bad})
    assert info.value.field == field
    assert info.value.problem == "must be a finite number"
    assert str(info.value) == f"{field} {bad} must be a finite number"


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_every_numeric_field_refuses_negative(field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        kernel_config(**{field: -1.0})
    assert info.value.field == field


def test_zero_syringe_diameter_names_the_field() -> None:
    with pytest.raises(ConfigurationError) as info:
        kernel_config(syringe_diameter_mm=0.0)
    assert str(info.value) == "syringe_diameter_mm 0 is below the allowed minimum (0)"


def test_nan_rate_limit_names_the_field() -> None:
    with pytest.raises(ConfigurationError) as info:
        kernel_config(max_rate_ml_h=math.nan)
    assert info.value.field == "max_rate_ml_h"


def test_hard_limit_below_soft_limit_names_both() -> None:
    with pytest.raises(ConfigurationError) as info:
        kernel_config(max_rate_ml_h=150.0, hard_max_rate_ml_h=100.0)
    assert info.value.field == "max_rate_ml_h"
    assert info.value.problem == "is above the hard limit hard_max_rate_ml_h"
    assert str(info.value) == "max_rate_ml_h 150 is above the hard limit hard_max_rate_ml_h (100)"


def test_occlusion_threshold_above_its_hard_limit() -> None:
    with pytest.raises(ConfigurationError, match="occlusion_threshold_mmhg 1200 is above the hard limit"):
        kernel_config(occlusion_threshold_mmhg=1200.0)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"syringe_fill_ml": 70.0}, "syringe_fill_ml"),
        ({"prior_delivered_mg": 130.0}, "prior_delivered_mg"),
        ({"stale_after_s": 0.05}, "stale_after_s"),
        ({"dose_tolerance": 0.5}, "dose_tolerance"),
        ({"silence_s": 300.0}, "silence_s"),
        ({"concentration_mg_per_ml": 0.0}, "concentration_mg_per_ml"),
    ],
)
def test_inconsistent_or_out_of_range_settings(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        kernel_config(**overrides)
    assert info.value.field == field


def test_unknown_setting_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError) as info:
        kernel_config(max_rate_mlh=10.0)
    assert info.value.field == "max_rate_mlh"


def test_wrong_type_names_the_argument() -> None:
    settings = default_kernel_settings()
    settings["syringe_diameter_mm"] = "26.59"
    with pytest.raises(TypeError, match="syringe_diameter_mm"):
        _core.KernelConfig(**settings)


def test_missing_setting_names_the_argument() -> None:
    settings = default_kernel_settings()
    del settings["hard_cap_mg"]
    with pytest.raises(TypeError, match="hard_cap_mg"):
        _core.KernelConfig(**settings)


@pytest.mark.parametrize(
    ("rate", "vtbi", "field"),
    [
        (52.5, -35.0, "vtbi_ml"),  # negative dose
        (52.5, 0.0, "vtbi_ml"),
        (math.nan, 35.0, "rate_ml_h"),
        (-1.0, 35.0, "rate_ml_h"),
        (52.5 * 60, 35.0, "rate_ml_h"),  # mL/min ↔ mL/h unit slip
        (52.5, 55.0, "vtbi_ml"),  # more than the syringe holds
    ],
)
def test_bad_program_is_refused_and_nothing_changes(rate: float, vtbi: float, field: str) -> None:
    kernel = _core.SafetyKernel(kernel_config())
    with pytest.raises(ConfigurationError) as info:
        kernel.load(rate, vtbi)
    assert info.value.field == field
    assert kernel.state == "idle"
    assert kernel.drain_trace() == []


def test_program_above_cumulative_cap_is_refused() -> None:
    kernel = _core.SafetyKernel(kernel_config(prior_delivered_mg=100.0))
    with pytest.raises(ConfigurationError, match=r"vtbi_ml 35 is above the hard limit hard_cap_mg \(20\)"):
        kernel.load(52.5, 35.0)


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        (5000.0, "rate_ml_h 5000 is above the allowed maximum (2000)"),
        (1000.0, "rate_ml_h 1000 is above the hard limit max_rate_ml_h (120)"),
        (1e-9, "rate_ml_h 1e-09 is below the minimum min_rate_ml_h (0.1)"),
        (0.0, "rate_ml_h 0 is below the allowed minimum (0)"),
        (math.inf, "rate_ml_h inf must be a finite number"),
    ],
)
def test_every_refused_rate_names_its_value_and_the_limit(rate: float, message: str) -> None:
    """A ÷1000 slip is refused like a ×1000 one (a program at 1e-9 mL/h would never end)."""
    with pytest.raises(ConfigurationError) as info:
        _core.SafetyKernel(kernel_config()).load(rate, 1.0)
    assert str(info.value) == message
    assert info.value.value == rate or math.isnan(rate)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        kernel_config(syringe_diameter_mm=0.0)
    assert issubclass(ConfigurationError, KetapumpError)
