//! The runner: steps the kernel and the hw-sim plant together at the kernel's control period, applies
//! the scenario's faults, rate change and bridge restart, lets the line settle and checks the
//! invariants; the [`Outcome`] says how the run went and what it broke.

use super::invariants::{
    check_accuracy, check_cumulative_cap, check_occlusion, check_overdose, LatchMonitor, OcclusionRecord, Violation,
};
use super::scenario::{derive_scenario, Fault, Scenario};
use super::spec::{err, plant_config, CampaignError, CampaignSpec};
use crate::fnv1a;
use ketapump_core::{
    AlarmSet, Direction, KernelConfig, RawKernelConfig, SafetyKernel, StateKind, StepOutput, Telemetry,
};
use ketapump_hwsim::{Plant, SplitMix64, MMHG_PER_CM_H2O};

/// How a run went and what it broke.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub seed: u64,
    pub syringe: &'static str,
    pub rate_ml_h: f64,
    pub programmed_ml: f64,
    /// Drug given before the run (mg).
    pub prior_mg: f64,
    /// The program was above what the cap allowed after the prior dose.
    pub over_cap: bool,
    /// Why the kernel refused an over-cap program (nothing ran); `None`: it ran.
    pub refused: Option<String>,
    /// Volume that reached the patient after the line settled (the plant's).
    pub delivered_ml: f64,
    /// Most the patient had received at any tick or after settling.
    pub peak_delivered_ml: f64,
    /// Volume the kernels measured with the encoder, all programs together.
    pub measured_ml: f64,
    /// Volume a raised pump's line compliance released by itself (allowed on top of S3).
    pub hydrostatic_ml: f64,
    /// One microstep of the drive (mL).
    pub step_ml: f64,
    pub faults: Vec<Fault>,
    pub restarts: u32,
    pub rate_changed: bool,
    /// State of the last kernel when the run ended.
    pub state: StateKind,
    /// Alarms latched by the last kernel.
    pub alarms: AlarmSet,
    pub first_alarm_s: Option<f64>,
    pub occlusion: Option<OcclusionRecord>,
    /// S5 deadline, when the occlusion crossed the threshold.
    pub occlusion_deadline_s: Option<f64>,
    /// Peak true line pressure during the run (mmHg).
    pub peak_pressure_mmhg: f64,
    /// Plant time when the loop ended (before settling) (s).
    pub end_s: f64,
    pub timed_out: bool,
    pub ticks: u64,
    /// FNV-1a over (tick, state, direction, rate) every second and at every state change, and the
    /// final delivered volume: equal hashes, equal runs.
    pub trace_hash: u64,
    pub violations: Vec<Violation>,
}

#[inline]
fn motor_ml_h(out: &StepOutput) -> f64 {
    let r = out.command.rate_ml_s * 3_600.0;
    match out.command.direction {
        Direction::Forward => r,
        Direction::Retract => -r,
        Direction::Hold => 0.0,
    }
}

fn hash_tick(hash: u64, n: u64, out: &StepOutput) -> u64 {
    let h = fnv1a(hash, n);
    let h = fnv1a(h, out.state as u64);
    let h = fnv1a(h, out.command.direction as u64);
    fnv1a(h, out.command.rate_ml_s.to_bits())
}

/// The pump runs what the kernel commands (a new rate only when it changes).
#[inline(always)]
fn obey(plant: &mut Plant, out: &StepOutput, motor_ml_h_now: &mut f64, field: &str) -> Result<(), CampaignError> {
    let motor = motor_ml_h(out);
    if motor != *motor_ml_h_now {
        plant.set_motor_rate_ml_h(motor).map_err(plant_err(field))?;
        *motor_ml_h_now = motor;
    }
    Ok(())
}

/// Hashes the tick every second and at every state change.
#[inline]
fn record(hash: &mut u64, last_state: &mut StateKind, n: u64, out: &StepOutput) {
    if n % 10 == 0 || out.state != *last_state {
        *hash = hash_tick(*hash, n, out);
        *last_state = out.state;
    }
}

fn plant_err(field: &str) -> impl Fn(ketapump_hwsim::PlantError) -> CampaignError + '_ {
    move |e| err(field, format!("refused by the plant: {e}"))
}

fn kernel_for(raw: RawKernelConfig) -> Result<SafetyKernel, CampaignError> {
    KernelConfig::from_raw(raw)
        .map(SafetyKernel::new)
        .map_err(|e| err(&format!("kernel.{}", e.field), format!("refused for this run: {e}")))
}

