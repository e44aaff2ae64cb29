"""`ketapump qa campaign`: seeded fault campaigns of the real kernel against the hw-sim plant, run
through the CLI in real subprocesses (local worker threads, a local Dask cluster), a deliberately broken
kernel configuration caught and replayed exactly, and spec errors with their dotted paths."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from ketapump.qa.campaign import (
    PROGRESS_BATCH,
    CampaignSpecError,
    chunked,
    load_spec,
    replay,
    run_campaign,
    shipped_specs,
    validate_spec,
)
from simhelpers import ketapump

#: A kernel whose occlusion threshold is far above the clinical 300 mmHg and whose slope detector is
#: off: it still alarms, but minutes late.
BROKEN_KERNEL = "[kernel]\nocclusion_threshold_mmhg = 1000.0\nslope_detector = false\n"
#: The clinical limits a spec must state: the cumulative cap and the drug's concentration.
LIMITS = "[limits]\nhard_cap_mg = 120.0\nconcentration_mg_per_ml = 1.0\n"


def campaign(*args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    return ketapump("qa", "campaign", *args, timeout=timeout)


def default_text() -> str:
    return resources.files("ketapump.data").joinpath("campaigns", "default.toml").read_text(encoding="utf-8")


def broken_spec(tmp_path: Path) -> Path:
    """The default campaign, every run occluded, against the broken kernel."""
    text = (
        default_text()
        .replace("[kernel]", "")
        .replace("[occlusion]\nprobability = 0.3", "[occlusion]\nprobability = 1.0")
    )
    assert "probability = 1.0" in text
    path = tmp_path / "broken.toml"
    path.write_text(text + BROKEN_KERNEL, encoding="utf-8")
    return path


def test_default_campaign_of_10000_runs_holds_every_invariant(tmp_path: Path) -> None:
    result = campaign("default", "--runs", "10000", "--workers", "2", "--json", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["runs"] == 10_000
    assert report["violations"] == []
    assert report["runs_per_s"] > 0
    # The campaign really exercised what it claims: every fault kind, restarts, alarms and clean runs.
    assert set(report["faults"]) == {
        "occlusion", "air", "head_height", "stuck_encoder", "encoder_slip", "drive_stall"
    }  # fmt: skip
    assert report["faults"]["occlusion"] > 2_000
    assert report["restarts"] > 1_000
    # Programs past the clinical cap after a prior dose: every one refused by the kernel.
    assert report["refused"] == report["over_cap_runs"] > 300
    assert 4_000 < report["fault_free_runs"] < 6_000
    assert report["states"]["complete"] > 4_000 and report["states"]["alarm"] > 2_000
    # A jammed or slipping drive is seen first by the encoder cross-check (0.02 mL), before the stall
    # check's 0.05 mL.
    assert report["alarms"]["air_in_line"] > 100 and report["alarms"]["encoder_mismatch"] > 100
    assert json.loads((tmp_path / "summary.json").read_text())["runs"] == 10_000
    assert report["failing_seeds"] is None and not (tmp_path / "failing-seeds.json").exists()


def test_edge_campaign_holds_every_invariant_on_a_bounded_sample(tmp_path: Path) -> None:
    # 600 of the documented 3 000 (docs/qa.md): short doses, ×0.1–×10 rate steps, take-up off on unprimed
    # syringes, the pump raised up to 50 cm and encoder slips of 2–90 % — no violation, fault-free or not.
    result = campaign("edge", "--runs", "600", "--workers", "2", "--json", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["runs"] == 600 and report["violations"] == []
    assert report["alarms"]["encoder_mismatch"] > 10


def test_broken_kernel_config_is_caught_written_out_and_replays_exactly(tmp_path: Path) -> None:
    spec = broken_spec(tmp_path)
    out = tmp_path / "report"
    result = campaign(str(spec), "--runs", "60", "--seed", "1000", "--json", "--out", str(out))
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    missed = [v for v in report["violations"] if v["invariant"] == "missed_occlusion"]
    assert len(missed) >= 10, report["violations"]
    assert all("alarm due by" in v["detail"] for v in missed)

    # The record holds everything a replay needs: the spec, the full kernel configuration, the seeds.
    record = json.loads((out / "failing-seeds.json").read_text())
    assert record["kernel_config"]["occlusion_threshold_mmhg"] == 1000.0
    assert record["kernel_config"]["slope_detector"] is False
    assert record["spec"]["limits"]["occlusion_threshold_mmhg"] == 300.0
    failing = {f["seed"]: f for f in record["failing"]}
    assert {v["seed"] for v in missed} <= set(failing)

    # Replaying the record reproduces every run exactly: same violation, same numbers, same trace.
    again = campaign("--replay", str(out / "failing-seeds.json"), "--json")
    assert again.returncode == 1, again.stderr
    replays = json.loads(again.stdout)["replays"]
    assert [r["seed"] for r in replays] == list(failing)
    for r in replays:
        assert r["identical"] is True
        assert r["outcome"] == failing[r["seed"]]["outcome"]
        assert r["outcome"]["violations"] == failing[r["seed"]]["violations"]

    # And a single seed with the spec file gives the same outcome as the campaign did.
    seed = missed[0]["seed"]
    single = campaign(str(spec), "--replay", str(seed), "--json")
    assert single.returncode == 1, single.stderr
    assert json.loads(single.stdout)["replays"][0]["outcome"] == failing[seed]["outcome"]

    # The sound default kernel on the very same scenarios misses no occlusion.
    sound = tmp_path / "sound.toml"
    sound.write_text(spec.read_text().replace(BROKEN_KERNEL, ""), encoding="utf-8")
    result = campaign(str(sound), "--runs", "60", "--seed", "1000", "--json", "--out", str(tmp_path / "s"))
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["violations"] == []


def test_a_replay_that_differs_from_its_record_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert campaign(str(broken_spec(tmp_path)), "--runs", "20", "--out", str(out)).returncode == 1
    path = out / "failing-seeds.json"
    record = json.loads(path.read_text())
    record["failing"][0]["outcome"]["delivered_ml"] += 1e-9
    path.write_text(json.dumps(record))
    result = campaign("--replay", str(path))
    assert result.returncode == 70
    assert "DIFFERS from the record" in result.stdout


def test_campaign_on_a_local_dask_cluster_matches_the_local_run(tmp_path: Path) -> None:
    distributed = pytest.importorskip(
        "distributed", reason="Dask distributed is not installed (pip install 'ketapump[dask]')"
    )
    spec, config = load_spec("default")
    seeds = list(range(500, 560))
    local = run_campaign(spec, config, seeds)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        on_dask = run_campaign(spec, config, seeds, dask_address=cluster.scheduler_address)
        assert on_dask.backend.startswith("dask")
        assert on_dask.outcomes == local.outcomes
        # The CLI path: a separate client process sends the campaign to the same cluster.
        result = campaign(
            "default", "--runs", "40", "--seed", "500", "--dask", cluster.scheduler_address,
            "--json", "--out", str(tmp_path),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["runs"] == 40 and report["violations"] == []
    assert report["backend"] == f"dask {cluster.scheduler_address}"


def test_worker_threads_and_one_thread_agree_seed_by_seed() -> None:
    spec, config = load_spec("default")
    # More seeds than one batch holds, so the threads interleave batches as a long campaign's do.
    seeds = list(range(40, 40 + 2 * PROGRESS_BATCH + 30))
    one = run_campaign(spec, config, seeds)
    two = run_campaign(spec, config, seeds, workers=2)
    assert [o["seed"] for o in two.outcomes] == seeds
    assert two.outcomes == one.outcomes
    assert replay(spec, config, [57])[0].outcome == one.outcomes[17]


def test_worker_threads_take_small_batches_so_neither_core_waits_long_at_the_end() -> None:
    # Every program refused (over the cap) and nothing left to settle: 2 000 runs that cost almost
    # nothing, split as a long campaign is. Two threads report progress after every batch of at most
    # PROGRESS_BATCH runs (the most one thread can be left running alone at the end), in seed order
    # and equal to one thread's outcomes.
    text = default_text().replace("over_cap_probability = 0.05", "over_cap_probability = 1.0")
    document = tomllib.loads(text.replace("settle_s = 180.0", "settle_s = 0.0"))
    spec, config = validate_spec(document, "refused")
    seeds = list(range(2_000))
    done: list[int] = []
    two = run_campaign(spec, config, seeds, workers=2, on_progress=done.append)
    steps = [b - a for a, b in zip([0, *done], done, strict=False)]
    assert done[-1] == len(seeds) and done == sorted(done)
    assert max(steps) <= PROGRESS_BATCH and len(done) >= len(seeds) // PROGRESS_BATCH
    assert all(o["refused"] is not None for o in two.outcomes)
    assert [o["seed"] for o in two.outcomes] == seeds
    assert two.outcomes == run_campaign(spec, config, seeds).outcomes


def test_an_invalid_spec_lists_every_problem_with_its_dotted_path(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(
        "schema_version = 1\n"
        "[infusion]\nsyringes = ['bd-plastipak-51']\nrate_ml_h = [10.0, 5.0]\n"
        "[occlusion]\nprobability = 1.5\nfactor = [1e3]\n"
        "[air]\nprobablity = 0.1\n"
        "[kernel]\noclusion_threshold_mmhg = 1000.0\n",
        encoding="utf-8",
    )
    result = campaign(str(spec), "--runs", "1")
    assert result.returncode == os.EX_DATAERR
    for path in (
        "infusion.syringes",
        "infusion.rate_ml_h",
        "occlusion.probability",
        "occlusion.factor",
        "air.probablity",
    ):
        assert f"\n  {path}" in result.stderr, result.stderr
    # The kernel overrides are checked once the spec itself is valid.
    spec.write_text(
        f"schema_version = 1\n{LIMITS}[kernel]\noclusion_threshold_mmhg = 1000.0\n", encoding="utf-8"
    )
    result = campaign(str(spec), "--runs", "1")
    assert result.returncode == os.EX_DATAERR
    assert "kernel.oclusion_threshold_mmhg: is not a kernel setting" in result.stderr


def test_the_rust_side_checks_the_spec_against_the_kernel_configuration() -> None:
    # 500 mL/h is a fine number for the spec, but above the kernel's 120 mL/h ceiling.
    limits = tomllib.loads(LIMITS)["limits"]
    document: dict[str, Any] = {
        "schema_version": 1,
        "limits": limits,
        "infusion": {"rate_ml_h": [4.0, 500.0]},
    }
    with pytest.raises(CampaignSpecError) as caught:
        validate_spec(document, "inline")
    assert caught.value.problems[0].startswith("infusion.rate_ml_h: max is above the kernel's rate ceiling")
    document = {"schema_version": 1, "limits": limits, "plant": {"compliance_ml_per_mmhg": [0.0002, 0.002]}}
    with pytest.raises(CampaignSpecError) as caught:
        validate_spec(document, "inline")
    assert caught.value.problems[0].startswith("plant.compliance_ml_per_mmhg: min is too low")


def test_specs_are_found_by_shipped_name_or_path(tmp_path: Path) -> None:
    assert {"default", "edge"} <= set(shipped_specs())
    for name in shipped_specs():
        text = resources.files("ketapump.data").joinpath("campaigns", f"{name}.toml").read_text()
        validate_spec(tomllib.loads(text), name)
    path = tmp_path / "mine.toml"
    path.write_text(default_text(), encoding="utf-8")
    assert load_spec(str(path))[0] == load_spec("default")[0]
    missing = campaign("no-such-campaign", "--runs", "1")
    assert missing.returncode == os.EX_NOINPUT
    assert "neither a file nor a shipped campaign (default, edge" in missing.stderr
    assert campaign("--runs", "1").returncode == 2


def test_seeds_are_chunked_in_order() -> None:
    seeds = list(range(10))
    assert chunked(seeds, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunked(seeds, 1, most=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunked([], 4) == []
    assert [s for c in chunked(list(range(1001)), 8) for s in c] == list(range(1001))


def test_a_kernel_cap_above_the_clinical_one_is_caught_by_the_specs_cap(tmp_path: Path) -> None:
    # The cap and concentration the invariant uses are the spec's, never the kernel configuration's:
    # a kernel configured with a 1 000 mg cap delivers programs that a prior dose has pushed past the
    # clinical 120 mg; the sound kernel refuses every one of them.
    text = default_text().replace("over_cap_probability = 0.05", "over_cap_probability = 1.0")
    assert "over_cap_probability = 1.0" in text
    sound = tmp_path / "sound.toml"
    sound.write_text(text, encoding="utf-8")
    broken = tmp_path / "broken.toml"
    broken.write_text(text + "hard_cap_mg = 1000.0\n", encoding="utf-8")
    result = campaign(str(broken), "--runs", "12", "--json", "--out", str(tmp_path / "b"))
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["over_cap_runs"] == 12 and report["refused"] == 0
    assert report["violations_by_invariant"]["cumulative_cap"] >= 6, report["violations"]
    # Every run the broken kernel let complete went past the cap (a fault that alarmed first stopped
    # some of the others short of it).
    spec, config = load_spec(str(broken))
    for o in run_campaign(spec, config, list(range(12))).outcomes:
        caught = [v["detail"] for v in o["violations"] if v["invariant"] == "cumulative_cap"]
        if o["state"] == "complete":
            assert caught and "> cap 120.000000 mg" in caught[0], o
    result = campaign(str(sound), "--runs", "12", "--json", "--out", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["violations"] == [] and report["refused"] == 12
    # A spec without the clinical cap is refused: there is no falling back on the kernel's.
    bare = tmp_path / "bare.toml"
    bare.write_text(text.replace("hard_cap_mg = 120.0", ""), encoding="utf-8")
    result = campaign(str(bare), "--runs", "1")
    assert result.returncode == os.EX_DATAERR and "limits.hard_cap_mg: Field required" in result.stderr
