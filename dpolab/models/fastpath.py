"""Fast, exact response log-probs: packed / prefix-shared layouts and the LM head applied only where needed.

``batch_logps(model, batch, layout=..., logits=...)`` returns the same :class:`SequenceLogps` as the plain
``response_logps(model, input_ids, attention_mask, loss_mask)`` (same shapes, same values to float rounding),
computed with less work:

- ``layout``: ``padded`` runs the padded [2B, T] batch; ``packed`` / ``prefix`` run ``batch["packed"]`` (built by
  ``dpolab.data.collate.collate_preference_fast``; see ``dpolab.data.packing``) with ``position_ids`` and a 4D
  attention mask (sdpa: boolean; eager: additive float).
- ``logits``: ``full`` asks the model for all logits [R, L, V] (the plain way); ``response`` runs the model with
  ``logits_to_keep=1`` and ``output_hidden_states=True``, takes the final hidden states and applies the model's
  own output-embedding module (tied weights, bias and LoRA on lm_head included, because the module itself is
  called) only at the positions that predict a response token, in chunks of ``chunk_rows``, each chunk going
  through ``log_softmax`` in float32. The float32 [N, T, V] logits are never materialised.
  ``response-recompute`` also checkpoints each chunk: autograd keeps only the chunk's hidden states, and the
  chunk's logits are recomputed in the backward pass (least memory; one more head matmul).

Because "the final hidden state followed by the output embeddings gives the logits" is not true of every model
(logit soft-capping, logit scaling, models that do not accept ``logits_to_keep`` or 4D masks), each model is probed
once, on a short synthetic batch in eval mode without gradients, and a fast path that does not reproduce the plain
logits there falls back to the plain path with a one-line warning (``fast_path_report(model)`` tells which).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .logprobs import SequenceLogps, response_logps

LOGITS_MODES = ("response", "response-recompute", "full")
_SOFTCAP_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
_MASK_ATTN = ("sdpa", "eager")


def unwrap_hf(model):
    """The Hugging Face PreTrainedModel inside DDP / Accelerate / peft wrappers."""
    m = model
    while hasattr(m, "module") and isinstance(getattr(m, "module"), torch.nn.Module):
        m = m.module
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m


def _attn_impl(hf) -> Optional[str]:
    cfg = getattr(hf, "config", None)
    return getattr(cfg, "_attn_implementation", None) if cfg is not None else None


def _four_d(mask: Tensor, hf, dtype: torch.dtype) -> Tensor:
    if _attn_impl(hf) == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def _param_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _score_indices(batch: Dict[str, Any]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(src, tgt, seq, col) for the padded layout, from ``loss_mask``."""
    ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    t = ids.shape[1]
    rows, cols = loss_mask[:, 1:].bool().nonzero(as_tuple=True)
    return rows * t + cols, ids[:, 1:][rows, cols], rows, cols


class _LinearLogp(torch.autograd.Function):
    """log_softmax(h @ W.T + b)[target] for one chunk, with the softmax kept (in place of the logits) for backward:
    the same math as ``F.linear`` -> ``log_softmax`` -> ``gather``, with fewer passes over the [c, V] tensor."""

    @staticmethod
    def forward(ctx, h, weight, bias, tgt):
        z = torch.nn.functional.linear(h, weight, bias).float()
        zt = z.gather(1, tgt[:, None]).squeeze(1)
        m = z.amax(-1, keepdim=True)
        z.sub_(m).exp_()
        s = z.sum(-1, keepdim=True)
        out = zt - (m + s.log()).squeeze(1)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(h, weight, bias, tgt, z, s)
        return out

    @staticmethod
    def backward(ctx, g):
        h, weight, bias, tgt, e, s = ctx.saved_tensors
        grad = e.mul_((-g[:, None]) / s)  # -g * softmax, in place of the saved exp
        grad.scatter_add_(1, tgt[:, None], g[:, None].to(grad.dtype))
        grad = grad.to(h.dtype)
        gh = grad @ weight.to(h.dtype) if ctx.needs_input_grad[0] else None
        gw = (grad.t() @ h).to(weight.dtype) if ctx.needs_input_grad[1] else None
        gb = grad.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return gh, gw, gb, None


def _plain_linear(head) -> bool:
    return type(head) is torch.nn.Linear and not torch.is_autocast_enabled()


def _head_logps(head, h: Tensor, tgt: Tensor, chunk_rows: int, recompute: bool) -> Tensor:
    def one(hc: Tensor, tc: Tensor) -> Tensor:
        if _plain_linear(head):  # a plain nn.Linear (tied or not): fused; anything else (LoRA, autocast): the module
            return _LinearLogp.apply(hc, head.weight, head.bias, tc)
        return head(hc).float().log_softmax(-1).gather(1, tc[:, None]).squeeze(1)

    out = []
    for s in range(0, h.shape[0], chunk_rows):
        hc, tc = h[s: s + chunk_rows], tgt[s: s + chunk_rows]
        if recompute and torch.is_grad_enabled() and hc.requires_grad:
            out.append(checkpoint(one, hc, tc, use_reentrant=False))
        else:
            out.append(one(hc, tc))
    return torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)


