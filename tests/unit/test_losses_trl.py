"""Our losses against TRL 1.16's own implementation, on the same log-probs.

TRL computes the DPO-family losses inline in ``DPOTrainer._compute_loss`` right after a model forward. We
call that method on a bare trainer (``object.__new__``) carrying only the attributes it reads, with a fake
model whose output holds the per-token log-probs we choose (each sequence's log-prob spread evenly over its
tokens, so TRL's sums and token counts reproduce ours). ORPO's odds-ratio term and SimPO live in
``trl.experimental`` (``ORPOTrainer.odds_ratio_loss``, ``CPOTrainer.cpo_loss``), called the same way.
If TRL renames those attributes, these tests fail loudly rather than silently passing.
"""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")

from dpolab.losses import PreferenceOutputs, compute_loss  # noqa: E402

_ACC = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)


class _FakeModel:
    training = True

    def __init__(self, per_token):
        self.per_token = per_token

    def __call__(self, **kwargs):
        t = self.per_token
        return SimpleNamespace(log_probs=t, entropy=torch.zeros_like(t), mean_logits=torch.zeros_like(t),
                               is_top1=torch.zeros_like(t, dtype=torch.bool))


def trl_dpo_mean_loss(loss_type, d, *, beta, label_smoothing=0.0, discopop_tau=0.05):
    from trl import DPOTrainer

    b = d["pc"].numel()
    lengths = torch.cat([d["lc"], d["lr"]]).tolist()
    seqs = torch.cat([d["pc"], d["pr"]]).tolist()
    t = max(lengths)
    per_token = torch.zeros(2 * b, t, dtype=torch.float64)
    completion_mask = torch.zeros(2 * b, t + 1, dtype=torch.long)
    for i, (n, s) in enumerate(zip(lengths, seqs)):
        per_token[i, :n] = s / n
        completion_mask[i, 1:n + 1] = 1  # position 0 is the prompt
    tr = object.__new__(DPOTrainer)
    fake = _FakeModel(per_token)
    tr.__dict__.update(
        model=fake, accelerator=_ACC, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        label_smoothing=label_smoothing, use_weighting=False, args=SimpleNamespace(discopop_tau=discopop_tau),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * b, t + 1, dtype=torch.long),
        "attention_mask": torch.ones(2 * b, t + 1, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": d["rc"], "ref_rejected_logps": d["rr"],
    }
    return float(tr._compute_loss(fake, inputs, return_outputs=False))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    b = 6
    lc = torch.randint(3, 12, (b,), generator=g)
    lr = torch.randint(3, 12, (b,), generator=g)
    pc = -lc * (0.5 + 2 * torch.rand(b, generator=g, dtype=torch.float64))
    pr = -lr * (0.5 + 2 * torch.rand(b, generator=g, dtype=torch.float64))
    rc = pc + 3 * torch.randn(b, generator=g, dtype=torch.float64)
    rr = pr + 3 * torch.randn(b, generator=g, dtype=torch.float64)
    return dict(pc=pc, pr=pr, rc=rc, rr=rr, lc=lc, lr=lr)


def outputs(d):
    return PreferenceOutputs(policy_chosen_logps=d["pc"], policy_rejected_logps=d["pr"], ref_chosen_logps=d["rc"],
                             ref_rejected_logps=d["rr"], chosen_lengths=d["lc"], rejected_lengths=d["lr"])


# (our name, our params, TRL loss_type, TRL settings)
CASES = [
    ("dpo", {"beta": 0.1}, "sigmoid", {}),
    ("dpo", {"beta": 0.3}, "sigmoid", {}),
    ("cdpo", {"beta": 0.1, "label_smoothing": 0.0}, "sigmoid", {}),
    ("robust", {"beta": 0.2, "label_smoothing": 0.15}, "robust", {"label_smoothing": 0.15}),
    ("hinge", {"beta": 0.2}, "hinge", {}),
    ("ipo", {"beta": 0.1}, "ipo", {}),
    ("ipo", {"beta": 0.5}, "ipo", {}),
    ("nca-pair", {"beta": 0.2}, "nca_pair", {}),
    ("bco-pair", {"beta": 0.2}, "bco_pair", {}),
    ("apo-zero", {"beta": 0.2}, "apo_zero", {}),
    ("apo-down", {"beta": 0.2}, "apo_down", {}),
    ("sppo-hard", {"beta": 0.1}, "sppo_hard", {}),
    ("exo-pair", {"beta": 0.2}, "exo_pair", {"label_smoothing": 1e-3}),
    ("exo-pair", {"beta": 0.2, "label_smoothing": 0.05}, "exo_pair", {"label_smoothing": 0.05}),
    ("discopop", {"beta": 0.1}, "discopop", {"discopop_tau": 0.05}),
    ("discopop", {"beta": 0.1, "tau": 0.5}, "discopop", {"discopop_tau": 0.5}),
    ("aot", {"beta": 0.1}, "aot", {}),
    ("aot", {"beta": 0.1, "label_smoothing": 0.1}, "aot", {"label_smoothing": 0.1}),
    ("aot-unpaired", {"beta": 0.2}, "aot_unpaired", {}),
]


