//! The safety kernel: the only way to obtain a motor command.
//!
//! Each tick the caller hands over a telemetry sample and the current time; the kernel validates the
//! sample, runs every interlock, advances the state machine and returns the command with the alarms.
//!
//! ```text
//!              load                 start                    dose delivered
//!     Idle ──────────▶ Armed ──────────────▶ Running ─────────────────────────▶ Complete
//!      ▲ ▲               │                   │  ▲  ↺ take-up done, rate change   │  │
//!      │ └─── unload ────┘            pause  │  │ resume                         │  │
//!      │                                     ▼  │                                │  │
//!      │                                    Paused                              │  │
//!      │                   stop (Running/Paused)│                                │  │
//!      │  unload                                ▼          load (new program)    │  │
//!      ├─────────────────────────────────── Stopped ──────────────▶ Armed ◀──────┘  │
//!      │                                  (see the syringe change below)             │
//!      │                                     ▲  │ start                              │
//!      │                         acknowledge │  └──────▶ Running                     │
//!      │                                     │                                       │
//!      │     any alarm in Armed, Running,    │      uncommanded delivery (watched    │
//!      │     Paused or Stopped ──────────▶ Alarm ◀───────────── after the end) ──────┤
//!      │                                   ↺ more alarms latch, silence              │
//!      └──────────────────────────────────────────────────────────── unload ────────┘
//! ```
//!
//! The syringe change (a dose larger than one syringe), from a motor at rest only:
//!
//! ```text
//!     Paused ──change_syringe──▶ SyringeChange{Paused} ──syringe_loaded──▶ Paused ──resume──▶ Running(TakeUp)
//!     Stopped ─change_syringe──▶ SyringeChange{Stopped} ─syringe_loaded──▶ Stopped ──start──▶ Running(TakeUp)
//!                                      │ stop                    any alarm
//!                                      ▼                              ▼
//!                                   Stopped                         Alarm
//! ```
//!
//! - The *dose's* accounting runs on across syringes: the delivered volume, the cumulative drug, the
//!   overdose check and the program's VTBI are the whole dose's ([`SafetyKernel::load_syringes`] admits a
//!   VTBI of up to that many syringes). The *syringe's* level restarts: its fill, the near-empty warning,
//!   the plunger position the delivered volume is measured from (re-taken from the first sample after
//!   `syringe_loaded`, whatever the new plunger reads), and the slack (the next start or resume runs the
//!   take-up). The forward rate is also clamped to what the syringe in the pump still holds, so the kernel
//!   never drives a plunger into its end stop.
//! - In `SyringeChange` the motor holds and the syringe is expected out of the pump: `syringe_missing`,
//!   the end-of-travel switch, plunger jumps and uncommanded motion are not interlocks there; staleness,
//!   air, pressure, overdose and the cap still are. `change_syringe` is refused while a forward or
//!   retract command is still in force (the tick after a pause holds the motor).
//!
//! Rules the diagram encodes:
//! - Alarms **latch**: the only way out of `Alarm` is `acknowledge`, which leads to `Stopped`; from
//!   there only an explicit `start` runs the motor again. Nothing restarts by itself.
//! - In every state but `Running` the forward command is zero. In `Alarm`, an optional back-off
//!   retracts the plunger until the line pressure is back to baseline + `backoff_margin_mmhg`, never
//!   more than the volume the line's compliance stored (compliance × (pressure − baseline)).
//! - The back-off is planned on the `Running → Alarm` arrow when (a) every alarm raised on it
//!   [permits a back-off](Alarm::permits_backoff) — the occlusion, slope, stall, encoder cross-check,
//!   flow-deviation, overdose and cap checks, any of which may see an occlusion first — and (b) a pressure sensor is
//!   fitted, its estimator has a sample, and the last pressure is above baseline + margin. Any other
//!   alarm (stale or invalid telemetry, clock, air, syringe missing, end of travel, reverse motion,
//!   uncommanded delivery, an invalid rate command), on that arrow or during the back-off, holds the
//!   motor: never act on a pressure that cannot be trusted or where a retract is not safe.
//! - `Running → Complete` ("dose delivered") when the encoder volume plus what the compressed drive
//!   will still push the plunger on by once the motor stops ([`SafetyKernel::drive_release_ml`])
//!   reaches the programmed volume; that release counts as delivered from then on.
//! - `start` and `resume` need the plunger's position: until a sample has given it (a new kernel, a
//!   new syringe after `syringe_loaded`, a syringe that may have been swapped after `unload`) they are
//!   refused ([`KernelError::PositionUnknown`]), never run from a guessed or the old syringe's position.
//!   Without a program every sample is a new reference (any syringe may go in); with one, the first
//!   sample after a change or an unload is, and from then on a jump is `telemetry_invalid`.
//! - `Idle` is not monitored (no program is loaded); `Complete` is *watched*: only for uncommanded
//!   delivery (a siphon pulling the plunger on after the dose, or the plunger jumping on, which comes
//!   with `telemetry_invalid` and holds), never for staleness or the syringe; every other state is
//!   monitored.
//! - A held plunger's `uncommanded_delivery` alone (from `Armed`, `Paused`, `Stopped` or `Complete`)
//!   plans a *catch*: the nut retracts until the plunger is pulled back two counts (the clamp behind
//!   the flange holds it), at most `take_up_max_ml` (`catch_plan`).
//! - While infusing, the encoder is cross-checked against the motor's commanded volume through the
//!   drive model (`encoder_mismatch`); a start without take-up counts the first plunger motion as the
//!   end of a take-up (controller, flow window and cross-check restart there).
//! - Every transition, and every alarm raised while already in `Alarm`, is recorded in the trace ring.
//! - The estimators (pressure filter, slope detector, flow window) run at most once per
//!   [`ESTIMATOR_INTERVAL_S`] of sample time: on every sample of telemetry at 10 ms or slower, on every
//!   tenth at 1 kHz; every other interlock reads every sample.
//!
//! Every forward (and back-off) rate passes [`clamp_rate`], the single choke point.

use crate::alarm::{Alarm, AlarmSet};
use crate::clamp::{clamp_rate, ClampReason, RateLimits};
use crate::config::{validate_rate, ConfigError, KernelConfig, Program};
use crate::controller::{ControlStatus, Gains, RateController};
use crate::trace::{Cause, TraceRing};
use crate::units::is_positive_finite;
use core::ops::RangeInclusive;

/// The state without its data: what the trace records and Python sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    Idle,
    Armed,
    Running,
    Paused,
    Alarm,
    Stopped,
    Complete,
    SyringeChange,
}

impl StateKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            StateKind::Idle => "idle",
            StateKind::Armed => "armed",
            StateKind::Running => "running",
            StateKind::Paused => "paused",
            StateKind::Alarm => "alarm",
            StateKind::Stopped => "stopped",
            StateKind::Complete => "complete",
            StateKind::SyringeChange => "syringe_change",
        }
    }

    /// Whether interlocks are evaluated in this state.
    pub const fn is_monitored(self) -> bool {
        !matches!(self, StateKind::Idle | StateKind::Complete)
    }
}

/// The sub-phase of `Running`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Fast bounded take-up of lead-screw slack; `commanded_ml` counts what it has commanded so far.
    TakeUp { commanded_ml: f64, origin_ml: f64 },
    /// Closed-loop delivery at the programmed rate.
    Infusing,
}

/// A retract in progress in `Alarm`: the post-occlusion back-off, or the siphon catch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Volume the retract may still take (mL): compliance × (pressure − baseline) for a back-off, the
    /// slack bound `take_up_max_ml` for a catch.
    pub remaining_ml: f64,
    /// A back-off ends once the pressure is at or below this (mmHg); −∞ for a catch.
    pub target_mmhg: f64,
    /// A catch: the highest encoder volume since it began (mL). It ends once the plunger is two counts
    /// below it — the clamp behind the flange has caught the plunger and begins to pull it back.
    pub catch_peak_ml: Option<f64>,
}

/// States, each owning the data only it needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    Idle,
    Armed,
    Running(Phase),
    Paused,
    Alarm(Option<Backoff>),
    Stopped,
    Complete,
    /// The operator is swapping the syringe; `stopped`: the state it returns to is `Stopped` (else
    /// `Paused`).
    SyringeChange {
        stopped: bool,
    },
}

