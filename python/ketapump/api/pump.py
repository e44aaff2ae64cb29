"""One pump, opened by URL: :class:`AsyncPump` (asyncio) and :class:`Pump` (blocking, for scripts and
notebooks), the same operations with units in their names.

What a handle guarantees:

- **Timeouts everywhere.** Every operation ends within its deadline (the transport's timeout × its
  attempts, plus a second) or raises :class:`~ketapump.errors.PumpTimeoutError`; nothing waits forever.
- **The project's errors.** An unreachable pump raises :class:`~ketapump.errors.TransportError`, a
  refused command ``PumpRefusedError`` (a ``TransportError`` with the pump's ``code``), a bad URL or
  value :class:`~ketapump.errors.ConfigurationError`.
- **The watchdog is kept, and the motor stops with the handle.** While a handle is open it refreshes
  the pump's watchdog (in real time; a virtual-time simulator is refreshed by :meth:`AsyncPump.sleep`),
  and closing it stops the motor: a script that ends, crashes or is interrupted leaves no pump running.
- **Direct control is not guarded.** :meth:`AsyncPump.start` runs the motor at the set rate and nothing
  more; a kernel-guarded infusion (volume limit, occlusion, air, free flow, delivered-volume checks) is
  :func:`ketapump.infuse`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from ketapump import _core
from ketapump.bridge import control_period_s, make_driver, syringe_spec
from ketapump.clock import Clock, ScaledClock, VirtualClock
from ketapump.config import default_kernel_settings
from ketapump.errors import ConfigurationError, PumpTimeoutError
from ketapump.wire import PumpDriver, PumpTelemetry, split_url

T = TypeVar("T")

#: The syringe a pump is opened with unless ``syringe=`` says otherwise (as ``ketapump run``).
DEFAULT_SYRINGE = "bd-plastipak-50"
#: Slack added to a transport's own deadline (timeout × attempts) before an operation is given up.
DEADLINE_MARGIN_S = 1.0


@dataclass(frozen=True)
class PumpInfo:
    """What a handle knows about its pump before any request."""

    url: str
    #: ``sim``, ``modbus-tcp``, ``modbus-rtu``, ``nesp`` or ``harvard``.
    scheme: str
    syringe: str
    syringe_capacity_ml: float
    #: Telemetry this pump cannot measure (``{"pressure_mmhg"}``: occlusion by stall only).
    lacks: frozenset[str]
    #: What this pump cannot do, one line each (from its register map; see docs/register-map.md).
    missing_features: tuple[str, ...]
    #: Pump seconds per real second (``None``: a simulator in virtual time).
    time_scale: float | None


class AsyncPump:
    """One pump, for asyncio code. Open it with :func:`ketapump.open_pump_async`; use it as ``async
    with`` (or call :meth:`close`)."""

    def __init__(
        self,
        url: str,
        driver: PumpDriver,
        clock: Clock,
        *,
        syringe: str,
        period_s: float,
        time_scale: float | None,
    ) -> None:
        capacity_ml, diameter_mm = syringe_spec(syringe)
        self.info = PumpInfo(
            url=url,
            scheme=split_url(url)[0],
            syringe=syringe,
            syringe_capacity_ml=capacity_ml,
            lacks=frozenset(driver.lacks),
            missing_features=driver.missing_features,
            time_scale=time_scale,
        )
        #: The driver and clock :func:`ketapump.infuse` runs the control loop with.
        self.driver = driver
        self.clock = clock
        self.period_s = period_s
        self._diameter_mm = diameter_mm
        self._rate_ml_h: float | None = None
        transport = getattr(driver, "transport", None)
        attempts = int(getattr(transport, "retries", 0)) + 1
        #: The longest any one operation may take (real seconds).
        self.deadline_s = float(getattr(transport, "timeout_s", 1.0)) * attempts + DEADLINE_MARGIN_S
        #: The longest :meth:`close` may take: a heartbeat in flight ends, the stop, the link's close —
        #: each bounded by one operation's deadline, none counted against another's.
        self.close_deadline_s = 3 * self.deadline_s
        self._lock = asyncio.Lock()
        self._keepalive: asyncio.Task[None] | None = None
        self._guarded = False
        self._closed = False

    # ----- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncPump:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _connect(self) -> None:
        await self._call(self.driver.connect())
        await self._call(self.driver.set_syringe(self._diameter_mm))
        if not isinstance(self.clock, VirtualClock):
            self._keepalive = asyncio.create_task(self._keep_alive(), name=f"keepalive {self.info.url}")

    async def close(self) -> None:
        """Stops the motor (best effort) and closes the link, within :attr:`close_deadline_s`. Safe to
        call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._end_keep_alive()
            with contextlib.suppress(Exception):
                await self._call(self.driver.stop(), closing=True)
        finally:
            await asyncio.wait_for(self.driver.close(), self.deadline_s)

    async def _end_keep_alive(self) -> None:
        """Ends the keep-alive before the stop, so the stop has the link and its whole deadline.

        Cancelling alone may not be enough: Python 3.11's ``asyncio.wait_for`` drops a cancellation that
        lands as the awaited reply arrives (pymodbus's client, which the Modbus TCP link once used, waits
        with it), so the task also ends on ``_closed`` after the heartbeat in flight.
        ``asyncio.wait`` bounds the wait by that heartbeat's own deadline and, unlike awaiting the task,
        neither passes this coroutine's cancellation on nor swallows it."""
        task = self._keepalive
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=self.deadline_s)

    async def _call(self, operation: Coroutine[Any, Any, T], *, closing: bool = False) -> T:
        """One driver operation, alone on the link and within the deadline."""
        if self._closed and not closing:
            operation.close()
            raise ConfigurationError("pump", f"{self.info.url} is closed")
        try:
            async with asyncio.timeout(self.deadline_s), self._lock:
                return await operation
        except TimeoutError as e:
            raise PumpTimeoutError(self.info.url, f"no result within {self.deadline_s:g} s") from e

    async def _keep_alive(self) -> None:
        """Refreshes the pump's watchdog every control period (real time), except while a guarded
        infusion owns the link (its loop refreshes it then). A failed refresh is left to the next
        operation to report: the pump's watchdog stops the motor if the link is really gone."""
        real_period_s = self.period_s / (self.info.time_scale or 1.0)
        while not self._closed:
            await asyncio.sleep(real_period_s)
            if not self._guarded and not self._closed:
                with contextlib.suppress(Exception):
                    await self._call(self.driver.heartbeat())

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """The control loop owns the link while it runs (:func:`ketapump.infuse`)."""
        if self._guarded:
            raise ConfigurationError("pump", f"{self.info.url} is already running a guarded infusion")
        self._guarded = True
        try:
            yield
        finally:
            self._guarded = False

    # ----- operations ---------------------------------------------------------------------------

    @property
    def syringe_diameter_mm(self) -> float:
        """The inner diameter the pump was last told (mm)."""
        return self._diameter_mm

    async def set_syringe_diameter_mm(self, diameter_mm: float) -> None:
        """Tells the pump the syringe's inner diameter (refused while the motor runs)."""
        await self._call(self.driver.set_syringe(diameter_mm))
        self._diameter_mm = diameter_mm

    @property
    def rate_ml_h(self) -> float | None:
        """The rate this handle last set (mL/h); ``None`` before the first :meth:`set_rate_ml_h`."""
        return self._rate_ml_h

    async def set_rate_ml_h(self, rate_ml_h: float) -> None:
        """Sets the infusion rate (mL/h); the pump refuses one outside its range."""
        await self._call(self.driver.set_rate_ml_h(rate_ml_h))
        self._rate_ml_h = rate_ml_h

    async def infused_ml(self) -> float:
        """The pump's own infused-volume counter (mL)."""
        return await self._call(self.driver.read_delivered_ml())

    async def telemetry(self) -> PumpTelemetry:
        """One telemetry sample (plunger volume, pressure or NaN, sensors, latched pump alarms)."""
        return await self._call(self.driver.read_telemetry())

    async def start(self) -> None:
        """Starts the motor at the set rate (unguarded: see the module docstring)."""
        await self._call(self.driver.start())

    async def stop(self) -> None:
        """Stops the motor. Safe in any state."""
        await self._call(self.driver.stop())

    async def acknowledge_alarms(self) -> None:
        """Acknowledges the pump's latched alarms whose condition has cleared (e.g. the power-up reset)."""
        await self._call(self.driver.acknowledge_alarm())

    async def sleep(self, seconds: float) -> None:
        """Waits ``seconds`` of pump time, refreshing the watchdog: on a virtual-time simulator this is
        what moves time on (instantly); on any other pump it is an ``asyncio.sleep``."""
        if not seconds >= 0:
            raise ConfigurationError("seconds", f"must be ≥ 0, not {seconds!r}")
        end = self.clock.now() + seconds
        while (now := self.clock.now()) < end:
            await self.clock.sleep_until(min(end, now + self.period_s))
            if isinstance(self.clock, VirtualClock):
                await self._call(self.driver.heartbeat())


