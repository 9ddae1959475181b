"""The spec wrappers (ld_alpha, gate, divergence, weighting) and the losses built on them (ld-dpo, fdpo, wpo):
how they compose, what they need from the engine, and the errors they raise. Values against TRL are in
test_losses_trl.py, closed forms in test_losses.py."""

from __future__ import annotations

import math

import pytest
import torch

from dpolab.losses import (
    CompositeLoss,
    FDivergence,
    GateConfig,
    LDConfig,
    LossConfigError,
    PreferenceOutputs,
    WPOWeighting,
    compute_loss,
    get_loss,
)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def padded(rows, t=8):
    v = torch.zeros(len(rows), t, dtype=torch.float64)
    m = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        v[i, 2 : 2 + len(r)] = torch.tensor(r, dtype=torch.float64)
        m[i, 2 : 2 + len(r)] = True
    return v, m


TC = [[-1.0, -0.5, -2.0, -1.5], [-0.2, -3.0], [-1.0, -1.0, -1.0]]
TR = [[-2.0, -0.5], [-1.0, -0.7, -2.5, -0.1, -0.4], [-0.3, -2.2, -1.1]]
RC = [[-1.2, -0.6, -1.0, -1.0], [-0.5, -2.0], [-1.5, -0.5, -1.0]]
RR = [[-1.0, -1.5], [-0.8, -1.0, -2.0, -0.5, -0.5], [-1.0, -1.0, -1.0]]
SC = [[-0.5, -0.6, -0.7, -0.8], [-1.0, -0.2], [-0.4, -0.4, -0.9]]
SR = [[-1.2, -0.3], [-0.6, -0.6, -0.6, -0.6, -0.6], [-0.2, -0.9, -1.3]]


def batch(grad=False, *, tokens=True, lssp=True, ref_tokens=True):
    tc, mc = padded(TC)
    tr, mr = padded(TR)
    tc.requires_grad_(grad)
    tr.requires_grad_(grad)
    fields = dict(
        policy_chosen_logps=(tc * mc).sum(-1),
        policy_rejected_logps=(tr * mr).sum(-1),
        ref_chosen_logps=torch.tensor([sum(r) for r in RC], dtype=torch.float64),
        ref_rejected_logps=torch.tensor([sum(r) for r in RR], dtype=torch.float64),
        chosen_lengths=mc.sum(-1),
        rejected_lengths=mr.sum(-1),
    )
    if tokens:
        fields.update(
            policy_chosen_token_logps=tc, chosen_token_mask=mc, policy_rejected_token_logps=tr, rejected_token_mask=mr
        )
    if lssp:
        fields.update(
            policy_chosen_token_log_sum_sq_probs=padded(SC)[0], policy_rejected_token_log_sum_sq_probs=padded(SR)[0]
        )
    if ref_tokens:
        fields.update(ref_chosen_token_logps=padded(RC)[0], ref_rejected_token_logps=padded(RR)[0])
    return PreferenceOutputs(**fields)


def run(spec, **kw):
    """(per-example losses, metrics, grad of chosen tokens, grad of rejected tokens) of a spec list."""
    o = batch(grad=True, **kw)
    total, metrics, parts = CompositeLoss(spec)(o)
    total.backward()
    return parts[0].losses.detach(), metrics, o.policy_chosen_token_logps.grad, o.policy_rejected_token_logps.grad


def gates(alpha=30.0, tau=0.1):
    return [sig(alpha * (math.exp(sum(r) / len(r)) - tau)) for r in TR]


# ---- what the engine must provide --------------------------------------------------------------------------------
def test_needs_flags_tell_the_engine_what_to_produce():
    plain = CompositeLoss(["dpo"])
    assert not (plain.needs_token_logps or plain.needs_token_log_sum_sq_probs or plain.needs_ref_token_split)
    w = CompositeLoss(["dpo", {"name": "ipo", "weighting": "wpo"}])
    assert w.needs_token_logps and w.needs_token_log_sum_sq_probs and not w.needs_ref_token_split
    assert CompositeLoss(["wpo"]).needs_token_log_sum_sq_probs
    ld = CompositeLoss([{"name": "ipo", "ld_alpha": 0.5}])
    assert ld.needs_token_logps and ld.needs_ref_token_split and not ld.needs_token_log_sum_sq_probs
    assert CompositeLoss(["ld-dpo"]).needs_ref_token_split and CompositeLoss(["ld-dpo"]).needs_token_logps
    f = CompositeLoss(["fdpo", {"name": "hinge", "divergence": "js_divergence"}])
    assert not (f.needs_token_logps or f.needs_ref_token_split or f.needs_token_log_sum_sq_probs)


