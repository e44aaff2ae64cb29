//! Closed-loop scenarios run entirely in Rust: ketapump's own kernel and controller against a small
//! reference plant, one call per run, for benchmarks and batch simulation; and seeded fault
//! campaigns against the hw-sim plant ([`campaign`]).
//!
//! # KP-40MIN (see `performance-baselines.md`)
//!
//! A 40-minute infusion at 1 kHz (dt = 1 ms, 2 400 000 ticks), deterministic:
//! - 50 mL syringe, 0.5557 mL/mm bore; plunger encoder 3 200 counts/mm (quantised measured volume);
//! - rate schedule 10 mL/h for 0–10 min, 20 mL/h for 10–30 min, 10 mL/h after;
//! - plant: the drive flow follows the command through a first-order lag (τ = 50 ms), a subnormal
//!   flow being zero (see [`Kp40MinRun::tick`]); the plunger volume integrates the flow; line
//!   pressure dp/dt = (q − p/R)/C with C = 1e-3 mL/mmHg, R = 7 200 mmHg·s/mL; an occlusion from
//!   25:00 to 27:00 multiplies R by 1 000;
//! - the kernel's configuration (gains, limits, threshold) comes from the caller.
//!
//! The pure-Python reference model runs the same scenario statement by statement
//! (`ketapump.reference.run_kp40min`); both must end in the same state with the same trace hash.
//! Reciprocals are precomputed in [`Kp40MinRun::new`], so the plant's tick divides nothing (the release
//! build's disassembly shows the scenario's only divisions there); a tick's divisions are the kernel's.
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

/// One KP-40MIN run in progress: its kernel, plant state and trace. [`run_kp40min`] steps one;
/// [`run_kp40min_lanes`] steps several side by side (lockstep lanes).
#[derive(Debug, Clone)]
pub struct Kp40MinRun {
    kernel: SafetyKernel,
    scenario: Kp40Min,
    lag: f64,
    dt_over_c: f64,
    inv_r_open: f64,
    inv_r_occluded: f64,
    counts_per_ml: f64,
    ml_per_count: f64,
    /// Drive flow (mL/s), plunger volume (mL), line pressure (mmHg).
    q: f64,
    x: f64,
    p: f64,
    hash: u64,
    last_state: StateKind,
    first_alarm_tick: Option<u64>,
    /// The command the plant holds until the next tick: signed rate (mL/s).
    drive_ml_s: f64,
    n: u64,
}

impl Kp40MinRun {
    /// A fresh kernel, shown the idle pump once, loaded and started on the scenario's program.
    pub fn new(config: KernelConfig, scenario: &Kp40Min) -> Self {
        let s = *scenario;
        let mut run = Kp40MinRun {
            kernel: SafetyKernel::new(config),
            scenario: s,
            lag: s.dt_s / s.lag_tau_s,
            dt_over_c: s.dt_s / s.compliance_ml_per_mmhg,
            inv_r_open: 1.0 / s.resistance_mmhg_s_per_ml,
            inv_r_occluded: 1.0 / (s.resistance_mmhg_s_per_ml * s.occlusion_factor),
            counts_per_ml: s.counts_per_mm / s.ml_per_mm,
            ml_per_count: s.ml_per_mm / s.counts_per_mm,
            q: 0.0,
            x: 0.0,
            p: 0.0,
            hash: FNV_OFFSET,
            last_state: StateKind::Idle,
            first_alarm_tick: None,
            drive_ml_s: 0.0,
            n: 0,
        };
        let _ = run.kernel.load(s.schedule[0].1, s.vtbi_ml, false);
        let first = run.sample(0.0);
        run.kernel.step(0.0, &first);
        let _ = run.kernel.start();
        run
    }

    #[inline(always)]
    fn sample(&self, t_s: f64) -> Telemetry {
        Telemetry {
            t_s,
            volume_ml: libm_floor(self.x * self.counts_per_ml) * self.ml_per_count,
            pressure_mmhg: self.p,
            motor_running: false,
            air_in_line: false,
            syringe_present: true,
            end_of_travel: false,
        }
    }

