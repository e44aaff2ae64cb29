"""Drive several pumps at once with asyncio: each runs its own kernel-guarded infusion.

python examples/concurrent_pumps.py                          # three simulated pumps, virtual time
python examples/concurrent_pumps.py --time-scale 10 URL...   # pumps of `ketapump sim --time-scale 10`
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import ketapump

RATES_ML_H = (30.0, 60.0, 90.0)


async def one(pump: ketapump.AsyncPump, rate_ml_h: float, log: Path) -> ketapump.InfusionResult:
    async with pump:
        return await ketapump.infuse_async(pump, rate_ml_h=rate_ml_h, volume_ml=0.5, log=log)


async def main(urls: list[str], time_scale: float) -> int:
    logs = Path(tempfile.mkdtemp(prefix="ketapump-pumps-"))
    if urls:
        pumps = [await ketapump.open_pump_async(url, time_scale=time_scale) for url in urls]
    else:
        pumps = [await ketapump.simulate_async(seed=seed) for seed in range(len(RATES_ML_H))]
    results = await asyncio.gather(
        *(one(pump, RATES_ML_H[i % len(RATES_ML_H)], logs / f"pump{i}.jsonl") for i, pump in enumerate(pumps))
    )
    for pump, result in zip(pumps, results, strict=True):
        print(f"{pump.info.url}: {result.state}, delivered {result.delivered_ml:.3f} mL")
    return 0 if all(r.state == "complete" for r in results) else 3


if __name__ == "__main__":
    args = sys.argv[1:]
    scale = 1.0
    if args[:1] == ["--time-scale"]:
        scale, args = float(args[1]), args[2:]
    try:
        sys.exit(asyncio.run(main(args, scale)))
    except ketapump.ConfigurationError as e:
        print(f"cannot run: {e}", file=sys.stderr)
        sys.exit(65)
    except ketapump.TransportError as e:
        print(f"pump unreachable: {e}", file=sys.stderr)
        sys.exit(69)
