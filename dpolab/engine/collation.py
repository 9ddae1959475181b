"""Batches for the loop: the objective's collator, the run's layout, and the move to the run's device."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..data.batches import Batch
from ..models.unwrap import unwrap


def model_width(model) -> Optional[int]:
    """The hidden size of a (possibly wrapped) Hugging Face model, which sets the packed rows' length."""
    cfg = getattr(unwrap(model, peft=True), "config", None)
    text = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    return getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)


class Collator:
    """``collator(indices, data, offset)`` -> the objective's typed batch of ``data[i]`` on ``device``, carrying
    ``index`` (= i + ``offset``, the position a precomputed reference table looks up). Run settings the objective
    needs to score a batch (``train.logits``) are the objective's, never written into the batch."""

    def __init__(self, objective, pad_id: int, layout: str, width: Optional[int], device: torch.device):
        self.objective, self.pad_id, self.width, self.device = objective, pad_id, width, device
        self.layout = objective.fixed_layout or layout  # same log-probs in every layout; see dpolab/models/fastpath.py

    def __call__(self, indices: List[int], data: Sequence, offset: int = 0) -> Batch:
        batch = self.objective.collate([data[i] for i in indices], self.pad_id, self.layout, self.width)
        return batch.with_index(torch.tensor([i + offset for i in indices], dtype=torch.long)).to(self.device)
