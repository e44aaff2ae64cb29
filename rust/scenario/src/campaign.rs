//! Seeded fault campaigns: randomized closed-loop runs of ketapump's kernel against the hw-sim plant,
//! each checked against the safety invariants.
//!
//! A run is a pure function of (kernel configuration, [`CampaignSpec`], seed). [`derive_scenario`]
//! draws everything random up front, in a fixed order, from a SplitMix64 seeded with the seed: the
//! syringe and its fill, the programmed rate and volume, the plant's compliance, resistance, patient
//! pressure and slack, the pressure-sensor noise, and which faults happen when (occlusion, air, a
//! head-height change, a stuck encoder, a slipping encoder, a stalled drive, a mid-run rate change, a
//! bridge restart). [`run`] then steps the kernel and the plant at the kernel's control period until
//! the dose completes, an alarm has been observed for a while, or a time limit passes; it lets the line
//! settle (occlusion cleared, motor stopped) and checks the [`Invariant`]s.
//!
//! The plant is `ketapump-hwsim`'s, the independent oracle: its volume delivered to the patient and its
//! true line pressure are what the invariants are checked on, never the kernel's own view. The
//! clinical limits the invariants use (occlusion threshold, dose tolerance, cumulative cap, and the
//! drug's concentration that turns delivered mL into mg) come from the spec's `limits`, never from the
//! kernel configuration, so a broken configuration is caught rather than trusted. For the same reason
//! some runs ([`InfusionSpec::over_cap_probability`]) come after a prior dose that leaves less drug
//! under the cap than they program: a sound kernel refuses them, a kernel with too high a cap (or too
//! low a concentration) delivers them and breaks [`Invariant::CumulativeCap`].
//!
//! Invariants (safety-targets.md):
//! - [`Invariant::Overdose`] (S3): delivered ≤ programmed × (1 + dose_tolerance) + one step-volume
//!   (+ the volume a raised pump's line compliance releases by itself, reported as
//!   `hydrostatic_ml`: no pump control can hold it back, and it is zero in runs without a head rise).
//! - [`Invariant::CumulativeCap`] (S3): prior drug + delivered drug ≤ the hard cumulative cap, both in
//!   mg at the spec's concentration.
//! - [`Invariant::MissedOcclusion`] (S5): once an injected occlusion drives the true line pressure
//!   above the spec's threshold, an alarm (which stops the motor) is latched no later than
//!   `max(onset + C·(P_thr − P₀)/Q, crossing) + latency`, C the plant's compliance, P₀ the line
//!   pressure at onset, Q the lowest programmed rate while occluded. The `crossing` term covers
//!   partial occlusions and slack, whose pressure rises slower than a full occlusion's.
//! - [`Invariant::UnlatchedAlarm`] (S7): after the first alarm the kernel never commands forward,
//!   never leaves `Alarm` and never drops a latched alarm (the campaign never acknowledges).
//! - [`Invariant::DoseAccuracy`] (S3): a run with no fault (noise, rate changes and restarts allowed)
//!   completes and delivers the programmed volume within ±accuracy_tolerance.
//!
//! Nothing here panics on any input: a spec is validated once ([`CampaignSpec::validate`]) and a run
//! whose set-up the kernel or plant refuses returns a [`CampaignError`].

use crate::fnv1a;
use ketapump_core::{
    Alarm, AlarmSet, Direction, KernelConfig, RawKernelConfig, SafetyKernel, StateKind, StepOutput, Telemetry,
};
use ketapump_hwsim::{Plant, PlantConfig, SplitMix64, Syringe, MMHG_PER_CM_H2O};
use std::fmt::Write as _;

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

fn err(field: &str, problem: impl Into<String>) -> CampaignError {
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
fn plant_config(name: &str, config: &KernelConfig, fill_fraction: f64) -> Result<PlantConfig, CampaignError> {
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

// ----- scenario ------------------------------------------------------------------------------------

/// A fault and when it starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Resistance × `factor` from `at_s`, until `clear_at_s` if any.
    Occlusion { at_s: f64, factor: f64, clear_at_s: Option<f64> },
    /// The air sensor reports air from `at_s` on.
    Air { at_s: f64 },
    /// The pump is moved to `height_cm` above the cannula at `at_s`.
    HeadHeight { at_s: f64, height_cm: f64 },
    /// The encoder stops counting at `at_s` (delivery goes on).
    StuckEncoder { at_s: f64 },
    /// The encoder misses `fraction` of the motion from `at_s`.
    EncoderSlip { at_s: f64, fraction: f64 },
    /// The drive slips completely from `at_s`: the motor turns, the nut does not move.
    DriveStall { at_s: f64 },
}

impl Fault {
    pub const fn name(&self) -> &'static str {
        match self {
            Fault::Occlusion { .. } => "occlusion",
            Fault::Air { .. } => "air",
            Fault::HeadHeight { .. } => "head_height",
            Fault::StuckEncoder { .. } => "stuck_encoder",
            Fault::EncoderSlip { .. } => "encoder_slip",
            Fault::DriveStall { .. } => "drive_stall",
        }
    }
    pub const fn at_s(&self) -> f64 {
        match *self {
            Fault::Occlusion { at_s, .. }
            | Fault::Air { at_s }
            | Fault::HeadHeight { at_s, .. }
            | Fault::StuckEncoder { at_s }
            | Fault::EncoderSlip { at_s, .. }
            | Fault::DriveStall { at_s } => at_s,
        }
    }
}

