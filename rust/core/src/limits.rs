//! Drug-library limits: the one place an order is compared with its hard and soft limits, and the one
//! place the kernel configuration of a session is derived from them.
//!
//! Python loads and validates the library file and presents the findings; every *comparison* is made
//! here, by [`check_order`], a pure function with no allocation and no panic path. [`kernel_limits`]
//! turns the hard limits into the settings the [`SafetyKernel`](crate::SafetyKernel) enforces at run
//! time (rate ceiling, cumulative cap, concentration), so a limit checked before the session is also
//! enforced during it.
//!
//! Semantics (DERS / smart-pump practice):
//! - a **hard** finding refuses the order: it must be re-programmed;
//! - a **soft** finding lets the order proceed only after an explicit confirmation with a reason;
//! - a value that is NaN or infinite is itself a hard finding ([`Bound::NonFinite`]), and so is a value
//!   below its kind's physical floor ([`Bound::Floor`]: a negative amount, a zero weight, a cumulative
//!   total that does not include this order's own dose);
//! - a missing **soft** bound means no bound; a missing **hard** bound means the safe value where one
//!   exists (layered limits): a missing hard maximum of anything delivered (dose, rate, concentration,
//!   bolus, cumulative totals, VTBI) is zero, so nothing can be delivered until the clinician sets it.
//!   A missing hard minimum, and a missing hard maximum of a plausibility or course limit (weight,
//!   duration, hours since the last start, sessions in 7 days), has no safe value and means no bound.
//!   A NaN bound counts as missing.
//!
//! Each kind gets at most one finding, the most severe: non-finite, then floor, hard min, hard max,
//! soft min, soft max. Totals over the rolling windows are in mg/kg of the dosing weight and include
//! this order; the caller supplies them from the course history.

use crate::units::is_positive_finite;

/// What is limited. The stable names are the drug-library table names and the Python kind names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum LimitKind {
    /// Actual body weight (kg): plausibility.
    Weight = 0,
    /// The weight the dose is computed on (actual, ideal or adjusted; kg): the weight limits apply.
    DosingWeight = 1,
    /// Drug concentration in the syringe (mg/mL).
    Concentration = 2,
    /// Dose per session, loading dose included (mg/kg).
    Dose = 3,
    /// Highest dose rate of the session (mg/kg/h).
    DoseRate = 4,
    /// Infusion duration (min).
    Duration = 5,
    /// Bolus / loading dose (mg/kg).
    Bolus = 6,
    /// Bolus rate (mg/kg/min).
    BolusRate = 7,
    /// Total over the last hour, this order included (mg/kg).
    Cumulative1h = 8,
    /// Total over the last 4 hours, this order included (mg/kg).
    Cumulative4h = 9,
    /// Total over the last 7 days, this order included (mg/kg): a course rule.
    Cumulative7d = 10,
    /// Volume to be infused (mL).
    Vtbi = 11,
    /// Hours since the previous session started (h): a course rule.
    HoursSinceLastStart = 12,
    /// Sessions in the last 7 days, this one included: a course rule.
    SessionsIn7Days = 13,
    /// Height (cm): plausibility (inches typed as cm); checked when the patient's height is known.
    Height = 14,
    /// Body-mass index (kg/m²) on an actual-weight protocol: plausibility and dosing caution.
    Bmi = 15,
    /// Change of the actual weight from the last recorded one (% of the recorded weight, absolute).
    WeightChange = 16,
    /// The dosing weight (ideal or adjusted) as a percentage of the actual weight: far below it, the
    /// height or the weight is likely wrong.
    DosingWeightShare = 17,
}

/// How many kinds there are (the capacity of [`Findings`]).
pub const KIND_COUNT: usize = 18;

impl LimitKind {
    /// Every kind, in code order.
    pub const ALL: [LimitKind; KIND_COUNT] = [
        LimitKind::Weight,
        LimitKind::DosingWeight,
        LimitKind::Concentration,
        LimitKind::Dose,
        LimitKind::DoseRate,
        LimitKind::Duration,
        LimitKind::Bolus,
        LimitKind::BolusRate,
        LimitKind::Cumulative1h,
        LimitKind::Cumulative4h,
        LimitKind::Cumulative7d,
        LimitKind::Vtbi,
        LimitKind::HoursSinceLastStart,
        LimitKind::SessionsIn7Days,
        LimitKind::Height,
        LimitKind::Bmi,
        LimitKind::WeightChange,
        LimitKind::DosingWeightShare,
    ];

    /// Stable name: the library table and the finding's kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            LimitKind::Weight => "weight_kg",
            LimitKind::DosingWeight => "dosing_weight_kg",
            LimitKind::Concentration => "concentration_mg_per_ml",
            LimitKind::Dose => "dose_mg_per_kg",
            LimitKind::DoseRate => "dose_rate_mg_per_kg_h",
            LimitKind::Duration => "duration_min",
            LimitKind::Bolus => "bolus_mg_per_kg",
            LimitKind::BolusRate => "bolus_rate_mg_per_kg_min",
            LimitKind::Cumulative1h => "cumulative_1h_mg_per_kg",
            LimitKind::Cumulative4h => "cumulative_4h_mg_per_kg",
            LimitKind::Cumulative7d => "cumulative_7d_mg_per_kg",
            LimitKind::Vtbi => "vtbi_ml",
            LimitKind::HoursSinceLastStart => "hours_since_last_start",
            LimitKind::SessionsIn7Days => "sessions_in_7_days",
            LimitKind::Height => "height_cm",
            LimitKind::Bmi => "bmi_kg_m2",
            LimitKind::WeightChange => "weight_change_pct",
            LimitKind::DosingWeightShare => "dosing_weight_pct",
        }
    }

    /// Unit of the value and of the limit.
    pub const fn unit(self) -> &'static str {
        match self {
            LimitKind::Weight | LimitKind::DosingWeight => "kg",
            LimitKind::Concentration => "mg/mL",
            LimitKind::Dose
            | LimitKind::Bolus
            | LimitKind::Cumulative1h
            | LimitKind::Cumulative4h
            | LimitKind::Cumulative7d => "mg/kg",
            LimitKind::DoseRate => "mg/kg/h",
            LimitKind::Duration => "min",
            LimitKind::BolusRate => "mg/kg/min",
            LimitKind::Vtbi => "mL",
            LimitKind::HoursSinceLastStart => "h",
            LimitKind::SessionsIn7Days => "sessions",
            LimitKind::Height => "cm",
            LimitKind::Bmi => "kg/m²",
            LimitKind::WeightChange | LimitKind::DosingWeightShare => "%",
        }
    }

    /// Whether a missing hard maximum means zero (the safe value): true for everything delivered.
    pub const fn missing_hard_max_is_zero(self) -> bool {
        matches!(
            self,
            LimitKind::Concentration
                | LimitKind::Dose
                | LimitKind::DoseRate
                | LimitKind::Bolus
                | LimitKind::BolusRate
                | LimitKind::Cumulative1h
                | LimitKind::Cumulative4h
                | LimitKind::Cumulative7d
                | LimitKind::Vtbi
        )
    }
}

