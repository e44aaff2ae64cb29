"""The package's layers point one way, each is entered through its door, and no import circle exists.

The layers, lowest first (``docs/architecture.md``)::

    floor      ketapump._core, errors, config, validation, clock, reference, data
    wire       ketapump.wire        transports, drivers, register map
    sim        ketapump.sim         the simulator's servers           ┐ siblings: neither imports
    bridge     ketapump.bridge      control loop, audit log, recovery ┘ the other
    clinical   ketapump.clinical    protocols, limits, vitals, course, session engine, report
    qa         ketapump.qa          accuracy, occlusion, campaigns, trace, pytest plugin  ┐ siblings
    console    ketapump.console     the operator console (serve, API, web pages, cards)  ┘
    cli        ketapump.cli         the command line
    top        ketapump (__init__, __main__) and ketapump.api: the public face

A module may import its own layer's modules and the *doors* (package ``__init__``, names in its
``__all__``) of lower layers; a door taken as a namespace (``from ketapump import qa``) takes the names
read from it (``qa.campaign``). Every import counts: at module level, inside functions and under
``TYPE_CHECKING``. The checker is tried on a small package that breaks each rule, so it cannot pass by
seeing nothing.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketapump.clinical.session import ACTIONS

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "python"

#: Rank of each layer; equal ranks are siblings that must not import each other.
RANKS = {
    "floor": 0,
    "wire": 1,
    "sim": 2,
    "bridge": 2,
    "clinical": 3,
    "qa": 4,
    "console": 4,
    "cli": 6,
    "top": 7,
}
FLOOR = {"_core", "errors", "config", "validation", "clock", "reference", "data"}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # module imported from (``ketapump.wire``) or imported (``ketapump.wire.regmap``)
    names: tuple[str, ...]  # names taken from ``target`` (empty for ``import target``)
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in {"__main__", "api"}:
        return "top"
    if parts[1] in FLOOR:
        return "floor"
    return parts[1]


def door_of(module: str) -> str:
    """The module other layers must import from: the layer's package, or a floor module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def attributes_read(tree: ast.AST, name: str) -> tuple[str, ...]:
    """The attributes a module reads from the name ``name`` (``qa.campaign`` reads ``campaign``)."""
    return tuple(
        sorted(
            {
                node.attr
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == name
            }
        )
    )


