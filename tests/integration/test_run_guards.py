"""A run folder is never lost or corrupted: no rerun over an earlier run unasked, one writer at a time, checkpoints
verified before they are resumed, a NaN model never published, a failed checkpoint write keeps the previous one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dpolab.config import build_config
from dpolab.engine import Trainer, TrainError, train
from dpolab.engine.checkpoint import checkpoint_problem, list_checkpoints
from dpolab.engine.run_folder import RunLock


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


def _interrupted(tmp_path, name="run"):
    """A run stopped after its step-4 checkpoint: what a killed run leaves."""
    t = Trainer(_cfg(tmp_path, name=name))
    t.total_steps = 4
    t.fit()
    for f in ("DONE", "summary.json"):
        (tmp_path / name / f).unlink()
    import shutil

    shutil.rmtree(tmp_path / name / "final")
    return tmp_path / name


def test_rerun_without_resume_refuses_an_unfinished_run(tmp_path):
    run = _interrupted(tmp_path)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(TrainError, match="holds an unfinished run .*--resume.*output.overwrite=true"):
        Trainer(_cfg(tmp_path, "train.max_steps=2"))
    assert (run / "metrics.jsonl").read_text() == before and list_checkpoints(run)
    # explicit choices both work
    assert Trainer(_cfg(tmp_path), resume=True).fit()["steps"] == 6
    assert Trainer(_cfg(tmp_path, "train.max_steps=2", "output.overwrite=true")).fit()["steps"] == 2


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dpolab.engine.run_folder import RunLock
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    RunLock(Path(sys.argv[1])).acquire()
    print("held", flush=True)
    time.sleep(60)
""")


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainError, match=rf"in use by another dpolab process \(pid {holder.pid}\)"):
            Trainer(_cfg(tmp_path))
        with pytest.raises(TrainError, match=rf"pid {holder.pid}"):
            Trainer(_cfg(tmp_path), resume=True)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # the kernel dropped the dead holder's lock: the folder is free, although .lock still names the dead pid
    assert (run / ".lock").read_text().strip() == str(holder.pid)
    assert Trainer(_cfg(tmp_path, "train.max_steps=2")).fit()["steps"] == 2


def test_lock_is_released_when_a_run_ends_or_fails(tmp_path):
    train(_cfg(tmp_path, "train.max_steps=2"))
    RunLock(tmp_path / "run").acquire().release()  # free after a finished run
    t = Trainer(_cfg(tmp_path, "train.max_steps=2", "output.overwrite=true"))
    with torch.no_grad():
        next(t.policy.parameters()).fill_(float("nan"))
    with pytest.raises(TrainError):
        t.fit()
    RunLock(tmp_path / "run").acquire().release()  # free after a failed one


def _damage(kind, ckpt):
    if kind == "payload":  # 1,000 bytes of the weights overwritten with 0xFF
        f = ckpt / "model" / "model.safetensors"
        data = bytearray(f.read_bytes())
        data[-2000:-1000] = b"\xff" * 1000
        f.write_bytes(bytes(data))
    elif kind == "truncated-weights":
        f = ckpt / "model" / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "truncated-rng":
        f = ckpt / "rng.pt"
        f.write_bytes(f.read_bytes()[:50])
    elif kind == "empty-state":
        (ckpt / "state.json").write_text("")
    elif kind == "missing-optimizer":
        (ckpt / "optimizer.pt").unlink()


@pytest.mark.parametrize("kind", ["payload", "truncated-weights", "truncated-rng", "empty-state", "missing-optimizer"])
def test_a_damaged_checkpoint_is_never_loaded(tmp_path, kind):
    straight = train(_cfg(tmp_path, name="straight"))
    run = _interrupted(tmp_path)
    newest = list_checkpoints(run)[-1]
    assert newest.name == "step-0000004" and checkpoint_problem(newest) is None
    _damage(kind, newest)
    assert checkpoint_problem(newest) is not None
    notes = []
    s = Trainer(_cfg(tmp_path), resume=True, log=notes.append).fit()
    assert any("step-0000004 is damaged" in n for n in notes), notes
    assert any("resumed from" in n and "step-0000002" in n for n in notes), notes
    assert s["steps"] == 6 and s["final_eval"]["eval/loss"] == pytest.approx(
        straight["final_eval"]["eval/loss"], abs=1e-6
    )