/// Hard or soft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Refused: the order must be re-programmed.
    Hard,
    /// Proceeds only after a confirmation with a reason.
    Soft,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Hard => "hard",
            Severity::Soft => "soft",
        }
    }
}

/// Which bound a value crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Below the configured minimum.
    Min,
    /// Above the configured maximum.
    Max,
    /// Below the kind's physical floor (see [`check_order`]); always hard.
    Floor,
    /// NaN or infinite; always hard, with no limit.
    NonFinite,
}

impl Bound {
    pub const fn as_str(self) -> &'static str {
        match self {
            Bound::Min => "min",
            Bound::Max => "max",
            Bound::Floor => "floor",
            Bound::NonFinite => "non_finite",
        }
    }
}

/// The hard and soft bounds of one kind; `None` is a missing bound (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limit {
    pub hard_min: Option<f64>,
    pub soft_min: Option<f64>,
    pub soft_max: Option<f64>,
    pub hard_max: Option<f64>,
}

impl Limit {
    /// No bound at all.
    pub const NONE: Limit = Limit { hard_min: None, soft_min: None, soft_max: None, hard_max: None };
}

/// The limits of one drug entry. `dosing_weight_kg` has no table of its own: the weight limits apply.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DrugLimits {
    pub weight_kg: Limit,
    pub concentration_mg_per_ml: Limit,
    pub dose_mg_per_kg: Limit,
    pub dose_rate_mg_per_kg_h: Limit,
    pub duration_min: Limit,
    pub bolus_mg_per_kg: Limit,
    pub bolus_rate_mg_per_kg_min: Limit,
    pub cumulative_1h_mg_per_kg: Limit,
    pub cumulative_4h_mg_per_kg: Limit,
    pub cumulative_7d_mg_per_kg: Limit,
    pub vtbi_ml: Limit,
    pub hours_since_last_start: Limit,
    pub sessions_in_7_days: Limit,
    pub height_cm: Limit,
    pub bmi_kg_m2: Limit,
    pub weight_change_pct: Limit,
    pub dosing_weight_pct: Limit,
    /// How far (a fraction, 0.02 = 2 %) a cumulative total may pass a maximum of the cumulative kinds
    /// before it counts as crossed: doses delivered within the kernel's dose tolerance must not make a
    /// course of full doses cross its cap by rounding. Not finite or negative: 0.
    pub cap_tolerance: f64,
}

impl DrugLimits {
    /// Nothing configured: every delivery kind refuses any amount.
    pub const NONE: DrugLimits = DrugLimits {
        weight_kg: Limit::NONE,
        concentration_mg_per_ml: Limit::NONE,
        dose_mg_per_kg: Limit::NONE,
        dose_rate_mg_per_kg_h: Limit::NONE,
        duration_min: Limit::NONE,
        bolus_mg_per_kg: Limit::NONE,
        bolus_rate_mg_per_kg_min: Limit::NONE,
        cumulative_1h_mg_per_kg: Limit::NONE,
        cumulative_4h_mg_per_kg: Limit::NONE,
        cumulative_7d_mg_per_kg: Limit::NONE,
        vtbi_ml: Limit::NONE,
        hours_since_last_start: Limit::NONE,
        sessions_in_7_days: Limit::NONE,
        height_cm: Limit::NONE,
        bmi_kg_m2: Limit::NONE,
        weight_change_pct: Limit::NONE,
        dosing_weight_pct: Limit::NONE,
        cap_tolerance: 0.0,
    };

    /// The limit that applies to `kind`.
    pub const fn get(&self, kind: LimitKind) -> Limit {
        match kind {
            LimitKind::Weight | LimitKind::DosingWeight => self.weight_kg,
            LimitKind::Concentration => self.concentration_mg_per_ml,
            LimitKind::Dose => self.dose_mg_per_kg,
            LimitKind::DoseRate => self.dose_rate_mg_per_kg_h,
            LimitKind::Duration => self.duration_min,
            LimitKind::Bolus => self.bolus_mg_per_kg,
            LimitKind::BolusRate => self.bolus_rate_mg_per_kg_min,
            LimitKind::Cumulative1h => self.cumulative_1h_mg_per_kg,
            LimitKind::Cumulative4h => self.cumulative_4h_mg_per_kg,
            LimitKind::Cumulative7d => self.cumulative_7d_mg_per_kg,
            LimitKind::Vtbi => self.vtbi_ml,
            LimitKind::HoursSinceLastStart => self.hours_since_last_start,
            LimitKind::SessionsIn7Days => self.sessions_in_7_days,
            LimitKind::Height => self.height_cm,
            LimitKind::Bmi => self.bmi_kg_m2,
            LimitKind::WeightChange => self.weight_change_pct,
            LimitKind::DosingWeightShare => self.dosing_weight_pct,
        }
    }

    /// The factor a maximum of `kind` is widened by: `1 + cap_tolerance` for the cumulative totals,
    /// 1 for every other kind.
    pub fn max_factor(&self, kind: LimitKind) -> f64 {
        let cumulative = matches!(kind, LimitKind::Cumulative1h | LimitKind::Cumulative4h | LimitKind::Cumulative7d);
        let tolerance = self.cap_tolerance;
        if cumulative && tolerance.is_finite() && tolerance > 0.0 {
            1.0 + tolerance
        } else {
            1.0
        }
    }
}

