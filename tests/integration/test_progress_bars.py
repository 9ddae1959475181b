"""Long scoring loops show a progress bar on stderr counted in pairs (pairs/s): `dpolab eval`, `dpolab rm score` and
the precomputed reference's log-probs. The bars redraw every 10 s when stderr is not a terminal; here they are made to
redraw at every update so that the counts show."""

from __future__ import annotations

import json
import re

import pytest

from dpolab.config import LoraConfig, ModelConfig, build_config

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
ARITH = {
    "task": "arithmetic",
    "task_args": {"n_train": 12, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
    "max_length": 48,
}


@pytest.fixture(autouse=True)
def redraw_every_update(monkeypatch):
    monkeypatch.setattr("dpolab.progress.bar_interval", lambda: 0.0)


def _counts(err: str, desc: str):
    """Every (done, total) the bar ``desc`` drew, and whether it showed a rate in pairs/s."""
    draws = [d for d in re.split(r"[\r\n]", err) if d.startswith(f"{desc}:")]
    return [tuple(map(int, m.groups())) for d in draws for m in [re.search(r"\| (\d+)/(\d+) \[", d)] if m], any(
        re.search(r"[\d.]+ pairs/s\]", d) for d in draws
    )


def test_pair_bar_counts_pairs_and_reports_pairs_per_second(capsys):
    from dpolab.progress import pair_bar

    with pair_bar(7, "demo bar") as bar:
        for k in (3, 3, 1):
            bar.update(k)
    counts, rate = _counts(capsys.readouterr().err, "demo bar")
    assert counts[0] == (0, 7) and counts[-1] == (7, 7) and (3, 7) in counts and rate
    with pair_bar(7, "off", enabled=False) as bar:
        bar.update(7)
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dpolab.models.load import load_policy, save_model
    from dpolab.models.tokenizer import build_char_tokenizer

    tok, cfg = build_char_tokenizer(), ModelConfig(name_or_path="tiny-gpt2", tiny=TINY)
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(load_policy(cfg, LoraConfig(), tok, seed=0), tok, path, cfg)
    return str(path)


@pytest.fixture()
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q: {i}+1\nA: ", "chosen": f"{i + 1}", "rejected": f"{i + 2}!"} for i in range(9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_eval_shows_pairs_scored_on_stderr_and_the_json_alone_on_stdout(tiny_model, pairs, capsys):
    from dpolab.cli import main

    assert main(["eval", "--model", tiny_model, "--data", pairs, "--batch-size", "4"]) == 0
    out, err = capsys.readouterr()
    counts, rate = _counts(err, "eval")
    assert counts[0] == (0, 9) and counts[-1] == (9, 9) and (4, 9) in counts and rate, err
    assert json.loads(out)["pairs"] == 9
    assert main(["eval", "--model", tiny_model, "--data", pairs, "--no-progress"]) == 0
    assert _counts(capsys.readouterr().err, "eval") == ([], False)


def test_rm_score_counts_pairs(tmp_path, pairs, capsys):
    from dpolab.engine import train
    from dpolab.rewards.score import score_file

    cfg = build_config(
        {
            "model": {"tiny": TINY},
            "data": {"train": pairs, "max_length": 48, "eval_fraction": 0.2},
            "train": {"mode": "rm", "batch_size": 4, "max_steps": 1},
            "eval": {"at_start": False},
            "output": {"dir": str(tmp_path / "rm"), "progress": False},
        }
    )
    train(cfg)
    capsys.readouterr()
    score_file(str(tmp_path / "rm" / "final"), pairs, str(tmp_path / "scored.jsonl"), batch_size=4, log=lambda m: None)
    counts, rate = _counts(capsys.readouterr().err, "rm score")
    assert counts[0] == (0, 9) and counts[-1] == (9, 9) and rate


def test_the_reference_precompute_counts_every_pair_it_scores(tmp_path, capsys):
    from dpolab.engine import Trainer

    cfg = build_config(
        {
            "model": {"tiny": TINY},
            "data": ARITH,
            "reference": {"mode": "precomputed"},
            "train": {"mode": "preference", "batch_size": 4, "max_steps": 1},
            "eval": {"batch_size": 4},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    Trainer(cfg).close()
    counts, rate = _counts(capsys.readouterr().err, "reference log-probs")
    assert counts[0] == (0, 16) and counts[-1] == (16, 16) and (4, 16) in counts and rate  # 12 train + 4 eval pairs
