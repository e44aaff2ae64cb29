"""`ketapump qa occlusion`: the IEC 60601-2-24 style occlusion test of a pump through the bridge.

The pump runs at the set rate until the line pressure has settled; then the line is closed downstream
(the simulator's ``fault_occlusion``, or the operator's clamp on a real rig). The test records the time
and pressure at the alarm, lets the kernel's automatic back-off finish, opens the line and collects what
flows out with the motor stopped (2 min by default): the released bolus. Targets (safety-targets.md):

- **S5**: alarm and motor stop within C·(P_thr − P_0)/Q + 5 s, C the plant's compliance, P_0 the line
  pressure before the occlusion, Q the rate; the slope/model-based detectors cut the time at 1 and
  5 mL/h by ≥ 50 % against the threshold alone (:func:`speedup` of two runs);
- **S6**: released bolus ≤ 0.5 mL (hard), ≤ 0.2 mL (goal).

"Threshold only" (``--no-slope``) is the baseline S5 compares against: the slope detector *and* the
flow-deviation check are off. The flow check sees an occlusion too (the drive's compliance lets the
motor run ahead of the plunger), so leaving it on would not time the threshold alone.

The analysis (:func:`analyse`, :func:`s5_bound_s`, :func:`baseline_mmhg`, :func:`rise_compliance`,
:func:`speedup`, :func:`plot`) is pure and separate from the run (:func:`run_occlusion`), so a
recording from any rig can be judged the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from ketapump import _core
from ketapump.bridge import (
    ControlLoop,
    InfusionPlan,
    NullLog,
    control_period_s,
    loop_settings,
    make_driver,
    syringe_spec,
)
from ketapump.clock import Clock, ScaledClock, VirtualClock
from ketapump.config import default_kernel_settings, kernel_config
from ketapump.errors import ConfigurationError, KetapumpError
from ketapump.qa.balance import SicsBalance
from ketapump.wire import (
    PumpDriver,
    PumpTelemetry,
    ReferencePumpDriver,
    RegisterTransport,
    open_transport,
    split_url,
)

#: The simulator's nominal plant compliance (hw-sim ``PlantConfig``): the C of the S5 bound on ``sim://``.
SIM_COMPLIANCE_ML_PER_MMHG = 2.0e-3
#: The latency S5 allows on top of the physics.
S5_LATENCY_S = 5.0
#: The slope/model-based detectors must cut the threshold-only time at 1 and 5 mL/h by this much.
S5_SPEEDUP = 0.5
S6_HARD_ML = 0.5
S6_GOAL_ML = 0.2
#: Free flow after the line is opened, motor stopped, over which the bolus is collected (s).
RELEASE_S = 120.0
#: Running time before the line is closed: the pressure and the kernel's baseline have settled (s).
SETTLE_S = 600.0
#: The line pressure before the occlusion is the mean over this window before closing (s).
BASELINE_WINDOW_S = 10.0
#: Pressure samples during the release phase (s).
RELEASE_SAMPLE_S = 0.25
#: Kernel overrides of the threshold-only baseline (slope detector and flow-deviation check off).
THRESHOLD_ONLY = {"slope_detector": False, "flow_min_volume_ml": 1000.0}
OCCLUSION_ALARMS = frozenset({"occlusion_pressure", "occlusion_slope"})


class OcclusionTestError(KetapumpError, RuntimeError):
    """The occlusion test could not be carried out (an alarm before the line was closed, a dose that
    ran out first); nothing can be judged. The message says what happened."""


@dataclass(frozen=True)
class OcclusionRecord:
    """What one run measured: the input of the analysis. Times are the pump's clock (s)."""

    rate_ml_h: float
    threshold_mmhg: float
    #: The plant's compliance C of the S5 bound (mL/mmHg).
    compliance_ml_per_mmhg: float
    slope_detector: bool
    #: Line pressure readings ``(t_s, mmHg)`` through the run and the release.
    pressure: tuple[tuple[float, float], ...]
    closed_at_s: float
    alarm_at_s: float
    #: When the tick that raised the alarm had the pump's forward motion stopped.
    stopped_at_s: float
    pressure_at_alarm_mmhg: float
    #: The alarms raised at ``alarm_at_s``, and every alarm latched by the end.
    first_alarms: tuple[str, ...]
    alarms: tuple[str, ...]
    #: When the back-off (if any) was over and the pump stopped; when the line was opened.
    backoff_done_at_s: float
    opened_at_s: float
    #: Volume that flowed out over the release; ``None`` when nothing measured it (no balance).
    bolus_ml: float | None


