"""The reference model pi_ref, in one of four forms that give the same log-probs:

- ``copy``: a frozen copy of the starting policy (full fine-tuning);
- ``adapter``: the policy with its LoRA adapters disabled (no second copy in memory);
- ``precomputed``: log-probs computed once before training and cached on disk under a key of the model's
  starting weights and the tokenised data, then looked up by example index (the reference model is freed);
- ``none``: for reference-free losses (SimPO, ORPO, SFT).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor

from .fastpath import logps_for_batch
from .logprobs import split_pairs


def weights_fingerprint(model) -> str:
    """A cheap hash of a model's weights (per-tensor sums and shapes), stable across processes."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(f"{p.double().sum().item():.10e}".encode() if p.is_floating_point() else str(int(p.sum())).encode())
    return h.hexdigest()[:16]


def data_fingerprint(pairs: Sequence) -> str:
    h = hashlib.sha1()
    for p in pairs:
        h.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()[:16]


class Reference:
    """Gives reference log-probs (per-sequence sums) for a collated preference batch."""

    def __init__(self, mode: str, policy, *, separate_model=None):
        self.mode = mode
        self.policy = policy
        self.model = None
        self.table: Optional[Dict[str, Tensor]] = None  # precomputed: name -> [N]
        if mode == "copy":
            self.model = separate_model if separate_model is not None else copy.deepcopy(_unwrap(policy))
            self.model.eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        elif mode == "adapter":
            if not hasattr(_unwrap(policy), "disable_adapter"):
                raise ValueError("reference.mode 'adapter' needs a LoRA policy (lora.enabled: true)")
        elif mode not in ("precomputed", "none"):
            raise ValueError(f"unknown reference mode '{mode}'")

    # -- live computation --------------------------------------------------------------------
    def _live_logps(self, batch, autocast=nullcontext) -> tuple[Tensor, Tensor]:
        n = batch["num_pairs"]
        with torch.no_grad(), autocast():
            if self.mode == "adapter":
                pol = _unwrap(self.policy)
                was_training = pol.training
                pol.eval()
                with pol.disable_adapter():
                    lp = logps_for_batch(pol, batch)
                pol.train(was_training)
            else:
                lp = logps_for_batch(self.model, batch)
        return split_pairs(lp.sums, n)

    def logps(self, batch, autocast=nullcontext) -> Optional[tuple[Tensor, Tensor]]:
        if self.mode == "none":
            return None
        if self.mode == "precomputed":
            if self.table is None:
                raise RuntimeError("precomputed reference used before precompute()")
            idx = batch["index"].cpu()
            return self.table["chosen"][idx].to(batch["input_ids"].device), self.table["rejected"][idx].to(batch["input_ids"].device)
        return self._live_logps(batch, autocast)

    # -- precomputation ----------------------------------------------------------------------
    def precompute(self, source_mode: str, batches: Iterable[dict], n: int, cache_file: Optional[Path],
                   progress: Callable = lambda it, **kw: it, autocast=nullcontext) -> None:
        """Fill the table by running the reference over every example, before any training step.

        ``source_mode`` 'adapter' scores with the LoRA adapters disabled; otherwise the policy itself is scored
        (at this point it still holds the starting weights, so no copy is made). ``batches`` must carry ``index``.
        The table is saved to ``cache_file`` atomically and reused when present.
        """
        if cache_file is not None and cache_file.exists():
            table = torch.load(cache_file)
            if table["chosen"].shape[0] == n:
                self.table = table
                return
        pol = _unwrap(self.policy)
        was_training = pol.training
        pol.eval()
        adapter_off = pol.disable_adapter if source_mode == "adapter" else nullcontext
        table = {"chosen": torch.full((n,), float("nan")), "rejected": torch.full((n,), float("nan"))}
        with torch.no_grad(), adapter_off():
            for batch in progress(batches, desc="reference log-probs"):
                with autocast():
                    lp = logps_for_batch(pol, batch)
                c, r = split_pairs(lp.sums, batch["num_pairs"])
                table["chosen"][batch["index"].cpu()] = c.float().cpu()
                table["rejected"][batch["index"].cpu()] = r.float().cpu()
        pol.train(was_training)
        if torch.isnan(table["chosen"]).any():
            raise RuntimeError("precomputed reference table has gaps: some examples were never scored")
        self.table = table
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            torch.save(table, tmp)
            os.replace(tmp, cache_file)


def _unwrap(model):
    return getattr(model, "module", model)
