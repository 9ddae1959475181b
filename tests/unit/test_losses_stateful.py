"""beta-DPO (stateful), MADPO (extra column), Gate-DPO (gradient transform) and the weighted-list API."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch

from dpolab.losses import (
    CompositeLoss,
    GateConfig,
    LossConfigError,
    LossSpec,
    PreferenceOutputs,
    compute_loss,
    get_loss,
    madpo_weight,
)


def ls(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def batch(h, *, grad=False, rm=None, pr=None, lr=None):
    """Pairs with policy chosen log-probs h[i] - 10, everything else fixed, so r_w - r_l = h[i]."""
    n = len(h)
    pc = torch.tensor([x - 10.0 for x in h], dtype=torch.float64, requires_grad=grad)
    prt = torch.tensor(pr if pr is not None else [-10.0] * n, dtype=torch.float64, requires_grad=grad)
    ref_r = prt.detach().clone()
    extras = {} if rm is None else {"rm_margin": torch.tensor(rm, dtype=torch.float64)}
    return PreferenceOutputs(
        policy_chosen_logps=pc,
        policy_rejected_logps=prt,
        ref_chosen_logps=torch.full((n,), -10.0, dtype=torch.float64),
        ref_rejected_logps=ref_r,
        chosen_lengths=torch.full((n,), 5),
        rejected_lengths=torch.tensor(lr if lr is not None else [5] * n),
        extras=extras,
    )


# ============================== beta-DPO ======================================================
def make_beta(**kw):
    return get_loss("beta-dpo").fn(**kw)


def test_beta_dpo_first_step_hand_example():
    h = [1.0, 2.0, 4.0, -3.0, 0.5]
    loss = make_beta(seed=3)
    out = loss(batch(h))
    m0 = 0.1 * statistics.mean(h)  # zero-initialised, momentum 0.9
    s = 0.1 * statistics.stdev(h)  # unbiased std, as torch.std
    kept = [i for i, v in enumerate(out.mask.tolist()) if v == 1.0]
    assert len(kept) == math.floor(5 * 0.8) == 4
    beta_b = 0.1 * (1 + 0.6 * (statistics.mean(h[i] for i in kept) - m0))
    assert out.metrics["M0"] == pytest.approx(m0)
    assert out.metrics["std"] == pytest.approx(s)
    assert out.metrics["beta"] == pytest.approx(beta_b)
    assert out.metrics["kept"] == 4
    assert out.losses.tolist() == pytest.approx([-ls(beta_b * x) for x in h])
    assert out.reduced().item() == pytest.approx(statistics.mean(-ls(beta_b * h[i]) for i in kept))
    # rewards use beta_0 (official code)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1 * x for x in h])


def test_beta_dpo_second_step_uses_running_stats():
    h1, h2 = [1.0, 2.0, 3.0, 4.0], [0.0, 5.0, -1.0, 2.0]
    loss = make_beta()
    loss(batch(h1))
    out = loss(batch(h2))
    m0 = 0.9 * (0.1 * statistics.mean(h1)) + 0.1 * statistics.mean(h2)
    s = 0.9 * (0.1 * statistics.stdev(h1)) + 0.1 * statistics.stdev(h2)
    assert out.metrics["M0"] == pytest.approx(m0)
    assert out.metrics["std"] == pytest.approx(s)


def test_beta_dpo_gradient_uses_batch_beta_and_mask():
    h = [1.0, 2.0, 4.0, -3.0, 0.5]
    loss = make_beta(seed=1)
    o = batch(h, grad=True)
    out = loss(o)
    out.reduced().backward()
    bb, mask, k = out.metrics["beta"], out.mask.tolist(), out.metrics["kept"]
    expect = [-bb * sig(-bb * x) * m / k for x, m in zip(h, mask)]
    assert o.policy_chosen_logps.grad.tolist() == pytest.approx(expect)
    assert o.policy_rejected_logps.grad.tolist() == pytest.approx([-g for g in expect])


def test_beta_dpo_deterministic_with_seed():
    hs = [[1.0, 2.0, 4.0, -3.0, 0.5, 0.1, 7.0, 2.2], [0.3, -0.2, 1.5, 9.0, -4.0, 0.0, 1.1, 2.0]] * 2
    a, b2 = make_beta(seed=7), make_beta(seed=7)
    ma = [a(batch(h)).mask.tolist() for h in hs]
    mb = [b2(batch(h)).mask.tolist() for h in hs]
    assert ma == mb
    assert all(sum(m) == 6 for m in ma)  # floor(8 * 0.8)


@pytest.mark.parametrize("n,rho,k", [(1, 0.2, 1), (2, 0.2, 1), (3, 0.2, 2), (10, 0.2, 8), (10, 0.7, 3), (4, 0.0, 4)])
def test_beta_dpo_kept_count(n, rho, k):
    out = make_beta(rho=rho)(batch([float(i) for i in range(n)]))
    assert out.metrics["kept"] == k and int(out.mask.sum()) == k
    assert torch.isfinite(out.losses).all() and math.isfinite(out.metrics["beta"])


def test_beta_dpo_zero_std_and_single_pair_no_nan():
    loss = make_beta()
    out = loss(batch([0.0, 0.0, 0.0, 0.0]))  # policy == reference: all M_i = 0, std 0
    assert out.metrics["std"] == 0.0 and out.metrics["beta"] == pytest.approx(0.1)
    assert out.reduced().item() == pytest.approx(math.log(2))
    out1 = make_beta()(batch([2.0]))
    assert math.isfinite(out1.reduced().item()) and out1.metrics["kept"] == 1
    # far outliers: weights underflow but sampling still succeeds
    loss2 = make_beta()
    loss2(batch([0.0, 0.0, 0.0, 1e-3]))
    out2 = loss2(batch([1e6, -1e6, 5e5, 3e5]))
    assert torch.isfinite(out2.losses).all() and out2.metrics["kept"] == 3


def test_beta_dpo_beta_clamped():
    out = make_beta(alpha=100.0)(batch([-50.0, -60.0, -55.0]))
    assert out.metrics["beta"] == pytest.approx(1e-3)


def test_beta_dpo_state_dict_round_trip_is_exact():
    h1 = [1.0, 2.0, 4.0, -3.0, 0.5, 0.1, 7.0, 2.2]
    h2 = [0.3, -0.2, 1.5, 9.0, -4.0, 0.0, 1.1, 2.0]
    a = make_beta(seed=11)
    a(batch(h1))
    state = copy.deepcopy(a.state_dict())
    out_a = a(batch(h2))
    b2 = make_beta(seed=999)  # a different seed: the loaded generator state must win
    b2.load_state_dict(state)
    out_b = b2(batch(h2))
    assert torch.equal(out_a.mask, out_b.mask)
    assert torch.equal(out_a.losses, out_b.losses)
    assert out_a.metrics == out_b.metrics
    # through CompositeLoss too
    comp = CompositeLoss([{"name": "beta-dpo", "params": {"seed": 11}}])
    comp(batch(h1))
    st = copy.deepcopy(comp.state_dict())
    t1, m1, _ = comp(batch(h2))
    comp2 = CompositeLoss(["beta-dpo"])
    comp2.load_state_dict(st)
    t2, m2, _ = comp2(batch(h2))
    assert t1.item() == t2.item() and m1["beta-dpo/beta"] == m2["beta-dpo/beta"]


def test_beta_dpo_dist_context_uses_global_stats_and_local_slice():
    from dpolab.losses import DistContext

    h = [1.0, 2.0, 3.0]
    other = [10.0, 20.0, 30.0]
    loss = make_beta()
    dist = DistContext(all_gather=lambda t: torch.cat([torch.tensor(other, dtype=t.dtype), t]), rank=1, world_size=2)
    out = loss(batch(h), dist=dist)
    assert out.mask.shape == (3,)
    assert not hasattr(loss, "all_gather") and not hasattr(loss, "rank")  # context is an argument, not loss state
    # the composite loss passes the same context through to its stateful components
    comp = CompositeLoss(["beta-dpo"])
    _, m_local, _ = comp(batch(h))
    comp2 = CompositeLoss(["beta-dpo"])
    _, m_dist, _ = comp2(batch(h), dist=dist)
    assert m_local["beta-dpo/M0"] == pytest.approx(0.1 * statistics.mean(h))
    assert m_dist["beta-dpo/M0"] == pytest.approx(0.1 * statistics.mean(other + h))
    assert out.metrics["M0"] == pytest.approx(0.1 * statistics.mean(other + h))
    assert out.metrics["std"] == pytest.approx(0.1 * statistics.stdev(other + h))


# ============================== MADPO ==========================================================
def test_madpo_worked_values():
    w = madpo_weight(torch.tensor([0.0, 1.0, -1.0, -10.0], dtype=torch.float64)).tolist()
    assert [round(x, 2) for x in w] == [1.0, 1.20, 0.45, 1.0]
    # the formula by hand at a few more points, incl. continuity at m = -tau (c(tau) = 1 -> w = 1)
    tau = math.log(999)
    for m in [0.3, 2.5, 6.0, 20.0, -0.5, -3.0, -tau + 1e-9]:
        c = 0.5 + 1.5 / (1 + 2.0 * math.exp(abs(m) - tau))
        assert madpo_weight(torch.tensor(m, dtype=torch.float64)).item() == pytest.approx(
            sig(c * m) / sig(m), rel=1e-12
        )
    assert madpo_weight(torch.tensor(-tau + 1e-9, dtype=torch.float64)).item() == pytest.approx(1.0, abs=1e-6)


def test_madpo_loss_weights_detached_and_metrics():
    o = batch([1.5, -2.0, 3.0], rm=[0.0, 1.0, -1.0], grad=True)
    out = compute_loss("madpo", o)
    w = madpo_weight(torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64))
    assert out.losses.tolist() == pytest.approx([wi * -ls(0.1 * h) for wi, h in zip(w.tolist(), [1.5, -2.0, 3.0])])
    out.losses.sum().backward()
    expect = [-wi * 0.1 * sig(-0.1 * h) for wi, h in zip(w.tolist(), [1.5, -2.0, 3.0])]
    assert o.policy_chosen_logps.grad.tolist() == pytest.approx(expect)
    assert out.metrics["madpo/weight/min"].item() == pytest.approx(min(w.tolist()))
    assert out.metrics["madpo/weight/max"].item() == pytest.approx(max(w.tolist()))
    assert CompositeLoss(["madpo"]).needs_extras == ("rm_margin",)


def test_madpo_missing_or_nan_margin():
    with pytest.raises(LossConfigError, match="rm_margin"):
        compute_loss("madpo", batch([1.0, 2.0]))
    with pytest.raises(LossConfigError, match="NaN"):
        compute_loss("madpo", batch([1.0, 2.0], rm=[0.5, float("nan")]))


# ============================== Gate-DPO =======================================================
PR_G = [-11.0, -9.0, -14.0]
LR_G = [6, 3, 7]


def gates_by_hand(alpha=30.0, tau=0.1):
    return [sig(alpha * (math.exp(p / n) - tau)) for p, n in zip(PR_G, LR_G)]


@pytest.mark.parametrize("name", ["dpo", "ipo", "cal-dpo", "beta-dpo"])
def test_gate_keeps_value_and_scales_rejected_gradient(name):
    def run(gate):
        o = batch([1.5, -2.0, 3.0], grad=True, pr=PR_G, lr=LR_G)
        spec = {"name": name} if gate is None else {"name": name, "gate": gate}
        total, metrics, parts = CompositeLoss([spec])(o)
        total.backward()
        return total, parts[0].losses, o.policy_chosen_logps.grad, o.policy_rejected_logps.grad, metrics

    t0, l0, gc0, gr0, _ = run(None)
    t1, l1, gc1, gr1, m1 = run("seq")
    g = gates_by_hand()
    assert torch.equal(l0, l1) and t0.item() == t1.item()
    assert torch.equal(gc0, gc1)
    assert gr1.tolist() == pytest.approx([gi * x for gi, x in zip(g, gr0.tolist())], rel=1e-12)
    assert m1[f"{name}/gate/mean"].item() == pytest.approx(sum(g) / 3)
    assert m1[f"{name}/gate/min"].item() == pytest.approx(min(g))
    assert m1[f"{name}/gate/p_mean"].item() == pytest.approx(sum(math.exp(p / n) for p, n in zip(PR_G, LR_G)) / 3)


def test_gate_dpo_loss_equals_gated_dpo():
    o1 = batch([1.5, -2.0, 3.0], grad=True, pr=PR_G, lr=LR_G)
    o2 = batch([1.5, -2.0, 3.0], grad=True, pr=PR_G, lr=LR_G)
    a = compute_loss("gate-dpo", o1, alpha=5.0, tau=0.2)
    b2 = compute_loss([{"name": "dpo", "gate": {"mode": "seq", "alpha": 5.0, "tau": 0.2}}], o2)
    a.losses.sum().backward()
    b2.losses.sum().backward()
    assert torch.allclose(a.losses, b2.losses)
    assert torch.allclose(o1.policy_rejected_logps.grad, o2.policy_rejected_logps.grad)
    assert "gate-dpo/gate/mean" in a.metrics


def with_tokens(o, tok, mask):
    return o.replace(
        policy_rejected_token_logps=torch.tensor(tok, dtype=torch.float64), rejected_token_mask=torch.tensor(mask)
    )


def test_gate_levels_seq_from_tokens_and_q10():
    tok = [[-0.1, -0.5, -3.0, -1.0, 0.0], [-2.0, -0.2, -4.0, 0.0, 0.0]]
    mask = [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    o = with_tokens(batch([1.0, 2.0]), tok, mask)
    seq = GateConfig.parse("seq", get_loss("dpo")).level(o).tolist()
    assert seq == pytest.approx([math.exp(-4.6 / 4), math.exp(-6.2 / 3)])

    def q10(vals):  # linear interpolation at position 0.1 * (n - 1) of the sorted probabilities
        p = sorted(math.exp(v) for v in vals)
        pos = 0.1 * (len(p) - 1)
        lo = math.floor(pos)
        return p[lo] + (pos - lo) * (p[min(lo + 1, len(p) - 1)] - p[lo])

    cfg = GateConfig.parse({"mode": "q10"}, get_loss("ipo"))
    assert (cfg.alpha, cfg.tau) == (300.0, 0.01)
    assert cfg.level(o).tolist() == pytest.approx([q10(tok[0][:4]), q10(tok[1][:3])])
    _, metrics = cfg.apply(o)
    assert 0 <= metrics["gate/min"].item() <= metrics["gate/max"].item() <= 1


def test_gate_config_errors():
    dpo = get_loss("dpo")
    with pytest.raises(LossConfigError, match="seq, q10"):
        GateConfig.parse("q20", dpo)
    with pytest.raises(LossConfigError, match="unknown key"):
        GateConfig.parse({"mode": "seq", "slope": 3}, dpo)
    with pytest.raises(LossConfigError, match="alpha"):
        GateConfig.parse({"alpha": -1}, dpo)
    with pytest.raises(LossConfigError, match="rejected"):
        CompositeLoss([{"name": "sft", "gate": "seq"}])
    with pytest.raises(LossConfigError, match="already gated"):
        CompositeLoss([{"name": "gate-dpo", "gate": "seq"}])
    with pytest.raises(LossConfigError, match="q10"):
        compute_loss([{"name": "dpo", "gate": "q10"}], batch([1.0, 2.0]))  # no per-token log-probs
    assert CompositeLoss([{"name": "dpo", "gate": {"tau": 0.3}}]).components[0][4] == GateConfig("seq", 30.0, 0.3)


# ============================== weighted list / registry =======================================
def test_composite_weighted_sum_matches_hand_sum():
    h = [1.5, -2.0, 3.0]
    o = batch(h)
    total, metrics, parts = CompositeLoss([{"name": "dpo", "weight": 1.0}, {"name": "sft", "weight": 0.2}])(o)
    dpo_mean = sum(-ls(0.1 * x) for x in h) / 3
    sft_mean = sum(-(x - 10.0) / 5 for x in h) / 3
    assert total.item() == pytest.approx(dpo_mean + 0.2 * sft_mean)
    assert metrics["loss/dpo"].item() == pytest.approx(dpo_mean)
    assert metrics["loss/sft"].item() == pytest.approx(sft_mean)
    # the same loss twice gets distinct labels
    _, m2, _ = CompositeLoss(["dpo", {"name": "dpo", "params": {"beta": 0.5}}])(o)
    assert "loss/dpo" in m2 and "loss/dpo_1" in m2


def test_unknown_name_and_param_list_valid_choices():
    with pytest.raises(LossConfigError, match=r"valid losses: .*cal-dpo.*dpo.*sft"):
        CompositeLoss(["dpoo"])
    with pytest.raises(LossConfigError, match="did you mean dpo"):
        get_loss("dpoo")
    with pytest.raises(LossConfigError, match=r"valid: beta, label_smoothing"):
        CompositeLoss([{"name": "dpo", "params": {"betta": 0.2}}])
    with pytest.raises(LossConfigError, match=r"valid: alpha, beta, momentum, rho, seed"):
        CompositeLoss([{"name": "beta-dpo", "params": {"gamma": 1}}])
    with pytest.raises(LossConfigError, match="unknown key"):
        LossSpec.parse({"name": "dpo", "wieght": 2})
    assert get_loss("NCA_pair").name == "nca-pair"


def test_compute_loss_single_and_list_forms():
    h = [1.5, -2.0, 3.0]
    o = batch(h)
    single = compute_loss("ipo", o, beta=0.5, length_normalized=False)
    assert single.losses.tolist() == pytest.approx([(x - 1.0) ** 2 for x in h])
    assert "loss" in single.metrics
    mixed = compute_loss([{"name": "dpo"}, {"name": "sft", "weight": 0.5}], o)
    assert mixed.losses.tolist() == pytest.approx([-ls(0.1 * x) + 0.5 * (-(x - 10.0) / 5) for x in h])
    with pytest.raises(LossConfigError):
        compute_loss(["dpo"], o, beta=0.2)


def test_gate_forward_value_is_exactly_the_wrapped_value_at_step_0():
    """sg(x) + g (x - sg(x)) is x to the last bit; g x + (1 - g) sg(x) is not (METHODS.md: rejected reward 0 at
    step 0)."""
    torch.manual_seed(0)
    x = torch.rand(2000, dtype=torch.float64) * -80.0
    n = torch.full((2000,), 7)
    o = PreferenceOutputs(
        policy_chosen_logps=x.clone().requires_grad_(),
        policy_rejected_logps=x.clone().requires_grad_(),
        ref_chosen_logps=x.clone(),
        ref_rejected_logps=x.clone(),
        chosen_lengths=n,
        rejected_lengths=n,
    )
    gated, _ = GateConfig.build("seq", alpha=3.0, tau=0.3).apply(o)
    assert torch.equal(gated.policy_rejected_logps, o.policy_rejected_logps)
    out = compute_loss("gate-dpo", o, alpha=3.0, tau=0.3)
    assert torch.equal(out.rejected_rewards, torch.zeros_like(x)) and torch.equal(
        out.chosen_rewards, torch.zeros_like(x)
    )
