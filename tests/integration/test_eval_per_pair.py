"""`dpolab eval`: ties apart from wins, intervals, the length-bias warning and its normalised variant, per-pair
output."""

from __future__ import annotations

import json

import pytest

from dpolab.cli import main
from dpolab.config import LoraConfig, ModelConfig
from dpolab.evaluation.preference import LENGTH_BIAS_WARNING, evaluate_preference_file, outcome, rank_summary
from dpolab.models.load import load_policy, save_model
from dpolab.models.tokenizer import build_char_tokenizer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    tok = build_char_tokenizer()
    cfg = ModelConfig(name_or_path="tiny-gpt2")
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(load_policy(cfg, LoraConfig(), tok, seed=0), tok, path, cfg)
    return str(path)


@pytest.fixture()
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q: {i}+1\nA: ", "chosen": f"{i + 1}", "rejected": f"{i + 2} or maybe more"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_outcome_and_rank_summary():
    assert [outcome(m) for m in (0.5, 0.0, -1.0)] == ["win", "tie", "loss"]
    assert [outcome(m, 1e-3) for m in (2e-3, 1e-5, -1e-3, -2e-3)] == ["win", "tie", "tie", "loss"]  # float noise
    assert rank_summary([1e-5, -1e-5, 0.5], "m", [1e-3] * 3)["reward_ties"] == 2 / 3
    s = rank_summary([1.0, 0.0, 0.0, -1.0], "logratio_margin")
    assert s["reward_accuracy"] == 0.25 and s["reward_ties"] == 0.5 and s["logratio_margin"] == 0.0
    lo, hi = s["reward_accuracy_ci95"]
    assert 0.0 < lo < 0.25 < hi < 1.0  # Wilson interval around 1 win in 4
    mlo, mhi = s["logratio_margin_ci95"]
    assert mlo < 0.0 < mhi


def test_model_against_itself_ties_every_pair(tiny_model, pairs, tmp_path):
    logs = []
    out = tmp_path / "per_pair.jsonl"
    res = evaluate_preference_file(tiny_model, pairs, reference=tiny_model, per_pair=str(out), log=logs.append)
    assert res["pairs"] == 5 and res["rows_read"] == 5
    assert res["reward_accuracy"] == 0.0 and res["reward_ties"] == 1.0 and res["logratio_margin"] == 0.0
    assert res["rewards/margin"] == 0.0 and "reward_accuracy_ci95" in res
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(5)) and [r["row"] for r in recs] == [1, 2, 3, 4, 5]
    assert all(r["result"] == "tie" and r["margin"] == 0.0 and r["logp_chosen"] == r["ref_logp_chosen"] for r in recs)
    assert any(
        m.startswith("5 of 5 rows read scored: accuracy 0.000 (95 % CI 0.000 to ") and "ties 1.000" in m for m in logs
    )
    assert LENGTH_BIAS_WARNING not in logs


def test_without_reference_warns_and_reports_the_length_normalised_variant(tiny_model, pairs, tmp_path, capsys):
    out = tmp_path / "per_pair.jsonl"
    assert (
        main(
            ["eval", "--model", tiny_model, "--data", pairs, "--per-pair", str(out), "--out", str(tmp_path / "e.json")]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert LENGTH_BIAS_WARNING in err.splitlines()
    res = json.loads((tmp_path / "e.json").read_text())
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == res["pairs"] == 5
    for r in recs:
        assert r["margin"] == pytest.approx(r["logp_chosen"] - r["logp_rejected"], abs=1e-4)
        assert r["margin_per_token"] == pytest.approx(
            r["logp_chosen"] / r["tokens_chosen"] - r["logp_rejected"] / r["tokens_rejected"], abs=1e-5
        )
        assert r["result"] == outcome(r["margin"], r["tie_tolerance"]) and r["tokens_rejected"] > r["tokens_chosen"]
    wins = sum(r["result"] == "win" for r in recs)
    assert res["reward_accuracy"] == pytest.approx(wins / 5)
    normalised_wins = sum(r["margin_per_token"] > 0 for r in recs)
    assert res["length_normalised/reward_accuracy"] == pytest.approx(normalised_wins / 5)
    assert res["logp_margin"] == pytest.approx(sum(r["margin"] for r in recs) / 5, abs=1e-4)
    assert "length_normalised/logp_margin_ci95" in res


def test_limit_says_how_many_rows_were_scored(tiny_model, pairs):
    logs = []
    res = evaluate_preference_file(tiny_model, pairs, limit=2, log=logs.append)
    assert res["pairs"] == 2 and res["limit"] == 2
    assert any(m.startswith("2 of 2 rows read scored (--limit 2: later rows not read): ") for m in logs)
