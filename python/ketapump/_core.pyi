"""Rust core of ketapump: the safety kernel, its rate controller and the rate clamp.

Everything here is implemented in Rust (``rust/core``) and exposed through pyo3. Rates cross this
boundary in mL/h (the unit is in every name); the controller works in mL and seconds. Errors are
raised as the classes of :mod:`ketapump.errors`:

- :class:`~ketapump.errors.ConfigurationError` (a ``ValueError``) for a refused setting, program or
  rate, with ``field`` naming it;
- :class:`~ketapump.errors.StateTransitionError` for an operator command not valid in the current state;
- :class:`~ketapump.errors.InterlockError` for a command that was refused *and* latched an alarm.

Bad telemetry never raises: it ends in an alarm and a zero command.
"""

from typing import Any, Final, Literal, final

__all__ = [
    "ALARMS",
    "BUILD_PROFILE",
    "MAX_SYRINGES",
    "ControlStatus",
    "KernelConfig",
    "ModbusTcpConnection",
    "NespPort",
    "RateController",
    "RtuPort",
    "SafetyKernel",
    "SimPump",
    "StepOutput",
    "TraceEvent",
    "__version__",
    "clamp_rate",
    "run_campaign",
    "run_kp40min",
    "run_kp40min_lanes",
]

__version__: Final[str]

BUILD_PROFILE: Final[Literal["debug", "release"]]
"""The cargo profile this module was compiled with (``release`` unless built for debugging)."""

ALARMS: Final[list[str]]
#: The most syringes one program may span (``SafetyKernel.load(..., syringes=)``).
MAX_SYRINGES: Final[int]
"""Every alarm name, in code order."""

_Direction = Literal["hold", "forward", "retract"]
_StateName = Literal["idle", "armed", "running", "paused", "alarm", "stopped", "complete", "syringe_change"]

