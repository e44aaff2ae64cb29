//! The simulated firmware through its register semantics: power-up, run, watchdog, alarms, faults.

use ketapump_hwsim::firmware::{alarm, RunMode};
use ketapump_hwsim::regmap::{decode, encode, Access, RegType};
use ketapump_hwsim::{Firmware, ModbusException, PlantConfig};

fn pump() -> Firmware {
    let mut cfg = PlantConfig::nominal_for("bd-plastipak-50").unwrap();
    cfg.slack_taken_up = true;
    Firmware::new(cfg, 1234).unwrap()
}

fn read(fw: &Firmware, name: &str) -> f64 {
    let r = fw.map().by_name(name).unwrap().clone();
    decode(r.ty, &fw.read_registers(r.address, r.ty.words()).unwrap())
}

fn write(fw: &mut Firmware, name: &str, value: f64) -> Result<(), ModbusException> {
    let r = fw.map().by_name(name).unwrap().clone();
    fw.write_registers(r.address, &encode(r.ty, value))
}

/// Runs to `t_end` in 0.1 s ticks, refreshing the heartbeat each tick.
fn run_to(fw: &mut Firmware, t_end: f64) {
    let mut t = fw.t_s();
    while t < t_end - 1e-9 {
        t = (t + 0.1).min(t_end);
        fw.heartbeat();
        fw.advance_to(t).unwrap();
    }
}

/// A pump acknowledged after power-up and infusing at `rate`, heartbeat refreshed.
fn infusing(rate: f64) -> Firmware {
    let mut fw = pump();
    write(&mut fw, "alarm_ack", 1.0).unwrap();
    write(&mut fw, "rate_ml_h", rate).unwrap();
    write(&mut fw, "heartbeat", 1.0).unwrap();
    write(&mut fw, "run_mode", 1.0).unwrap();
    fw
}

#[test]
fn powers_up_with_the_reset_alarm_and_refuses_to_run_until_acknowledged() {
    let mut fw = pump();
    assert_eq!(read(&fw, "alarm_bits"), f64::from(alarm::RESET));
    assert_eq!(read(&fw, "status"), 3.0);
    assert_eq!(write(&mut fw, "run_mode", 1.0), Err(ModbusException::ServerDeviceFailure));
    write(&mut fw, "alarm_ack", 1.0).unwrap();
    assert_eq!(read(&fw, "alarm_bits"), 0.0);
    write(&mut fw, "run_mode", 1.0).unwrap();
    assert_eq!(read(&fw, "status"), 1.0);
}

#[test]
fn identity_registers_read_and_refuse_writes() {
    let mut fw = pump();
    assert_eq!(read(&fw, "vendor_id"), 0x4B50 as f64);
    assert_eq!(read(&fw, "serial_number"), 1234.0);
    assert_eq!(write(&mut fw, "vendor_id", 1.0), Err(ModbusException::IllegalDataAddress));
    assert_eq!(write(&mut fw, "line_pressure_mmhg", 1.0), Err(ModbusException::IllegalDataAddress));
    // Unmapped addresses.
    assert_eq!(fw.read_registers(8, 1), Err(ModbusException::IllegalDataAddress));
    assert_eq!(fw.read_registers(200, 1), Err(ModbusException::IllegalDataAddress));
}

#[test]
fn out_of_range_and_non_finite_writes_are_exception_3_and_change_nothing() {
    let mut fw = pump();
    assert_eq!(write(&mut fw, "rate_ml_h", 5_000.0), Err(ModbusException::IllegalDataValue));
    assert_eq!(write(&mut fw, "rate_ml_h", f64::NAN), Err(ModbusException::IllegalDataValue));
    assert_eq!(write(&mut fw, "watchdog_ms", 10.0), Err(ModbusException::IllegalDataValue));
    assert_eq!(read(&fw, "rate_ml_h"), 0.0);
    assert_eq!(read(&fw, "watchdog_ms"), 500.0);
    // A multi-register write is all or nothing.
    let rate = encode(RegType::F32, 10.0);
    assert_eq!(fw.write_registers(20, &[rate[0], rate[1], 7]), Err(ModbusException::IllegalDataValue));
    assert_eq!(read(&fw, "rate_ml_h"), 0.0);
}

