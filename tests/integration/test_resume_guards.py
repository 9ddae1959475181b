"""`--resume` never loses or silently mixes a run (issue 32, defects 1, 2, 5, 6): a finished run is never trained again,
changed settings or data are refused in one line (an allow-list passes and is recorded, config.yaml is kept), a
legacy or truncated checkpoint falls back to the one before it, and a kill while publishing leaves no temporaries
and no doubled final evaluation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from dpolab.config import build_config
from dpolab.engine import Trainer, TrainError, train
from dpolab.engine.checkpoint import list_checkpoints
from dpolab.engine.logging import read_metrics


def _cfg(tmp_path, *overrides, name="run"):
    return build_config(
        {
            "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
            "data": {
                "task": "arithmetic",
                "task_args": {"n_train": 16, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
                "max_length": 48,
            },
            "train": {"batch_size": 4, "max_steps": 6, "lr": 1e-3, "seed": 0},
            "eval": {"batch_size": 4, "at_start": False},
            "output": {"dir": str(tmp_path / name), "progress": False, "save_every": 2},
        },
        list(overrides),
    )


def _interrupted(tmp_path, *overrides, name="run"):
    """A run stopped after its step-4 checkpoint: what a killed run leaves."""
    t = Trainer(_cfg(tmp_path, *overrides, name=name))
    t.total_steps = 4
    t.fit()
    for f in ("DONE", "summary.json"):
        (tmp_path / name / f).unlink()
    shutil.rmtree(tmp_path / name / "final")
    return tmp_path / name


def _snapshot(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("checkpoints", ["deleted", "kept"])
def test_resume_never_trains_a_finished_run_again(tmp_path, checkpoints):
    run = tmp_path / "run"
    train(_cfg(tmp_path))
    if checkpoints == "deleted":
        shutil.rmtree(run / "checkpoints")
    before = _snapshot(run)
    with pytest.raises(TrainError, match=r"holds a finished run \(DONE\): --resume never trains it again"):
        Trainer(_cfg(tmp_path), resume=True)
    assert _snapshot(run) == before  # final/, metrics.jsonl, summary.json untouched


@pytest.mark.parametrize(
    "change, keys",
    [
        (["train.lr=2e-3"], ["train.lr (0.001 -> 0.002)"]),
        (["loss=[{name: ipo}]"], ["loss ("]),
        (["train.seed=1"], ["train.seed (0 -> 1)"]),
        (["data.task_args.n_train=20"], ["data.task_args.n_train (16 -> 20)"]),
        (["train.max_steps=3"], ["train.max_steps (6 -> 3)"]),  # shorter: not an extension
        (["train.lr=2e-3", "train.batch_size=2"], ["train.batch_size (4 -> 2)", "train.lr (0.001 -> 0.002)"]),
    ],
)
def test_resume_refuses_changed_settings_in_one_line_and_keeps_config_yaml(tmp_path, change, keys):
    run = _interrupted(tmp_path)
    before = _snapshot(run)
    with pytest.raises(TrainError) as info:
        Trainer(_cfg(tmp_path, *change), resume=True)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("--resume refused: the settings differ from the run's")
    for key in keys:
        assert key in msg, msg
    assert "; only train.max_steps, " in msg and ", eval.every, " in msg  # the allow-list is named
    assert _snapshot(run) == before  # config.yaml (and everything else) as it was


def test_allowed_changes_pass_and_are_recorded_and_config_yaml_is_kept(tmp_path):
    run = _interrupted(tmp_path)
    config_before = (run / "config.yaml").read_text()
    notes = []
    s = Trainer(_cfg(tmp_path, "train.max_steps=8", "eval.every=3"), resume=True, log=notes.append).fit()
    assert s["steps"] == 8
    assert (run / "config.yaml").read_text() == config_before
    assert yaml.safe_load(config_before)["train"]["max_steps"] == 6
    rows = [json.loads(line) for line in (run / "resume_changes.jsonl").read_text().splitlines()]
    assert rows == [{"step": 4, "changes": {"eval.every": [0, 3], "train.max_steps": [6, 8]}}]
    assert any("changed settings recorded" in n and "train.max_steps 6 -> 8" in n for n in notes), notes


def test_resume_refuses_training_examples_that_changed(tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"question {i} ", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = ["data.task=null", f"data.train={data}", "data.eval_fraction=0.25", "data.cache=false"]
    run = _interrupted(tmp_path, *over)
    rows[3]["chosen"], rows[3]["rejected"] = rows[3]["rejected"], rows[3]["chosen"]  # same path, same settings
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TrainError, match="--resume refused: the training examples differ from those .*step-0000004"):
        Trainer(_cfg(tmp_path, *over), resume=True)
    assert list_checkpoints(run)[-1].name == "step-0000004"


def _truncate(kind, ckpt):
    (ckpt / "checksums.json").unlink()  # a checkpoint from before checksums were recorded
    f = {"optimizer": "optimizer.pt", "rng": "rng.pt", "state": "state.json", "weights": "model/model.safetensors"}.get(
        kind
    )
    if f:
        data = (ckpt / f).read_bytes()
        (ckpt / f).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["optimizer", "rng", "state", "weights"])
def test_a_legacy_or_truncated_checkpoint_falls_back_to_the_one_before(tmp_path, kind):
    straight = train(_cfg(tmp_path, name="straight"))
    run = _interrupted(tmp_path)
    older, newest = list_checkpoints(run)
    _truncate("legacy", older)  # both legacy; the older one intact
    _truncate(kind, newest)
    notes = []
    s = Trainer(_cfg(tmp_path), resume=True, log=notes.append).fit()
    assert any("step-0000004 is damaged" in n and "cannot be read" in n for n in notes), notes
    assert any("resumed from" in n and "step-0000002" in n for n in notes), notes
    assert s["steps"] == 6 and s["final_eval"]["eval/loss"] == pytest.approx(
        straight["final_eval"]["eval/loss"], abs=1e-6
    )


def test_a_run_whose_checkpoints_are_all_damaged_is_refused_not_wiped(tmp_path):
    run = _interrupted(tmp_path)
    for ckpt in list_checkpoints(run):
        (ckpt / "rng.pt").write_bytes(b"")
    before = _snapshot(run)
    with pytest.raises(TrainError, match=r"--resume refused: no checkpoint in .*checkpoints is intact"):
        Trainer(_cfg(tmp_path), resume=True)
    assert _snapshot(run) == before


def test_an_intact_legacy_checkpoint_is_resumed(tmp_path):
    run = _interrupted(tmp_path)
    for ckpt in list_checkpoints(run):
        _truncate("legacy", ckpt)
    notes = []
    Trainer(_cfg(tmp_path), resume=True, log=notes.append).fit()
    assert any("resumed from" in n and "step-0000004" in n for n in notes), notes


KILL_PUBLISHING = textwrap.dedent("""
    import os, signal, sys
    from dpolab import atomic
    from dpolab.cli import main
    where = sys.argv[2]
    real_fsync = atomic._fsync_file
    def fsync(path):
        if path.name.startswith(f".{where}.tmp-") or path.parent.name.startswith(f".{where}.tmp-"):
            os.kill(os.getpid(), signal.SIGKILL)  # killed with the temporary written, before its rename
        real_fsync(path)
    atomic._fsync_file = fsync
    sys.exit(main(["train", *sys.argv[3:], f"output.dir={sys.argv[1]}"]))
