//! The plant: stepper → lead screw → slack → drive spring → plunger seal (stick/slip) → fluid
//! compliance → downstream resistance → patient, plus the sensors a test rig can read.
//!
//! ```text
//!  motor steps ──► nut (x_nut) ──[slack deadband + drive spring, C_d]──► seal (x_seal) ──► fluid p (C_f)
//!                                                                                          │
//!     patient  ◄── q_out = (p + ρg·head − p_patient) / (R · occlusion) ◄──────────────────────┘
//! ```
//!
//! Everything is a pressure equivalent (mmHg): the force the nut puts on the plunger is expressed as the
//! pressure that force would make over the bore area, so friction, drive force and fluid pressure are
//! compared directly.
//!
//! - **Motor.** A microstepping stepper: the commanded rate (microsteps/s) accumulates a fractional
//!   step count; only whole microsteps move the nut (quantisation is real). A stalled motor still
//!   counts its steps but the nut does not move; the motor also stalls by itself when the drive force
//!   exceeds its force limit (an occluded or bottomed-out syringe).
//! - **Slack and drive spring.** `r = x_nut − x_seal − offset`. For `r > 0` the nut pushes through a
//!   spring, for `r < −slack` it pulls (the clamp behind the flange), in between it touches nothing.
//!   The spring is the stopper rubber, rod and bracket; its stiffness in N/mm becomes a volume
//!   compliance `C_d = A²/k` of the syringe.
//! - **Compliance split.** The configured compliance `C` is the total seen by the drive (what one
//!   measures by pushing against a closed line, and what sets the occlusion pressure slope `Q/C`). The
//!   drive spring takes `C_d` of it and the fluid side (barrel, line) the rest, `C_f = C − C_d`.
//! - **Seal friction.** A massless seal, quasi-static: a stuck seal breaks away when the net force
//!   `F = drive − p` exceeds the stiction equivalent; a sliding seal moves exactly as far as keeps `|F|`
//!   at the running-friction equivalent, and sticks again when `|F|` falls to it. The breakaway jump
//!   releases the spring energy `(stiction − running)·C_d·C_f/(C_d + C_f)` as a small bolus, the
//!   real stick-slip start-up artefact. The seal stops at the barrel ends (empty, and full).
//! - **Fluid.** `C_f·dp/dt = q_seal − q_out`, `q_out = (p + head − p_patient)/R` (negative = backflow).
//!   Between seal moves `q_seal = 0` and the update is the exact exponential solution, so any step
//!   size is stable even when `R·C_f` is far below it; seal moves are applied as exact volume
//!   transfers (operator splitting). `dt` is cut into substeps of at most `max_substep_s` so that the
//!   splitting error is negligible against `R·C`, and substeps end on balance sample instants.
//!
//! Time is injected: [`Plant::step`] advances by `dt`; plant time is kept in integer nanoseconds so that
//! the 30 s balance samples land exactly on their instants whatever the step size.

use crate::rng::SplitMix64;
use crate::syringe::Syringe;

/// Hydrostatic pressure of a water column (mmHg per cm).
pub const MMHG_PER_CM_H2O: f64 = 0.7355;
/// Pascal per mmHg.
pub const PA_PER_MMHG: f64 = 133.322;
const NS_PER_S: f64 = 1.0e9;

/// The nominal downstream resistance (mmHg·s/mL): 1 mmHg of line pressure per mL/h, so 52.5 mmHg at
/// 52.5 mL/h and 90 mmHg at 90 mL/h above the patient's venous pressure — a syringe-pump line at
/// clinical rates runs at tens of mmHg. Why this value: Poiseuille (`R = 8µL/πr⁴`, water at 20 °C) gives
/// ≈ 3 540 mmHg·s/mL for a 150 cm microbore extension set of 0.6 mm bore, the dominant term, and
/// ≈ 60 for a 25 mm, 22 G cannula; a 1 mm bore set is ≈ 460 and a 0.5 mm one ≈ 7 300. `R·C_f` ≈ 5.8 s
/// with the nominal fluid compliance.
pub const NOMINAL_RESISTANCE_MMHG_S_PER_ML: f64 = 3_600.0;

/// A high-resistance line (mmHg·s/mL), four times the nominal: a 0.5 mm × 150 cm microbore set with an
/// infusate twice as viscous as water (≈ 14 700 by Poiseuille), or a small cannula and an in-line
/// filter. 4 mmHg per mL/h: 210 mmHg at 52.5 mL/h, 360 mmHg at 90 mL/h, above the default 300 mmHg
/// occlusion threshold. Not a default: tests use it to keep the high-pressure regime covered.
pub const HIGH_RESISTANCE_MMHG_S_PER_ML: f64 = 14_400.0;

/// Why a configuration, command or step was refused. State is untouched when an error is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantError {
    /// The named quantity was NaN or infinite.
    NotFinite(&'static str),
    /// The named quantity was outside its physical range.
    OutOfRange(&'static str),
    /// No syringe of that name in the catalogue.
    UnknownSyringe,
}

impl core::fmt::Display for PlantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlantError::NotFinite(what) => write!(f, "{what} must be a finite number"),
            PlantError::OutOfRange(what) => write!(f, "{what} is out of range"),
            PlantError::UnknownSyringe => f.write_str("unknown syringe"),
        }
    }
}

impl std::error::Error for PlantError {}

