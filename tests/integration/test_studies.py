"""Smoke slices of the packaged studies: every stage runs, the report and plots are written, a re-run reuses runs."""

import json

import pytest
from test_study_verdicts import assert_verdicts_match_numbers

from dpolab.stats import fmt_ci, mean_ci
from dpolab.studies.run import run_study

pytestmark = pytest.mark.slow


def test_mean_ci():
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-3)
    assert fmt_ci([1.0]) == "1.00" and fmt_ci([]) == "-"


def test_squeeze_smoke(tmp_path):
    report = run_study("squeeze", smoke=True, out=str(tmp_path / "s4"), log=lambda s: None)
    text = report.read_text()
    for method in ("| DPO |", "| Gate-DPO seq |", "| gated Cal-DPO |", "| ext-SFT -> DPO |"):
        assert method in text
    assert (tmp_path / "s4" / "squeeze_deltas.png").exists()
    assert assert_verdicts_match_numbers(text) >= 16  # one seed: every verdict is "inconclusive (one seed)"
    assert "still falls" not in text and "| better |" not in text
    import json

    for rid in ("sft", "dpo/seed0", "gate-dpo-seq/seed0"):  # provenance of every run, written by the runner
        rec = json.loads((tmp_path / "s4" / "runs" / rid / "provenance.json").read_text())
        assert (
            rec["finished"] is True
            and rec["commit"]
            and {"torch", "transformers", "peft", "accelerate", "python"} <= set(rec["versions"])
        )
    # the pilot (2 cells x 2 seeds) ran first and its section comes before any verdict; claims.json is written
    assert (tmp_path / "s4" / "pilot" / "choice.json").exists()
    assert text.index("### Regime choice (pilot") < text.index("### What the measurement says")
    assert "the on-policy arm (on-policy DPO) is DPO's twin" in text
    claims = json.loads((tmp_path / "s4" / "claims.json").read_text())
    assert [c["id"] for c in claims["claims"]] == ["S4.dpo-chosen", "S4.gate-chosen", "S4.gate-others"]
    assert claims["smoke"] is True and claims["size"] == "cpu"
    assert "## Provenance" in text and "dpolab commit of the runs:" in text and "(17 runs)" in text
    msgs = []
    report = run_study("squeeze", smoke=True, out=str(tmp_path / "s4"), log=msgs.append)
    assert sum("finished earlier, skipped" in m for m in msgs) == 13  # the confirmation's; the pilot is not rerun
    assert any("recorded choice" in m for m in msgs)
    assert "(17 runs)" in report.read_text()  # reused runs keep their provenance


def test_dpop_smoke_without_real_data(tmp_path):
    report = run_study(
        "dpop", smoke=True, out=str(tmp_path / "s3"), data_dir=str(tmp_path / "nowhere"), log=lambda s: None
    )
    text = report.read_text()
    assert "### arith-near (low edit distance" in text and "### arith-far (high edit distance" in text
    assert "IMDb pair sets were skipped" in text
    assert (tmp_path / "s3" / "dpop_arith-near.png").exists()
    assert "**Is DPO's fall of the chosen log-prob specific to low edit-distance pairs?**" in text
    assert "- **arithmetic** (arith-near vs arith-far" in text
    assert "Both sets hold the same held-out prompts and chosen responses (checked)" in text
    assert assert_verdicts_match_numbers(text) >= 17


@pytest.mark.realdata
def test_dpop_smoke_with_imdb_pairs(tmp_path, shared_data):
    report = run_study("dpop", smoke=True, out=str(tmp_path / "s3"), data_dir=str(shared_data), log=lambda s: None)
    text = report.read_text()
    assert "### imdb-low (low edit distance" in text and "### imdb-high (high edit distance" in text
    assert "- **imdb** (imdb-low vs imdb-high" in text and assert_verdicts_match_numbers(text) >= 34


@pytest.mark.realdata
def test_madpo_smoke(tmp_path, shared_data):
    out = tmp_path / "s2"
    report = run_study("madpo", smoke=True, out=str(out), data_dir=str(shared_data), log=lambda s: None)
    text = report.read_text()
    for method in ("| DPO |", "| IPO |", "| beta-DPO |", "| MADPO |"):
        assert method in text
    assert "### Reward models (one per tier)" in text and "### Wall-clock of every stage" in text
    assert "Every method raised the oracle reward" not in text and assert_verdicts_match_numbers(text) >= 24
    for name in ("madpo_oracle_reward.png", "madpo_weights.png", "beta_dpo_trajectory.png"):
        assert (out / name).exists()
    assert "### MADPO's gain over DPO against reward-model accuracy (addendum)" in text  # issue 31 item 4
    rec = json.loads((out / "data" / "margins.json").read_text())["high/oracle+noise@0.55"]
    assert rec["heldout_pairs"] == 8 and 0 <= rec["heldout_accuracy"] <= 1 and rec["target"] == 0.55
    assert (out / "claims.json").exists() and (out / "madpo_gain_vs_accuracy.png").exists()
    for tier in ("high", "medium", "low"):  # every stage's output, and MADPO's margin column, is on disk
        rows = [json.loads(x) for x in (out / "data" / f"{tier}.scored.jsonl").read_text().splitlines()]
        assert rows and all(isinstance(r["rm_margin"], float) for r in rows)
        assert {r["tier"] for r in rows} == {tier}
    msgs = []
    run_study("madpo", smoke=True, out=str(out), data_dir=str(shared_data), log=msgs.append)
    assert sum("finished earlier, skipped" in m for m in msgs) == 18  # 16 + the addendum arms (oracle, noise@0.55)


def test_madpo_needs_the_reviews(tmp_path):
    from dpolab.data.types import DataError

    with pytest.raises(DataError, match="imdb-cad-sentiment"):
        run_study("madpo", smoke=True, out=str(tmp_path / "s2"), data_dir=str(tmp_path / "nowhere"), log=lambda s: None)


def test_cached_stage_is_rebuilt_when_its_inputs_or_settings_change(tmp_path):
    from dpolab.studies.runner import mark_stage, stage_is_current

    src, out = tmp_path / "model.safetensors", tmp_path / "pairs.jsonl"
    src.write_text("weights v1")
    assert not stage_is_current([out], [src], {"n": 1})  # nothing built yet
    out.write_text("built")
    assert stage_is_current([out], [src], {"n": 1})  # built before stamps existed: adopted
    assert not stage_is_current([out], [src], {"n": 2})  # other settings
    import os

    src.write_text("weights v2, retrained")
    os.utime(src, ns=(1, 1))
    assert not stage_is_current([out], [src], {"n": 1})  # the model it was built from changed
    mark_stage([out], [src], {"n": 1})
    assert stage_is_current([out], [src], {"n": 1})
