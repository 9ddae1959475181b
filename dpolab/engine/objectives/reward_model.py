"""Reward-model training: a scalar head on the backbone, Bradley-Terry loss on preference pairs.

``-log sigma(r_w - r_l)`` plus ``rm.center_weight * (r_w + r_l)^2`` (TRL's ``center_rewards_coefficient``). The final
save is a plain ``*ForSequenceClassification`` model (LoRA adapters merged); see :mod:`dpolab.rewards.model`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from ...data.batches import PairBatch
from ...data.collate import collate_preference_fast
from ...models.logprobs import split_pairs
from ...rewards.model import load_reward_model, merged_for_saving, reward_metrics, sequence_rewards
from .base import MicroResult, Objective, RunContext, accuracy_postfix


class RewardModelObjective(Objective):
    name = "rm"
    fixed_layout = "padded"  # one scalar per sequence: no prefix sharing or packing

    def collate(self, items: List[Any], pad_id: int, layout: str, hidden_size: Optional[int]) -> PairBatch:
        return collate_preference_fast(items, pad_id, layout, hidden_size=hidden_size)

    def load_model(self, tokenizer, *, seed: int, max_positions: int):
        if self.cfg.model.load_in_4bit or self.cfg.model.load_in_8bit:
            from ...config import ConfigError

            raise ConfigError("model.load_in_4bit / load_in_8bit are not supported for reward models (train.mode=rm)")
        return load_reward_model(self.cfg.model, self.cfg.lora, tokenizer, seed=seed, max_positions=max_positions)

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        if run.cfg.eval.probes:
            from ..errors import TrainError

            raise TrainError(
                "eval.probes needs a policy trained on preference pairs; it is not available in train.mode=rm"
            )

    def forward(self, model, batch: PairBatch, *, training: bool, state: Any = None) -> MicroResult:
        n = batch.num_pairs
        center = self.cfg.rm.center_weight
        with self.autocast():
            rewards = sequence_rewards(model, batch.input_ids, batch.attention_mask)
        r_w, r_l = split_pairs(rewards, n)
        bt = -torch.nn.functional.logsigmoid(r_w - r_l)
        losses = bt + center * (r_w + r_l) ** 2 if center else bt
        metrics: Dict[str, Any] = {"loss": losses.mean().detach(), "rm/bt_loss": bt.detach().mean()}
        if center:
            metrics["rm/center_loss"] = ((r_w + r_l) ** 2).detach().mean()
        metrics.update(reward_metrics(r_w, r_l))
        metrics["_rewards"] = (r_w.detach(), r_l.detach())  # for exact statistics over a step or an evaluation
        return MicroResult(losses.sum(), float(n), metrics)

    def set_statistics(self, rows: List[Dict[str, Any]]) -> Dict[str, float]:
        chosen = torch.cat([r["_rewards"][0] for r in rows])
        rejected = torch.cat([r["_rewards"][1] for r in rows])
        return {k: float(v) for k, v in reward_metrics(chosen, rejected).items()}

    postfix = staticmethod(accuracy_postfix)

    def model_to_save(self, model):
        return merged_for_saving(model)
