"""The ketapump pytest plugin, loaded through its entry point in a separate pytest process (pytester):
the fixtures on the simulator, the hil marker skipped without --pump-url, and the same file run against
a real ``ketapump sim`` Modbus TCP endpoint with it.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]

#: One test file, run unchanged against the in-process simulator and against a pump given by URL.
SUITE = """
import asyncio
import os
from pathlib import Path

import pytest

from ketapump.bridge.loop import InfusionPlan


def test_the_pump_under_test_answers(sim_pump):
    async def body():
        await sim_pump.driver.connect()
        return await sim_pump.driver.read_telemetry()

    telemetry = asyncio.run(body())
    assert telemetry.syringe_present and not telemetry.motor_running
    Path("pump_kind.txt").write_text("sim" if sim_pump.sim is not None else sim_pump.url)


def test_a_session_runs_on_the_pump_under_test(bridge_session, sim_pump):
    plan = InfusionPlan(rate_ml_h=60.0, volume_ml=0.05, syringe_diameter_mm=26.59)
    result = asyncio.run(bridge_session.run(plan))
    assert (result.state, result.reason) == ("complete", "complete"), result
    assert abs(result.delivered_ml - 0.05) <= 0.001  # within a few encoder counts
    assert bridge_session.log.named("session_ended")
    if sim_pump.sim is not None:
        assert sim_pump.sim.delivered_ml > 0.0


def test_sim_server_is_a_running_simulator(sim_server):
    assert sim_server["modbus_tcp"] and sim_server["nesp_pty"]
    os.kill(int(sim_server["pid"]), 0)  # alive while the test runs
    Path("sim_server_pid.txt").write_text(sim_server["pid"])


@pytest.mark.hil
def test_hardware_only(sim_pump):
    assert sim_pump.sim is None
    Path("hil_ran.txt").write_text(sim_pump.url)
"""


def test_fixtures_work_on_the_simulator_and_hil_tests_skip_without_a_pump_url(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-v", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*::test_hardware_only SKIPPED*",
            "SKIPPED * test_suite.py:*: hardware-in-the-loop test: run with --pump-url URL*",
        ]
    )
    assert (pytester.path / "pump_kind.txt").read_text() == "sim"
    assert not (pytester.path / "hil_ran.txt").exists()
    # The simulator process was terminated after its test.
    pid = int((pytester.path / "sim_server_pid.txt").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_same_file_runs_against_a_pump_url_with_its_hil_tests(
    pytester: pytest.Pytester, sim_server: dict[str, str | None]
) -> None:
    # The outer test's own sim_server fixture is the "real" pump: ketapump sim over Modbus TCP.
    url = f"modbus-tcp://{sim_server['modbus_tcp']}"
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider", "--pump-url", url)
    result.assert_outcomes(passed=4)
    assert (pytester.path / "pump_kind.txt").read_text() == url
    assert (pytester.path / "hil_ran.txt").read_text() == url


def test_the_hil_marker_is_registered(pytester: pytest.Pytester) -> None:
    # --strict-markers accepts it; --markers documents it.
    pytester.makepyfile(test_m="import pytest\n\n@pytest.mark.hil\ndef test_x():\n    pass\n")
    pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider").assert_outcomes(skipped=1)
    pytester.runpytest_subprocess("--markers").stdout.fnmatch_lines(["*@pytest.mark.hil*--pump-url*"])


def test_a_wrong_pump_url_fails_the_test_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--pump-url", "modbus-tcp://127.0.0.1:1?timeout=0.2&retries=0",
        "-k", "answers",
    )  # fmt: skip
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*modbus-tcp://127.0.0.1:1*"])