/// Everything one run does, derived from (spec, seed).
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub seed: u64,
    pub syringe: &'static Syringe,
    pub fill_ml: f64,
    pub rate_ml_h: f64,
    pub vtbi_ml: f64,
    /// Drug given before this run in the course (mg), told to the kernel as the bridge would.
    pub prior_mg: f64,
    /// The prior dose leaves less drug under the spec's cap than `vtbi_ml`: the program must be refused.
    pub over_cap: bool,
    pub take_up: bool,
    pub slack_taken_up: bool,
    pub compliance_ml_per_mmhg: f64,
    pub resistance_mmhg_s_per_ml: f64,
    pub patient_pressure_mmhg: f64,
    pub pressure_noise_sd_mmhg: f64,
    /// (at_s, new rate mL/h).
    pub rate_change: Option<(f64, f64)>,
    /// (at_s, gap_s).
    pub restart: Option<(f64, f64)>,
    /// At most one of each kind, in the order of [`Fault`]'s variants.
    pub faults: Vec<Fault>,
    /// The run is cut off here (s).
    pub t_max_s: f64,
    pub noise_seed: u64,
}

impl Scenario {
    /// No plant or sensor fault (noise, rate changes and restarts are not faults).
    pub fn fault_free(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Uniform draws from SplitMix64: every draw is made whether or not its value is used, so a scenario's
/// numbers never depend on which probabilities happen to fire.
struct Draw(SplitMix64);

impl Draw {
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn uniform(&mut self, r: Range) -> f64 {
        let u = self.unit();
        r.min + (r.max - r.min) * u
    }
    fn log_uniform(&mut self, r: Range) -> f64 {
        let u = self.unit();
        let (a, b) = (r.min.max(f64::MIN_POSITIVE).ln(), r.max.max(f64::MIN_POSITIVE).ln());
        // max/min, not clamp: never panics, whatever an unvalidated range holds.
        (a + (b - a) * u).exp().max(r.min).min(r.max)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn pick(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

/// Draws the scenario of `seed`. The spec must have been validated against `config`.
pub fn derive_scenario(spec: &CampaignSpec, config: &KernelConfig, seed: u64) -> Result<Scenario, CampaignError> {
    let mut d = Draw(SplitMix64::new(seed));
    let i = &spec.infusion;
    let name = i.syringes.get(d.pick(i.syringes.len())).ok_or_else(|| err("infusion.syringes", "is empty"))?;
    let syringe = Syringe::by_name(name).ok_or_else(|| err("infusion.syringes", format!("{name:?} is unknown")))?;
    let fill_ml = syringe.capacity_ml * d.uniform(i.fill_fraction);
    let rate_ml_h = d.log_uniform(i.rate_ml_h);
    let duration_s = d.uniform(i.duration_min) * 60.0;
    let take_up = d.chance(i.take_up_probability);
    let rate_change_on = d.chance(i.rate_change_probability);
    let new_rate_ml_h = (rate_ml_h * d.log_uniform(i.rate_change_factor)).max(i.rate_ml_h.min).min(i.rate_ml_h.max);

    let p = &spec.plant;
    let compliance = d.uniform(p.compliance_ml_per_mmhg);
    let resistance = d.uniform(p.resistance_mmhg_s_per_ml);
    let patient = d.uniform(p.patient_pressure_mmhg);
    let slack_taken_up = d.chance(p.slack_taken_up_probability);
    let noise_sd = d.uniform(p.pressure_noise_sd_mmhg);

    // Fault times are drawn as fractions of the planned duration, which the volume sets below.
    let window = spec.run.fault_window;
    let when = |d: &mut Draw| d.uniform(window);

    let rate_change_at = when(&mut d);
    let restart_on = d.chance(spec.restart.probability);
    let restart_at = when(&mut d);
    let gap_s = d.uniform(spec.restart.gap_s);

    let o = &spec.occlusion;
    let occlusion_on = d.chance(o.probability);
    let occlusion_at = when(&mut d);
    let factor = d.log_uniform(o.factor);
    let clears = d.chance(o.clear_probability);
    let clear_after = d.uniform(o.clear_after_s);
    let air_on = d.chance(spec.air.probability);
    let air_at = when(&mut d);
    let head_on = d.chance(spec.head_height.probability);
    let head_at = when(&mut d);
    let height_cm = d.uniform(spec.head_height.height_cm);
    let stuck_on = d.chance(spec.stuck_encoder.probability);
    let stuck_at = when(&mut d);
    let slip_on = d.chance(spec.encoder_slip.probability);
    let slip_at = when(&mut d);
    let slip_fraction = d.uniform(spec.encoder_slip.fraction);
    let stall_on = d.chance(spec.drive_stall.probability);
    let stall_at = when(&mut d);
    let noise_seed = d.0.next_u64();
    let over_cap = d.chance(i.over_cap_probability);
    let headroom = d.uniform(i.over_cap_headroom);

    // The volume: rate × duration, bounded by what the syringe holds (less a margin, so the dose ends
    // before the plunger's end stop) and, in a normal run, by the drug the spec's cap still allows. An
    // over-cap run comes after a prior dose that leaves only `headroom` of its drug under the cap.
    let (cap_mg, mg_per_ml) = (spec.limits.hard_cap_mg, spec.limits.concentration_mg_per_ml);
    let fill_bound_ml = (rate_ml_h * duration_s / 3_600.0).min(0.9 * fill_ml);
    let (vtbi_ml, prior_mg) = if over_cap {
        (fill_bound_ml, (cap_mg - headroom * fill_bound_ml * mg_per_ml).max(0.0))
    } else {
        let prior_mg = config.raw.prior_delivered_mg;
        (fill_bound_ml.min(0.999 * (cap_mg - prior_mg) / mg_per_ml), prior_mg)
    };
    let positive = vtbi_ml > 0.0;
    if !positive {
        return Err(err("limits.hard_cap_mg", "leaves no drug to infuse after the prior dose"));
    }
    let planned_s = vtbi_ml / rate_ml_h * 3_600.0;
    let [rate_change_at, restart_at, occlusion_at, air_at, head_at, stuck_at, slip_at, stall_at] =
        [rate_change_at, restart_at, occlusion_at, air_at, head_at, stuck_at, slip_at, stall_at].map(|f| planned_s * f);

    let mut faults = Vec::new();
    if occlusion_on {
        let clear_at_s = clears.then_some(occlusion_at + clear_after);
        faults.push(Fault::Occlusion { at_s: occlusion_at, factor, clear_at_s });
    }
    if air_on {
        faults.push(Fault::Air { at_s: air_at });
    }
    if head_on {
        faults.push(Fault::HeadHeight { at_s: head_at, height_cm });
    }
    if stuck_on {
        faults.push(Fault::StuckEncoder { at_s: stuck_at });
    }
    if slip_on {
        faults.push(Fault::EncoderSlip { at_s: slip_at, fraction: slip_fraction });
    }
    if stall_on {
        faults.push(Fault::DriveStall { at_s: stall_at });
    }
    let rate_change = rate_change_on.then_some((rate_change_at, new_rate_ml_h));
    let restart = restart_on.then_some((restart_at, gap_s));

    // Long enough for a fault-free run at the slowest rate in force, with the slack crossed at that
    // rate when there is no take-up, and the restart gap.
    let slowest_ml_h = rate_change.map_or(rate_ml_h, |(_, r)| r.min(rate_ml_h));
    let slack_ml = 0.5 * syringe.ml_per_mm();
    let t_max_s = 1.25 * (vtbi_ml + slack_ml) / slowest_ml_h * 3_600.0 + restart.map_or(0.0, |(_, g)| g) + 120.0;

    Ok(Scenario {
        seed,
        syringe,
        fill_ml,
        rate_ml_h,
        vtbi_ml,
        prior_mg,
        over_cap,
        take_up,
        slack_taken_up,
        compliance_ml_per_mmhg: compliance,
        resistance_mmhg_s_per_ml: resistance,
        patient_pressure_mmhg: patient,
        pressure_noise_sd_mmhg: noise_sd,
        rate_change,
        restart,
        faults,
        t_max_s,
        noise_seed,
    })
}

// ----- invariants ----------------------------------------------------------------------------------

/// The invariants a run is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invariant {
    Overdose,
    CumulativeCap,
    MissedOcclusion,
    UnlatchedAlarm,
    DoseAccuracy,
}

impl Invariant {
    pub const ALL: [Invariant; 5] = [
        Invariant::Overdose,
        Invariant::CumulativeCap,
        Invariant::MissedOcclusion,
        Invariant::UnlatchedAlarm,
        Invariant::DoseAccuracy,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Invariant::Overdose => "overdose",
            Invariant::CumulativeCap => "cumulative_cap",
            Invariant::MissedOcclusion => "missed_occlusion",
            Invariant::UnlatchedAlarm => "unlatched_alarm",
            Invariant::DoseAccuracy => "dose_accuracy",
        }
    }
}

/// One broken invariant and the numbers that broke it.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

/// S3 overdose: `delivered ≤ programmed × (1 + tolerance) + step + hydrostatic`.
pub fn check_overdose(
    programmed_ml: f64,
    delivered_ml: f64,
    tolerance: f64,
    step_ml: f64,
    hydrostatic_ml: f64,
) -> Option<Violation> {
    let limit = programmed_ml * (1.0 + tolerance) + step_ml + hydrostatic_ml;
    let ok = delivered_ml <= limit; // false for NaN
    (!ok).then(|| Violation {
        invariant: Invariant::Overdose,
        detail: format!(
            "delivered {delivered_ml:.6} mL > {limit:.6} mL = programmed {programmed_ml:.6} × (1 + {tolerance}) \
             + step {step_ml:.6} + hydrostatic {hydrostatic_ml:.6}"
        ),
    })
}

/// S3 cap: `prior + delivered × concentration ≤ cap`.
pub fn check_cumulative_cap(
    prior_mg: f64,
    delivered_ml: f64,
    mg_per_ml: f64,
    step_ml: f64,
    cap_mg: f64,
) -> Option<Violation> {
    let total = prior_mg + delivered_ml * mg_per_ml;
    let limit = cap_mg + step_ml * mg_per_ml;
    let ok = total <= limit; // false for NaN
    (!ok).then(|| Violation {
        invariant: Invariant::CumulativeCap,
        detail: format!(
            "cumulative {total:.6} mg (prior {prior_mg:.6} + delivered {delivered_ml:.6} mL × {mg_per_ml} mg/mL) \
             > cap {cap_mg:.6} mg + one step"
        ),
    })
}

/// What the run saw of an injected occlusion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OcclusionRecord {
    pub onset_s: f64,
    /// True line pressure at onset (mmHg).
    pub p0_mmhg: f64,
    /// Lowest programmed rate in force while occluded (mL/s).
    pub rate_ml_s: f64,
    /// The plant's total compliance (mL/mmHg).
    pub compliance_ml_per_mmhg: f64,
    /// First time the true line pressure exceeded the spec's threshold, if it did.
    pub crossed_s: Option<f64>,
}

impl OcclusionRecord {
    /// S5: the latest time the alarm may latch, or `None` when the pressure never crossed.
    pub fn deadline_s(&self, limits: &Limits) -> Option<f64> {
        let crossed = self.crossed_s?;
        let rise_s = if self.rate_ml_s > 0.0 {
            (self.compliance_ml_per_mmhg * (limits.occlusion_threshold_mmhg - self.p0_mmhg) / self.rate_ml_s).max(0.0)
        } else {
            0.0
        };
        Some((self.onset_s + rise_s).max(crossed) + limits.occlusion_latency_s)
    }
}

/// S5 missed occlusion: an alarm must have latched by the deadline.
pub fn check_occlusion(record: &OcclusionRecord, first_alarm_s: Option<f64>, limits: &Limits) -> Option<Violation> {
    let deadline = record.deadline_s(limits)?;
    let in_time = first_alarm_s.is_some_and(|t| t <= deadline);
    (!in_time).then(|| {
        let alarm = first_alarm_s.map_or_else(|| String::from("never"), |t| format!("at {t:.1} s"));
        Violation {
            invariant: Invariant::MissedOcclusion,
            detail: format!(
                "occlusion at {:.1} s (P0 {:.1} mmHg, Q {:.4} mL/h, C {:.5} mL/mmHg) crossed {} mmHg at {:.1} s; \
                 alarm due by {deadline:.1} s, latched {alarm}",
                record.onset_s,
                record.p0_mmhg,
                record.rate_ml_s * 3_600.0,
                record.compliance_ml_per_mmhg,
                limits.occlusion_threshold_mmhg,
                record.crossed_s.unwrap_or(f64::NAN),
            ),
        }
    })
}

/// S3 accuracy of a fault-free run: it completed, within ±tolerance of the programmed volume.
pub fn check_accuracy(
    programmed_ml: f64,
    delivered_ml: f64,
    tolerance: f64,
    state: StateKind,
    alarms: AlarmSet,
) -> Option<Violation> {
    let off = (delivered_ml - programmed_ml) / programmed_ml;
    let ok = state == StateKind::Complete && off.abs() <= tolerance;
    (!ok).then(|| {
        let mut detail = format!(
            "ended {} with {delivered_ml:.6} mL of {programmed_ml:.6} mL ({:+.3} %)",
            state.as_str(),
            off * 100.0
        );
        for (n, alarm) in alarms.iter().enumerate() {
            let _ = write!(detail, "{}{}", if n == 0 { "; alarms: " } else { ", " }, alarm.as_str());
        }
        Violation { invariant: Invariant::DoseAccuracy, detail }
    })
}

/// S7: watches every tick after the first alarm. The first breach is kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatchMonitor {
    latched: Option<AlarmSet>,
    breach: Option<String>,
}

impl LatchMonitor {
    pub fn observe(&mut self, t_s: f64, out: &StepOutput) {
        if self.breach.is_some() {
            return;
        }
        let Some(before) = self.latched else {
            if !out.alarms.is_empty() {
                self.latched = Some(out.alarms);
                self.breach = Self::breach_of(t_s, out, out.alarms);
            }
            return;
        };
        self.breach = Self::breach_of(t_s, out, before);
        self.latched = Some(before.union(out.alarms));
    }

