"""`ketapump qa occlusion` on the simulated plant: S5 and S6 over the grid 1, 5, 52.5 mL/h × 100, 300,
750 mmHg, the slope/model detectors against the threshold alone, the plot, the CLI (also on a pump by
URL, a `ketapump sim` process, with the test as the operator), and the analysis on hand-computed data.

Each cell is a full run over virtual time (settle 10 min, close, alarm, back-off, 2 min release): a
fraction of a second to 3 s of wall time each (1 mL/h with the threshold alone at 750 mmHg is the
longest, 70 min of pump time). Runs are cached so the S5 and speed-up tests share them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import matplotlib.image
import pytest
from pymodbus.client import ModbusTcpClient

from cli_contract import assert_documented
from ketapump import _core
from ketapump.clock import VirtualClock
from ketapump.qa import occlusion
from ketapump.qa.occlusion import (
    OCCLUSION_ALARMS,
    OcclusionRecord,
    OcclusionResult,
    OcclusionTestError,
    analyse,
    baseline_mmhg,
    rise_compliance,
    s5_bound_s,
    speedup,
)
from simhelpers import REGMAP, ketapump, sim_process

RATES = [1.0, 5.0, 52.5]
THRESHOLDS = [100.0, 300.0, 750.0]
#: The nominal line (1 mmHg per mL/h) runs at ~62 mmHg at 52.5 mL/h: every cell can be tested.
GRID = [(r, p) for r in RATES for p in THRESHOLDS]
#: A high-resistance line (hw-sim ``HIGH_RESISTANCE_MMHG_S_PER_ML``, 4× the nominal: a narrow set with
#: a viscous infusate): ~220 mmHg at 52.5 mL/h.
HIGH_RESISTANCE_MMHG_S_PER_ML = 14_400.0


@functools.cache
def measured(
    rate: float, threshold: float, slope: bool, seed: int = 1
) -> tuple[OcclusionRecord, OcclusionResult]:
    pump = _core.SimPump(seed=seed)
    record = asyncio.run(
        occlusion.run_simulated(pump, rate_ml_h=rate, threshold_mmhg=threshold, slope_detector=slope)
    )
    # After the release the motor is stopped and nothing is left pushing the line.
    assert pump.run_mode == 0
    return record, analyse(record)


@pytest.mark.parametrize("slope", [True, False], ids=["slope", "threshold-only"])
@pytest.mark.parametrize(("rate", "threshold"), GRID)
def test_grid_meets_s5_and_s6_on_the_simulator(rate: float, threshold: float, slope: bool) -> None:
    record, result = measured(rate, threshold, slope)
    # S5: alarm and motor stop within C·(P_thr − P_0)/Q + 5 s.
    assert result.s5_met, (result.time_to_alarm_s, result.bound_s)
    assert 0 < result.time_to_alarm_s <= result.time_to_stop_s <= result.bound_s
    expected_bound = 0.002 * (threshold - result.p0_mmhg) / (rate / 3600) + 5.0
    assert result.bound_s == pytest.approx(expected_bound)
    if not slope:
        # The threshold alone alarms at the threshold (one tick of rise past it at most).
        assert record.first_alarms == ("occlusion_pressure",)
        assert threshold <= result.pressure_at_alarm_mmhg <= threshold + 2.0
    # S6: the released bolus, hard limit and goal (0.2 mL).
    assert result.bolus_ml is not None and 0.0 < result.bolus_ml <= occlusion.S6_GOAL_ML
    assert result.s6_met and result.s6_goal_met
    if set(record.first_alarms) <= OCCLUSION_ALARMS:
        # The automatic back-off ran: the pressure at opening is back near P0 + 20 mmHg.
        at_open = [p for t, p in record.pressure if t <= record.opened_at_s][-1]
        assert at_open <= result.p0_mmhg + 30.0
    # The pressure rise gives back a compliance between the plant's fluid side (C_f = 1.6 µL/mmHg, were
    # the plunger held at Q) and its total C (2.0 µL/mmHg: the motor at Q, the drive compressing as the
    # pressure rises): the quiet controller trims the motor toward the plunger's lag only every 10 s.
    assert 0.0016 * 0.9 <= result.rise_compliance_ml_per_mmhg <= 0.002 * 1.1


@pytest.mark.parametrize(
    ("rate", "threshold"),
    [
        (1.0, 100.0),
        (1.0, 300.0),
        (1.0, 750.0),
        (5.0, 100.0),
        (5.0, 300.0),
        (5.0, 750.0),
    ],
)
def test_slope_detectors_halve_the_time_to_alarm_at_low_rates(rate: float, threshold: float) -> None:
    detected = measured(rate, threshold, True)[1].time_to_alarm_s
    threshold_only = measured(rate, threshold, False)[1].time_to_alarm_s
    assert speedup(detected, threshold_only) >= occlusion.S5_SPEEDUP, (detected, threshold_only)


def test_a_threshold_below_the_working_pressure_cannot_be_judged() -> None:
    # 52.5 mL/h through a high-resistance line runs at ~220 mmHg: a 100 mmHg threshold alarms while the
    # pressure builds, before any occlusion. Reported, never judged as a pass.
    pump = _core.SimPump(seed=1, resistance_mmhg_s_per_ml=HIGH_RESISTANCE_MMHG_S_PER_ML)
    with pytest.raises(OcclusionTestError, match=r"occlusion_pressure.*before the line was closed.*working"):
        asyncio.run(occlusion.run_simulated(pump, rate_ml_h=52.5, threshold_mmhg=100.0))


@pytest.mark.parametrize("slope", [True, False], ids=["slope", "threshold-only"])
@pytest.mark.parametrize("threshold", [300.0, 750.0])
def test_a_high_resistance_line_at_52_5_ml_h_meets_s5_and_the_s6_hard_limit(
    threshold: float, slope: bool
) -> None:
    # The same cells on a line 4× the nominal resistance (~220 mmHg working pressure). S5 and S6's hard
    # limit hold; the 0.2 mL goal does not: the back-off stops at baseline + 20 mmHg, and the baseline
    # is the working pressure, whose stored volume (C_f·P ≈ 1.6 µL/mmHg × 240 mmHg) flows out once the
    # line opens — the same volume a pump stopped at that pressure leaves in any line.
    pump = _core.SimPump(seed=1, resistance_mmhg_s_per_ml=HIGH_RESISTANCE_MMHG_S_PER_ML)
    record = asyncio.run(
        occlusion.run_simulated(pump, rate_ml_h=52.5, threshold_mmhg=threshold, slope_detector=slope)
    )
    result = analyse(record)
    assert 200.0 < result.p0_mmhg < 240.0
    assert result.s5_met, (result.time_to_alarm_s, result.bound_s)
    assert result.bolus_ml is not None and result.s6_met
    assert not result.s6_goal_met, result.bolus_ml


@pytest.mark.parametrize(
    "resistance", [None, HIGH_RESISTANCE_MMHG_S_PER_ML], ids=["nominal", "high-resistance"]
)
def test_an_occlusion_seen_first_by_the_flow_check_is_still_backed_off(resistance: float | None) -> None:
    # Slope detector off, flow check on: at 52.5 mL/h the flow check sees the occlusion first, at
    # ~530 mmHg on the nominal line and ~690 mmHg on a high-resistance one; without the back-off the
    # line would release C·(P − P0), about 1 mL.
    plant = {} if resistance is None else {"resistance_mmhg_s_per_ml": resistance}
    record = asyncio.run(
        occlusion.run_simulated(
            _core.SimPump(seed=1, **plant),
            rate_ml_h=52.5,
            threshold_mmhg=750.0,
            kernel_overrides={"slope_detector": False},
        )
    )
    assert record.first_alarms == ("flow_deviation",)
    assert record.pressure_at_alarm_mmhg > 500.0
    assert analyse(record).s6_met


def test_the_bound_uses_the_simulators_nominal_compliance() -> None:
    # The default plant behaves exactly as one built with SIM_COMPLIANCE_ML_PER_MMHG, and differently
    # from one with another compliance: the constant the bound uses is the simulator's.
    def trace(pump: _core.SimPump) -> tuple[tuple[float, float], ...]:
        return asyncio.run(
            occlusion.run_simulated(pump, rate_ml_h=52.5, threshold_mmhg=300.0, settle_s=120.0, release_s=5.0)
        ).pressure

    nominal = trace(_core.SimPump(seed=2))
    assert (
        trace(_core.SimPump(seed=2, compliance_ml_per_mmhg=occlusion.SIM_COMPLIANCE_ML_PER_MMHG)) == nominal
    )
    assert trace(_core.SimPump(seed=2, compliance_ml_per_mmhg=0.0028)) != nominal


def test_the_plot_is_a_real_png(tmp_path: Path) -> None:
    record, result = measured(5.0, 300.0, True)
    path = occlusion.plot(record, result, tmp_path)
    image = matplotlib.image.imread(path)  # a real PNG, read back
    assert image.shape[:2] == (450, 900)
    assert image.std() > 0.01  # not a blank canvas
    rgb = image[..., :3]
    # The threshold line (red) and the pressure curve (blue) are drawn.
    red = (rgb[..., 0] > 0.75) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    blue = (rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.3)
    assert red.sum() > 200 and blue.sum() > 200


# ----- the analysis on hand-computed data ---------------------------------------------------------


def record_of(**changes: object) -> OcclusionRecord:
    """A 5 mL/h record: P0 = 30 mmHg before closing at 600 s, then +1 mmHg/s; alarm at 300 mmHg."""
    pressure = tuple((590.0 + 0.5 * k, 30.0) for k in range(20)) + tuple(
        (600.0 + 0.5 * k, 30.0 + 0.5 * k) for k in range(1, 541)
    )
    fields: dict[str, object] = {
        "rate_ml_h": 5.0,
        "threshold_mmhg": 300.0,
        "compliance_ml_per_mmhg": 0.002,
        "slope_detector": False,
        "pressure": pressure,
        "closed_at_s": 600.0,
        "alarm_at_s": 870.0,
        "stopped_at_s": 870.0,
        "pressure_at_alarm_mmhg": 300.0,
        "first_alarms": ("occlusion_pressure",),
        "alarms": ("occlusion_pressure",),
        "backoff_done_at_s": 880.0,
        "opened_at_s": 880.0,
        "bolus_ml": 0.1,
    }
    fields.update(changes)
    return OcclusionRecord(**fields)  # type: ignore[arg-type]


def test_the_bound_baseline_and_compliance_by_hand() -> None:
    # 0.002 mL/mmHg × (300 − 30) mmHg / (5/3600 mL/s) + 5 s = 388.8 + 5 s.
    assert s5_bound_s(0.002, 300.0, 30.0, 5.0) == pytest.approx(393.8)
    record = record_of()
    assert baseline_mmhg(record.pressure, 600.0) == pytest.approx(30.0)
    # Rising 1 mmHg/s at 5/3600 mL/s: C = 1.389 µL/mmHg.
    assert rise_compliance(record.pressure, 600.0, 870.0, 5.0) == pytest.approx(5.0 / 3600.0)
    assert rise_compliance(record.pressure, 600.0, 601.0, 5.0) is None  # too few readings
    with pytest.raises(ValueError, match="no pressure reading"):
        baseline_mmhg(record.pressure, 100.0)
    assert speedup(50.0, 200.0) == pytest.approx(0.75)


def test_the_verdicts_by_hand() -> None:
    result = analyse(record_of())
    assert (result.time_to_alarm_s, result.s5_met, result.s6_met, result.s6_goal_met) == (
        270.0,
        True,
        True,
        True,
    )
    late = analyse(record_of(alarm_at_s=1000.0, stopped_at_s=1000.0))  # 400 s > 393.8 s
    assert not late.s5_met
    slow_stop = analyse(record_of(stopped_at_s=995.0))  # alarmed in time, stopped too late
    assert not slow_stop.s5_met
    assert analyse(record_of(bolus_ml=0.3)).s6_goal_met is False
    assert analyse(record_of(bolus_ml=0.3)).s6_met is True
    assert analyse(record_of(bolus_ml=0.51)).s6_met is False
    unmeasured = analyse(record_of(bolus_ml=None))
    assert unmeasured.s6_met is None and unmeasured.s6_goal_met is None


# ----- the command ----------------------------------------------------------------------------------


def qa(*args: str) -> subprocess.CompletedProcess[str]:
    return ketapump("qa", "occlusion", *args)


def test_cli_reports_s5_s6_with_json_and_plot(tmp_path: Path) -> None:
    result = qa(
        "--pump",
        "sim://?seed=1",
        "--rate-ml-h",
        "5",
        "--threshold-mmhg",
        "300",
        "--json",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("time_to_alarm_s", "bound_s", "pressure_at_alarm_mmhg", "bolus_ml", "s5_met", "s6_met"):
        assert key in report
    assert report["s5_met"] and report["s6_met"]
    assert report["time_to_alarm_s"] < report["bound_s"]
    assert report["first_alarms"] == ["occlusion_slope"]
    assert json.loads((tmp_path / "occlusion.json").read_text()) == report
    assert matplotlib.image.imread(report["plot"]).shape[:2] == (450, 900)
    # The human summary, and the threshold-only baseline.
    human = qa("--pump", "sim://?seed=1", "--rate-ml-h", "5", "--no-slope", "--out", str(tmp_path / "h"))
    assert human.returncode == 0, human.stderr
    assert "alarm (occlusion_pressure)" in human.stdout and "S5 bound" in human.stdout
    assert "S6 (≤ 0.5 mL) met" in human.stdout and human.stderr == ""


def test_cli_names_a_run_that_cannot_be_judged(tmp_path: Path) -> None:
    # 50 mmHg is below the nominal line's ~62 mmHg working pressure at 52.5 mL/h.
    result = qa("--rate-ml-h", "52.5", "--threshold-mmhg", "50", "--out", str(tmp_path))
    assert result.returncode == os.EX_DATAERR
    assert "cannot be judged" in result.stderr and "working pressure" in result.stderr
    bad = qa("--rate-ml-h", "5", "--threshold-mmhg", "2000", "--out", str(tmp_path))
    assert bad.returncode == os.EX_DATAERR and "occlusion_threshold_mmhg" in bad.stderr


def test_cli_on_a_pump_by_url_asks_the_operator_to_close_and_open_the_line(tmp_path: Path) -> None:
    # A real rig in miniature: `ketapump sim` (10× time) over Modbus TCP is the pump; this test plays the
    # operator, closing and opening the "clamp" (the fault register, over Modbus) when the command asks.
    with sim_process("--time-scale", "10", "--no-modbus-rtu", "--no-nesp") as (_sim, endpoints):
        host, port = str(endpoints["modbus_tcp"]).rsplit(":", 1)
        clamp = ModbusTcpClient(host, port=int(port))
        assert clamp.connect()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ketapump", "qa", "occlusion",
             "--pump", f"modbus-tcp://{endpoints['modbus_tcp']}", "--time-scale", "10",
             "--rate-ml-h", "52.5", "--threshold-mmhg", "300", "--settle-s", "150", "--release-s", "20",
             "--json", "--out", str(tmp_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stderr is not None
        stderr = b""
        for prompt, closed in ((b"CLOSE the clamp", 1), (b"OPEN the clamp", 0)):
            while prompt not in stderr:
                chunk = proc.stderr.read1(4096)
                assert chunk, f"ended before asking: {stderr.decode()}"
                stderr += chunk
            assert not clamp.write_register(REGMAP["fault_occlusion"].address, closed, device_id=1).isError()
            proc.stdin.write(b"\n")
            proc.stdin.flush()
        out, rest = proc.communicate(timeout=120)
        clamp.close()
    assert_documented(["qa", "occlusion"], proc.returncode, (stderr + rest).decode())
    assert proc.returncode == 0, (stderr + rest).decode()
    report = json.loads(out)
    # The operator's clamp was timed like the simulator's fault: within the bound, at the threshold.
    assert report["s5_met"] and report["first_alarms"][0] in OCCLUSION_ALARMS
    assert report["time_to_alarm_s"] < report["bound_s"]
    assert report["bound_s"] == pytest.approx(0.0028 * (300 - report["p0_mmhg"]) / (52.5 / 3600) + 5)
    # No balance on this rig: the bolus is reported as not measured, not as zero.
    assert report["bolus_ml"] is None and report["s6_met"] is None
    assert matplotlib.image.imread(report["plot"]).std() > 0.01


def test_an_unanswered_operator_prompt_does_not_hold_the_process() -> None:
    # The run can end (an alarm) while the operator is still being asked to close the clamp: the
    # command must then end, not wait for an Enter that may never come.
    never = threading.Event()
    asked: list[str] = []

    def ask(message: str) -> None:
        asked.append(message)
        never.wait()

    async def body() -> float | None:
        line = occlusion.OperatorLine(ask)
        line.arrange_close(VirtualClock(), 0.0)
        line.observe(0.0)  # the run's first tick: the close is due
        deadline = time.monotonic() + 10.0
        while not asked and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        line.cancel()
        return line.closed_at_s

    started = time.monotonic()
    try:
        assert asyncio.run(body()) is None
        assert time.monotonic() - started < 10.0
        assert asked == ["CLOSE the clamp on the line downstream of the pump"]
    finally:
        never.set()


def test_a_rigs_bolus_is_weighed_from_before_the_operator_opens_the_clamp() -> None:
    # On a rig the operator opens the clamp, then presses Enter: the bolus flows meanwhile. Rehearsed on
    # the simulator with an operator who takes 15 s (of pump time) to get back to the keyboard: the bolus
    # is everything that flowed from the closed line to the end of the release, not what was left after.
    # The operator acts on the event loop (no thread), so on the virtual clock the clamp closes on the
    # first tick at or after the settling time, every run: the record is the same every time.
    def rehearse() -> tuple[OcclusionRecord, float, list[float], list[float]]:
        pump = _core.SimPump(seed=1)
        clock = VirtualClock()
        at_prompt: list[float] = []
        at_enter: list[float] = []

        async def operator(message: str) -> None:
            pump.advance_to(clock.now())
            if message.startswith("CLOSE"):
                pump.inject("fault_occlusion", 1)
                return
            at_prompt.append(pump.delivered_ml)
            pump.inject("fault_occlusion", 0)
            await clock.sleep_until(clock.now() + 15.0)
            pump.advance_to(clock.now())
            at_enter.append(pump.delivered_ml)

        record = asyncio.run(
            occlusion.run_simulated(
                pump,
                rate_ml_h=52.5,
                threshold_mmhg=300.0,
                release_s=120.0,
                clock=clock,
                line=occlusion.OperatorLine(operator),
            )
        )
        return record, pump.delivered_ml, at_prompt, at_enter

    record, delivered, at_prompt, at_enter = rehearse()
    assert record.closed_at_s == pytest.approx(occlusion.SETTLE_S, abs=0.1 + 1e-9)  # the first tick ≥ 600 s
    assert record.bolus_ml is not None and at_prompt and at_enter
    assert record.bolus_ml == pytest.approx(delivered - at_prompt[0], abs=1e-12)
    # Not a negligible share: a reading taken at Enter would have missed over a quarter of it.
    assert at_enter[0] - at_prompt[0] > 0.25 * record.bolus_ml > 0.0
    assert analyse(record).s6_met
    # Deterministic: a second rehearsal records exactly the same run.
    again = rehearse()[0]
    assert (again.closed_at_s, again.alarm_at_s, again.bolus_ml) == (
        record.closed_at_s,
        record.alarm_at_s,
        record.bolus_ml,
    )