@dataclass(frozen=True)
class OcclusionResult:
    p0_mmhg: float
    bound_s: float
    time_to_alarm_s: float
    time_to_stop_s: float
    pressure_at_alarm_mmhg: float
    #: C from the pressure rise, Q / (dP/dt), for comparison with the C the bound uses.
    rise_compliance_ml_per_mmhg: float | None
    bolus_ml: float | None
    s5_met: bool
    #: ``None`` when the bolus was not measured.
    s6_met: bool | None
    s6_goal_met: bool | None


# ----- analysis (pure) --------------------------------------------------------------------------------


def s5_bound_s(
    compliance_ml_per_mmhg: float, threshold_mmhg: float, p0_mmhg: float, rate_ml_h: float
) -> float:
    """S5's limit on the time to alarm and stop: C·(P_thr − P_0)/Q + 5 s."""
    return compliance_ml_per_mmhg * (threshold_mmhg - p0_mmhg) / (rate_ml_h / 3600.0) + S5_LATENCY_S


def baseline_mmhg(pressure: tuple[tuple[float, float], ...], closed_at_s: float) -> float:
    """P_0: the mean line pressure over the window before the line was closed."""
    window = [p for t, p in pressure if closed_at_s - BASELINE_WINDOW_S <= t < closed_at_s]
    if not window:
        raise ValueError(f"no pressure reading in the {BASELINE_WINDOW_S:g} s before the line was closed")
    return sum(window) / len(window)


def rise_compliance(
    pressure: tuple[tuple[float, float], ...], closed_at_s: float, alarm_at_s: float, rate_ml_h: float
) -> float | None:
    """C = Q / (dP/dt) from a least-squares line through the readings between closing and the alarm
    (``None`` with fewer than 5 readings or no rise)."""
    points = [(t, p) for t, p in pressure if closed_at_s < t <= alarm_at_s]
    if len(points) < 5:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_p = sum(p for _, p in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (p - mean_p) for t, p in points) / var if var > 0 else 0.0
    return (rate_ml_h / 3600.0) / slope if slope > 0 else None


def analyse(record: OcclusionRecord) -> OcclusionResult:
    """S5 and S6 for one run."""
    p0 = baseline_mmhg(record.pressure, record.closed_at_s)
    bound = s5_bound_s(record.compliance_ml_per_mmhg, record.threshold_mmhg, p0, record.rate_ml_h)
    to_alarm = record.alarm_at_s - record.closed_at_s
    to_stop = record.stopped_at_s - record.closed_at_s
    bolus = record.bolus_ml
    return OcclusionResult(
        p0_mmhg=p0,
        bound_s=bound,
        time_to_alarm_s=to_alarm,
        time_to_stop_s=to_stop,
        pressure_at_alarm_mmhg=record.pressure_at_alarm_mmhg,
        rise_compliance_ml_per_mmhg=rise_compliance(
            record.pressure, record.closed_at_s, record.alarm_at_s, record.rate_ml_h
        ),
        bolus_ml=bolus,
        s5_met=0.0 <= to_alarm <= bound and to_stop <= bound,
        s6_met=None if bolus is None else bolus <= S6_HARD_ML,
        s6_goal_met=None if bolus is None else bolus <= S6_GOAL_ML,
    )


def speedup(detector_s: float, threshold_only_s: float) -> float:
    """How much faster a detector alarmed than the threshold alone: 1 − t / t_threshold (0.5 = half)."""
    return 1.0 - detector_s / threshold_only_s


