"""The simulator's New Era NE-1000 port driven end to end by the unmodified nesp-lib 2.x client."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from simhelpers import sim_process

pytest.importorskip("nesp_lib", reason="nesp-lib is a test dependency: pip install -e '.[test]'")

# nesp-lib reads without a timeout: it runs in a child process so a hang fails the test instead.
CLIENT = textwrap.dedent(
    """
    import json, sys
    import nesp_lib

    path, safe = sys.argv[1], int(sys.argv[2])
    port = nesp_lib.Port(path, 19200)
    pump = nesp_lib.Pump(port, safe_mode_timeout_s=safe)
    out = {"model": pump.model_number, "version": list(pump.firmware_version)}
    pump.syringe_diameter_mm = 26.59
    out["diameter"] = pump.syringe_diameter_mm
    pump.pumping_direction = nesp_lib.PumpingDirection.INFUSE
    pump.pumping_volume_ml = 0.5
    pump.pumping_rate_ml_per_min = 5.0
    out["rate"] = pump.pumping_rate_ml_per_min
    out["volume"] = pump.pumping_volume_ml
    pump.volume_infused_clear()
    pump.run()  # waits until the volume target stops the pump
    out["infused"] = pump.volume_infused_ml
    out["running"] = pump.running
    pump.pumping_volume_ml = 10.0  # more than this test will run
    pump.run(wait_while_running=False)
    out["running_after_run"] = pump.running
    pump.stop()
    out["running_after_stop"] = pump.running
    out["withdrawn"] = pump.volume_withdrawn_ml
    pump.safe_mode_timeout_s = 0
    port.close()
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("safe_s", [0, 5], ids=["basic", "safe"])
def test_nesp_lib_drives_the_simulator_end_to_end(safe_s: int) -> None:
    with sim_process("--no-modbus-tcp", "--no-modbus-rtu", "--time-scale", "5") as (_proc, endpoints):
        result = subprocess.run(
            [sys.executable, "-c", CLIENT, str(endpoints["nesp_pty"]), str(safe_s)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["model"] == 1000
    assert out["version"] == [3, 928]
    assert out["diameter"] == pytest.approx(26.59)
    assert out["rate"] == pytest.approx(5.0)
    assert out["volume"] == pytest.approx(0.5)
    assert out["infused"] == pytest.approx(0.5, abs=0.01)
    assert out["running"] is False
    assert out["running_after_run"] is True
    assert out["running_after_stop"] is False
    assert out["withdrawn"] == pytest.approx(0.0, abs=1e-3)
