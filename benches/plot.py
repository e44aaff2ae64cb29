"""Draws docs/benchmarks.png from pytest-benchmark JSON files: each ratio against its target.

python benches/plot.py /tmp/bench-kernel.json /tmp/bench-transport.json /tmp/bench-loop.json

Files are read in order; a benchmark found in several is taken from the last.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.png"


def medians(paths: list[str]) -> dict[str, dict[str, Any]]:
    """Each benchmark's median and its extra_info (numbers, strings and nested tables), by name."""
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        for bench in json.loads(Path(path).read_text())["benchmarks"]:
            found[bench["name"]] = {"median": bench["stats"]["median"], **bench.get("extra_info", {})}
    return found


def main(paths: list[str]) -> None:
    try:
        m = medians(paths)
    except (ValueError, KeyError, TypeError) as e:  # not pytest-benchmark JSON
        sys.exit(f"plot.py: cannot read the benchmark JSON: {e!r}")
    rows: list[tuple[str, float, float, bool]] = []  # label, measured, target, higher is better
    if {"test_kp40min_rust", "test_kp40min_python_reference"} <= m.keys():
        ratio = m["test_kp40min_python_reference"]["median"] / m["test_kp40min_rust"]["median"]
        rows.append(("KP-40MIN Rust/Python speed-up", ratio, 300.0, True))
        rows.append(("KP-40MIN ns/tick, one run", m["test_kp40min_rust"]["ns_per_tick"], 40.0, False))
    for lanes in (1, 2, 4, 8):
        lane = m.get(f"test_kp40min_lanes[{lanes}]")
        if lane is not None and "ns_per_tick_per_lane" in lane:
            label = f"KP-40MIN ns/tick per lane, {lanes} lanes"
            rows.append((label, lane["ns_per_tick_per_lane"], 10.0, False))
    campaign = m.get("test_campaign_runs_per_second_on_two_worker_threads")
    if campaign is not None and campaign.get("runs") == 10_000:
        rows.append(("10 000 campaign runs, 2 workers (s)", campaign["median"], 10.0, False))
    if {"test_boundary_kernel_step_from_python", "test_boundary_python_noop_call"} <= m.keys():
        ratio = (
            m["test_boundary_kernel_step_from_python"]["median"]
            / m["test_boundary_python_noop_call"]["median"]
        )
        rows.append(("kernel step / Python no-op call", ratio, 3.0, False))
    if "test_bridge_tick_body_on_sim" in m:
        rows.append(("bridge tick body p50 (µs)", m["test_bridge_tick_body_on_sim"]["p50_us"], 20.0, False))
    if "test_telemetry_to_browser_latency" in m:
        rows.append(
            (
                "console: tick to browser p95 (ms)",
                m["test_telemetry_to_browser_latency"]["p95_ms"],
                250.0,
                False,
            )
        )
    if "test_serve_cpu_with_16_chairs_at_10_hz" in m:
        share = m["test_serve_cpu_with_16_chairs_at_10_hz"]["cpu_pct_of_one_core"]
        rows.append(("console: serve CPU, 16 chairs × 10 Hz (%)", share, 50.0, False))
    for info in m.values():
        if info.get("ratio_median_over_floor") is not None:
            label = f"{info['protocol']} round trip / wire floor"
            rows.append((label, info["ratio_median_over_floor"], info.get("target_ratio", 1.2), False))
        if info.get("target_p99_ms") is not None and info.get("load") == "machine as it is":
            label = f"loop lateness p99 at 1 kHz, {info['loop']} (ms)"
            rows.append((label, info["p99_ms"], info["target_p99_ms"], False))
        if info.get("group") == "poll-capacity" and (info["pumps"], info["rate_hz"]) == (64, 100):
            cycle = info["cycle"]
            # Over every round where the bench reports it (a round's median hides a miss).
            pooled = info.get("on_time_all_rounds")
            on_time = pooled["fraction"] if pooled else info["on_time_fraction"]["median"]
            rows.append((f"64 pumps × 100 Hz ({cycle}): cycles on time", on_time, 0.999, True))
            ratio = info["cpu_ratio_bridge_over_bare"]["median"]
            rows.append((f"bridge/bare pymodbus CPU per cycle ({cycle})", ratio, 1.1, False))
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.2))
    labels = [r[0] for r in rows]
    score = [r[1] / r[2] if not r[3] else r[2] / r[1] for r in rows]  # ≤ 1 meets the target
    colours = ["tab:green" if s <= 1 else "tab:red" for s in score]
    ax.barh(labels, score, color=colours)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("measured / target (left of the line: target met)")
    for y, (_label, measured, target, _higher) in enumerate(rows):
        ax.text(max(score[y], 0.01) * 1.05, y, f"{measured:.4g} (target {target:g})", va="center", fontsize=8)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    args = sys.argv[1:]
    problems = [f"{path}: not a file" for path in args if not Path(path).is_file()]
    if not args or problems:
        print("usage: " + __doc__.strip().splitlines()[2], *problems, sep="\n", file=sys.stderr)
        sys.exit(2)
    main(args)
