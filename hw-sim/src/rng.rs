//! A tiny seeded PRNG: SplitMix64 for uniform bits, Box–Muller for Gaussian noise.
//!
//! Written here instead of pulled from a crate so that the simulator has no dependencies and its noise
//! sequence for a given seed can never change under a dependency upgrade: a recorded scenario replays
//! bit for bit.

/// SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state word, full period 2⁶⁴, passes BigCrush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so `ln` in Box–Muller is always finite.
    pub fn next_unit_open0(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal deviate (Box–Muller, cosine branch only: one deviate per two uniforms keeps the
    /// sequence a pure function of the call count, with no cached second value to carry around).
    pub fn next_gaussian(&mut self) -> f64 {
        let u1 = self.next_unit_open0();
        let u2 = self.next_unit_open0();
        (-2.0 * u1.ln()).sqrt() * (core::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Reference outputs of SplitMix64 seeded with 0 (as in Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn gaussian_moments_are_standard() {
        let mut r = SplitMix64::new(42);
        let n = 200_000;
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for _ in 0..n {
            let x = r.next_gaussian();
            assert!(x.is_finite());
            sum += x;
            sum_sq += x * x;
        }
        let mean = sum / n as f64;
        let var = sum_sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn uniform_is_in_half_open_unit_interval() {
        let mut r = SplitMix64::new(7);
        for _ in 0..10_000 {
            let u = r.next_unit_open0();
            assert!(u > 0.0 && u <= 1.0);
        }
    }
}
