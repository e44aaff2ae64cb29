"""The bridge layer: the closed control loop between a pump and the Rust safety kernel.

Owns the control loop (Python schedules, the kernel decides every command), the keyed, hash-chained audit log,
recovery of an interrupted session, and the run set-up a pump URL needs (control period, gains, pump
watchdog, syringe catalogue). It imports the wire layer and the floor, never the clinical layer, the
simulator's servers, QA or the CLI. Other layers import it through this module.
"""

from ketapump.bridge.audit import (
    CHAINABLE,
    AuditWriter,
    Seal,
    VerifyResult,
    audit_logger,
    configure_diagnostics,
    read_records,
    verify,
)
from ketapump.bridge.auditkey import AuditKey, AuditKeyError, default_key_path, load_key
from ketapump.bridge.loop import LINK_LOST, ControlLoop, EventLog, InfusionPlan, NullLog, RunResult
from ketapump.bridge.recovery import (
    RecoveryError,
    SessionRecord,
    check_order,
    check_pump,
    read_session_record,
    recover_delivered_ml,
    resume_session,
)
from ketapump.bridge.runtime import (
    JITTER_REAL_S,
    control_period_s,
    default_log_path,
    loop_settings,
    make_driver,
    run_kernel_config,
    syringe_diameter_mm,
    syringe_spec,
)

__all__ = [
    "CHAINABLE",
    "JITTER_REAL_S",
    "LINK_LOST",
    "AuditKey",
    "AuditKeyError",
    "AuditWriter",
    "ControlLoop",
    "EventLog",
    "InfusionPlan",
    "NullLog",
    "RecoveryError",
    "RunResult",
    "Seal",
    "SessionRecord",
    "VerifyResult",
    "audit_logger",
    "check_order",
    "check_pump",
    "configure_diagnostics",
    "control_period_s",
    "default_key_path",
    "default_log_path",
    "load_key",
    "loop_settings",
    "make_driver",
    "read_records",
    "read_session_record",
    "recover_delivered_ml",
    "resume_session",
    "run_kernel_config",
    "syringe_diameter_mm",
    "syringe_spec",
    "verify",
]
