"""Pump drivers: typed operations per pump family (see :mod:`ketapump.wire.drivers.base`)."""
