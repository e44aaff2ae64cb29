"""Run the standard ketamine protocol session on a simulated pump, the vitals pushed by your own
monitor code (here a stand-in for a steady patient: heart rate and SpO2 every second, the cuff every
5 minutes, as data/vitals.toml expects them).

    python examples/session_callback_vitals.py [OUT_DIR]

The session's records (audit log, course history, report) go to OUT_DIR (default: a new temporary
directory). Exit status 0 when the session completed and its audit log verifies.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import ketapump

#: The stand-in monitor's patient: calm and stable.
CUFF = {"sbp": 122.0, "dbp": 78.0}
CONTINUOUS = {"hr": 72.0, "spo2": 98.0}
CUFF_EVERY_S = 300.0


def main(out: Path) -> int:
    monitor = ketapump.CallbackVitalsFeed()
    monitor.push_reading(0.0, **CUFF, **CONTINUOUS)  # the baseline
    course_db = ketapump.init_course(out / "course.sqlite3")  # or an existing course database
    patient = ketapump.Patient("example-patient", weight_kg=70.0, height_cm=175.0, sex="male")
    session = ketapump.Session(
        "ketamine-depression",
        patient,
        pump="sim://",
        vitals=monitor,
        operator_name="Dr Example",
        log=out / "audit.jsonl",
        course_db=course_db,
        out=out,
    )
    pushed_s = [0.0, 0.0]  # the newest continuous and cuff readings

    def on_event(event: ketapump.SessionEvent) -> None:
        # A real integration pushes from its monitor's thread (the feed takes readings from any thread);
        # this stand-in reads the patient as session time passes.
        if isinstance(event, ketapump.Tick):
            while pushed_s[0] + 1.0 <= event.t_s:
                pushed_s[0] += 1.0
                cuff = pushed_s[0] - pushed_s[1] >= CUFF_EVERY_S
                monitor.push_reading(pushed_s[0], **CONTINUOUS, **(CUFF if cuff else {}))
                if cuff:
                    pushed_s[1] = pushed_s[0]
        elif isinstance(event, ketapump.PhaseChanged):
            print(f"t={event.t_s / 60:5.1f} min  phase {event.phase}")
        elif isinstance(event, ketapump.AlarmRaised):
            print(f"t={event.t_s / 60:5.1f} min  ALARM {event.code} ({event.source})")

    session.subscribe(on_event)
    outcome = session.run()
    result = outcome.result
    print(f"{result.outcome}: {result.delivered_mg:.1f} of {result.programmed_mg:.1f} mg")
    print(f"report: {outcome.report}; audit log verified: {outcome.log_verified}")
    return 0 if outcome.complete else 1


if __name__ == "__main__":
    sys.exit(
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="ketapump-session-")))
    )
