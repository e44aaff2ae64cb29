"""The safety case as data: the hazard register (``ketapump/data/hazards.toml``, shipped with the
package) and its check.

Every hazard needs at least one risk control, every control at least one requirement, every
requirement at least one test, and every test id must name a test that exists: a pytest function
(``tests/test_x.py::test_name``) or a cargo test (``crate/tests/x.rs::name``, a ``#[test] fn``).
CI runs every test, so on a green main an existing test id is a passing one. The tests live in the
repository, not in the package: where no checkout is found, the test ids cannot be checked.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

#: The shipped register: ``ketapump/data/hazards.toml``.
SHIPPED_PACKAGE, SHIPPED_NAME = "ketapump.data", "hazards.toml"


@dataclass(frozen=True)
class Register:
    hazards: dict[str, dict[str, object]]
    controls: dict[str, dict[str, object]]
    requirements: dict[str, dict[str, object]]


def load(path: Path | None = None) -> Register:
    """The register in ``path``, or the shipped one."""
    source = resources.files(SHIPPED_PACKAGE).joinpath(SHIPPED_NAME) if path is None else path
    document = tomllib.loads(source.read_text(encoding="utf-8"))

    def by_id(kind: str) -> dict[str, dict[str, object]]:
        return {str(entry["id"]): entry for entry in document.get(kind, [])}

    return Register(by_id("hazard"), by_id("control"), by_id("requirement"))


def resolves(root: Path, test_id: str) -> bool:
    """Whether ``file::name`` names a pytest function or a ``#[test]`` cargo test under ``root``."""
    file, sep, name = test_id.partition("::")
    path = root / file
    if not sep or not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
                   for node in ast.parse(text).body)  # fmt: skip
    return re.search(rf"#\[test\]\s*(?:#\[[^\]]*\]\s*)*fn\s+{re.escape(name)}\s*\(", text) is not None


def repository_root(candidates: Iterable[Path]) -> Path | None:
    """The first candidate that is a ketapump checkout (``pyproject.toml`` and ``tests/``): where the
    register's test ids resolve."""
    for root in candidates:
        if (root / "pyproject.toml").is_file() and (root / "tests").is_dir():
            return root
    return None


def default_root() -> Path | None:
    """Where the test ids are checked by default: the checkout this package runs from (an editable
    install: ``<checkout>/python/ketapump/qa/trace.py``), else the current directory if it is one."""
    return repository_root([Path(__file__).resolve().parents[3], Path.cwd()])


def check(register: Register, root: Path | None) -> list[str]:
    """Every broken link of the chain, as readable problems (empty when the chain is complete). With
    no ``root`` (no checkout at hand) every link is checked except whether the named tests exist."""
    problems: list[str] = []
    for hid, hazard in register.hazards.items():
        controls = list(hazard.get("controls", []))  # type: ignore[call-overload]
        if not controls:
            problems.append(f"hazard {hid} has no risk control")
        problems += [
            f"hazard {hid} names unknown control {c}" for c in controls if c not in register.controls
        ]
    for cid, control in register.controls.items():
        requirements = list(control.get("requirements", []))  # type: ignore[call-overload]
        if not requirements:
            problems.append(f"control {cid} has no requirement")
        problems += [
            f"control {cid} names unknown requirement {r}"
            for r in requirements
            if r not in register.requirements
        ]
    for rid, requirement in register.requirements.items():
        tests = list(requirement.get("tests", []))  # type: ignore[call-overload]
        if not tests:
            problems.append(f"requirement {rid} names no test")
        if root is not None:
            problems += [f"requirement {rid} names missing test {t}" for t in tests if not resolves(root, t)]
    used = {c for h in register.hazards.values() for c in h.get("controls", [])}  # type: ignore[attr-defined]
    problems += [f"control {c} controls no hazard" for c in register.controls if c not in used]
    return problems


def matrix(register: Register) -> list[tuple[str, str, str, str]]:
    """(hazard, control, requirement, test) rows of the chain."""
    rows = []
    for hid, hazard in register.hazards.items():
        for cid in hazard.get("controls", []):  # type: ignore[attr-defined]
            for rid in register.controls.get(cid, {}).get("requirements", []):  # type: ignore[attr-defined]
                for test in register.requirements.get(rid, {}).get("tests", []):  # type: ignore[attr-defined]
                    rows.append((hid, cid, rid, test))
    return rows
