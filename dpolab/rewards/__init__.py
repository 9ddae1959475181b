"""Reward models for two-step methods such as MADPO.

    dpolab rm train --config rm.yaml                      # Bradley-Terry reward model -> RUN/final (HF format)
    dpolab rm score --model RUN/final --data pairs.jsonl --out scored.jsonl
    # scored.jsonl: each row + reward_chosen, reward_rejected, rm_margin
    dpolab train loss='[{name: madpo}]' data.train=scored.jsonl data.extras=[rm_margin]

Training is the engine's ``train.mode=rm`` (:mod:`dpolab.engine.objectives.reward_model`); this package holds the model
(:mod:`dpolab.rewards.model`) and the scoring of data sets (:mod:`dpolab.rewards.score`).
"""

from .model import (
    load_reward_model,
    load_trained_reward_model,
    merged_for_saving,
    reward_metrics,
    reward_model_from_causal_lm,
    sequence_rewards,
)
from .score import score_file, score_pairs, write_rows

__all__ = [
    "load_reward_model",
    "load_trained_reward_model",
    "merged_for_saving",
    "reward_metrics",
    "reward_model_from_causal_lm",
    "sequence_rewards",
    "score_file",
    "score_pairs",
    "write_rows",
]