fn check(value: f64, what: &'static str, ok: impl Fn(f64) -> bool) -> Result<f64, PlantError> {
    if !value.is_finite() {
        return Err(PlantError::NotFinite(what));
    }
    if !ok(value) {
        return Err(PlantError::OutOfRange(what));
    }
    Ok(value)
}

/// Everything that defines a plant. Start from [`PlantConfig::nominal`] and override fields.
#[derive(Debug, Clone, PartialEq)]
pub struct PlantConfig {
    pub syringe: Syringe,
    /// Liquid in the syringe at start (mL); the plunger stops when this much has left the barrel.
    pub fill_ml: f64,
    pub full_steps_per_rev: u32,
    pub microsteps: u32,
    /// Lead-screw pitch (mm per revolution).
    pub lead_pitch_mm: f64,
    /// Lead-screw/clamp backlash (mm).
    pub slack_mm: f64,
    /// True: the nut starts touching the plunger (slack taken up, e.g. after a prime). False: it
    /// starts at the far end of the slack and must travel `slack_mm` before pushing.
    pub slack_taken_up: bool,
    /// Stiffness of the drive train between nut and seal (stopper rubber, rod, bracket) (N/mm).
    pub drive_stiffness_n_per_mm: f64,
    /// Total syringe + line compliance seen by the drive (mL/mmHg).
    pub compliance_ml_per_mmhg: f64,
    /// Downstream resistance: line, filter, cannula (mmHg·s/mL). The flowing line pressure is
    /// `p_patient + R·Q`; see [`PlantConfig::nominal`] for the default and [`HIGH_RESISTANCE_MMHG_S_PER_ML`]
    /// for a narrow, viscous line.
    pub resistance_mmhg_s_per_ml: f64,
    /// Pressure at the cannula tip (mmHg).
    pub patient_pressure_mmhg: f64,
    /// Height of the syringe above the cannula (cm); negative when the pump is below the patient.
    pub head_height_cm: f64,
    /// Force beyond which the motor skips steps (N).
    pub motor_stall_force_n: f64,
    /// Plunger encoder resolution (counts per mm of plunger travel).
    pub encoder_counts_per_mm: f64,
    /// Density of the infusate (g/mL), for the balance.
    pub density_g_per_ml: f64,
    /// Balance sample interval (s).
    pub balance_period_s: f64,
    /// Standard deviation of the balance's Gaussian noise (g).
    pub balance_noise_sd_g: f64,
    /// Balance readability (g); readings are rounded to it. 0 disables rounding.
    pub balance_resolution_g: f64,
    /// Longest internal integration substep (s).
    pub max_substep_s: f64,
    /// Seed of the noise generator.
    pub seed: u64,
}

impl PlantConfig {
    /// The nominal plant for a syringe, full, slack not taken up. See the crate docs for why each
    /// default was chosen.
    pub fn nominal(syringe: Syringe) -> Self {
        Self {
            syringe,
            fill_ml: syringe.capacity_ml,
            full_steps_per_rev: 200,
            microsteps: 16,
            lead_pitch_mm: 1.0,
            slack_mm: 0.3,
            slack_taken_up: false,
            drive_stiffness_n_per_mm: 100.0,
            compliance_ml_per_mmhg: 2.0e-3,
            resistance_mmhg_s_per_ml: NOMINAL_RESISTANCE_MMHG_S_PER_ML,
            patient_pressure_mmhg: 10.0,
            head_height_cm: 0.0,
            motor_stall_force_n: 200.0,
            encoder_counts_per_mm: 3200.0,
            density_g_per_ml: 1.0,
            balance_period_s: 30.0,
            balance_noise_sd_g: 2.0e-4,
            balance_resolution_g: 1.0e-4,
            max_substep_s: 0.01,
            seed: 0,
        }
    }

    /// [`PlantConfig::nominal`] for a catalogue name such as `"bd-plastipak-50"`.
    pub fn nominal_for(name: &str) -> Result<Self, PlantError> {
        Syringe::by_name(name).map(|s| Self::nominal(*s)).ok_or(PlantError::UnknownSyringe)
    }

    /// Microsteps per mm of nut travel.
    pub fn steps_per_mm(&self) -> f64 {
        f64::from(self.full_steps_per_rev) * f64::from(self.microsteps) / self.lead_pitch_mm
    }

    /// Volume one microstep displaces (mL).
    pub fn ml_per_step(&self) -> f64 {
        self.syringe.ml_per_mm() / self.steps_per_mm()
    }

    /// Drive-train compliance `C_d = A²/k` (mL/mmHg).
    pub fn drive_compliance_ml_per_mmhg(&self) -> f64 {
        let area_m2 = self.syringe.area_mm2() * 1.0e-6;
        let k_n_per_m = self.drive_stiffness_n_per_mm * 1000.0;
        area_m2 * area_m2 / k_n_per_m * 1.0e6 * PA_PER_MMHG
    }

    /// Fluid-side compliance `C_f = C − C_d` (mL/mmHg).
    pub fn fluid_compliance_ml_per_mmhg(&self) -> f64 {
        self.compliance_ml_per_mmhg - self.drive_compliance_ml_per_mmhg()
    }

