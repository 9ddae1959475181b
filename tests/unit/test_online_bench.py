"""benchmarks/online.py: its commands are valid run configurations, its time split takes each step's training from
the next step's log (the last step's from its step time), rounds are combined by median, and its ``--smoke`` run
(a tiny GPT-2 through the ordinary CLI, seconds) writes a result and a RESULTS.md-style section, so the script
cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import online as B

from dpolab.config import load_config


def test_the_commands_are_valid_sft_and_online_configurations(tmp_path):
    import argparse

    a = argparse.Namespace(model="tiny-gpt2", terms="2,3", max_value=7, prompts=5, heldout=3, sft_steps=2,
                           sft_lr=1e-3, steps=4, lr=5e-4, beta=0.2, k=3, batch_size=2, new_tokens=9, lora_r=4,
                           threads=1)  # fmt: skip
    sft, online = B.commands(a, tmp_path)
    assert sft[0] == online[0] == "train"
    s, o = load_config(None, sft[1:]), load_config(None, online[1:])
    assert (s.train.mode, s.train.max_steps, s.lora.enabled, s.lora.r) == ("sft", 2, True, 4)
    assert s.data.task_args == {"n_train": 5, "n_eval": 3, "n_terms": [2, 3], "max_value": 7}
    assert (o.train.mode, o.online.judge, o.online.samples_per_prompt, o.online.max_new_tokens) == (
        "online", "task:arithmetic", 3, 9,
    )  # fmt: skip
    assert o.model.init_from == str(tmp_path / "sft" / "final") and o.train.threads == 1
    assert [(x["name"], x["params"]) for x in o.loss] == [("dpo", {"beta": 0.2})]


def _row(step, sample, judge, train, step_s, mean=0.5):
    return {"step": step, "online/time_sample_s": sample, "online/time_judge_s": judge,
            "online/time_train_s": train, "time/step_s": step_s, "online/judge_mean": mean, "online/judge_ci": 0.1,
            "online/tie_rate": 0.25, "online/logp_gap/max": 1e-4}  # fmt: skip


def test_each_steps_training_is_the_next_rows_and_the_last_one_is_what_the_step_time_leaves():
    metrics = [_row(2, 3.0, 0.1, 1.5, 5.0), {"step": 2, "eval/loss": 1.0}, _row(1, 2.0, 0.2, 0.0, 4.0)]
    rows = B.step_rows(metrics)
    assert [r["step"] for r in rows] == [1, 2]  # eval rows left out, steps in order
    assert rows[0]["train_s"] == 1.5  # logged by step 2: the previous step's training
    assert rows[1]["train_s"] == pytest.approx(5.0 - 3.0 - 0.1)


def test_rounds_are_combined_by_their_median_and_the_judge_windows_pool_their_samples():
    rounds = [B.step_rows([_row(1, t, 0.0, 0.0, t + 1)]) for t in (1.0, 5.0, 2.0)]
    assert B.median_steps(rounds)[0]["sample_s"] == 2.0
    samples = [{"step": st, "score": sc} for st, sc in [(1, 0.0), (1, 1.0), (2, 0.0), (3, 1.0), (4, 1.0), (4, 0.0),
                                                         (5, 1.0), (6, 1.0), (6, 1.0)]]  # fmt: skip
    j = B.judge_change(samples, 6, 2)
    assert j["window"] == 2 and j["n"] == [3, 3]  # pooled over the window's samples, not its step means
    assert j["first"][0] == pytest.approx(1 / 3) and j["last"][0] == pytest.approx(1.0) and j["last"][1] == 0.0
    assert B.judge_change(samples, 6, 10)["window"] == 3  # never overlapping: at most half the steps


@pytest.mark.slow
def test_the_smoke_run_writes_a_result_and_a_section(tmp_path, capsys):
    out = tmp_path / "online.json"
    assert B.main(["--smoke", "--threads", "1", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [s["step"] for s in rec["steps"]] == [1, 2]
    assert rec["heldout"]["n"] == 4 and set(rec["heldout"]["per_problem"]) == {"start", "online"}
    assert sum(rec["time_share"].values()) == pytest.approx(1.0)
    assert rec["online_command"].startswith("dpolab train model.name_or_path=tiny-gpt2")
    text = capsys.readouterr().out
    assert "### workload `online`" in text and rec["cpu"] in text and "| step | sample (s) |" in text
    assert not (Path(B.HERE) / "results" / "online-smoke.json").exists()  # --json: nothing in the repository
