//! Fault campaigns: the invariant checks one by one (each with a case that breaks it), scenario
//! derivation, determinism, and whole runs against the hw-sim plant with a sound and a broken kernel
//! configuration.

mod common;

use common::{raw, spec, LIMITS};
use ketapump_core::{
    Alarm, AlarmSet, ClampReason, ControlStatus, Direction, KernelConfig, MotorCommand, RawKernelConfig, StateKind,
    StepOutput,
};
use ketapump_scenario::campaign::{
    check_accuracy, check_cumulative_cap, check_occlusion, check_overdose, derive_scenario, run, CampaignSpec, Fault,
    Invariant, LatchMonitor, OcclusionRecord, OcclusionSpec, Range,
};

fn config() -> KernelConfig {
    KernelConfig::from_raw(raw()).expect("the default configuration is valid")
}

fn config_with(change: impl FnOnce(&mut RawKernelConfig)) -> KernelConfig {
    let mut r = raw();
    change(&mut r);
    KernelConfig::from_raw(r).expect("test configuration is valid")
}

/// Short runs, so the whole-run tests stay quick in a debug build.
fn short_spec() -> CampaignSpec {
    let mut s = spec();
    s.infusion.duration_min = Range::new(5.0, 15.0);
    s.infusion.rate_ml_h = Range::new(20.0, 60.0);
    s
}

fn no_faults(mut s: CampaignSpec) -> CampaignSpec {
    s.occlusion.probability = 0.0;
    s.air.probability = 0.0;
    s.head_height.probability = 0.0;
    s.stuck_encoder.probability = 0.0;
    s.encoder_slip.probability = 0.0;
    s.drive_stall.probability = 0.0;
    s
}

fn out(state: StateKind, direction: Direction, alarms: &[Alarm]) -> StepOutput {
    let mut set = AlarmSet::EMPTY;
    for a in alarms {
        set.insert(*a);
    }
    StepOutput {
        command: MotorCommand { direction, rate_ml_s: if direction == Direction::Hold { 0.0 } else { 0.001 } },
        state,
        alarms: set,
        raised: AlarmSet::EMPTY,
        near_empty: false,
        annunciate: !set.is_empty(),
        delivered_ml: 0.0,
        remaining_ml: 0.0,
        clamp: ClampReason::Unchanged,
        control: ControlStatus::default(),
    }
}

// ----- the invariant checks, each with a case that breaks it ---------------------------------------

#[test]
fn overdose_check_allows_tolerance_plus_one_step_and_flags_more() {
    // 10 mL at 2 %: 10.2 mL + one 0.2 µL step is the most.
    assert_eq!(check_overdose(10.0, 10.2, 0.02, 0.0002, 0.0), None);
    assert_eq!(check_overdose(10.0, 10.2001, 0.02, 0.0002, 0.0), None);
    let v = check_overdose(10.0, 10.201, 0.02, 0.0002, 0.0).expect("above tolerance + step");
    assert_eq!(v.invariant, Invariant::Overdose);
    assert!(v.detail.contains("delivered 10.201000 mL"), "{}", v.detail);
    // A raised pump's released compliance volume is allowed on top, and only that.
    assert_eq!(check_overdose(10.0, 10.25, 0.02, 0.0002, 0.05), None);
    assert!(check_overdose(10.0, 10.26, 0.02, 0.0002, 0.05).is_some());
    // NaN never passes.
    assert!(check_overdose(10.0, f64::NAN, 0.02, 0.0002, 0.0).is_some());
}

#[test]
fn cumulative_cap_check_flags_drug_above_the_hard_cap() {
    assert_eq!(check_cumulative_cap(100.0, 20.0, 1.0, 0.0002, 120.0), None);
    let v = check_cumulative_cap(100.0, 20.01, 1.0, 0.0002, 120.0).expect("above the cap");
    assert_eq!(v.invariant, Invariant::CumulativeCap);
    // The prior dose counts: 50 mg before, 35 mL at 2 mg/mL is 120 mg.
    assert!(check_cumulative_cap(50.0, 35.01, 2.0, 0.0002, 120.0).is_some());
}

