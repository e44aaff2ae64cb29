"""Shared fixtures: kernel settings from the shipped defaults; an audit key of the test run's own; one
bytecode cache for the run's subprocesses."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any

import pytest

from ketapump.bridge.auditkey import KEY_FILE_ENV
from ketapump.config import default_kernel_settings

# Every audit log a test writes, in this process or in a `ketapump` subprocess (which inherits the
# environment), is keyed with this run's own key, never the key of the user running the tests.
os.environ[KEY_FILE_ENV] = os.path.join(tempfile.mkdtemp(prefix="ketapump-test-key-"), "audit.key")

# The suite starts hundreds of `ketapump` subprocesses. With PYTHONDONTWRITEBYTECODE set (as on the
# project's machines) each of them compiled the whole package again (0.5 s idle, seconds under load);
# they now share one bytecode cache in a folder of this run's own, and nothing is written into the tree.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ["PYTHONPYCACHEPREFIX"] = _PYCACHE = tempfile.mkdtemp(prefix="ketapump-test-pycache-")
atexit.register(shutil.rmtree, _PYCACHE, ignore_errors=True)


@pytest.fixture
def settings() -> dict[str, Any]:
    """The shipped default kernel settings (a fresh copy per test)."""
    return default_kernel_settings()
