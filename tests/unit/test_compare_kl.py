"""The KL estimate of `dpolab compare` (issue 34 item 4): never negative, and exact in expectation against the closed
form on a small case enumerated in full."""

import itertools
import math

import torch

from dpolab.studies.compare_measures import k3_kl


def test_k3_is_never_negative_and_zero_only_where_the_models_agree():
    g = torch.Generator().manual_seed(0)
    pol, ref = -torch.rand(64, 30, generator=g) * 8, -torch.rand(64, 30, generator=g) * 8
    mask = torch.rand(64, 30, generator=g) > 0.3
    pol, ref = pol * mask, ref * mask  # off-mask log-probs are 0, as the scoring code lays them out
    est = k3_kl(pol, ref, mask)
    assert est.shape == (64,) and bool((est >= 0).all()) and bool((est > 0).all())
    assert bool((pol - ref).sum(-1).lt(0).any())  # the plain log pi - log pi_ref of the same samples goes negative
    assert float(k3_kl(pol, pol, mask).abs().max()) == 0.0  # policy = reference: exactly 0
    tiny = k3_kl(
        torch.tensor([-3.0], dtype=torch.float64),
        torch.tensor([-3.0 + 1e-7], dtype=torch.float64),
        torch.tensor([True]),
    )
    assert float(tiny) >= 0 and math.isclose(float(tiny), 0.5e-14, rel_tol=0.05)  # (1e-7)^2 / 2, no cancellation


def test_k3_mean_under_the_policy_is_the_sequence_kl():
    """Two-token responses over a vocabulary of 3, second-token distributions depending on the first: the expectation
    of the estimate over every sequence, weighted by pi, equals KL(pi || pi_ref) of the sequence distributions."""
    g = torch.Generator().manual_seed(1)
    p1, q1 = (torch.rand(3, generator=g, dtype=torch.float64).softmax(0) for _ in range(2))
    p2, q2 = (torch.rand(3, 3, generator=g, dtype=torch.float64).mul(3).softmax(1) for _ in range(2))
    expected, exact = 0.0, 0.0
    for a, b in itertools.product(range(3), range(3)):
        p, q = float(p1[a] * p2[a, b]), float(q1[a] * q2[a, b])
        pol = torch.tensor([math.log(p1[a]), math.log(p2[a, b])], dtype=torch.float64)
        ref = torch.tensor([math.log(q1[a]), math.log(q2[a, b])], dtype=torch.float64)
        expected += p * float(k3_kl(pol, ref, torch.ones(2, dtype=torch.bool)))
        exact += p * math.log(p / q)
    assert exact > 0 and math.isclose(expected, exact, rel_tol=1e-9)