#[test]
fn occlusion_check_flags_an_alarm_later_than_c_dp_over_q_plus_latency() {
    // C = 2 µL/mmHg, P0 = 20 mmHg, Q = 5 mL/h: C·(300 − 20)/Q = 403.2 s after the onset at 600 s.
    let rec = OcclusionRecord {
        onset_s: 600.0,
        p0_mmhg: 20.0,
        rate_ml_s: 5.0 / 3_600.0,
        compliance_ml_per_mmhg: 0.002,
        crossed_s: Some(990.0),
    };
    let deadline = rec.deadline_s(&LIMITS).expect("crossed");
    assert!((deadline - (600.0 + 403.2 + 5.0)).abs() < 1e-9, "{deadline}");
    assert_eq!(check_occlusion(&rec, Some(1_000.0), &LIMITS), None);
    assert_eq!(check_occlusion(&rec, Some(100.0), &LIMITS), None, "an earlier alarm already stopped it");
    let late = check_occlusion(&rec, Some(1_010.0), &LIMITS).expect("late");
    assert_eq!(late.invariant, Invariant::MissedOcclusion);
    assert!(check_occlusion(&rec, None, &LIMITS).expect("never").detail.contains("latched never"));
    // A slow (partial) occlusion crossing after the full-occlusion time gets crossing + latency.
    let slow = OcclusionRecord { crossed_s: Some(1_500.0), ..rec };
    assert_eq!(check_occlusion(&slow, Some(1_505.0), &LIMITS), None);
    assert!(check_occlusion(&slow, Some(1_505.1), &LIMITS).is_some());
    // Pressure that never crossed the threshold asks for nothing.
    let under = OcclusionRecord { crossed_s: None, ..rec };
    assert_eq!(check_occlusion(&under, None, &LIMITS), None);
}

#[test]
fn latch_monitor_flags_forward_motion_after_an_alarm() {
    let mut m = LatchMonitor::default();
    m.observe(1.0, &out(StateKind::Running, Direction::Forward, &[]));
    m.observe(1.1, &out(StateKind::Alarm, Direction::Hold, &[Alarm::OcclusionPressure]));
    m.observe(1.2, &out(StateKind::Alarm, Direction::Retract, &[Alarm::OcclusionPressure]));
    assert_eq!(m.violation(), None, "holding and backing off are allowed");
    m.observe(1.3, &out(StateKind::Alarm, Direction::Forward, &[Alarm::OcclusionPressure]));
    let v = m.violation().expect("forward while latched");
    assert_eq!(v.invariant, Invariant::UnlatchedAlarm);
    assert!(v.detail.contains("at 1.3 s forward"), "{}", v.detail);
}

#[test]
fn latch_monitor_flags_a_dropped_alarm_or_a_state_left_unacknowledged() {
    let mut dropped = LatchMonitor::default();
    dropped.observe(1.0, &out(StateKind::Alarm, Direction::Hold, &[Alarm::Stall, Alarm::AirInLine]));
    dropped.observe(1.1, &out(StateKind::Alarm, Direction::Hold, &[Alarm::Stall]));
    assert!(dropped.violation().expect("dropped").detail.contains("air_in_line"));

    let mut left = LatchMonitor::default();
    left.observe(1.0, &out(StateKind::Alarm, Direction::Hold, &[Alarm::Stall]));
    left.observe(1.1, &out(StateKind::Stopped, Direction::Hold, &[Alarm::Stall]));
    assert!(left.violation().expect("left alarm").detail.contains("stopped"));

    let mut fine = LatchMonitor::default();
    fine.observe(1.0, &out(StateKind::Alarm, Direction::Hold, &[Alarm::Stall]));
    fine.observe(1.1, &out(StateKind::Alarm, Direction::Hold, &[Alarm::Stall, Alarm::FlowDeviation]));
    assert_eq!(fine.violation(), None, "more alarms may latch");
}

#[test]
fn accuracy_check_flags_a_fault_free_run_off_by_more_than_the_tolerance() {
    assert_eq!(check_accuracy(10.0, 10.19, 0.02, StateKind::Complete, AlarmSet::EMPTY), None);
    assert_eq!(check_accuracy(10.0, 9.81, 0.02, StateKind::Complete, AlarmSet::EMPTY), None);
    assert!(check_accuracy(10.0, 9.79, 0.02, StateKind::Complete, AlarmSet::EMPTY).is_some());
    assert!(check_accuracy(10.0, 10.21, 0.02, StateKind::Complete, AlarmSet::EMPTY).is_some());
    // A fault-free run that ends in an alarm is a false alarm: flagged even when the volume is right.
    let mut flow = AlarmSet::EMPTY;
    flow.insert(Alarm::FlowDeviation);
    let v = check_accuracy(10.0, 10.0, 0.02, StateKind::Alarm, flow).expect("false alarm");
    assert_eq!(v.invariant, Invariant::DoseAccuracy);
    assert!(v.detail.contains("flow_deviation"), "{}", v.detail);
}

