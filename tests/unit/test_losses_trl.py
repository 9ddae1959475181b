"""Our losses against TRL 1.16's own implementation, on the same log-probs.

TRL computes the DPO-family losses inline in ``DPOTrainer._compute_loss`` right after a model forward. We
call that method on a bare trainer (``object.__new__``) carrying only the attributes it reads, with a fake
model whose output holds the per-token log-probs we choose (each sequence's log-prob spread evenly over its
tokens, so TRL's sums and token counts reproduce ours). ORPO's odds-ratio term and SimPO live in
``trl.experimental`` (``ORPOTrainer.odds_ratio_loss``, ``CPOTrainer.cpo_loss``), called the same way.
If TRL renames those attributes, these tests fail loudly rather than silently passing.

The per-token methods (LD-DPO, WPO) and the f-divergences go through the same method with per-token tensors we lay
out ourselves (:func:`trl_compute_loss`), including the live-reference path (a fake reference model) and TRL's own
reference precompute (``compute_ref_log_probs``); gradients are compared per token.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")

from dpolab.losses import PreferenceOutputs, compute_loss  # noqa: E402

_ACC = SimpleNamespace(
    device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x, autocast=contextlib.nullcontext
)


class _FakeModel:
    training = True
    is_gradient_checkpointing = False
    _modules: dict = {}  # accelerate's is_peft_model looks for compiled submodules

    def __init__(self, per_token, log_sum_sq=None):
        self.per_token = per_token
        self.log_sum_sq = log_sum_sq

    def __call__(self, **kwargs):
        t = self.per_token
        return SimpleNamespace(
            log_probs=t,
            entropy=torch.zeros_like(t),
            mean_logits=torch.zeros_like(t),
            is_top1=torch.zeros_like(t, dtype=torch.bool),
            log_sum_sq_probs=self.log_sum_sq,
        )


def _trainer(
    policy,
    *,
    beta,
    loss_types,
    loss_weights=None,
    ref_model=None,
    ld_alpha=None,
    f_divergence_type="reverse_kl",
    f_alpha_divergence_coef=0.5,
    use_weighting=False,
    label_smoothing=0.0,
    discopop_tau=0.05,
):
    from trl import DPOTrainer

    tr = object.__new__(DPOTrainer)
    tr.__dict__.update(
        model=policy,
        ref_model=ref_model,
        accelerator=_ACC,
        aux_loss_enabled=False,
        ld_alpha=ld_alpha,
        precompute_ref_logps=ref_model is None,
        f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        loss_types=list(loss_types),
        loss_weights=list(loss_weights or [1.0] * len(loss_types)),
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=use_weighting,
        args=SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return tr


def _inputs(shift_mask):
    n, t = shift_mask.shape
    completion_mask = torch.cat([torch.zeros(n, 1, dtype=torch.long), shift_mask.long()], dim=1)
    return {
        "input_ids": torch.zeros(n, t + 1, dtype=torch.long),
        "attention_mask": torch.ones(n, t + 1, dtype=torch.long),
        "completion_mask": completion_mask,
    }


def trl_compute_loss(per_token, shift_mask, *, ref=None, ref_per_token=None, log_sum_sq=None, **settings):
    """TRL's ``_compute_loss`` on [2B, T] per-token policy log-probs (chosen rows, then rejected) whose response tokens
    ``shift_mask`` marks (TRL's ``completion_mask[:, 1:]``). The reference is either precomputed sums ``ref`` =
    (chosen [B], rejected [B]) or per-token ``ref_per_token`` run through TRL's live reference path. Returns the
    loss tensor (backward-able)."""
    policy = _FakeModel(per_token, log_sum_sq)
    ref_model = _FakeModel(ref_per_token) if ref_per_token is not None else None
    tr = _trainer(policy, ref_model=ref_model, **settings)
    inputs = _inputs(shift_mask)
    if ref_model is None:
        inputs.update(ref_chosen_logps=ref[0], ref_rejected_logps=ref[1])
    return tr._compute_loss(policy, inputs, return_outputs=False)


def trl_precomputed_ref(ref_per_token, shift_mask, ld_alpha):
    """TRL's own reference precompute (``compute_ref_log_probs``), LD-weighted when ``ld_alpha`` is set."""
    policy = _FakeModel(ref_per_token)
    tr = _trainer(policy, ref_model=policy, beta=0.1, loss_types=["sigmoid"], ld_alpha=ld_alpha)
    return tr.compute_ref_log_probs(policy, _inputs(shift_mask))


def trl_dpo_mean_loss(loss_type, d, *, beta, label_smoothing=0.0, discopop_tau=0.05):
    b = d["pc"].numel()
    lengths = torch.cat([d["lc"], d["lr"]]).tolist()
    seqs = torch.cat([d["pc"], d["pr"]]).tolist()
    t = max(lengths)
    per_token = torch.zeros(2 * b, t, dtype=torch.float64)
    mask = torch.zeros(2 * b, t, dtype=torch.bool)
    for i, (n, s) in enumerate(zip(lengths, seqs)):
        per_token[i, :n] = s / n
        mask[i, :n] = True
    loss = trl_compute_loss(
        per_token,
        mask,
        ref=(d["rc"], d["rr"]),
        beta=beta,
        loss_types=[loss_type],
        label_smoothing=label_smoothing,
        discopop_tau=discopop_tau,
    )
    return float(loss)


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
    return PreferenceOutputs(
        policy_chosen_logps=d["pc"],
        policy_rejected_logps=d["pr"],
        ref_chosen_logps=d["rc"],
        ref_rejected_logps=d["rr"],
        chosen_lengths=d["lc"],
        rejected_lengths=d["lr"],
    )


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
    ("sigmoid-norm", {"beta": 0.1}, "sigmoid_norm", {}),
    ("sigmoid-norm", {"beta": 0.7}, "sigmoid_norm", {}),
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


# ============ per-token inputs: sigmoid_norm, f-divergences, WPO, LD-DPO (value and per-token gradient) ============
B = 6


@pytest.fixture(scope="module")
def tokens():
    """Per-token policy/reference log-probs and log sum p^2 for B pairs, each response after a 0-2 token prompt."""
    g = torch.Generator().manual_seed(1)
    n = torch.randint(2, 10, (2 * B,), generator=g)
    start = torch.randint(0, 3, (2 * B,), generator=g)
    t = int((start + n).max())
    col = torch.arange(t)
    mask = (col >= start[:, None]) & (col < (start + n)[:, None])
    pol = -(0.05 + 2.0 * torch.rand(2 * B, t, generator=g, dtype=torch.float64))
    ref = pol + 0.8 * torch.randn(2 * B, t, generator=g, dtype=torch.float64)
    lssp = -(0.1 + 1.5 * torch.rand(2 * B, t, generator=g, dtype=torch.float64))
    zero = torch.zeros((), dtype=torch.float64)
    return dict(
        pol=torch.where(mask, pol, zero), ref=torch.where(mask, ref, zero).clamp(max=-1e-3) * mask, lssp=lssp, mask=mask
    )


def ours_outputs(tk, pol):
    """Our record of the same batch, with sequence sums built from the token leaf ``pol`` (so gradients reach it)."""
    m = tk["mask"]
    seq = (pol * m).sum(-1)
    ref_seq = (tk["ref"] * m).sum(-1)
    lens = m.sum(-1)
    c, r = slice(0, B), slice(B, 2 * B)
    return PreferenceOutputs(
        policy_chosen_logps=seq[c],
        policy_rejected_logps=seq[r],
        ref_chosen_logps=ref_seq[c],
        ref_rejected_logps=ref_seq[r],
        chosen_lengths=lens[c],
        rejected_lengths=lens[r],
        policy_chosen_token_logps=pol[c],
        chosen_token_mask=m[c],
        policy_rejected_token_logps=pol[r],
        rejected_token_mask=m[r],
        policy_chosen_token_log_sum_sq_probs=tk["lssp"][c],
        policy_rejected_token_log_sum_sq_probs=tk["lssp"][r],
        ref_chosen_token_logps=tk["ref"][c],
        ref_rejected_token_logps=tk["ref"][r],
    )


def compare_with_trl(tk, ours_spec, trl_settings, *, live_ref=False, dtype=torch.float64, rel=1e-9, grad=True):
    """Our mean loss and its per-token gradient (unless ``grad=False``) against TRL's on the same tokens."""
    pol = tk["pol"].clone().requires_grad_()
    ours = compute_loss(ours_spec, ours_outputs(tk, pol))
    ours_total = ours.losses.mean()
    ours_total.backward()
    pol_t = tk["pol"].to(dtype).clone().requires_grad_()
    m = tk["mask"]
    ref_kw = (
        {"ref_per_token": tk["ref"].to(dtype)}
        if live_ref
        else {"ref": tuple((tk["ref"].to(dtype) * m).sum(-1).chunk(2))}
    )
    theirs = trl_compute_loss(pol_t, m, log_sum_sq=tk["lssp"].to(dtype), **ref_kw, **trl_settings)
    assert ours_total.item() == pytest.approx(theirs.item(), rel=rel, abs=1e-12)
    if not grad:
        return ours
    theirs.backward()
    assert torch.allclose(pol.grad[m], pol_t.grad[m].double(), rtol=max(rel, 1e-9) * 10, atol=1e-12)
    return ours


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_sigmoid_norm_tokens_match_trl(tokens, beta):
    compare_with_trl(
        tokens, [{"name": "sigmoid-norm", "params": {"beta": beta}}], dict(beta=beta, loss_types=["sigmoid_norm"])
    )


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js_divergence"])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_fdpo_matches_trl(tokens, divergence, beta):
    compare_with_trl(
        tokens,
        [{"name": "fdpo", "params": {"beta": beta, "divergence": divergence}}],
        dict(beta=beta, loss_types=["sigmoid"], f_divergence_type=divergence),
    )


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.8, 1.0])
def test_fdpo_alpha_divergence_matches_trl(tokens, alpha):
    """TRL 1.16 computes its alpha-divergence in float32 (it has no float64 cap) and with coefficient c = 1 - alpha:
    (u^(c-1) - 1)/(c-1) = (1 - u^-alpha)/alpha (module docstring of dpolab/losses/fdpo.py)."""
    compare_with_trl(
        tokens,
        [{"name": "fdpo", "params": {"beta": 0.3, "divergence": "alpha_divergence", "alpha": alpha}}],
        dict(
            beta=0.3, loss_types=["sigmoid"], f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0 - alpha
        ),
        dtype=torch.float32,
        rel=2e-6,
    )


