"""`ketapump qa accuracy`: the IEC 60601-2-24 style accuracy test of a pump through the bridge.

The bridge runs the pump at the set rate for the test period (T = 120 min by default) while a balance
records the delivered mass every 30 s; the first half gives the start-up curve, the second half the
trumpet curve (:mod:`ketapump.qa.trumpet`). Balance sources:

- ``sim``: the gravimetric balance of the in-process simulated pump (``sim://`` only);
- ``csv:PATH``: a file of ``t_s,grams`` lines recorded by any balance (a header line is allowed);
- ``sics:PORT``: a laboratory balance on a serial line, read every 30 s of the pump's clock
  (:mod:`ketapump.qa.balance`).

A run on a real pump must fit in the syringe: the period plus one sample at the set rate (a longer
period is refused, naming the longest that fits). On the simulator (``sim://`` with its own balance) a
longer period runs over several syringes, as a session does: at 52.5 mL/h the method's T = 120 min
needs 105 mL, three 50 mL syringes (two 60 mL ones). Each change pauses the pump, the simulator loads
a new full syringe, the kernel takes up its slack, and delivery resumes. The balance keeps weighing
throughout; the analysis leaves out the change: the 30 s samples from the last one before the pause
to the first one :data:`SETTLE_AFTER_CHANGE_MIN` after the new syringe's take-up ended are cut, and
the samples after them are joined on (their mass less what the cut interval gained), so every
analysed sample is one of steady delivery at the set rate and the analysed period is T of delivery
(docs/qa.md, syringe changes).

Targets (safety-targets.md): S1 |A| ≤ 2 %; S2 |Ep| ≤ 5 % at P = 2 min (≤ 10 % at 1 mL/h) and
≤ 2 % for P ≥ 11 min at rates ≥ 5 mL/h.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from ketapump.errors import ConfigurationError
from ketapump.qa.balance import SamplingClock, SicsBalance
from ketapump.qa.rig import sim_url_with_syringe
from ketapump.qa.trumpet import IEC_WINDOWS_MIN, Trumpet, trumpet
from ketapump.validation import MAX_RECORDING_BYTES, FileReadError, read_text_file
from ketapump.wire import PumpDriver, ReferencePumpDriver, SimTransport, open_transport, split_url

SAMPLE_MIN = 0.5

#: How far past T a run delivers (min): one sample, so the last analysed interval is a full one.
RUN_PAST_T_MIN = SAMPLE_MIN


@dataclass(frozen=True)
class Verdict:
    s1_mean_error: bool
    s2_trumpet: bool


def verdict(result: Trumpet, rate_ml_h: float) -> Verdict:
    """S1 and S2 as safety-targets.md states them."""
    p2_limit = 10.0 if rate_ml_h < 5.0 else 5.0
    s2 = all(abs(v) <= p2_limit for v in result.ep.get(2.0, (0.0, 0.0)))
    if rate_ml_h >= 5.0:
        s2 = s2 and all(abs(v) <= 2.0 for p, pair in result.ep.items() if p >= 11.0 for v in pair)
    return Verdict(s1_mean_error=abs(result.mean_error_pct) <= 2.0, s2_trumpet=s2)


#: The shortest period the method analyses: its second half must hold the longest window.
MIN_DURATION_MIN = 2 * max(IEC_WINDOWS_MIN)


def check_duration(duration_min: float) -> None:
    """``ConfigurationError`` naming the method's minimum period (62 min: the second half must hold the
    longest observation window, 31 min) or its sample interval, for a period the analysis cannot use.
    Checked before a pump moves: on a real balance a refused period would otherwise waste the run."""
    longest = max(IEC_WINDOWS_MIN)
    if not (math.isfinite(duration_min) and duration_min >= MIN_DURATION_MIN):
        raise ConfigurationError(
            "duration",
            f"{duration_min:g} min is shorter than the method's minimum period {MIN_DURATION_MIN:g} min "
            f"(the second half is analysed and must hold the longest observation window, {longest:g} min)",
        )
    samples = duration_min / SAMPLE_MIN
    if abs(samples - round(samples)) > 1e-9:
        raise ConfigurationError(
            "duration", f"{duration_min:g} min is not a whole number of {SAMPLE_MIN:g}-min balance samples"
        )


def required_volume_ml(rate_ml_h: float, duration_min: float) -> float:
    """What a run of the period delivers: the period plus one sample at the set rate."""
    return rate_ml_h * (duration_min + RUN_PAST_T_MIN) / 60.0


def longest_period_min(rate_ml_h: float, capacity_ml: float) -> int:
    """The longest whole-minute period a syringe of ``capacity_ml`` holds at the set rate."""
    return max(0, math.floor(capacity_ml * 60.0 / rate_ml_h - RUN_PAST_T_MIN + 1e-9))


def check_period_fits(rate_ml_h: float, duration_min: float, syringe: str, capacity_ml: float) -> float:
    """The volume the run needs; ``ConfigurationError`` naming it and the syringe's capacity if it
    does not fit (a run that empties the syringe would end before T and analyse nothing)."""
    needed = required_volume_ml(rate_ml_h, duration_min)
    if needed > capacity_ml + 1e-9:
        raise ConfigurationError(
            "duration",
            f"{duration_min:g} min at {rate_ml_h:g} mL/h needs {needed:.1f} mL (the period plus one "
            f"sample), more than the {syringe} syringe holds ({capacity_ml:g} mL): the longest period "
            f"it holds is {longest_period_min(rate_ml_h, capacity_ml)} min",
        )
    return needed


#: After a syringe change, how long the line takes to be back at the set rate once the new syringe's
#: take-up has ended (the line re-pressurises through its compliance): left out of the analysis.
SETTLE_AFTER_CHANGE_MIN = 2.0
#: What one change may cut from the delivery the balance records (min): the part of a sample before
#: the pause, the take-up and the settling, each sample rounded outward.
CHANGE_BUDGET_MIN = SETTLE_AFTER_CHANGE_MIN + 2 * SAMPLE_MIN + 1.0
#: Left in each syringe (mL): the share it gives stops short of its end of travel.
SYRINGE_MARGIN_ML = 1.0


@dataclass(frozen=True)
class SyringeChange:
    """One syringe change of a run: when the pump was paused for it, and when the new syringe's
    take-up ended (pump seconds)."""

    paused_s: float
    resumed_s: float

    def cut_slots(self) -> tuple[int, int]:
        """The balance samples the change spans: from the last at or before the pause to the first
        :data:`SETTLE_AFTER_CHANGE_MIN` after the take-up (sample indices; the first is kept)."""
        period_s = SAMPLE_MIN * 60.0
        first = math.floor(self.paused_s / period_s + 1e-9)
        last = math.ceil((self.resumed_s + SETTLE_AFTER_CHANGE_MIN * 60.0) / period_s - 1e-9)
        return first, last


def syringes_for(rate_ml_h: float, duration_min: float, capacity_ml: float) -> tuple[int, float]:
    """How many syringes a period takes on the simulator and the volume the run delivers (the period,
    one sample, and what each change may cut)."""
    count = 1
    while True:
        volume = rate_ml_h * (duration_min + RUN_PAST_T_MIN + (count - 1) * CHANGE_BUDGET_MIN) / 60.0
        if volume <= count * (capacity_ml - SYRINGE_MARGIN_ML) or (count == 1 and volume <= capacity_ml):
            return count, volume
        count += 1


def splice_readings(
    readings: list[tuple[float, float]], changes: list[SyringeChange]
) -> list[tuple[float, float]]:
    """The balance readings with each change's samples cut out and the later ones joined on (their time
    moved back by the cut, their mass less what the cut interval gained): a record of steady delivery."""
    period_s = SAMPLE_MIN * 60.0
    by_slot = {round(t / period_s): g for t, g in readings}
    shift, offset_g = 0, 0.0
    cuts = sorted(c.cut_slots() for c in changes)
    spliced: list[tuple[float, float]] = []
    for slot in sorted(by_slot):
        if any(a < slot < b for a, b in cuts):
            continue
        joins = [(a, b) for a, b in cuts if slot == b and a in by_slot]
        for a, b in joins:
            # The first sample after the cut is the last one before it, joined on: the record goes on
            # from there (its mass less what the cut interval gained, its time less the cut).
            shift += b - a
            offset_g += by_slot[b] - by_slot[a]
        if not joins:
            spliced.append(((slot - shift) * period_s, by_slot[slot] - offset_g))
    return spliced


class _TakeUpWatch:
    """An :class:`~ketapump.bridge.EventLog` that keeps only the kernel's take-up ends (pump seconds)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.take_up_done_s: list[float] = []

    def info(self, event: str, **fields: Any) -> None:
        if event == "state_transition" and fields.get("cause") == "take_up_done":
            self.take_up_done_s.append(self.clock.now())

    def warning(self, event: str, **fields: Any) -> None:
        return None

    def error(self, event: str, **fields: Any) -> None:
        return None


