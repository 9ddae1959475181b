"""Loading the policy: ``from_pretrained`` by name or path (what a user does), a tiny model built from a
config (tests and the demo), a checkpoint of an earlier dpolab run, and LoRA adapters through peft."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..config import LoraConfig, ModelConfig
from ..errors import MissingPackageError, UserError, first_sentence
from .presets import MODEL_PRESETS, is_model_preset, resolve_model_path
from .quiet import known_warnings_silenced
from .unwrap import unwrap

# tiny models built from a config (tests, the demo); the families past gpt2/llama cover the fast paths' cases:
# sliding windows (mistral, phi3: every layer; qwen2-sw, gemma2, gemma3: local and global layers), logit and attention
# soft-capping (gemma2), learned/partial-rotary positions and untied heads (gpt-neox, opt)
TINY_PRESETS = (
    "tiny-gpt2",
    "tiny-llama",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-qwen2-sw",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-phi3",
    "tiny-gpt-neox",
    "tiny-opt",
)
TINY_WINDOW = 16  # the sliding window of the tiny presets that have one: shorter than typical test sequences
MODEL_META = "dpolab_model.json"  # written beside a saved model/adapter: how to rebuild its base


class ModelLoadError(UserError, RuntimeError):
    """A model or tokenizer could not be loaded (bad path, no network, missing file)."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer named by ``cfg.tokenizer`` (default: the model's own; 'char' for tiny presets)."""
    from .tokenizer import build_char_tokenizer, gpt2_tokenizer_offline

    name = cfg.tokenizer
    if name is None:
        src = cfg.init_from or cfg.name_or_path
        if src in TINY_PRESETS:
            name = "char"
        else:
            name = src
    if name == "char":
        return build_char_tokenizer()
    if name == "gpt2-offline":
        return gpt2_tokenizer_offline()
    from transformers import AutoTokenizer

    kwargs: Dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.gguf_file and name == cfg.name_or_path:
        kwargs["gguf_file"] = cfg.gguf_file
    name = _resolve(name, cfg.gguf_file if "gguf_file" in kwargs else None)
    _check_folder(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as e:
        raise ModelLoadError(f"could not load tokenizer '{name}': {first_sentence(e)}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def tiny_config(preset: str, tokenizer, overrides: Optional[Dict[str, Any]] = None, max_positions: int = 1024):
    """A small transformers config for a tiny preset (``TINY_PRESETS``) sized to the tokenizer; ``overrides`` are
    config fields (e.g. ``sliding_window``, ``num_hidden_layers``)."""
    from transformers import AutoConfig, GPT2Config, LlamaConfig

    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    overrides = dict(overrides or {})
    if preset == "tiny-gpt2":
        base = dict(n_layer=2, n_embd=64, n_head=4, n_positions=max_positions, **ids)
        base.update(overrides)
        return GPT2Config(**base)
    if preset == "tiny-llama":
        base = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max_positions,
            tie_word_embeddings=True,
            **ids,
        )
        base.update(overrides)
        return LlamaConfig(**base)
    if preset not in _FAMILY_PRESETS:
        raise ModelLoadError(f"unknown tiny preset '{preset}'; valid: {', '.join(TINY_PRESETS)}")
    model_type, extra = _FAMILY_PRESETS[preset]
    base = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
        **ids,
    )
    base.update(extra)
    base.update(overrides)
    return AutoConfig.for_model(model_type, **base)


_W = TINY_WINDOW
_FAMILY_PRESETS: Dict[str, tuple] = {
    "tiny-mistral": ("mistral", dict(num_key_value_heads=2, head_dim=16, sliding_window=_W, tie_word_embeddings=True)),
    "tiny-qwen2": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    # layer 0 full attention, layer 1 a sliding window (Qwen2 windows the layers from max_window_layers on)
    "tiny-qwen2-sw": (
        "qwen2",
        dict(
            num_key_value_heads=2,
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=_W,
            max_window_layers=1,
        ),
    ),
    # local (sliding) then global layer; logit soft-capping 30 and attention soft-capping 50 as in Gemma-2
    "tiny-gemma2": (
        "gemma2",
        dict(
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=_W,
            layer_types=["sliding_attention", "full_attention"],
        ),
    ),
    "tiny-gemma3": (
        "gemma3_text",
        dict(
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=_W,
            layer_types=["sliding_attention", "full_attention"],
        ),
    ),
    "tiny-phi3": ("phi3", dict(num_key_value_heads=2, sliding_window=_W, tie_word_embeddings=False)),
    "tiny-gpt-neox": ("gpt_neox", dict(rotary_pct=0.5, tie_word_embeddings=False)),
    "tiny-opt": ("opt", dict(ffn_dim=128, word_embed_proj_dim=64, tie_word_embeddings=True)),
}


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (modules and the float attributes attention code reads)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        # float rates read by the forward (OPT's decoder layers: ``dropout``; its decoder: ``layerdrop``)
        for attr in ("attention_dropout", "dropout_p", "attn_dropout_p", "dropout", "activation_dropout", "layerdrop"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)