# TRL applies the f-divergence to every loss type built on the score difference; ours via a spec's divergence key
DIV_LOSSES = [
    ("dpo", "sigmoid", {}),
    ("hinge", "hinge", {}),
    ("ipo", "ipo", {}),
    ("robust", "robust", {"label_smoothing": 0.1}),
    ("exo-pair", "exo_pair", {"label_smoothing": 1e-3}),
    ("discopop", "discopop", {}),
    ("sigmoid-norm", "sigmoid_norm", {}),
]


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence"])
@pytest.mark.parametrize("name,trl_type,kw", DIV_LOSSES, ids=[d[0] for d in DIV_LOSSES])
def test_divergence_key_matches_trl(tokens, name, trl_type, kw, divergence):
    params = {"beta": 0.2, **kw}
    rel = 1e-6 if name == "exo-pair" else 1e-9  # TRL's EXO eps is a float32 tensor
    compare_with_trl(
        tokens,
        [{"name": name, "params": params, "divergence": divergence}],
        dict(beta=0.2, loss_types=[trl_type], f_divergence_type=divergence, **kw),
        rel=rel,
    )


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_wpo_matches_trl(tokens, beta):
    out = compare_with_trl(
        tokens, [{"name": "wpo", "params": {"beta": beta}}], dict(beta=beta, loss_types=["sigmoid"], use_weighting=True)
    )
    assert 0 < out.metrics["wpo/weight_min"] <= out.metrics["wpo/weight_max"]


