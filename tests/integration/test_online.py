"""train.mode=online end to end on a tiny model: on-policy pairs, judge failures as one line, the precomputed reference
refused, resume bitwise equal to an uninterrupted run, and online MADPO equal to MADPO on the same margins."""

from __future__ import annotations

import json
import math
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from dpolab.config import ConfigError, build_config
from dpolab.engine import Trainer
from dpolab.engine.judges import JudgeError
from dpolab.engine.logging import read_metrics
from dpolab.engine.objectives import get_objective
from dpolab.engine.objectives.online import OnlineObjective, make_pairs

pytestmark = pytest.mark.slow

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
ARITH = {"n_train": 16, "n_eval": 4, "n_terms": [2, 2], "max_value": 9}


@pytest.fixture
def judges(tmp_path, monkeypatch):
    """A user module of judges: the number of digits in the response (few ties on a random model), and failing ones."""
    (tmp_path / "online_judges.py").write_text(
        "import math\n"
        "def digits(prompt, response):\n    return float(sum(c.isdigit() for c in response))\n"
        "def spread(prompt, response):\n    return float(sum(map(ord, response)) % 997) / 200\n"
        "def boom(prompt, response):\n    raise KeyError('no score for this')\n"
        "def nan(prompt, response):\n    return math.nan\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "online_judges"
    sys.modules.pop("online_judges", None)


def cfg(tmp_path, *overrides, name="run", judge="online_judges:digits"):
    base = {
        "model": {"tiny": TINY},
        "data": {"task": "arithmetic", "task_args": ARITH, "max_length": 48},
        "train": {"mode": "online", "batch_size": 4, "max_steps": 3, "lr": 5e-3, "schedule": "constant", "seed": 0},
        "online": {"judge": judge, "samples_per_prompt": 3, "max_new_tokens": 8},
        "eval": {"batch_size": 16, "at_start": False},
        "output": {"dir": str(tmp_path / name), "progress": False},
    }
    return build_config(base, list(overrides))


def weights(run):
    return load_file(str(run / "final" / "model.safetensors"))


def test_online_is_one_registered_objective():
    assert get_objective("online") is OnlineObjective and OnlineObjective.data_kind.name == "online"


def test_pairs_best_worst_and_all_skip_exact_ties():
    assert make_pairs([0.0, 2.0, 1.0], "best-worst") == ([(1, 0)], 0, 1)
    assert make_pairs([1.0, 1.0], "best-worst") == ([], 1, 1)
    assert make_pairs([0.0, 2.0, 0.0], "all") == ([(1, 0), (1, 2)], 1, 3)


def test_samples_are_on_policy_logged_and_written(tmp_path, judges):
    """At temperature 1 / top-p 1 the log-prob the sampler gave each paired completion equals the policy's own
    log-prob of it in the training forward (the same weights: the pairs are on-policy)."""
    s = Trainer(cfg(tmp_path, "online.pairs=all")).fit()
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "online/judge_mean" in r]
    assert len(rows) == 3
    for r in rows:
        assert 0 <= r["online/logp_gap/max"] < 1e-4, r["online/logp_gap/max"]
        assert 0 <= r["online/tie_rate"] <= 1 and r["online/sample_tokens"] > 0 and 0 <= r["online/eos_rate"] <= 1
        for key in ("online/judge_ci", "online/time_sample_s", "online/time_judge_s", "online/time_train_s"):
            assert key in r
    assert rows[0]["online/kl"] == 0.0 and rows[-1]["online/kl"] != 0.0  # the policy moves away from the reference
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 4 * 3 and {x["step"] for x in samples} == {1, 2, 3}
    assert all(x["score"] == sum(c.isdigit() for c in x["completion"]) for x in samples)
    assert "eval/online/judge_mean" in s["final_eval"]