impl State {
    pub const fn kind(&self) -> StateKind {
        match self {
            State::Idle => StateKind::Idle,
            State::Armed => StateKind::Armed,
            State::Running(_) => StateKind::Running,
            State::Paused => StateKind::Paused,
            State::Alarm(_) => StateKind::Alarm,
            State::Stopped => StateKind::Stopped,
            State::Complete => StateKind::Complete,
            State::SyringeChange { .. } => StateKind::SyringeChange,
        }
    }
}

/// One telemetry sample as the pump reported it. Any field may be garbage; the kernel checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Telemetry {
    /// When the sample was taken (s, same clock as `now`).
    pub t_s: f64,
    /// Plunger-encoder volume counter (mL), monotonic while infusing.
    pub volume_ml: f64,
    /// Downstream line pressure (mmHg); ignored when the pump has no pressure sensor.
    pub pressure_mmhg: f64,
    /// The pump reports its motor turning (informative; logged).
    pub motor_running: bool,
    pub air_in_line: bool,
    pub syringe_present: bool,
    pub end_of_travel: bool,
}

/// Direction of the motor command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Hold,
    /// Toward the patient.
    Forward,
    /// Away from the patient (occlusion back-off only).
    Retract,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Hold => "hold",
            Direction::Forward => "forward",
            Direction::Retract => "retract",
        }
    }
}

/// The motor command: a direction and a finite, non-negative rate (mL/s; zero exactly when `Hold`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotorCommand {
    pub direction: Direction,
    pub rate_ml_s: f64,
}

impl MotorCommand {
    pub const HOLD: MotorCommand = MotorCommand { direction: Direction::Hold, rate_ml_s: 0.0 };

    #[inline(always)]
    fn forward(rate_ml_s: f64) -> Self {
        if rate_ml_s > 0.0 {
            MotorCommand { direction: Direction::Forward, rate_ml_s }
        } else {
            Self::HOLD
        }
    }

    #[inline(always)]
    fn retract(rate_ml_s: f64) -> Self {
        if rate_ml_s > 0.0 {
            MotorCommand { direction: Direction::Retract, rate_ml_s }
        } else {
            Self::HOLD
        }
    }
}

/// Operator commands, named in refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Load,
    Start,
    Pause,
    Resume,
    Stop,
    Acknowledge,
    Silence,
    Unload,
    SetRate,
    ChangeSyringe,
    SyringeLoaded,
}

impl Command {
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Load => "load",
            Command::Start => "start",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Stop => "stop",
            Command::Acknowledge => "acknowledge",
            Command::Silence => "silence",
            Command::Unload => "unload",
            Command::SetRate => "set_rate",
            Command::ChangeSyringe => "change_syringe",
            Command::SyringeLoaded => "syringe_loaded",
        }
    }
}

/// Why an operator command was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelError {
    /// The command is not valid in the current state; nothing changed.
    InvalidTransition { from: StateKind, command: Command },
    /// `start` or `resume` before a sample has given the plunger's position; nothing changed.
    PositionUnknown { from: StateKind, command: Command },
    /// The program or rate was refused; nothing changed (`load`).
    Config(ConfigError),
    /// The command was refused and latched an alarm (`set_rate` with an invalid rate while a program
    /// is in force): the kernel is now in `Alarm`.
    Interlock { alarm: Alarm, cause: ConfigError },
}

/// What one tick returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    pub command: MotorCommand,
    pub state: StateKind,
    /// All latched alarms.
    pub alarms: AlarmSet,
    /// Alarms first raised on this tick.
    pub raised: AlarmSet,
    pub near_empty: bool,
    /// An alarm is latched and not silenced.
    pub annunciate: bool,
    /// Measured volume delivered by the current program (mL).
    pub delivered_ml: f64,
    /// Programmed volume still to deliver (mL).
    pub remaining_ml: f64,
    /// Which clamp branch decided the forward rate.
    pub clamp: ClampReason,
    /// The controller's per-term breakdown (zero when it did not run).
    pub control: ControlStatus,
}

/// Number of checkpoints in the flow-deviation window (one every window/12).
const FLOW_POINTS: usize = 13;

/// The estimators — the pressure filter, the slope detector with its baseline, and the flow window —
/// run on a fresh sample taken at least this long (s, sample time) after the one they last ran on;
/// every other fresh sample only records the raw pressure and the volume. Their time constants are
/// seconds (filter 5 s, sustain 30 s, baseline and flow window 120 s, a flow point every 10 s), so
/// 100 Hz resolves them and an alarm they raise comes at most one interval later; the filter's
/// coefficient follows the interval actually elapsed. Telemetry at 10 ms or slower (the bridge and the
/// campaigns sample once per control period, ≥ 0.1 s) runs them on every sample exactly as before;
/// KP-40MIN's 1 kHz runs them on every tenth. The 0.5 ms below 10 ms absorbs the sample clock's
/// rounding (t = n·dt), so a 100 Hz feed is never thinned to 50 Hz. The raw pressure threshold, the
/// back-off, the drive model, the stall, reverse-motion, encoder and dose checks read every sample.
pub const ESTIMATOR_INTERVAL_S: f64 = 0.0095;

/// A plunger position a sample may report (mL, inclusive); outside it the sample is `TelemetryInvalid`.
pub const PLAUSIBLE_VOLUME_ML: RangeInclusive<f64> = -1_000.0..=10_000.0;
/// A line pressure a sample may report (mmHg gauge, inclusive). Below zero is real: a syringe below the
/// patient siphons, and sensors read a few mmHg under zero at rest.
pub const PLAUSIBLE_PRESSURE_MMHG: RangeInclusive<f64> = -300.0..=5_000.0;

// `accept_sample` relies on finite bounds: `contains` then refuses NaN and ±∞ by itself.
const _: () = assert!(
    PLAUSIBLE_VOLUME_ML.start().is_finite()
        && PLAUSIBLE_VOLUME_ML.end().is_finite()
        && PLAUSIBLE_PRESSURE_MMHG.start().is_finite()
        && PLAUSIBLE_PRESSURE_MMHG.end().is_finite()
);

#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct FlowPoint {
    t_s: f64,
    target_ml: f64,
    commanded_ml: f64,
    measured_ml: f64,
    /// What the line pressure compresses the drive by, C_d·p (mL; 0 without a pressure sensor).
    compression_ml: f64,
}

/// Line-pressure estimator behind the slope detector and the back-off target.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct PressureTrack {
    initialised: bool,
    filtered_mmhg: f64,
    slope_mmhg_s: f64,
    baseline_mmhg: f64,
    last_raw_mmhg: f64,
    /// Kernel time from which the slope detector may fire (re-armed on start, resume and a rate increase
    /// above `slope_rearm_increase`).
    armed_at_s: f64,
    /// Kernel time since which the slope has stayed at or above `slope_fraction`·Q/C without a break
    /// (None: it is below now).
    rising_since_s: Option<f64>,
    /// Highest slope since `rising_since_s` (mmHg/s).
    rising_peak_mmhg_s: f64,
    /// Interval between the last two estimator runs (s).
    last_dt_s: f64,
}