def _gather_full(logits: Tensor, src: Tensor, tgt: Tensor, chunk_rows: int) -> Tensor:
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for s in range(0, src.shape[0], chunk_rows):
        sel = flat[src[s: s + chunk_rows]].float()
        out.append(sel.log_softmax(-1).gather(1, tgt[s: s + chunk_rows, None]).squeeze(1))
    return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)


def _raw_logps(model, batch: Dict[str, Any], layout: str, logits: str, chunk_rows: int) -> SequenceLogps:
    """The fast computation itself, without the support check."""
    hf = unwrap_hf(model)
    ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    if layout == "padded":
        inputs = dict(input_ids=ids, attention_mask=batch["attention_mask"])
        src, tgt, seq, col = _score_indices(batch)
    else:
        pk = batch["packed"]
        inputs = dict(input_ids=pk["input_ids"], position_ids=pk["position_ids"],
                      attention_mask=_four_d(pk["attn_mask"], hf, _param_dtype(hf)))
        src, tgt, seq, col = pk["score_src"], pk["score_tgt"], pk["score_seq"], pk["score_col"]
    if logits == "full":
        out = model(**inputs, use_cache=False)
        picked = _gather_full(out.logits, src, tgt, chunk_rows)
    else:
        out = model(**inputs, use_cache=False, logits_to_keep=1, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, src)
        picked = _head_logps(hf.get_output_embeddings(), h, tgt, chunk_rows, recompute=(logits == "response-recompute"))
    mask = loss_mask[:, 1:].bool()
    token_logps = torch.zeros(mask.shape, dtype=torch.float32, device=ids.device).index_put((seq, col), picked)
    return SequenceLogps(sums=token_logps.sum(-1), counts=mask.sum(-1), token_logps=token_logps, token_mask=mask)


# -- support check: each (model, layout, logits) is probed once ------------------------------------------------


def _probe_batch(vocab: int, device) -> Dict[str, Any]:
    """Three short synthetic pairs as a padded [2B, T] batch (chosen rows, then rejected rows) plus, per layout, the
    same sequences in the ``batch["packed"]`` format of ``dpolab.data.packing``, every unit in one row (so the probe
    also covers several units sharing a row). Built here, from token lists, so the model layer does not depend on
    the data layer; the data layer's own layouts are checked against the plain path by the fast-path tests."""
    g = torch.Generator().manual_seed(1234)
    hi = max(2, min(vocab, 200))

    def ids(n):
        return torch.randint(1, hi, (n,), generator=g).tolist()

    pairs = [(ids(5), ids(4), ids(6)), (ids(9), ids(3), ids(2)), (ids(2), ids(7), ids(5))]
    b = len(pairs)
    seqs = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    width = max(len(p) + len(x) for p, x in seqs)
    padded = {"input_ids": torch.zeros((2 * b, width), dtype=torch.long),
              "attention_mask": torch.zeros((2 * b, width), dtype=torch.long),
              "loss_mask": torch.zeros((2 * b, width), dtype=torch.bool)}
    for i, (p, x) in enumerate(seqs):
        padded["input_ids"][i, : len(p) + len(x)] = torch.tensor(p + x)
        padded["attention_mask"][i, : len(p) + len(x)] = 1
        padded["loss_mask"][i, len(p): len(p) + len(x)] = True
    units = {"packed": [(p, [(x, i)]) for i, (p, x) in enumerate(seqs)],
             "prefix": [(p, [(c, i), (r, b + i)]) for i, (p, c, r) in enumerate(pairs)]}
    batch = {layout: {**padded, "packed": _one_row(u)} for layout, u in units.items()}
    batch["padded"] = padded
    return {k: _to(v, device) for k, v in batch.items()}


def _one_row(units) -> Dict[str, Tensor]:
    """Units ``(prompt, [(response, sequence index), ...])`` packed into one row: each response branch continues the
    prompt's positions and sees the prompt and its own earlier tokens only."""
    toks, pos, unit, seg = [], [], [], []
    src, tgt, seq, col = [], [], [], []
    for u, (prompt, branches) in enumerate(units):
        base, n_p = len(toks), len(prompt)
        toks += prompt
        pos += range(n_p)
        unit += [u] * n_p
        seg += [0] * n_p
        for branch, (resp, s) in enumerate(branches, start=1):
            start = len(toks)
            for k, t in enumerate(resp):
                src.append(base + n_p - 1 if k == 0 else start + k - 1)
                tgt.append(t)
                seq.append(s)
                col.append(n_p + k - 1)
            toks += resp
            pos += range(n_p, n_p + len(resp))
            unit += [u] * len(resp)
            seg += [branch] * len(resp)
    q, un, sg = torch.arange(len(toks)), torch.tensor(unit), torch.tensor(seg)
    mask = (un[:, None] == un[None, :]) & ((sg[None, :] == 0) | (sg[:, None] == sg[None, :])) & (q[None, :] <= q[:, None])
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return {"input_ids": as_long([toks]), "position_ids": as_long([pos]), "attn_mask": mask[None, None],
            "score_src": as_long(src), "score_tgt": as_long(tgt), "score_seq": as_long(seq), "score_col": as_long(col)}


