"""``ketapump serve --demo``: a clinic of three simulated chairs whose sessions start at once, at a time
scale that makes the screen move (10× by default: the 40-min infusion takes 4 min).

- chair 1: an uneventful session (the shipped demo patient);
- chair 2: a blood-pressure surge mid-infusion (``data/patients/bp-crossing.toml``): the vitals gate
  pauses the pump; a standing order resumes it once the readings have been back in range for a minute;
- chair 3: an anxious patient who becomes nauseous (``data/patients/anxious.toml``), with a scripted
  nurse (its ``[[nurse]]`` entries): nausea recorded at minute 8, the infusion slowed to half and
  ondansetron given, the plan's rate restored once it has settled; a short run of tachycardia at
  minute 25 pauses the pump.

Everything runs in-process on the simulator (``sim://``: hw-sim physics and firmware behind the same driver
a real pump uses), through the same session engine and records as any session. The records are the
demo's own (``--out``, recreated on each run: never a real course history).
"""

from __future__ import annotations

import datetime
from importlib import resources
from pathlib import Path

from ketapump.clinical import DEMO_OPERATOR, DEMO_SITTER, CourseHistory
from ketapump.console.clinic import PatientIn, SitterIn, StartRequest
from ketapump.console.config import ChairConfig, ClinicConfig, ClinicSettings

#: Pump seconds per real second of the demo.
DEMO_TIME_SCALE = 10.0

#: (chair id, name, patient script, patient, whether the script's nurse acts) of each demo chair.
DEMO_CHAIRS = (
    (
        "chair-1",
        "Chair 1",
        "demo.toml",
        PatientIn(id="demo-ana", weight_kg=62.0, height_cm=165.0, sex="female"),
        False,
    ),
    (
        "chair-2",
        "Chair 2",
        "bp-crossing.toml",
        PatientIn(id="demo-ben", weight_kg=84.0, height_cm=180.0, sex="male"),
        False,
    ),
    (
        "chair-3",
        "Chair 3",
        "anxious.toml",
        PatientIn(id="demo-cat", weight_kg=70.0, height_cm=172.0, sex="female"),
        True,
    ),
)


def patient_script(name: str) -> Path:
    """A shipped patient script's file (``ketapump/data/patients``)."""
    return Path(str(resources.files("ketapump.data").joinpath("patients", name)))


def demo_clinic(
    out: Path, time_scale: float = DEMO_TIME_SCALE
) -> tuple[ClinicConfig, list[tuple[str, StartRequest]]]:
    """The demo clinic, its records in ``out`` (the earlier run's removed), and the sessions to start."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    course = out / "course.sqlite3"
    for own in (course, course.with_name(course.name + "-wal"), course.with_name(course.name + "-shm")):
        own.unlink(missing_ok=True)
    CourseHistory.create(course, at=datetime.datetime.now(datetime.UTC)).close()  # the demo's own
    for log in logs.glob("*.jsonl"):
        log.unlink()
    chairs = [
        ChairConfig(
            id=chair_id,
            name=name,
            pump=f"sim://?seed={index}",
            vitals=f"sim:{patient_script(script)}",
            nurse="script" if scripted else "person",
        )
        for index, (chair_id, name, script, _patient, scripted) in enumerate(DEMO_CHAIRS, start=1)
    ]
    config = ClinicConfig(
        schema_version=1,
        clinic=ClinicSettings(
            name="ketapump demo clinic (simulated pumps and patients)",
            course_db=course,
            log_dir=logs,
            out_dir=out / "reports",
            time_scale=time_scale,
        ),
        chair=chairs,
    )
    starts = [
        (
            chair_id,
            StartRequest(
                operator=DEMO_OPERATOR,
                patient=patient,
                checklist="confirmed",
                resume_after_s=60.0,
                sitter=SitterIn(name=DEMO_SITTER.name, phone=DEMO_SITTER.phone),
            ),
        )
        for chair_id, _name, _script, patient, _scripted in DEMO_CHAIRS
    ]
    return config, starts


__all__ = ["DEMO_CHAIRS", "DEMO_TIME_SCALE", "demo_clinic", "patient_script"]
