"""The Python front of the hardware simulator: scenario files and the servers that expose a simulated
pump over Modbus TCP, Modbus RTU and New Era ASCII (see :mod:`ketapump.sim.server`)."""
