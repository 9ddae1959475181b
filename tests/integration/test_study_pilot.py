"""The pilot of S4 at its smoke size, trained for real through the runner: its own run folders and seeds, a pair
slice disjoint from the confirmation's, the choice recorded and reused on resume, and the confirmation planned at
the recorded regime."""

import json

import pytest

from dpolab.studies import squeeze
from dpolab.studies.pilot import CHOICE_FILE, row_key, run_pilot
from dpolab.tasks import rows_for

pytestmark = pytest.mark.slow


def test_squeeze_smoke_pilot_chooses_once_and_the_confirmation_uses_it(tmp_path):
    out = tmp_path / "s4"
    plan = squeeze.STUDY.pilot("cpu", smoke=True, out=out)
    msgs = []
    choice, results = run_pilot(plan, out, confirmation_seeds=range(3), log=msgs.append)
    pilot = plan.pilot
    runs = {rid for rid in results if rid.startswith("pilot/")}
    assert runs and all((out / "runs" / rid / "summary.json").exists() for rid in runs)
    assert {results[rid].spec.labels["seed"] for rid in runs} == set(pilot.seeds) == {100, 101}
    assert choice == json.loads((out / CHOICE_FILE).read_text())
    assert [c["cell"] for c in choice["cells"]] == pilot.cells()[: len(choice["cells"])]
    for c in choice["cells"]:  # each cell's numbers are its runs' final Δ chosen
        for seed, v in c["values"].items():
            run = results[f"pilot/{pilot.cell_id(c['cell'])}/seed{seed}"]
            assert run.final("probe/delta/chosen") == pytest.approx(v)

    # the pilot's pairs (training and held-out) share no pair with the confirmation's
    confirm = squeeze.STUDY.plan("cpu", 3, smoke=True, out=out)
    dpo = next(s for s in confirm if s.labels.get("method") == "DPO")
    c_train, c_eval = rows_for(dpo.config["data"]["task"], dpo.config["data"]["task_args"], "preference", 0)
    used = {row_key(r) for r in c_train + c_eval}
    for name in ("train", "eval"):
        rows = [json.loads(x) for x in (out / "pilot" / "data" / f"{name}.jsonl").read_text().splitlines()]
        assert rows and not {row_key(r) for r in rows} & used
    run_cfg = results[next(iter(runs))].spec.config["data"]
    assert run_cfg["train"].endswith("pilot/data/train.jsonl") and run_cfg["eval"].endswith("pilot/data/eval.jsonl")

    # the confirmation runs at the recorded regime
    regime = choice["regime"]
    assert dpo.config["train"]["lr"] == regime["pref_lr"]
    assert dpo.config["train"]["max_steps"] == max(1, regime["pref_epochs"] * 16 // 8)
    assert not ({s.labels.get("seed") for s in confirm} & set(pilot.seeds))

    # resumed: the recorded choice is read back, nothing trains, and it is not chosen again even if the recorded
    # numbers no longer match the runs (e.g. a run folder that changed since)
    record = json.loads((out / CHOICE_FILE).read_text())
    record["regime"] = pilot.cells()[0]
    (out / CHOICE_FILE).write_text(json.dumps(record))
    msgs = []
    again, results2 = run_pilot(plan, out, confirmation_seeds=range(3), log=msgs.append)
    assert again == record and not any("training" in m for m in msgs)
    assert set(results2) >= runs
    assert squeeze.STUDY.plan("cpu", 3, smoke=True, out=out)[2].config["train"]["lr"] == pilot.cells()[0]["pref_lr"]


def test_s3_report_prints_the_pilot_before_any_verdict_and_writes_its_claims(tmp_path):
    from test_study_verdicts import _s3_results

    from dpolab.studies import dpop

    plan = dpop.STUDY.pilot("cpu", smoke=True, data_dir="/nowhere", out=tmp_path)
    cell = plan.pilot.cells()[1]
    record = {
        "definition": plan.pilot.definition(),
        "cells": [
            {"cell": c, "values": {"100": v, "101": v - 0.1}, "mean": v, "low": v - 0.5, "high": v + 0.5, "n": 2}
            | {"meets": c == cell}
            for c, v in zip(plan.pilot.cells()[:2], (0.2, -2.0))
        ],
        "chosen": cell,
        "regime": cell,
    }
    (tmp_path / "pilot").mkdir()
    (tmp_path / CHOICE_FILE).write_text(json.dumps(record))
    assert all(  # the confirmation is planned at the recorded regime
        s.config["train"]["lr"] == cell["pref_lr"]
        for s in dpop.STUDY.plan("cpu", 3, smoke=True, data_dir="/nowhere", out=tmp_path)
        if "method" in s.labels
    )
    near = {"DPO": -1.5, "DPOP λ=5": -0.1, "DPOP λ=50": 0.1, "DPOP λ=500": 0.06}
    text = "\n".join(dpop.STUDY.report(_s3_results({"arith-near": near, "arith-far": near}), tmp_path, "cpu"))
    assert text.index("### Regime choice (pilot") < text.index("### What the measurement says")
    assert "**Choice: lr = 0.001, epochs = 1.**" in text and "| 0.0001 | 1 | 100: +0.20, 101: +0.10 |" in text
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert [c["id"] for c in claims["claims"]] == ["S3.dpo-chosen-low-ed", "S3.dpop-chosen"]
    assert claims["claims"][0]["verdict"] == "lower" and claims["claims"][0]["seeds"] == 3
    assert claims["claims"][1]["measured"].startswith("DPOP λ=50 on arith-near - DPO")
