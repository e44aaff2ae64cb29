//! Physics checks of the plant through its public API only. Each expected value is computed from the
//! configuration (bore, slack, compliance, resistance), never read back from the plant's internals.

use ketapump_hwsim::{
    Plant, PlantConfig, HIGH_RESISTANCE_MMHG_S_PER_ML, MMHG_PER_CM_H2O, NOMINAL_RESISTANCE_MMHG_S_PER_ML,
};

const S_PER_H: f64 = 3600.0;

fn cfg50(slack_taken_up: bool) -> PlantConfig {
    PlantConfig { slack_taken_up, ..PlantConfig::nominal_for("bd-plastipak-50").unwrap() }
}

fn run(p: &mut Plant, seconds: f64, dt_s: f64) {
    let n = (seconds / dt_s).round() as u64;
    for _ in 0..n {
        p.step(dt_s).unwrap();
    }
}

/// Balance reading at plant time `t_s` (grams).
fn weight_at(p: &Plant, t_s: f64) -> f64 {
    p.balance_readings().iter().find(|r| (r.t_s - t_s).abs() < 1e-9).expect("no reading at that time").grams
}

/// Runs at `dt_s` until `delivered_ml` reaches `threshold_ml`; returns the plant time, or None.
fn time_to_deliver(p: &mut Plant, threshold_ml: f64, limit_s: f64, dt_s: f64) -> Option<f64> {
    while p.t_s() < limit_s {
        p.step(dt_s).unwrap();
        if p.delivered_ml() >= threshold_ml {
            return Some(p.t_s());
        }
    }
    None
}

// 1. Gravimetric accuracy after start-up. An hour at 52.5 mL/h does not fit in a 50 mL syringe, so that
// rate runs on the 60 mL Plastipak, which has the same 26.59 mm barrel (same mechanics, longer stroke).
#[test]
fn balance_shows_set_rate_within_one_percent_over_an_hour() {
    for (syringe, rate_ml_h, warm_up_s) in [("bd-plastipak-50", 5.0, 1200.0), ("bd-plastipak-60", 52.5, 300.0)] {
        let cfg = PlantConfig { slack_taken_up: true, ..PlantConfig::nominal_for(syringe).unwrap() };
        let mut p = Plant::new(cfg).unwrap();
        p.set_motor_rate_ml_h(rate_ml_h).unwrap();
        run(&mut p, warm_up_s + 3600.0, 0.1);
        assert!(!p.end_of_travel());
        let grams = weight_at(&p, warm_up_s + 3600.0) - weight_at(&p, warm_up_s);
        let expected = rate_ml_h * 1.0 * p.config().density_g_per_ml;
        let error = (grams - expected) / expected;
        assert!(error.abs() < 0.01, "{rate_ml_h} mL/h: {grams} g vs {expected} g ({:.3} %)", 100.0 * error);
    }
}

// 2. Occlusion pressure slope = Q / C.
#[test]
fn occluded_line_pressure_rises_at_q_over_c() {
    for (rate_ml_h, window_s) in [(1.0, 600.0), (5.0, 300.0), (52.5, 60.0)] {
        let mut p = Plant::new(cfg50(true)).unwrap();
        p.set_motor_rate_ml_h(rate_ml_h).unwrap();
        run(&mut p, 30.0 * 60.0, 0.1);
        p.set_occlusion_factor(1.0e6).unwrap();
        run(&mut p, 10.0, 0.1); // past the first substeps of the transient
        let p0 = p.line_pressure_mmhg();
        run(&mut p, window_s, 0.1);
        let slope = (p.line_pressure_mmhg() - p0) / window_s;
        let expected = rate_ml_h / S_PER_H / p.config().compliance_ml_per_mmhg;
        let error = (slope - expected) / expected;
        assert!(error.abs() < 0.05, "{rate_ml_h} mL/h: {slope} mmHg/s vs {expected} ({:.2} %)", 100.0 * error);
    }
}

