"""Mirror of ``config.rs``: kernel units derived from the raw settings, program and rate validation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ketapump.errors import ConfigurationError
from ketapump.reference.f64 import (
    ABOVE_MAXIMUM,
    BELOW_MINIMUM,
    MILLILITRES_MAX,
    ML_PER_HOUR_MAX,
    NOT_FINITE,
    S_PER_H,
    _fmin,
)

_BOOL_SETTINGS: Final = frozenset({"has_pressure_sensor", "slope_detector", "backoff"})
#: One mmHg as a stress (N/mm²): 133.322 Pa.
N_PER_MM2_PER_MMHG: Final = 133.322e-6


@dataclass(frozen=True)
class RawKernelConfig:
    """Every kernel setting as plain numbers (``RawKernelConfig``); names as in the defaults file."""

    syringe_diameter_mm: float
    syringe_capacity_ml: float
    syringe_fill_ml: float
    encoder_counts_per_mm: float
    concentration_mg_per_ml: float
    max_rate_ml_h: float
    hard_max_rate_ml_h: float
    pump_max_rate_ml_h: float
    min_rate_ml_h: float
    dose_tolerance: float
    hard_cap_mg: float
    prior_delivered_mg: float
    has_pressure_sensor: bool
    occlusion_threshold_mmhg: float
    hard_max_occlusion_threshold_mmhg: float
    slope_detector: bool
    slope_rise_mmhg: float
    slope_fraction: float
    slope_arm_delay_s: float
    slope_rearm_increase: float
    slope_sustain_s: float
    slope_hold_fraction: float
    slope_sustained_rise_mmhg: float
    pressure_filter_s: float
    pressure_baseline_s: float
    compliance_ml_per_mmhg: float
    drive_stiffness_n_per_mm: float
    backoff: bool
    backoff_margin_mmhg: float
    backoff_rate_ml_h: float
    stall_volume_ml: float
    flow_window_s: float
    flow_tolerance: float
    flow_min_volume_ml: float
    uncommanded_volume_ml: float
    encoder_mismatch_ml: float
    near_empty_ml: float
    near_empty_s: float
    stale_after_s: float
    control_period_s: float
    take_up_rate_ml_h: float
    take_up_max_ml: float
    take_up_detect_ml: float
    kp_per_s: float
    ki_per_s2: float
    integral_limit_ml_s: float
    slew_ml_h_per_s: float
    control_deadband_counts: float
    control_hold_s: float
    silence_s: float

    @classmethod
    def from_settings(cls, settings: Mapping[str, float | bool]) -> RawKernelConfig:
        """Converts a complete settings mapping (a missing or unknown name is a ``TypeError``)."""
        converted = {
            name: bool(value) if name in _BOOL_SETTINGS else float(value) for name, value in settings.items()
        }
        return cls(**converted)  # type: ignore[arg-type]


@dataclass(frozen=True)
class KernelConfig:
    """The configuration in kernel units, derived as ``KernelConfig::from_raw`` does (no validation)."""

    raw: RawKernelConfig
    #: Volume of one encoder count (mL): the measurement quantum.
    volume_quantum_ml: float
    #: min(configured, hard, pump) maximum rate in mL/s.
    max_rate_ml_s: float
    take_up_rate_ml_s: float
    backoff_rate_ml_s: float
    slew_ml_s_per_s: float
    #: The controller's deadband (mL): ``control_deadband_counts`` volume quanta.
    control_deadband_ml: float
    #: Drive-train compliance ``A²/k`` on this syringe (mL/mmHg); 0 when the stiffness is 0.
    drive_compliance_ml_per_mmhg: float

    @classmethod
    def from_raw(cls, raw: RawKernelConfig) -> KernelConfig:
        area_ml_per_mm = math.pi * raw.syringe_diameter_mm * raw.syringe_diameter_mm / 4.0 / 1_000.0
        area_mm2 = area_ml_per_mm * 1_000.0
        stiffness = raw.drive_stiffness_n_per_mm
        drive_compliance = (
            N_PER_MM2_PER_MMHG * area_mm2 / stiffness * area_ml_per_mm if stiffness > 0.0 else 0.0
        )
        ceiling = _fmin(_fmin(raw.max_rate_ml_h, raw.hard_max_rate_ml_h), raw.pump_max_rate_ml_h)
        quantum = area_ml_per_mm / raw.encoder_counts_per_mm
        return cls(
            raw=raw,
            volume_quantum_ml=quantum,
            max_rate_ml_s=ceiling / S_PER_H,
            take_up_rate_ml_s=_fmin(raw.take_up_rate_ml_h / S_PER_H, ceiling / S_PER_H),
            # Every commanded magnitude, retract included, stays under the ceiling.
            backoff_rate_ml_s=_fmin(raw.backoff_rate_ml_h / S_PER_H, ceiling / S_PER_H),
            slew_ml_s_per_s=raw.slew_ml_h_per_s / S_PER_H,
            control_deadband_ml=raw.control_deadband_counts * quantum,
            drive_compliance_ml_per_mmhg=drive_compliance,
        )

    @classmethod
    def from_settings(cls, settings: Mapping[str, float | bool]) -> KernelConfig:
        return cls.from_raw(RawKernelConfig.from_settings(settings))

    @property
    def mg_per_ml(self) -> float:
        """Drug (mg) per mL at the configured concentration."""
        return self.raw.concentration_mg_per_ml


def _check_range(value: float, minimum: float, strict: bool, maximum: float) -> str | None:
    """``units::check_range``: the problem text, or None when the value is accepted."""
    if not math.isfinite(value):
        return NOT_FINITE
    if value < minimum or (strict and value <= minimum):
        return BELOW_MINIMUM
    if value > maximum:
        return ABOVE_MAXIMUM
    return None


def _quantity(field_name: str, value: float, maximum: float) -> float:
    """A ``Millilitres``/``MlPerHour``-style newtype: ``0 <= value <= maximum``, finite."""
    problem = _check_range(value, 0.0, False, maximum)
    if problem is not None:
        raise ConfigurationError(field_name, problem)
    return value


def _above_hard(field_name: str, other: str) -> ConfigurationError:
    return ConfigurationError(field_name, f"is above the hard limit {other}")


def _inconsistent(field_name: str, other: str) -> ConfigurationError:
    return ConfigurationError(field_name, f"is inconsistent with {other}")


@dataclass(frozen=True)
class Program:
    """What to infuse: a rate and a volume to be infused (VTBI)."""

    rate_ml_s: float
    vtbi_ml: float
    #: Run the bounded fast take-up of slack before the programmed rate.
    take_up: bool

    @classmethod
    def new(
        cls, config: KernelConfig, rate_ml_h: float, vtbi_ml: float, take_up: bool, delivered_before_mg: float
    ) -> Program:
        """``Program::new``: raises ConfigurationError naming ``rate_ml_h`` or ``vtbi_ml``."""
        rate_ml_s = validate_rate(config, rate_ml_h)
        vtbi = _quantity("vtbi_ml", vtbi_ml, MILLILITRES_MAX)
        if vtbi <= 0.0:
            raise ConfigurationError("vtbi_ml", BELOW_MINIMUM)
        if vtbi > config.raw.syringe_fill_ml:
            raise _inconsistent("vtbi_ml", "syringe_fill_ml")
        if delivered_before_mg + vtbi * config.mg_per_ml > config.raw.hard_cap_mg:
            raise _above_hard("vtbi_ml", "hard_cap_mg")
        return cls(rate_ml_s=rate_ml_s, vtbi_ml=vtbi, take_up=take_up)


#: The most syringes one program may span (``MAX_SYRINGES``; the binding exports the core's).
MAX_SYRINGES: Final = 16


def validate_syringes(syringes: int) -> float:
    """``validate_syringes``: a program's syringe count, 1 to :data:`MAX_SYRINGES`."""
    count = float(syringes)
    problem = _check_range(count, 1.0, False, float(MAX_SYRINGES))
    if problem is not None:
        raise ConfigurationError("syringes", problem)
    return count


def validate_fill(config: KernelConfig, fill_ml: float) -> float:
    """``validate_fill``: a syringe put into the pump holds a positive volume up to the capacity."""
    fill = _quantity("syringe_fill_ml", fill_ml, MILLILITRES_MAX)
    if fill <= 0.0:
        raise ConfigurationError("syringe_fill_ml", BELOW_MINIMUM)
    if fill > config.raw.syringe_capacity_ml:
        raise _inconsistent("syringe_fill_ml", "syringe_capacity_ml")
    return fill


def validate_rate(config: KernelConfig, rate_ml_h: float) -> float:
    """A finite rate from ``min_rate_ml_h`` to the effective ceiling (a unit slip is refused); in mL/s."""
    rate = _quantity("rate_ml_h", rate_ml_h, ML_PER_HOUR_MAX)
    if rate <= 0.0:
        raise ConfigurationError("rate_ml_h", BELOW_MINIMUM)
    if rate < config.raw.min_rate_ml_h:
        raise ConfigurationError("rate_ml_h", "is below the minimum min_rate_ml_h")
    if rate / S_PER_H > config.max_rate_ml_s:
        raise _above_hard("rate_ml_h", "max_rate_ml_h")
    return rate / S_PER_H