def quantization_config(cfg: ModelConfig):
    """bitsandbytes settings for ``model.load_in_4bit`` / ``load_in_8bit`` (QLoRA's NF4 + double quantisation, compute
    in ``model.dtype``), or None. A missing package is a one-line error naming the pip command."""
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    if cfg.load_in_4bit and cfg.load_in_8bit:
        raise ModelLoadError("model.load_in_4bit and model.load_in_8bit are exclusive; choose one")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise MissingPackageError(
            "model.load_in_4bit / load_in_8bit need bitsandbytes: pip install 'bitsandbytes>=0.46'"
        ) from e
    from transformers import BitsAndBytesConfig

    if cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[cfg.dtype],
    )


def _without_cpu_repacking(model):
    """Keep bitsandbytes' 4-bit layers on one code path. On a CPU with AVX512-BF16, bitsandbytes (0.49-0.50) repacks a
    4-bit layer's weights for inference at its first forward in eval mode without gradients, and never back. An
    evaluation before training (``eval.at_start``) then made every training step fail ("a view of a leaf Variable that
    requires grad is being used in an in-place operation"), and the repacked path computes in bfloat16, not in the
    training path's compute dtype. The flag that allows the repacking is switched off on every such layer."""
    for m in model.modules():
        if getattr(m, "support_avx512bf16_for_cpu", False):
            m.support_avx512bf16_for_cpu = False
    return model


def _quantized(load, cfg: ModelConfig):
    """``load()`` with a quantisation config, naming bitsandbytes when it cannot run here (e.g. no backend for this
    device in the installed version)."""
    try:
        return _without_cpu_repacking(load())
    except (ModelLoadError, MissingPackageError):
        raise
    except Exception as e:
        import bitsandbytes

        bits = 4 if cfg.load_in_4bit else 8
        raise ModelLoadError(
            f"bitsandbytes {bitsandbytes.__version__} could not load the model in {bits} bits on this "
            f"device ({str(e).strip().splitlines()[0][:160]}); set model.load_in_{bits}bit=false"
        ) from e


def _looks_local(path: str) -> bool:
    """A path the user means as a folder: explicit (./, /, ~), with more parts than a hub id (org/name) has, or an
    org/name whose first part is a folder here (``runs/x`` beside a ``runs/`` folder: a run not written yet)."""
    return (
        path.startswith((".", "/", "~"))
        or path.count("/") >= 2
        or "\\" in path
        or ("/" in path and Path(path.split("/", 1)[0]).is_dir())
    )


def _hub_unreachable(name: str) -> Optional[str]:
    """Why the hub cannot be asked for ``name`` (offline mode, or no connection to its host within 3 s), or None: a
    missing folder with a hub-shaped name then fails at once instead of after the hub client's retries. A name already
    in the local hub cache, or a proxy (which a direct connection would not use), is not probed."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return None
    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return None
    except Exception:  # noqa: BLE001 - not a valid repository id: let the loader say so
        return None
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    import socket
    from urllib.parse import urlparse

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
    except OSError as e:
        return f"{url.hostname} is unreachable: {e}"
    return None


def _check_folder(path: str) -> None:
    """A missing folder is one clear line (transformers would call it an invalid hub id, or retry the hub five times
    when it cannot reach it)."""
    if Path(path).expanduser().exists():
        return
    kinds = (
        f"a model is a local folder, a hub id such as org/name, a model preset: {', '.join(MODEL_PRESETS)}, or a "
        f"tiny preset: {', '.join(TINY_PRESETS)}"
    )
    if _looks_local(path):
        raise ModelLoadError(f"model folder not found: {path} ({kinds})")
    why = _hub_unreachable(path)
    if why is not None:
        raise ModelLoadError(f"model folder not found: {path}, and it cannot be looked up on the hub ({why}; {kinds})")


def _resolve(name: str, gguf_file: Optional[str] = None) -> str:
    """A model preset's cached folder (:func:`dpolab.models.presets.resolve_model_path`); other names unchanged."""
    if gguf_file and is_model_preset(name):
        raise ModelLoadError(
            f"model.gguf_file names a GGUF file inside a folder; '{name}' is a model preset "
            f"(already a GGUF file, converted once): unset model.gguf_file"
        )
    return resolve_model_path(name)