async def run_over_syringes(
    transport: SimTransport,
    config: _core.KernelConfig,
    clock: Clock,
    plan: InfusionPlan,
    capacity_ml: float,
) -> list[SyringeChange]:
    """Runs ``plan`` on the simulator over ``plan.syringes`` syringes, changing each once it has given
    its equal share: pause, the kernel's syringe change, the simulator loads a full syringe, resume with
    the new syringe's take-up. Returns the changes; a run that does not complete is a
    ``ConfigurationError``."""
    share = plan.volume_ml / plan.syringes
    watch = _TakeUpWatch(clock)
    loop = ControlLoop(ReferencePumpDriver(transport), config, clock, watch)
    changes: list[SyringeChange] = []
    stage: list[Any] = [None, 0.0]  # the change under way, and when its pause was asked

    def on_tick(out: _core.StepOutput, _telemetry: object) -> None:
        now = clock.now()
        spent = out.delivered_ml >= share * (len(changes) + 1) and len(changes) < plan.syringes - 1
        if stage[0] is None and spent and out.state == "running":
            loop.request_pause("syringe spent")
            stage[:] = ["pausing", now]
        elif stage[0] == "pausing" and out.state == "paused" and out.direction == "hold":
            loop.request_syringe_change("syringe spent")
            stage[0] = "changing"
        elif stage[0] == "changing" and out.state == "syringe_change":
            transport.pump.inject("fault_load_syringe", 1)  # the operator's hands, on the simulator
            loop.request_syringe_loaded(capacity_ml, "a full syringe loaded")
            stage[0] = "loaded"
        elif stage[0] == "loaded" and out.state == "paused":
            loop.request_resume("new syringe loaded")
            stage[0] = "resuming"
        elif stage[0] == "resuming" and len(watch.take_up_done_s) > len(changes) + 1:
            changes.append(SyringeChange(paused_s=stage[1], resumed_s=watch.take_up_done_s[-1]))
            stage[0] = None

    loop.on_tick = on_tick
    result = await loop.run(plan)
    if result.state != "complete":
        raise ConfigurationError("pump", f"the run ended {result.state} ({', '.join(result.alarms)})")
    return changes