""")
ARGS = [
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
    "data.task=arithmetic",
    "data.task_args={n_train: 16, n_eval: 4, n_terms: [2, 2], max_value: 9}",
    "data.max_length=48",
    "train.batch_size=4",
    "train.max_steps=3",
    "train.lr=1e-3",
    "eval.batch_size=4",
    "eval.at_start=false",
    "output.progress=false",
    "output.save_every=2",
]


@pytest.mark.parametrize("where", ["final", "DONE"])
def test_a_kill_while_publishing_leaves_no_temporaries_and_one_final_evaluation(tmp_path, where):
    from dpolab.cli import main

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_PUBLISHING, str(run), where, *ARGS],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert list(run.glob(f".{where}.tmp-{'*'}")) and not (run / "DONE").exists()
    assert main(["train", "--resume", *ARGS, f"output.dir={run}"]) == 0
    evals = [r["step"] for r in read_metrics(run) if "eval/loss" in r]
    assert evals == [3]  # logged once, not again by the resumed run
    assert (run / "DONE").exists() and not [p.name for p in run.glob(".*") if p.name != ".lock"]
    assert json.loads((run / "summary.json").read_text())["final_eval"]["eval/loss"] == pytest.approx(
        [r for r in read_metrics(run) if "eval/loss" in r][0]["eval/loss"]
    )
