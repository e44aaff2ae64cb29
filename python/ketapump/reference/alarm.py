"""Mirror of ``alarm.rs``: the latched alarm set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ketapump.reference.f64 import ALARMS

_ALARM_BIT: Final = {name: 1 << code for code, name in enumerate(ALARMS)}


@dataclass
class AlarmSet:
    """A set of alarms as bits (``1 << code``), iterated in code order."""

    bits: int = 0

    def insert(self, alarm: str) -> None:
        self.bits |= _ALARM_BIT[alarm]

    def contains(self, alarm: str) -> bool:
        return self.bits & _ALARM_BIT[alarm] != 0

    def is_empty(self) -> bool:
        return self.bits == 0

    def union(self, other: AlarmSet) -> AlarmSet:
        return AlarmSet(self.bits | other.bits)

    def difference(self, other: AlarmSet) -> AlarmSet:
        """Members of ``self`` not in ``other``."""
        return AlarmSet(self.bits & ~other.bits)

    def names(self) -> tuple[str, ...]:
        return tuple(name for name in ALARMS if self.contains(name))
