//! What the scenario crate's integration tests share.

use ketapump_core::{KernelConfig, RawKernelConfig};

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