#[test]
fn infuses_at_the_commanded_rate() {
    // Past the start-up transient (the drive and the line compliance fill as the line pressure rises
    // with R·C ≈ 29 s), the counter follows the rate.
    let mut fw = infusing(60.0);
    run_to(&mut fw, 180.0);
    let before = read(&fw, "infused_ml");
    run_to(&mut fw, 240.0);
    let infused = read(&fw, "infused_ml") - before;
    assert!((infused - 1.0).abs() < 0.01, "{infused}");
    assert!(read(&fw, "motor_running") == 1.0);
}

#[test]
fn watchdog_stops_the_motor_within_its_period() {
    let mut fw = infusing(60.0);
    fw.advance_to(0.4).unwrap();
    assert_eq!(fw.run_mode(), RunMode::Infuse);
    // No heartbeat since t = 0: the deadline is 0.5 s, handled exactly when it falls.
    fw.advance_to(2.0).unwrap();
    assert_eq!(fw.run_mode(), RunMode::Stop);
    assert_ne!(fw.alarms() & alarm::WATCHDOG, 0);
    let stopped_at = fw.plant().motor_position_steps();
    let steps_per_s = 60.0 / 3600.0 / fw.plant().config().syringe.ml_per_mm() * fw.plant().config().steps_per_mm();
    assert!((stopped_at as f64 - 0.5 * steps_per_s).abs() <= 2.0, "{stopped_at}");
    // Latched: cannot restart until acknowledged.
    assert_eq!(write(&mut fw, "run_mode", 1.0), Err(ModbusException::ServerDeviceFailure));
    write(&mut fw, "alarm_ack", 1.0).unwrap();
    write(&mut fw, "heartbeat", 2.0).unwrap();
    write(&mut fw, "run_mode", 1.0).unwrap();
}

#[test]
fn heartbeats_keep_it_running() {
    let mut fw = infusing(60.0);
    for i in 1..=50 {
        fw.advance_to(f64::from(i) * 0.4).unwrap();
        write(&mut fw, "heartbeat", f64::from(i)).unwrap();
    }
    assert_eq!(fw.run_mode(), RunMode::Infuse);
    assert_eq!(fw.alarms(), 0);
}

#[test]
fn occlusion_fault_raises_line_pressure_and_the_pump_stops_at_its_limit() {
    let mut fw = infusing(100.0);
    fw.inject("fault_occlusion", 1.0).unwrap();
    let mut t = 0.0;
    while fw.alarms() == 0 && t < 600.0 {
        t += 0.25;
        fw.heartbeat();
        fw.advance_to(t).unwrap();
    }
    assert_ne!(fw.alarms() & (alarm::OVER_PRESSURE | alarm::MOTOR_STALL), 0, "{}", fw.alarms());
    assert_eq!(fw.run_mode(), RunMode::Stop);
}

#[test]
fn sensor_faults_show_in_telemetry() {
    let mut fw = infusing(30.0);
    run_to(&mut fw, 1.0);
    fw.inject("fault_air", 1.0).unwrap();
    fw.inject("fault_syringe_removed", 1.0).unwrap();
    fw.inject("fault_pressure_offset_mmhg", 100.0).unwrap();
    let p = read(&fw, "line_pressure_mmhg");
    assert_eq!(read(&fw, "air_in_line"), 1.0);
    assert_eq!(read(&fw, "syringe_present"), 0.0);
    assert!((p - (fw.plant().line_pressure_mmhg() + 100.0)).abs() < 1e-3);
    fw.inject("fault_sensor_freeze", 1.0).unwrap();
    let counts = read(&fw, "encoder_counts");
    run_to(&mut fw, 10.0);
    assert_eq!(read(&fw, "encoder_counts"), counts);
    assert!(fw.plant().encoder_counts() as f64 > counts);
}

#[test]
fn power_loss_clears_volatile_state_and_latches_reset() {
    let mut fw = infusing(60.0);
    fw.heartbeat();
    fw.advance_to(0.3).unwrap();
    write(&mut fw, "fault_reset", 1.0).unwrap();
    assert_eq!(fw.run_mode(), RunMode::Stop);
    assert_eq!(read(&fw, "alarm_bits"), f64::from(alarm::RESET));
    assert_eq!(read(&fw, "rate_ml_h"), 0.0);
    assert_eq!(read(&fw, "infused_ml"), 0.0);
    assert_eq!(read(&fw, "uptime_ms"), 0.0);
}

