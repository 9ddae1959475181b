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
        for kind, tensors in (
            ("weight", module.parameters(recurse=False)),
            ("buffer", module.buffers(recurse=False)),
            ("input", (a for a in args if isinstance(a, torch.Tensor))),
        ):
            for t in tensors:
                if t.device.type != "meta":
                    wrong.append(f"{type(module).__name__} {kind} on {t.device}")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield seen, wrong
    handle.remove()


def _cfg(tmp_path, name, *overrides):
    return build_config(
        {
            "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
            "data": {
                "task": "arithmetic",
                "task_args": {"n_train": 8, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
                "max_length": 48,
            },
            "train": {"batch_size": 4, "max_steps": 2, "lr": 1e-3, "seed": 0},
            "eval": {"batch_size": 4, "at_start": False},
            "output": {"dir": str(tmp_path / name), "progress": False, "save_final": False},
        },
        list(overrides),
    )


def _is_meta_stop(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}".lower()
    return "meta" in text


def _roots(seen):
    """Forwards of whole causal LMs (not their submodules), by model object."""
    return [m for m in seen if type(m).__name__.endswith(("LMHeadModel", "ForCausalLM"))]


@pytest.mark.parametrize(
    "overrides, live",
    [
        (["reference.mode=copy"], True),
        (["reference.mode=copy", "lora.enabled=true", "lora.r=2"], True),
        (["reference.mode=adapter", "lora.enabled=true", "lora.r=2"], True),
        (["reference.mode=copy", "reference.name_or_path=tiny-gpt2"], True),
        (["reference.mode=precomputed"], False),
        (["reference.mode=precomputed", "lora.enabled=true", "lora.r=2"], False),
    ],
)
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


# -- the commands that only run a model: dpolab eval, generate, chat, rm score (--device) ------------------------
@pytest.fixture
def saved(tmp_path):
    """A tiny GPT-2 policy folder, a tiny reward model folder (same backbone) and a file of three pairs."""
    import json

    from dpolab.config import LoraConfig, ModelConfig
    from dpolab.models.load import load_base_model, save_model
    from dpolab.models.tokenizer import build_char_tokenizer
    from dpolab.rewards.model import load_reward_model

    tok = build_char_tokenizer()
    cfg = ModelConfig(name_or_path="tiny-gpt2", tiny={"n_layer": 1, "n_embd": 32, "n_head": 2})
    save_model(load_base_model(cfg, tok), tok, tmp_path / "policy")
    save_model(load_reward_model(cfg, LoraConfig(enabled=False), tok), tok, tmp_path / "rm")
    rows = [{"prompt": f"{a}+{a}=", "chosen": str(2 * a), "rejected": str(2 * a + 1)} for a in range(1, 4)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _runs_on_meta(placement, run, at_least: int) -> None:
    """``run()`` stops at the first value read back from the meta device, after ``at_least`` whole-model forwards
    with every weight, buffer and input on it."""
    seen, wrong = placement
    seen.clear(), wrong.clear()
    with pytest.raises(Exception) as stop:
        run()
    assert _is_meta_stop(stop.value), f"stopped for another reason than reading a meta tensor: {stop.value!r}"
    assert not wrong, f"off-device at a forward: {sorted(set(wrong))[:5]}"
    roots = [m for m in seen if type(m).__name__.endswith(("LMHeadModel", "ForCausalLM", "ForSequenceClassification"))]
    assert len(roots) >= at_least, f"expected {at_least} model forwards on the device, saw {len(roots)}"


def test_eval_runs_the_policy_and_the_reference_on_the_device(saved, placement):
    from dpolab.evaluation.preference import evaluate_preference_file

    _runs_on_meta(
        placement,
        lambda: evaluate_preference_file(
            str(saved / "policy"),
            str(saved / "pairs.jsonl"),
            reference=str(saved / "policy"),
            device="meta",
            log=lambda m: None,
        ),
        at_least=2,
    )


def test_generate_and_chat_run_on_the_device(saved, placement):
    from dpolab.evaluation.chat import Conversation, SamplingOptions, load_chat_model, reply

    model, tok = load_chat_model(str(saved / "policy"), device="meta")
    assert all(p.device == META for p in model.parameters())
    # HF's generate reads its special-token tensors back to the host before its first forward; one forward on what
    # dpolab hands it stands in for its loop (the hook checks the inputs and weights), then the reply reads it back
    model.generate = lambda input_ids, attention_mask, **kw: model(
        input_ids=input_ids, attention_mask=attention_mask
    ).logits.argmax(-1)
    opts = SamplingOptions(max_new_tokens=3, temperature=0)
    _runs_on_meta(placement, lambda: reply(model, tok, [{"role": "user", "content": "1+1="}], opts), at_least=1)
    _runs_on_meta(placement, lambda: Conversation(model, tok, opts).say("2+2="), at_least=1)


def test_rm_score_runs_the_reward_model_on_the_device(saved, placement):
    from dpolab.rewards.score import score_file

    _runs_on_meta(
        placement,
        lambda: score_file(
            str(saved / "rm"),
            str(saved / "pairs.jsonl"),
            str(saved / "s.jsonl"),
            progress=False,
            log=lambda m: None,
            device="meta",
        ),
        at_least=1,
    )
    assert not (saved / "s.jsonl").exists()


def test_device_option_auto_and_refusals(saved, capsys):
    """``--device auto`` is the CPU where torch sees no GPU; a device this machine lacks is a one-line error."""
    from dpolab.cli import main
    from dpolab.errors import ConfigError
    from dpolab.models.device import resolve_device

    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="'gpu0' is not a device"):
        resolve_device("gpu0")
    assert (
        main(["eval", "--model", str(saved / "policy"), "--data", str(saved / "pairs.jsonl"), "--device", "gpu0"]) == 2
    )
    assert "error: --device: 'gpu0' is not a device" in capsys.readouterr().err
    assert (
        main(
            [
                "rm",
                "score",
                "--model",
                str(saved / "rm"),
                "--data",
                str(saved / "pairs.jsonl"),
                "--out",
                str(saved / "s.jsonl"),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "device: cpu (float32)" in capsys.readouterr().err
