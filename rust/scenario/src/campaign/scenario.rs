//! Scenario derivation: everything one run does (syringe, program, plant, faults and their times),
//! drawn from a seed in a fixed order, every draw made whether or not it is used.

use super::spec::{err, CampaignError, CampaignSpec, Range};
use ketapump_core::KernelConfig;
use ketapump_hwsim::{SplitMix64, Syringe};

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
