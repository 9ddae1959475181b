"""Every judgement a study report makes matches its numbers: reports built from synthetic run results (no training)
word 'better/worse/higher/lower' only with an interval that excludes 0 and 'inconclusive' only with one that contains
it, list missing values as missing, and say "every X" only when each interval says so. Plus the runs' provenance."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Dict, Optional

from dpolab.studies import dpop, madpo, provenance, sft_dpo, squeeze
from dpolab.studies.runner import RunResult, RunSpec

NUM = r"([+-]\d+\.\d+)"
SIGNIFICANT = re.compile(
    r"(higher|lower) than [^,]*?(?: \((better|worse|maybe negligible|better, maybe negligible|"
    r"worse, maybe negligible)\))?, " + NUM + r" \(95 % CI " + NUM + " to " + NUM
)
INCONCLUSIVE = re.compile(r"inconclusive, " + NUM + r" \(95 % CI " + NUM + " to " + NUM)
NEGLIGIBLE = re.compile(
    r"negligible, " + NUM + r" \(95 % CI " + NUM + " to " + NUM + r", \d+ seeds; smallest "
    r"meaningful difference ±(\d+(?:\.\d+)?(?:e-?\d+)?)"
)
WORD = r"(?:better|worse|higher|lower)(?:, maybe negligible)?|negligible|inconclusive"
ROW = re.compile(
    r"\| " + NUM + r" \| " + NUM + " to " + NUM + r" \| (\d+) \| (" + WORD + r") \|(?: ±([\d.e-]+)[^|]*\|)?"
)
ONE_SEED = re.compile(r"inconclusive \(one seed\), " + NUM + r" \(one seed")
ONE_SEED_ROW = re.compile(r"\| " + NUM + r" \| - \| 1 \| inconclusive \(one seed\) \|")


def assert_verdicts_match_numbers(text: str) -> int:
    """Check every verdict sentence and verdict-table row of a report against its own interval; returns how many."""
    checked = 0
    for direction, judged, mean, lo, hi in SIGNIFICANT.findall(text):
        lo, hi, mean = float(lo), float(hi), float(mean)
        assert lo <= mean <= hi, (mean, lo, hi)
        assert (lo > 0) if direction == "higher" else (hi < 0), f"'{direction}' with 95 % CI {lo} to {hi}"
        checked += 1
    for mean, lo, hi in INCONCLUSIVE.findall(text):
        assert float(lo) <= 0 <= float(hi), f"'inconclusive' with 95 % CI {lo} to {hi}"
        checked += 1
    for mean, lo, hi, bound in NEGLIGIBLE.findall(text):
        assert -float(bound) <= float(lo) <= float(hi) <= float(bound), f"'negligible' with {lo} to {hi}, ±{bound}"
        checked += 1
    for mean, lo, hi, n, word, bound in ROW.findall(text):
        lo, hi, mean = float(lo), float(hi), float(mean)
        assert int(n) >= 2 and lo <= mean <= hi
        b = float(bound) if bound else None
        if word == "negligible":
            assert b is not None and -b <= lo <= hi <= b, f"row 'negligible' with {lo} to {hi}, ±{bound}"
        elif word == "inconclusive":
            assert lo <= 0 <= hi, f"row 'inconclusive' with {lo} to {hi}"
        else:
            assert lo > 0 or hi < 0, f"row '{word}' with {lo} to {hi}"
            if word.startswith(("higher", "lower")):
                assert (mean > 0) == word.startswith("higher")
            if b is not None:  # a plain direction lies wholly beyond the bound; 'maybe negligible' reaches inside
                assert (lo >= b or hi <= -b) == ("maybe" not in word), f"row '{word}' with {lo} to {hi}, ±{b}"
        checked += 1
    checked += len(ONE_SEED.findall(text)) + len(ONE_SEED_ROW.findall(text))
    rows = re.findall(r"\| (?:" + WORD + r"|inconclusive \(one seed\)) \|", text)
    assert len(rows) == len(ROW.findall(text)) + len(ONE_SEED_ROW.findall(text)), "a verdict row escaped the check"
    return checked


def _result(spec: RunSpec, final: Dict[str, Optional[float]], **summary: Any) -> RunResult:
    present = {k: v for k, v in final.items() if v is not None}
    metrics = [
        {"step": 0, "epoch": 0.0, "time/elapsed_s": 0.0, **{k: 0.0 for k in present}},
        {"step": 4, "epoch": 1.0, "time/elapsed_s": 1.0, **present},
    ]
    return RunResult(
        spec, Path("/nonexistent/run"), {"final_eval": present, "wall_clock_s": 1.0, **summary}, metrics, False
    )


# -- S4 -----------------------------------------------------------------------------------------------------------


S4_VALUES = {  # method -> (Δ chosen per seed, Δ others per seed)
    "DPO": ([-2.4, -1.9, -2.8], [-24.0, -25.0, -24.5]),
    "IPO": ([-3.0, -3.2, -3.5], [-28.0, -28.3, -28.1]),
    "Cal-DPO": ([-0.3, -0.2, -0.35], [-4.0, -4.2, -4.1]),
    "Gate-DPO seq": ([-0.6, -0.4, -0.8], [-8.0, -9.0, -8.5]),
    "Gate-DPO q10": ([0.2, 0.3, 0.25], [-7.0, -7.2, -6.9]),
    "gated IPO": ([-0.6, None, -0.7], [-8.5, -8.6, -8.4]),  # seed 1 did not report Δ chosen
    "gated Cal-DPO": ([-0.35, 0.0, 0.05], [-4.7, -4.9, -4.5]),  # -0.10 ± 0.54: not "still falls"
    "ext-SFT -> DPO": ([-0.9, -1.0, -0.8], [-35.0, -36.0, -35.5]),
    "DPOP": ([0.5, 0.6, 0.4], [-20.0, -21.0, -20.5]),
    "on-policy DPO": ([0.1, 0.3, 0.2], [-3.0, -3.5, -3.2]),
}


def test_s4_report_words_follow_the_intervals(tmp_path):
    results = {}
    for spec in squeeze.STUDY.plan("cpu", 3, smoke=True):
        m = spec.labels.get("method")
        if m:
            c, o = S4_VALUES[m]
            seed = spec.labels["seed"]
            final = {"probe/delta/chosen": c[seed], "probe/delta/others": o[seed], "probe/margin": 3.0 + seed}
        else:
            final = {"eval/answer_accuracy": 0.7}
        results[spec.run_id] = _result(spec, final)
    text = "\n".join(squeeze.STUDY.report(results, tmp_path, "cpu"))
    assert assert_verdicts_match_numbers(text) >= 16
    assert "still falls" not in text and "— keeps Δ chosen" not in text
    assert "gated Cal-DPO: Δ chosen against 0 inconclusive, -0.10 (95 % CI" in text
    assert "Gate-DPO seq: Δ chosen lower than 0, -0.60" in text
    assert (
        "gated IPO: Δ chosen lower than 0 (maybe negligible), -0.65 (95 % CI -1.29 to -0.01, 2 seeds; smallest "
        "meaningful difference ±0.1 nats; missing: gated IPO seed 1)"
    ) in text  # the interval reaches inside ±0.1
    assert "| gated IPO | -0.65 ± 0.64 (n=2 of 3) |" in text  # the table says a value is missing, never averages a 0
    assert (
        "1 of 4 gated methods lowered Δ chosen below 0 (paired 95 % interval excluding 0 and beyond the smallest "
        "meaningful difference: Gate-DPO seq); 1 did by an amount that may be negligible (gated IPO)"
    ) in text
    assert "worded against the smallest meaningful change of a log-prob, ±0.1 nats" in text
    assert "Every gated method shrank the fall of Δ others compared with DPO" in text
    assert "36 paired comparisons; at 95 % each, about 1.8 would look significant by chance" in text
    assert "on-policy DPO: Δ chosen higher than DPO (better), +2.57" in text  # the on-policy arm, judged as the others
    assert "the on-policy arm (on-policy DPO) is DPO's twin" in text and "judged by `task:arithmetic`" in text
    offline = {k: v for k, v in results.items() if not k.startswith("on-policy")}
    assert "on-policy arm: missing (not in this grid)" in "\n".join(squeeze.STUDY.report(offline, tmp_path, "cpu"))
    assert "No gated comparison (reward accuracy or margin) lost preference against DPO" in text
    assert "- DPO: Δ others lower than 0, -24.50" in text  # squeezing, method by method
    assert "1 layer, width 32" in text  # the setting as run (the smoke model), not a fixed text


# -- S3 -----------------------------------------------------------------------------------------------------------


def _s3_results(chosen: Dict[str, Dict[str, float]], noise: float = 0.2, missing=()):
    rng = random.Random(0)
    results = {}
    for spec in dpop.STUDY.plan("cpu", 3, smoke=True, data_dir="/nowhere"):
        m = spec.labels.get("method")
        if m:
            d, seed = spec.labels["data"], spec.labels["seed"]
            c = None if (d, m, seed) in missing else chosen[d][m] + rng.gauss(0, noise)
            final = {"probe/delta/chosen": c, "probe/margin": 1.5 + rng.gauss(0, 0.1)}
        else:
            final = {"eval/answer_accuracy": 0.7}
        results[spec.run_id] = _result(spec, final)
    return results


def test_s3_answers_its_question_and_keeps_missing_values_missing(tmp_path):
    both = {
        "arith-near": {"DPO": -1.5, "DPOP λ=5": -0.1, "DPOP λ=50": 0.1, "DPOP λ=500": 0.06},
        "arith-far": {"DPO": -2.2, "DPOP λ=5": -0.4, "DPOP λ=50": 0.08, "DPOP λ=500": 0.2},
    }
    results = _s3_results(both, missing={("arith-far", "DPOP λ=500", 1)})
    text = "\n".join(dpop.STUDY.report(results, tmp_path, "cpu"))
    assert assert_verdicts_match_numbers(text) >= 17
    assert "**Is DPO's fall of the chosen log-prob specific to low edit-distance pairs?**" in text
    assert (
        "- **arithmetic** (arith-near vs arith-far; paired by training seed): "
        "No: DPO lowered the chosen log-prob on both"
    ) in text
    assert re.search(r"arith-near \(low\): DPO Δ chosen (against|higher than|lower than) arith-far \(high\)", text)
    assert "missing: DPOP λ=500 on arith-far seed 1" in text and "(n=2 of 3)" in text
    assert "a tiny GPT-2 with a character tokenizer" not in text and "1 layer, width 32" in text
    # only the low edit-distance pairs lose chosen likelihood: the report says so, from the intervals
    low_only = {"arith-near": dict(both["arith-near"], DPO=-1.5), "arith-far": dict(both["arith-far"], DPO=0.0)}
    text = "\n".join(dpop.STUDY.report(_s3_results(low_only, noise=0.05), tmp_path, "cpu"))
    assert assert_verdicts_match_numbers(text) >= 17
    assert "Yes, in this measurement: the chosen log-prob fell on the low edit-distance pairs" in text
    # DPO's chosen log-prob does not fall at all: no specificity to claim
    none = {d: dict(v, DPO=0.0) for d, v in both.items()}
    text = "\n".join(dpop.STUDY.report(_s3_results(none, noise=0.05), tmp_path, "cpu"))
    assert "Not shown: DPO's chosen log-prob did not demonstrably fall on the low edit-distance pairs" in text
    assert "the chosen likelihood fell while the margin grew" not in text


# -- S2 -----------------------------------------------------------------------------------------------------------


def _s2_results(means: Dict[str, float], sft: float = 0.131, missing=()):
    rng = random.Random(1)
    results = {}
    sft_spec = RunSpec(
        "sft",
        {"model": madpo.SMOKE["model"], "train": {"max_steps": 4}},
        {"stage": "sft", "oracle_eval": {"n_eval": 8, "eval_samples": 1, "max_new_tokens": 12}},
    )
    results["sft"] = _result(sft_spec, {"eval/oracle_reward": sft}, train_examples=1707)
    for tier in madpo.TIERS:
        results[f"rm-{tier}"] = _result(
            RunSpec(f"rm-{tier}", {}, {"stage": "rm", "tier": tier}),
            {"eval/reward_accuracy": 0.9 if tier == "low" else 0.55},
            eval_examples=64,
        )
    for seed in range(3):
        for tier in madpo.TIERS:
            for m in madpo.METHODS:
                v = None if (tier, m, seed) in missing else means[m] + rng.gauss(0, 0.02)
                spec = RunSpec(
                    f"{tier}/{m}/seed{seed}",
                    {
                        "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-4},
                        "loss": [{"name": "dpo", "params": {"beta": 0.1}}],
                    },
                    {"tier": tier, "method": m, "seed": seed},
                )
                results[spec.run_id] = _result(spec, {"eval/oracle_reward": v}, train_examples=16)
    return results


def test_s2_every_method_raised_only_when_each_interval_says_so(tmp_path):
    results = _s2_results({"DPO": 0.36, "IPO": 0.12, "beta-DPO": 0.30, "MADPO": 0.33}, missing={("low", "MADPO", 2)})
    text = "\n".join(madpo.STUDY.report(results, tmp_path, "cpu"))
    assert assert_verdicts_match_numbers(text) >= 24
    assert "Every method raised the oracle reward" not in text and "Every method on a tier raised" not in text
    assert "Not every method on a tier raised the oracle reward over the SFT model: 9 of 12 did" in text
    assert "IPO (high), IPO (medium), IPO (low)" in text
    assert "missing: MADPO (low) seed 2" in text and "(n=2 of 3)" in text
    assert " > " not in text.split("Methods by mean oracle reward")[1].split("###")[0]  # no order claimed from means
    assert "Above chance (0.5): low. Indistinguishable from chance (0.5): high, medium." in text  # Wilson intervals
    assert "worded against the smallest meaningful difference of the oracle reward, ±0.02" in text
    assert "smallest meaningful difference ±0.02)" in text and "| ±0.02 |" in text
    cells = re.findall(r"\| (-?\d\.\d{3}) \((-?\d\.\d{3}) to (-?\d\.\d{3})\)", text)  # oracle reward, clipped form
    assert cells and all(-1 <= float(lo) <= float(m) <= float(hi) <= 1 for m, lo, hi in cells)
    assert "1 layer, width 32" in text and "1,707 IMDb CAD training reviews" in text
    results = _s2_results({"DPO": 0.36, "IPO": 0.25, "beta-DPO": 0.30, "MADPO": 0.33})
    text = "\n".join(madpo.STUDY.report(results, tmp_path, "cpu"))
    assert assert_verdicts_match_numbers(text) >= 24
    assert (
        "Every method on a tier raised the oracle reward over the SFT model: all 12 paired 95 % intervals exclude 0"
        in text
    )


# -- S1 -----------------------------------------------------------------------------------------------------------


def _s1_results(lora_slower: float):
    rng = random.Random(2)
    results = {}
    model = {"name_or_path": "/nonexistent/pretrained/final"}
    for task in sft_dpo.TASKS:
        for param in ("full", "lora-4"):
            for seed in range(3):
                prefix = f"{task}/{param}/seed{seed}"
                stages = [
                    ("sft-k1", "sft", 1),
                    ("sft-k2", "sft", 2),
                    ("dpo-base", "dpo", 0),
                    ("dpo-k1", "dpo", 1),
                    ("dpo-k2", "dpo", 2),
                ]
                for suffix, stage, k in stages:
                    labels = {"task": task, "param": param, "seed": seed, "stage": stage, "k": k}
                    if task == "paraphrase":
                        final = {"eval/accuracy": 0.6 + rng.gauss(0, 0.02), "eval/macro_f1": 0.5 + rng.gauss(0, 0.02)}
                    else:
                        final = {
                            "eval/chrf": 24 + rng.gauss(0, 1) if (param, seed) != ("lora-4", 1) else None,
                            "eval/nll_per_char": 2.3 + rng.gauss(0, 0.01),
                        }
                    wall = 7.5 + (lora_slower if param != "full" else 0.0) + rng.gauss(0, 0.05)
                    spec = RunSpec(f"{prefix}/{suffix}", {"model": model}, labels)
                    results[spec.run_id] = _result(
                        spec, final, wall_clock_s=wall, train_examples=16, peak_memory_mb=900.0
                    )
    return results


def _s1_timing(results, out: Path, lora_slower: float):
    """Claim 3's timing runs (measured alone: each folder has the runner's alone.json), s/step ~ 0.5 (+ lora_slower)."""
    rng = random.Random(3)
    for task in sft_dpo.TASKS:
        for param in ("full", "lora-4"):
            for seed in range(3):
                spec = RunSpec(
                    f"timing/{task}/{param}/seed{seed}",
                    {"model": {"name_or_path": "/nonexistent"}},
                    {"task": task, "param": param, "seed": seed, "stage": "timing"},
                    alone=True,
                )
                run_dir = out / "runs" / spec.run_id
                run_dir.mkdir(parents=True)
                rec = {"executor": "local, one run after another", "threads": None, "cpu": "Test CPU", "cores": 2}
                (run_dir / "alone.json").write_text(json.dumps(rec))
                per_step = 0.5 * (1 + (lora_slower if param != "full" else 0.0)) + rng.gauss(0, 0.002)
                metrics = [{"step": i, "time/step_s": per_step * (3 if i == 1 else 1)} for i in range(1, 6)]
                results[spec.run_id] = RunResult(spec, run_dir, {"steps": 5, "final_eval": {}}, metrics, False)
    return results


def test_s1_claims_and_wall_clock_from_paired_intervals(tmp_path):
    results = _s1_timing(_s1_results(lora_slower=1.0), tmp_path / "a", lora_slower=0.5)
    text = "\n".join(sft_dpo.STUDY.report(results, tmp_path, "cpu"))
    assert assert_verdicts_match_numbers(text) >= 18
    assert "significantly" not in text and "Mean ratio" not in text
    claim3 = text.split("**Claim 3")[1].split("###")[0]
    assert "| worse |" in claim3 and "No LoRA rank cut the seconds per step below full fine-tuning's" in claim3
    assert "| 1.50" in claim3 and "CPU: Test CPU (2 cores" in claim3  # the ratio LoRA / full, steady state
    assert "missing: " not in claim3 and "lora-4 seed 1" in text  # the missing chrF is listed
    assert "In all: 18 paired comparisons" in text
    results = _s1_timing(_s1_results(lora_slower=-1.0), tmp_path / "b", lora_slower=-0.3)
    text = "\n".join(sft_dpo.STUDY.report(results, tmp_path, "cpu"))
    claim3 = text.split("**Claim 3")[1].split("###")[0]
    assert "1 of 1 LoRA rank cut the seconds per step" in claim3 and "the claim does not hold" in claim3


def test_s1_checks_each_model_against_the_majority_label(tmp_path, monkeypatch):
    """Paraphrase: every (schedule, parameterisation) is compared, seed by seed, with always answering the majority
    label; 'scored above' only where the interval says so, and an unavailable baseline is said, not assumed."""
    monkeypatch.setattr(sft_dpo, "_majority", lambda results: (512, 0.367))  # 63.30 % by always answering "no"
    results = _s1_results(lora_slower=1.0)
    for rid, r in results.items():  # full fine-tuning 70.0 / 70.5 / 71.0 % by seed, LoRA 55 % and up
        if rid.startswith("paraphrase/"):
            r.summary["final_eval"]["eval/accuracy"] = (0.70 if "/full/" in rid else 0.55) + 0.005 * r.spec.labels[
                "seed"
            ]
    text = "\n".join(sft_dpo.STUDY.report(results, tmp_path, "cpu"))
    check = text.split("**Check: the models use the questions**")[1].split("### paraphrase")[0]
    assert assert_verdicts_match_numbers(check) == 8  # 4 schedules x 2 parameterisations
    assert check.count("| better |") == 4 and check.count("| worse |") == 4
    assert "| SFT only (2 ep) | full | +7.20 |" in check and "(majority label, 63.30 %)" in check
    assert "Not every (schedule, parameterisation) scored above the majority label: 4 of 8 did" in check
    for rid, r in results.items():
        if rid.startswith("paraphrase/lora-4/"):
            r.summary["final_eval"]["eval/accuracy"] += 0.15
    check = (
        "\n".join(sft_dpo.STUDY.report(results, tmp_path, "cpu"))
        .split("**Check: the models use")[1]
        .split("### paraphrase")[0]
    )
    assert "Every (schedule, parameterisation) scored above the majority label: all 8 paired" in check
    assert "In all: 16 paired comparisons" in text  # the check is a precondition (and no timing runs here)
    monkeypatch.setattr(sft_dpo, "_majority", lambda results: (_ for _ in ()).throw(FileNotFoundError("quora-dev.csv")))
    text = "\n".join(sft_dpo.STUDY.report(results, tmp_path, "cpu"))
    assert "(majority-class baseline unavailable: quora-dev.csv)" in text
    assert "Not checked: the majority-class baseline could not be computed" in text


# -- provenance ---------------------------------------------------------------------------------------------------


def test_provenance_records_attempts_and_the_report_flags_mixed_commits(tmp_path):
    run = tmp_path / "run"
    first = provenance.begin(run, resume=False)
    assert first["finished"] is False and len(first["attempts"]) == 1
    assert set(first["versions"]) >= {"python", "torch", "transformers", "peft", "accelerate", "dpolab"}
    assert first["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", first["commit"])
    rec = provenance.read(run)
    rec["attempts"][0]["commit"] = "a" * 40  # as if an earlier commit had started it
    (run / provenance.FILE).write_text(json.dumps(rec))
    provenance.begin(run, resume=True)
    done = provenance.finish(run)
    assert done["finished"] is True and len(done["attempts"]) == 2 and "finished_at" in done
    assert done["commit"] == done["attempts"][-1]["commit"]  # the code the process loaded, not the checkout at the end
    assert provenance.begin(run, resume=False)["attempts"][-1]["resumed"] is False  # a fresh run drops old attempts
    assert len(provenance.read(run)["attempts"]) == 1
    rec = provenance.read(run)
    rec["attempts"][0]["commit"] = rec["commit"] = "c" * 40  # started under commit c; the checkout moved on meanwhile
    (run / provenance.FILE).write_text(json.dumps(rec))
    assert provenance.finish(run)["commit"] == "c" * 40

    def res(rid, rec):
        return RunResult(RunSpec(rid, {}), run, {}, [], False, provenance=rec)

    v = {"python": "3.11", "torch": "2.0", "transformers": "5.0", "peft": "0.1", "accelerate": "1.0", "dpolab": "0.1.0"}
    one = {"commit": "b" * 40, "dirty": False, "versions": v, "attempts": [{"commit": "b" * 40}]}
    text = "\n".join(provenance.section({"x": res("x", one), "y": res("y", one)}))
    assert f"`{'b' * 12}` (2 runs)" in text and "different dpolab commits" not in text
    assert "Versions of every run: python 3.11, torch 2.0, transformers 5.0, peft 0.1, accelerate 1.0" in text
    other = dict(one, commit="c" * 40, attempts=[{"commit": "c" * 40}], versions=dict(v, torch="2.1"))
    text = "\n".join(provenance.section({"x": res("x", one), "y": res("y", other), "z": res("z", None)}))
    assert "**These runs came from 2 different dpolab commits**" in text
    assert "**The runs used 2 different sets of versions**" in text
    assert "1 of 3 runs have no provenance record" in text
    assert "This report was written by dpolab commit" in text


def test_provenance_says_whether_the_package_differs_between_commits(tmp_path):
    import subprocess

    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    (tmp_path / "pkg").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "pkg" / "train.py").write_text("x = 1\n")
    (tmp_path / "docs" / "notes.md").write_text("a\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    c1 = git("rev-parse", "HEAD")
    (tmp_path / "docs" / "notes.md").write_text("b\n")
    git("commit", "-qam", "docs only")
    c2 = git("rev-parse", "HEAD")
    (tmp_path / "pkg" / "train.py").write_text("x = 2\n")
    git("commit", "-qam", "code")
    c3 = git("rev-parse", "HEAD")
    assert provenance.package_diff([c1, c2], pkg=tmp_path / "pkg") == {}
    assert provenance.package_diff([c1, c2, c3], pkg=tmp_path / "pkg") == {"pkg/train.py": 2}  # one line out, one in
    assert provenance.package_diff([c1, "f" * 40], pkg=tmp_path / "pkg") is None  # a commit git does not have
    assert provenance.package_diff([c1, c2], pkg=tmp_path / "elsewhere") is None  # not a checkout


def test_provenance_section_reports_an_identical_package_or_the_files_that_differ(tmp_path, monkeypatch):
    def res(rid, commit):
        rec = {"commit": commit, "dirty": False, "versions": {"python": "3.11"}, "attempts": [{"commit": commit}]}
        return RunResult(RunSpec(rid, {}), tmp_path, {}, [], False, provenance=rec)

    runs = {"x": res("x", "a" * 40), "y": res("y", "b" * 40)}
    monkeypatch.setattr(provenance, "package_diff", lambda commits, pkg=None: {})
    text = "\n".join(provenance.section(runs))
    assert "**These runs came from 2 different dpolab commits**" in text and "training code was identical" in text
    runs["y"].provenance["dirty"] = True  # uncommitted changes: the same commits no longer pin the code
    text = "\n".join(provenance.section(runs))
    assert "identical" not in text and "uncommitted changes" in text
    runs["y"].provenance["dirty"] = False
    monkeypatch.setattr(provenance, "package_diff", lambda commits, pkg=None: {"dpolab/losses/dpo.py": 7})
    text = "\n".join(provenance.section(runs))
    assert "may not be comparable" in text and "`dpolab/losses/dpo.py` (7)" in text and "identical" not in text
    assert "`git diff aaaaaaaaaaaa <commit> -- dpolab/losses/dpo.py`" in text
    monkeypatch.setattr(provenance, "package_diff", lambda commits, pkg=None: None)
    text = "\n".join(provenance.section(runs))
    assert "may not be comparable." in text and "identical" not in text


def test_provenance_records_the_code_the_process_loaded_not_a_later_checkout(tmp_path, monkeypatch):
    # a long study process (or a pool worker) keeps running the code it imported: a commit made meanwhile must not
    # be recorded as the code of its later runs
    states = iter([{"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": False}])
    monkeypatch.setattr(provenance, "code_state", lambda: next(states))
    monkeypatch.setattr(provenance, "_LOADED", {})
    first = provenance.begin(tmp_path / "r1", resume=False)
    later = provenance.begin(tmp_path / "r2", resume=False)  # the checkout has moved to b by now
    assert first["commit"] == later["commit"] == "a" * 40
    monkeypatch.setattr(provenance.os, "getpid", lambda: -1)  # another process reads the checkout for itself
    assert provenance.begin(tmp_path / "r3", resume=False)["commit"] == "b" * 40


def test_s4_report_without_sweep_runs_says_so_instead_of_an_empty_table(tmp_path):
    results = {}
    for spec in squeeze.STUDY.plan("cpu", 3, smoke=True):
        m = spec.labels.get("method")
        if "alpha" in spec.labels or (m and m not in S4_VALUES):
            continue  # a size that cuts the gate sweep (small) has no sweep runs
        final = (
            {
                "probe/delta/chosen": S4_VALUES[m][0][spec.labels["seed"]] or 0.0,
                "probe/delta/others": -1.0,
                "probe/margin": 1.0,
            }
            if m
            else {"eval/answer_accuracy": 0.7}
        )
        results[spec.run_id] = _result(spec, final)
    text = "\n".join(squeeze.STUDY.report(results, tmp_path, "cpu"))
    assert "No sweep run was in this grid" in text
    assert "| alpha | tau |" not in text


def test_s3_a_change_that_may_be_negligible_is_worded_so():
    from dpolab.stats import compare

    kw = dict(higher_is_better=None, label_b="0", bound=0.1, unit="nats")
    small_fall = compare({0: -0.12, 1: -0.13, 2: -0.11}, 0.0, metric="Δ chosen", label_a="DPO on x", **kw)
    flat_margin = compare({0: 0.001, 1: 0.002, 2: 0.0015}, 0.0, metric="margin", label_a="DPO on x", **kw)
    s = dpop._dpo_sentence("x", "low", small_fall, flat_margin)
    assert "DPO lowered the chosen log-prob, perhaps negligibly; a growing margin is not shown" in s
    assert "margin against 0 negligible" in s


def test_s1_states_each_metrics_smallest_meaningful_difference(tmp_path):
    text = "\n".join(sft_dpo.STUDY.report(_s1_results(lora_slower=1.0), tmp_path, "cpu"))
    assert "1 point of accuracy, macro-F1 or chrF; 0.01 nats of NLL per character; none for timings" in text
    claim1 = text.split("**Claim 1")[1].split("**Claim 2")[0]
    assert "| ±1 |" in claim1 and "| ±0.01 |" in text.split("### sonnets")[1]  # each row's bound, in its scale
    claim3 = text.split("**Claim 3")[1].split("###")[0]
    assert "smallest meaningful" not in claim3  # timings: judged against 0 alone, and the table says nothing else
