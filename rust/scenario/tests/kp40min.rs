//! KP-40MIN: lockstep lanes give each lane exactly the outcome of a single run.

mod common;

use common::kp40min_config as config;
use ketapump_core::StateKind;
use ketapump_scenario::{run_kp40min, run_kp40min_lanes, Kp40Min, Kp40MinRun};

/// KP-40MIN shortened (the occlusion and the schedule moved in), shifted by `lane` so every lane of a
/// group runs a different scenario of a different length.
fn short(lane: u64) -> Kp40Min {
    Kp40Min {
        ticks: 90_000 + 1_000 * lane,
        occlusion_start_tick: 65_000 + 500 * lane,
        occlusion_end_tick: 85_000,
        schedule: [(0, 10.0 + lane as f64), (5_000, 20.0), (60_000, 10.0)],
        ..Kp40Min::STANDARD
    }
}

#[test]
fn every_lane_ends_exactly_as_its_single_run() {
    let cfg = config();
    let scenarios: Vec<Kp40Min> = (0..11).map(short).collect();
    let singles: Vec<_> = scenarios.iter().map(|s| run_kp40min(cfg, s, u64::MAX)).collect();
    // The lanes differ (else the check could not tell lanes apart)...
    assert!(singles.windows(2).all(|w| w[0].trace_hash != w[1].trace_hash));
    // ...each reaches the occlusion alarm (a state change mid-run), each at its own tick.
    assert!(singles.iter().all(|o| o.first_alarm_tick.is_some()));
    assert!(singles.windows(2).all(|w| w[0].first_alarm_tick != w[1].first_alarm_tick));
    for lanes in [1, 2, 3, 4, 8, 16] {
        let grouped = run_kp40min_lanes(cfg, &scenarios, u64::MAX, lanes);
        assert_eq!(grouped, singles, "{lanes} lanes");
    }
}

#[test]
fn a_tick_limit_applies_to_every_lane() {
    let cfg = config();
    let scenarios = [short(0), short(3)];
    let lanes = run_kp40min_lanes(cfg, &scenarios, 7_000, 2);
    assert!(lanes.iter().all(|o| o.ticks == 7_000));
    assert_eq!(lanes[1], run_kp40min(cfg, &scenarios[1], 7_000));
    assert_eq!(run_kp40min_lanes(cfg, &[], 7_000, 4), vec![]);
}

/// How a run of `s` went beside a plant that keeps a subnormal drive flow.
struct BesideTheKeptFlow {
    run: Kp40MinRun,
    kept_flow_went_subnormal: bool,
    drive_retracted: bool,
}

/// Steps `s` beside a plant that keeps a subnormal drive flow (the same recurrence without the
/// zeroing) and asserts, tick by tick and to the bit, that the plunger volume and line pressure
/// agree and that the run's own flow is never subnormal.
fn beside_a_plant_that_keeps_the_flow(s: &Kp40Min) -> BesideTheKeptFlow {
    let mut run = Kp40MinRun::new(config(), s);
    let lag = s.dt_s / s.lag_tau_s;
    let dt_over_c = s.dt_s / s.compliance_ml_per_mmhg;
    let (inv_r_open, inv_r_occluded) =
        (1.0 / s.resistance_mmhg_s_per_ml, 1.0 / (s.resistance_mmhg_s_per_ml * s.occlusion_factor));
    let (mut q, mut x, mut p) = (0.0_f64, 0.0_f64, 0.0_f64);
    let (mut kept_flow_went_subnormal, mut drive_retracted) = (false, false);
    for n in 1..=s.ticks {
        let u = run.commanded_ml_s();
        drive_retracted |= u < 0.0;
        run.tick();
        q += (u - q) * lag;
        x += q * s.dt_s;
        let occluded = n >= s.occlusion_start_tick && n < s.occlusion_end_tick;
        p += (q - p * if occluded { inv_r_occluded } else { inv_r_open }) * dt_over_c;
        kept_flow_went_subnormal |= q.is_subnormal();
        assert!(!run.drive_flow_ml_s().is_subnormal(), "tick {n}");
        let o = run.outcome();
        assert_eq!((o.plunger_ml.to_bits(), o.pressure_mmhg.to_bits()), (x.to_bits(), p.to_bits()), "tick {n}");
    }
    BesideTheKeptFlow { run, kept_flow_went_subnormal, drive_retracted }
}

/// Once the drive stops after the end, its flow comes to exactly zero instead of decaying into
/// subnormal numbers (slow on x86), and that changes nothing the run shows.
#[test]
fn a_drive_stopped_at_the_end_comes_to_zero_and_the_plant_keeps_its_bits() {
    // The infusion completes at ~2.7 s; the flow then decays below the smallest normal f64 ~35 s on.
    let s = Kp40Min { ticks: 45_000, vtbi_ml: 0.01, ..Kp40Min::STANDARD };
    assert!(s.occlusion_start_tick > s.ticks);
    let beside = beside_a_plant_that_keeps_the_flow(&s);
    assert!(beside.kept_flow_went_subnormal, "the scenario must reach the subnormal range");
    assert_eq!(beside.run.outcome().state, StateKind::Complete);
    assert_eq!(beside.run.drive_flow_ml_s().to_bits(), 0.0_f64.to_bits());
}

/// KP-40MIN's own path: an occlusion, the alarm's back-off (the drive retracts, so the flow decays
/// from below zero) and the hold after it, through the occluded and the open line.
#[test]
fn a_drive_stopped_by_the_alarm_comes_to_zero_and_the_plant_keeps_its_bits() {
    let s = Kp40Min { ticks: 130_000, ..short(0) };
    let beside = beside_a_plant_that_keeps_the_flow(&s);
    let alarm = beside.run.outcome().first_alarm_tick.expect("the occlusion alarm");
    assert!(alarm < s.occlusion_end_tick && s.ticks - alarm > 40_000, "alarm at tick {alarm}");
    assert!(beside.drive_retracted, "the alarm's back-off must retract the drive");
    assert!(beside.kept_flow_went_subnormal, "the scenario must reach the subnormal range");
    assert_eq!(beside.run.outcome().state, StateKind::Alarm);
    assert_eq!(beside.run.drive_flow_ml_s().to_bits(), 0.0_f64.to_bits());
}
