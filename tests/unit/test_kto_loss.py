"""KTO's loss as a pure function (dpolab.losses.kto): closed form, gradients, step-0 invariant, extremes, the KL
estimate, and TRL 1.16's own ``KTOTrainer._compute_loss`` on the same log-probs."""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from dpolab.losses import LossConfigError
from dpolab.losses.kto import kto_kl, kto_loss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture
def rows():
    g = torch.Generator().manual_seed(0)
    b = 7
    pol = -20 * torch.rand(b, generator=g, dtype=torch.float64) - 1
    ref = pol + 4 * torch.randn(b, generator=g, dtype=torch.float64)
    labels = torch.tensor([True, False, True, True, False, False, True])
    kl_pol = -20 * torch.rand(b, generator=g, dtype=torch.float64) - 1
    kl_ref = kl_pol - 2 * torch.rand(b, generator=g, dtype=torch.float64)  # policy above the reference: z0 > 0
    return dict(pol=pol, ref=ref, labels=labels, kl_pol=kl_pol, kl_ref=kl_ref)


def test_closed_form(rows):
    beta, dw, uw = 0.3, 1.5, 0.7
    out = kto_loss(
        rows["pol"],
        rows["ref"],
        rows["labels"],
        policy_kl_logps=rows["kl_pol"],
        ref_kl_logps=rows["kl_ref"],
        beta=beta,
        desirable_weight=dw,
        undesirable_weight=uw,
    )
    z0 = max(0.0, sum(a - b for a, b in zip(rows["kl_pol"].tolist(), rows["kl_ref"].tolist())) / 7)
    assert z0 > 0
    want = []
    for p, r, d in zip(rows["pol"].tolist(), rows["ref"].tolist(), rows["labels"].tolist()):
        want.append(dw * (1 - _sigmoid(beta * (p - r - z0))) if d else uw * (1 - _sigmoid(beta * (z0 - (p - r)))))
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    assert float(out.kl) == pytest.approx(z0, abs=1e-12)
    chosen = [
        beta * (p - r) for p, r, d in zip(rows["pol"].tolist(), rows["ref"].tolist(), rows["labels"].tolist()) if d
    ]
    rejected = [
        beta * (p - r) for p, r, d in zip(rows["pol"].tolist(), rows["ref"].tolist(), rows["labels"].tolist()) if not d
    ]
    assert out.chosen_rewards.tolist() == pytest.approx(chosen) and out.rejected_rewards.tolist() == pytest.approx(
        rejected
    )
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(sum(chosen) / 4)
    assert float(out.metrics["rewards/rejected"]) == pytest.approx(sum(rejected) / 3)
    assert float(out.metrics["rewards/margin"]) == pytest.approx(sum(chosen) / 4 - sum(rejected) / 3)
    assert float(out.metrics["loss"]) == pytest.approx(sum(want) / 7)
    assert float(out.metrics["kl"]) == pytest.approx(z0)
    # the KL estimate given directly is the same as computing it from the mismatched pairs
    direct = kto_loss(
        rows["pol"],
        rows["ref"],
        rows["labels"],
        kl=torch.tensor(z0, dtype=torch.float64),
        beta=beta,
        desirable_weight=dw,
        undesirable_weight=uw,
    )
    assert torch.allclose(direct.losses, out.losses, atol=1e-15)


def test_gradcheck_float64(rows):
    def f(pol):
        return kto_loss(
            pol,
            rows["ref"],
            rows["labels"],
            policy_kl_logps=rows["kl_pol"],
            ref_kl_logps=rows["kl_ref"],
            beta=0.5,
            desirable_weight=1.3,
            undesirable_weight=0.8,
        ).losses

    pol = rows["pol"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (pol,), eps=1e-6, atol=1e-8)


def test_the_kl_term_is_detached(rows):
    kl_pol = rows["kl_pol"].clone().requires_grad_(True)
    pol = rows["pol"].clone().requires_grad_(True)
    out = kto_loss(pol, rows["ref"], rows["labels"], policy_kl_logps=kl_pol, ref_kl_logps=rows["kl_ref"])
    out.losses.sum().backward()
    assert kl_pol.grad is None and not out.kl.requires_grad
    assert pol.grad is not None and pol.grad.abs().sum() > 0