#[test]
fn scheduled_faults_apply_at_their_time() {
    let mut fw = infusing(60.0);
    fw.schedule(2.0, "fault_air", 1.0).unwrap();
    assert!(fw.schedule(1.0, "fault_nonexistent", 1.0).is_err());
    assert!(fw.schedule(1.0, "rate_ml_h", 1.0).is_err());
    fw.heartbeat();
    fw.advance_to(0.4).unwrap();
    fw.heartbeat();
    fw.advance_to(1.9).unwrap();
    assert_eq!(read(&fw, "air_in_line"), 0.0);
    fw.advance_to(2.1).unwrap();
    assert_eq!(read(&fw, "air_in_line"), 1.0);
}

#[test]
fn wrong_diameter_gives_a_real_volume_error() {
    // Programmed for a 30 mL syringe while a 50 mL one is loaded: the firmware steps for the small bore,
    // so the real delivery is larger by the ratio of the areas.
    let mut fw = pump();
    write(&mut fw, "syringe_diameter_mm", 21.70).unwrap();
    write(&mut fw, "alarm_ack", 1.0).unwrap();
    write(&mut fw, "rate_ml_h", 36.0).unwrap();
    write(&mut fw, "run_mode", 1.0).unwrap();
    run_to(&mut fw, 240.0);
    let (believed0, real0) = (read(&fw, "infused_ml"), fw.plant().delivered_ml());
    run_to(&mut fw, 360.0);
    let believed = read(&fw, "infused_ml") - believed0;
    let real = fw.plant().delivered_ml() - real0;
    let ratio = (26.59f64 / 21.70).powi(2);
    assert!((believed - 1.2).abs() < 0.02, "{believed}");
    assert!((real / believed - ratio).abs() < 0.03, "{real} vs {believed}");
}

#[test]
fn comm_faults_are_decided_by_the_fault_registers() {
    let mut fw = pump();
    assert_eq!(fw.comm_action(), Default::default());
    fw.inject("fault_comm_silent", 1.0).unwrap();
    assert!(fw.comm_action().drop);
    fw.inject("fault_comm_silent", 0.0).unwrap();
    fw.inject("fault_comm_corrupt_pct", 100.0).unwrap();
    fw.inject("fault_comm_delay_ms", 250.0).unwrap();
    let a = fw.comm_action();
    assert!(a.corrupt && !a.drop && a.delay_ms == 250);
    fw.inject("fault_comm_drop_pct", 50.0).unwrap();
    let drops = (0..1000).filter(|_| fw.comm_action().drop).count();
    assert!((400..600).contains(&drops), "{drops}");
}

#[test]
fn motion_started_without_a_heartbeat_protocol_is_not_stopped_by_the_register_watchdog() {
    // New Era starts the motor with `run_unwatched`: its protection is safe mode, not the heartbeat.
    let mut fw = pump();
    write(&mut fw, "alarm_ack", 1.0).unwrap();
    write(&mut fw, "rate_ml_h", 60.0).unwrap();
    fw.run_unwatched(RunMode::Infuse).unwrap();
    fw.advance_to(5.0).unwrap();
    assert_eq!(fw.run_mode(), RunMode::Infuse);
    assert_eq!(fw.alarms(), 0);
    // The same motion started through the register is guarded.
    fw.run(RunMode::Stop).unwrap();
    write(&mut fw, "run_mode", 1.0).unwrap();
    fw.advance_to(6.0).unwrap();
    assert_eq!(fw.run_mode(), RunMode::Stop);
    assert_ne!(fw.alarms() & alarm::WATCHDOG, 0);
}

#[test]
fn a_batch_refused_for_the_pump_state_writes_nothing() {
    // rate_ml_h (20–21) then run_mode (22) in one write, while the reset alarm is latched: run_mode is
    // refused with exception 4, so the rate must not have been written either.
    let mut fw = pump();
    let mut words = encode(RegType::F32, 42.0);
    words.push(1);
    assert_eq!(fw.write_registers(20, &words), Err(ModbusException::ServerDeviceFailure));
    assert_eq!(read(&fw, "rate_ml_h"), 0.0);
    write(&mut fw, "alarm_ack", 1.0).unwrap();
    fw.write_registers(20, &words).unwrap();
    assert_eq!((read(&fw, "rate_ml_h"), fw.run_mode()), (42.0, RunMode::Infuse));
}

