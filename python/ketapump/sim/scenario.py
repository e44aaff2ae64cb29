"""Simulator scenario files (TOML): the pump's build and a schedule of faults.

::

    schema_version = 1

    [pump]
    syringe = "bd-plastipak-50"
    seed = 7
    slack_taken_up = false

    [[fault]]
    at_s = 600.0              # pump time
    name = "fault_occlusion"  # a register of the fault block (docs/register-map.md)
    value = 1

Every problem is reported at once, each with its dotted path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ketapump import _core
from ketapump.validation import DocumentError, read_document
from ketapump.wire import load_register_map


class PumpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    syringe: str = "bd-plastipak-50"
    seed: int = Field(default=0, ge=0)
    serial: int = Field(default=1, ge=0, le=2**31 - 1)
    slack_taken_up: bool = False
    fill_ml: float | None = Field(default=None, gt=0)
    compliance_ml_per_mmhg: float | None = Field(default=None, gt=0)
    resistance_mmhg_s_per_ml: float | None = Field(default=None, gt=0)
    balance_noise_g: float | None = Field(default=None, ge=0)

    @field_validator("syringe")
    @classmethod
    def _known_syringe(cls, name: str) -> str:
        known = _core.SimPump.syringes()
        if name not in known:
            raise ValueError(f"unknown syringe {name!r}; one of {', '.join(known)}")
        return name


class FaultEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0, allow_inf_nan=False)
    name: str
    value: float = Field(allow_inf_nan=False)

    @field_validator("name")
    @classmethod
    def _fault_register(cls, name: str) -> str:
        faults = [r.name for r in load_register_map().block("fault")]
        if name not in faults:
            raise ValueError(f"unknown fault {name!r}; one of {', '.join(faults)}")
        return name


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1]
    pump: PumpSettings = PumpSettings()
    fault: list[FaultEvent] = []

    def build_pump(self) -> _core.SimPump:
        """A simulated pump with this build and its faults scheduled."""
        p = self.pump
        pump = _core.SimPump(
            p.syringe,
            seed=p.seed,
            serial=p.serial,
            slack_taken_up=p.slack_taken_up,
            fill_ml=p.fill_ml,
            compliance_ml_per_mmhg=p.compliance_ml_per_mmhg,
            resistance_mmhg_s_per_ml=p.resistance_mmhg_s_per_ml,
            balance_noise_g=p.balance_noise_g,
        )
        for event in self.fault:
            pump.schedule(event.at_s, event.name, event.value)
        return pump


class ScenarioError(DocumentError):
    """A scenario file could not be used; ``problems`` lists every problem as ``path: message``."""

    kind = "scenario"


def load_scenario(path: Path) -> Scenario:
    """Reads and validates a scenario file; raises :class:`ScenarioError` listing every problem."""
    return read_document(Scenario, path, ScenarioError)
