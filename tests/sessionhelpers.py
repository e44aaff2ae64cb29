"""Helpers for tests that run clinical sessions: the audit records in memory, a protocol file with a
short observation."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any


class AuditRecords:
    """The session's audit records in memory, as the engine writes them (the audit writer has its own
    tests)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.records.append({"event": event, **fields})

    warning = error = info

    def named(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == event]


def short_observation_protocol(folder: Path, minutes: float = 5.0) -> Path:
    """The shipped standard protocol as a file whose observation lasts at least ``minutes`` instead of
    30 (a CLI session that must reach its end in seconds)."""
    shipped = resources.files("ketapump.data").joinpath("protocols", "ketamine-depression.toml")
    path = folder / "short-observation.toml"
    path.write_text(
        shipped.read_text(encoding="utf-8").replace("min_minutes = 30.0", f"min_minutes = {minutes:g}"),
        encoding="utf-8",
    )
    return path
