"""Supervised fine-tuning: token-mean negative log-likelihood of the completions."""

from __future__ import annotations

from typing import Any, List, Optional

from ...config import DataConfig
from ...data.batches import RowBatch
from ...data.collate import collate_sft_fast
from ...data.types import TokenizedSFT
from ...models.fastpath import logps_for_batch
from ..data_kinds import PREFERENCE_PAIRS, DataKind
from ..errors import TrainError
from .base import MicroResult, Objective, RunContext


class SFTRows(DataKind):
    """Prompt + completion rows; with ``data.sft_from_pairs`` the responses of preference pairs (the chosen ones, or
    'both': chosen and rejected, each after its prompt; held-out rows: the chosen ones)."""

    name = "sft"
    pairs_setting = "data.sft_from_pairs"

    def load(self, source, tokenizer, **options):
        from ...data.dataset import load_sft_data

        return load_sft_data(source, tokenizer, **options)

    def derived_from(self, data: DataConfig) -> Optional[DataKind]:
        return PREFERENCE_PAIRS if data.sft_from_pairs else None

    def convert(self, items: List[Any], data: DataConfig, split: str) -> List[TokenizedSFT]:
        return pairs_to_sft(items, data.sft_from_pairs if split == "train" else "chosen")


def pairs_to_sft(pairs, which: str) -> List[TokenizedSFT]:
    """SFT rows from tokenised pairs: the chosen responses, or ('both') chosen and rejected, each after its prompt."""
    rows = [TokenizedSFT(p.prompt_ids, p.chosen_ids, dict(p.meta)) for p in pairs]
    if which == "both":
        rows += [TokenizedSFT(p.prompt_ids, p.rejected_ids, dict(p.meta)) for p in pairs]
    return rows


class SFTObjective(Objective):
    name = "sft"
    data_kind = SFTRows()

    def length(self, example) -> int:
        return len(example.prompt_ids) + len(example.completion_ids)

    def units(self, example) -> int:
        return len(example.completion_ids)  # completion tokens, EOS included: the loss is a token mean

    def collate(self, items: List[Any], pad_id: int, layout: str, hidden_size: Optional[int]) -> RowBatch:
        return collate_sft_fast(items, pad_id, layout, hidden_size=hidden_size)

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        if run.cfg.eval.probes:
            raise TrainError(
                "eval.probes needs a policy trained on preference pairs; it is not available in train.mode=sft"
            )

    def forward(self, model, batch: RowBatch, *, training: bool, state: Any = None) -> MicroResult:
        with self.autocast():
            # the fastest exact path for the batch layout (models/fastpath.py)
            lp = logps_for_batch(model, batch, logits=self.cfg.train.logits)
        nll_sum = -lp.sums.sum()
        tokens = lp.counts.sum()
        nll = (nll_sum / tokens.clamp_min(1)).detach()
        return MicroResult(nll_sum, float(tokens), {"loss": nll, "nll": nll})
