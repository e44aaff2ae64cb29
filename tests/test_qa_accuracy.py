"""`ketapump qa accuracy` on the simulated plant: S1/S2 at 1 and 5 mL/h, real PNGs, CSV recordings."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from ketapump.qa.accuracy import SyringeChange, analyse, readings_from_csv, splice_readings
from simhelpers import ketapump


def qa(*args: str) -> subprocess.CompletedProcess[str]:
    return ketapump("qa", "accuracy", *args)


def meets_s1_and_s2(result: subprocess.CompletedProcess[str], duration_min: float) -> dict[str, Any]:
    """The run's JSON report, checked to analyse the period with every window and to meet S1 and S2."""
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["duration_min"] == duration_min
    assert abs(report["mean_error_pct"]) <= 2.0 and report["s1_met"]
    assert report["s2_met"] and set(report["ep"]) == {"2", "5", "11", "19", "31"}
    return report


@pytest.mark.parametrize("rate", [1.0, 5.0])
def test_nominal_plant_meets_s1_and_s2_with_report_and_plots(rate: float, tmp_path: Path) -> None:
    result = qa("--pump", "sim://?seed=1", "--rate-ml-h", str(rate), "--json", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert abs(report["mean_error_pct"]) <= 2.0 and report["s1_met"]
    assert report["s2_met"]
    assert set(report["ep"]) == {"2", "5", "11", "19", "31"}
    assert json.loads((tmp_path / "accuracy.json").read_text()) == report
    for path in report["plots"]:
        image = matplotlib.image.imread(path)  # a real PNG, read back
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0.01  # not a blank canvas


def test_a_period_a_real_pumps_syringe_cannot_hold_is_refused_before_anything_opens(tmp_path: Path) -> None:
    # 52.5 mL/h for 120 min is 105 mL: more than the largest (60 mL) syringe. A real rig changes no
    # syringes mid-run (the simulator does): refused before the balance's port or the pump is opened.
    result = qa(
        "--rate-ml-h", "52.5", "--syringe", "bd-plastipak-60", "--out", str(tmp_path),
        "--pump", "modbus-tcp://127.0.0.1:9", "--balance", f"sics:{tmp_path / 'no-such-port'}",
    )  # fmt: skip
    assert result.returncode == os.EX_DATAERR
    # Names the volume, the syringe's capacity and the longest period that fits.
    assert "needs 105.4 mL" in result.stderr and "bd-plastipak-60 syringe holds (60 mL)" in result.stderr
    assert "longest period it holds is 68 min" in result.stderr
    assert not (tmp_path / "accuracy.json").exists()


def test_52_5_ml_h_over_the_methods_120_min_runs_with_syringe_changes_and_meets_s1_and_s2(
    tmp_path: Path,
) -> None:
    """The method's T = 120 min at its maximum rate needs 105.4 mL: three 50 mL syringes on the
    simulator (virtual clock). Each change is left out of the balance record (the samples from the one
    before the pause to the first 2 min after the new syringe's take-up), so A and Ep are those of
    steady delivery over 120 min of it."""
    result = qa(
        "--pump", "sim://?seed=1", "--rate-ml-h", "52.5", "--duration-min", "120", "--json",
        "--out", str(tmp_path),
    )  # fmt: skip
    changes = meets_s1_and_s2(result, 120.0)["syringe_changes"]
    assert len(changes) == 2  # 50 mL syringes, each giving a third of the run
    for change in changes:
        start, end = change["excluded_min"]
        assert start <= change["paused_min"] < change["resumed_min"] <= end - 2.0
        assert end - start <= 4.0
    # A syringe is spent about every 43 min at 52.5 mL/h (a third of 110 mL).
    assert 40.0 < changes[0]["paused_min"] < 46.0 and 83.0 < changes[1]["paused_min"] < 90.0


def test_52_5_ml_h_meets_s1_and_s2_over_the_longest_period_the_syringe_holds(tmp_path: Path) -> None:
    # What a real rig runs at this rate (docs/qa.md): T = 68 min from one syringe, no change.
    result = qa(
        "--pump", "sim://?seed=1", "--rate-ml-h", "52.5", "--syringe", "bd-plastipak-60",
        "--duration-min", "68", "--json", "--out", str(tmp_path),
    )  # fmt: skip
    assert meets_s1_and_s2(result, 68.0)["syringe_changes"] == []


def test_a_csv_recording_is_analysed_like_the_live_balance(tmp_path: Path) -> None:
    # 0.05 g every 30 s with a 1 % shortfall in the second hour: A = −1 %.
    rows = ["t_s,grams"] + [
        f"{30 * k},{0.05 * k if k <= 120 else 0.05 * 120 + 0.0495 * (k - 120):.6f}" for k in range(241)
    ]
    path = tmp_path / "balance.csv"
    path.write_text("\n".join(rows) + "\n")
    result = analyse(readings_from_csv(path), rate_ml_h=6.0, duration_min=120.0)
    assert result.mean_error_pct == pytest.approx(-1.0)
    run = qa("--balance", f"csv:{path}", "--rate-ml-h", "6", "--json", "--out", str(tmp_path / "r"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["mean_error_pct"] == pytest.approx(-1.0)


def test_a_malformed_or_incomplete_recording_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("t_s,grams\n0,0\n30,abc\n")
    result = qa("--balance", f"csv:{bad}", "--rate-ml-h", "6", "--out", str(tmp_path / "r"))
    assert result.returncode == os.EX_DATAERR and "bad.csv:3" in result.stderr
    short = tmp_path / "short.csv"
    short.write_text("0,0\n30,0.05\n")
    result = qa("--balance", f"csv:{short}", "--rate-ml-h", "6", "--out", str(tmp_path / "r"))
    assert result.returncode == os.EX_DATAERR and "missing at 60 s" in result.stderr


@pytest.mark.parametrize("minutes", ["20", "22", "45", "60", "61.5"])
def test_a_period_shorter_than_the_method_is_refused_naming_its_minimum_before_the_pump_moves(
    minutes: str, tmp_path: Path
) -> None:
    """The same message whatever the duration, naming the method's 62 min; checked before anything runs:
    the pump given here does not exist, so reaching it would be exit 69, not 65."""
    for source in (["--pump", "modbus-tcp://127.0.0.1:9", "--balance", "sics:/dev/null"], []):
        result = qa(*source, "--rate-ml-h", "5", "--duration-min", minutes, "--out", str(tmp_path))
        assert result.returncode == os.EX_DATAERR, result.stderr
        assert f"duration {float(minutes):g} min is shorter than the method's minimum period 62 min" in (
            result.stderr
        )
        assert "longest observation window, 31 min" in result.stderr
    assert not (tmp_path / "accuracy.json").exists()
    result = qa("--rate-ml-h", "5", "--duration-min", "62.2", "--out", str(tmp_path))
    assert result.returncode == os.EX_DATAERR and "not a whole number of 0.5-min balance samples" in (
        result.stderr
    )


def test_the_splice_cuts_each_change_and_joins_steady_delivery() -> None:
    """0.5 g per 30 s sample, with a change that stops delivery from 61 s to 200 s (take-up ending at
    170 s): samples 2 … 10 (60 s to 300 s, the settling included) are cut, and the record joins on."""
    grams = 0.0
    readings = []
    for k in range(30):
        t = k * 30.0
        readings.append((t, grams))
        if not 60.0 <= t < 300.0:
            grams += 0.5
        elif t >= 180.0:
            grams += 0.2  # settling after the take-up: short of the set rate
    change = SyringeChange(paused_s=61.0, resumed_s=170.0)
    assert change.cut_slots() == (2, 10)
    spliced = splice_readings(readings, [change])
    assert [t for t, _g in spliced] == [k * 30.0 for k in range(22)]
    steps = {round(b - a, 9) for (_t, a), (_u, b) in itertools.pairwise(spliced)}
    assert steps == {0.5}
