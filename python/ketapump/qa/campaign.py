"""`ketapump qa campaign`: seeded fault campaigns — thousands of randomized closed-loop runs of the
safety kernel against the hw-sim plant, each checked against the safety invariants.

Why: the unit and bridge tests show that each interlock works in the situation it was written for; a
campaign shows that the invariants (S3 dose, S5 occlusion, S7 latching) hold when rates, syringes,
compliance, noise, faults at random times and bridge restarts are combined in ways nobody wrote a test
for. A run is a pure function of (kernel configuration, spec, seed) computed entirely in Rust
(``ketapump._core.run_campaign``, the GIL released per batch), so campaigns parallelise over threads
of one process (no interpreter to start per worker) or a Dask cluster, and a failing seed replays
exactly.

The spec (TOML, ``schema_version = 1``) gives the ranges and probabilities scenarios are drawn from,
the clinical limits the invariants are checked against (never the kernel's own settings, so a broken
configuration is caught: the cumulative cap and the drug's concentration are required for that
reason), and optional ``[kernel]`` overrides of the configuration under test::

    schema_version = 1
    [limits]
    occlusion_threshold_mmhg = 300.0      # S5 P_thr
    hard_cap_mg = 120.0                   # S3 cumulative cap
    concentration_mg_per_ml = 1.0         # what a delivered mL is in mg
    [infusion]
    rate_ml_h = [4.0, 60.0]               # [min, max], drawn log-uniformly
    over_cap_probability = 0.05           # a prior dose leaves less under the cap than is programmed
    [occlusion]
    probability = 0.3
    [kernel]
    slope_detector = false                # the configuration under test differs from the defaults

Shipped specs live in ``ketapump/data/campaigns`` and are named without ``.toml``. Every problem in a
spec is reported at once with its dotted path.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ketapump import _core
from ketapump.config import kernel_config
from ketapump.errors import ConfigurationError
from ketapump.validation import (
    MAX_RECORDING_BYTES,
    DocumentError,
    FileReadError,
    parse_document,
    read_document,
    read_text_file,
    validate_document,
)

SPEC_PACKAGE = "ketapump.data"
SPEC_DIR = "campaigns"
REPLAY_SCHEMA = 1

#: Exit codes of ``ketapump qa campaign`` (besides 2 for usage and 65 for an invalid spec).
EXIT_VIOLATIONS = 1
EXIT_REPLAY_DIFFERS = 70  # a replay did not reproduce its record: non-determinism is a bug


# ----- the spec ------------------------------------------------------------------------------------

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"[min, max] must have min ≤ max, got {list(value)}")
    return value


Range = Annotated[tuple[Finite, Finite], Field(description="[min, max]")]


class _Ranged(_Model):
    """Every ``tuple[float, float]`` field is a ``[min, max]`` range with min ≤ max."""

    @field_validator("*", mode="after")
    @classmethod
    def _ranges_ordered(cls, value: Any) -> Any:
        if isinstance(value, tuple) and len(value) == 2:
            return _ordered(value)
        return value


class Limits(_Model):
    """The clinical limits the invariants are checked against (safety-targets.md)."""

    occlusion_threshold_mmhg: float = Field(default=300.0, ge=1.0, le=5_000.0, allow_inf_nan=False)
    occlusion_latency_s: float = Field(default=5.0, ge=0.0, le=3_600.0, allow_inf_nan=False)
    dose_tolerance: float = Field(default=0.02, ge=0.0, le=1.0, allow_inf_nan=False)
    accuracy_tolerance: float = Field(default=0.02, ge=0.0, le=1.0, allow_inf_nan=False)
    #: S3 cumulative cap (mg). Required: the kernel configuration's own cap is what is under test.
    hard_cap_mg: float = Field(gt=0.0, allow_inf_nan=False)
    #: The drug's true concentration (mg/mL), turning delivered mL into mg. Required, likewise.
    concentration_mg_per_ml: float = Field(gt=0.0, allow_inf_nan=False)


class Infusion(_Ranged):
    syringes: list[str] = Field(default=["bd-plastipak-50"], min_length=1)
    rate_ml_h: Range = (4.0, 60.0)
    duration_min: Range = (30.0, 60.0)
    fill_fraction: Range = (0.6, 1.0)
    take_up_probability: Probability = 1.0
    rate_change_probability: Probability = 0.0
    rate_change_factor: Range = (0.75, 1.33)
    #: Runs after a prior dose that leaves only ``over_cap_headroom`` (a fraction, uniform) of the
    #: programmed drug under the cap: the kernel must refuse them.
    over_cap_probability: Probability = 0.0
    over_cap_headroom: Range = (0.2, 0.9)

    @field_validator("syringes")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        known = _core.SimPump.syringes()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown syringe {unknown[0]!r}; one of {', '.join(known)}")
        return names


class PlantRanges(_Ranged):
    compliance_ml_per_mmhg: Range = (0.0012, 0.0028)
    resistance_mmhg_s_per_ml: Range = (3_600.0, 9_000.0)
    patient_pressure_mmhg: Range = (5.0, 15.0)
    slack_taken_up_probability: Probability = 0.5
    pressure_noise_sd_mmhg: Range = (0.0, 2.0)


class RunSettings(_Ranged):
    fault_window: Range = (0.1, 0.9)
    observe_after_alarm_s: float = Field(default=30.0, ge=0.0, allow_inf_nan=False)
    settle_s: float = Field(default=180.0, ge=0.0, allow_inf_nan=False)


class Restart(_Ranged):
    probability: Probability = 0.0
    gap_s: Range = (0.5, 5.0)
    watchdog_s: float = Field(default=0.5, ge=0.0, le=60.0, allow_inf_nan=False)


class Occlusion(_Ranged):
    probability: Probability = 0.0
    factor: Range = (1.0e3, 1.0e6)
    clear_probability: Probability = 0.0
    clear_after_s: Range = (10.0, 300.0)


class Chance(_Model):
    probability: Probability = 0.0


class HeadHeight(_Ranged):
    probability: Probability = 0.0
    height_cm: Range = (-50.0, 25.0)


class EncoderSlip(_Ranged):
    probability: Probability = 0.0
    fraction: Range = (0.2, 0.9)


class CampaignSpec(_Model):
    """A fault campaign: what scenarios are drawn from, and the limits they are checked against."""

    schema_version: Literal[1]
    limits: Limits
    infusion: Infusion = Infusion()
    plant: PlantRanges = PlantRanges()
    run: RunSettings = RunSettings()
    restart: Restart = Restart()
    occlusion: Occlusion = Occlusion()
    air: Chance = Chance()
    head_height: HeadHeight = HeadHeight()
    stuck_encoder: Chance = Chance()
    encoder_slip: EncoderSlip = EncoderSlip()
    drive_stall: Chance = Chance()
    #: Overrides of the shipped kernel defaults: the configuration under test.
    kernel: dict[str, float | bool] = {}

    @model_validator(mode="after")
    def _gap_covers_the_watchdog(self) -> CampaignSpec:
        if self.restart.gap_s[0] < self.restart.watchdog_s:
            raise ValueError("restart.gap_s must not be shorter than restart.watchdog_s")
        return self

    def kernel_config(self) -> _core.KernelConfig:
        """The kernel configuration under test: the shipped defaults with ``[kernel]`` applied."""
        return kernel_config(**self.kernel)


class CampaignSpecError(DocumentError):
    """A campaign spec could not be used; ``problems`` lists every problem as ``path: message``."""

    kind = "campaign spec"


def shipped_specs() -> list[str]:
    """Names of the specs shipped with ketapump."""
    folder = resources.files(SPEC_PACKAGE).joinpath(SPEC_DIR)
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def validate_spec(document: dict[str, Any], source: str) -> tuple[CampaignSpec, _core.KernelConfig]:
    """Validates a spec document and its kernel configuration, the Rust side included (the spec's
    rates against the kernel's ceiling, every syringe and compliance corner buildable). Raises
    :class:`CampaignSpecError` listing every problem with its dotted path."""
    return _with_kernel(validate_document(CampaignSpec, document, source, CampaignSpecError), source)


def _with_kernel(spec: CampaignSpec, source: str) -> tuple[CampaignSpec, _core.KernelConfig]:
    """A validated spec with its kernel configuration, both checked by the Rust side too."""
    try:
        config = spec.kernel_config()
    except ConfigurationError as e:
        raise CampaignSpecError(source, [f"kernel.{e.field}: {e.problem}"]) from e
    try:
        _core.run_campaign(config, spec.model_dump(), [])  # validates, runs nothing
    except ConfigurationError as e:
        raise CampaignSpecError(source, [f"{e.field}: {e.problem}"]) from e
    return spec, config


def load_spec(name_or_path: str) -> tuple[CampaignSpec, _core.KernelConfig]:
    """Reads a spec by path or shipped name; raises :class:`CampaignSpecError` for an invalid one,
    with ``not_found`` for one that does not exist."""
    path = Path(name_or_path)
    if path.is_file():
        return _with_kernel(read_document(CampaignSpec, path, CampaignSpecError), str(path))
    name = name_or_path.removesuffix(".toml")
    if name not in shipped_specs():
        shipped = ", ".join(shipped_specs())
        raise CampaignSpecError(
            name_or_path, [f"is neither a file nor a shipped campaign ({shipped})"], not_found=True
        )
    source = f"{name} (shipped)"
    text = resources.files(SPEC_PACKAGE).joinpath(SPEC_DIR, f"{name}.toml").read_text(encoding="utf-8")
    return _with_kernel(parse_document(CampaignSpec, text, source, CampaignSpecError), source)


# ----- running -------------------------------------------------------------------------------------


def run_chunk(spec: dict[str, Any], config: dict[str, Any], seeds: list[int]) -> list[dict[str, Any]]:
    """One batch of runs in this process (the unit of work sent to a pool or a Dask worker): plain
    dicts in and out, so it pickles anywhere."""
    return _core.run_campaign(_core.KernelConfig(**config), spec, seeds)


def chunked(seeds: list[int], parts: int, most: int = 500) -> list[list[int]]:
    """Splits seeds into about ``parts`` chunks of at most ``most`` seeds, in order."""
    if not seeds:
        return []
    size = max(1, min(most, math.ceil(len(seeds) / max(1, parts))))
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


@dataclass(frozen=True)
class CampaignResult:
    outcomes: list[dict[str, Any]]
    seconds: float
    workers: int
    backend: str
    violations: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        found = [
            {"seed": o["seed"], "invariant": v["invariant"], "detail": v["detail"]}
            for o in self.outcomes
            for v in o["violations"]
        ]
        object.__setattr__(self, "violations", found)

    @property
    def runs(self) -> int:
        return len(self.outcomes)

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds if self.seconds > 0 else math.inf

    def failing(self) -> list[dict[str, Any]]:
        return [o for o in self.outcomes if o["violations"]]


#: Runs per batch on local threads (~0.3 s each): how often progress is reported, and the most one
#: worker can be left running alone at the end (500-run batches left one of two cores idle for up to
#: ~1.4 s of a 10 000-run campaign; a batch costs ~5 µs to hand to Rust).
PROGRESS_BATCH = 100


def run_campaign(
    spec: CampaignSpec,
    config: _core.KernelConfig,
    seeds: list[int],
    *,
    workers: int = 1,
    dask_address: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> CampaignResult:
    """Runs every seed: in this thread (``workers`` = 1), on ``workers`` threads of this process (each
    batch runs in Rust with the GIL released, so the threads run in parallel without the seconds a
    process pool spends starting interpreters and importing ketapump), or on the Dask cluster whose
    scheduler is at ``dask_address``. Outcomes come back in seed order; ``on_progress`` is told the
    number of runs done after each batch (a batch's outcomes do not depend on how the seeds are
    batched)."""
    spec_dict = spec.model_dump()
    config_dict = dict(config.as_dict())
    done = 0

    def finished(runs: int) -> None:
        nonlocal done
        done += runs
        if on_progress is not None:
            on_progress(done)

    started = time.perf_counter()
    if dask_address is not None:
        outcomes = _run_on_dask(dask_address, spec_dict, config_dict, seeds, finished)
        backend = f"dask {dask_address}"
    elif workers <= 1:
        outcomes = []
        for batch in chunked(seeds, 1, most=PROGRESS_BATCH):
            outcomes += run_chunk(spec_dict, config_dict, batch)
            finished(len(batch))
        backend = "local"
    else:
        chunks = chunked(seeds, workers, most=PROGRESS_BATCH)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="campaign") as pool:
            futures = {pool.submit(run_chunk, spec_dict, config_dict, chunk): len(chunk) for chunk in chunks}
            for future in as_completed(futures):
                finished(futures[future])
            outcomes = [o for future in futures for o in future.result()]
        backend = f"local, {workers} threads"
    return CampaignResult(outcomes, time.perf_counter() - started, workers, backend)


def _run_on_dask(
    address: str,
    spec: dict[str, Any],
    config: dict[str, Any],
    seeds: list[int],
    finished: Callable[[int], None],
) -> list[dict[str, Any]]:
    # Optional dependency (the 'dask' extra); its Client is not annotated.
    from distributed import Client  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    from distributed import as_completed as dask_completed  # noqa: PLC0415

    with Client(address, timeout="30s") as client:  # type: ignore[no-untyped-call,unused-ignore]
        threads = sum(client.nthreads().values()) or 1
        chunks = chunked(seeds, threads * 4)
        futures = client.map(run_chunk, [spec] * len(chunks), [config] * len(chunks), chunks, pure=False)
        sizes = {future.key: len(chunk) for future, chunk in zip(futures, chunks, strict=True)}
        for future in dask_completed(futures):  # type: ignore[no-untyped-call,unused-ignore]
            finished(sizes[future.key])
        batches: list[list[dict[str, Any]]] = client.gather(futures)
    return [o for batch in batches for o in batch]


# ----- records and replay --------------------------------------------------------------------------


def replay_record(
    spec: CampaignSpec, config: _core.KernelConfig, failing: list[dict[str, Any]]
) -> dict[str, Any]:
    """The failing-seeds record: everything a replay needs (spec, full kernel configuration, seeds)
    and what each run gave."""
    return {
        "schema_version": REPLAY_SCHEMA,
        "spec": spec.model_dump(mode="json"),
        "kernel_config": dict(config.as_dict()),
        "failing": [{"seed": o["seed"], "violations": o["violations"], "outcome": o} for o in failing],
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Replay:
    seed: int
    outcome: dict[str, Any]
    recorded: dict[str, Any] | None

    @property
    def identical(self) -> bool:
        return self.recorded is None or self.outcome == self.recorded


def load_record(path: Path) -> tuple[CampaignSpec, _core.KernelConfig, list[dict[str, Any]]]:
    """Reads a failing-seeds record; raises :class:`CampaignSpecError` when it is not one."""
    try:
        record = json.loads(read_text_file(path, limit_bytes=MAX_RECORDING_BYTES))
    except FileReadError as e:
        raise CampaignSpecError(str(path), [e.problem], not_found=e.not_found) from e
    except json.JSONDecodeError as e:
        raise CampaignSpecError(str(path), [f"(file): not valid JSON: {e}"]) from e
    if not isinstance(record, dict) or record.get("schema_version") != REPLAY_SCHEMA:
        raise CampaignSpecError(str(path), [f"schema_version: must be {REPLAY_SCHEMA}"])
    missing = [k for k in ("spec", "kernel_config", "failing") if k not in record]
    if missing:
        raise CampaignSpecError(str(path), [f"{k}: missing" for k in missing])
    spec = validate_document(CampaignSpec, record["spec"], str(path), CampaignSpecError, prefix="spec")
    try:
        config = _core.KernelConfig(**record["kernel_config"])
    except (ConfigurationError, TypeError) as e:
        raise CampaignSpecError(str(path), [f"kernel_config: {e}"]) from e
    return spec, config, list(record["failing"])


def replay(
    spec: CampaignSpec,
    config: _core.KernelConfig,
    seeds: list[int],
    recorded: list[dict[str, Any]] | None = None,
) -> list[Replay]:
    """Runs the seeds again; with ``recorded`` outcomes, says whether each came out identical."""
    by_seed = {r["seed"]: r["outcome"] for r in recorded or []}
    outcomes = run_chunk(spec.model_dump(), dict(config.as_dict()), seeds)
    return [Replay(o["seed"], o, by_seed.get(o["seed"])) for o in outcomes]


# ----- the command ---------------------------------------------------------------------------------


def summary(result: CampaignResult, spec_source: str, seed_base: int) -> dict[str, Any]:
    outcomes = result.outcomes
    return {
        "spec": spec_source,
        "seed_base": seed_base,
        "runs": result.runs,
        "violations": result.violations,
        "violations_by_invariant": dict(Counter(v["invariant"] for v in result.violations)),
        "runs_per_s": result.runs_per_s,
        "seconds": result.seconds,
        "workers": result.workers,
        "backend": result.backend,
        "states": dict(Counter(o["state"] for o in outcomes)),
        "faults": dict(Counter(f["name"] for o in outcomes for f in o["faults"])),
        "fault_free_runs": sum(1 for o in outcomes if not o["faults"]),
        "over_cap_runs": sum(1 for o in outcomes if o["over_cap"]),
        "refused": sum(1 for o in outcomes if o["refused"] is not None),
        "restarts": sum(o["restarts"] for o in outcomes),
        "alarms": dict(Counter(a for o in outcomes for a in o["alarms"])),
        "simulated_h": sum(o["end_s"] for o in outcomes) / 3_600.0,
    }