@pytest.mark.parametrize("dw, uw", [(1.0, 1.0), (1.5, 0.5), (0.0, 2.0)])
def test_step0_invariant(dw, uw):
    """Policy == reference: every log-ratio and the KL estimate are 0, so each row's loss is weight * (1 - sigma(0))."""
    logps = torch.tensor([-3.0, -7.5, -1.25, -12.0])
    labels = torch.tensor([True, False, False, True])
    out = kto_loss(
        logps,
        logps.clone(),
        labels,
        policy_kl_logps=logps.flip(0),
        ref_kl_logps=logps.flip(0).clone(),
        desirable_weight=dw,
        undesirable_weight=uw,
    )
    assert float(out.kl) == 0.0
    assert out.losses.tolist() == [dw * 0.5, uw * 0.5, uw * 0.5, dw * 0.5]
    assert float(out.metrics["rewards/chosen"]) == 0.0 and float(out.metrics["rewards/rejected"]) == 0.0


def test_kl_clamped_at_zero_and_gathered():
    below = kto_kl(torch.tensor([-5.0, -6.0]), torch.tensor([-4.0, -4.0]))  # policy below the reference: mean -1.5
    assert float(below) == 0.0
    # two "processes" holding different numbers of pairs: the mean is over all pairs, not of the two means
    local_pol, local_ref = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -3.0, -4.0])  # diffs 1, 1, 1
    other = torch.tensor([9.0, 1.0], dtype=torch.float64)  # the other process's (sum, count): one pair, diff 9
    gathered = kto_kl(local_pol, local_ref, all_gather=lambda t: torch.cat([t, other]))
    assert float(gathered) == pytest.approx((3 + 9) / 4)
    assert float(kto_kl(torch.zeros(0), torch.zeros(0))) == 0.0  # no mismatched pair at all


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [500.0, -500.0])
def test_finite_at_extreme_log_ratios(dtype, scale):
    labels = torch.tensor([True, False, True, False])
    pol = torch.tensor([scale, scale, -scale, -scale], dtype=dtype, requires_grad=True)
    ref = torch.zeros(4, dtype=dtype)
    for kl_pol in (torch.full((4,), scale, dtype=dtype), torch.full((4,), -scale, dtype=dtype)):
        out = kto_loss(
            pol,
            ref,
            labels,
            policy_kl_logps=kl_pol,
            ref_kl_logps=torch.zeros(4, dtype=dtype),
            beta=1.0,
            desirable_weight=2.0,
            undesirable_weight=3.0,
        )
        (grad,) = torch.autograd.grad(out.losses.sum(), pol)
        assert torch.isfinite(out.losses).all() and torch.isfinite(grad).all() and torch.isfinite(out.kl)
        assert ((out.losses >= 0) & (out.losses <= 3.0)).all()
        assert all(torch.isfinite(v).all() for v in out.metrics.values())


def test_bad_settings_are_loss_errors():
    x, lab = torch.zeros(2), torch.tensor([True, False])
    with pytest.raises(LossConfigError, match="beta"):
        kto_loss(x, x, lab, kl=0.0, beta=0.0)
    with pytest.raises(LossConfigError, match="undesirable_weight"):
        kto_loss(x, x, lab, kl=0.0, undesirable_weight=-1.0)
    with pytest.raises(LossConfigError, match="labels"):
        kto_loss(x, x, torch.tensor([1, 0]), kl=0.0)
    with pytest.raises(LossConfigError, match="KL estimate"):
        kto_loss(x, x, lab)


# -- TRL 1.16 ----------------------------------------------------------------------------------------------------
# KTOTrainer computes its loss inline in ``_compute_loss`` right after the model forwards. We call that method on a
# bare trainer (``object.__new__``) carrying only the attributes it reads, with fake models whose output holds the
# per-token log-probs we choose: each sequence is [prompt token, one completion token], so a sequence's log-prob is
# its one scored token's. The fake tells the KL sequences from the matched ones by their token ids (1 vs 0). If TRL
# renames those attributes, these tests fail loudly rather than silently passing.

_ACC = SimpleNamespace(
    device=torch.device("cpu"),
    gather=lambda x: x,
    gather_for_metrics=lambda x: x,
    autocast=contextlib.nullcontext,
    unwrap_model=lambda m: m,
)


