"""Runtime faults: non-finite steps, full or unwritable output folders, out-of-memory, a disk filling mid-run.

Each stops with a clear message (or skips and counts, when asked), keeps the last good checkpoint, and a
``--resume`` from it ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import collections

import pytest
import torch

import dpolab.engine.objectives.preference as preference_mod
import dpolab.engine.run_folder as run_folder_mod
from dpolab.cli import main
from dpolab.config import build_config
from dpolab.engine import Trainer, TrainError, train
from dpolab.engine.checkpoint import latest_checkpoint, list_checkpoints, load_training_state
from dpolab.engine.logging import read_metrics

pytestmark = pytest.mark.slow


def cfg(tmp_path, *overrides, name="run"):
    data = {
        "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
        "data": {
            "task": "arithmetic",
            "task_args": {"n_train": 16, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
            "max_length": 48,
        },
        "loss": [{"name": "beta-dpo"}],
        "train": {"batch_size": 4, "max_steps": 6, "lr": 1e-3, "schedule": "linear", "seed": 0},
        "eval": {"batch_size": 8},
        "output": {"dir": str(tmp_path / name), "progress": False, "save_every": 2},
    }
    return build_config(data, list(overrides))


def _poison_step(monkeypatch, bad_steps, what="nan"):
    """Make the forward of the given (1-based) training steps return a non-finite objective, once each."""
    real = preference_mod.preference_step
    calls = collections.Counter()

    def step(model, reference, loss, batch, autocast, **kw):
        obj, metrics = real(model, reference, loss, batch, autocast, **kw)
        t = _current[0]
        if model.training and t is not None and t.step + 1 in bad_steps and not calls[t.step + 1]:
            calls[t.step + 1] += 1
            obj = obj * float(what)
        return obj, metrics

    _current = [None]
    monkeypatch.setattr(preference_mod, "preference_step", step)
    return _current


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


@pytest.mark.parametrize("what", ["nan", "inf"])
def test_nonfinite_stops_keeps_last_good_checkpoint_and_resume_continues_exactly(tmp_path, monkeypatch, what):
    straight = train(cfg(tmp_path, name="straight"))
    current = _poison_step(monkeypatch, {5}, what)
    t = Trainer(cfg(tmp_path))
    current[0] = t
    with pytest.raises(TrainError, match="step 5: non-finite.*last good checkpoint is kept"):
        t.fit()
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step-0000002", "step-0000004"]
    assert load_training_state(latest_checkpoint(run))["state"]["step"] == 4
    assert not (run / "DONE").exists()
    monkeypatch.undo()
    summary = Trainer(cfg(tmp_path), resume=True).fit()
    assert summary["steps"] == straight["steps"] == 6
    wa, wb = _weights(tmp_path / "straight"), _weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps = [r["step"] for r in read_metrics(run) if "grad_norm" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 5 logged once, after the resume


def test_nonfinite_step_skipped_and_counted(tmp_path, monkeypatch):
    current = _poison_step(monkeypatch, {2, 4})
    t = Trainer(cfg(tmp_path, "train.on_nonfinite=skip"))
    current[0] = t
    s = t.fit()
    assert s["skipped_steps"] == 2 and s["steps"] == 6
    rows = [r for r in read_metrics(tmp_path / "run") if "grad_norm" in r]
    assert [r["step"] for r in rows] == [1, 3, 5, 6]  # the skipped steps log nothing
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path / "run").values())
    # the learning-rate schedule follows the loop's steps, skipped or taken: each logged lr is the one an
    # uninterrupted run uses at that step, and the schedule ends where it would
    t2 = Trainer(cfg(tmp_path, name="plain"))
    lrs = {}
    for step in range(6):
        lrs[step + 1] = t2.scheduler.get_last_lr()[0]
        t2.scheduler.step()
    assert {r["step"]: r["lr"] for r in rows} == {k: pytest.approx(lrs[k]) for k in (1, 3, 5, 6)}
    assert t.scheduler.last_epoch == t.step == 6
    t2.close()


def test_full_disk_detected_before_training(tmp_path, monkeypatch, capsys):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(run_folder_mod.shutil, "disk_usage", lambda p: usage(10 * 2**20, 10 * 2**20 - 4096, 4096))
    rc = main(
        [
            "train",
            "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
            "data.task=arithmetic",
            "data.task_args={n_train: 16, n_eval: 4, n_terms: [2, 2], max_value: 9}",
            "output.progress=false",
            f"output.dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and "MB free but this run needs about" in err[-1]
    assert "output.keep_last" in err[-1] and not any("Traceback" in line for line in err)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_output_folder_detected_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc = main(["train", "data.task=arithmetic", "output.progress=false", f"output.dir={blocker / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: output folder") and "not writable" in err[-1]


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes."),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: out of memory"),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError(),
    ],
)
def test_out_of_memory_names_the_knobs(tmp_path, monkeypatch, exc):
    t = Trainer(cfg(tmp_path, "output.save_every=0"))  # the first evaluation (at_start) runs out of memory

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(preference_mod, "preference_step", boom)
    with pytest.raises(TrainError) as info:
        t.fit()
    msg = str(info.value)
    assert msg.startswith("out of memory") and "\n" not in msg
    for knob in ("train.batch_size", "train.grad_accum", "data.max_length", "lora.enabled=true", "train.bf16=true"):
        assert knob in msg


def test_other_runtime_errors_are_not_called_oom(tmp_path, monkeypatch):
    t = Trainer(cfg(tmp_path, "eval.at_start=false"))
    monkeypatch.setattr(
        preference_mod, "preference_step", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    )
    with pytest.raises(RuntimeError, match="shape mismatch"):
        t.fit()


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import dpolab.engine.checkpoint as ck

    t = Trainer(cfg(tmp_path, "eval.at_start=false"))
    real_save = ck.torch.save
    n = collections.Counter()

    def save(obj, path, *a, **k):
        if "step-0000004" in str(path):
            n["fail"] += 1
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ck.torch, "save", save)
    with pytest.raises(TrainError, match="step-4 checkpoint.*No space left on device.*previous checkpoint is kept"):
        t.fit()
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step-0000002"]
    assert not list((run / "checkpoints").glob(".*tmp-*"))  # the partial folder was removed
    monkeypatch.undo()
    assert Trainer(cfg(tmp_path), resume=True).fit()["steps"] == 6
