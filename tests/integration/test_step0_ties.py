"""Ties that are ties (issue 34 item 5): at step 0 the policy is the reference, so every held-out pair is a tie,
even when the precomputed reference table and the live evaluation computed the same log-probs in other batches
(another padding width, another packing: float32 sums of a few hundred token log-probs then differ by ~1e-5 nats,
which the old exact comparison counted as wins and losses)."""

from __future__ import annotations

import json
import random

import torch

from dpolab.config import build_config
from dpolab.engine import Trainer
from dpolab.engine.batching import eval_batches
from dpolab.losses import PreferenceOutputs
from dpolab.models.preference_logps import TIE_ULPS, generic_metrics, pair_tolerance, preference_outputs
from dpolab.models.reference import table_batches

WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from or had by hot "
    "word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may"
).split()


def _hh_rows(n: int, rng: random.Random):
    """Anthropic-HH-shaped conversations of real length: two human turns, responses of 3 to 90 words (a few hundred
    character tokens), prompts and responses of varied lengths so batches pack and pad differently."""

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = []
    for _ in range(n):
        prompt = (
            f"\n\nHuman: {text(rng.randint(2, 40))}?\n\nAssistant: {text(rng.randint(1, 15))}.\n\nHuman: "
            f"{text(rng.randint(2, 30))}?"
        )
        rows.append(
            {
                "chosen": f"{prompt}\n\nAssistant: {text(rng.randint(3, 90))}.",
                "rejected": f"{prompt}\n\nAssistant: {text(rng.randint(3, 90))}.",
            }
        )
    return rows


def test_float_noise_is_a_tie_and_a_real_margin_is_not():
    """500-token responses (summed log-probs about -1500 nats): margins of 1e-5 either way are ties, as is the
    exact 0; a margin of 0.01 nats (above the ~4e-3 tolerance) is a win or a loss."""
    g = torch.Generator().manual_seed(0)
    ref_c, ref_r = -1400 - 200 * torch.rand(8, generator=g), -1400 - 200 * torch.rand(8, generator=g)
    noise = torch.tensor([1e-5, -1e-5, 2e-5, -3e-5, 0.0, 1e-5, 0.01, -0.01])
    out = PreferenceOutputs(
        policy_chosen_logps=ref_c + noise,
        policy_rejected_logps=ref_r.clone(),
        ref_chosen_logps=ref_c,
        ref_rejected_logps=ref_r,
        chosen_lengths=torch.full((8,), 500),
        rejected_lengths=torch.full((8,), 500),
    )
    tol = pair_tolerance(out)
    assert bool((tol > 1e-3).all() and (tol < 1e-2).all())  # ~4e-3 nats: far above 1e-5, far below 0.1
    m = generic_metrics(out)
    assert float(m["reward_accuracy"]) == 1 / 8 and float(m["reward_ties"]) == 6 / 8
    no_ref = PreferenceOutputs(
        policy_chosen_logps=ref_c + noise,
        policy_rejected_logps=ref_c.clone(),
        chosen_lengths=torch.full((8,), 500),
        rejected_lengths=torch.full((8,), 500),
    )
    assert float(generic_metrics(no_ref)["reward_ties"]) == 6 / 8
    assert TIE_ULPS * torch.finfo(torch.float32).eps * (4 * 1500 + 4 * 500) < 0.01


def test_table_batches_restart_at_the_held_out_boundary():
    assert table_batches(13 + 8, 5, (0, 13)) == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
        [10, 11, 12],
        [13, 14, 15, 16, 17],
        [18, 19, 20],
    ]
    assert table_batches(7, 3) == [[0, 1, 2], [3, 4, 5], [6]] and table_batches(4, 3, (0, 4)) == [[0, 1, 2], [3]]
    held_out = table_batches(13 + 8, 5, (0, 13))[3:]
    assert [[i - 13 for i in b] for b in held_out] == [idx for _, idx in eval_batches(8, 5)]  # evaluation's batches


def test_step0_evaluation_with_a_precomputed_table_ties_every_pair(tmp_path):
    """Held-out HH-shaped chat pairs of a few hundred tokens and the precomputed reference (13 training pairs,
    batches of 5: a table batched straight through would straddle the train / held-out boundary and pack and pad
    the held-out pairs differently from the evaluation): step 0 reports accuracy 0 and 100 % ties."""
    rng = random.Random(0)
    for name, n in (("train", 13), ("eval", 16)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _hh_rows(n, rng)))
    cfg = build_config(
        {
            "model": {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 1, "n_embd": 64, "n_head": 2}},
            "data": {
                "train": str(tmp_path / "train.jsonl"),
                "eval": str(tmp_path / "eval.jsonl"),
                "format": "hh",
                "max_length": 1024,
            },
            "train": {"batch_size": 4, "max_steps": 1, "seed": 0},
            "eval": {"batch_size": 5},
            "reference": {"mode": "precomputed"},
            "output": {"dir": str(tmp_path / "run"), "progress": False, "save_final": False},
        }
    )
    t = Trainer(cfg, log=lambda s: None)
    assert t.objective.reference.mode == "precomputed"
    lengths = [len(p.chosen_ids) for p in t.eval_data]
    assert max(lengths) > 300  # real-length responses, in character tokens
    margins, model = [], t.policy
    model.eval()
    with torch.no_grad():
        for _, idx in eval_batches(len(t.eval_data), cfg.eval.batch_size):
            o = preference_outputs(
                model, t.objective.reference, t.collate(idx, t.eval_data, t.objective.eval_offset), need_tokens=False
            )
            margins += (
                (o.policy_chosen_logps - o.ref_chosen_logps) - (o.policy_rejected_logps - o.ref_rejected_logps)
            ).tolist()
    # the table scored the held-out pairs in the evaluation's own batches: the same sums, bit for bit (before, the
    # table's batches straddled the boundary and one margin here was 3e-5 nats, counted as a win)
    assert max(abs(m) for m in margins) == 0.0
    out = t.evaluate()
    assert out["step"] == 0 and out["eval/reward_accuracy"] == 0.0 and out["eval/reward_ties"] == 1.0
