"""Iterative online training (online.rounds >= 1) and prompt-only data files for train.mode=online: prompts read from
prompt-only rows (text, chat) and from preference pairs, one-line errors for a row without a usable prompt, each
round's pairs.jsonl trainable by plain `dpolab train`, resume after a stop mid-round bitwise equal to an uninterrupted
run (no round sampled twice), and online.sync_reference moving the reference to the policy at each round's start."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from dpolab.cli import main
from dpolab.config import ConfigError, build_config, save_config
from dpolab.data.prompts import load_prompt_data
from dpolab.data.tokenize import render_texts, tokenize_preference
from dpolab.data.types import DataError, PreferenceRow
from dpolab.engine import Trainer, train
from dpolab.engine import online_rounds as rounds_module
from dpolab.engine.logging import read_metrics
from dpolab.engine.online_rounds import OnlineRounds
from dpolab.models.load import load_saved_model, load_tokenizer
from dpolab.models.preference_logps import preference_outputs

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
ARITH = {"n_train": 16, "n_eval": 4, "n_terms": [2, 2], "max_value": 9}


@pytest.fixture
def judges(tmp_path, monkeypatch):
    """A user judge: the number of digits in the response (few ties on a random model)."""
    (tmp_path / "iter_judges.py").write_text(
        "def digits(prompt, response):\n    return float(sum(c.isdigit() for c in response))\n"
        "def same(prompt, response):\n    return 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "iter_judges:digits"
    sys.modules.pop("iter_judges", None)


def cfg(tmp_path, *overrides, name="run"):
    base = {
        "model": {"tiny": TINY},
        "data": {"task": "arithmetic", "task_args": ARITH, "max_length": 48},
        "train": {"mode": "online", "batch_size": 2, "lr": 5e-3, "schedule": "constant", "seed": 0},
        "online": {
            "judge": "iter_judges:digits",
            "samples_per_prompt": 3,
            "max_new_tokens": 8,
            "rounds": 2,
            "prompts_per_round": 6,
        },
        "eval": {"batch_size": 32, "at_start": False},  # one generate call per round's samples
        "output": {"dir": str(tmp_path / name), "progress": False},
    }
    return build_config(base, list(overrides))


def weights(run):
    return load_file(str(run / "final" / "model.safetensors"))


# -- prompt-only files --------------------------------------------------------------------------------------------


def _tok():
    return load_tokenizer(build_config({"model": {"tiny": TINY}}).model)


def test_prompt_only_rows_text_chat_and_pairs_give_prompts(tmp_path):
    tok = _tok()
    chat = [{"role": "user", "content": "Q: 4+4"}]
    rows = [
        {"prompt": "Q: 1+2\nA:", "id": 7},
        {"prompt": chat},
        {"prompt": "Q: 3+3\nA:", "chosen": " 6", "rejected": " 5"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got, skips = load_prompt_data(str(path), tok, max_length=96, log=lambda m: None)
    assert len(got) == 3 and skips.total == 0 and not any("truncated_tokens" in g.meta for g in got)
    text_ids = [tok.bos_token_id] + tok("Q: 1+2\nA:", add_special_tokens=False)["input_ids"]
    assert got[0].prompt_ids == text_ids and got[0].meta["id"] == 7 and got[0].meta["row"] == 1
    rendered, _, _ = render_texts(tok, chat, [])  # the chat template with the generation prompt
    assert (
        rendered != "Q: 4+4"
        and got[1].prompt_ids == [tok.bos_token_id] + tok(rendered, add_special_tokens=False)["input_ids"]
    )
    pair = tokenize_preference(PreferenceRow("Q: 3+3\nA:", " 6", " 5"), tok, max_length=96)
    assert got[2].prompt_ids == pair.prompt_ids  # a pair's prompt exactly as preference training has it
    csv = tmp_path / "prompts.csv"  # any reader: CSV with only a (renamed) prompt column
    csv.write_text("question\nQ: 5+5\n")
    got, _ = load_prompt_data(str(csv), tok, columns={"prompt": "question"}, max_length=48, log=lambda m: None)
    assert [g.prompt_ids for g in got] == [[tok.bos_token_id] + tok("Q: 5+5", add_special_tokens=False)["input_ids"]]


def test_prompt_only_parquet_and_hh_text(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    tok = _tok()
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["\n\nHuman: hi there\n\nAssistant:"]}), str(path))
    (plain,), _ = load_prompt_data(str(path), tok, max_length=96, log=lambda m: None)
    assert (
        plain.prompt_ids
        == [tok.bos_token_id] + tok("\n\nHuman: hi there\n\nAssistant:", add_special_tokens=False)["input_ids"]
    )
    (hh,), _ = load_prompt_data(str(path), tok, max_length=96, data_format="hh", log=lambda m: None)
    rendered, _, _ = render_texts(tok, [{"role": "user", "content": "hi there"}], [])  # the empty last turn dropped
    assert hh.prompt_ids == [tok.bos_token_id] + tok(rendered, add_special_tokens=False)["input_ids"]
    path.unlink()
    pq.write_table(pa.table({"prompt": ["no turns here"]}), str(path))
    with pytest.raises(DataError, match=r"row 1: field 'prompt': no '\\n\\nHuman:'"):
        load_prompt_data(str(path), tok, max_length=96, data_format="hh", log=lambda m: None)


def test_a_long_prompt_is_cut_to_max_prompt_length_and_recorded(tmp_path):
    tok = _tok()
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "x" * 40}) + "\n")
    (got,), _ = load_prompt_data(str(path), tok, max_length=32, max_prompt_length=10, log=lambda m: None)
    assert len(got.prompt_ids) == 10 and got.prompt_ids[0] == tok.bos_token_id  # keep_end keeps BOS in front
    assert got.meta["truncated_tokens"] == {"prompt": 31}


@pytest.mark.parametrize(
    "row, words",
    [
        ({"question": "hi"}, "row 2: field 'prompt': missing: a prompt row needs 'prompt'"),
        ({"prompt": 3}, "row 2: field 'prompt': expected text or chat messages, got int"),
        ({"prompt": ""}, "row 2: field 'prompt': empty prompt"),
        ({"prompt": [{"role": "user"}]}, "row 2: field 'prompt': message 0: expected a dict with 'role' and 'content'"),
    ],
)
def test_a_row_without_a_usable_prompt_is_one_line_naming_file_row_and_field(tmp_path, row, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        load_prompt_data(str(path), _tok(), max_length=48, log=lambda m: None)
    assert str(e.value).startswith(f"{path}: {words}") and "\n" not in str(e.value)
    got, skips = load_prompt_data(str(path), _tok(), max_length=48, on_error="skip", log=lambda m: None)
    assert len(got) == 1 and skips.total == 1


@pytest.mark.slow
def test_per_step_online_trains_on_a_prompt_only_file(tmp_path, judges):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q: {i}+1\nA:"}) + "\n" for i in range(6)))
    over = (
        "online.rounds=0",
        "online.prompts_per_round=null",
        "train.max_steps=1",
        "data.task=null",
        "data.eval_fraction=0",
    )
    c = cfg(tmp_path, *over, f"data.train={path}")
    s = Trainer(c).fit()
    assert s["steps"] == 1 and s["train_examples"] == 6


# -- iterative mode -----------------------------------------------------------------------------------------------


def test_iterative_settings_it_cannot_honour_are_refused_in_one_line(tmp_path):
    for over, words in [
        ("train.epochs=2", "train.epochs: iterative online training"),
        ("reference.sync_every=2", "reference.sync_every (TR-DPO) is not available with online.rounds"),
        ("reference.name_or_path=x", "online.sync_reference: the reference is a separate model"),
    ]:
        extra = ["online.sync_reference=true"] if "name_or_path" in over else []
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            cfg(tmp_path, over, *extra)
    for over in ("online.prompts_per_round=4", "online.epochs_per_round=2", "online.sync_reference=true"):
        with pytest.raises(ConfigError, match=f"online.{over.split('.')[1].split('=')[0]} applies to iterative mode"):
            cfg(tmp_path, "online.rounds=0", "online.prompts_per_round=null", over)
    with pytest.raises(ConfigError, match="runs as successive trainer phases"):
        Trainer(cfg(tmp_path))  # a Trainer would ignore the rounds


@pytest.mark.slow
def test_rounds_write_pairs_that_plain_dpolab_train_trains_on_against_the_starting_reference(tmp_path, judges):
    """Two rounds, the reference the starting model in both (online.sync_reference=false): round 1's pairs.jsonl
    and the per-round metrics, plain `dpolab train` on that file, and round 2's reference log-probs."""
    runner = OnlineRounds(cfg(tmp_path, "eval.at_start=true", "reference.mode=copy"))
    s = runner.fit()
    run = tmp_path / "run"
    pairs = run / "rounds" / "round-001" / "pairs.jsonl"
    rows = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert rows and all(r["chosen_score"] > r["rejected_score"] for r in rows)
    assert all(r["rm_margin"] == r["chosen_score"] - r["rejected_score"] for r in rows)
    assert all(sum(c.isdigit() for c in r["chosen"]) == r["chosen_score"] for r in rows)
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2] and "eval/online/judge_mean" in metrics[0]
    one = metrics[1]
    assert one["online/pairs"] == len(rows) and one["online/prompts"] == 6 and 0 < one["step"] < s["steps"]
    for key in ("online/judge_mean", "online/judge_ci", "online/tie_rate", "online/time_sample_s"):
        assert key in one
    assert one["online/time_judge_s"] >= 0 and one["online/time_train_s"] > 0 and "eval/online/judge_mean" not in one
    assert "eval/online/judge_mean" in metrics[2] and s["final_eval"]["round"] == 2  # eval.every=0: the last round
    assert (run / "DONE").exists() and (run / "final" / "model.safetensors").exists()
    plain = [
        "train",
        f"data.train={pairs}",
        "data.eval_fraction=0",
        "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
        "train.max_steps=1",
        "output.progress=false",
        f"output.dir={tmp_path / 'plain'}",
    ]
    assert main(plain) == 0
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["train_examples"] == len(rows)
    ref, start = _logps_against(runner.trainer, run / "rounds" / "start")
    _, round_start = _logps_against(runner.trainer, run / "rounds" / "round-001" / "train" / "final")
    assert not torch.allclose(round_start, start, atol=1e-4)  # round 1 moved the policy
    torch.testing.assert_close(ref, start, atol=1e-5, rtol=0)  # round 2's reference: the starting model


