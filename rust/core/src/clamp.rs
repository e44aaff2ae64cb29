//! The single choke point for a forward rate: every forward motor command the kernel emits has passed
//! [`clamp_rate`]. It is small and pure on purpose, and each branch has its own test.
//!
//! Layered limits: the ceiling is already min(configured, hard, pump); the dose headroom is the volume
//! that may still be delivered. A missing (non-finite or non-positive) limit means the safe value, zero.

use crate::units::is_positive_finite;

/// Which branch decided the clamped rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClampReason {
    /// The request was inside every limit and passed unchanged.
    Unchanged,
    /// The request was NaN or infinite: zero.
    NonFinite,
    /// The request was negative (a reverse command toward the patient is never issued): zero.
    Negative,
    /// The ceiling or the headroom was missing/invalid: zero (the safe value).
    NoLimit,
    /// No dose headroom is left: zero.
    DoseExhausted,
    /// Cut to the ceiling rate.
    AboveMax,
    /// Cut so that one control period delivers at most the remaining headroom.
    DoseHeadroom,
}

impl ClampReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            ClampReason::Unchanged => "unchanged",
            ClampReason::NonFinite => "non_finite",
            ClampReason::Negative => "negative",
            ClampReason::NoLimit => "no_limit",
            ClampReason::DoseExhausted => "dose_exhausted",
            ClampReason::AboveMax => "above_max",
            ClampReason::DoseHeadroom => "dose_headroom",
        }
    }
}

/// The limits a forward rate is clamped against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Ceiling rate (mL/s).
    pub max_ml_s: f64,
    /// Volume that may still be delivered (mL).
    pub headroom_ml: f64,
    /// How long a command is held before the next one (s): bounds what one command can deliver.
    pub period_s: f64,
}

/// Clamps a requested forward rate (mL/s) into `[0, min(max, headroom / period)]`.
///
/// Returns the rate and the branch that decided it. The result is always finite and `>= 0`.
#[inline(always)]
pub fn clamp_rate(requested_ml_s: f64, limits: RateLimits) -> (f64, ClampReason) {
    if !requested_ml_s.is_finite() {
        return (0.0, ClampReason::NonFinite);
    }
    if requested_ml_s < 0.0 {
        return (0.0, ClampReason::Negative);
    }
    let RateLimits { max_ml_s, headroom_ml, period_s } = limits;
    let limits_valid = is_positive_finite(max_ml_s) && !headroom_ml.is_nan() && is_positive_finite(period_s);
    if !limits_valid {
        return (0.0, ClampReason::NoLimit);
    }
    if headroom_ml <= 0.0 {
        return (0.0, ClampReason::DoseExhausted);
    }
    let capped = requested_ml_s.min(max_ml_s);
    let headroom_rate = headroom_rate(headroom_ml, period_s);
    if headroom_rate == 0.0 {
        // The headroom is too small for any representable rate to deliver it (subnormal): none is left.
        return (0.0, ClampReason::DoseExhausted);
    }
    if capped > headroom_rate {
        return (headroom_rate, ClampReason::DoseHeadroom);
    }
    if requested_ml_s > max_ml_s {
        return (capped, ClampReason::AboveMax);
    }
    (requested_ml_s, ClampReason::Unchanged)
}