def test_a_nonfinite_eval_loss_is_never_marked_done(tmp_path, monkeypatch):
    import dpolab.engine.trainer as trainer_module

    t = Trainer(_cfg(tmp_path, "train.max_steps=2"))
    real = t.evaluate
    monkeypatch.setattr(t, "evaluate", lambda: {**real(), "eval/loss": float("nan")})
    with pytest.raises(TrainError, match=r"non-finite eval loss \(nan\)"):
        t.fit()
    assert not (tmp_path / "run" / "DONE").exists() and not (tmp_path / "run" / "final").exists()
    assert trainer_module.DONE_MARKER == "DONE"


FSIZE = textwrap.dedent("""
    import resource, sys
    from dpolab.cli import main
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.exit(main(["train", "model.tiny={n_layer: 2, n_embd: 256, n_head: 2}", "data.task=arithmetic",
                   "data.task_args={n_train: 16, n_eval: 4}", "train.batch_size=4", "train.max_steps=4",
                   "output.save_every=2", "output.progress=false", "eval.at_start=false", f"output.dir={sys.argv[1]}"]))
""")


def test_a_file_size_limit_while_checkpointing_is_one_line_and_keeps_nothing_half_written(tmp_path):
    """``ulimit -f``: the checkpoint write fails cleanly (one line, exit 2), leaving no partial checkpoint."""
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", FSIZE, str(run), str(4 * 2**20)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err) == 1 and "could not write the step-2 checkpoint" in err[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list_checkpoints(run) and not list((run / "checkpoints").glob(".*"))


def test_resume_with_nothing_to_resume_says_so_and_starts_over(tmp_path):
    notes = []
    t = Trainer(_cfg(tmp_path, "train.max_steps=2"), resume=True, log=notes.append)
    assert t.step == 0
    assert any("--resume: no intact checkpoint" in n and "starting from the beginning" in n for n in notes), notes
    assert t.fit()["steps"] == 2


@pytest.mark.parametrize("bad", ["data.train={missing}", "reference.mode=adapter"])  # refused at data / after the model
def test_a_run_refused_before_it_starts_leaves_no_folder_behind(tmp_path, bad):
    from dpolab.errors import UserError

    cfg = _cfg(
        tmp_path,
        "output.dir=" + str(tmp_path / "new" / "runs" / "run"),
        "train.mode=preference",
        "data.task=null" if "data" in bad else "train.seed=0",
        bad.format(missing=tmp_path / "missing.jsonl"),
    )
    with pytest.raises(UserError):
        Trainer(cfg)
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


def test_a_refused_run_keeps_every_folder_and_file_that_was_there(tmp_path):
    from dpolab.errors import UserError

    train(_cfg(tmp_path, "train.max_steps=2"))
    finished = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert ".lock" in finished
    with pytest.raises(TrainError, match="already holds a finished run"):
        Trainer(_cfg(tmp_path, "train.max_steps=2"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == finished
    mine = tmp_path / "mine"  # a folder the user made, holding a file of theirs: kept, and no lock file of ours in it
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="adapter needs a LoRA policy"):
        Trainer(_cfg(tmp_path, "train.mode=preference", "reference.mode=adapter", name="mine"))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (mine / "notes.txt").unlink()  # an empty folder of theirs stays too
    with pytest.raises(UserError):
        Trainer(_cfg(tmp_path, "train.mode=preference", "reference.mode=adapter", name="mine"))
    assert mine.is_dir() and not list(mine.iterdir())
