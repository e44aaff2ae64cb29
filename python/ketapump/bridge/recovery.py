"""Continuing an interrupted session from its audit record and the pump's own counter.

A resume continues exactly the session its record describes, on the pump that recorded it, or nothing:

* :func:`read_session_record` verifies the record with the audit key (an edited or forged record is
  refused; a crash may have left it without its closing records or with an incomplete last line) and
  reads what it recorded: one session id, the order (rate, volume, syringe), the pump's identity, and no
  course history (a clinical session is not continued by ``run``);
* :func:`check_order` refuses an order that is not the recorded one, naming each field;
* :func:`resume_session`, on the live pump, refuses another pump (its identity, read from it) and
  reconciles the pump's counter with the record (:func:`recover_delivered_ml`), over a window computed
  from the *recorded* rates, and acknowledges the watchdog alarm the dead run left latched (the operator's
  explicit decision to resume).

Every refusal is a :class:`RecoveryError` naming the field (``ketapump run`` exits 65).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ketapump.bridge.audit import CHAINABLE, read_records, verify
from ketapump.bridge.auditkey import AuditKey
from ketapump.bridge.loop import EventLog, InfusionPlan
from ketapump.errors import KetapumpError
from ketapump.wire import PumpDriver


class RecoveryError(KetapumpError, RuntimeError):
    """A session cannot be continued: the record, the order or the pump do not match, or the pump and
    the record disagree."""


@dataclass(frozen=True)
class SessionRecord:
    """What an interrupted session's audit record says (the authentic part of it)."""

    path: Path
    session_id: str
    #: The order as the record's ``session_started`` gave it.
    rate_ml_h: float
    volume_ml: float
    syringe_diameter_mm: float
    #: What the pump said it was when the session started (:meth:`PumpDriver.identify`).
    pump_identity: dict[str, str]
    #: The highest rate the record shows the pump was told to run at: the recovery window's rate.
    max_rate_ml_h: float
    records: list[dict[str, Any]] = field(repr=False)


def read_session_record(path: Path, *, key: AuditKey | None = None) -> SessionRecord:
    """Verifies ``path`` with the audit key and reads the session it records; raises
    :class:`RecoveryError` for a record that is not authentic or not one resumable session's."""
    try:
        result = verify(path, key=key)
    except OSError as e:
        raise RecoveryError(f"cannot read the session record {path}: {e}") from e
    if result.status not in CHAINABLE:
        raise RecoveryError(
            f"the session record {path} fails verification (line {result.bad_line}: {result.reason})"
        )
    records = read_records(path)[: result.records]
    sessions = sorted({str(r["session_id"]) for r in records if r.get("session_id")})
    if len(sessions) != 1:
        named = ", ".join(sessions) if sessions else "none"
        raise RecoveryError(f"the session record {path} must record one session; it names {named}")
    for entry in records:
        if entry.get("event") == "course_history_opened":
            raise RecoveryError(
                f"the session record {path} is a clinical session's (course database "
                f"{entry.get('course_db_id')}); `run --resume` continues only a run"
            )
        if entry.get("event") == "session_ended":
            raise RecoveryError(f"{path} records a session that ended ({entry.get('reason')})")
    started = [r for r in records if r.get("event") == "session_started"]
    if not started:
        raise RecoveryError(f"the session record {path} holds no session_started record")
    first = started[0]
    rates = [float(first["rate_ml_h"])] + [
        float(r["rate_ml_h"])
        for r in records
        if r.get("event") in {"command", "rate_changed"} and r.get("direction", "forward") != "hold"
    ]
    return SessionRecord(
        path=path,
        session_id=sessions[0],
        rate_ml_h=float(first["rate_ml_h"]),
        volume_ml=float(first["volume_ml"]),
        syringe_diameter_mm=float(first["syringe_diameter_mm"]),
        pump_identity={str(k): str(v) for k, v in dict(first.get("pump_identity") or {}).items()},
        max_rate_ml_h=max(rates),
        records=records,
    )


def check_order(recorded: SessionRecord, plan: InfusionPlan) -> None:
    """Refuses a resume whose order is not the recorded one, naming every field that differs."""
    given = {
        "rate_ml_h": plan.rate_ml_h,
        "volume_ml": plan.volume_ml,
        "syringe_diameter_mm": plan.syringe_diameter_mm,
    }
    kept = {
        "rate_ml_h": recorded.rate_ml_h,
        "volume_ml": recorded.volume_ml,
        "syringe_diameter_mm": recorded.syringe_diameter_mm,
    }
    differ = [
        f"{name} {given[name]:g} is not the recorded {kept[name]:g}"
        for name in given
        if not math.isclose(given[name], kept[name], rel_tol=1e-9, abs_tol=1e-12)
    ]
    if differ:
        raise RecoveryError(
            f"the order does not match the session record {recorded.path}: {'; '.join(differ)}"
        )


