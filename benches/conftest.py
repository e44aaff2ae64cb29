"""Benchmarks (pytest-benchmark). Not part of the normal test run (testpaths = tests).

Full run, on a release build (the editable install builds release):
    python -m pytest benches -p no:randomly --benchmark-columns=median,iqr,rounds --benchmark-sort=name

Quick mode for CI (a few rounds, shortened scenarios, no timing assertions):
    KETAPUMP_BENCH_QUICK=1 python -m pytest benches --benchmark-disable -q
"""

from __future__ import annotations

import os

QUICK = bool(os.environ.get("KETAPUMP_BENCH_QUICK"))
