//! `run_campaign`: a batch of seeded fault-campaign runs (`ketapump_scenario::campaign`) in one call,
//! the GIL released for the whole batch.
//!
//! The spec arrives as the plain dict that `ketapump.qa.campaign.CampaignSpec.model_dump()` produces
//! (the Python side validates it first and reports problems with their dotted paths); it is read here
//! into mirror structs and validated again by the Rust crate, so no value reaches a run unchecked.

use crate::errors::CoreError;
use crate::{alarm_names, KernelConfig};
use ketapump_scenario::campaign::{self as cp, CampaignError, Fault, Outcome};
use pyo3::prelude::*;
use pyo3::types::PyDict;

impl From<CampaignError> for CoreError {
    fn from(e: CampaignError) -> Self {
        CoreError::Campaign { field: e.field, problem: e.problem }
    }
}

fn range(r: [f64; 2]) -> cp::Range {
    cp::Range::new(r[0], r[1])
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Limits {
    occlusion_threshold_mmhg: f64,
    occlusion_latency_s: f64,
    dose_tolerance: f64,
    accuracy_tolerance: f64,
    hard_cap_mg: f64,
    concentration_mg_per_ml: f64,
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Infusion {
    syringes: Vec<String>,
    rate_ml_h: [f64; 2],
    duration_min: [f64; 2],
    fill_fraction: [f64; 2],
    take_up_probability: f64,
    rate_change_probability: f64,
    rate_change_factor: [f64; 2],
    over_cap_probability: f64,
    over_cap_headroom: [f64; 2],
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Plant {
    compliance_ml_per_mmhg: [f64; 2],
    resistance_mmhg_s_per_ml: [f64; 2],
    patient_pressure_mmhg: [f64; 2],
    slack_taken_up_probability: f64,
    pressure_noise_sd_mmhg: [f64; 2],
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Run {
    fault_window: [f64; 2],
    observe_after_alarm_s: f64,
    settle_s: f64,
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Restart {
    probability: f64,
    gap_s: [f64; 2],
    watchdog_s: f64,
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Occlusion {
    probability: f64,
    factor: [f64; 2],
    clear_probability: f64,
    clear_after_s: [f64; 2],
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Chance {
    probability: f64,
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct HeadHeight {
    probability: f64,
    height_cm: [f64; 2],
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct EncoderSlip {
    probability: f64,
    fraction: [f64; 2],
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Spec {
    limits: Limits,
    infusion: Infusion,
    plant: Plant,
    run: Run,
    restart: Restart,
    occlusion: Occlusion,
    air: Chance,
    head_height: HeadHeight,
    stuck_encoder: Chance,
    encoder_slip: EncoderSlip,
    drive_stall: Chance,
}

impl From<Spec> for cp::CampaignSpec {
    fn from(s: Spec) -> Self {
        cp::CampaignSpec {
            limits: cp::Limits {
                occlusion_threshold_mmhg: s.limits.occlusion_threshold_mmhg,
                occlusion_latency_s: s.limits.occlusion_latency_s,
                dose_tolerance: s.limits.dose_tolerance,
                accuracy_tolerance: s.limits.accuracy_tolerance,
                hard_cap_mg: s.limits.hard_cap_mg,
                concentration_mg_per_ml: s.limits.concentration_mg_per_ml,
            },
            infusion: cp::InfusionSpec {
                syringes: s.infusion.syringes,
                rate_ml_h: range(s.infusion.rate_ml_h),
                duration_min: range(s.infusion.duration_min),
                fill_fraction: range(s.infusion.fill_fraction),
                take_up_probability: s.infusion.take_up_probability,
                rate_change_probability: s.infusion.rate_change_probability,
                rate_change_factor: range(s.infusion.rate_change_factor),
                over_cap_probability: s.infusion.over_cap_probability,
                over_cap_headroom: range(s.infusion.over_cap_headroom),
            },
            plant: cp::PlantSpec {
                compliance_ml_per_mmhg: range(s.plant.compliance_ml_per_mmhg),
                resistance_mmhg_s_per_ml: range(s.plant.resistance_mmhg_s_per_ml),
                patient_pressure_mmhg: range(s.plant.patient_pressure_mmhg),
                slack_taken_up_probability: s.plant.slack_taken_up_probability,
                pressure_noise_sd_mmhg: range(s.plant.pressure_noise_sd_mmhg),
            },
            run: cp::RunSpec {
                fault_window: range(s.run.fault_window),
                observe_after_alarm_s: s.run.observe_after_alarm_s,
                settle_s: s.run.settle_s,
            },
            restart: cp::RestartSpec {
                probability: s.restart.probability,
                gap_s: range(s.restart.gap_s),
                watchdog_s: s.restart.watchdog_s,
            },
            occlusion: cp::OcclusionSpec {
                probability: s.occlusion.probability,
                factor: range(s.occlusion.factor),
                clear_probability: s.occlusion.clear_probability,
                clear_after_s: range(s.occlusion.clear_after_s),
            },
            air: cp::Chance { probability: s.air.probability },
            head_height: cp::HeadHeightSpec {
                probability: s.head_height.probability,
                height_cm: range(s.head_height.height_cm),
            },
            stuck_encoder: cp::Chance { probability: s.stuck_encoder.probability },
            encoder_slip: cp::EncoderSlipSpec {
                probability: s.encoder_slip.probability,
                fraction: range(s.encoder_slip.fraction),
            },
            drive_stall: cp::Chance { probability: s.drive_stall.probability },
        }
    }
}

fn fault_dict<'py>(py: Python<'py>, f: &Fault) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", f.name())?;
    d.set_item("at_s", f.at_s())?;
    match *f {
        Fault::Occlusion { factor, clear_at_s, .. } => {
            d.set_item("factor", factor)?;
            d.set_item("clear_at_s", clear_at_s)?;
        }
        Fault::HeadHeight { height_cm, .. } => d.set_item("height_cm", height_cm)?,
        Fault::EncoderSlip { fraction, .. } => d.set_item("fraction", fraction)?,
        Fault::Air { .. } | Fault::StuckEncoder { .. } | Fault::DriveStall { .. } => {}
    }
    Ok(d)
}

fn outcome_dict<'py>(py: Python<'py>, o: &Outcome) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("seed", o.seed)?;
    d.set_item("syringe", o.syringe)?;
    d.set_item("rate_ml_h", o.rate_ml_h)?;
    d.set_item("programmed_ml", o.programmed_ml)?;
    d.set_item("prior_mg", o.prior_mg)?;
    d.set_item("over_cap", o.over_cap)?;
    d.set_item("refused", o.refused.as_deref())?;
    d.set_item("delivered_ml", o.delivered_ml)?;
    d.set_item("peak_delivered_ml", o.peak_delivered_ml)?;
    d.set_item("measured_ml", o.measured_ml)?;
    d.set_item("hydrostatic_ml", o.hydrostatic_ml)?;
    d.set_item("step_ml", o.step_ml)?;
    let faults = o.faults.iter().map(|f| fault_dict(py, f)).collect::<PyResult<Vec<_>>>()?;
    d.set_item("faults", faults)?;
    d.set_item("restarts", o.restarts)?;
    d.set_item("rate_changed", o.rate_changed)?;
    d.set_item("state", o.state.as_str())?;
    d.set_item("alarms", alarm_names(o.alarms))?;
    d.set_item("first_alarm_s", o.first_alarm_s)?;
    d.set_item("occlusion_onset_s", o.occlusion.map(|r| r.onset_s))?;
    d.set_item("occlusion_crossed_s", o.occlusion.and_then(|r| r.crossed_s))?;
    d.set_item("occlusion_deadline_s", o.occlusion_deadline_s)?;
    d.set_item("peak_pressure_mmhg", o.peak_pressure_mmhg)?;
    d.set_item("end_s", o.end_s)?;
    d.set_item("timed_out", o.timed_out)?;
    d.set_item("ticks", o.ticks)?;
    d.set_item("trace_hash", o.trace_hash)?;
    let violations = o
        .violations
        .iter()
        .map(|v| {
            let vd = PyDict::new(py);
            vd.set_item("invariant", v.invariant.as_str())?;
            vd.set_item("detail", &v.detail)?;
            Ok(vd)
        })
        .collect::<PyResult<Vec<_>>>()?;
    d.set_item("violations", violations)?;
    Ok(d)
}

/// Runs the campaign scenario of every seed (kernel + hw-sim plant, closed loop, entirely in Rust)
/// with the GIL released for the whole batch; returns one outcome dict per seed, in order.
#[pyfunction]
pub fn run_campaign<'py>(
    py: Python<'py>,
    config: &KernelConfig,
    spec: &Bound<'py, PyAny>,
    seeds: Vec<u64>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let spec: cp::CampaignSpec = spec
        .extract::<Spec>()
        .map_err(|e| CoreError::Campaign { field: "spec".to_owned(), problem: format!("is malformed: {e}") })?
        .into();
    let cfg = config.inner;
    spec.validate(&cfg).map_err(CoreError::from)?;
    let outcomes = py
        .detach(|| seeds.iter().map(|&seed| cp::run(&cfg, &spec, seed)).collect::<Result<Vec<_>, _>>())
        .map_err(CoreError::from)?;
    outcomes.iter().map(|o| outcome_dict(py, o)).collect()
}
