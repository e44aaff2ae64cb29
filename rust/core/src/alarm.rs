//! Alarm and warning codes, and a small bit set of them (no allocation).

/// A latched alarm. Each has its own code, its own detector in the kernel and its own test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Alarm {
    /// Delivered volume above programmed × (1 + tolerance).
    Overdose = 0,
    /// Cumulative drug above the hard cap.
    CumulativeCap = 1,
    /// A commanded rate was NaN, infinite, ≤ 0 or above the ceiling.
    RateCommandInvalid = 2,
    /// A telemetry sample was non-finite, implausible, from the future or out of order.
    TelemetryInvalid = 3,
    /// No fresh telemetry within `stale_after_s`.
    TelemetryStale = 4,
    /// Line pressure above the occlusion threshold.
    OcclusionPressure = 5,
    /// Line pressure rising as an occlusion would make it (slope detector).
    OcclusionSlope = 6,
    /// Motor commanded but the plunger did not move.
    Stall = 7,
    /// Measured flow off by more than the tolerance over the window (over/under-infusion, siphon, slip).
    FlowDeviation = 8,
    /// Syringe empty or plunger at end of travel.
    SyringeEmpty = 9,
    AirInLine = 10,
    SyringeMissing = 11,
    /// The plunger advanced while no forward motion was commanded (free flow, siphon).
    UncommandedDelivery = 12,
    /// The plunger moved backwards while infusing.
    ReverseMotion = 13,
    /// The kernel's clock was non-finite or went backwards.
    ClockInvalid = 14,
    /// The plunger encoder fell behind the motor's commanded volume by more than the drive model
    /// explains (a slipping encoder, a slipping drive).
    EncoderMismatch = 15,
}

impl Alarm {
    pub const ALL: [Alarm; 16] = [
        Alarm::Overdose,
        Alarm::CumulativeCap,
        Alarm::RateCommandInvalid,
        Alarm::TelemetryInvalid,
        Alarm::TelemetryStale,
        Alarm::OcclusionPressure,
        Alarm::OcclusionSlope,
        Alarm::Stall,
        Alarm::FlowDeviation,
        Alarm::SyringeEmpty,
        Alarm::AirInLine,
        Alarm::SyringeMissing,
        Alarm::UncommandedDelivery,
        Alarm::ReverseMotion,
        Alarm::ClockInvalid,
        Alarm::EncoderMismatch,
    ];

    /// Stable name used in logs and in Python.
    pub const fn as_str(self) -> &'static str {
        match self {
            Alarm::Overdose => "overdose",
            Alarm::CumulativeCap => "cumulative_cap",
            Alarm::RateCommandInvalid => "rate_command_invalid",
            Alarm::TelemetryInvalid => "telemetry_invalid",
            Alarm::TelemetryStale => "telemetry_stale",
            Alarm::OcclusionPressure => "occlusion_pressure",
            Alarm::OcclusionSlope => "occlusion_slope",
            Alarm::Stall => "stall",
            Alarm::FlowDeviation => "flow_deviation",
            Alarm::SyringeEmpty => "syringe_empty",
            Alarm::AirInLine => "air_in_line",
            Alarm::SyringeMissing => "syringe_missing",
            Alarm::UncommandedDelivery => "uncommanded_delivery",
            Alarm::ReverseMotion => "reverse_motion",
            Alarm::ClockInvalid => "clock_invalid",
            Alarm::EncoderMismatch => "encoder_mismatch",
        }
    }

    /// The two occlusion detectors.
    pub const fn is_occlusion(self) -> bool {
        matches!(self, Alarm::OcclusionPressure | Alarm::OcclusionSlope)
    }

    /// Whether this alarm may start (or leave running) the post-occlusion back-off. An occlusion can be
    /// seen first by any check that watches delivery — the pressure and slope detectors, the stall and
    /// encoder cross-checks (the drive cannot push against the line, or slips while it tries), the flow check (the plunger lags the target), the dose
    /// and cap checks (the motor ran on) — and every one of them leaves the compressed volume in the
    /// line, so each may back off; whether there is anything to back off is the pressure's to say.
    ///
    /// Never from an alarm whose cause makes a retract unsafe or its steering untrustworthy:
    /// `telemetry_invalid`, `telemetry_stale` and `clock_invalid` (never act on a pressure or a time
    /// that cannot be trusted), `air_in_line` (air makes the line's compliance unknown and a retract
    /// would draw the bubble about; the operator clears it with the motor still), `syringe_missing`
    /// (nothing is held to retract), `syringe_empty` (the plunger is on the barrel's end: what the
    /// sensor reads is the stopper pressed home, not stored line volume), `reverse_motion` (the drive
    /// or encoder is not doing what it is told), `uncommanded_delivery` (free flow, nothing stored) and
    /// `rate_command_invalid` (an operator's bad entry says nothing about the line).
    pub const fn permits_backoff(self) -> bool {
        matches!(
            self,
            Alarm::OcclusionPressure
                | Alarm::OcclusionSlope
                | Alarm::Stall
                | Alarm::EncoderMismatch
                | Alarm::FlowDeviation
                | Alarm::Overdose
                | Alarm::CumulativeCap
        )
    }

    pub const fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

/// A set of alarms as bits (`1 << code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct AlarmSet(pub u32);

impl AlarmSet {
    pub const EMPTY: AlarmSet = AlarmSet(0);

    #[inline(always)]
    pub fn insert(&mut self, alarm: Alarm) {
        self.0 |= alarm.bit();
    }
    pub const fn contains(self, alarm: Alarm) -> bool {
        self.0 & alarm.bit() != 0
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub const fn union(self, other: AlarmSet) -> AlarmSet {
        AlarmSet(self.0 | other.0)
    }
    /// Members of `self` not in `other`.
    pub const fn difference(self, other: AlarmSet) -> AlarmSet {
        AlarmSet(self.0 & !other.0)
    }
    pub fn iter(self) -> impl Iterator<Item = Alarm> {
        Alarm::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

/// Non-latching advisories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Warning {
    /// Less than `near_empty_ml` or `near_empty_s` of drug left in the syringe.
    NearEmpty = 0,
}

impl Warning {
    pub const fn as_str(self) -> &'static str {
        match self {
            Warning::NearEmpty => "near_empty",
        }
    }
}