    /// One tick: the plant runs the held command for dt, the schedule applies, the kernel steps on
    /// the new sample and its command is held for the next tick; the trace hash folds the tick in
    /// every 1 000 ticks and at every state change.
    #[inline(always)]
    pub fn tick(&mut self) {
        let s = &self.scenario;
        self.n += 1;
        let n = self.n;
        self.q += (self.drive_ml_s - self.q) * self.lag;
        // Once the drive stops, the lag's decay reaches subnormal numbers and then stops on one
        // (~1.2e-322, where the step (u − q)·lag rounds to zero). An x86 core works through subnormal
        // operands in microcode assists, ~100 cycles each: they made every tick after KP-40MIN's alarm
        // ~4× as slow. A flow below the smallest normal f64 moves nothing: plunger and pressure keep
        // their bits (tested).
        if self.q.is_subnormal() {
            self.q = 0.0;
        }
        self.x += self.q * s.dt_s;
        let occluded = n >= s.occlusion_start_tick && n < s.occlusion_end_tick;
        let inv_r = if occluded { self.inv_r_occluded } else { self.inv_r_open };
        self.p += (self.q - self.p * inv_r) * self.dt_over_c;
        for &(at, rate) in &s.schedule[1..] {
            if n == at {
                let _ = self.kernel.set_rate(rate);
            }
        }
        let t = n as f64 * s.dt_s;
        let sample = self.sample(t);
        let out = self.kernel.step(t, &sample);
        self.drive_ml_s = match out.command.direction {
            Direction::Forward => out.command.rate_ml_s,
            Direction::Retract => -out.command.rate_ml_s,
            Direction::Hold => 0.0,
        };
        if self.first_alarm_tick.is_none() && !out.alarms.is_empty() {
            self.first_alarm_tick = Some(n);
        }
        if n % 1_000 == 0 || out.state != self.last_state {
            let mut hash = fnv1a(self.hash, n);
            hash = fnv1a(hash, state_code(out.state));
            hash = fnv1a(hash, direction_code(out.command.direction));
            self.hash = fnv1a(hash, out.command.rate_ml_s.to_bits());
            self.last_state = out.state;
        }
    }

    /// The command the plant follows until the next tick (signed, mL/s).
    pub fn commanded_ml_s(&self) -> f64 {
        self.drive_ml_s
    }

    /// The plant's drive flow now (mL/s): the command seen through the lag.
    pub fn drive_flow_ml_s(&self) -> f64 {
        self.q
    }

    /// How the run stands now.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            ticks: self.n,
            state: self.kernel.state_kind(),
            alarm_bits: self.kernel.alarms().0,
            first_alarm_tick: self.first_alarm_tick,
            delivered_ml: self.kernel.delivered_ml(),
            plunger_ml: self.x,
            pressure_mmhg: self.p,
            trace_hash: self.hash,
        }
    }
}

/// Runs KP-40MIN (or a prefix of it: `ticks` ≤ the scenario's) and returns how it ended.
pub fn run_kp40min(config: KernelConfig, scenario: &Kp40Min, ticks: u64) -> Outcome {
    let mut run = Kp40MinRun::new(config, scenario);
    for _ in 0..ticks.min(scenario.ticks) {
        run.tick();
    }
    run.outcome()
}

/// Lanes stepped together by [`run_kp40min_lanes`]: a fixed-size group keeps the lanes in registers
/// and lets the compiler unroll the inner loop.
const LANE_GROUPS: [usize; 4] = [8, 4, 2, 1];

/// Runs one KP-40MIN per scenario in lockstep lanes: every tick steps each lane once, so the
/// lanes' independent dependency chains overlap in the CPU. Each lane's outcome is exactly the one
/// [`run_kp40min`] gives for its scenario (the lanes share nothing); they come back in order.
/// `lanes` (1, 2, 4 or 8; anything else is rounded down to one of these, at least 1) is how many are
/// stepped together.
pub fn run_kp40min_lanes(config: KernelConfig, scenarios: &[Kp40Min], ticks: u64, lanes: usize) -> Vec<Outcome> {
    let width = LANE_GROUPS.into_iter().find(|&w| w <= lanes.max(1)).unwrap_or(1);
    let mut outcomes = Vec::with_capacity(scenarios.len());
    for group in scenarios.chunks(width) {
        match group.len() {
            8 => outcomes.extend(run_group::<8>(config, group, ticks)),
            4 => outcomes.extend(run_group::<4>(config, group, ticks)),
            2 => outcomes.extend(run_group::<2>(config, group, ticks)),
            _ => outcomes.extend(group.iter().map(|s| run_kp40min(config, s, ticks))),
        }
    }
    outcomes
}

fn run_group<const N: usize>(config: KernelConfig, group: &[Kp40Min], ticks: u64) -> [Outcome; N] {
    let mut runs: [Kp40MinRun; N] = core::array::from_fn(|i| Kp40MinRun::new(config, &group[i]));
    // Lanes of different lengths: all step to the shortest, then each finishes alone.
    let common = group.iter().map(|s| ticks.min(s.ticks)).min().unwrap_or(0);
    for _ in 0..common {
        for run in runs.iter_mut() {
            run.tick();
        }
    }
    for (run, s) in runs.iter_mut().zip(group) {
        for _ in common..ticks.min(s.ticks) {
            run.tick();
        }
    }
    runs.each_ref().map(Kp40MinRun::outcome)
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
