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
