"""Fault-campaign throughput: runs per second of the shipped default campaign (kernel + hw-sim plant at
the kernel's 10 Hz control period, one Rust call per batch with the GIL released), in one thread and
on two worker threads (the full run: the 10 000 runs of ``ketapump qa campaign default --runs 10000
--workers 2``, goal ≤ 10 s). Every run must still hold every invariant (checked in quick mode too).
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import QUICK
from ketapump.qa.campaign import load_spec, run_campaign, run_chunk

SEEDS_ONE = 20 if QUICK else 400
SEEDS_POOL = 40 if QUICK else 10_000


def _report(benchmark: Any, runs: int, outcomes: list[dict[str, Any]]) -> None:
    assert [v for o in outcomes for v in o["violations"]] == []
    ticks = sum(o["ticks"] for o in outcomes)
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None:
        benchmark.extra_info.update(
            runs=runs,
            runs_per_s=runs / stats.median,
            ns_per_tick=stats.median / ticks * 1e9,
            simulated_h_per_s=sum(o["end_s"] for o in outcomes) / 3_600.0 / stats.median,
        )


@pytest.mark.benchmark(group="campaign")
def test_campaign_runs_per_second_in_one_process(benchmark: Any) -> None:
    spec, config = load_spec("default")
    spec_dict, config_dict = spec.model_dump(), dict(config.as_dict())
    seeds = list(range(SEEDS_ONE))
    outcomes = benchmark.pedantic(
        run_chunk, args=(spec_dict, config_dict, seeds), rounds=1 if QUICK else 3, iterations=1
    )
    _report(benchmark, len(seeds), outcomes)


@pytest.mark.benchmark(group="campaign")
def test_campaign_runs_per_second_on_two_worker_threads(benchmark: Any) -> None:
    spec, config = load_spec("default")
    seeds = list(range(SEEDS_POOL))
    result = benchmark.pedantic(
        run_campaign, args=(spec, config, seeds), kwargs={"workers": 2}, rounds=1, iterations=1
    )
    _report(benchmark, len(seeds), result.outcomes)
