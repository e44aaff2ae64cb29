"""Benchmarks (pytest-benchmark). Not part of the normal test run (testpaths = tests).

Full run, on a release build (the editable install builds release):
    python -m pytest benches -p no:randomly --benchmark-columns=median,iqr,rounds --benchmark-sort=name

Quick mode for CI (a few rounds, shortened scenarios, no timing assertions):
    KETAPUMP_BENCH_QUICK=1 python -m pytest benches --benchmark-disable -q
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

QUICK = bool(os.environ.get("KETAPUMP_BENCH_QUICK"))
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def busy_cores(cores: int, seconds: int = 600) -> Iterator[None]:
    """``tools/busy cores`` for the block (nothing for 0 cores); it also stops by itself."""
    if cores == 0:
        yield
        return
    busy = subprocess.Popen(
        [str(ROOT / "tools" / "busy"), str(cores), "--seconds", str(seconds)], stdout=subprocess.PIPE
    )
    assert busy.stdout is not None and busy.stdout.readline().startswith(b"busy: ")
    try:
        yield
    finally:
        busy.terminate()
        busy.wait(timeout=10)


def print_uncaptured(request: pytest.FixtureRequest, text: str) -> None:
    """Prints past pytest's output capture (the summary tables a benchmark module ends with)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    guard = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
    with guard:
        print(text)