def check_pump(recorded: SessionRecord, identity: dict[str, str]) -> None:
    """Refuses a pump that is not the one the session was recorded on, naming what differs."""
    differ = [
        f"{name} {identity.get(name, '(none)')} is not the recorded {value}"
        for name, value in recorded.pump_identity.items()
        if identity.get(name) != value
    ]
    if differ:
        raise RecoveryError(f"not the pump of the session record {recorded.path}: {'; '.join(differ)}")


def recover_delivered_ml(
    records: list[dict[str, Any]],
    pump_infused_ml: float,
    pump_alarms: frozenset[str],
    *,
    rate_ml_h: float,
    slack_s: float,
) -> float:
    """The volume an interrupted session delivered, from its audit records and the pump's counter.

    The records' last telemetry summary gives the pump's counter at the session start and at that
    summary. The pump cannot have delivered less since (unless its counters were lost), nor more than
    it could at ``rate_ml_h`` (the highest rate the record commanded) during ``slack_s`` (the summary
    interval plus the watchdog period). Raises :class:`RecoveryError` when the pump and the record
    disagree.
    """
    summaries = [r for r in records if r.get("event") == "telemetry"]
    if not summaries:
        raise RecoveryError("the session record holds no telemetry summary to recover from")
    last = summaries[-1]
    if "reset" in pump_alarms:
        raise RecoveryError(
            "the pump was reset (power loss): its counters no longer match the session record"
        )
    start = float(last["pump_infused_ml_at_start"])
    recorded = float(last["pump_infused_ml"])
    if pump_infused_ml < recorded - 1e-3:
        raise RecoveryError(
            f"the pump's counter ({pump_infused_ml:.3f} mL) is below the record ({recorded:.3f} mL): "
            "not the same pump or session"
        )
    most = recorded + rate_ml_h / 3600.0 * slack_s + 0.05
    if pump_infused_ml > most:
        raise RecoveryError(
            f"the pump's counter ({pump_infused_ml:.3f} mL) exceeds what the session could have delivered "
            f"since the record ({most:.3f} mL at up to {rate_ml_h:g} mL/h)"
        )
    return (
        float(last.get("session_delivered_ml", 0.0)) - float(last["delivered_ml"]) + pump_infused_ml - start
    )


async def resume_session(
    driver: PumpDriver, recorded: SessionRecord, events: EventLog, *, summary_every_s: float
) -> float:
    """Connects to the pump, checks it is the recorded one, reconciles its counter with the record and
    returns the volume the session already delivered. Between the record's last summary and the
    watchdog's stop the pump ran at most at the highest rate the record commanded. Raises
    :class:`RecoveryError` when they disagree or the pump latched anything but the watchdog alarm."""
    await driver.connect()
    identity = await driver.identify()
    check_pump(recorded, identity)
    telemetry = await driver.read_telemetry()
    recovered = recover_delivered_ml(
        recorded.records,
        telemetry.infused_ml,
        telemetry.pump_alarms,
        rate_ml_h=recorded.max_rate_ml_h,
        slack_s=summary_every_s + 10.0,
    )
    events.info(
        "session_recovered",
        from_log=str(recorded.path),
        recovered_ml=recovered,
        pump_infused_ml=telemetry.infused_ml,
        pump_identity=identity,
        window_rate_ml_h=recorded.max_rate_ml_h,
    )
    unexpected = telemetry.pump_alarms - {"watchdog"}
    if unexpected:
        raise RecoveryError(f"the pump latched {', '.join(sorted(unexpected))}: resolve it before resuming")
    if telemetry.pump_alarms:
        # Resuming is the operator's explicit decision: it acknowledges the watchdog alarm the pump
        # latched when the previous run died, and the record says so.
        await driver.acknowledge_alarm()
        events.info("pump_alarm_acknowledged", pump_alarms=sorted(telemetry.pump_alarms), why="resume")
    return recovered


__all__ = [
    "RecoveryError",
    "SessionRecord",
    "check_order",
    "check_pump",
    "read_session_record",
    "recover_delivered_ml",
    "resume_session",
]
