"""One way to reach the model inside its wrappers (dpolab.models.unwrap): distributed wrappers (``.module``) and
torch.compile's OptimizedModule, however they nest, and peft's PeftModel only when asked; so the reference's table
key, the fast path and the compile switch all see the same model, wrapped or not."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from dpolab.config import LoraConfig
from dpolab.data.types import TokenizedPair
from dpolab.models.load import apply_lora, tiny_config
from dpolab.models.reference.key import table_key, weights_fingerprint
from dpolab.models.tokenizer import build_char_tokenizer
from dpolab.models.unwrap import unwrap

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}


class Wrapper(torch.nn.Module):
    """What DistributedDataParallel and Accelerate's wrappers look like from outside: the model as ``.module``."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module


def _model(lora: bool = False):
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(tiny_config("tiny-gpt2", build_char_tokenizer(), TINY))
    return apply_lora(m, LoraConfig(enabled=True, r=2, alpha=4)) if lora else m


def test_distributed_and_compile_wrappers_are_stripped_however_they_nest():
    hf = _model()
    assert unwrap(hf) is hf and unwrap(hf, peft=True) is hf
    for wrapped in (Wrapper(hf), Wrapper(Wrapper(hf)), torch.compile(hf), Wrapper(torch.compile(Wrapper(hf)))):
        assert unwrap(wrapped) is hf and unwrap(wrapped, peft=True) is hf


def test_peft_is_kept_unless_asked_for_and_then_the_model_keeps_its_lora_layers():
    peft = _model(lora=True)
    wrapped = Wrapper(torch.compile(Wrapper(peft)))
    assert unwrap(wrapped) is peft and hasattr(unwrap(wrapped), "disable_adapter")
    base = unwrap(wrapped, peft=True)
    assert base is peft.get_base_model() and not hasattr(base, "disable_adapter")
    assert any("lora_A" in n for n, _ in base.named_parameters())  # the adapters are still inside


def test_a_wrapped_model_has_the_reference_table_key_of_the_bare_one():
    peft = _model(lora=True)
    pairs = [TokenizedPair(prompt_ids=[1, 5], chosen_ids=[6, 2], rejected_ids=[7, 2])]
    for wrapped in (Wrapper(Wrapper(peft)), torch.compile(peft), Wrapper(torch.compile(peft))):
        assert weights_fingerprint(wrapped) == weights_fingerprint(peft)
        for source in ("copy", "adapter"):
            assert table_key(source, wrapped, pairs, bf16=False) == table_key(source, peft, pairs, bf16=False)
