"""Time-scale arithmetic: the pump watchdog from every term of the heartbeat gap, and a time scale that
cannot fit refused up front, naming the largest term, the setting that shrinks it and the largest scale
that works (``ketapump.bridge.runtime``; the CLI's ``run``, ``session`` and ``demo``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketapump.bridge import control_period_s, make_driver
from ketapump.bridge.runtime import (
    JITTER_REAL_S,
    MIN_REAL_PERIOD_S,
    WATCHDOG_MAX_MS,
    largest_time_scale,
)
from ketapump.clock import ScaledClock, VirtualClock
from ketapump.errors import ConfigurationError
from ketapump.wire import NewEraDriver, ReferencePumpDriver, open_transport, split_url

DEFAULT_PERIOD_S = 0.1
#: A serial path that is never opened: the arithmetic needs only the URL.
RTU = "modbus-rtu:///dev/null"
TCP = "modbus-tcp://127.0.0.1:1"


def driver(url: str, scale: float, period_s: float | None = None) -> ReferencePumpDriver | NewEraDriver:
    """``make_driver`` as the CLI calls it, on a real-time clock at ``scale``."""
    period = control_period_s(split_url(url)[0], scale, period_s, DEFAULT_PERIOD_S)
    made = make_driver(url, ScaledClock(scale), period, scale, period_requested=period_s is not None)
    assert isinstance(made, ReferencePumpDriver | NewEraDriver)
    return made


def watchdog_ms(url: str, scale: float, period_s: float | None = None) -> int:
    """The watchdog ``make_driver`` gives a reference pump."""
    made = driver(url, scale, period_s)
    assert isinstance(made, ReferencePumpDriver)
    return made.watchdog_ms


def refusal(url: str, scale: float, period_s: float | None = None) -> str:
    with pytest.raises(ConfigurationError) as info:
        driver(url, scale, period_s)
    assert info.value.field == "--time-scale"
    return str(info.value)


def test_rtu_at_20x_is_refused_with_the_default_timeout_naming_it_and_fits_with_a_short_one() -> None:
    # The [wire] finding: refused "whatever the timeout", blaming timeout × (retries + 1) while 5 × the
    # stretched period was the limit. Now every term is named, and the named fix works.
    message = refusal(RTU, 20.0)
    assert (
        "--time-scale 20 is too fast for modbus-rtu:///dev/null: the pump would have to go 15.8 s "
        "(pump time) without a heartbeat, more than the longest pump watchdog (10 s): control period 2.4 s "
        "+ round trips 2.4 s + a retried request 8 s + scheduling jitter 3 s." in message
    )
    assert "The largest term is a retried request: give the URL a shorter timeout or fewer retries" in message
    timeout = re.search(r"timeout=([0-9.]+) with retries=1 fits at this scale", message)
    assert timeout is not None
    assert "With these settings the largest time scale is 12.6" in message
    # The README's advice (timeout=0.05 at 20× over RTU) and the timeout the message names both fit.
    assert watchdog_ms(f"{RTU}?timeout=0.05", 20.0) == 9_800
    assert watchdog_ms(f"{RTU}?timeout={timeout.group(1)}", 20.0) <= WATCHDOG_MAX_MS


def test_the_watchdog_is_the_heartbeat_gap_term_by_term() -> None:
    # TCP at 10×, timeout 0.05 s, 1 retry: period max(0.1, 0.005 × 10) + round trips 0.05 + retried
    # request 0.05 × 2 × 10 + jitter 0.15 × 10.
    expected_s = 0.1 + MIN_REAL_PERIOD_S["modbus-tcp"] * 10 + 0.05 * 2 * 10 + JITTER_REAL_S * 10
    assert watchdog_ms(f"{TCP}?timeout=0.05", 10.0) == round(1_000 * expected_s)
    # Real time and in-process: never below the pump's default, and a simulator loses no replies.
    assert watchdog_ms(TCP, 1.0) == round(1_000 * (0.1 + 0.005 + 0.4 + JITTER_REAL_S))
    assert watchdog_ms("sim://", 1.0) == 500
    assert watchdog_ms("sim://", 60.0) == 9_600  # 0.3 + 0.3 + 9 s: the demo at 60×


def test_virtual_time_counts_only_the_period_at_any_scale() -> None:
    # On a virtual clock the pump's time stands still while the loop works.
    made = make_driver("sim://", VirtualClock(), DEFAULT_PERIOD_S, 1_000.0)
    assert isinstance(made, ReferencePumpDriver) and made.watchdog_ms == 500


def test_a_requested_period_that_dominates_names_period_s() -> None:
    message = refusal(f"{TCP}?timeout=0.05", 2.0, period_s=9.9)
    assert "control period 9.9 s" in message
    assert "The largest term is control period: ask for a shorter --period-s" in message


def test_scheduling_jitter_alone_limits_the_simulator() -> None:
    message = refusal("sim://", 300.0)
    assert "The largest term is scheduling jitter: lower the time scale" in message
    assert "the largest time scale is 62.5" in message


def test_a_new_era_safe_mode_timeout_must_outlast_the_gap() -> None:
    message = refusal("nesp:///dev/null?safe=5", 20.0)
    assert "more than its safe-mode timeout (safe=5) (5 s)" in message
    assert "raise the URL's safe (up to 255 s)" in message
    assert isinstance(driver("nesp:///dev/null?safe=60", 20.0), NewEraDriver)
    assert isinstance(driver("nesp:///dev/null?safe=0", 60.0), NewEraDriver)  # basic mode: no watchdog


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from(["modbus-tcp", "modbus-rtu", "sim"]),
    timeout=st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
    retries=st.integers(0, 3),
    period=st.one_of(st.none(), st.sampled_from([0.1, 0.5, 2.0, 5.0])),
)
def test_the_largest_time_scale_named_fits_and_a_little_more_is_refused(
    scheme: str, timeout: float, retries: int, period: float | None
) -> None:
    url = {"modbus-tcp": TCP, "modbus-rtu": RTU, "sim": "sim://"}[
        scheme
    ] + f"?timeout={timeout}&retries={retries}"
    largest = largest_time_scale(open_transport(url), period, WATCHDOG_MAX_MS / 1_000.0)
    assert largest > 0.0
    assert watchdog_ms(url, largest, period) <= WATCHDOG_MAX_MS
    beyond = largest + 0.2
    message = refusal(url, beyond, period)
    assert f"the largest time scale is {largest:g}" in message


def ketapump(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ketapump", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_run_refuses_a_scale_it_cannot_hold_with_exit_65_before_touching_the_pump(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    result = ketapump(
        "run", "--pump", RTU, "--rate-ml-h", "5", "--volume-ml", "1", "--time-scale", "20", "--log", str(log)
    )
    assert result.returncode == os.EX_DATAERR
    assert "a retried request" in result.stderr and "largest time scale is 12.6" in result.stderr
    assert "Traceback" not in result.stderr and not log.exists()


def test_demo_refuses_a_scale_it_cannot_hold_and_speed_is_a_deprecated_alias(tmp_path: Path) -> None:
    result = ketapump("demo", "--time-scale", "300", "--out", str(tmp_path / "a"))
    assert result.returncode == os.EX_DATAERR
    assert "--time-scale 300 is too fast for sim://" in result.stderr
    assert "the largest time scale is 62.5" in result.stderr
    assert not (tmp_path / "a").exists()  # refused up front: nothing written
    # The old name still works (the same check, the same refusal) and says once that it is deprecated.
    alias = ketapump("demo", "--speed", "300", "--out", str(tmp_path / "b"))
    assert alias.returncode == os.EX_DATAERR
    assert alias.stderr.count("--speed is deprecated; use --time-scale") == 1
    assert "--time-scale 300 is too fast" in alias.stderr
    both = ketapump("demo", "--speed", "60", "--time-scale", "60", "--out", str(tmp_path / "c"))
    assert both.returncode == 2 and "give --time-scale only" in both.stderr  # a usage error
    assert "--speed" not in ketapump("demo", "--help").stdout  # hidden
