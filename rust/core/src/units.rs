//! Physical quantities that cross a boundary (configuration, program, bindings).
//!
//! Each newtype is built only through `new`, which refuses non-finite values, negative values where a
//! negative quantity is meaningless, and values above a physical plausibility ceiling. A bad value is an
//! error carrying *which* quantity failed and *why*; it is never silently clamped into range.
//!
//! Telemetry is deliberately **not** built from these types: a pump can send garbage at any time, and
//! the kernel must turn garbage into an alarm, not refuse to look at it.

use core::fmt;

/// Why a value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitProblem {
    /// NaN or ±∞.
    NotFinite,
    /// Below zero (or zero where the quantity must be strictly positive).
    BelowMinimum,
    /// Above the physical plausibility ceiling of the quantity.
    AboveMaximum,
}

impl UnitProblem {
    pub const fn as_str(self) -> &'static str {
        match self {
            UnitProblem::NotFinite => "must be a finite number",
            UnitProblem::BelowMinimum => "is below the allowed minimum",
            UnitProblem::AboveMaximum => "is above the allowed maximum",
        }
    }
}

impl fmt::Display for UnitProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks `value` against `[min, max]` (with `min` exclusive when `strict`): the one validation rule
/// behind every newtype.
pub fn check_range(value: f64, min: f64, strict: bool, max: f64) -> Result<f64, UnitProblem> {
    if !value.is_finite() {
        return Err(UnitProblem::NotFinite);
    }
    if value < min || (strict && value <= min) {
        return Err(UnitProblem::BelowMinimum);
    }
    if value > max {
        return Err(UnitProblem::AboveMaximum);
    }
    Ok(value)
}

/// `x.is_finite() && x > 0.0`, read from the bits: a positive finite f64 (subnormals included) is one
/// whose bit pattern lies in `1 ..= f64::MAX.to_bits()`; zero, −0, negatives, ∞ and NaN all fall outside.
/// Written this way for the per-tick checks: LLVM turns the two float tests into a float-class test that
/// it expands to ~20 integer instructions a value, where this is three.
#[inline(always)]
pub const fn is_positive_finite(x: f64) -> bool {
    x.to_bits().wrapping_sub(1) < f64::MAX.to_bits()
}

