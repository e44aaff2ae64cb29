//! The rate controller: feed-forward plus PI on the volume error, a pure step function.
//!
//! The plant is a syringe driven by a motor; the plunger encoder measures the delivered volume. The
//! controller integrates the setpoint into a target volume and corrects the motor rate so that the
//! measured volume follows the target:
//!
//! ```text
//!   target  += setpoint · dt
//!   e        = target − measured                         (mL)
//!   u        = setpoint + kp·e + ki·I                      (mL/s), I = ∫e dt, |I| ≤ integral_limit
//!   u        → [0, u_max]  → slew limit ±slew·dt  → [0, u_max]
//! ```
//!
//! Anti-windup (conditional integration): the integral is not advanced on a tick where the output is
//! saturated and the error would push it further into saturation. The controller never sees an
//! alarm: the kernel decides whether its output is used, and clamps it again at the choke point.

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
}

/// The per-term breakdown of one step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ControlStatus {
    pub target_ml: f64,
    pub error_ml: f64,
    pub feed_forward_ml_s: f64,
    pub proportional_ml_s: f64,
    pub integral_ml_s: f64,
    /// The final output (mL/s).
    pub output_ml_s: f64,
    /// The unsaturated sum hit 0 or `max`.
    pub saturated: bool,
    /// The slew limit changed the output.
    pub slew_limited: bool,
    /// False when anti-windup held the integral this step.
    pub integrating: bool,
}

/// PI-with-feed-forward volume controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateController {
    gains: Gains,
    target_ml: f64,
    integral_ml_s: f64,
    last_output_ml_s: f64,
}

impl RateController {
    pub const fn new(gains: Gains) -> Self {
        Self { gains, target_ml: 0.0, integral_ml_s: 0.0, last_output_ml_s: 0.0 }
    }

    /// Starts tracking from `measured_ml` with no integral and a stopped motor: used on every start or
    /// resume, so a pause is never followed by a catch-up bolus.
    pub fn reset(&mut self, measured_ml: f64) {
        self.target_ml = measured_ml;
        self.integral_ml_s = 0.0;
        self.last_output_ml_s = 0.0;
    }

    pub const fn target_ml(&self) -> f64 {
        self.target_ml
    }

    /// One control step.
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
        let proportional = g.kp_per_s * error;
        let candidate = (self.integral_ml_s + error * dt_s).clamp(-g.integral_limit_ml_s, g.integral_limit_ml_s);
        let unsaturated = setpoint_ml_s + proportional + g.ki_per_s2 * candidate;
        // Anti-windup: hold the integral when saturated and the error pushes further out.
        let winding_up = (unsaturated > g.max_ml_s && error > 0.0) || (unsaturated < 0.0 && error < 0.0);
        let integral = if winding_up { self.integral_ml_s } else { candidate };
        let sum = setpoint_ml_s + proportional + g.ki_per_s2 * integral;
        let saturated_output = sum.clamp(0.0, g.max_ml_s);
        let step_limit = g.slew_ml_s_per_s * dt_s;
        let slewed = saturated_output
            .clamp(self.last_output_ml_s - step_limit, self.last_output_ml_s + step_limit)
            .clamp(0.0, g.max_ml_s);

        // Finite inputs can still overflow (a huge dt or volume): refuse rather than poison the state.
        if !(target.is_finite() && error.is_finite() && integral.is_finite() && slewed.is_finite()) {
            return Err(ControlError::NonFiniteInput);
        }
        self.target_ml = target;
        self.integral_ml_s = integral;
        self.last_output_ml_s = slewed;
        Ok(ControlStatus {
            target_ml: target,
            error_ml: error,
            feed_forward_ml_s: setpoint_ml_s,
            proportional_ml_s: proportional,
            integral_ml_s: g.ki_per_s2 * integral,
            output_ml_s: slewed,
            saturated: sum < 0.0 || sum > g.max_ml_s,
            slew_limited: slewed != saturated_output,
            integrating: !winding_up,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAINS: Gains =
        Gains { kp_per_s: 2.0, ki_per_s2: 0.5, integral_limit_ml_s: 0.01, slew_ml_s_per_s: 1.0, max_ml_s: 0.33 };

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