/// What is about to be given, with the course totals the caller computed from the history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Order {
    /// Actual body weight (kg).
    pub weight_kg: f64,
    /// Weight the mg/kg figures are computed on (kg), when it is not the actual weight (ideal or
    /// adjusted body weight); `None`: the actual weight, checked once.
    pub dosing_weight_kg: Option<f64>,
    pub concentration_mg_per_ml: f64,
    /// Whole session, loading dose included (mg/kg).
    pub dose_mg_per_kg: f64,
    /// Highest rate of the session (mg/kg/h).
    pub dose_rate_mg_per_kg_h: f64,
    pub duration_min: f64,
    pub vtbi_ml: f64,
    /// Loading dose, 0 for none (mg/kg).
    pub bolus_mg_per_kg: f64,
    /// Rate of the loading dose, 0 for none (mg/kg/min).
    pub bolus_rate_mg_per_kg_min: f64,
    /// Totals over the rolling windows, this order included (mg/kg of the dosing weight).
    pub cumulative_1h_mg_per_kg: f64,
    pub cumulative_4h_mg_per_kg: f64,
    pub cumulative_7d_mg_per_kg: f64,
    /// `None` for a first session.
    pub hours_since_last_start: Option<f64>,
    /// Sessions in the last 7 days, this one included.
    pub sessions_in_7_days: u32,
    /// Height (cm), `None` when not known.
    pub height_cm: Option<f64>,
    /// Body-mass index (kg/m²), `None` when not checked (no height, or a protocol not on actual weight).
    pub bmi_kg_m2: Option<f64>,
    /// |actual − last recorded weight| in % of the last recorded weight; `None`: no recorded weight.
    pub weight_change_pct: Option<f64>,
    /// Dosing weight in % of the actual weight; `None`: dosed on the actual weight.
    pub dosing_weight_pct: Option<f64>,
}

impl Order {
    /// The value checked for `kind`; `None` when there is nothing to check (no previous session).
    pub fn value(&self, kind: LimitKind) -> Option<f64> {
        match kind {
            LimitKind::Weight => Some(self.weight_kg),
            LimitKind::DosingWeight => self.dosing_weight_kg,
            LimitKind::Concentration => Some(self.concentration_mg_per_ml),
            LimitKind::Dose => Some(self.dose_mg_per_kg),
            LimitKind::DoseRate => Some(self.dose_rate_mg_per_kg_h),
            LimitKind::Duration => Some(self.duration_min),
            LimitKind::Bolus => Some(self.bolus_mg_per_kg),
            LimitKind::BolusRate => Some(self.bolus_rate_mg_per_kg_min),
            LimitKind::Cumulative1h => Some(self.cumulative_1h_mg_per_kg),
            LimitKind::Cumulative4h => Some(self.cumulative_4h_mg_per_kg),
            LimitKind::Cumulative7d => Some(self.cumulative_7d_mg_per_kg),
            LimitKind::Vtbi => Some(self.vtbi_ml),
            LimitKind::HoursSinceLastStart => self.hours_since_last_start,
            LimitKind::SessionsIn7Days => Some(f64::from(self.sessions_in_7_days)),
            LimitKind::Height => self.height_cm,
            LimitKind::Bmi => self.bmi_kg_m2,
            LimitKind::WeightChange => self.weight_change_pct,
            LimitKind::DosingWeightShare => self.dosing_weight_pct,
        }
    }

    /// The physical floor of `kind` and whether the value must be strictly above it.
    ///
    /// Weights, concentration, dose, rate, duration and VTBI must be positive; bolus and bolus rate
    /// and the hours since the last start must not be negative; a cumulative total must include this
    /// order's dose (when the dose is finite; else it must not be negative); a session count includes
    /// this session, so it is at least 1.
    fn floor(&self, kind: LimitKind) -> (f64, bool) {
        match kind {
            LimitKind::Weight
            | LimitKind::DosingWeight
            | LimitKind::Concentration
            | LimitKind::Dose
            | LimitKind::DoseRate
            | LimitKind::Duration
            | LimitKind::Vtbi
            | LimitKind::Height
            | LimitKind::Bmi
            | LimitKind::DosingWeightShare => (0.0, true),
            LimitKind::Bolus | LimitKind::BolusRate | LimitKind::HoursSinceLastStart | LimitKind::WeightChange => {
                (0.0, false)
            }
            // A dose that is not a number is refused on its own; the total then only must not be negative.
            LimitKind::Cumulative1h | LimitKind::Cumulative4h | LimitKind::Cumulative7d => {
                (if self.dose_mg_per_kg.is_finite() { self.dose_mg_per_kg } else { 0.0 }, false)
            }
            LimitKind::SessionsIn7Days => (1.0, false),
        }
    }
}

/// One crossed limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finding {
    pub kind: LimitKind,
    pub severity: Severity,
    pub bound: Bound,
    /// The order's value (in `kind.unit()`).
    pub value: f64,
    /// The bound crossed (in `kind.unit()`); `None` for [`Bound::NonFinite`].
    pub limit: Option<f64>,
}

/// Every finding of one check, at most one per kind, in kind order. Fixed size, no allocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Findings {
    slots: [Option<Finding>; KIND_COUNT],
}

impl Findings {
    /// No finding.
    pub const EMPTY: Findings = Findings { slots: [None; KIND_COUNT] };

