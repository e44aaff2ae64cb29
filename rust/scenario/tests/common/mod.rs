//! What the scenario crate's integration tests and examples share: the shipped kernel defaults, KP-40MIN's
//! kernel and the shipped default campaign.

use ketapump_core::{KernelConfig, RawKernelConfig};
#[allow(unused_imports)] // not every crate that includes this module runs campaigns
use ketapump_scenario::campaign::{
    CampaignSpec, Chance, EncoderSlipSpec, HeadHeightSpec, InfusionSpec, Limits, OcclusionSpec, PlantSpec, Range,
    RestartSpec, RunSpec,
};

/// The shipped kernel defaults (python/ketapump/data/kernel_defaults.toml).
pub fn raw() -> RawKernelConfig {
    RawKernelConfig {
        syringe_diameter_mm: 26.59,
        syringe_capacity_ml: 60.0,
        syringe_fill_ml: 50.0,
        encoder_counts_per_mm: 3200.0,
        concentration_mg_per_ml: 1.0,
        max_rate_ml_h: 120.0,
        hard_max_rate_ml_h: 200.0,
        pump_max_rate_ml_h: 1200.0,
        min_rate_ml_h: 0.1,
        dose_tolerance: 0.02,
        hard_cap_mg: 120.0,
        prior_delivered_mg: 0.0,
        has_pressure_sensor: true,
        occlusion_threshold_mmhg: 300.0,
        hard_max_occlusion_threshold_mmhg: 1034.0,
        slope_detector: true,
        slope_rise_mmhg: 40.0,
        slope_fraction: 0.5,
        slope_arm_delay_s: 60.0,
        slope_rearm_increase: 0.10,
        slope_sustain_s: 30.0,
        slope_hold_fraction: 0.8,
        slope_sustained_rise_mmhg: 25.0,
        pressure_filter_s: 5.0,
        pressure_baseline_s: 120.0,
        compliance_ml_per_mmhg: 0.0028,
        drive_stiffness_n_per_mm: 100.0,
        backoff: true,
        backoff_margin_mmhg: 20.0,
        backoff_rate_ml_h: 300.0,
        stall_volume_ml: 0.05,
        flow_window_s: 120.0,
        flow_tolerance: 0.10,
        flow_min_volume_ml: 0.02,
        uncommanded_volume_ml: 0.03,
        encoder_mismatch_ml: 0.02,
        near_empty_ml: 1.0,
        near_empty_s: 180.0,
        stale_after_s: 1.0,
        control_period_s: 0.1,
        take_up_rate_ml_h: 120.0,
        take_up_max_ml: 0.5,
        take_up_detect_ml: 0.005,
        kp_per_s: 0.05,
        ki_per_s2: 0.0,
        integral_limit_ml_s: 0.01,
        slew_ml_h_per_s: 1_000_000.0,
        control_deadband_counts: 2.0,
        control_hold_s: 10.0,
        silence_s: 120.0,
    }
}

/// KP-40MIN's kernel: the defaults with its plant's syringe, 1 kHz control and the per-tick PI.
#[allow(dead_code)] // not every test crate that includes this module runs KP-40MIN
pub fn kp40min_config() -> KernelConfig {
    KernelConfig::from_raw(RawKernelConfig {
        syringe_diameter_mm: 26.5995,
        encoder_counts_per_mm: 3200.0,
        control_period_s: 0.001,
        stale_after_s: 0.1,
        kp_per_s: 2.0,
        ki_per_s2: 0.5,
        integral_limit_ml_s: 0.01,
        control_deadband_counts: 0.0,
        control_hold_s: 0.0,
        max_rate_ml_h: 1188.0,
        hard_max_rate_ml_h: 1200.0,
        occlusion_threshold_mmhg: 300.0,
        ..raw()
    })
    .expect("the KP-40MIN configuration is valid")
}

/// The default campaign's clinical limits.
#[allow(dead_code)] // not every crate that includes this module runs campaigns
pub const LIMITS: Limits = Limits {
    occlusion_threshold_mmhg: 300.0,
    occlusion_latency_s: 5.0,
    dose_tolerance: 0.02,
    accuracy_tolerance: 0.02,
    hard_cap_mg: 120.0,
    concentration_mg_per_ml: 1.0,
};

/// The shipped default campaign (python/ketapump/data/campaigns/default.toml).
#[allow(dead_code)] // not every crate that includes this module runs campaigns
pub fn spec() -> CampaignSpec {
    CampaignSpec {
        limits: LIMITS,
        infusion: InfusionSpec {
            syringes: ["bd-plastipak-20", "bd-plastipak-30", "bd-plastipak-50", "bd-plastipak-60"]
                .map(String::from)
                .to_vec(),
            rate_ml_h: Range::new(4.0, 60.0),
            duration_min: Range::new(30.0, 60.0),
            fill_fraction: Range::new(0.6, 1.0),
            take_up_probability: 1.0,
            rate_change_probability: 0.2,
            rate_change_factor: Range::new(0.75, 1.33),
            over_cap_probability: 0.05,
            over_cap_headroom: Range::new(0.2, 0.9),
        },
        plant: PlantSpec {
            compliance_ml_per_mmhg: Range::new(0.0012, 0.0028),
            resistance_mmhg_s_per_ml: Range::new(3_600.0, 9_000.0),
            patient_pressure_mmhg: Range::new(5.0, 15.0),
            slack_taken_up_probability: 0.5,
            pressure_noise_sd_mmhg: Range::new(0.0, 2.0),
        },
        run: RunSpec { fault_window: Range::new(0.1, 0.9), observe_after_alarm_s: 30.0, settle_s: 180.0 },
        restart: RestartSpec { probability: 0.2, gap_s: Range::new(0.5, 5.0), watchdog_s: 0.5 },
        occlusion: OcclusionSpec {
            probability: 0.3,
            factor: Range::new(1.0e3, 1.0e6),
            clear_probability: 0.3,
            clear_after_s: Range::new(10.0, 300.0),
        },
        air: Chance { probability: 0.05 },
        head_height: HeadHeightSpec { probability: 0.1, height_cm: Range::new(-50.0, 25.0) },
        stuck_encoder: Chance { probability: 0.05 },
        encoder_slip: EncoderSlipSpec { probability: 0.05, fraction: Range::new(0.2, 0.9) },
        drive_stall: Chance { probability: 0.05 },
    }
}
