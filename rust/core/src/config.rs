//! Kernel configuration and the infusion program, validated field by field.
//!
//! [`RawKernelConfig`] is the plain, unvalidated form (what a binding or a data file hands over);
//! [`KernelConfig::from_raw`] turns it into the validated form or returns a [`ConfigError`] naming the
//! first offending field. The field names in errors are exactly the names of the raw struct's fields,
//! so a user can find the line to fix. Every default lives in a data file outside this crate: the core
//! holds no clinical number.

use crate::units::{
    check_range, MgPerMl, Milligrams, Millilitres, Millimetres, MlPerHour, Mmhg, Quantity, Seconds, UnitProblem,
};
use core::fmt;

/// Why a configuration or program was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigProblem {
    /// The value itself is out of its physical range.
    Value(UnitProblem),
    /// A configured limit is above the hard limit it must stay under (`other` names that limit).
    AboveHardLimit { other: &'static str },
    /// A value is below the lowest another field allows (`other` names it).
    BelowLimit { other: &'static str },
    /// A value does not fit with another field (`other` names it).
    Inconsistent { other: &'static str },
}

/// A refused configuration: which field, its value, why, and the limit it broke (the bound of its
/// range, or the value of the field it is compared with; NaN where there is none, as for a NaN value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: ConfigProblem,
    pub value: f64,
    pub limit: f64,
}

impl ConfigProblem {
    /// The problem as a person reads it, after the field's name and value.
    pub fn describe(self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigProblem::Value(p) => write!(f, "{p}"),
            ConfigProblem::AboveHardLimit { other } => write!(f, "is above the hard limit {other}"),
            ConfigProblem::BelowLimit { other } => write!(f, "is below the minimum {other}"),
            ConfigProblem::Inconsistent { other } => write!(f, "is inconsistent with {other}"),
        }
    }
}

impl fmt::Display for ConfigError {
    /// `rate_ml_h 1000 is above the hard limit max_rate_ml_h (120)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.field, self.value)?;
        self.problem.describe(f)?;
        if !self.limit.is_nan() {
            write!(f, " ({})", self.limit)?;
        }
        Ok(())
    }
}

/// A refused value of a range `[min, max]`: the limit is the bound it crossed.
fn out_of_range(field: &'static str, value: f64, min: f64, max: f64) -> impl Fn(UnitProblem) -> ConfigError {
    move |problem| {
        let limit = match problem {
            UnitProblem::NotFinite => f64::NAN,
            UnitProblem::BelowMinimum => min,
            UnitProblem::AboveMaximum => max,
        };
        ConfigError { field, problem: ConfigProblem::Value(problem), value, limit }
    }
}

/// A field that must be a valid `Q` (its unit's range).
fn quantity<Q: Quantity>(field: &'static str, value: f64) -> Result<Q, ConfigError> {
    Q::new(value).map_err(out_of_range(field, value, Q::MIN, Q::MAX))
}

/// A field that must be above `min` (a positive rate, a positive volume).
fn not_above(field: &'static str, value: f64, min: f64) -> ConfigError {
    ConfigError { field, problem: ConfigProblem::Value(UnitProblem::BelowMinimum), value, limit: min }
}

fn above_hard(field: &'static str, value: f64, other: &'static str, limit: f64) -> ConfigError {
    ConfigError { field, problem: ConfigProblem::AboveHardLimit { other }, value, limit }
}

fn below_limit(field: &'static str, value: f64, other: &'static str, limit: f64) -> ConfigError {
    ConfigError { field, problem: ConfigProblem::BelowLimit { other }, value, limit }
}

fn inconsistent(field: &'static str, value: f64, other: &'static str, limit: f64) -> ConfigError {
    ConfigError { field, problem: ConfigProblem::Inconsistent { other }, value, limit }
}

/// A dimensionless or compound-unit field: finite and inside `[min, max]` (min exclusive if `strict`).
fn scalar(field: &'static str, v: f64, min: f64, strict: bool, max: f64) -> Result<f64, ConfigError> {
    check_range(v, min, strict, max).map_err(out_of_range(field, v, min, max))
}

