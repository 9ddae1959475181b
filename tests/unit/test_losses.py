"""Every registered loss: closed-form value on hand-made tensors, finite-difference gradients,
and the step-0 invariant (policy == reference). Expected numbers are computed with ``math`` on floats,
independently of the implementation."""

from __future__ import annotations

import math

import pytest
import torch

from dpolab.losses import PreferenceOutputs, compute_loss, get_loss, list_losses

# ---- a hand-made batch of 3 pairs -------------------------------------------------------------
PC = [-10.0, -12.0, -8.0]  # log pi(y_w)
PR = [-11.0, -9.0, -14.0]  # log pi(y_l)
RC = [-10.5, -11.0, -9.0]  # log pi_ref(y_w)
RR = [-10.0, -10.0, -12.0]  # log pi_ref(y_l)
LC = [5, 4, 6]
LR = [6, 3, 7]
RM = [0.0, 1.0, -1.0]  # MADPO reward-model margins
RW = [a - b for a, b in zip(PC, RC)]  # [0.5, -1, 1]
RL = [a - b for a, b in zip(PR, RR)]  # [-1, 1, -2]
H = [a - b for a, b in zip(RW, RL)]  # [1.5, -2, 3]

# per-token log-probs (summing to PC, PR, RC, RR), laid out after one prompt column with junk off-mask
TC = [[-1.0, -2.0, -3.0, -1.5, -2.5], [-4.0, -2.0, -3.0, -3.0], [-0.5, -1.0, -2.0, -1.5, -2.0, -1.0]]
TR = [[-2.0, -1.0, -3.0, -1.0, -2.0, -2.0], [-3.0, -4.0, -2.0], [-1.0, -2.0, -3.0, -2.0, -2.0, -3.0, -1.0]]
TRC = [[-1.5, -2.0, -2.5, -2.0, -2.5], [-3.0, -3.0, -2.0, -3.0], [-1.0, -1.0, -2.0, -1.5, -2.0, -1.5]]
TRR = [[-2.0, -1.5, -2.0, -1.5, -1.0, -2.0], [-3.0, -3.0, -4.0], [-1.0, -2.0, -2.0, -2.0, -1.5, -2.0, -1.5]]
# WPO: per-token log sum_v p_v^2 of the policy
SQC = [[-0.5, -1.0, -0.7, -0.2, -1.1], [-2.0, -0.3, -0.9, -1.0], [-0.4, -0.6, -0.8, -1.0, -1.2, -0.5]]
SQR = [[-1.0, -0.5, -1.5, -0.5, -1.0, -0.8], [-1.5, -2.0, -0.6], [-0.3, -0.9, -1.4, -1.0, -0.7, -1.6, -0.2]]
T_COLS = 9


def padded(rows, grad=False, junk=-99.0):
    """[B, T_COLS] with row i's values at columns 1..len, junk elsewhere; and the mask."""
    t = torch.full((len(rows), T_COLS), junk, dtype=torch.float64)
    m = torch.zeros(len(rows), T_COLS, dtype=torch.bool)
    for i, r in enumerate(rows):
        t[i, 1 : 1 + len(r)] = torch.tensor(r, dtype=torch.float64)
        m[i, 1 : 1 + len(r)] = True
    return t.requires_grad_(grad), m


def ls(x):  # log sigmoid
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def logodds(a):
    return a - math.log(1.0 - math.exp(a))


def make(pc=PC, pr=PR, rc=RC, rr=RR, lc=LC, lr=LR, grad=False, rm=RM, tc=TC, tr=TR, trc=TRC, trr=TRR):
    """The hand-made batch, with per-token tensors (``tc``/``tr`` etc. None to leave them out)."""

    def t(v):
        return torch.tensor(v, dtype=torch.float64, requires_grad=grad)

    tok = {}
    if tc is not None:
        (ct, cm), (rt, rm_) = padded(tc), padded(tr)
        tok.update(
            policy_chosen_token_logps=ct,
            chosen_token_mask=cm,
            policy_rejected_token_logps=rt,
            rejected_token_mask=rm_,
            policy_chosen_token_log_sum_sq_probs=padded(SQC)[0],
            policy_rejected_token_log_sum_sq_probs=padded(SQR)[0],
        )
    if trc is not None:
        tok.update(ref_chosen_token_logps=padded(trc)[0], ref_rejected_token_logps=padded(trr)[0])
    return PreferenceOutputs(
        policy_chosen_logps=t(pc),
        policy_rejected_logps=t(pr),
        ref_chosen_logps=torch.tensor(rc, dtype=torch.float64),
        ref_rejected_logps=torch.tensor(rr, dtype=torch.float64),
        chosen_lengths=torch.tensor(lc),
        rejected_lengths=torch.tensor(lr),
        extras={"rm_margin": torch.tensor(rm, dtype=torch.float64)},
        **tok,
    )