def _to(batch, device):
    return {k: (v.to(device) if isinstance(v, Tensor) else _to(v, device) if isinstance(v, dict) else v)
            for k, v in batch.items()}


def _unsupported_reason(model, layout: str, logits: str) -> Optional[str]:
    hf = unwrap_hf(model)
    cfg = getattr(hf, "config", None)
    if cfg is None or not hasattr(hf, "get_output_embeddings") or hf.get_output_embeddings() is None:
        return "the model has no output embeddings"
    if logits != "full":
        for a in _SOFTCAP_ATTRS:
            v = getattr(cfg, a, None) or getattr(getattr(cfg, "text_config", None), a, None)
            if v not in (None, 0, 1, 1.0, False):
                return f"config.{a}={v} post-processes the logits"
    if layout != "padded" and _attn_impl(hf) not in _MASK_ATTN:
        return f"attention implementation '{_attn_impl(hf)}' does not take a 4D mask here"
    return None


def _probe(model, layout: str, logits: str) -> Optional[str]:
    """None if the fast path reproduces the plain log-probs on a short batch, else the reason it does not."""
    reason = _unsupported_reason(model, layout, logits)
    if reason:
        return reason
    hf = unwrap_hf(model)
    dev = next(hf.parameters()).device
    b = _probe_batch(hf.config.get_text_config().vocab_size if hasattr(hf.config, "get_text_config")
                     else hf.config.vocab_size, dev)[layout]
    was = hf.training
    hf.eval()
    try:
        with torch.no_grad():
            want = response_logps(model, b["input_ids"], b["attention_mask"], b["loss_mask"]).token_logps
            got = _raw_logps(model, b, layout, logits, chunk_rows=4).token_logps
    except Exception as e:  # noqa: BLE001 - any failure means: use the plain path
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        hf.train(was)
    tol = 1e-4 if _param_dtype(hf) == torch.float32 else 5e-2
    scale = max(1.0, want[torch.isfinite(want)].abs().max().item() if torch.isfinite(want).any() else 1.0)
    if not torch.isclose(got, want, rtol=0, atol=tol * scale, equal_nan=True).all():  # NaN weights: NaN in both
        return f"probe mismatch (max |diff| {(got - want).abs().nan_to_num(float('inf')).max().item():.2e})"
    return None


def _checked(model, layout: str, logits: str) -> bool:
    hf = unwrap_hf(model)
    cache = hf.__dict__.setdefault("_dpolab_fastpath", {})
    key = (layout, logits)
    if key not in cache:
        reason = _probe(model, layout, logits)
        cache[key] = reason
        if reason:
            warnings.warn(f"dpolab fast path layout={layout} logits={logits} is off for "
                          f"{type(hf).__name__}: {reason}; using a slower exact path", stacklevel=3)
    return cache[key] is None


def fast_path_report(model) -> Dict[Tuple[str, str], Optional[str]]:
    """Which (layout, logits) combinations were probed on ``model`` and why any was refused (None = in use)."""
    return dict(unwrap_hf(model).__dict__.get("_dpolab_fastpath", {}))


def resolve(model, batch: Dict[str, Any], layout: str, logits: str) -> Tuple[str, str]:
    """The (layout, logits) actually used: the requested one if the batch carries it and the model passed its
    probe, else step down (prefix/packed -> padded; response -> full)."""
    if layout not in ("padded", "packed", "prefix"):
        raise ValueError(f"unknown layout '{layout}'")
    if logits not in LOGITS_MODES:
        raise ValueError(f"unknown logits mode '{logits}'; valid: {', '.join(LOGITS_MODES)}")
    if layout != "padded" and "packed" not in batch:
        layout = "padded"
    for lay, lg in ((layout, logits), ("padded", logits), (layout, "full")):
        if (lay, lg) == ("padded", "full") or _checked(model, lay, lg):
            return lay, lg
    return "padded", "full"


def batch_logps(model, batch: Dict[str, Any], *, layout: str = "prefix", logits: str = "response",
                chunk_rows: int = 1024) -> SequenceLogps:
    """Response log-probs of a collated batch, by the fastest exact path available (see the module docstring).

    ``layout='padded', logits='full'`` is exactly the plain ``response_logps``.
    """
    layout, logits = resolve(model, batch, layout, logits)
    if (layout, logits) == ("padded", "full"):
        return response_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    return _raw_logps(model, batch, layout, logits, chunk_rows)


def logps_for_batch(model, batch: Dict[str, Any]) -> SequenceLogps:
    """``batch_logps`` with the path the batch was collated for: ``batch["layout"]`` (default: 'prefix' or 'packed'
    when ``batch["packed"]`` is present, else 'padded') and ``batch["logits"]`` (default 'response')."""
    layout = batch.get("layout") or ("prefix" if "packed" in batch else "padded")
    return batch_logps(model, batch, layout=layout, logits=batch.get("logits") or "response")