/// Every kernel setting as plain numbers. Field names are the public names used in errors, the Python
/// keyword arguments and the defaults file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawKernelConfig {
    // Syringe and drug.
    pub syringe_diameter_mm: f64,
    pub syringe_capacity_ml: f64,
    pub syringe_fill_ml: f64,
    pub encoder_counts_per_mm: f64,
    pub concentration_mg_per_ml: f64,
    // Rate limits: configured ≤ hard; the effective ceiling is min(configured, hard, pump).
    pub max_rate_ml_h: f64,
    pub hard_max_rate_ml_h: f64,
    pub pump_max_rate_ml_h: f64,
    /// The lowest rate a program may have (the pump's lowest even rate): a run always ends, and a unit
    /// slip downwards (÷1000) is refused like one upwards.
    pub min_rate_ml_h: f64,
    // Dose limits.
    pub dose_tolerance: f64,
    pub hard_cap_mg: f64,
    pub prior_delivered_mg: f64,
    // Occlusion.
    pub has_pressure_sensor: bool,
    pub occlusion_threshold_mmhg: f64,
    pub hard_max_occlusion_threshold_mmhg: f64,
    pub slope_detector: bool,
    pub slope_rise_mmhg: f64,
    pub slope_fraction: f64,
    pub slope_arm_delay_s: f64,
    /// A rate change re-arms the slope detector (`slope_arm_delay_s` before it may fire again) only when
    /// it raises the rate by more than this fraction of the previous rate (0.10: above +10 %); a decrease
    /// never does. A protocol's ramp in small steps keeps the detector armed.
    pub slope_rearm_increase: f64,
    /// The slope must stay at or above `slope_fraction`·Q/C without a break for this long (s) before
    /// the slope detector may fire: a head change's slope dies away, an occlusion's ramp keeps it.
    pub slope_sustain_s: f64,
    /// ... and the slope must still be at least this fraction of its highest value since it began to
    /// rise: a head change's slope decays with the line's time constant, an occlusion's ramp does not.
    pub slope_hold_fraction: f64,
    /// The rise above baseline that suffices once the slope is sustained and held (mmHg), below a
    /// head change; `slope_rise_mmhg` (above a head change) suffices at any time.
    pub slope_sustained_rise_mmhg: f64,
    pub pressure_filter_s: f64,
    pub pressure_baseline_s: f64,
    pub compliance_ml_per_mmhg: f64,
    /// Stiffness of the drive train between the motor's nut and the plunger seal (lead screw, rod,
    /// stopper rubber) (N/mm); 0 when it has not been characterised (no end-of-dose correction).
    pub drive_stiffness_n_per_mm: f64,
    pub backoff: bool,
    pub backoff_margin_mmhg: f64,
    pub backoff_rate_ml_h: f64,
    // Stall, flow and uncommanded motion.
    pub stall_volume_ml: f64,
    pub flow_window_s: f64,
    pub flow_tolerance: f64,
    pub flow_min_volume_ml: f64,
    pub uncommanded_volume_ml: f64,
    /// How far the plunger encoder may fall behind the motor's commanded volume, beyond what the drive
    /// model explains (drive compliance × the line pressure's change), before `encoder_mismatch` (mL).
    pub encoder_mismatch_ml: f64,
    // Syringe level.
    pub near_empty_ml: f64,
    pub near_empty_s: f64,
    // Telemetry and timing.
    pub stale_after_s: f64,
    pub control_period_s: f64,
    // Start-up take-up.
    pub take_up_rate_ml_h: f64,
    pub take_up_max_ml: f64,
    pub take_up_detect_ml: f64,
    // Controller.
    pub kp_per_s: f64,
    pub ki_per_s2: f64,
    pub integral_limit_ml_s: f64,
    pub slew_ml_h_per_s: f64,
    /// Volume error the controller leaves alone, in encoder counts (the controller's deadband is this
    /// many volume quanta): within it the error is quantisation and the output is the feed-forward.
    pub control_deadband_counts: f64,
    /// Shortest time between two controller decisions (s); the trim is held in between. 0: every tick.
    pub control_hold_s: f64,
    // Alarm annunciation.
    pub silence_s: f64,
}

/// One mmHg as a stress (N/mm²): 133.322 Pa.
const N_PER_MM2_PER_MMHG: f64 = 133.322e-6;

/// The longest an alarm may be silenced before it annunciates again (S7: 2 min).
pub const MAX_SILENCE_S: f64 = 120.0;

/// Validated configuration. Rates are held in mL/s, the unit the kernel integrates in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelConfig {
    pub raw: RawKernelConfig,
    /// Volume of one encoder count (mL): the measurement quantum.
    pub volume_quantum_ml: f64,
    /// min(configured, hard, pump) maximum rate in mL/s.
    pub max_rate_ml_s: f64,
    pub take_up_rate_ml_s: f64,
    pub backoff_rate_ml_s: f64,
    pub slew_ml_s_per_s: f64,
    /// The controller's deadband (mL): `control_deadband_counts` volume quanta.
    pub control_deadband_ml: f64,
    /// Drive-train compliance `A²/k` on this syringe (mL/mmHg): the volume the compressed drive pushes
    /// the plunger on by, per mmHg of line pressure, once the motor stops. 0 when the stiffness is 0.
    pub drive_compliance_ml_per_mmhg: f64,
}

