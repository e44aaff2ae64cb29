"""The hand-written stub `_core.pyi` matches the compiled module (mypy.stubtest)."""

from __future__ import annotations

import subprocess
import sys


def test_stubtest_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "ketapump._core"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