#[test]
fn occlusion_stalls_the_motor_at_its_force_limit_and_release_gives_a_bolus() {
    let mut p = Plant::new(cfg50(true)).unwrap();
    p.set_motor_rate_ml_h(52.5).unwrap();
    run(&mut p, 600.0, 0.1);
    p.set_occlusion_factor(1.0e6).unwrap();
    run(&mut p, 900.0, 0.1);
    let steps = p.nut_position_steps();
    run(&mut p, 60.0, 0.1);
    assert_eq!(p.nut_position_steps(), steps, "the nut no longer advances");
    assert!(p.motor_running());
    let cfg = p.config().clone();
    let stall_mmhg = cfg.motor_stall_force_n / (cfg.syringe.area_mm2() * 1e-6) / 133.322;
    assert!(p.drive_force_mmhg() >= stall_mmhg * 0.99);
    // Stop the motor and clear: the stored volume C_f·Δp comes out as a bolus.
    p.set_motor_rate_ml_h(0.0).unwrap();
    let before = p.delivered_ml();
    let dp = p.line_pressure_mmhg() - cfg.patient_pressure_mmhg;
    p.clear_occlusion();
    run(&mut p, 300.0, 0.1);
    let bolus = p.delivered_ml() - before;
    // 300 s is over 40·R·C: all of it comes out, the fluid side's C_f·Δp and the drive spring's C_d·Δp
    // (the seal slides at running friction until the line is back at the patient's pressure), no more.
    let stored = cfg.compliance_ml_per_mmhg * dp;
    assert!(bolus > cfg.fluid_compliance_ml_per_mmhg() * dp * 1.05, "bolus {bolus} mL for {dp} mmHg");
    assert!((bolus - stored).abs() < 1.0e-3 * stored, "bolus {bolus} mL, stored {stored} mL for {dp} mmHg");
}

// The flowing line pressure is the patient's plus R·Q: tens of mmHg on the nominal line at clinical
// rates, over the default 300 mmHg occlusion threshold at 90 mL/h on a high-resistance one.
#[test]
fn flowing_line_pressure_is_patient_pressure_plus_r_times_q() {
    for (resistance, rate_ml_h, expected_mmhg) in [
        (NOMINAL_RESISTANCE_MMHG_S_PER_ML, 5.0, 15.0),
        (NOMINAL_RESISTANCE_MMHG_S_PER_ML, 52.5, 62.5),
        (NOMINAL_RESISTANCE_MMHG_S_PER_ML, 90.0, 100.0),
        (HIGH_RESISTANCE_MMHG_S_PER_ML, 52.5, 220.0),
        (HIGH_RESISTANCE_MMHG_S_PER_ML, 90.0, 370.0),
    ] {
        let cfg = PlantConfig {
            slack_taken_up: true,
            resistance_mmhg_s_per_ml: resistance,
            ..PlantConfig::nominal_for("bd-plastipak-60").unwrap()
        };
        let computed = cfg.patient_pressure_mmhg + resistance * rate_ml_h / S_PER_H;
        assert!((computed - expected_mmhg).abs() < 1e-9, "{computed} mmHg");
        let mut p = Plant::new(cfg).unwrap();
        p.set_motor_rate_ml_h(rate_ml_h).unwrap();
        run(&mut p, 600.0, 0.1);
        // The stepper's quantisation ripples the pressure by a fraction of a mmHg at most.
        let got = p.line_pressure_mmhg();
        assert!((got - expected_mmhg).abs() < 0.02 * expected_mmhg, "R {resistance}, {rate_ml_h} mL/h: {got} mmHg");
    }
}

// 3. Start-up delay from slack.
#[test]
fn slack_delays_first_delivery_by_minutes_and_take_up_removes_it() {
    let cfg = cfg50(false);
    let rate_ml_h = 1.0;
    let slack_delay_s = cfg.slack_mm * cfg.syringe.ml_per_mm() / (rate_ml_h / S_PER_H);
    assert!((slack_delay_s - 600.0).abs() < 1.0, "0.3 mm × 5.55 cm² at 1 mL/h ≈ 10 min");

    let mut slack = Plant::new(cfg).unwrap();
    slack.set_motor_rate_ml_h(rate_ml_h).unwrap();
    let first_slack = time_to_deliver(&mut slack, 1e-3, 3600.0, 1.0).unwrap();
    assert!(first_slack > 180.0);
    // The slack, then a breakaway of about a minute (stiction against the drive spring).
    assert!(first_slack >= slack_delay_s && first_slack <= slack_delay_s + 180.0, "first delivery at {first_slack} s");

    let mut taken = Plant::new(cfg50(true)).unwrap();
    taken.set_motor_rate_ml_h(rate_ml_h).unwrap();
    let first_taken = time_to_deliver(&mut taken, 1e-3, 3600.0, 1.0).unwrap();
    assert!(first_taken < 180.0 && first_taken < 0.25 * first_slack, "{first_taken} s vs {first_slack} s");

    // At 5 mL/h with take-up the first delivery comes well inside a minute (target S10).
    let mut fast = Plant::new(cfg50(true)).unwrap();
    fast.set_motor_rate_ml_h(5.0).unwrap();
    assert!(time_to_deliver(&mut fast, 1e-3, 3600.0, 0.1).unwrap() < 60.0);
}