impl KernelConfig {
    /// Validates every field, then the relations between fields.
    pub fn from_raw(raw: RawKernelConfig) -> Result<Self, ConfigError> {
        let r = &raw;
        let diameter = quantity::<Millimetres>("syringe_diameter_mm", r.syringe_diameter_mm)?;
        let capacity = quantity::<Millilitres>("syringe_capacity_ml", r.syringe_capacity_ml)?;
        if capacity.get() <= 0.0 {
            return Err(not_above("syringe_capacity_ml", r.syringe_capacity_ml, 0.0));
        }
        let fill = quantity::<Millilitres>("syringe_fill_ml", r.syringe_fill_ml)?;
        if fill > capacity {
            return Err(inconsistent("syringe_fill_ml", r.syringe_fill_ml, "syringe_capacity_ml", capacity.get()));
        }
        let counts = scalar("encoder_counts_per_mm", r.encoder_counts_per_mm, 0.0, true, 1.0e6)?;
        quantity::<MgPerMl>("concentration_mg_per_ml", r.concentration_mg_per_ml)?;

        let max_rate = quantity::<MlPerHour>("max_rate_ml_h", r.max_rate_ml_h)?;
        let hard_rate = quantity::<MlPerHour>("hard_max_rate_ml_h", r.hard_max_rate_ml_h)?;
        let pump_rate = quantity::<MlPerHour>("pump_max_rate_ml_h", r.pump_max_rate_ml_h)?;
        if max_rate.get() <= 0.0 {
            return Err(not_above("max_rate_ml_h", r.max_rate_ml_h, 0.0));
        }
        if max_rate > hard_rate {
            return Err(above_hard("max_rate_ml_h", r.max_rate_ml_h, "hard_max_rate_ml_h", hard_rate.get()));
        }
        if pump_rate.get() <= 0.0 {
            return Err(not_above("pump_max_rate_ml_h", r.pump_max_rate_ml_h, 0.0));
        }
        let min_rate = quantity::<MlPerHour>("min_rate_ml_h", r.min_rate_ml_h)?;
        if min_rate.get() <= 0.0 {
            return Err(not_above("min_rate_ml_h", r.min_rate_ml_h, 0.0));
        }
        let ceiling = max_rate.get().min(hard_rate.get()).min(pump_rate.get());
        if min_rate.get() > ceiling {
            return Err(inconsistent("min_rate_ml_h", r.min_rate_ml_h, "max_rate_ml_h", ceiling));
        }

        scalar("dose_tolerance", r.dose_tolerance, 0.0, false, 0.10)?;
        let cap = quantity::<Milligrams>("hard_cap_mg", r.hard_cap_mg)?;
        let prior = quantity::<Milligrams>("prior_delivered_mg", r.prior_delivered_mg)?;
        if prior > cap {
            return Err(inconsistent("prior_delivered_mg", r.prior_delivered_mg, "hard_cap_mg", cap.get()));
        }

        let threshold = quantity::<Mmhg>("occlusion_threshold_mmhg", r.occlusion_threshold_mmhg)?;
        let hard_threshold =
            quantity::<Mmhg>("hard_max_occlusion_threshold_mmhg", r.hard_max_occlusion_threshold_mmhg)?;
        if threshold.get() <= 0.0 {
            return Err(not_above("occlusion_threshold_mmhg", r.occlusion_threshold_mmhg, 0.0));
        }
        if threshold > hard_threshold {
            return Err(above_hard(
                "occlusion_threshold_mmhg",
                r.occlusion_threshold_mmhg,
                "hard_max_occlusion_threshold_mmhg",
                hard_threshold.get(),
            ));
        }
        scalar("slope_rise_mmhg", r.slope_rise_mmhg, 0.0, true, Mmhg::MAX)?;
        scalar("slope_fraction", r.slope_fraction, 0.0, true, 1.0)?;
        quantity::<Seconds>("slope_arm_delay_s", r.slope_arm_delay_s)?;
        scalar("slope_rearm_increase", r.slope_rearm_increase, 0.0, false, 10.0)?;
        scalar("slope_sustain_s", r.slope_sustain_s, 0.0, false, 3_600.0)?;
        scalar("slope_hold_fraction", r.slope_hold_fraction, 0.0, false, 1.0)?;
        scalar("slope_sustained_rise_mmhg", r.slope_sustained_rise_mmhg, 0.0, true, Mmhg::MAX)?;
        scalar("pressure_filter_s", r.pressure_filter_s, 0.0, true, 3_600.0)?;
        scalar("pressure_baseline_s", r.pressure_baseline_s, 0.0, true, 36_000.0)?;
        scalar("compliance_ml_per_mmhg", r.compliance_ml_per_mmhg, 0.0, true, 0.1)?;
        let stiffness = scalar("drive_stiffness_n_per_mm", r.drive_stiffness_n_per_mm, 0.0, false, 1.0e9)?;
        quantity::<Mmhg>("backoff_margin_mmhg", r.backoff_margin_mmhg)?;
        let backoff_rate = quantity::<MlPerHour>("backoff_rate_ml_h", r.backoff_rate_ml_h)?;
        if r.backoff && backoff_rate.get() <= 0.0 {
            return Err(not_above("backoff_rate_ml_h", r.backoff_rate_ml_h, 0.0));
        }

        scalar("stall_volume_ml", r.stall_volume_ml, 0.0, true, Millilitres::MAX)?;
        scalar("flow_window_s", r.flow_window_s, 0.0, true, 3_600.0)?;
        scalar("flow_tolerance", r.flow_tolerance, 0.0, true, 1.0)?;
        quantity::<Millilitres>("flow_min_volume_ml", r.flow_min_volume_ml)?;
        scalar("uncommanded_volume_ml", r.uncommanded_volume_ml, 0.0, true, Millilitres::MAX)?;
        scalar("encoder_mismatch_ml", r.encoder_mismatch_ml, 0.0, true, Millilitres::MAX)?;
        quantity::<Millilitres>("near_empty_ml", r.near_empty_ml)?;
        quantity::<Seconds>("near_empty_s", r.near_empty_s)?;
        scalar("stale_after_s", r.stale_after_s, 0.0, true, 3_600.0)?;
        let period = scalar("control_period_s", r.control_period_s, 0.0, true, 60.0)?;
        if r.stale_after_s < period {
            return Err(inconsistent("stale_after_s", r.stale_after_s, "control_period_s", period));
        }

        let take_up_rate = quantity::<MlPerHour>("take_up_rate_ml_h", r.take_up_rate_ml_h)?;
        let take_up_max = quantity::<Millilitres>("take_up_max_ml", r.take_up_max_ml)?;
        quantity::<Millilitres>("take_up_detect_ml", r.take_up_detect_ml)?;
        if take_up_max.get() > 0.0 && take_up_rate.get() <= 0.0 {
            return Err(not_above("take_up_rate_ml_h", r.take_up_rate_ml_h, 0.0));
        }

        scalar("kp_per_s", r.kp_per_s, 0.0, false, 1_000.0)?;
        scalar("ki_per_s2", r.ki_per_s2, 0.0, false, 1_000.0)?;
        scalar("integral_limit_ml_s", r.integral_limit_ml_s, 0.0, false, 1_000.0)?;
        let slew = scalar("slew_ml_h_per_s", r.slew_ml_h_per_s, 0.0, true, 1.0e9)?;
        let deadband_counts = scalar("control_deadband_counts", r.control_deadband_counts, 0.0, false, 1_000.0)?;
        scalar("control_hold_s", r.control_hold_s, 0.0, false, 3_600.0)?;
        scalar("silence_s", r.silence_s, 0.0, false, MAX_SILENCE_S)?;

        let area_ml_per_mm = core::f64::consts::PI * diameter.get() * diameter.get() / 4.0 / 1_000.0;
        // A pressure p (mmHg) on the bore (mm²) is a force p·PA·A (N, PA = N/mm² per mmHg); it compresses
        // the drive by that force / k (mm), which is that many mm of the bore's mL per mm.
        let area_mm2 = area_ml_per_mm * 1_000.0;
        let drive_compliance =
            if stiffness > 0.0 { N_PER_MM2_PER_MMHG * area_mm2 / stiffness * area_ml_per_mm } else { 0.0 };
        if drive_compliance > r.compliance_ml_per_mmhg {
            return Err(inconsistent(
                "drive_stiffness_n_per_mm",
                r.drive_stiffness_n_per_mm,
                "compliance_ml_per_mmhg",
                r.compliance_ml_per_mmhg,
            ));
        }
        let quantum = area_ml_per_mm / counts;
        Ok(Self {
            raw,
            volume_quantum_ml: quantum,
            max_rate_ml_s: quantity::<MlPerHour>("max_rate_ml_h", ceiling)?.per_second(),
            take_up_rate_ml_s: take_up_rate.per_second().min(ceiling / crate::units::S_PER_H),
            // Every commanded magnitude, retract included, stays under the ceiling.
            backoff_rate_ml_s: backoff_rate.per_second().min(ceiling / crate::units::S_PER_H),
            slew_ml_s_per_s: slew / crate::units::S_PER_H,
            control_deadband_ml: deadband_counts * quantum,
            drive_compliance_ml_per_mmhg: drive_compliance,
        })
    }