    fn breach_of(t_s: f64, out: &StepOutput, before: AlarmSet) -> Option<String> {
        let names = |set: AlarmSet| set.iter().map(Alarm::as_str).collect::<Vec<_>>().join(", ");
        if out.command.direction == Direction::Forward {
            return Some(format!(
                "at {t_s:.1} s forward {:.4} mL/h commanded while alarms latched ({})",
                out.command.rate_ml_s * 3_600.0,
                names(before)
            ));
        }
        if out.state != StateKind::Alarm {
            return Some(format!("at {t_s:.1} s the kernel left alarm for {} unacknowledged", out.state.as_str()));
        }
        let dropped = before.difference(out.alarms);
        if !dropped.is_empty() {
            return Some(format!("at {t_s:.1} s latched alarms dropped unacknowledged: {}", names(dropped)));
        }
        None
    }

    /// When the first alarm was seen, the breach if any.
    pub fn violation(&self) -> Option<Violation> {
        self.breach.clone().map(|detail| Violation { invariant: Invariant::UnlatchedAlarm, detail })
    }
}

// ----- the run -------------------------------------------------------------------------------------

/// How a run went and what it broke.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub seed: u64,
    pub syringe: &'static str,
    pub rate_ml_h: f64,
    pub programmed_ml: f64,
    /// Drug given before the run (mg).
    pub prior_mg: f64,
    /// The program was above what the cap allowed after the prior dose.
    pub over_cap: bool,
    /// Why the kernel refused an over-cap program (nothing ran); `None`: it ran.
    pub refused: Option<String>,
    /// Volume that reached the patient after the line settled (the plant's).
    pub delivered_ml: f64,
    /// Most the patient had received at any tick or after settling.
    pub peak_delivered_ml: f64,
    /// Volume the kernels measured with the encoder, all programs together.
    pub measured_ml: f64,
    /// Volume a raised pump's line compliance released by itself (allowed on top of S3).
    pub hydrostatic_ml: f64,
    /// One microstep of the drive (mL).
    pub step_ml: f64,
    pub faults: Vec<Fault>,
    pub restarts: u32,
    pub rate_changed: bool,
    /// State of the last kernel when the run ended.
    pub state: StateKind,
    /// Alarms latched by the last kernel.
    pub alarms: AlarmSet,
    pub first_alarm_s: Option<f64>,
    pub occlusion: Option<OcclusionRecord>,
    /// S5 deadline, when the occlusion crossed the threshold.
    pub occlusion_deadline_s: Option<f64>,
    /// Peak true line pressure during the run (mmHg).
    pub peak_pressure_mmhg: f64,
    /// Plant time when the loop ended (before settling) (s).
    pub end_s: f64,
    pub timed_out: bool,
    pub ticks: u64,
    /// FNV-1a over (tick, state, direction, rate) every second and at every state change, and the
    /// final delivered volume: equal hashes, equal runs.
    pub trace_hash: u64,
    pub violations: Vec<Violation>,
}

