"""The session report and its plots, from a real closed-loop run: the simulated pump driven by the
bridge, gated by the simulated patient monitor through the vitals gate (a scripted SBP crossing pauses
the infusion, its recovery resumes it), and an observation afterwards. The PNGs are read back and
checked to be pictures of that data; the report, its CSV and its HTML form are read back too."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import math
import os
import re
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread
from pypdf import PdfReader

from ketapump import _core
from ketapump.bridge import audit
from ketapump.bridge.loop import ControlLoop, InfusionPlan
from ketapump.clinical.report import (
    COLORS,
    PLOT_FILES,
    SeriesEvent,
    SeriesPoint,
    read_series_csv,
    write_plots,
    write_report,
    write_series_csv,
)
from ketapump.clinical.vitals import (
    CHANNELS,
    PatientScript,
    ScriptedMonitor,
    VitalsBaseline,
    VitalsGate,
    demo_patient,
    vitals_thresholds,
)
from ketapump.clock import VirtualClock
from ketapump.config import kernel_config
from ketapump.errors import ConfigurationError
from ketapump.wire.drivers.base import PumpTelemetry
from ketapump.wire.drivers.reference import ReferencePumpDriver
from ketapump.wire.transports import open_transport

PREPARATION_S = 120.0
RATE_ML_H = 60.0
VOLUME_ML = 6.0
CONCENTRATION_MG_PER_ML = 1.0
OBSERVATION_S = 300.0
CROSSING_AT_S = 240.0  # script time: 4 min into the infusion, one cuff reading of 186 mmHg
CUFF_S = 60.0  # the cuff cycles every minute during this session


@dataclass
class Session:
    points: list[SeriesPoint] = field(default_factory=list)
    events: list[SeriesEvent] = field(default_factory=list)
    ticks: list[tuple[float, str, str, float]] = field(default_factory=list)  # now, state, direction, rate
    summary: dict[str, Any] = field(default_factory=dict)
    infusion_start_s: float = 0.0
    delivered_ml: float = 0.0


def _script() -> PatientScript:
    document = demo_patient().model_dump()
    document["monitor"]["bp_interval_s"] = CUFF_S
    # A short infusion: the response peaks at its end and resolves within the observation.
    document["response"] |= {"peak_s": 420.0, "resolved_s": 700.0}
    document["event"] = [
        {"kind": "crossing", "channel": "sbp", "at_s": CROSSING_AT_S, "duration_s": CUFF_S, "value": 186.0}
    ]
    return PatientScript.model_validate(document)


def run_session(tmp: Path) -> Session:
    """A miniature orchestrator: preparation (baseline), infusion gated by the vitals, observation."""
    session = Session()
    thresholds = vitals_thresholds({"bp_interval_s": CUFF_S})
    monitor = ScriptedMonitor(_script())
    latest: dict[str, float] = {}
    readings = []

    def take(now: float) -> list[Any]:
        samples = monitor.poll(now)
        readings.extend(samples)
        latest.update({s.channel: s.value for s in samples})
        return samples

    def vitals_now() -> dict[str, float]:
        # NaN when there was no new reading since the previous point.
        values = {c: latest.get(c, math.nan) for c in CHANNELS}
        latest.clear()
        return values

    # Preparation: baseline from two minutes of readings.
    for k in range(int(PREPARATION_S) + 1):
        take(float(k))
        session.points.append(SeriesPoint(k, "preparation", 0, 0, 0, math.nan, math.nan, 300, **vitals_now()))
    gate = VitalsGate(thresholds, VitalsBaseline.from_samples(readings))
    gate.update(PREPARATION_S, [])
    session.events.append(SeriesEvent(PREPARATION_S, "phase", "infusion"))

    pump = _core.SimPump(seed=5, slack_taken_up=True)
    clock = VirtualClock(PREPARATION_S)
    transport = open_transport("sim://", clock=clock, pump=pump)
    log_path = tmp / "audit.jsonl"
    writer = audit.AuditWriter.open(log_path)
    log = audit.audit_logger(writer, session_id="report-test", pump="sim://")
    loop = ControlLoop(ReferencePumpDriver(transport), kernel_config(), clock, log)
    monitor.mark_infusion_start(PREPARATION_S)
    session.infusion_start_s = PREPARATION_S
    volumes: deque[tuple[float, float]] = deque()
    paused_by_vitals = False
    next_point = PREPARATION_S + 1.0
    alarms: list[dict[str, Any]] = []
    pauses: list[dict[str, Any]] = []

    def on_tick(out: _core.StepOutput, telemetry: PumpTelemetry | None) -> None:
        nonlocal paused_by_vitals, next_point
        now = clock.now()
        session.ticks.append((now, out.state, out.direction, out.rate_ml_h))
        for alarm in gate.update(now, take(now)):
            session.events.append(SeriesEvent(now, "alarm", alarm.detail))
            alarms.append({"t_s": now, "kind": f"vitals {alarm.kind}", "detail": alarm.detail})
            if out.state == "running":
                loop.request_pause(f"vitals: {alarm.detail}")
                session.events.append(SeriesEvent(now, "pause", alarm.detail))
                pauses.append({"t_s": now, "reason": alarm.detail})
                paused_by_vitals = True
        if paused_by_vitals and out.state == "paused" and not gate.active():
            loop.request_resume("vitals back within limits")
            session.events.append(SeriesEvent(now, "resume", "vitals back within limits"))
            pauses[-1]["resumed_s"] = now
            paused_by_vitals = False
        if telemetry is not None:
            volumes.append((now, telemetry.volume_ml))
            while now - volumes[0][0] > 10.0:
                volumes.popleft()
        if now >= next_point and telemetry is not None:
            next_point += 1.0
            (ta, va), (tb, vb) = volumes[0], volumes[-1]
            elapsed_h = (now - PREPARATION_S) / 3600.0
            session.points.append(
                SeriesPoint(
                    t_s=now,
                    phase="infusion",
                    programmed_mg=min(RATE_ML_H * elapsed_h, VOLUME_ML) * CONCENTRATION_MG_PER_ML,
                    delivered_mg=out.delivered_ml * CONCENTRATION_MG_PER_ML,
                    commanded_rate_ml_h=out.rate_ml_h if out.direction == "forward" else 0.0,
                    measured_rate_ml_h=(vb - va) / (tb - ta) * 3600.0 if tb > ta else math.nan,
                    pressure_mmhg=telemetry.pressure_mmhg,
                    threshold_mmhg=300.0,
                    **vitals_now(),
                )
            )

    loop.on_tick = on_tick
    try:
        result = asyncio.run(loop.run(InfusionPlan(RATE_ML_H, VOLUME_ML, syringe_diameter_mm=26.59)))
    finally:
        writer.close()
    assert result.reason == "complete", result
    session.delivered_ml = result.delivered_ml

    # Observation: the pump is stopped, the vitals are still watched.
    end_infusion = clock.now()
    session.events.append(SeriesEvent(end_infusion, "phase", "observation"))
    delivered_mg = result.delivered_ml * CONCENTRATION_MG_PER_ML
    for k in range(1, int(OBSERVATION_S) + 1):
        now = end_infusion + k
        assert gate.update(now, take(now)) == []
        session.points.append(
            SeriesPoint(now, "observation", VOLUME_ML, delivered_mg, 0, 0, math.nan, 300, **vitals_now())
        )
    assert gate.within_band()
    verified = audit.verify(log_path)
    session.summary = {
        "patient": {"id": "P-0042", "weight_kg": 12.0},
        "protocol": "test: 6 mg at 60 mL/h",
        "programmed_mg": VOLUME_ML * CONCENTRATION_MG_PER_ML,
        "programmed_ml": VOLUME_ML,
        "delivered_mg": delivered_mg,
        "delivered_ml": result.delivered_ml,
        "started_at": "2026-11-22T09:00:00Z",
        "outcome": "complete",
        "phases": [
            {"name": "preparation", "start_s": 0.0, "end_s": PREPARATION_S},
            {"name": "infusion", "start_s": PREPARATION_S, "end_s": end_infusion},
            {"name": "observation", "start_s": end_infusion, "end_s": end_infusion + OBSERVATION_S},
        ],
        "alarms": alarms,
        "pauses": pauses,
        "confirmations": [{"t_s": 30.0, "what": "sitter present", "reason": "spouse in the waiting room"}],
        "audit_log": {
            "path": str(log_path),
            "verified": verified.ok,
            "detail": f"{verified.records} records",
        },
        "notes": ["baseline within limits"],
    }
    return session


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    return run_session(tmp_path_factory.mktemp("session"))


# ----- the run behind the report -----------------------------------------------------------------


def test_a_vitals_crossing_pauses_the_real_infusion_within_one_second(session: Session) -> None:
    reading_s = session.infusion_start_s + CROSSING_AT_S
    [alarm] = [e for e in session.events if e.kind == "alarm"]
    assert alarm.detail == "SBP 186 mmHg ≥ 180 mmHg"
    assert 0 <= alarm.t_s - reading_s < 0.1 + 1e-9  # raised at the tick the reading arrived
    # The pump is commanded to hold from the next tick on (S13: within 1 s of the reading).
    held = next(t for t, state, direction, _ in session.ticks if t > reading_s and direction == "hold")
    assert held - reading_s <= 0.2 + 1e-9
    assert all(s == "paused" for t, s, _, _ in session.ticks if held <= t < reading_s + CUFF_S)
    # Resumed once the next cuff reading was back in range, and the dose was still delivered.
    [resume] = [e for e in session.events if e.kind == "resume"]
    assert resume.t_s == pytest.approx(reading_s + CUFF_S, abs=0.1 + 1e-9)
    assert session.delivered_ml == pytest.approx(VOLUME_ML, rel=0.02)
    assert session.summary["audit_log"]["verified"]


# ----- plots -------------------------------------------------------------------------------------


def pixels_of(image: np.ndarray, color: str, tolerance: float = 0.06) -> np.ndarray:
    """A mask of the pixels within ``tolerance`` of ``color`` (per RGB channel)."""
    rgb = np.array([int(color[i : i + 2], 16) / 255.0 for i in (1, 3, 5)])
    return np.all(np.abs(image[:, :, :3] - rgb) <= tolerance, axis=2)


def distinct_colors(image: np.ndarray) -> int:
    return len(np.unique((image[:, :, :3] * 255).round().astype(np.uint8).reshape(-1, 3), axis=0))


def test_the_plots_are_real_pngs_of_the_data(session: Session, tmp_path: Path) -> None:
    paths = write_plots(session.points, session.events, tmp_path)
    assert [p.name for p in paths] == list(PLOT_FILES.values())
    lines = {
        "dose.png": ("delivered", "programmed"),
        "rate.png": ("commanded", "measured"),
        "pressure.png": ("pressure", "threshold"),
        "vitals.png": ("sbp", "dbp", "hr", "spo2"),
    }
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(path)
        assert image.shape == ((800, 1000, 4) if path.name == "vitals.png" else (450, 1000, 4))
        assert distinct_colors(image) > 200, path.name  # not blank: lines, shading, text
        for series in lines[path.name]:
            assert np.count_nonzero(pixels_of(image, COLORS[series])) > 300, (path.name, series)
        if path.name == "dose.png":  # and the check sees colours that are not there as absent
            for series in ("measured", "pressure", "spo2"):
                assert np.count_nonzero(pixels_of(image, COLORS[series])) < 20, series


def test_a_plot_changes_with_its_data(session: Session, tmp_path: Path) -> None:
    same = write_plots(session.points, session.events, tmp_path / "same")
    again = write_plots(session.points, session.events, tmp_path / "again")
    for a, b in zip(same, again, strict=True):
        assert np.array_equal(imread(a), imread(b)), a.name  # a picture of its data only

    # An occlusion-like pressure spike halfway through: the pressure line reaches higher in the image.
    middle = len(session.points) // 2
    spiked = [
        dataclasses.replace(p, pressure_mmhg=900.0) if middle <= i < middle + 30 else p
        for i, p in enumerate(session.points)
    ]
    plain = imread(write_plots(session.points, session.events, tmp_path / "plain")[2])
    spike = imread(write_plots(spiked, session.events, tmp_path / "spike")[2])
    assert not np.array_equal(plain, spike)

    def top_row(image: np.ndarray) -> int:
        return int(np.nonzero(pixels_of(image, COLORS["pressure"]).any(axis=1))[0].min())

    # With the spike the axis rescales, so the steady 220-ish mmHg line sits lower and the spike on top.
    assert top_row(spike) < top_row(plain)


def test_no_points_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="points is empty"):
        write_plots([], [], tmp_path)


def test_importing_and_plotting_changes_no_global_matplotlib_state(session: Session, tmp_path: Path) -> None:
    series = write_series_csv(session.points[:200], tmp_path / "series.csv")
    code = (
        "import sys, matplotlib; from pathlib import Path\n"
        "before = matplotlib.get_backend()\n"
        "from ketapump.clinical import report\n"
        f"report.write_plots(report.read_series_csv(Path({str(series)!r})), [], Path({str(tmp_path)!r}))\n"
        "assert matplotlib.get_backend() == before == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "vitals.png").exists()


# ----- the data ----------------------------------------------------------------------------------


def test_the_series_csv_keeps_the_data_behind_the_plots(session: Session, tmp_path: Path) -> None:
    path = write_series_csv(session.points, tmp_path / "series.csv")
    assert path.read_text().splitlines()[0] == (
        "t_s,phase,programmed_mg,delivered_mg,commanded_rate_ml_h,measured_rate_ml_h,pressure_mmhg,"
        "threshold_mmhg,sbp,dbp,hr,spo2,rr,etco2,planned_rate_ml_h,programmed_rate_ml_h,held_by"
    )
    back = read_series_csv(path)
    assert len(back) == len(session.points)
    for a, b in zip(session.points, back, strict=True):
        for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b), strict=True):
            assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
    # The cuff's readings are sparse (NaN between), the continuous channels are not.
    assert 5 < sum(not math.isnan(p.sbp) for p in back) < 30
    assert sum(not math.isnan(p.hr) for p in back) > 0.9 * len(back)


HEADER = (
    "t_s,phase,programmed_mg,delivered_mg,commanded_rate_ml_h,measured_rate_ml_h,pressure_mmhg,"
    "threshold_mmhg,sbp,dbp,hr,spo2,rr,etco2,planned_rate_ml_h,programmed_rate_ml_h,held_by\n"
)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("t_s,phase\n", ":1:"),
        (HEADER + "0,infusion,1,1,1,1,1,1,,,,,,,,,\n1,infusion,x,1,1,1,1,1,,,,,,,,,\n", ":3:"),
        (HEADER + "0,infusion,1\n", ":2:"),
        (HEADER + ",infusion,1,1,1,1,1,1,,,,,,,,,\n", ":2:"),  # a point without its time
    ],
)  # fmt: skip
def test_a_damaged_series_csv_names_the_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "series.csv"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as e:
        read_series_csv(path)
    assert e.value.field == f"{path}{where}"


# ----- the report --------------------------------------------------------------------------------


def table_row(text: str, first_cell: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_the_markdown_report_summarises_the_session(session: Session, tmp_path: Path) -> None:
    path = write_report(session.summary, session.points, session.events, tmp_path)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert "not a certified medical device" in text
    assert table_row(text, "Patient") == ["Patient", "id: P-0042, weight_kg: 12"]
    assert table_row(text, "Programmed") == ["Programmed", "6.00 mg / 6.00 mL"]
    delivered = table_row(text, "Delivered")[1]
    assert re.fullmatch(r"\d\.\d\d mg / \d\.\d\d mL \([+-]\d\.\d\d % of programmed\)", delivered)
    assert table_row(text, "Started")[1] == "2026-11-22T09:00:00Z"
    assert table_row(text, "Outcome")[1] == "complete"
    infusion = table_row(text, "infusion")
    assert infusion[1] == "0:02:00"  # after the two-minute preparation
    # Alarms, pauses and confirmations, each with its reason.
    reading = session.infusion_start_s + CROSSING_AT_S
    hms = f"0:{int(reading) // 60:02d}:{int(reading) % 60:02d}"
    assert table_row(text, hms) == [hms, "vitals crossing", "SBP 186 mmHg ≥ 180 mmHg"]
    pause = [r for r in text.splitlines() if "SBP 186" in r and "0:" in r]
    assert len(pause) == 2  # the alarm and the pause it caused
    resumed = f"0:{int(reading + CUFF_S) // 60:02d}:{int(reading + CUFF_S) % 60:02d}"
    assert any(resumed in r for r in pause)
    assert table_row(text, "0:00:30") == ["0:00:30", "sitter present", "spouse in the waiting room"]
    assert table_row(text, "Verification") == ["Verification", "verified"]
    assert table_row(text, "Path")[1] == session.summary["audit_log"]["path"]
    assert "- baseline within limits" in text
    # The plots are embedded beside it, and the data kept.
    images = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert images == list(PLOT_FILES.values())
    assert all((tmp_path / name).stat().st_size > 10_000 for name in images)
    assert len(read_series_csv(tmp_path / "series.csv")) == len(session.points)


def test_the_report_reads_the_orchestrators_summary_shape(session: Session, tmp_path: Path) -> None:
    """Times in minutes, phases by start only, the audit log as ``log``/``log_verified``, a plan."""
    summary = {
        "session_id": "abc123",
        "outcome": "complete",
        "programmed_mg": 6.0,
        "delivered_mg": 6.03,
        "phases": [{"phase": "preparation", "start_min": 0.0}, {"phase": "infusion", "start_min": 2.0}],
        "alarms": [{"t_min": 6.0, "source": "vitals", "detail": "SBP 186 mmHg ≥ 180 mmHg"}],
        "pauses": [{"t_min": 6.0, "by": "vitals", "reason": "SBP 186 mmHg ≥ 180 mmHg"}],
        "confirmations": [{"kind": "baseline_vitals", "message": "baseline SBP 150", "reason": "white coat"}],
        "plan": {
            "protocol": "ketamine-depression",
            "drug": "ketamine",
            "dose_mg_per_kg": 0.5,
            "volume_ml": 6.0,
        },
        "log": "/var/log/a.jsonl",
        "log_verified": False,
        "course_db": "/tmp/course.sqlite3",
    }
    text = write_report(summary, session.points, [], tmp_path).read_text()
    assert table_row(text, "Session")[1] == "abc123"
    assert table_row(text, "Protocol")[1] == "ketamine-depression, ketamine, 0.5 mg/kg"
    assert table_row(text, "Programmed")[1] == "6.00 mg / 6.00 mL"
    assert table_row(text, "Delivered")[1] == "6.03 mg (+0.50 % of programmed)"
    assert table_row(text, "preparation") == ["preparation", "0:00:00", "0:02:00"]
    assert table_row(text, "infusion")[1] == "0:02:00"
    assert table_row(text, "0:06:00") == ["0:06:00", "vitals", "SBP 186 mmHg ≥ 180 mmHg"]
    assert "| time | source | detail |" in text and "| time | by | reason |" in text
    assert table_row(text, "—") == ["—", "baseline_vitals", "baseline SBP 150", "white coat"]
    assert table_row(text, "Path")[1] == "/var/log/a.jsonl"
    assert table_row(text, "Verification")[1] == "FAILED verification"
    assert table_row(text, "course_db")[1] == "/tmp/course.sqlite3"  # listed under "Other"


def test_without_lists_the_report_takes_them_from_the_events(session: Session, tmp_path: Path) -> None:
    text = write_report({}, session.points, session.events, tmp_path).read_text()
    reading = session.infusion_start_s + CROSSING_AT_S
    pauses = text.split("## Pauses")[1].split("##")[0]
    assert "| paused | resumed | reason |" in pauses
    assert f"0:0{int(reading) // 60}:00 | 0:0{int(reading + CUFF_S) // 60}:00 | SBP 186 mmHg" in pauses
    phases = text.split("## Phases")[1].split("##")[0]
    assert [
        line.split(" | ")[0] for line in phases.splitlines() if line.startswith("| ") and "---" not in line
    ] == [
        "| phase",
        "| preparation",
        "| infusion",
        "| observation",
    ]
    assert table_row(text, "Verification")[1] == "not verified"


def test_the_html_report_is_one_self_contained_file(session: Session, tmp_path: Path) -> None:
    summary = {**session.summary, "notes": ["<b>bold</b> & SpO₂ < 90"]}
    path = write_report(summary, session.points, session.events, tmp_path, fmt="html")
    text = path.read_text()
    assert path.name == "report.html" and text.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img alt="[^"]+" src="data:image/png;base64,([^"]+)">', text)
    assert len(images) == 4
    for data, name in zip(images, PLOT_FILES.values(), strict=True):
        assert base64.b64decode(data) == (tmp_path / name).read_bytes()
    assert not re.search(r'src="(?!data:)', text)  # nothing loaded from elsewhere
    assert "<td>SBP 186 mmHg ≥ 180 mmHg</td>" in text
    assert "<li>&lt;b&gt;bold&lt;/b&gt; &amp; SpO₂ &lt; 90</li>" in text


def test_the_report_refuses_an_unknown_format(session: Session, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="fmt must be 'md', 'html' or 'pdf', not 'docx'"):
        write_report({}, session.points, [], tmp_path, fmt="docx")  # type: ignore[arg-type]


def test_the_pdf_report_is_a_valid_pdf_with_the_reports_text_and_a_page_per_plot(
    session: Session, tmp_path: Path
) -> None:
    markdown = write_report(session.summary, session.points, session.events, tmp_path / "md").read_text()
    path = write_report(session.summary, session.points, session.events, tmp_path / "pdf", fmt="pdf")
    assert path == tmp_path / "pdf" / "report.pdf"
    data = path.read_bytes()
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    pdf = PdfReader(path, strict=True)
    assert "P-0042" in str(pdf.metadata.title)
    text = "\n".join(page.extract_text() for page in pdf.pages)
    # The text pages carry the report's own rows (the same numbers as the Markdown report) ...
    for first_cell in ("Delivered", "Programmed", "Verification"):
        assert " | ".join(table_row(markdown, first_cell)) in " ".join(text.split()), first_cell
    assert "id: P-0042" in text and "not a certified medical device" in text

    # ... then one page per plot, each the PNG the Markdown report links, at its own size.
    def draws_an_image(page: Any) -> bool:
        return re.search(rb"/I\d+\s+Do\b", page.get_contents().get_data()) is not None

    assert [draws_an_image(page) for page in pdf.pages] == [False] * (len(pdf.pages) - 4) + [True] * 4
    titles = ("Cumulative dose", "Commanded and measured rate", "Line pressure", "Vital signs")
    for page, title in zip(pdf.pages[-4:], titles, strict=True):
        assert title in page.extract_text()
    sizes = sorted(image.image.size for image in pdf.pages[-1].images if image.image is not None)
    assert sizes == [(1000, 450)] * 3 + [(1000, 800)]
