"""The hazard register is complete: every hazard controlled, every control required, every
requirement tested by a test that exists (and passes, since CI runs them all)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ketapump.qa.trace import Register, check, load, matrix, resolves
from simhelpers import ketapump

ROOT = Path(__file__).resolve().parent.parent
REGISTER = ROOT / "python" / "ketapump" / "data" / "hazards.toml"  # shipped: ketapump/data/hazards.toml


def trace_cli(register: Path) -> subprocess.CompletedProcess[str]:
    return ketapump("qa", "trace", "--register", str(register), "--root", str(ROOT), timeout=60)


def test_the_shipped_register_has_no_broken_link() -> None:
    register = load()  # the shipped one, as package data
    assert register == load(REGISTER)
    assert check(register, ROOT) == []
    assert len(register.hazards) >= 10
    assert {h for h, *_ in matrix(register)} == set(register.hazards)


def test_a_broken_register_is_caught_link_by_link() -> None:
    broken = Register(
        hazards={"H-A": {"controls": []}, "H-B": {"controls": ["C-X", "C-GHOST"]}},
        controls={"C-X": {"requirements": ["R-1", "R-2"]}, "C-Y": {"requirements": []}},
        requirements={
            "R-1": {"tests": []},
            "R-2": {"tests": ["tests/test_traceability.py::test_that_does_not_exist", "nowhere.rs::x"]},
        },
    )
    assert sorted(check(broken, ROOT)) == sorted(
        [
            "hazard H-A has no risk control",
            "hazard H-B names unknown control C-GHOST",
            "control C-X names unknown requirement R-2".replace("R-2", "R-2")
            if False
            else "control C-Y has no requirement",
            "requirement R-1 names no test",
            "requirement R-2 names missing test tests/test_traceability.py::test_that_does_not_exist",
            "requirement R-2 names missing test nowhere.rs::x",
            "control C-Y controls no hazard",
        ]
    )


def test_test_ids_resolve_in_python_and_rust() -> None:
    assert resolves(ROOT, "tests/test_traceability.py::test_the_shipped_register_has_no_broken_link")
    assert resolves(ROOT, "rust/core/tests/kernel.rs::overdose_alarm")
    assert not resolves(ROOT, "rust/core/tests/kernel.rs::running")  # a helper, not a #[test]
    assert not resolves(ROOT, "tests/test_traceability.py")


def test_qa_trace_prints_the_matrix_and_fails_on_a_broken_register(tmp_path: Path) -> None:
    ok = trace_cli(REGISTER)
    assert ok.returncode == 0, ok.stderr
    assert "H-OVERDOSE" in ok.stdout and "R-S3" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('schema_version = 1\n[[hazard]]\nid = "H-X"\ntitle = "x"\ncauses = []\ncontrols = []\n')
    broken = trace_cli(bad)
    assert broken.returncode == os.EX_DATAERR
    assert "hazard H-X has no risk control" in broken.stderr