def readings_from_csv(path: Path) -> list[tuple[float, float]]:
    """``t_s,grams`` rows; raises ``ValueError`` naming the line of a malformed row."""
    rows: list[tuple[float, float]] = []
    try:
        text = read_text_file(path, limit_bytes=MAX_RECORDING_BYTES)
    except FileReadError as e:
        raise ValueError(str(e)) from e
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or (n == 1 and not row[0].strip().replace(".", "", 1).isdigit()):
            continue
        try:
            t, g = float(row[0]), float(row[1])
        except (IndexError, ValueError):
            raise ValueError(f"{path}:{n}: expected t_s,grams, got {row!r}") from None
        if not (math.isfinite(t) and math.isfinite(g)):
            raise ValueError(f"{path}:{n}: non-finite value")
        rows.append((t, g))
    return rows


def grams_every_sample(readings: list[tuple[float, float]], duration_min: float) -> list[float]:
    """The readings at 0, S, 2S … T (the balance's own 30 s samples), checked to be complete."""
    period_s = SAMPLE_MIN * 60.0
    by_slot = {round(t / period_s): g for t, g in readings if abs(t / period_s - round(t / period_s)) < 1e-3}
    slots = round(duration_min / SAMPLE_MIN)
    missing = [k for k in range(slots + 1) if k not in by_slot]
    if missing:
        raise ValueError(
            f"balance readings missing at {', '.join(f'{k * period_s:g} s' for k in missing[:5])}"
        )
    return [by_slot[k] for k in range(slots + 1)]


