//! The simulated firmware of the "ketapump reference pump": register semantics, the pump-side
//! watchdog, pump-side alarms, counters and fault injection, on top of the [`Plant`].
//!
//! Time is injected: [`Firmware::advance_to`] moves the plant and the firmware to a pump time, handling
//! scheduled faults and the watchdog deadline exactly when they fall. Nothing here reads a clock.
//!
//! The firmware converts rates with the syringe diameter it was *told* (register
//! `syringe_diameter_mm`), while the plant moves the syringe it *has*: programming the wrong
//! syringe gives a real volume error, as on a real pump.
//!
//! Pump-side alarms latch until acknowledged (`alarm_ack`) and stop the motor:
//! reset (power-up), watchdog (no heartbeat within `watchdog_ms` while running), motor stall (steps
//! lost), end of travel, over-pressure (the pump's own hard limit).
//!
//! # Two ways of counting volume
//!
//! The reference pump's `infused_ml` / `withdrawn_ml` registers follow the **plunger encoder**: this
//! pump has one, and what reached the plunger (after lead-screw slack, a stall, a slipping nut) is what
//! the bridge's kernel must measure. A New Era NE-1000 has no plunger sensor: it counts **stepper
//! motion** (steps × mL per step for the programmed diameter), so the New Era emulation's `DIS`
//! counters and `VOL` target use [`Firmware::motor_infused_ml`] / [`Firmware::motor_withdrawn_ml`],
//! which run from the first step even while the slack is being taken up.

use crate::plant::{Plant, PlantConfig, PlantError};
use crate::regmap::{Access, ModbusException, Register, RegisterMap, MAX_READ_REGISTERS, MAX_WRITE_REGISTERS};
use crate::rng::SplitMix64;

/// Pump-side alarm bits (register `alarm_bits`).
pub mod alarm {
    pub const RESET: u16 = 1 << 0;
    pub const WATCHDOG: u16 = 1 << 1;
    pub const MOTOR_STALL: u16 = 1 << 2;
    pub const END_OF_TRAVEL: u16 = 1 << 3;
    pub const OVER_PRESSURE: u16 = 1 << 4;
}

/// Identity constants of the simulated pump.
pub const VENDOR_ID: u16 = 0x4B50;
pub const MODEL: u16 = 1;
pub const FIRMWARE_VERSION: u16 = 100;
pub const PUMP_MAX_RATE_ML_H: f64 = 1_200.0;
pub const DEFAULT_WATCHDOG_MS: u16 = 500;
/// The pump's own over-pressure limit (mmHg), independent of the bridge's kernel.
pub const OVER_PRESSURE_MMHG: f64 = 1_500.0;
/// Motor steps that may be lost while running before the stall alarm (0.05 mm of nut travel).
const STALL_LOST_MM: f64 = 0.05;
/// Resistance multiplier of a closed line.
const OCCLUSION_FACTOR: f64 = 1.0e6;

/// Motor mode (register `run_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Stop = 0,
    Infuse = 1,
    Withdraw = 2,
}

/// What the transport should do with the next reply (communication faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommAction {
    /// Send nothing at all (dropped reply or a silent pump).
    pub drop: bool,
    /// Send the reply with a corrupted checksum.
    pub corrupt: bool,
    /// Wait this long before replying.
    pub delay_ms: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Faults {
    air: bool,
    sensor_freeze: bool,
    pressure_offset_mmhg: f64,
    pressure_noise_mmhg: f64,
    syringe_removed: bool,
    comm_drop_pct: u16,
    comm_delay_ms: u16,
    comm_corrupt_pct: u16,
    comm_silent: bool,
}

/// The readable telemetry at one instant (what the telemetry registers show).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Telemetry {
    pub encoder_counts: i64,
    pub plunger_volume_ml: f64,
    pub line_pressure_mmhg: f64,
    pub air_in_line: bool,
    pub syringe_present: bool,
    pub end_of_travel: bool,
    pub motor_running: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct ScheduledFault {
    at_s: f64,
    name: String,
    value: f64,
}