def test_missing_inputs_name_the_fields():
    with pytest.raises(
        LossConfigError, match="policy_chosen_token_log_sum_sq_probs, .*policy_rejected_token_log_sum_sq_probs"
    ):
        compute_loss("wpo", batch(lssp=False))
    with pytest.raises(LossConfigError, match=r"loss 'dpo' with weighting 'wpo'.*missing: policy_chosen_token_logps"):
        compute_loss([{"name": "dpo", "weighting": "wpo"}], batch(tokens=False, lssp=False))
    with pytest.raises(
        LossConfigError, match=r"ref_chosen_token_logps / ref_rejected_token_logps.*ref_chosen_shared_logps"
    ):
        compute_loss("ld-dpo", batch(ref_tokens=False))
    with pytest.raises(LossConfigError, match=r"loss 'ipo' with ld_alpha needs the reference's per-token"):
        compute_loss([{"name": "ipo", "ld_alpha": 0.2}], batch(ref_tokens=False))
    with pytest.raises(LossConfigError, match="missing: policy_chosen_token_logps, chosen_token_mask"):
        compute_loss("ld-dpo", batch(tokens=False))
    with pytest.raises(LossConfigError, match="reference"):
        compute_loss("fdpo", batch().replace(ref_chosen_logps=None))


# ---- spec validation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec,match",
    [
        ({"name": "dpo", "weighting": "wpx"}, "unknown weighting"),
        ({"name": "dpo", "weighting": {"name": "wpo", "power": 2}}, "unknown key"),
        ({"name": "aot", "weighting": "wpo"}, "sorts pairs"),
        ({"name": "wpo", "weighting": "wpo"}, "already WPO-weighted"),
        ({"name": "fdpo", "divergence": "js_divergence"}, "in params"),
        ({"name": "simpo", "divergence": "forward_kl"}, "not to 'simpo'"),
        ({"name": "aot", "divergence": "forward_kl"}, "not to 'aot'"),
        (
            {"name": "dpo", "divergence": "tv"},
            "unknown divergence 'tv'; valid: reverse_kl, forward_kl, js_divergence, alpha_divergence",
        ),
        ({"name": "dpo", "divergence": {"alpha": 0.3}}, "missing 'type'"),
        (
            {"name": "dpo", "divergence": {"type": "alpha_divergence", "alpha": 1.5}},
            r"alpha must be a number in \[0, 1\]",
        ),
        ({"name": "dpo", "divergence": {"type": "alpha_divergence", "coef": 0.3}}, "unknown key"),
        ({"name": "ld-dpo", "ld_alpha": 0.5}, "already applies LD-DPO"),
        ({"name": "simpo", "ld_alpha": 0.5}, "uses no reference"),
        ({"name": "aot", "ld_alpha": 0.5}, "batch-level"),
        ({"name": "dpo", "ld_alpha": 1.5}, r"ld_alpha must be a number in \[0, 1\]"),
        ({"name": "dpo", "ld_alpha": True}, "ld_alpha must be a number"),
        ({"name": "dpo", "ld_alpha": "0.5"}, "ld_alpha must be a number"),
        ({"name": "dpo", "ld_alpha": 0.5, "wieght": 1}, "unknown key"),
    ],
)
def test_bad_wrapper_specs_raise(spec, match):
    with pytest.raises(LossConfigError, match=match):
        CompositeLoss([spec])


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("fdpo", {"divergence": "kl"}, "unknown divergence"),
        ("fdpo", {"divergence": "alpha_divergence", "alpha": -0.1}, "alpha must be"),
        ("fdpo", {"beta": 0.0}, "beta"),
        ("ld-dpo", {"ld_alpha": -0.5}, "ld_alpha must be"),
        ("ld-dpo", {"ld_alpha": float("nan")}, "ld_alpha must be"),
        ("sigmoid-norm", {"beta": -1.0}, "beta"),
        ("wpo", {"beta": 0.0}, "beta"),
    ],
)
def test_bad_params_raise(name, params, match):
    with pytest.raises(LossConfigError, match=match):
        compute_loss(name, batch(), **params)