    /// Checks every field; the plant is only built from a validated configuration.
    pub fn validate(&self) -> Result<(), PlantError> {
        let s = &self.syringe;
        check(s.capacity_ml, "syringe.capacity_ml", |v| v > 0.0)?;
        check(s.inner_diameter_mm, "syringe.inner_diameter_mm", |v| v > 0.0)?;
        check(s.stiction_mmhg, "syringe.stiction_mmhg", |v| v >= 0.0)?;
        check(s.running_friction_mmhg, "syringe.running_friction_mmhg", |v| (0.0..=s.stiction_mmhg).contains(&v))?;
        check(self.fill_ml, "fill_ml", |v| (0.0..=s.capacity_ml).contains(&v))?;
        if self.full_steps_per_rev == 0 || self.microsteps == 0 {
            return Err(PlantError::OutOfRange("steps per revolution"));
        }
        check(self.lead_pitch_mm, "lead_pitch_mm", |v| v > 0.0)?;
        check(self.slack_mm, "slack_mm", |v| v >= 0.0)?;
        check(self.drive_stiffness_n_per_mm, "drive_stiffness_n_per_mm", |v| v > 0.0)?;
        check(self.compliance_ml_per_mmhg, "compliance_ml_per_mmhg", |v| v > 0.0)?;
        // The fluid side must keep a real share of the compliance, or the split is meaningless.
        if self.fluid_compliance_ml_per_mmhg() < 0.1 * self.compliance_ml_per_mmhg {
            return Err(PlantError::OutOfRange("drive_stiffness_n_per_mm (drive takes > 90 % of compliance)"));
        }
        check(self.resistance_mmhg_s_per_ml, "resistance_mmhg_s_per_ml", |v| v > 0.0)?;
        check(self.patient_pressure_mmhg, "patient_pressure_mmhg", |_| true)?;
        check(self.head_height_cm, "head_height_cm", |v| v.abs() <= 500.0)?;
        check(self.motor_stall_force_n, "motor_stall_force_n", |v| v > 0.0)?;
        check(self.encoder_counts_per_mm, "encoder_counts_per_mm", |v| v > 0.0)?;
        check(self.density_g_per_ml, "density_g_per_ml", |v| v > 0.0)?;
        check(self.balance_period_s, "balance_period_s", |v| v >= 1.0e-3)?;
        check(self.balance_noise_sd_g, "balance_noise_sd_g", |v| v >= 0.0)?;
        check(self.balance_resolution_g, "balance_resolution_g", |v| v >= 0.0)?;
        check(self.max_substep_s, "max_substep_s", |v| (1.0e-6..=10.0).contains(&v))?;
        Ok(())
    }
}

/// One gravimetric reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceReading {
    /// Plant time of the sample (s).
    pub t_s: f64,
    /// Mass on the balance (g), noise and rounding included.
    pub grams: f64,
}

/// What the seal is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealMotion {
    Stuck,
    /// Sliding towards empty (delivering).
    Forward,
    /// Sliding towards full (drawing back).
    Backward,
}

/// A snapshot of everything a rig could measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlantOutputs {
    pub t_s: f64,
    /// Plunger encoder (counts from the start position; loses counts under encoder slip).
    pub encoder_counts: i64,
    /// Volume the encoder counts represent (mL).
    pub encoder_volume_ml: f64,
    /// Fluid pressure in the syringe and line (mmHg, gauge).
    pub line_pressure_mmhg: f64,
    /// Volume that reached the patient, ∫q_out dt (mL; backflow counts negative).
    pub delivered_ml: f64,
    /// The motor is being commanded to step.
    pub motor_running: bool,
    /// The plunger sits at the empty stop.
    pub end_of_travel: bool,
    /// Force the drive puts on the plunger, as a pressure equivalent (mmHg; negative = pulling).
    pub drive_force_mmhg: f64,
}

/// The simulated syringe pump mechanics and fluid path.
#[derive(Debug, Clone)]
pub struct Plant {
    cfg: PlantConfig,
    // Derived constants.
    ml_per_mm: f64,
    steps_per_mm: f64,
    drive_c: f64,
    fluid_c: f64,
    /// The quotients of the constants above that every substep uses (`ml_per_mm / drive_c`, and the
    /// fluid's and the spring's force slopes): divided once here rather than on every substep, the
    /// same operands giving the same bits.
    drive_k: f64,
    fluid_slope: f64,
    spring_slope: f64,
    stall_force_mmhg: f64,
    seal_min_mm: f64,
    seal_max_mm: f64,
    // Time.
    t_ns: u64,
    // Motor.
    rate_steps_per_s: f64,
    /// Step count is `trunc(origin_fraction + rate·(t − origin))` past `origin_steps`: one product per
    /// substep instead of a running float sum, so the step train does not depend on the step size.
    rate_origin_ns: u64,
    origin_steps: i64,
    origin_fraction: f64,
    motor_steps: i64,
    nut_steps: i64,
    /// `nut_steps / steps_per_mm`, updated whenever `nut_steps` changes (read on every substep).
    nut_mm: f64,
    // Mechanics.
    seal_mm: f64,
    contact_offset_mm: f64,
    motion: SealMotion,
    // Fluid.
    pressure_mmhg: f64,
    delivered_ml: f64,
    // Sensors.
    encoder_mm: f64,
    // Faults and environment.
    occlusion_factor: f64,
    unclamped: bool,
    motor_stalled: bool,
    encoder_lost_fraction: f64,
    head_height_cm: f64,
    patient_pressure_mmhg: f64,
    // Balance.
    rng: SplitMix64,
    period_ns: u64,
    next_sample_ns: u64,
    readings: Vec<BalanceReading>,
    // Memos of pure functions of their keys (the hot loop asks the same question every tick).
    max_sub_ns: u64,
    /// `max_sub_ns` in seconds: the length of nearly every substep.
    max_sub_s: f64,
    /// The last `dt` asked for (bits) and its length in whole nanoseconds.
    last_dt: (u64, u64),
    /// The last (substep bits, resistance bits) and the fluid's decay factor over that substep.
    last_decay: (u64, u64, f64),
}