    /// The findings, in kind order.
    pub fn iter(&self) -> impl Iterator<Item = &Finding> {
        self.slots.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Whether any finding refuses the order.
    pub fn has_hard(&self) -> bool {
        self.iter().any(|f| f.severity == Severity::Hard)
    }

    /// The finding for `kind`, if any.
    pub fn get(&self, kind: LimitKind) -> Option<&Finding> {
        self.iter().find(|f| f.kind == kind)
    }
}

/// A configured bound, with NaN read as missing.
fn bound(value: Option<f64>) -> Option<f64> {
    value.filter(|v| !v.is_nan())
}

/// The hard maximum in force for `kind`: the configured one, or zero where a missing one means zero.
pub fn effective_hard_max(kind: LimitKind, limit: Limit) -> Option<f64> {
    match bound(limit.hard_max) {
        Some(max) => Some(max),
        None if kind.missing_hard_max_is_zero() => Some(0.0),
        None => None,
    }
}

/// Checks one value against its floor and its limit (its maxima widened by `max_factor`): the most
/// severe finding, or none. A finding names the configured bound, not the widened one.
fn check_value(kind: LimitKind, limit: Limit, value: f64, floor: (f64, bool), max_factor: f64) -> Option<Finding> {
    let finding = |severity, bound, limit: Option<f64>| Some(Finding { kind, severity, bound, value, limit });
    if !value.is_finite() {
        return finding(Severity::Hard, Bound::NonFinite, None);
    }
    let (floor_value, strict) = floor;
    if value < floor_value || (strict && value <= floor_value) {
        return finding(Severity::Hard, Bound::Floor, Some(floor_value));
    }
    if let Some(min) = bound(limit.hard_min).filter(|&min| value < min) {
        return finding(Severity::Hard, Bound::Min, Some(min));
    }
    if let Some(max) = effective_hard_max(kind, limit).filter(|&max| value > max * max_factor) {
        return finding(Severity::Hard, Bound::Max, Some(max));
    }
    if let Some(min) = bound(limit.soft_min).filter(|&min| value < min) {
        return finding(Severity::Soft, Bound::Min, Some(min));
    }
    if let Some(max) = bound(limit.soft_max).filter(|&max| value > max * max_factor) {
        return finding(Severity::Soft, Bound::Max, Some(max));
    }
    None
}

/// Compares every value of `order` with its limit in `limits`. Never fails: every problem, including a
/// non-finite input, is a finding.
pub fn check_order(limits: &DrugLimits, order: &Order) -> Findings {
    let mut findings = Findings::EMPTY;
    for (slot, kind) in findings.slots.iter_mut().zip(LimitKind::ALL) {
        let factor = limits.max_factor(kind);
        *slot =
            order.value(kind).and_then(|value| check_value(kind, limits.get(kind), value, order.floor(kind), factor));
    }
    findings
}

/// The kernel settings a session runs with, derived from the hard limits for one order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelLimits {
    /// The order's concentration (mg/mL).
    pub concentration_mg_per_ml: f64,
    /// Configured rate ceiling (mL/h): the hard dose-rate limit × dosing weight ÷ concentration, never
    /// above the device's hard rate limit.
    pub max_rate_ml_h: f64,
    /// Cumulative cap for the session (mg): the hard per-session dose × dosing weight, cut to what is
    /// left of every rolling window's hard cap after the doses already given in it.
    pub hard_cap_mg: f64,
}

