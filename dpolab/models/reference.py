"""The reference policy pi_ref: one provider owns every decision about it.

Forms that give the same log-probs:

- ``copy``: a frozen copy of the starting policy (full fine-tuning);
- ``adapter``: the policy with its LoRA adapters disabled (no second copy in memory);
- ``separate``: another model (``reference.name_or_path``);
- ``precomputed``: log-probs computed once before training from one of the sources above and cached on disk under
  a key of the source's weights (their raw bytes), dtype, autocast, attention implementation, the token ids and the
  table's columns (``TABLE_COLUMNS``), then looked up by example index (no reference model stays in memory).

LD-DPO (:mod:`dpolab.losses.length`) needs more than each response's sum: a live reference gives its per-token
log-probs (:meth:`Reference.split_logps`); the table stores, for each response, the sum over the pair's first
``min(|y_w|, |y_l|)`` response tokens (``chosen_shared`` / ``rejected_shared``; the rest is the sum minus it).

:func:`build_reference` applies the ``auto`` rule, builds the live model or the table, and says how a resumed run
gets exactly the same reference back (:meth:`Reference.record`, stored in each checkpoint). It is called after the
policy has been placed on its device (``accelerator.prepare``) and places every model it holds, and every batch it
scores, on that ``device``.
"""
from __future__ import annotations

import copy
import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor

from .. import atomic
from ..errors import UserError
from ..progress import progress_bar
from ..losses.length import shared_tail
from .fastpath import logps_for_batch
from .logprobs import SequenceLogps, split_pairs

FULL_HASH_BYTES = 1 << 30  # models up to 1 GiB of weights are hashed in full; larger ones by an even stride
CACHE_FORMAT = 4  # 4: the shared-length sums of LD-DPO are stored too
TABLE_COLUMNS = ("chosen", "rejected", "chosen_shared", "rejected_shared")


class ReferenceSetupError(UserError, ValueError):
    """The reference cannot be built as configured (wrong mode for the model, a resumed run's table gone astray)."""


# -- cache key --------------------------------------------------------------------------------------------------
def _tensor_bytes(t: Tensor, stride: int) -> bytes:
    flat = t.detach().reshape(-1)
    if stride > 1:
        flat = flat[::stride].clone(memory_format=torch.contiguous_format)
    return flat.contiguous().view(torch.uint8).cpu().numpy().tobytes()


def weights_fingerprint(model, *, skip: Callable[[str], bool] = lambda name: False) -> str:
    """A hash of a model's weights: names, shapes, dtypes and raw bytes (not sums, which miss permutations and
    rounding). Above :data:`FULL_HASH_BYTES` in all, every tensor is read at an even element stride so the hash
    costs about that many bytes. Tensors on the ``meta`` device have no content; only their metadata is hashed."""
    state = {k: v for k, v in _unwrap(model).state_dict().items() if not skip(k)}
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


def cache_key(source: str, model, data: Sequence, *, bf16: bool) -> Dict[str, str]:
    """Everything the reference log-probs depend on, as strings (the cache file name is a hash of this dict)."""
    inner = _unwrap(model)
    base = getattr(inner, "get_base_model", lambda: inner)()
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


def _key_digest(key: Dict[str, str]) -> str:
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12).hexdigest()


