"""bf16 levers that change no number (issue 33): frozen matrix weights cast once and kept
(``dpolab.models.lowp.keep_frozen_casts``: a live reference, a LoRA policy's base layers) and the fused LM head's
cast weight kept from forward to backward. Under bf16 autocast the log-probs and gradients are bit-for-bit those
without the lever, fewer weights are cast, and in float32 nothing changes."""

import copy

import pytest
import torch

from dpolab.data.collate import collate_preference_fast
from dpolab.data.types import TokenizedPair
from dpolab.models.fastpath import _head_logps, logps_for_batch
from dpolab.models.load import disable_dropout, tiny_config
from dpolab.models.lowp import frozen_cast, keep_frozen_casts
from dpolab.models.tokenizer import build_char_tokenizer

TOK = build_char_tokenizer()
AMP = dict(device_type="cpu", dtype=torch.bfloat16)


def _model(preset, seed=0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(tiny_config(preset, TOK))
    disable_dropout(m)
    for p in m.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.1)
    return m.eval()


def _batch():
    g = torch.Generator().manual_seed(0)

    def ids(k):
        return torch.randint(4, 90, (k,), generator=g).tolist()

    pairs = [TokenizedPair(prompt_ids=[1] + ids(a), chosen_ids=ids(b), rejected_ids=ids(c)) for a, b, c in LENS]
    return collate_preference_fast(pairs, TOK.pad_token_id, "prefix")


LENS = [(7, 13, 5), (3, 20, 9), (11, 5, 14)]


def _frozen(m):
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _weight_casts(fn, *mods) -> int:
    """How many float32 tensors shaped like a matrix weight of ``mods`` ``fn`` casts (the batch's activations and
    head tiles have other shapes: 66 scored tokens)."""
    from torch.profiler import ProfilerActivity, profile

    shapes = {list(p.shape).__repr__() for m in mods for p in m.parameters() if p.dim() == 2}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return sum(
        ev.name == "aten::_to_copy" and ev.input_dtypes[0] == "float" and repr(ev.input_shapes[0]) in shapes
        for ev in prof.events()
    )


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])  # Conv1D layers, nn.Linear layers
def test_frozen_casts_same_bits_fewer_casts(preset):
    plain, hooked = _frozen(_model(preset)), _frozen(_model(preset))
    assert keep_frozen_casts(hooked) > 0
    b = _batch()
    with torch.no_grad(), torch.autocast(**AMP):
        want = logps_for_batch(plain, b)
        first = logps_for_batch(hooked, b)  # probes the fast path, makes the casts
        again = logps_for_batch(hooked, b)
        assert _weight_casts(lambda: logps_for_batch(hooked, b), hooked) == 0  # the kept casts, none made again
        assert (
            _weight_casts(lambda: logps_for_batch(plain, b), plain) > 0
        )  # without: every matrix weight, every forward
    for got in (first, again):
        assert torch.equal(got.token_logps, want.token_logps) and torch.equal(got.sums, want.sums)
    with torch.no_grad():  # float32: nothing replaced, the same bits
        assert torch.equal(logps_for_batch(hooked, b).token_logps, logps_for_batch(plain, b).token_logps)
    assert all(p.dtype == torch.float32 for p in hooked.parameters())  # the weights themselves stay float32


def test_a_changed_weight_is_cast_again():
    """TR-DPO's mix and a checkpoint's weights change a frozen weight in place: its kept cast is remade."""
    plain, hooked = _frozen(_model("tiny-gpt2")), _frozen(_model("tiny-gpt2"))
    keep_frozen_casts(hooked)
    b = _batch()
    with torch.no_grad(), torch.autocast(**AMP):
        logps_for_batch(hooked, b)
        for m in (plain, hooked):
            for p in m.parameters():
                p.mul_(0.5).add_(0.01)
        got, want = logps_for_batch(hooked, b), logps_for_batch(plain, b)
    assert torch.equal(got.token_logps, want.token_logps)
    hooked.load_state_dict(_model("tiny-gpt2", seed=1).state_dict())
    plain.load_state_dict(_model("tiny-gpt2", seed=1).state_dict())
    with torch.no_grad(), torch.autocast(**AMP):
        assert torch.equal(logps_for_batch(hooked, b).token_logps, logps_for_batch(plain, b).token_logps)


def test_deep_copy_of_a_hooked_model_casts_its_own_weights():
    src = _frozen(_model("tiny-gpt2"))
    keep_frozen_casts(src)
    b = _batch()
    with torch.no_grad(), torch.autocast(**AMP):
        logps_for_batch(src, b)
        cp = copy.deepcopy(src)
        assert keep_frozen_casts(cp) == 0  # the hooks came along
        for p in cp.parameters():
            p.add_(0.05)
        want = logps_for_batch(_frozen(copy.deepcopy(cp)), b)
        got = logps_for_batch(cp, b)
    assert torch.equal(got.token_logps, want.token_logps)


