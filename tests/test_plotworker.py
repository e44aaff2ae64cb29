"""The session plots' helper process: the same files as drawn in this process, byte for byte, and
every way it can fail ends in the plots drawn here, or in the error drawing them here raises."""

from __future__ import annotations

import ast
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ketapump.clinical import report
from ketapump.clinical.plotworker import HALVES, HELPER_CODE, PlotHelper
from ketapump.clinical.report import PLOT_FILES, SeriesEvent, SeriesPoint
from ketapump.errors import ConfigurationError


def _series() -> tuple[list[SeriesPoint], list[SeriesEvent]]:
    """A small session: take-up, 20 min of infusion with a pause, observation; vitals every minute."""
    points = []
    for i in range(400):
        t = 6.0 * i
        phase = "take_up" if t < 30 else "infusion" if t < 1_230 else "observation"
        infusing = phase != "observation"
        held = "operator" if 600 <= t < 660 else ""
        points.append(
            SeriesPoint(
                t_s=t,
                phase=phase,
                programmed_mg=min(t, 1_230.0) / 1_230.0 * 35.0,
                delivered_mg=min(t, 1_230.0) / 1_230.0 * 35.0 * 0.99,
                commanded_rate_ml_h=(120.0 if t < 30 else 0.0 if held else 5.25) if infusing else 0.0,
                measured_rate_ml_h=5.25 + 0.1 * math.sin(t / 60.0) if infusing else 0.0,
                pressure_mmhg=220.0 + 5.0 * math.sin(t / 100.0) if infusing else math.nan,
                threshold_mmhg=300.0,
                sbp=125.0 + 10.0 * math.sin(t / 500.0) if i % 10 == 0 else math.nan,
                dbp=80.0 if i % 10 == 0 else math.nan,
                hr=72.0 + 3.0 * math.cos(t / 300.0),
                spo2=98.0,
                planned_rate_ml_h=5.25 if infusing else math.nan,
                programmed_rate_ml_h=5.25 if infusing else math.nan,
                held_by=held,
            )
        )
    events = [SeriesEvent(600.0, "pause", "operator"), SeriesEvent(660.0, "resume", "operator")]
    return points, events


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ketapump.plots"]


def test_the_helper_writes_the_files_this_process_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    points, events = _series()
    helper = PlotHelper()
    helper.start()
    with caplog.at_level(logging.WARNING, "ketapump.plots"):
        by_helper = helper.write_plots(points, events, tmp_path / "helper", band_pct=15.0)
    assert not _warnings(caplog)  # the helper drew them: nothing fell back to this process
    here = report.write_plots(points, events, tmp_path / "here", band_pct=15.0)
    assert [p.name for p in by_helper] == list(PLOT_FILES.values())
    assert [p.parent for p in by_helper] == [tmp_path / "helper"] * 4
    for a, b in zip(by_helper, here, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert helper._process is None  # ended with its answer


def test_a_helper_started_late_or_twice_is_one_helper(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    points, events = _series()
    helper = PlotHelper()
    helper.start()
    first = helper._process
    helper.start()
    assert helper._process is first
    helper.close()
    # Not started at all: write_plots starts it.
    with caplog.at_level(logging.WARNING, "ketapump.plots"):
        paths = PlotHelper().write_plots(points, events, tmp_path)
    assert [p.name for p in paths] == list(PLOT_FILES.values()) and not _warnings(caplog)


def test_an_error_drawing_the_plots_is_the_error_this_process_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="points is empty"):
        PlotHelper().write_plots([], [], tmp_path)
    points, events = _series()
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a directory")
    with pytest.raises(OSError) as here:
        report.write_plots(points, events, in_the_way)
    with pytest.raises(OSError) as helper:
        PlotHelper().write_plots(points, events, in_the_way)
    assert type(helper.value) is type(here.value) and str(helper.value) == str(here.value)


def test_a_helper_killed_before_the_end_leaves_the_plots_to_this_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    points, events = _series()
    helper = PlotHelper()
    helper.start()
    assert helper._process is not None
    os.killpg(helper._process.pid, signal.SIGKILL)
    helper._process.wait()
    with caplog.at_level(logging.WARNING, "ketapump.plots"):
        paths = helper.write_plots(points, events, tmp_path)
    assert [p.name for p in paths] == list(PLOT_FILES.values()) and all(p.stat().st_size > 0 for p in paths)
    assert any("ended with -9" in w for w in _warnings(caplog))


def test_a_helper_that_cannot_start_leaves_the_plots_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    points, events = _series()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with caplog.at_level(logging.WARNING, "ketapump.plots"):
        paths = PlotHelper().write_plots(points, events, tmp_path / "out")
    assert [p.name for p in paths] == list(PLOT_FILES.values())
    assert any("did not start" in w for w in _warnings(caplog))


def test_a_stuck_helper_is_given_up_after_its_timeout_and_the_plots_are_drawn_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    points, events = _series()
    helper = PlotHelper(timeout_s=0.5)
    helper.start()
    assert helper._process is not None
    os.killpg(helper._process.pid, signal.SIGSTOP)  # alive but never answering
    with caplog.at_level(logging.WARNING, "ketapump.plots"):
        paths = helper.write_plots(points, events, tmp_path)
    here = report.write_plots(points, events, tmp_path / "here")
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in here]
    assert any("did not answer" in w and "0.5 seconds" in w for w in _warnings(caplog))
    assert helper._process is None  # the stopped helper was killed, not left behind


def test_only_the_named_plots_are_drawn_each_as_when_all_four_are(tmp_path: Path) -> None:
    points, events = _series()
    assert list(report.draw_plots(points, events, only=("rate",))) == ["rate"]
    every = report.write_plots(points, events, tmp_path / "all", band_pct=15.0)
    by_name = dict(zip(PLOT_FILES, every, strict=True))
    for half in HALVES:
        paths = report.write_plots(points, events, tmp_path / "-".join(half), only=half, band_pct=15.0)
        assert [p.name for p in paths] == [file for name, file in PLOT_FILES.items() if name in half]
        assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted(p.name for p in paths)
        assert all(p.read_bytes() == by_name[p.stem].read_bytes() for p in paths)
    with pytest.raises(ConfigurationError, match="only names no plot: volume"):
        report.draw_plots(points, events, only=("rate", "volume"))


def test_the_helpers_program_loads_the_drawing_and_not_the_session_engine() -> None:
    """The helper runs beside the session: its imports (the program's own, run in a fresh interpreter
    as the helper starts) load the report and matplotlib's user, never the session engine."""
    program = ast.parse(HELPER_CODE)
    imports = [node for node in program.body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert imports, HELPER_CODE
    probe = (
        ast.unparse(imports)
        + "\nimport sys\nprint(sorted(m for m in sys.modules if m.startswith('ketapump')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = set(ast.literal_eval(done.stdout.strip()))
    assert {"ketapump.clinical.plotworker", "ketapump.clinical.report"} <= loaded
    assert "ketapump.clinical.session" not in loaded
    assert not any(m.startswith(("ketapump.bridge", "ketapump.wire")) for m in loaded), sorted(loaded)
