//! The rate controller: feed-forward plus a quiet PI on the volume error, a pure step function.
//!
//! The plant is a syringe driven by a motor; the plunger encoder measures the delivered volume in
//! counts of one quantum `q`. The controller integrates the setpoint into a target volume and trims the
//! motor rate so that the measured volume follows the target:
//!
//! ```text
//!   every step:
//!     target  += setpoint · dt
//!     e        = target − measured                                   (mL)
//!   on a decision (the first step after a reset, then once `hold_s` has passed since the last one):
//!     e_r      = e − clamp(e, −deadband, deadband)                    (the error the encoder resolves)
//!     I        = clamp(I + e_r · T, ±integral_limit)                  T: time since the last decision
//!     trim*    = kp·e_r + ki·I                                        (mL/s)
//!     trim     = trim*   if trim* = 0 or |trim* − trim| > q / hold_s, else unchanged
//!   every step:
//!     u        = setpoint + trim  → [0, u_max]  → slew limit ±slew·dt  → [0, u_max]
//! ```
//!
//! Why it is quiet. At 5 mL/h a 50 mL syringe's plunger moves less than one encoder count per 0.1 s
//! tick, so the error seen on each tick jumps by whole counts; a proportional term acting on it every
//! tick turns each count into a new rate (at kp = 1/s one count is 12 % of 5 mL/h) and the pump was
//! sent a command on almost every tick. The volume error *is* the velocity error integrated over the
//! whole run, the longest window there is, so the controller acts on it, but only:
//! - outside the **deadband** (`deadband_ml`, a few encoder quanta): inside it the error is
//!   quantisation, not a deviation, and the output is exactly the feed-forward;
//! - on **decisions** `hold_s` apart: between them the trim is held, so the controller is a sampled
//!   one with period T = max(`hold_s`, tick); it settles without overshoot for kp·T ≤ 1 (kp·T = 0.5
//!   halves the error per decision) and ki·T² ≤ 0.05;
//! - when the new trim differs from the held one by more than `quantum_ml / hold_s`, one count per
//!   decision interval: a smaller change could not be seen by the encoder before the next decision.
//!
//! A stepper drive follows the feed-forward exactly, so on a healthy plant the trim only takes back the
//! start-up transient (lead-screw and seal compliance) and then stays at zero. A proportional loop on
//! *volume* already has integral action on the *rate*: a rate bias `b` leaves a constant volume offset
//! `b/kp`, never a drift. With `hold_s = 0` and `deadband_ml = 0` every step is a decision and the
//! controller is the classic per-step PI.
//!
//! Anti-windup (conditional integration): on a decision, the integral is not advanced when the output
//! is saturated and the error would push it further into saturation. The controller never sees an
//! alarm: the kernel decides whether its output is used, and clamps it again at the choke point on
//! every step (a held trim never delays a limit).

/// A decision is due once this little short of `hold_s` has passed: a sum of tick periods (0.1 s × 100)
/// lands a rounding error below the exact hold.
const HOLD_TOLERANCE_S: f64 = 1.0e-9;

/// Why a step was refused. The controller state is left untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// An input was NaN or infinite.
    NonFiniteInput,
    /// The setpoint or `dt` was negative.
    NegativeInput,
}

/// Controller tuning, in kernel units (mL, s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gains {
    pub kp_per_s: f64,
    pub ki_per_s2: f64,
    pub integral_limit_ml_s: f64,
    pub slew_ml_s_per_s: f64,
    pub max_ml_s: f64,
    /// Volume error the controller leaves alone (mL): a few encoder quanta.
    pub deadband_ml: f64,
    /// Shortest time between two decisions (s); 0: every step decides.
    pub hold_s: f64,
    /// The encoder's volume quantum (mL): with `hold_s`, the smallest trim change worth making.
    pub quantum_ml: f64,
}

