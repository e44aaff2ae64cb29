"""Continuing an interrupted session from its audit record and the pump's own counter.

A session's record holds the pump's infused counter at the start and at every telemetry summary. After a
crash, :func:`recover_delivered_ml` reconstructs the delivered volume from the pump's counter and refuses
to continue when the pump and the record disagree; :func:`resume_session` does that on a live pump and
acknowledges the watchdog alarm the dead run left latched (the operator's explicit decision to resume).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ketapump.bridge.loop import EventLog
from ketapump.errors import KetapumpError
from ketapump.wire import PumpDriver


class RecoveryError(KetapumpError, RuntimeError):
    """A session cannot be continued: the pump and the session's record disagree."""


def recover_delivered_ml(
    record: Path, pump_infused_ml: float, pump_alarms: frozenset[str], *, rate_ml_h: float, slack_s: float
) -> float:
    """The volume an interrupted session delivered, from its audit record and the pump's counter.

    The record's last telemetry summary gives the pump's counter at the session start and at that
    summary. The pump cannot have delivered less since (unless its counters were lost), nor more than
    it could at ``rate_ml_h`` during ``slack_s`` (the summary interval plus the watchdog period).
    Raises :class:`RecoveryError` when the pump and the record disagree.
    """
    last: dict[str, Any] | None = None
    try:
        with record.open(encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                if entry.get("event") == "telemetry":
                    last = entry
                elif entry.get("event") == "session_ended":
                    raise RecoveryError(f"{record} records a session that ended ({entry.get('reason')})")
    except (OSError, json.JSONDecodeError) as e:
        raise RecoveryError(f"cannot read the session record {record}: {e}") from e
    if last is None:
        raise RecoveryError(f"{record} holds no telemetry summary to recover from")
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
            f"since the record ({most:.3f} mL)"
        )
    return (
        float(last.get("session_delivered_ml", 0.0)) - float(last["delivered_ml"]) + pump_infused_ml - start
    )


async def resume_session(
    driver: PumpDriver, record: Path, events: EventLog, *, max_rate_ml_h: float, summary_every_s: float
) -> float:
    """Connects to the pump, reconciles its counter with ``record`` and returns the volume the session
    already delivered. Between the record's last summary and the watchdog's stop the pump ran at most at
    ``max_rate_ml_h``. Raises :class:`RecoveryError` when they disagree or the pump latched anything but
    the watchdog alarm."""
    await driver.connect()
    telemetry = await driver.read_telemetry()
    recovered = recover_delivered_ml(
        record,
        telemetry.infused_ml,
        telemetry.pump_alarms,
        rate_ml_h=max_rate_ml_h,
        slack_s=summary_every_s + 10.0,
    )
    events.info(
        "session_recovered",
        from_log=str(record),
        recovered_ml=recovered,
        pump_infused_ml=telemetry.infused_ml,
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


__all__ = ["RecoveryError", "recover_delivered_ml", "resume_session"]
