"""Shared fixtures: kernel settings from the shipped defaults."""

from __future__ import annotations

from typing import Any

import pytest

from ketapump.config import default_kernel_settings


@pytest.fixture
def settings() -> dict[str, Any]:
    """The shipped default kernel settings (a fresh copy per test)."""
    return default_kernel_settings()