/// One simulated pump.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// What each register means: the shipped map's names, access and the firmware's own limits.
    map: RegisterMap,
    /// How the registers appear on Modbus: the shipped map, or another map in the same schema
    /// ([`Firmware::set_wire_map`]): addresses, types, scaling, word and byte order, function codes.
    wire: RegisterMap,
    plant: Plant,
    serial: u32,
    rng: SplitMix64,
    // Volatile firmware state (lost on reset).
    boot_t_s: f64,
    rate_ml_h: f64,
    run_mode: RunMode,
    alarms: u16,
    watchdog_ms: u16,
    heartbeat: u16,
    last_heartbeat_t_s: f64,
    /// The register watchdog guards motion started over the register interface only: a New Era
    /// pump has no such watchdog (its protection is safe mode's communication timeout).
    watchdog_armed: bool,
    infused_ml: f64,
    withdrawn_ml: f64,
    counted_encoder_ml: f64,
    /// Stepper-motion counters (New Era `DIS`), see the module notes.
    motor_infused_ml: f64,
    motor_withdrawn_ml: f64,
    counted_motor_steps: i64,
    lost_steps_at_run: i64,
    volume_target_ml: Option<f64>,
    target_origin_ml: f64,
    // Non-volatile settings.
    diameter_mm: f64,
    faults: Faults,
    frozen: Option<Telemetry>,
    pressure_noise_sample: f64,
    schedule: Vec<ScheduledFault>,
}

impl Firmware {
    /// A pump at power-up (reset alarm latched) around a plant.
    pub fn new(plant_cfg: PlantConfig, serial: u32) -> Result<Self, PlantError> {
        let diameter_mm = plant_cfg.syringe.inner_diameter_mm;
        let seed = plant_cfg.seed ^ 0x5EED_F1F1;
        let plant = Plant::new(plant_cfg)?;
        let encoder = plant.encoder_volume_ml();
        let motor_steps = plant.motor_position_steps();
        let shipped = RegisterMap::shipped();
        let mut fw = Self {
            wire: shipped.clone(),
            map: shipped,
            plant,
            serial,
            rng: SplitMix64::new(seed),
            boot_t_s: 0.0,
            rate_ml_h: 0.0,
            run_mode: RunMode::Stop,
            alarms: alarm::RESET,
            watchdog_ms: DEFAULT_WATCHDOG_MS,
            heartbeat: 0,
            last_heartbeat_t_s: 0.0,
            watchdog_armed: false,
            infused_ml: 0.0,
            withdrawn_ml: 0.0,
            counted_encoder_ml: encoder,
            motor_infused_ml: 0.0,
            motor_withdrawn_ml: 0.0,
            counted_motor_steps: motor_steps,
            lost_steps_at_run: 0,
            volume_target_ml: None,
            target_origin_ml: 0.0,
            diameter_mm,
            faults: Faults::default(),
            frozen: None,
            pressure_noise_sample: 0.0,
            schedule: Vec::new(),
        };
        fw.counted_encoder_ml = fw.encoder_ml();
        Ok(fw)
    }

    /// The shipped map: what each register means (names, access, the firmware's limits).
    pub fn map(&self) -> &RegisterMap {
        &self.map
    }
    /// The map Modbus requests are served with.
    pub fn wire_map(&self) -> &RegisterMap {
        &self.wire
    }
    /// Serves Modbus with `map` (checked by [`RegisterMap::parse`]) instead of the shipped map: the
    /// same firmware, laid out as `map` says; registers it lacks are simply not there.
    pub fn set_wire_map(&mut self, map: RegisterMap) {
        self.wire = map;
    }
    pub fn plant(&self) -> &Plant {
        &self.plant
    }
    pub fn plant_mut(&mut self) -> &mut Plant {
        &mut self.plant
    }
    /// Pump time (s).
    pub fn t_s(&self) -> f64 {
        self.plant.t_s()
    }
    pub fn alarms(&self) -> u16 {
        self.alarms
    }
    pub fn run_mode(&self) -> RunMode {
        self.run_mode
    }
    pub fn rate_ml_h(&self) -> f64 {
        self.rate_ml_h
    }
    pub fn diameter_mm(&self) -> f64 {
        self.diameter_mm
    }
    pub fn infused_ml(&self) -> f64 {
        self.infused_ml
    }
    pub fn withdrawn_ml(&self) -> f64 {
        self.withdrawn_ml
    }
    /// Volume the motor has pushed since the counters were cleared: steps × mL per step for the
    /// programmed diameter (what a pump without a plunger sensor reports).
    pub fn motor_infused_ml(&self) -> f64 {
        self.motor_infused_ml
    }
    /// Volume the motor has pulled back since the counters were cleared (see [`Firmware::motor_infused_ml`]).
    pub fn motor_withdrawn_ml(&self) -> f64 {
        self.motor_withdrawn_ml
    }

