//! The invariants (S3, S5, S7) and their checks: pure functions of what a run saw, each with the
//! numbers that broke it in the [`Violation`].

use super::spec::Limits;
use ketapump_core::{Alarm, AlarmSet, Direction, StateKind, StepOutput};
use std::fmt::Write as _;

/// The invariants a run is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invariant {
    Overdose,
    CumulativeCap,
    MissedOcclusion,
    UnlatchedAlarm,
    DoseAccuracy,
}

impl Invariant {
    pub const ALL: [Invariant; 5] = [
        Invariant::Overdose,
        Invariant::CumulativeCap,
        Invariant::MissedOcclusion,
        Invariant::UnlatchedAlarm,
        Invariant::DoseAccuracy,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Invariant::Overdose => "overdose",
            Invariant::CumulativeCap => "cumulative_cap",
            Invariant::MissedOcclusion => "missed_occlusion",
            Invariant::UnlatchedAlarm => "unlatched_alarm",
            Invariant::DoseAccuracy => "dose_accuracy",
        }
    }
}

/// One broken invariant and the numbers that broke it.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

/// S3 overdose: `delivered ≤ programmed × (1 + tolerance) + step + hydrostatic`.
pub fn check_overdose(
    programmed_ml: f64,
    delivered_ml: f64,
    tolerance: f64,
    step_ml: f64,
    hydrostatic_ml: f64,
) -> Option<Violation> {
    let limit = programmed_ml * (1.0 + tolerance) + step_ml + hydrostatic_ml;
    let ok = delivered_ml <= limit; // false for NaN
    (!ok).then(|| Violation {
        invariant: Invariant::Overdose,
        detail: format!(
            "delivered {delivered_ml:.6} mL > {limit:.6} mL = programmed {programmed_ml:.6} × (1 + {tolerance}) \
             + step {step_ml:.6} + hydrostatic {hydrostatic_ml:.6}"
        ),
    })
}

/// S3 cap: `prior + delivered × concentration ≤ cap`.
pub fn check_cumulative_cap(
    prior_mg: f64,
    delivered_ml: f64,
    mg_per_ml: f64,
    step_ml: f64,
    cap_mg: f64,
) -> Option<Violation> {
    let total = prior_mg + delivered_ml * mg_per_ml;
    let limit = cap_mg + step_ml * mg_per_ml;
    let ok = total <= limit; // false for NaN
    (!ok).then(|| Violation {
        invariant: Invariant::CumulativeCap,
        detail: format!(
            "cumulative {total:.6} mg (prior {prior_mg:.6} + delivered {delivered_ml:.6} mL × {mg_per_ml} mg/mL) \
             > cap {cap_mg:.6} mg + one step"
        ),
    })
}

/// What the run saw of an injected occlusion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OcclusionRecord {
    pub onset_s: f64,
    /// True line pressure at onset (mmHg).
    pub p0_mmhg: f64,
    /// Lowest programmed rate in force while occluded (mL/s).
    pub rate_ml_s: f64,
    /// The plant's total compliance (mL/mmHg).
    pub compliance_ml_per_mmhg: f64,
    /// First time the true line pressure exceeded the spec's threshold, if it did.
    pub crossed_s: Option<f64>,
}

impl OcclusionRecord {
    /// S5: the latest time the alarm may latch, or `None` when the pressure never crossed.
    pub fn deadline_s(&self, limits: &Limits) -> Option<f64> {
        let crossed = self.crossed_s?;
        let rise_s = if self.rate_ml_s > 0.0 {
            (self.compliance_ml_per_mmhg * (limits.occlusion_threshold_mmhg - self.p0_mmhg) / self.rate_ml_s).max(0.0)
        } else {
            0.0
        };
        Some((self.onset_s + rise_s).max(crossed) + limits.occlusion_latency_s)
    }
}

/// S5 missed occlusion: an alarm must have latched by the deadline.
pub fn check_occlusion(record: &OcclusionRecord, first_alarm_s: Option<f64>, limits: &Limits) -> Option<Violation> {
    let deadline = record.deadline_s(limits)?;
    let in_time = first_alarm_s.is_some_and(|t| t <= deadline);
    (!in_time).then(|| {
        let alarm = first_alarm_s.map_or_else(|| String::from("never"), |t| format!("at {t:.1} s"));
        Violation {
            invariant: Invariant::MissedOcclusion,
            detail: format!(
                "occlusion at {:.1} s (P0 {:.1} mmHg, Q {:.4} mL/h, C {:.5} mL/mmHg) crossed {} mmHg at {:.1} s; \
                 alarm due by {deadline:.1} s, latched {alarm}",
                record.onset_s,
                record.p0_mmhg,
                record.rate_ml_s * 3_600.0,
                record.compliance_ml_per_mmhg,
                limits.occlusion_threshold_mmhg,
                record.crossed_s.unwrap_or(f64::NAN),
            ),
        }
    })
}

/// S3 accuracy of a fault-free run: it completed, within ±tolerance of the programmed volume.
pub fn check_accuracy(
    programmed_ml: f64,
    delivered_ml: f64,
    tolerance: f64,
    state: StateKind,
    alarms: AlarmSet,
) -> Option<Violation> {
    let off = (delivered_ml - programmed_ml) / programmed_ml;
    let ok = state == StateKind::Complete && off.abs() <= tolerance;
    (!ok).then(|| {
        let mut detail = format!(
            "ended {} with {delivered_ml:.6} mL of {programmed_ml:.6} mL ({:+.3} %)",
            state.as_str(),
            off * 100.0
        );
        for (n, alarm) in alarms.iter().enumerate() {
            let _ = write!(detail, "{}{}", if n == 0 { "; alarms: " } else { ", " }, alarm.as_str());
        }
        Violation { invariant: Invariant::DoseAccuracy, detail }
    })
}

/// S7: watches every tick after the first alarm. The first breach is kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatchMonitor {
    latched: Option<AlarmSet>,
    breach: Option<String>,
}

impl LatchMonitor {
    pub fn observe(&mut self, t_s: f64, out: &StepOutput) {
        if self.breach.is_some() {
            return;
        }
        let Some(before) = self.latched else {
            if !out.alarms.is_empty() {
                self.latched = Some(out.alarms);
                self.breach = Self::breach_of(t_s, out, out.alarms);
            }
            return;
        };
        self.breach = Self::breach_of(t_s, out, before);
        self.latched = Some(before.union(out.alarms));
    }

    fn breach_of(t_s: f64, out: &StepOutput, before: AlarmSet) -> Option<String> {
        let names = |set: AlarmSet| set.iter().map(Alarm::as_str).collect::<Vec<_>>().join(", ");
        if out.command.direction == Direction::Forward {
            return Some(format!(
                "at {t_s:.1} s forward {:.4} mL/h commanded while alarms latched ({})",
                out.command.rate_ml_s * 3_600.0,
                names(before)
            ));
        }
        if out.state != StateKind::Alarm {
            return Some(format!("at {t_s:.1} s the kernel left alarm for {} unacknowledged", out.state.as_str()));
        }
        let dropped = before.difference(out.alarms);
        if !dropped.is_empty() {
            return Some(format!("at {t_s:.1} s latched alarms dropped unacknowledged: {}", names(dropped)));
        }
        None
    }

    /// When the first alarm was seen, the breach if any.
    pub fn violation(&self) -> Option<Violation> {
        self.breach.clone().map(|detail| Violation { invariant: Invariant::UnlatchedAlarm, detail })
    }
}