def test_wrapper_values_parse_forms():
    dpo = get_loss("dpo")
    assert FDivergence.parse("JS-Divergence", dpo) == FDivergence("js_divergence", 0.5)
    assert FDivergence.parse({"type": "alpha_divergence", "alpha": 0.2}, dpo) == FDivergence("alpha_divergence", 0.2)
    assert WPOWeighting.parse({"name": "WPO"}, dpo) == WPOWeighting()
    assert LDConfig.parse(0, dpo) == LDConfig(0.0)
    comp = CompositeLoss([{"name": "dpo", "weighting": False, "ld_alpha": None}])
    assert comp.wrappers[0].weighting is None and comp.wrappers[0].ld is None
    assert get_loss("sigmoid_norm").name == "sigmoid-norm" and get_loss("LD_DPO").name == "ld-dpo"


# ---- equivalences: a loss = DPO with the wrapper -----------------------------------------------------------------
@pytest.mark.parametrize("divergence,alpha", [("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.25)])
def test_fdpo_equals_dpo_with_divergence_key(divergence, alpha):
    a = run([{"name": "fdpo", "params": {"beta": 0.4, "divergence": divergence, "alpha": alpha}}])
    b = run([{"name": "dpo", "params": {"beta": 0.4}, "divergence": {"type": divergence, "alpha": alpha}}])
    assert torch.allclose(a[0], b[0], rtol=1e-14) and torch.allclose(a[2], b[2]) and torch.allclose(a[3], b[3])


def test_ld_dpo_equals_dpo_with_ld_alpha_key_and_shared_sums_equal_tokens():
    a = run([{"name": "ld-dpo", "params": {"ld_alpha": 0.3}}])
    b = run([{"name": "dpo", "ld_alpha": 0.3}])
    assert torch.allclose(a[0], b[0], rtol=1e-14) and torch.allclose(a[2], b[2]) and torch.allclose(a[3], b[3])
    assert "ld-dpo/ld/tail_token_frac" in a[1] and "dpo/ld/tail_token_frac" in b[1]

    # the reference from its shared-length sums (what a precomputed reference would cache) gives the same losses
    def shared(rows, others):
        return torch.tensor(
            [sum(r[: min(len(r), len(o))]) for r, o in zip(rows, others)],
            dtype=torch.float64,
        )

    o = batch(ref_tokens=False).replace(
        ref_chosen_shared_logps=shared(RC, RR), ref_rejected_shared_logps=shared(RR, RC)
    )
    assert torch.allclose(compute_loss("ld-dpo", o, ld_alpha=0.3).losses, a[0], rtol=1e-14)


def test_ld_alpha_one_is_the_plain_loss():
    for name in ("dpo", "ipo", "cal-dpo", "madpo"):
        o = batch().replace(extras={"rm_margin": torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)})
        plain = compute_loss(name, o).losses
        ld = compute_loss([{"name": name, "ld_alpha": 1.0}], o).losses
        assert torch.allclose(plain, ld, rtol=1e-13), name


def test_weighting_key_equals_wpo_loss_and_multiplies_any_loss():
    a = run(["wpo"])
    b = run([{"name": "dpo", "weighting": "wpo"}])
    assert torch.allclose(a[0], b[0], rtol=1e-14) and torch.allclose(a[2], b[2]) and torch.allclose(a[3], b[3])
    w = [
        math.exp(sum(x - y for x, y in zip(c, sc)) / len(c) + sum(x - y for x, y in zip(r, sr)) / len(r))
        for c, sc, r, sr in zip(TC, SC, TR, SR)
    ]
    for name in ("ipo", "sft", "cal-dpo", "simpo", "orpo"):
        plain = compute_loss(name, batch()).losses
        weighted = compute_loss([{"name": name, "weighting": "wpo"}], batch())
        assert weighted.losses.tolist() == pytest.approx([p * x for p, x in zip(plain.tolist(), w)], rel=1e-12), name
        assert weighted.metrics[f"{name}/wpo/weight_mean"].item() == pytest.approx(sum(w) / 3)


def test_weighting_keeps_beta_dpo_mask():
    o = batch()
    comp = CompositeLoss([{"name": "beta-dpo", "params": {"rho": 0.4, "seed": 0}, "weighting": "wpo"}])
    _, _, parts = comp(o)
    assert parts[0].mask is not None and int(parts[0].mask.sum()) == 1  # floor(3 * 0.6) pairs kept


def test_weights_carry_no_gradient():
    o = batch(grad=True)
    w = WPOWeighting().weights(o)
    assert not w.requires_grad
    compute_loss("wpo", o).losses.sum().backward()
    # only through DPO's sequence sums: every real token of a row gets the same gradient
    g = o.policy_chosen_token_logps.grad
    for i, row in enumerate(TC):
        vals = g[i, 2 : 2 + len(row)]
        assert torch.allclose(vals, vals[0].expand_as(vals))


# ---- the gate composes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [
        {"name": "fdpo", "params": {"divergence": "js_divergence"}},
        {"name": "dpo", "divergence": "forward_kl"},
        {"name": "ld-dpo", "params": {"ld_alpha": 0.3}},
        {"name": "ipo", "ld_alpha": 0.3},
        {"name": "dpo", "ld_alpha": 0.6, "divergence": {"type": "alpha_divergence", "alpha": 0.4}, "weighting": "wpo"},
    ],
)
def test_gate_keeps_value_and_scales_rejected_gradient(spec):
    l0, _, gc0, gr0 = run([spec])
    l1, m1, gc1, gr1 = run([dict(spec, gate="seq")])
    assert torch.equal(l0, l1)
    assert torch.allclose(gc0, gc1, rtol=1e-14, atol=0)
    g = torch.tensor(gates(), dtype=torch.float64)
    assert torch.allclose(gr1, gr0 * g[:, None], rtol=1e-12, atol=1e-300)
    assert m1[f"{spec['name']}/gate/mean"].item() == pytest.approx(sum(gates()) / 3)