@final
class KernelConfig:
    """Validated kernel configuration.

    Every setting is a required keyword argument; :func:`ketapump.config.kernel_config` fills them
    from the shipped defaults file. A value out of range raises
    :class:`~ketapump.errors.ConfigurationError` naming the field, its value and the limit, e.g.
    ``syringe_diameter_mm 0 is below the allowed minimum (0)`` or
    ``max_rate_ml_h 250 is above the hard limit hard_max_rate_ml_h (200)``.

    Settings:

    - ``syringe_diameter_mm``: Syringe inner diameter (mm, > 0).
    - ``syringe_capacity_ml``: Syringe nominal capacity (mL, > 0).
    - ``syringe_fill_ml``: Volume loaded in the syringe (mL, ≤ capacity).
    - ``encoder_counts_per_mm``: Plunger encoder resolution (counts per mm of travel).
    - ``concentration_mg_per_ml``: Drug concentration (mg/mL, > 0).
    - ``max_rate_ml_h``: Configured rate ceiling (mL/h, ≤ hard_max_rate_ml_h).
    - ``hard_max_rate_ml_h``: Absolute rate ceiling (mL/h).
    - ``pump_max_rate_ml_h``: The pump's own maximum rate (mL/h).
    - ``min_rate_ml_h``: The lowest programmed rate (mL/h, > 0, ≤ the ceiling): the pump's lowest even
      rate; a run always ends, and a ÷1000 slip is refused like a ×1000 one.
    - ``dose_tolerance``: Allowed over-delivery as a fraction of the programmed volume (0–0.10).
    - ``hard_cap_mg``: Hard cumulative drug cap (mg), including prior_delivered_mg.
    - ``prior_delivered_mg``: Drug already delivered before this kernel (mg), counted against the cap.
    - ``has_pressure_sensor``: Whether telemetry carries a line pressure (New Era pumps do not).
    - ``occlusion_threshold_mmhg``: Absolute occlusion alarm threshold (mmHg).
    - ``hard_max_occlusion_threshold_mmhg``: Highest threshold that may be configured (mmHg).
    - ``slope_detector``: Enable the slope/model-based occlusion detector.
    - ``slope_rise_mmhg``: Rise above baseline the slope detector needs before it fires (mmHg).
    - ``slope_fraction``: Fraction of the occluded slope Q/C that counts as rising (0–1].
    - ``slope_arm_delay_s``: Settling time after start, resume or a re-arming rate increase before the
      slope detector arms.
    - ``slope_rearm_increase``: A rate change re-arms the slope detector only when it raises the rate by
      more than this fraction (0.10: above +10 %); a decrease never does.
    - ``slope_sustain_s``: The slope must stay at or above ``slope_fraction``·Q/C without a break for this
      long (s) before ``slope_sustained_rise_mmhg`` suffices (a head change's slope dies away, an
      occlusion's ramp keeps it).
    - ``slope_hold_fraction``: ... and the slope must still be at least this fraction of its highest value
      since it began to rise (a head change's slope decays with the line's time constant) (0–1).
    - ``slope_sustained_rise_mmhg``: The rise above baseline that suffices once the slope is sustained and
      held (mmHg), below a head change; ``slope_rise_mmhg`` suffices at any time.
    - ``pressure_filter_s``: Time constant of the pressure and slope filters (s).
    - ``pressure_baseline_s``: Time constant of the baseline tracker (s).
    - ``compliance_ml_per_mmhg``: Syringe + line compliance C (mL/mmHg); worst case 0.0028.
    - ``drive_stiffness_n_per_mm``: Drive-train stiffness nut to plunger seal (N/mm); the dose ends early
      by what the compressed drive still pushes once the motor stops (A²/k × line pressure rise);
      0 when not characterised (no correction).
    - ``backoff``: Retract after an occlusion alarm to reduce the released bolus.
    - ``backoff_margin_mmhg``: Back-off ends at baseline + this pressure (mmHg).
    - ``backoff_rate_ml_h``: Retract rate during back-off (mL/h).
    - ``stall_volume_ml``: Forward volume commanded with no plunger motion before a stall alarm (mL).
    - ``flow_window_s``: Window of the flow-deviation check (s).
    - ``flow_tolerance``: Allowed flow deviation over the window (fraction).
    - ``flow_min_volume_ml``: Smallest expected window volume for which the flow check applies (mL).
    - ``uncommanded_volume_ml``: Plunger advance allowed while not infusing (held, stopped, in alarm, after
      the end) beyond the drive's predicted release, before an alarm (mL).
    - ``encoder_mismatch_ml``: Motor volume the plunger encoder may miss beyond the drive model
      (C_d × pressure) before ``encoder_mismatch`` (mL).
    - ``near_empty_ml``: Near-empty warning when less than this is left in the syringe (mL).
    - ``near_empty_s``: Near-empty warning when less than this much time is left at the set rate (s).
    - ``stale_after_s``: Telemetry older than this is stale (s, ≥ control_period_s).
    - ``control_period_s``: Nominal tick period (s): one command may deliver at most rate × period.
    - ``take_up_rate_ml_h``: Rate of the start-up take-up of slack (mL/h).
    - ``take_up_max_ml``: Most volume the take-up may command (mL).
    - ``take_up_detect_ml``: Plunger motion that ends the take-up (mL).
    - ``kp_per_s``: Proportional gain on the volume error beyond the deadband (1/s).
    - ``ki_per_s2``: Integral gain (1/s²).
    - ``integral_limit_ml_s``: Bound of the error integral (mL·s).
    - ``slew_ml_h_per_s``: Largest change of the commanded rate per second (mL/h per s).
    - ``control_deadband_counts``: Volume error the controller leaves alone (encoder counts).
    - ``control_hold_s``: Shortest time between two controller decisions; the trim is held (s).
    - ``silence_s``: How long silence() mutes annunciation (s, ≤ 120).
    """

    def __new__(
        cls,
        *,
        syringe_diameter_mm: float,
        syringe_capacity_ml: float,
        syringe_fill_ml: float,
        encoder_counts_per_mm: float,
        concentration_mg_per_ml: float,
        max_rate_ml_h: float,
        hard_max_rate_ml_h: float,
        pump_max_rate_ml_h: float,
        min_rate_ml_h: float,
        dose_tolerance: float,
        hard_cap_mg: float,
        prior_delivered_mg: float,
        has_pressure_sensor: bool,
        occlusion_threshold_mmhg: float,
        hard_max_occlusion_threshold_mmhg: float,
        slope_detector: bool,
        slope_rise_mmhg: float,
        slope_fraction: float,
        slope_arm_delay_s: float,
        slope_rearm_increase: float,
        slope_sustain_s: float,
        slope_hold_fraction: float,
        slope_sustained_rise_mmhg: float,
        pressure_filter_s: float,
        pressure_baseline_s: float,
        compliance_ml_per_mmhg: float,
        drive_stiffness_n_per_mm: float,
        backoff: bool,
        backoff_margin_mmhg: float,
        backoff_rate_ml_h: float,
        stall_volume_ml: float,
        flow_window_s: float,
        flow_tolerance: float,
        flow_min_volume_ml: float,
        uncommanded_volume_ml: float,
        encoder_mismatch_ml: float,
        near_empty_ml: float,
        near_empty_s: float,
        stale_after_s: float,
        control_period_s: float,
        take_up_rate_ml_h: float,
        take_up_max_ml: float,
        take_up_detect_ml: float,
        kp_per_s: float,
        ki_per_s2: float,
        integral_limit_ml_s: float,
        slew_ml_h_per_s: float,
        control_deadband_counts: float,
        control_hold_s: float,
        silence_s: float,
    ) -> KernelConfig: ...
    def as_dict(self) -> dict[str, float | bool]:
        """Every setting as given, keyed by its keyword name."""
    @property
    def volume_quantum_ml(self) -> float:
        """Volume of one encoder count (mL): the measurement quantum."""
    @property
    def ceiling_ml_h(self) -> float:
        """Effective rate ceiling: min(max, hard max, pump max) (mL/h)."""