macro_rules! quantity {
    ($(#[$doc:meta])* $name:ident, $unit:literal, min = $min:expr, strict = $strict:expr, max = $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
        pub struct $name(f64);

        impl Quantity for $name {
            const MIN: f64 = $min;
            const MAX: f64 = $max;
            fn new(value: f64) -> Result<Self, UnitProblem> {
                $name::new(value)
            }
        }

        impl $name {
            /// Unit symbol, for messages and docs.
            pub const UNIT: &'static str = $unit;
            /// Smallest accepted value (exclusive when `MIN_IS_EXCLUSIVE`).
            pub const MIN: f64 = $min;
            pub const MIN_IS_EXCLUSIVE: bool = $strict;
            /// Physical plausibility ceiling.
            pub const MAX: f64 = $max;

            /// Validated construction.
            pub fn new(value: f64) -> Result<Self, UnitProblem> {
                check_range(value, Self::MIN, Self::MIN_IS_EXCLUSIVE, Self::MAX).map(Self)
            }

            /// The raw value in the unit named by `UNIT`.
            pub const fn get(self) -> f64 {
                self.0
            }
        }
    };
}

/// A validated quantity of a unit, generically: its range and its validated construction.
pub trait Quantity: Sized {
    /// Smallest accepted value.
    const MIN: f64;
    /// Physical plausibility ceiling.
    const MAX: f64;
    /// Validated construction.
    fn new(value: f64) -> Result<Self, UnitProblem>;
}

quantity!(
    /// A volume in millilitres, `0 ≤ v ≤ 1000`.
    Millilitres, "mL", min = 0.0, strict = false, max = 1_000.0
);
quantity!(
    /// A flow rate in millilitres per hour, `0 ≤ r ≤ 2000` (no syringe pump exceeds this).
    MlPerHour, "mL/h", min = 0.0, strict = false, max = 2_000.0
);
quantity!(
    /// A drug mass in milligrams, `0 ≤ m ≤ 100 000`.
    Milligrams, "mg", min = 0.0, strict = false, max = 100_000.0
);
quantity!(
    /// A concentration in milligrams per millilitre, `0 < c ≤ 1000`.
    MgPerMl, "mg/mL", min = 0.0, strict = true, max = 1_000.0
);
quantity!(
    /// A body mass in kilograms, `0 < m ≤ 500`.
    Kilograms, "kg", min = 0.0, strict = true, max = 500.0
);
quantity!(
    /// A gauge pressure in mmHg, `0 ≤ p ≤ 5000`.
    Mmhg, "mmHg", min = 0.0, strict = false, max = 5_000.0
);
quantity!(
    /// A duration in seconds, `0 ≤ t ≤ 10⁷` (about 115 days).
    Seconds, "s", min = 0.0, strict = false, max = 1.0e7
);
quantity!(
    /// A length in millimetres, `0 < l ≤ 100` (syringe bores).
    Millimetres, "mm", min = 0.0, strict = true, max = 100.0
);

/// Seconds per hour, for mL/h ↔ mL/s conversions.
pub const S_PER_H: f64 = 3_600.0;

impl MlPerHour {
    /// The same rate in mL/s, the unit the kernel integrates in.
    pub fn per_second(self) -> f64 {
        self.0 / S_PER_H
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_finite_is_finite_and_above_zero() {
        let cases = [
            0.0,
            -0.0,
            f64::from_bits(1), // the smallest subnormal
            f64::MIN_POSITIVE,
            1.0,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            -f64::from_bits(1),
            -1.0,
            f64::MIN,
        ];
        for x in cases {
            assert_eq!(is_positive_finite(x), x.is_finite() && x > 0.0, "{x:e} ({:#x})", x.to_bits());
        }
        // Every exponent and sign, each with the lowest, highest and a middle mantissa.
        for sign in [0_u64, 1 << 63] {
            for exponent in 0..=0x7ff_u64 {
                for mantissa in [0, 1, 1 << 51, (1 << 52) - 1] {
                    let x = f64::from_bits(sign | exponent << 52 | mantissa);
                    assert_eq!(is_positive_finite(x), x.is_finite() && x > 0.0, "{:#x}", x.to_bits());
                }
            }
        }
    }

    #[test]
    fn accepts_values_in_range() {
        assert_eq!(Millilitres::new(0.0).unwrap().get(), 0.0);
        assert_eq!(MlPerHour::new(52.5).unwrap().get(), 52.5);
        assert_eq!(MgPerMl::new(1.0).unwrap().get(), 1.0);
    }

    #[test]
    fn refuses_non_finite() {
        assert_eq!(Millilitres::new(f64::NAN), Err(UnitProblem::NotFinite));
        assert_eq!(MlPerHour::new(f64::INFINITY), Err(UnitProblem::NotFinite));
        assert_eq!(Mmhg::new(f64::NEG_INFINITY), Err(UnitProblem::NotFinite));
    }

    #[test]
    fn refuses_negative() {
        assert_eq!(Milligrams::new(-0.1), Err(UnitProblem::BelowMinimum));
        assert_eq!(Seconds::new(-1.0), Err(UnitProblem::BelowMinimum));
    }

    #[test]
    fn refuses_zero_where_strictly_positive() {
        assert_eq!(MgPerMl::new(0.0), Err(UnitProblem::BelowMinimum));
        assert_eq!(Millimetres::new(0.0), Err(UnitProblem::BelowMinimum));
        assert_eq!(Kilograms::new(0.0), Err(UnitProblem::BelowMinimum));
    }

    #[test]
    fn refuses_above_ceiling() {
        assert_eq!(MlPerHour::new(2_000.1), Err(UnitProblem::AboveMaximum));
        assert_eq!(Kilograms::new(501.0), Err(UnitProblem::AboveMaximum));
    }

    #[test]
    fn converts_rate_to_per_second() {
        assert!((MlPerHour::new(36.0).unwrap().per_second() - 0.01).abs() < 1e-15);
    }
}