// ----- specs and scenarios -------------------------------------------------------------------------

#[test]
fn spec_validation_names_the_offending_field() {
    let cfg = config();
    assert_eq!(spec().validate(&cfg), Ok(()));
    let mut s = spec();
    s.occlusion.probability = 1.5;
    assert_eq!(s.validate(&cfg).unwrap_err().field, "occlusion.probability");
    let mut s = spec();
    s.infusion.rate_ml_h = Range::new(4.0, 500.0);
    let e = s.validate(&cfg).unwrap_err();
    assert_eq!(e.field, "infusion.rate_ml_h");
    assert!(e.problem.contains("ceiling"), "{e}");
    let mut s = spec();
    s.plant.compliance_ml_per_mmhg = Range::new(0.003, 0.001);
    assert_eq!(s.validate(&cfg).unwrap_err().field, "plant.compliance_ml_per_mmhg");
    let mut s = spec();
    s.infusion.syringes.push("bd-plastipak-51".into());
    assert_eq!(s.validate(&cfg).unwrap_err().field, "infusion.syringes");
    let mut s = spec();
    s.run.settle_s = f64::NAN;
    assert_eq!(s.validate(&cfg).unwrap_err().field, "run.settle_s");
}

#[test]
fn a_scenario_is_a_pure_function_of_the_seed() {
    let (cfg, s) = (config(), spec());
    let a = derive_scenario(&s, &cfg, 7).unwrap();
    assert_eq!(a, derive_scenario(&s, &cfg, 7).unwrap());
    assert_ne!(a, derive_scenario(&s, &cfg, 8).unwrap());
    // Every drawn value lies in its range; faults start inside the window.
    for seed in 0..200 {
        let sc = derive_scenario(&s, &cfg, seed).unwrap();
        assert!((4.0..=60.0).contains(&sc.rate_ml_h));
        assert!(sc.vtbi_ml > 0.0 && sc.vtbi_ml <= 0.9 * sc.fill_ml);
        let planned = sc.vtbi_ml / sc.rate_ml_h * 3_600.0;
        for f in &sc.faults {
            assert!(f.at_s() >= 0.1 * planned - 1e-9 && f.at_s() <= 0.9 * planned + 1e-9, "{f:?}");
        }
    }
}

// ----- whole runs against the hw-sim plant ---------------------------------------------------------

#[test]
fn a_run_replays_bit_for_bit() {
    let (cfg, s) = (config(), short_spec());
    for seed in [3, 11, 12_345] {
        let a = run(&cfg, &s, seed).unwrap();
        let b = run(&cfg, &s, seed).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.trace_hash, b.trace_hash);
    }
}

#[test]
fn fault_free_runs_with_restarts_deliver_within_two_percent() {
    let cfg = config();
    let mut s = no_faults(short_spec());
    s.restart.probability = 1.0;
    for seed in 0..6 {
        let o = run(&cfg, &s, seed).unwrap();
        assert_eq!(o.violations, vec![], "seed {seed}");
        assert_eq!(o.state, StateKind::Complete, "seed {seed}");
        assert!(o.restarts <= 1);
        assert!((o.delivered_ml / o.programmed_ml - 1.0).abs() <= 0.02, "seed {seed}: {o:?}");
    }
    // At least one of them really restarted mid-dose (the new kernel loaded what was left).
    assert!((0..6).any(|seed| run(&cfg, &s, seed).unwrap().restarts == 1));
}

#[test]
fn the_default_campaign_holds_every_invariant_on_the_default_kernel() {
    let (cfg, s) = (config(), short_spec());
    for seed in 0..40 {
        let o = run(&cfg, &s, seed).unwrap();
        assert_eq!(o.violations, vec![], "seed {seed}: {o:?}");
    }
}