# -- the reference ----------------------------------------------------------------------------------------------
class Reference:
    """Gives reference log-probs (per-sequence sums of response tokens) for a collated preference batch.

    ``mode`` is how they are produced: ``copy`` / ``separate`` (``model`` is a frozen model), ``adapter`` (the
    policy with adapters disabled) or ``precomputed`` (``table`` looked up by ``batch['index']``)."""

    def __init__(self, mode: str, *, model=None, policy=None, table: Optional[Dict[str, Tensor]] = None,
                 cache_file: Optional[Path] = None, key: Optional[Dict[str, str]] = None):
        self.mode = mode
        self.model = model
        self.policy = policy
        self.table = table
        self.cache_file = cache_file
        self.key = key
        if model is not None:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
        if mode == "adapter" and not hasattr(_unwrap(policy), "disable_adapter"):
            raise ReferenceSetupError("reference.mode=adapter needs a LoRA policy (lora.enabled=true); use copy or precomputed")

    def logps(self, batch: Dict[str, Any], autocast: Callable = nullcontext) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) reference log-probs [B] of the batch's pairs."""
        if self.mode == "precomputed":
            return self._lookup(batch, "chosen"), self._lookup(batch, "rejected")
        return split_pairs(self._live(batch, autocast).sums, batch["num_pairs"])

    def split_logps(self, batch: Dict[str, Any], autocast: Callable = nullcontext) -> Dict[str, Tensor]:
        """What LD-DPO needs of the reference, as :class:`~dpolab.losses.PreferenceOutputs` fields: the sums
        (``ref_{chosen,rejected}_logps``) and a live reference's per-token log-probs (``ref_*_token_logps``, laid out
        like the policy's) or the table's shared-length sums (``ref_*_shared_logps``)."""
        n = batch["num_pairs"]
        if self.mode == "precomputed":
            self.check_split()
            return dict(ref_chosen_logps=self._lookup(batch, "chosen"), ref_rejected_logps=self._lookup(batch, "rejected"),
                        ref_chosen_shared_logps=self._lookup(batch, "chosen_shared"),
                        ref_rejected_shared_logps=self._lookup(batch, "rejected_shared"))
        lp = self._live(batch, autocast)
        (c, r), (tc, tr) = split_pairs(lp.sums, n), split_pairs(lp.token_logps, n)
        return dict(ref_chosen_logps=c, ref_rejected_logps=r, ref_chosen_token_logps=tc, ref_rejected_token_logps=tr)

    def check_split(self) -> None:
        """Raise when this reference cannot give :meth:`split_logps` (a table written before it stored them)."""
        missing = [c for c in TABLE_COLUMNS if self.mode == "precomputed" and c not in self.table]
        if missing:
            raise ReferenceSetupError(f"the precomputed reference table {self.cache_file} has no {', '.join(missing)} "
                                      f"column (written by an older dpolab), which LD-DPO needs; start a new run")

    def _lookup(self, batch: Dict[str, Any], column: str) -> Tensor:
        return self.table[column][batch["index"].cpu()].to(batch["input_ids"].device)

    def _live(self, batch: Dict[str, Any], autocast: Callable) -> SequenceLogps:
        with torch.no_grad(), autocast():
            if self.mode == "adapter":
                return _adapter_off_logps(self.policy, batch)
            return logps_for_batch(self.model, batch)

    @torch.no_grad()
    def mix_toward(self, policy, alpha: float) -> None:
        """TR-DPO's update of a live frozen copy: ref <- alpha * policy + (1 - alpha) * ref, parameter by parameter
        (alpha = 1: the reference becomes the policy)."""
        if self.mode != "copy":
            raise ReferenceSetupError(f"reference.sync_every (TR-DPO) needs a live frozen copy (reference.mode=copy); "
                                      f"this run's reference is '{self.mode}'")
        ref, pol = dict(self.model.named_parameters()), dict(_unwrap(policy).named_parameters())
        if ref.keys() != pol.keys():
            raise ReferenceSetupError("reference.sync_every: the reference and the policy have different parameters")
        for name, p in ref.items():
            p.mul_(1.0 - alpha).add_(pol[name].detach().to(p.dtype), alpha=alpha)

    def record(self) -> Dict[str, Any]:
        """What a checkpoint stores so a resumed run gets exactly this reference back."""
        rec: Dict[str, Any] = {"mode": self.mode}
        if self.mode == "precomputed":
            rec.update(cache_file=str(self.cache_file) if self.cache_file else None, key=self.key)
        return rec


def _adapter_off_logps(policy, batch):
    pol = _unwrap(policy)
    was_training = pol.training
    pol.eval()
    try:
        with pol.disable_adapter():
            return logps_for_batch(pol, batch)
    finally:
        pol.train(was_training)


def _unwrap(model):
    return getattr(model, "module", model)


# -- building it ------------------------------------------------------------------------------------------------
@dataclass
class ReferenceRequest:
    """What the engine knows when it asks for a reference.

    ``mode``: auto | copy | adapter | precomputed (``reference.mode``); ``separate``: another model's path or None;
    ``lora``: the policy has LoRA adapters; ``live_examples`` / ``once_examples``: how many examples a live reference
    would score over the whole run, and how many precomputing scores (the ``auto`` rule compares them);
    ``cache_dir``: where tables are kept; ``bf16``: bf16 autocast is on."""

    mode: str
    separate: Optional[str]
    lora: bool
    live_examples: int
    once_examples: int
    cache_dir: Path
    bf16: bool = False


