//! ketapump-core: the safety kernel of the ketapump infusion-pump bridge.
//!
//! `no_std`, no allocation, no unsafe code, no Python. Everything here is a pure function of its inputs
//! and injected time, so the same code runs in the bridge, in tests and in batch simulation.
//!
//! - [`units`]: validated newtypes for the quantities that cross boundaries.
//! - [`config`]: kernel configuration and program, validated field by field.
//! - [`clamp`]: [`clamp::clamp_rate`], the single choke point for a commanded rate.
//! - [`controller`]: feed-forward + PI volume controller with anti-windup and slew limit.
//! - [`kernel`]: the interlock state machine that alone produces motor commands.
//! - [`limits`]: drug-library limits: [`limits::check_order`] and the kernel settings they imply.
//! - [`trace`]: the fixed-size ring of state-machine events drained for the audit log.
#![no_std]
#![forbid(unsafe_code)]

pub mod alarm;
pub mod clamp;
pub mod config;
pub mod controller;
pub mod kernel;
pub mod limits;
pub mod trace;
pub mod units;

pub use alarm::{Alarm, AlarmSet, Warning};
pub use clamp::{clamp_rate, ClampReason, RateLimits};
pub use config::{ConfigError, ConfigProblem, KernelConfig, Program, RawKernelConfig, MAX_SYRINGES};
pub use controller::{ControlError, ControlStatus, Gains, RateController};
pub use kernel::{
    Command, Direction, KernelError, MotorCommand, SafetyKernel, State, StateKind, StepOutput, Telemetry,
    ESTIMATOR_INTERVAL_S, PLAUSIBLE_PRESSURE_MMHG, PLAUSIBLE_VOLUME_ML,
};
pub use trace::{Cause, TraceEvent, TraceRing};
pub use units::S_PER_H;