@pytest.mark.parametrize(
    "name,trl_type",
    [
        ("ipo", "ipo"),
        ("hinge", "hinge"),
        ("sigmoid-norm", "sigmoid_norm"),
        ("apo-zero", "apo_zero"),
        ("nca-pair", "nca_pair"),
    ],
)
def test_weighting_key_matches_trl(tokens, name, trl_type):
    # TRL 1.16 weights in place (per_sequence_loss *= ...), which overwrites the ReLU output hinge's backward needs:
    # TRL cannot backpropagate hinge with use_weighting, so only hinge's value is compared
    compare_with_trl(
        tokens,
        [{"name": name, "params": {"beta": 0.3}, "weighting": "wpo"}],
        dict(beta=0.3, loss_types=[trl_type], use_weighting=True),
        grad=name != "hinge",
    )


def test_trl_cannot_backpropagate_weighted_hinge(tokens):
    """Documents the TRL 1.16 bug above (if TRL fixes it, drop grad=False for hinge in the test before)."""
    pol = tokens["pol"].clone().requires_grad_()
    loss = trl_compute_loss(
        pol,
        tokens["mask"],
        ref=tuple((tokens["ref"] * tokens["mask"]).sum(-1).chunk(2)),
        log_sum_sq=tokens["lssp"],
        beta=0.3,
        loss_types=["hinge"],
        use_weighting=True,
    )
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()
    ours = compute_loss([{"name": "hinge", "params": {"beta": 0.3}, "weighting": "wpo"}], ours_outputs(tokens, pol))
    ours.losses.mean().backward()  # ours multiplies out of place
    assert torch.isfinite(pol.grad).all()