async def open_pump_async(
    url: str,
    *,
    syringe: str = DEFAULT_SYRINGE,
    time_scale: float = 1.0,
    sim_pump: _core.SimPump | None = None,
    virtual_time: bool = False,
) -> AsyncPump:
    """Opens the pump at ``url`` (``sim://``, ``modbus-tcp://``, ``modbus-rtu://``, ``nesp://``,
    ``harvard://``; see docs/api.md) and tells it the syringe's diameter.

    ``time_scale`` follows a ``ketapump sim`` started with the same ``--time-scale`` (pump seconds per
    real second). ``sim_pump`` and ``virtual_time`` serve ``sim://`` (see :func:`ketapump.simulate`).
    Raises :class:`~ketapump.errors.ConfigurationError` for a bad URL, syringe or time scale and
    :class:`~ketapump.errors.TransportError` when the pump cannot be reached.
    """
    if not time_scale > 0:
        raise ConfigurationError("time_scale", f"must be > 0, not {time_scale!r}")
    scheme = split_url(url)[0]
    if virtual_time and scheme != "sim":
        raise ConfigurationError("virtual_time", "serves only sim:// (a real pump keeps real time)")
    syringe_spec(syringe)
    scale = 1.0 if virtual_time else time_scale
    clock: Clock = VirtualClock() if virtual_time else ScaledClock(scale)
    period = control_period_s(scheme, scale, None, float(default_kernel_settings()["control_period_s"]))
    driver = make_driver(url, clock, period, scale, sim_pump=sim_pump)
    pump = AsyncPump(
        url, driver, clock, syringe=syringe, period_s=period, time_scale=None if virtual_time else scale
    )
    try:
        await pump._connect()
    except BaseException:
        await pump.close()
        raise
    return pump


