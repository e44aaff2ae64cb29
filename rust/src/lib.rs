//! `ketapump._core`: Python bindings for the ketapump safety kernel.
//!
//! The only crate that knows Python. It converts types, maps errors (see [`errors`]) and holds no
//! logic of its own: every decision is made in `ketapump-core`. Rates cross this boundary in mL/h
//! (the unit in every name), the controller's internals in mL/s as the core computes them.

mod campaign;
mod errors;
mod limits;
mod sim;

use errors::CoreError;
use ketapump_core as kc;
use ketapump_core::{AlarmSet, KernelConfig as CoreConfig, RawKernelConfig, S_PER_H};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

fn alarm_names(set: AlarmSet) -> Vec<&'static str> {
    set.iter().map(kc::Alarm::as_str).collect()
}

/// Generates `KernelConfig.__new__` (keyword-only, every field required) and `as_dict` from one list
/// of fields, so the Python names can never drift from the Rust ones.
macro_rules! kernel_config_class {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// Validated kernel configuration.
        #[pyclass(frozen, module = "ketapump._core")]
        pub struct KernelConfig {
            inner: CoreConfig,
        }

        #[pymethods]
        impl KernelConfig {
            #[new]
            #[pyo3(signature = (*, $($field),*))]
            #[allow(clippy::too_many_arguments)]
            fn new($($field: $ty),*) -> PyResult<Self> {
                let raw = RawKernelConfig { $($field),* };
                Ok(Self { inner: CoreConfig::from_raw(raw).map_err(CoreError::from)? })
            }

            /// Every setting as given, keyed by its keyword name.
            fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
                let d = PyDict::new(py);
                let raw = &self.inner.raw;
                $(d.set_item(stringify!($field), raw.$field)?;)*
                Ok(d)
            }

        /// Volume of one encoder count (mL).
        #[getter]
        fn volume_quantum_ml(&self) -> f64 {
            self.inner.volume_quantum_ml
        }

        /// Effective ceiling: min(max, hard max, pump max) (mL/h).
        #[getter]
        fn ceiling_ml_h(&self) -> f64 {
            self.inner.max_rate_ml_s * S_PER_H
        }

        fn __repr__(&self) -> String {
            format!("KernelConfig({:?})", self.inner.raw)
        }
        }
    };
}

kernel_config_class!(
    syringe_diameter_mm: f64,
    syringe_capacity_ml: f64,
    syringe_fill_ml: f64,
    encoder_counts_per_mm: f64,
    concentration_mg_per_ml: f64,
    max_rate_ml_h: f64,
    hard_max_rate_ml_h: f64,
    pump_max_rate_ml_h: f64,
    min_rate_ml_h: f64,
    dose_tolerance: f64,
    hard_cap_mg: f64,
    prior_delivered_mg: f64,
    has_pressure_sensor: bool,
    occlusion_threshold_mmhg: f64,
    hard_max_occlusion_threshold_mmhg: f64,
    slope_detector: bool,
    slope_rise_mmhg: f64,
    slope_fraction: f64,
    slope_arm_delay_s: f64,
    slope_rearm_increase: f64,
    slope_sustain_s: f64,
    slope_hold_fraction: f64,
    slope_sustained_rise_mmhg: f64,
    pressure_filter_s: f64,
    pressure_baseline_s: f64,
    compliance_ml_per_mmhg: f64,
    drive_stiffness_n_per_mm: f64,
    backoff: bool,
    backoff_margin_mmhg: f64,
    backoff_rate_ml_h: f64,
    stall_volume_ml: f64,
    flow_window_s: f64,
    flow_tolerance: f64,
    flow_min_volume_ml: f64,
    uncommanded_volume_ml: f64,
    encoder_mismatch_ml: f64,
    near_empty_ml: f64,
    near_empty_s: f64,
    stale_after_s: f64,
    control_period_s: f64,
    take_up_rate_ml_h: f64,
    take_up_max_ml: f64,
    take_up_detect_ml: f64,
    kp_per_s: f64,
    ki_per_s2: f64,
    integral_limit_ml_s: f64,
    slew_ml_h_per_s: f64,
    control_deadband_counts: f64,
    control_hold_s: f64,
    silence_s: f64,
);

/// The controller's per-term breakdown of one step (mL and mL/s).
#[pyclass(frozen, get_all, module = "ketapump._core")]
#[derive(Clone, Copy)]
pub struct ControlStatus {
    target_ml: f64,
    error_ml: f64,
    feed_forward_ml_s: f64,
    proportional_ml_s: f64,
    integral_ml_s: f64,
    output_ml_s: f64,
    saturated: bool,
    slew_limited: bool,
    integrating: bool,
    held: bool,
}

