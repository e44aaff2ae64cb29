"""Who holds the infusion paused, and what may release each hold (S7: automation never overrides an
operator's action).

The pump is held by a set of holders; it runs only while the set is empty. Each holder is released
only by its own rule:

- ``operator``: an operator's pause. **Sticky**: only an operator's resume releases it, whatever the
  vitals do meanwhile.
- ``vitals``: a vitals condition (a crossing past its delay, a stale feed). Released by an operator's
  resume once every condition has cleared, or, when the protocol says ``resume = "auto"``, by the
  session once every condition has stayed clear for ``resume_after_s``. An active condition refuses
  an operator's resume (the operator's own pause, if any, stays too).
- ``limit``: the infusion reached the protocol's maximum duration. Released only by the answer to the
  session's question (continue, or stop).
- ``syringe``: a syringe of a dose of several is spent. Released only once the operator has loaded
  the next one (the session's question) and the kernel has taken the change.

Both pause kinds can be held at once; the record names every holder at every moment.

::

    holders (⊆ {operator, vitals, limit}); the kernel is paused on {} → non-empty, resumed on → {}

    {}  ── operator_pause ──▶ {operator}          {}  ── vitals(active) ──▶ {vitals}
    {vitals} ── operator_pause ──▶ {operator, vitals} ◀── vitals(active) ── {operator}

    {operator}         ── operator_resume ──▶ {}                 refused while a condition is active
    {vitals}           ── operator_resume ──▶ {}                 (both: nothing released)
    {operator, vitals} ── operator_resume ──▶ {}
    {vitals}           ── vitals(clear ≥ resume_after_s), "auto" ──▶ {}
    {operator, vitals} ── vitals(clear ≥ resume_after_s), "auto" ──▶ {operator}   (never further)
    S ── limit_hold ──▶ S ∪ {limit}           S ── limit_release ──▶ S − {limit}
    S ── syringe_hold ──▶ S ∪ {syringe}       S ── syringe_release ──▶ S − {syringe}

    refused: operator_pause while the operator holds; operator_resume with nothing an operator can
    release (no hold, or only the limit's).

Pure: no clock, no I/O; the session hands it ``now_s`` and relays the kernel command it returns.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final, Literal

Holder = Literal["operator", "vitals", "limit", "syringe"]
OPERATOR: Final = "operator"
VITALS: Final = "vitals"
LIMIT: Final = "limit"
SYRINGE: Final = "syringe"
#: The order holders are listed in.
HOLDERS: Final[tuple[Holder, ...]] = (OPERATOR, VITALS, LIMIT, SYRINGE)
ResumePolicy = Literal["clinician", "auto"]


@dataclass(frozen=True)
class Change:
    """What one transition did: ``accepted`` (or ``why`` not), the holder ``added`` and those
    ``released``, the kernel command to relay (``pause`` on the first holder, ``resume`` when the last
    one goes) and the holders ``left``."""

    accepted: bool
    why: str = ""
    added: Holder | None = None
    released: tuple[Holder, ...] = ()
    kernel: Literal["pause", "resume"] | None = None
    left: tuple[Holder, ...] = ()


@functools.cache
def _unchanged(left: tuple[Holder, ...]) -> Change:
    """An accepted change that changed nothing, the holders being ``left``: built once for each set of
    holders (a change is frozen), as :meth:`Holds.vitals` gives one at nearly every control tick."""
    return Change(True, left=left)


class Holds:
    """The holders of one infusion (see the module docstring)."""

    def __init__(self, resume: ResumePolicy, resume_after_s: float) -> None:
        if resume not in ("clinician", "auto"):
            raise ValueError(f"resume is 'clinician' or 'auto', not {resume!r}")
        if not resume_after_s >= 0.0:
            raise ValueError(f"resume_after_s must be ≥ 0, not {resume_after_s!r}")
        self.resume = resume
        self.resume_after_s = resume_after_s
        self._held: set[Holder] = set()
        #: :attr:`holders`, kept as the holds change (it is read at every control tick).
        self._holders: tuple[Holder, ...] = ()
        #: Since when every vitals condition has been clear, while the vitals hold the pump.
        self.clear_since_s: float | None = None

    @property
    def holders(self) -> tuple[Holder, ...]:
        """Who holds the pump, in :data:`HOLDERS` order (empty: it may run)."""
        return self._holders

    def _set_holders(self) -> None:
        """Recompute :attr:`holders` from the held set (after every change to it)."""
        self._holders = tuple(h for h in HOLDERS if h in self._held)

    def _add(self, holder: Holder) -> Change:
        was_free = not self._held
        self._held.add(holder)
        self._set_holders()
        return Change(True, added=holder, kernel="pause" if was_free else None, left=self.holders)

    def _release(self, holders: tuple[Holder, ...], why: str = "") -> Change:
        released = tuple(h for h in HOLDERS if h in holders and h in self._held)
        self._held -= set(released)
        self._set_holders()
        if VITALS in released:
            self.clear_since_s = None
        kernel: Literal["resume"] | None = "resume" if released and not self._held else None
        return Change(True, why, released=released, kernel=kernel, left=self.holders)

    def operator_pause(self) -> Change:
        """An operator pauses: held until an operator resumes."""
        if OPERATOR in self._held:
            return Change(False, "already paused by the operator", left=self.holders)
        return self._add(OPERATOR)

    def operator_resume(self, *, vitals_active: bool, active_detail: str = "") -> Change:
        """An operator resumes: releases the operator's pause and a vitals pause whose conditions have
        all cleared. Refused while a vitals condition is active, and when no hold is the operator's to
        release. A limit hold stays (the pump stays held, and ``why`` says so)."""
        if vitals_active:
            detail = f": {active_detail}" if active_detail else ""
            return Change(False, f"vitals alarm active{detail}", left=self.holders)
        if not self._held & {OPERATOR, VITALS}:
            why = "not paused"
            if LIMIT in self._held:
                why = "held at the maximum duration: answer its question"
            elif SYRINGE in self._held:
                why = "held for a syringe change: load the next syringe and answer its question"
            return Change(False, why, left=self.holders)
        change = self._release((OPERATOR, VITALS))
        if change.left:
            return Change(True, "still held by " + " and ".join(change.left), released=change.released,
                          left=change.left)  # fmt: skip
        return change

    def vitals(self, *, active: bool, now_s: float) -> Change:
        """The vitals gate at ``now_s``: an active condition holds the pump (and restarts the clear
        time); under ``auto``, conditions clear for ``resume_after_s`` release the vitals' hold, and only
        it."""
        if active:
            self.clear_since_s = None
            return self._add(VITALS) if VITALS not in self._held else _unchanged(self.holders)
        if VITALS not in self._held:
            return _unchanged(self.holders)
        if self.clear_since_s is None:
            self.clear_since_s = now_s
        if self.resume == "auto" and now_s - self.clear_since_s >= self.resume_after_s:
            return self._release((VITALS,))
        return _unchanged(self.holders)

    def limit_hold(self) -> Change:
        """The maximum duration is reached: held until its question is answered."""
        if LIMIT in self._held:
            return Change(False, "already held at the maximum duration", left=self.holders)
        return self._add(LIMIT)

    def limit_release(self) -> Change:
        """The maximum duration's question was answered with "continue"."""
        if LIMIT not in self._held:
            return Change(False, "not held at the maximum duration", left=self.holders)
        return self._release((LIMIT,))

    def syringe_hold(self) -> Change:
        """A syringe of the dose is spent: held until the next one is loaded."""
        if SYRINGE in self._held:
            return Change(False, "already held for a syringe change", left=self.holders)
        return self._add(SYRINGE)

    def syringe_release(self) -> Change:
        """The next syringe is in (and its change taken by the kernel)."""
        if SYRINGE not in self._held:
            return Change(False, "not held for a syringe change", left=self.holders)
        return self._release((SYRINGE,))


__all__ = [
    "HOLDERS",
    "LIMIT",
    "OPERATOR",
    "SYRINGE",
    "VITALS",
    "Change",
    "Holder",
    "Holds",
    "ResumePolicy",
]