/// The largest rate whose period's volume does not exceed the headroom: `headroom / period`, rounded
/// down when the division rounded up (so `rate × period ≤ headroom` holds exactly in f64), and zero when
/// it is below the smallest normal f64 (a subnormal quotient has lost the precision that bound needs).
#[inline(always)]
fn headroom_rate(headroom_ml: f64, period_s: f64) -> f64 {
    let mut rate = headroom_ml / period_s;
    if rate < f64::MIN_POSITIVE {
        return 0.0;
    }
    // Each step lowers the rate by one ulp; rounding is at most a few ulps, so this ends in a few steps.
    while rate.is_finite() && rate * period_s > headroom_ml {
        rate = f64::from_bits(rate.to_bits() - 1);
    }
    rate
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RateLimits = RateLimits { max_ml_s: 0.1, headroom_ml: 10.0, period_s: 0.1 };

    #[test]
    fn passes_a_request_inside_every_limit() {
        assert_eq!(clamp_rate(0.05, LIMITS), (0.05, ClampReason::Unchanged));
        assert_eq!(clamp_rate(0.0, LIMITS), (0.0, ClampReason::Unchanged));
    }

    #[test]
    fn nan_and_infinities_become_zero() {
        assert_eq!(clamp_rate(f64::NAN, LIMITS), (0.0, ClampReason::NonFinite));
        assert_eq!(clamp_rate(f64::INFINITY, LIMITS), (0.0, ClampReason::NonFinite));
        assert_eq!(clamp_rate(f64::NEG_INFINITY, LIMITS), (0.0, ClampReason::NonFinite));
    }

    #[test]
    fn negative_becomes_zero_never_reverse() {
        assert_eq!(clamp_rate(-0.01, LIMITS), (0.0, ClampReason::Negative));
        assert_eq!(clamp_rate(-1.0e300, LIMITS), (0.0, ClampReason::Negative));
    }

    #[test]
    fn missing_limits_mean_zero() {
        for bad in [
            RateLimits { max_ml_s: f64::NAN, ..LIMITS },
            RateLimits { max_ml_s: 0.0, ..LIMITS },
            RateLimits { max_ml_s: f64::INFINITY, ..LIMITS },
            RateLimits { headroom_ml: f64::NAN, ..LIMITS },
            RateLimits { period_s: 0.0, ..LIMITS },
            RateLimits { period_s: f64::NAN, ..LIMITS },
        ] {
            assert_eq!(clamp_rate(0.05, bad), (0.0, ClampReason::NoLimit), "{bad:?}");
        }
    }

    #[test]
    fn no_headroom_means_zero() {
        assert_eq!(clamp_rate(0.05, RateLimits { headroom_ml: 0.0, ..LIMITS }), (0.0, ClampReason::DoseExhausted));
        assert_eq!(clamp_rate(0.05, RateLimits { headroom_ml: -3.0, ..LIMITS }), (0.0, ClampReason::DoseExhausted));
    }

    #[test]
    fn above_the_ceiling_is_cut_to_the_ceiling() {
        assert_eq!(clamp_rate(6.0, LIMITS), (0.1, ClampReason::AboveMax));
    }

    #[test]
    fn last_period_is_cut_to_the_headroom() {
        let limits = RateLimits { headroom_ml: 0.002, ..LIMITS };
        let (rate, reason) = clamp_rate(0.05, limits);
        assert_eq!(reason, ClampReason::DoseHeadroom);
        assert!((rate * limits.period_s - 0.002).abs() < 1e-15);
        // Headroom wins over the ceiling when both bind.
        assert_eq!(clamp_rate(6.0, limits).1, ClampReason::DoseHeadroom);
    }

    #[test]
    fn headroom_rate_never_delivers_more_than_the_headroom() {
        // A quotient that rounds up is stepped down, so the period's volume stays within the headroom.
        for (headroom_ml, period_s) in [(0.1, 0.3), (1.0, 3.0), (7.0e-3, 0.07), (2.0, 1.0e300)] {
            let (rate, reason) = clamp_rate(1.0e308, RateLimits { max_ml_s: 1.0e308, headroom_ml, period_s });
            assert_eq!(reason, ClampReason::DoseHeadroom);
            assert!(rate > 0.0 && rate * period_s <= headroom_ml, "{headroom_ml} / {period_s} -> {rate}");
        }
    }

    #[test]
    fn a_subnormal_headroom_rate_is_no_headroom() {
        // 4e-244 mL over 1.7e75 s: the quotient is subnormal and cannot be trusted to bound the volume.
        let limits =
            RateLimits { max_ml_s: 1.0, headroom_ml: 4.3496695075888296e-244, period_s: 1.6811467107373967e75 };
        assert_eq!(clamp_rate(1.0, limits), (0.0, ClampReason::DoseExhausted));
    }
}