fn motor_ml_h(out: &StepOutput) -> f64 {
    let r = out.command.rate_ml_s * 3_600.0;
    match out.command.direction {
        Direction::Forward => r,
        Direction::Retract => -r,
        Direction::Hold => 0.0,
    }
}

fn hash_tick(hash: u64, n: u64, out: &StepOutput) -> u64 {
    let h = fnv1a(hash, n);
    let h = fnv1a(h, out.state as u64);
    let h = fnv1a(h, out.command.direction as u64);
    fnv1a(h, out.command.rate_ml_s.to_bits())
}

fn plant_err(field: &str) -> impl Fn(ketapump_hwsim::PlantError) -> CampaignError + '_ {
    move |e| err(field, format!("refused by the plant: {e}"))
}

fn kernel_for(raw: RawKernelConfig) -> Result<SafetyKernel, CampaignError> {
    KernelConfig::from_raw(raw)
        .map(SafetyKernel::new)
        .map_err(|e| err(&format!("kernel.{}", e.field), format!("refused for this run: {e}")))
}

/// Loads and starts a program on a fresh kernel, after one step that shows it the pump's state.
fn start_kernel(
    kernel: &mut SafetyKernel,
    t_s: f64,
    sample: &Telemetry,
    rate_ml_h: f64,
    vtbi_ml: f64,
    take_up: bool,
) -> Result<(), CampaignError> {
    kernel.step(t_s, sample);
    kernel.load(rate_ml_h, vtbi_ml, take_up).map_err(|e| err("infusion", format!("program refused: {e:?}")))?;
    kernel.start().map_err(|e| err("infusion", format!("start refused: {e:?}")))
}

