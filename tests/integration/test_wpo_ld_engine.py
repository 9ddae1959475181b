"""WPO and LD-DPO through ``dpolab train``: the engine produces the policy's per-token log sum_v p_v^2 (WPO) and the
reference's per-token log-probs or shared-length sums (LD-DPO); runs train end to end; live and precomputed
references give the same LD-DPO losses; and on a real model and batch dpolab's loss and gradients equal TRL's
``DPOTrainer._compute_loss`` (``use_weighting=True`` / ``ld_alpha``) with TRL's own fused LM head."""

from __future__ import annotations

import contextlib
import copy
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from dpolab.config import build_config
from dpolab.data.batches import PairBatch
from dpolab.engine import Trainer
from dpolab.engine.logging import read_metrics
from dpolab.engine.objectives.preference import preference_step
from dpolab.losses import CompositeLoss
from dpolab.models.reference import TABLE_COLUMNS, PrecomputedTable, table_key

pytestmark = pytest.mark.slow


def _cfg(tmp_path, name, loss, *overrides):
    return build_config(
        {
            "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
            "data": {
                "task": "arithmetic",
                "task_args": {"n_train": 16, "n_eval": 8, "n_terms": [2, 2], "max_value": 9},
                "max_length": 48,
            },
            "train": {"batch_size": 4, "max_steps": 3, "lr": 5e-3, "schedule": "constant", "seed": 0},
            "eval": {"batch_size": 8, "every": 0},
            "loss": loss,
            "output": {"dir": str(tmp_path / name), "progress": False, "save_final": False},
        },
        list(overrides),
    )


def _train_rows(run_dir):
    return [r for r in read_metrics(run_dir) if "grad_norm" in r]


@pytest.mark.parametrize("spec", [{"name": "wpo"}, {"name": "dpo", "weighting": "wpo"}], ids=["wpo", "dpo+weighting"])
def test_wpo_trains_end_to_end(tmp_path, spec):
    s = Trainer(_cfg(tmp_path, "run", [spec], "reference.mode=copy")).fit()
    assert s["steps"] == 3
    rows = _train_rows(tmp_path / "run")
    r0 = rows[0]
    weight = next(v for k, v in r0.items() if k.endswith("wpo/weight_mean"))
    assert 0 < weight and math.isfinite(weight)
    # step 0: policy == reference, so each pair's loss is its weight times ln 2: the mean loss is ln 2 x mean weight
    assert r0["loss"] == pytest.approx(math.log(2) * weight, rel=1e-5)
    assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] != r0["loss"]


@pytest.mark.parametrize("ref_mode", ["copy", "precomputed"])
def test_ld_dpo_trains_end_to_end(tmp_path, ref_mode):
    s = Trainer(
        _cfg(tmp_path, "run", [{"name": "ld-dpo", "params": {"ld_alpha": 0.3}}], f"reference.mode={ref_mode}")
    ).fit()
    assert s["steps"] == 3 and s["reference_mode"] == ref_mode
    rows = _train_rows(tmp_path / "run")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # LD-DPO at step 0 is ln 2
    assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]


def test_live_and_precomputed_references_give_the_same_ld_losses(tmp_path):
    """One policy, one batch: LD-DPO (and the ld_alpha key on IPO) from a live copy's per-token log-probs equals the
    one from the precomputed table's shared-length sums; both differ from plain DPO where tails exist."""
    loss = [{"name": "ld-dpo", "params": {"ld_alpha": 0.25}}, {"name": "ipo", "ld_alpha": 0.6, "weight": 0.5}]
    live = Trainer(_cfg(tmp_path, "live", loss, "reference.mode=copy"))
    pre = Trainer(_cfg(tmp_path, "pre", loss, "reference.mode=precomputed"))
    assert set(TABLE_COLUMNS) <= set(pre.reference.table)
    with torch.no_grad():  # move the policies (identically) away from the reference so the log-ratios are not 0
        for p, q in zip(live.policy.parameters(), pre.policy.parameters()):
            noise = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05
            p.add_(noise)
            q.add_(noise)
    comp = CompositeLoss(loss)
    batch = live.collate(list(range(8)), live.train_data)
    n = batch.num_pairs
    tails = (batch.loss_mask[:n].sum(-1) != batch.loss_mask[n:].sum(-1)).any()
    assert tails  # some pair has responses of different lengths: the split matters
    a, ma = preference_step(live.policy, live.reference, comp, batch, contextlib.nullcontext)
    b, mb = preference_step(
        pre.policy, pre.reference, comp, pre.collate(list(range(8)), pre.train_data), contextlib.nullcontext
    )
    assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-6)
    assert ma["loss/ld-dpo"].item() == pytest.approx(mb["loss/ld-dpo"].item(), rel=1e-5, abs=1e-6)
    assert ma["loss/ipo"].item() == pytest.approx(mb["loss/ipo"].item(), rel=1e-5, abs=1e-6)
    plain, _ = preference_step(live.policy, live.reference, CompositeLoss(["dpo"]), batch, contextlib.nullcontext)
    assert abs(ma["loss/ld-dpo"].item() - plain.item()) > 1e-4


