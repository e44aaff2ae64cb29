//! Closed-loop scenarios run entirely in Rust: ketapump's own kernel and controller against a small
//! reference plant, one call per run, for benchmarks and batch simulation; and seeded fault
//! campaigns against the hw-sim plant ([`campaign`]).
//!
//! # KP-40MIN (see `performance-baselines.md`)
//!
//! A 40-minute infusion at 1 kHz (dt = 1 ms, 2 400 000 ticks), deterministic:
//! - 50 mL syringe, 0.5557 mL/mm bore; plunger encoder 3 200 counts/mm (quantised measured volume);
//! - rate schedule 10 mL/h for 0–10 min, 20 mL/h for 10–30 min, 10 mL/h after;
//! - plant: the drive flow follows the command through a first-order lag (τ = 50 ms); the plunger
//!   volume integrates the flow; line pressure dp/dt = (q − p/R)/C with C = 1e-3 mL/mmHg,
//!   R = 7 200 mmHg·s/mL; an occlusion from 25:00 to 27:00 multiplies R by 1 000;
//! - the kernel's configuration (gains, limits, threshold) comes from the caller.
//!
//! The pure-Python reference model runs the same scenario statement by statement
//! (`ketapump.reference.run_kp40min`); both must end in the same state with the same trace hash.
//! Reciprocals are precomputed so the plant adds no divisions to the hot loop.
#![forbid(unsafe_code)]

pub mod campaign;

use ketapump_core::{Direction, KernelConfig, SafetyKernel, StateKind, Telemetry};

/// The plant and schedule of KP-40MIN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kp40Min {
    pub ticks: u64,
    pub dt_s: f64,
    pub ml_per_mm: f64,
    pub counts_per_mm: f64,
    pub lag_tau_s: f64,
    pub compliance_ml_per_mmhg: f64,
    pub resistance_mmhg_s_per_ml: f64,
    pub occlusion_factor: f64,
    pub occlusion_start_tick: u64,
    pub occlusion_end_tick: u64,
    /// (tick, rate mL/h): the first entry is the programmed rate.
    pub schedule: [(u64, f64); 3],
    pub vtbi_ml: f64,
}