def report(record: OcclusionRecord, result: OcclusionResult) -> dict[str, Any]:
    """The JSON report (``--json`` and ``occlusion.json``)."""
    return {
        "rate_ml_h": record.rate_ml_h,
        "threshold_mmhg": record.threshold_mmhg,
        "slope_detector": record.slope_detector,
        "compliance_ml_per_mmhg": record.compliance_ml_per_mmhg,
        "closed_at_s": record.closed_at_s,
        "first_alarms": list(record.first_alarms),
        "alarms": list(record.alarms),
        "backoff_s": record.backoff_done_at_s - record.alarm_at_s,
        **asdict(result),
        "s6_hard_ml": S6_HARD_ML,
        "s6_goal_ml": S6_GOAL_ML,
    }


def plot(record: OcclusionRecord, result: OcclusionResult, out_dir: Path) -> Path:
    """Line pressure against time from closing, with the threshold, the alarm and the S5 bound (PNG)."""
    import matplotlib  # noqa: PLC0415 - plotting is optional at import time

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "occlusion.png"
    t0 = record.closed_at_s
    shown = [(t - t0, p) for t, p in record.pressure if t >= t0 - 60.0]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot([t for t, _ in shown], [p for _, p in shown], color="tab:blue", label="line pressure")
    ax.axhline(
        record.threshold_mmhg,
        color="tab:red",
        linestyle="--",
        label=f"threshold {record.threshold_mmhg:g} mmHg",
    )
    ax.axhline(result.p0_mmhg, color="grey", linewidth=1, label=f"P0 {result.p0_mmhg:.0f} mmHg")
    ax.axvline(0.0, color="black", linewidth=1, label="line closed")
    ax.axvline(result.bound_s, color="tab:red", linestyle=":", label=f"S5 bound {result.bound_s:.0f} s")
    ax.plot(
        [result.time_to_alarm_s],
        [result.pressure_at_alarm_mmhg],
        "o",
        color="tab:orange",
        markersize=9,
        label=f"alarm ({', '.join(record.first_alarms)}) at {result.time_to_alarm_s:.1f} s",
    )
    bolus = "not measured" if result.bolus_ml is None else f"bolus {result.bolus_ml:.3f} mL"
    ax.axvline(record.opened_at_s - t0, color="tab:green", linestyle="--", label=f"line opened ({bolus})")
    detector = "slope + flow + threshold" if record.slope_detector else "threshold only"
    ax.set_title(f"Occlusion at {record.rate_ml_h:g} mL/h, {detector}")
    ax.set_xlabel("time since the line was closed (s)")
    ax.set_ylabel("line pressure (mmHg)")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----- the run ------------------------------------------------------------------------------------------


class Line(Protocol):
    """Who closes and opens the line downstream of the pump."""

    closed_at_s: float | None

    def arrange_close(self, clock: Clock, at_s: float) -> None:
        """Have the line closed at (about) pump time ``at_s``; ``closed_at_s`` says when it was."""

    def observe(self, now: float) -> None:
        """Called on every control tick with the pump's time: a close falls due on the first tick at or
        after ``at_s`` (so it lands on the run's own clock, never on a thread's timing)."""

    async def open(self, clock: Clock) -> float:
        """Open the line; returns the pump time it was opened."""

    def cancel(self) -> None:
        """Give up a close still to come (the run ended first)."""


class SimulatedLine:
    """The simulator's occlusion fault (``fault_occlusion``), scheduled on the pump's own clock."""

    def __init__(self, pump: _core.SimPump) -> None:
        self.pump = pump
        self.closed_at_s: float | None = None
        self._at: float | None = None

    def arrange_close(self, clock: Clock, at_s: float) -> None:
        self.pump.schedule(at_s, "fault_occlusion", 1)
        self._at = at_s

    async def open(self, clock: Clock) -> float:
        self.pump.inject("fault_occlusion", 0)
        return clock.now()

    def cancel(self) -> None:
        return None

    def observe(self, now: float) -> None:
        """The fault fires inside the simulator: it is closed once the pump's time has passed it."""
        if self.closed_at_s is None and self._at is not None and now >= self._at:
            self.closed_at_s = self._at


