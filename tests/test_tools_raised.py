"""``tools/raised``: a command run at a niceness that holds across sessions (its own session, whose
scheduler group gets the niceness too), its exit status passed through, a usage error for no command."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

RAISED = Path(__file__).resolve().parents[1] / "tools" / "raised"
#: A lowered priority: the test needs no privilege and takes no CPU from anyone.
NICENESS = 5

REPORT = "cat /proc/self/autogroup; nice; ps -o sid= -p $$"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RAISED), *args], check=False, capture_output=True, text=True, timeout=30)


def test_the_command_runs_in_its_own_session_with_the_niceness_on_both_levels() -> None:
    if not Path("/proc/self/autogroup").exists():
        pytest.skip("this kernel has no session autogroups")
    done = run("-n", str(NICENESS), "sh", "-c", REPORT)
    assert done.returncode == 0, done.stderr
    group, niceness, session = done.stdout.split("\n")[:3]
    assert group.endswith(f" nice {NICENESS}"), group
    assert int(niceness) == os.nice(0) + NICENESS
    assert int(session) != os.getsid(0)


def test_the_commands_exit_status_is_passed_through_and_no_command_is_a_usage_error() -> None:
    assert run("-n", str(NICENESS), "sh", "-c", "exit 3").returncode == 3
    usage = run()
    assert usage.returncode == 2 and "usage: tools/raised" in usage.stderr