impl From<kc::ControlStatus> for ControlStatus {
    fn from(s: kc::ControlStatus) -> Self {
        Self {
            target_ml: s.target_ml,
            error_ml: s.error_ml,
            feed_forward_ml_s: s.feed_forward_ml_s,
            proportional_ml_s: s.proportional_ml_s,
            integral_ml_s: s.integral_ml_s,
            output_ml_s: s.output_ml_s,
            saturated: s.saturated,
            slew_limited: s.slew_limited,
            integrating: s.integrating,
            held: s.held,
        }
    }
}

/// The result of one kernel tick.
#[pyclass(frozen, module = "ketapump._core")]
pub struct StepOutput {
    inner: kc::StepOutput,
}

#[pymethods]
impl StepOutput {
    #[getter]
    fn direction(&self) -> &'static str {
        self.inner.command.direction.as_str()
    }
    #[getter]
    fn rate_ml_h(&self) -> f64 {
        self.inner.command.rate_ml_s * S_PER_H
    }
    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state.as_str()
    }
    #[getter]
    fn alarms<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, alarm_names(self.inner.alarms))
    }
    #[getter]
    fn raised<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, alarm_names(self.inner.raised))
    }
    #[getter]
    fn alarm_bits(&self) -> u32 {
        self.inner.alarms.0
    }
    #[getter]
    fn near_empty(&self) -> bool {
        self.inner.near_empty
    }
    #[getter]
    fn annunciate(&self) -> bool {
        self.inner.annunciate
    }
    #[getter]
    fn delivered_ml(&self) -> f64 {
        self.inner.delivered_ml
    }
    #[getter]
    fn remaining_ml(&self) -> f64 {
        self.inner.remaining_ml
    }
    #[getter]
    fn clamp(&self) -> &'static str {
        self.inner.clamp.as_str()
    }
    #[getter]
    fn control(&self) -> ControlStatus {
        self.inner.control.into()
    }
    fn __repr__(&self) -> String {
        format!(
            "StepOutput(state={:?}, direction={:?}, rate_ml_h={}, alarms={:?})",
            self.state(),
            self.direction(),
            self.rate_ml_h(),
            alarm_names(self.inner.alarms)
        )
    }
}

/// One recorded state-machine event.
#[pyclass(frozen, get_all, module = "ketapump._core")]
pub struct TraceEvent {
    seq: u64,
    t_s: f64,
    from_state: &'static str,
    to_state: &'static str,
    cause: &'static str,
    delivered_ml: f64,
}

#[pymethods]
impl TraceEvent {
    fn __repr__(&self) -> String {
        format!(
            "TraceEvent(seq={}, t_s={}, {} -> {}, cause={})",
            self.seq, self.t_s, self.from_state, self.to_state, self.cause
        )
    }
}

/// The safety kernel: the only way to obtain a motor command.
#[pyclass(module = "ketapump._core")]
pub struct SafetyKernel {
    inner: kc::SafetyKernel,
}

#[pymethods]
impl SafetyKernel {
    #[new]
    fn new(config: &KernelConfig) -> Self {
        Self { inner: kc::SafetyKernel::new(config.inner) }
    }

    #[pyo3(signature = (rate_ml_h, vtbi_ml, take_up = true, syringes = 1))]
    fn load(&mut self, rate_ml_h: f64, vtbi_ml: f64, take_up: bool, syringes: i64) -> PyResult<()> {
        // Out of u32's range is out of the core's (1..=MAX_SYRINGES) too: refused there, never a panic.
        let count = u32::try_from(syringes.clamp(0, i64::from(u32::MAX))).unwrap_or(0);
        Ok(self.inner.load_syringes(rate_ml_h, vtbi_ml, take_up, count).map_err(CoreError::from)?)
    }
    fn change_syringe(&mut self) -> PyResult<()> {
        Ok(self.inner.change_syringe().map_err(CoreError::from)?)
    }
    fn syringe_loaded(&mut self, fill_ml: f64) -> PyResult<()> {
        Ok(self.inner.syringe_loaded(fill_ml).map_err(CoreError::from)?)
    }
    fn start(&mut self) -> PyResult<()> {
        Ok(self.inner.start().map_err(CoreError::from)?)
    }
    fn pause(&mut self) -> PyResult<()> {
        Ok(self.inner.pause().map_err(CoreError::from)?)
    }
    fn resume(&mut self) -> PyResult<()> {
        Ok(self.inner.resume().map_err(CoreError::from)?)
    }
    fn stop(&mut self) -> PyResult<()> {
        Ok(self.inner.stop().map_err(CoreError::from)?)
    }
    fn acknowledge(&mut self) -> PyResult<()> {
        Ok(self.inner.acknowledge().map_err(CoreError::from)?)
    }
    fn silence(&mut self) -> PyResult<()> {
        Ok(self.inner.silence().map_err(CoreError::from)?)
    }
    fn unload(&mut self) -> PyResult<()> {
        Ok(self.inner.unload().map_err(CoreError::from)?)
    }
    fn set_rate(&mut self, rate_ml_h: f64) -> PyResult<()> {
        Ok(self.inner.set_rate(rate_ml_h).map_err(CoreError::from)?)
    }