    /// 0 stopped, 1 infusing, 2 withdrawing, 3 alarm.
    pub fn status(&self) -> u16 {
        if self.alarms != 0 {
            3
        } else {
            self.run_mode as u16
        }
    }

    /// mL per mm of plunger travel for the programmed diameter.
    fn ml_per_mm(&self) -> f64 {
        core::f64::consts::PI * self.diameter_mm * self.diameter_mm / 4.0 / 1_000.0
    }

    fn encoder_ml(&self) -> f64 {
        self.plant.encoder_counts() as f64 / self.plant.config().encoder_counts_per_mm * self.ml_per_mm()
    }

    // ----- time ----------------------------------------------------------------------------

    /// Advances plant and firmware to pump time `t_s` (earlier times are ignored).
    pub fn advance_to(&mut self, t_s: f64) -> Result<(), PlantError> {
        if !t_s.is_finite() {
            return Err(PlantError::NotFinite("time"));
        }
        loop {
            let now = self.plant.t_s();
            // The plant keeps whole nanoseconds: anything closer than that is "now".
            if now >= t_s - 1.0e-9 {
                return Ok(());
            }
            let next_fault = self.schedule.first().map_or(f64::INFINITY, |f| f.at_s);
            let deadline = if self.run_mode == RunMode::Stop || !self.watchdog_armed {
                f64::INFINITY
            } else {
                self.last_heartbeat_t_s + f64::from(self.watchdog_ms) / 1_000.0
            };
            let until = t_s.min(next_fault).min(deadline).max(now + 1.0e-9);
            self.plant.step(until - now)?;
            self.update_after_motion();
            if self.plant.t_s() >= deadline - 1.0e-9 && self.run_mode != RunMode::Stop && self.watchdog_armed {
                self.latch(alarm::WATCHDOG);
            }
            while self.schedule.first().is_some_and(|f| f.at_s <= self.plant.t_s() + 1.0e-9) {
                let f = self.schedule.remove(0);
                // Validated when scheduled.
                let _ = self.inject(&f.name, f.value);
            }
        }
    }

    /// mL one motor step moves for the programmed diameter.
    fn ml_per_step(&self) -> f64 {
        self.ml_per_mm() / self.plant.config().steps_per_mm()
    }

    /// Counters, stall, end of travel, over-pressure and the NE volume target after plant motion.
    fn update_after_motion(&mut self) {
        let encoder = self.encoder_ml();
        let moved = encoder - self.counted_encoder_ml;
        if moved > 0.0 {
            self.infused_ml += moved;
        } else {
            self.withdrawn_ml -= moved;
        }
        self.counted_encoder_ml = encoder;
        let steps = self.plant.motor_position_steps();
        let stepped_ml = (steps - self.counted_motor_steps) as f64 * self.ml_per_step();
        if stepped_ml > 0.0 {
            self.motor_infused_ml += stepped_ml;
        } else {
            self.motor_withdrawn_ml -= stepped_ml;
        }
        self.counted_motor_steps = steps;
        self.pressure_noise_sample = self.rng.next_gaussian() * self.faults.pressure_noise_mmhg;
        if self.run_mode == RunMode::Stop {
            return;
        }
        let lost = self.lost_steps() - self.lost_steps_at_run;
        if lost as f64 > STALL_LOST_MM * self.plant.config().steps_per_mm() {
            self.latch(alarm::MOTOR_STALL);
        }
        if self.run_mode == RunMode::Infuse && self.plant.end_of_travel() {
            self.latch(alarm::END_OF_TRAVEL);
        }
        if self.plant.line_pressure_mmhg() > OVER_PRESSURE_MMHG {
            self.latch(alarm::OVER_PRESSURE);
        }
        if let Some(target) = self.volume_target_ml {
            // The New Era target counts motor motion, as its DIS counters do.
            let done = match self.run_mode {
                RunMode::Infuse => self.motor_infused_ml - self.target_origin_ml,
                _ => self.motor_withdrawn_ml - self.target_origin_ml,
            };
            if done >= target {
                self.set_motor(RunMode::Stop);
            }
        }
    }

