//! Bindings for the drug-library limits (`ketapump_core::limits`).
//!
//! Conversion only: Python hands over a drug's limits and an order, the core compares them and
//! derives the kernel settings, and the findings come back as plain objects. No comparison is made
//! here. Registered by [`register`] so the module's entry point needs one line.

use crate::errors::CoreError;
use ketapump_core::limits as lim;
use ketapump_core::units::UnitProblem;
use ketapump_core::{ConfigError, ConfigProblem};
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn refused(field: &'static str, problem: UnitProblem, value: f64, limit: f64) -> PyErr {
    CoreError::Config(ConfigError { field, problem: ConfigProblem::Value(problem), value, limit }).into()
}

/// An optional number as Python prints it.
fn py_float(value: Option<f64>) -> String {
    value.map_or_else(|| "None".to_owned(), |v| format!("{v:?}"))
}

/// The hard and soft bounds of one kind; `None` is a missing bound.
#[pyclass(frozen, get_all, module = "ketapump._core")]
#[derive(Clone, Copy)]
pub struct Limit {
    hard_min: Option<f64>,
    soft_min: Option<f64>,
    soft_max: Option<f64>,
    hard_max: Option<f64>,
}

impl Limit {
    fn core_limit(&self) -> lim::Limit {
        lim::Limit {
            hard_min: self.hard_min,
            soft_min: self.soft_min,
            soft_max: self.soft_max,
            hard_max: self.hard_max,
        }
    }
}

#[pymethods]
impl Limit {
    #[new]
    #[pyo3(signature = (*, hard_min = None, soft_min = None, soft_max = None, hard_max = None))]
    fn new(
        hard_min: Option<f64>,
        soft_min: Option<f64>,
        soft_max: Option<f64>,
        hard_max: Option<f64>,
    ) -> PyResult<Self> {
        for (field, value) in
            [("hard_min", hard_min), ("soft_min", soft_min), ("soft_max", soft_max), ("hard_max", hard_max)]
        {
            if let Some(v) = value.filter(|v| !v.is_finite()) {
                return Err(refused(field, UnitProblem::NotFinite, v, f64::NAN));
            }
        }
        Ok(Self { hard_min, soft_min, soft_max, hard_max })
    }

    fn __repr__(&self) -> String {
        format!(
            "Limit(hard_min={}, soft_min={}, soft_max={}, hard_max={})",
            py_float(self.hard_min),
            py_float(self.soft_min),
            py_float(self.soft_max),
            py_float(self.hard_max)
        )
    }
}

