"""The closed control loop: each tick refresh the pump's heartbeat and read its telemetry, let the Rust
kernel decide, command the pump, and record everything in the audit log.

Rules this module keeps:

- **The kernel decides every command.** The loop only relays :meth:`SafetyKernel.step`'s output to
  the driver; it never computes a rate.
- **Stop first, log second.** When the kernel raises an alarm, the pump is stopped before the alarm
  is written to the audit log.
- **Log, then act, one fsync per tick.** Each tick's records (transitions, alarms, the command's intent,
  summaries) are group-committed (:func:`~ketapump.bridge.audit.record_group`) with one write and one
  fsync before the pump is commanded; a crash loses at most the tick in progress, none of whose
  commands reached the pump (a stop excepted: stop first, log second).
- **Deadline scheduling on an injected clock.** Ticks are due at ``start + k × period``; the kernel
  is handed the measured time of each sample, never the scheduled one. If the loop itself stalls,
  the pump's own watchdog stops the motor (the loop refreshes it every tick).
- **One transaction per tick** where the driver has one (:attr:`PumpDriver.beats_with_telemetry`:
  Modbus function 23 on the reference pump): the heartbeat and the telemetry read together at the
  tick's start, and a rate only when it changes. When that request fails, the tick goes on as the
  two-request path does (New Era, Harvard): the sample is missing, and the heartbeat is sent on its own
  after the command — so a dead link counts the same failures per tick, and the watchdog is refreshed
  at least as often, as with two requests.
- **An audit write that fails stops the pump** (:class:`~ketapump.errors.AuditWriteError` propagates
  after a best-effort stop).
- **Recovery** after a crash is :mod:`ketapump.bridge.recovery`'s: the loop records the pump's infused
  counter at the start and in every telemetry summary, which is what a resume reconciles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ketapump import _core
from ketapump.bridge.audit import record_group
from ketapump.clock import Clock
from ketapump.errors import (
    ConfigurationError,
    InterlockError,
    StateTransitionError,
    TransportError,
)
from ketapump.wire import PumpDriver, PumpRefusedError, PumpTelemetry


class EventLog(Protocol):
    """What the loop needs of the audit log: structlog-style calls with a stable event name."""

    def info(self, event: str, **fields: Any) -> Any: ...

    def warning(self, event: str, **fields: Any) -> Any: ...

    def error(self, event: str, **fields: Any) -> Any: ...


class NullLog:
    """An :class:`EventLog` that records nothing: for runs whose record is not wanted (QA analysis
    runs on the in-process simulator, benchmarks)."""

    def info(self, event: str, **fields: Any) -> None: ...

    warning = error = info


@dataclass(frozen=True)
class InfusionPlan:
    rate_ml_h: float
    volume_ml: float
    syringe_diameter_mm: float
    take_up: bool = True
    #: Syringes the volume is given over (the kernel's limits are the whole volume's).
    syringes: int = 1


#: The end state of a run that lost its link to the pump (reason ``transport``): whatever the kernel
#: last decided, the bridge no longer controls the pump.
LINK_LOST = "link_lost"


@dataclass
class RunResult:
    #: How the run ended, as an operator must read it: the kernel's final state (``complete``, ``alarm``,
    #: ``stopped``), or :data:`LINK_LOST` when the link was lost (reason ``transport``), whatever the
    #: kernel's state (:attr:`kernel_state`) was then.
    state: str
    #: How the run ended: ``complete``, ``interlock``, ``pump_alarm``, ``transport``, or who stopped it
    #: (:meth:`ControlLoop.request_stop`: ``operator``, or an automatic rule: ``vitals``, ``protocol``).
    reason: str
    #: Volume delivered by this run, measured by the pump's plunger (mL).
    delivered_ml: float
    #: Volume delivered by the session including any earlier run recovered from the record (mL).
    session_delivered_ml: float
    alarms: tuple[str, ...] = ()
    pump_alarms: tuple[str, ...] = ()
    detail: str = ""
    #: Whether the pump acknowledged the final stop (and, at a normal end, reported its motor at rest).
    #: False after a lost link: the pump's own watchdog is then what stops it.
    stop_confirmed: bool = True
    #: The kernel's state at the end (``running`` after a lost link, for instance).
    kernel_state: str = ""


@dataclass
class _Commanded:
    """What the pump was last told, so unchanged commands are not re-sent."""

    direction: str = "hold"
    rate_ml_h: float = 0.0


class ControlLoop:
    """Runs one infusion on one pump."""

    def __init__(
        self,
        driver: PumpDriver,
        config: _core.KernelConfig,
        clock: Clock,
        log: EventLog,
        *,
        period_s: float | None = None,
        summary_every_s: float = 10.0,
        max_transport_failures: int = 3,
        on_tick: Callable[[_core.StepOutput, PumpTelemetry | None], None] | None = None,
        watch_after_end_s: float = 0.0,
    ) -> None:
        self.driver = driver
        #: How long a completed program stays watched (the kernel keeps stepping): a siphon after the end
        #: raises ``uncommanded_delivery`` and the kernel's catch is carried out (docs/safety-kernel.md).
        self.watch_after_end_s = watch_after_end_s
        self._watch_until: float | None = None
        self.config = config
        self.clock = clock
        self.log = log
        self.period_s = period_s or float(config.as_dict()["control_period_s"])
        self.summary_every_s = summary_every_s
        self.max_transport_failures = max_transport_failures
        self.on_tick = on_tick
        if "pressure_mmhg" in driver.lacks and config.as_dict()["has_pressure_sensor"]:
            raise ConfigurationError(
                "has_pressure_sensor", "is true but this pump measures no line pressure (driver.lacks)"
            )
        self.kernel = _core.SafetyKernel(config)
        self._stop_requested = False
        self._stopped_by = "operator"
        self._stopped_by_name: str | None = None
        self._requests: list[tuple[str, Any]] = []
        self._commanded = _Commanded()
        self._last_sample: tuple[float, PumpTelemetry] | None = None
        #: Set once the pump was told to move or seen moving: only then does a failure send a stop.
        self._may_be_moving = False

    def request_stop(self, by: str = "operator", *, who: str | None = None) -> None:
        """Stops the pump at the next tick: the operator's stop (e.g. SIGINT; ``who``: their name, when
        known), or an automatic rule's (``by``: ``vitals``, ``protocol``), recorded and reported in its own
        name, never an operator's. The first request decides who stopped the run."""
        if not self._stop_requested:
            self._stopped_by, self._stopped_by_name = by, who
        self._stop_requested = True

    def request_pause(self, reason: str) -> None:
        """Pauses the infusion at the next tick (the operator, or a vitals alarm); ``reason`` is logged."""
        self._requests.append(("pause", reason))

    def request_resume(self, reason: str) -> None:
        """Resumes a paused infusion at the next tick at the programmed rate (no catch-up)."""
        self._requests.append(("resume", reason))

    def request_syringe_change(self, reason: str) -> None:
        """Begins a syringe change at the next tick (the kernel paused, its motor already holding): the
        syringe may come out of the pump."""
        self._requests.append(("change_syringe", reason))

    def request_syringe_loaded(self, fill_ml: float, reason: str) -> None:
        """Ends the syringe change at the next tick: a new syringe holding ``fill_ml`` is in the pump
        (the kernel takes up its slack at the resume)."""
        self._requests.append(("syringe_loaded", (fill_ml, reason)))

    def request_rate(self, rate_ml_h: float, reason: str) -> None:
        """Changes the programmed rate at the next tick (a protocol's ramp or taper). The kernel validates
        it: a rate it refuses latches ``rate_command_invalid`` and stops the pump."""
        self._requests.append(("rate", (rate_ml_h, reason)))

    def _apply_requests(self) -> None:
        """Hands the queued operator requests to the kernel, in order. A request the kernel's state does
        not allow (a pause while already paused or in alarm) is logged and dropped, never forced. After
        a syringe is loaded the rest wait for the next tick: its sample gives the new plunger's position,
        which a resume needs; a resume the kernel refuses for want of that position (the read failed)
        waits, with what came after it, until a fresh sample gives it. The wait ends there, when a stop
        or the kernel's staleness alarm makes the resume one the state does not allow, or when the run
        ends for another reason (the link lost as ``transport_lost``, a pump alarm, a refusal)."""
        requests, self._requests = self._requests, []
        kernel = self.kernel
        for i, (kind, arg) in enumerate(requests):
            try:
                if kind == "pause":
                    kernel.pause()
                    self.log.info("paused", reason=arg)
                elif kind == "resume":
                    kernel.resume()
                    self.log.info("resumed", reason=arg)
                elif kind == "change_syringe":
                    kernel.change_syringe()
                    self.log.info("syringe_change_begun", reason=arg, delivered_ml=kernel.delivered_ml)
                elif kind == "syringe_loaded":
                    fill_ml, reason = arg
                    kernel.syringe_loaded(fill_ml)
                    self.log.info("syringe_loaded", fill_ml=fill_ml, reason=reason)
                    self._requests[:0] = requests[i + 1 :]
                    return
                else:
                    rate, reason = arg
                    kernel.set_rate(rate)
                    self.log.info("rate_changed", rate_ml_h=rate, reason=reason)
            except StateTransitionError as e:
                if e.why and kind == "resume":
                    self._requests[:0] = requests[i:]
                    self.log.info("request_waits", request=kind, state=e.state, why=e.why)
                    return
                self.log.warning("request_refused", request=kind, state=e.state)
            except InterlockError as e:
                # The kernel latched the alarm itself; the next step reports it and the loop stops.
                self.log.error("request_refused", request=kind, alarm=e.alarm, detail=e.detail)
            except ConfigurationError as e:  # a syringe fill the kernel refuses: nothing changed
                self.log.error("request_refused", request=kind, field=e.field, detail=e.problem)

    # ----- pump commands ----------------------------------------------------------------------

    async def _safe_stop(self) -> bool:
        """Stops the pump; a failure is logged and reported, never raised (we are already on a failure
        path). Returns whether the pump acknowledged the stop."""
        try:
            await self.driver.stop()
        except TransportError as e:
            self.log.error("pump_stop_failed", error=str(e))
            return False
        self._commanded = _Commanded()
        return True

    def _announce(self, out: _core.StepOutput) -> _Commanded | None:
        """The command the pump must be sent for the kernel's output, logged (the intent, before acting),
        or None when the pump already runs it.

        The loop adds no deadband of its own: the kernel's controller decides when a new rate is worth
        sending (it holds its output between decisions), so every change it makes reaches the pump and
        the pump always runs the rate the kernel accounts for.
        """
        # Compared as the dataclass compares, without building one every tick: most ticks command what
        # the pump already runs.
        direction, rate_ml_h = out.direction, out.rate_ml_h
        last = self._commanded
        if (direction, rate_ml_h) == (last.direction, last.rate_ml_h):
            return None
        command = _Commanded(direction, rate_ml_h)
        self.log.info("command", direction=command.direction, rate_ml_h=command.rate_ml_h)
        return command

    async def _send(self, command: _Commanded) -> None:
        """Commands the pump (after :meth:`_announce` logged it and the tick's records were committed)."""
        last = self._commanded
        if command.direction != "hold":
            self._may_be_moving = True
        if command.direction == "hold":
            await self.driver.stop()
        elif command.direction == "forward":
            await self.driver.set_rate_ml_h(command.rate_ml_h)
            if last.direction != "forward":
                await self.driver.start()
        else:
            await self.driver.withdraw(command.rate_ml_h)
        self._commanded = command

    # ----- the run ----------------------------------------------------------------------------

    async def run(self, plan: InfusionPlan, *, recovered_ml: float = 0.0) -> RunResult:
        """Runs ``plan`` to completion, an alarm, a transport failure or an operator stop.

        ``recovered_ml`` is what an earlier, interrupted run of the same session delivered; this run
        delivers the rest. Any exception leaving the loop (a failed audit write, a cancellation, a bug)
        stops the pump first, best effort, and then propagates — unless the pump cannot be moving: it was
        never told to move and never seen moving (a pump that never answered is not asked again, so an
        unreachable pump fails within its transport's bound, timeout × (retries + 1)).
        """
        try:
            return await self._run(plan, recovered_ml)
        except BaseException:
            if self._may_be_moving:
                with contextlib.suppress(Exception):
                    await self.driver.stop()
            raise

    async def _run(self, plan: InfusionPlan, recovered_ml: float) -> RunResult:
        log, kernel = self.log, self.kernel
        await self.driver.connect()
        telemetry = await self.driver.read_telemetry()
        self._may_be_moving = telemetry.motor_running
        if "reset" in telemetry.pump_alarms:
            await self.driver.acknowledge_alarm()
            log.info(
                "pump_alarm_acknowledged", pump_alarms=sorted(telemetry.pump_alarms), why="power-up reset"
            )
            telemetry = await self.driver.read_telemetry()
        if telemetry.pump_alarms:
            stopped = await self._safe_stop()
            return self._finish(
                "stopped",
                "pump_alarm",
                0.0,
                recovered_ml,
                telemetry=telemetry,
                detail="pump alarms latched",
                stop_confirmed=stopped,
            )
        identity = await self.driver.identify()
        await self.driver.set_syringe(plan.syringe_diameter_mm)
        remaining = plan.volume_ml - recovered_ml
        kernel.load(
            plan.rate_ml_h, remaining, take_up=plan.take_up and recovered_ml == 0, syringes=plan.syringes
        )
        start_infused = telemetry.infused_ml
        log.info(
            "session_started",
            rate_ml_h=plan.rate_ml_h,
            volume_ml=plan.volume_ml,
            remaining_ml=remaining,
            recovered_ml=recovered_ml,
            syringe_diameter_mm=plan.syringe_diameter_mm,
            syringes=plan.syringes,
            pump_infused_ml_at_start=start_infused,
            missing_telemetry=sorted(self.driver.lacks),
            control_period_s=self.period_s,
            pump_identity=identity,
        )
        t0 = self.clock.now()
        first = self._step(t0, telemetry)
        if first.alarms:
            # Something is already wrong (air, no syringe, bad telemetry): never start.
            self._drain_trace()
            log.error("alarm", raised=list(first.raised), alarms=list(first.alarms), delivered_ml=0.0)
            return self._finish(
                "alarm", "interlock", 0.0, recovered_ml, telemetry=telemetry, detail="before start"
            )
        kernel.start()
        self._drain_trace()
        tick, next_summary = 0, t0
        # One request per tick where the pump takes it: the heartbeat written and the telemetry read in
        # one transaction at the tick's start; otherwise the read first and the beat after the command.
        one_transaction = self.driver.beats_with_telemetry
        last: PumpTelemetry | None = telemetry
        failures = 0
        while True:
            tick += 1
            await self.clock.sleep_until(t0 + tick * self.period_s)
            # One group commit per tick: every record of the tick is written and fsync-ed once, before
            # the pump is commanded; what a failure or the end adds after that is committed on leaving.
            with record_group() as records:
                if self._stop_requested and kernel.state in {"running", "paused", "syringe_change"}:
                    kernel.stop()
                    if self._stopped_by == "operator":
                        log.info("operator_stop", operator=self._stopped_by_name)
                    else:
                        log.info("automatic_stop", by=self._stopped_by)
                if self._requests:
                    self._apply_requests()
                fresh: PumpTelemetry | None
                beaten = False
                try:
                    if one_transaction:
                        fresh = await self.driver.heartbeat_and_read_telemetry()
                        beaten = True
                    else:
                        fresh = await self.driver.read_telemetry()
                    failures = 0
                    last = fresh
                except TransportError as e:
                    # A failed combined request may have lost the beat too: it is sent on its own after
                    # the command, as on the two-request path, and counts its own failure there.
                    failures += 1
                    log.warning("telemetry_failed", error=str(e), consecutive=failures)
                    fresh = None
                now = self.clock.now()
                out = self._step(now, fresh)
                if out.raised:
                    await self._safe_stop()  # stop first ...
                    log.error(
                        "alarm",
                        raised=list(out.raised),
                        alarms=list(out.alarms),
                        delivered_ml=out.delivered_ml,
                    )
                self._drain_trace()
                if fresh is not None and fresh.pump_alarms and kernel.state != "alarm":
                    # Only the power-up reset before the start is expected; during the run a reset means the
                    # pump lost power (and its counters), and any other pump alarm means it stopped itself.
                    return await self._end_by_pump(
                        out, recovered_ml, fresh, "pump_alarm", pump_alarms=sorted(fresh.pump_alarms)
                    )
                if self.on_tick is not None:
                    self.on_tick(out, fresh)
                if now >= next_summary and last is not None:
                    next_summary = now + self.summary_every_s
                    self._summary(out, last, start_infused, recovered_ml)
                command = self._announce(out)
                records.commit()  # ... and everything the pump is about to be told is on disk first
                try:
                    if command is not None:
                        await self._send(command)
                    if not beaten:
                        await self.driver.heartbeat()
                except PumpRefusedError as e:
                    # A refusal is the pump's answer, not a lost link: retrying would not change it.
                    return await self._end_by_pump(
                        out, recovered_ml, fresh, "command_refused", detail=str(e), error=str(e), code=e.code
                    )
                except TransportError as e:
                    failures += 1
                    log.warning("command_failed", error=str(e), consecutive=failures)
                if failures > self.max_transport_failures:
                    stopped = await self._safe_stop()
                    log.error("transport_lost", consecutive_failures=failures, stop_confirmed=stopped)
                    return self._finish(
                        LINK_LOST,
                        "transport",
                        out.delivered_ml,
                        recovered_ml,
                        telemetry=last,
                        detail="link lost; the pump confirmed the stop"
                        if stopped
                        else "link lost; the pump's stop is not confirmed (its watchdog stops it)",
                        stop_confirmed=stopped,
                    )
                # The end: a final state once the kernel commands hold (an occlusion back-off retracts first).
                if (
                    out.state in {"complete", "alarm", "stopped"}
                    and out.direction == "hold"
                    and not self._watching_after_end(out.state, now)
                ):
                    stopped = await self._safe_stop()
                    final = await self._final_telemetry(last)
                    self._summary(out, final, start_infused, recovered_ml)
                    if not stopped or final is None or final.motor_running:
                        log.error("pump_stop_unconfirmed", state=out.state)
                        return self._finish(
                            LINK_LOST, "transport", out.delivered_ml, recovered_ml, telemetry=final,
                            detail="the pump did not confirm the stop", stop_confirmed=False,
                        )  # fmt: skip
                    reason = {"complete": "complete", "alarm": "interlock", "stopped": self._stopped_by}[
                        out.state
                    ]
                    log.info("session_ended", state=out.state, reason=reason, delivered_ml=out.delivered_ml)
                    return self._finish(out.state, reason, out.delivered_ml, recovered_ml, telemetry=final)

    def _watching_after_end(self, state: str, now: float) -> bool:
        """Whether a completed program is still within ``watch_after_end_s`` of its completion."""
        if state != "complete" or self.watch_after_end_s <= 0.0:
            return False
        if self._watch_until is None:
            self._watch_until = now + self.watch_after_end_s
            self.log.info("watching_after_end", watch_s=self.watch_after_end_s)
        return now < self._watch_until

    async def _end_by_pump(
        self,
        out: _core.StepOutput,
        recovered_ml: float,
        telemetry: PumpTelemetry | None,
        event: str,
        *,
        detail: str = "",
        **fields: Any,
    ) -> RunResult:
        """Ends the run on the pump's word (its alarm, its refusal): stop first, log second."""
        stopped = await self._safe_stop()
        self.log.error(event, **fields)
        return self._finish(
            "stopped",
            "pump_alarm",
            out.delivered_ml,
            recovered_ml,
            telemetry=telemetry,
            detail=detail,
            stop_confirmed=stopped,
        )

    def _step(self, now: float, telemetry: PumpTelemetry | None) -> _core.StepOutput:
        """One kernel tick. Without a fresh sample the last one is repeated with its old timestamp, so
        the kernel's staleness check counts the outage."""
        if telemetry is not None:
            self._last_sample = (now, telemetry)
        assert self._last_sample is not None, "the first step has a sample"
        t, sample = self._last_sample
        return self.kernel.step(
            now,
            t,
            sample.volume_ml,
            # Passed as read: NaN from a pump without a sensor is ignored by a kernel configured without
            # one, and from a pump with a sensor it is a telemetry fault, never a disguised 0 mmHg.
            sample.pressure_mmhg,
            motor_running=sample.motor_running,
            air_in_line=sample.air_in_line,
            syringe_present=sample.syringe_present,
            end_of_travel=sample.end_of_travel,
        )

    def _drain_trace(self) -> None:
        for e in self.kernel.drain_trace():
            self.log.info(
                "state_transition",
                kernel_seq=e.seq,
                t_s=e.t_s,
                from_state=e.from_state,
                to_state=e.to_state,
                cause=e.cause,
                delivered_ml=e.delivered_ml,
            )
        if self.kernel.trace_dropped:
            self.log.warning("trace_overflow", dropped=self.kernel.trace_dropped)

    def _summary(
        self, out: _core.StepOutput, t: PumpTelemetry | None, start_infused: float, recovered_ml: float
    ) -> None:
        if t is None:
            return
        self.log.info(
            "telemetry",
            state=out.state,
            delivered_ml=out.delivered_ml,
            session_delivered_ml=recovered_ml + out.delivered_ml,
            rate_ml_h=out.rate_ml_h,
            pressure_mmhg=t.pressure_mmhg,
            pump_infused_ml=t.infused_ml,
            pump_infused_ml_at_start=start_infused,
            near_empty=out.near_empty,
        )

    async def _final_telemetry(self, last: PumpTelemetry | None) -> PumpTelemetry | None:
        try:
            return await self.driver.read_telemetry()
        except TransportError:
            return last

    def _finish(
        self,
        state: str,
        reason: str,
        delivered_ml: float,
        recovered_ml: float,
        *,
        telemetry: PumpTelemetry | None,
        detail: str = "",
        stop_confirmed: bool = True,
    ) -> RunResult:
        return RunResult(
            state=state,
            reason=reason,
            delivered_ml=delivered_ml,
            session_delivered_ml=recovered_ml + delivered_ml,
            alarms=tuple(self.kernel.alarms),
            pump_alarms=tuple(sorted(telemetry.pump_alarms)) if telemetry else (),
            detail=detail,
            stop_confirmed=stop_confirmed,
            kernel_state=self.kernel.state,
        )


__all__ = [
    "LINK_LOST",
    "ControlLoop",
    "EventLog",
    "InfusionPlan",
    "NullLog",
    "RunResult",
]