@pytest.mark.parametrize("ld_alpha", [0.0, 0.3, 1.0])
def test_ld_dpo_matches_trl(tokens, ld_alpha):
    """TRL's live reference path LD-weights the reference's per-token log-probs, as we do from ref_*_token_logps (the
    precomputed path: test_ld_reference_precompute_matches_trl)."""
    compare_with_trl(
        tokens,
        [{"name": "ld-dpo", "params": {"beta": 0.2, "ld_alpha": ld_alpha}}],
        dict(beta=0.2, loss_types=["sigmoid"], ld_alpha=ld_alpha),
        live_ref=True,
    )


@pytest.mark.parametrize("ld_alpha", [0.0, 0.4, 1.0])
def test_ld_reference_precompute_matches_trl(tokens, ld_alpha):
    """TRL's precompute gives LD-weighted reference sums; ours are shared + alpha (total - shared) from the
    shared-length sums the engine would cache. Then the losses agree with TRL fed its own precomputed sums."""
    m, ref = tokens["mask"], tokens["ref"]
    trl_c, trl_r = trl_precomputed_ref(ref, m, ld_alpha)
    mc, mr = m[:B], m[B:]
    shared = torch.minimum(mc.sum(-1), mr.sum(-1))
    pos_c, pos_r = mc.long().cumsum(-1), mr.long().cumsum(-1)
    shared_c = (ref[:B] * (mc & (pos_c <= shared[:, None]))).sum(-1)
    shared_r = (ref[B:] * (mr & (pos_r <= shared[:, None]))).sum(-1)
    pol = tokens["pol"].clone().requires_grad_()
    o = ours_outputs(tokens, pol).replace(
        ref_chosen_token_logps=None,
        ref_rejected_token_logps=None,
        ref_chosen_shared_logps=shared_c,
        ref_rejected_shared_logps=shared_r,
    )
    ours = compute_loss("ld-dpo", o, beta=0.2, ld_alpha=ld_alpha).losses.mean()
    pol_t = tokens["pol"].clone().requires_grad_()
    theirs = trl_compute_loss(pol_t, m, ref=(trl_c, trl_r), beta=0.2, loss_types=["sigmoid"], ld_alpha=ld_alpha)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-9)
    ours.backward()
    theirs.backward()
    assert torch.allclose(pol.grad[m], pol_t.grad[m], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name,trl_type", [("ipo", "ipo"), ("sigmoid-norm", "sigmoid_norm"), ("hinge", "hinge")])
def test_ld_alpha_key_matches_trl(tokens, name, trl_type):
    compare_with_trl(
        tokens,
        [{"name": name, "params": {"beta": 0.2}, "ld_alpha": 0.3}],
        dict(beta=0.2, loss_types=[trl_type], ld_alpha=0.3),
        live_ref=True,
    )


def test_everything_at_once_matches_trl(tokens):
    """LD-DPO, the JS divergence and WPO weighting together, on a weighted list of two losses (TRL's loss_weights)."""
    spec = [
        {
            "name": "dpo",
            "weight": 0.7,
            "params": {"beta": 0.3},
            "ld_alpha": 0.4,
            "divergence": "js_divergence",
            "weighting": "wpo",
        },
        {
            "name": "ipo",
            "weight": 0.5,
            "params": {"beta": 0.3},
            "ld_alpha": 0.4,
            "divergence": "js_divergence",
            "weighting": "wpo",
        },
    ]
    compare_with_trl(
        tokens,
        spec,
        dict(
            beta=0.3,
            loss_types=["sigmoid", "ipo"],
            loss_weights=[0.7, 0.5],
            ld_alpha=0.4,
            f_divergence_type="js_divergence",
            use_weighting=True,
        ),
        live_ref=True,
    )