@pytest.mark.slow
def test_a_round_whose_samples_all_tie_trains_nothing_and_keeps_the_policy(tmp_path, judges):
    s = train(cfg(tmp_path, "online.judge=iter_judges:same", "online.rounds=2"))
    run = tmp_path / "run"
    rows = read_metrics(run / "metrics.jsonl")
    assert [(m["round"], m["online/pairs"], m["online/tie_rate"], m["step"]) for m in rows] == [
        (1, 0, 1.0, 0),
        (2, 0, 1.0, 0),
    ]
    assert (run / "rounds" / "round-001" / "pairs.jsonl").read_text() == "" and not (
        run / "rounds" / "round-001" / "train"
    ).exists()
    a, b = weights(run), load_file(str(run / "rounds" / "start" / "model.safetensors"))
    assert s["steps"] == 0 and all(torch.equal(a[k], b[k]) for k in b)


class Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_after_a_stop_mid_round_is_bitwise_equal_and_samples_no_round_twice(tmp_path, judges, monkeypatch):
    over = ("output.save_every=1", "model.dropout=true", "train.schedule=linear")
    train(cfg(tmp_path, *over, name="straight"))

    real_checkpoint = Trainer._checkpoint

    def stop_in_round_two(self):
        real_checkpoint(self)
        if "round-002" in str(self.run_dir) and self.step == 1:
            raise Stop

    monkeypatch.setattr(Trainer, "_checkpoint", stop_in_round_two)
    with pytest.raises(Stop):
        train(cfg(tmp_path, *over, name="stopped"))
    run = tmp_path / "stopped"
    assert (run / "rounds" / "round-002" / "pairs.jsonl").exists() and not (run / "DONE").exists()
    assert [m["round"] for m in read_metrics(run / "metrics.jsonl")] == [1]
    monkeypatch.setattr(Trainer, "_checkpoint", real_checkpoint)

    sampled = []
    real_sample = rounds_module.sample_judge_pair
    monkeypatch.setattr(rounds_module, "sample_judge_pair", lambda *a, **k: sampled.append(1) or real_sample(*a, **k))
    with pytest.raises(Exception, match="--resume"):  # a plain rerun refuses the unfinished run
        train(cfg(tmp_path, *over, name="stopped"))
    saved = tmp_path / "stopped.yaml"  # resumed through the command line, which prints the run's summary
    save_config(cfg(tmp_path, *over, name="stopped"), saved)
    assert main(["train", "--resume", "--config", str(saved)]) == 0
    s = json.loads((run / "summary.json").read_text())
    a, b = weights(tmp_path / "straight"), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(run / "metrics.jsonl")
    assert [m["round"] for m in resumed] == [1, 2]
    keys = ("online/judge_mean", "online/pairs", "step", "loss", "eval/online/judge_mean")
    assert [[m.get(k) for k in keys] for m in straight] == [[m.get(k) for k in keys] for m in resumed]
    # only the final evaluation's eval prompts were sampled: rounds 1 and 2 were not sampled again
    assert len(sampled) == 1 and s["rounds"] == 2


