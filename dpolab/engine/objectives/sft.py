"""Supervised fine-tuning: token-mean negative log-likelihood of the completions."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ...data.collate import collate_sft_fast
from ...models.fastpath import logps_for_batch
from ..errors import TrainError
from .base import MicroResult, Objective, RunContext


class SFTObjective(Objective):
    name = "sft"
    data_kind = "sft"

    def length(self, example) -> int:
        return len(example.prompt_ids) + len(example.completion_ids)

    def units(self, example) -> int:
        return len(example.completion_ids)  # completion tokens, EOS included: the loss is a token mean

    def collate(self, items: List[Any], pad_id: int, layout: str, hidden_size: Optional[int]) -> Dict[str, Any]:
        return collate_sft_fast(items, pad_id, layout, hidden_size=hidden_size)

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        if run.cfg.eval.probes:
            raise TrainError("eval.probes needs a policy trained on preference pairs; it is not available in train.mode=sft")

    def forward(self, model, batch: Dict[str, Any], *, training: bool) -> MicroResult:
        with self.autocast():
            lp = logps_for_batch(model, batch)  # fastest exact path for the batch layout (models/fastpath.py)
        nll_sum = -lp.sums.sum()
        tokens = lp.counts.sum()
        nll = (nll_sum / tokens.clamp_min(1)).detach()
        return MicroResult(nll_sum, float(tokens), {"loss": nll, "nll": nll})