// 4. Determinism.
#[test]
fn same_seed_same_readings_different_seed_different_noise() {
    let readings = |seed: u64| {
        let mut p = Plant::new(PlantConfig { seed, ..cfg50(true) }).unwrap();
        p.set_motor_rate_ml_h(5.0).unwrap();
        run(&mut p, 600.0, 0.25);
        p.drain_balance_readings()
    };
    let a = readings(7);
    assert_eq!(a.len(), 21);
    assert_eq!(a, readings(7));
    let b = readings(8);
    assert_ne!(a, b);
    // Same physics: the seeds differ only by noise of the configured size.
    let sd = cfg50(true).balance_noise_sd_g;
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x.grams - y.grams).abs()).fold(0.0, f64::max);
    assert!(max_diff > 0.0 && max_diff < 10.0 * sd, "{max_diff} g");
}

#[test]
fn balance_noise_has_the_configured_spread() {
    let cfg = PlantConfig { balance_noise_sd_g: 1.0e-3, balance_resolution_g: 0.0, max_substep_s: 1.0, ..cfg50(true) };
    let mut p = Plant::new(cfg).unwrap();
    run(&mut p, 2000.0 * 30.0, 30.0);
    let g: Vec<f64> = p.balance_readings().iter().map(|r| r.grams).collect();
    let mean = g.iter().sum::<f64>() / g.len() as f64;
    let sd = (g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (g.len() - 1) as f64).sqrt();
    assert!(mean.abs() < 1.0e-4, "mean {mean}");
    assert!((sd - 1.0e-3).abs() < 1.0e-4, "sd {sd}");
}

// 5. Head height: siphon and lowering.
#[test]
fn unclamped_plunger_siphons_when_the_pump_is_raised() {
    let mut p = Plant::new(cfg50(true)).unwrap();
    p.set_unclamped(true);
    run(&mut p, 60.0, 0.1);
    assert_eq!(p.delivered_ml(), 0.0, "level pump, no siphon");
    p.set_head_height_cm(100.0).unwrap();
    run(&mut p, 600.0, 0.1);
    assert_eq!(p.motor_position_steps(), 0);
    assert_eq!(p.nut_position_steps(), 0);
    assert!(p.encoder_counts() > 0, "the plunger moved on its own");
    // Steady siphon: the plunger slides at running friction, so q = (ρg·h − f_run − p_patient)/R.
    let cfg = p.config().clone();
    let drive_mmhg = 100.0 * MMHG_PER_CM_H2O - cfg.syringe.running_friction_mmhg - cfg.patient_pressure_mmhg;
    let expected_ml = drive_mmhg / cfg.resistance_mmhg_s_per_ml * 600.0;
    let got = p.delivered_ml();
    assert!(got > 1.0 && (got - expected_ml).abs() < 0.1 * expected_ml, "{got} mL vs {expected_ml} mL");
}

#[test]
fn clamped_plunger_releases_only_slack_and_compliance_when_raised() {
    let mut p = Plant::new(cfg50(true)).unwrap();
    p.set_head_height_cm(100.0).unwrap();
    run(&mut p, 600.0, 0.1);
    let released = p.delivered_ml();
    // Field data: 0.19–2.28 mL within a minute for a 1 m raise. Here: slack (0.17 mL) plus compliance.
    assert!((0.19..=0.5).contains(&released), "{released} mL");
    run(&mut p, 600.0, 0.1);
    assert!(p.delivered_ml() - released < 1e-3, "then the clamp holds");
}

#[test]
fn lowering_the_pump_stops_flow_for_a_while() {
    let rate_ml_h = 5.0;
    let mut p = Plant::new(cfg50(true)).unwrap();
    p.set_motor_rate_ml_h(rate_ml_h).unwrap();
    run(&mut p, 30.0 * 60.0, 0.1);
    let v0 = p.delivered_ml();
    p.set_head_height_cm(-50.0).unwrap();
    run(&mut p, 30.0, 0.1);
    let nominal_30s = rate_ml_h / S_PER_H * 30.0;
    assert!(p.delivered_ml() - v0 < 0.0, "lowering draws back: {} mL", p.delivered_ml() - v0);
    run(&mut p, 30.0, 0.1);
    assert!(p.delivered_ml() - v0 < 0.5 * 2.0 * nominal_30s, "still far below rate after 1 min");
    // Recovers once the compliance has been refilled to the new pressure.
    run(&mut p, 15.0 * 60.0, 0.1);
    let v1 = p.delivered_ml();
    run(&mut p, 5.0 * 60.0, 0.1);
    let flow_ml_h = (p.delivered_ml() - v1) / 300.0 * S_PER_H;
    assert!((flow_ml_h - rate_ml_h).abs() < 0.05 * rate_ml_h, "{flow_ml_h} mL/h");
}