def _logps_against(trainer, policy_folder):
    """(reference, policy) log-probs of the latest round's pairs: its reference, and the policy saved in a folder."""
    policy = load_saved_model(policy_folder)
    batch = trainer.collate(list(range(len(trainer.train_data))), trainer.train_data)
    with torch.no_grad():
        out = preference_outputs(policy, trainer.reference, batch, need_tokens=False, extras=())
    return (
        torch.cat([out.ref_chosen_logps, out.ref_rejected_logps]),
        torch.cat([out.policy_chosen_logps, out.policy_rejected_logps]),
    )


@pytest.mark.slow
def test_sync_reference_moves_the_reference_to_the_policy_at_each_round_start(tmp_path, judges):
    runner = OnlineRounds(cfg(tmp_path, "online.sync_reference=true", "reference.mode=copy"))
    runner.fit()
    run, t = tmp_path / "run", runner.trainer
    assert "round-002" in str(t.run_dir)
    ref, round_start = _logps_against(t, run / "rounds" / "round-001" / "train" / "final")
    _, start = _logps_against(t, run / "rounds" / "start")
    assert not torch.allclose(round_start, start, atol=1e-4)  # round 1 moved the policy
    torch.testing.assert_close(ref, round_start, atol=1e-5, rtol=0)  # round 2's reference: the policy it started as