@final
class ControlStatus:
    """The rate controller's per-term breakdown of one step (mL, mL/s)."""

    @property
    def target_ml(self) -> float:
        """Integrated setpoint volume."""
    @property
    def error_ml(self) -> float:
        """Target minus measured volume."""
    @property
    def feed_forward_ml_s(self) -> float: ...
    @property
    def proportional_ml_s(self) -> float:
        """The proportional term of the trim in force."""
    @property
    def integral_ml_s(self) -> float:
        """The integral term of the trim in force."""
    @property
    def output_ml_s(self) -> float:
        """Controller output before the kernel's clamp."""
    @property
    def saturated(self) -> bool:
        """The unsaturated sum was below 0 or above the maximum."""
    @property
    def slew_limited(self) -> bool: ...
    @property
    def integrating(self) -> bool:
        """The integral advanced on this step (a decision that anti-windup did not hold)."""
    @property
    def held(self) -> bool:
        """No decision on this step: the trim in force was decided earlier."""

@final
class StepOutput:
    """The result of one :meth:`SafetyKernel.step`."""

    @property
    def direction(self) -> _Direction:
        """``hold``, ``forward`` (toward the patient) or ``retract`` (occlusion back-off only)."""
    @property
    def rate_ml_h(self) -> float:
        """Commanded rate (mL/h): finite, ≥ 0, ≤ the ceiling; 0 exactly when ``hold``."""
    @property
    def state(self) -> _StateName: ...
    @property
    def alarms(self) -> tuple[str, ...]:
        """Every latched alarm, in code order (see :data:`ALARMS`)."""
    @property
    def raised(self) -> tuple[str, ...]:
        """Alarms first latched on this tick."""
    @property
    def alarm_bits(self) -> int:
        """Latched alarms as bits, ``1 << code``."""
    @property
    def near_empty(self) -> bool:
        """Less than ``near_empty_ml`` or ``near_empty_s`` of drug left in the syringe."""
    @property
    def annunciate(self) -> bool:
        """An alarm is latched and not silenced."""
    @property
    def delivered_ml(self) -> float:
        """Measured volume delivered by the current program."""
    @property
    def remaining_ml(self) -> float:
        """Programmed volume still to deliver."""
    @property
    def clamp(self) -> str:
        """The clamp branch that decided the forward rate (``unchanged``, ``above_max``…)."""
    @property
    def control(self) -> ControlStatus: ...

@final
class TraceEvent:
    """One state-machine event from the kernel's trace ring."""

    @property
    def seq(self) -> int:
        """Sequence number; a gap means events were overwritten before being drained."""
    @property
    def t_s(self) -> float: ...
    @property
    def from_state(self) -> _StateName: ...
    @property
    def to_state(self) -> _StateName: ...
    @property
    def cause(self) -> str:
        """An operator command (``load``, ``start``…), ``take_up_done``, ``dose_complete`` or an alarm."""
    @property
    def delivered_ml(self) -> float: ...

