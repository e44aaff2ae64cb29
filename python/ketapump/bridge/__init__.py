"""The bridge layer: the closed control loop between a pump and the Rust safety kernel.

Owns the control loop (Python schedules, the kernel decides every command), the hash-chained audit log,
recovery of an interrupted session, and the run set-up a pump URL needs (control period, gains, pump
watchdog, syringe catalogue). It imports the wire layer and the floor, never the clinical layer, the
simulator's servers, QA or the CLI. Other layers import it through this module.
"""

from ketapump.bridge.audit import (
    AuditWriter,
    audit_logger,
    configure_diagnostics,
    session_of,
    verify,
)
from ketapump.bridge.loop import LINK_LOST, ControlLoop, EventLog, InfusionPlan, NullLog, RunResult
from ketapump.bridge.recovery import RecoveryError, recover_delivered_ml, resume_session
from ketapump.bridge.runtime import (
    control_period_s,
    default_log_path,
    loop_settings,
    make_driver,
    syringe_diameter_mm,
    syringe_spec,
)

__all__ = [
    "LINK_LOST",
    "AuditWriter",
    "ControlLoop",
    "EventLog",
    "InfusionPlan",
    "NullLog",
    "RecoveryError",
    "RunResult",
    "audit_logger",
    "configure_diagnostics",
    "control_period_s",
    "default_log_path",
    "loop_settings",
    "make_driver",
    "recover_delivered_ml",
    "resume_session",
    "session_of",
    "syringe_diameter_mm",
    "syringe_spec",
    "verify",
]
