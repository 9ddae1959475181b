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
    assert rec["heldout_oracle_agreement"] == 1.0  # the oracle's own margin agrees with the oracle on every pair
    rec = M.write_margin_files(src, src, dst, dst_eval, M.noisy(0.8), 0.25)
    assert rec["target"] == 0.8 and rec["reachable"] and rec["sigma"] > 0
    assert abs(rec["heldout_accuracy"] - 0.8) < 0.08  # 400 pairs, another noise draw than the calibration's
    assert rec["heldout_oracle_agreement"] < 1.0
    assert M.sources([0.95, 0.8]) == ["oracle", "oracle+noise@0.95", "oracle+noise@0.80"]
    assert M.slug("oracle+noise@0.80") == "oracle-noise-0.80" and M.target_of("oracle+noise@0.65") == 0.65


@pytest.mark.realdata
def test_arms_plan_at_size_cpu(tmp_path, shared_data):
    from dpolab.studies import madpo

    specs = {s.run_id: s for s in madpo.STUDY.plan("cpu", 2, data_dir=str(shared_data), out=tmp_path)}
    for seed in range(2):
        ref = specs[f"high/MADPO/seed{seed}"]
        arms = [s for s in specs.values() if s.labels.get("arm") == "MADPO" and s.labels["seed"] == seed]
        assert [s.labels["margin"] for s in arms] == M.sources((0.75, 0.65, 0.55))
        for s in arms:
            assert "method" not in s.labels and s.labels["tier"] == "high" and s.init_from == "sft"
            name = f"high.{M.slug(s.labels['margin'])}.jsonl"
            assert s.config["data"]["train"] == str(tmp_path / "data" / name)
            assert s.config["data"]["eval"] == str(tmp_path / "data" / "eval" / name)
            same = {k: v for k, v in s.config.items() if k != "data"}
            assert same == {k: v for k, v in ref.config.items() if k != "data"}  # MADPO as trained on the RM's margin
    assert not any(s.labels.get("arm") and s.labels["tier"] != "high" for s in specs.values())


def _run(run_id, labels, value, tmp_path):
    from dpolab.studies.runner import RunResult, RunSpec

    spec = RunSpec(run_id, {"train": {"max_steps": 2, "batch_size": 8, "lr": 1e-4}, "model": {}}, labels)
    final = {"eval/oracle_reward": value}
    return RunResult(spec, tmp_path / "none", {"final_eval": final, "train_examples": 16}, [], False)


def test_report_gain_against_measured_accuracy(tmp_path):
    """The addendum's table, plot, reading and claim from synthetic runs: the accuracy is the measured one, the
    unreachable target is said, and the lowest accuracy where MADPO beats DPO is the one the intervals show."""
    from dpolab.studies import madpo

    data = tmp_path / "data"
    (data / "eval").mkdir(parents=True)
    held = [{"rm_margin": m, "oracle_chosen": 0.5, "oracle_rejected": 0.0} for m in (1, 1, 1, -1)]  # RM: 0.75
    (data / "eval" / "high.scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    records = {
        "high/oracle": {"heldout_accuracy": 0.91, "heldout_pairs": 64},
        "high/oracle+noise@0.95": {
            "target": 0.95,
            "sigma": 0.0,
            "reachable": False,
            "heldout_accuracy": 0.91,
            "heldout_pairs": 64,
        },
        "high/oracle+noise@0.80": {
            "target": 0.8,
            "sigma": 1.2,
            "reachable": True,
            "heldout_accuracy": 0.78,
            "heldout_pairs": 64,
            "heldout_oracle_agreement": 0.8125,
        },
    }
    (data / "margins.json").write_text(json.dumps(records))
    gain = {"oracle": 0.10, "oracle+noise@0.95": 0.10, "oracle+noise@0.80": 0.05}  # MADPO - DPO by source
    results = {}
    for seed in range(3):
        results[f"high/DPO/seed{seed}"] = _run(
            f"high/DPO/seed{seed}", {"tier": "high", "method": "DPO", "seed": seed}, 0.2 + 0.01 * seed, tmp_path
        )
        results[f"high/MADPO/seed{seed}"] = _run(  # the learned RM: no gain
            f"high/MADPO/seed{seed}", {"tier": "high", "method": "MADPO", "seed": seed}, 0.2 + 0.01 * seed, tmp_path
        )
        for src, g in gain.items():
            rid = f"high/MADPO-{M.slug(src)}/seed{seed}"
            labels = {"tier": "high", "arm": "MADPO", "margin": src, "seed": seed}
            results[rid] = _run(rid, labels, 0.2 + 0.01 * seed + g + 0.002 * seed, tmp_path)
    text = "\n".join(madpo.STUDY.report(results, tmp_path, "cpu"))
    section = text.split("### MADPO's gain over DPO against reward-model accuracy")[1].split("### Preference")[0]
    assert "| high | learned reward model | - | - | 0.750 (0.301 to 0.954, 4) | 0.750 |" in section
    assert "| high | oracle+noise@0.80 | 0.80 | 1.200 | 0.780 (" in section and "64) | 0.812 |" in section
    assert "0.95 (unreachable: the oracle's own is lower; no noise)" in section
    assert "The lowest measured margin accuracy at which MADPO beat DPO by more than ±0.02" in section
    assert ": 0.780 (oracle+noise@0.80 (high))" in section
    assert (tmp_path / "madpo_gain_vs_accuracy.png").stat().st_size > 0
    claims = {c["id"]: c for c in json.loads((tmp_path / "claims.json").read_text())["claims"]}
    assert claims["S2.madpo-oracle-margin"]["verdict"] == "better"
    assert abs(claims["S2.madpo-oracle-margin"]["ours"] - 0.102) < 1e-9
    head = claims["S2.madpo-vs-dpo"]  # the learned RM's MADPO equals DPO on every seed
    assert (head["ours"], head["low"], head["high"], head["verdict"]) == (0.0, 0.0, 0.0, "negligible")