/// The safety kernel. See the module documentation for the state machine.
#[derive(Debug, Clone)]
pub struct SafetyKernel {
    cfg: KernelConfig,
    state: State,
    program: Option<Program>,
    controller: RateController,
    trace: TraceRing,
    latched: AlarmSet,
    /// Kernel time of the last step (None before the first).
    now_s: Option<f64>,
    /// Kernel time from which staleness is counted when no sample has arrived yet.
    monitored_since_s: Option<f64>,
    last_sample_t_s: Option<f64>,
    /// Time of the last plausible sample, accepted or rejected as a jump: the jump bound runs from it,
    /// so a jump stays rejected however long it persists (only a new reference ends it).
    last_plausible_t_s: Option<f64>,
    last_volume_ml: Option<f64>,
    /// Encoder volume at the start of the current program.
    origin_ml: Option<f64>,
    /// Volume and drug delivered by earlier programs on this kernel.
    completed_ml: f64,
    completed_mg: f64,
    /// Volume the current program delivered from earlier syringes (mL): `origin_ml` is the plunger
    /// position of the syringe in the pump.
    carried_ml: f64,
    /// Volume delivered on this kernel (all programs) when the syringe in the pump went in (mL).
    syringe_start_ml: f64,
    /// What the syringe in the pump held when it went in (mL).
    syringe_fill_ml: f64,
    /// A new syringe is in: its slack is taken up at the next start or resume.
    take_up_pending: bool,
    /// The plunger's position is not known (a syringe changed, or unloaded and perhaps swapped): the next
    /// sample is a new reference, not a jump, and start and resume wait for it.
    rereference: bool,
    /// Forward motor volume commanded while infusing (integral of the held command).
    commanded_ml: f64,
    last_command: MotorCommand,
    /// Volume where forward motion last stopped (for uncommanded delivery).
    hold_origin_ml: Option<f64>,
    /// Stall detection: forward volume commanded since the plunger last moved, and where it was.
    since_motion_ml: f64,
    motion_ref_ml: f64,
    moved_since_start: bool,
    /// Started without take-up: the first plunger motion ends the run-in through the lead-screw slack
    /// (an implicit take-up at the programmed rate).
    awaiting_first_motion: bool,
    /// Lowest motor lead over the plunger beyond the drive model (commanded − encoder − C_d·p, mL) since
    /// delivery (re)started: the encoder cross-check measures the lead's growth above it.
    lead_floor_ml: Option<f64>,
    /// Highest volume seen since (re)start, for reverse-motion detection.
    peak_ml: f64,
    flow: [FlowPoint; FLOW_POINTS],
    flow_len: usize,
    /// The last large rate step: when, and the drive's compression C_d·p then (mL).
    rate_step: Option<(f64, f64)>,
    pressure: PressureTrack,
    /// Sample time the estimators last ran on (None before the first fresh sample).
    estimated_at_s: Option<f64>,
    /// The estimators run on the fresh sample in hand ([`ESTIMATOR_INTERVAL_S`]).
    estimate_now: bool,
    /// Lowest filtered line pressure since the program was loaded: the pressure the line relaxes to
    /// with the motor stopped (the drive's spring settles back to it).
    rest_mmhg: Option<f64>,
    /// Set at dose completion: the encoder volume then and the drive release predicted then (mL). The
    /// plunger still moves on by the release; it is counted as delivered from the completion on.
    release: Option<(f64, f64)>,
    silenced_until_s: f64,
    /// Set on start, resume and the end of take-up: the next infusing tick restarts the controller
    /// on target at the volume measured then (no catch-up for the time the motor was held).
    restart_controller: bool,
}

impl SafetyKernel {
    pub fn new(cfg: KernelConfig) -> Self {
        let gains = Gains {
            kp_per_s: cfg.raw.kp_per_s,
            ki_per_s2: cfg.raw.ki_per_s2,
            integral_limit_ml_s: cfg.raw.integral_limit_ml_s,
            slew_ml_s_per_s: cfg.slew_ml_s_per_s,
            max_ml_s: cfg.max_rate_ml_s,
            deadband_ml: cfg.control_deadband_ml,
            hold_s: cfg.raw.control_hold_s,
            quantum_ml: cfg.volume_quantum_ml,
        };
        Self {
            cfg,
            state: State::Idle,
            program: None,
            controller: RateController::new(gains),
            trace: TraceRing::new(),
            latched: AlarmSet::EMPTY,
            now_s: None,
            monitored_since_s: None,
            last_sample_t_s: None,
            last_plausible_t_s: None,
            last_volume_ml: None,
            origin_ml: None,
            completed_ml: 0.0,
            completed_mg: 0.0,
            carried_ml: 0.0,
            syringe_start_ml: 0.0,
            syringe_fill_ml: cfg.raw.syringe_fill_ml,
            take_up_pending: false,
            rereference: false,
            commanded_ml: 0.0,
            last_command: MotorCommand::HOLD,
            hold_origin_ml: None,
            since_motion_ml: 0.0,
            motion_ref_ml: 0.0,
            moved_since_start: false,
            awaiting_first_motion: false,
            lead_floor_ml: None,
            peak_ml: 0.0,
            flow: [FlowPoint::default(); FLOW_POINTS],
            flow_len: 0,
            rate_step: None,
            pressure: PressureTrack::default(),
            estimated_at_s: None,
            estimate_now: false,
            rest_mmhg: None,
            release: None,
            silenced_until_s: f64::NEG_INFINITY,
            restart_controller: false,
        }
    }

    // ----- read-only views -------------------------------------------------------------------

    pub const fn config(&self) -> &KernelConfig {
        &self.cfg
    }
    pub const fn state(&self) -> State {
        self.state
    }
    pub const fn state_kind(&self) -> StateKind {
        self.state.kind()
    }
    pub const fn alarms(&self) -> AlarmSet {
        self.latched
    }
    pub const fn program(&self) -> Option<Program> {
        self.program
    }
    pub fn trace_mut(&mut self) -> &mut TraceRing {
        &mut self.trace
    }
    pub const fn trace(&self) -> &TraceRing {
        &self.trace
    }
    /// Forward motor volume commanded by the current program while infusing (mL).
    pub const fn commanded_ml(&self) -> f64 {
        self.commanded_ml
    }

    /// Measured volume delivered by the current program (mL). From the completion of the dose on, the
    /// drive release predicted then counts as delivered until the plunger has moved that far.
    #[inline(always)]
    pub fn delivered_ml(&self) -> f64 {
        let this_syringe = match (self.origin_ml, self.last_volume_ml) {
            (Some(origin), Some(volume)) => match self.release {
                Some((at_ml, release_ml)) => volume.max(at_ml + release_ml) - origin,
                None => volume - origin,
            },
            _ => 0.0,
        };
        self.carried_ml + this_syringe
    }

    /// Volume the compressed drive train will still push the plunger on by once the motor stops (mL):
    /// drive compliance × (line pressure − rest pressure), the rise counted up to the occlusion
    /// threshold. Zero without a pressure sensor, a pressure sample, or a characterised drive.
    #[inline(always)]
    pub fn drive_release_ml(&self) -> f64 {
        self.rest_mmhg.map_or(0.0, |rest| self.drive_release_above_ml(rest))
    }

    /// The drive's release down to `rest_mmhg`: C_d × (p − rest), the rise clamped to [0, threshold].
    fn drive_release_above_ml(&self, rest_mmhg: f64) -> f64 {
        let c_d = self.cfg.drive_compliance_ml_per_mmhg;
        if c_d > 0.0 && self.cfg.raw.has_pressure_sensor && self.pressure.initialised {
            c_d * (self.pressure.last_raw_mmhg - rest_mmhg).max(0.0).min(self.cfg.raw.occlusion_threshold_mmhg)
        } else {
            0.0
        }
    }

    /// Drug delivered over the kernel's life plus what was delivered before it (mg).
    #[inline(always)]
    pub fn cumulative_mg(&self) -> f64 {
        self.cumulative_mg_with(self.delivered_ml())
    }

    /// What the syringe in the pump still holds (mL).
    #[inline(always)]
    pub fn syringe_left_ml(&self) -> f64 {
        self.syringe_left_ml_with(self.delivered_ml())
    }

    // A tick's figures from one `delivered_ml()`, worked out once per check rather than once per figure
    // (the same arithmetic: `cumulative_mg` and `syringe_left_ml` call these too).

    #[inline(always)]
    fn cumulative_mg_with(&self, delivered_ml: f64) -> f64 {
        self.cfg.raw.prior_delivered_mg + self.completed_mg + delivered_ml * self.cfg.mg_per_ml()
    }

    #[inline(always)]
    fn syringe_left_ml_with(&self, delivered_ml: f64) -> f64 {
        self.syringe_fill_ml - (self.completed_ml + delivered_ml - self.syringe_start_ml)
    }

    #[inline(always)]
    fn remaining_ml_with(&self, delivered_ml: f64) -> f64 {
        self.program.map_or(0.0, |p| (p.vtbi_ml - delivered_ml).max(0.0))
    }

    // ----- operator commands -----------------------------------------------------------------

    fn refuse(&self, command: Command) -> KernelError {
        KernelError::InvalidTransition { from: self.state.kind(), command }
    }