    /// Drug (mg) per mL at the configured concentration.
    #[inline(always)]
    pub fn mg_per_ml(&self) -> f64 {
        self.raw.concentration_mg_per_ml
    }
}

/// What to infuse: a rate and a volume to be infused (VTBI).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Program {
    pub rate_ml_s: f64,
    pub vtbi_ml: f64,
    /// Run the bounded fast take-up of slack before the programmed rate.
    pub take_up: bool,
}

impl Program {
    /// Validates a program against a configuration: the rate within the effective ceiling, the
    /// volume within the syringe fill, the drug within the cumulative cap.
    pub fn new(
        config: &KernelConfig,
        rate_ml_h: f64,
        vtbi_ml: f64,
        take_up: bool,
        delivered_before_mg: f64,
    ) -> Result<Self, ConfigError> {
        let rate_ml_s = validate_rate(config, rate_ml_h)?;
        let vtbi = quantity::<Millilitres>("vtbi_ml", vtbi_ml)?;
        if vtbi.get() <= 0.0 {
            return Err(not_above("vtbi_ml", vtbi_ml, 0.0));
        }
        if vtbi.get() > config.raw.syringe_fill_ml {
            return Err(inconsistent("vtbi_ml", vtbi_ml, "syringe_fill_ml", config.raw.syringe_fill_ml));
        }
        if delivered_before_mg + vtbi.get() * config.mg_per_ml() > config.raw.hard_cap_mg {
            return Err(above_hard(
                "vtbi_ml",
                vtbi_ml,
                "hard_cap_mg",
                (config.raw.hard_cap_mg - delivered_before_mg) / config.mg_per_ml(),
            ));
        }
        Ok(Self { rate_ml_s, vtbi_ml: vtbi.get(), take_up })
    }
}