@final
class SafetyKernel:
    """The interlock state machine: the only way to obtain a motor command.

    ``idle →load→ armed →start→ running ⇄ paused``, ``running →dose delivered→ complete``,
    any monitored state ``→ alarm``, ``alarm →acknowledge→ stopped →start→ running``. Alarms latch
    until acknowledged; nothing restarts by itself. Operator commands raise
    :class:`~ketapump.errors.StateTransitionError` when not valid in the current state.

    A dose of several syringes: ``paused`` (or ``stopped``) ``→change_syringe→ syringe_change
    →syringe_loaded→ paused`` (or ``stopped``), then ``resume`` (``start``) takes up the new syringe's
    slack. The dose's delivered volume, cumulative drug and limits run on across syringes; the
    syringe's level and plunger reference restart (docs/safety-kernel.md).
    """

    def __new__(cls, config: KernelConfig) -> SafetyKernel: ...
    def load(self, rate_ml_h: float, vtbi_ml: float, take_up: bool = True, syringes: int = 1) -> None:
        """Load a program (from idle, stopped or complete): a rate and a volume to be infused, given
        over ``syringes`` syringes (1 to 16): the VTBI may be what the syringe in the pump still holds
        plus ``syringes − 1`` full ones. Raises :class:`~ketapump.errors.ConfigurationError` otherwise."""
    def change_syringe(self) -> None:
        """Begin a syringe change (paused or stopped, the motor already holding → syringe_change).
        The syringe out of the pump, its end stop and a jumping plunger are not alarms there."""
    def syringe_loaded(self, fill_ml: float) -> None:
        """End the change (→ the paused or stopped state it began in): a new syringe holding
        ``fill_ml`` (at most the configured capacity, else ConfigurationError, nothing changed)."""
    def start(self) -> None:
        """Start delivery (armed, with take-up if requested; or stopped). Refused (StateTransitionError
        with ``why``) until a sample has given the plunger's position: a new kernel, a new syringe after
        ``syringe_loaded`` or ``unload``."""
    def pause(self) -> None: ...
    def resume(self) -> None:
        """Resume from paused, tracking from the current volume (no catch-up bolus). Refused, as
        ``start``, until a sample has given a new syringe's position."""
    def stop(self) -> None: ...
    def acknowledge(self) -> None:
        """Clear latched alarms (alarm → stopped). A persisting condition re-raises on the next tick."""
    def silence(self) -> None:
        """Mute annunciation for ``silence_s`` (at most 2 min); alarms stay latched."""
    def unload(self) -> None:
        """Close the program (armed, stopped or complete → idle). Any syringe may go in then: the next
        sample is a new reference, not a jump."""
    def set_rate(self, rate_ml_h: float) -> None:
        """Change the programmed rate. An invalid rate raises InterlockError and latches an alarm."""
    def step(
        self,
        now_s: float,
        t_s: float,
        volume_ml: float,
        pressure_mmhg: float,
        motor_running: bool = False,
        air_in_line: bool = False,
        syringe_present: bool = True,
        end_of_travel: bool = False,
    ) -> StepOutput:
        """One control tick at kernel time ``now_s`` with the latest telemetry sample.

        ``t_s`` is when the sample was taken, ``volume_ml`` the plunger-encoder volume counter,
        ``pressure_mmhg`` the line pressure (ignored without a pressure sensor). Any value may be
        garbage (NaN, ∞, out of order): the kernel turns it into an alarm, never an exception.
        """
    def drain_trace(self) -> list[TraceEvent]:
        """Remove and return every recorded event, oldest first."""
    @property
    def trace_dropped(self) -> int:
        """Events overwritten before they were drained."""
    @property
    def state(self) -> _StateName: ...
    @property
    def alarms(self) -> tuple[str, ...]: ...
    @property
    def delivered_ml(self) -> float: ...
    @property
    def commanded_ml(self) -> float:
        """Forward motor volume commanded by the current program while infusing."""
    @property
    def cumulative_mg(self) -> float:
        """Drug delivered including prior_delivered_mg and earlier programs."""
    @property
    def syringe_left_ml(self) -> float:
        """What the syringe in the pump still holds (mL)."""