/// The kernel settings for `order`, or `None` when the order has a hard finding (it must not run) or
/// `device_max_rate_ml_h` is not a positive finite rate.
///
/// The kernel then enforces the hard limits at run time: a rate above the hard dose rate for this
/// weight is refused at load and latches an alarm when set mid-run, and delivery stops at the cap.
pub fn kernel_limits(limits: &DrugLimits, order: &Order, device_max_rate_ml_h: f64) -> Option<KernelLimits> {
    if check_order(limits, order).has_hard() || !(device_max_rate_ml_h.is_finite() && device_max_rate_ml_h > 0.0) {
        return None;
    }
    let weight = order.dosing_weight_kg.unwrap_or(order.weight_kg);
    let concentration = order.concentration_mg_per_ml;
    // No hard finding: each effective hard max exists (a missing one is zero, which a positive dose
    // and rate would have crossed) and every value is finite and above its floor.
    let rate_max = effective_hard_max(LimitKind::DoseRate, limits.dose_rate_mg_per_kg_h)?;
    let dose_max = effective_hard_max(LimitKind::Dose, limits.dose_mg_per_kg)?;
    let max_rate_ml_h = (rate_max * weight / concentration).min(device_max_rate_ml_h);
    let mut hard_cap_mg = dose_max * weight;
    for kind in [LimitKind::Cumulative1h, LimitKind::Cumulative4h, LimitKind::Cumulative7d] {
        if let (Some(cap), Some(total)) = (effective_hard_max(kind, limits.get(kind)), order.value(kind)) {
            let given_before = total - order.dose_mg_per_kg;
            hard_cap_mg = hard_cap_mg.min((cap * limits.max_factor(kind) - given_before) * weight);
        }
    }
    let settings = KernelLimits { concentration_mg_per_ml: concentration, max_rate_ml_h, hard_cap_mg };
    (is_positive_finite(max_rate_ml_h) && is_positive_finite(hard_cap_mg)).then_some(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn limit(
        hard_min: Option<f64>,
        soft_min: Option<f64>,
        soft_max: Option<f64>,
        hard_max: Option<f64>,
    ) -> Limit {
        Limit { hard_min, soft_min, soft_max, hard_max }
    }

    /// Modelled on the shipped ketamine entry (python/ketapump/data/drug_library.toml), with hard
    /// minima and hard course rules added so that every branch has a bound to cross.
    const KETAMINE: DrugLimits = DrugLimits {
        weight_kg: limit(Some(30.0), Some(40.0), Some(180.0), Some(250.0)),
        concentration_mg_per_ml: limit(Some(0.5), Some(1.0), Some(2.0), Some(10.0)),
        dose_mg_per_kg: limit(Some(0.05), Some(0.1), Some(0.75), Some(1.0)),
        dose_rate_mg_per_kg_h: limit(Some(0.05), Some(0.1), Some(1.125), Some(2.0)),
        duration_min: limit(Some(30.0), Some(40.0), Some(60.0), Some(120.0)),
        bolus_mg_per_kg: limit(None, None, Some(0.0), Some(0.2)),
        bolus_rate_mg_per_kg_min: limit(None, None, Some(0.05), Some(0.1)),
        cumulative_1h_mg_per_kg: limit(None, None, Some(0.75), Some(1.0)),
        cumulative_4h_mg_per_kg: limit(None, None, Some(0.75), Some(1.0)),
        cumulative_7d_mg_per_kg: limit(None, None, Some(2.25), Some(3.0)),
        vtbi_ml: limit(None, None, Some(60.0), Some(120.0)),
        hours_since_last_start: limit(Some(24.0), Some(44.0), None, None),
        sessions_in_7_days: limit(None, None, Some(3.0), Some(4.0)),
        height_cm: limit(Some(100.0), Some(130.0), Some(220.0), Some(250.0)),
        bmi_kg_m2: limit(None, Some(16.0), Some(40.0), Some(80.0)),
        weight_change_pct: limit(None, None, Some(10.0), Some(50.0)),
        dosing_weight_pct: limit(Some(30.0), Some(50.0), None, None),
        cap_tolerance: 0.0,
    };

    /// 0.5 mg/kg over 40 min at 1 mg/mL, 70 kg, second session of the week.
    const STANDARD: Order = Order {
        weight_kg: 70.0,
        dosing_weight_kg: None,
        concentration_mg_per_ml: 1.0,
        dose_mg_per_kg: 0.5,
        dose_rate_mg_per_kg_h: 0.75,
        duration_min: 40.0,
        vtbi_ml: 35.0,
        bolus_mg_per_kg: 0.0,
        bolus_rate_mg_per_kg_min: 0.0,
        cumulative_1h_mg_per_kg: 0.5,
        cumulative_4h_mg_per_kg: 0.5,
        cumulative_7d_mg_per_kg: 1.0,
        hours_since_last_start: Some(72.0),
        sessions_in_7_days: 2,
        height_cm: Some(175.0),
        bmi_kg_m2: Some(22.9),
        weight_change_pct: Some(1.0),
        dosing_weight_pct: None,
    };

    fn with(kind: LimitKind, value: f64) -> Order {
        let mut o = STANDARD;
        match kind {
            LimitKind::Weight => o.weight_kg = value,
            LimitKind::DosingWeight => o.dosing_weight_kg = Some(value),
            LimitKind::Concentration => o.concentration_mg_per_ml = value,
            LimitKind::Dose => {
                // The window totals include this order's dose.
                o.cumulative_1h_mg_per_kg += value - o.dose_mg_per_kg;
                o.cumulative_4h_mg_per_kg += value - o.dose_mg_per_kg;
                o.cumulative_7d_mg_per_kg += value - o.dose_mg_per_kg;
                o.dose_mg_per_kg = value;
            }
            LimitKind::DoseRate => o.dose_rate_mg_per_kg_h = value,
            LimitKind::Duration => o.duration_min = value,
            LimitKind::Bolus => o.bolus_mg_per_kg = value,
            LimitKind::BolusRate => o.bolus_rate_mg_per_kg_min = value,
            LimitKind::Cumulative1h => o.cumulative_1h_mg_per_kg = value,
            LimitKind::Cumulative4h => o.cumulative_4h_mg_per_kg = value,
            LimitKind::Cumulative7d => o.cumulative_7d_mg_per_kg = value,
            LimitKind::Vtbi => o.vtbi_ml = value,
            LimitKind::HoursSinceLastStart => o.hours_since_last_start = Some(value),
            // Counts above u32 are not representable; the tests use small ones.
            LimitKind::SessionsIn7Days => o.sessions_in_7_days = value as u32,
            LimitKind::Height => o.height_cm = Some(value),
            LimitKind::Bmi => o.bmi_kg_m2 = Some(value),
            LimitKind::WeightChange => o.weight_change_pct = Some(value),
            LimitKind::DosingWeightShare => o.dosing_weight_pct = Some(value),
        }
        o
    }

    fn only(findings: &Findings) -> Finding {
        assert_eq!(findings.len(), 1, "{findings:?}");
        *findings.iter().next().unwrap()
    }

    /// `kind` set to `value` gives this finding for `kind` (a dose also moves the window totals, which
    /// may have findings of their own).
    fn expect(kind: LimitKind, value: f64, severity: Severity, bound: Bound, limit: Option<f64>) {
        let findings = check_order(&KETAMINE, &with(kind, value));
        assert_eq!(
            findings.get(kind).copied(),
            Some(Finding { kind, severity, bound, value, limit }),
            "{kind:?} = {value}"
        );
        if kind != LimitKind::Dose {
            assert_eq!(findings.len(), 1, "{findings:?}");
        }
    }

    #[test]
    fn the_standard_order_has_no_finding() {
        let findings = check_order(&KETAMINE, &STANDARD);
        assert!(findings.is_empty() && !findings.has_hard(), "{findings:?}");
        assert_eq!(findings.len(), 0);
    }

    #[test]
    fn kinds_are_complete_and_named_once() {
        for (i, kind) in LimitKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i);
            assert!(!kind.unit().is_empty());
            for other in &LimitKind::ALL[i + 1..] {
                assert_ne!(kind.as_str(), other.as_str());
            }
        }
        assert_eq!(Severity::Hard.as_str(), "hard");
        assert_eq!(Severity::Soft.as_str(), "soft");
        assert_eq!(
            [Bound::Min, Bound::Max, Bound::Floor, Bound::NonFinite].map(Bound::as_str),
            ["min", "max", "floor", "non_finite"]
        );
    }

    #[test]
    fn every_kind_has_a_hard_maximum() {
        for (kind, value, max) in [
            (LimitKind::Weight, 251.0, 250.0),
            (LimitKind::DosingWeight, 260.0, 250.0),
            (LimitKind::Concentration, 100.0, 10.0),
            (LimitKind::Dose, 1.2, 1.0),
            (LimitKind::DoseRate, 2.5, 2.0),
            (LimitKind::Duration, 180.0, 120.0),
            (LimitKind::Bolus, 0.3, 0.2),
            (LimitKind::BolusRate, 0.2, 0.1),
            (LimitKind::Cumulative1h, 1.1, 1.0),
            (LimitKind::Cumulative4h, 1.1, 1.0),
            (LimitKind::Cumulative7d, 3.5, 3.0),
            (LimitKind::Vtbi, 130.0, 120.0),
            (LimitKind::SessionsIn7Days, 5.0, 4.0),
            (LimitKind::Height, 260.0, 250.0),
            (LimitKind::Bmi, 90.0, 80.0),
            (LimitKind::WeightChange, 120.0, 50.0),
        ] {
            expect(kind, value, Severity::Hard, Bound::Max, Some(max));
        }
    }

    #[test]
    fn every_kind_with_a_hard_minimum_refuses_below_it() {
        for (kind, value, min) in [
            (LimitKind::Weight, 25.0, 30.0),
            (LimitKind::DosingWeight, 29.0, 30.0),
            (LimitKind::Concentration, 0.25, 0.5),
            (LimitKind::Dose, 0.01, 0.05),
            (LimitKind::DoseRate, 0.01, 0.05),
            (LimitKind::Duration, 20.0, 30.0),
            (LimitKind::HoursSinceLastStart, 12.0, 24.0),
            (LimitKind::Height, 66.0, 100.0),
            (LimitKind::DosingWeightShare, 28.7, 30.0),
        ] {
            expect(kind, value, Severity::Hard, Bound::Min, Some(min));
        }
    }

    #[test]
    fn soft_bounds_give_soft_findings() {
        for (kind, value, bound, limit) in [
            (LimitKind::Weight, 35.0, Bound::Min, 40.0),
            (LimitKind::Weight, 200.0, Bound::Max, 180.0),
            (LimitKind::Concentration, 10.0, Bound::Max, 2.0),
            (LimitKind::Concentration, 0.75, Bound::Min, 1.0),
            (LimitKind::Dose, 0.8, Bound::Max, 0.75),
            (LimitKind::DoseRate, 1.5, Bound::Max, 1.125),
            (LimitKind::Duration, 35.0, Bound::Min, 40.0),
            (LimitKind::Bolus, 0.1, Bound::Max, 0.0),
            (LimitKind::BolusRate, 0.08, Bound::Max, 0.05),
            (LimitKind::Cumulative1h, 0.9, Bound::Max, 0.75),
            (LimitKind::Cumulative4h, 0.9, Bound::Max, 0.75),
            (LimitKind::Cumulative7d, 2.5, Bound::Max, 2.25),
            (LimitKind::Vtbi, 70.0, Bound::Max, 60.0),
            (LimitKind::HoursSinceLastStart, 30.0, Bound::Min, 44.0),
            (LimitKind::SessionsIn7Days, 4.0, Bound::Max, 3.0),
            (LimitKind::Height, 120.0, Bound::Min, 130.0),
            (LimitKind::Height, 230.0, Bound::Max, 220.0),
            (LimitKind::Bmi, 45.0, Bound::Max, 40.0),
            (LimitKind::Bmi, 15.0, Bound::Min, 16.0),
            (LimitKind::WeightChange, 12.0, Bound::Max, 10.0),
            (LimitKind::DosingWeightShare, 40.0, Bound::Min, 50.0),
        ] {
            expect(kind, value, Severity::Soft, bound, Some(limit));
        }
    }

    #[test]
    fn bounds_are_inclusive() {
        // At the hard max: soft (above the soft max), not hard; at the soft max: nothing.
        expect(LimitKind::Dose, 1.0, Severity::Soft, Bound::Max, Some(0.75));
        expect(LimitKind::Cumulative7d, 3.0, Severity::Soft, Bound::Max, Some(2.25));
        for (kind, value) in [
            (LimitKind::Dose, 0.75),
            (LimitKind::Weight, 40.0),
            (LimitKind::Concentration, 2.0),
            (LimitKind::HoursSinceLastStart, 44.0),
            (LimitKind::SessionsIn7Days, 3.0),
        ] {
            assert!(check_order(&KETAMINE, &with(kind, value)).is_empty(), "{kind:?} = {value}");
        }
        expect(LimitKind::Dose, 1.0 + 1e-12, Severity::Hard, Bound::Max, Some(1.0));
    }

    #[test]
    fn undiluted_ketamine_is_refused() {
        expect(LimitKind::Concentration, 100.0, Severity::Hard, Bound::Max, Some(10.0));
        expect(LimitKind::Concentration, 50.0, Severity::Hard, Bound::Max, Some(10.0));
    }

    #[test]
    fn non_finite_values_are_hard_findings_without_limit() {
        for kind in LimitKind::ALL {
            if kind == LimitKind::SessionsIn7Days {
                continue; // a count is always finite
            }
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let findings = check_order(&KETAMINE, &with(kind, bad));
                let f = findings.get(kind).copied().unwrap();
                assert_eq!((f.severity, f.bound, f.limit), (Severity::Hard, Bound::NonFinite, None), "{kind:?}");
                assert!(f.value.is_nan() || f.value == bad);
            }
        }
    }

    #[test]
    fn values_below_the_physical_floor_are_hard_findings() {
        let none = DrugLimits::NONE;
        for (kind, value, floor) in [
            (LimitKind::Weight, 0.0, 0.0),
            (LimitKind::DosingWeight, -1.0, 0.0),
            (LimitKind::Concentration, 0.0, 0.0),
            (LimitKind::Dose, 0.0, 0.0),
            (LimitKind::DoseRate, -0.5, 0.0),
            (LimitKind::Duration, 0.0, 0.0),
            (LimitKind::Vtbi, 0.0, 0.0),
            (LimitKind::Bolus, -0.1, 0.0),
            (LimitKind::BolusRate, -0.1, 0.0),
            (LimitKind::HoursSinceLastStart, -1.0, 0.0),
            // A cumulative total must include this order's 0.5 mg/kg.
            (LimitKind::Cumulative1h, 0.4, 0.5),
            (LimitKind::Cumulative7d, 0.0, 0.5),
            (LimitKind::SessionsIn7Days, 0.0, 1.0),
            (LimitKind::Height, 0.0, 0.0),
            (LimitKind::Bmi, 0.0, 0.0),
            (LimitKind::WeightChange, -1.0, 0.0),
            (LimitKind::DosingWeightShare, -20.0, 0.0),
        ] {
            for limits in [&KETAMINE, &none] {
                let findings = check_order(limits, &with(kind, value));
                let f = findings.get(kind).copied().unwrap();
                assert_eq!(
                    f,
                    Finding { kind, severity: Severity::Hard, bound: Bound::Floor, value, limit: Some(floor) }
                );
            }
        }
        // A non-finite dose is its own finding; the totals are then only held to zero.
        for dose in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let order =
                Order { dose_mg_per_kg: dose, cumulative_7d_mg_per_kg: 0.0, cumulative_1h_mg_per_kg: -1.0, ..STANDARD };
            let findings = check_order(&KETAMINE, &order);
            assert_eq!(findings.get(LimitKind::Dose).map(|f| f.bound), Some(Bound::NonFinite));
            assert_eq!(findings.get(LimitKind::Cumulative7d), None);
            assert_eq!(
                findings.get(LimitKind::Cumulative1h).map(|f| (f.bound, f.limit)),
                Some((Bound::Floor, Some(0.0)))
            );
        }
        // Zero is allowed where the floor is not strict.
        assert!(
            check_order(&KETAMINE, &with(LimitKind::HoursSinceLastStart, 0.0))
                .get(LimitKind::HoursSinceLastStart)
                .unwrap()
                .bound
                == Bound::Min
        );
        assert!(check_order(&KETAMINE, &with(LimitKind::Cumulative4h, 0.5)).is_empty());
    }

    #[test]
    fn a_missing_hard_max_of_a_delivered_kind_is_zero() {
        let findings = check_order(&DrugLimits::NONE, &STANDARD);
        for kind in LimitKind::ALL {
            let f = findings.get(kind);
            if kind.missing_hard_max_is_zero() && STANDARD.value(kind).unwrap() > 0.0 {
                assert_eq!(
                    f.map(|f| (f.severity, f.bound, f.limit)),
                    Some((Severity::Hard, Bound::Max, Some(0.0))),
                    "{kind:?}"
                );
            } else {
                assert_eq!(f, None, "{kind:?}: no bound");
            }
        }
        // A zero bolus passes even with no bolus limit configured.
        assert_eq!(findings.get(LimitKind::Bolus), None);
    }

    #[test]
    fn a_nan_bound_is_missing() {
        let nan = limit(Some(f64::NAN), Some(f64::NAN), Some(f64::NAN), Some(f64::NAN));
        let limits = DrugLimits { dose_mg_per_kg: nan, weight_kg: nan, ..KETAMINE };
        let findings = check_order(&limits, &STANDARD);
        // The dose's hard max falls back to zero; the weight has no bound left.
        assert_eq!(only(&findings).kind, LimitKind::Dose);
        assert_eq!(only(&findings).limit, Some(0.0));
    }

    #[test]
    fn a_missing_soft_bound_is_no_bound() {
        let limits = DrugLimits { dose_mg_per_kg: limit(None, None, None, Some(1.0)), ..KETAMINE };
        for dose in [0.9, 0.01] {
            assert_eq!(check_order(&limits, &with(LimitKind::Dose, dose)).get(LimitKind::Dose), None);
        }
    }

    #[test]
    fn the_most_severe_finding_of_a_kind_wins() {
        // Below the hard min is also below the soft min: one hard finding.
        expect(LimitKind::Weight, 20.0, Severity::Hard, Bound::Min, Some(30.0));
        // Inconsistent limits (soft above hard) still refuse at the hard bound first.
        let limits = DrugLimits { dose_mg_per_kg: limit(None, None, Some(2.0), Some(1.0)), ..KETAMINE };
        let findings = check_order(&limits, &with(LimitKind::Dose, 1.5));
        let f = findings.get(LimitKind::Dose).unwrap();
        assert_eq!((f.severity, f.limit), (Severity::Hard, Some(1.0)));
    }

    #[test]
    fn a_first_session_has_no_interval_to_check() {
        let order = Order { hours_since_last_start: None, ..STANDARD };
        assert!(check_order(&KETAMINE, &order).is_empty());
    }

    #[test]
    fn the_actual_weight_is_checked_once_when_it_is_the_dosing_weight() {
        let findings = check_order(&KETAMINE, &with(LimitKind::Weight, f64::NAN));
        assert_eq!(only(&findings).kind, LimitKind::Weight);
        let order = Order { weight_kg: f64::NAN, dosing_weight_kg: Some(f64::NAN), ..STANDARD };
        assert_eq!(check_order(&KETAMINE, &order).len(), 2);
    }

    #[test]
    fn every_problem_is_reported_together_in_kind_order() {
        let order = Order {
            weight_kg: f64::NAN,
            concentration_mg_per_ml: 100.0,
            dose_mg_per_kg: 0.8,
            cumulative_1h_mg_per_kg: 0.8,
            cumulative_4h_mg_per_kg: 0.8,
            cumulative_7d_mg_per_kg: 1.3,
            hours_since_last_start: Some(30.0),
            ..STANDARD
        };
        let findings = check_order(&KETAMINE, &order);
        let kinds: [Option<LimitKind>; 6] = {
            let mut it = findings.iter().map(|f| f.kind);
            core::array::from_fn(|_| it.next())
        };
        assert_eq!(
            kinds,
            [
                Some(LimitKind::Weight),
                Some(LimitKind::Concentration),
                Some(LimitKind::Dose),
                Some(LimitKind::Cumulative1h),
                Some(LimitKind::Cumulative4h),
                Some(LimitKind::HoursSinceLastStart),
            ]
        );
        assert_eq!(findings.len(), 6);
        assert!(findings.has_hard());
        assert_eq!(findings.get(LimitKind::Cumulative7d), None);
    }

    #[test]
    fn kernel_limits_come_from_the_hard_limits() {
        let k = kernel_limits(&KETAMINE, &STANDARD, 200.0).unwrap();
        // 2.0 mg/kg/h × 70 kg ÷ 1 mg/mL; 1.0 mg/kg × 70 kg (7-day room: (3.0 − 0.5) × 70 = 175 mg).
        assert_eq!(k, KernelLimits { concentration_mg_per_ml: 1.0, max_rate_ml_h: 140.0, hard_cap_mg: 70.0 });
        let k = kernel_limits(&KETAMINE, &Order { concentration_mg_per_ml: 2.0, ..STANDARD }, 200.0).unwrap();
        assert_eq!((k.concentration_mg_per_ml, k.max_rate_ml_h), (2.0, 70.0));
    }

    #[test]
    fn kernel_limits_use_the_dosing_weight() {
        let order = Order { weight_kg: 150.0, dosing_weight_kg: Some(100.0), ..STANDARD };
        let k = kernel_limits(&KETAMINE, &order, 1_000.0).unwrap();
        assert_eq!((k.max_rate_ml_h, k.hard_cap_mg), (200.0, 100.0));
    }

    #[test]
    fn the_rate_ceiling_never_exceeds_the_device() {
        let order = Order { weight_kg: 200.0, ..STANDARD };
        assert_eq!(kernel_limits(&KETAMINE, &order, 200.0).unwrap().max_rate_ml_h, 200.0);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(kernel_limits(&KETAMINE, &STANDARD, bad), None);
        }
    }

    #[test]
    fn the_cap_is_cut_to_what_is_left_of_each_window() {
        // 2.2 mg/kg given in the last 7 days: (3.0 − 2.2) × 70 = 56 mg left.
        let order = Order { cumulative_7d_mg_per_kg: 2.7, ..STANDARD };
        let k = kernel_limits(&KETAMINE, &order, 200.0).unwrap();
        assert!((k.hard_cap_mg - 56.0).abs() < 1e-9, "{k:?}");
        // 0.3 mg/kg in the last 4 h: (1.0 − 0.3) × 70 = 49 mg left; the 1-h window had nothing.
        let order = Order { cumulative_4h_mg_per_kg: 0.8, ..STANDARD };
        let k = kernel_limits(&KETAMINE, &order, 200.0).unwrap();
        assert!((k.hard_cap_mg - 49.0).abs() < 1e-9, "{k:?}");
    }

    #[test]
    fn an_order_with_a_hard_finding_gets_no_kernel_settings() {
        assert_eq!(kernel_limits(&KETAMINE, &with(LimitKind::Concentration, 100.0), 200.0), None);
        assert_eq!(kernel_limits(&KETAMINE, &with(LimitKind::Weight, f64::NAN), 200.0), None);
        assert_eq!(kernel_limits(&DrugLimits::NONE, &STANDARD, 200.0), None);
        // A soft finding does not stop the derivation: it is confirmed before the session.
        assert!(kernel_limits(&KETAMINE, &with(LimitKind::Dose, 0.8), 200.0).is_some());
    }

    #[test]
    fn plausibility_kinds_are_not_checked_when_unknown() {
        let order =
            Order { height_cm: None, bmi_kg_m2: None, weight_change_pct: None, dosing_weight_pct: None, ..STANDARD };
        assert!(check_order(&KETAMINE, &order).is_empty());
        // A missing hard maximum of a plausibility kind is no bound (nothing is delivered by it).
        assert!(!LimitKind::Height.missing_hard_max_is_zero() && !LimitKind::Bmi.missing_hard_max_is_zero());
    }

    /// Three full doses a week, each delivered a few parts per million over: within the tolerance.
    const TOLERANT: DrugLimits = DrugLimits { cap_tolerance: 0.02, ..KETAMINE };

    #[test]
    fn cumulative_maxima_are_widened_by_the_cap_tolerance_and_named_as_configured() {
        let third = with(LimitKind::Cumulative7d, 3.000_004_3);
        expect(LimitKind::Cumulative7d, 3.000_004_3, Severity::Hard, Bound::Max, Some(3.0));
        let findings = check_order(&TOLERANT, &third);
        // Still above the soft maximum (2.25), which names its configured value.
        assert_eq!(
            findings.get(LimitKind::Cumulative7d).map(|f| (f.severity, f.limit)),
            Some((Severity::Soft, Some(2.25)))
        );
        // At the soft max plus the tolerance: nothing; just above the widened hard max: hard.
        assert!(check_order(&TOLERANT, &with(LimitKind::Cumulative7d, 2.25 * 1.02)).is_empty());
        let over = check_order(&TOLERANT, &with(LimitKind::Cumulative7d, 3.0 * 1.02 + 1e-9));
        assert_eq!(over.get(LimitKind::Cumulative7d).map(|f| (f.severity, f.limit)), Some((Severity::Hard, Some(3.0))));
        // Every other kind keeps its bound exactly.
        for kind in LimitKind::ALL {
            let cumulative =
                matches!(kind, LimitKind::Cumulative1h | LimitKind::Cumulative4h | LimitKind::Cumulative7d);
            assert_eq!(TOLERANT.max_factor(kind), if cumulative { 1.02 } else { 1.0 }, "{kind:?}");
        }
        expect(LimitKind::Vtbi, 120.0 + 1e-9, Severity::Hard, Bound::Max, Some(120.0));
        assert!(check_order(&TOLERANT, &with(LimitKind::Dose, 1.0 + 1e-9)).has_hard());
        // A tolerance that is not a finite positive fraction is none.
        for bad in [f64::NAN, -0.5, f64::INFINITY] {
            assert_eq!(DrugLimits { cap_tolerance: bad, ..KETAMINE }.max_factor(LimitKind::Cumulative7d), 1.0);
        }
    }

    #[test]
    fn the_kernel_cap_leaves_the_tolerance_for_a_full_third_dose() {
        // Two 1.0 mg/kg sessions delivered 2.0000043 mg/kg: a third full dose still fits the cap.
        let order = Order {
            dose_mg_per_kg: 1.0,
            cumulative_1h_mg_per_kg: 1.0,
            cumulative_4h_mg_per_kg: 1.0,
            cumulative_7d_mg_per_kg: 3.000_004_3,
            ..STANDARD
        };
        let k = kernel_limits(&TOLERANT, &order, 200.0).unwrap();
        assert!((k.hard_cap_mg - 70.0).abs() < 1e-9, "{k:?}");
        let k = kernel_limits(&KETAMINE, &order, 200.0);
        assert_eq!(k, None, "without the tolerance the total crosses the hard cap");
    }

    #[test]
    fn settings_that_overflow_are_refused() {
        let huge = limit(None, None, None, Some(f64::MAX));
        let limits = DrugLimits {
            dose_rate_mg_per_kg_h: huge,
            dose_mg_per_kg: huge,
            cumulative_1h_mg_per_kg: huge,
            cumulative_4h_mg_per_kg: huge,
            cumulative_7d_mg_per_kg: huge,
            ..KETAMINE
        };
        // The rate is cut to the device; the cap overflows to infinity and is refused.
        assert_eq!(kernel_limits(&limits, &STANDARD, 200.0), None);
    }
}
