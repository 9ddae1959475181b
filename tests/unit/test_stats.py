"""The verdict helper every study report words its judgements with (dpolab.stats), on synthetic results."""

import math
import re

import pytest

from dpolab.stats import VerdictTable, chance_line, compare, every, fmt_ci, mean_ci, none_of, proportion_ci, t95

CI = re.compile(r"95 % CI ([+-]\d+\.\d+) to ([+-]\d+\.\d+)")


def _v(a, b, hib=True, **kw):
    return compare(
        a,
        b,
        metric=kw.pop("metric", "accuracy"),
        higher_is_better=hib,
        label_a=kw.pop("label_a", "A"),
        label_b=kw.pop("label_b", "B"),
        **kw,
    )


def test_t_quantiles_and_mean_ci():
    assert t95(1) == 12.706 and t95(2) == 4.303 and t95(13) == 2.160
    assert t95(35) == 2.042 and t95(500) == 1.96 and math.isnan(t95(0))  # between keys: the smaller df's (conservative)
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 / 3**0.5, rel=1e-6)
    assert mean_ci([1.0, None, float("nan"), 3.0])[0] == 2.0  # missing values are left out, never 0
    assert fmt_ci([1.0]) == "1.00" and fmt_ci([]) == "-" and fmt_ci([None, None]) == "-"


def test_clear_win():
    v = _v({0: 0.80, 1: 0.82, 2: 0.81}, {0: 0.50, 1: 0.51, 2: 0.52})
    assert v.n == 3 and v.mean == pytest.approx(0.30) and v.low > 0
    assert v.word == "better" and v.significant
    s = v.sentence()
    assert s.startswith("A: accuracy higher than B (better), +0.30 (95 % CI +0.")
    assert "3 seeds)" in s
    lo, hi = map(float, CI.search(s).groups())
    assert 0 < lo < 0.30 < hi


def test_clear_loss_and_lower_is_better():
    v = _v({0: 2.0, 1: 2.1, 2: 2.05}, {0: 1.0, 1: 1.05, 2: 1.0}, hib=False, metric="NLL")
    assert v.word == "worse" and v.mean > 0 and v.low > 0
    assert "A: NLL higher than B (worse), +1.03" in v.sentence()
    v2 = _v({0: 1.0, 1: 1.0, 2: 1.1}, {0: 2.0, 1: 2.1, 2: 2.0}, hib=False, metric="NLL")
    assert v2.word == "better" and "lower than B (better)" in v2.sentence()