def ask_operator(message: str) -> None:
    """Prints ``message`` on stderr and waits for Enter on stdin (the operator's acknowledgement)."""
    sys.stderr.write(f"\n>>> {message} — press Enter: ")
    sys.stderr.flush()
    if not sys.stdin.readline():
        raise OcclusionTestError("the operator's input closed before the line was handled")


class OperatorLine:
    """A real rig: the operator closes and opens the clamp when told and presses Enter as they do.

    ``ask`` shows the message and returns once the operator has acted: a blocking function (the
    terminal's Enter, run in a thread) or a coroutine function run on the event loop (an integration's
    UI, or a scripted operator on a virtual clock, whose answer then lands at a fixed pump time).
    """

    def __init__(self, ask: Callable[[str], None] | Callable[[str], Awaitable[None]] = ask_operator) -> None:
        self.ask = ask
        self.closed_at_s: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._close: tuple[Clock, float] | None = None

    async def _asked(self, message: str) -> None:
        """``ask`` on the loop when it is a coroutine function, else in a daemon thread: a prompt left
        unanswered when the run ends (an alarm before the clamp was closed) must not keep the process
        waiting for Enter."""
        if inspect.iscoroutinefunction(self.ask):
            await self.ask(message)
            return
        ask_blocking = cast(Callable[[str], None], self.ask)
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if answered.done():
                return
            if error is None:
                answered.set_result(None)
            else:
                answered.set_exception(error)

        def ask() -> None:
            error: BaseException | None = None
            try:
                ask_blocking(message)
            except Exception as e:
                error = e
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, error)

        threading.Thread(target=ask, name="operator-prompt", daemon=True).start()
        await answered

    def arrange_close(self, clock: Clock, at_s: float) -> None:
        self._close = (clock, at_s)

    def observe(self, now: float) -> None:
        """Asks the operator to close the clamp on the first tick at or after the arranged time; the line
        counts as closed when they answer (the loop keeps running meanwhile)."""
        if self._close is None or self._task is not None or now < self._close[1]:
            return
        clock = self._close[0]

        async def close() -> None:
            await self._asked("CLOSE the clamp on the line downstream of the pump")
            self.closed_at_s = clock.now()

        self._task = asyncio.create_task(close())

    async def open(self, clock: Clock) -> float:
        await self._asked("OPEN the clamp (the motor is stopped; the bolus is collected)")
        return clock.now()

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


@dataclass(frozen=True)
class OcclusionSetup:
    rate_ml_h: float
    threshold_mmhg: float
    slope_detector: bool
    compliance_ml_per_mmhg: float
    syringe_diameter_mm: float
    #: The dose programmed: enough that the alarm comes long before it runs out.
    volume_ml: float
    settle_s: float = SETTLE_S
    release_s: float = RELEASE_S

    @classmethod
    def in_syringe(
        cls,
        capacity_ml: float,
        *,
        rate_ml_h: float,
        threshold_mmhg: float,
        slope_detector: bool,
        compliance_ml_per_mmhg: float,
        syringe_diameter_mm: float,
        settle_s: float,
        release_s: float,
    ) -> OcclusionSetup:
        """The test with the dose of :func:`dose_for`, at most what the syringe holds."""
        dose = dose_for(rate_ml_h, threshold_mmhg, compliance_ml_per_mmhg, settle_s)
        return cls(
            rate_ml_h=rate_ml_h,
            threshold_mmhg=threshold_mmhg,
            slope_detector=slope_detector,
            compliance_ml_per_mmhg=compliance_ml_per_mmhg,
            syringe_diameter_mm=syringe_diameter_mm,
            volume_ml=min(capacity_ml, dose),
            settle_s=settle_s,
            release_s=release_s,
        )


def dose_for(
    rate_ml_h: float, threshold_mmhg: float, compliance_ml_per_mmhg: float, settle_s: float
) -> float:
    """A dose that outlasts the settling time plus twice the slowest S5 bound (P_0 = 0) plus 10 min."""
    slowest = s5_bound_s(compliance_ml_per_mmhg, threshold_mmhg, 0.0, rate_ml_h)
    return rate_ml_h * (settle_s + 2.0 * slowest + 600.0) / 3600.0


