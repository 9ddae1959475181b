"""TR-DPO (reference.sync_every, reference.mixup_alpha): the live frozen copy moves toward the policy on schedule,
by exactly ref <- alpha * policy + (1 - alpha) * ref; a precomputed or adapter reference is refused; a resumed run
restores the moved reference exactly."""

from __future__ import annotations

import pytest
import torch

from dpolab.config import build_config
from dpolab.engine import Trainer, TrainError


def _cfg(tmp_path, name, *overrides):
    return build_config(
        {
            "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
            "data": {
                "task": "arithmetic",
                "task_args": {"n_train": 16, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
                "max_length": 48,
            },
            "train": {"batch_size": 4, "max_steps": 4, "lr": 1e-2, "seed": 0},
            "eval": {"batch_size": 4, "at_start": False},
            "reference": {"mode": "copy", "sync_every": 2, "mixup_alpha": 0.6},
            "output": {"dir": str(tmp_path / name), "progress": False, "save_every": 2},
        },
        list(overrides),
    )


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_reference_moves_toward_the_policy_on_schedule(tmp_path):
    t = Trainer(_cfg(tmp_path, "run"))
    ref0 = _params(t.reference.model)
    t._train_step()  # step 1: no sync
    assert all(torch.equal(v, ref0[k]) for k, v in _params(t.reference.model).items())
    t._train_step()  # step 2: ref <- 0.6 policy + 0.4 ref
    pol, ref = _params(t.model), _params(t.reference.model)
    for k in ref:
        assert torch.allclose(ref[k], 0.6 * pol[k] + 0.4 * ref0[k], atol=1e-7), k
    assert any(not torch.equal(ref[k], ref0[k]) for k in ref)
    t.close()


def test_hard_sync_copies_the_policy(tmp_path):
    t = Trainer(_cfg(tmp_path, "run", "reference.sync_every=1", "reference.mixup_alpha=1.0"))
    t._train_step()
    pol, ref = _params(t.model), _params(t.reference.model)
    assert all(torch.equal(ref[k], pol[k]) for k in ref)
    t.close()


@pytest.mark.parametrize(
    "over, why",
    [(["reference.mode=precomputed"], "precomputed"), (["lora.enabled=true", "reference.mode=adapter"], "adapter")],
)
def test_a_reference_that_cannot_follow_is_refused(tmp_path, over, why):
    with pytest.raises(TrainError, match=f"sync_every.*{why}"):
        Trainer(_cfg(tmp_path, "run", *over))


def test_resume_restores_the_moved_reference_exactly(tmp_path):
    straight = Trainer(_cfg(tmp_path, "straight", "reference.sync_every=1")).fit()
    part = _cfg(tmp_path, "part", "reference.sync_every=1")
    t = Trainer(part)
    t.total_steps = 2
    t.fit()
    (tmp_path / "part" / "DONE").unlink()
    resumed = Trainer(part, resume=True)
    assert resumed.step == 2
    s = resumed.fit()
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "part" / "final" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert s["final_eval"]["eval/loss"] == straight["final_eval"]["eval/loss"]


def test_a_sync_due_on_a_skipped_step_runs_on_the_next_step_taken(tmp_path):
    """train.on_nonfinite=skip: step 2 (a sync is due on it) is skipped, so the sync runs after step 3, not never."""
    t = Trainer(_cfg(tmp_path, "run", "train.on_nonfinite=skip"))
    ref0 = _params(t.reference.model)
    t._train_step()  # step 1: no sync due
    real = t._accumulate
    t._accumulate = lambda: [{**r, "loss": float("nan")} for r in real()]  # step 2: a non-finite loss
    assert t._train_step() is None and t.skipped_steps == 1 and t.step == 2
    assert all(torch.equal(v, ref0[k]) for k, v in _params(t.reference.model).items())
    t._accumulate = real
    t._train_step()  # step 3: the sync due on step 2
    pol, ref = _params(t.model), _params(t.reference.model)
    for k in ref:
        assert torch.allclose(ref[k], 0.6 * pol[k] + 0.4 * ref0[k], atol=1e-7), k
    t._train_step()  # step 4: its own sync, on schedule
    pol4, ref4 = _params(t.model), _params(t.reference.model)
    assert all(torch.allclose(ref4[k], 0.6 * pol4[k] + 0.4 * ref[k], atol=1e-7) for k in ref4)
    t.close()


@pytest.mark.parametrize("over", [[], ["lora.enabled=true", "lora.r=4"]], ids=["full", "lora"])
def test_auto_reference_with_sync_every_takes_a_frozen_copy(tmp_path, over):
    t = Trainer(_cfg(tmp_path, "run", "reference.mode=auto", "train.max_steps=40", *over))
    assert t.reference.mode == "copy"
    ref0 = _params(t.reference.model)
    t._train_step()
    t._train_step()
    assert any(not torch.equal(v, ref0[k]) for k, v in _params(t.reference.model).items())  # it followed the policy
    t.close()