    /// Motion starts from the plunger's position: refused until a sample has given it (a new kernel,
    /// a new syringe, one unloaded) rather than started from a guess.
    fn position_known(&self, command: Command) -> Result<(), KernelError> {
        if self.rereference || self.last_volume_ml.is_none() {
            return Err(KernelError::PositionUnknown { from: self.state.kind(), command });
        }
        Ok(())
    }

    fn transition(&mut self, to: State, cause: Cause) {
        let from = self.state.kind();
        self.state = to;
        let t = self.now_s.unwrap_or(0.0);
        let delivered = self.delivered_ml();
        self.trace.push(t, from, to.kind(), cause, delivered);
    }

    /// Loads a program (`Idle`, `Stopped` or `Complete` → `Armed`). A program in force is closed and
    /// its delivered drug carried into the cumulative total. The VTBI must fit in the syringe in the
    /// pump; [`SafetyKernel::load_syringes`] admits a dose given over several syringes.
    pub fn load(&mut self, rate_ml_h: f64, vtbi_ml: f64, take_up: bool) -> Result<(), KernelError> {
        self.load_syringes(rate_ml_h, vtbi_ml, take_up, 1)
    }

    /// [`SafetyKernel::load`] for a dose given over `syringes` syringes (1 to [`MAX_SYRINGES`]): the
    /// VTBI may be what the syringe in the pump still holds plus `syringes − 1` full syringes. The
    /// limits (VTBI, overdose, cumulative cap) are the whole dose's; see the syringe change.
    pub fn load_syringes(
        &mut self,
        rate_ml_h: f64,
        vtbi_ml: f64,
        take_up: bool,
        syringes: u32,
    ) -> Result<(), KernelError> {
        if !matches!(self.state, State::Idle | State::Stopped | State::Complete) {
            return Err(self.refuse(Command::Load));
        }
        let count = crate::config::validate_syringes(syringes).map_err(KernelError::Config)?;
        let delivered = self.delivered_ml();
        let completed_mg = self.completed_mg + delivered * self.cfg.mg_per_ml();
        let available = KernelConfig {
            raw: crate::config::RawKernelConfig {
                syringe_fill_ml: self.syringe_left_ml() + (count - 1.0) * self.cfg.raw.syringe_fill_ml,
                ..self.cfg.raw
            },
            ..self.cfg
        };
        let program =
            Program::new(&available, rate_ml_h, vtbi_ml, take_up, self.cfg.raw.prior_delivered_mg + completed_mg)
                .map_err(KernelError::Config)?;
        self.completed_ml += delivered;
        self.completed_mg = completed_mg;
        self.carried_ml = 0.0;
        self.program = Some(program);
        // A syringe whose position is not known yet is referenced by its first sample.
        self.origin_ml = if self.rereference { None } else { self.last_volume_ml };
        self.release = None;
        self.rest_mmhg = self.pressure.initialised.then_some(self.pressure.filtered_mmhg);
        self.commanded_ml = 0.0;
        self.hold_origin_ml = None;
        self.monitored_since_s = self.now_s;
        self.transition(State::Armed, Cause::Operator(Command::Load));
        Ok(())
    }

    /// Starts delivery (`Armed` → `Running`, with take-up if the program asks for it; `Stopped` →
    /// `Running` at the programmed rate).
    pub fn start(&mut self) -> Result<(), KernelError> {
        let take_up = self.cfg.raw.take_up_max_ml > 0.0;
        let phase = match (self.state, self.program) {
            (State::Armed, Some(p)) if (p.take_up || self.take_up_pending) && take_up => self.take_up_phase(),
            (State::Stopped, Some(_)) if self.take_up_pending && take_up => self.take_up_phase(),
            (State::Armed | State::Stopped, Some(_)) => Phase::Infusing,
            _ => return Err(self.refuse(Command::Start)),
        };
        self.position_known(Command::Start)?;
        self.begin_motion();
        // Without take-up a freshly loaded syringe may still have its slack to cross.
        self.awaiting_first_motion = (self.state == State::Armed || self.take_up_pending) && phase == Phase::Infusing;
        self.take_up_pending = false;
        self.transition(State::Running(phase), Cause::Operator(Command::Start));
        Ok(())
    }

    /// `Running` → `Paused`.
    pub fn pause(&mut self) -> Result<(), KernelError> {
        if !matches!(self.state, State::Running(_)) {
            return Err(self.refuse(Command::Pause));
        }
        self.transition(State::Paused, Cause::Operator(Command::Pause));
        Ok(())
    }

    /// `Paused` → `Running` at the programmed rate, tracking from the current volume (no catch-up).
    pub fn resume(&mut self) -> Result<(), KernelError> {
        if self.state != State::Paused {
            return Err(self.refuse(Command::Resume));
        }
        self.position_known(Command::Resume)?;
        // After a syringe change the new syringe's slack is taken up first.
        let phase = if self.take_up_pending && self.cfg.raw.take_up_max_ml > 0.0 {
            self.take_up_phase()
        } else {
            Phase::Infusing
        };
        self.begin_motion();
        self.awaiting_first_motion = self.take_up_pending && phase == Phase::Infusing;
        self.take_up_pending = false;
        self.transition(State::Running(phase), Cause::Operator(Command::Resume));
        Ok(())
    }

    fn take_up_phase(&self) -> Phase {
        Phase::TakeUp { commanded_ml: 0.0, origin_ml: self.last_volume_ml.unwrap_or(0.0) }
    }

    /// `Running`, `Paused` or `SyringeChange` → `Stopped` (a syringe change is abandoned: the
    /// plunger reference is re-taken from the next sample, the dose's accounting runs on).
    pub fn stop(&mut self) -> Result<(), KernelError> {
        if !matches!(self.state, State::Running(_) | State::Paused | State::SyringeChange { .. }) {
            return Err(self.refuse(Command::Stop));
        }
        self.transition(State::Stopped, Cause::Operator(Command::Stop));
        Ok(())
    }

    /// `Paused` or `Stopped` → `SyringeChange`: the operator takes the syringe out. Refused without a
    /// program, or while the last command still moves the motor. The current syringe's delivery is
    /// carried into the dose; the plunger reference is dropped until `syringe_loaded`.
    pub fn change_syringe(&mut self) -> Result<(), KernelError> {
        let stopped = match self.state {
            State::Paused => false,
            State::Stopped => true,
            _ => return Err(self.refuse(Command::ChangeSyringe)),
        };
        if self.program.is_none() || self.last_command.direction != Direction::Hold {
            return Err(self.refuse(Command::ChangeSyringe));
        }
        self.carried_ml = self.delivered_ml();
        self.origin_ml = None;
        self.rereference = true;
        self.hold_origin_ml = None;
        self.transition(State::SyringeChange { stopped }, Cause::Operator(Command::ChangeSyringe));
        Ok(())
    }

    /// `SyringeChange` → `Paused` or `Stopped` (where the change began): a new syringe holding
    /// `fill_ml` (at most the configured capacity) is in the pump. Its plunger position is taken from
    /// the next sample, its level starts at `fill_ml`, and its slack is taken up at the next resume or
    /// start. A refused fill changes nothing.
    pub fn syringe_loaded(&mut self, fill_ml: f64) -> Result<(), KernelError> {
        let State::SyringeChange { stopped } = self.state else {
            return Err(self.refuse(Command::SyringeLoaded));
        };
        let fill = crate::config::validate_fill(&self.cfg, fill_ml).map_err(KernelError::Config)?;
        self.syringe_start_ml = self.completed_ml + self.delivered_ml();
        self.syringe_fill_ml = fill;
        self.take_up_pending = true;
        self.hold_origin_ml = None;
        let to = if stopped { State::Stopped } else { State::Paused };
        self.transition(to, Cause::Operator(Command::SyringeLoaded));
        Ok(())
    }

    /// `Alarm` → `Stopped`, clearing the latch. A condition that persists is raised again on the
    /// next tick.
    pub fn acknowledge(&mut self) -> Result<(), KernelError> {
        if !matches!(self.state, State::Alarm(_)) {
            return Err(self.refuse(Command::Acknowledge));
        }
        self.latched = AlarmSet::EMPTY;
        // Motion the operator has been told of is not raised again; motion from here on is.
        self.hold_origin_ml = None;
        self.transition(State::Stopped, Cause::Operator(Command::Acknowledge));
        Ok(())
    }