def test_interval_across_zero_is_inconclusive():
    v = _v({0: -0.30, 1: 0.05, 2: -0.05}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert v.low < 0 < v.high and v.word == "inconclusive" and not v.significant
    s = v.sentence()
    assert s.startswith("A: accuracy against B inconclusive, -0.10 (95 % CI -")
    lo, hi = map(float, CI.search(s).groups())
    assert lo <= 0 <= hi
    # the S4 case of the issue: -0.10 ± 0.23 is not "still falls"
    s4 = compare(
        {0: -0.35, 1: 0.0, 2: 0.05}, 0.0, metric="Δ chosen", higher_is_better=None, label_a="gated Cal-DPO", label_b="0"
    )
    assert s4.word == "inconclusive" and "inconclusive" in s4.sentence() and "lower" not in s4.sentence()


def test_missing_seed_is_reported_never_zero():
    v = _v({0: 0.80, 1: None, 2: 0.81, 3: 0.79}, {0: 0.50, 1: 0.52, 2: 0.51})
    assert v.seeds == (0, 2) and v.n == 2  # seed 1: A missing; seed 3: B missing
    assert v.mean == pytest.approx((0.30 + 0.30) / 2)
    assert v.missing == (("A", (1,)), ("B", (3,)))
    assert "missing: A seed 1; B seed 3" in v.sentence()
    nan = _v({0: float("nan"), 1: 1.0, 2: 1.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert nan.seeds == (1, 2) and nan.missing == (("A", (0,)),)
    none = _v({0: None}, {0: 1.0})
    assert none.word == "no data" and "no data" in none.sentence() and "missing: A seed 0" in none.sentence()
    assert none.difference() == "-" and none.interval() == "-"


def test_negative_gains_and_every():
    sft = 0.131
    gains = {
        "DPO": {0: 0.30, 1: 0.35, 2: 0.32},
        "IPO": {0: 0.05, 1: 0.06, 2: 0.055},  # IPO falls below the SFT model
        "MADPO": {0: 0.05, 1: 0.30, 2: 0.20},
    }
    vs = [
        compare(v, sft, metric="oracle reward", higher_is_better=True, label_a=m, label_b="the SFT model")
        for m, v in gains.items()
    ]
    assert [v.word for v in vs] == ["better", "worse", "inconclusive"]
    assert vs[1].mean < 0 and "lower than the SFT model (worse)" in vs[1].sentence()
    s = every(vs, "raised the oracle reward over the SFT model", subject="method")
    assert not s.startswith("Every")
    assert s.startswith(
        "Not every method raised the oracle reward over the SFT model: 1 of 3 did (paired 95 % interval"
    )
    assert "1 went the other way (IPO)" in s and "1 is inconclusive (MADPO)" in s
    assert every(vs[:1], "raised it", subject="method").startswith("Every method raised it: all 1 paired")
    assert every([], "raised it", subject="method").startswith("No method was measured")
    with pytest.raises(ValueError):
        every(vs, "x", expect="inconclusive")


def test_one_seed_gives_no_interval():
    v = _v({0: 0.9}, {0: 0.1})
    assert v.n == 1 and v.word == "inconclusive (one seed)" and not v.significant and not v.has_interval
    s = v.sentence()
    assert "inconclusive (one seed)" in s and "95 % CI" not in s and "+0.80" in s
    assert every([v], "won", subject="method").startswith("Not every method won: 0 of 1 did")


def test_neutral_direction_and_constant():
    v = compare({0: -1.0, 1: -1.2, 2: -0.9}, 0, metric="Δ chosen", higher_is_better=None, label_a="DPO", label_b="0")
    assert v.word == "lower" and v.sentence().startswith("DPO: Δ chosen lower than 0, -1.03 (95 % CI")
    with pytest.raises(ValueError):
        compare({0: 1.0}, float("nan"), metric="m", higher_is_better=True, label_a="a", label_b="b")


def test_significant_bounds_never_print_as_zero():
    v = _v({0: 0.0101, 1: 0.0102, 2: 0.0103}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert v.significant
    lo, hi = map(float, CI.search(v.sentence()).groups())
    assert lo > 0 and hi > 0


def test_verdict_table_counts_comparisons():
    t = VerdictTable(("params", "metric"))
    t.add(_v({0: 1.0, 1: 1.1, 2: 1.05}, {0: 0.0, 1: 0.1, 2: 0.0}), "full", "accuracy")
    t.add(_v({0: 1.0, 1: -1.0, 2: 0.1}, {0: 0.0, 1: 0.0, 2: 0.0}), "lora-4", "accuracy")
    t.add(_v({0: 1.0}, {0: 0.0}), "lora-8", "accuracy")
    md = t.markdown()
    assert md.splitlines()[0] == "| params | metric | difference | 95 % CI | seeds | verdict |"
    assert "| full | accuracy | +1.02 |" in md and "| better |" in md and "| inconclusive (one seed) |" in md
    assert t.counts()["better"] == 1 and t.counts()["inconclusive"] == 1 and t.n_tests() == 2
    line = t.chance_line()
    assert line.startswith("2 paired comparisons; at 95 % each, about 0.1 would look significant by chance")
    assert "1 does." in line and "1 more has no interval" in line
    assert t.lines()[0] == md and VerdictTable().lines() == []
    assert chance_line(20, 3).startswith("20 paired comparisons; at 95 % each, about 1.0 would")
    with pytest.raises(ValueError):
        t.add(_v({0: 1.0}, {0: 0.0}), "only one cell")
    t2 = VerdictTable()
    t2.add(_v({0: 1.0, 1: 2.0, 2: None}, {0: 0.0, 1: 0.0, 2: 0.0}))
    assert "| missing |" in t2.markdown() and "A seed 2" in t2.markdown()
    assert "| A - B | accuracy |" in t2.markdown()


def test_proportion_ci():
    p, lo, hi = proportion_ci(32, 64)
    assert p == 0.5 and lo < 0.5 < hi and hi - lo == pytest.approx(0.24, abs=0.01)
    p, lo, hi = proportion_ci(60, 64)
    assert lo > 0.5
    assert all(math.isnan(x) for x in proportion_ci(0, 0))


def test_none_of_never_says_more_than_the_intervals():
    fell = compare(
        {0: -1.0, 1: -1.1, 2: -0.9}, 0.0, metric="Δ chosen", higher_is_better=None, label_a="DPO", label_b="0"
    )
    flat = compare(
        {0: -0.3, 1: 0.2, 2: 0.0}, 0.0, metric="Δ chosen", higher_is_better=None, label_a="DPOP", label_b="0"
    )
    rose = compare({0: 1.0, 1: 1.1, 2: 0.9}, 0.0, metric="Δ chosen", higher_is_better=None, label_a="Cal", label_b="0")
    s = none_of([flat, rose], "lowered Δ chosen", subject="method", expect="lower")
    assert s == (
        "No method lowered Δ chosen (none of 2 paired 95 % intervals shows it): "
        "1 went the other way, 1 is inconclusive."
    )
    s = none_of([fell, flat, rose], "lowered Δ chosen", subject="method", expect="lower")
    assert s.startswith("1 of 3 methods lowered Δ chosen (paired 95 % interval excluding 0: DPO); 1 went the other way")
    assert none_of([], "x", subject="method").startswith("No method was measured")


# -- a smallest meaningful difference (issue 34 item 4) -------------------------------------------------------------


def _nats(diffs, bound=0.1, **kw):
    return compare(
        {i: d for i, d in enumerate(diffs)},
        0.0,
        metric="Δ chosen",
        higher_is_better=kw.pop("hib", None),
        label_a="simpo",
        label_b="dpo",
        bound=bound,
        unit="nats",
        **kw,
    )


def test_an_interval_inside_the_bound_is_negligible_even_when_it_excludes_zero():
    v = _nats([-0.000998, -0.00101, -0.00099])  # the tiny compare: significant, and meaningless
    assert v.significant and v.negligible and not v.meaningful and v.word == "negligible"
    s = v.sentence()
    assert s.startswith("simpo: Δ chosen against dpo negligible, -0.00") and "lower" not in s
    assert "smallest meaningful difference ±0.1 nats" in s
    flat = compare({0: 0.0, 1: 0.0}, 0.0, metric="m", higher_is_better=True, label_a="a", label_b="b")
    assert flat.word == "inconclusive"  # no bound stated: no word about size
    inside0 = _nats([0.01, -0.02, 0.005])  # contains 0, inside the bound: negligible, not inconclusive
    assert inside0.word == "negligible" and not inside0.significant


def test_a_direction_only_beyond_the_bound_and_maybe_negligible_in_between():
    assert _nats([-1.0, -1.1, -0.9]).word == "lower" and _nats([-1.0, -1.1, -0.9]).meaningful
    straddle = _nats([-0.12, -0.13, -0.11])  # CI about -0.145 to -0.095: reaches inside ±0.1
    below = _nats([-0.03, -0.04, -0.02], bound=0.05)  # excludes 0, |mean| < bound, not inside ±bound
    for v in (straddle, below):
        assert v.significant and not v.negligible and not v.meaningful
        assert v.word == "lower, maybe negligible"
        assert " lower than dpo (maybe negligible), -0." in v.sentence()
        lo, hi = map(float, CI.search(v.sentence()).groups())  # printed with the digits that show where each end lies
        assert lo < -v.bound < hi < 0
    judged = _nats([-0.12, -0.13, -0.11], hib=True)
    assert judged.word == "worse, maybe negligible" and "lower than dpo (worse, maybe negligible)" in judged.sentence()
    wide = _nats([-0.5, 0.4, 0.05])
    assert wide.word == "inconclusive" and not wide.negligible
    assert _nats([0.3]).word == "inconclusive (one seed)" and "±0.1 nats" in _nats([0.3]).sentence()
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(ValueError):
            _nats([1.0, 2.0], bound=bad)


def test_the_table_states_the_bound_and_counts_negligible_ones():
    t = VerdictTable(("method", "metric"))
    t.add(_nats([-0.000998, -0.00101, -0.00099]), "simpo", "Δ chosen")
    t.add(_nats([-1.0, -1.1, -0.9]), "ipo", "Δ chosen")
    md = t.markdown()
    head = "| method | metric | difference | 95 % CI | seeds | verdict | smallest meaningful |"
    assert md.splitlines()[0] == head
    assert "| negligible | ±0.1 nats |" in md and "| lower | ±0.1 nats |" in md
    assert t.counts()["negligible"] == 1 and t.counts()["lower"] == 1
    assert "1 of 2 lie wholly beyond it and 1 wholly inside it (negligible)" in t.chance_line()


def test_bounded_quantities_keep_their_intervals_inside_their_range():
    acc = [0.0, 0.9, 0.44]  # t-interval over three seeds: 0.45 ± 1.1, most of it outside [0, 1]
    assert "±" in fmt_ci(acc)
    text = fmt_ci(acc, limits=(0.0, 1.0))
    assert text == "0.45 (0.00 to 1.00)"
    m, h = mean_ci([0.1, 0.12, 0.3])
    assert fmt_ci([0.1, 0.12, 0.3], limits=(0.0, 1.0)) == f"{m:.2f} ({max(0.0, m - h):.2f} to {m + h:.2f})"
    v = compare(
        {0: 0.9, 1: 0.1, 2: 0.5},
        {0: 0.0, 1: 0.0, 2: 0.0},
        metric="acc",
        higher_is_better=True,
        label_a="a",
        label_b="b",
        limits=(-1.0, 1.0),
    )
    assert v.high == 1.0 and v.low == pytest.approx(v.mean - v.half_width) and v.interval().endswith("to +1.00")
    with pytest.raises(ValueError):
        compare({0: 0.5}, 0.0, metric="acc", higher_is_better=True, label_a="a", label_b="b", limits=(1.0, -1.0))


def test_every_and_none_of_name_negligible_and_maybe_negligible_ones():
    vs = [_nats([-1.0, -1.1, -0.9]), _nats([-0.12, -0.13, -0.11]), _nats([-0.001, -0.002, -0.0015])]
    vs = [
        compare(
            {i: d for i, d in enumerate(v.diffs)},
            0.0,
            metric="Δ chosen",
            higher_is_better=None,
            label_a=name,
            label_b="0",
            bound=0.1,
        )
        for v, name in zip(vs, ("dpo", "ipo", "simpo"))
    ]
    s = every(vs, "lowered Δ chosen", subject="method", expect="lower")
    assert s.startswith(
        "Not every method lowered Δ chosen: 1 of 3 did (paired 95 % interval excluding 0 in that "
        "direction and beyond the smallest meaningful difference)"
    )
    assert "1 went that way by an amount that may be negligible (ipo)" in s
    assert "1 is negligible (simpo)" in s
    s = none_of(vs[1:], "lowered Δ chosen", subject="method", expect="lower")
    assert s.startswith("No method lowered Δ chosen by a meaningful amount")
    assert "1 did by an amount that may be negligible (ipo)" in s and "1 is negligible" in s
    s = none_of(vs, "lowered Δ chosen", subject="method", expect="lower")
    assert s.startswith(
        "1 of 3 methods lowered Δ chosen (paired 95 % interval excluding 0 and beyond the smallest "
        "meaningful difference: dpo); 1 did by an amount that may be negligible (ipo)"
    )