impl Plant {
    /// Builds a plant at rest: motor stopped, line at hydrostatic equilibrium (no flow), seal stuck,
    /// balance tared and read once at t = 0.
    pub fn new(cfg: PlantConfig) -> Result<Self, PlantError> {
        cfg.validate()?;
        let ml_per_mm = cfg.syringe.ml_per_mm();
        let drive_c = cfg.drive_compliance_ml_per_mmhg();
        let fluid_c = cfg.fluid_compliance_ml_per_mmhg();
        let stall_force_mmhg = cfg.motor_stall_force_n / (cfg.syringe.area_mm2() * 1.0e-6) / PA_PER_MMHG;
        let period_ns = (cfg.balance_period_s * NS_PER_S).round() as u64;
        let max_sub_ns = ((cfg.max_substep_s * NS_PER_S).round() as u64).max(1);
        let mut plant = Self {
            ml_per_mm,
            steps_per_mm: cfg.steps_per_mm(),
            drive_c,
            fluid_c,
            drive_k: ml_per_mm / drive_c,
            fluid_slope: -ml_per_mm / fluid_c,
            spring_slope: -ml_per_mm / drive_c,
            stall_force_mmhg,
            seal_min_mm: -(cfg.syringe.capacity_ml - cfg.fill_ml) / ml_per_mm,
            seal_max_mm: cfg.fill_ml / ml_per_mm,
            t_ns: 0,
            rate_steps_per_s: 0.0,
            rate_origin_ns: 0,
            origin_steps: 0,
            origin_fraction: 0.0,
            motor_steps: 0,
            nut_steps: 0,
            nut_mm: 0.0,
            seal_mm: 0.0,
            contact_offset_mm: if cfg.slack_taken_up { 0.0 } else { cfg.slack_mm },
            motion: SealMotion::Stuck,
            pressure_mmhg: cfg.patient_pressure_mmhg - cfg.head_height_cm * MMHG_PER_CM_H2O,
            delivered_ml: 0.0,
            encoder_mm: 0.0,
            occlusion_factor: 1.0,
            unclamped: false,
            motor_stalled: false,
            encoder_lost_fraction: 0.0,
            head_height_cm: cfg.head_height_cm,
            patient_pressure_mmhg: cfg.patient_pressure_mmhg,
            rng: SplitMix64::new(cfg.seed),
            period_ns,
            next_sample_ns: 0,
            readings: Vec::new(),
            max_sub_ns,
            max_sub_s: max_sub_ns as f64 / NS_PER_S,
            // Seeds that are true answers (a dt of 0 is 0 ns) or can never be asked (NaN keys).
            last_dt: (0.0_f64.to_bits(), 0),
            last_decay: (u64::MAX, u64::MAX, f64::NAN),
            cfg,
        };
        plant.sample_balance_if_due();
        Ok(plant)
    }

    pub fn config(&self) -> &PlantConfig {
        &self.cfg
    }

    // ---- commands ------------------------------------------------------------------------------

    /// Sets the motor rate in microsteps per second (positive = towards empty). Any finite value is
    /// accepted: the plant is the hardware, and hardware does whatever it is told.
    pub fn set_motor_rate_steps_per_s(&mut self, rate: f64) -> Result<(), PlantError> {
        let rate = check(rate, "motor rate", |_| true)?;
        // Keep the partial microstep already accumulated, restart the product from now.
        self.origin_fraction = self.fraction_at(self.t_ns);
        self.origin_steps = self.motor_steps;
        self.rate_origin_ns = self.t_ns;
        self.rate_steps_per_s = rate;
        Ok(())
    }

    /// Sets the motor rate from a nominal flow through this syringe's bore and the lead screw.
    pub fn set_motor_rate_ml_h(&mut self, rate_ml_h: f64) -> Result<(), PlantError> {
        let rate = check(rate_ml_h, "motor rate", |_| true)?;
        self.set_motor_rate_steps_per_s(rate / 3600.0 / self.cfg.ml_per_step())
    }

    pub fn motor_rate_steps_per_s(&self) -> f64 {
        self.rate_steps_per_s
    }

    // ---- faults and environment ----------------------------------------------------------------

    /// Multiplies the downstream resistance by `factor` (≥ 1; e.g. 1e6 for a closed clamp); 1 clears.
    pub fn set_occlusion_factor(&mut self, factor: f64) -> Result<(), PlantError> {
        self.occlusion_factor = check(factor, "occlusion factor", |v| v >= 1.0)?;
        Ok(())
    }

    /// Releases the downstream occlusion.
    pub fn clear_occlusion(&mut self) {
        self.occlusion_factor = 1.0;
    }

    /// Unclamps the plunger (it floats free of the nut: siphon, free flow) or re-clamps it. Re-clamping
    /// seats the flange against the pusher where the nut is now, with no force (slack taken up).
    pub fn set_unclamped(&mut self, unclamped: bool) {
        if self.unclamped && !unclamped {
            self.contact_offset_mm = self.nut_mm() - self.seal_mm;
        }
        self.unclamped = unclamped;
    }