    fn lost_steps(&self) -> i64 {
        (self.plant.motor_position_steps() - self.plant.nut_position_steps()).abs()
    }

    /// Latches an alarm and stops the motor.
    fn latch(&mut self, bit: u16) {
        self.alarms |= bit;
        self.set_motor(RunMode::Stop);
    }

    fn set_motor(&mut self, mode: RunMode) {
        self.run_mode = mode;
        let steps_per_s = self.rate_ml_h / 3_600.0 / self.ml_per_mm() * self.plant.config().steps_per_mm();
        let signed = match mode {
            RunMode::Stop => 0.0,
            RunMode::Infuse => steps_per_s,
            RunMode::Withdraw => -steps_per_s,
        };
        // The rate is validated on write, so the plant cannot refuse it.
        let _ = self.plant.set_motor_rate_steps_per_s(signed);
    }

    // ----- commands (shared by the register map and the New Era codec) ----------------------

    /// Sets the commanded rate; applies at once if the motor is running.
    pub fn set_rate_ml_h(&mut self, rate: f64) -> Result<(), ModbusException> {
        self.write_named("rate_ml_h", rate)
    }

    /// Starts (infuse or withdraw) or stops the motor, as a `run_mode` register write: motion started
    /// this way is guarded by the heartbeat watchdog.
    pub fn run(&mut self, mode: RunMode) -> Result<(), ModbusException> {
        self.write_named("run_mode", f64::from(mode as u16))
    }

    /// Starts or stops the motor for a protocol that has no heartbeat (New Era): the same checks as
    /// [`Firmware::run`], but the register watchdog does not guard this motion.
    pub fn run_unwatched(&mut self, mode: RunMode) -> Result<(), ModbusException> {
        self.run(mode)?;
        self.watchdog_armed = false;
        Ok(())
    }

    pub fn set_diameter_mm(&mut self, diameter: f64) -> Result<(), ModbusException> {
        self.write_named("syringe_diameter_mm", diameter)
    }

    /// Clears the latched alarms whose condition has cleared.
    pub fn acknowledge(&mut self) {
        let mut keep = 0;
        if self.plant.end_of_travel() && self.alarms & alarm::END_OF_TRAVEL != 0 {
            keep |= alarm::END_OF_TRAVEL;
        }
        if self.plant.line_pressure_mmhg() > OVER_PRESSURE_MMHG {
            keep |= self.alarms & alarm::OVER_PRESSURE;
        }
        self.alarms = keep;
    }

    /// Refreshes the watchdog.
    pub fn heartbeat(&mut self) {
        self.heartbeat = self.heartbeat.wrapping_add(1);
        self.last_heartbeat_t_s = self.plant.t_s();
    }

    pub fn clear_counters(&mut self) -> Result<(), ModbusException> {
        self.write_named("clear_counters", 1.0)
    }

    /// Stop automatically once the motor has moved this volume in the current direction (New Era
    /// `VOL`, counted like its `DIS`: by steps); `None` pumps until stopped.
    pub fn set_volume_target(&mut self, target_ml: Option<f64>) {
        self.volume_target_ml = target_ml;
        self.target_origin_ml = match self.run_mode {
            RunMode::Withdraw => self.motor_withdrawn_ml,
            _ => self.motor_infused_ml,
        };
    }

    /// Power loss and restart: volatile state lost, reset alarm latched, the plant untouched.
    pub fn power_cycle(&mut self) {
        self.set_motor(RunMode::Stop);
        self.boot_t_s = self.plant.t_s();
        self.rate_ml_h = 0.0;
        self.alarms = alarm::RESET;
        self.watchdog_ms = DEFAULT_WATCHDOG_MS;
        self.heartbeat = 0;
        self.last_heartbeat_t_s = self.plant.t_s();
        self.clear_volume_counters();
        self.volume_target_ml = None;
    }

    /// Zeroes the plunger and the motor counters (power-up, `clear_counters`).
    fn clear_volume_counters(&mut self) {
        self.infused_ml = 0.0;
        self.withdrawn_ml = 0.0;
        self.counted_encoder_ml = self.encoder_ml();
        self.motor_infused_ml = 0.0;
        self.motor_withdrawn_ml = 0.0;
        self.counted_motor_steps = self.plant.motor_position_steps();
    }

