"""dpolab compare: the local grid and its report, resuming, the report's verdicts, and bad input refused up front."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from compare_helpers import TINY, final_metrics, tiny_options
from test_study_verdicts import assert_verdicts_match_numbers

from dpolab.cli import main
from dpolab.errors import UserError
from dpolab.studies.compare import CompareOptions, Prepared, methods_of, parse_budget, parse_method, run_compare
from dpolab.studies.compare_report import write_report
from dpolab.studies.runner import RunResult, RunSpec, waves

REPO = Path(__file__).resolve().parents[2]


# -- parsing (no training) ----------------------------------------------------------------------------------------


def test_methods_parameters_and_weighted_lists():
    assert parse_method("dpop:lam=50") == ("dpop:lam=50", [{"name": "dpop", "weight": 1.0, "params": {"lam": 50}}])
    assert parse_method("dpo+0.1*sft")[1] == [{"name": "dpo", "weight": 1.0}, {"name": "sft", "weight": 0.1}]
    assert parse_method("dpo:beta=0.2:gate={mode: q10, alpha: 30}")[1] == [
        {"name": "dpo", "weight": 1.0, "params": {"beta": 0.2}, "gate": {"mode": "q10", "alpha": 30}}
    ]
    opts = CompareOptions.from_sources(
        None, {"task": "arithmetic", "methods": "dpo,dpo:gate={mode: seq, tau: 0.1},simpo"}
    )
    assert list(methods_of(opts)) == ["dpo", "dpo:gate={mode: seq, tau: 0.1}", "simpo"]
    assert parse_budget("200steps") == {"max_steps": 200} and parse_budget("2epochs") == {
        "epochs": 2.0,
        "max_steps": None,
    }
    with pytest.raises(UserError, match="--budget"):
        parse_budget("2 fortnights")


def test_config_file_form_and_flags_win(tmp_path):
    cfg = tmp_path / "compare.yaml"
    cfg.write_text(yaml.safe_dump({"task": "arithmetic", "methods": ["dpo", "ipo"], "seeds": 4, "eval-fraction": 0.2}))
    opts = CompareOptions.from_sources(str(cfg), {"seeds": 2, "baseline": None})
    assert (opts.methods, opts.seeds, opts.eval_fraction) == (["dpo", "ipo"], 2, 0.2)
    cfg.write_text(yaml.safe_dump({"task": "arithmetic", "metods": ["dpo"]}))
    with pytest.raises(UserError, match="unknown key 'metods'"):
        CompareOptions.from_sources(str(cfg), {})


def test_waves_follow_init_from():
    s = [RunSpec("b", {}, init_from="a"), RunSpec("a", {}), RunSpec("c", {}, init_from="b"), RunSpec("d", {})]
    assert [[x.run_id for x in w] for w in waves(s)] == [["a", "d"], ["b"], ["c"]]


# -- bad input: one line, before any training ---------------------------------------------------------------------


def _cli_error(capsys, tmp_path, *args) -> str:
    out = tmp_path / "cmp"
    rc = main(["compare", "--out", str(out), "--budget", "2steps", "--seeds", "1", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    assert not (out / "runs").exists()  # nothing trained
    return err


def test_bad_input_is_one_line_before_training(capsys, tmp_path, monkeypatch):
    sets = [f"--set={s}" for s in TINY]
    assert "unknown loss 'dpx'" in _cli_error(capsys, tmp_path, "--task", "arithmetic", "--methods", "dpo,dpx", *sets)
    assert "'dpop' has no parameter 'lamda'" in _cli_error(
        capsys, tmp_path, "--task", "arithmetic", "--methods", "dpop:lamda=5", *sets
    )
    assert "--baseline 'kto'" in _cli_error(
        capsys, tmp_path, "--task", "arithmetic", "--methods", "dpo", "--baseline", "kto", *sets
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "a", "text": "b"}) + "\n")
    err = _cli_error(capsys, tmp_path, "--data", str(empty), "--methods", "dpo", "--set", "data.on_error=skip")
    assert "empty.jsonl" in err and "no usable" in err
    few = tmp_path / "few.jsonl"
    few.write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i)}) + "\n" for i in range(20))
    )
    assert "only 2 held-out pairs" in _cli_error(
        capsys, tmp_path, "--data", str(few), "--methods", "dpo", "--set", "model.tokenizer=char"
    )
    (tmp_path / "my_oracle.py").write_text(
        "def bad(prompt, response):\n    raise KeyError('no score for this')\n"
        "def nan(prompt, response):\n    return float('nan')\n"
    )
    monkeypatch.chdir(tmp_path)
    err = _cli_error(capsys, tmp_path, "--task", "arithmetic", "--methods", "dpo", "--oracle", "my_oracle:bad", *sets)
    assert "--oracle my_oracle:bad raised KeyError" in err
    assert "not a finite number" in _cli_error(
        capsys, tmp_path, "--task", "arithmetic", "--methods", "dpo", "--oracle", "my_oracle:nan", *sets
    )
    assert "--parallel does not apply to --executor ray" in _cli_error(
        capsys, tmp_path, "--task", "arithmetic", "--executor", "ray", "--parallel", "2", *sets
    )
    assert "is set by the comparison" in _cli_error(capsys, tmp_path, "--task", "arithmetic", "--set", "train.seed=3")


# -- the grid -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_local_grid_report_and_rerun(tmp_path):
    out = tmp_path / "cmp"
    (tmp_path / "oracle_len.py").write_text("def score(prompt, response):\n    return float(len(response))\n")
    msgs = []
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        report = run_compare(tiny_options(out, oracle="oracle_len:score"), log=msgs.append)
    finally:
        os.chdir(cwd)
    text = report.read_text()
    finals = final_metrics(out)
    assert len(finals) == 6
    for rid, f in finals.items():  # every probe and held-out measure, on the held-out pairs
        for key in (
            "probe/reward_accuracy",
            "probe/margin",
            "probe/delta/chosen",
            "probe/delta/rejected",
            "probe/delta/others",
            "probe/delta/greedy",
            "eval/compare/kl",
            "eval/compare/sample_tokens",
            "eval/compare/oracle",
        ):
            assert isinstance(f.get(key), float), (rid, key)
        assert f["eval/compare/oracle"] == pytest.approx(f["eval/compare/sample_tokens"], abs=6.0)
    for name in ("compare_logprobs.png", "compare_measures.png"):
        assert (out / name).stat().st_size > 1000
    assert "## Summary" in text and "| dpop:lam=50 |" in text and "baseline: **dpo**" in text
    assert assert_verdicts_match_numbers(text) >= 20
    ref = json.loads((out / "reference.json").read_text())
    assert ref["computed_now"] and ref["setup_cold_s"] > ref["setup_warm_s"] > 0
    assert len(list((out / "ref_cache").glob("ref-*.pt"))) == 1  # one table for every method and seed
    for rid in finals:  # ... and every run loaded exactly it
        rec = yaml.safe_load((out / "runs" / rid / "config.yaml").read_text())
        assert rec["reference"] == {**rec["reference"], "mode": "precomputed", "cache_dir": str(out / "ref_cache")}
    assert "shared by the 6 runs" in text and "saved 5 ×" in text
    assert "## Provenance" in text and "peak RSS MB" in text
    msgs.clear()
    os.chdir(tmp_path)
    try:
        run_compare(tiny_options(out, oracle="oracle_len:score"), log=msgs.append)
    finally:
        os.chdir(cwd)
    assert sum("finished earlier, skipped" in m for m in msgs) == 6
    assert final_metrics(out) == finals
    # another --budget into the same --out would train the 6 finished runs again over their results: refused
    saved = (out / "compare.yaml").read_text()
    os.chdir(tmp_path)
    try:
        with pytest.raises(
            UserError,
            match=r"--out .* holds 6 finished run\(s\) of this grid trained with other "
            r"settings \(.*train.max_steps: 4 -> 6.*compare.yaml says "
            r"--budget 4steps\)",
        ):
            run_compare(tiny_options(out, oracle="oracle_len:score", budget="6steps"), log=msgs.append)
    finally:
        os.chdir(cwd)
    assert final_metrics(out) == finals and (out / "compare.yaml").read_text() == saved  # nothing written


@pytest.mark.slow
def test_killed_comparison_resumes(tmp_path):
    """SIGKILL in the middle of the second run, then the same command again: the first run is skipped, the second
    resumes from its checkpoint, and every run ends with the full number of steps."""
    out = tmp_path / "cmp"
    args = [
        sys.executable,
        "-m",
        "dpolab.cli",
        "compare",
        "--task",
        "arithmetic",
        "--methods",
        "dpo,ipo",
        "--seeds",
        "1",
        "--budget",
        "12steps",
        "--evals",
        "2",
        "--samples",
        "4",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
        "--cpus",
        "1",
        *[f"--set={s}" for s in TINY],
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = out / "runs" / "ipo" / "seed0" / "checkpoints"
    deadline = time.time() + 1200  # generous: a loaded CI machine is slow, a quiet one takes ~20 s
    while time.time() < deadline and proc.poll() is None and not any(ckpts.glob("step-*")):
        time.sleep(0.05)
    assert proc.poll() is None, "the comparison ended before it could be killed mid-run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "runs" / "dpo" / "seed0" / "summary.json").exists() and not (
        out / "runs" / "ipo" / "seed0" / "summary.json"
    ).exists()
    msgs = []
    opts = CompareOptions.from_sources(
        None,
        {
            "task": "arithmetic",
            "methods": "dpo,ipo",
            "seeds": 1,
            "budget": "12steps",
            "evals": 2,
            "samples": 4,
            "max_new_tokens": 4,
            "out": str(out),
            "cpus": 1,
            "set": list(TINY),
        },
    )
    run_compare(opts, log=msgs.append)
    assert any("dpo/seed0: finished earlier, skipped" in m for m in msgs)
    assert any("ipo/seed0: resuming" in m for m in msgs)
    assert all(
        json.loads((out / "runs" / r / "seed0" / "summary.json").read_text())["steps"] == 12 for r in ("dpo", "ipo")
    )


# -- the report's words follow its numbers ------------------------------------------------------------------------


def _fake_run(tmp_path: Path, method: str, seed: int, final: dict) -> RunResult:
    spec = RunSpec(
        f"{method}/seed{seed}",
        {
            "model": {"name_or_path": "tiny-gpt2"},
            "train": {"max_steps": 4},
            "eval": {"probe_examples": 12},
            "loss": [{"name": method}],
        },
        {"method": method, "seed": seed},
    )
    run_dir = tmp_path / "runs" / method / f"seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(spec.config))
    metrics = [{"step": 0, **{k: 0.0 for k in final}}, {"step": 4, **final}]
    return RunResult(
        spec,
        run_dir,
        {"final_eval": final, "wall_clock_s": 1.0, "peak_memory_mb": 100.0, "reference_mode": "precomputed"},
        metrics,
        False,
    )


def test_report_sentences_match_the_numbers(tmp_path):
    values = {"dpo": [-4.0, -4.3, -3.8], "dpop": [0.3, 0.2, 0.4], "ipo": [-4.1, -3.9, -4.5]}
    acc = {"dpo": [0.6, 0.7, 0.65], "dpop": [0.6, 0.65, 0.7], "ipo": [0.9, 0.85, 0.95]}
    results = {}
    for m in values:
        for seed in range(3):
            r = _fake_run(
                tmp_path,
                m,
                seed,
                {
                    "probe/delta/chosen": values[m][seed],
                    "probe/reward_accuracy": acc[m][seed],
                    "probe/margin": 1.0 + seed,
                    "eval/compare/kl": 0.5 * seed,
                },
            )
            results[r.spec.run_id] = r
    opts = CompareOptions(task="arithmetic", methods=list(values), seeds=3)
    report = write_report(
        results,
        tmp_path,
        opts=opts,
        methods={m: [{"name": m}] for m in values},
        baseline="dpo",
        prep=Prepared(48, 12, 4, 1024, None),
        reference={},
        n_ref_runs=0,
        wall=3.0,
        executor="local",
        command="dpolab compare ...",
    )
    text = report.read_text()
    assert assert_verdicts_match_numbers(text) >= 12
    assert (
        "- dpop: Δ chosen higher than dpo, +4.33 (95 % CI" in text
    )  # DPOP kept the chosen log-prob where DPO lowered it
    assert "- dpo: Δ chosen lower than 0, -4.03 (95 % CI" in text
    assert "- dpop: Δ chosen higher than 0 (maybe negligible), +0.30 (95 % CI" in text  # CI +0.05 to +0.55, ±0.1
    assert "- ipo: reward accuracy higher than dpo (better), +0.25" in text
    assert "- dpop: reward accuracy against dpo inconclusive" in text
    assert "better than dpo on reward accuracy: ipo; worse: none shown" in text
    assert "recommend" not in text.lower()


def test_a_comparison_that_moved_nothing_says_negligible_and_keeps_shares_in_range(tmp_path):
    """Issue 34: a tiny compare that moved nothing (changes of about 0.001 nats) was worded 'simpo: Δ chosen lower
    than dpo, -0.000998', and its reward accuracy shown as '0.44 ± 0.79'."""
    delta = {"dpo": [-0.0010, -0.0012, -0.0011], "simpo": [-0.0020, -0.0022, -0.0021]}
    acc = {"dpo": [0.0, 0.9, 0.44], "simpo": [0.1, 0.8, 0.5]}
    kl = {"dpo": [0.0, 0.0003, 0.0001], "simpo": [0.0, 0.0001, 0.0002]}
    results = {}
    for m in delta:
        for seed in range(3):
            r = _fake_run(
                tmp_path,
                m,
                seed,
                {
                    "probe/delta/chosen": delta[m][seed],
                    "probe/reward_accuracy": acc[m][seed],
                    "eval/compare/kl": kl[m][seed],
                },
            )
            results[r.spec.run_id] = r
    report = write_report(
        results,
        tmp_path,
        opts=CompareOptions(task="arithmetic", methods=list(delta), seeds=3),
        methods={m: [{"name": m}] for m in delta},
        baseline="dpo",
        prep=Prepared(48, 12, 4, 1024, None),
        reference={},
        n_ref_runs=0,
        wall=3.0,
        executor="local",
        command="dpolab compare ...",
    )
    text = report.read_text()
    assert assert_verdicts_match_numbers(text) >= 4
    assert "- simpo: Δ chosen against dpo negligible, -0.001 (95 % CI" in text
    assert "- dpo: Δ chosen against 0 negligible" in text and "lower than" not in text
    assert "smallest meaningful difference ±0.1 nats" in text and "smallest meaningful difference ±0.02" in text
    row = next(line for line in text.splitlines() if line.startswith("| dpo | "))
    assert "| 0.45 (0.00 to 1.00) |" in row and "±" not in row.split("|")[2]  # the share stays inside [0, 1]
    assert "the 95 % t-interval over seeds clipped to [0, 1]" in text
    for cell in re.findall(r"\| (\S+) \((\S+) to (\S+)\) \|", text):  # no clipped interval leaves its range
        assert float(cell[1]) >= 0.0 and float(cell[2]) <= 1.0