    /// The operator swaps the syringe for a new one of the same type holding `fill_ml`: the barrel is
    /// full again from where its seal now sits, and the pusher meets the new flange at the far end of
    /// the slack (the new syringe's slack must be taken up again). The encoder keeps counting plunger
    /// travel from where it is. The line is reconnected to the new syringe at rest: its pressure is the
    /// hydrostatic equilibrium again (as at power-up), so nothing pushes the new plunger back.
    pub fn load_syringe(&mut self) {
        self.pressure_mmhg = self.patient_pressure_mmhg - self.head_height_cm * MMHG_PER_CM_H2O;
        let capacity_ml = self.cfg.syringe.capacity_ml;
        self.seal_max_mm = self.seal_mm + self.cfg.fill_ml / self.ml_per_mm;
        self.seal_min_mm = self.seal_mm - (capacity_ml - self.cfg.fill_ml) / self.ml_per_mm;
        self.contact_offset_mm = self.nut_mm() - self.seal_mm + self.cfg.slack_mm;
        self.motion = SealMotion::Stuck;
    }

    /// A stalled motor keeps counting the steps it is sent, but the nut does not move.
    pub fn set_motor_stalled(&mut self, stalled: bool) {
        self.motor_stalled = stalled;
    }

    /// Fraction of plunger motion the encoder fails to count: 0 = healthy, 1 = stopped counting.
    pub fn set_encoder_slip(&mut self, lost_fraction: f64) -> Result<(), PlantError> {
        self.encoder_lost_fraction = check(lost_fraction, "encoder lost fraction", |v| (0.0..=1.0).contains(&v))?;
        Ok(())
    }

    /// Height of the syringe above the cannula (cm).
    pub fn set_head_height_cm(&mut self, height_cm: f64) -> Result<(), PlantError> {
        self.head_height_cm = check(height_cm, "head height", |v| v.abs() <= 500.0)?;
        Ok(())
    }

    pub fn set_patient_pressure_mmhg(&mut self, pressure: f64) -> Result<(), PlantError> {
        self.patient_pressure_mmhg = check(pressure, "patient pressure", |_| true)?;
        Ok(())
    }

    // ---- outputs --------------------------------------------------------------------------------

    /// Current occlusion multiplier of the downstream resistance (1 = open line).
    pub fn occlusion_factor(&self) -> f64 {
        self.occlusion_factor
    }

    pub fn motor_stalled(&self) -> bool {
        self.motor_stalled
    }

    pub fn encoder_lost_fraction(&self) -> f64 {
        self.encoder_lost_fraction
    }

    pub fn unclamped(&self) -> bool {
        self.unclamped
    }

    pub fn head_height_cm(&self) -> f64 {
        self.head_height_cm
    }

    pub fn t_s(&self) -> f64 {
        self.t_ns as f64 / NS_PER_S
    }

    /// Microsteps sent to the motor since start (net).
    pub fn motor_position_steps(&self) -> i64 {
        self.motor_steps
    }

    /// Microsteps that actually moved the nut (net).
    pub fn nut_position_steps(&self) -> i64 {
        self.nut_steps
    }

    fn nut_mm(&self) -> f64 {
        self.nut_mm
    }

    /// Plunger seal travel from the start position (mm, + towards empty).
    pub fn plunger_position_mm(&self) -> f64 {
        self.seal_mm
    }

    /// Liquid still in the barrel (mL).
    pub fn remaining_ml(&self) -> f64 {
        (self.seal_max_mm - self.seal_mm) * self.ml_per_mm
    }

    pub fn encoder_counts(&self) -> i64 {
        floor_to_i64(self.encoder_mm * self.cfg.encoder_counts_per_mm)
    }

    pub fn encoder_volume_ml(&self) -> f64 {
        self.encoder_counts() as f64 / self.cfg.encoder_counts_per_mm * self.ml_per_mm
    }

    pub fn line_pressure_mmhg(&self) -> f64 {
        self.pressure_mmhg
    }

    pub fn delivered_ml(&self) -> f64 {
        self.delivered_ml
    }

    pub fn motor_running(&self) -> bool {
        self.rate_steps_per_s != 0.0
    }

    pub fn end_of_travel(&self) -> bool {
        self.seal_mm >= self.seal_max_mm - 1.0e-9
    }

    pub fn seal_motion(&self) -> SealMotion {
        self.motion
    }

    /// Drive force on the plunger as a pressure equivalent (mmHg).
    pub fn drive_force_mmhg(&self) -> f64 {
        self.drive_mmhg(self.spring_r_mm())
    }

    /// Total compliance the drive sees while the seal slides, `C_d + C_f` (mL/mmHg).
    pub fn compliance_ml_per_mmhg(&self) -> f64 {
        self.drive_c + self.fluid_c
    }

    pub fn outputs(&self) -> PlantOutputs {
        PlantOutputs {
            t_s: self.t_s(),
            encoder_counts: self.encoder_counts(),
            encoder_volume_ml: self.encoder_volume_ml(),
            line_pressure_mmhg: self.pressure_mmhg,
            delivered_ml: self.delivered_ml,
            motor_running: self.motor_running(),
            end_of_travel: self.end_of_travel(),
            drive_force_mmhg: self.drive_force_mmhg(),
        }
    }

