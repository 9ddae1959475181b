"""Low-precision copies of frozen matrix weights, made once instead of at every autocast call.

Autocast casts a float32 weight to bf16 at every ``linear`` / ``addmm`` call, and keeps the cast for the rest of the
autocast region only for leaf tensors that require gradients. A frozen weight (a live reference's, a LoRA policy's
base layers, which the adapter-off reference runs through too) is therefore cast again in every forward, every step,
although it never changes. :func:`keep_frozen_casts` hooks the model's plain matrix layers (``nn.Linear`` and
transformers' GPT-2-style ``Conv1D``): while autocast to a lower-precision dtype is on for the weight's device, a
frozen float weight (and bias) is replaced, for the duration of the layer's forward, by its cast, made once and kept
(made again when the weight changes in place, e.g. TR-DPO's mix or a checkpoint's weights, which move its version
counter, or when its storage is replaced). The cast is the one autocast would make (round to nearest), so the results
are bit-for-bit the same; without autocast (float32 runs, the fast path's exactness probe) nothing is replaced.

Weights that require gradients are never replaced (autocast's own cache serves them within a forward, and their
gradient must reach the float32 weight). The casts live in a table keyed weakly by the parameter, so a deep copy of a
hooked model (the live reference copy) keeps the hooks and makes casts of its own weights.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

_CASTS = WeakIdKeyDictionary()  # parameter -> ((version, storage, dtype), its cast)
_KEPT = WeakIdKeyDictionary()  # the parameters of hooked layers (head_weight uses their kept casts)
_HOOKED = "_dpolab_frozen_casts"  # marks a hooked module (copied along with a deep copy, as its hooks are)
_NAMES = ("weight", "bias")


def _autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    try:
        return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    except RuntimeError:  # a device type without autocast
        return None


def frozen_cast(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``p`` cast to ``dtype`` (detached), from the table when ``p`` has not changed since it was made."""
    key = (p._version, p.data_ptr(), dtype)
    hit = _CASTS.get(p)
    if hit is not None and hit[0] == key:
        return hit[1]
    cast = p.detach().to(dtype)
    _CASTS[p] = (key, cast)
    return cast


def _swap_in(module: torch.nn.Module, args) -> None:
    params = module._parameters
    w = params.get("weight")
    if w is None or w.requires_grad or not w.is_floating_point():
        return
    dtype = _autocast_dtype(w.device)
    if dtype is None or dtype == w.dtype or torch.finfo(dtype).bits >= torch.finfo(w.dtype).bits:
        return
    saved = {}
    for name in _NAMES:
        p = params.get(name)
        if p is not None and not p.requires_grad and p.dtype == w.dtype:
            saved[name] = p
            params[name] = frozen_cast(p, dtype)
    module.__dict__["_dpolab_swapped"] = saved


def _swap_out(module: torch.nn.Module, args, output) -> None:
    saved = module.__dict__.pop("_dpolab_swapped", None)
    if saved:
        module._parameters.update(saved)


def _is_matrix_layer(m: torch.nn.Module) -> bool:
    if type(m) is torch.nn.Linear:
        return True
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return type(m) is Conv1D


def keep_frozen_casts(model: torch.nn.Module) -> int:
    """Hook every plain matrix layer of ``model`` (module docstring); returns how many were hooked now (a layer
    already hooked, e.g. in a deep copy of a hooked model, is left as it is). A model compiled in place
    (``train.compile``) is left alone (hooks that swap weights would break its graphs)."""
    if any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules()):
        return 0
    n = 0
    for m in model.modules():
        if _is_matrix_layer(m) and not m.__dict__.get(_HOOKED):
            m.register_forward_pre_hook(_swap_in)
            m.register_forward_hook(_swap_out, always_call=True)
            m.__dict__[_HOOKED] = True
            n += 1
        if m.__dict__.get(_HOOKED):
            _KEPT.update({p: True for p in m._parameters.values() if p is not None})
    return n


def head_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The LM head's weight in the compute ``dtype``: the kept cast (:func:`frozen_cast`) of a frozen weight of a
    hooked layer (:func:`keep_frozen_casts`), else a fresh cast (a trained weight changes every step)."""
    if weight.dtype == dtype:
        return weight
    if not weight.requires_grad and weight.is_floating_point() and weight in _KEPT:
        return frozen_cast(weight, dtype)
    return weight.to(dtype)
