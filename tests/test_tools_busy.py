"""``tools/busy N``: N busy loops for a bounded time, stopped early by a signal, never left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BUSY = Path(__file__).resolve().parents[1] / "tools" / "busy"


def spinners_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (from /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in children.read_text().split()] if children.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], within_s: float) -> bool:
    end = time.monotonic() + within_s
    while any(alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def start(*args: str) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, str(BUSY), *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("busy: ")
    return proc, spinners_of(proc.pid)


def test_busy_loads_n_cores_and_stops_by_itself() -> None:
    proc, spinners = start("2", "--seconds", "1")
    assert len(spinners) == 2
    assert proc.wait(timeout=30) == 0
    assert wait_gone(spinners, 5.0)


def test_a_signal_stops_busy_and_its_loops_and_a_killed_busy_leaves_none_behind() -> None:
    proc, spinners = start("1", "--seconds", "600")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    assert wait_gone(spinners, 5.0)
    proc, spinners = start("1", "--seconds", "600")
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: the loops notice their parent is gone
    proc.wait(timeout=10)
    assert wait_gone(spinners, 10.0)


def test_busy_refuses_nonsense() -> None:
    result = subprocess.run(
        [sys.executable, str(BUSY), "0"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2 and "cores must be >= 1" in result.stderr