    /// Silences the annunciation of the latched alarms for `silence_s` (at most 2 min). The alarms
    /// stay latched and the motor stays stopped.
    pub fn silence(&mut self) -> Result<(), KernelError> {
        if !matches!(self.state, State::Alarm(_)) {
            return Err(self.refuse(Command::Silence));
        }
        self.silenced_until_s = self.now_s.unwrap_or(0.0) + self.cfg.raw.silence_s;
        self.transition(self.state, Cause::Operator(Command::Silence));
        Ok(())
    }

    /// `Armed`, `Stopped` or `Complete` → `Idle`, closing the program.
    pub fn unload(&mut self) -> Result<(), KernelError> {
        if !matches!(self.state, State::Armed | State::Stopped | State::Complete) {
            return Err(self.refuse(Command::Unload));
        }
        let delivered = self.delivered_ml();
        self.completed_ml += delivered;
        self.completed_mg += delivered * self.cfg.mg_per_ml();
        self.carried_ml = 0.0;
        self.program = None;
        self.origin_ml = None;
        // The syringe may be swapped before the next program: its position comes from the next sample.
        self.rereference = true;
        self.hold_origin_ml = None;
        self.release = None;
        self.rest_mmhg = None;
        self.transition(State::Idle, Cause::Operator(Command::Unload));
        Ok(())
    }

    /// Changes the programmed rate (`Armed`, `Running`, `Paused`, `Stopped`). An invalid rate — NaN,
    /// infinite, ≤ 0, above the ceiling (a unit slip) — is refused *and* latches
    /// [`Alarm::RateCommandInvalid`]: a bad command while a program is in force is a safety event.
    ///
    /// The slope detector is re-armed (silent for `slope_arm_delay_s`) only by an increase of more than
    /// `slope_rearm_increase` of the previous rate: the line pressure then climbs to a higher working
    /// pressure, which must not be taken for an occlusion. A smaller increase raises it too little, and
    /// a decrease lowers it (the baseline follows a falling pressure at once), so neither silences the
    /// detector: a protocol's ramp or taper in 2 % steps keeps it armed throughout.
    pub fn set_rate(&mut self, rate_ml_h: f64) -> Result<(), KernelError> {
        let Some(program) = self.program else {
            return Err(self.refuse(Command::SetRate));
        };
        if !matches!(self.state, State::Armed | State::Running(_) | State::Paused | State::Stopped) {
            return Err(self.refuse(Command::SetRate));
        }
        match validate_rate(&self.cfg, rate_ml_h) {
            Ok(rate_ml_s) => {
                self.program = Some(Program { rate_ml_s, ..program });
                let step = 1.0 + self.cfg.raw.slope_rearm_increase;
                if rate_ml_s > program.rate_ml_s * step {
                    self.pressure.armed_at_s = self.now_s.unwrap_or(0.0) + self.cfg.raw.slope_arm_delay_s;
                }
                // The drive relaxes (or compresses) by C_d·ΔP through the line's time constant after a
                // large step: a window spanning it would read as a deviation of the new, small rate.
                if rate_ml_s > program.rate_ml_s * step || rate_ml_s * step < program.rate_ml_s {
                    self.flow_len = 0;
                    self.rate_step = Some((self.now_s.unwrap_or(0.0), self.drive_compression_ml()));
                }
                self.transition(self.state, Cause::Operator(Command::SetRate));
                Ok(())
            }
            Err(cause) => {
                let mut alarm = AlarmSet::EMPTY;
                alarm.insert(Alarm::RateCommandInvalid);
                self.raise(alarm);
                Err(KernelError::Interlock { alarm: Alarm::RateCommandInvalid, cause })
            }
        }
    }

    /// Resets the per-run trackers on every start and resume.
    fn begin_motion(&mut self) {
        let volume = self.last_volume_ml.unwrap_or(0.0);
        self.controller.reset(volume);
        self.restart_controller = true;
        self.since_motion_ml = 0.0;
        self.motion_ref_ml = volume;
        self.moved_since_start = false;
        self.awaiting_first_motion = false;
        self.peak_ml = volume;
        self.restart_delivery_checks(self.now_s.unwrap_or(0.0));
    }

    /// Where delivery at the programmed rate (re)starts — a start or resume, the end of take-up, the
    /// first motion after a start without take-up: the flow window and the encoder cross-check start
    /// afresh, and the slope detector is silent while the line climbs to its working pressure.
    fn restart_delivery_checks(&mut self, now_s: f64) {
        self.flow_len = 0;
        self.rate_step = None;
        self.lead_floor_ml = None;
        self.pressure.armed_at_s = now_s + self.cfg.raw.slope_arm_delay_s;
    }

    /// Latches `alarms`; enters `Alarm` (starting a back-off after an occlusion while running).
    #[inline(always)]
    fn raise(&mut self, alarms: AlarmSet) {
        let fresh = alarms.difference(self.latched);
        if fresh.is_empty() {
            return;
        }
        self.latched = self.latched.union(fresh);
        self.silenced_until_s = f64::NEG_INFINITY;
        // Back-off steers by the line pressure: it is planned when every alarm raised while running
        // permits it (an occlusion seen first by the flow or stall check leaves the same volume in the
        // line), and any alarm that does not (stale or invalid telemetry, air, ...) ends it.
        let permitted = fresh.iter().all(Alarm::permits_backoff);
        let siphon = fresh == AlarmSet(Alarm::UncommandedDelivery.bit());
        let next = match self.state {
            State::Alarm(backoff) if permitted => State::Alarm(backoff),
            State::Running(_) if permitted => State::Alarm(self.backoff_plan()),
            State::Armed | State::Paused | State::Stopped | State::Complete if siphon => {
                State::Alarm(self.catch_plan())
            }
            _ => State::Alarm(None),
        };
        for alarm in fresh.iter() {
            self.transition(next, Cause::Alarm(alarm));
        }
    }

    /// The siphon catch, on a held plunger's `uncommanded_delivery` alone: a pump raised above the
    /// patient pulls the plunger through the lead-screw slack (up to 0.2 mL) once nothing pushes it, and
    /// the alarm alone would not stop it. Retracting the nut at `backoff_rate_ml_h` closes the gap to
    /// the clamp behind the flange in seconds; the plunger stops, and the catch ends when the encoder
    /// shows it pulled back two counts (at most one tick's retract more: ≈ 8 µL at 300 mL/h is drawn
    /// back), or when the slack bound `take_up_max_ml` has been retracted (a plunger not held by the
    /// drive at all). Not without `backoff` configured.
    fn catch_plan(&self) -> Option<Backoff> {
        let r = &self.cfg.raw;
        (r.backoff && r.take_up_max_ml > 0.0).then(|| Backoff {
            remaining_ml: r.take_up_max_ml,
            target_mmhg: f64::NEG_INFINITY,
            catch_peak_ml: Some(self.last_volume_ml.unwrap_or(0.0)),
        })
    }

    /// The back-off for an alarm raised while running: only with a pressure sensor whose estimator has
    /// a sample, and only when the line holds pressure above baseline + margin (an alarm that finds the
    /// line at its baseline has nothing stored to take back, and a retract would draw from the patient).
    fn backoff_plan(&self) -> Option<Backoff> {
        let r = &self.cfg.raw;
        if !(r.backoff && r.has_pressure_sensor && self.pressure.initialised) {
            return None;
        }
        let target_mmhg = self.pressure.baseline_mmhg + r.backoff_margin_mmhg;
        if self.pressure.last_raw_mmhg <= target_mmhg {
            return None;
        }
        let stored_ml = r.compliance_ml_per_mmhg * (self.pressure.last_raw_mmhg - self.pressure.baseline_mmhg);
        Some(Backoff { remaining_ml: stored_ml.max(0.0), target_mmhg, catch_peak_ml: None })
    }

    // ----- the tick --------------------------------------------------------------------------

