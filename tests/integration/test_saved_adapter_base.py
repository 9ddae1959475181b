"""A saved LoRA adapter names its base in ``dpolab_model.json``. When that base is a local folder given by a relative
path (``model.init_from=runs/sft/final``, or an iterative run's rounds), the adapter still loads from another working
folder and after the whole run tree has been moved: the path is written absolute and, beside it, relative to the
adapter's own folder."""

from __future__ import annotations

import json
import shutil

import torch

from dpolab.config import build_config
from dpolab.engine import Trainer
from dpolab.models.load import MODEL_META, load_saved_model

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}


def _cfg(out, mode, *overrides):
    base = {
        "model": {"tiny": TINY},
        "data": {"task": "arithmetic", "task_args": {"n_train": 8, "n_eval": 2}, "max_length": 32},
        "train": {"mode": mode, "batch_size": 4, "max_steps": 2, "lr": 1e-2, "seed": 0},
        "eval": {"at_start": False},
        "output": {"dir": str(out), "progress": False},
    }
    return build_config(base, list(overrides))


def test_an_adapter_over_a_relative_base_folder_loads_from_elsewhere_and_after_a_move(tmp_path, monkeypatch):
    tree = tmp_path / "project"
    tree.mkdir()
    monkeypatch.chdir(tree)
    Trainer(_cfg("runs/sft", "sft")).fit()  # a full model, saved at the relative folder runs/sft/final
    Trainer(_cfg("runs/dpo", "preference", "model.init_from=runs/sft/final", "lora.enabled=true")).fit()
    meta = json.loads((tree / "runs/dpo/final" / MODEL_META).read_text())
    assert meta["model"]["init_from"] == str(tree / "runs/sft/final")
    assert meta["relative"] == {"init_from": "../../sft/final"}
    expected = load_saved_model(tree / "runs/dpo/final")
    ids = torch.tensor([[1, 2, 3, 4]])
    want = expected(ids).logits

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the written path was relative before: it was read against this folder and failed
    assert torch.equal(load_saved_model(tree / "runs/dpo/final")(ids).logits, want)

    moved = tmp_path / "moved"
    shutil.move(str(tree), str(moved))  # the absolute path is gone; the relative one finds the base again
    assert torch.equal(load_saved_model(moved / "runs/dpo/final")(ids).logits, want)