    #[pyo3(signature = (now_s, t_s, volume_ml, pressure_mmhg, motor_running = false, air_in_line = false, syringe_present = true, end_of_travel = false))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        now_s: f64,
        t_s: f64,
        volume_ml: f64,
        pressure_mmhg: f64,
        motor_running: bool,
        air_in_line: bool,
        syringe_present: bool,
        end_of_travel: bool,
    ) -> StepOutput {
        let sample =
            kc::Telemetry { t_s, volume_ml, pressure_mmhg, motor_running, air_in_line, syringe_present, end_of_travel };
        StepOutput { inner: self.inner.step(now_s, &sample) }
    }

    /// Removes and returns every recorded event, oldest first.
    fn drain_trace(&mut self) -> Vec<TraceEvent> {
        let ring = self.inner.trace_mut();
        std::iter::from_fn(|| ring.pop())
            .map(|e| TraceEvent {
                seq: e.seq,
                t_s: e.t_s,
                from_state: e.from.as_str(),
                to_state: e.to.as_str(),
                cause: e.cause.as_str(),
                delivered_ml: e.delivered_ml,
            })
            .collect()
    }

    #[getter]
    fn trace_dropped(&self) -> u64 {
        self.inner.trace().dropped()
    }
    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state_kind().as_str()
    }
    #[getter]
    fn alarms<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, alarm_names(self.inner.alarms()))
    }
    #[getter]
    fn delivered_ml(&self) -> f64 {
        self.inner.delivered_ml()
    }
    #[getter]
    fn commanded_ml(&self) -> f64 {
        self.inner.commanded_ml()
    }
    #[getter]
    fn cumulative_mg(&self) -> f64 {
        self.inner.cumulative_mg()
    }
    #[getter]
    fn syringe_left_ml(&self) -> f64 {
        self.inner.syringe_left_ml()
    }
}

/// Feed-forward + quiet PI volume controller (mL, s); without `deadband_ml` and `hold_s` it decides on
/// every step (the per-step PI).
#[pyclass(module = "ketapump._core")]
pub struct RateController {
    inner: kc::RateController,
}

fn gain(field: &'static str, value: f64) -> Result<f64, CoreError> {
    let (min, max) = (0.0, 1.0e9);
    kc::units::check_range(value, min, false, max).map_err(|p| {
        let limit = match p {
            kc::units::UnitProblem::NotFinite => f64::NAN,
            kc::units::UnitProblem::BelowMinimum => min,
            kc::units::UnitProblem::AboveMaximum => max,
        };
        CoreError::Config(kc::ConfigError { field, problem: kc::ConfigProblem::Value(p), value, limit })
    })
}

#[pymethods]
impl RateController {
    #[new]
    #[pyo3(signature = (
        *, kp_per_s, ki_per_s2, integral_limit_ml_s, slew_ml_s_per_s, max_ml_s,
        deadband_ml = 0.0, hold_s = 0.0, quantum_ml = 0.0
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        kp_per_s: f64,
        ki_per_s2: f64,
        integral_limit_ml_s: f64,
        slew_ml_s_per_s: f64,
        max_ml_s: f64,
        deadband_ml: f64,
        hold_s: f64,
        quantum_ml: f64,
    ) -> PyResult<Self> {
        let gains = kc::Gains {
            kp_per_s: gain("kp_per_s", kp_per_s)?,
            ki_per_s2: gain("ki_per_s2", ki_per_s2)?,
            integral_limit_ml_s: gain("integral_limit_ml_s", integral_limit_ml_s)?,
            slew_ml_s_per_s: gain("slew_ml_s_per_s", slew_ml_s_per_s)?,
            max_ml_s: gain("max_ml_s", max_ml_s)?,
            deadband_ml: gain("deadband_ml", deadband_ml)?,
            hold_s: gain("hold_s", hold_s)?,
            quantum_ml: gain("quantum_ml", quantum_ml)?,
        };
        Ok(Self { inner: kc::RateController::new(gains) })
    }

    fn reset(&mut self, measured_ml: f64) -> PyResult<()> {
        if !measured_ml.is_finite() {
            return Err(CoreError::Control { input: "measured_ml", problem: kc::ControlError::NonFiniteInput }.into());
        }
        self.inner.reset(measured_ml);
        Ok(())
    }

    fn step(&mut self, setpoint_ml_s: f64, measured_ml: f64, dt_s: f64) -> PyResult<ControlStatus> {
        // Name the first offending input; an overflow of finite inputs is blamed on dt.
        let input = if !(setpoint_ml_s.is_finite() && setpoint_ml_s >= 0.0) {
            "setpoint_ml_s"
        } else if !measured_ml.is_finite() {
            "measured_ml"
        } else {
            "dt_s"
        };
        self.inner
            .step(setpoint_ml_s, measured_ml, dt_s)
            .map(ControlStatus::from)
            .map_err(|problem| CoreError::Control { input, problem }.into())
    }
}