def test_the_gap_detects_samples_that_are_not_the_policy_s(tmp_path, judges):
    """The check can fail: at temperature 0.5 the sampler's log-probs are not the policy's, and the gap is not logged
    (it is only meaningful at temperature 1 and top-p 1)."""
    Trainer(cfg(tmp_path, "online.temperature=0.5", "train.max_steps=1")).fit()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert not any("online/logp_gap/max" in r for r in rows)
    from dpolab.models.generation import sample_ids

    t = Trainer(cfg(tmp_path, "train.max_steps=1", name="probe"))
    model = t.accelerator.unwrap_model(t.model)
    prompt = t.train_data[0].prompt_ids
    hot = sample_ids(model, [prompt], max_new_tokens=6, temperature=0.5, seed=1)[0]
    ids = torch.tensor([prompt + hot.ids])
    with torch.no_grad():
        logp = model(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
    own = float(logp.gather(-1, torch.tensor(hot.ids)[:, None]).sum())
    assert abs(own - sum(hot.logps[: len(hot.ids)])) > 1e-3


@pytest.mark.parametrize("fn, words", [("boom", "raised KeyError: 'no score for this'"), ("nan", "returned nan")])
def test_a_failing_judge_stops_the_run_with_one_line(tmp_path, judges, fn, words):
    with pytest.raises(JudgeError) as e:
        Trainer(cfg(tmp_path, judge=f"online_judges:{fn}")).fit()
    text = str(e.value)
    assert f"judge online_judges:{fn} {words}" in text and "(on prompt 'Q: " in text and "\n" not in text


def test_a_precomputed_reference_is_refused_in_one_line(tmp_path, judges):
    with pytest.raises(ConfigError) as e:
        Trainer(cfg(tmp_path, "reference.mode=precomputed"))
    assert "reference.mode=precomputed is not available in train.mode=online" in str(e.value)
    assert "\n" not in str(e.value)


def test_resume_after_a_stop_is_bitwise_equal(tmp_path, judges):
    over = ("train.max_steps=6", "output.save_every=2", "model.dropout=true", "train.schedule=linear")
    Trainer(cfg(tmp_path, *over, name="straight")).fit()
    t = Trainer(cfg(tmp_path, *over, name="stopped"))
    t.total_steps = 4
    t.fit()
    run = tmp_path / "stopped"
    for f in ("DONE", "summary.json"):
        (run / f).unlink()
    shutil.rmtree(run / "final")
    Trainer(cfg(tmp_path, *over, name="stopped"), resume=True).fit()
    a, b = weights(tmp_path / "straight"), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    straight = [r for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if "loss" in r]
    resumed = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["online/judge_mean"] for r in straight] == [r["online/judge_mean"] for r in resumed]


def test_online_madpo_equals_madpo_on_the_same_margins(tmp_path, judges):
    """One online MADPO step (best-worst pairs, the judge's score difference as rm_margin) gives exactly the weights
    of one offline MADPO step on the same pairs with the same margins; other margins give other weights."""
    madpo = ["loss=[{name: madpo, params: {beta: 0.5}}]", "train.max_steps=1", "train.optimizer=sgd", "train.lr=0.5"]
    madpo.append("online.judge=online_judges:spread")  # scores in [0, 5): no ties, margins where w(m) varies
    online = Trainer(cfg(tmp_path, *madpo, name="online"))
    online.fit()
    pairs = online.objective.last_pairs
    assert len(pairs) == 4 and len({p.extras["rm_margin"] for p in pairs}) > 1  # no ties, distinct margins

    def offline(name, margins):
        data = [type(p)(p.prompt_ids, p.chosen_ids, p.rejected_ids, {"rm_margin": m}, p.meta) for p, m in margins]
        c = cfg(tmp_path, *madpo, "train.mode=preference", "train.shuffle=false", name=name)
        Trainer(c, train_data=data, eval_data=data[:1]).fit()
        return weights(tmp_path / name)

    from online_judges import spread

    def judged(ids):  # the judge's score of a completion, computed here from its tokens
        return spread("", online.tokenizer.decode(ids, skip_special_tokens=True))

    a = weights(tmp_path / "online")
    same = offline("same", [(p, judged(p.chosen_ids) - judged(p.rejected_ids)) for p in pairs])
    assert all(torch.equal(a[k], same[k]) for k in a)
    other = offline("other", [(p, -3.0) for p in pairs])
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_lora_trains_against_the_adapter_disabled_policy_on_policy(tmp_path, judges):
    s = Trainer(cfg(tmp_path, "lora.enabled=true", "lora.target_modules=all-linear", "train.max_steps=2")).fit()
    assert s["reference_mode"] == "adapter"
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "online/judge_mean" in r]
    assert len(rows) == 2 and all(r["online/logp_gap/max"] < 1e-4 for r in rows)
    assert rows[0]["online/kl"] == 0.0 and rows[1]["online/kl"] != 0.0


def test_a_run_over_an_earlier_one_starts_its_own_samples_file(tmp_path, judges):
    """output.overwrite=true replaces an earlier run: its samples.jsonl holds this run's samples only."""
    Trainer(cfg(tmp_path, "train.max_steps=2")).fit()
    Trainer(cfg(tmp_path, "train.max_steps=1", "output.overwrite=true")).fit()
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 3 and {x["step"] for x in samples} == {1}


@pytest.mark.parametrize("tuning", [[], ["lora.enabled=true", "lora.target_modules=all-linear"]], ids=["full", "lora"])
def test_bf16_online_runs_finish_with_finite_losses(tmp_path, judges, tuning):
    """train.bf16=true (CPU autocast): sampling, judging and training run under bf16 and every logged loss, KL and
    judge mean is finite; the sampler's log-probs stay close to the policy's (bf16 rounding only)."""
    s = Trainer(cfg(tmp_path, "train.bf16=true", "train.max_steps=2", "online.pairs=all", *tuning)).fit()
    assert s["runtime"]["bf16"] is True
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "online/judge_mean" in r]
    assert len(rows) == 2
    for r in rows:
        for k in ("loss", "online/kl", "online/judge_mean", "grad_norm"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), (k, r[k])
        assert r["online/logp_gap/max"] < 0.5