    // ----- faults --------------------------------------------------------------------------

    /// Injects a fault by its register name (e.g. `"fault_occlusion"`, `1.0`), with the same
    /// validation as a register write.
    pub fn inject(&mut self, name: &str, value: f64) -> Result<(), String> {
        let register = self.map.by_name(name).ok_or_else(|| format!("unknown fault {name}"))?;
        if register.block != "fault" {
            return Err(format!("{name} is not a fault register"));
        }
        self.write_named(name, value).map_err(|e| format!("{name} = {value} refused ({e:?})"))
    }

    /// Schedules a fault at pump time `at_s`.
    pub fn schedule(&mut self, at_s: f64, name: &str, value: f64) -> Result<(), String> {
        let register = self.map.by_name(name).ok_or_else(|| format!("unknown fault {name}"))?;
        if register.block != "fault" || !register.accepts(value) || !at_s.is_finite() {
            return Err(format!("fault {name} = {value} at {at_s} s is not valid"));
        }
        let at = self.schedule.partition_point(|f| f.at_s <= at_s);
        self.schedule.insert(at, ScheduledFault { at_s, name: name.to_owned(), value });
        Ok(())
    }

    /// Decides the fate of the next reply from the communication faults.
    pub fn comm_action(&mut self) -> CommAction {
        let f = self.faults;
        let roll = |rng: &mut SplitMix64, pct: u16| pct > 0 && rng.next_unit_open0() * 100.0 < f64::from(pct);
        CommAction {
            drop: f.comm_silent || roll(&mut self.rng, f.comm_drop_pct),
            corrupt: roll(&mut self.rng, f.comm_corrupt_pct),
            delay_ms: f.comm_delay_ms,
        }
    }

    // ----- telemetry -----------------------------------------------------------------------

    /// Live sensor values (or the frozen ones while `fault_sensor_freeze` is set).
    pub fn telemetry(&self) -> Telemetry {
        if let Some(frozen) = self.frozen {
            return frozen;
        }
        self.live_telemetry()
    }

    fn live_telemetry(&self) -> Telemetry {
        let p = &self.plant;
        Telemetry {
            encoder_counts: p.encoder_counts(),
            plunger_volume_ml: self.encoder_ml(),
            line_pressure_mmhg: p.line_pressure_mmhg() + self.faults.pressure_offset_mmhg + self.pressure_noise_sample,
            air_in_line: self.faults.air,
            syringe_present: !self.faults.syringe_removed,
            end_of_travel: p.end_of_travel(),
            motor_running: self.run_mode != RunMode::Stop && p.motor_running(),
        }
    }

    /// The current value of a register by name.
    pub fn value(&self, name: &str) -> f64 {
        let t = self.telemetry();
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        match name {
            "vendor_id" => f64::from(VENDOR_ID),
            "model" => f64::from(MODEL),
            "firmware_version" => f64::from(FIRMWARE_VERSION),
            "map_version" => f64::from(self.wire.map_version),
            "serial_number" => f64::from(self.serial),
            "pump_max_rate_ml_h" => PUMP_MAX_RATE_ML_H,
            "syringe_diameter_mm" => self.diameter_mm,
            "syringe_volume_ml" => self.plant.remaining_ml(),
            "rate_ml_h" => self.rate_ml_h,
            "run_mode" => f64::from(self.run_mode as u16),
            "heartbeat" => f64::from(self.heartbeat),
            "watchdog_ms" => f64::from(self.watchdog_ms),
            "encoder_counts" => t.encoder_counts as f64,
            "plunger_volume_ml" => t.plunger_volume_ml,
            "line_pressure_mmhg" => t.line_pressure_mmhg,
            "air_in_line" => flag(t.air_in_line),
            "syringe_present" => flag(t.syringe_present),
            "end_of_travel" => flag(t.end_of_travel),
            "motor_running" => flag(t.motor_running),
            "status" => f64::from(self.status()),
            "alarm_bits" => f64::from(self.alarms),
            "infused_ml" => self.infused_ml,
            "withdrawn_ml" => self.withdrawn_ml,
            "uptime_ms" => ((self.plant.t_s() - self.boot_t_s) * 1_000.0).floor(),
            "heartbeat_age_ms" => ((self.plant.t_s() - self.last_heartbeat_t_s) * 1_000.0).floor().min(65_535.0),
            "fault_occlusion" => flag(self.plant.occlusion_factor() > 1.0),
            "fault_air" => flag(self.faults.air),
            "fault_motor_stall" => flag(self.plant.motor_stalled()),
            "fault_encoder_slip_pct" => (self.plant.encoder_lost_fraction() * 100.0).round(),
            "fault_sensor_freeze" => flag(self.faults.sensor_freeze),
            "fault_pressure_offset_mmhg" => self.faults.pressure_offset_mmhg,
            "fault_pressure_noise_mmhg" => self.faults.pressure_noise_mmhg,
            "fault_unclamped" => flag(self.plant.unclamped()),
            "fault_head_height_cm" => self.plant.head_height_cm(),
            "fault_syringe_removed" => flag(self.faults.syringe_removed),
            "fault_comm_drop_pct" => f64::from(self.faults.comm_drop_pct),
            "fault_comm_delay_ms" => f64::from(self.faults.comm_delay_ms),
            "fault_comm_corrupt_pct" => f64::from(self.faults.comm_corrupt_pct),
            "fault_comm_silent" => flag(self.faults.comm_silent),
            // Write-only registers read as 0.
            _ => 0.0,
        }
    }

