"""A run records its compute settings (bf16 choice and why, threads, compile) in summary.json and logs them."""

from __future__ import annotations

import json

import pytest
import torch

from dpolab.config import build_config
from dpolab.engine import train
from dpolab.engine.precision import resolve_bf16

pytestmark = pytest.mark.slow


def _cfg(tmp_path, *over):
    data = {
        "model": {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
        "data": {
            "task": "arithmetic",
            "task_args": {"n_train": 16, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
            "max_length": 48,
        },
        "train": {"batch_size": 4, "max_steps": 2, "lr": 1e-3},
        "eval": {"batch_size": 8, "at_start": False},
        "output": {"dir": str(tmp_path / "run"), "progress": False, "save_final": False},
    }
    return build_config(data, list(over))


def test_bf16_auto_and_threads_are_logged_and_recorded(tmp_path):
    before = torch.get_num_threads()
    lines = []
    try:
        summary = train(_cfg(tmp_path, "train.bf16=auto", "train.threads=1"), log=lines.append)
    finally:
        torch.set_num_threads(before)
    want, why = resolve_bf16("auto", torch.device("cpu"))
    rt = json.loads((tmp_path / "run" / "summary.json").read_text())["runtime"]
    assert rt == summary["runtime"]
    assert rt["bf16"] is want and rt["bf16_reason"] == why and rt["threads"] == 1 and rt["compile"] is None
    assert any(line.startswith("compute: ") and why in line and "torch threads 1 intra-op" in line for line in lines)


def test_precomputed_reference_is_keyed_by_the_resolved_bf16_choice(tmp_path, monkeypatch):
    """``auto`` resolved to fp32 shares the fp32 table; resolved to bf16 it gets the bf16 one (not the string
    'auto')."""
    import dpolab.engine.precision as precision
    from dpolab.engine import Trainer

    shared = tmp_path / "cache"
    tables = lambda: sorted(shared.glob("ref-*.pt"))  # noqa: E731
    over = ("reference.mode=precomputed", f"reference.cache_dir={shared}")
    base = _cfg(tmp_path, *over, "train.bf16=false")
    fp32 = Trainer(base).reference.cache_file
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    auto32 = Trainer(_cfg(tmp_path / "b", *over, "train.bf16=auto")).reference.cache_file
    assert auto32 == fp32 and len(tables()) == 1
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    auto16 = Trainer(_cfg(tmp_path / "c", *over, "train.bf16=auto")).reference.cache_file
    bf16 = Trainer(_cfg(tmp_path / "d", *over, "train.bf16=true")).reference.cache_file
    assert auto16 == bf16 != fp32 and len(tables()) == 2