async def run_occlusion(
    driver: PumpDriver,
    clock: Clock,
    config: _core.KernelConfig,
    setup: OcclusionSetup,
    line: Line,
    *,
    meter: Callable[[], Awaitable[float]] | None,
) -> OcclusionRecord:
    """Runs the occlusion test: infuse, close the line after ``settle_s``, let the kernel alarm and back
    off, open the line and collect the bolus for ``release_s`` with the motor stopped.

    ``meter`` reads the delivered volume (mL) for the bolus; without one the bolus is not measured.
    Raises :class:`OcclusionTestError` when the run cannot be judged.
    """
    pressure: list[tuple[float, float]] = []
    alarm: list[tuple[float, tuple[str, ...], float]] = []
    stopped: list[float] = []
    last_pressure = math.nan

    def on_tick(out: _core.StepOutput, telemetry: PumpTelemetry | None) -> None:
        nonlocal last_pressure
        now = clock.now()
        line.observe(now)
        if telemetry is not None and math.isfinite(telemetry.pressure_mmhg):
            last_pressure = telemetry.pressure_mmhg
            pressure.append((now, last_pressure))
        if out.raised and not alarm:
            alarm.append((now, tuple(out.raised), last_pressure))
        if alarm and not stopped and out.direction != "forward":
            stopped.append(now)

    plan = InfusionPlan(
        rate_ml_h=setup.rate_ml_h, volume_ml=setup.volume_ml, syringe_diameter_mm=setup.syringe_diameter_mm
    )
    line.arrange_close(clock, setup.settle_s)
    try:
        result = await ControlLoop(driver, config, clock, NullLog(), on_tick=on_tick).run(plan)
    finally:
        line.cancel()
    closed = line.closed_at_s
    if alarm and (closed is None or alarm[0][0] < closed):
        t, raised, p = alarm[0]
        raise OcclusionTestError(
            f"the pump alarmed ({', '.join(raised)}) at {t:.1f} s, before the line was closed, at "
            f"{p:.0f} mmHg: a threshold of {setup.threshold_mmhg:g} mmHg is at or below the line's "
            f"working pressure at {setup.rate_ml_h:g} mL/h on this plant"
            if "occlusion_pressure" in raised
            else f"the pump alarmed ({', '.join(raised)}) at {t:.1f} s, before the line was closed"
        )
    if closed is None or not alarm:
        raise OcclusionTestError(
            f"the run ended ({result.reason}: {result.state}) without an alarm after the line was closed"
        )
    backoff_done = clock.now()
    # Weighed before the operator is asked: the bolus flows from the moment the clamp opens, which on
    # a rig is before they press Enter (motor stopped, line still closed here).
    before = await meter() if meter is not None else None
    opened = await line.open(clock)
    end = opened + setup.release_s
    while clock.now() < end - 1e-9:
        await clock.sleep_until(min(end, clock.now() + RELEASE_SAMPLE_S))
        telemetry = await driver.read_telemetry()
        await driver.heartbeat()  # keep the pump's watchdog quiet while it stands still
        if math.isfinite(telemetry.pressure_mmhg):
            pressure.append((clock.now(), telemetry.pressure_mmhg))
    after = await meter() if meter is not None else None
    t_alarm, raised, p_alarm = alarm[0]
    return OcclusionRecord(
        rate_ml_h=setup.rate_ml_h,
        threshold_mmhg=setup.threshold_mmhg,
        compliance_ml_per_mmhg=setup.compliance_ml_per_mmhg,
        slope_detector=setup.slope_detector,
        pressure=tuple(pressure),
        closed_at_s=closed,
        alarm_at_s=t_alarm,
        stopped_at_s=stopped[0] if stopped else backoff_done,
        pressure_at_alarm_mmhg=p_alarm,
        first_alarms=raised,
        alarms=result.alarms,
        backoff_done_at_s=backoff_done,
        opened_at_s=opened,
        bolus_ml=None if before is None or after is None else after - before,
    )


def occlusion_settings(threshold_mmhg: float, slope_detector: bool) -> dict[str, Any]:
    """Kernel overrides of an occlusion test: the threshold, and the threshold-only baseline if asked."""
    return {"occlusion_threshold_mmhg": threshold_mmhg, **({} if slope_detector else THRESHOLD_ONLY)}


