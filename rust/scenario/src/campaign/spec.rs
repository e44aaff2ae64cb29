//! The campaign spec: the ranges and probabilities scenarios are drawn from, the clinical [`Limits`]
//! the invariants are checked against, and [`CampaignSpec::validate`], which refuses a bad spec once,
//! with the dotted path of the field, before any run; and the hw-sim plant for a catalogue syringe
//! (validation builds its stiffest corner, the runner the scenario's).

use ketapump_core::KernelConfig;
use ketapump_hwsim::{Plant, PlantConfig, Syringe};

/// A closed interval `[min, max]` a value is drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

impl Range {
    pub const fn new(min: f64, max: f64) -> Self {
        Self { min, max }
    }
    pub const fn fixed(v: f64) -> Self {
        Self { min: v, max: v }
    }
}

/// The clinical limits the invariants are checked against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// S5 threshold P_thr (mmHg).
    pub occlusion_threshold_mmhg: f64,
    /// S5 latency allowance (s): 5 s.
    pub occlusion_latency_s: f64,
    /// S3 overdose tolerance (fraction): 0.02.
    pub dose_tolerance: f64,
    /// S3 accuracy of a fault-free run (fraction, both ways): 0.02.
    pub accuracy_tolerance: f64,
    /// S3 hard cumulative cap (mg): the clinical one, never the kernel configuration's.
    pub hard_cap_mg: f64,
    /// The drug's true concentration (mg/mL), what a delivered mL is in mg: never the kernel's figure.
    pub concentration_mg_per_ml: f64,
}

/// The infusion programmed in each run.
#[derive(Debug, Clone, PartialEq)]
pub struct InfusionSpec {
    /// Catalogue names, drawn uniformly.
    pub syringes: Vec<String>,
    /// Programmed rate (mL/h), log-uniform.
    pub rate_ml_h: Range,
    /// Planned duration (min); the volume is rate × duration (bounded by the fill and the cap).
    pub duration_min: Range,
    /// Syringe fill as a fraction of its capacity.
    pub fill_fraction: Range,
    pub take_up_probability: f64,
    /// Probability of one rate change inside the fault window.
    pub rate_change_probability: f64,
    /// The new rate is the old one times this factor (log-uniform), kept inside `rate_ml_h`.
    pub rate_change_factor: Range,
    /// Probability that a prior dose leaves less drug under the cap than the run programs: the kernel
    /// must refuse the program (or stop at the cap).
    pub over_cap_probability: f64,
    /// In such a run, the drug the cap still allows as a fraction of the drug programmed (uniform).
    pub over_cap_headroom: Range,
}

/// The plant's build and sensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlantSpec {
    pub compliance_ml_per_mmhg: Range,
    pub resistance_mmhg_s_per_ml: Range,
    pub patient_pressure_mmhg: Range,
    pub slack_taken_up_probability: f64,
    /// Standard deviation of the Gaussian noise on every pressure sample (mmHg).
    pub pressure_noise_sd_mmhg: Range,
}

/// How long things last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSpec {
    /// Faults, rate changes and restarts start inside this fraction of the planned duration.
    pub fault_window: Range,
    /// Ticks kept running after the first alarm, watching it stay latched (s).
    pub observe_after_alarm_s: f64,
    /// After the run: motor stopped, occlusion cleared, the line left to settle (s).
    pub settle_s: f64,
}

