"""Fast, exact response log-probs: packed / prefix-shared layouts and the LM head applied only where needed.

``batch_logps(model, batch, layout=..., logits=...)`` returns the same :class:`SequenceLogps` as the plain
``response_logps(model, input_ids, attention_mask, loss_mask)`` (same shapes, same values to float rounding),
computed with less work:

- ``layout``: ``padded`` runs the padded [2B, T] batch; ``packed`` / ``prefix`` run ``batch.packed`` (built by
  ``dpolab.data.collate.collate_preference_fast``; see ``dpolab.data.packing``) with ``position_ids`` and a 4D
  attention mask (sdpa: boolean; eager: additive float).
- ``logits``: ``full`` asks the model for all logits [R, L, V] (the plain way); ``response`` runs the model with
  ``logits_to_keep=1`` and ``output_hidden_states=True``, takes the final hidden states and applies the model's
  own output-embedding module (tied weights, bias and LoRA on lm_head included) only at the positions that predict
  a response token, in tiles of ``chunk_rows`` rows (default :func:`head_chunk_rows`, from the device's memory
  budget), each tile going through ``log_softmax`` in float32. The float32 [N, T, V] logits are never
  materialised. A plain ``nn.Linear`` head (tied or not, under autocast or not, with Gemma's soft-cap) goes through
  a fused head (:class:`_FusedHeadLogp`): under ``response`` it keeps each tile's float32 exp for backward (the
  fastest: [N, V] float32 in all); under ``response-recompute`` it keeps only the hidden states, targets and per-row
  logsumexp and recomputes each tile's logits in backward, so one [rows, V] tile is alive at a time (one more head
  matmul per tile). Under bf16 compute (``train.bf16``) the fused head of ``response`` (and any forward without
  gradients) takes each tile's softmax in bf16 instead, with no float32 [rows, V] tile (:func:`_bf16_tile`:
  log-probs within 2^-8 nats of the float32 tile's; ``BF16_SOFTMAX`` switches it off), and casts the head's weight
  once per step (kept from forward for backward; a frozen head's cast is kept across steps, :mod:`.lowp`).
  Any other head (LoRA on the head) is called as a module per tile; ``response-recompute``
  checkpoints those tiles too (autograd keeps only the tile's hidden states; one more head matmul).

With ``with_sq=True`` every path also returns, per scored token, ``log sum_v p_v^2`` of the next-token distribution
(WPO's weight), from the same float32 tile, without gradient; nothing of it is computed otherwise.

Attention windows are built into the 4D mask: with ``config.sliding_window`` set, a key is visible to a query only
when their *positions* (not their indices in the packed row) are less than the window apart, as transformers'
own masks do on the padded batch. Where ``config.layer_types`` mixes ``full_attention`` and ``sliding_attention``
layers the model gets a dict of masks ``{layer type: mask}`` (the form transformers' own ``generate`` passes); a
model with other layer types (chunked, linear/recurrent, ...) keeps the padded layout. A window the code cannot
express (e.g. GPT-Neo's ``window_size``, applied by index) keeps the padded layout for each batch whose longest unit
does not fit in it. Logit soft-capping is applied by the response path for the models known to apply it
(``_SOFTCAP_MODELS``: Gemma-2, Gemma-3); any other logit post-processing keeps the full logits.

Because "the final hidden state followed by the output embeddings gives the logits" is not true of every model
(logit soft-capping, logit scaling, models that do not accept ``logits_to_keep`` or 4D masks), each model is probed
once, on a short synthetic batch in eval mode without gradients, and a fast path that does not reproduce the plain
logits there falls back to the plain path with a one-line warning (``fast_path_report(model)`` tells which). The
probe batch is short, so what it could not observe is checked from the config (above), and for the probe the
model's sliding window is shortened to ``PROBE_WINDOW`` tokens, shorter than the probe's sequences, so that the probe
does see the window. Exactness is decided in float32 without autocast (a property of the masks and the layout); with
low-precision weights (no float32 is possible) and again under autocast (a sanity check), the tolerance is that
dtype's rounding (``_mismatch``). The probe is cached per (layout, logits, autocast state). An out-of-memory error
in the probe is raised, never taken as "unsupported".
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..data.batches import Batch, PairBatch
from ..errors import is_oom
from .logprobs import SequenceLogps, gather_logps, log_sum_sq, response_logps, scatter_tokens
from .lowp import head_weight
from .unwrap import unwrap

LOGITS_MODES = ("response", "response-recompute", "full")
_SOFTCAP_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
# models whose ``forward`` applies ``cap * tanh(logits / cap)`` with ``config.final_logit_softcapping`` after the head
_SOFTCAP_MODELS = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")
_MASK_ATTN = ("sdpa", "eager")
_LAYER_TYPES = ("full_attention", "sliding_attention")  # the layer types a 4D mask (one per type) expresses
_OTHER_WINDOWS = ("window_size", "attention_window", "attention_chunk_size")  # windows we do not build into masks
PROBE_WINDOW = 3  # the sliding window the probe uses (its sequences are longer), see the module docstring


def _attn_impl(hf) -> Optional[str]:
    cfg = getattr(hf, "config", None)
    return getattr(cfg, "_attn_implementation", None) if cfg is not None else None


def _four_d(mask: Tensor, hf, dtype: torch.dtype) -> Tensor:
    if _attn_impl(hf) == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def _text_config(hf):
    cfg = hf.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _windows(hf) -> Union[str, Dict[str, Optional[int]]]:
    """The window of each attention layer type the model uses, ``{layer type: window or None}`` (a single entry
    ``{"*": window}`` when every layer is alike), or the reason a 4D mask cannot express its layers."""
    cfg = _text_config(hf)
    window = getattr(cfg, "sliding_window", None)
    window = window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None
    types = getattr(cfg, "layer_types", None)
    if not types:
        return {"*": window}  # Mistral, Phi-3, Mixtral, Starcoder2: one mask for every layer
    other = sorted(set(types) - set(_LAYER_TYPES))
    if other:
        return (
            f"config.layer_types has {', '.join(map(repr, other))} layers, which a 4D attention mask does not describe"
        )
    kinds = set(types)
    if len(kinds) == 1:
        return {"*": window if "sliding_attention" in kinds else None}
    return {"full_attention": None, "sliding_attention": window}


def _windowed(mask: Tensor, position_ids: Tensor, window: Optional[int]) -> Tensor:
    """``mask`` [R, 1, L, L] restricted to keys fewer than ``window`` positions before the query (transformers'
    ``sliding_window_overlay``: kv > q - window, on positions, which continue across a prefix unit's branches)."""
    if not window:
        return mask
    near = (position_ids[:, :, None] - position_ids[:, None, :]) < window  # [R, L(query), L(key)]
    return mask & near[:, None]


def _attention_mask(hf, pk: Dict[str, Tensor], dtype: torch.dtype) -> Union[Tensor, Dict[str, Tensor]]:
    """The 4D mask(s) to pass for the packed layout ``pk``: one tensor, or ``{layer type: mask}`` for mixed layers."""
    windows = _windows(hf)
    if isinstance(windows, str):
        raise ValueError(windows)
    masks = {k: _four_d(_windowed(pk["attn_mask"], pk["position_ids"], w), hf, dtype) for k, w in windows.items()}
    return masks["*"] if "*" in masks else masks


def _other_window(hf) -> Optional[int]:
    """A window in the config that the masks above do not build in (so the model applies it, by index), if any."""
    cfg = _text_config(hf)
    found = []
    for a in _OTHER_WINDOWS:
        v = getattr(cfg, a, None)
        vals = v if isinstance(v, (list, tuple)) else [v]
        found += [x for x in vals if isinstance(x, int) and not isinstance(x, bool) and x > 0]
    return min(found) if found else None


def _longest_unit(pk: Dict[str, Tensor]) -> int:
    """The longest span (in row indices) from a query back to the first key it sees: the longest unit."""
    m = pk["attn_mask"][:, 0]
    first = m.to(torch.uint8).argmax(-1)  # first visible key of each query
    return int((torch.arange(m.shape[-1], device=m.device) - first).max().item()) + 1


def _logit_softcap(hf) -> Optional[float]:
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return float(cap) if cap and type(hf).__name__ in _SOFTCAP_MODELS else None


def _param_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _score_indices(batch: Batch) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(src, tgt, seq, col) for the padded layout, from ``loss_mask``."""
    ids, loss_mask = batch.input_ids, batch.loss_mask
    t = ids.shape[1]
    rows, cols = loss_mask[:, 1:].bool().nonzero(as_tuple=True)
    return rows * t + cols, ids[:, 1:][rows, cols], rows, cols


# -- the LM head applied at the scored positions only ------------------------------------------------------------
TILE_FLOATS = 3  # float32 [rows, V] buffers alive at once in a head tile (logits, exp / grad, the dtype copy)
_TILE_BUDGET_CPU = 256 << 20  # bytes of a CPU tile: small next to a CPU run's RAM
_TILE_BUDGET_MAX = 1 << 30  # bytes: the most an accelerator's tile takes
_MIN_ROWS = 256  # the matmul-efficiency floor: fewer rows re-read the [V, H] weight too often per unit of arithmetic


def head_chunk_rows(vocab: int, device: Union[torch.device, str, None] = None) -> int:
    """Rows of one LM-head tile, from the memory budget: as many as fit ``TILE_FLOATS`` float32 [rows, vocab]
    buffers in the device's tile budget (CPU: 256 MiB; an accelerator: 1/64 of its memory, at most 1 GiB), in
    multiples of 64, and never fewer than ``_MIN_ROWS`` (256), below which re-reading the [V, H] weight for every tile
    (four times per forward + backward) costs more than the tile's arithmetic (on CPU, 64-row tiles took 1.6x the
    time of 256-row ones at GPT-2's vocabulary). GPT-2's vocabulary (50257): 384 rows on CPU, 1728 on a GPU with 64
    GiB or more. Per-row results do not depend on it; the weight gradient is summed over tiles in float32."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    budget = _TILE_BUDGET_CPU
    if dev.type == "cuda" and torch.cuda.is_available():
        budget = min(_TILE_BUDGET_MAX, torch.cuda.get_device_properties(dev).total_memory // 64)
    rows = budget // (TILE_FLOATS * 4 * max(1, vocab)) // 64 * 64
    return max(_MIN_ROWS, rows)


def _compute_dtype_of(h: Tensor) -> torch.dtype:
    """What ``F.linear`` on ``h`` computes in here: the autocast dtype when autocast is on, else ``h``'s dtype."""
    amp = _autocast_dtype(h.device)
    return amp if amp is not None and h.is_floating_point() else h.dtype


def _tile_logits(
    hc: Tensor, w: Tensor, b: Optional[Tensor], softcap: Optional[float]
) -> Tuple[Tensor, Optional[Tensor]]:
    """(the chunk's logits in float32, ``tanh`` of the soft-capped logits or None), computed as the model does:
    ``F.linear`` in the compute dtype, then ``cap * tanh(logits / cap)`` in that dtype."""
    y = torch.nn.functional.linear(hc, w, b)
    if softcap is None:
        return y.float(), None
    t = torch.tanh(y / softcap)
    return (t * softcap).float(), t


def _accumulate(acc: Optional[Tensor], a: Tensor, b: Tensor) -> Tensor:
    """``acc + a @ b`` in float32 (``acc`` None: start it); the product in ``a``'s dtype, as the plain path's."""
    if acc is None:
        return (a @ b).float()
    if a.dtype == torch.float32:
        return acc.addmm_(a, b)
    return acc.add_((a @ b).float())


BF16_SOFTMAX = True  # the fused head's bf16 softmax under bf16 autocast (False: float32 tiles, as before issue 33)


def _bf16_softmax(cd: torch.dtype, softcap: Optional[float], with_sq: bool) -> bool:
    """Whether the fused head takes its softmax in bf16 (:func:`_bf16_tile`): under bf16 compute, without a soft-cap
    or WPO's ``log sum p^2`` (those keep the float32 tile), unless ``BF16_SOFTMAX`` is off."""
    return BF16_SOFTMAX and cd == torch.bfloat16 and softcap is None and not with_sq


def _bf16_tile(hc: Tensor, w: Tensor, b: Optional[Tensor], tc: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(softmax in bf16, logsumexp, log-prob of the target) of one tile, without a float32 [rows, V] tile.

    The logits ``z`` are bf16 either way (the plain path's too). ``softmax`` reads them once, computing in float32
    and rounding each probability once to bf16; the logsumexp is ``max z - log p_max`` (``p_max`` >= 1/V, so it
    never underflows): exact but for ``p_max``'s rounding, at most 2^-8 relative, i.e. at most 0.004 nats per token
    (the family matrix's bf16 tolerance is 8 * 2^-8 * (1 + |log p|) >= 0.03). The target's log-prob is
    ``z_target - logsumexp`` in float32."""
    z = torch.nn.functional.linear(hc, w, b)
    p = torch.softmax(z, -1)
    lse = z.amax(-1).float() - p.amax(-1).float().log()
    return p, lse, z.gather(1, tc[:, None]).squeeze(1).float() - lse


def _bf16_backward(g, h, w, tgt, kept, rows, needs, weight, bias) -> tuple:
    """(grad h, grad W, grad b) from the kept bf16 softmax tiles: ``g * (onehot - p)`` in bf16 (one rounding
    more than a float32 tile cast to bf16 for the matmuls), all tiles in one [N, V] buffer, so each gradient is
    one matrix product, accumulated in float32 inside it (the tiles' weight gradients are not rounded apart)."""
    need_h, need_w, need_b = needs
    cd = w.dtype
    buf = torch.empty(h.shape[0], w.shape[0], dtype=cd, device=h.device)
    for i, s in enumerate(range(0, h.shape[0], rows)):
        gc, tc = g[s : s + rows].to(cd), tgt[s : s + rows]
        tile = torch.mul(kept[i], gc.neg()[:, None], out=buf[s : s + rows])
        at = (torch.arange(tc.shape[0], device=tc.device), tc)  # the target of each row (scatter_add_ on bf16
        tile[at] = tile[at] + gc  # copies the whole tile to float32 and back on CPU)
    gh = (buf @ w).to(h.dtype) if need_h else None
    gw = (buf.t() @ h.to(cd)).to(weight.dtype) if need_w else None
    gb = (buf.new_ones(1, buf.shape[0]) @ buf).squeeze(0).to(bias.dtype) if need_b else None  # no float32 copy
    return gh, gw, gb


class _FusedHeadLogp(torch.autograd.Function):
    """``log_softmax(cap(h @ W.T + b))[target]`` for every row of ``h``, tile by tile (``chunk_rows`` rows), and with
    ``with_sq`` the detached ``log sum_v p_v^2`` of each row from the same tile; the same math as ``F.linear`` ->
    (soft-cap) -> ``log_softmax`` -> ``gather`` of the plain path.

    ``keep`` (``train.logits=response``): each tile's exp is kept for backward (float32 [N, V] in all: the fastest,
    three matmuls per tile). Otherwise (``response-recompute``), two-pass: only ``h``, the targets and each row's
    logsumexp are kept; the backward recomputes each tile's logits and turns them into that tile's gradient
    (``g * (onehot - softmax)``), so at most one [rows, V] tile is alive at a time, at the cost of a fourth matmul
    per tile. A batch that fits in one tile keeps its exp either way (no more memory than the tile budget). The
    weight (and bias) gradients are summed over tiles in float32."""

    @staticmethod
    def forward(ctx, h, weight, bias, tgt, chunk_rows, softcap, with_sq, keep_all=False):
        cd = _compute_dtype_of(h)
        w = head_weight(weight, cd)
        b = bias.to(cd) if bias is not None else None
        n = h.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=h.device)
        lse = torch.empty(n, dtype=torch.float32, device=h.device)
        sq = torch.empty(n, dtype=torch.float32, device=h.device) if with_sq else None
        kept = []
        keep = keep_all or n <= chunk_rows
        grad = any(ctx.needs_input_grad[:3])
        ctx.lowp = _bf16_softmax(cd, softcap, with_sq) and (keep or not grad)
        for s in range(0, n, chunk_rows):
            hc, tc = h[s : s + chunk_rows].to(cd), tgt[s : s + chunk_rows]
            if ctx.lowp:  # the tile's softmax in bf16 (no float32 [rows, V] tile), kept for backward
                p, lse[s : s + chunk_rows], out[s : s + chunk_rows] = _bf16_tile(hc, w, b, tc)
                kept += [p] if grad else []
                continue
            z, t = _tile_logits(hc, w, b, softcap)
            zt = z.gather(1, tc[:, None]).squeeze(1)
            m = z.amax(-1, keepdim=True)
            e = z.sub_(m).exp_()
            tot = e.sum(-1, keepdim=True)
            lse[s : s + chunk_rows] = (m + tot.log()).squeeze(1)
            out[s : s + chunk_rows] = zt - lse[s : s + chunk_rows]
            if keep:
                kept += [e, tot, t]
            if sq is not None:  # log sum_v (e_v / tot)^2, from the same tile, no gradient
                sq[s : s + chunk_rows] = torch.linalg.vector_norm(e, dim=-1).log() * 2 - 2 * tot.squeeze(1).log()
        if grad:  # keep: the cast weight too (one cast per step, not two)
            ctx.save_for_backward(h, weight, bias, tgt, lse, w if keep and w is not weight else None, *kept)
        ctx.chunk_rows, ctx.softcap, ctx.cd = chunk_rows, softcap, cd
        if sq is None:
            return out
        ctx.mark_non_differentiable(sq)
        return out, sq

    @staticmethod
    def backward(ctx, g, *_):
        h, weight, bias, tgt, lse, w, *kept = ctx.saved_tensors
        cd, rows, cap = ctx.cd, ctx.chunk_rows, ctx.softcap
        w = head_weight(weight, cd) if w is None else w
        b = bias.to(cd) if bias is not None else None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.lowp:
            return _bf16_backward(g, h, w, tgt, kept, rows, ctx.needs_input_grad[:3], weight, bias) + (None,) * 5
        gh = torch.empty_like(h) if need_h else None
        gw = gb = None
        for i, s in enumerate(range(0, h.shape[0], rows)):
            hc, tc, gc = h[s : s + rows].to(cd), tgt[s : s + rows], g[s : s + rows].float()
            if kept:  # the tile's exp, kept by forward: softmax = e / tot
                e, tot, t = kept[3 * i : 3 * i + 3]
                grad = e * ((-gc[:, None]) / tot)  # not in place: the saved exp may be used again (retain_graph)
            else:  # recompute the tile: softmax = exp(z - lse)
                z, t = _tile_logits(hc, w, b, cap)
                grad = z.sub_(lse[s : s + rows, None]).exp_().mul_(-gc[:, None])
            grad.scatter_add_(1, tc[:, None], gc[:, None])
            if cap is not None:  # d/dy [cap tanh(y / cap)] = 1 - tanh^2
                grad.mul_(1 - t.float().square())
            grad = grad.to(cd)
            if need_h:
                gh[s : s + rows] = (grad @ w).to(h.dtype)
            if need_w:
                gw = _accumulate(gw, grad.t(), hc)
            if need_b:
                part = grad.sum(0, dtype=torch.float32)
                gb = part if gb is None else gb.add_(part)
        return (
            gh,
            gw.to(weight.dtype) if gw is not None else None,
            gb.to(bias.dtype) if gb is not None else None,
            None,
            None,
            None,
            None,
            None,
        )


def _fusable(head, h: Tensor) -> bool:
    """A plain ``nn.Linear`` head (tied or not, with or without bias, under autocast or not): the fused head."""
    return type(head) is torch.nn.Linear and h.is_floating_point()


def _head_logps(
    head,
    h: Tensor,
    tgt: Tensor,
    chunk_rows: int,
    recompute: bool,
    softcap: Optional[float] = None,
    with_sq: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """(log-probs of ``tgt`` [N], and with ``with_sq`` the detached ``log sum_v p_v^2`` [N]) from hidden states
    ``h`` [N, H] through the output embeddings ``head``, ``chunk_rows`` rows at a time."""
    if _fusable(head, h):  # response: keep each tile's exp; response-recompute: recompute the tiles in backward
        got = _FusedHeadLogp.apply(h, head.weight, head.bias, tgt, chunk_rows, softcap, with_sq, not recompute)
        return (got[0], got[1]) if with_sq else (got, None)

    def one(hc: Tensor, tc: Tensor):
        z = head(hc)  # anything else (LoRA on the head): the module, then the model's own steps
        if softcap is not None:
            z = torch.tanh(z / softcap) * softcap
        lsm = z.float().log_softmax(-1)
        picked = lsm.gather(1, tc[:, None]).squeeze(1)
        return (picked, log_sum_sq(lsm)) if with_sq else (picked, None)

    out, sqs = [], []
    for s in range(0, h.shape[0], chunk_rows):
        hc, tc = h[s : s + chunk_rows], tgt[s : s + chunk_rows]
        if recompute and torch.is_grad_enabled() and hc.requires_grad:
            picked, sq = checkpoint(one, hc, tc, use_reentrant=False)
        else:
            picked, sq = one(hc, tc)
        out.append(picked)
        sqs.append(sq)
    if not out:
        empty = h.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_sq else None)
    return torch.cat(out), (torch.cat(sqs) if with_sq else None)


def _gather_full(
    logits: Tensor, src: Tensor, tgt: Tensor, chunk_rows: int, with_sq: bool = False
) -> Tuple[Tensor, Optional[Tensor]]:
    flat = logits.reshape(-1, logits.shape[-1])
    out, sqs = [], []
    for s in range(0, src.shape[0], chunk_rows):
        lsm = flat[src[s : s + chunk_rows]].float().log_softmax(-1)
        out.append(lsm.gather(1, tgt[s : s + chunk_rows, None]).squeeze(1))
        if with_sq:
            sqs.append(log_sum_sq(lsm))
    if not out:
        empty = logits.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_sq else None)
    return torch.cat(out), (torch.cat(sqs) if with_sq else None)


def _raw_logps(
    model, batch: Batch, layout: str, logits: str, chunk_rows: Optional[int], with_sq: bool = False
) -> SequenceLogps:
    """The fast computation itself, without the support check (``chunk_rows`` None: :func:`head_chunk_rows`)."""
    hf = unwrap(model, peft=True)
    ids, loss_mask = batch.input_ids, batch.loss_mask
    if layout == "padded":
        inputs = dict(input_ids=ids, attention_mask=batch.attention_mask)
        src, tgt, seq, col = _score_indices(batch)
    else:
        pk = batch.packed
        inputs = dict(
            input_ids=pk["input_ids"],
            position_ids=pk["position_ids"],
            attention_mask=_attention_mask(hf, pk, _param_dtype(hf)),
        )
        src, tgt, seq, col = pk["score_src"], pk["score_tgt"], pk["score_seq"], pk["score_col"]
    rows = chunk_rows or head_chunk_rows(_text_config(hf).vocab_size, ids.device)
    if logits == "full":
        out = model(**inputs, use_cache=False)
        picked, sq = _gather_full(out.logits, src, tgt, rows, with_sq)
    else:
        out = model(**inputs, use_cache=False, logits_to_keep=1, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, src)
        picked, sq = _head_logps(
            hf.get_output_embeddings(),
            h,
            tgt,
            rows,
            recompute=(logits == "response-recompute"),
            softcap=_logit_softcap(hf),
            with_sq=with_sq,
        )
    mask = loss_mask[:, 1:].bool()
    token_logps = scatter_tokens(mask.shape, (seq, col), picked)
    return SequenceLogps(
        sums=token_logps.sum(-1),
        counts=mask.sum(-1),
        token_logps=token_logps,
        token_mask=mask,
        token_log_sum_sq=scatter_tokens(mask.shape, (seq, col), sq) if sq is not None else None,
    )


# -- support check: each (model, layout, logits) is probed once ------------------------------------------------


def _probe_batch(vocab: int, device) -> Dict[str, PairBatch]:
    """Three short synthetic pairs as a padded [2B, T] batch (chosen rows, then rejected rows) plus, per layout, the
    same sequences in the ``batch.packed`` format of ``dpolab.data.packing``, every unit in one row (so the probe
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
    padded = {
        "input_ids": torch.zeros((2 * b, width), dtype=torch.long),
        "attention_mask": torch.zeros((2 * b, width), dtype=torch.long),
        "loss_mask": torch.zeros((2 * b, width), dtype=torch.bool),
    }
    for i, (p, x) in enumerate(seqs):
        padded["input_ids"][i, : len(p) + len(x)] = torch.tensor(p + x)
        padded["attention_mask"][i, : len(p) + len(x)] = 1
        padded["loss_mask"][i, len(p) : len(p) + len(x)] = True
    units = {
        "packed": [(p, [(x, i)]) for i, (p, x) in enumerate(seqs)],
        "prefix": [(p, [(c, i), (r, b + i)]) for i, (p, c, r) in enumerate(pairs)],
    }
    batch = {layout: PairBatch(**padded, num_pairs=b, packed=_one_row(u)) for layout, u in units.items()}
    batch["padded"] = PairBatch(**padded, num_pairs=b)
    return {layout: one.to(device) for layout, one in batch.items()}


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
    mask = (
        (un[:, None] == un[None, :]) & ((sg[None, :] == 0) | (sg[:, None] == sg[None, :])) & (q[None, :] <= q[:, None])
    )
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return {
        "input_ids": as_long([toks]),
        "position_ids": as_long([pos]),
        "attn_mask": mask[None, None],
        "score_src": as_long(src),
        "score_tgt": as_long(tgt),
        "score_seq": as_long(seq),
        "score_col": as_long(col),
    }


def _unsupported_reason(model, layout: str, logits: str) -> Optional[str]:
    """What the config says (the probe's short batch cannot show it) against the fast path, or None."""
    hf = unwrap(model, peft=True)
    cfg = getattr(hf, "config", None)
    if cfg is None or not hasattr(hf, "get_output_embeddings") or hf.get_output_embeddings() is None:
        return "the model has no output embeddings"
    if logits != "full":
        for a in _SOFTCAP_ATTRS:
            if a == "final_logit_softcapping" and _logit_softcap(hf) is not None:
                continue  # applied by _head_logps as the model does
            v = getattr(cfg, a, None) or getattr(getattr(cfg, "text_config", None), a, None)
            if v not in (None, 0, 1, 1.0, False):
                return f"config.{a}={v} post-processes the logits"
    if layout != "padded":
        if _attn_impl(hf) not in _MASK_ATTN:
            return f"attention implementation '{_attn_impl(hf)}' does not take a 4D mask here"
        windows = _windows(hf)
        if isinstance(windows, str):
            return windows
    return None


def _autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype in force on ``device``'s type, or None."""
    try:
        return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    except RuntimeError:  # a device type without autocast
        return None


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast to ``dtype`` on ``device`` (None: autocast off)."""
    try:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    except RuntimeError:  # a device type without autocast: nothing to switch
        return nullcontext()


def _compute_dtype(hf) -> torch.dtype:
    """The least precise floating dtype among the parameters: what the forward's rounding is made of."""
    dts = {p.dtype for p in hf.parameters() if p.is_floating_point()} or {torch.float32}
    return max(dts, key=lambda d: torch.finfo(d).eps)


def _mismatch(got: Tensor, want: Tensor, dtype: torch.dtype, logit_scale: float = float("inf")) -> Optional[str]:
    """None if the fast path's token log-probs ``got`` match the plain path's ``want``, computed in ``dtype``.

    float32: 1e-4 per token (times the largest |log-p| when above 1), a few hundred times fp32 rounding and far
    below what a wrong mask or position does. Lower precision (bf16/fp16 weights, or under autocast): the plain and
    the fast path round differently (other shapes), by about the dtype's unit roundoff u times the token's logit
    scale; the tolerance is 8 u (1 + min(|log-p|, max |logit|)) per token: bf16 at log-p -10 0.34 (at most), at -2
    0.09, so an error of a few tenths of a nat is caught. NaN in both (NaN weights) counts as equal."""
    d = (got - want).abs()
    fin = torch.isfinite(want)
    if torch.finfo(dtype).eps <= torch.finfo(torch.float32).eps:
        scale = max(1.0, want[fin].abs().max().item()) if fin.any() else 1.0
        tol = torch.full_like(want, 1e-4 * scale)
    else:
        u = torch.finfo(dtype).eps / 2
        tol = 8 * u * (1 + want.abs().clamp(max=logit_scale))
    ok = (d <= tol) | (got == want) | (got.isnan() & want.isnan())
    if ok.all():
        return None
    worst = int((d - tol).nan_to_num(float("inf")).argmax())
    return (
        f"probe mismatch (max |diff| {d.nan_to_num(float('inf')).max().item():.2e}; worst token "
        f"{got.flatten()[worst].item():.4f} vs {want.flatten()[worst].item():.4f}, tolerance "
        f"{tol.flatten()[worst].item():.1e} "
        f"in {str(dtype).replace('torch.', '')})"
    )


@contextmanager
def _probe_window(hf):
    """The model's sliding window shortened to ``PROBE_WINDOW`` for the probe (restored after)."""
    cfg = _text_config(hf)
    w = getattr(cfg, "sliding_window", None)
    short = isinstance(w, int) and not isinstance(w, bool) and w > PROBE_WINDOW
    if short:
        cfg.sliding_window = PROBE_WINDOW
    try:
        yield
    finally:
        if short:
            cfg.sliding_window = w


def _compare_paths(model, b: Batch, layout: str, logits: str, dtype: torch.dtype) -> Optional[str]:
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)  # the plain path
    plain = gather_logps(out.logits, b.input_ids, b.loss_mask)
    scale = out.logits[:, :-1][plain.token_mask].float().abs().max().item()
    got = _raw_logps(model, b, layout, logits, chunk_rows=4).token_logps
    return _mismatch(got, plain.token_logps, dtype, scale)


def _probe(model, layout: str, logits: str, amp: Optional[torch.dtype] = None) -> Optional[str]:
    """None if the fast path reproduces the plain log-probs on a short batch, else the reason it does not:
    without autocast (float32 weights: the exactness check), then, if ``amp``, under ``amp`` autocast."""
    reason = _unsupported_reason(model, layout, logits)
    if reason:
        return reason
    hf = unwrap(model, peft=True)
    dev = next(hf.parameters()).device
    b = _probe_batch(_text_config(hf).vocab_size, dev)[layout]
    was = hf.training
    hf.eval()
    try:
        with torch.no_grad(), _probe_window(hf):
            with _autocast(dev, None):
                bad = _compare_paths(model, b, layout, logits, _compute_dtype(hf))
            if bad is None and amp is not None:
                with _autocast(dev, amp):
                    bad = _compare_paths(model, b, layout, logits, amp)
                bad = bad and f"under {str(amp).replace('torch.', '')} autocast: {bad}"
    except Exception as e:
        if is_oom(e):
            raise
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        hf.train(was)
    return bad


def _report_key(layout: str, logits: str, amp: Optional[torch.dtype]) -> tuple:
    return (layout, logits) if amp is None else (layout, logits, str(amp).replace("torch.", ""))


def _warn_once(hf, key: tuple, reason: Optional[str], what: str) -> None:
    cache = hf.__dict__.setdefault("_dpolab_fastpath", {})
    if key not in cache:
        cache[key] = reason
        if reason:
            warnings.warn(
                f"dpolab fast path {what} is off for {type(hf).__name__}: {reason}; using a slower exact path",
                stacklevel=4,
            )


def _checked(model, layout: str, logits: str) -> bool:
    hf = unwrap(model, peft=True)
    cache = hf.__dict__.setdefault("_dpolab_fastpath", {})
    amp = _autocast_dtype(next(hf.parameters()).device)
    key = _report_key(layout, logits, amp)
    if key not in cache:
        _warn_once(
            hf,
            key,
            _probe(model, layout, logits, amp),
            f"layout={layout} logits={logits}" + (f" (under {key[2]} autocast)" if amp is not None else ""),
        )
    return cache[key] is None


def _window_fits(model, batch: Batch, layout: str) -> bool:
    """False when the model has a window the masks do not build in (``_OTHER_WINDOWS``) and this batch holds a unit
    at least that long (the model would window by row index); said once per model."""
    hf = unwrap(model, peft=True)
    w = _other_window(hf)
    if w is None or _longest_unit(batch.packed) < w:
        return True
    _warn_once(
        hf,
        (layout, "window"),
        f"an attention window of {w} tokens applied by the model itself, shorter than a unit of this batch",
        f"layout={layout} (for batches with units of {w}+ tokens)",
    )
    return False


def fast_path_report(model) -> Dict[tuple, Optional[str]]:
    """Which (layout, logits) combinations were probed on ``model`` and why any was refused (None = in use); keys
    ``(layout, logits)`` without autocast, ``(layout, logits, 'bfloat16')`` under bf16 autocast, and
    ``(layout, 'window')`` when a batch's units were longer than a window the model applies itself."""
    return dict(unwrap(model, peft=True).__dict__.get("_dpolab_fastpath", {}))


def resolve(model, batch: Batch, layout: str, logits: str) -> Tuple[str, str]:
    """The (layout, logits) actually used: the requested one if the batch carries it and the model passed its
    probe, else step down (prefix/packed -> padded; response -> full)."""
    if layout not in ("padded", "packed", "prefix"):
        raise ValueError(f"unknown layout '{layout}'")
    if logits not in LOGITS_MODES:
        raise ValueError(f"unknown logits mode '{logits}'; valid: {', '.join(LOGITS_MODES)}")
    if layout != "padded" and (batch.packed is None or not _window_fits(model, batch, layout)):
        layout = "padded"
    for lay, lg in ((layout, logits), ("padded", logits), (layout, "full")):
        if (lay, lg) == ("padded", "full") or _checked(model, lay, lg):
            return lay, lg
    return "padded", "full"


def batch_logps(
    model,
    batch: Batch,
    *,
    layout: str = "prefix",
    logits: str = "response",
    chunk_rows: Optional[int] = None,
    with_sq: bool = False,
) -> SequenceLogps:
    """Response log-probs of a collated batch, by the fastest exact path available (see the module docstring).

    ``layout='padded', logits='full'`` is exactly the plain ``response_logps``. ``chunk_rows``: rows per LM-head
    tile (None: :func:`head_chunk_rows`). ``with_sq``: also the per-token ``log sum_v p_v^2`` (WPO), from the same
    logits, without gradient (``SequenceLogps.token_log_sum_sq``); nothing of it is computed otherwise.
    """
    layout, logits = resolve(model, batch, layout, logits)
    if (layout, logits) == ("padded", "full"):
        return response_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask, with_sq=with_sq)
    return _raw_logps(model, batch, layout, logits, chunk_rows, with_sq)


def logps_for_batch(model, batch: Batch, *, logits: str = "response", with_sq: bool = False) -> SequenceLogps:
    """``batch_logps`` with the path the batch was collated for ('prefix', which also runs a packed layout, when
    ``batch.packed`` is present, else 'padded') and the run's ``logits`` mode (``train.logits``)."""
    layout = "prefix" if batch.packed is not None else "padded"
    return batch_logps(model, batch, layout=layout, logits=logits, with_sq=with_sq)