def ld_logp(tokens, other_len, alpha):
    """LD-DPO by hand: the first min(len, other_len) tokens, plus alpha times the rest."""
    m = min(len(tokens), other_len)
    return sum(tokens[:m]) + alpha * sum(tokens[m:])


def ld_h(alpha, tc=TC, tr=TR, trc=TRC, trr=TRR):
    out = []
    for c, r, rc, rr in zip(tc, tr, trc, trr):
        r_w = ld_logp(c, len(r), alpha) - ld_logp(rc, len(rr), alpha)
        r_l = ld_logp(r, len(c), alpha) - ld_logp(rr, len(rc), alpha)
        out.append(r_w - r_l)
    return out


def wpo_weight(i, tc=TC, tr=TR):
    mean = lambda lp, sq: sum(a - b for a, b in zip(lp, sq)) / len(lp)  # noqa: E731
    return math.exp(mean(tc[i], SQC[i]) + mean(tr[i], SQR[i]))


def f_score(r, divergence, alpha=0.5):
    if divergence == "reverse_kl":
        return r
    if divergence == "forward_kl":
        return 1.0 - math.exp(-r)
    if divergence == "js_divergence":
        return math.log(2.0) + ls(r)
    return (1.0 - math.exp(-alpha * r)) / alpha


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
    "ipo": ({}, [(w / lc - rej / lr - 5.0) ** 2 for w, rej, lc, lr in zip(RW, RL, LC, LR)]),
    "ipo-summed-param": ({"length_normalized": False}, [(h - 5.0) ** 2 for h in H]),
    "ipo-sum": ({}, [(h - 5.0) ** 2 for h in H]),
    "sft": ({}, [2.0, 3.0, 8.0 / 6.0]),
    "dpop": ({}, [-ls(b * (h - 50.0 * max(0.0, -w))) for h, w in zip(H, RW)]),
    "dpop-lam2": ({"lam": 2.0}, [-ls(b * (h - 2.0 * max(0.0, -w))) for h, w in zip(H, RW)]),
    "cal-dpo": ({}, [-ls(h) + (w - 5.0) ** 2 + (rej + 5.0) ** 2 for h, w, rej in zip(H, RW, RL)]),
    "cal-dpo-half": (
        {"calibration_weight": 0.5},
        [-ls(h) + 0.5 * ((w - 5.0) ** 2 + (rej + 5.0) ** 2) for h, w, rej in zip(H, RW, RL)],
    ),
    "simpo": ({}, [-ls(2.0 * (c / lc - r / lr) - 1.0) for c, r, lc, lr in zip(PC, PR, LC, LR)]),
    "orpo": ({}, [-c / lc - 0.1 * ls(logodds(c / lc) - logodds(r / lr)) for c, r, lc, lr in zip(PC, PR, LC, LR)]),
    "nca-pair": ({}, [-ls(b * w) - 0.5 * ls(-b * w) - 0.5 * ls(-b * rej) for w, rej in zip(RW, RL)]),
    "bco-pair": ({}, [-ls(b * w) - ls(-b * rej) for w, rej in zip(RW, RL)]),
    "apo-zero": ({}, [(1 - sig(b * w)) + sig(b * rej) for w, rej in zip(RW, RL)]),
    "apo-down": ({}, [sig(b * w) + (1 - sig(b * (w - rej))) for w, rej in zip(RW, RL)]),
    "sppo-hard": ({}, [(w - 5.0) ** 2 + (rej + 5.0) ** 2 for w, rej in zip(RW, RL)]),
    "exo-pair": ({}, [expected_exo(b * h, 1e-3) for h in H]),
    "discopop": ({}, [expected_disco(b * h) for h in H]),
    # AOT: sorted (pc - pr) = [-3, 1, 6], sorted (rc - rr) = [-1, -0.5, 3] -> deltas [-2, 1.5, 3]
    "aot": ({}, [-ls(b * d) for d in (-2.0, 1.5, 3.0)]),
    # unpaired: sorted r_w = [-1, .5, 1], sorted r_l = [-2, -1, 1] -> [1, 1.5, 0]
    "aot-unpaired": ({}, [-ls(b * d) for d in (1.0, 1.5, 0.0)]),
    "madpo": ({}, [madpo_w(m) * -ls(b * h) for m, h in zip(RM, H)]),
    "gate-dpo": ({}, [-ls(b * h) for h in H]),  # same value as DPO
    "sigmoid-norm": ({}, [-ls(b * (w / lc - rej / lr)) for w, rej, lc, lr in zip(RW, RL, LC, LR)]),
    "fdpo": ({}, [-ls(b * h) for h in H]),  # reverse KL by default: DPO
    "fdpo-forward": (
        {"divergence": "forward_kl"},
        [-ls(b * (f_score(w, "forward_kl") - f_score(rej, "forward_kl"))) for w, rej in zip(RW, RL)],
    ),
    "fdpo-js": (
        {"divergence": "js_divergence", "beta": 0.5},
        [-ls(0.5 * (f_score(w, "js_divergence") - f_score(rej, "js_divergence"))) for w, rej in zip(RW, RL)],
    ),
    "fdpo-alpha": (
        {"divergence": "alpha_divergence", "alpha": 0.3},
        [-ls(b * (f_score(w, "alpha", 0.3) - f_score(rej, "alpha", 0.3))) for w, rej in zip(RW, RL)],
    ),
    "fdpo-alpha0": ({"divergence": "alpha_divergence", "alpha": 0.0}, [-ls(b * h) for h in H]),  # the reverse-KL limit
    "fdpo-alpha1": (
        {"divergence": "alpha_divergence", "alpha": 1.0},  # = forward KL
        [-ls(b * (f_score(w, "forward_kl") - f_score(rej, "forward_kl"))) for w, rej in zip(RW, RL)],
    ),
    "ld-dpo": ({}, [-ls(b * h) for h in ld_h(0.5)]),
    "ld-dpo-0": ({"ld_alpha": 0.0, "beta": 0.3}, [-ls(0.3 * h) for h in ld_h(0.0)]),
    "ld-dpo-1": ({"ld_alpha": 1.0}, [-ls(b * h) for h in H]),  # alpha = 1: DPO
    "wpo": ({}, [wpo_weight(i) * -ls(b * h) for i, h in enumerate(H)]),
}
ALIASES = {
    "dpo-smoothed": "dpo",
    "ipo-summed-param": "ipo",
    "dpop-lam2": "dpop",
    "cal-dpo-half": "cal-dpo",
    "fdpo-forward": "fdpo",
    "fdpo-js": "fdpo",
    "fdpo-alpha": "fdpo",
    "fdpo-alpha0": "fdpo",
    "fdpo-alpha1": "fdpo",
    "ld-dpo-0": "ld-dpo",
    "ld-dpo-1": "ld-dpo",
}
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


