"""The loop knows objectives, not modes: a new objective is a class plus one registration line, and the loop file
names no objective."""
from __future__ import annotations

import inspect
import re

import pytest

import dpolab.engine.trainer as trainer_module
from dpolab.config import ConfigError, build_config
from dpolab.data.collate import collate_preference_fast
from dpolab.engine import Trainer
from dpolab.engine.objectives import OBJECTIVES, MicroResult, Objective, get_objective, register
from dpolab.models.fastpath import logps_for_batch
from dpolab.models.logprobs import split_pairs


class ChosenNLL(Objective):
    """A fourth objective for the test: token-mean NLL of the chosen responses of preference pairs."""

    name = "chosen-nll"

    def collate(self, items, pad_id, layout, hidden_size):
        return collate_preference_fast(items, pad_id, layout, hidden_size=hidden_size)

    def forward(self, model, batch, *, training):
        with self.autocast():
            lp = logps_for_batch(model, batch)
        chosen, _ = split_pairs(lp.sums, batch["num_pairs"])
        tokens, _ = split_pairs(lp.counts, batch["num_pairs"])
        nll = -chosen.sum()
        return MicroResult(nll, float(tokens.sum()), {"loss": (nll / tokens.sum()).detach()})

    def units(self, example):
        return len(example.chosen_ids)


@pytest.fixture
def chosen_nll():
    register(ChosenNLL)  # the one registration line
    yield
    OBJECTIVES.pop(ChosenNLL.name)


def test_a_new_objective_trains_without_touching_the_loop(tmp_path, chosen_nll):
    cfg = build_config({
        "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
        "data": {"task": "arithmetic", "task_args": {"n_train": 16, "n_eval": 8, "n_terms": [2, 2], "max_value": 9}, "max_length": 48},
        "train": {"mode": "chosen-nll", "batch_size": 4, "grad_accum": 2, "max_steps": 4, "lr": 5e-3, "seed": 0},
        "eval": {"batch_size": 8},
        "output": {"dir": str(tmp_path / "run"), "progress": False},
    })
    s = Trainer(cfg).fit()
    assert s["mode"] == "chosen-nll" and s["steps"] == 4
    assert s["final_eval"]["eval/loss"] < s["first_eval"]["eval/loss"]  # it learnt the chosen answers
    assert (tmp_path / "run" / "final").is_dir()


def test_unknown_objective_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown train.mode 'nope'; valid: .*preference.*rm.*sft"):
        get_objective("nope")


def test_the_loop_names_no_objective():
    src = inspect.getsource(trainer_module)
    assert not re.search(r"""mode\s*(==|!=|in)\s*[\("'\[]""", src), "the loop branches on the mode"
    for name in ("sft", "preference", "rm"):
        assert not re.search(rf"""["']{name}["']""", src), f"the loop names the '{name}' objective"
    assert len(src.splitlines()) < 300


@pytest.mark.parametrize("spec", [{"name": "wpo"}, {"name": "ld-dpo"}, {"name": "dpo", "weighting": "wpo"}])
def test_wpo_and_ld_dpo_are_accepted(spec):
    """The engine produces their inputs now (runs: tests/integration/test_wpo_ld_engine.py)."""
    cfg = build_config({"data": {"task": "arithmetic"}, "loss": [spec]})
    objective = get_objective("preference")(cfg)
    assert objective.loss.needs_token_log_sum_sq_probs or objective.loss.needs_ref_token_split