/// Runs the scenario of `seed`. `spec` should have been validated against `config` (an unvalidated
/// one never panics, but its numbers are meaningless).
pub fn run(config: &KernelConfig, spec: &CampaignSpec, seed: u64) -> Result<Outcome, CampaignError> {
    let sc = derive_scenario(spec, config, seed)?;
    run_scenario(config, spec, &sc)
}

/// Runs a derived scenario (see [`run`]).
pub fn run_scenario(config: &KernelConfig, spec: &CampaignSpec, sc: &Scenario) -> Result<Outcome, CampaignError> {
    let limits = spec.limits;
    let mut pcfg = plant_config(sc.syringe.name, config, 1.0)?;
    pcfg.fill_ml = sc.fill_ml;
    pcfg.slack_taken_up = sc.slack_taken_up;
    pcfg.compliance_ml_per_mmhg = sc.compliance_ml_per_mmhg;
    pcfg.resistance_mmhg_s_per_ml = sc.resistance_mmhg_s_per_ml;
    pcfg.patient_pressure_mmhg = sc.patient_pressure_mmhg;
    pcfg.seed = sc.seed;
    let step_ml = pcfg.ml_per_step();
    let fluid_c = pcfg.fluid_compliance_ml_per_mmhg();
    let mut plant = Plant::new(pcfg).map_err(plant_err("plant"))?;
    let mut noise = SplitMix64::new(sc.noise_seed);

    let raw = RawKernelConfig {
        syringe_diameter_mm: sc.syringe.inner_diameter_mm,
        syringe_capacity_ml: sc.syringe.capacity_ml,
        syringe_fill_ml: sc.fill_ml,
        prior_delivered_mg: sc.prior_mg,
        ..config.raw
    };
    // What the bridge converts a recovered volume with at a restart: the configuration's concentration.
    let configured_mg_per_ml = config.mg_per_ml();
    let dt = config.raw.control_period_s;
    let observe_ticks = (spec.run.observe_after_alarm_s / dt).ceil() as u64;
    let max_ticks = (sc.t_max_s / dt).ceil() as u64;
    let p_eq_start = sc.patient_pressure_mmhg;
    let mut p_eq_min = p_eq_start;

    let sample_at = |plant: &Plant, t_s: f64, noise: &mut SplitMix64, air: bool| Telemetry {
        t_s,
        volume_ml: plant.encoder_volume_ml(),
        pressure_mmhg: plant.line_pressure_mmhg() + sc.pressure_noise_sd_mmhg * noise.next_gaussian(),
        motor_running: plant.motor_running(),
        air_in_line: air,
        syringe_present: true,
        end_of_travel: plant.end_of_travel(),
    };

    let mut air = false;
    let first = sample_at(&plant, 0.0, &mut noise, air);
    let started = kernel_for(raw).and_then(|mut k| {
        start_kernel(&mut k, 0.0, &first, sc.rate_ml_h, sc.vtbi_ml, sc.take_up)?;
        Ok(k)
    });
    // An over-cap program refused is the safe outcome (nothing runs); any other refusal is an error.
    let (mut kernel, refused) = match started {
        Ok(k) => (Some(k), None),
        Err(e) if sc.over_cap => (None, Some(e.to_string())),
        Err(e) => return Err(e),
    };
    let origin_ml = plant.encoder_volume_ml();

    let mut pending: Vec<Fault> = sc.faults.clone();
    let mut rate_change = sc.rate_change;
    let mut restart = sc.restart;
    let mut rate_ml_h = sc.rate_ml_h;
    let mut motor_ml_h_now = 0.0_f64;
    // Bridge down: (plant time the watchdog stops the motor, plant time the new kernel starts).
    let mut down: Option<(f64, f64)> = None;
    let mut restarts = 0_u32;
    let mut occluded = false;
    let mut occlusion: Option<OcclusionRecord> = None;
    let mut latch = LatchMonitor::default();
    let mut first_alarm: Option<(u64, f64)> = None;
    let mut peak_delivered = plant.delivered_ml();
    let mut peak_pressure = plant.line_pressure_mmhg();
    let mut hash = crate::FNV_OFFSET;
    let mut last_state = StateKind::Running;
    let mut timed_out = false;
    let mut completed_at_restart = false;
    let mut n = 0_u64;

    while let Some(kernel) = kernel.as_mut() {
        n += 1;
        let t = n as f64 * dt;
        plant.step(dt).map_err(plant_err("run"))?;

        // Scheduled faults due by now, applied at this tick.
        let mut k = 0;
        while k < pending.len() {
            let fault = pending[k];
            if fault.at_s() > t {
                k += 1;
                continue;
            }
            match fault {
                Fault::Occlusion { factor, clear_at_s, .. } => {
                    if !occluded && occlusion.is_none() {
                        occlusion = Some(OcclusionRecord {
                            onset_s: t,
                            p0_mmhg: plant.line_pressure_mmhg(),
                            rate_ml_s: rate_ml_h / 3_600.0,
                            compliance_ml_per_mmhg: plant.compliance_ml_per_mmhg(),
                            crossed_s: None,
                        });
                        plant.set_occlusion_factor(factor).map_err(plant_err("occlusion.factor"))?;
                        occluded = true;
                        if let Some(clear) = clear_at_s {
                            // Re-queued as its own event: a cleared occlusion is a factor of 1.
                            pending.push(Fault::Occlusion { at_s: clear, factor: 1.0, clear_at_s: None });
                        }
                    } else {
                        plant.clear_occlusion();
                        occluded = false;
                    }
                }
                Fault::Air { .. } => air = true,
                Fault::HeadHeight { height_cm, .. } => {
                    plant.set_head_height_cm(height_cm).map_err(plant_err("head_height.height_cm"))?;
                    p_eq_min = p_eq_min.min(sc.patient_pressure_mmhg - height_cm * MMHG_PER_CM_H2O);
                }
                Fault::StuckEncoder { .. } => plant.set_encoder_slip(1.0).map_err(plant_err("stuck_encoder"))?,
                Fault::EncoderSlip { fraction, .. } => {
                    plant.set_encoder_slip(fraction).map_err(plant_err("encoder_slip.fraction"))?;
                }
                Fault::DriveStall { .. } => plant.set_motor_stalled(true),
            }
            pending.swap_remove(k);
        }

        let pressure = plant.line_pressure_mmhg();
        peak_pressure = peak_pressure.max(pressure);
        peak_delivered = peak_delivered.max(plant.delivered_ml());
        if let Some(rec) = occlusion.as_mut() {
            if occluded && rec.crossed_s.is_none() && pressure > limits.occlusion_threshold_mmhg {
                rec.crossed_s = Some(t);
            }
        }

        // The bridge is down: the pump runs on until its watchdog, then holds; then a new kernel.
        if let Some((stop_at, resume_at)) = down {
            if t >= stop_at && motor_ml_h_now != 0.0 {
                motor_ml_h_now = 0.0;
                plant.set_motor_rate_ml_h(0.0).map_err(plant_err("restart"))?;
            }
            if t < resume_at {
                if n >= max_ticks {
                    timed_out = true;
                    break;
                }
                continue;
            }
            down = None;
            let recovered_ml = plant.encoder_volume_ml() - origin_ml;
            let remaining_ml = sc.vtbi_ml - recovered_ml;
            if remaining_ml <= config.volume_quantum_ml {
                completed_at_restart = true;
                break;
            }
            let raw = RawKernelConfig {
                syringe_fill_ml: (sc.fill_ml - recovered_ml).max(0.0),
                prior_delivered_mg: sc.prior_mg + recovered_ml * configured_mg_per_ml,
                ..raw
            };
            *kernel = kernel_for(raw)?;
            let sample = sample_at(&plant, t, &mut noise, air);
            start_kernel(kernel, t, &sample, rate_ml_h, remaining_ml, false)?;
            restarts += 1;
            // The new kernel's first command comes with the next tick.
            if n >= max_ticks {
                timed_out = true;
                break;
            }
            continue;
        }

        if let Some((at, new_rate)) = rate_change {
            if t >= at {
                rate_change = None;
                // Refused only in a state where no program runs (after an alarm or the end): moot.
                if kernel.set_rate(new_rate).is_ok() {
                    rate_ml_h = new_rate;
                    if let (true, Some(rec)) = (occluded, occlusion.as_mut()) {
                        rec.rate_ml_s = rec.rate_ml_s.min(new_rate / 3_600.0);
                    }
                }
            }
        }

        let sample = sample_at(&plant, t, &mut noise, air);
        let out = kernel.step(t, &sample);
        latch.observe(t, &out);
        if first_alarm.is_none() && !out.alarms.is_empty() {
            first_alarm = Some((n, t));
        }
        let motor = motor_ml_h(&out);
        if motor != motor_ml_h_now {
            plant.set_motor_rate_ml_h(motor).map_err(plant_err("run"))?;
            motor_ml_h_now = motor;
        }
        if n % 10 == 0 || out.state != last_state {
            hash = hash_tick(hash, n, &out);
            last_state = out.state;
        }

        if out.state == StateKind::Complete {
            break;
        }
        if let Some((alarm_tick, _)) = first_alarm {
            if n >= alarm_tick + observe_ticks {
                break;
            }
        }
        if n >= max_ticks {
            timed_out = true;
            break;
        }
        if let Some((at, gap)) = restart {
            if t >= at {
                restart = None;
                if out.state == StateKind::Running && out.alarms.is_empty() {
                    down = Some((t + spec.restart.watchdog_s, t + gap));
                }
            }
        }
    }
    let end_s = n as f64 * dt;
    let measured_ml = plant.encoder_volume_ml() - origin_ml;

    // The line is eventually opened and left alone: whatever the compliance stored reaches the patient.
    plant.set_motor_rate_ml_h(0.0).map_err(plant_err("run"))?;
    plant.clear_occlusion();
    let settle_ticks = (spec.run.settle_s / dt).ceil() as u64;
    for _ in 0..settle_ticks {
        plant.step(dt).map_err(plant_err("run.settle_s"))?;
        peak_delivered = peak_delivered.max(plant.delivered_ml());
    }
    let delivered_ml = plant.delivered_ml();
    hash = fnv1a(hash, delivered_ml.to_bits());

    // A restart that finds the dose already delivered ends the run as complete.
    let state = match &kernel {
        _ if completed_at_restart => StateKind::Complete,
        Some(k) => k.state_kind(),
        None => StateKind::Idle,
    };
    let alarms = kernel.as_ref().map_or(AlarmSet::EMPTY, SafetyKernel::alarms);
    let first_alarm_s = first_alarm.map(|(_, t)| t);
    let hydrostatic_ml = fluid_c * (p_eq_start - p_eq_min).max(0.0);

    let mut violations = Vec::new();
    violations.extend(check_overdose(sc.vtbi_ml, peak_delivered, limits.dose_tolerance, step_ml, hydrostatic_ml));
    violations.extend(check_cumulative_cap(
        sc.prior_mg,
        peak_delivered,
        limits.concentration_mg_per_ml,
        step_ml,
        limits.hard_cap_mg,
    ));
    if let Some(rec) = occlusion.as_ref() {
        violations.extend(check_occlusion(rec, first_alarm_s, &limits));
    }
    violations.extend(latch.violation());
    if sc.fault_free() && !sc.over_cap {
        violations.extend(check_accuracy(sc.vtbi_ml, delivered_ml, limits.accuracy_tolerance, state, alarms));
    }

    Ok(Outcome {
        seed: sc.seed,
        syringe: sc.syringe.name,
        rate_ml_h: sc.rate_ml_h,
        programmed_ml: sc.vtbi_ml,
        prior_mg: sc.prior_mg,
        over_cap: sc.over_cap,
        refused,
        delivered_ml,
        peak_delivered_ml: peak_delivered,
        measured_ml,
        hydrostatic_ml,
        step_ml,
        faults: sc.faults.clone(),
        restarts,
        rate_changed: sc.rate_change.is_some(),
        state,
        alarms,
        first_alarm_s,
        occlusion,
        occlusion_deadline_s: occlusion.and_then(|r| r.deadline_s(&limits)),
        peak_pressure_mmhg: peak_pressure,
        end_s,
        timed_out,
        ticks: n,
        trace_hash: hash,
        violations,
    })
}