// 6. End of travel.
#[test]
fn end_of_travel_stops_delivery_and_sets_the_flag() {
    let cfg = PlantConfig { fill_ml: 1.0, slack_taken_up: true, ..PlantConfig::nominal_for("bd-plastipak-5").unwrap() };
    let mut p = Plant::new(cfg).unwrap();
    p.set_motor_rate_ml_h(60.0).unwrap();
    run(&mut p, 30.0, 0.1);
    assert!(!p.end_of_travel());
    run(&mut p, 270.0, 0.1);
    assert!(p.end_of_travel() && p.outputs().end_of_travel);
    assert!(p.remaining_ml().abs() < 1e-9);
    let delivered = p.delivered_ml();
    assert!((delivered - 1.0).abs() < 1e-3, "{delivered} mL");
    let nut = p.nut_position_steps();
    // Only what the line compliance still holds drains out (R·C_f ≈ 7 s); the total is the fill.
    run(&mut p, 600.0, 0.1);
    assert!((p.delivered_ml() - delivered).abs() < 5e-4);
    assert!((p.delivered_ml() - 1.0).abs() < 1e-6, "{} mL", p.delivered_ml());
    assert!(p.motor_running(), "still commanded");
    assert_eq!(p.nut_position_steps(), nut, "the motor stalls against the bottomed plunger");
}

// 7. Motor stall and encoder slip.
#[test]
fn stalled_motor_counts_steps_but_nothing_moves() {
    let mut p = Plant::new(cfg50(true)).unwrap();
    p.set_motor_stalled(true);
    p.set_motor_rate_ml_h(5.0).unwrap();
    run(&mut p, 600.0, 0.1);
    let expected_steps = p.motor_rate_steps_per_s() * 600.0;
    assert!((p.motor_position_steps() as f64 - expected_steps).abs() <= 1.0);
    assert_eq!(p.nut_position_steps(), 0);
    assert_eq!(p.plunger_position_mm(), 0.0);
    assert_eq!(p.encoder_counts(), 0);
    assert_eq!(p.delivered_ml(), 0.0);
    // Clearing the stall resumes delivery.
    p.set_motor_stalled(false);
    run(&mut p, 600.0, 0.1);
    assert!(p.delivered_ml() > 0.5 * 5.0 / 6.0);
}

#[test]
fn encoder_slip_loses_counts_while_delivery_continues() {
    let rate_ml_h = 5.0;
    let mut p = Plant::new(cfg50(true)).unwrap();
    p.set_motor_rate_ml_h(rate_ml_h).unwrap();
    run(&mut p, 1200.0, 0.1);
    let counts = p.encoder_counts();
    assert!(counts > 0);
    // Healthy encoder tracks the plunger (counts ↔ volume).
    assert!((p.encoder_volume_ml() - p.plunger_position_mm() * p.config().syringe.ml_per_mm()).abs() < 1e-3);
    p.set_encoder_slip(1.0).unwrap();
    let v0 = p.delivered_ml();
    run(&mut p, 1200.0, 0.1);
    assert_eq!(p.encoder_counts(), counts, "stopped counting");
    let delivered = p.delivered_ml() - v0;
    let expected = rate_ml_h / 3.0;
    assert!((delivered - expected).abs() < 0.02 * expected, "{delivered} mL");
    // Partial slip: half the motion is counted.
    p.set_encoder_slip(0.5).unwrap();
    let x0 = p.plunger_position_mm();
    run(&mut p, 1200.0, 0.1);
    let counted_mm = (p.encoder_counts() - counts) as f64 / p.config().encoder_counts_per_mm;
    let moved_mm = p.plunger_position_mm() - x0;
    assert!((counted_mm / moved_mm - 0.5).abs() < 0.01, "{counted_mm} of {moved_mm} mm");
}

// 8. Step-size independence and stability.
#[test]
fn one_second_and_one_millisecond_steps_agree() {
    let nominal = cfg50(true);
    // Small R·C as well: 10 mmHg·s/mL gives R·C_f ≈ 16 ms, far below a 1 s step, and with
    // `max_substep_s = 1` the exponential update is all that keeps it stable.
    let tiny_rc = PlantConfig { resistance_mmhg_s_per_ml: 10.0, max_substep_s: 1.0, ..cfg50(true) };
    for cfg in [nominal, tiny_rc] {
        let mut coarse = Plant::new(cfg.clone()).unwrap();
        let mut fine = Plant::new(cfg).unwrap();
        for p in [&mut coarse, &mut fine] {
            p.set_motor_rate_ml_h(5.0).unwrap();
        }
        run(&mut coarse, 600.0, 1.0);
        run(&mut fine, 600.0, 1.0e-3);
        let (a, b) = (coarse.delivered_ml(), fine.delivered_ml());
        assert!(a > 0.5 && (a - b).abs() < 0.01 * b, "dt = 1 s: {a} mL, dt = 1 ms: {b} mL");
        assert!(coarse.line_pressure_mmhg().is_finite() && coarse.line_pressure_mmhg().abs() < 100.0);
        assert_eq!(coarse.motor_position_steps(), fine.motor_position_steps());
    }
}