def test_lora_policy_trainable_weights_untouched_and_grads_identical():
    """A LoRA policy: its base layers' frozen weights use the kept casts, its adapters never; the adapters'
    gradients and the adapter-off log-probs are bit-for-bit those without the lever."""
    from peft import LoraConfig, get_peft_model

    def lora():
        torch.manual_seed(0)
        m = get_peft_model(_model("tiny-llama"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        for n, p in m.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
        return m

    plain, hooked = lora(), lora()
    keep_frozen_casts(hooked)
    b = _batch()
    grads, outs = [], []
    for m in (plain, hooked):
        m.train()
        with torch.autocast(**AMP):
            lp = logps_for_batch(m, b)
        lp.sums.sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
        with torch.no_grad(), torch.autocast(**AMP), m.disable_adapter():
            outs.append(logps_for_batch(m, b).token_logps)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])
    assert torch.equal(outs[0], outs[1])


def test_frozen_cast_is_remade_after_in_place_change():
    p = torch.nn.Parameter(torch.randn(50, 40), requires_grad=False)
    c1 = frozen_cast(p, torch.bfloat16)
    assert frozen_cast(p, torch.bfloat16) is c1
    with torch.no_grad():
        p.add_(1.0)
    c2 = frozen_cast(p, torch.bfloat16)
    assert c2 is not c1 and torch.equal(c2, p.detach().to(torch.bfloat16))


@pytest.mark.parametrize("bf16_softmax", [True, False])
def test_fused_head_casts_its_weight_once_per_step(monkeypatch, bf16_softmax):
    """``train.logits=response`` under autocast: the head's weight is cast in forward and that cast is used again in
    backward (it was cast twice); with the float32-tile softmax, the gradients are the same bits as a recast."""
    import dpolab.models.fastpath as F

    monkeypatch.setattr(F, "BF16_SOFTMAX", bf16_softmax)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 32, generator=g).requires_grad_()
    head = torch.nn.Linear(32, 300, bias=False)
    tgt = torch.randint(0, 300, (40,), generator=g)

    def step():
        with torch.autocast(**AMP):
            out, _ = _head_logps(head, h, tgt, 16, recompute=False)
        out.sum().backward()

    assert _weight_casts(step, head) == 1
    if bf16_softmax:  # (its gradients: tests/unit/test_bf16_head.py)
        return
    keep = (h.grad.clone(), head.weight.grad.clone())
    h.grad = head.weight.grad = None
    with torch.autocast(**AMP):  # recompute mode recasts in backward (keeps less alive): the same cast weight; its
        out, _ = _head_logps(head, h, tgt, 16, recompute=True)  # softmax is exp(z - lse), not e / tot: bf16 rounding
    out.sum().backward()
    torch.testing.assert_close(h.grad, keep[0], rtol=2**-7, atol=5e-4)
    torch.testing.assert_close(head.weight.grad, keep[1], rtol=2**-7, atol=5e-4)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["copy", "lora-adapter"])
def test_trainer_bf16_reference_uses_kept_casts(tmp_path, lora):
    """Through the trainer (train.bf16=true): the live reference (a frozen copy; under LoRA the adapter-off policy)
    runs on kept casts, and at step 0 policy and reference give the same bits (log-ratios exactly 0)."""
    from dpolab.config import build_config
    from dpolab.engine import Trainer
    from dpolab.models.lowp import _HOOKED
    from dpolab.models.unwrap import unwrap

    cfg = build_config(
        {
            "model": {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
            "data": {"task": "arithmetic", "task_args": {"n_train": 12, "n_eval": 4, "max_value": 20}},
            "train": {"batch_size": 4, "max_steps": 1, "bf16": True, "seed": 0},
            "reference": {"mode": "adapter" if lora else "copy"},
            "lora": {"enabled": lora, "r": 4},
            "eval": {"every": 0, "at_start": False},
            "output": {"dir": str(tmp_path / "run"), "progress": False, "save_final": False},
        }
    )
    t = Trainer(cfg, log=lambda s: None)
    ref_model = t.reference.policy if lora else t.reference.model
    hooked = [m for m in unwrap(ref_model, peft=True).modules() if m.__dict__.get(_HOOKED)]
    assert hooked
    row = t._accumulate()[0]
    assert float(row["logratio/chosen"]) == 0.0 and float(row["logratio/rejected"]) == 0.0