GRAD_PARAMS = {
    "hinge": {"beta": 0.5},
    "fdpo-forward": {"divergence": "forward_kl"},
    "fdpo-js": {"divergence": "js_divergence"},
    "fdpo-alpha": {"divergence": "alpha_divergence", "alpha": 0.3},
}


# ld-dpo builds its log-probs from the per-token tensors: its gradient is checked in test_gradcheck_ld_dpo_tokens
@pytest.mark.parametrize(
    "name", [n for n in FUNCTIONAL if n not in ("gate-dpo", "ld-dpo")] + ["fdpo-forward", "fdpo-js", "fdpo-alpha"]
)
def test_gradcheck_policy_logps(name):
    params = GRAD_PARAMS.get(name, {})
    name = ALIASES.get(name, name)
    fn = get_loss(name).fn

    def f(pc, pr):
        o = make()
        o = o.replace(policy_chosen_logps=pc, policy_rejected_logps=pr)
        losses = fn(o, **params).losses
        return losses.mean() if name == "aot-unpaired" else losses  # only its mean is defined pair by pair

    pc = torch.tensor(PC, dtype=torch.float64, requires_grad=True)
    pr = torch.tensor(PR, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (pc, pr), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("ld_alpha", [0.0, 0.3, 1.0])
def test_gradcheck_ld_dpo_tokens(ld_alpha):
    fn = get_loss("ld-dpo").fn

    def f(ct, rt):
        return fn(
            make().replace(policy_chosen_token_logps=ct, policy_rejected_token_logps=rt), ld_alpha=ld_alpha
        ).losses

    ct, rt = padded(TC, grad=True)[0], padded(TR, grad=True)[0]
    assert torch.autograd.gradcheck(f, (ct, rt), eps=1e-6, atol=1e-6, rtol=1e-5)
    # by hand: d L / d token = -beta sigma(-beta h_LD) * (1 on the shared part, alpha on the tail, 0 off-mask)
    o = make().replace(policy_chosen_token_logps=ct, policy_rejected_token_logps=rt)
    fn(o, ld_alpha=ld_alpha).losses.sum().backward()
    for i, h in enumerate(ld_h(ld_alpha)):
        m = min(len(TC[i]), len(TR[i]))
        g = -b * sig(-b * h)
        want = [0.0] + [g] * m + [g * ld_alpha] * (len(TC[i]) - m)
        assert ct.grad[i, : len(want)].tolist() == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert ct.grad[i, len(want) :].abs().sum().item() == 0.0


def _step0_value(name, beta=0.1, eps_exo=1e-3):
    ln2 = math.log(2)
    t = 1 / (2 * beta)
    return {
        "dpo": ln2,
        "cdpo": ln2,
        "robust": ln2,
        "hinge": 1.0,
        "ipo": t * t,
        "ipo-sum": t * t,
        "dpop": ln2,
        "cal-dpo": ln2 + 2 * t * t,
        "nca-pair": 2 * ln2,
        "bco-pair": 2 * ln2,
        "apo-zero": 1.0,
        "apo-down": 1.0,
        "sppo-hard": 2 * t * t,
        "exo-pair": -ln2 - 0.5 * math.log(eps_exo * (1 - eps_exo)),
        "discopop": 0.5 * ln2 + 0.5,
        "aot": ln2,
        "aot-unpaired": ln2,
        "gate-dpo": ln2,
        "sigmoid-norm": ln2,
        "fdpo": ln2,
        "ld-dpo": ln2,
        "madpo": None,
        "wpo": None,  # w * ln 2, checked below
    }[name]


REF_BASED = [i.name for i in list_losses() if i.needs_reference]


@pytest.mark.parametrize("name", REF_BASED)
def test_step0_policy_equals_reference(name):
    o = make(rc=PC, rr=PR, trc=TC, trr=TR)
    out = compute_loss(name, o)
    if name == "madpo":
        expected = [madpo_w(m) * math.log(2) for m in RM]
    elif name == "wpo":
        expected = [wpo_weight(i) * math.log(2) for i in range(3)]
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


@pytest.mark.parametrize(
    "divergence,alpha",
    [
        ("forward_kl", 0.5),
        ("js_divergence", 0.5),
        ("alpha_divergence", 0.3),
        ("alpha_divergence", 0.0),
        ("alpha_divergence", 1.0),
    ],
)
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_step0_fdpo_every_divergence(divergence, alpha, beta):
    out = compute_loss("fdpo", make(rc=PC, rr=PR), beta=beta, divergence=divergence, alpha=alpha)
    assert out.losses.tolist() == pytest.approx([math.log(2)] * 3, rel=1e-12)
    assert torch.equal(out.chosen_rewards, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("ld_alpha", [0.0, 0.3, 1.0])
def test_step0_ld_dpo_every_alpha_and_shared_sums(ld_alpha):
    o = make(rc=PC, rr=PR, trc=TC, trr=TR)
    assert compute_loss("ld-dpo", o, ld_alpha=ld_alpha).losses.tolist() == pytest.approx([math.log(2)] * 3, rel=1e-12)

    # the same from the reference's shared-length sums instead of its per-token log-probs
    def shared(rows, others):
        return torch.tensor(
            [sum(r[: min(len(r), len(o))]) for r, o in zip(rows, others)],
            dtype=torch.float64,
        )

    o2 = make(rc=PC, rr=PR, trc=None).replace(
        ref_chosen_shared_logps=shared(TC, TR), ref_rejected_shared_logps=shared(TR, TC)
    )
    assert compute_loss("ld-dpo", o2, ld_alpha=ld_alpha).losses.tolist() == pytest.approx([math.log(2)] * 3, rel=1e-12)


def test_rewards_and_metrics():
    out = compute_loss("dpo", make(grad=True), beta=0.1)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1 * w for w in RW])
    assert out.rejected_rewards.tolist() == pytest.approx([0.1 * rej for rej in RL])
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