    // ----- registers -----------------------------------------------------------------------

    /// Modbus functions 3 and 4: reads `count` words from `address`. As the Modbus application
    /// protocol orders the checks: a quantity outside 1..=125 is exception 3, then any word outside
    /// the map exception 2.
    pub fn read_registers(&self, address: u16, count: u16) -> Result<Vec<u16>, ModbusException> {
        if count == 0 || count > MAX_READ_REGISTERS {
            return Err(ModbusException::IllegalDataValue);
        }
        let mut words = Vec::with_capacity(usize::from(count));
        let mut a = address;
        let end = u32::from(address) + u32::from(count);
        while u32::from(a) < end {
            let (register, offset) = self.wire.at(a).ok_or(ModbusException::IllegalDataAddress)?;
            let value = if register.access == Access::Wo { 0.0 } else { self.value(&register.name) };
            let encoded = self.wire.encode_saturating(register, value);
            for word in encoded.into_iter().skip(usize::from(offset)) {
                if u32::from(a) >= end {
                    break;
                }
                words.push(word);
                a = a.wrapping_add(1);
            }
        }
        Ok(words)
    }

    /// Modbus functions 6 and 16: writes `values` from `address`. Every register touched must be
    /// writable, written whole, in range and acceptable now; otherwise nothing is written. Checks in
    /// the Modbus order: the quantity (3), every address (2), then every value (3), then the state (4).
    pub fn write_registers(&mut self, address: u16, values: &[u16]) -> Result<(), ModbusException> {
        if values.is_empty() || values.len() > usize::from(MAX_WRITE_REGISTERS) {
            return Err(ModbusException::IllegalDataValue);
        }
        let mut targets: Vec<(&Register, &[u16])> = Vec::new();
        let mut i = 0usize;
        while i < values.len() {
            let a = address.checked_add(i as u16).ok_or(ModbusException::IllegalDataAddress)?;
            let (register, offset) = self.wire.at(a).ok_or(ModbusException::IllegalDataAddress)?;
            let words = usize::from(register.ty.words());
            if offset != 0 || i + words > values.len() || register.access == Access::Ro {
                return Err(ModbusException::IllegalDataAddress);
            }
            targets.push((register, &values[i..i + words]));
            i += words;
        }
        let mut writes: Vec<(String, f64)> = Vec::with_capacity(targets.len());
        for (register, words) in targets {
            let value = self.wire.decode(register, words);
            // The map's own range first, then the firmware's (a map cannot widen what the pump does).
            let own = self.map.by_name(&register.name).ok_or(ModbusException::IllegalDataAddress)?;
            if !register.accepts(value) || !own.accepts(value) {
                return Err(ModbusException::IllegalDataValue);
            }
            writes.push((register.name.clone(), value));
        }
        // One register (the heartbeat every control tick, a rate, a run mode): `apply` refuses before
        // it changes anything, so it is all or nothing by itself, without copying the firmware.
        if let [(name, value)] = writes.as_slice() {
            return self.apply(name, *value);
        }
        // All or nothing, also for refusals that depend on state (exception 4): a batch runs on a
        // copy, which replaces the firmware only if every register was accepted.
        let mut trial = self.clone();
        for (name, value) in writes {
            trial.apply(&name, value)?;
        }
        *self = trial;
        Ok(())
    }

