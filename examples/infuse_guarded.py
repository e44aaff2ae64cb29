"""Infuse 1 mL at 60 mL/h under the safety kernel, with a progress line and an audit log.

    python examples/infuse_guarded.py                                  # simulated, virtual time
    python examples/infuse_guarded.py modbus-tcp://127.0.0.1:5020 10   # `ketapump sim --time-scale 10`

Exit status: 0 complete, 3 stopped by an alarm, 65 invalid input (a URL, a time scale the loop
cannot keep), 69 pump unreachable (as `ketapump run`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import ketapump


def main(url: str | None, time_scale: float) -> int:
    log = Path(tempfile.mkdtemp(prefix="ketapump-example-")) / "infusion.jsonl"
    last_line = [0.0]

    def progress(tick: ketapump.InfusionTick) -> None:
        if tick.t_s - last_line[0] >= 10.0:  # one line per 10 s of pump time
            last_line[0] = tick.t_s
            state, ml, rate = tick.state, tick.delivered_ml, tick.rate_ml_h
            print(f"t={tick.t_s:5.0f} s  {state:9s} {ml:.3f} mL at {rate:.1f} mL/h")

    try:
        pump = ketapump.simulate() if url is None else ketapump.open_pump(url, time_scale=time_scale)
        with pump:
            result = ketapump.infuse(pump, rate_ml_h=60.0, volume_ml=1.0, log=log, on_tick=progress)
    except ketapump.ConfigurationError as e:
        print(f"cannot run: {e}", file=sys.stderr)
        return 65
    except ketapump.TransportError as e:
        print(f"pump unreachable: {e}", file=sys.stderr)
        return 69
    print(f"{result.state}: delivered {result.delivered_ml:.3f} mL (reason {result.reason})")
    print(f"audit log: {log}")
    if result.alarms or result.pump_alarms:
        print(f"alarms: {', '.join(result.alarms + result.pump_alarms)}")
    return 0 if result.state == "complete" else 3


if __name__ == "__main__":
    sys.exit(
        main(sys.argv[1] if len(sys.argv) > 1 else None, float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
    )