/// The per-term breakdown of one step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ControlStatus {
    pub target_ml: f64,
    pub error_ml: f64,
    pub feed_forward_ml_s: f64,
    /// The proportional and integral terms of the trim in force (decided on this step or held).
    pub proportional_ml_s: f64,
    pub integral_ml_s: f64,
    /// The final output (mL/s).
    pub output_ml_s: f64,
    /// The unsaturated sum hit 0 or `max`.
    pub saturated: bool,
    /// The slew limit changed the output.
    pub slew_limited: bool,
    /// The integral advanced on this step (a decision that anti-windup did not hold).
    pub integrating: bool,
    /// No decision on this step: the trim was held from the last one.
    pub held: bool,
}

/// Quiet PI-with-feed-forward volume controller (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateController {
    gains: Gains,
    target_ml: f64,
    integral_ml_s: f64,
    last_output_ml_s: f64,
    /// The trim in force and its two terms (mL/s).
    trim_ml_s: f64,
    trim_proportional_ml_s: f64,
    trim_integral_ml_s: f64,
    /// Time since the last decision (s); `None` until the first decision after a reset.
    since_decision_s: Option<f64>,
}

impl RateController {
    pub const fn new(gains: Gains) -> Self {
        Self {
            gains,
            target_ml: 0.0,
            integral_ml_s: 0.0,
            last_output_ml_s: 0.0,
            trim_ml_s: 0.0,
            trim_proportional_ml_s: 0.0,
            trim_integral_ml_s: 0.0,
            since_decision_s: None,
        }
    }

    /// Starts tracking from `measured_ml` with no integral, no trim and a stopped motor: used on every
    /// start or resume, so a pause is never followed by a catch-up bolus. The next step decides.
    pub fn reset(&mut self, measured_ml: f64) {
        *self = Self { target_ml: measured_ml, ..Self::new(self.gains) };
    }

    pub const fn target_ml(&self) -> f64 {
        self.target_ml
    }

    /// One control step.
    #[inline(always)]
    pub fn step(&mut self, setpoint_ml_s: f64, measured_ml: f64, dt_s: f64) -> Result<ControlStatus, ControlError> {
        if !(setpoint_ml_s.is_finite() && measured_ml.is_finite() && dt_s.is_finite()) {
            return Err(ControlError::NonFiniteInput);
        }
        if setpoint_ml_s < 0.0 || dt_s < 0.0 {
            return Err(ControlError::NegativeInput);
        }
        let g = self.gains;
        let target = self.target_ml + setpoint_ml_s * dt_s;
        let error = target - measured_ml;
        let elapsed = self.since_decision_s.map_or(dt_s, |since| since + dt_s);
        let deciding = self.since_decision_s.is_none() || elapsed + HOLD_TOLERANCE_S >= g.hold_s;
        let mut integral = self.integral_ml_s;
        let (mut trim, mut proportional, mut integral_term) =
            (self.trim_ml_s, self.trim_proportional_ml_s, self.trim_integral_ml_s);
        let mut integrating = false;
        if deciding {
            let resolved = error - within(error, -g.deadband_ml, g.deadband_ml);
            let wanted_proportional = g.kp_per_s * resolved;
            let candidate =
                within(self.integral_ml_s + resolved * elapsed, -g.integral_limit_ml_s, g.integral_limit_ml_s);
            let unsaturated = setpoint_ml_s + wanted_proportional + g.ki_per_s2 * candidate;
            // Anti-windup: hold the integral when saturated and the error pushes further out.
            let winding_up = (unsaturated > g.max_ml_s && resolved > 0.0) || (unsaturated < 0.0 && resolved < 0.0);
            if !winding_up {
                integral = candidate;
                integrating = true;
            }
            let wanted_integral = g.ki_per_s2 * integral;
            let wanted = wanted_proportional + wanted_integral;
            let resolvable = if g.hold_s > 0.0 { g.quantum_ml / g.hold_s } else { 0.0 };
            if wanted == 0.0 || (wanted - self.trim_ml_s).abs() > resolvable {
                (trim, proportional, integral_term) = (wanted, wanted_proportional, wanted_integral);
            }
        }
        let sum = setpoint_ml_s + trim;
        let saturated_output = within(sum, 0.0, g.max_ml_s);
        let step_limit = g.slew_ml_s_per_s * dt_s;
        let slewed = within(
            within(saturated_output, self.last_output_ml_s - step_limit, self.last_output_ml_s + step_limit),
            0.0,
            g.max_ml_s,
        );

        // Finite inputs can still overflow (a huge dt or volume): refuse rather than poison the state.
        if !(target.is_finite()
            && error.is_finite()
            && integral.is_finite()
            && elapsed.is_finite()
            && slewed.is_finite())
        {
            return Err(ControlError::NonFiniteInput);
        }
        self.target_ml = target;
        self.integral_ml_s = integral;
        self.last_output_ml_s = slewed;
        (self.trim_ml_s, self.trim_proportional_ml_s, self.trim_integral_ml_s) = (trim, proportional, integral_term);
        self.since_decision_s = Some(if deciding { 0.0 } else { elapsed });
        Ok(ControlStatus {
            target_ml: target,
            error_ml: error,
            feed_forward_ml_s: setpoint_ml_s,
            proportional_ml_s: proportional,
            integral_ml_s: integral_term,
            output_ml_s: slewed,
            saturated: sum < 0.0 || sum > g.max_ml_s,
            slew_limited: slewed != saturated_output,
            integrating,
            held: !deciding,
        })
    }
}

