//! ketapump-hwsim: the simulated syringe pump that stands in for hardware in tests, QA and the demo.
//!
//! This crate is an **independent oracle**: it does not depend on `ketapump-core` (or on Python), so a
//! misunderstanding baked into the safety kernel cannot be silently mirrored by the plant it is tested
//! against. It holds the plant physics ([`plant`]) and the simulated firmware on top of it ([`firmware`]:
//! register semantics, watchdog, pump-side alarms, fault injection) with its register map ([`regmap`]).
//!
//! - [`syringe`]: the syringe catalogue (BD Plastipak 5–60 mL), as data.
//! - [`plant`]: stepper + lead screw + slack + drive spring + plunger stick/slip + compliance +
//!   resistance + head height, the fault hooks, and the gravimetric balance.
//! - [`modbus`]: the Modbus request handler behind its RTU and TCP framings.
//! - [`wire`]: the bounded record of rejected frames every codec keeps for diagnostics.
//! - [`nesp`]: the pump side of the New Era NE-1000 RS-232 protocol (framing, commands, alarms).
//! - [`rng`]: the seeded SplitMix64/Box–Muller noise source (no external crates; same seed, same run).
//!
//! # Nominal defaults and why ([`PlantConfig::nominal`])
//!
//! | quantity | default | why |
//! |---|---|---|
//! | motor | 200 full steps × 16 microsteps, 1 mm pitch → 3200 µsteps/mm | common syringe-pump drive; 0.17 µL/µstep on a 50 mL syringe |
//! | slack | 0.3 mm, not taken up | brief; 0.17 mL on a 50 mL syringe = 10 min dead time at 1 mL/h |
//! | compliance `C` | 2.0 µL/mmHg (total) | middle of the 1.2–2.8 µL/mmHg field range |
//! | drive stiffness | 100 N/mm → `C_d` = A²/k = 0.41 µL/mmHg on 50 mL | stopper + rod + bracket; part of `C`, not added to it |
//! | resistance `R` | 3 600 mmHg·s/mL | 1 mmHg per mL/h (a 150 cm × 0.6 mm microbore set + 22 G cannula, Poiseuille): 15 mmHg at 5 mL/h, 62 mmHg at 52.5 mL/h, 100 mmHg at 90 mL/h with the patient's 10 mmHg; `R·C_f` ≈ 5.8 s. [`HIGH_RESISTANCE_MMHG_S_PER_ML`] (× 4) is a narrow, viscous line |
//! | patient pressure | 10 mmHg | peripheral venous pressure |
//! | head height | 0 cm (0.7355 mmHg/cm) | pump level with the cannula |
//! | motor stall force | 200 N | typical syringe-pump maximum thrust; ≈ 2700 mmHg on 50 mL |
//! | encoder | 3200 counts/mm | brief; matches the microstep resolution |
//! | balance | every 30 s, σ = 0.2 mg, readability 0.1 mg, ρ = 1.0 g/mL | IEC 60601-2-24 gravimetric set-up |
//! | substep | ≤ 10 ms | splitting error negligible against `R·C`; every step size is stable anyway |
#![forbid(unsafe_code)]

pub mod firmware;
pub mod modbus;
pub mod nesp;
pub mod plant;
pub mod regmap;
pub mod rng;
pub mod syringe;
pub mod wire;

pub use firmware::{CommAction, Firmware, RunMode, Telemetry};
pub use modbus::{MbapRequest, MbapStream, RtuPort};
pub use nesp::{
    address_of, burst_targets, crc16_xmodem, Direction, Framing, NespPort, Packet, ProgramState, RateUnits, VolumeUnits,
};
pub use plant::{
    BalanceReading, Plant, PlantConfig, PlantError, PlantOutputs, SealMotion, HIGH_RESISTANCE_MMHG_S_PER_ML,
    MMHG_PER_CM_H2O, NOMINAL_RESISTANCE_MMHG_S_PER_ML, PA_PER_MMHG,
};
pub use regmap::{ModbusException, RegisterMap};
pub use rng::SplitMix64;
pub use syringe::{Syringe, CATALOGUE};