    /// One control tick at kernel time `now_s` with the latest telemetry sample.
    #[inline(always)]
    pub fn step(&mut self, now_s: f64, sample: &Telemetry) -> StepOutput {
        let latched_before = self.latched;
        let mut raised = AlarmSet::EMPTY;
        let monitored = self.state.kind().is_monitored();
        let dt_s = match self.now_s {
            _ if !now_s.is_finite() => None,
            Some(prev) if now_s < prev || !(now_s - prev).is_finite() => None,
            Some(prev) => Some(now_s - prev),
            None => Some(0.0),
        };
        let Some(dt_s) = dt_s else {
            if monitored {
                raised.insert(Alarm::ClockInvalid);
                self.raise(raised);
            }
            return self.finish(MotorCommand::HOLD, ClampReason::Unchanged, ControlStatus::default(), latched_before);
        };
        self.now_s = Some(now_s);
        if self.monitored_since_s.is_none() {
            self.monitored_since_s = Some(now_s);
        }
        // Account the command held since the previous tick.
        if self.last_command.direction == Direction::Forward && matches!(self.state, State::Running(Phase::Infusing)) {
            self.commanded_ml += self.last_command.rate_ml_s * dt_s;
        }
        // Every tick, fresh sample or not, so slower telemetry cannot stretch the stall allowance.
        if self.last_command.direction == Direction::Forward && matches!(self.state, State::Running(_)) {
            self.since_motion_ml += self.last_command.rate_ml_s * dt_s;
        }

        let fresh = self.accept_sample(now_s, sample, &mut raised);
        if monitored {
            let since = self.last_sample_t_s.into_iter().chain(self.monitored_since_s).fold(f64::MIN, f64::max);
            if now_s - since > self.cfg.raw.stale_after_s {
                raised.insert(Alarm::TelemetryStale);
            }
            if fresh {
                self.check_sample(sample, &mut raised);
            }
            self.raise(raised);
        } else if self.state == State::Complete {
            // Watch after the end: the program is done, but the plunger must not move on by itself, nor
            // jump on (`accept_sample`): invalid telemetry alone is not this watch's alarm.
            if fresh {
                self.check_uncommanded(sample.volume_ml, &mut raised);
            }
            if raised.contains(Alarm::UncommandedDelivery) {
                self.raise(raised);
            }
        }

        let (command, clamp, control) = self.command(now_s, dt_s);
        self.finish(command, clamp, control, latched_before)
    }

    /// Validates the sample; records it and returns true when it is valid and fresh.
    #[inline(always)]
    fn accept_sample(&mut self, now_s: f64, s: &Telemetry, raised: &mut AlarmSet) -> bool {
        // The plausible ranges are finite, so `contains` also refuses NaN and ±∞.
        let pressure_ok = !self.cfg.raw.has_pressure_sensor || PLAUSIBLE_PRESSURE_MMHG.contains(&s.pressure_mmhg);
        let plausible = s.t_s.is_finite()
            && PLAUSIBLE_VOLUME_ML.contains(&s.volume_ml)
            && pressure_ok
            && s.t_s <= now_s
            && self.last_sample_t_s.is_none_or(|prev| s.t_s >= prev);
        // A new syringe's plunger may read anywhere: its first position is a new reference, not a jump.
        let jump_ok = match (self.last_volume_ml, self.last_plausible_t_s) {
            // Without a program any syringe may go in: every position is a new reference.
            _ if self.rereference || self.program.is_none() => true,
            (Some(v), Some(t)) => {
                let bound = 2.0 * self.cfg.raw.pump_max_rate_ml_h / crate::units::S_PER_H * (s.t_s - t).max(0.0) + 1.0;
                (s.volume_ml - v).abs() <= bound
            }
            _ => true,
        };
        if plausible {
            self.last_plausible_t_s = Some(self.last_plausible_t_s.map_or(s.t_s, |t| t.max(s.t_s)));
        }
        if !(plausible && jump_ok) {
            raised.insert(Alarm::TelemetryInvalid);
            // After the end a plunger jumping forward is delivery nothing commanded; the jump stays
            // rejected, so the watch would otherwise never see the plunger again. Raised with the
            // invalid sample, it holds the motor (no catch is driven by a reading not trusted).
            if plausible && self.state == State::Complete && self.last_volume_ml.is_some_and(|v| s.volume_ml > v) {
                raised.insert(Alarm::UncommandedDelivery);
            }
            return false;
        }
        if self.last_sample_t_s == Some(s.t_s) {
            return false; // the same sample again: not fresh
        }
        let changing = matches!(self.state, State::SyringeChange { .. });
        if self.program.is_none() {
            self.rereference = false;
        } else if self.origin_ml.is_none() && !changing {
            self.origin_ml = Some(s.volume_ml);
            self.rereference = false;
        }
        self.last_sample_t_s = Some(s.t_s);
        self.last_volume_ml = Some(s.volume_ml);
        let since_estimate = self.estimated_at_s.map(|t| s.t_s - t);
        self.estimate_now = since_estimate.is_none_or(|since| since >= ESTIMATOR_INTERVAL_S);
        if self.estimate_now {
            self.estimated_at_s = Some(s.t_s);
        }
        if self.cfg.raw.has_pressure_sensor {
            self.pressure.last_raw_mmhg = s.pressure_mmhg;
            if self.estimate_now {
                self.track_pressure(s.pressure_mmhg, since_estimate.unwrap_or(0.0));
            }
            if self.program.is_some() {
                let filtered = self.pressure.filtered_mmhg;
                self.rest_mmhg = Some(self.rest_mmhg.map_or(filtered, |rest| rest.min(filtered)));
            }
        }
        true
    }

    /// One estimator run: the pressure filter and its slope over the `dt_s` since the last run.
    #[inline(always)]
    fn track_pressure(&mut self, raw_mmhg: f64, dt_s: f64) {
        let r = &self.cfg.raw;
        let p = &mut self.pressure;
        if !p.initialised {
            *p = PressureTrack {
                initialised: true,
                filtered_mmhg: raw_mmhg,
                baseline_mmhg: raw_mmhg,
                last_raw_mmhg: raw_mmhg,
                ..*p
            };
            return;
        }
        if !is_positive_finite(dt_s) {
            return;
        }
        p.last_dt_s = dt_s;
        let a = dt_s / (r.pressure_filter_s + dt_s);
        let previous = p.filtered_mmhg;
        p.filtered_mmhg += a * (raw_mmhg - p.filtered_mmhg);
        p.slope_mmhg_s += a * ((p.filtered_mmhg - previous) / dt_s - p.slope_mmhg_s);
    }

    /// Interlocks that read a fresh, valid sample.
    #[inline(always)]
    fn check_sample(&mut self, s: &Telemetry, raised: &mut AlarmSet) {
        let r = self.cfg.raw;
        let q = self.cfg.volume_quantum_ml;
        let running = matches!(self.state, State::Running(_));
        // The syringe is out of the pump, or going in, during a syringe change.
        let changing = matches!(self.state, State::SyringeChange { .. });

        if !s.syringe_present && !changing {
            raised.insert(Alarm::SyringeMissing);
        }
        if s.air_in_line {
            raised.insert(Alarm::AirInLine);
        }
        // Only the plunger's end of travel: `load` already bounds the volume by what the syringe holds.
        if s.end_of_travel && !changing {
            raised.insert(Alarm::SyringeEmpty);
        }

        if r.has_pressure_sensor {
            if s.pressure_mmhg > r.occlusion_threshold_mmhg {
                raised.insert(Alarm::OcclusionPressure);
            }
            if self.estimate_now {
                self.check_slope(raised);
            }
        }

        if let Some(program) = self.program {
            let delivered = self.delivered_ml();
            if delivered > program.vtbi_ml * (1.0 + r.dose_tolerance) + q {
                raised.insert(Alarm::Overdose);
            }
            if self.cumulative_mg_with(delivered) > r.hard_cap_mg + q * self.cfg.mg_per_ml() {
                raised.insert(Alarm::CumulativeCap);
            }
        }

        if running {
            self.peak_ml = self.peak_ml.max(s.volume_ml);
            if s.volume_ml < self.peak_ml - 2.0 * q {
                raised.insert(Alarm::ReverseMotion);
            }
            let infusing = matches!(self.state, State::Running(Phase::Infusing));
            // Until the first motion after a start without take-up, the stall check alone watches (its
            // allowance is the take-up bound): the flow window would read the slack as a deviation.
            if infusing && !self.awaiting_first_motion && self.estimate_now {
                self.check_flow(s, raised);
            }
            self.check_stall(s.volume_ml, raised);
            // The cross-check needs the drive model: not with an uncharacterised drive (C_d = 0).
            if infusing && self.moved_since_start && self.cfg.drive_compliance_ml_per_mmhg > 0.0 {
                self.check_encoder(s.volume_ml, raised);
            }
        } else if !changing {
            self.check_uncommanded(s.volume_ml, raised);
        }
    }