def test_gate_gates_rejected_tokens_too_with_the_same_values():
    o = batch(grad=True)
    gated, _ = GateConfig.build("seq").apply(o)
    assert torch.equal(gated.policy_rejected_token_logps, o.policy_rejected_token_logps)
    gated.policy_rejected_token_logps.sum().backward()
    g = torch.tensor(gates(), dtype=torch.float64)
    assert torch.allclose(o.policy_rejected_token_logps.grad, g[:, None].expand(3, 8))


# ---- numbers ---------------------------------------------------------------------------------------------------
def test_alpha_divergence_scores_limits_and_cap():
    r = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0], dtype=torch.float64)
    rev = FDivergence("reverse_kl").scores(r)
    fwd = FDivergence("forward_kl").scores(r)
    assert torch.equal(rev, r)
    assert torch.allclose(FDivergence("alpha_divergence", 1.0).scores(r), fwd)
    assert torch.allclose(FDivergence("alpha_divergence", 1e-5).scores(r), r, atol=1e-3)
    assert torch.equal(FDivergence("alpha_divergence", 0.0).scores(r), r)
    js = FDivergence("js_divergence").scores(r)
    assert js.tolist() == pytest.approx([math.log(2 * math.exp(x) / (1 + math.exp(x))) for x in r.tolist()])
    # far below the reference the exponent is capped at 80 (11 in float16): finite and flat
    far = torch.tensor([-1000.0], requires_grad=True)
    s = FDivergence("forward_kl").scores(far)
    assert s.item() == pytest.approx(-math.expm1(80.0), rel=1e-6)
    s.sum().backward()
    assert far.grad.item() == 0.0
    assert torch.isfinite(
        FDivergence("alpha_divergence", 0.5).scores(torch.tensor([-100.0], dtype=torch.float16))
    ).all()


def test_ld_dpo_split_by_hand():
    """Pair 1: chosen has 2 tokens, rejected 5: the rejected's last 3 are its tail."""
    o = batch()
    a = 0.25
    out = compute_loss("ld-dpo", o, ld_alpha=a, beta=1.0)
    r_l = (sum(TR[1][:2]) + a * sum(TR[1][2:])) - (sum(RR[1][:2]) + a * sum(RR[1][2:]))
    r_w = sum(TC[1]) - sum(RC[1])
    assert out.rejected_rewards[1].item() == pytest.approx(r_l)
    assert out.chosen_rewards[1].item() == pytest.approx(r_w)
    assert out.losses[1].item() == pytest.approx(math.log1p(math.exp(-(r_w - r_l))))
