"""dpolab compare with on-policy arms (``online:<method>``, issue 30 item 6): parsing and its one-line errors, the
twin's config, the held-out probes hook against the objective's own probes, and a tiny dpo vs online:dpo report."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from compare_helpers import TINY, tiny_options

from dpolab.cli import main
from dpolab.config import build_config
from dpolab.errors import UserError
from dpolab.studies.compare import (
    CompareOptions,
    base_config,
    methods_of,
    prepare,
    run_compare,
    specs,
)
from dpolab.studies.compare_measures import HeldOutMeasures, HeldOutProbes
from dpolab.studies.compare_online import as_offline_measures, is_online, online_spec
from dpolab.studies.runner import RunResult, RunSpec

JUDGE = "task:arithmetic"


def _opts(tmp_path, **kw) -> CompareOptions:
    return tiny_options(tmp_path / "cmp", **{"methods": ["dpo", "online:dpo"], "judge": JUDGE, **kw})


# -- parsing and errors (no training) -------------------------------------------------------------------------------


def test_online_methods_parse_as_the_offline_loss():
    opts = CompareOptions.from_sources(
        None,
        {"task": "arithmetic", "methods": "dpo,online:dpo,online:dpo:beta=0.2+0.1*sft,online:gate-dpo", "judge": JUDGE},
    )
    methods = methods_of(opts)
    assert list(methods) == ["dpo", "online:dpo", "online:dpo:beta=0.2+0.1*sft", "online:gate-dpo"]
    assert methods["online:gate-dpo"] == [{"name": "gate-dpo", "weight": 1.0}]
    assert methods["online:dpo"] == methods["dpo"] == [{"name": "dpo", "weight": 1.0}]
    assert methods["online:dpo:beta=0.2+0.1*sft"] == [
        {"name": "dpo", "weight": 1.0, "params": {"beta": 0.2}},
        {"name": "sft", "weight": 0.1},
    ]
    assert [is_online(m) for m in methods] == [False, True, True, True]


def test_online_method_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"'online:dpo' trains on-policy and needs a judge.*--judge SPEC"):
        methods_of(CompareOptions(task="arithmetic", methods=["dpo", "online:dpo"]))
    with pytest.raises(UserError, match="name the method after online:"):
        methods_of(CompareOptions(task="arithmetic", methods=["online:"], judge=JUDGE))
    with pytest.raises(UserError, match="online:dpx.*unknown loss 'dpx'"):
        methods_of(CompareOptions(task="arithmetic", methods=["online:dpx"], judge=JUDGE))
    with pytest.raises(UserError, match="--judge: unknown task judge 'task:chess'"):
        CompareOptions(task="arithmetic", judge="task:chess").check()
    with pytest.raises(UserError, match="--judge: 'nonsense' names no judge"):
        CompareOptions(task="arithmetic", judge="nonsense").check()
    with pytest.raises(UserError, match="give the judge as --judge"):
        CompareOptions(task="arithmetic", set=["online.judge=task:arithmetic"]).check()


def test_missing_judge_stops_the_cli_before_any_run(capsys, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--task", "arithmetic", "--methods", "dpo,online:dpo", "--out", str(out), "--budget", "2steps"]
    rc = main(args + [f"--set={s}" for s in TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "--judge" in err, err
    assert not out.exists()  # nothing written, nothing trained
    rc = main(args + ["--judge", "no_such_module_xyz:score"] + [f"--set={s}" for s in TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "no_such_module_xyz" in err, err
    assert not out.exists()


# -- the on-policy arm's config --------------------------------------------------------------------------------------


def test_online_arm_is_the_offline_run_in_train_mode_online(tmp_path):
    opts = _opts(tmp_path, set=TINY + ["online.samples_per_prompt=3", "online.max_new_tokens=6"])
    out = Path(opts.out)
    cfg = base_config(opts, out)
    prep = prepare(opts, out, cfg)
    grid = {s.run_id: s for s in specs(opts, out, cfg, prep, methods_of(opts))}
    offline, online = grid["dpo/seed1"], grid["online-dpo/seed1"]
    assert online.labels == {"method": "online:dpo", "seed": 1}
    on, off = build_config(online.config), build_config(offline.config)
    assert (on.train.mode, on.online.judge, on.online.samples_per_prompt) == ("online", JUDGE, 3)
    assert (on.reference.mode, on.eval.probes) == ("auto", False)  # a live reference; probes from the hook
    assert (off.train.mode, off.reference.mode, off.eval.probes) == ("preference", "precomputed", True)
    assert off.online.samples_per_prompt == 2  # --set online.* reaches the on-policy arms alone
    # the same budget: steps, prompts per step = pairs per step, seed, schedule, starting model, data, evaluations
    for section in ("model", "data", "lora", "loss"):
        assert on.to_dict()[section] == off.to_dict()[section], section
    train_on, train_off = on.to_dict()["train"], off.to_dict()["train"]
    assert {k: v for k, v in train_on.items() if k != "mode"} == {k: v for k, v in train_off.items() if k != "mode"}
    assert {k: v for k, v in on.to_dict()["eval"].items() if k != "probes"} == {
        k: v for k, v in off.to_dict()["eval"].items() if k != "probes"
    }
    assert [type(h) for h in online.hooks] == [HeldOutMeasures, HeldOutProbes]
    assert [type(h) for h in offline.hooks] == [HeldOutMeasures]
    assert online.hooks[0].judge == JUDGE and len(online.hooks[1].pairs) == prep.n_eval
    # executors (worker processes, Ray, Slurm) get the arm like any other: a picklable spec
    sent = pickle.loads(pickle.dumps(online))
    assert sent.config == online.config and sent.hooks[1].pairs == online.hooks[1].pairs


def test_online_spec_for_a_study():
    spec = RunSpec("dpo/seed0", {"train": {"mode": "preference"}, "eval": {"probes": True}}, {"method": "DPO"})
    twin = online_spec(spec, JUDGE, label="online DPO")
    assert (twin.run_id, twin.labels["method"]) == ("dpo/seed0-online", "online DPO")
    assert twin.config["train"]["mode"] == "online" and twin.config["online"]["judge"] == JUDGE
    assert twin.config["eval"]["probes"] is False and [type(h) for h in twin.hooks] == [HeldOutProbes]
    assert spec.config["train"]["mode"] == "preference"  # the original is untouched


def test_online_results_read_as_offline_measures():
    row = {"step": 4, "eval/probe/margin": 0.5, "eval/reward_ties": 0.25, "eval/loss": 0.7}
    r = RunResult(RunSpec("x", {}), Path("."), {"mode": "online", "final_eval": dict(row)}, [dict(row)], False)
    fixed = as_offline_measures(r)
    assert fixed.final("probe/margin") == 0.5 and fixed.final("eval/reward_ties") is None
    assert fixed.series("probe/margin") == ([4], [0.5]) and fixed.final("eval/loss") == 0.7
    offline = RunResult(RunSpec("x", {}), Path("."), {"mode": "preference", "final_eval": dict(row)}, [], False)
    assert as_offline_measures(offline) is offline


# -- training ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_probes_hook_equals_the_objectives_probes(tmp_path, lora):
    """The hook's probe metrics of a preference run equal those its objective logs, at every evaluation (the same
    measure for online arms, whose objective has none); under LoRA its start is the adapter-disabled policy."""
    from dpolab.engine import train
    from dpolab.engine.logging import read_metrics
    from dpolab.studies.runner import RunJob

    cfg = build_config(
        {
            "model": {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
            "data": {"task": "arithmetic", "task_args": {"n_train": 24, "n_eval": 8}, "max_length": 96},
            "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "seed": 1},
            "eval": {"every": 1, "probes": True, "probe_examples": 8, "probe_greedy_tokens": 6},
            "output": {"dir": str(tmp_path / "run"), "progress": False},
            "lora": {"enabled": lora},
        }
    )
    data = RunJob.data_of(cfg, 0)
    train(cfg, eval_hooks=[HeldOutProbes(split_seed=0).bind(cfg, data["eval_data"])], log=lambda s: None, **data)
    rows = [r for r in read_metrics(tmp_path / "run") if "probe/margin" in r]
    assert len(rows) == 4 and rows[-1]["probe/margin"] != 0.0  # the start, then every step; training moved it
    for r in rows:
        for key in ("margin", "reward_accuracy", "delta/chosen", "delta/rejected", "delta/others", "delta/greedy"):
            assert r[f"eval/probe/{key}"] == pytest.approx(r[f"probe/{key}"], abs=1e-5), (r["step"], key)


@pytest.mark.slow
def test_tiny_compare_of_dpo_and_online_dpo(tmp_path):
    opts = _opts(tmp_path, seeds=2, set=TINY + ["online.max_new_tokens=6"])
    report = run_compare(opts, log=lambda s: None)
    text = report.read_text()
    assert text.startswith("# Compare: dpo, online:dpo")
    assert "On-policy arms: **online:dpo** (`train.mode=online`)" in text and f"the judge `{JUDGE}`" in text
    assert "--methods dpo,online:dpo" in text and f"--judge {JUDGE}" in text
    # verdict rows of the on-policy arm against dpo, on the probes and on the sampled measures
    for measure in ("reward accuracy", "margin", "Δ chosen", "KL to ref.", "judge score"):
        section = text.split(f"### {measure}\n", 1)[1].split("\n### ", 1)[0]
        assert "| online:dpo |" in section, measure
    assert "the reference log-probs of all" in text.lower() and "shared by the 2 runs" in text  # offline runs only
    out = Path(opts.out)
    import json

    for seed in range(2):
        on = json.loads((out / "runs" / "online-dpo" / f"seed{seed}" / "summary.json").read_text())
        off = json.loads((out / "runs" / "dpo" / f"seed{seed}" / "summary.json").read_text())
        assert (on["mode"], off["mode"], on["steps"], on["train_examples"]) == (
            "online",
            "preference",
            off["steps"],
            off["train_examples"],
        )
        assert "eval/probe/reward_accuracy" in on["final_eval"] and "eval/compare/judge" in on["final_eval"]
        assert "eval/compare/judge" in off["final_eval"]


@pytest.mark.slow
def test_dry_run_times_an_on_policy_arm_too(tmp_path):
    """An on-policy step also samples and judges: the dry run times one of each kind and adds them up per run."""
    from dpolab.studies.compare import dry_run

    lines = []
    opts = _opts(tmp_path, set=TINY + ["online.max_new_tokens=6"], budget="8steps")
    est = dry_run(opts, log=lines.append, probe_steps=2)
    text = "\n".join(lines)
    assert "timed probe (2 real steps of 'dpo' on " in text and "timed probe (2 real steps of 'online:dpo' on " in text
    assert (
        "s per on-policy run)" in text and "online-dpo/seed1: loss" in text and "on-policy (train.mode=online" in text
    )
    by_mode = est["per_run_by_mode_s"]
    assert set(by_mode) == {"preference", "online"} and est["per_run_s"] == by_mode["preference"]
    assert est["total_s"] > opts.seeds * (by_mode["preference"] + by_mode["online"])  # the table comes on top
    assert not Path(opts.out).exists()  # nothing written