/// Generates `DrugLimits.__new__` (keyword-only, each table optional) from the core struct's field
/// names, so the Python names can never drift from the Rust ones.
macro_rules! drug_limits_class {
    ($($field:ident),* $(,)?) => {
        /// The limits of one drug entry.
        #[pyclass(frozen, module = "ketapump._core")]
        pub struct DrugLimits {
            inner: lim::DrugLimits,
        }

        #[pymethods]
        impl DrugLimits {
            #[new]
            #[pyo3(signature = (*, $($field = None,)* cap_tolerance = 0.0))]
            #[allow(clippy::too_many_arguments)]
            fn new($($field: Option<PyRef<'_, Limit>>,)* cap_tolerance: f64) -> PyResult<Self> {
                if !cap_tolerance.is_finite() {
                    return Err(refused("cap_tolerance", UnitProblem::NotFinite, cap_tolerance, f64::NAN));
                }
                if cap_tolerance < 0.0 {
                    return Err(refused("cap_tolerance", UnitProblem::BelowMinimum, cap_tolerance, 0.0));
                }
                Ok(Self {
                    inner: lim::DrugLimits {
                        $($field: $field.map_or(lim::Limit::NONE, |l| l.core_limit()),)*
                        cap_tolerance,
                    },
                })
            }

            fn __repr__(&self) -> String {
                format!("DrugLimits({:?})", self.inner)
            }
        }
    };
}

drug_limits_class!(
    weight_kg,
    concentration_mg_per_ml,
    dose_mg_per_kg,
    dose_rate_mg_per_kg_h,
    duration_min,
    bolus_mg_per_kg,
    bolus_rate_mg_per_kg_min,
    cumulative_1h_mg_per_kg,
    cumulative_4h_mg_per_kg,
    cumulative_7d_mg_per_kg,
    vtbi_ml,
    hours_since_last_start,
    sessions_in_7_days,
    height_cm,
    bmi_kg_m2,
    weight_change_pct,
    dosing_weight_pct,
);

/// An order as the core checks it (every field required; see `ketapump.druglib.Order`).
#[pyclass(frozen, get_all, module = "ketapump._core")]
pub struct DrugOrder {
    weight_kg: f64,
    dosing_weight_kg: Option<f64>,
    concentration_mg_per_ml: f64,
    dose_mg_per_kg: f64,
    dose_rate_mg_per_kg_h: f64,
    duration_min: f64,
    vtbi_ml: f64,
    bolus_mg_per_kg: f64,
    bolus_rate_mg_per_kg_min: f64,
    cumulative_1h_mg_per_kg: f64,
    cumulative_4h_mg_per_kg: f64,
    cumulative_7d_mg_per_kg: f64,
    hours_since_last_start: Option<f64>,
    sessions_in_7_days: u32,
    height_cm: Option<f64>,
    bmi_kg_m2: Option<f64>,
    weight_change_pct: Option<f64>,
    dosing_weight_pct: Option<f64>,
}

impl DrugOrder {
    fn to_core(&self) -> lim::Order {
        lim::Order {
            weight_kg: self.weight_kg,
            dosing_weight_kg: self.dosing_weight_kg,
            concentration_mg_per_ml: self.concentration_mg_per_ml,
            dose_mg_per_kg: self.dose_mg_per_kg,
            dose_rate_mg_per_kg_h: self.dose_rate_mg_per_kg_h,
            duration_min: self.duration_min,
            vtbi_ml: self.vtbi_ml,
            bolus_mg_per_kg: self.bolus_mg_per_kg,
            bolus_rate_mg_per_kg_min: self.bolus_rate_mg_per_kg_min,
            cumulative_1h_mg_per_kg: self.cumulative_1h_mg_per_kg,
            cumulative_4h_mg_per_kg: self.cumulative_4h_mg_per_kg,
            cumulative_7d_mg_per_kg: self.cumulative_7d_mg_per_kg,
            hours_since_last_start: self.hours_since_last_start,
            sessions_in_7_days: self.sessions_in_7_days,
            height_cm: self.height_cm,
            bmi_kg_m2: self.bmi_kg_m2,
            weight_change_pct: self.weight_change_pct,
            dosing_weight_pct: self.dosing_weight_pct,
        }
    }
}

#[pymethods]
impl DrugOrder {
    #[new]
    #[pyo3(signature = (*, weight_kg, dosing_weight_kg, concentration_mg_per_ml, dose_mg_per_kg, dose_rate_mg_per_kg_h, duration_min, vtbi_ml, bolus_mg_per_kg, bolus_rate_mg_per_kg_min, cumulative_1h_mg_per_kg, cumulative_4h_mg_per_kg, cumulative_7d_mg_per_kg, hours_since_last_start, sessions_in_7_days, height_cm = None, bmi_kg_m2 = None, weight_change_pct = None, dosing_weight_pct = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        weight_kg: f64,
        dosing_weight_kg: Option<f64>,
        concentration_mg_per_ml: f64,
        dose_mg_per_kg: f64,
        dose_rate_mg_per_kg_h: f64,
        duration_min: f64,
        vtbi_ml: f64,
        bolus_mg_per_kg: f64,
        bolus_rate_mg_per_kg_min: f64,
        cumulative_1h_mg_per_kg: f64,
        cumulative_4h_mg_per_kg: f64,
        cumulative_7d_mg_per_kg: f64,
        hours_since_last_start: Option<f64>,
        sessions_in_7_days: i64,
        height_cm: Option<f64>,
        bmi_kg_m2: Option<f64>,
        weight_change_pct: Option<f64>,
        dosing_weight_pct: Option<f64>,
    ) -> PyResult<Self> {
        // A count is a count: a negative or huge one is a caller's bug, not a limit finding.
        let sessions_in_7_days = u32::try_from(sessions_in_7_days).map_err(|_| {
            let (problem, limit) = if sessions_in_7_days < 0 {
                (UnitProblem::BelowMinimum, 0.0)
            } else {
                (UnitProblem::AboveMaximum, f64::from(u32::MAX))
            };
            // An i64 count as a float for the message; the precision lost above 2^53 does not matter.
            #[allow(clippy::cast_precision_loss)]
            refused("sessions_in_7_days", problem, sessions_in_7_days as f64, limit)
        })?;
        Ok(Self {
            weight_kg,
            dosing_weight_kg,
            concentration_mg_per_ml,
            dose_mg_per_kg,
            dose_rate_mg_per_kg_h,
            duration_min,
            vtbi_ml,
            bolus_mg_per_kg,
            bolus_rate_mg_per_kg_min,
            cumulative_1h_mg_per_kg,
            cumulative_4h_mg_per_kg,
            cumulative_7d_mg_per_kg,
            hours_since_last_start,
            sessions_in_7_days,
            height_cm,
            bmi_kg_m2,
            weight_change_pct,
            dosing_weight_pct,
        })
    }

    fn __repr__(&self) -> String {
        format!("DrugOrder({:?})", self.to_core())
    }
}

