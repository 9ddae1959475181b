"""The precomputed reference table cannot be reused wrongly: its key covers everything its values depend on, a
resumed run loads exactly the file its checkpoint recorded, and ``output.overwrite`` clears the run's own cache."""

from __future__ import annotations

import pytest
import torch

from dpolab.config import build_config
from dpolab.engine import Trainer
from dpolab.models.reference import table_key, weights_fingerprint


def _cfg(tmp_path, name, *overrides):
    return build_config(
        {
            "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
            "data": {
                "task": "arithmetic",
                "task_args": {"n_train": 8, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
                "max_length": 48,
            },
            "train": {"batch_size": 4, "max_steps": 4, "lr": 1e-3, "seed": 0},
            "eval": {"batch_size": 4, "at_start": False},
            "reference": {"mode": "precomputed"},
            "output": {"dir": str(tmp_path / name), "progress": False, "save_final": False},
        },
        list(overrides),
    )


@pytest.fixture
def tiny():
    t = Trainer(_cfg(_tmp(), "key"))
    return t.policy, list(t.train_data) + list(t.eval_data)


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp())


def test_every_key_input_changes_the_key(tiny):
    model, data = tiny
    base = table_key("copy", model, data, bf16=False)
    assert table_key("copy", model, data, bf16=False) == base  # deterministic
    assert table_key("copy", model, data, bf16=True)["autocast"] != base["autocast"]
    assert table_key("copy", model, data[:-1], bf16=False)["data"] != base["data"]
    assert table_key("adapter", model, data, bf16=False)["source"] != base["source"]
    model.config._attn_implementation = "sdpa" if base["attention"] != "sdpa" else "eager"
    assert table_key("copy", model, data, bf16=False)["attention"] != base["attention"]
    with torch.no_grad():
        w = next(model.parameters())
        flat = w.view(-1)
        flat[0], flat[1] = flat[1].clone(), flat[0].clone()  # a permutation: same per-tensor sum, other weights
    assert table_key("copy", model, data, bf16=False)["weights"] != base["weights"]
    model.to(torch.bfloat16)
    k = table_key("copy", model, data, bf16=False)
    assert k["dtype"] != base["dtype"] and k["weights"] != base["weights"]


def test_weights_fingerprint_sees_one_ulp_and_strides_large_models(tiny, monkeypatch):
    import dpolab.models.reference.key as R

    model, _ = tiny
    a = weights_fingerprint(model)
    with torch.no_grad():
        p = next(model.parameters())
        p.view(-1)[3] = torch.nextafter(p.view(-1)[3], torch.tensor(float("inf")))
    assert weights_fingerprint(model) != a
    monkeypatch.setattr(R, "FULL_HASH_BYTES", 1024)  # force the strided read: still a hash of raw bytes
    assert weights_fingerprint(model) != a


def _files(folder):
    return sorted(folder.glob("ref-*.pt"))


def test_changed_inputs_recompute_and_equal_inputs_reuse(tmp_path):
    shared = tmp_path / "cache"
    t1 = Trainer(_cfg(tmp_path, "a", f"reference.cache_dir={shared}"))
    assert len(_files(shared)) == 1
    t2 = Trainer(_cfg(tmp_path, "b", f"reference.cache_dir={shared}"))  # same weights, data, dtype: reused
    assert t2.reference.cache_file == t1.reference.cache_file and len(_files(shared)) == 1
    for name, over in [
        ("seed", "train.seed=1"),
        ("bf16", "train.bf16=true"),
        ("data", "data.task_args.n_train=7"),
        ("dtype", "model.dtype=bfloat16"),
    ]:
        t = Trainer(_cfg(tmp_path, name, f"reference.cache_dir={shared}", over))
        assert t.reference.cache_file != t1.reference.cache_file, name
    assert len(_files(shared)) == 5


def test_a_foreign_or_corrupt_table_is_recomputed_not_trusted(tmp_path):
    shared = f"reference.cache_dir={tmp_path / 'cache'}"  # outside the run folder, which overwrite would clear
    t = Trainer(_cfg(tmp_path, "a", shared))
    f, good = t.reference.cache_file, t.reference.table["chosen"].clone()
    saved = torch.load(f)
    cases = {
        "do not match their checksum": {**saved, "chosen": saved["chosen"] + 3.0},  # same key, values changed
        "written for other weights": {
            **saved,
            "chosen": saved["chosen"] + 3.0,
            "key": {**saved["key"], "weights": "0" * 32},
        },
        "cannot be read": None,  # truncated
    }
    for why, content in cases.items():
        if content is None:
            f.write_bytes(f.read_bytes()[:100])
        else:
            torch.save(content, f)
        notes = []
        again = Trainer(_cfg(tmp_path, "a", shared, "output.overwrite=true"), log=notes.append)
        assert again.reference.cache_file == f and torch.equal(again.reference.table["chosen"], good), why
        assert any(why in n for n in notes), (why, notes)


def test_resume_loads_the_table_its_checkpoint_recorded_in_a_shared_folder(tmp_path):
    """Two runs with different starting weights share a cache folder; the interrupted one resumes with its own table,
    not the newest file in the folder."""
    shared = tmp_path / "cache"
    part = _cfg(tmp_path, "one", f"reference.cache_dir={shared}", "output.save_every=2")
    t = Trainer(part)
    own_file, own = t.reference.cache_file, t.reference.table["chosen"].clone()
    t.total_steps = 2  # stopped right after the step-2 checkpoint
    t.fit()
    (tmp_path / "one" / "DONE").unlink()
    other = Trainer(_cfg(tmp_path, "two", f"reference.cache_dir={shared}", "train.seed=5"))
    other.fit()  # a newer table of another model in the same folder
    assert other.reference.cache_file != own_file and len(_files(shared)) == 2
    resumed = Trainer(part, resume=True)
    assert resumed.step == 2
    assert resumed.reference.cache_file == own_file
    assert torch.equal(resumed.reference.table["chosen"], own)


def test_resume_recomputes_a_lost_table_from_the_starting_weights(tmp_path):
    part = _cfg(tmp_path, "one", "output.save_every=2")
    t = Trainer(part)
    own_file, own = t.reference.cache_file, t.reference.table["chosen"].clone()
    t.total_steps = 2
    t.fit()
    (tmp_path / "one" / "DONE").unlink()
    own_file.unlink()
    notes = []
    resumed = Trainer(part, resume=True, log=notes.append)
    assert any("recomputing" in n for n in notes)
    assert torch.allclose(resumed.reference.table["chosen"], own, atol=1e-5)


def test_overwrite_clears_the_runs_own_cache(tmp_path):
    t = Trainer(_cfg(tmp_path, "a"))
    t.fit()
    stray = t.reference.cache_file.parent / "ref-stray.pt"
    stray.write_bytes(b"x")
    Trainer(_cfg(tmp_path, "a", "output.overwrite=true"))
    assert not stray.exists()
