"""Every registered loss: closed-form value on hand-made tensors, finite-difference gradients,
and the step-0 invariant (policy == reference). Expected numbers are computed with ``math`` on floats,
independently of the implementation."""
from __future__ import annotations

import math

import pytest
import torch

from dpolab.losses import PreferenceOutputs, compute_loss, get_loss, list_losses

# ---- a hand-made batch of 3 pairs -------------------------------------------------------------
PC = [-10.0, -12.0, -8.0]   # log pi(y_w)
PR = [-11.0, -9.0, -14.0]   # log pi(y_l)
RC = [-10.5, -11.0, -9.0]   # log pi_ref(y_w)
RR = [-10.0, -10.0, -12.0]  # log pi_ref(y_l)
LC = [5, 4, 6]
LR = [6, 3, 7]
RM = [0.0, 1.0, -1.0]       # MADPO reward-model margins
RW = [a - b for a, b in zip(PC, RC)]  # [0.5, -1, 1]
RL = [a - b for a, b in zip(PR, RR)]  # [-1, 1, -2]
H = [a - b for a, b in zip(RW, RL)]   # [1.5, -2, 3]


def ls(x):  # log sigmoid
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def logodds(a):
    return a - math.log(1.0 - math.exp(a))


def make(pc=PC, pr=PR, rc=RC, rr=RR, lc=LC, lr=LR, grad=False, rm=RM):
    t = lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=grad)
    return PreferenceOutputs(
        policy_chosen_logps=t(pc), policy_rejected_logps=t(pr),
        ref_chosen_logps=torch.tensor(rc, dtype=torch.float64), ref_rejected_logps=torch.tensor(rr, dtype=torch.float64),
        chosen_lengths=torch.tensor(lc), rejected_lengths=torch.tensor(lr),
        extras={"rm_margin": torch.tensor(rm, dtype=torch.float64)},
    )


def madpo_w(m, c_max=2.0, c_min=0.5, lam=1.0, tau=math.log(999.0)):
    if m <= -tau:
        return 1.0
    c = c_min + (c_max - c_min) / (1.0 + (c_max - 1.0) / (1.0 - c_min) * math.exp(lam * (abs(m) - tau)))
    return sig(c * m) / sig(m)


def expected_exo(z, eps):
    return sig(z) * (ls(z) - math.log(1 - eps)) + sig(-z) * (ls(-z) - math.log(eps))


def expected_disco(z, tau=0.05):
    m = sig(z / tau)
    return (1 - m) * -ls(z) + m * math.exp(-z)


