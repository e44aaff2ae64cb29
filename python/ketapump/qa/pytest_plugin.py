"""pytest plugin (entry point ``ketapump``): the same test files against the simulator or a real pump.

Installed with the package, so any project that depends on ketapump gets it. Fixtures:

- ``pump_under_test``/``sim_pump``: a pump and its driver: the in-process simulated pump over virtual
  time, or, with ``--pump-url URL``, that pump (real time, scaled by ``--pump-time-scale`` for a
  time-scaled ``ketapump sim``). ``sim`` is the :class:`~ketapump._core.SimPump` itself in process,
  ``None`` for a pump out there;
- ``sim_server``: a running ``ketapump sim`` process (Modbus TCP, RTU and New Era on PTYs); yields
  its endpoints (keys ``modbus_tcp``, ``modbus_rtu_pty``, ``nesp_pty``) and always terminates it;
- ``bridge_session``: a :class:`~ketapump.bridge.loop.ControlLoop` on the pump under test, with the kernel
  settings the transport needs; its events are kept in ``bridge_session.log.events``.

Tests marked ``@pytest.mark.hil`` need a real pump: they run only with ``--pump-url`` and are skipped,
saying so, without it. Nothing of ketapump is imported until a fixture is used, so the plugin costs
nothing in a run that does not use it. docs/qa.md has examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ketapump import _core
    from ketapump.bridge import ControlLoop
    from ketapump.clock import Clock
    from ketapump.wire import PumpDriver

HIL_SKIP_REASON = "hardware-in-the-loop test: run with --pump-url URL to test a real pump"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ketapump", "ketapump pump under test")
    group.addoption(
        "--pump-url",
        default=None,
        metavar="URL",
        help="Test this pump (modbus-tcp://, modbus-rtu://, nesp://) instead of the in-process "
        "simulator; enables the tests marked hil.",
    )
    group.addoption(
        "--pump-time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="Pump seconds per real second of the --pump-url pump (a time-scaled ketapump sim); 1 for "
        "hardware.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil: needs a real pump; runs only with --pump-url URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--pump-url"):
        return
    skip = pytest.mark.skip(reason=HIL_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("hil") is not None:
            item.add_marker(skip)


@dataclass
class PumpUnderTest:
    """A pump to test and its driver (not yet connected: tests connect inside their event loop)."""

    url: str
    driver: PumpDriver
    clock: Clock
    time_scale: float
    #: Control period suited to the transport (pump seconds).
    period_s: float
    #: The simulated pump when it runs in process; ``None`` for a pump out there.
    sim: _core.SimPump | None = None


@dataclass
class RecordingLog:
    """An event log that keeps every event: ``named("alarm")`` gives the fields of each alarm."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    warning = error = info

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.events if name == event]


def _release(driver: PumpDriver, stop: bool) -> None:
    """Teardown: stop a pump out there (best effort, on a fresh link: the test's event loop is gone),
    then close the link."""

    async def release() -> None:
        with contextlib.suppress(Exception):
            await driver.close()
        if stop:
            with contextlib.suppress(Exception):
                await driver.connect()
                await driver.stop()
            with contextlib.suppress(Exception):
                await driver.close()

    asyncio.run(release())


@pytest.fixture
def pump_under_test(request: pytest.FixtureRequest) -> Iterator[PumpUnderTest]:
    """The in-process simulated pump over virtual time, or the ``--pump-url`` pump over real time."""
    from ketapump import _core  # noqa: PLC0415 - imported only when used
    from ketapump.bridge import control_period_s, make_driver  # noqa: PLC0415
    from ketapump.clock import ScaledClock, VirtualClock  # noqa: PLC0415
    from ketapump.config import default_kernel_settings  # noqa: PLC0415
    from ketapump.wire import (  # noqa: PLC0415
        ReferencePumpDriver,
        RegisterTransport,
        open_transport,
        split_url,
    )

    url = request.config.getoption("--pump-url")
    default_period = float(default_kernel_settings()["control_period_s"])
    if url is None:
        pump = _core.SimPump(seed=0)
        clock = VirtualClock()
        transport = open_transport("sim://", clock=clock, pump=pump)
        assert isinstance(transport, RegisterTransport)
        driver = ReferencePumpDriver(transport)
        under_test = PumpUnderTest("sim://", driver, clock, 1.0, default_period, sim=pump)
    else:
        scale = float(request.config.getoption("--pump-time-scale"))
        period = control_period_s(split_url(url)[0], scale, None, default_period)
        scaled = ScaledClock(scale)
        under_test = PumpUnderTest(url, make_driver(url, scaled, period, scale), scaled, scale, period)
    yield under_test
    _release(under_test.driver, stop=under_test.sim is None)


@pytest.fixture
def sim_pump(pump_under_test: PumpUnderTest) -> PumpUnderTest:
    """The pump under test (an alias named for the usual case: the in-process simulator)."""
    return pump_under_test


@pytest.fixture
def bridge_session(pump_under_test: PumpUnderTest) -> ControlLoop:
    """A control loop on the pump under test, ready to ``run(InfusionPlan(...))``."""
    from ketapump.bridge import ControlLoop, loop_settings  # noqa: PLC0415
    from ketapump.config import default_kernel_settings, kernel_config  # noqa: PLC0415

    driver = pump_under_test.driver
    config = kernel_config(
        **loop_settings(pump_under_test.period_s, default_kernel_settings()),
        has_pressure_sensor="pressure_mmhg" not in driver.lacks,
    )
    return ControlLoop(
        driver, config, pump_under_test.clock, RecordingLog(), period_s=pump_under_test.period_s
    )


@contextlib.contextmanager
def running_sim(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str | None]]]:
    """Runs a real ``ketapump sim`` with ``args``; yields the process and its endpoints (the JSON line
    it prints); always terminates it (SIGTERM, then SIGKILL after 10 s). Its diagnostics (stderr) go
    to a temporary file, never to a pipe nobody drains (a full pipe would block the simulator); the
    process's ``stderr`` attribute is that file."""
    diagnostics = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "ketapump", "sim", *args],
        stdout=subprocess.PIPE,
        stderr=diagnostics,
        text=True,
    )
    proc.stderr = diagnostics
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=10)
            diagnostics.seek(0)
            raise RuntimeError(f"ketapump sim did not start: {diagnostics.read()}")
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def sim_server() -> Iterator[dict[str, str | None]]:
    """A running ``ketapump sim`` process; yields its endpoints and terminates it afterwards."""
    with running_sim() as (proc, endpoints):
        yield endpoints | {"pid": str(proc.pid)}