/// One crossed limit.
#[pyclass(frozen, get_all, module = "ketapump._core")]
pub struct Finding {
    kind: &'static str,
    severity: &'static str,
    bound: &'static str,
    value: f64,
    limit: Option<f64>,
    unit: &'static str,
}

impl From<&lim::Finding> for Finding {
    fn from(f: &lim::Finding) -> Self {
        Self {
            kind: f.kind.as_str(),
            severity: f.severity.as_str(),
            bound: f.bound.as_str(),
            value: f.value,
            limit: f.limit,
            unit: f.kind.unit(),
        }
    }
}

#[pymethods]
impl Finding {
    fn __repr__(&self) -> String {
        format!(
            "Finding(kind={:?}, severity={:?}, bound={:?}, value={}, limit={}, unit={:?})",
            self.kind,
            self.severity,
            self.bound,
            self.value,
            py_float(self.limit),
            self.unit
        )
    }
}

/// Every finding of `order` against `limits`, in kind order (empty: within every limit).
#[pyfunction]
fn check_order(limits: &DrugLimits, order: &DrugOrder) -> Vec<Finding> {
    lim::check_order(&limits.inner, &order.to_core()).iter().map(Finding::from).collect()
}

/// The kernel settings derived from the hard limits for `order`, keyed by kernel setting name, or
/// `None` when the order has a hard finding.
#[pyfunction]
fn kernel_limits<'py>(
    py: Python<'py>,
    limits: &DrugLimits,
    order: &DrugOrder,
    device_max_rate_ml_h: f64,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(k) = lim::kernel_limits(&limits.inner, &order.to_core(), device_max_rate_ml_h) else {
        return Ok(None);
    };
    let d = PyDict::new(py);
    d.set_item("concentration_mg_per_ml", k.concentration_mg_per_ml)?;
    d.set_item("max_rate_ml_h", k.max_rate_ml_h)?;
    d.set_item("hard_cap_mg", k.hard_cap_mg)?;
    Ok(Some(d))
}

/// Adds the limit classes, functions and `LIMIT_KINDS` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let kinds: Vec<(&str, &str)> = lim::LimitKind::ALL.iter().map(|k| (k.as_str(), k.unit())).collect();
    m.add("LIMIT_KINDS", kinds)?;
    m.add_class::<Limit>()?;
    m.add_class::<DrugLimits>()?;
    m.add_class::<DrugOrder>()?;
    m.add_class::<Finding>()?;
    m.add_function(wrap_pyfunction!(check_order, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_limits, m)?)?;
    Ok(())
}
