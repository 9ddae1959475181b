"""S2 addendum's margin arms: noise calibrated to a target pairwise accuracy (dpolab/studies/margin_arms.py)."""

import json
import random

import pytest

from dpolab.studies import margin_arms as M


def _margins(n=4000, seed=0, mean=4.0):
    rng = random.Random(seed)
    # the labels' log-odds as a BT model on oracle scores makes them: mostly positive, some reversed, some ties
    return [rng.gauss(mean, 1.8) for _ in range(n)] + [0.0] * (n // 20)


@pytest.mark.parametrize("target", [0.95, 0.80, 0.65])
def test_calibration_hits_the_target_on_held_out_draws(target):
    cal_split, held = _margins(seed=0), _margins(seed=1)
    cal = M.calibrate(cal_split, target)
    assert cal.oracle_accuracy > 0.96  # every target is reachable with these margins
    assert cal.reachable and cal.sigma > 0
    assert abs(cal.calibration_accuracy - target) < 1e-3  # the bisection's expectation on the calibration split
    measured = M.accuracy(M.add_noise(held, cal.sigma, "t"))  # one draw of noise on other pairs
    assert abs(measured - target) < 0.02  # ~ 3 binomial SDs at 4,200 pairs


def test_noise_lowers_accuracy_monotonically_and_unreachable_targets_say_so():
    ms = _margins(seed=2, mean=1.5)
    accs = [M.expected_accuracy(ms, s) for s in (0.0, 0.5, 1.0, 2.0, 4.0, 100.0)]
    assert accs == sorted(accs, reverse=True) and abs(accs[-1] - 0.5) < 0.01
    perfect = [1.0, 2.0, 0.5]
    assert M.calibrate(perfect, 0.8).reachable
    weak = [1.0, -1.0, 0.0, 2.0]  # accuracy 0.625 without noise
    cal = M.calibrate(weak, 0.9)
    assert (cal.reachable, cal.sigma, cal.oracle_accuracy) == (False, 0.0, 0.625)
    with pytest.raises(ValueError, match=r"\(0.5, 1\)"):
        M.calibrate(perfect, 0.4)


def test_margin_files_carry_the_arm_and_record_measured_accuracy(tmp_path):
    rng = random.Random(3)
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "oracle_chosen": rng.uniform(-0.1, 1), "oracle_rejected": 0.0}
        for _ in range(400)
    ]
    src = tmp_path / "high.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dst, dst_eval = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    rec = M.write_margin_files(src, src, dst, dst_eval, M.ORACLE, 0.25)
    out = M.read_jsonl(dst)
    assert [r["rm_margin"] for r in out] == pytest.approx([r["oracle_chosen"] / 0.25 for r in rows])
    assert rec["heldout_accuracy"] == M.accuracy(r["rm_margin"] for r in M.read_jsonl(dst_eval))
    rec = M.write_margin_files(src, src, dst, dst_eval, M.noisy(0.8), 0.25)
    assert rec["target"] == 0.8 and rec["reachable"] and rec["sigma"] > 0
    assert abs(rec["heldout_accuracy"] - 0.8) < 0.08  # 400 pairs, another noise draw than the calibration's
    assert M.sources([0.95, 0.8]) == ["oracle", "oracle+noise@0.95", "oracle+noise@0.80"]
    assert M.slug("oracle+noise@0.80") == "oracle-noise-0.80" and M.target_of("oracle+noise@0.65") == 0.65