class Pump:
    """One pump, blocking: the same operations as :class:`AsyncPump`, run on a private event loop in a
    background thread (so it works in scripts and in notebooks that already run an event loop).
    Settable properties write to the pump: ``pump.rate_ml_h = 2.0``."""

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, AsyncPump]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._closed = False
        self._thread = threading.Thread(target=self._loop.run_forever, name="ketapump-pump", daemon=True)
        self._thread.start()
        try:
            self._pump = self._run(opener(), deadline_s=None)
        except BaseException:
            self._closed = True
            self._shutdown()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T], *, deadline_s: float | None = -1.0) -> T:
        if self._closed:
            coroutine.close()
            raise ConfigurationError("pump", f"{self.info.url} is closed")
        finished = threading.Event()

        async def tracked() -> T:
            try:
                return await coroutine
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(tracked(), self._loop)
        if deadline_s is not None and deadline_s < 0:
            deadline_s = self._pump.deadline_s + DEADLINE_MARGIN_S
        try:
            return future.result(deadline_s)
        except TimeoutError as e:
            future.cancel()
            raise PumpTimeoutError(self.info.url, f"no result within {deadline_s:g} s") from e
        except BaseException:
            # Ctrl-C (or any error here): cancelling the operation stops the pump (the control loop and
            # the handle stop it on the way out); wait for that stop, within the deadline.
            future.cancel()
            finished.wait(self._deadline_or_default())
            raise

    def _deadline_or_default(self) -> float:
        pump = getattr(self, "_pump", None)
        return pump.deadline_s if pump is not None else DEADLINE_MARGIN_S

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Pump:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stops the motor (best effort), closes the link and ends the background thread."""
        if self._closed:
            return
        try:
            self._run(self._pump.close(), deadline_s=self._pump.close_deadline_s + DEADLINE_MARGIN_S)
        finally:
            self._closed = True
            self._shutdown()

    @property
    def info(self) -> PumpInfo:
        return self._pump.info

    @property
    def async_pump(self) -> AsyncPump:
        """The asyncio handle underneath (its methods run on this handle's background loop)."""
        return self._pump

    def run(self, coroutine: Coroutine[Any, Any, T], *, deadline_s: float | None = None) -> T:
        """Runs ``coroutine`` on this handle's loop (how :func:`ketapump.infuse` runs the control loop)."""
        return self._run(coroutine, deadline_s=deadline_s)

    @property
    def rate_ml_h(self) -> float | None:
        """The rate this handle last set (mL/h); assigning sets the pump's rate."""
        return self._pump.rate_ml_h

    @rate_ml_h.setter
    def rate_ml_h(self, rate_ml_h: float) -> None:
        self._run(self._pump.set_rate_ml_h(rate_ml_h))

    @property
    def syringe_diameter_mm(self) -> float:
        """The inner diameter the pump was last told (mm); assigning tells the pump."""
        return self._pump.syringe_diameter_mm

    @syringe_diameter_mm.setter
    def syringe_diameter_mm(self, diameter_mm: float) -> None:
        self._run(self._pump.set_syringe_diameter_mm(diameter_mm))

    @property
    def infused_ml(self) -> float:
        """The pump's own infused-volume counter (mL), read now."""
        return self._run(self._pump.infused_ml())

    def telemetry(self) -> PumpTelemetry:
        return self._run(self._pump.telemetry())

    def start(self) -> None:
        """Starts the motor at the set rate (unguarded; see :func:`ketapump.infuse`)."""
        self._run(self._pump.start())

    def stop(self) -> None:
        self._run(self._pump.stop())

    def acknowledge_alarms(self) -> None:
        self._run(self._pump.acknowledge_alarms())

    def sleep(self, seconds: float) -> None:
        """Waits ``seconds`` of pump time (see :meth:`AsyncPump.sleep`)."""
        real_s = seconds / (self.info.time_scale or float("inf"))
        self._run(self._pump.sleep(seconds), deadline_s=real_s + self._pump.deadline_s + DEADLINE_MARGIN_S)


def open_pump(
    url: str,
    *,
    syringe: str = DEFAULT_SYRINGE,
    time_scale: float = 1.0,
    sim_pump: _core.SimPump | None = None,
    virtual_time: bool = False,
) -> Pump:
    """Opens the pump at ``url``, blocking (see :func:`open_pump_async` for the arguments)."""
    return Pump(
        lambda: open_pump_async(
            url, syringe=syringe, time_scale=time_scale, sim_pump=sim_pump, virtual_time=virtual_time
        )
    )


def simulate(
    *,
    syringe: str = DEFAULT_SYRINGE,
    seed: int = 0,
    fill_ml: float | None = None,
    time_scale: float | None = None,
) -> Pump:
    """An in-process simulated pump (the simulator's firmware and physics, no sockets), blocking.

    ``time_scale=None`` runs it in virtual time: the pump's time moves only in :meth:`Pump.sleep` and
    :func:`ketapump.infuse`, as fast as the CPU allows. A number runs it that many pump seconds per real
    second. :attr:`Pump.async_pump` gives the asyncio handle; :func:`simulate_async` opens one directly.
    """
    return Pump(lambda: simulate_async(syringe=syringe, seed=seed, fill_ml=fill_ml, time_scale=time_scale))


async def simulate_async(
    *,
    syringe: str = DEFAULT_SYRINGE,
    seed: int = 0,
    fill_ml: float | None = None,
    time_scale: float | None = None,
) -> AsyncPump:
    """:func:`simulate` for asyncio code."""
    sim = _core.SimPump(syringe, seed=seed, fill_ml=fill_ml)
    return await open_pump_async(
        "sim://",
        syringe=syringe,
        time_scale=1.0 if time_scale is None else time_scale,
        sim_pump=sim,
        virtual_time=time_scale is None,
    )