/// The operator's syringe change (`fault_load_syringe`): refused while the motor runs; once stopped, a
/// new full syringe replaces an empty one — the end of travel clears, the barrel reads full, the new
/// slack is crossed before the plunger moves, and the encoder counts on from where it was.
#[test]
fn a_new_syringe_is_loaded_only_while_stopped_and_delivers_again() {
    let mut cfg = PlantConfig::nominal_for("bd-plastipak-50").unwrap();
    cfg.slack_taken_up = true;
    cfg.fill_ml = 1.0;
    let mut fw = Firmware::new(cfg, 1234).unwrap();
    write(&mut fw, "alarm_ack", 1.0).unwrap();
    write(&mut fw, "rate_ml_h", 600.0).unwrap();
    write(&mut fw, "run_mode", 1.0).unwrap();
    run_to(&mut fw, 3.0);
    assert_eq!(write(&mut fw, "fault_load_syringe", 1.0), Err(ModbusException::ServerDeviceFailure));
    run_to(&mut fw, 12.0);
    assert_eq!(read(&fw, "end_of_travel"), 1.0);
    let emptied_at = read(&fw, "plunger_volume_ml");
    assert!((emptied_at - 1.0).abs() < 0.01, "{emptied_at}");
    write(&mut fw, "run_mode", 0.0).unwrap();
    assert_eq!(write(&mut fw, "fault_load_syringe", 0.0), Err(ModbusException::IllegalDataValue));
    write(&mut fw, "fault_load_syringe", 1.0).unwrap();
    assert_eq!(read(&fw, "end_of_travel"), 0.0);
    // The end-of-travel alarm's condition is gone with the empty syringe: it can be acknowledged.
    write(&mut fw, "alarm_ack", 1.0).unwrap();
    assert!((read(&fw, "syringe_volume_ml") - 1.0).abs() < 1e-3);
    assert_eq!(read(&fw, "plunger_volume_ml"), emptied_at);
    // The new slack (0.3 mm ≈ 0.17 mL here) is crossed first: at 60 mL/h that takes about 10 s.
    write(&mut fw, "rate_ml_h", 60.0).unwrap();
    write(&mut fw, "run_mode", 1.0).unwrap();
    run_to(&mut fw, 15.0);
    assert_eq!(read(&fw, "plunger_volume_ml"), emptied_at);
    run_to(&mut fw, 60.0);
    let moved = read(&fw, "plunger_volume_ml") - emptied_at;
    assert!(moved > 0.3 && moved < 0.8, "{moved}");
    assert_eq!(read(&fw, "alarm_bits"), 0.0);
}

/// Every readable register's words: the pump's state as a client can see it.
fn snapshot(fw: &Firmware) -> Vec<(String, Vec<u16>)> {
    let registers: Vec<_> = fw.map().registers.iter().filter(|r| r.access != Access::Wo).cloned().collect();
    registers.iter().map(|r| (r.name.clone(), fw.read_registers(r.address, r.ty.words()).unwrap())).collect()
}

#[test]
fn a_single_write_refused_for_the_pump_state_changes_nothing() {
    // A one-register write is applied without a trial copy: each refusal must come before any change.
    let mut alarmed = pump();
    let before = snapshot(&alarmed);
    assert_eq!(write(&mut alarmed, "run_mode", 1.0), Err(ModbusException::ServerDeviceFailure));
    assert_eq!(snapshot(&alarmed), before);
    let mut running = infusing(10.0);
    run_to(&mut running, 2.0);
    let before = snapshot(&running);
    for (name, value) in [("syringe_diameter_mm", 20.0), ("clear_counters", 1.0), ("fault_load_syringe", 1.0)] {
        assert_eq!(write(&mut running, name, value), Err(ModbusException::ServerDeviceFailure), "{name}");
        assert_eq!(snapshot(&running), before, "{name}");
    }
}
