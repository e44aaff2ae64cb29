"""Transports chosen by URL.

======================================================  ==========================================
``sim://?syringe=bd-plastipak-50&seed=0``                the simulated pump, in-process
``modbus-tcp://HOST:PORT?unit=1&map=PATH``               Modbus TCP
``modbus-rtu://PATH?baud=19200&parity=N&unit=1&map=P``   Modbus RTU (PATH: a device or pyserial URL)
``nesp://PATH?address=0&baud=19200&safe=5``              New Era ASCII, basic (safe=0) or safe mode
``harvard://PATH?address=0&baud=115200``                 Harvard Apparatus Pump 11 Elite / PHD ULTRA
======================================================  ==========================================

A Modbus URL's ``map`` is a bring-your-own register map (docs/register-map.md): it is read and checked
when the transport is built (every problem listed), and its ``unit_id`` is the default ``unit``.
Every URL may also carry ``timeout`` (seconds per attempt) and ``retries``. An unknown scheme, an
unknown parameter or a malformed value fails at once with a message listing the valid forms.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl

from ketapump import _core
from ketapump.clock import Clock, ScaledClock
from ketapump.errors import ConfigurationError
from ketapump.wire.regmap import read_register_map
from ketapump.wire.transports.base import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, RegisterTransport, Transport
from ketapump.wire.transports.harvard import DEFAULT_BAUD as HARVARD_BAUD
from ketapump.wire.transports.harvard import HarvardTransport
from ketapump.wire.transports.modbus import ModbusTcpTransport
from ketapump.wire.transports.nesp import NespTransport
from ketapump.wire.transports.rtu import ModbusRtuTransport
from ketapump.wire.transports.sim import SimTransport

VALID_FORMS = (
    "sim://?syringe=bd-plastipak-50&seed=0",
    "modbus-tcp://HOST:PORT?unit=1&map=PATH",
    "modbus-rtu://PATH?baud=19200&parity=N&unit=1&map=PATH",
    "nesp://PATH?address=0&baud=19200&safe=5",
    "harvard://PATH?address=0&baud=115200",
)
COMMON = {"timeout", "retries"}
KEYS = {
    "sim": {"syringe", "seed", "slack_taken_up"} | COMMON,
    "modbus-tcp": {"unit", "map"} | COMMON,
    "modbus-rtu": {"baud", "parity", "unit", "map"} | COMMON,
    "nesp": {"address", "baud", "safe"} | COMMON,
    "harvard": {"address", "baud"} | COMMON,
}


def _bad(url: str, why: str) -> ConfigurationError:
    return ConfigurationError("pump", f"URL {url!r} {why}; valid forms: {', '.join(VALID_FORMS)}")


def split_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``scheme://rest?query`` → (scheme, rest, params); PATH may itself contain ``://``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in KEYS:
        raise _bad(url, f"has an unknown scheme {scheme!r}" if sep else "is not a URL")
    target, _, query = rest.rpartition("?") if "?" in rest else (rest, "", "")
    params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    unknown = sorted(set(params) - KEYS[scheme])
    if unknown:
        raise _bad(url, f"has unknown parameter(s) {', '.join(unknown)}")
    return scheme, target, params


#: Accepted ranges of the numeric URL parameters.
RANGES: dict[str, tuple[float, float]] = {
    "timeout": (1e-3, 60.0),
    "retries": (0, 10),
    "unit": (1, 247),  # 0 is broadcast: a pump never answers it
    "address": (0, 99),
    "baud": (300, 4_000_000),
    "seed": (0, 2**63),
}


def _number(url: str, params: dict[str, str], key: str, default: float, kind: type = int) -> float:
    if key not in params:
        return default
    try:
        value = kind(params[key])
    except ValueError:
        raise _bad(url, f"has a malformed {key}={params[key]!r}") from None
    low, high = RANGES[key]
    if not (math.isfinite(value) and low <= value <= high):
        raise _bad(url, f"has {key}={params[key]!r} outside [{low:g}, {high:g}]")
    return float(value) if kind is float else value


def open_transport(url: str, *, clock: Clock | None = None, pump: _core.SimPump | None = None) -> Transport:
    """Builds the transport for ``url`` (not yet connected).

    ``clock`` and ``pump`` serve ``sim://``: the clock the simulated pump follows (default: real time)
    and an existing simulated pump (default: a new one built from the URL's parameters).
    """
    scheme, target, params = split_url(url)
    timeout_s = float(_number(url, params, "timeout", DEFAULT_TIMEOUT_S, float))
    retries = int(_number(url, params, "retries", DEFAULT_RETRIES))
    if scheme == "sim":
        if pump is None:
            pump = _core.SimPump(
                params.get("syringe", "bd-plastipak-50"),
                seed=int(_number(url, params, "seed", 0)),
                slack_taken_up=params.get("slack_taken_up", "false").lower() in {"1", "true", "yes"},
            )
        return SimTransport(url, pump, clock or ScaledClock(), timeout_s=timeout_s, retries=retries)
    if scheme == "harvard":
        if not target:
            raise _bad(url, "needs a device path")
        return HarvardTransport(
            url,
            path=target,
            address=int(_number(url, params, "address", 0)),
            baud=int(_number(url, params, "baud", HARVARD_BAUD)),
            timeout_s=timeout_s,
            retries=retries,
        )
    regmap = read_register_map(params["map"]) if params.get("map") else None
    if "map" in params and regmap is None:
        raise _bad(url, "has an empty map")
    default_unit = regmap.unit_id if regmap is not None else 1
    transport: RegisterTransport
    if scheme == "modbus-tcp":
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port:
            raise _bad(url, "needs HOST:PORT")
        if not port.isdigit():
            raise _bad(url, f"has a malformed port {port!r} (a number from 1 to 65535)")
        if not 0 < int(port) < 65536:
            raise _bad(url, f"has port {int(port)}, outside [1, 65535]")
        unit = int(_number(url, params, "unit", default_unit))
        transport = ModbusTcpTransport(
            url, host=host, port=int(port), unit=unit, timeout_s=timeout_s, retries=retries
        )
        transport.register_map = regmap
        return transport
    if scheme == "modbus-rtu":
        if not target:
            raise _bad(url, "needs a device path")
        parity = params.get("parity", "N").upper()
        if parity not in {"N", "E", "O"}:
            raise _bad(url, f"has a malformed parity={parity!r}")
        transport = ModbusRtuTransport(
            url,
            path=target,
            baud=int(_number(url, params, "baud", 19_200)),
            parity=parity,
            unit=int(_number(url, params, "unit", default_unit)),
            timeout_s=timeout_s,
            retries=retries,
        )
        transport.register_map = regmap
        return transport
    return NespTransport.from_url(url, target, params, timeout_s=timeout_s, retries=retries)