    /// The plunger must not advance while no forward motion is commanded (held, stopped, in alarm, and
    /// after the end): free flow, or a siphon pulling it through the lead-screw slack. What the drive
    /// still pushes it on by as the pressure falls once the motor stops is expected, so the reference
    /// is the volume plus that release, and it follows a plunger that moves back. The release is
    /// counted down to the lower of the rest pressure and 0 mmHg: a program loaded onto a line still
    /// pressurised (a bridge restart) would otherwise take its relaxation for a siphon.
    fn check_uncommanded(&mut self, volume_ml: f64, raised: &mut AlarmSet) {
        if self.last_command.direction == Direction::Retract {
            return;
        }
        let rest = self.rest_mmhg.map_or(0.0, |rest| rest.min(0.0));
        let expected = volume_ml + self.drive_release_above_ml(rest);
        let origin = self.hold_origin_ml.map_or(expected, |o| o.min(expected));
        self.hold_origin_ml = Some(origin);
        if expected - origin > self.cfg.raw.uncommanded_volume_ml {
            raised.insert(Alarm::UncommandedDelivery);
        }
    }

    /// The second measure of delivery: the motor's commanded volume. Between them sits only the drive
    /// train, compressed by C_d·p, so `commanded − encoder − C_d·p` stays constant on a healthy pump
    /// (it falls by C_d·(stiction − running) at breakaway: the safe direction). Its rise above its
    /// lowest value since delivery (re)started is motor motion the encoder did not see — a slipping
    /// encoder, a slipping drive — and alarms beyond `encoder_mismatch_ml`, a bound set by the volume,
    /// not by a fraction of the flow as the flow window is. Without a pressure sensor the drive's
    /// compression is unknown up to C_d × the occlusion threshold, which is added to the bound; with an
    /// uncharacterised drive (`drive_stiffness_n_per_mm = 0`) there is no model and no cross-check.
    fn check_encoder(&mut self, volume_ml: f64, raised: &mut AlarmSet) {
        let r = &self.cfg.raw;
        let unknown = if r.has_pressure_sensor {
            0.0
        } else {
            self.cfg.drive_compliance_ml_per_mmhg * r.occlusion_threshold_mmhg
        };
        let lead = self.commanded_ml - volume_ml - self.drive_compression_ml();
        let floor = self.lead_floor_ml.map_or(lead, |f| f.min(lead));
        self.lead_floor_ml = Some(floor);
        if lead - floor > r.encoder_mismatch_ml + unknown {
            raised.insert(Alarm::EncoderMismatch);
        }
    }

    /// Slope/model detector: in an occlusion all flow goes into the compliance, so the pressure rises
    /// at Q/C and keeps rising. Fires while the filtered slope is at or above `slope_fraction`·Q/C and
    /// the pressure has risen above its baseline by either `slope_rise_mmhg` (more than a 50 cm head
    /// change, 37 mmHg) or, once the slope has stayed rising without a break for `slope_sustain_s` and
    /// is still `slope_hold_fraction` of its peak since then, by `slope_sustained_rise_mmhg` (less than
    /// a head change). A head change is a bounded step the line relaxes to through R·C_f: its slope
    /// peaks and decays, so after the sustain time it is well below its peak; an occlusion's ramp keeps
    /// its slope. The second path makes the detector faster at low rates, where the rise takes longest.
    /// Fires only once armed (`slope_arm_delay_s` after a
    /// start, resume or rate increase above `slope_rearm_increase`, so the rise to the flowing
    /// pressure is not taken for an occlusion). The baseline follows a falling pressure at once and a rising one only slowly
    /// (`pressure_baseline_s`) and only while it is not rising like an occlusion, so an occlusion can
    /// neither drag the baseline up with it nor shrink the back-off that uses it.
    #[inline(always)]
    fn check_slope(&mut self, raised: &mut AlarmSet) {
        let r = self.cfg.raw;
        let now = self.now_s.unwrap_or(0.0);
        let infusing = matches!(self.state, State::Running(Phase::Infusing));
        let setpoint = self.program.map_or(0.0, |p| p.rate_ml_s);
        let p = &mut self.pressure;
        let expected_slope = setpoint / r.compliance_ml_per_mmhg;
        let rising = infusing && p.slope_mmhg_s >= r.slope_fraction * expected_slope;
        let armed = infusing && now >= p.armed_at_s;
        if !rising || p.rising_since_s.is_none() {
            p.rising_peak_mmhg_s = p.slope_mmhg_s;
        }
        p.rising_since_s = if rising { Some(p.rising_since_s.unwrap_or(now)) } else { None };
        p.rising_peak_mmhg_s = p.rising_peak_mmhg_s.max(p.slope_mmhg_s);
        let sustained = p.rising_since_s.is_some_and(|since| now - since >= r.slope_sustain_s)
            && p.slope_mmhg_s >= r.slope_hold_fraction * p.rising_peak_mmhg_s;
        if p.filtered_mmhg < p.baseline_mmhg {
            p.baseline_mmhg = p.filtered_mmhg;
        } else if !rising {
            let a = p.last_dt_s / (r.pressure_baseline_s + p.last_dt_s);
            p.baseline_mmhg += a * (p.filtered_mmhg - p.baseline_mmhg);
        }
        let rise = p.filtered_mmhg - p.baseline_mmhg;
        let fires = rise >= r.slope_rise_mmhg || (sustained && rise >= r.slope_sustained_rise_mmhg);
        if r.slope_detector && armed && rising && fires {
            raised.insert(Alarm::OcclusionSlope);
        }
    }

    /// Commanded forward motion with no plunger motion. Until the plunger has moved once since the
    /// start, the allowance is the larger of the stall volume and the take-up bound (lead-screw slack).
    #[inline(always)]
    fn check_stall(&mut self, volume_ml: f64, raised: &mut AlarmSet) {
        let r = self.cfg.raw;
        if volume_ml - self.motion_ref_ml >= self.cfg.volume_quantum_ml / 2.0 {
            self.since_motion_ml = 0.0;
            self.motion_ref_ml = volume_ml;
            self.moved_since_start = true;
            if core::mem::take(&mut self.awaiting_first_motion) {
                // The slack is crossed: deliver from here as after a take-up, with no catch-up for
                // the run-in and no flow window spanning it.
                self.restart_controller = true;
                self.restart_delivery_checks(self.now_s.unwrap_or(0.0));
            }
        }
        let allowance =
            if self.moved_since_start { r.stall_volume_ml } else { r.stall_volume_ml.max(r.take_up_max_ml) };
        if self.since_motion_ml > allowance {
            raised.insert(Alarm::Stall);
        }
    }

    /// What the line pressure compresses the drive train by, C_d·p (mL; 0 without a pressure sensor).
    fn drive_compression_ml(&self) -> f64 {
        if self.cfg.raw.has_pressure_sensor {
            self.cfg.drive_compliance_ml_per_mmhg * self.pressure.last_raw_mmhg
        } else {
            0.0
        }
    }

