"""The key of a precomputed table: everything its log-probs depend on, so a cached table is never reused wrongly."""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Dict, Sequence

import torch
from torch import Tensor

from ..unwrap import unwrap

FULL_HASH_BYTES = 1 << 30  # models up to 1 GiB of weights are hashed in full; larger ones by an even stride
CACHE_FORMAT = 4  # 4: the shared-length sums of LD-DPO are stored too
TABLE_COLUMNS = ("chosen", "rejected", "chosen_shared", "rejected_shared")


def _tensor_bytes(t: Tensor, stride: int) -> bytes:
    flat = t.detach().reshape(-1)
    if stride > 1:
        flat = flat[::stride].clone(memory_format=torch.contiguous_format)
    return flat.contiguous().view(torch.uint8).cpu().numpy().tobytes()


def weights_fingerprint(model, *, skip: Callable[[str], bool] = lambda name: False) -> str:
    """A hash of a model's weights: names, shapes, dtypes and raw bytes (not sums, which miss permutations and
    rounding). Above :data:`FULL_HASH_BYTES` in all, every tensor is read at an even element stride so the hash
    costs about that many bytes. Tensors on the ``meta`` device have no content; only their metadata is hashed."""
    state = {k: v for k, v in unwrap(model).state_dict().items() if not skip(k)}
    total = sum(v.numel() * v.element_size() for v in state.values())
    stride = max(1, -(-total // FULL_HASH_BYTES))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"stride={stride}".encode())
    with torch.no_grad():
        for name, t in state.items():
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            if t.device.type != "meta" and t.numel():
                h.update(_tensor_bytes(t, stride))
    return h.hexdigest()


def data_fingerprint(pairs: Sequence) -> str:
    """A hash of the token ids of every pair, in order (the table is looked up by position)."""
    h = hashlib.blake2b(digest_size=16)
    for p in pairs:
        h.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()


def _is_lora_weight(name: str) -> bool:
    return "lora_" in name or "modules_to_save" in name


def table_key(source: str, model, data: Sequence, *, bf16: bool) -> Dict[str, str]:
    """Everything a table's log-probs depend on, as strings (the table's file name is a hash of this dict):
    ``source`` is the kind that scores it (``copy``, ``adapter``: the LoRA weights are left out, ``separate``)."""
    inner = unwrap(model)
    base = unwrap(inner, peft=True)
    dtypes = sorted({str(p.dtype) for p in inner.parameters()})
    return {
        "format": str(CACHE_FORMAT),
        "source": source,
        "weights": weights_fingerprint(inner, skip=_is_lora_weight if source == "adapter" else (lambda n: False)),
        "dtype": ",".join(dtypes),
        "autocast": "bf16" if bf16 else "none",
        "attention": str(getattr(getattr(base, "config", None), "_attn_implementation", None)),
        "data": data_fingerprint(data),
        "columns": ",".join(TABLE_COLUMNS),
    }


def key_digest(key: Dict[str, str]) -> str:
    """The hash of a key that names the table's file (``ref-<digest>.pt``)."""
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12).hexdigest()
