"""The QA layer: the tests a QA engineer runs on a pump, simulated or real.

Owns the IEC 60601-2-24 style accuracy test (:mod:`~ketapump.qa.accuracy`, with the trumpet analysis in
:mod:`~ketapump.qa.trumpet` and laboratory balances in :mod:`~ketapump.qa.balance`), the occlusion test
(:mod:`~ketapump.qa.occlusion`), seeded fault campaigns (:mod:`~ketapump.qa.campaign`), the hazard
register's traceability check (:mod:`~ketapump.qa.trace`), running a test on a pump URL
(:mod:`~ketapump.qa.rig`) and the pytest plugin (:mod:`~ketapump.qa.pytest_plugin`). It may import the
clinical, bridge, simulator and wire layers and the floor. Each test method is a module of its own, and
this door hands out those modules (``from ketapump.qa import accuracy``, or ``qa.accuracy`` after
``from ketapump import qa``), each loaded when first imported or read (PEP 562): the pytest plugin must
cost nothing until one of its fixtures is used, and a command loads only the test it runs. Type checkers
see the modules under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

    from ketapump.qa import accuracy, balance, campaign, occlusion, rig, trace, trumpet


def __getattr__(name: str) -> ModuleType:
    """Imports a module of ``__all__`` on first read (the import keeps it here as an attribute)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


__all__ = ["accuracy", "balance", "campaign", "occlusion", "rig", "trace", "trumpet"]