/// `x.clamp(lo, hi)` (NaN stays NaN), inlined into the tick where the library's clamp is a call. Where
/// the library panics (`lo > hi`, a NaN bound) this gives `hi`, or ignores the NaN bound: no panic path
/// in the kernel. The step's bounds never get there: gains are validated (finite, ≥ 0) and `dt` and the
/// last output are finite.
#[inline(always)]
fn within(x: f64, lo: f64, hi: f64) -> f64 {
    let x = if x < lo { lo } else { x };
    if x > hi {
        hi
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_is_the_library_clamp_without_its_panic() {
        let values = [f64::NEG_INFINITY, -2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 2.0, f64::INFINITY, f64::NAN];
        for x in values {
            for lo in values {
                for hi in values {
                    if lo <= hi {
                        let (ours, library) = (within(x, lo, hi), x.clamp(lo, hi));
                        assert_eq!(ours.to_bits(), library.to_bits(), "within({x}, {lo}, {hi})");
                    }
                }
            }
        }
        assert_eq!(within(0.5, 1.0, 0.0), 0.0); // lo > hi: the library panics, ours gives hi
        assert!(within(f64::NAN, 1.0, 0.0).is_nan());
    }

    /// Per-step PI (no deadband, no hold): the classic controller the quiet one reduces to.
    const GAINS: Gains = Gains {
        kp_per_s: 2.0,
        ki_per_s2: 0.5,
        integral_limit_ml_s: 0.01,
        slew_ml_s_per_s: 1.0,
        max_ml_s: 0.33,
        deadband_ml: 0.0,
        hold_s: 0.0,
        quantum_ml: 0.0,
    };
    /// The quiet controller as the kernel's defaults make it: 1 µL quantum, 2-quantum deadband, 10 s hold.
    const QUIET: Gains = Gains {
        kp_per_s: 0.05,
        ki_per_s2: 0.0,
        integral_limit_ml_s: 0.01,
        slew_ml_s_per_s: 1.0e9,
        max_ml_s: 0.33,
        deadband_ml: 2.0e-3,
        hold_s: 10.0,
        quantum_ml: 1.0e-3,
    };

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-15
    }

    #[test]
    fn inside_the_deadband_the_output_is_the_feed_forward() {
        let mut c = RateController::new(QUIET);
        c.reset(0.0);
        let s = c.step(0.01, 0.01 - 1.5e-3, 1.0).unwrap(); // 1.5 quanta behind: quantisation
        assert_eq!(s.proportional_ml_s, 0.0);
        assert_eq!(s.output_ml_s, 0.01);
        assert!(!s.held && s.integrating);
    }

    #[test]
    fn outside_the_deadband_only_the_excess_is_corrected() {
        let mut c = RateController::new(QUIET);
        c.reset(0.0);
        let s = c.step(0.01, 0.01 - 5.0e-3, 1.0).unwrap(); // 5 quanta behind: 3 beyond the band
        assert!(close(s.proportional_ml_s, 0.05 * 3.0e-3));
        assert!(close(s.output_ml_s, 0.01 + 0.05 * 3.0e-3));
        let ahead = c.step(0.01, 0.11 + 5.0e-3, 10.0).unwrap(); // target 0.11: 5 quanta ahead
        assert!(close(ahead.proportional_ml_s, -0.05 * 3.0e-3));
    }

    #[test]
    fn the_trim_is_held_between_decisions_and_a_setpoint_change_acts_at_once() {
        let mut c = RateController::new(QUIET);
        c.reset(0.0);
        assert!(!c.step(0.001, 0.0, 0.0).unwrap().held); // the first step after a reset decides
        for k in 1..10 {
            let s = c.step(0.001, 0.0, 1.0).unwrap(); // the plunger does not move: the error grows
            assert!(s.held && !s.integrating, "step {k}");
            assert_eq!(s.output_ml_s, 0.001, "step {k}");
        }
        let decided = c.step(0.001, 0.0, 1.0).unwrap(); // 10 s: error 0.010, 0.008 beyond the band
        assert!(!decided.held);
        assert!(close(decided.output_ml_s, 0.001 + 0.05 * 8.0e-3));
        let faster = c.step(0.002, 0.0, 1.0).unwrap(); // held trim, new feed-forward
        assert!(faster.held);
        assert!(close(faster.output_ml_s, 0.002 + 0.05 * 8.0e-3));
    }

    #[test]
    fn a_hold_made_of_short_ticks_decides_on_its_last_tick() {
        let mut c = RateController::new(QUIET);
        c.reset(0.0);
        c.step(0.001, 0.0, 0.0).unwrap();
        let held: usize = (1..=100).filter(|_| c.step(0.001, 0.0, 0.1).unwrap().held).count();
        assert_eq!(held, 99); // 100 × 0.1 s sums to a rounding error below 10 s: still the 100th decides
    }

    #[test]
    fn a_change_the_encoder_cannot_resolve_is_not_made_but_a_return_to_the_band_is() {
        let mut c = RateController::new(QUIET);
        c.reset(0.0);
        c.step(0.001, 0.0, 0.0).unwrap();
        let s = c.step(0.001, 0.0, 10.0).unwrap(); // error 0.010: trim 0.05 × 0.008 = 4e-4
        assert!(close(s.proportional_ml_s, 4.0e-4));
        // Next decision wants 4.5e-4: 5e-5 more, less than one quantum per hold (1e-4): kept.
        let s = c.step(0.001, 0.009, 10.0).unwrap(); // target 0.020, error 0.011
        assert!(!s.held);
        assert!(close(s.proportional_ml_s, 4.0e-4));
        assert!(close(s.output_ml_s, 0.001 + 4.0e-4));
        let snapshot = c; // RateController is Copy: two futures from here
                          // Back within the band: the trim goes to zero even though the change is below the resolution.
        let s = c.step(0.001, 0.0295, 10.0).unwrap(); // target 0.030, error 5e-4
        assert_eq!(s.proportional_ml_s, 0.0);
        assert_eq!(s.output_ml_s, 0.001);
        // A change above the resolution is made.
        let mut c = snapshot;
        let s = c.step(0.001, 0.017, 10.0).unwrap(); // target 0.030, error 0.013: wants 5.5e-4
        assert!(close(s.proportional_ml_s, 5.5e-4));
    }

    #[test]
    fn a_reset_clears_the_trim_and_decides_on_the_next_step() {
        let mut c = RateController::new(QUIET);
        c.reset(0.0);
        c.step(0.001, 0.0, 0.0).unwrap();
        c.step(0.001, 0.0, 10.0).unwrap(); // a trim is in force
        c.reset(5.0);
        let s = c.step(0.001, 5.0, 0.1).unwrap();
        assert!(!s.held);
        assert_eq!(s.proportional_ml_s, 0.0);
        assert_eq!(s.output_ml_s, 0.001);
    }

    #[test]
    fn on_target_output_is_the_feed_forward() {
        let mut c = RateController::new(GAINS);
        c.reset(0.0);
        let s = c.step(0.01, 0.01, 1.0).unwrap();
        assert_eq!(s.error_ml, 0.0);
        assert_eq!(s.output_ml_s, 0.01);
        assert!(!s.saturated && !s.slew_limited && s.integrating);
    }

    #[test]
    fn lagging_volume_raises_the_rate() {
        let mut c = RateController::new(GAINS);
        c.reset(0.0);
        let s = c.step(0.01, 0.0, 1.0).unwrap();
        assert!((s.proportional_ml_s - 0.02).abs() < 1e-15);
        assert!((s.integral_ml_s - 0.005).abs() < 1e-15);
        assert!((s.output_ml_s - 0.035).abs() < 1e-15);
    }

    #[test]
    fn output_never_negative_when_ahead() {
        let mut c = RateController::new(GAINS);
        c.reset(0.0);
        let s = c.step(0.001, 5.0, 0.1).unwrap();
        assert_eq!(s.output_ml_s, 0.0);
        assert!(s.saturated);
    }

    #[test]
    fn anti_windup_holds_integral_when_saturated_high() {
        let mut c = RateController::new(Gains { slew_ml_s_per_s: 1.0e9, ..GAINS });
        c.reset(0.0);
        let s = c.step(0.3, 0.0, 1.0).unwrap();
        assert!(s.saturated);
        assert!(!s.integrating);
        assert_eq!(s.integral_ml_s, 0.0);
        assert_eq!(s.output_ml_s, 0.33);
    }

    #[test]
    fn anti_windup_holds_integral_when_saturated_low() {
        let mut c = RateController::new(GAINS);
        c.reset(1.0);
        let s = c.step(0.0, 2.0, 1.0).unwrap();
        assert!(s.saturated && !s.integrating);
        assert_eq!(s.integral_ml_s, 0.0);
    }

    #[test]
    fn integral_is_bounded() {
        let mut c = RateController::new(Gains { kp_per_s: 0.0, max_ml_s: 100.0, slew_ml_s_per_s: 1.0e9, ..GAINS });
        c.reset(0.0);
        let mut s = ControlStatus::default();
        for _ in 0..100 {
            s = c.step(0.0, -1.0, 1.0).unwrap();
        }
        assert!((s.integral_ml_s - 0.5 * 0.01).abs() < 1e-15);
    }

    #[test]
    fn slew_limits_the_change_per_step() {
        let mut c = RateController::new(Gains { slew_ml_s_per_s: 0.01, ..GAINS });
        c.reset(0.0);
        let s = c.step(0.2, 0.0, 0.5).unwrap();
        assert!(s.slew_limited);
        assert!((s.output_ml_s - 0.005).abs() < 1e-15);
    }

    #[test]
    fn refuses_non_finite_and_negative_input_without_changing_state() {
        let mut c = RateController::new(GAINS);
        c.reset(0.0);
        let before = c;
        assert_eq!(c.step(f64::NAN, 0.0, 0.1), Err(ControlError::NonFiniteInput));
        assert_eq!(c.step(0.01, f64::INFINITY, 0.1), Err(ControlError::NonFiniteInput));
        assert_eq!(c.step(0.01, 0.0, f64::NAN), Err(ControlError::NonFiniteInput));
        assert_eq!(c.step(-0.01, 0.0, 0.1), Err(ControlError::NegativeInput));
        assert_eq!(c.step(0.01, 0.0, -0.1), Err(ControlError::NegativeInput));
        assert_eq!(c, before);
    }

    #[test]
    fn refuses_a_step_that_would_overflow_and_keeps_its_state() {
        let mut c = RateController::new(GAINS);
        c.reset(0.0);
        let before = c;
        assert_eq!(c.step(0.3, -f64::MAX, 1.0e308), Err(ControlError::NonFiniteInput));
        assert_eq!(c, before);
        assert!(c.step(0.01, 0.0, 0.1).is_ok());
    }

    #[test]
    fn reset_forgets_history_so_no_catch_up() {
        let mut c = RateController::new(GAINS);
        c.reset(0.0);
        c.step(0.01, 0.0, 10.0).unwrap();
        c.reset(3.0);
        let s = c.step(0.01, 3.0, 0.0).unwrap();
        assert_eq!(s.error_ml, 0.0);
        assert_eq!(s.output_ml_s, 0.0); // slew from a stopped motor with dt = 0
    }
}