LORA = ("lora.enabled=true", "lora.target_modules=all-linear")


@pytest.mark.slow
@pytest.mark.parametrize(
    "sync, mode, kind",
    [(True, "adapter", "adapter"), (True, "auto", "precomputed"), (False, "adapter", "separate")],
    ids=["sync-adapter", "sync-auto", "start-adapter"],
)
def test_lora_rounds_train_each_round_against_the_right_reference(tmp_path, judges, sync, mode, kind):
    """Under LoRA each round trains a fresh adapter on the previous round's merged policy. Its reference: with
    online.sync_reference the adapter-disabled policy, i.e. the policy as the round started (live, or the table
    reference.mode=auto scores once from it); without, the starting model, a separate copy standing in for
    reference.mode=adapter (after round 1 the adapter-disabled policy is no longer the start). The run's final/ is the
    last round's policy, reloadable on its own (its adapter merged into the chain of rounds it starts from)."""
    over = (*LORA, f"online.sync_reference={str(sync).lower()}", f"reference.mode={mode}", "train.lr=2e-2")
    runner = OnlineRounds(cfg(tmp_path, *over))
    s = runner.fit()
    run, t = tmp_path / "run", runner.trainer
    assert "round-002" in str(t.run_dir) and s["rounds"] == 2
    assert t.params["trainable"] < t.params["total"]  # the round trained adapters, not the full model
    assert s["reference_mode"] == kind
    ref, round_start = _logps_against(t, run / "rounds" / "round-001" / "train" / "final")
    _, start = _logps_against(t, run / "rounds" / "start")
    assert not torch.allclose(round_start, start, atol=1e-4)  # round 1 moved the policy
    torch.testing.assert_close(ref, round_start if sync else start, atol=1e-5, rtol=0)
    _, final = _logps_against(t, run / "final")
    _, trained = _logps_against(t, run / "rounds" / "round-002" / "train" / "final")
    assert not torch.allclose(final, round_start, atol=1e-4)  # round 2 moved it again
    torch.testing.assert_close(final, trained, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("tuning", [(), LORA], ids=["full", "lora"])
def test_bf16_rounds_finish_with_finite_losses(tmp_path, judges, tuning):
    """train.bf16=true (CPU autocast): each round samples, judges and trains under bf16; every round's training
    losses and the per-round judge statistics are finite."""
    s = train(cfg(tmp_path, "train.bf16=true", "online.pairs=all", *tuning))
    run = tmp_path / "run"
    rows = read_metrics(run / "metrics.jsonl")
    assert [m["round"] for m in rows] == [1, 2] and s["steps"] > 0
    for r in rows:
        for k in ("loss", "online/judge_mean", "online/judge_ci", "eval/online/judge_mean"):
            if k in r:
                assert isinstance(r[k], float) and math.isfinite(r[k]), (k, r[k])
        assert "loss" in r and r["online/pairs"] > 0
    for r in (1, 2):
        train_run = run / "rounds" / f"round-00{r}" / "train"
        assert json.loads((train_run / "summary.json").read_text())["runtime"]["bf16"] is True
        losses = [m["loss"] for m in read_metrics(train_run) if "loss" in m]
        assert losses and all(math.isfinite(x) for x in losses)
