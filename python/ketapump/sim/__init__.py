"""The simulator layer: the Python front of the hardware simulator (``hw-sim``, in Rust).

Owns the scenario files (pump build and scheduled faults) and the servers that expose a simulated pump
over Modbus TCP, Modbus RTU and New Era ASCII on PTYs (``ketapump sim``). It imports the wire layer (the
register map it serves) and the floor, never the bridge: the simulator stands in for the pump, and the
bridge reaches it only through a transport. Other layers import it through this module.
"""

from ketapump.sim.scenario import FaultEvent, PumpSettings, Scenario, ScenarioError, load_scenario
from ketapump.sim.server import SimServer, serve_register_map, wire_time_s

__all__ = [
    "FaultEvent",
    "PumpSettings",
    "Scenario",
    "ScenarioError",
    "SimServer",
    "load_scenario",
    "serve_register_map",
    "wire_time_s",
]
