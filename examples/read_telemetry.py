"""Read a pump's telemetry and counters.

python examples/read_telemetry.py                                  # an in-process simulated pump
python examples/read_telemetry.py modbus-tcp://127.0.0.1:5020      # `ketapump sim` or a real pump
"""

from __future__ import annotations

import sys

import ketapump


def main(url: str | None) -> int:
    try:
        pump = ketapump.simulate() if url is None else ketapump.open_pump(url)
    except ketapump.ConfigurationError as e:
        print(f"bad pump URL: {e}", file=sys.stderr)
        return 2
    except ketapump.TransportError as e:
        print(f"pump unreachable: {e}", file=sys.stderr)
        return 69
    with pump:
        sample = pump.telemetry()
        print(f"pump:              {pump.info.url} ({pump.info.syringe}, {pump.syringe_diameter_mm:g} mm)")
        print(f"plunger volume:    {sample.volume_ml:.3f} mL")
        print(f"line pressure:     {sample.pressure_mmhg:.1f} mmHg")
        print(f"infused (counter): {pump.infused_ml:.3f} mL")
        print(f"motor running:     {sample.motor_running}")
        print(f"pump alarms:       {', '.join(sorted(sample.pump_alarms)) or 'none'}")
        if "pressure_mmhg" in pump.info.lacks:
            print("no pressure sensor: occlusion is detected by stall only")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