b = 0.1
# name -> (params, expected per-example list)
CASES = {
    "dpo": ({}, [-ls(b * h) for h in H]),
    "dpo-smoothed": ({"label_smoothing": 0.2}, [-0.8 * ls(b * h) - 0.2 * ls(-b * h) for h in H]),
    "cdpo": ({}, [-0.9 * ls(b * h) - 0.1 * ls(-b * h) for h in H]),
    "robust": ({}, [(-0.9 * ls(b * h) + 0.1 * ls(-b * h)) / 0.8 for h in H]),
    "hinge": ({"beta": 0.5}, [0.25, 2.0, 0.0]),
    "ipo": ({}, [(w / lc - l / lr - 5.0) ** 2 for w, l, lc, lr in zip(RW, RL, LC, LR)]),
    "ipo-summed-param": ({"length_normalized": False}, [(h - 5.0) ** 2 for h in H]),
    "ipo-sum": ({}, [(h - 5.0) ** 2 for h in H]),
    "sft": ({}, [2.0, 3.0, 8.0 / 6.0]),
    "dpop": ({}, [-ls(b * (h - 50.0 * max(0.0, -w))) for h, w in zip(H, RW)]),
    "dpop-lam2": ({"lam": 2.0}, [-ls(b * (h - 2.0 * max(0.0, -w))) for h, w in zip(H, RW)]),
    "cal-dpo": ({}, [-ls(h) + (w - 5.0) ** 2 + (l + 5.0) ** 2 for h, w, l in zip(H, RW, RL)]),
    "cal-dpo-half": ({"calibration_weight": 0.5}, [-ls(h) + 0.5 * ((w - 5.0) ** 2 + (l + 5.0) ** 2) for h, w, l in zip(H, RW, RL)]),
    "simpo": ({}, [-ls(2.0 * (c / lc - r / lr) - 1.0) for c, r, lc, lr in zip(PC, PR, LC, LR)]),
    "orpo": ({}, [-c / lc - 0.1 * ls(logodds(c / lc) - logodds(r / lr)) for c, r, lc, lr in zip(PC, PR, LC, LR)]),
    "nca-pair": ({}, [-ls(b * w) - 0.5 * ls(-b * w) - 0.5 * ls(-b * l) for w, l in zip(RW, RL)]),
    "bco-pair": ({}, [-ls(b * w) - ls(-b * l) for w, l in zip(RW, RL)]),
    "apo-zero": ({}, [(1 - sig(b * w)) + sig(b * l) for w, l in zip(RW, RL)]),
    "apo-down": ({}, [sig(b * w) + (1 - sig(b * (w - l))) for w, l in zip(RW, RL)]),
    "sppo-hard": ({}, [(w - 5.0) ** 2 + (l + 5.0) ** 2 for w, l in zip(RW, RL)]),
    "exo-pair": ({}, [expected_exo(b * h, 1e-3) for h in H]),
    "discopop": ({}, [expected_disco(b * h) for h in H]),
    # AOT: sorted (pc - pr) = [-3, 1, 6], sorted (rc - rr) = [-1, -0.5, 3] -> deltas [-2, 1.5, 3]
    "aot": ({}, [-ls(b * d) for d in (-2.0, 1.5, 3.0)]),
    # unpaired: sorted r_w = [-1, .5, 1], sorted r_l = [-2, -1, 1] -> [1, 1.5, 0]
    "aot-unpaired": ({}, [-ls(b * d) for d in (1.0, 1.5, 0.0)]),
    "madpo": ({}, [madpo_w(m) * -ls(b * h) for m, h in zip(RM, H)]),
    "gate-dpo": ({}, [-ls(b * h) for h in H]),  # same value as DPO
}
ALIASES = {"dpo-smoothed": "dpo", "ipo-summed-param": "ipo", "dpop-lam2": "dpop", "cal-dpo-half": "cal-dpo"}
FUNCTIONAL = [i.name for i in list_losses() if not i.stateful]


def test_every_registered_loss_has_a_case():
    names = {i.name for i in list_losses()}
    covered = {ALIASES.get(k, k) for k in CASES} | {"beta-dpo"}  # beta-dpo: test_losses_stateful.py
    assert names == covered
    for info in list_losses():
        assert info.paper.startswith("http") and info.summary and info.fn.__doc__


@pytest.mark.parametrize("case", sorted(CASES))
def test_closed_form_value(case):
    params, expected = CASES[case]
    out = compute_loss(ALIASES.get(case, case), make(), **params)
    assert out.losses.shape == (3,)
    if case == "aot":  # term k goes to the pair of policy rank k: the same terms, in pair order
        assert sorted(out.losses.tolist()) == pytest.approx(sorted(expected), rel=1e-10, abs=1e-12)
    elif case != "aot-unpaired":  # aot-unpaired spreads each term over two pairs: only the mean is the paper's
        assert out.losses.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert out.reduced().item() == pytest.approx(sum(expected) / 3, rel=1e-10)


@pytest.mark.parametrize("name", [n for n in FUNCTIONAL if n != "gate-dpo"])
def test_gradcheck_policy_logps(name):
    params = {"beta": 0.5} if name == "hinge" else {}
    fn = get_loss(name).fn

    def f(pc, pr):
        o = make()
        o = o.replace(policy_chosen_logps=pc, policy_rejected_logps=pr)
        losses = fn(o, **params).losses
        return losses.mean() if name == "aot-unpaired" else losses  # only its mean is defined pair by pair

    pc = torch.tensor(PC, dtype=torch.float64, requires_grad=True)
    pr = torch.tensor(PR, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (pc, pr), eps=1e-6, atol=1e-6, rtol=1e-5)


