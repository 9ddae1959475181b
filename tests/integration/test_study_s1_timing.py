"""S1 claim 3 from timing runs measured alone: the runner trains a spec marked ``alone`` with nothing else of the grid
beside it (whatever the executor's parallelism), the plan alternates LoRA and full by seed, and the report gives the
paired LoRA / full ratio with the CPU it ran on (issue 31 item 5)."""

from __future__ import annotations

import json

import pytest

from dpolab.studies import runner as R
from dpolab.studies import sft_dpo
from dpolab.studies.executors import Executor
from dpolab.studies.runner import RunSpec, run_grid


class Recording(Executor):
    """Records each ``map`` call's run ids (as a parallel executor would get them); trains nothing."""

    name = "recording"
    threads = 1

    def __init__(self, out):
        self.out, self.calls = out, []

    def describe(self):
        return "recording, 4 processes"

    def map(self, fn, items, *, names=(), log=print):
        self.calls.append([s.run_id for s in items])
        for s in items:
            (self.out / "runs" / s.run_id).mkdir(parents=True, exist_ok=True)
        return [None] * len(items)


def test_alone_runs_train_one_at_a_time_after_their_wave(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "run_is_finished", lambda spec, out: False)
    monkeypatch.setattr(R, "collect", lambda spec, out, skipped: spec.run_id)
    specs = [
        RunSpec("a", {}),
        RunSpec("t/lora/seed0", {}, alone=True),
        RunSpec("b", {}),
        RunSpec("t/full/seed0", {}, alone=True),
        RunSpec("c", {}, init_from="a"),
        RunSpec("t/full/seed1", {}, alone=True, init_from="a"),
    ]
    ex = Recording(tmp_path)
    run_grid(specs, tmp_path, executor=ex, log=lambda m: None)
    # wave 1: the shared runs together, then each timing run on its own in grid order; wave 2 likewise
    assert ex.calls == [["a", "b"], ["t/lora/seed0"], ["t/full/seed0"], ["c"], ["t/full/seed1"]]
    rec = R.read_alone(tmp_path / "runs" / "t/full/seed0")
    assert rec["executor"] == "recording, 4 processes" and rec["cpu"] and rec["cores"] >= 1
    assert R.read_alone(tmp_path / "runs" / "a") is None


@pytest.mark.realdata
def test_timing_runs_alternate_lora_and_full_by_seed(tmp_path, shared_data):
    specs = sft_dpo.STUDY.plan("cpu", 3, data_dir=str(shared_data), out=tmp_path)
    timing = [s for s in specs if s.labels.get("stage") == "timing"]
    assert all(s.alone and not s.hooks and s.init_from is None for s in timing)
    assert [s.alone for s in specs if s.labels.get("stage") != "timing"] == [False] * (len(specs) - len(timing))
    for task in sft_dpo.TASKS:
        order = [(s.labels["seed"], s.labels["param"]) for s in timing if s.labels["task"] == task]
        assert order == [
            (0, "lora-4"),
            (0, "lora-8"),
            (0, "lora-16"),
            (0, "full"),
            (1, "full"),
            (1, "lora-4"),
            (1, "lora-8"),
            (1, "lora-16"),
            (2, "lora-4"),
            (2, "lora-8"),
            (2, "lora-16"),
            (2, "full"),
        ]
    steps = {s.config["train"]["max_steps"] for s in timing}
    assert steps == {sft_dpo.SIZES["cpu"]["timing"]["steps"]}


@pytest.mark.slow
@pytest.mark.realdata
def test_tiny_timing_runs_end_to_end(tmp_path, shared_data):
    """The smoke size's timing runs (2 seeds, 3 steps each) trained through the runner; the report's claim 3 reads
    them, names the CPU and says they ran alone; claims.json carries the ratio."""
    specs = [s for s in sft_dpo.STUDY.plan("cpu", 2, smoke=True, data_dir=str(shared_data), out=tmp_path)]
    timing = [s for s in specs if s.labels.get("stage") == "timing"]
    assert [s.run_id for s in timing] == [
        "timing/paraphrase/lora-4/seed0",
        "timing/paraphrase/full/seed0",
        "timing/paraphrase/full/seed1",
        "timing/paraphrase/lora-4/seed1",
    ]
    results = run_grid(timing, tmp_path, log=lambda m: None)
    text = "\n".join(sft_dpo.STUDY.report(results, tmp_path, "cpu"))
    claim3 = text.split("**Claim 3")[1].split("###")[0]
    assert f"CPU: {R.cpu_model()}" in claim3 and "Measured alone" in claim3
    assert "executor: local, one run after another" in claim3 and "| lora-4 |" in claim3
    claims = json.loads((tmp_path / "claims.json").read_text())["claims"]
    lora_time = next(c for c in claims if c["id"] == "S1.lora-time")
    assert lora_time["seeds"] == 2 and lora_time["low"] < lora_time["ours"] < lora_time["high"]
    assert lora_time["ours"] > 0 and lora_time["unit"].startswith("x ")
