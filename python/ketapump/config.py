"""Kernel settings: the shipped defaults (a data file) plus overrides, validated by the Rust core."""

from __future__ import annotations

from functools import cache
from typing import Any

from ketapump import _core
from ketapump.errors import ConfigurationError
from ketapump.validation import shipped_settings

DEFAULTS_RESOURCE = "kernel_defaults.toml"


@cache
def _load_defaults() -> tuple[tuple[str, Any], ...]:
    return tuple(shipped_settings(DEFAULTS_RESOURCE).items())


def default_kernel_settings() -> dict[str, Any]:
    """Every kernel setting with its shipped default, as a flat dict (a fresh copy)."""
    return dict(_load_defaults())


def kernel_config(**overrides: Any) -> _core.KernelConfig:
    """Builds a validated :class:`ketapump._core.KernelConfig` from the defaults and ``overrides``.

    Raises :class:`~ketapump.errors.ConfigurationError` naming the field for an unknown setting or a
    value the core refuses.
    """
    settings = default_kernel_settings()
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ConfigurationError(unknown[0], "is not a kernel setting")
    settings.update(overrides)
    return _core.KernelConfig(**settings)