@dataclass
class ReferenceTools:
    """How the provider reaches the rest of the run without depending on it.

    ``collate(indices, data)`` makes a preference batch of ``data[i]`` (carrying ``index`` = position in ``data``),
    already on ``device``; ``load_start()`` rebuilds the policy's starting weights (a resumed full fine-tuning run);
    ``load_separate()`` loads ``reference.name_or_path``; ``main_first`` is a context in which the main process goes
    first (it writes the cache, the others then read it); ``batch_starts``: the indices of ``data`` where the table's
    batching starts afresh (the engine gives the first held-out example's, so the table scores the held-out pairs in
    the evaluation's own batches: same padding and packing, so at step 0 the live policy reproduces the table bit
    for bit wherever the same batch gives the same numbers, whatever the dtype); ``progress(iterable or None, **tqdm
    options)`` makes the
    run's progress bars (:func:`dpolab.progress.progress_bar`, off by default)."""

    device: torch.device
    collate: Callable[[List[int], Sequence], Dict[str, Any]]
    load_start: Callable[[], Any]
    load_separate: Callable[[], Any]
    batch_size: int = 16
    autocast: Callable = nullcontext
    log: Callable[[str], None] = lambda s: None
    progress: Callable = partial(progress_bar, enabled=False)
    main_first: Callable = nullcontext
    batch_starts: Sequence[int] = (0,)


def choose_mode(req: ReferenceRequest) -> str:
    """The form of the reference. ``auto`` precomputes when that scores no more examples than a live reference would
    over the run (about one epoch or more), which also frees the reference's memory; else it stays live."""
    live = "separate" if req.separate else ("adapter" if req.lora else "copy")
    if req.mode == "auto":
        return "precomputed" if req.live_examples >= req.once_examples else live
    if req.mode == "precomputed":
        return "precomputed"
    if req.mode == "adapter" and not req.lora:
        raise ReferenceSetupError("reference.mode=adapter needs a LoRA policy (lora.enabled=true); use copy or precomputed")
    return "separate" if req.separate else req.mode


def build_reference(req: ReferenceRequest, policy, data: Sequence, tools: ReferenceTools, *, resuming: bool = False,
                    record: Optional[Dict[str, Any]] = None) -> Reference:
    """The run's reference, every model of it on ``tools.device``.

    ``policy`` is the prepared policy (on its device). ``data`` is every example the run will score (train then
    eval), which a precomputed table covers. ``resuming``: the policy already holds a checkpoint's weights, so a
    copy of the starting weights is rebuilt rather than copied. ``record`` is the :meth:`Reference.record` stored in
    that checkpoint: the same form is kept, and a precomputed run loads exactly the table file recorded there (it is
    recomputed from the starting weights, with a notice, if that file is gone or does not match its key)."""
    mode = record["mode"] if record else choose_mode(req)
    if req.mode == "auto" and not record:
        tools.log(f"reference: {'log-probs precomputed once' if mode == 'precomputed' else 'live ' + mode} "
                  f"(reference.mode=auto; set reference.mode=copy, adapter or precomputed to choose)")
    if mode == "adapter":
        return Reference("adapter", policy=policy)
    if mode in ("copy", "separate"):
        if mode == "separate":
            model = tools.load_separate()
        elif resuming:  # the policy already holds trained weights: rebuild the starting ones
            model = tools.load_start()
        else:
            model = copy.deepcopy(_unwrap(policy))
        return Reference(mode, model=model.to(tools.device))
    if mode != "precomputed":
        raise ReferenceSetupError(f"unknown reference mode '{mode}'")
    return _precomputed(req, policy, data, tools, resuming, record or {})


def _source(req: ReferenceRequest, policy, tools: ReferenceTools, resuming: bool):
    """(source name, model to score with, whether adapters must be off). A resumed full fine-tuning run rebuilds
    the starting weights (the policy has moved); an adapter run disables the adapters of the policy itself."""
    if req.separate:
        return "separate", tools.load_separate().to(tools.device), False
    if req.lora:
        return "adapter", policy, True
    if resuming:
        return "copy", tools.load_start().to(tools.device), False
    return "copy", policy, False