def _from_pretrained(path: str, cfg: ModelConfig):
    from transformers import AutoModelForCausalLM

    kwargs: Dict[str, Any] = {"dtype": DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
    if cfg.gguf_file and path == cfg.name_or_path:
        kwargs["gguf_file"] = cfg.gguf_file
    path = _resolve(path, kwargs.get("gguf_file"))
    _check_folder(path)
    quant = quantization_config(cfg)
    if quant is not None:
        kwargs["quantization_config"] = quant
        return _quantized(lambda: AutoModelForCausalLM.from_pretrained(path, **kwargs), cfg)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except TypeError:  # older transformers call it torch_dtype
        kwargs["torch_dtype"] = kwargs.pop("dtype")
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:
        raise ModelLoadError(f"could not load model '{path}': {first_sentence(e)}") from e


def describe_model(cfg: ModelConfig, mode: str) -> List[str]:
    """A run's first log line: what model it trains (``load_base_model``'s choice, in words), and a warning line when
    it is the built-in default (no ``model.name_or_path``): a tiny GPT-2 with random weights, a test model."""
    if cfg.init_from:
        return [f"{mode} training: model {cfg.init_from} (model.init_from)"]
    if cfg.name_or_path not in TINY_PRESETS:
        preset = " (preset)" if is_model_preset(cfg.name_or_path) else ""
        return [f"{mode} training: model {cfg.name_or_path}{preset}"]
    line = f"{mode} training: model {cfg.name_or_path} (tiny preset: random weights, built from a config)"
    if cfg.name_or_path != ModelConfig.name_or_path or cfg.tiny:
        return [line]
    return [
        line,
        f"warning: {cfg.name_or_path} is the built-in default model (what runs when model.name_or_path is "
        "not set): 2 layers with random weights, meant for tests; set model.name_or_path to a Hugging Face "
        "model name, a local folder or the preset smollm2-135m to train a real model",
    ]


def load_base_model(cfg: ModelConfig, tokenizer, *, seed: int = 0, max_positions: int = 1024):
    """The starting weights: a dpolab checkpoint (``init_from``), a tiny preset, or ``from_pretrained``."""
    if cfg.init_from:
        model = load_saved_model(cfg.init_from, tokenizer, dtype=cfg.dtype)
        if quantization_config(cfg) is not None:  # quantise the loaded weights through a saved copy
            model = _quantize_via_folder(model, cfg)
    elif cfg.name_or_path in TINY_PRESETS:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(cfg.name_or_path, tokenizer, cfg.tiny, max_positions))
        model.to(DTYPES[cfg.dtype])
        if quantization_config(cfg) is not None:
            model = _quantize_via_folder(model, cfg)
    else:
        model = _from_pretrained(cfg.name_or_path, cfg)
    if not cfg.dropout:
        disable_dropout(model)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _quantize_via_folder(model, cfg: ModelConfig):
    """A model built in memory (a tiny preset, a dpolab checkpoint), reloaded quantised from a temporary folder."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dpolab-quant-") as tmp:
        model.save_pretrained(tmp)
        return _from_pretrained(
            tmp,
            ModelConfig(
                name_or_path=tmp, dtype=cfg.dtype, load_in_4bit=cfg.load_in_4bit, load_in_8bit=cfg.load_in_8bit
            ),
        )


def apply_lora(model, lora: LoraConfig):
    """Wrap ``model`` with fresh LoRA adapters; only adapter weights are trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    target = lora.target_modules
    if target == "all-linear" and is_gpt2_like(model):
        target = ["c_attn", "c_proj", "c_fc"]  # GPT-2 uses Conv1D, which 'all-linear' would skip
    pcfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target,
        task_type="CAUSAL_LM",
        fan_in_fan_out=is_gpt2_like(model),
    )
    with known_warnings_silenced():  # transformers' deprecation note when peft wraps the model
        return get_peft_model(model, pcfg)


