"""Reward models: a scalar head on a causal-LM backbone, as a Hugging Face ``*ForSequenceClassification`` model.

``load_reward_model`` builds the model the trainer trains in ``train.mode=rm``: ``AutoModelForSequenceClassification``
with ``num_labels=1`` (a linear ``score`` head on the last non-pad token; GPT-2, Llama, Mistral, Qwen, ... all have
one), from a hub name or local path, from a tiny preset (the same seeded backbone a policy of that preset starts
from) or from a dpolab checkpoint (``model.init_from``, a full model or a LoRA adapter, merged). Under LoRA the
adapters are peft ``SEQ_CLS`` adapters and the ``score`` head is trained in full (``modules_to_save``).

The reward of a sequence is ``model(input_ids, attention_mask).logits[:, 0]``: what a user who reloads the saved
model with ``AutoModelForSequenceClassification.from_pretrained`` gets. ``config.pad_token_id`` is always set, so the
head reads the rightmost token that is not padding (for tokenizers whose pad token is the EOS token, that is the
last token before the final EOS).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..config import LoraConfig, ModelConfig
from ..models.load import (
    DTYPES,
    MODEL_META,
    TINY_PRESETS,
    ModelLoadError,
    disable_dropout,
    is_gpt2_like,
    load_base_model,
    load_tokenizer,
    saved_base_fields,
)
from ..models.quiet import known_warnings_silenced

SCORE_MODULE = "score"


def _is_adapter_dir(path: Optional[str]) -> bool:
    return bool(path) and (Path(path) / "adapter_config.json").exists()


def _seq_cls_from_config(config, seed: int):
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    config.num_labels = 1
    torch.manual_seed(seed)
    try:
        return AutoModelForSequenceClassification.from_config(config)
    except ValueError as e:
        raise ModelLoadError(
            f"architecture '{getattr(config, 'model_type', '?')}' has no sequence-classification head in transformers, "
            f"so it cannot be a dpolab reward model ({str(e).splitlines()[0][:120]})"
        ) from e


def reward_model_from_causal_lm(lm, seed: int = 0):
    """A ``*ForSequenceClassification`` model (``num_labels=1``) holding ``lm``'s backbone and a fresh score head."""
    model = _seq_cls_from_config(lm.config, seed)
    model.to(next(lm.parameters()).dtype)
    missing, unexpected = model.base_model.load_state_dict(lm.base_model.state_dict(), strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"backbone weights do not fit the reward model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def _seq_cls_from_pretrained(path: str, cfg: ModelConfig):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from ..models.presets import resolve_model_path

    path = resolve_model_path(path)  # a model preset (smollm2-135m) is its cached folder
    kwargs: Dict[str, Any] = {"num_labels": 1, "dtype": DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a causal LM has no score head: the "newly initialized" report is expected
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except Exception as e:
        raise ModelLoadError(
            f"could not load '{path}' as a reward model (sequence classification, 1 label): "
            f"{str(e).splitlines()[0][:160]}"
        ) from e
    finally:
        hf_logging.set_verbosity(level)


def _lora_targets(model, lora: LoraConfig):
    if lora.target_modules != "all-linear":
        return lora.target_modules
    if is_gpt2_like(model):
        return ["c_attn", "c_proj", "c_fc"]  # GPT-2 uses Conv1D, which 'all-linear' would skip
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names.discard(SCORE_MODULE)  # the head is trained in full, not adapted
    return sorted(names)


def apply_reward_lora(model, lora: LoraConfig):
    """peft ``SEQ_CLS`` LoRA adapters; trainable: the adapters and the whole ``score`` head."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    pcfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=_lora_targets(model, lora),
        task_type="SEQ_CLS",
        fan_in_fan_out=is_gpt2_like(model),
        modules_to_save=[SCORE_MODULE],
    )
    with known_warnings_silenced():  # transformers' deprecation note when peft wraps the model
        return get_peft_model(model, pcfg)


def load_reward_model(cfg: ModelConfig, lora: LoraConfig, tokenizer, *, seed: int = 0, max_positions: int = 1024):
    """The reward model to train (see the module docstring)."""
    src = cfg.init_from or cfg.name_or_path
    plain = src not in TINY_PRESETS and not _is_adapter_dir(cfg.init_from) and not (cfg.gguf_file and not cfg.init_from)
    if plain:  # a hub name or a folder with a full HF model (causal LM or an earlier reward model)
        model = _seq_cls_from_pretrained(src, cfg)
    else:  # tiny preset, GGUF file or LoRA checkpoint: build the causal LM as a policy would, then move its backbone
        model = reward_model_from_causal_lm(
            load_base_model(cfg, tokenizer, seed=seed, max_positions=max_positions), seed
        )
    if not cfg.dropout:
        disable_dropout(model)
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.config.pad_token_id is None:
        raise ModelLoadError(
            "the reward model needs a pad token (the head reads the last non-pad token); set tokenizer.pad_token"
        )
    if lora.enabled:
        model = apply_reward_lora(model, lora)
    return model


def merged_for_saving(model):
    """The plain ``*ForSequenceClassification`` model to save as ``final/``: LoRA adapters merged (in place)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    with known_warnings_silenced():
        return model.merge_and_unload()


def load_trained_reward_model(path, *, tokenizer: Optional[str] = None, dtype: str = "float32") -> Tuple[Any, Any]:
    """(model, tokenizer) of a saved reward model in eval mode: a ``final/`` folder (plain HF), or a LoRA checkpoint
    (``checkpoints/step-N/model``) whose adapter is merged into its recorded base."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"reward model folder not found: {path}")
    tok = load_tokenizer(ModelConfig(name_or_path=str(path), tokenizer=tokenizer))
    if _is_adapter_dir(str(path)):
        from peft import PeftModel

        meta_file = path / MODEL_META
        if not meta_file.exists():
            raise ModelLoadError(f"{path} holds a LoRA adapter but no {MODEL_META} naming its base model")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        base = load_reward_model(
            ModelConfig(**saved_base_fields(meta, path)),
            LoraConfig(enabled=False),
            tok,
            seed=meta.get("seed", 0),
            max_positions=meta.get("max_positions") or 1024,
        )
        with known_warnings_silenced():
            model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    else:
        model = _seq_cls_from_pretrained(str(path), ModelConfig(name_or_path=str(path), dtype=dtype))
        if getattr(model.config, "num_labels", 1) != 1:
            raise ModelLoadError(f"{path} is not a reward model: its head has {model.config.num_labels} outputs, not 1")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    disable_dropout(model)
    model.eval()
    return model, tok


def sequence_rewards(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """One scalar reward per row, float32 [N]."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits[:, 0].float()


def reward_metrics(chosen: Tensor, rejected: Tensor) -> Dict[str, Tensor]:
    """Pairwise accuracy, margin and reward statistics of a set of pairs (detached)."""
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    margin = chosen - rejected
    both = torch.cat([chosen, rejected])
    std = lambda t: t.std(unbiased=False) if t.numel() > 1 else torch.zeros((), device=t.device)  # noqa: E731
    return {
        "reward_accuracy": (margin > 0).float().mean(),
        "margin": margin.mean(),
        "margin/std": std(margin),
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/mean": both.mean(),
        "rewards/std": std(both),
    }
