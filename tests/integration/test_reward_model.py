"""Reward models end to end on tiny models: `rm train`, `rm score`, then MADPO reading the margins (seconds each)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from dpolab.cli import main
from dpolab.config import build_config
from dpolab.engine import Trainer
from dpolab.engine.logging import read_metrics
from dpolab.rewards import load_trained_reward_model, score_file

pytestmark = pytest.mark.slow

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
TINY_ARGS = [
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
    "train.batch_size=8",
    "eval.batch_size=16",
    "output.progress=false",
    "data.max_length=48",
]


def write_pairs(path: Path, n: int, seed: int, **extra_cols) -> Path:
    """Separable pairs: two independent random words; the chosen one contains a 'z', the rejected one never does
    (so a random reward head ranks about half the pairs right, and a trained one all of them)."""
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))  # noqa: E731
    rows = []
    for i in range(n):
        chosen = word()
        cut = rng.randint(0, len(chosen))
        rows.append(
            {
                "id": i,
                "prompt": f"Q{i % 7}: ",
                "chosen": chosen[:cut] + "z" + chosen[cut:],
                "rejected": word(),
                "note": f"row-{i}",
                **{k: v(i) for k, v in extra_cols.items()},
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rm_cfg(tmp_path, *overrides, name="rm"):
    train = write_pairs(tmp_path / "train.jsonl", 48, seed=0)
    evals = write_pairs(tmp_path / "eval.jsonl", 16, seed=1)
    data = {
        "model": {"name_or_path": "tiny-gpt2", "tiny": TINY},
        "data": {"train": str(train), "eval": str(evals), "max_length": 48},
        "train": {"mode": "rm", "batch_size": 8, "max_steps": 40, "lr": 3e-3, "schedule": "constant", "seed": 0},
        "eval": {"batch_size": 16},
        "output": {"dir": str(tmp_path / name), "progress": False},
    }
    return build_config(data, list(overrides))


def test_full_rm_learns_separable_pairs_and_reloads_with_the_same_rewards(tmp_path):
    from transformers import AutoModelForSequenceClassification

    t = Trainer(rm_cfg(tmp_path, "rm.center_weight=0.01"))
    s = t.fit()
    first, final = s["first_eval"], s["final_eval"]
    assert first["eval/reward_accuracy"] < 0.8 and final["eval/reward_accuracy"] == 1.0
    assert final["eval/margin"] > first["eval/margin"] + 1.0
    for k in (
        "eval/margin/std",
        "eval/rewards/mean",
        "eval/rewards/std",
        "eval/rewards/chosen",
        "eval/rewards/rejected",
        "eval/rm/center_loss",
    ):
        assert math.isfinite(final[k])
    rows = read_metrics(tmp_path / "rm" / "metrics.jsonl")
    train_rows = [r for r in rows if "reward_accuracy" in r]
    assert train_rows and all(
        k in train_rows[-1] for k in ("loss", "rm/bt_loss", "margin", "margin/std", "rewards/std")
    )

    final_dir = tmp_path / "rm" / "final"
    plain = AutoModelForSequenceClassification.from_pretrained(final_dir)  # what any HF user does
    assert plain.config.num_labels == 1 and plain.config.pad_token_id is not None
    # the reloaded model gives the trainer's final evaluation numbers on the eval set
    summary = score_file(
        str(final_dir), str(tmp_path / "eval.jsonl"), str(tmp_path / "scored.jsonl"), progress=False, log=lambda m: None
    )
    assert summary["pairwise_accuracy"] == 1.0
    assert summary["margin_mean"] == pytest.approx(final["eval/margin"], abs=1e-4)
    assert summary["margin_std"] == pytest.approx(final["eval/margin/std"], abs=1e-4)
    model, tok = load_trained_reward_model(final_dir)
    ids = tok("<bos>Q1: abc :)<eos>", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        assert plain.eval()(**ids).logits.item() == pytest.approx(model(**ids).logits.item(), abs=1e-6)


def test_lora_rm_trains_only_adapters_and_head_and_saves_a_merged_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    t = Trainer(rm_cfg(tmp_path, "lora.enabled=true", "lora.r=4", "train.lr=1e-2", "train.max_steps=40", name="lora"))
    trainable = [n for n, p in t.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".score." in n for n in trainable)
    assert any(".score." in n for n in trainable)  # the head itself is trained, not frozen at its random init
    s = t.fit()
    assert s["final_eval"]["eval/reward_accuracy"] >= 0.9
    assert s["final_eval"]["eval/margin"] > s["first_eval"]["eval/margin"] + 0.5
    final_dir = tmp_path / "lora" / "final"
    assert not (final_dir / "adapter_config.json").exists()  # merged: reloads plainly
    plain = AutoModelForSequenceClassification.from_pretrained(final_dir)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    summary = score_file(
        str(final_dir), str(tmp_path / "eval.jsonl"), str(tmp_path / "s.parquet"), progress=False, log=lambda m: None
    )
    assert summary["margin_mean"] == pytest.approx(s["final_eval"]["eval/margin"], abs=1e-4)
    # the LoRA checkpoint (adapter + head) also scores, merged into its recorded base
    ckpt = sorted((tmp_path / "lora" / "checkpoints").glob("step-*"))[-1] / "model"
    assert (ckpt / "adapter_config.json").exists()
    again = score_file(
        str(ckpt), str(tmp_path / "eval.jsonl"), str(tmp_path / "s2.jsonl"), progress=False, log=lambda m: None
    )
    assert again["margin_mean"] == pytest.approx(summary["margin_mean"], abs=1e-4)


def test_rm_score_keeps_rows_columns_order_and_is_reproducible(tmp_path, capsys):
    assert (
        main(
            [
                "rm",
                "train",
                *TINY_ARGS,
                f"data.train={write_pairs(tmp_path / 'tr.jsonl', 32, seed=0)}",
                "train.max_steps=3",
                f"output.dir={tmp_path / 'rm'}",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "pairwise accuracy" in out and "reward model:" in out
    data = write_pairs(tmp_path / "pairs.jsonl", 12, seed=3, rm_margin=lambda i: 99.0)  # an old margin gets replaced
    lines = data.read_text().splitlines()
    lines[4] = json.dumps(
        {"id": 4, "prompt": "Q: ", "chosen": "same", "rejected": "same", "note": "row-4"}
    )  # not scorable
    data.write_text("\n".join(lines) + "\n")
    model = str(tmp_path / "rm" / "final")
    outs = []
    for k in range(2):
        target = tmp_path / f"scored{k}.jsonl"
        assert (
            main(["rm", "score", "--model", model, "--data", str(data), "--out", str(target), "--batch-size", "5"]) == 0
        )
        outs.append(target.read_text())
    assert outs[0] == outs[1]  # reproducible to the last digit
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["rows"] == 12 and summary["scored"] == 11 and summary["skipped"] == 1
    assert "skipped 1 identical chosen and rejected" in captured.err
    rows = [json.loads(x) for x in outs[0].splitlines()]
    original = [json.loads(x) for x in data.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(12))
    for r, o in zip(rows, original):
        assert {k: r[k] for k in o if k != "rm_margin"} == {k: v for k, v in o.items() if k != "rm_margin"}
    assert rows[4]["rm_margin"] is None and rows[4]["reward_chosen"] is None
    for r in rows[:4] + rows[5:]:
        assert r["rm_margin"] == pytest.approx(r["reward_chosen"] - r["reward_rejected"]) and r["rm_margin"] != 99.0
    # Parquet output, and a different batch size gives the same scores up to float rounding
    assert (
        main(
            [
                "rm",
                "score",
                "--model",
                model,
                "--data",
                str(data),
                "--out",
                str(tmp_path / "s.parquet"),
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert [r["id"] for r in table] == list(range(12)) and table[4]["rm_margin"] is None
    for a, b in zip(table, rows):
        if b["rm_margin"] is not None:
            assert a["rm_margin"] == pytest.approx(b["rm_margin"], abs=1e-5)


def test_pipeline_rm_train_score_then_madpo(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 32, seed=0)
    scored = tmp_path / "scored.jsonl"
    assert (
        main(
            [
                "rm",
                "train",
                *TINY_ARGS,
                f"data.train={pairs}",
                "train.max_steps=10",
                "train.lr=3e-3",
                f"output.dir={tmp_path / 'rm'}",
            ]
        )
        == 0
    )
    assert (
        main(["rm", "score", "--model", str(tmp_path / "rm" / "final"), "--data", str(pairs), "--out", str(scored)])
        == 0
    )
    assert (
        main(
            [
                "train",
                *TINY_ARGS,
                f"data.train={scored}",
                "data.extras=[rm_margin]",
                "loss=[{name: madpo}]",
                "train.max_steps=3",
                f"output.dir={tmp_path / 'madpo'}",
            ]
        )
        == 0
    )
    rows = read_metrics(tmp_path / "madpo" / "metrics.jsonl")
    train_rows = [r for r in rows if "madpo/weight/mean" in r]
    assert len(train_rows) == 3
    for r in train_rows:
        assert 0 < r["madpo/weight/min"] <= r["madpo/weight/mean"] <= r["madpo/weight/max"]
    margins = [json.loads(x)["rm_margin"] for x in scored.read_text().splitlines()]
    assert all(isinstance(m, float) and math.isfinite(m) for m in margins)


@pytest.mark.parametrize(
    "extras, rm_margin, message",
    [
        (["data.extras=[rm_margin]"], None, "field 'rm_margin': missing"),
        ([], None, "rm_margin"),  # no data.extras: the loss names the column it needs
        (["data.extras=[rm_margin]"], float("nan"), "finite"),
    ],
)
def test_madpo_without_a_usable_margin_is_a_one_line_error(tmp_path, capsys, extras, rm_margin, message):
    cols = {} if rm_margin is None else {"rm_margin": lambda i: rm_margin}
    pairs = write_pairs(tmp_path / "pairs.jsonl", 16, seed=0, **cols)
    rc = main(
        [
            "train",
            *TINY_ARGS,
            f"data.train={pairs}",
            *extras,
            "loss=[{name: madpo}]",
            "train.max_steps=1",
            f"output.dir={tmp_path / 'r'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and message in err[-1] and "rm_margin" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_rm_score_errors_are_one_line(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 4, seed=0)
    assert (
        main(
            ["rm", "score", "--model", str(tmp_path / "nope"), "--data", str(pairs), "--out", str(tmp_path / "o.jsonl")]
        )
        == 2
    )
    assert (
        main(["rm", "score", "--model", str(tmp_path / "nope"), "--data", str(pairs), "--out", str(tmp_path / "o.csv")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not found" in err[0] and "unsupported output type" in err[1]
