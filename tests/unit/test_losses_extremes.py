"""Every registered loss is finite, in value and gradient, for implicit-reward margins of +-500, in float32 and
float64, at its default parameters and at beta = 1."""

from __future__ import annotations

import inspect

import pytest
import torch

from dpolab.losses import PreferenceOutputs, compute_loss, list_losses

NAMES = [info.name for info in list_losses()]


def _outputs(dtype, margin):
    """Four pairs: the policy moved +-margin on the chosen or the rejected response from a reference at -10."""
    pc = [-10.0, -10.0 - margin, -10.0 + min(margin, 9.0), -10.0]
    pr = [-10.0 - margin, -10.0, -10.0, -10.0 + min(margin, 9.0) - margin]
    t = lambda v: torch.tensor(v, dtype=dtype, requires_grad=True)  # noqa: E731
    n_tok = 6
    tok = lambda seq: torch.stack([torch.full((n_tok,), float(s) / n_tok, dtype=dtype) for s in seq]).requires_grad_()  # noqa: E731
    return PreferenceOutputs(
        policy_chosen_logps=t(pc),
        policy_rejected_logps=t(pr),
        ref_chosen_logps=torch.full((4,), -10.0, dtype=dtype),
        ref_rejected_logps=torch.full((4,), -10.0, dtype=dtype),
        chosen_lengths=torch.full((4,), n_tok),
        rejected_lengths=torch.full((4,), n_tok),
        policy_chosen_token_logps=tok(pc),
        chosen_token_mask=torch.ones(4, n_tok, dtype=torch.bool),
        policy_rejected_token_logps=tok(pr),
        rejected_token_mask=torch.ones(4, n_tok, dtype=torch.bool),
        ref_chosen_token_logps=tok([-10.0] * 4).detach(),
        ref_rejected_token_logps=tok([-10.0] * 4).detach(),
        policy_chosen_token_log_sum_sq_probs=torch.full((4, n_tok), -1.0, dtype=dtype),
        policy_rejected_token_log_sum_sq_probs=torch.full((4, n_tok), -0.5, dtype=dtype),
        extras={"rm_margin": torch.tensor([margin / 50, -margin / 50, 0.0, 3.0], dtype=dtype)},
    )


def _has_beta(name):
    info = next(i for i in list_losses() if i.name == name)
    target = info.fn.__init__ if info.stateful else info.fn
    return "beta" in inspect.signature(target).parameters


# non-default settings whose numerics differ from the default's (each with and without beta = 1). Not IPO with the
# forward-KL or alpha divergences: the square of a score of up to e^80 overflows float32 (so it does in TRL).
VARIANTS = [
    ("fdpo", {"divergence": "forward_kl"}),
    ("fdpo", {"divergence": "js_divergence"}),
    ("fdpo", {"divergence": "alpha_divergence", "alpha": 0.3}),
    ("fdpo", {"divergence": "alpha_divergence", "alpha": 1e-3}),
    ("ld-dpo", {"ld_alpha": 0.0}),
    ("ld-dpo", {"ld_alpha": 1.0}),
    ([{"name": "dpo", "divergence": "forward_kl", "weighting": "wpo", "ld_alpha": 0.5, "gate": "seq"}], {}),
    ([{"name": "hinge", "divergence": "js_divergence", "weighting": "wpo"}], {}),
    ([{"name": "discopop", "divergence": {"type": "alpha_divergence", "alpha": 0.7}}], {}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("margin", [500.0, -500.0])
@pytest.mark.parametrize(
    "name,params",
    [(n, {}) for n in NAMES] + VARIANTS,
    ids=[n for n in NAMES] + [f"variant{i}" for i in range(len(VARIANTS))],
)
@pytest.mark.parametrize("beta", [None, 1.0])
def test_finite_for_extreme_margins(name, params, dtype, margin, beta):
    if isinstance(name, list):  # a spec list: beta goes into its params
        if beta is not None:
            name = [dict(s, params={"beta": beta}) for s in name]
        out = _outputs(dtype, margin)
        res = compute_loss(name, out)
    else:
        if beta is not None and not _has_beta(name):
            pytest.skip(f"{name} has no beta")
        out = _outputs(dtype, margin)
        res = compute_loss(name, out, **params, **({"beta": beta} if beta is not None else {}))
    assert torch.isfinite(res.losses).all(), (name, res.losses)
    res.reduced().backward()
    for field in (
        "policy_chosen_logps",
        "policy_rejected_logps",
        "policy_chosen_token_logps",
        "policy_rejected_token_logps",
    ):
        g = getattr(out, field).grad
        assert g is None or torch.isfinite(g).all(), (name, field, g)