/// A bridge restart: the kernel dies, the pump runs on until its watchdog stops it, and after the gap a
/// new kernel loads the remaining volume with the delivered drug counted as prior.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartSpec {
    pub probability: f64,
    pub gap_s: Range,
    /// The pump's watchdog: how long the last command keeps running after the bridge died (s).
    pub watchdog_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OcclusionSpec {
    pub probability: f64,
    /// Multiplier of the downstream resistance, log-uniform (10⁶: a closed clamp).
    pub factor: Range,
    /// Probability that the occlusion clears by itself after `clear_after_s`.
    pub clear_probability: f64,
    pub clear_after_s: Range,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chance {
    pub probability: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadHeightSpec {
    pub probability: f64,
    /// New height of the syringe above the cannula (cm); + raises the pump.
    pub height_cm: Range,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderSlipSpec {
    pub probability: f64,
    /// Fraction of plunger motion the encoder misses.
    pub fraction: Range,
}

/// Everything a campaign draws its scenarios from, and the limits it checks them against.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignSpec {
    pub limits: Limits,
    pub infusion: InfusionSpec,
    pub plant: PlantSpec,
    pub run: RunSpec,
    pub restart: RestartSpec,
    pub occlusion: OcclusionSpec,
    pub air: Chance,
    pub head_height: HeadHeightSpec,
    pub stuck_encoder: Chance,
    pub encoder_slip: EncoderSlipSpec,
    pub drive_stall: Chance,
}

/// A refused spec or a run the kernel or plant could not be set up for: `field` is the dotted path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignError {
    pub field: String,
    pub problem: String,
}

impl core::fmt::Display for CampaignError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

impl std::error::Error for CampaignError {}

pub(super) fn err(field: &str, problem: impl Into<String>) -> CampaignError {
    CampaignError { field: field.into(), problem: problem.into() }
}

fn check_range(field: &str, r: Range, lo: f64, hi: f64) -> Result<(), CampaignError> {
    if !(r.min.is_finite() && r.max.is_finite()) {
        return Err(err(field, "must be finite numbers"));
    }
    if r.min > r.max {
        return Err(err(field, "min must not exceed max"));
    }
    if r.min < lo || r.max > hi {
        return Err(err(field, format!("must lie within [{lo}, {hi}]")));
    }
    Ok(())
}

fn check_value(field: &str, v: f64, lo: f64, hi: f64) -> Result<(), CampaignError> {
    if !v.is_finite() || v < lo || v > hi {
        return Err(err(field, format!("must be a finite number within [{lo}, {hi}]")));
    }
    Ok(())
}

fn check_probability(field: &str, p: f64) -> Result<(), CampaignError> {
    check_value(field, p, 0.0, 1.0)
}

impl CampaignSpec {
    /// Checks every field, and the spec against the kernel configuration it will run with (the rates
    /// under its ceiling, every syringe and compliance corner a plant can be built for).
    pub fn validate(&self, config: &KernelConfig) -> Result<(), CampaignError> {
        let l = &self.limits;
        check_value("limits.occlusion_threshold_mmhg", l.occlusion_threshold_mmhg, 1.0, 5_000.0)?;
        check_value("limits.occlusion_latency_s", l.occlusion_latency_s, 0.0, 3_600.0)?;
        check_value("limits.dose_tolerance", l.dose_tolerance, 0.0, 1.0)?;
        check_value("limits.accuracy_tolerance", l.accuracy_tolerance, 0.0, 1.0)?;
        check_value("limits.hard_cap_mg", l.hard_cap_mg, 0.0, 1.0e6)?;
        check_value("limits.concentration_mg_per_ml", l.concentration_mg_per_ml, 1.0e-6, 1.0e4)?;
        if l.hard_cap_mg <= config.raw.prior_delivered_mg {
            return Err(err("limits.hard_cap_mg", "leaves no drug to infuse after the kernel's prior dose"));
        }

        let i = &self.infusion;
        if i.syringes.is_empty() {
            return Err(err("infusion.syringes", "must name at least one syringe"));
        }
        for name in &i.syringes {
            if Syringe::by_name(name).is_none() {
                return Err(err("infusion.syringes", format!("{name:?} is not in the syringe catalogue")));
            }
        }
        check_range("infusion.rate_ml_h", i.rate_ml_h, 1.0e-3, 1.0e4)?;
        let ceiling_ml_h = config.max_rate_ml_s * ketapump_core::S_PER_H;
        if i.rate_ml_h.max > ceiling_ml_h {
            return Err(err(
                "infusion.rate_ml_h",
                format!("max is above the kernel's rate ceiling {ceiling_ml_h} mL/h"),
            ));
        }
        check_range("infusion.duration_min", i.duration_min, 0.1, 24.0 * 60.0)?;
        check_range("infusion.fill_fraction", i.fill_fraction, 0.05, 1.0)?;
        check_probability("infusion.take_up_probability", i.take_up_probability)?;
        check_probability("infusion.rate_change_probability", i.rate_change_probability)?;
        check_range("infusion.rate_change_factor", i.rate_change_factor, 1.0e-3, 1.0e3)?;
        check_probability("infusion.over_cap_probability", i.over_cap_probability)?;
        check_range("infusion.over_cap_headroom", i.over_cap_headroom, 0.0, 0.99)?;

        let p = &self.plant;
        check_range("plant.compliance_ml_per_mmhg", p.compliance_ml_per_mmhg, 1.0e-6, 0.1)?;
        check_range("plant.resistance_mmhg_s_per_ml", p.resistance_mmhg_s_per_ml, 1.0, 1.0e8)?;
        check_range("plant.patient_pressure_mmhg", p.patient_pressure_mmhg, -50.0, 200.0)?;
        check_probability("plant.slack_taken_up_probability", p.slack_taken_up_probability)?;
        check_range("plant.pressure_noise_sd_mmhg", p.pressure_noise_sd_mmhg, 0.0, 100.0)?;
        for name in &i.syringes {
            // The stiffest corner: the drive must leave the fluid a real share of the least compliance.
            let mut corner = plant_config(name, config, 1.0)?;
            corner.compliance_ml_per_mmhg = p.compliance_ml_per_mmhg.min;
            Plant::new(corner).map_err(|e| {
                err("plant.compliance_ml_per_mmhg", format!("min is too low for {name}: the plant refuses it ({e})"))
            })?;
        }

        let r = &self.run;
        check_range("run.fault_window", r.fault_window, 0.0, 1.0)?;
        check_value("run.observe_after_alarm_s", r.observe_after_alarm_s, 0.0, 3_600.0)?;
        check_value("run.settle_s", r.settle_s, 0.0, 36_000.0)?;

        let s = &self.restart;
        check_probability("restart.probability", s.probability)?;
        check_value("restart.watchdog_s", s.watchdog_s, 0.0, 60.0)?;
        check_range("restart.gap_s", s.gap_s, s.watchdog_s, 3_600.0)?;

        let o = &self.occlusion;
        check_probability("occlusion.probability", o.probability)?;
        check_range("occlusion.factor", o.factor, 1.0, 1.0e9)?;
        check_probability("occlusion.clear_probability", o.clear_probability)?;
        check_range("occlusion.clear_after_s", o.clear_after_s, 0.0, 36_000.0)?;

        check_probability("air.probability", self.air.probability)?;
        check_probability("head_height.probability", self.head_height.probability)?;
        check_range("head_height.height_cm", self.head_height.height_cm, -500.0, 500.0)?;
        check_probability("stuck_encoder.probability", self.stuck_encoder.probability)?;
        check_probability("encoder_slip.probability", self.encoder_slip.probability)?;
        check_range("encoder_slip.fraction", self.encoder_slip.fraction, 0.0, 1.0)?;
        check_probability("drive_stall.probability", self.drive_stall.probability)?;
        Ok(())
    }
}

/// The plant for a catalogue syringe as the kernel configuration describes its encoder.
pub(super) fn plant_config(
    name: &str,
    config: &KernelConfig,
    fill_fraction: f64,
) -> Result<PlantConfig, CampaignError> {
    let mut cfg = PlantConfig::nominal_for(name)
        .map_err(|_| err("infusion.syringes", format!("{name:?} is not in the syringe catalogue")))?;
    cfg.fill_ml = cfg.syringe.capacity_ml * fill_fraction;
    cfg.encoder_counts_per_mm = config.raw.encoder_counts_per_mm;
    // One substep per control tick (the fluid update is exact for any step; R·C_f ≫ 0.1 s), and the
    // balance effectively off: the invariants read the plant's delivered volume directly.
    cfg.max_substep_s = config.raw.control_period_s.min(0.1);
    cfg.balance_period_s = 1.0e7;
    cfg.balance_noise_sd_g = 0.0;
    Ok(cfg)
}
