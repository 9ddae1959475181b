"""S4's claims say when their premise is absent: a gate "keeps Δ chosen >= 0" or "shrinks the fall of others" only
means something where DPO itself lowered them (dpolab/studies/squeeze.py, claims and premise_absent)."""

from __future__ import annotations

from dpolab.stats import compare
from dpolab.studies.squeeze import claims

NATS = {"bound": 0.1}


def _v(values, ref, metric, a="Gate-DPO seq", b="0", better=None):
    return compare(dict(enumerate(values)), ref, metric=metric, higher_is_better=better, label_a=a, label_b=b, **NATS)


def _measured(dpo_chosen, dpo_others):
    return {
        "S4.dpo-chosen": _v(dpo_chosen, 0.0, "Δ chosen", a="DPO"),
        "S4.dpo-others": _v(dpo_others, 0.0, "Δ others", a="DPO"),
        "S4.gate-chosen": _v([6.0, 6.1, 6.2], 0.0, "Δ chosen"),
        "S4.gate-others": _v([6.5, 6.6, 6.4], {0: 0.0, 1: 0.1, 2: -0.1}, "Δ others", b="DPO", better=True),
    }


def test_where_dpo_did_not_squeeze_the_gate_claims_say_their_premise_is_absent():
    out = {c.id: c for c in claims(_measured([-0.1, 0.0, -0.05], [0.1, -0.1, 0.05]), "s")}
    assert out["S4.dpo-chosen"].verdict == "inconclusive"
    assert out["S4.gate-chosen"].verdict.startswith("higher; premise absent: DPO did not lower Δ chosen (inconclusive")
    assert out["S4.gate-others"].verdict.startswith("better; premise absent: DPO's Δ others did not fall (")


def test_where_dpo_squeezed_the_gate_claims_are_the_bare_verdict():
    out = {c.id: c for c in claims(_measured([-2.0, -2.5, -1.8], [-3.0, -3.3, -2.9]), "s")}
    assert out["S4.dpo-chosen"].verdict == "lower"
    assert out["S4.gate-chosen"].verdict == "higher" and out["S4.gate-others"].verdict == "better"