    /// All balance readings so far, oldest first (t = 0 included).
    pub fn balance_readings(&self) -> &[BalanceReading] {
        &self.readings
    }

    /// Takes the balance readings accumulated since the last drain.
    pub fn drain_balance_readings(&mut self) -> Vec<BalanceReading> {
        core::mem::take(&mut self.readings)
    }

    // ---- physics --------------------------------------------------------------------------------

    /// Advances the plant by `dt_s` seconds (rounded to whole nanoseconds).
    pub fn step(&mut self, dt_s: f64) -> Result<(), PlantError> {
        let dt_ns = if dt_s.to_bits() == self.last_dt.0 {
            self.last_dt.1
        } else {
            let dt_s = check(dt_s, "dt", |v| (0.0..=1.0e6).contains(&v))?;
            let ns = (dt_s * NS_PER_S).round() as u64;
            self.last_dt = (dt_s.to_bits(), ns);
            ns
        };
        let end_ns = self.t_ns + dt_ns;
        let max_sub_ns = self.max_sub_ns;
        while self.t_ns < end_ns {
            let h_ns = (end_ns - self.t_ns).min(max_sub_ns).min(self.next_sample_ns - self.t_ns);
            let h_s = if h_ns == max_sub_ns { self.max_sub_s } else { h_ns as f64 / NS_PER_S };
            self.substep(self.t_ns + h_ns, h_s);
            self.t_ns += h_ns;
            // Checked here, not behind a call: a balance sample is due once in thousands of substeps.
            if self.t_ns >= self.next_sample_ns {
                self.sample_balance_if_due();
            }
        }
        Ok(())
    }

    fn substep(&mut self, end_ns: u64, h_s: f64) {
        self.advance_motor(end_ns);
        self.move_seal();
        self.relax_fluid(h_s);
    }

    /// Steps (with fraction) issued since the rate origin, at time `t_ns`.
    fn steps_since_origin(&self, t_ns: u64) -> f64 {
        self.origin_fraction + self.rate_steps_per_s * ((t_ns - self.rate_origin_ns) as f64 / NS_PER_S)
    }

    fn fraction_at(&self, t_ns: u64) -> f64 {
        let total = self.steps_since_origin(t_ns);
        total - total.trunc()
    }

    fn advance_motor(&mut self, end_ns: u64) {
        // A stopped motor issues nothing: its origin is where it stopped (`origin_steps` =
        // `motor_steps`) with a fraction below one step, which truncates to none.
        if self.rate_steps_per_s == 0.0 {
            return;
        }
        // `as` truncates toward zero (and saturates) exactly as `trunc()` then `as` would.
        let issued = self.origin_steps + self.steps_since_origin(end_ns) as i64;
        let steps = issued - self.motor_steps;
        if steps == 0 {
            return;
        }
        self.motor_steps += steps;
        // Overload stall: a stepper cannot push (or pull) beyond its torque; the steps are lost.
        let force = self.drive_force_mmhg();
        let overloaded =
            (steps > 0 && force >= self.stall_force_mmhg) || (steps < 0 && force <= -self.stall_force_mmhg);
        if !self.motor_stalled && !overloaded {
            self.nut_steps += steps;
            self.nut_mm = self.nut_steps as f64 / self.steps_per_mm;
        }
    }

    /// Spring coordinate `r = x_nut − x_seal − offset` (mm).
    fn spring_r_mm(&self) -> f64 {
        self.nut_mm() - self.seal_mm - self.contact_offset_mm
    }

    /// Drive force (mmHg equivalent) at spring coordinate `r`: push for r > 0, pull for r < −slack.
    fn drive_mmhg(&self, r: f64) -> f64 {
        if self.unclamped {
            return 0.0;
        }
        let k = self.drive_k;
        if r > 0.0 {
            k * r
        } else if r < -self.cfg.slack_mm {
            k * (r + self.cfg.slack_mm)
        } else {
            0.0
        }
    }

    /// Net forward force on the seal after it moves by `ds` mm (mmHg equivalent), strictly decreasing.
    fn net_force_after(&self, r: f64, ds: f64) -> f64 {
        self.drive_mmhg(r - ds) - (self.pressure_mmhg + ds * self.ml_per_mm / self.fluid_c)
    }

    /// The seal displacement `ds` with `net_force_after(r, ds) == target`: exact, because the force
    /// is piecewise linear in `ds` with breakpoints where the spring enters/leaves the slack.
    fn solve_seal_move(&self, r: f64, target: f64) -> f64 {
        let fluid_slope = self.fluid_slope;
        let spring_slope = if self.unclamped { 0.0 } else { self.spring_slope };
        let (b1, b2) = (r, r + self.cfg.slack_mm);
        let (f1, f2) = (self.net_force_after(r, b1), self.net_force_after(r, b2));
        if target >= f1 {
            b1 + (target - f1) / (fluid_slope + spring_slope)
        } else if target >= f2 {
            b1 + (target - f1) / fluid_slope
        } else {
            b2 + (target - f2) / (fluid_slope + spring_slope)
        }
    }

