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
//!
//! The module's parts, each re-exported here:
//! - `spec`: what a campaign draws from and checks against ([`CampaignSpec`] and its sections, [`Range`],
//!   [`Limits`]), its validation with [`CampaignError`], and the hw-sim plant built for a syringe;
//! - `scenario`: one run's scenario drawn from a seed ([`derive_scenario`], [`Scenario`], [`Fault`]);
//! - `invariants`: the [`Invariant`]s and their checks ([`check_overdose`], [`check_cumulative_cap`],
//!   [`check_occlusion`], [`check_accuracy`], [`LatchMonitor`]), each a pure function of what a run saw;
//! - `runner`: the closed loop of kernel and plant ([`run`], [`run_scenario`]) and its [`Outcome`].

mod invariants;
mod runner;
mod scenario;
mod spec;

pub use invariants::{
    check_accuracy, check_cumulative_cap, check_occlusion, check_overdose, Invariant, LatchMonitor, OcclusionRecord,
    Violation,
};
pub use runner::{run, run_scenario, Outcome};
pub use scenario::{derive_scenario, Fault, Scenario};
pub use spec::{
    CampaignError, CampaignSpec, Chance, EncoderSlipSpec, HeadHeightSpec, InfusionSpec, Limits, OcclusionSpec,
    PlantSpec, Range, RestartSpec, RunSpec,
};
