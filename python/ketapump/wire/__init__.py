"""The wire layer: everything that talks to a pump, and nothing that decides what to tell it.

Owns the transports chosen by URL (``sim://``, ``modbus-tcp://``, ``modbus-rtu://``, ``nesp://``,
``harvard://``; their base class owns timeouts, retries and error mapping), the pump drivers that turn
registers or ASCII commands into typed operations with units in their names, and the register map both
the simulator and the reference driver read. It may import only the floor (``ketapump._core``,
``errors``, ``config``, ``validation``, ``clock``). Other layers import it through this module.
"""

from ketapump.wire.budget import LogBudget
from ketapump.wire.drivers.base import PumpDriver, PumpTelemetry
from ketapump.wire.drivers.harvard import HarvardDriver
from ketapump.wire.drivers.nesp import NewEraDriver
from ketapump.wire.drivers.reference import ReferencePumpDriver
from ketapump.wire.regmap import (
    TCP_IDLE_TIMEOUT_S,
    TCP_MAX_UNREAD_BYTES,
    RegisterMap,
    RegisterMapError,
    load_register_map,
    parse_register_map,
    read_register_map,
    render_markdown,
)
from ketapump.wire.transports import open_transport, split_url
from ketapump.wire.transports.base import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    CommandTransport,
    PumpRefusedError,
    RegisterTransport,
    Transport,
)
from ketapump.wire.transports.harvard import HarvardTransport
from ketapump.wire.transports.modbus import ModbusTcpTransport
from ketapump.wire.transports.nesp import NespTransport
from ketapump.wire.transports.rtu import ModbusRtuTransport
from ketapump.wire.transports.sim import SimTransport

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "TCP_IDLE_TIMEOUT_S",
    "TCP_MAX_UNREAD_BYTES",
    "CommandTransport",
    "HarvardDriver",
    "HarvardTransport",
    "LogBudget",
    "ModbusRtuTransport",
    "ModbusTcpTransport",
    "NespTransport",
    "NewEraDriver",
    "PumpDriver",
    "PumpRefusedError",
    "PumpTelemetry",
    "ReferencePumpDriver",
    "RegisterMap",
    "RegisterMapError",
    "RegisterTransport",
    "SimTransport",
    "Transport",
    "load_register_map",
    "open_transport",
    "parse_register_map",
    "read_register_map",
    "render_markdown",
    "split_url",
]
