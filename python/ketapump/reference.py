"""A plain pure-Python reference model of the Rust safety kernel (``rust/core``).

This module is test support and a future benchmark baseline, **not** the product: the pump is only ever
driven by the Rust kernel (``ketapump._core``). It reproduces, statement by statement and with the same
floating-point operation order, the core's

- :func:`clamp_rate` (``clamp.rs``), the single choke point for a forward rate;
- :class:`ReferenceController` (``controller.rs``), the feed-forward + PI volume controller;
- :class:`ReferenceKernel` (``kernel.rs``, ``config.rs``, ``alarm.rs``, ``trace.rs``), the interlock
  state machine with its program validation and trace ring.

Agreement. Python floats are IEEE-754 doubles and every expression below is evaluated in the same order
as its Rust counterpart (no fused multiply-add, Rust's NaN-ignoring ``f64::min``/``f64::max`` mirrored by
:func:`_fmin`/:func:`_fmax`), so in practice the results are bit-identical. The contract the differential
tests hold the two implementations to is :data:`TOLERANCE`: every float output (``rate_ml_h``,
``delivered_ml``, ``remaining_ml``, trace ``t_s``/``delivered_ml``, the controller terms) agrees within
``1e-9`` relative with an absolute floor of ``1e-9`` (``math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)``),
and every discrete output (direction, state, alarms, clamp branch, trace causes, raised exceptions)
agrees exactly. Where the Rust code would panic (``f64::clamp`` with a NaN bound), :class:`RustPanicError`
is raised at the same point.

Keep it in step with the core: a change to ``rust/core`` needs the same change here, or
``tests/test_differential.py`` fails. Last mirrored: commit d90149c (restart-on-target controller,
stall volume counted every tick, ceiling-capped back-off rate) and the S6 back-off change (a back-off
planned for every alarm that permits one, only with the line above baseline + margin) and the
end-of-dose drive release (``drive_stiffness_n_per_mm``: the dose ends early by what the compressed
drive still pushes, counted as delivered from the completion on).

Configuration is not validated here: :class:`ReferenceKernel` takes the already-validated raw settings
(``ketapump.config.default_kernel_settings()`` plus overrides, i.e. what ``ketapump.config.kernel_config``
accepted) and derives the kernel units exactly as ``KernelConfig::from_raw`` does. Program and rate
validation (``Program::new``, ``validate_rate``) *is* reproduced, with the same field names in errors.
Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import math
import struct
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from ketapump.errors import ConfigurationError, InterlockError, KetapumpError, StateTransitionError

__all__ = [
    "ALARMS",
    "TOLERANCE",
    "AlarmSet",
    "Backoff",
    "ControlStatus",
    "Gains",
    "Infusing",
    "KernelConfig",
    "MotorCommand",
    "Program",
    "RawKernelConfig",
    "ReferenceController",
    "ReferenceKernel",
    "RustPanicError",
    "State",
    "StepResult",
    "TakeUp",
    "Telemetry",
    "TraceEvent",
    "clamp_rate",
    "validate_rate",
]

#: Agreement with the Rust kernel: ``math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)``.
TOLERANCE: Final = 1e-9

S_PER_H: Final = 3_600.0
#: ``f64::MIN`` (the most negative finite double), the seed of the staleness fold.
F64_MIN: Final = -sys.float_info.max
#: Capacity of the trace ring (``trace::TRACE_CAPACITY``).
TRACE_CAPACITY: Final = 64
#: Checkpoints in the flow-deviation window (``kernel::FLOW_POINTS``).
FLOW_POINTS: Final = 13
#: The longest an alarm may be silenced (``config::MAX_SILENCE_S``).
MAX_SILENCE_S: Final = 120.0

#: Alarm names in code order (``Alarm::ALL``); an alarm's code is its index.
ALARMS: Final = (
    "overdose",
    "cumulative_cap",
    "rate_command_invalid",
    "telemetry_invalid",
    "telemetry_stale",
    "occlusion_pressure",
    "occlusion_slope",
    "stall",
    "flow_deviation",
    "syringe_empty",
    "air_in_line",
    "syringe_missing",
    "uncommanded_delivery",
    "reverse_motion",
    "clock_invalid",
)

# Unit-check problems (``UnitProblem::as_str``).
NOT_FINITE: Final = "must be a finite number"
BELOW_MINIMUM: Final = "is below the allowed minimum"
ABOVE_MAXIMUM: Final = "is above the allowed maximum"

# Ranges of the unit newtypes used by program validation (``units.rs``).
MILLILITRES_MAX: Final = 1_000.0
ML_PER_HOUR_MAX: Final = 2_000.0

# Telemetry plausibility bounds (``SafetyKernel::accept_sample``).
VOLUME_MIN_ML: Final = -1_000.0
VOLUME_MAX_ML: Final = 10_000.0
PRESSURE_MIN_MMHG: Final = -300.0
PRESSURE_MAX_MMHG: Final = 5_000.0

# Directions (``Direction::as_str``).
HOLD: Final = "hold"
FORWARD: Final = "forward"
RETRACT: Final = "retract"


class RustPanicError(RuntimeError):
    """Raised where the Rust code would panic (``f64::clamp`` with NaN or crossed bounds)."""


# ----- Rust f64 semantics ---------------------------------------------------------------------------


def _fmin(a: float, b: float) -> float:
    """``f64::min``: NaN is ignored (the other argument is returned)."""
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return b if b < a else a


def _fmax(a: float, b: float) -> float:
    """``f64::max``: NaN is ignored (the other argument is returned)."""
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return b if b > a else a


def _fclamp(x: float, lo: float, hi: float) -> float:
    """``f64::clamp``: panics unless ``lo <= hi``; a NaN ``x`` passes through."""
    if not lo <= hi:
        raise RustPanicError(f"f64::clamp with min={lo!r} > max={hi!r} or a NaN bound")
    # max(x, lo) keeps x unless lo > x, exactly Rust's `if self < min { self = min }` (NaN stays NaN).
    x = max(x, lo)
    return min(x, hi)


# ----- clamp.rs -------------------------------------------------------------------------------------


def clamp_rate(
    requested_ml_s: float, max_ml_s: float, headroom_ml: float, period_s: float
) -> tuple[float, str]:
    """Clamps a requested forward rate (mL/s) into ``[0, min(max, headroom / period)]``.

    Returns the rate and the name of the branch that decided it (``ClampReason::as_str``).
    """
    if not math.isfinite(requested_ml_s):
        return 0.0, "non_finite"
    if requested_ml_s < 0.0:
        return 0.0, "negative"
    limits_valid = (
        math.isfinite(max_ml_s)
        and max_ml_s > 0.0
        and not math.isnan(headroom_ml)
        and math.isfinite(period_s)
        and period_s > 0.0
    )
    if not limits_valid:
        return 0.0, "no_limit"
    if headroom_ml <= 0.0:
        return 0.0, "dose_exhausted"
    capped = _fmin(requested_ml_s, max_ml_s)
    headroom_rate = _headroom_rate(headroom_ml, period_s)
    if headroom_rate == 0.0:
        return 0.0, "dose_exhausted"
    if capped > headroom_rate:
        return headroom_rate, "dose_headroom"
    if requested_ml_s > max_ml_s:
        return capped, "above_max"
    return requested_ml_s, "unchanged"


def _headroom_rate(headroom_ml: float, period_s: float) -> float:
    """``headroom / period`` rounded down so ``rate × period ≤ headroom``; zero when subnormal."""
    rate = headroom_ml / period_s
    if rate < sys.float_info.min:
        return 0.0
    while math.isfinite(rate) and rate * period_s > headroom_ml:
        rate = math.nextafter(rate, 0.0)
    return rate


# ----- controller.rs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gains:
    """Controller tuning, in kernel units (mL, s)."""

    kp_per_s: float
    ki_per_s2: float
    integral_limit_ml_s: float
    slew_ml_s_per_s: float
    max_ml_s: float


@dataclass(frozen=True)
class ControlStatus:
    """The per-term breakdown of one controller step (all zero when the controller did not run)."""

    target_ml: float = 0.0
    error_ml: float = 0.0
    feed_forward_ml_s: float = 0.0
    proportional_ml_s: float = 0.0
    integral_ml_s: float = 0.0
    output_ml_s: float = 0.0
    saturated: bool = False
    slew_limited: bool = False
    integrating: bool = False


class ReferenceController:
    """PI-with-feed-forward volume controller with anti-windup and a slew limit (``RateController``).

    A refused step raises :class:`~ketapump.errors.ConfigurationError` naming the offending input and
    leaves the state untouched, as the binding's ``RateController`` does.
    """

    def __init__(self, gains: Gains) -> None:
        self.gains = gains
        self.target_ml = 0.0
        self.integral_ml_s = 0.0
        self.last_output_ml_s = 0.0

    def reset(self, measured_ml: float) -> None:
        """Tracks from ``measured_ml`` with no integral and a stopped motor (every start or resume).

        Like the core (and unlike the binding's ``RateController.reset``), a non-finite value is not refused.
        """
        self.target_ml = measured_ml
        self.integral_ml_s = 0.0
        self.last_output_ml_s = 0.0

    def step(self, setpoint_ml_s: float, measured_ml: float, dt_s: float) -> ControlStatus:
        """One control step."""
        for name, value in (("setpoint_ml_s", setpoint_ml_s), ("measured_ml", measured_ml), ("dt_s", dt_s)):
            if not math.isfinite(value):
                raise ConfigurationError(name, NOT_FINITE)
        for name, value in (("setpoint_ml_s", setpoint_ml_s), ("dt_s", dt_s)):
            if value < 0.0:
                raise ConfigurationError(name, "must not be negative")
        g = self.gains
        target = self.target_ml + setpoint_ml_s * dt_s
        error = target - measured_ml
        proportional = g.kp_per_s * error
        candidate = _fclamp(self.integral_ml_s + error * dt_s, -g.integral_limit_ml_s, g.integral_limit_ml_s)
        unsaturated = setpoint_ml_s + proportional + g.ki_per_s2 * candidate
        # Anti-windup: hold the integral when saturated and the error pushes further out.
        winding_up = (unsaturated > g.max_ml_s and error > 0.0) or (unsaturated < 0.0 and error < 0.0)
        integral = self.integral_ml_s if winding_up else candidate
        total = setpoint_ml_s + proportional + g.ki_per_s2 * integral
        saturated_output = _fclamp(total, 0.0, g.max_ml_s)
        step_limit = g.slew_ml_s_per_s * dt_s
        slewed = _fclamp(
            _fclamp(saturated_output, self.last_output_ml_s - step_limit, self.last_output_ml_s + step_limit),
            0.0,
            g.max_ml_s,
        )

        # Finite inputs can still overflow (a huge dt or volume): refuse rather than poison the state.
        if not all(math.isfinite(v) for v in (target, error, integral, slewed)):
            raise ConfigurationError("dt_s", NOT_FINITE)
        self.target_ml = target
        self.integral_ml_s = integral
        self.last_output_ml_s = slewed
        return ControlStatus(
            target_ml=target,
            error_ml=error,
            feed_forward_ml_s=setpoint_ml_s,
            proportional_ml_s=proportional,
            integral_ml_s=g.ki_per_s2 * integral,
            output_ml_s=slewed,
            saturated=total < 0.0 or total > g.max_ml_s,
            slew_limited=slewed != saturated_output,
            integrating=not winding_up,
        )


# ----- config.rs ------------------------------------------------------------------------------------

_BOOL_SETTINGS: Final = frozenset({"has_pressure_sensor", "slope_detector", "backoff"})
#: One mmHg as a stress (N/mm²): 133.322 Pa.
N_PER_MM2_PER_MMHG: Final = 133.322e-6


@dataclass(frozen=True)
class RawKernelConfig:
    """Every kernel setting as plain numbers (``RawKernelConfig``); names as in the defaults file."""

    syringe_diameter_mm: float
    syringe_capacity_ml: float
    syringe_fill_ml: float
    encoder_counts_per_mm: float
    concentration_mg_per_ml: float
    max_rate_ml_h: float
    hard_max_rate_ml_h: float
    pump_max_rate_ml_h: float
    dose_tolerance: float
    hard_cap_mg: float
    prior_delivered_mg: float
    has_pressure_sensor: bool
    occlusion_threshold_mmhg: float
    hard_max_occlusion_threshold_mmhg: float
    slope_detector: bool
    slope_rise_mmhg: float
    slope_fraction: float
    slope_arm_delay_s: float
    slope_rearm_increase: float
    slope_sustain_s: float
    slope_hold_fraction: float
    slope_sustained_rise_mmhg: float
    pressure_filter_s: float
    pressure_baseline_s: float
    compliance_ml_per_mmhg: float
    drive_stiffness_n_per_mm: float
    backoff: bool
    backoff_margin_mmhg: float
    backoff_rate_ml_h: float
    stall_volume_ml: float
    flow_window_s: float
    flow_tolerance: float
    flow_min_volume_ml: float
    uncommanded_volume_ml: float
    near_empty_ml: float
    near_empty_s: float
    stale_after_s: float
    control_period_s: float
    take_up_rate_ml_h: float
    take_up_max_ml: float
    take_up_detect_ml: float
    kp_per_s: float
    ki_per_s2: float
    integral_limit_ml_s: float
    slew_ml_h_per_s: float
    silence_s: float

    @classmethod
    def from_settings(cls, settings: Mapping[str, float | bool]) -> RawKernelConfig:
        """Converts a complete settings mapping (a missing or unknown name is a ``TypeError``)."""
        converted = {
            name: bool(value) if name in _BOOL_SETTINGS else float(value) for name, value in settings.items()
        }
        return cls(**converted)  # type: ignore[arg-type]


@dataclass(frozen=True)
class KernelConfig:
    """The configuration in kernel units, derived as ``KernelConfig::from_raw`` does (no validation)."""

    raw: RawKernelConfig
    #: Volume of one encoder count (mL): the measurement quantum.
    volume_quantum_ml: float
    #: min(configured, hard, pump) maximum rate in mL/s.
    max_rate_ml_s: float
    take_up_rate_ml_s: float
    backoff_rate_ml_s: float
    slew_ml_s_per_s: float
    #: Drive-train compliance ``A²/k`` on this syringe (mL/mmHg); 0 when the stiffness is 0.
    drive_compliance_ml_per_mmhg: float

    @classmethod
    def from_raw(cls, raw: RawKernelConfig) -> KernelConfig:
        area_ml_per_mm = math.pi * raw.syringe_diameter_mm * raw.syringe_diameter_mm / 4.0 / 1_000.0
        area_mm2 = area_ml_per_mm * 1_000.0
        stiffness = raw.drive_stiffness_n_per_mm
        drive_compliance = (
            N_PER_MM2_PER_MMHG * area_mm2 / stiffness * area_ml_per_mm if stiffness > 0.0 else 0.0
        )
        ceiling = _fmin(_fmin(raw.max_rate_ml_h, raw.hard_max_rate_ml_h), raw.pump_max_rate_ml_h)
        return cls(
            raw=raw,
            volume_quantum_ml=area_ml_per_mm / raw.encoder_counts_per_mm,
            max_rate_ml_s=ceiling / S_PER_H,
            take_up_rate_ml_s=_fmin(raw.take_up_rate_ml_h / S_PER_H, ceiling / S_PER_H),
            # Every commanded magnitude, retract included, stays under the ceiling.
            backoff_rate_ml_s=_fmin(raw.backoff_rate_ml_h / S_PER_H, ceiling / S_PER_H),
            slew_ml_s_per_s=raw.slew_ml_h_per_s / S_PER_H,
            drive_compliance_ml_per_mmhg=drive_compliance,
        )

    @classmethod
    def from_settings(cls, settings: Mapping[str, float | bool]) -> KernelConfig:
        return cls.from_raw(RawKernelConfig.from_settings(settings))

    @property
    def mg_per_ml(self) -> float:
        """Drug (mg) per mL at the configured concentration."""
        return self.raw.concentration_mg_per_ml


def _check_range(value: float, minimum: float, strict: bool, maximum: float) -> str | None:
    """``units::check_range``: the problem text, or None when the value is accepted."""
    if not math.isfinite(value):
        return NOT_FINITE
    if value < minimum or (strict and value <= minimum):
        return BELOW_MINIMUM
    if value > maximum:
        return ABOVE_MAXIMUM
    return None


def _quantity(field_name: str, value: float, maximum: float) -> float:
    """A ``Millilitres``/``MlPerHour``-style newtype: ``0 <= value <= maximum``, finite."""
    problem = _check_range(value, 0.0, False, maximum)
    if problem is not None:
        raise ConfigurationError(field_name, problem)
    return value


def _above_hard(field_name: str, other: str) -> ConfigurationError:
    return ConfigurationError(field_name, f"is above the hard limit {other}")


def _inconsistent(field_name: str, other: str) -> ConfigurationError:
    return ConfigurationError(field_name, f"is inconsistent with {other}")


@dataclass(frozen=True)
class Program:
    """What to infuse: a rate and a volume to be infused (VTBI)."""

    rate_ml_s: float
    vtbi_ml: float
    #: Run the bounded fast take-up of slack before the programmed rate.
    take_up: bool

    @classmethod
    def new(
        cls, config: KernelConfig, rate_ml_h: float, vtbi_ml: float, take_up: bool, delivered_before_mg: float
    ) -> Program:
        """``Program::new``: raises ConfigurationError naming ``rate_ml_h`` or ``vtbi_ml``."""
        rate_ml_s = validate_rate(config, rate_ml_h)
        vtbi = _quantity("vtbi_ml", vtbi_ml, MILLILITRES_MAX)
        if vtbi <= 0.0:
            raise ConfigurationError("vtbi_ml", BELOW_MINIMUM)
        if vtbi > config.raw.syringe_fill_ml:
            raise _inconsistent("vtbi_ml", "syringe_fill_ml")
        if delivered_before_mg + vtbi * config.mg_per_ml > config.raw.hard_cap_mg:
            raise _above_hard("vtbi_ml", "hard_cap_mg")
        return cls(rate_ml_s=rate_ml_s, vtbi_ml=vtbi, take_up=take_up)


def validate_rate(config: KernelConfig, rate_ml_h: float) -> float:
    """A positive finite rate no higher than the effective ceiling (a unit slip is refused). Returns mL/s."""
    rate = _quantity("rate_ml_h", rate_ml_h, ML_PER_HOUR_MAX)
    if rate <= 0.0:
        raise ConfigurationError("rate_ml_h", BELOW_MINIMUM)
    if rate / S_PER_H > config.max_rate_ml_s:
        raise _above_hard("rate_ml_h", "max_rate_ml_h")
    return rate / S_PER_H


# ----- alarm.rs -------------------------------------------------------------------------------------

_ALARM_BIT: Final = {name: 1 << code for code, name in enumerate(ALARMS)}


@dataclass
class AlarmSet:
    """A set of alarms as bits (``1 << code``), iterated in code order."""

    bits: int = 0

    def insert(self, alarm: str) -> None:
        self.bits |= _ALARM_BIT[alarm]

    def contains(self, alarm: str) -> bool:
        return self.bits & _ALARM_BIT[alarm] != 0

    def is_empty(self) -> bool:
        return self.bits == 0

    def union(self, other: AlarmSet) -> AlarmSet:
        return AlarmSet(self.bits | other.bits)

    def difference(self, other: AlarmSet) -> AlarmSet:
        """Members of ``self`` not in ``other``."""
        return AlarmSet(self.bits & ~other.bits)

    def names(self) -> tuple[str, ...]:
        return tuple(name for name in ALARMS if self.contains(name))


# ----- trace.rs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceEvent:
    """One recorded state-machine event."""

    seq: int
    t_s: float
    from_state: str
    to_state: str
    #: ``Cause::as_str``: an operator command, ``take_up_done``, ``dose_complete`` or an alarm name.
    cause: str
    delivered_ml: float


class TraceRing:
    """Fixed-size ring: when full, the oldest event is overwritten and counted in ``dropped``."""

    def __init__(self) -> None:
        self.events: deque[TraceEvent] = deque()
        self.next_seq = 0
        self.dropped = 0

    def push(self, t_s: float, from_state: str, to_state: str, cause: str, delivered_ml: float) -> None:
        event = TraceEvent(self.next_seq, t_s, from_state, to_state, cause, delivered_ml)
        self.next_seq += 1
        if len(self.events) == TRACE_CAPACITY:
            self.events.popleft()
            self.dropped += 1
        self.events.append(event)

    def pop(self) -> TraceEvent | None:
        return self.events.popleft() if self.events else None


# ----- kernel.rs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TakeUp:
    """Running sub-phase: fast bounded take-up of lead-screw slack."""

    commanded_ml: float
    origin_ml: float


@dataclass(frozen=True)
class Infusing:
    """Running sub-phase: closed-loop delivery at the programmed rate."""


@dataclass(frozen=True)
class Backoff:
    """The post-occlusion back-off in progress."""

    #: Volume the retract may still take (mL).
    remaining_ml: float
    #: Back-off ends once the pressure is at or below this (mmHg).
    target_mmhg: float


@dataclass(frozen=True)
class State:
    """A state (``StateKind::as_str`` name) with the data only it owns."""

    kind: str
    #: ``running`` only.
    phase: TakeUp | Infusing | None = None
    #: ``alarm`` only (None: no back-off).
    backoff: Backoff | None = None

    @property
    def is_monitored(self) -> bool:
        """Interlocks are evaluated in every state but ``idle`` and ``complete``."""
        return self.kind not in ("idle", "complete")

    @property
    def is_running(self) -> bool:
        return self.kind == "running"

    @property
    def is_infusing(self) -> bool:
        return self.kind == "running" and isinstance(self.phase, Infusing)


IDLE: Final = State("idle")
ARMED: Final = State("armed")
PAUSED: Final = State("paused")
STOPPED: Final = State("stopped")
COMPLETE: Final = State("complete")
RUNNING_INFUSING: Final = State("running", phase=Infusing())


#: Alarms that may start (or leave running) the back-off (``Alarm::permits_backoff``): every check that
#: can see an occlusion first. Never telemetry, clock, air, syringe missing or empty, reverse motion,
#: uncommanded delivery or an invalid rate command: no retract on an untrusted pressure or where unsafe.
_BACKOFF_ALARMS: Final = frozenset(
    {"occlusion_pressure", "occlusion_slope", "stall", "flow_deviation", "overdose", "cumulative_cap"}
)


def _permits_backoff(alarm: str) -> bool:
    """Whether ``alarm`` may start or keep a back-off (``Alarm::permits_backoff``)."""
    return alarm in _BACKOFF_ALARMS


def _running(phase: TakeUp | Infusing) -> State:
    return State("running", phase=phase)


def _alarm(backoff: Backoff | None) -> State:
    return State("alarm", backoff=backoff)


@dataclass(frozen=True)
class Telemetry:
    """One telemetry sample as the pump reported it. Any field may be garbage; the kernel checks."""

    t_s: float
    volume_ml: float
    pressure_mmhg: float
    motor_running: bool = False
    air_in_line: bool = False
    syringe_present: bool = True
    end_of_travel: bool = False


@dataclass(frozen=True)
class MotorCommand:
    """A direction and a finite, non-negative rate (mL/s; zero exactly when ``hold``)."""

    direction: str
    rate_ml_s: float

    @staticmethod
    def forward(rate_ml_s: float) -> MotorCommand:
        return MotorCommand(FORWARD, rate_ml_s) if rate_ml_s > 0.0 else MOTOR_HOLD

    @staticmethod
    def retract(rate_ml_s: float) -> MotorCommand:
        return MotorCommand(RETRACT, rate_ml_s) if rate_ml_s > 0.0 else MOTOR_HOLD


MOTOR_HOLD: Final = MotorCommand(HOLD, 0.0)


@dataclass(frozen=True)
class StepResult:
    """What one tick returns (the attribute names of ``ketapump._core.StepOutput``)."""

    direction: str
    rate_ml_h: float
    state: str
    #: All latched alarms, in code order.
    alarms: tuple[str, ...]
    #: Alarms first raised on this tick, in code order.
    raised: tuple[str, ...]
    near_empty: bool
    #: An alarm is latched and not silenced.
    annunciate: bool
    delivered_ml: float
    remaining_ml: float
    #: Which clamp branch decided the forward rate.
    clamp: str
    control: ControlStatus = field(default_factory=ControlStatus)
    alarm_bits: int = 0


@dataclass(frozen=True)
class FlowPoint:
    t_s: float
    target_ml: float
    commanded_ml: float
    measured_ml: float


@dataclass
class PressureTrack:
    """Line-pressure estimator behind the slope detector and the back-off target."""

    initialised: bool = False
    filtered_mmhg: float = 0.0
    slope_mmhg_s: float = 0.0
    baseline_mmhg: float = 0.0
    last_raw_mmhg: float = 0.0
    #: Kernel time from which the slope detector may fire (re-armed on start, resume, rate change).
    armed_at_s: float = 0.0
    #: Kernel time since which the slope has stayed at or above ``slope_fraction``·Q/C without a break.
    rising_since_s: float | None = None
    #: Highest slope since ``rising_since_s`` (mmHg/s).
    rising_peak_mmhg_s: float = 0.0
    #: Interval between the last two pressure samples (s).
    last_dt_s: float = 0.0


class ReferenceKernel:
    """The safety kernel's state machine and interlocks, in plain Python (``SafetyKernel``).

    ``settings`` is the complete, already-validated raw settings mapping
    (``ketapump.config.default_kernel_settings()`` plus overrides).
    """

    def __init__(self, settings: Mapping[str, float | bool]) -> None:
        cfg = KernelConfig.from_settings(settings)
        self._cfg = cfg
        self._state: State = IDLE
        self._program: Program | None = None
        self._controller = ReferenceController(
            Gains(
                kp_per_s=cfg.raw.kp_per_s,
                ki_per_s2=cfg.raw.ki_per_s2,
                integral_limit_ml_s=cfg.raw.integral_limit_ml_s,
                slew_ml_s_per_s=cfg.slew_ml_s_per_s,
                max_ml_s=cfg.max_rate_ml_s,
            )
        )
        self._trace = TraceRing()
        self._latched = AlarmSet()
        # Kernel time of the last step (None before the first).
        self._now_s: float | None = None
        # Kernel time from which staleness is counted when no sample has arrived yet.
        self._monitored_since_s: float | None = None
        self._last_sample_t_s: float | None = None
        self._last_volume_ml: float | None = None
        # Encoder volume at the start of the current program.
        self._origin_ml: float | None = None
        # Volume and drug delivered by earlier programs on this kernel.
        self._completed_ml = 0.0
        self._completed_mg = 0.0
        # Forward motor volume commanded while infusing (integral of the held command).
        self._commanded_ml = 0.0
        self._last_command = MOTOR_HOLD
        # Volume where forward motion last stopped (for uncommanded delivery).
        self._hold_origin_ml: float | None = None
        # Stall detection.
        self._since_motion_ml = 0.0
        self._motion_ref_ml = 0.0
        self._moved_since_start = False
        # Highest volume seen since (re)start, for reverse-motion detection.
        self._peak_ml = 0.0
        # Flow-deviation checkpoints, oldest first (at most FLOW_POINTS).
        self._flow: list[FlowPoint] = []
        self._pressure = PressureTrack()
        # Lowest filtered line pressure since the program was loaded (the line's pressure at rest).
        self._rest_mmhg: float | None = None
        # Set at dose completion: (encoder volume then, drive release predicted then), in mL.
        self._release: tuple[float, float] | None = None
        self._silenced_until_s = -math.inf
        # Set on start, resume and the end of take-up: the next infusing tick restarts the controller on
        # target at the volume measured then (no catch-up for the time the motor was held).
        self._restart_controller = False

    # ----- read-only views -------------------------------------------------------------------------

    @property
    def config(self) -> KernelConfig:
        return self._cfg

    @property
    def state(self) -> str:
        return self._state.kind

    @property
    def full_state(self) -> State:
        return self._state

    @property
    def program(self) -> Program | None:
        return self._program

    @property
    def alarms(self) -> tuple[str, ...]:
        return self._latched.names()

    @property
    def commanded_ml(self) -> float:
        """Forward motor volume commanded by the current program while infusing (mL)."""
        return self._commanded_ml

    @property
    def delivered_ml(self) -> float:
        """Measured volume delivered by the current program (mL); from the completion on, the drive
        release predicted then counts as delivered until the plunger has moved that far."""
        if self._origin_ml is not None and self._last_volume_ml is not None:
            if self._release is not None:
                at_ml, release_ml = self._release
                return _fmax(self._last_volume_ml, at_ml + release_ml) - self._origin_ml
            return self._last_volume_ml - self._origin_ml
        return 0.0

    @property
    def drive_release_ml(self) -> float:
        """Volume the compressed drive will still push the plunger on by once the motor stops (mL)."""
        c_d = self._cfg.drive_compliance_ml_per_mmhg
        r, p, rest = self._cfg.raw, self._pressure, self._rest_mmhg
        if rest is not None and c_d > 0.0 and r.has_pressure_sensor and p.initialised:
            return c_d * _fmin(_fmax(p.last_raw_mmhg - rest, 0.0), r.occlusion_threshold_mmhg)
        return 0.0

    @property
    def cumulative_mg(self) -> float:
        """Drug delivered over the kernel's life plus what was delivered before it (mg)."""
        return self._cfg.raw.prior_delivered_mg + self._completed_mg + self.delivered_ml * self._cfg.mg_per_ml

    @property
    def trace_dropped(self) -> int:
        return self._trace.dropped

    def drain_trace(self) -> list[TraceEvent]:
        """Removes and returns every recorded event, oldest first."""
        events = []
        while (event := self._trace.pop()) is not None:
            events.append(event)
        return events

    def _now_or_zero(self) -> float:
        """``self.now_s.unwrap_or(0.0)``."""
        return self._now_s if self._now_s is not None else 0.0

    def _remaining_ml(self) -> float:
        if self._program is None:
            return 0.0
        return _fmax(self._program.vtbi_ml - self.delivered_ml, 0.0)

    def _syringe_left_ml(self) -> float:
        return self._cfg.raw.syringe_fill_ml - self._completed_ml - self.delivered_ml

    # ----- operator commands -----------------------------------------------------------------------

    def _refuse(self, command: str) -> StateTransitionError:
        return StateTransitionError(self._state.kind, command)

    def _transition(self, to: State, cause: str) -> None:
        from_kind = self._state.kind
        self._state = to
        t = self._now_or_zero()
        self._trace.push(t, from_kind, to.kind, cause, self.delivered_ml)

    def load(self, rate_ml_h: float, vtbi_ml: float, take_up: bool = True) -> None:
        """``idle``, ``stopped`` or ``complete`` → ``armed``; a program in force is closed first."""
        if self._state not in (IDLE, STOPPED, COMPLETE):
            raise self._refuse("load")
        delivered = self.delivered_ml
        completed_mg = self._completed_mg + delivered * self._cfg.mg_per_ml
        available = replace(
            self._cfg,
            raw=replace(
                self._cfg.raw, syringe_fill_ml=self._cfg.raw.syringe_fill_ml - self._completed_ml - delivered
            ),
        )
        program = Program.new(
            available, rate_ml_h, vtbi_ml, take_up, self._cfg.raw.prior_delivered_mg + completed_mg
        )
        self._completed_ml += delivered
        self._completed_mg = completed_mg
        self._program = program
        self._origin_ml = self._last_volume_ml
        self._release = None
        self._rest_mmhg = self._pressure.filtered_mmhg if self._pressure.initialised else None
        self._commanded_ml = 0.0
        self._hold_origin_ml = None
        self._monitored_since_s = self._now_s
        self._transition(ARMED, "load")

    def start(self) -> None:
        """``armed`` → ``running`` (with take-up if the program asks for it); ``stopped`` → ``running``."""
        program = self._program
        phase: TakeUp | Infusing
        if (
            self._state == ARMED
            and program is not None
            and program.take_up
            and self._cfg.raw.take_up_max_ml > 0.0
        ):
            origin = self._last_volume_ml if self._last_volume_ml is not None else 0.0
            phase = TakeUp(commanded_ml=0.0, origin_ml=origin)
        elif self._state in (ARMED, STOPPED) and program is not None:
            phase = Infusing()
        else:
            raise self._refuse("start")
        self._begin_motion()
        self._transition(_running(phase), "start")

    def pause(self) -> None:
        """``running`` → ``paused``."""
        if not self._state.is_running:
            raise self._refuse("pause")
        self._transition(PAUSED, "pause")

    def resume(self) -> None:
        """``paused`` → ``running`` at the programmed rate, tracking from the current volume."""
        if self._state != PAUSED:
            raise self._refuse("resume")
        self._begin_motion()
        self._transition(RUNNING_INFUSING, "resume")

    def stop(self) -> None:
        """``running`` or ``paused`` → ``stopped``."""
        if not (self._state.is_running or self._state == PAUSED):
            raise self._refuse("stop")
        self._transition(STOPPED, "stop")

    def acknowledge(self) -> None:
        """``alarm`` → ``stopped``, clearing the latch."""
        if self._state.kind != "alarm":
            raise self._refuse("acknowledge")
        self._latched = AlarmSet()
        self._transition(STOPPED, "acknowledge")

    def silence(self) -> None:
        """Silences the annunciation for ``silence_s``; the alarms stay latched."""
        if self._state.kind != "alarm":
            raise self._refuse("silence")
        self._silenced_until_s = self._now_or_zero() + self._cfg.raw.silence_s
        self._transition(self._state, "silence")

    def unload(self) -> None:
        """``armed``, ``stopped`` or ``complete`` → ``idle``, closing the program."""
        if self._state not in (ARMED, STOPPED, COMPLETE):
            raise self._refuse("unload")
        delivered = self.delivered_ml
        self._completed_ml += delivered
        self._completed_mg += delivered * self._cfg.mg_per_ml
        self._program = None
        self._origin_ml = None
        self._hold_origin_ml = None
        self._release = None
        self._rest_mmhg = None
        self._transition(IDLE, "unload")

    def set_rate(self, rate_ml_h: float) -> None:
        """Changes the programmed rate; an invalid rate is refused *and* latches ``rate_command_invalid``."""
        program = self._program
        if program is None:
            raise self._refuse("set_rate")
        if not (self._state in (ARMED, PAUSED, STOPPED) or self._state.is_running):
            raise self._refuse("set_rate")
        try:
            rate_ml_s = validate_rate(self._cfg, rate_ml_h)
        except ConfigurationError as cause:
            alarm = AlarmSet()
            alarm.insert("rate_command_invalid")
            self._raise(alarm)
            raise InterlockError("rate_command_invalid", f"{cause.field} {cause.problem}") from cause
        self._program = replace(program, rate_ml_s=rate_ml_s)
        # Only an increase above slope_rearm_increase re-arms (silences) the slope detector.
        if rate_ml_s > program.rate_ml_s * (1.0 + self._cfg.raw.slope_rearm_increase):
            self._pressure.armed_at_s = self._now_or_zero() + self._cfg.raw.slope_arm_delay_s
        self._transition(self._state, "set_rate")

    def _begin_motion(self) -> None:
        """Resets the per-run trackers on every start and resume."""
        volume = self._last_volume_ml if self._last_volume_ml is not None else 0.0
        self._controller.reset(volume)
        self._restart_controller = True
        self._since_motion_ml = 0.0
        self._motion_ref_ml = volume
        self._moved_since_start = False
        self._peak_ml = volume
        self._flow.clear()
        self._pressure.armed_at_s = self._now_or_zero() + self._cfg.raw.slope_arm_delay_s

    def _raise(self, alarms: AlarmSet) -> None:
        """Latches ``alarms``; enters ``alarm`` (starting a back-off after an occlusion while running)."""
        fresh = alarms.difference(self._latched)
        if fresh.is_empty():
            return
        self._latched = self._latched.union(fresh)
        self._silenced_until_s = -math.inf
        # Back-off only when every alarm raised permits it; any other alarm ends it.
        permitted = all(_permits_backoff(alarm) for alarm in fresh.names())
        if self._state.kind == "alarm" and permitted:
            next_state = _alarm(self._state.backoff)
        elif self._state.is_running and permitted:
            next_state = _alarm(self._backoff_plan())
        else:
            next_state = _alarm(None)
        for alarm in fresh.names():
            self._transition(next_state, alarm)

    def _backoff_plan(self) -> Backoff | None:
        """Only with a sensor that has a sample and a line above baseline + margin (else nothing stored)."""
        r = self._cfg.raw
        if not (r.backoff and r.has_pressure_sensor and self._pressure.initialised):
            return None
        target_mmhg = self._pressure.baseline_mmhg + r.backoff_margin_mmhg
        if self._pressure.last_raw_mmhg <= target_mmhg:
            return None
        stored_ml = r.compliance_ml_per_mmhg * (self._pressure.last_raw_mmhg - self._pressure.baseline_mmhg)
        return Backoff(remaining_ml=_fmax(stored_ml, 0.0), target_mmhg=target_mmhg)

    # ----- the tick --------------------------------------------------------------------------------

    def step(  # noqa: PLR0917 - the binding's signature
        self,
        now_s: float,
        t_s: float,
        volume_ml: float,
        pressure_mmhg: float,
        motor_running: bool = False,
        air_in_line: bool = False,
        syringe_present: bool = True,
        end_of_travel: bool = False,
    ) -> StepResult:
        """One control tick at kernel time ``now_s`` with the latest telemetry sample."""
        now_s = float(now_s)
        sample = Telemetry(
            t_s=float(t_s),
            volume_ml=float(volume_ml),
            pressure_mmhg=float(pressure_mmhg),
            motor_running=bool(motor_running),
            air_in_line=bool(air_in_line),
            syringe_present=bool(syringe_present),
            end_of_travel=bool(end_of_travel),
        )
        latched_before = self._latched
        raised = AlarmSet()
        monitored = self._state.is_monitored
        dt_s: float | None
        if not math.isfinite(now_s) or (
            self._now_s is not None and (now_s < self._now_s or not math.isfinite(now_s - self._now_s))
        ):
            dt_s = None
        elif self._now_s is not None:
            dt_s = now_s - self._now_s
        else:
            dt_s = 0.0
        if dt_s is None:
            if monitored:
                raised.insert("clock_invalid")
                self._raise(raised)
            return self._finish(MOTOR_HOLD, "unchanged", ControlStatus(), latched_before)
        self._now_s = now_s
        if self._monitored_since_s is None:
            self._monitored_since_s = now_s
        # Account the command held since the previous tick.
        if self._last_command.direction == FORWARD and self._state.is_infusing:
            self._commanded_ml += self._last_command.rate_ml_s * dt_s
        # Every tick, fresh sample or not, so slower telemetry cannot stretch the stall allowance.
        if self._last_command.direction == FORWARD and self._state.is_running:
            self._since_motion_ml += self._last_command.rate_ml_s * dt_s

        fresh = self._accept_sample(now_s, sample, raised)
        if monitored:
            since = F64_MIN
            for t in (self._last_sample_t_s, self._monitored_since_s):
                if t is not None:
                    since = _fmax(since, t)
            if now_s - since > self._cfg.raw.stale_after_s:
                raised.insert("telemetry_stale")
            if fresh:
                self._check_sample(sample, raised)
            self._raise(raised)

        command, clamp, control = self._command(now_s, dt_s)
        return self._finish(command, clamp, control, latched_before)

    def _accept_sample(self, now_s: float, s: Telemetry, raised: AlarmSet) -> bool:
        """Validates the sample; records it and returns True when it is valid and fresh."""
        pressure_ok = not self._cfg.raw.has_pressure_sensor or (
            math.isfinite(s.pressure_mmhg) and PRESSURE_MIN_MMHG <= s.pressure_mmhg <= PRESSURE_MAX_MMHG
        )
        plausible = (
            math.isfinite(s.t_s)
            and math.isfinite(s.volume_ml)
            and VOLUME_MIN_ML <= s.volume_ml <= VOLUME_MAX_ML
            and pressure_ok
            and s.t_s <= now_s
            and (self._last_sample_t_s is None or s.t_s >= self._last_sample_t_s)
        )
        v, t = self._last_volume_ml, self._last_sample_t_s
        if v is not None and t is not None:
            bound = 2.0 * self._cfg.raw.pump_max_rate_ml_h / S_PER_H * _fmax(s.t_s - t, 0.0) + 1.0
            jump_ok = abs(s.volume_ml - v) <= bound
        else:
            jump_ok = True
        if not (plausible and jump_ok):
            raised.insert("telemetry_invalid")
            return False
        prev_t = self._last_sample_t_s
        if prev_t == s.t_s:
            return False  # the same sample again: not fresh
        if self._origin_ml is None and self._program is not None:
            self._origin_ml = s.volume_ml
        self._last_sample_t_s = s.t_s
        self._last_volume_ml = s.volume_ml
        if self._cfg.raw.has_pressure_sensor:
            self._track_pressure(s.pressure_mmhg, 0.0 if prev_t is None else s.t_s - prev_t)
            if self._program is not None:
                filtered = self._pressure.filtered_mmhg
                self._rest_mmhg = filtered if self._rest_mmhg is None else _fmin(self._rest_mmhg, filtered)
        return True

    def _track_pressure(self, raw_mmhg: float, dt_s: float) -> None:
        r = self._cfg.raw
        p = self._pressure
        p.last_raw_mmhg = raw_mmhg
        if not p.initialised:
            p.initialised = True
            p.filtered_mmhg = raw_mmhg
            p.baseline_mmhg = raw_mmhg
            p.last_raw_mmhg = raw_mmhg
            return
        if not (dt_s > 0.0 and math.isfinite(dt_s)):
            return
        p.last_dt_s = dt_s
        a = dt_s / (r.pressure_filter_s + dt_s)
        previous = p.filtered_mmhg
        p.filtered_mmhg += a * (raw_mmhg - p.filtered_mmhg)
        p.slope_mmhg_s += a * ((p.filtered_mmhg - previous) / dt_s - p.slope_mmhg_s)

    def _check_sample(self, s: Telemetry, raised: AlarmSet) -> None:
        """Interlocks that read a fresh, valid sample."""
        r = self._cfg.raw
        q = self._cfg.volume_quantum_ml
        running = self._state.is_running

        if not s.syringe_present:
            raised.insert("syringe_missing")
        if s.air_in_line:
            raised.insert("air_in_line")
        # Only the plunger's end of travel: `load` already bounds the volume by what the syringe holds.
        if s.end_of_travel:
            raised.insert("syringe_empty")

        if r.has_pressure_sensor:
            if s.pressure_mmhg > r.occlusion_threshold_mmhg:
                raised.insert("occlusion_pressure")
            self._check_slope(raised)

        program = self._program
        if program is not None:
            delivered = self.delivered_ml
            if delivered > program.vtbi_ml * (1.0 + r.dose_tolerance) + q:
                raised.insert("overdose")
            if self.cumulative_mg > r.hard_cap_mg + q * self._cfg.mg_per_ml:
                raised.insert("cumulative_cap")

        if running:
            self._peak_ml = _fmax(self._peak_ml, s.volume_ml)
            if s.volume_ml < self._peak_ml - 2.0 * q:
                raised.insert("reverse_motion")
            self._check_stall(s.volume_ml, raised)
            if self._state.is_infusing:
                self._check_flow(s, raised)
        elif self._last_command.direction != RETRACT:
            origin = s.volume_ml if self._hold_origin_ml is None else _fmin(self._hold_origin_ml, s.volume_ml)
            self._hold_origin_ml = origin
            if s.volume_ml - origin > r.uncommanded_volume_ml:
                raised.insert("uncommanded_delivery")

    def _check_slope(self, raised: AlarmSet) -> None:
        """Fires while the filtered slope is at or above ``slope_fraction``·Q/C and the pressure has
        risen ``slope_rise_mmhg`` above its baseline, or ``slope_sustained_rise_mmhg`` once the slope has
        held for ``slope_sustain_s`` at ``slope_hold_fraction`` of its peak (see
        ``SafetyKernel::check_slope``)."""
        r = self._cfg.raw
        now = self._now_or_zero()
        infusing = self._state.is_infusing
        setpoint = self._program.rate_ml_s if self._program is not None else 0.0
        p = self._pressure
        expected_slope = setpoint / r.compliance_ml_per_mmhg
        rising = infusing and p.slope_mmhg_s >= r.slope_fraction * expected_slope
        armed = infusing and now >= p.armed_at_s
        if not rising or p.rising_since_s is None:
            p.rising_peak_mmhg_s = p.slope_mmhg_s
        p.rising_since_s = (now if p.rising_since_s is None else p.rising_since_s) if rising else None
        p.rising_peak_mmhg_s = _fmax(p.rising_peak_mmhg_s, p.slope_mmhg_s)
        sustained = (
            p.rising_since_s is not None
            and now - p.rising_since_s >= r.slope_sustain_s
            and p.slope_mmhg_s >= r.slope_hold_fraction * p.rising_peak_mmhg_s
        )
        if p.filtered_mmhg < p.baseline_mmhg:
            p.baseline_mmhg = p.filtered_mmhg
        elif not rising:
            a = p.last_dt_s / (r.pressure_baseline_s + p.last_dt_s)
            p.baseline_mmhg += a * (p.filtered_mmhg - p.baseline_mmhg)
        rise = p.filtered_mmhg - p.baseline_mmhg
        fires = rise >= r.slope_rise_mmhg or (sustained and rise >= r.slope_sustained_rise_mmhg)
        if r.slope_detector and armed and rising and fires:
            raised.insert("occlusion_slope")

    def _check_stall(self, volume_ml: float, raised: AlarmSet) -> None:
        """Commanded forward motion with no plunger motion (allowance includes take-up until it moved)."""
        r = self._cfg.raw
        if volume_ml - self._motion_ref_ml >= self._cfg.volume_quantum_ml / 2.0:
            self._since_motion_ml = 0.0
            self._motion_ref_ml = volume_ml
            self._moved_since_start = True
        allowance = (
            r.stall_volume_ml if self._moved_since_start else _fmax(r.stall_volume_ml, r.take_up_max_ml)
        )
        if self._since_motion_ml > allowance:
            raised.insert("stall")

    def _check_flow(self, s: Telemetry, raised: AlarmSet) -> None:
        """Over the flow window the measured volume must follow the target and the commanded volume."""
        r = self._cfg.raw
        point = FlowPoint(
            t_s=s.t_s,
            target_ml=self._controller.target_ml,
            commanded_ml=self._commanded_ml,
            measured_ml=s.volume_ml,
        )
        interval = r.flow_window_s / float(FLOW_POINTS - 1)
        newest = self._flow[-1] if self._flow else None
        if newest is None or point.t_s - newest.t_s >= interval:
            if len(self._flow) == FLOW_POINTS:
                del self._flow[0]
            self._flow.append(point)
        oldest = self._flow[0]
        if len(self._flow) < 2 or point.t_s - oldest.t_s < r.flow_window_s:
            return
        measured = point.measured_ml - oldest.measured_ml

        def off(expected: float) -> bool:
            return expected >= r.flow_min_volume_ml and abs(measured - expected) > r.flow_tolerance * expected

        if off(point.target_ml - oldest.target_ml) or off(point.commanded_ml - oldest.commanded_ml):
            raised.insert("flow_deviation")

    def _command(self, now_s: float, dt_s: float) -> tuple[MotorCommand, str, ControlStatus]:
        """The command for this tick, after the interlocks have run."""
        period = self._cfg.raw.control_period_s
        q = self._cfg.volume_quantum_ml
        state = self._state
        if state.is_running:
            program = self._program
            if program is None:
                return MOTOR_HOLD, "no_limit", ControlStatus()
            # Plunger motion plus what the compressed drive still pushes once stopped reaches the dose.
            delivered = self.delivered_ml
            release = self.drive_release_ml
            if delivered + release >= program.vtbi_ml - q / 2.0:
                at_ml = self._last_volume_ml if self._last_volume_ml is not None else 0.0
                self._release = (at_ml, release)
                self._transition(COMPLETE, "dose_complete")
                return MOTOR_HOLD, "dose_exhausted", ControlStatus()
            volume = self._last_volume_ml if self._last_volume_ml is not None else 0.0
            cap_ml = (self._cfg.raw.hard_cap_mg - self.cumulative_mg) / self._cfg.mg_per_ml
            dose_headroom = _fmin(program.vtbi_ml - release - delivered, cap_ml)
            phase = state.phase
            if isinstance(phase, TakeUp):
                take_up_left = self._cfg.raw.take_up_max_ml - phase.commanded_ml
                if volume - phase.origin_ml >= self._cfg.raw.take_up_detect_ml or take_up_left <= 0.0:
                    self._restart_controller = True
                    self._flow.clear()
                    self._pressure.armed_at_s = now_s + self._cfg.raw.slope_arm_delay_s
                    self._transition(RUNNING_INFUSING, "take_up_done")
                    return self._infuse(program, volume, dt_s, dose_headroom)
                rate, reason = clamp_rate(
                    self._cfg.take_up_rate_ml_s,
                    max_ml_s=self._cfg.max_rate_ml_s,
                    headroom_ml=_fmin(take_up_left, dose_headroom),
                    period_s=period,
                )
                self._state = _running(
                    TakeUp(commanded_ml=phase.commanded_ml + rate * period, origin_ml=phase.origin_ml)
                )
                return MotorCommand.forward(rate), reason, ControlStatus()
            return self._infuse(program, volume, dt_s, dose_headroom)
        if state.kind == "alarm" and state.backoff is not None:
            backoff = state.backoff
            pressure = self._pressure.last_raw_mmhg
            if pressure <= backoff.target_mmhg or backoff.remaining_ml <= 0.0:
                self._state = _alarm(None)
                return MOTOR_HOLD, "unchanged", ControlStatus()
            rate, reason = clamp_rate(
                self._cfg.backoff_rate_ml_s,
                max_ml_s=self._cfg.backoff_rate_ml_s,
                headroom_ml=backoff.remaining_ml,
                period_s=period,
            )
            self._state = _alarm(replace(backoff, remaining_ml=backoff.remaining_ml - rate * period))
            return MotorCommand.retract(rate), reason, ControlStatus()
        return MOTOR_HOLD, "unchanged", ControlStatus()

    def _infuse(
        self, program: Program, volume: float, dt_s: float, dose_headroom: float
    ) -> tuple[MotorCommand, str, ControlStatus]:
        """Closed-loop delivery: controller, then the choke point."""
        r = self._cfg.raw
        stored_ml = r.compliance_ml_per_mmhg * r.occlusion_threshold_mmhg
        budget = program.vtbi_ml * (1.0 + r.dose_tolerance) + stored_ml
        commanded_left = budget - self._commanded_ml
        if commanded_left <= 0.0:
            alarm = AlarmSet()
            alarm.insert("flow_deviation")
            self._raise(alarm)
            return MOTOR_HOLD, "dose_exhausted", ControlStatus()
        if self._restart_controller:
            self._restart_controller = False
            # On target now: this step's target advance lands exactly on the measured volume, so the
            # first command is the feed-forward rate, not a catch-up for the held interval.
            self._controller.reset(volume - program.rate_ml_s * dt_s)
        try:
            control = self._controller.step(program.rate_ml_s, volume, dt_s)
        except ConfigurationError:
            return MOTOR_HOLD, "non_finite", ControlStatus()
        rate, reason = clamp_rate(
            control.output_ml_s,
            max_ml_s=self._cfg.max_rate_ml_s,
            headroom_ml=_fmin(dose_headroom, commanded_left),
            period_s=self._cfg.raw.control_period_s,
        )
        return MotorCommand.forward(rate), reason, control

    def _finish(
        self, command: MotorCommand, clamp: str, control: ControlStatus, latched_before: AlarmSet
    ) -> StepResult:
        if command.direction != HOLD:
            self._hold_origin_ml = None
        self._last_command = command
        now = self._now_or_zero()
        near_empty = False
        if self._program is not None and self._state.is_monitored:
            left = self._syringe_left_ml()
            rate = self._program.rate_ml_s
            near_empty = left <= self._cfg.raw.near_empty_ml or (
                rate > 0.0 and left / rate <= self._cfg.raw.near_empty_s
            )
        return StepResult(
            direction=command.direction,
            rate_ml_h=command.rate_ml_s * S_PER_H,
            state=self._state.kind,
            alarms=self._latched.names(),
            raised=self._latched.difference(latched_before).names(),
            near_empty=near_empty,
            annunciate=not self._latched.is_empty() and now >= self._silenced_until_s,
            delivered_ml=self.delivered_ml,
            remaining_ml=self._remaining_ml(),
            clamp=clamp,
            control=control,
            alarm_bits=self._latched.bits,
        )


# ----- the KP-40MIN closed loop (mirror of rust/scenario) -----------------------------------------

#: Kernel settings of KP-40MIN (performance-baselines.md) on top of the shipped defaults.
KP40MIN_OVERRIDES: Final[dict[str, float | bool]] = {
    "syringe_diameter_mm": 26.5995,  # bore area 0.5557 mL/mm
    "encoder_counts_per_mm": 3200.0,
    "control_period_s": 0.001,
    "stale_after_s": 0.1,
    "kp_per_s": 2.0,
    "ki_per_s2": 0.5,
    "integral_limit_ml_s": 0.01,
    "max_rate_ml_h": 1188.0,  # u ≤ 0.33 mL/s
    "hard_max_rate_ml_h": 1200.0,
    "occlusion_threshold_mmhg": 300.0,
}

_KP_STATE_CODES: Final = {
    "idle": 0, "armed": 1, "running": 2, "paused": 3, "alarm": 4, "stopped": 5, "complete": 6,
}  # fmt: skip
_KP_DIRECTION_CODES: Final = {HOLD: 0, FORWARD: 1, RETRACT: 2}
_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3
_U64: Final = 0xFFFFFFFFFFFFFFFF


def fnv1a(hash_: int, word: int) -> int:
    """Folds one 64-bit word into an FNV-1a hash, byte by byte, little-endian (as the Rust side)."""
    for byte in (word & _U64).to_bytes(8, "little"):
        hash_ = ((hash_ ^ byte) * _FNV_PRIME) & _U64
    return hash_


def run_kp40min(settings: Mapping[str, float | bool], ticks: int = 2_400_000) -> dict[str, object]:
    """KP-40MIN on the reference model: the statement-by-statement mirror of
    ``ketapump_scenario::run_kp40min`` (same plant, same order of operations, same trace hash)."""
    kernel = ReferenceKernel(settings)
    dt, lag_tau, c, r, occlusion = 0.001, 0.05, 1.0e-3, 7_200.0, 1_000.0
    ml_per_mm, counts_per_mm = 0.5557, 3_200.0
    occlusion_start, occlusion_end = 1_500_000, 1_620_000
    schedule = ((600_000, 20.0), (1_800_000, 10.0))
    lag = dt / lag_tau
    dt_over_c = dt / c
    inv_r_open = 1.0 / r
    inv_r_occluded = 1.0 / (r * occlusion)
    counts_per_ml = counts_per_mm / ml_per_mm
    ml_per_count = ml_per_mm / counts_per_mm
    q = x = p = 0.0
    hash_ = _FNV_OFFSET
    last_state = "idle"
    first_alarm_tick: int | None = None
    kernel.load(10.0, 9.0, take_up=False)
    kernel.step(0.0, 0.0, math.floor(x * counts_per_ml) * ml_per_count, p)
    kernel.start()
    direction, rate_ml_s = HOLD, 0.0
    n = 0
    while n < min(ticks, 2_400_000):
        n += 1
        u = rate_ml_s if direction == FORWARD else -rate_ml_s if direction == RETRACT else 0.0
        q += (u - q) * lag
        x += q * dt
        inv_r = inv_r_occluded if occlusion_start <= n < occlusion_end else inv_r_open
        p += (q - p * inv_r) * dt_over_c
        for at, rate in schedule:
            if n == at:
                with contextlib.suppress(KetapumpError):
                    kernel.set_rate(rate)
        t = n * dt
        out = kernel.step(t, t, math.floor(x * counts_per_ml) * ml_per_count, p)
        # The held command in mL/s exactly as the kernel computed it (not round-tripped through mL/h).
        direction, rate_ml_s = out.direction, kernel._last_command.rate_ml_s
        if first_alarm_tick is None and out.alarms:
            first_alarm_tick = n
        if n % 1_000 == 0 or out.state != last_state:
            hash_ = fnv1a(hash_, n)
            hash_ = fnv1a(hash_, _KP_STATE_CODES[out.state])
            hash_ = fnv1a(hash_, _KP_DIRECTION_CODES[out.direction])
            hash_ = fnv1a(hash_, struct.unpack("<Q", struct.pack("<d", rate_ml_s))[0])
            last_state = out.state
    return {
        "ticks": n,
        "state": kernel.state,
        "alarms": list(kernel.alarms),
        "first_alarm_tick": first_alarm_tick,
        "delivered_ml": kernel.delivered_ml,
        "plunger_ml": x,
        "pressure_mmhg": p,
        "trace_hash": hash_,
    }