@pytest.mark.parametrize("name,params,trl_type,trl_kw", CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_matches_trl_dpo_trainer(data, name, params, trl_type, trl_kw):
    ours = compute_loss(name, outputs(data), **params).reduced().item()
    theirs = trl_dpo_mean_loss(trl_type, data, beta=params["beta"], **trl_kw)
    # TRL builds EXO's eps as a float32 tensor, so log(eps), log(1 - eps) carry float32 rounding
    rel = 1e-6 if name == "exo-pair" else 1e-9
    assert ours == pytest.approx(theirs, rel=rel, abs=1e-12)


@pytest.mark.parametrize("name,eps", [("cdpo", 0.1), ("dpo", 0.2), ("cdpo", 0.3)])
def test_label_smoothing_matches_trl_cpo_sigmoid(data, name, eps):
    """TRL 1.16's DPOTrainer no longer applies label smoothing to ``sigmoid`` (only robust/exo/aot use it),
    so cDPO is checked against CPOTrainer's smoothed sigmoid, fed the log-ratios r_w, r_l as its
    (reference-free) log-probs: its logits are then exactly h = r_w - r_l."""
    from trl.experimental.cpo import CPOTrainer

    out = compute_loss(name, outputs(data), beta=0.3, label_smoothing=eps)
    tr = object.__new__(CPOTrainer)
    tr.__dict__.update(beta=0.3, accelerator=_ACC, alpha=0.0, loss_type="sigmoid", label_smoothing=eps)
    theirs, *_ = tr.cpo_loss(data["pc"] - data["rc"], data["pr"] - data["rr"])
    assert torch.allclose(out.losses, theirs, rtol=1e-10)


def test_sft_matches_trl_with_equal_lengths(data):
    d = dict(data, lc=torch.full((6,), 7), lr=torch.full((6,), 7))
    ours = compute_loss("sft", outputs(d)).reduced().item()
    assert ours == pytest.approx(trl_dpo_mean_loss("sft", d, beta=0.1), rel=1e-9)


def test_simpo_matches_trl_cpo_trainer(data):
    from trl.experimental.cpo import CPOTrainer

    out = compute_loss("simpo", outputs(data), beta=2.5, gamma=1.2)
    tr = object.__new__(CPOTrainer)
    tr.__dict__.update(beta=2.5, accelerator=_ACC, alpha=0.0, loss_type="simpo", simpo_gamma=1.2, label_smoothing=0.0)
    theirs, cw, rl = tr.cpo_loss(data["pc"] / data["lc"], data["pr"] / data["lr"])
    assert torch.allclose(out.losses, theirs, rtol=1e-10)
    assert torch.allclose(out.chosen_rewards, cw) and torch.allclose(out.rejected_rewards, rl)


def test_orpo_matches_trl_orpo_trainer(data):
    from trl.experimental.orpo import ORPOTrainer

    d = dict(data, lc=torch.full((6,), 7))  # TRL's NLL is a batch token mean: equal chosen lengths
    out = compute_loss("orpo", outputs(d), lam=0.25)
    tr = object.__new__(ORPOTrainer)
    tr.__dict__.update(beta=0.25, accelerator=_ACC)
    avg_c, avg_r = d["pc"] / d["lc"], d["pr"] / d["lr"]
    or_term, *_ = tr.odds_ratio_loss(avg_c, avg_r)  # beta * logsigmoid(log_odds), computed in float32
    theirs = (-avg_c).mean() - or_term.double().mean()  # TRL: loss = policy_nll_loss - mean(or_term)
    assert out.reduced().item() == pytest.approx(theirs.item(), rel=1e-6)
