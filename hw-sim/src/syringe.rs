//! The syringe catalogue: every syringe the simulator knows, as data in one place.
//!
//! Inner diameters are BD Plastipak values as published in syringe-pump syringe tables. Friction is
//! given as pressure equivalents (force ÷ bore area, mmHg) because the plant compares it directly with
//! the fluid pressure: the seal drag is roughly proportional to the seal perimeter, so its pressure
//! equivalent falls as the bore grows (drag ∝ d, area ∝ d²) — larger syringes get the lower values.
//! The figures sit in the ranges given by the design brief (breakaway 40–60 mmHg, running 20–30 mmHg);
//! they are representative, not measured for a particular lot.

/// One syringe model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Syringe {
    /// Catalogue name, e.g. `"bd-plastipak-50"`.
    pub name: &'static str,
    /// Nominal capacity (mL): the most the barrel can hold.
    pub capacity_ml: f64,
    /// Inner diameter of the barrel (mm).
    pub inner_diameter_mm: f64,
    /// Breakaway (static) friction of the plunger seal, as a pressure equivalent (mmHg).
    pub stiction_mmhg: f64,
    /// Running (kinetic) friction of the plunger seal, as a pressure equivalent (mmHg).
    pub running_friction_mmhg: f64,
}

impl Syringe {
    /// Bore cross-section (mm²).
    pub fn area_mm2(&self) -> f64 {
        core::f64::consts::PI * 0.25 * self.inner_diameter_mm * self.inner_diameter_mm
    }

    /// Volume displaced per mm of plunger travel (mL/mm); 1 mL = 1000 mm³.
    pub fn ml_per_mm(&self) -> f64 {
        self.area_mm2() / 1000.0
    }

    /// Looks a syringe up by its catalogue name (exact, case-sensitive).
    pub fn by_name(name: &str) -> Option<&'static Syringe> {
        CATALOGUE.iter().find(|s| s.name == name)
    }
}

/// All known syringes. The 50 and 60 mL Plastipak share a barrel (26.59 mm); the 60 mL is longer.
pub const CATALOGUE: [Syringe; 6] = [
    Syringe {
        name: "bd-plastipak-5",
        capacity_ml: 5.0,
        inner_diameter_mm: 12.06,
        stiction_mmhg: 60.0,
        running_friction_mmhg: 30.0,
    },
    Syringe {
        name: "bd-plastipak-10",
        capacity_ml: 10.0,
        inner_diameter_mm: 14.50,
        stiction_mmhg: 56.0,
        running_friction_mmhg: 28.0,
    },
    Syringe {
        name: "bd-plastipak-20",
        capacity_ml: 20.0,
        inner_diameter_mm: 19.13,
        stiction_mmhg: 50.0,
        running_friction_mmhg: 25.0,
    },
    Syringe {
        name: "bd-plastipak-30",
        capacity_ml: 30.0,
        inner_diameter_mm: 21.70,
        stiction_mmhg: 47.0,
        running_friction_mmhg: 24.0,
    },
    Syringe {
        name: "bd-plastipak-50",
        capacity_ml: 50.0,
        inner_diameter_mm: 26.59,
        stiction_mmhg: 42.0,
        running_friction_mmhg: 21.0,
    },
    Syringe {
        name: "bd-plastipak-60",
        capacity_ml: 60.0,
        inner_diameter_mm: 26.59,
        stiction_mmhg: 40.0,
        running_friction_mmhg: 20.0,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_name() {
        let s = Syringe::by_name("bd-plastipak-50").unwrap();
        assert_eq!(s.capacity_ml, 50.0);
        assert_eq!(s.inner_diameter_mm, 26.59);
        assert!(Syringe::by_name("bd-plastipak-51").is_none());
        assert!(Syringe::by_name("BD-PLASTIPAK-50").is_none());
    }

    #[test]
    fn fifty_ml_bore_displaces_about_half_a_millilitre_per_mm() {
        let s = Syringe::by_name("bd-plastipak-50").unwrap();
        assert!((s.ml_per_mm() - 0.5553).abs() < 1e-3);
    }

    #[test]
    fn catalogue_is_consistent() {
        for (i, s) in CATALOGUE.iter().enumerate() {
            assert!(s.running_friction_mmhg < s.stiction_mmhg, "{}", s.name);
            assert!((40.0..=60.0).contains(&s.stiction_mmhg), "{}", s.name);
            assert!((20.0..=30.0).contains(&s.running_friction_mmhg), "{}", s.name);
            // Full stroke of a plausible length (40–120 mm).
            let stroke_mm = s.capacity_ml / s.ml_per_mm();
            assert!((40.0..=120.0).contains(&stroke_mm), "{} stroke {stroke_mm}", s.name);
            // Names unique; friction never rises with bore.
            for t in &CATALOGUE[i + 1..] {
                assert_ne!(s.name, t.name);
                assert!(t.stiction_mmhg <= s.stiction_mmhg);
            }
        }
    }
}