def _precomputed(req: ReferenceRequest, policy, data: Sequence, tools: ReferenceTools, resuming: bool,
                 record: Dict[str, Any]) -> Reference:
    recorded_file, recorded_key = record.get("cache_file"), record.get("key")
    if recorded_file and recorded_key:
        table = _load_table(Path(recorded_file), recorded_key, tools.log)
        if table is not None:
            return Reference("precomputed", table=table, cache_file=Path(recorded_file), key=recorded_key)
        if not Path(recorded_file).exists():
            tools.log(f"reference: the table recorded in the checkpoint ({recorded_file}) is gone; recomputing it "
                      f"from the starting weights")
    name, model, adapter_off = _source(req, policy, tools, resuming)
    key = cache_key(name, model, data, bf16=req.bf16)
    if recorded_key and key != recorded_key:
        changed = sorted(k for k in key if key[k] != recorded_key.get(k))
        raise ReferenceSetupError(f"cannot resume: the reference has changed since the run started ({', '.join(changed)} "
                                  f"differ from the checkpoint's record); start a new run or restore the original files")
    cache_file = Path(recorded_file) if recorded_file else req.cache_dir / f"ref-{_key_digest(key)}.pt"
    with tools.main_first():  # the main process computes and writes the table; the others then read it
        table = _load_table(cache_file, key, tools.log if not recorded_file else (lambda m: None))  # said above
        if table is None:
            table = _score_all(model, adapter_off, data, tools)
            _save_table(cache_file, key, table)
    return Reference("precomputed", table=table, cache_file=cache_file, key=key)


def _table_digest(table: Dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in TABLE_COLUMNS:
        if name in table:  # a table of an older format has the first two only
            h.update(table[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_table(path: Path, key: Dict[str, str], table: Dict[str, Tensor]) -> None:
    atomic.torch_save({"key": key, "sha256": _table_digest(table), **table}, path)


def _load_table(path: Path, key: Dict[str, str], log: Callable[[str], None] = lambda s: None) -> Optional[Dict[str, Tensor]]:
    """The table in ``path`` if it was written under exactly ``key`` and its values match the checksum stored with
    them; None (with a notice for a file that is there but unusable) otherwise."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, weights_only=True)
        table = {"chosen": saved["chosen"], "rejected": saved["rejected"]}
        table.update({c: saved[c] for c in TABLE_COLUMNS[2:] if c in saved})  # absent in a resumed older run's table
        problem = ("it was written for other weights, dtype, data or settings" if saved.get("key") != key else
                   "its values do not match their checksum" if saved.get("sha256") != _table_digest(table) else None)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is recomputed, not trusted
        problem = f"it cannot be read ({type(e).__name__})"
    if problem:
        log(f"reference: not using the cached table {path}: {problem}; recomputing it")
        return None
    return table


def _score_all(model, adapter_off: bool, data: Sequence, tools: ReferenceTools) -> Dict[str, Tensor]:
    n = len(data)
    table = {c: torch.full((n,), float("nan")) for c in TABLE_COLUMNS}
    pol = _unwrap(model)
    was_training = pol.training
    pol.eval()
    off = pol.disable_adapter if adapter_off else nullcontext
    batches: Iterable = (tools.collate(idx, data) for idx in table_batches(n, tools.batch_size, tools.batch_starts))
    bar = tools.progress(None, desc="reference log-probs", total=n, unit=" pairs", dynamic_ncols=True)  # pairs/s
    try:
        with torch.no_grad(), off():
            for batch in batches:
                with tools.autocast():
                    lp = logps_for_batch(pol, batch)
                idx = batch["index"].cpu()
                for name, values in _table_rows(lp, batch["num_pairs"]).items():
                    table[name][idx] = values.float().cpu()
                bar.update(len(idx))
    finally:
        bar.close()
        pol.train(was_training)
    if any(torch.isnan(v).any() for v in table.values()):
        raise RuntimeError("precomputed reference table has gaps: some examples were never scored")
    return table


def table_batches(n: int, batch_size: int, starts: Sequence[int] = (0,)) -> List[List[int]]:
    """The index batches a table is scored in: consecutive runs of ``batch_size`` that start afresh at each of
    ``starts`` (a segment [start, next start) is batched like a dataset of its own, as evaluation batches it)."""
    edges = sorted({0, n, *(s for s in starts if 0 < s < n)})
    return [list(range(i, min(i + batch_size, end))) for start, end in zip(edges, edges[1:])
            for i in range(start, end, batch_size)]


def _table_rows(lp: SequenceLogps, n: int) -> Dict[str, Tensor]:
    """A batch's table columns: each response's sum, and its sum over the pair's shared length min(|y_w|, |y_l|)."""
    (c, r), (tc, tr), (mc, mr) = split_pairs(lp.sums, n), split_pairs(lp.token_logps, n), split_pairs(lp.token_mask, n)
    shared = torch.minimum(mc.sum(-1), mr.sum(-1))
    return {"chosen": c, "rejected": r, "chosen_shared": shared_tail(tc, mc, shared)[0],
            "rejected_shared": shared_tail(tr, mr, shared)[0]}
