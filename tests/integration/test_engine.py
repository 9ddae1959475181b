"""End-to-end training on tiny GPT-2 and Llama models built from configs (seconds each)."""

from __future__ import annotations

import math

import pytest
import torch

from dpolab.config import build_config
from dpolab.engine import Trainer, TrainError, train
from dpolab.engine.logging import read_metrics

pytestmark = pytest.mark.slow

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
TINY_LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def cfg(tmp_path, *overrides, model="tiny-gpt2", loss=None, name="run"):
    data = {
        "model": {"name_or_path": model, "tiny": TINY if model == "tiny-gpt2" else TINY_LLAMA},
        "data": {
            "task": "arithmetic",
            "task_args": {"n_train": 32, "n_eval": 8, "n_terms": [2, 2], "max_value": 9},
            "max_length": 64,
        },
        "train": {"batch_size": 8, "max_steps": 4, "lr": 1e-3, "schedule": "constant", "seed": 0},
        "eval": {"every": 0, "batch_size": 8},
        "output": {"dir": str(tmp_path / name), "progress": False},
    }
    if loss is not None:
        data["loss"] = loss
    return build_config(data, list(overrides))


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_sft_lowers_the_loss(tmp_path, model):
    s = train(cfg(tmp_path, "train.mode=sft", "train.max_steps=30", "train.lr=3e-3", model=model))
    assert s["final_eval"]["eval/loss"] < s["first_eval"]["eval/loss"] - 0.5
    assert (tmp_path / "run" / "final" / "config.json").exists()
    assert (tmp_path / "run" / "DONE").exists()


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_step0_invariant_through_the_model(tmp_path, model):
    """Policy == reference at step 0: DPO loss is ln 2 and the implicit rewards are exactly 0."""
    t = Trainer(cfg(tmp_path, model=model))
    ev = t.evaluate()
    assert ev["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert ev["eval/logratio/chosen"] == 0.0 and ev["eval/logratio/rejected"] == 0.0


def test_dpo_raises_reward_accuracy_on_training_pairs(tmp_path):
    c = cfg(tmp_path, "train.max_steps=40", "train.lr=2e-3", "data.eval_fraction=0", "reference.mode=copy")
    t = Trainer(c)
    t.eval_data = t.train_data  # measure on the training pairs themselves (a live reference scores any set)
    before = t.evaluate()["eval/reward_accuracy"]
    s = t.fit()
    after = s["final_eval"]["eval/reward_accuracy"]
    assert before == 0.0  # rewards are exactly 0 at step 0, so no pair is ranked correctly yet
    assert after >= 0.75


def test_lora_trains_only_adapter_weights(tmp_path):
    c = cfg(tmp_path, "lora.enabled=true", "lora.r=4", "train.max_steps=1", "train.lr=1e-2")
    t = Trainer(c)
    before = {n: p.detach().clone() for n, p in t.policy.named_parameters()}
    assert (
        t.reference.mode == "adapter"
    )  # a live reference without a second copy of the model (run too short to precompute)
    t.fit()
    changed = {n for n, p in t.policy.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "nothing trained"
    assert all("lora_" in n for n in changed), sorted(changed)[:5]
    assert t.params["trainable"] < t.params["total"] / 2
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()


def _flat_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize(
    "mode, loss",
    [
        ("preference", None),
        ("sft", None),
        ("preference", "beta-dpo"),
        ("preference", "aot"),
        ("preference", "aot-unpaired"),
    ],
)
def test_gradient_accumulation_equals_big_batch(tmp_path, mode, loss):
    """4 micro-batches of 2 give the same gradient as one batch of 8 (pair-mean / token-mean); batch-level losses
    (beta-DPO's statistics and kept pairs, AOT's sorting) take them over the whole step, not per micro-batch."""
    extra = [f"loss=[{{name: {loss}}}]", "reference.mode=copy"] if loss else []
    big = Trainer(cfg(tmp_path, f"train.mode={mode}", "train.batch_size=8", "train.grad_accum=1", *extra, name="big"))
    small = Trainer(
        cfg(tmp_path, f"train.mode={mode}", "train.batch_size=2", "train.grad_accum=4", *extra, name="small")
    )
    grads = []
    for t in (big, small):
        if loss:  # a policy away from its reference, so the step's margins are real, not float noise around 0
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in t.policy.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        rows = t._accumulate()  # forward + backward of every micro-batch of step 0
        grads.append(_flat_grads(t.model))
        if loss == "beta-dpo":  # one draw of kept pairs for the step: floor(8 * 0.8) = 6, in every micro-batch row
            assert {r["beta-dpo/kept"] for r in rows} == {6.0}
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("ref_mode", ["copy", "precomputed"])
def test_resumed_run_matches_uninterrupted(tmp_path, ref_mode):
    loss = [{"name": "beta-dpo"}]  # stateful: its statistics must survive the resume too
    probes = ["eval.probes=true", "eval.probe_examples=4"]  # the probe set and its baseline must survive too
    full = cfg(tmp_path, "train.max_steps=6", f"reference.mode={ref_mode}", *probes, loss=loss, name="full")
    s_full = train(full)
    part = cfg(
        tmp_path,
        "train.max_steps=6",
        "output.save_every=3",
        f"reference.mode={ref_mode}",
        *probes,
        loss=loss,
        name="part",
    )
    t = Trainer(part)
    t.total_steps = 3  # simulate a run stopped right after the step-3 checkpoint
    t.fit()
    (tmp_path / "part" / "DONE").unlink()
    s_part = Trainer(part, resume=True).fit()
    assert s_part["final_eval"]["probe/delta/chosen"] == s_full["final_eval"]["probe/delta/chosen"]
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "part" / "final" / "model.safetensors"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    la = [r for r in read_metrics(tmp_path / "full") if "loss" in r and "eval/loss" not in r]
    lb = [r for r in read_metrics(tmp_path / "part") if "loss" in r and "eval/loss" not in r]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_reference_modes_agree(tmp_path):
    """A frozen copy, the precomputed cache and (under LoRA) the adapter-disabled base give the same log-probs."""
    vals = {}
    for mode in ("copy", "precomputed"):
        t = Trainer(cfg(tmp_path, f"reference.mode={mode}", name=mode))
        batch = t.collate([0, 1, 2, 3], t.train_data)
        vals[mode] = t.reference.logps(batch)
    for a, b in zip(vals["copy"], vals["precomputed"]):
        assert torch.allclose(a, b, atol=1e-5)
    t = Trainer(cfg(tmp_path, "lora.enabled=true", name="lora"))
    batch = t.collate([0, 1, 2, 3], t.train_data)
    for a, b in zip(t.reference.logps(batch), vals["copy"]):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("ref_mode, extra", [("copy", []), ("adapter", ["lora.enabled=true"])])
def test_a_live_reference_scores_by_the_runs_logits_mode(tmp_path, ref_mode, extra):
    """train.logits is the objective's setting, not a batch field: the live reference gets it too (full logits here),
    so policy and reference take the same LM-head path."""
    from dpolab.models.fastpath import fast_path_report

    t = Trainer(cfg(tmp_path, f"reference.mode={ref_mode}", "train.logits=full", *extra))
    assert t.reference.mode == ref_mode
    t.reference.logps(t.collate([0, 1, 2, 3], t.train_data))
    scorer = t.reference.model if t.reference.model is not None else t.model
    probed = {key[1] for key in fast_path_report(scorer) if len(key) == 2}
    assert probed == {"full"}, probed


def test_metrics_logged_every_step(tmp_path):
    loss = [{"name": "dpo", "weight": 1.0}, {"name": "sft", "weight": 0.2}]
    train(cfg(tmp_path, "train.max_steps=3", loss=loss))
    rows = [r for r in read_metrics(tmp_path / "run") if "grad_norm" in r]
    assert len(rows) == 3
    for key in (
        "loss",
        "loss/dpo",
        "loss/sft",
        "rewards/chosen",
        "rewards/rejected",
        "logratio_margin",
        "reward_accuracy",
        "reward_ties",
        "logps/chosen",
        "logps/rejected",
        "ref_logps/chosen",
        "ref_logps/rejected",
        "grad_norm",
        "lr",
        "tokens_per_s",
    ):
        assert key in rows[0], key
    r = rows[0]
    assert r["loss"] == pytest.approx(r["loss/dpo"] + 0.2 * r["loss/sft"], rel=1e-5)


def test_finished_run_is_not_overwritten_silently(tmp_path):
    train(cfg(tmp_path, "train.max_steps=1"))
    with pytest.raises(TrainError, match="already holds a finished run"):
        Trainer(cfg(tmp_path, "train.max_steps=1", "output.overwrite=false"))


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path):
    t = Trainer(cfg(tmp_path, "train.max_steps=2"))
    with torch.no_grad():
        next(t.policy.parameters()).fill_(float("nan"))
    with pytest.raises(TrainError, match="non-finite"):
        t.fit()


def test_nonfinite_steps_skipped_but_a_nan_model_is_never_published(tmp_path):
    """Skipping cannot rescue NaN weights: both steps are skipped, and the NaN model is not saved or marked done."""
    t = Trainer(cfg(tmp_path, "train.max_steps=2", "train.on_nonfinite=skip", "eval.at_start=false"))
    with torch.no_grad():
        next(t.policy.parameters()).fill_(float("nan"))
    with pytest.raises(TrainError, match="non-finite weights .* not saved or marked done"):
        t.fit()
    assert t.skipped_steps == 2
    for name in ("DONE", "final", "summary.json", "checkpoints"):
        assert not (tmp_path / "run" / name).exists(), name


def test_auto_reference_precomputes_for_an_epoch_and_stays_live_for_a_few_steps(tmp_path):
    long = Trainer(cfg(tmp_path / "a", "train.epochs=1", "train.max_steps=null"))
    assert long.reference.mode == "precomputed" and long.reference.model is None  # no second model in memory
    short = Trainer(cfg(tmp_path / "b", "train.max_steps=1"))
    assert short.reference.mode == "copy"
    # both give the same step-0 loss (ln 2) and the same reference log-probs on the same batch
    batch = long.collate([0, 1], long.train_data)
    a, b = long.reference.logps(batch), short.reference.logps(short.collate([0, 1], short.train_data))
    assert torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1], atol=1e-4)
    long.eval_data = list(long.eval_data)
    with pytest.raises(TrainError, match="eval_data was replaced"):
        long.evaluate()