def test_table_key_names_its_columns(tmp_path):
    t = Trainer(_cfg(tmp_path, "run", ["dpo"], "reference.mode=precomputed"))
    key = table_key("copy", t.policy, list(t.train_data), bf16=False)
    assert key["columns"] == ",".join(TABLE_COLUMNS) and key["format"] == "4"


def test_a_table_without_shared_sums_is_refused_for_ld_dpo(tmp_path):
    table = {"chosen": torch.zeros(4), "rejected": torch.zeros(4)}  # what an older dpolab wrote
    ref = PrecomputedTable(table, cache_file=tmp_path / "old.pt")
    ids = torch.zeros(4, 3, dtype=torch.long)
    chosen, _ = ref.logps(
        PairBatch(input_ids=ids, attention_mask=ids, loss_mask=ids.bool(), index=torch.arange(2), num_pairs=2)
    )
    assert chosen.shape == (2,)  # DPO: fine
    from dpolab.models.reference import ReferenceSetupError

    with pytest.raises(ReferenceSetupError, match="chosen_shared, rejected_shared column .*LD-DPO"):
        ref.check_split()


# -- TRL's DPOTrainer on the same model and batch -----------------------------------------------------------------
trl_settings = [
    ([{"name": "wpo", "params": {"beta": 0.2}}], dict(loss_types=["sigmoid"], use_weighting=True)),
    ([{"name": "ld-dpo", "params": {"beta": 0.2, "ld_alpha": 0.3}}], dict(loss_types=["sigmoid"], ld_alpha=0.3)),
    (
        [{"name": "ipo", "params": {"beta": 0.2}, "ld_alpha": 0.5, "weighting": "wpo"}],
        dict(loss_types=["ipo"], ld_alpha=0.5, use_weighting=True),
    ),
]


def _trl_trainer(model, ref_model, *, beta, **kw):
    from trl import DPOTrainer

    acc = SimpleNamespace(
        device=torch.device("cpu"),
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        autocast=contextlib.nullcontext,
        unwrap_model=lambda m: m,
    )
    tr = object.__new__(DPOTrainer)
    tr.__dict__.update(
        model=model,
        ref_model=ref_model,
        accelerator=acc,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=False,
        f_divergence_type="reverse_kl",
        f_alpha_divergence_coef=0.5,
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        args=SimpleNamespace(discopop_tau=0.05, gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    tr.__dict__.update(kw)
    return tr


@pytest.mark.parametrize("loss,trl_kw", trl_settings, ids=["wpo", "ld-dpo", "ipo+ld+wpo"])
@pytest.mark.parametrize("layout", ["prefix", "padded"])
def test_engine_matches_trl_dpo_trainer(tmp_path, loss, trl_kw, layout):
    pytest.importorskip("trl")
    from trl.trainer.utils import add_fused_lm_head

    t = Trainer(_cfg(tmp_path, "run", loss, "reference.mode=copy", f"train.layout={layout}"))
    policy = t.policy
    with torch.no_grad():  # a policy away from its reference, so the log-ratios and WPO weights are not trivial
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    batch = t.collate(list(range(8)), t.train_data)
    ours, _ = preference_step(policy, t.reference, CompositeLoss(loss), batch, contextlib.nullcontext)
    policy.zero_grad(set_to_none=True)
    ours.backward()
    g_ours = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    trl_policy, trl_ref = copy.deepcopy(policy), copy.deepcopy(t.reference.model)
    add_fused_lm_head(trl_policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    add_fused_lm_head(trl_ref)
    tr = _trl_trainer(trl_policy, trl_ref, beta=0.2, **trl_kw)
    inputs = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "completion_mask": batch.loss_mask.long(),
    }
    trl_policy.zero_grad(set_to_none=True)
    theirs = tr._compute_loss(trl_policy, inputs, return_outputs=False)
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    g_theirs = dict(trl_policy.named_parameters())
    assert g_ours
    for n, g in g_ours.items():
        assert torch.allclose(g, g_theirs[n].grad, rtol=1e-4, atol=1e-6), n
