//! The one mapping from core errors to the Python exception hierarchy of `ketapump.errors`.
//!
//! The exception classes are defined in Python (so users can import, subclass and document them) and
//! imported here; every fallible binding returns [`CoreError`], whose `From` impl is the only place a
//! Rust error becomes a Python exception.

use ketapump_core::{ConfigError, ConfigProblem, ControlError, KernelError};
use pyo3::PyErr;

pyo3::import_exception!(ketapump.errors, ConfigurationError);
pyo3::import_exception!(ketapump.errors, StateTransitionError);
pyo3::import_exception!(ketapump.errors, InterlockError);

/// Any error the core can return to a binding.
#[derive(Debug)]
pub enum CoreError {
    Config(ConfigError),
    Kernel(KernelError),
    Control {
        input: &'static str,
        problem: ControlError,
    },
    /// A simulator setting or fault was refused (`field` names it).
    Sim {
        field: String,
        problem: String,
    },
    /// A fault-campaign spec or run set-up was refused (`field` is its dotted path).
    Campaign {
        field: String,
        problem: String,
    },
}

impl From<ketapump_hwsim::PlantError> for CoreError {
    fn from(e: ketapump_hwsim::PlantError) -> Self {
        let field = match e {
            ketapump_hwsim::PlantError::NotFinite(what) | ketapump_hwsim::PlantError::OutOfRange(what) => what,
            ketapump_hwsim::PlantError::UnknownSyringe => "syringe",
        };
        let text = e.to_string();
        let problem = text.strip_prefix(field).unwrap_or(&text).trim().to_owned();
        CoreError::Sim { field: field.to_owned(), problem }
    }
}

impl From<ConfigError> for CoreError {
    fn from(e: ConfigError) -> Self {
        CoreError::Config(e)
    }
}

impl From<KernelError> for CoreError {
    fn from(e: KernelError) -> Self {
        CoreError::Kernel(e)
    }
}

fn problem_text(problem: ConfigProblem) -> String {
    match problem {
        ConfigProblem::Value(p) => p.as_str().to_owned(),
        ConfigProblem::AboveHardLimit { other } => format!("is above the hard limit {other}"),
        ConfigProblem::BelowLimit { other } => format!("is below the minimum {other}"),
        ConfigProblem::Inconsistent { other } => format!("is inconsistent with {other}"),
    }
}

/// `ConfigurationError(field, problem, value, limit)`: the message names the value and the limit.
fn configuration_error(c: ConfigError) -> PyErr {
    ConfigurationError::new_err((c.field, problem_text(c.problem), c.value, c.limit))
}

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Config(c) | CoreError::Kernel(KernelError::Config(c)) => configuration_error(c),
            CoreError::Kernel(KernelError::InvalidTransition { from, command }) => {
                StateTransitionError::new_err((from.as_str(), command.as_str()))
            }
            CoreError::Kernel(KernelError::PositionUnknown { from, command }) => StateTransitionError::new_err((
                from.as_str(),
                command.as_str(),
                "no sample has given the plunger's position yet",
            )),
            CoreError::Kernel(KernelError::Interlock { alarm, cause }) => {
                InterlockError::new_err((alarm.as_str(), format!("{} {}", cause.field, problem_text(cause.problem))))
            }
            CoreError::Control { input, problem } => {
                let text = match problem {
                    ControlError::NonFiniteInput => "must be a finite number",
                    ControlError::NegativeInput => "must not be negative",
                };
                ConfigurationError::new_err((input, text))
            }
            CoreError::Sim { field, problem } => ConfigurationError::new_err((field, problem)),
            CoreError::Campaign { field, problem } => ConfigurationError::new_err((field, problem)),
        }
    }
}