def imports(root: Path, package: str = "ketapump") -> Iterator[Import]:
    for path in sorted((root / package).rglob("*.py")):
        importer = module_name(path, root)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == package:
                        yield Import(importer, alias.name, (), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the importer's package
                    base = importer.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target == package:
                    # ``from ketapump import qa`` takes a layer's door as a namespace: the names it takes
                    # are those read from it (``qa.campaign``); a floor module is taken as a whole.
                    for alias in node.names:
                        if alias.name in FLOOR or layer_of(f"{package}.{alias.name}") == "top":
                            yield Import(importer, package, (alias.name,), node.lineno)
                        else:
                            taken = attributes_read(tree, alias.asname or alias.name)
                            yield Import(importer, f"{package}.{alias.name}", taken, node.lineno)
                elif target.split(".")[0] == package:
                    yield Import(importer, target, tuple(a.name for a in node.names), node.lineno)


def door_exports(root: Path, door: str) -> set[str] | None:
    """The names a door's ``__all__`` lists (``None``: it has none, so it hands out nothing)."""
    path = root.joinpath(*door.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not file.exists():
        file = path.with_suffix(".pyi")
    if not file.exists():
        return None
    for node in ast.parse(file.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            if isinstance(node.value, ast.List | ast.Tuple):
                return {ast.literal_eval(e) for e in node.value.elts}
            # Built at run time (the lazy clinical door's ``list(_HOMES)``): the door itself says.
            assert file.is_relative_to(PACKAGE_ROOT), f"{file}: __all__ is not a list of strings"
            return set(importlib.import_module(door).__all__)
    return None


def is_module(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").exists() or path.with_suffix(".pyi").exists()


def problems(root: Path, package: str = "ketapump") -> list[str]:
    found: list[str] = []
    edges: dict[str, set[str]] = {}
    for imp in imports(root, package):
        # ``from ketapump.qa import accuracy`` runs the module ketapump.qa.accuracy; ``from
        # ketapump.wire import open_transport`` runs the door ketapump.wire.
        modules = {
            f"{imp.target}.{n}" if is_module(root, f"{imp.target}.{n}") else imp.target for n in imp.names
        }
        edges.setdefault(imp.importer, set()).update(modules or {imp.target})
        if imp.target == package:  # ``from ketapump import _core``: each name is its own import
            checked = [(f"{package}.{n}", ()) for n in imp.names]
        else:
            checked = [(imp.target, imp.names)]
        for target, names in checked:
            src_layer, dst_layer = layer_of(imp.importer), layer_of(target)
            where = f"{imp.importer}:{imp.line} imports {target}"
            if src_layer == dst_layer:
                continue
            if RANKS[dst_layer] >= RANKS[src_layer]:
                direction = "a sibling" if RANKS[dst_layer] == RANKS[src_layer] else "a higher"
                found.append(f"{where}: {src_layer} must not import {direction} layer ({dst_layer})")
                continue
            door = door_of(target)
            if dst_layer == "floor":
                if target != door:
                    found.append(f"{where}: import the floor module {door} itself")
                continue
            if target != door or not names:
                found.append(f"{where}: enter the {dst_layer} layer through its door ({door})")
                continue
            exported = door_exports(root, door) or set()
            missing = [n for n in names if n not in exported]
            if missing:
                found.append(f"{where}: {door}.__all__ does not export {', '.join(missing)}")
    found += [f"import circle: {' → '.join(c)}" for c in circles(edges)]
    return found


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import circles between modules (Tarjan's strongly connected components of size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


# ----- the package ---------------------------------------------------------------------------------


def test_the_package_keeps_its_layers_and_doors() -> None:
    assert problems(PACKAGE_ROOT) == []


def test_every_layer_has_a_door_that_says_what_it_owns_and_may_import() -> None:
    for layer in ("wire", "sim", "bridge", "clinical", "qa", "console", "cli"):
        door = PACKAGE_ROOT / "ketapump" / layer / "__init__.py"
        doc = ast.get_docstring(ast.parse(door.read_text(encoding="utf-8")))
        assert doc, f"{door} has no docstring"
        assert "import" in doc, f"{door}'s docstring does not say what the layer may import"


# ----- the checker, on packages that break each rule ---------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "ketapump" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    for folder in [p for p in (root / "ketapump").rglob("*") if p.is_dir()] + [root / "ketapump"]:
        (folder / "__init__.py").touch()
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"wire/drivers.py": "from ketapump.clinical import Session\n"},
            "wire must not import a higher layer (clinical)",
            id="lower-imports-higher",
        ),
        pytest.param(
            {"wire/drivers.py": "def f():\n    from ketapump.bridge import loop\n"},
            "wire must not import a higher layer (bridge)",
            id="inside-a-function",
        ),
        pytest.param(
            {
                "errors.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n"
                    "    from ketapump.clinical.druglib import LimitFinding\n"
                )
            },
            "floor must not import a higher layer (clinical)",
            id="type-checking-only",
        ),
        pytest.param(
            {"sim/server.py": "from ketapump.bridge import ControlLoop\n"},
            "sim must not import a sibling layer (bridge)",
            id="sibling",
        ),
        pytest.param(
            {"clinical/session.py": "from ketapump.bridge.loop import ControlLoop\n"},
            "enter the bridge layer through its door (ketapump.bridge)",
            id="around-the-door",
        ),
        pytest.param(
            {
                "bridge/__init__.py": "__all__ = ['ControlLoop']\n",
                "clinical/session.py": "from ketapump.bridge import NotExported\n",
            },
            "ketapump.bridge.__all__ does not export NotExported",
            id="not-exported",
        ),
        pytest.param(
            {
                "qa/__init__.py": "__all__ = ['campaign']\n",
                "cli/qa.py": "from ketapump import qa\ndef f():\n    return qa.campaign, qa.hidden\n",
            },
            "ketapump.qa.__all__ does not export hidden",
            id="door-as-namespace-not-exported",
        ),
        pytest.param(
            {"wire/drivers.py": "from ketapump import clinical\nclinical.Session\n"},
            "wire must not import a higher layer (clinical)",
            id="higher-door-as-namespace",
        ),
        pytest.param(
            {
                "clinical/a.py": "from ketapump.clinical import b\n",
                "clinical/b.py": "from ketapump.clinical.a import x\n",
            },
            "import circle: ketapump.clinical.a → ketapump.clinical.b",
            id="circle",
        ),
    ],
)
def test_the_checker_names_each_broken_rule(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    found = problems(write_package(tmp_path, files))
    assert any(expected in p for p in found), found


def test_the_checker_accepts_imports_through_doors(tmp_path: Path) -> None:
    root = write_package(
        tmp_path,
        {
            "wire/__init__.py": "from ketapump.wire.drivers import Driver\n__all__ = ['Driver']\n",
            "wire/drivers.py": "from ketapump.errors import E\nclass Driver: ...\n",
            "errors.py": "class E(Exception): ...\n",
            "bridge/loop.py": "from ketapump.wire import Driver\nfrom ketapump import _core\n",
            "bridge/recovery.py": "from ketapump import wire\ndef f():\n    return wire.Driver\n",
        },
    )
    assert problems(root) == []


# ----- docs/architecture.md matches the code --------------------------------------------------------


def test_the_architecture_page_names_every_layer_and_only_files_that_exist() -> None:
    repo = PACKAGE_ROOT.parent
    text = (repo / "docs" / "architecture.md").read_text(encoding="utf-8")
    for layer in ("wire", "sim", "bridge", "clinical", "qa", "console", "cli"):
        assert f"ketapump.{layer}" in text, layer
    named = set(re.findall(r"`([\w./-]+\.(?:py|toml|rs|md))`", text))
    assert len(named) > 10
    missing = [
        path
        for path in named
        if not any(
            (base / path).exists()
            for base in (repo, PACKAGE_ROOT / "ketapump", repo / "rust" / "core" / "src")
        )
    ]
    assert missing == []
    # The engine's commands as the page lists them are the engine's commands.

    for action in (*ACTIONS, "answer"):
        assert action in text


# ----- what a command loads at start-up -------------------------------------------------------------


def test_the_command_line_loads_no_plotting_library_until_a_plot_is_drawn() -> None:
    """matplotlib is most of a command's start-up and most commands draw nothing: the report and the
    course outcomes import it where they draw (in a fresh interpreter, as ``ketapump`` starts)."""
    probe = (
        "import importlib, sys; from ketapump.cli import COMMAND_MODULES\n"
        "for home in set(COMMAND_MODULES.values()): importlib.import_module(home)\n"
        "print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
