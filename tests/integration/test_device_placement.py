"""Every model the trainer holds, and every batch it scores, is on the accelerator's device.

No GPU is needed: a fake accelerator places the run on PyTorch's ``meta`` device (shapes without data, so no CPU
tensor can pass for it). A global forward pre-hook checks, at every module forward, that the module's own weights and
buffers and its tensor inputs are on ``meta``. Computation on ``meta`` stops at the first value read back to the host
(after the policy and reference forwards and the backward), which the test expects. On a real GPU the same code
paths run with ``cuda``; ``scripts/gpu_smoke.sh`` runs them there.
"""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from dpolab.config import build_config
from dpolab.engine import Trainer

META = torch.device("meta")


class MetaAccelerator:
    """The subset of ``accelerate.Accelerator`` the trainer uses, with ``device`` = meta and one process."""

    device = META
    num_processes = 1
    process_index = 0
    is_main_process = True

    def prepare(self, *objs):
        return tuple(o.to(META) if isinstance(o, torch.nn.Module) else o for o in objs)

    def wait_for_everyone(self):
        pass

    def main_process_first(self):
        return nullcontext()

    def unwrap_model(self, model):
        return model

    def no_sync(self, model):
        return nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def gather(self, t):
        return t

    def reduce(self, t, reduction="sum"):
        return t


def _use_meta(monkeypatch):
    """``accelerate.Accelerator()`` gives a :class:`MetaAccelerator` (the trainer builds its own by default)."""
    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", lambda *a, **k: MetaAccelerator())


@pytest.fixture
def meta_accelerate(monkeypatch):
    _use_meta(monkeypatch)


@pytest.fixture
def placement():
    """Records every module forward and every weight, buffer or input found off the meta device."""
    seen, wrong = [], []

    def hook(module, args):
        seen.append(module)
        for kind, tensors in (("weight", module.parameters(recurse=False)), ("buffer", module.buffers(recurse=False)),
                              ("input", (a for a in args if isinstance(a, torch.Tensor)))):
            for t in tensors:
                if t.device.type != "meta":
                    wrong.append(f"{type(module).__name__} {kind} on {t.device}")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield seen, wrong
    handle.remove()


def _cfg(tmp_path, name, *overrides):
    return build_config({
        "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
        "data": {"task": "arithmetic", "task_args": {"n_train": 8, "n_eval": 4, "n_terms": [2, 2], "max_value": 9}, "max_length": 48},
        "train": {"batch_size": 4, "max_steps": 2, "lr": 1e-3, "seed": 0},
        "eval": {"batch_size": 4, "at_start": False},
        "output": {"dir": str(tmp_path / name), "progress": False, "save_final": False},
    }, list(overrides))


def _is_meta_stop(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}".lower()
    return "meta" in text


def _roots(seen):
    """Forwards of whole causal LMs (not their submodules), by model object."""
    return [m for m in seen if type(m).__name__.endswith(("LMHeadModel", "ForCausalLM"))]


@pytest.mark.parametrize("overrides, live", [
    (["reference.mode=copy"], True),
    (["reference.mode=copy", "lora.enabled=true", "lora.r=2"], True),
    (["reference.mode=adapter", "lora.enabled=true", "lora.r=2"], True),
    (["reference.mode=copy", "reference.name_or_path=tiny-gpt2"], True),
    (["reference.mode=precomputed"], False),
    (["reference.mode=precomputed", "lora.enabled=true", "lora.r=2"], False),
])
def test_reference_and_batches_reach_the_accelerator_device(tmp_path, placement, meta_accelerate, overrides, live):
    seen, wrong = placement
    name = "-".join(o.split("=")[-1] for o in overrides)
    with pytest.raises(Exception) as stop:
        t = Trainer(_cfg(tmp_path, name, *overrides))
        if live:
            ref = t.reference
            held = ref.model if ref.model is not None else ref.policy
            assert all(p.device == META for p in held.parameters()), "the reference's weights are not on the device"
        t.fit()
    assert _is_meta_stop(stop.value), f"stopped for another reason than reading a meta tensor: {stop.value!r}"
    assert not wrong, f"off-device at a forward: {sorted(set(wrong))[:5]}"
    roots = _roots(seen)
    # live: the policy's forward and the reference's (a second model, or the same one with adapters off);
    # precomputed: the reference pass over the data before training, on the device
    assert len(roots) >= (2 if live else 1), f"expected policy and reference forwards, saw {len(roots)}"


def test_resumed_copy_reference_is_rebuilt_on_the_device(tmp_path, placement, monkeypatch):
    """A resumed full fine-tuning run rebuilds the starting weights for its reference: on the device too."""
    cfg = _cfg(tmp_path, "resume", "reference.mode=copy", "output.save_every=1", "train.max_steps=2")
    Trainer(cfg).fit()  # a real CPU run to have a checkpoint
    (tmp_path / "resume" / "DONE").unlink()
    seen, wrong = placement
    seen.clear(), wrong.clear()  # the CPU run above is not under test
    _use_meta(monkeypatch)
    t = Trainer(cfg, resume=True)
    assert t.step == 2
    assert all(p.device == META for p in t.reference.model.parameters())
    assert not wrong