    /// Over the flow window, the measured volume must follow both the target (set rate) and the
    /// commanded motor volume within `flow_tolerance`: catches under-infusion, over-infusion,
    /// siphoning and a slipping drive. A drive relaxing as the pressure falls pushes the plunger on by
    /// C_d·(p_then − p_now) beyond the motor's volume, and the controller then takes that back from the
    /// target: after a rate step down this is most of a small window's volume, so the relaxation is
    /// allowed on top of the tolerance — over the window, and since the last large rate step while the
    /// window still overlaps the `flow_window_s` after it. Never a rising pressure's compression: that
    /// is how the commanded comparison sees an occlusion.
    #[inline(always)]
    fn check_flow(&mut self, s: &Telemetry, raised: &mut AlarmSet) {
        let r = self.cfg.raw;
        let compression_ml = self.drive_compression_ml();
        let point = FlowPoint {
            t_s: s.t_s,
            target_ml: self.controller.target_ml(),
            commanded_ml: self.commanded_ml,
            measured_ml: s.volume_ml,
            compression_ml,
        };
        let interval = r.flow_window_s / (FLOW_POINTS - 1) as f64;
        let newest = if self.flow_len == 0 { None } else { Some(self.flow[self.flow_len - 1]) };
        if newest.is_none_or(|n| point.t_s - n.t_s >= interval) {
            if self.flow_len == FLOW_POINTS {
                self.flow.copy_within(1.., 0);
                self.flow_len -= 1;
            }
            self.flow[self.flow_len] = point;
            self.flow_len += 1;
        }
        let oldest = self.flow[0];
        if self.flow_len < 2 || point.t_s - oldest.t_s < r.flow_window_s {
            return;
        }
        let measured = point.measured_ml - oldest.measured_ml;
        let since_step = match self.rate_step {
            Some((t_s, compression)) if oldest.t_s < t_s + r.flow_window_s => compression - compression_ml,
            _ => 0.0,
        };
        let relaxed = (oldest.compression_ml - compression_ml).max(since_step).max(0.0);
        let off = |expected: f64| {
            expected >= r.flow_min_volume_ml && (measured - expected).abs() > r.flow_tolerance * expected + relaxed
        };
        if off(point.target_ml - oldest.target_ml) || off(point.commanded_ml - oldest.commanded_ml) {
            raised.insert(Alarm::FlowDeviation);
        }
    }

    /// The command for this tick, after the interlocks have run.
    #[inline(always)]
    fn command(&mut self, now_s: f64, dt_s: f64) -> (MotorCommand, ClampReason, ControlStatus) {
        let period = self.cfg.raw.control_period_s;
        let q = self.cfg.volume_quantum_ml;
        match self.state {
            State::Running(phase) => {
                let Some(program) = self.program else {
                    return (MotorCommand::HOLD, ClampReason::NoLimit, ControlStatus::default());
                };
                // The dose ends when what the plunger has moved plus what the compressed drive will
                // still push it on by once the motor stops reaches the programmed volume.
                let delivered = self.delivered_ml();
                let release = self.drive_release_ml();
                if delivered + release >= program.vtbi_ml - q / 2.0 {
                    self.release = Some((self.last_volume_ml.unwrap_or(0.0), release));
                    self.transition(State::Complete, Cause::DoseComplete);
                    return (MotorCommand::HOLD, ClampReason::DoseExhausted, ControlStatus::default());
                }
                let volume = self.last_volume_ml.unwrap_or(0.0);
                let cap_ml = (self.cfg.raw.hard_cap_mg - self.cumulative_mg_with(delivered)) / self.cfg.mg_per_ml();
                // Never past what the syringe in the pump holds: a dose of several syringes pauses for
                // the change before the plunger reaches its end stop.
                let dose_headroom =
                    (program.vtbi_ml - release - delivered).min(cap_ml).min(self.syringe_left_ml_with(delivered));
                match phase {
                    Phase::TakeUp { commanded_ml, origin_ml } => {
                        let take_up_left = self.cfg.raw.take_up_max_ml - commanded_ml;
                        if volume - origin_ml >= self.cfg.raw.take_up_detect_ml || take_up_left <= 0.0 {
                            self.restart_controller = true;
                            self.restart_delivery_checks(now_s);
                            self.transition(State::Running(Phase::Infusing), Cause::TakeUpDone);
                            return self.infuse(program, volume, dt_s, dose_headroom);
                        }
                        let limits = RateLimits {
                            max_ml_s: self.cfg.max_rate_ml_s,
                            headroom_ml: take_up_left.min(dose_headroom),
                            period_s: period,
                        };
                        let (rate, reason) = clamp_rate(self.cfg.take_up_rate_ml_s, limits);
                        self.state =
                            State::Running(Phase::TakeUp { commanded_ml: commanded_ml + rate * period, origin_ml });
                        (MotorCommand::forward(rate), reason, ControlStatus::default())
                    }
                    Phase::Infusing => self.infuse(program, volume, dt_s, dose_headroom),
                }
            }
            State::Alarm(Some(backoff)) => {
                let pressure = self.pressure.last_raw_mmhg;
                let volume = self.last_volume_ml.unwrap_or(0.0);
                let catch_peak_ml = backoff.catch_peak_ml.map(|peak| peak.max(volume));
                let caught = catch_peak_ml.is_some_and(|peak| volume <= peak - 2.0 * self.cfg.volume_quantum_ml);
                if caught || pressure <= backoff.target_mmhg || backoff.remaining_ml <= 0.0 {
                    self.state = State::Alarm(None);
                    return (MotorCommand::HOLD, ClampReason::Unchanged, ControlStatus::default());
                }
                let limits = RateLimits {
                    max_ml_s: self.cfg.backoff_rate_ml_s,
                    headroom_ml: backoff.remaining_ml,
                    period_s: period,
                };
                let (rate, reason) = clamp_rate(self.cfg.backoff_rate_ml_s, limits);
                self.state = State::Alarm(Some(Backoff {
                    remaining_ml: backoff.remaining_ml - rate * period,
                    catch_peak_ml,
                    ..backoff
                }));
                (MotorCommand::retract(rate), reason, ControlStatus::default())
            }
            _ => (MotorCommand::HOLD, ClampReason::Unchanged, ControlStatus::default()),
        }
    }

    /// Closed-loop delivery: controller, then the choke point. The headroom is the smaller of the
    /// measured dose left and the commanded motor volume left, so a plunger that stops reporting motion
    /// can never make the kernel command more than the program's tolerance plus the volume the drive and
    /// line can store below the occlusion threshold (the motor leads the plunger by compliance × pressure).
    #[inline(always)]
    fn infuse(
        &mut self,
        program: Program,
        volume: f64,
        dt_s: f64,
        dose_headroom: f64,
    ) -> (MotorCommand, ClampReason, ControlStatus) {
        let r = &self.cfg.raw;
        let budget = program.vtbi_ml * (1.0 + r.dose_tolerance) + r.compliance_ml_per_mmhg * r.occlusion_threshold_mmhg;
        let commanded_left = budget - self.commanded_ml;
        if commanded_left <= 0.0 {
            let mut alarm = AlarmSet::EMPTY;
            alarm.insert(Alarm::FlowDeviation);
            self.raise(alarm);
            return (MotorCommand::HOLD, ClampReason::DoseExhausted, ControlStatus::default());
        }
        if core::mem::take(&mut self.restart_controller) {
            // On target now: this step's target advance lands exactly on the measured volume, so the
            // first command is the feed-forward rate, not a catch-up for the held interval.
            self.controller.reset(volume - program.rate_ml_s * dt_s);
        }
        let control = match self.controller.step(program.rate_ml_s, volume, dt_s) {
            Ok(status) => status,
            Err(_) => return (MotorCommand::HOLD, ClampReason::NonFinite, ControlStatus::default()),
        };
        let limits = RateLimits {
            max_ml_s: self.cfg.max_rate_ml_s,
            headroom_ml: dose_headroom.min(commanded_left),
            period_s: self.cfg.raw.control_period_s,
        };
        let (rate, reason) = clamp_rate(control.output_ml_s, limits);
        (MotorCommand::forward(rate), reason, control)
    }

    #[inline(always)]
    fn finish(
        &mut self,
        command: MotorCommand,
        clamp: ClampReason,
        control: ControlStatus,
        latched_before: AlarmSet,
    ) -> StepOutput {
        if command.direction != Direction::Hold {
            self.hold_origin_ml = None;
        }
        self.last_command = command;
        let now = self.now_s.unwrap_or(0.0);
        let delivered = self.delivered_ml();
        let near_empty = self.program.is_some() && self.state.kind().is_monitored() && {
            let left = self.syringe_left_ml_with(delivered);
            let rate = self.program.map_or(0.0, |p| p.rate_ml_s);
            left <= self.cfg.raw.near_empty_ml || (rate > 0.0 && left / rate <= self.cfg.raw.near_empty_s)
        };
        StepOutput {
            command,
            state: self.state.kind(),
            alarms: self.latched,
            raised: self.latched.difference(latched_before),
            near_empty,
            annunciate: !self.latched.is_empty() && now >= self.silenced_until_s,
            delivered_ml: delivered,
            remaining_ml: self.remaining_ml_with(delivered),
            clamp,
            control,
        }
    }
}