# -- the held-out measures ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_kl_estimate_is_zero_at_the_start_and_rm_scores(tmp_path, lora):
    """The policy before training is the reference: every sampled response has log π − log π_ref = 0 exactly (full
    fine-tuning: the starting weights loaded again; LoRA: the adapters switched off); a reward model scores them."""
    import math

    from dpolab.config import build_config
    from dpolab.engine import train
    from dpolab.engine.data_setup import prepare_data
    from dpolab.models.load import load_policy, load_tokenizer
    from dpolab.studies.compare_measures import HeldOutMeasures

    tiny = {"n_layer": 1, "n_embd": 32, "n_head": 2}
    task = {"task": "arithmetic", "max_length": 96, "task_args": {"n_train": 16, "n_eval": 8}}
    rm_dir = tmp_path / "rm"
    train(
        build_config(
            {
                "model": {"name_or_path": "tiny-gpt2", "tiny": tiny},
                "data": task,
                "train": {"mode": "rm", "max_steps": 1, "batch_size": 4},
                "output": {"dir": str(rm_dir), "progress": False},
            }
        ),
        log=lambda s: None,
    )
    cfg = build_config(
        {
            "model": {"name_or_path": "tiny-gpt2", "tiny": tiny},
            "lora": {"enabled": lora},
            "data": task,
            "train": {"seed": 3},
        }
    )
    tok = load_tokenizer(cfg.model)
    _, evals = prepare_data(cfg.data, tok, "preference", 0, log=lambda s: None)
    policy = load_policy(cfg.model, cfg.lora, tok, seed=3)
    hook = HeldOutMeasures(n_prompts=6, max_new_tokens=8, reward_model=str(rm_dir / "final")).bind(cfg, evals)
    out = hook(policy, tok, 0)
    assert out["compare/kl"] == 0.0 and 0 <= out["compare/sample_tokens"] <= 8
    assert math.isfinite(out["compare/rm_reward"])
    assert hook(policy, tok, 0) == out  # the same samples at every evaluation: only the model changes them