@final
class RateController:
    """Feed-forward + quiet PI controller on the volume error, with anti-windup and a slew limit.

    It decides on the first step after a reset and then once ``hold_s`` has passed, on the volume error
    beyond ``deadband_ml``, and holds its trim in between; a trim change below ``quantum_ml / hold_s``
    is not made. With the defaults (no deadband, no hold) every step decides: the per-step PI.
    """

    def __new__(
        cls,
        *,
        kp_per_s: float,
        ki_per_s2: float,
        integral_limit_ml_s: float,
        slew_ml_s_per_s: float,
        max_ml_s: float,
        deadband_ml: float = 0.0,
        hold_s: float = 0.0,
        quantum_ml: float = 0.0,
    ) -> RateController: ...
    def reset(self, measured_ml: float) -> None:
        """Track from ``measured_ml`` with no integral, no trim and a stopped motor; the next step decides."""
    def step(self, setpoint_ml_s: float, measured_ml: float, dt_s: float) -> ControlStatus:
        """One step. Non-finite or negative input raises ConfigurationError and changes nothing."""

def clamp_rate(
    requested_ml_s: float, max_ml_s: float, headroom_ml: float, period_s: float
) -> tuple[float, str]:
    """The single choke point: clamp a requested forward rate (mL/s) to [0, min(max, headroom/period)].

    Returns the rate and the branch that decided it: ``unchanged``, ``non_finite``, ``negative``,
    ``no_limit``, ``dose_exhausted``, ``above_max`` or ``dose_headroom``.
    """

@final
class SimPump:
    """A simulated syringe pump: plant physics plus the reference-pump firmware (``hw-sim``).

    Time is injected: nothing moves until :meth:`advance_to`. Registers follow
    ``docs/register-map.md``; faults are the registers of its fault block.
    """

    def __new__(
        cls,
        syringe: str = "bd-plastipak-50",
        *,
        seed: int = 0,
        serial: int = 1,
        slack_taken_up: bool = False,
        fill_ml: float | None = None,
        compliance_ml_per_mmhg: float | None = None,
        resistance_mmhg_s_per_ml: float | None = None,
        balance_noise_g: float | None = None,
    ) -> SimPump: ...
    @staticmethod
    def syringes() -> list[str]:
        """Names of the syringes in the catalogue."""
    @staticmethod
    def catalogue() -> list[tuple[str, float, float]]:
        """The syringe catalogue: ``[(name, capacity_ml, inner_diameter_mm), ...]``."""
    @staticmethod
    def register_map_toml() -> str:
        """The register map compiled into the simulator (TOML)."""
    def set_register_map(self, text: str) -> list[tuple[str, str]]:
        """Serves Modbus with another map in the shipped schema (TOML text); returns its problems as
        ``(dotted path, message)`` pairs and keeps the current map if there is any."""
    @property
    def unit_id(self) -> int:
        """The Modbus unit id of the map being served."""
    def advance_to(self, t_s: float) -> None:
        """Advance to pump time ``t_s`` (s); earlier times are ignored."""
    @property
    def t_s(self) -> float: ...
    def read_registers(self, address: int, count: int) -> tuple[int, list[int]]:
        """Modbus read: ``(exception_code, words)``; exception 0 means success."""
    def write_registers(self, address: int, values: list[int]) -> int:
        """Modbus write: the exception code, 0 meaning success; nothing is written on an exception."""
    def value(self, name: str) -> float:
        """A register's current value by name, decoded."""
    def inject(self, name: str, value: float) -> None:
        """Inject a fault now (a fault-block register name); ConfigurationError if refused."""
    def schedule(self, at_s: float, name: str, value: float) -> None:
        """Inject a fault at pump time ``at_s``."""
    def comm_action(self) -> tuple[bool, bool, int]:
        """Fate of the next reply from the communication faults: ``(drop, corrupt, delay_ms)``."""
    def heartbeat(self) -> None:
        """Refresh the pump-side watchdog."""
    def balance_readings(self) -> list[tuple[float, float]]:
        """Gravimetric balance readings so far: ``[(t_s, grams), ...]``."""
    @property
    def delivered_ml(self) -> float:
        """Volume that really reached the patient (the oracle, not a sensor)."""
    @property
    def line_pressure_mmhg(self) -> float:
        """True line pressure, without sensor faults."""
    @property
    def motor_infused_ml(self) -> float:
        """Volume the motor has pushed since the counters were cleared (steps × mL per step): what a
        pump without a plunger sensor counts (the New Era ``DIS``)."""
    @property
    def alarm_bits(self) -> int: ...
    @property
    def run_mode(self) -> int:
        """0 stop, 1 infuse, 2 withdraw."""