    /// Stick/slip of the massless seal, then the exact volume transfer into the fluid.
    fn move_seal(&mut self) {
        let r = self.spring_r_mm();
        // `net_force_after(r, 0.0)` without its division: a zero move adds exactly +0.0 of pressure.
        let net = self.drive_mmhg(r) - (self.pressure_mmhg + 0.0);
        let running = self.cfg.syringe.running_friction_mmhg;
        let stiction = self.cfg.syringe.stiction_mmhg;
        let forward_threshold = if self.motion == SealMotion::Forward { running } else { stiction };
        let backward_threshold = if self.motion == SealMotion::Backward { running } else { stiction };
        let (motion, target) = if net > forward_threshold {
            (SealMotion::Forward, running)
        } else if net < -backward_threshold {
            (SealMotion::Backward, -running)
        } else {
            self.motion = SealMotion::Stuck;
            return;
        };
        let wanted = self.solve_seal_move(r, target);
        let ds = wanted.clamp(self.seal_min_mm - self.seal_mm, self.seal_max_mm - self.seal_mm);
        self.motion = if ds == wanted { motion } else { SealMotion::Stuck };
        self.seal_mm += ds;
        self.pressure_mmhg += ds * self.ml_per_mm / self.fluid_c;
        self.encoder_mm += ds * (1.0 - self.encoder_lost_fraction);
    }

    /// Exact solution of `C_f·dp/dt = −(p + head − p_patient)/R` over `h`, and the volume that left.
    fn relax_fluid(&mut self, h_s: f64) {
        let resistance = self.cfg.resistance_mmhg_s_per_ml * self.occlusion_factor;
        let p_eq = self.patient_pressure_mmhg - self.head_height_cm * MMHG_PER_CM_H2O;
        let decay = if (h_s.to_bits(), resistance.to_bits()) == (self.last_decay.0, self.last_decay.1) {
            self.last_decay.2
        } else {
            let decay = (-h_s / (resistance * self.fluid_c)).exp();
            self.last_decay = (h_s.to_bits(), resistance.to_bits(), decay);
            decay
        };
        let p_new = p_eq + (self.pressure_mmhg - p_eq) * decay;
        self.delivered_ml += self.fluid_c * (self.pressure_mmhg - p_new);
        self.pressure_mmhg = p_new;
    }

    fn sample_balance_if_due(&mut self) {
        while self.t_ns >= self.next_sample_ns {
            let noise = self.cfg.balance_noise_sd_g * self.rng.next_gaussian();
            let mut grams = self.delivered_ml * self.cfg.density_g_per_ml + noise;
            let res = self.cfg.balance_resolution_g;
            if res > 0.0 {
                grams = (grams / res).round() * res;
            }
            self.readings.push(BalanceReading { t_s: self.next_sample_ns as f64 / NS_PER_S, grams });
            self.next_sample_ns += self.period_ns;
        }
    }
}

