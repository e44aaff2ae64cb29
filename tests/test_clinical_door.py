"""``ketapump.clinical``'s lazy door: every name of ``__all__`` is there on first use, the very object
its module holds; importing the door loads none of the layer's modules; the names type checkers see
re-exported under ``TYPE_CHECKING`` have the same homes as the table the door resolves at run time (and
``__all__`` is built from)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import ketapump.clinical as door

DOOR_FILE = Path(door.__file__)


def _type_checking_homes() -> dict[str, tuple[str, str]]:
    """``name: (module, name in it)`` from the re-exports under ``if TYPE_CHECKING:`` in the door: an
    import of a name as itself (``X as X``: type checkers and linters cannot read a built ``__all__``),
    or, for a renamed one, ``NAME = module.NAME_IN_IT``."""
    homes: dict[str, tuple[str, str]] = {}
    for node in ast.parse(DOOR_FILE.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.Assign):
                    [target], value = statement.targets, statement.value
                    assert isinstance(target, ast.Name), ast.unparse(statement)
                    assert isinstance(value, ast.Attribute), ast.unparse(statement)
                    assert isinstance(value.value, ast.Name), ast.unparse(statement)
                    homes[target.id] = (value.value.id, value.attr)
                    continue
                assert isinstance(statement, ast.ImportFrom), ast.unparse(statement)
                for alias in statement.names:
                    assert alias.asname == alias.name, f"not re-exported: {ast.unparse(statement)}"
                    if statement.module == "ketapump.clinical":  # a module as a namespace
                        homes[alias.name] = (alias.name, "")
                    else:
                        module = statement.module
                        assert module is not None and module.startswith("ketapump.clinical.")
                        homes[alias.name] = (module.rsplit(".", 1)[1], alias.name)
    return homes


def test_the_type_checkers_names_and_the_run_time_table_name_the_same_homes() -> None:
    assert _type_checking_homes() == door._HOMES
    assert set(_type_checking_homes()) == set(door.__all__)


def test_the_door_hands_out_only_names_their_modules_make_public() -> None:
    for name, (module, attribute) in door._HOMES.items():
        home = importlib.import_module(f"ketapump.clinical.{module}")
        public = getattr(home, "__all__", [n for n in vars(home) if not n.startswith("_")])
        assert not attribute or attribute in public, f"{name}: {module}.{attribute} is not public there"


@pytest.mark.parametrize("name", door.__all__)
def test_every_name_is_its_modules_object(name: str) -> None:
    module, attribute = door._HOMES[name]
    home = importlib.import_module(f"ketapump.clinical.{module}")
    assert getattr(door, name) is (getattr(home, attribute) if attribute else home)
    assert name in dir(door)


def test_star_import_and_from_import_give_every_name() -> None:
    namespace: dict[str, object] = {}
    exec("from ketapump.clinical import *", namespace)
    assert set(door.__all__) <= set(namespace)
    from ketapump.clinical import PK_MODELS, session  # noqa: PLC0415

    assert PK_MODELS is importlib.import_module("ketapump.clinical.pk").MODELS
    assert session is importlib.import_module("ketapump.clinical.session")


def test_a_name_the_door_does_not_hand_out_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        door.NoSuchName  # noqa: B018
    with pytest.raises(ImportError, match="NoSuchName"):
        exec("from ketapump.clinical import NoSuchName", {})


def test_importing_the_door_loads_none_of_its_modules_until_a_name_is_used() -> None:
    probe = (
        "import sys, ketapump.clinical as c\n"
        "before = sorted(m for m in sys.modules if m.startswith('ketapump.clinical.'))\n"
        "c.load_library\n"
        "after = sorted(m for m in sys.modules if m.startswith('ketapump.clinical.'))\n"
        "print(before, 'ketapump.clinical.druglib' in after, 'ketapump.clinical.session' in after)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True", "False"]
