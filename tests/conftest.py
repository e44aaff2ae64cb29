"""Shared fixtures: kernel settings from the shipped defaults; an audit key of the test run's own."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest

from ketapump.bridge.auditkey import KEY_FILE_ENV
from ketapump.config import default_kernel_settings

# Every audit log a test writes, in this process or in a `ketapump` subprocess (which inherits the
# environment), is keyed with this run's own key, never the key of the user running the tests.
os.environ[KEY_FILE_ENV] = os.path.join(tempfile.mkdtemp(prefix="ketapump-test-key-"), "audit.key")


@pytest.fixture
def settings() -> dict[str, Any]:
    """The shipped default kernel settings (a fresh copy per test)."""
    return default_kernel_settings()