async def run_simulated(
    pump: _core.SimPump,
    *,
    rate_ml_h: float,
    threshold_mmhg: float,
    slope_detector: bool = True,
    syringe: str = "bd-plastipak-50",
    compliance_ml_per_mmhg: float = SIM_COMPLIANCE_ML_PER_MMHG,
    settle_s: float = SETTLE_S,
    release_s: float = RELEASE_S,
    kernel_overrides: dict[str, Any] | None = None,
    clock: Clock | None = None,
    line: Line | None = None,
) -> OcclusionRecord:
    """The occlusion test on an in-process simulated pump over virtual time: the simulator closes and
    opens the line, and its delivered volume (what reached the patient) at the clock's time measures
    the bolus. ``kernel_overrides`` are applied last (e.g. to study one detector on its own); ``line``
    replaces the simulator's own fault (an :class:`OperatorLine` rehearses a real rig's sequence),
    ``clock`` the fresh :class:`VirtualClock`."""
    capacity, diameter = syringe_spec(syringe)
    clock = clock or VirtualClock()
    transport = open_transport("sim://", clock=clock, pump=pump)
    assert isinstance(transport, RegisterTransport)
    config = kernel_config(
        syringe_diameter_mm=diameter,
        syringe_capacity_ml=capacity,
        syringe_fill_ml=capacity,
        **(occlusion_settings(threshold_mmhg, slope_detector) | (kernel_overrides or {})),
    )
    setup = OcclusionSetup.in_syringe(
        capacity,
        rate_ml_h=rate_ml_h,
        threshold_mmhg=threshold_mmhg,
        slope_detector=slope_detector,
        compliance_ml_per_mmhg=compliance_ml_per_mmhg,
        syringe_diameter_mm=diameter,
        settle_s=settle_s,
        release_s=release_s,
    )

    async def delivered_ml() -> float:
        pump.advance_to(clock.now())  # a balance weighs when it is asked, not at the last request
        return pump.delivered_ml

    driver = ReferencePumpDriver(transport)
    try:
        return await run_occlusion(
            driver, clock, config, setup, line or SimulatedLine(pump), meter=delivered_ml
        )
    finally:
        await driver.close()


async def run_on_pump(
    url: str,
    *,
    rate: float,
    threshold: float,
    slope: bool,
    syringe: str,
    compliance: float | None,
    settle_s: float,
    release_s: float,
    balance: SicsBalance | None,
    time_scale: float,
) -> OcclusionRecord:
    """The occlusion test on a real pump (or a hw-sim process) at ``url``: the operator handles the
    clamp; with a balance, it weighs the released bolus."""
    capacity, diameter = syringe_spec(syringe)
    defaults = default_kernel_settings()
    scheme = split_url(url)[0]
    period = control_period_s(scheme, time_scale, None, float(defaults["control_period_s"]))
    clock = ScaledClock(time_scale)
    driver = make_driver(url, clock, period, time_scale)
    if "pressure_mmhg" in driver.lacks:
        raise ConfigurationError("pump", f"{url} measures no line pressure: the occlusion test needs it")
    config = kernel_config(
        **loop_settings(period, defaults),
        syringe_diameter_mm=diameter,
        syringe_capacity_ml=capacity,
        syringe_fill_ml=capacity,
        **occlusion_settings(threshold, slope),
    )
    setup = OcclusionSetup.in_syringe(
        capacity,
        rate_ml_h=rate,
        threshold_mmhg=threshold,
        slope_detector=slope,
        compliance_ml_per_mmhg=compliance or float(defaults["compliance_ml_per_mmhg"]),
        syringe_diameter_mm=diameter,
        settle_s=settle_s,
        release_s=release_s,
    )
    meter = None
    if balance is not None:
        balance.open()
        scale = balance

        async def meter() -> float:
            return await asyncio.to_thread(scale.grams)  # water: 1 g per mL

    try:
        return await run_occlusion(driver, clock, config, setup, OperatorLine(), meter=meter)
    finally:
        await driver.close()
        if balance is not None:
            balance.close()
