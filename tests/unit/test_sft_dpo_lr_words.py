"""S1's report set-up names each stage's learning-rate schedule from the runs' configs; an unset schedule is the
TrainConfig default, read from the config class (not a copy of it that could drift)."""

import dataclasses
from pathlib import Path

from dpolab import config
from dpolab.config import TrainConfig
from dpolab.studies.runner import RunResult, RunSpec
from dpolab.studies.sft_dpo import _lr_schedules


def _run(task, stage, train):
    spec = RunSpec(run_id=f"{task}-{stage}", config={"train": train}, labels={"task": task, "stage": stage})
    return spec.run_id, RunResult(spec=spec, dir=Path("."), summary={}, metrics=[], skipped=True)


def test_unset_schedule_is_the_config_default(monkeypatch):
    results = dict([_run("paraphrase", "sft", {}), _run("paraphrase", "dpo", {"schedule": "constant"})])
    assert _lr_schedules(results) == (
        "Learning rate over each run's steps: paraphrase SFT decaying linearly to 0; paraphrase DPO constant."
    )

    @dataclasses.dataclass
    class Moved(TrainConfig):
        schedule: str = "cosine"

    monkeypatch.setattr(config, "TrainConfig", Moved)  # the class default moves: the report follows it
    assert "paraphrase SFT decaying along a cosine to 0;" in _lr_schedules(results)


def test_mixed_schedules_are_listed_and_absent_tasks_left_out():
    results = dict([_run("sonnets", "sft", {"schedule": "linear"}), _run("sonnets", "dpo", {"schedule": "constant"})])
    results.update([("x", _run("sonnets", "dpo", {"schedule": "linear"})[1])])
    assert _lr_schedules(results) == (
        "Learning rate over each run's steps: sonnets SFT decaying linearly to 0; "
        "sonnets DPO constant / decaying linearly to 0."
    )
    assert _lr_schedules({}) == ""