def test_kl_estimate_is_never_negative_where_the_plain_log_ratio_is():
    """A policy a little away from its start, 4 samples of 4 tokens: the plain mean of log π − log π_ref of these
    samples is negative (-0.08 nats), which no KL is; the report's estimate (k3) is positive."""
    import torch

    from dpolab.config import build_config
    from dpolab.engine.data_setup import prepare_data
    from dpolab.models.generation import generate_ids
    from dpolab.models.load import load_policy, load_tokenizer
    from dpolab.studies.compare_measures import HeldOutMeasures

    cfg = build_config(
        {
            "model": {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
            "data": {"task": "arithmetic", "max_length": 96, "task_args": {"n_train": 16, "n_eval": 8}},
            "train": {"seed": 3},
        }
    )
    tok = load_tokenizer(cfg.model)
    _, evals = prepare_data(cfg.data, tok, "preference", 0, log=lambda s: None)
    hook = HeldOutMeasures(n_prompts=4, max_new_tokens=4).bind(cfg, evals)
    policy = load_policy(cfg.model, cfg.lora, tok, seed=3)
    assert hook(policy, tok, 0)["compare/kl"] == 0.0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    kl = hook(policy, tok, 0)["compare/kl"]
    samples = generate_ids(
        policy,
        hook.prompts,
        max_new_tokens=4,
        batch_size=16,
        do_sample=True,
        seed=0,
        pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id,
    )
    scored = [s + [tok.eos_token_id] if len(s) < 4 else s for s in samples]
    pol, _ = hook._token_logps(policy, hook.prompts, scored, tok.pad_token_id)
    ref, _ = hook._token_logps(hook._reference(policy, tok)[0], hook.prompts, scored, tok.pad_token_id)
    plain = sum(float((a - b).sum()) for a, b in zip(pol, ref)) / len(pol)
    assert plain < 0 < kl < 0.1


@pytest.mark.slow
def test_dry_run_prints_the_grid_and_an_estimate_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(
        [
            "compare",
            "--task",
            "arithmetic",
            "--methods",
            "dpo,simpo",
            "--seeds",
            "2",
            "--budget",
            "8steps",
            "--out",
            str(out),
            *[f"--set={s}" for s in TINY],
            "--dry-run",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "2 method(s) x 2 seed(s) = 4 runs" in text and "simpo/seed1" in text
    assert "timed probe (3 real steps of 'dpo' on " in text and "estimate (scaled to " in text
    assert "then about" in text and "runs one after another" in text
    assert "; 8 steps per run (8steps)" in text  # --budget sets the steps the estimate and the evaluations use
    assert not out.exists()