@final
class RtuPort:
    """Modbus RTU on the pump side of a serial line: framing, CRC, silence rules, comm faults."""

    def __new__(cls, unit_id: int = 1, baud: int = 19_200) -> RtuPort: ...
    def process(self, line_s: float, data: bytes, pump: SimPump) -> list[tuple[bytes, int]]:
        """Feed bytes received at real time ``line_s``; replies as ``(bytes, delay_ms)``."""
    def idle(self, line_s: float, pump: SimPump) -> list[tuple[bytes, int]]:
        """Complete a frame that only a silent gap can end (unknown function codes)."""
    def take_rejects(self) -> tuple[list[tuple[str, bytes, int]], int]:
        """Frames rejected since the last call: ``([(reason, first bytes, length), ...], not kept)``."""

@final
class ModbusTcpConnection:
    """One Modbus TCP connection on the pump side: MBAP framing, unit-id rules, comm faults. The same
    request handler as :class:`RtuPort` answers."""

    def __new__(cls, unit_id: int = 1) -> ModbusTcpConnection: ...
    def process(self, data: bytes, pump: SimPump) -> list[tuple[bytes, int]]:
        """Feed received bytes; replies in order as ``(bytes, delay_ms)`` (a dropped one is absent)."""
    @property
    def closed(self) -> bool:
        """The stream lost its framing (an impossible MBAP header): close the connection."""
    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a request."""
    def take_rejects(self) -> tuple[list[tuple[str, bytes, int]], int]:
        """Frames rejected since the last call: ``([(reason, first bytes, length), ...], not kept)``."""

@final
class NespPort:
    """The pump side of a New Era NE-1000 line; several addresses may share it."""

    def __new__(cls) -> NespPort: ...
    def process(
        self, line_s: float, now_s: float, data: bytes, pumps: dict[int, SimPump]
    ) -> list[tuple[bytes, int]]:
        """Feed bytes received at real time ``line_s``; run them at pump time ``now_s``."""
    def poll(self, now_s: float, pumps: dict[int, SimPump]) -> None:
        """Run the safe-mode watchdog of every address (call periodically)."""
    def take_rejects(self) -> tuple[list[tuple[str, bytes, int]], int]:
        """Packets rejected since the last call: ``([(reason, first bytes, length), ...], not kept)``."""

def run_kp40min(config: KernelConfig, ticks: int | None = None) -> dict[str, object]:
    """Run the KP-40MIN closed loop (docs/benchmarks.md) entirely in Rust with the GIL released.

    The kernel and controller under ``config`` drive a reference plant (first-order drive lag,
    quantised plunger encoder, line pressure through compliance and resistance, an occlusion from
    25:00 to 27:00) for ``ticks`` 1 ms ticks (default all 2 400 000). Returns ``ticks``, ``state``,
    ``alarms``, ``first_alarm_tick``, ``delivered_ml``, ``plunger_ml``, ``pressure_mmhg`` and
    ``trace_hash``, identical to :func:`ketapump.reference.run_kp40min` on the same settings.
    """

def run_kp40min_lanes(
    config: KernelConfig, runs: int, lanes: int, ticks: int | None = None
) -> list[dict[str, object]]:
    """Run ``runs`` independent KP-40MIN closed loops stepped together in lockstep lanes of ``lanes``
    (1, 2, 4 or 8; anything else raises :class:`~ketapump.errors.ConfigurationError`), GIL released.

    Each outcome is exactly what :func:`run_kp40min` returns for the same ``config`` and ``ticks``;
    lanes only let the runs' independent dependency chains overlap in the CPU.
    """

# ----- Drug-library limits (rust/core/src/limits.rs) -------------------------------------------------

__all__ += ["LIMIT_KINDS", "DrugLimits", "DrugOrder", "Finding", "Limit", "check_order", "kernel_limits"]

LIMIT_KINDS: Final[list[tuple[str, str]]]
"""Every limit kind as ``(name, unit)``, in code order: the drug-library table names (``weight_kg``,
``dose_mg_per_kg``…) plus ``dosing_weight_kg``, which the ``weight_kg`` limits also apply to."""

_Severity = Literal["hard", "soft"]
_Bound = Literal["min", "max", "floor", "non_finite"]

@final
class Limit:
    """The hard and soft bounds of one kind; ``None`` is a missing bound.

    A missing soft bound means no bound. A missing hard maximum of anything delivered (concentration,
    dose, dose rate, bolus, bolus rate, cumulative totals, VTBI) means zero: nothing may be delivered.
    Any other missing hard bound means no bound. A non-finite bound raises
    :class:`~ketapump.errors.ConfigurationError` naming it. Ordering (soft within hard, min ≤ max) is
    checked when the library file is loaded (:mod:`ketapump.clinical.druglib`), not here.
    """

    def __new__(
        cls,
        *,
        hard_min: float | None = None,
        soft_min: float | None = None,
        soft_max: float | None = None,
        hard_max: float | None = None,
    ) -> Limit: ...
    @property
    def hard_min(self) -> float | None: ...
    @property
    def soft_min(self) -> float | None: ...
    @property
    def soft_max(self) -> float | None: ...
    @property
    def hard_max(self) -> float | None: ...

@final
class DrugLimits:
    """The limits of one drug entry, one :class:`Limit` per kind (units in the names; a missing one is
    :class:`Limit` with no bound). Built by :meth:`ketapump.clinical.druglib.DrugEntry.core_limits`."""

    def __new__(
        cls,
        *,
        weight_kg: Limit | None = None,
        concentration_mg_per_ml: Limit | None = None,
        dose_mg_per_kg: Limit | None = None,
        dose_rate_mg_per_kg_h: Limit | None = None,
        duration_min: Limit | None = None,
        bolus_mg_per_kg: Limit | None = None,
        bolus_rate_mg_per_kg_min: Limit | None = None,
        cumulative_1h_mg_per_kg: Limit | None = None,
        cumulative_4h_mg_per_kg: Limit | None = None,
        cumulative_7d_mg_per_kg: Limit | None = None,
        vtbi_ml: Limit | None = None,
        hours_since_last_start: Limit | None = None,
        sessions_in_7_days: Limit | None = None,
        height_cm: Limit | None = None,
        bmi_kg_m2: Limit | None = None,
        weight_change_pct: Limit | None = None,
        dosing_weight_pct: Limit | None = None,
        cap_tolerance: float = 0.0,
    ) -> DrugLimits:
        """``cap_tolerance``: the fraction (0.02 = 2 %) the cumulative totals may pass their maxima by
        (delivery within the kernel's dose tolerance); a finding names the configured bound. Not finite
        or negative: :class:`~ketapump.errors.ConfigurationError`."""

@final
class DrugOrder:
    """An order as the core checks it; every field required (:class:`ketapump.clinical.druglib.Order` fills
    the defaults). Totals over the rolling windows include this order, in mg/kg of the dosing weight.
    A negative or oversized ``sessions_in_7_days`` raises :class:`~ketapump.errors.ConfigurationError`.
    """

    def __new__(
        cls,
        *,
        weight_kg: float,
        dosing_weight_kg: float | None,
        concentration_mg_per_ml: float,
        dose_mg_per_kg: float,
        dose_rate_mg_per_kg_h: float,
        duration_min: float,
        vtbi_ml: float,
        bolus_mg_per_kg: float,
        bolus_rate_mg_per_kg_min: float,
        cumulative_1h_mg_per_kg: float,
        cumulative_4h_mg_per_kg: float,
        cumulative_7d_mg_per_kg: float,
        hours_since_last_start: float | None,
        sessions_in_7_days: int,
        height_cm: float | None = None,
        bmi_kg_m2: float | None = None,
        weight_change_pct: float | None = None,
        dosing_weight_pct: float | None = None,
    ) -> DrugOrder: ...
    @property
    def weight_kg(self) -> float: ...
    @property
    def dosing_weight_kg(self) -> float | None:
        """``None``: the actual weight is the dosing weight (checked once, as ``weight_kg``)."""
    @property
    def concentration_mg_per_ml(self) -> float: ...
    @property
    def dose_mg_per_kg(self) -> float: ...
    @property
    def dose_rate_mg_per_kg_h(self) -> float: ...
    @property
    def duration_min(self) -> float: ...
    @property
    def vtbi_ml(self) -> float: ...
    @property
    def bolus_mg_per_kg(self) -> float: ...
    @property
    def bolus_rate_mg_per_kg_min(self) -> float: ...
    @property
    def cumulative_1h_mg_per_kg(self) -> float: ...
    @property
    def cumulative_4h_mg_per_kg(self) -> float: ...
    @property
    def cumulative_7d_mg_per_kg(self) -> float: ...
    @property
    def hours_since_last_start(self) -> float | None: ...
    @property
    def sessions_in_7_days(self) -> int: ...
    @property
    def height_cm(self) -> float | None: ...
    @property
    def bmi_kg_m2(self) -> float | None:
        """``None``: not checked (no height, or a protocol not dosed on actual weight)."""
    @property
    def weight_change_pct(self) -> float | None:
        """|actual − last recorded| in % of the last recorded weight; ``None``: none recorded."""
    @property
    def dosing_weight_pct(self) -> float | None:
        """The dosing weight in % of the actual weight; ``None``: dosed on the actual weight."""

@final
class Finding:
    """One crossed limit, as the core found it (:class:`ketapump.clinical.druglib.LimitFinding` adds a
    message)."""

    @property
    def kind(self) -> str:
        """The limit kind (a name of :data:`LIMIT_KINDS`)."""
    @property
    def severity(self) -> _Severity:
        """``hard``: refused; ``soft``: proceeds only after a confirmation with a reason."""
    @property
    def bound(self) -> _Bound:
        """``min``/``max``: a configured bound; ``floor``: below the physical floor (a negative amount,
        a zero weight, a cumulative total below this order's dose, no session counted);
        ``non_finite``: NaN or infinite. ``floor`` and ``non_finite`` are always hard."""
    @property
    def value(self) -> float:
        """The order's value, in ``unit``."""
    @property
    def limit(self) -> float | None:
        """The bound crossed, in ``unit``; ``None`` for ``non_finite``."""
    @property
    def unit(self) -> str: ...

def check_order(limits: DrugLimits, order: DrugOrder) -> list[Finding]:
    """Every finding of ``order`` against ``limits``, at most one per kind (the most severe: non-finite,
    floor, hard min, hard max, soft min, soft max), in kind order. Never raises: bad input is a finding."""

def kernel_limits(
    limits: DrugLimits, order: DrugOrder, device_max_rate_ml_h: float
) -> dict[str, float] | None:
    """The kernel settings the hard limits imply for ``order``, or ``None`` if it has a hard finding.

    ``concentration_mg_per_ml``: the order's; ``max_rate_ml_h``: hard dose rate × dosing weight ÷
    concentration, at most ``device_max_rate_ml_h``; ``hard_cap_mg``: hard dose × dosing weight, cut to
    what each rolling window's hard cap leaves after the doses already given in it.
    """

def run_campaign(config: KernelConfig, spec: object, seeds: list[int]) -> list[dict[str, Any]]:
    """Run one fault-campaign scenario per seed (docs/qa.md) entirely in Rust, the GIL released for
    the whole batch.

    ``spec`` is the dict of :meth:`ketapump.qa.campaign.CampaignSpec.model_dump`; it is validated
    again here (against ``config`` too: rates under its ceiling) and a refused value raises
    :class:`~ketapump.errors.ConfigurationError` with its dotted path as ``field``. Each run draws its
    scenario from (spec, seed), steps the kernel under ``config`` (syringe fields set per run) and the
    hw-sim plant at the control period, and returns a dict: ``seed``, ``syringe``, ``rate_ml_h``,
    ``programmed_ml``, ``delivered_ml``, ``peak_delivered_ml``, ``measured_ml``, ``hydrostatic_ml``,
    ``step_ml``, ``faults`` (dicts with ``name``, ``at_s`` and parameters), ``restarts``,
    ``rate_changed``, ``state``, ``alarms``, ``first_alarm_s``, ``occlusion_onset_s``,
    ``occlusion_crossed_s``, ``occlusion_deadline_s``, ``peak_pressure_mmhg``, ``end_s``,
    ``timed_out``, ``ticks``, ``trace_hash`` and ``violations`` (dicts with ``invariant`` and
    ``detail``). The same (config, spec, seed) always gives the same dict.
    """