def plot(result: Trumpet, rate_ml_h: float, out_dir: Path, start_min: float) -> list[Path]:
    """The start-up curve and the trumpet curve as PNGs (headless)."""
    import matplotlib  # noqa: PLC0415 - plotting is optional at import time

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    startup = out_dir / "startup.png"
    fig, ax = plt.subplots(figsize=(8, 4))
    t = [p[0] for p in result.flow_ml_h]
    ax.plot(t, [p[1] for p in result.flow_ml_h], label="flow per 30 s sample")
    ax.axhline(rate_ml_h, color="black", linewidth=1, label=f"set rate {rate_ml_h:g} mL/h")
    ax.axvline(start_min, color="grey", linestyle="--", label="analysis period starts")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("flow (mL/h)")
    ax.set_title("Start-up curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(startup, dpi=100)
    plt.close(fig)
    trumpet_png = out_dir / "trumpet.png"
    fig, ax = plt.subplots(figsize=(8, 4))
    windows = sorted(result.ep)
    ax.plot(windows, [result.ep[p][0] for p in windows], "o-", label="Ep(max)")
    ax.plot(windows, [result.ep[p][1] for p in windows], "o-", label="Ep(min)")
    ax.axhline(result.mean_error_pct, color="black", linewidth=1, label=f"A = {result.mean_error_pct:.2f} %")
    ax.set_xlabel("observation window P (min)")
    ax.set_ylabel("error (%)")
    ax.set_title(f"Trumpet curve at {rate_ml_h:g} mL/h")
    ax.legend()
    fig.tight_layout()
    fig.savefig(trumpet_png, dpi=100)
    plt.close(fig)
    return [startup, trumpet_png]


def analyse(
    readings: list[tuple[float, float]],
    *,
    rate_ml_h: float,
    duration_min: float,
    density_g_per_ml: float = 1.0,
) -> Trumpet:
    """The trumpet analysis of a run's balance readings: the second half of the period is analysed."""
    grams = grams_every_sample(readings, duration_min)
    return trumpet(
        grams,
        rate_ml_h=rate_ml_h,
        sample_min=SAMPLE_MIN,
        start_min=duration_min / 2,
        density_g_per_ml=density_g_per_ml,
    )


async def record_period(
    driver: PumpDriver,
    clock: Clock,
    config: _core.KernelConfig,
    plan: InfusionPlan,
    read_grams: Callable[[], float],
) -> list[tuple[float, float]]:
    """Runs ``plan`` through the bridge, reading the balance every 30 s of the pump's clock.

    Returns the ``(t_s, grams)`` readings; a run that does not complete (an alarm, a lost link) is a
    ``ConfigurationError`` naming how it ended, since nothing after it could be analysed.
    """
    sampler = SamplingClock(clock, read_grams, period_s=SAMPLE_MIN * 60.0)
    result = await ControlLoop(driver, config, sampler, NullLog()).run(plan)
    readings = await sampler.finish()
    if result.state != "complete":
        raise ConfigurationError(
            "pump", f"the run ended {result.state} ({', '.join(result.alarms + result.pump_alarms)})"
        )
    return readings


async def run_accuracy(
    url: str,
    rate: float,
    syringe: str,
    duration_min: float,
    balance: SicsBalance | None = None,
    *,
    changes: list[SyringeChange] | None = None,
) -> list[tuple[float, float]]:
    """Runs the pump through the bridge for the period (plus one sample); returns the balance
    readings: the simulator's own, or those of ``balance`` read every 30 s of the pump's clock. On the
    simulator a period longer than one syringe runs over several (each change appended to
    ``changes``), and the readings returned are the spliced ones (:func:`splice_readings`)."""
    check_duration(duration_min)
    capacity, diameter = syringe_spec(syringe)
    over_syringes = split_url(url)[0] == "sim" and balance is None
    if over_syringes:
        count, volume = syringes_for(rate, duration_min, capacity)
    else:
        count, volume = 1, check_period_fits(rate, duration_min, syringe, capacity)
    # The syringe is filled to its capacity (as the simulator fills it).
    syringe_settings = {
        "syringe_diameter_mm": diameter,
        "syringe_capacity_ml": capacity,
        "syringe_fill_ml": capacity,
    }
    plan = InfusionPlan(rate_ml_h=rate, volume_ml=volume, syringe_diameter_mm=diameter, syringes=count)
    scheme = split_url(url)[0]
    clock: Clock
    if scheme == "sim":
        clock = VirtualClock()
        transport = open_transport(sim_url_with_syringe(url, syringe), clock=clock)
        assert isinstance(transport, SimTransport)
        driver: PumpDriver = ReferencePumpDriver(transport)
        config = kernel_config(**syringe_settings)
        if count > 1:
            done = await run_over_syringes(transport, config, clock, plan, capacity)
            cut_s = sum((b - a) * SAMPLE_MIN * 60.0 for a, b in (c.cut_slots() for c in done))
            transport.pump.advance_to(max(transport.pump.t_s, duration_min * 60.0 + cut_s))
            if changes is not None:
                changes.extend(done)
            return splice_readings(transport.pump.balance_readings(), done)
        if balance is None:
            result = await ControlLoop(driver, config, clock, NullLog()).run(plan)
            if result.state != "complete":
                raise ConfigurationError("pump", f"the run ended {result.state} ({', '.join(result.alarms)})")
            # The balance weighs to the end of the period, as a rig's would: at 1 mL/h the take-up leaves
            # ~5 s of the 30 s margin, and the kernel ends the dose ~6 s early by the drive's release.
            transport.pump.advance_to(max(transport.pump.t_s, duration_min * 60.0))
            return transport.pump.balance_readings()
    else:
        if balance is None:
            raise ConfigurationError("balance", "'sim' needs --pump sim://… (the simulator's own balance)")
        defaults = default_kernel_settings()
        period = control_period_s(scheme, 1.0, None, float(defaults["control_period_s"]))
        clock = ScaledClock(1.0)
        driver = make_driver(url, clock, period, 1.0)
        sensor = "pressure_mmhg" not in driver.lacks
        config = kernel_config(
            **loop_settings(period, defaults), has_pressure_sensor=sensor, **syringe_settings
        )
    with balance:
        try:
            return await record_period(driver, clock, config, plan, balance.grams)
        finally:
            await driver.close()