/// `v.floor() as i64` without the library call `floor` is on x86-64's baseline: the cast truncates
/// toward zero (saturating; NaN gives 0), one less below zero when that rounded up. Equal for every
/// `f64`, infinities and NaN included (tested).
#[inline]
fn floor_to_i64(v: f64) -> i64 {
    let t = v as i64;
    if (t as f64) > v {
        t.saturating_sub(1)
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_to_i64_is_floor_then_cast() {
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let mut cases = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            2.5,
            -2.5,
            1e-300,
            -1e-300,
            4.503_599_627_370_495e15,
            -4.5e15,
            9.223_372_036_854_775e18,
            -9.223_372_036_854_775e18,
            1e19,
            -1e19,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::EPSILON,
            -f64::EPSILON,
        ];
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(f64::from_bits(x));
            cases.push((x % 2_000_000) as f64 / 7.0 - 100_000.0);
        }
        for v in cases {
            assert_eq!(floor_to_i64(v), v.floor() as i64, "{v:e}");
        }
    }

    fn plant50() -> Plant {
        Plant::new(PlantConfig::nominal_for("bd-plastipak-50").unwrap()).unwrap()
    }

    #[test]
    fn rate_conversion_goes_through_bore_and_screw() {
        let mut p = plant50();
        p.set_motor_rate_ml_h(1.0).unwrap();
        // 3200 microsteps/mm; 0.5553 mL/mm → 1 mL/h = 1.6 microsteps/s.
        let expected = 1.0 / 3600.0 / (0.25 * core::f64::consts::PI * 26.59 * 26.59 / 1000.0) * 3200.0;
        assert!((p.motor_rate_steps_per_s() - expected).abs() < 1e-12);
        assert!((expected - 1.6007).abs() < 1e-3);
    }

    #[test]
    fn drive_compliance_split() {
        let cfg = PlantConfig::nominal_for("bd-plastipak-50").unwrap();
        let cd = cfg.drive_compliance_ml_per_mmhg();
        assert!((cd - 4.11e-4).abs() < 1e-5, "{cd}");
        assert!((cfg.fluid_compliance_ml_per_mmhg() + cd - 2.0e-3).abs() < 1e-15);
    }

    #[test]
    fn bad_configuration_and_commands_are_refused() {
        let good = PlantConfig::nominal_for("bd-plastipak-50").unwrap();
        assert_eq!(PlantConfig::nominal_for("nope"), Err(PlantError::UnknownSyringe));
        let too_soft = PlantConfig { drive_stiffness_n_per_mm: 1.0, ..good.clone() };
        assert!(matches!(Plant::new(too_soft), Err(PlantError::OutOfRange(_))));
        let overfull = PlantConfig { fill_ml: 51.0, ..good.clone() };
        assert!(matches!(Plant::new(overfull), Err(PlantError::OutOfRange("fill_ml"))));
        let nan_r = PlantConfig { resistance_mmhg_s_per_ml: f64::NAN, ..good };
        assert!(matches!(Plant::new(nan_r), Err(PlantError::NotFinite(_))));

        let mut p = plant50();
        assert!(p.step(f64::NAN).is_err());
        assert!(p.step(-1.0).is_err());
        assert!(p.set_motor_rate_ml_h(f64::INFINITY).is_err());
        assert!(p.set_occlusion_factor(0.5).is_err());
        assert!(p.set_encoder_slip(1.5).is_err());
        assert_eq!(p.t_s(), 0.0);
        assert_eq!(p.motor_rate_steps_per_s(), 0.0);
    }

    #[test]
    fn at_rest_nothing_moves() {
        let mut p = plant50();
        p.step(600.0).unwrap();
        assert_eq!(p.delivered_ml(), 0.0);
        assert_eq!(p.encoder_counts(), 0);
        assert_eq!(p.seal_motion(), SealMotion::Stuck);
        assert!((p.line_pressure_mmhg() - 10.0).abs() < 1e-12);
        assert_eq!(p.balance_readings().len(), 21);
    }

    #[test]
    fn motor_steps_are_quantised() {
        let mut p = plant50();
        p.set_motor_rate_steps_per_s(1.5).unwrap();
        p.step(1.0).unwrap();
        assert_eq!(p.motor_position_steps(), 1);
        p.step(1.0).unwrap();
        assert_eq!(p.motor_position_steps(), 3);
        p.set_motor_rate_steps_per_s(-2.0).unwrap();
        p.step(1.0).unwrap();
        assert_eq!(p.motor_position_steps(), 1);
    }

    #[test]
    fn a_stopped_motor_issues_no_step_from_any_partial_step() {
        // Stopped at every fraction of a microstep, forwards and backwards, then left for a day in
        // steps of every size: not one more step (the substep loop skips a stopped motor on this).
        for rate in [0.37, 1.5, 2.999, -0.61, -7.25] {
            let mut p = plant50();
            p.set_motor_rate_steps_per_s(rate).unwrap();
            p.step(1.9).unwrap();
            let stopped_at = p.motor_position_steps();
            for stop in [0.0, -0.0] {
                p.set_motor_rate_steps_per_s(stop).unwrap();
                for dt in [1.0e-3, 0.01, 0.1, 0.7, 3_600.0] {
                    p.step(dt).unwrap();
                }
                assert_eq!(p.motor_position_steps(), stopped_at, "rate {rate}, stopped at {stop}");
                assert!(!p.motor_running());
            }
            // Started again, it counts on from the partial step it stopped at.
            p.set_motor_rate_steps_per_s(rate).unwrap();
            p.step(1.9).unwrap();
            let mut straight = plant50();
            straight.set_motor_rate_steps_per_s(rate).unwrap();
            straight.step(3.8).unwrap();
            assert_eq!(p.motor_position_steps(), straight.motor_position_steps(), "rate {rate}");
        }
    }

    #[test]
    fn balance_samples_land_on_the_period_whatever_the_step() {
        let mut p = plant50();
        for _ in 0..77 {
            p.step(0.7).unwrap();
        }
        let t: Vec<f64> = p.balance_readings().iter().map(|r| r.t_s).collect();
        assert_eq!(t, vec![0.0, 30.0]);
        let drained = p.drain_balance_readings();
        assert_eq!(drained.len(), 2);
        assert!(p.balance_readings().is_empty());
    }

    #[test]
    fn reversing_reopens_the_slack() {
        // 40 mL in a 50 mL barrel, so the plunger has room to be drawn back.
        let nominal = PlantConfig::nominal_for("bd-plastipak-50").unwrap();
        let mut p = Plant::new(PlantConfig { slack_taken_up: true, fill_ml: 40.0, ..nominal }).unwrap();
        // Reverse 0.25 mm (800 microsteps): the nut crosses the 0.3 mm slack, the plunger stays.
        p.set_motor_rate_steps_per_s(-3200.0).unwrap();
        p.step(0.25).unwrap();
        assert_eq!(p.nut_position_steps(), -800);
        assert_eq!(p.plunger_position_mm(), 0.0);
        // Reverse to 1 mm in all: the clamp pulls the plunger back by the rest, less the spring stretch.
        p.step(0.75).unwrap();
        p.set_motor_rate_steps_per_s(0.0).unwrap();
        assert!(p.line_pressure_mmhg() < -100.0, "a quick draw-back sucks on the line");
        // Once backflow through R has relieved the suction, the plunger sits 0.7 mm back less the
        // small stretch that holds it against stiction.
        p.step(200.0).unwrap();
        let rested = p.plunger_position_mm();
        assert!(-rested > 0.6 && -rested < 0.7, "pulled back {} mm", -rested);
        assert!(p.delivered_ml() < -0.3, "drawing back pulls fluid from the line");
        // Forward 0.25 mm: the nut crosses the slack again and the plunger does not move.
        p.set_motor_rate_steps_per_s(3200.0).unwrap();
        p.step(0.25).unwrap();
        assert_eq!(p.plunger_position_mm(), rested);
        // Beyond the slack it pushes.
        p.step(0.25).unwrap();
        assert!(p.plunger_position_mm() > rested);
    }
}