def _step0_value(name, beta=0.1, eps_exo=1e-3):
    ln2 = math.log(2)
    t = 1 / (2 * beta)
    return {
        "dpo": ln2, "cdpo": ln2, "robust": ln2, "hinge": 1.0, "ipo": t * t, "ipo-sum": t * t, "dpop": ln2,
        "cal-dpo": ln2 + 2 * t * t, "nca-pair": 2 * ln2, "bco-pair": 2 * ln2, "apo-zero": 1.0, "apo-down": 1.0,
        "sppo-hard": 2 * t * t, "exo-pair": -ln2 - 0.5 * math.log(eps_exo * (1 - eps_exo)),
        "discopop": 0.5 * ln2 + 0.5, "aot": ln2, "aot-unpaired": ln2, "gate-dpo": ln2,
        "madpo": None,  # w(m) * ln 2, checked below
    }[name]


REF_BASED = [i.name for i in list_losses() if i.needs_reference]


@pytest.mark.parametrize("name", REF_BASED)
def test_step0_policy_equals_reference(name):
    o = make(rc=PC, rr=PR)
    out = compute_loss(name, o)
    if name == "madpo":
        expected = [madpo_w(m) * math.log(2) for m in RM]
    elif name == "beta-dpo":
        expected = [math.log(2)] * 3
    else:
        expected = [_step0_value(name)] * 3
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert torch.equal(out.chosen_rewards, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(out.rejected_rewards, torch.zeros(3, dtype=torch.float64))
    assert not out.chosen_rewards.requires_grad


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_step0_depends_on_beta_as_documented(beta):
    o = make(rc=PC, rr=PR)
    t = 1 / (2 * beta)
    assert compute_loss("ipo", o, beta=beta).losses[0].item() == pytest.approx(t * t)
    assert compute_loss("cal-dpo", o, beta=beta).losses[0].item() == pytest.approx(math.log(2) + 2 * t * t)
    assert compute_loss("dpo", o, beta=beta).losses[0].item() == pytest.approx(math.log(2))


def test_rewards_and_metrics():
    out = compute_loss("dpo", make(grad=True), beta=0.1)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1 * w for w in RW])
    assert out.rejected_rewards.tolist() == pytest.approx([0.1 * l for l in RL])
    assert not out.chosen_rewards.requires_grad
    assert out.metrics["rewards/margin"].item() == pytest.approx(0.1 * sum(H) / 3)
    assert out.metrics["rewards/accuracy"].item() == pytest.approx(2 / 3)
    ipo = compute_loss("ipo", make())
    assert "ipo/delta" in ipo.metrics
    dp = compute_loss("dpop", make())
    assert dp.metrics["dpop/penalty/active"].item() == pytest.approx(1 / 3)


def test_dpop_scales_chosen_gradient_by_one_plus_lambda():
    # below the reference (r_w < 0): d/d pc = -(1+lam) beta sigma(-z); above: -beta sigma(-z)
    o = make(grad=True)
    compute_loss("dpop", o, lam=2.0).losses.sum().backward()
    for i, (h, w) in enumerate(zip(H, RW)):
        z = b * (h - 2.0 * max(0.0, -w))
        scale = 3.0 if w < 0 else 1.0
        assert o.policy_chosen_logps.grad[i].item() == pytest.approx(-scale * b * sig(-z))


def test_orpo_is_stable_near_zero_logprob():
    o = make(pc=[-1e-9, -1e-3, -50.0], pr=[-60.0, -1e-8, -0.5], lc=[1, 1, 1], lr=[1, 1, 1])
    out = compute_loss("orpo", o)
    assert torch.isfinite(out.losses).all()


def test_bad_params_raise_config_error():
    from dpolab.losses import LossConfigError

    with pytest.raises(LossConfigError, match="label_smoothing"):
        compute_loss("robust", make(), label_smoothing=0.5)
    with pytest.raises(LossConfigError, match="beta"):
        compute_loss("ipo", make(), beta=0.0)
    with pytest.raises(LossConfigError, match="reference"):
        compute_loss("dpo", make().replace(ref_chosen_logps=None))
    with pytest.raises(LossConfigError, match="token counts"):
        compute_loss("simpo", make().replace(chosen_lengths=None))