/// The most syringes one program may span ([`crate::SafetyKernel::load_syringes`]).
pub const MAX_SYRINGES: u32 = 16;

/// A program's syringe count: 1 to [`MAX_SYRINGES`].
pub fn validate_syringes(syringes: u32) -> Result<f64, ConfigError> {
    let count = f64::from(syringes);
    scalar("syringes", count, 1.0, false, f64::from(MAX_SYRINGES))
}

/// The fill of a syringe put into the pump: a positive volume, at most the configured capacity.
pub fn validate_fill(config: &KernelConfig, fill_ml: f64) -> Result<f64, ConfigError> {
    let fill = quantity::<Millilitres>("syringe_fill_ml", fill_ml)?.get();
    if fill <= 0.0 {
        return Err(not_above("syringe_fill_ml", fill_ml, 0.0));
    }
    if fill > config.raw.syringe_capacity_ml {
        return Err(inconsistent("syringe_fill_ml", fill_ml, "syringe_capacity_ml", config.raw.syringe_capacity_ml));
    }
    Ok(fill)
}

/// A programmed rate must be a finite number from `min_rate_ml_h` to the effective ceiling; a unit
/// slip (×60, ×1000, ÷1000) is refused, never clamped. Returns mL/s.
pub fn validate_rate(config: &KernelConfig, rate_ml_h: f64) -> Result<f64, ConfigError> {
    let rate = quantity::<MlPerHour>("rate_ml_h", rate_ml_h)?;
    if rate.get() <= 0.0 {
        return Err(not_above("rate_ml_h", rate_ml_h, 0.0));
    }
    if rate.get() < config.raw.min_rate_ml_h {
        return Err(below_limit("rate_ml_h", rate_ml_h, "min_rate_ml_h", config.raw.min_rate_ml_h));
    }
    if rate.per_second() > config.max_rate_ml_s {
        return Err(above_hard("rate_ml_h", rate_ml_h, "max_rate_ml_h", config.max_rate_ml_s * crate::units::S_PER_H));
    }
    Ok(rate.per_second())
}
