"""A study run that starts from another run (``init_from``) is trained again when that run was trained again since:
neither skipped as "finished" nor resumed from its checkpoints, which came from a model that no longer exists."""

from __future__ import annotations

import json
import time

import pytest

from dpolab.studies import provenance
from dpolab.studies.runner import RunSpec, parent_retrained, run_grid, run_is_finished

pytestmark = pytest.mark.slow

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}


def _specs(parent_lr: float):
    base = {
        "model": {"name_or_path": "tiny-gpt2", "tiny": TINY},
        "data": {
            "task": "arithmetic",
            "task_args": {"n_train": 16, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
            "max_length": 64,
        },
        "train": {"batch_size": 8, "max_steps": 2, "schedule": "constant", "seed": 0},
        "eval": {"every": 0, "batch_size": 8},
        "output": {"progress": False, "save_every": 1},
    }
    parent = RunSpec("sft", {**base, "train": {**base["train"], "mode": "sft", "lr": parent_lr}})
    child = RunSpec("dpo", {**base, "train": {**base["train"], "mode": "preference", "lr": 1e-3}}, init_from="sft")
    return [parent, child]


def test_a_run_is_trained_again_when_the_run_it_starts_from_was(tmp_path):
    out = tmp_path / "study"
    logs = []
    run_grid(_specs(1e-3), out, log=logs.append)
    first = provenance.read(out / "runs" / "dpo")["attempts"][0]["started"]
    specs = _specs(1e-3)
    assert run_is_finished(specs[1], out) and not parent_retrained(specs[1], out)

    logs.clear()  # the same grid again: both runs are reused
    run_grid(specs, out, log=logs.append)
    assert sum("finished earlier, skipped" in m for m in logs) == 2, logs

    # the parent's settings change: it trains again, and so must its child, although the child's own config is the same
    logs.clear()
    time.sleep(
        1.1
    )  # the records keep whole seconds: the retrained parent finishes in a later second than the child began
    run_grid(_specs(2e-3), out, log=logs.append)
    assert not any("dpo: finished earlier" in m for m in logs), logs
    assert any("dpo: training again from the start" in m for m in logs), logs
    second = provenance.read(out / "runs" / "dpo")
    assert len(second["attempts"]) == 1 and second["attempts"][0]["started"] >= first
    assert not parent_retrained(_specs(2e-3)[1], out)


def test_parent_retrained_reads_the_provenance_records(tmp_path):
    out = tmp_path / "study"
    child = _specs(1e-3)[1]
    assert not parent_retrained(child, out)  # no records: cannot tell, so not stale
    for run_id, rec in (
        ("sft", {"finished": True, "finished_at": "2026-12-02T10:00:05+00:00"}),
        ("dpo", {"finished": True, "attempts": [{"started": "2026-12-02T10:00:05+00:00"}]}),
    ):
        (out / "runs" / run_id).mkdir(parents=True)
        (out / "runs" / run_id / provenance.FILE).write_text(json.dumps(rec))
    assert not parent_retrained(child, out)  # the child began when the parent had finished
    rec = json.loads((out / "runs" / "sft" / provenance.FILE).read_text())
    (out / "runs" / "sft" / provenance.FILE).write_text(json.dumps({**rec, "finished_at": "2026-12-02T11:00:00+00:00"}))
    assert parent_retrained(child, out)  # the parent finished again after the child began
    assert not parent_retrained(_specs(1e-3)[0], out)  # a run that starts from no other run
