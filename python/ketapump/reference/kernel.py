"""Mirror of ``kernel.rs``: the interlock state machine."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from ketapump.errors import ConfigurationError, InterlockError, StateTransitionError
from ketapump.reference.alarm import AlarmSet
from ketapump.reference.clamp import clamp_rate
from ketapump.reference.config import (
    KernelConfig,
    Program,
    validate_fill,
    validate_rate,
    validate_syringes,
)
from ketapump.reference.controller import ControlStatus, Gains, ReferenceController
from ketapump.reference.f64 import (
    ESTIMATOR_INTERVAL_S,
    F64_MIN,
    FLOW_POINTS,
    FORWARD,
    HOLD,
    PRESSURE_MAX_MMHG,
    PRESSURE_MIN_MMHG,
    RETRACT,
    S_PER_H,
    VOLUME_MAX_ML,
    VOLUME_MIN_ML,
    _fmax,
    _fmin,
)
from ketapump.reference.trace import TraceEvent, TraceRing


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
    """A retract in progress in ``alarm``: the post-occlusion back-off, or the siphon catch."""

    #: Volume the retract may still take (mL).
    remaining_ml: float
    #: A back-off ends once the pressure is at or below this (mmHg); −∞ for a catch.
    target_mmhg: float
    #: A catch: the highest encoder volume since it began (mL); it ends two counts below it.
    catch_peak_ml: float | None = None


@dataclass(frozen=True)
class State:
    """A state (``StateKind::as_str`` name) with the data only it owns."""

    kind: str
    #: ``running`` only.
    phase: TakeUp | Infusing | None = None
    #: ``alarm`` only (None: no back-off).
    backoff: Backoff | None = None
    #: ``syringe_change`` only: it returns to ``stopped`` (else ``paused``).
    from_stopped: bool = False

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
SYRINGE_CHANGE_PAUSED: Final = State("syringe_change")
SYRINGE_CHANGE_STOPPED: Final = State("syringe_change", from_stopped=True)
# Why a start or resume is refused before a sample has given the position (``rust/src/errors.rs``).
POSITION_UNKNOWN: Final = "no sample has given the plunger's position yet"


#: Alarms that may start (or leave running) the back-off (``Alarm::permits_backoff``): every check that
#: can see an occlusion first. Never telemetry, clock, air, syringe missing or empty, reverse motion,
#: uncommanded delivery or an invalid rate command: no retract on an untrusted pressure or where unsafe.
_BACKOFF_ALARMS: Final = frozenset(
    {
        "occlusion_pressure",
        "occlusion_slope",
        "stall",
        "encoder_mismatch",
        "flow_deviation",
        "overdose",
        "cumulative_cap",
    }
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
    #: What the line pressure compresses the drive by, C_d·p (mL; 0 without a pressure sensor).
    compression_ml: float


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
    #: Interval between the last two estimator runs (s).
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
                deadband_ml=cfg.control_deadband_ml,
                hold_s=cfg.raw.control_hold_s,
                quantum_ml=cfg.volume_quantum_ml,
            )
        )
        self._trace = TraceRing()
        self._latched = AlarmSet()
        # Kernel time of the last step (None before the first).
        self._now_s: float | None = None
        # Kernel time from which staleness is counted when no sample has arrived yet.
        self._monitored_since_s: float | None = None
        self._last_sample_t_s: float | None = None
        # Time of the last plausible sample, accepted or rejected as a jump: the jump bound runs from it,
        # so a jump stays rejected however long it persists (only a new reference ends it).
        self._last_plausible_t_s: float | None = None
        self._last_volume_ml: float | None = None
        # Encoder volume at the start of the current program.
        self._origin_ml: float | None = None
        # Volume and drug delivered by earlier programs on this kernel.
        self._completed_ml = 0.0
        self._completed_mg = 0.0
        # Volume the current program delivered from earlier syringes (mL).
        self._carried_ml = 0.0
        # Volume delivered on this kernel (all programs) when the syringe in the pump went in (mL).
        self._syringe_start_ml = 0.0
        # What the syringe in the pump held when it went in (mL).
        self._syringe_fill_ml = cfg.raw.syringe_fill_ml
        # A new syringe is in: its slack is taken up at the next start or resume.
        self._take_up_pending = False
        # The plunger reference is re-taken from the next sample (a new syringe): no jump check on it.
        self._rereference = False
        # Forward motor volume commanded while infusing (integral of the held command).
        self._commanded_ml = 0.0
        self._last_command = MOTOR_HOLD
        # Volume where forward motion last stopped (for uncommanded delivery).
        self._hold_origin_ml: float | None = None
        # Stall detection.
        self._since_motion_ml = 0.0
        self._motion_ref_ml = 0.0
        self._moved_since_start = False
        # Started without take-up: the first plunger motion ends the run-in through the slack.
        self._awaiting_first_motion = False
        # Lowest motor lead beyond the drive model (commanded − encoder − C_d·p, mL) since delivery
        # (re)started: the encoder cross-check measures the lead's rise above it.
        self._lead_floor_ml: float | None = None
        # Highest volume seen since (re)start, for reverse-motion detection.
        self._peak_ml = 0.0
        # Flow-deviation checkpoints, oldest first (at most FLOW_POINTS).
        self._flow: list[FlowPoint] = []
        # The last large rate step: (when, the drive's compression C_d·p then in mL).
        self._rate_step: tuple[float, float] | None = None
        self._pressure = PressureTrack()
        # Sample time the estimators last ran on (None before the first fresh sample), and whether they
        # run on the fresh sample in hand (ESTIMATOR_INTERVAL_S).
        self._estimated_at_s: float | None = None
        self._estimate_now = False
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
        this_syringe = 0.0
        if self._origin_ml is not None and self._last_volume_ml is not None:
            if self._release is not None:
                at_ml, release_ml = self._release
                this_syringe = _fmax(self._last_volume_ml, at_ml + release_ml) - self._origin_ml
            else:
                this_syringe = self._last_volume_ml - self._origin_ml
        return self._carried_ml + this_syringe

    @property
    def drive_release_ml(self) -> float:
        """Volume the compressed drive will still push the plunger on by once the motor stops (mL)."""
        return 0.0 if self._rest_mmhg is None else self._drive_release_above_ml(self._rest_mmhg)

    def _drive_release_above_ml(self, rest_mmhg: float) -> float:
        """The drive's release down to ``rest_mmhg``: C_d × (p − rest), the rise clamped to [0, threshold]."""
        c_d = self._cfg.drive_compliance_ml_per_mmhg
        r, p = self._cfg.raw, self._pressure
        if c_d > 0.0 and r.has_pressure_sensor and p.initialised:
            return c_d * _fmin(_fmax(p.last_raw_mmhg - rest_mmhg, 0.0), r.occlusion_threshold_mmhg)
        return 0.0

    def _drive_compression_ml(self) -> float:
        """What the line pressure compresses the drive train by, C_d·p (mL; 0 without a pressure sensor)."""
        if self._cfg.raw.has_pressure_sensor:
            return self._cfg.drive_compliance_ml_per_mmhg * self._pressure.last_raw_mmhg
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

    @property
    def syringe_left_ml(self) -> float:
        """What the syringe in the pump still holds (mL)."""
        return self._syringe_fill_ml - (self._completed_ml + self.delivered_ml - self._syringe_start_ml)

    # ----- operator commands -----------------------------------------------------------------------

    def _refuse(self, command: str) -> StateTransitionError:
        return StateTransitionError(self._state.kind, command)

    def _position_known(self, command: str) -> None:
        """Motion starts from the plunger's position: refused until a sample has given it."""
        if self._rereference or self._last_volume_ml is None:
            raise StateTransitionError(self._state.kind, command, POSITION_UNKNOWN)

    def _transition(self, to: State, cause: str) -> None:
        from_kind = self._state.kind
        self._state = to
        t = self._now_or_zero()
        self._trace.push(t, from_kind, to.kind, cause, self.delivered_ml)

    def load(self, rate_ml_h: float, vtbi_ml: float, take_up: bool = True, syringes: int = 1) -> None:
        """``idle``, ``stopped`` or ``complete`` → ``armed``; a program in force is closed first. The
        VTBI may span ``syringes`` syringes (``load_syringes``)."""
        if self._state not in (IDLE, STOPPED, COMPLETE):
            raise self._refuse("load")
        count = validate_syringes(max(0, min(int(syringes), 2**32 - 1)))
        delivered = self.delivered_ml
        completed_mg = self._completed_mg + delivered * self._cfg.mg_per_ml
        available = replace(
            self._cfg,
            raw=replace(
                self._cfg.raw,
                syringe_fill_ml=self.syringe_left_ml + (count - 1.0) * self._cfg.raw.syringe_fill_ml,
            ),
        )
        program = Program.new(
            available, rate_ml_h, vtbi_ml, take_up, self._cfg.raw.prior_delivered_mg + completed_mg
        )
        self._completed_ml += delivered
        self._completed_mg = completed_mg
        self._carried_ml = 0.0
        self._program = program
        # A syringe whose position is not known yet is referenced by its first sample.
        self._origin_ml = None if self._rereference else self._last_volume_ml
        self._release = None
        self._rest_mmhg = self._pressure.filtered_mmhg if self._pressure.initialised else None
        self._commanded_ml = 0.0
        self._hold_origin_ml = None
        self._monitored_since_s = self._now_s
        self._transition(ARMED, "load")

    def start(self) -> None:
        """``armed`` → ``running`` (with take-up if the program asks for it); ``stopped`` → ``running``."""
        program = self._program
        take_up = self._cfg.raw.take_up_max_ml > 0.0
        pending = self._take_up_pending
        phase: TakeUp | Infusing
        wants_take_up = (self._state == ARMED and program is not None and program.take_up) or pending
        if self._state in (ARMED, STOPPED) and program is not None and wants_take_up and take_up:
            phase = self._take_up_phase()
        elif self._state in (ARMED, STOPPED) and program is not None:
            phase = Infusing()
        else:
            raise self._refuse("start")
        self._position_known("start")
        self._begin_motion()
        # Without take-up a freshly loaded syringe may still have its slack to cross.
        self._awaiting_first_motion = (self._state == ARMED or pending) and isinstance(phase, Infusing)
        self._take_up_pending = False
        self._transition(_running(phase), "start")

    def _take_up_phase(self) -> TakeUp:
        origin = self._last_volume_ml if self._last_volume_ml is not None else 0.0
        return TakeUp(commanded_ml=0.0, origin_ml=origin)

    def pause(self) -> None:
        """``running`` → ``paused``."""
        if not self._state.is_running:
            raise self._refuse("pause")
        self._transition(PAUSED, "pause")

    def resume(self) -> None:
        """``paused`` → ``running`` at the programmed rate, tracking from the current volume."""
        if self._state != PAUSED:
            raise self._refuse("resume")
        self._position_known("resume")
        # After a syringe change the new syringe's slack is taken up first.
        pending = self._take_up_pending
        phase: TakeUp | Infusing = (
            self._take_up_phase() if pending and self._cfg.raw.take_up_max_ml > 0.0 else Infusing()
        )
        self._begin_motion()
        self._awaiting_first_motion = pending and isinstance(phase, Infusing)
        self._take_up_pending = False
        self._transition(_running(phase), "resume")

    def stop(self) -> None:
        """``running``, ``paused`` or ``syringe_change`` → ``stopped``."""
        if not (self._state.is_running or self._state == PAUSED or self._state.kind == "syringe_change"):
            raise self._refuse("stop")
        self._transition(STOPPED, "stop")

    def change_syringe(self) -> None:
        """``paused`` or ``stopped`` → ``syringe_change`` (a program loaded, the motor holding)."""
        if self._state == PAUSED:
            to = SYRINGE_CHANGE_PAUSED
        elif self._state == STOPPED:
            to = SYRINGE_CHANGE_STOPPED
        else:
            raise self._refuse("change_syringe")
        if self._program is None or self._last_command.direction != HOLD:
            raise self._refuse("change_syringe")
        self._carried_ml = self.delivered_ml
        self._origin_ml = None
        self._rereference = True
        self._hold_origin_ml = None
        self._transition(to, "change_syringe")

    def syringe_loaded(self, fill_ml: float) -> None:
        """``syringe_change`` → ``paused`` or ``stopped``: a new syringe holding ``fill_ml``."""
        if self._state.kind != "syringe_change":
            raise self._refuse("syringe_loaded")
        fill = validate_fill(self._cfg, fill_ml)
        self._syringe_start_ml = self._completed_ml + self.delivered_ml
        self._syringe_fill_ml = fill
        self._take_up_pending = True
        self._hold_origin_ml = None
        self._transition(STOPPED if self._state.from_stopped else PAUSED, "syringe_loaded")

    def acknowledge(self) -> None:
        """``alarm`` → ``stopped``, clearing the latch."""
        if self._state.kind != "alarm":
            raise self._refuse("acknowledge")
        self._latched = AlarmSet()
        # Motion the operator has been told of is not raised again; motion from here on is.
        self._hold_origin_ml = None
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
        self._carried_ml = 0.0
        self._program = None
        self._origin_ml = None
        # The syringe may be swapped before the next program: its position comes from the next sample.
        self._rereference = True
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
        step = 1.0 + self._cfg.raw.slope_rearm_increase
        if rate_ml_s > program.rate_ml_s * step:
            self._pressure.armed_at_s = self._now_or_zero() + self._cfg.raw.slope_arm_delay_s
        # A step beyond it either way restarts the flow window (the drive relaxes or compresses by C_d·ΔP).
        if rate_ml_s > program.rate_ml_s * step or rate_ml_s * step < program.rate_ml_s:
            self._flow.clear()
            self._rate_step = (self._now_or_zero(), self._drive_compression_ml())
        self._transition(self._state, "set_rate")

    def _begin_motion(self) -> None:
        """Resets the per-run trackers on every start and resume."""
        volume = self._last_volume_ml if self._last_volume_ml is not None else 0.0
        self._controller.reset(volume)
        self._restart_controller = True
        self._since_motion_ml = 0.0
        self._motion_ref_ml = volume
        self._moved_since_start = False
        self._awaiting_first_motion = False
        self._peak_ml = volume
        self._restart_delivery_checks(self._now_or_zero())

    def _restart_delivery_checks(self, now_s: float) -> None:
        """Where delivery at the programmed rate (re)starts: the flow window and the encoder cross-check
        start afresh, and the slope detector is silent while the line climbs to its working pressure."""
        self._flow.clear()
        self._rate_step = None
        self._lead_floor_ml = None
        self._pressure.armed_at_s = now_s + self._cfg.raw.slope_arm_delay_s

    def _raise(self, alarms: AlarmSet) -> None:
        """Latches ``alarms``; enters ``alarm`` (starting a back-off after an occlusion while running)."""
        fresh = alarms.difference(self._latched)
        if fresh.is_empty():
            return
        self._latched = self._latched.union(fresh)
        self._silenced_until_s = -math.inf
        # Back-off only when every alarm raised permits it; any other alarm ends it.
        permitted = all(_permits_backoff(alarm) for alarm in fresh.names())
        siphon = fresh.names() == ("uncommanded_delivery",)
        if self._state.kind == "alarm" and permitted:
            next_state = _alarm(self._state.backoff)
        elif self._state.is_running and permitted:
            next_state = _alarm(self._backoff_plan())
        elif self._state in (ARMED, PAUSED, STOPPED, COMPLETE) and siphon:
            next_state = _alarm(self._catch_plan())
        else:
            next_state = _alarm(None)
        for alarm in fresh.names():
            self._transition(next_state, alarm)

    def _catch_plan(self) -> Backoff | None:
        """The siphon catch on a held plunger's ``uncommanded_delivery`` alone (``catch_plan``): retract
        at the back-off rate until the plunger is pulled back two counts, at most ``take_up_max_ml``."""
        r = self._cfg.raw
        if not (r.backoff and r.take_up_max_ml > 0.0):
            return None
        peak = self._last_volume_ml if self._last_volume_ml is not None else 0.0
        return Backoff(remaining_ml=r.take_up_max_ml, target_mmhg=-math.inf, catch_peak_ml=peak)

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
        elif self._state == COMPLETE:
            # Watch after the end: the program is done, but the plunger must not move on by itself, nor
            # jump on (``_accept_sample``): invalid telemetry alone is not this watch's alarm.
            if fresh:
                self._check_uncommanded(sample.volume_ml, raised)
            if raised.contains("uncommanded_delivery"):
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
        v, t = self._last_volume_ml, self._last_plausible_t_s
        if self._rereference or self._program is None:
            # A new syringe's plunger may read anywhere (without a program any syringe may go in).
            jump_ok = True
        elif v is not None and t is not None:
            bound = 2.0 * self._cfg.raw.pump_max_rate_ml_h / S_PER_H * _fmax(s.t_s - t, 0.0) + 1.0
            jump_ok = abs(s.volume_ml - v) <= bound
        else:
            jump_ok = True
        if plausible:
            seen = self._last_plausible_t_s
            self._last_plausible_t_s = s.t_s if seen is None else _fmax(seen, s.t_s)
        if not (plausible and jump_ok):
            raised.insert("telemetry_invalid")
            # After the end a plunger jumping forward is delivery nothing commanded (see the Rust).
            if plausible and self._state == COMPLETE and v is not None and s.volume_ml > v:
                raised.insert("uncommanded_delivery")
            return False
        if self._last_sample_t_s == s.t_s:
            return False  # the same sample again: not fresh
        changing = self._state.kind == "syringe_change"
        if self._program is None:
            self._rereference = False
        elif self._origin_ml is None and not changing:
            self._origin_ml = s.volume_ml
            self._rereference = False
        self._last_sample_t_s = s.t_s
        self._last_volume_ml = s.volume_ml
        since_estimate = None if self._estimated_at_s is None else s.t_s - self._estimated_at_s
        self._estimate_now = since_estimate is None or since_estimate >= ESTIMATOR_INTERVAL_S
        if self._estimate_now:
            self._estimated_at_s = s.t_s
        if self._cfg.raw.has_pressure_sensor:
            self._pressure.last_raw_mmhg = s.pressure_mmhg
            if self._estimate_now:
                self._track_pressure(s.pressure_mmhg, 0.0 if since_estimate is None else since_estimate)
            if self._program is not None:
                filtered = self._pressure.filtered_mmhg
                self._rest_mmhg = filtered if self._rest_mmhg is None else _fmin(self._rest_mmhg, filtered)
        return True

    def _track_pressure(self, raw_mmhg: float, dt_s: float) -> None:
        """One estimator run: the pressure filter and its slope over the ``dt_s`` since the last run."""
        r = self._cfg.raw
        p = self._pressure
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
        # The syringe is out of the pump, or going in, during a syringe change.
        changing = self._state.kind == "syringe_change"

        if not s.syringe_present and not changing:
            raised.insert("syringe_missing")
        if s.air_in_line:
            raised.insert("air_in_line")
        # Only the plunger's end of travel: `load` already bounds the volume by what the syringe holds.
        if s.end_of_travel and not changing:
            raised.insert("syringe_empty")

        if r.has_pressure_sensor:
            if s.pressure_mmhg > r.occlusion_threshold_mmhg:
                raised.insert("occlusion_pressure")
            if self._estimate_now:
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
            infusing = self._state.is_infusing
            # Until the first motion after a start without take-up only the stall check watches.
            if infusing and not self._awaiting_first_motion and self._estimate_now:
                self._check_flow(s, raised)
            self._check_stall(s.volume_ml, raised)
            # The cross-check needs the drive model: not with an uncharacterised drive (C_d = 0).
            if infusing and self._moved_since_start and self._cfg.drive_compliance_ml_per_mmhg > 0.0:
                self._check_encoder(s.volume_ml, raised)
        elif not changing:
            self._check_uncommanded(s.volume_ml, raised)

    def _check_uncommanded(self, volume_ml: float, raised: AlarmSet) -> None:
        """No plunger advance while no forward motion is commanded, beyond the drive's release counted
        down to min(rest, 0 mmHg) (``SafetyKernel::check_uncommanded``)."""
        if self._last_command.direction == RETRACT:
            return
        rest = 0.0 if self._rest_mmhg is None else _fmin(self._rest_mmhg, 0.0)
        expected = volume_ml + self._drive_release_above_ml(rest)
        origin = expected if self._hold_origin_ml is None else _fmin(self._hold_origin_ml, expected)
        self._hold_origin_ml = origin
        if expected - origin > self._cfg.raw.uncommanded_volume_ml:
            raised.insert("uncommanded_delivery")

    def _check_encoder(self, volume_ml: float, raised: AlarmSet) -> None:
        """``commanded − encoder − C_d·p`` rising above its floor by more than ``encoder_mismatch_ml``
        (plus C_d × the threshold without a pressure sensor) is motion the encoder did not see."""
        r = self._cfg.raw
        unknown = (
            0.0
            if r.has_pressure_sensor
            else self._cfg.drive_compliance_ml_per_mmhg * r.occlusion_threshold_mmhg
        )
        lead = self._commanded_ml - volume_ml - self._drive_compression_ml()
        floor = lead if self._lead_floor_ml is None else _fmin(self._lead_floor_ml, lead)
        self._lead_floor_ml = floor
        if lead - floor > r.encoder_mismatch_ml + unknown:
            raised.insert("encoder_mismatch")

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
            if self._awaiting_first_motion:
                # The slack is crossed: deliver from here as after a take-up.
                self._awaiting_first_motion = False
                self._restart_controller = True
                self._restart_delivery_checks(self._now_or_zero())
        allowance = (
            r.stall_volume_ml if self._moved_since_start else _fmax(r.stall_volume_ml, r.take_up_max_ml)
        )
        if self._since_motion_ml > allowance:
            raised.insert("stall")

    def _check_flow(self, s: Telemetry, raised: AlarmSet) -> None:
        """Over the flow window the measured volume must follow the target and the commanded volume; the
        drive's relaxation as the pressure falls (over the window, and since a large rate step while the
        window overlaps the ``flow_window_s`` after it) is allowed on top of the tolerance."""
        r = self._cfg.raw
        compression_ml = self._drive_compression_ml()
        point = FlowPoint(
            t_s=s.t_s,
            target_ml=self._controller.target_ml,
            commanded_ml=self._commanded_ml,
            measured_ml=s.volume_ml,
            compression_ml=compression_ml,
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
        since_step = 0.0
        if self._rate_step is not None and oldest.t_s < self._rate_step[0] + r.flow_window_s:
            since_step = self._rate_step[1] - compression_ml
        relaxed = _fmax(_fmax(oldest.compression_ml - compression_ml, since_step), 0.0)

        def off(expected: float) -> bool:
            return (
                expected >= r.flow_min_volume_ml
                and abs(measured - expected) > r.flow_tolerance * expected + relaxed
            )

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
            # Never past what the syringe in the pump holds (a dose of several syringes).
            dose_headroom = _fmin(_fmin(program.vtbi_ml - release - delivered, cap_ml), self.syringe_left_ml)
            phase = state.phase
            if isinstance(phase, TakeUp):
                take_up_left = self._cfg.raw.take_up_max_ml - phase.commanded_ml
                if volume - phase.origin_ml >= self._cfg.raw.take_up_detect_ml or take_up_left <= 0.0:
                    self._restart_controller = True
                    self._restart_delivery_checks(now_s)
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
            volume = self._last_volume_ml if self._last_volume_ml is not None else 0.0
            catch_peak_ml = None if backoff.catch_peak_ml is None else _fmax(backoff.catch_peak_ml, volume)
            caught = catch_peak_ml is not None and volume <= catch_peak_ml - 2.0 * self._cfg.volume_quantum_ml
            if caught or pressure <= backoff.target_mmhg or backoff.remaining_ml <= 0.0:
                self._state = _alarm(None)
                return MOTOR_HOLD, "unchanged", ControlStatus()
            rate, reason = clamp_rate(
                self._cfg.backoff_rate_ml_s,
                max_ml_s=self._cfg.backoff_rate_ml_s,
                headroom_ml=backoff.remaining_ml,
                period_s=period,
            )
            self._state = _alarm(
                replace(
                    backoff, remaining_ml=backoff.remaining_ml - rate * period, catch_peak_ml=catch_peak_ml
                )
            )
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
            left = self.syringe_left_ml
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