#[test]
fn an_occlusion_threshold_far_above_the_clinical_one_is_caught() {
    // The kernel alarms at 1 000 mmHg with the slope detector off; the spec's limit is 300 mmHg.
    let broken = config_with(|r| {
        r.occlusion_threshold_mmhg = 1_000.0;
        r.slope_detector = false;
    });
    let mut s = no_faults(short_spec());
    s.occlusion =
        OcclusionSpec { probability: 1.0, factor: Range::fixed(1.0e6), clear_probability: 0.0, ..s.occlusion };
    let caught: Vec<_> = (0..10)
        .filter_map(|seed| {
            let o = run(&broken, &s, seed).unwrap();
            o.violations.iter().any(|v| v.invariant == Invariant::MissedOcclusion).then_some(o)
        })
        .collect();
    assert!(caught.len() >= 5, "only {} of 10 caught", caught.len());
    for o in &caught {
        assert!(matches!(o.faults[0], Fault::Occlusion { .. }));
        assert!(o.occlusion_deadline_s.is_some_and(|d| o.first_alarm_s.is_none_or(|t| t > d)));
    }
    // The sound kernel on the same scenarios misses none.
    for seed in 0..10 {
        let o = run(&config(), &s, seed).unwrap();
        assert!(o.violations.iter().all(|v| v.invariant != Invariant::MissedOcclusion), "seed {seed}: {o:?}");
    }
}

#[test]
fn an_unvalidated_spec_never_panics() {
    let cfg = config();
    let mut s = spec();
    s.infusion.syringes.clear();
    assert_eq!(run(&cfg, &s, 1).unwrap_err().field, "infusion.syringes");
    let mut s = spec();
    s.infusion.rate_ml_h = Range::new(f64::NAN, 5.0);
    s.infusion.rate_change_factor = Range::new(3.0, 1.0);
    s.plant.resistance_mmhg_s_per_ml = Range::new(-1.0, f64::INFINITY);
    let _ = run(&cfg, &s, 1); // an error or a meaningless outcome, never a panic
}

#[test]
fn a_kernel_cap_or_concentration_above_the_clinical_one_is_caught() {
    // Every run comes after a prior dose that leaves less drug under the spec's 120 mg cap than it
    // programs (20–90 % of it). The sound kernel refuses each program; one configured with a 1 000 mg
    // cap, or with a tenth of the true concentration (so it counts a tenth of the mg), delivers it.
    let mut s = no_faults(short_spec());
    s.restart.probability = 0.0;
    s.infusion.over_cap_probability = 1.0;
    for seed in 0..8 {
        let o = run(&config(), &s, seed).unwrap();
        assert!(o.over_cap && o.refused.is_some(), "seed {seed}: {o:?}");
        assert_eq!((o.violations.clone(), o.delivered_ml), (vec![], 0.0), "seed {seed}");
        assert!(o.prior_mg + o.programmed_ml > 120.0 && o.prior_mg < 120.0, "seed {seed}: {o:?}");
    }
    for broken in [config_with(|r| r.hard_cap_mg = 1_000.0), config_with(|r| r.concentration_mg_per_ml = 0.1)] {
        for seed in 0..8 {
            let o = run(&broken, &s, seed).unwrap();
            assert_eq!(o.refused, None, "seed {seed}");
            let cap: Vec<_> = o.violations.iter().filter(|v| v.invariant == Invariant::CumulativeCap).collect();
            assert_eq!(cap.len(), 1, "seed {seed}: {o:?}");
            assert!(cap[0].detail.contains("> cap 120.000000 mg"), "{}", cap[0].detail);
        }
    }
}

#[test]
fn normal_runs_stay_under_the_spec_cap_whatever_the_kernel_says() {
    // The volume is bounded by the spec's cap and concentration, not the kernel's: a 2 mg/mL drug under
    // a 30 mg cap leaves at most 15 mL, even for a kernel that allows 120 mg at 1 mg/mL.
    let mut s = spec();
    s.limits.hard_cap_mg = 30.0;
    s.limits.concentration_mg_per_ml = 2.0;
    s.infusion.over_cap_probability = 0.0;
    for seed in 0..200 {
        let sc = derive_scenario(&s, &config(), seed).unwrap();
        assert!(!sc.over_cap && sc.vtbi_ml <= 0.999 * 15.0 + 1e-12, "seed {seed}: {sc:?}");
    }
    s.infusion.over_cap_probability = 1.0;
    for seed in 0..200 {
        let sc = derive_scenario(&s, &config(), seed).unwrap();
        assert!(sc.over_cap && sc.prior_mg + 2.0 * sc.vtbi_ml > 30.0, "seed {seed}: {sc:?}");
    }
}