    fn write_named(&mut self, name: &str, value: f64) -> Result<(), ModbusException> {
        let register: &Register = self.map.by_name(name).ok_or(ModbusException::IllegalDataAddress)?;
        if register.access == Access::Ro {
            return Err(ModbusException::IllegalDataAddress);
        }
        if !register.accepts(value) {
            return Err(ModbusException::IllegalDataValue);
        }
        self.apply(name, value)
    }

    /// Applies one validated write. A refusal MUST come before anything is changed: a single-register
    /// write relies on it to be all or nothing (`write_registers`).
    fn apply(&mut self, name: &str, value: f64) -> Result<(), ModbusException> {
        let on = value != 0.0;
        match name {
            "syringe_diameter_mm" => {
                if self.run_mode != RunMode::Stop {
                    return Err(ModbusException::ServerDeviceFailure);
                }
                self.diameter_mm = value;
                self.counted_encoder_ml = self.encoder_ml();
            }
            "rate_ml_h" => {
                self.rate_ml_h = value;
                let mode = self.run_mode;
                self.set_motor(mode);
            }
            "run_mode" => {
                let mode = match value as u16 {
                    1 => RunMode::Infuse,
                    2 => RunMode::Withdraw,
                    _ => RunMode::Stop,
                };
                if mode != RunMode::Stop && self.alarms != 0 {
                    return Err(ModbusException::ServerDeviceFailure);
                }
                if mode != RunMode::Stop && self.run_mode == RunMode::Stop {
                    self.lost_steps_at_run = self.lost_steps();
                    self.last_heartbeat_t_s = self.plant.t_s();
                }
                self.watchdog_armed = mode != RunMode::Stop;
                self.set_motor(mode);
            }
            "alarm_ack" => self.acknowledge(),
            "heartbeat" => {
                self.heartbeat();
                self.heartbeat = value as u16;
            }
            "watchdog_ms" => self.watchdog_ms = value as u16,
            "clear_counters" => {
                if self.run_mode != RunMode::Stop {
                    return Err(ModbusException::ServerDeviceFailure);
                }
                self.clear_volume_counters();
            }
            "fault_occlusion" => {
                if on {
                    let _ = self.plant.set_occlusion_factor(OCCLUSION_FACTOR);
                } else {
                    self.plant.clear_occlusion();
                }
            }
            "fault_air" => self.faults.air = on,
            "fault_motor_stall" => self.plant.set_motor_stalled(on),
            "fault_encoder_slip_pct" => {
                let _ = self.plant.set_encoder_slip(value / 100.0);
            }
            "fault_sensor_freeze" => {
                self.frozen = if on { Some(self.live_telemetry()) } else { None };
                self.faults.sensor_freeze = on;
            }
            "fault_pressure_offset_mmhg" => self.faults.pressure_offset_mmhg = value,
            "fault_pressure_noise_mmhg" => self.faults.pressure_noise_mmhg = value,
            "fault_unclamped" => self.plant.set_unclamped(on),
            "fault_head_height_cm" => {
                let _ = self.plant.set_head_height_cm(value);
            }
            "fault_syringe_removed" => self.faults.syringe_removed = on,
            "fault_load_syringe" => {
                // The operator's hands: never into a pump whose motor is running.
                if self.run_mode != RunMode::Stop {
                    return Err(ModbusException::ServerDeviceFailure);
                }
                self.plant.load_syringe();
            }
            "fault_reset" => self.power_cycle(),
            "fault_comm_drop_pct" => self.faults.comm_drop_pct = value as u16,
            "fault_comm_delay_ms" => self.faults.comm_delay_ms = value as u16,
            "fault_comm_corrupt_pct" => self.faults.comm_corrupt_pct = value as u16,
            "fault_comm_silent" => self.faults.comm_silent = on,
            _ => return Err(ModbusException::IllegalDataAddress),
        }
        Ok(())
    }
}