class _FakeModel:
    training = True
    is_gradient_checkpointing = False
    _modules: dict = {}

    def __init__(self, matched, mismatched):
        self.matched, self.mismatched = matched, mismatched  # [B] sequence log-probs

    def __call__(self, **kwargs):
        logps = self.mismatched if int(kwargs["input_ids"][0, 0]) == 1 else self.matched
        t = logps[:, None]
        return SimpleNamespace(log_probs=t, entropy=torch.zeros_like(t), mean_logits=torch.zeros_like(t))


def trl_kto(pol, ref, labels, kl_pol, kl_ref, *, beta, dw, uw, live_reference: bool):
    trl = pytest.importorskip("trl")
    tr = object.__new__(trl.KTOTrainer)
    policy = _FakeModel(pol, kl_pol)
    tr.__dict__.update(
        model=policy,
        ref_model=_FakeModel(ref, kl_ref) if live_reference else None,
        accelerator=_ACC,
        aux_loss_enabled=False,
        precompute_ref_logps=not live_reference,
        calculate_KL=True,
        loss_type="kto",
        beta=beta,
        desirable_weight=dw,
        undesirable_weight=uw,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    b = pol.shape[0]
    inputs = {
        "input_ids": torch.zeros(b, 2, dtype=torch.long),
        "attention_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * b),
        "KL_input_ids": torch.ones(b, 2, dtype=torch.long),
        "KL_attention_mask": torch.ones(b, 2, dtype=torch.long),
        "KL_completion_mask": torch.tensor([[0, 1]] * b),
        "label": labels,
    }
    if not live_reference:
        inputs.update(ref_logps=ref, ref_KL_logps=kl_ref)
    loss = tr._compute_loss(policy, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in tr._metrics["train"].items()}


@pytest.mark.parametrize("live_reference", [False, True])
@pytest.mark.parametrize("beta, dw, uw", [(0.1, 1.0, 1.0), (0.5, 1.33, 0.75)])
def test_matches_trl(rows, beta, dw, uw, live_reference):
    pol_trl = rows["pol"].clone().requires_grad_(True)
    loss_trl, m = trl_kto(
        pol_trl,
        rows["ref"],
        rows["labels"],
        rows["kl_pol"],
        rows["kl_ref"],
        beta=beta,
        dw=dw,
        uw=uw,
        live_reference=live_reference,
    )
    loss_trl.backward()
    pol = rows["pol"].clone().requires_grad_(True)
    out = kto_loss(
        pol,
        rows["ref"],
        rows["labels"],
        policy_kl_logps=rows["kl_pol"],
        ref_kl_logps=rows["kl_ref"],
        beta=beta,
        desirable_weight=dw,
        undesirable_weight=uw,
    )
    out.losses.mean().backward()
    assert float(out.losses.mean()) == pytest.approx(float(loss_trl), abs=1e-12)
    assert torch.allclose(pol.grad, pol_trl.grad, atol=1e-12)
    assert float(out.kl) == pytest.approx(m["kl"], abs=1e-12)
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(m["rewards/chosen"], abs=1e-12)
    assert float(out.metrics["rewards/rejected"]) == pytest.approx(m["rewards/rejected"], abs=1e-12)


def test_matches_trl_with_the_kl_clamped_and_one_sided_batches(rows):
    """Policy below the reference on the mismatched pairs (z0 clamped to 0), and a batch with desirable rows only."""
    for labels in (rows["labels"], torch.ones(7, dtype=torch.bool)):
        loss_trl, m = trl_kto(
            rows["pol"],
            rows["ref"],
            labels,
            rows["kl_ref"],
            rows["kl_pol"],
            beta=0.2,
            dw=1.0,
            uw=1.0,
            live_reference=False,
        )
        out = kto_loss(
            rows["pol"], rows["ref"], labels, policy_kl_logps=rows["kl_ref"], ref_kl_logps=rows["kl_pol"], beta=0.2
        )
        assert m["kl"] == 0.0 and float(out.kl) == 0.0
        assert float(out.losses.mean()) == pytest.approx(float(loss_trl), abs=1e-12)
