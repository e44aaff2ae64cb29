"""The public Python API (docs/api.md): open a pump, read it, run a kernel-guarded infusion, run a
protocol session, simulate a pump. The package root (:mod:`ketapump`) exports these names lazily; this
layer sits at the top beside the CLI's face and holds no logic of its own beyond adapting the layers
below (the control loop is the bridge's, the session engine the clinical layer's).
"""

from ketapump.api.infusion import InfusionResult, InfusionTick, infuse, infuse_async
from ketapump.api.pump import (
    AsyncPump,
    Pump,
    PumpInfo,
    open_pump,
    open_pump_async,
    simulate,
    simulate_async,
)
from ketapump.api.session import Session, init_course

__all__ = [
    "AsyncPump",
    "InfusionResult",
    "InfusionTick",
    "Pump",
    "PumpInfo",
    "Session",
    "infuse",
    "infuse_async",
    "init_course",
    "open_pump",
    "open_pump_async",
    "simulate",
    "simulate_async",
]