/// Loads and starts a program on a fresh kernel, after one step that shows it the pump's state.
fn start_kernel(
    kernel: &mut SafetyKernel,
    t_s: f64,
    sample: &Telemetry,
    rate_ml_h: f64,
    vtbi_ml: f64,
    take_up: bool,
) -> Result<(), CampaignError> {
    kernel.step(t_s, sample);
    kernel.load(rate_ml_h, vtbi_ml, take_up).map_err(|e| err("infusion", format!("program refused: {e:?}")))?;
    kernel.start().map_err(|e| err("infusion", format!("start refused: {e:?}")))
}

/// Runs the scenario of `seed`. `spec` should have been validated against `config` (an unvalidated
/// one never panics, but its numbers are meaningless).
pub fn run(config: &KernelConfig, spec: &CampaignSpec, seed: u64) -> Result<Outcome, CampaignError> {
    let sc = derive_scenario(spec, config, seed)?;
    run_scenario(config, spec, &sc)
}

/// Runs a derived scenario (see [`run`]).
pub fn run_scenario(config: &KernelConfig, spec: &CampaignSpec, sc: &Scenario) -> Result<Outcome, CampaignError> {
    let limits = spec.limits;
    let mut pcfg = plant_config(sc.syringe.name, config, 1.0)?;
    pcfg.fill_ml = sc.fill_ml;
    pcfg.slack_taken_up = sc.slack_taken_up;
    pcfg.compliance_ml_per_mmhg = sc.compliance_ml_per_mmhg;
    pcfg.resistance_mmhg_s_per_ml = sc.resistance_mmhg_s_per_ml;
    pcfg.patient_pressure_mmhg = sc.patient_pressure_mmhg;
    pcfg.seed = sc.seed;
    let step_ml = pcfg.ml_per_step();
    let fluid_c = pcfg.fluid_compliance_ml_per_mmhg();
    let mut plant = Plant::new(pcfg).map_err(plant_err("plant"))?;
    let mut noise = SplitMix64::new(sc.noise_seed);

    let raw = RawKernelConfig {
        syringe_diameter_mm: sc.syringe.inner_diameter_mm,
        syringe_capacity_ml: sc.syringe.capacity_ml,
        syringe_fill_ml: sc.fill_ml,
        prior_delivered_mg: sc.prior_mg,
        ..config.raw
    };
    // What the bridge converts a recovered volume with at a restart: the configuration's concentration.
    let configured_mg_per_ml = config.mg_per_ml();
    let dt = config.raw.control_period_s;
    let observe_ticks = (spec.run.observe_after_alarm_s / dt).ceil() as u64;
    let max_ticks = (sc.t_max_s / dt).ceil() as u64;
    let p_eq_start = sc.patient_pressure_mmhg;
    let mut p_eq_min = p_eq_start;

    let sample_at = |plant: &Plant, t_s: f64, noise: &mut SplitMix64, air: bool| Telemetry {
        t_s,
        volume_ml: plant.encoder_volume_ml(),
        pressure_mmhg: plant.line_pressure_mmhg() + sc.pressure_noise_sd_mmhg * noise.next_gaussian(),
        motor_running: plant.motor_running(),
        air_in_line: air,
        syringe_present: true,
        end_of_travel: plant.end_of_travel(),
    };

    let mut air = false;
    let first = sample_at(&plant, 0.0, &mut noise, air);
    let started = kernel_for(raw).and_then(|mut k| {
        start_kernel(&mut k, 0.0, &first, sc.rate_ml_h, sc.vtbi_ml, sc.take_up)?;
        Ok(k)
    });
    // An over-cap program refused is the safe outcome (nothing runs); any other refusal is an error.
    let (mut kernel, refused) = match started {
        Ok(k) => (Some(k), None),
        Err(e) if sc.over_cap => (None, Some(e.to_string())),
        Err(e) => return Err(e),
    };
    let origin_ml = plant.encoder_volume_ml();

    let mut pending: Vec<Fault> = sc.faults.clone();
    let mut rate_change = sc.rate_change;
    let mut restart = sc.restart;
    let mut rate_ml_h = sc.rate_ml_h;
    let mut motor_ml_h_now = 0.0_f64;
    // Bridge down: (plant time the watchdog stops the motor, plant time the new kernel starts).
    let mut down: Option<(f64, f64)> = None;
    let mut restarts = 0_u32;
    let mut occluded = false;
    let mut occlusion: Option<OcclusionRecord> = None;
    let mut latch = LatchMonitor::default();
    let mut first_alarm: Option<(u64, f64)> = None;
    let mut peak_delivered = plant.delivered_ml();
    let mut peak_pressure = plant.line_pressure_mmhg();
    let mut hash = crate::FNV_OFFSET;
    let mut last_state = StateKind::Running;
    let mut timed_out = false;
    let mut completed_at_restart = false;
    let mut n = 0_u64;

    while let Some(kernel) = kernel.as_mut() {
        n += 1;
        let t = n as f64 * dt;
        plant.step(dt).map_err(plant_err("run"))?;

        // Scheduled faults due by now, applied at this tick.
        let mut k = 0;
        while k < pending.len() {
            let fault = pending[k];
            if fault.at_s() > t {
                k += 1;
                continue;
            }
            match fault {
                Fault::Occlusion { factor, clear_at_s, .. } => {
                    if !occluded && occlusion.is_none() {
                        occlusion = Some(OcclusionRecord {
                            onset_s: t,
                            p0_mmhg: plant.line_pressure_mmhg(),
                            rate_ml_s: rate_ml_h / 3_600.0,
                            compliance_ml_per_mmhg: plant.compliance_ml_per_mmhg(),
                            crossed_s: None,
                        });
                        plant.set_occlusion_factor(factor).map_err(plant_err("occlusion.factor"))?;
                        occluded = true;
                        if let Some(clear) = clear_at_s {
                            // Re-queued as its own event: a cleared occlusion is a factor of 1.
                            pending.push(Fault::Occlusion { at_s: clear, factor: 1.0, clear_at_s: None });
                        }
                    } else {
                        plant.clear_occlusion();
                        occluded = false;
                    }
                }
                Fault::Air { .. } => air = true,
                Fault::HeadHeight { height_cm, .. } => {
                    plant.set_head_height_cm(height_cm).map_err(plant_err("head_height.height_cm"))?;
                    p_eq_min = p_eq_min.min(sc.patient_pressure_mmhg - height_cm * MMHG_PER_CM_H2O);
                }
                Fault::StuckEncoder { .. } => plant.set_encoder_slip(1.0).map_err(plant_err("stuck_encoder"))?,
                Fault::EncoderSlip { fraction, .. } => {
                    plant.set_encoder_slip(fraction).map_err(plant_err("encoder_slip.fraction"))?;
                }
                Fault::DriveStall { .. } => plant.set_motor_stalled(true),
            }
            pending.swap_remove(k);
        }

        let pressure = plant.line_pressure_mmhg();
        peak_pressure = peak_pressure.max(pressure);
        peak_delivered = peak_delivered.max(plant.delivered_ml());
        if let Some(rec) = occlusion.as_mut() {
            if occluded && rec.crossed_s.is_none() && pressure > limits.occlusion_threshold_mmhg {
                rec.crossed_s = Some(t);
            }
        }

        // The bridge is down: the pump runs on until its watchdog, then holds; then a new kernel.
        if let Some((stop_at, resume_at)) = down {
            if t >= stop_at && motor_ml_h_now != 0.0 {
                motor_ml_h_now = 0.0;
                plant.set_motor_rate_ml_h(0.0).map_err(plant_err("restart"))?;
            }
            if t < resume_at {
                if n >= max_ticks {
                    timed_out = true;
                    break;
                }
                continue;
            }
            down = None;
            let recovered_ml = plant.encoder_volume_ml() - origin_ml;
            let remaining_ml = sc.vtbi_ml - recovered_ml;
            if remaining_ml <= config.volume_quantum_ml {
                completed_at_restart = true;
                break;
            }
            let raw = RawKernelConfig {
                syringe_fill_ml: (sc.fill_ml - recovered_ml).max(0.0),
                prior_delivered_mg: sc.prior_mg + recovered_ml * configured_mg_per_ml,
                ..raw
            };
            *kernel = kernel_for(raw)?;
            let sample = sample_at(&plant, t, &mut noise, air);
            start_kernel(kernel, t, &sample, rate_ml_h, remaining_ml, false)?;
            restarts += 1;
            // The new kernel's first command comes with the next tick.
            if n >= max_ticks {
                timed_out = true;
                break;
            }
            continue;
        }

        if let Some((at, new_rate)) = rate_change {
            if t >= at {
                rate_change = None;
                // Refused only in a state where no program runs (after an alarm or the end): moot.
                if kernel.set_rate(new_rate).is_ok() {
                    rate_ml_h = new_rate;
                    if let (true, Some(rec)) = (occluded, occlusion.as_mut()) {
                        rec.rate_ml_s = rec.rate_ml_s.min(new_rate / 3_600.0);
                    }
                }
            }
        }

        let sample = sample_at(&plant, t, &mut noise, air);
        let out = kernel.step(t, &sample);
        latch.observe(t, &out);
        if first_alarm.is_none() && !out.alarms.is_empty() {
            first_alarm = Some((n, t));
        }
        obey(&mut plant, &out, &mut motor_ml_h_now, "run")?;
        record(&mut hash, &mut last_state, n, &out);

        if out.state == StateKind::Complete {
            break;
        }
        if let Some((alarm_tick, _)) = first_alarm {
            if n >= alarm_tick + observe_ticks {
                break;
            }
        }
        if n >= max_ticks {
            timed_out = true;
            break;
        }
        if let Some((at, gap)) = restart {
            if t >= at {
                restart = None;
                if out.state == StateKind::Running && out.alarms.is_empty() {
                    down = Some((t + spec.restart.watchdog_s, t + gap));
                }
            }
        }
    }
    let end_s = n as f64 * dt;
    let measured_ml = plant.encoder_volume_ml() - origin_ml;

    // The line is eventually opened and left alone: whatever the compliance stored reaches the patient.
    // A completed program stays loaded and watched meanwhile, as the bridge keeps stepping the kernel
    // until it is unloaded: a siphon after the end is the kernel's to catch, and its command is obeyed.
    plant.set_motor_rate_ml_h(0.0).map_err(plant_err("run"))?;
    motor_ml_h_now = 0.0;
    plant.clear_occlusion();
    let mut watching = kernel.as_mut().filter(|k| !completed_at_restart && k.state_kind() == StateKind::Complete);
    let settle_ticks = (spec.run.settle_s / dt).ceil() as u64;
    for _ in 0..settle_ticks {
        plant.step(dt).map_err(plant_err("run.settle_s"))?;
        peak_delivered = peak_delivered.max(plant.delivered_ml());
        if let Some(kernel) = watching.as_mut() {
            n += 1;
            let t = n as f64 * dt;
            let out = kernel.step(t, &sample_at(&plant, t, &mut noise, air));
            latch.observe(t, &out);
            obey(&mut plant, &out, &mut motor_ml_h_now, "run.settle_s")?;
            record(&mut hash, &mut last_state, n, &out);
        }
    }
    plant.set_motor_rate_ml_h(0.0).map_err(plant_err("run"))?;
    let delivered_ml = plant.delivered_ml();
    hash = fnv1a(hash, delivered_ml.to_bits());

    // A restart that finds the dose already delivered ends the run as complete.
    let state = match &kernel {
        _ if completed_at_restart => StateKind::Complete,
        Some(k) => k.state_kind(),
        None => StateKind::Idle,
    };
    let alarms = kernel.as_ref().map_or(AlarmSet::EMPTY, SafetyKernel::alarms);
    let first_alarm_s = first_alarm.map(|(_, t)| t);
    let hydrostatic_ml = fluid_c * (p_eq_start - p_eq_min).max(0.0);

    let mut violations = Vec::new();
    violations.extend(check_overdose(sc.vtbi_ml, peak_delivered, limits.dose_tolerance, step_ml, hydrostatic_ml));
    violations.extend(check_cumulative_cap(
        sc.prior_mg,
        peak_delivered,
        limits.concentration_mg_per_ml,
        step_ml,
        limits.hard_cap_mg,
    ));
    if let Some(rec) = occlusion.as_ref() {
        violations.extend(check_occlusion(rec, first_alarm_s, &limits));
    }
    violations.extend(latch.violation());
    if sc.fault_free() && !sc.over_cap {
        violations.extend(check_accuracy(sc.vtbi_ml, delivered_ml, limits.accuracy_tolerance, state, alarms));
    }

    Ok(Outcome {
        seed: sc.seed,
        syringe: sc.syringe.name,
        rate_ml_h: sc.rate_ml_h,
        programmed_ml: sc.vtbi_ml,
        prior_mg: sc.prior_mg,
        over_cap: sc.over_cap,
        refused,
        delivered_ml,
        peak_delivered_ml: peak_delivered,
        measured_ml,
        hydrostatic_ml,
        step_ml,
        faults: sc.faults.clone(),
        restarts,
        rate_changed: sc.rate_change.is_some(),
        state,
        alarms,
        first_alarm_s,
        occlusion,
        occlusion_deadline_s: occlusion.and_then(|r| r.deadline_s(&limits)),
        peak_pressure_mmhg: peak_pressure,
        end_s,
        timed_out,
        ticks: n,
        trace_hash: hash,
        violations,
    })
}