def is_gpt2_like(model) -> bool:
    """GPT-2 stores its linear layers as Conv1D (transposed weights): LoRA needs ``fan_in_fan_out`` there."""
    return getattr(model.config, "model_type", "") == "gpt2"


def load_policy(cfg: ModelConfig, lora: LoraConfig, tokenizer, *, seed: int = 0, max_positions: int = 1024):
    model = load_base_model(cfg, tokenizer, seed=seed, max_positions=max_positions)
    if lora.enabled:
        model = apply_lora(model, lora)
    return model


def count_parameters(model) -> Dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


# -- saving and reloading dpolab outputs ------------------------------------------------------------


def save_model(model, tokenizer, path: os.PathLike, model_cfg: Optional[ModelConfig] = None, seed: int = 0) -> None:
    """HF format: the full model, or (LoRA) the adapter plus ``dpolab_model.json`` naming its base."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if model_cfg is not None:
        fields = {
            k: getattr(model_cfg, k) for k in ("name_or_path", "tokenizer", "dtype", "gguf_file", "tiny", "init_from")
        }
        # a base named by a local folder is written absolute (a relative one would be read against whatever folder
        # the reader runs in) and, under "relative", also from this folder (found again after the tree is moved)
        relative = {}
        for k in _PATH_FIELDS:
            v = fields.get(k)
            if isinstance(v, str) and v and Path(v).exists():
                fields[k] = os.path.abspath(v)
                with contextlib.suppress(ValueError):  # no relative path between two drives (Windows)
                    relative[k] = os.path.relpath(fields[k], path.resolve())
        meta = {"model": fields, "seed": seed, "max_positions": _max_positions(model)}
        if relative:
            meta["relative"] = relative
        (path / MODEL_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")


_PATH_FIELDS = ("name_or_path", "tokenizer", "init_from")  # the fields of a saved model's base that may be folders


def saved_base_fields(meta: Dict[str, Any], folder: Path) -> Dict[str, Any]:
    """The base a saved adapter names: each folder as written, or, when that is gone (the run tree was moved or the
    path was relative to another working folder), the same folder found from ``folder`` (the adapter's own)."""
    fields = dict(meta["model"])
    for k, rel in (meta.get("relative") or {}).items():
        if isinstance(fields.get(k), str) and not Path(fields[k]).exists() and (folder / rel).exists():
            fields[k] = str(folder / rel)
    return fields


def _max_positions(model) -> Optional[int]:
    c = model.config
    return getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)


def load_saved_model(path: os.PathLike, tokenizer=None, dtype: str = "float32"):
    """Reload a model saved by dpolab: a full HF model, or an adapter merged into its recorded base (a model
    preset name is its cached folder)."""
    path = Path(_resolve(str(path)))
    if not path.exists():
        raise ModelLoadError(f"checkpoint folder not found: {path}")
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        meta_file = path / MODEL_META
        if not meta_file.exists():
            raise ModelLoadError(f"{path} holds a LoRA adapter but no {MODEL_META} naming its base model")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        # the adapter merges into full-precision base weights (a QLoRA run's base is reloaded unquantised)
        base_cfg = ModelConfig(**{**saved_base_fields(meta, path), "load_in_4bit": False, "load_in_8bit": False})
        tok = tokenizer if tokenizer is not None else load_tokenizer(base_cfg)
        base = load_base_model(base_cfg, tok, seed=meta.get("seed", 0), max_positions=meta.get("max_positions") or 1024)
        with known_warnings_silenced():
            return PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    return _from_pretrained(str(path), ModelConfig(name_or_path=str(path), dtype=dtype))


def enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations in backward (non-reentrant checkpointing: exact gradients, works with
    frozen inputs such as LoRA's and with custom 4D masks). A wrapped model (PEFT) is switched on its base."""
    inner = unwrap(model, peft=True)
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise ModelLoadError(
            f"train.gradient_checkpointing: {type(inner).__name__} does not support gradient "
            f"checkpointing in transformers; set train.gradient_checkpointing=false"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5 (the older name is deprecated there)
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