impl Kp40Min {
    pub const STANDARD: Kp40Min = Kp40Min {
        ticks: 2_400_000,
        dt_s: 0.001,
        ml_per_mm: 0.5557,
        counts_per_mm: 3_200.0,
        lag_tau_s: 0.05,
        compliance_ml_per_mmhg: 1.0e-3,
        resistance_mmhg_s_per_ml: 7_200.0,
        occlusion_factor: 1_000.0,
        occlusion_start_tick: 1_500_000,
        occlusion_end_tick: 1_620_000,
        schedule: [(0, 10.0), (600_000, 20.0), (1_800_000, 10.0)],
        vtbi_ml: 9.0,
    };
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub ticks: u64,
    pub state: StateKind,
    pub alarm_bits: u32,
    /// First tick at which an alarm latched, if any.
    pub first_alarm_tick: Option<u64>,
    /// Kernel-measured delivered volume (mL).
    pub delivered_ml: f64,
    /// True plunger volume (mL).
    pub plunger_ml: f64,
    pub pressure_mmhg: f64,
    /// FNV-1a over (tick, state, direction, rate bits) every 1 000 ticks and at every state change.
    pub trace_hash: u64,
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Folds one 64-bit word into an FNV-1a hash (byte by byte, little-endian).
pub fn fnv1a(mut hash: u64, word: u64) -> u64 {
    for byte in word.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn state_code(s: StateKind) -> u64 {
    s as u64
}

fn direction_code(d: Direction) -> u64 {
    d as u64
}

/// Runs KP-40MIN (or a prefix of it: `ticks` ≤ the scenario's) and returns how it ended.
pub fn run_kp40min(config: KernelConfig, scenario: &Kp40Min, ticks: u64) -> Outcome {
    let s = scenario;
    let mut kernel = SafetyKernel::new(config);
    let lag = s.dt_s / s.lag_tau_s;
    let dt_over_c = s.dt_s / s.compliance_ml_per_mmhg;
    let inv_r_open = 1.0 / s.resistance_mmhg_s_per_ml;
    let inv_r_occluded = 1.0 / (s.resistance_mmhg_s_per_ml * s.occlusion_factor);
    let counts_per_ml = s.counts_per_mm / s.ml_per_mm;
    let ml_per_count = s.ml_per_mm / s.counts_per_mm;

    let (mut q, mut x, mut p) = (0.0_f64, 0.0_f64, 0.0_f64);
    let mut hash = FNV_OFFSET;
    let mut last_state = StateKind::Idle;
    let mut first_alarm_tick = None;
    let sample = |t: f64, x: f64, p: f64| Telemetry {
        t_s: t,
        volume_ml: libm_floor(x * counts_per_ml) * ml_per_count,
        pressure_mmhg: p,
        motor_running: false,
        air_in_line: false,
        syringe_present: true,
        end_of_travel: false,
    };
    let _ = kernel.load(s.schedule[0].1, s.vtbi_ml, false);
    kernel.step(0.0, &sample(0.0, x, p));
    let _ = kernel.start();
    let mut command = (Direction::Hold, 0.0_f64);
    let mut n = 0;
    while n < ticks.min(s.ticks) {
        n += 1;
        // The plant runs the held command for one tick.
        let u = match command.0 {
            Direction::Forward => command.1,
            Direction::Retract => -command.1,
            Direction::Hold => 0.0,
        };
        q += (u - q) * lag;
        x += q * s.dt_s;
        let occluded = n >= s.occlusion_start_tick && n < s.occlusion_end_tick;
        let inv_r = if occluded { inv_r_occluded } else { inv_r_open };
        p += (q - p * inv_r) * dt_over_c;
        for &(at, rate) in &s.schedule[1..] {
            if n == at {
                let _ = kernel.set_rate(rate);
            }
        }
        let t = n as f64 * s.dt_s;
        let out = kernel.step(t, &sample(t, x, p));
        command = (out.command.direction, out.command.rate_ml_s);
        if first_alarm_tick.is_none() && !out.alarms.is_empty() {
            first_alarm_tick = Some(n);
        }
        if n % 1_000 == 0 || out.state != last_state {
            hash = fnv1a(hash, n);
            hash = fnv1a(hash, state_code(out.state));
            hash = fnv1a(hash, direction_code(out.command.direction));
            hash = fnv1a(hash, out.command.rate_ml_s.to_bits());
            last_state = out.state;
        }
    }
    Outcome {
        ticks: n,
        state: kernel.state_kind(),
        alarm_bits: kernel.alarms().0,
        first_alarm_tick,
        delivered_ml: kernel.delivered_ml(),
        plunger_ml: x,
        pressure_mmhg: p,
        trace_hash: hash,
    }
}

/// `floor` without `std` or `libm`: exact for |v| < 2⁵², the range of encoder counts.
fn libm_floor(v: f64) -> f64 {
    let t = v as i64 as f64;
    if t > v {
        t - 1.0
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_matches_for_the_encoder_range() {
        let cases: [(f64, f64); 7] =
            [(0.0, 0.0), (0.5, 0.0), (1.0, 1.0), (2.999_999, 2.0), (-0.5, -1.0), (-1.0, -1.0), (12_345.678, 12_345.0)];
        for (v, floor) in cases {
            assert_eq!(libm_floor(v), floor, "{v}");
        }
    }

    #[test]
    fn fnv1a_matches_a_reference_value() {
        // FNV-1a 64 of the bytes 01 00 00 00 00 00 00 00, computed independently.
        assert_eq!(fnv1a(FNV_OFFSET, 1), 0x89cd31291d2aefa4);
    }
}