/// Runs the KP-40MIN closed loop (kernel + controller + reference plant) entirely in Rust, with the
/// GIL released, for `ticks` ticks (default: all 2 400 000). Returns how it ended.
#[pyfunction]
#[pyo3(signature = (config, ticks = None))]
fn run_kp40min<'py>(py: Python<'py>, config: &KernelConfig, ticks: Option<u64>) -> PyResult<Bound<'py, PyDict>> {
    let scenario = ketapump_scenario::Kp40Min::STANDARD;
    let cfg = config.inner;
    // The one place the GIL is released: a whole run, no Python objects touched.
    let o = py.detach(|| ketapump_scenario::run_kp40min(cfg, &scenario, ticks.unwrap_or(scenario.ticks)));
    kp40min_dict(py, &o)
}

/// Runs `runs` independent KP-40MIN closed loops stepped together in lockstep lanes of `lanes`
/// (1, 2, 4 or 8), GIL released; returns one outcome per run, each exactly what `run_kp40min` gives.
#[pyfunction]
#[pyo3(signature = (config, runs, lanes, ticks = None))]
fn run_kp40min_lanes<'py>(
    py: Python<'py>,
    config: &KernelConfig,
    runs: usize,
    lanes: usize,
    ticks: Option<u64>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    if ![1, 2, 4, 8].contains(&lanes) {
        let problem = format!("must be 1, 2, 4 or 8 (got {lanes})");
        return Err(CoreError::Campaign { field: "lanes".to_owned(), problem }.into());
    }
    let scenarios = vec![ketapump_scenario::Kp40Min::STANDARD; runs];
    let cfg = config.inner;
    let ticks = ticks.unwrap_or(ketapump_scenario::Kp40Min::STANDARD.ticks);
    let outcomes = py.detach(|| ketapump_scenario::run_kp40min_lanes(cfg, &scenarios, ticks, lanes));
    outcomes.iter().map(|o| kp40min_dict(py, o)).collect()
}

fn kp40min_dict<'py>(py: Python<'py>, o: &ketapump_scenario::Outcome) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("ticks", o.ticks)?;
    d.set_item("state", o.state.as_str())?;
    d.set_item("alarms", alarm_names(AlarmSet(o.alarm_bits)))?;
    d.set_item("first_alarm_tick", o.first_alarm_tick)?;
    d.set_item("delivered_ml", o.delivered_ml)?;
    d.set_item("plunger_ml", o.plunger_ml)?;
    d.set_item("pressure_mmhg", o.pressure_mmhg)?;
    d.set_item("trace_hash", o.trace_hash)?;
    Ok(d)
}

/// The single choke point: clamps a requested forward rate (mL/s). Returns (rate, reason).
#[pyfunction]
fn clamp_rate(requested_ml_s: f64, max_ml_s: f64, headroom_ml: f64, period_s: f64) -> (f64, &'static str) {
    let (rate, reason) = kc::clamp_rate(requested_ml_s, kc::RateLimits { max_ml_s, headroom_ml, period_s });
    (rate, reason.as_str())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Which build is loaded (`ketapump --version`): benchmarks and timings mean nothing on a debug one.
    m.add("BUILD_PROFILE", if cfg!(debug_assertions) { "debug" } else { "release" })?;
    m.add("ALARMS", kc::Alarm::ALL.map(kc::Alarm::as_str).to_vec())?;
    m.add("MAX_SYRINGES", kc::MAX_SYRINGES)?;
    m.add_class::<KernelConfig>()?;
    m.add_class::<SafetyKernel>()?;
    m.add_class::<StepOutput>()?;
    m.add_class::<ControlStatus>()?;
    m.add_class::<TraceEvent>()?;
    m.add_class::<RateController>()?;
    m.add_function(wrap_pyfunction!(clamp_rate, m)?)?;
    m.add_function(wrap_pyfunction!(run_kp40min, m)?)?;
    m.add_function(wrap_pyfunction!(run_kp40min_lanes, m)?)?;
    m.add_function(wrap_pyfunction!(campaign::run_campaign, m)?)?;
    m.add_class::<sim::SimPump>()?;
    m.add_class::<sim::RtuPort>()?;
    m.add_class::<sim::ModbusTcpConnection>()?;
    m.add_class::<sim::NespPort>()?;
    limits::register(m)?;
    Ok(())
}
