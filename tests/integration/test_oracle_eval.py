"""Oracle-reward evaluation of sampled generations on a tiny model (seconds), and the sentiment tiers end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dpolab.evaluation.oracle import oracle_reward_eval, oracle_reward_hook
from dpolab.tasks import sentiment as S

pytestmark = pytest.mark.slow

PROMPTS = ["This film was", "I really", "The acting is", "What a", "Never again", "The plot"]


def length_oracle(texts):
    """A deterministic stand-in oracle (no package needed): the share of vowels in the text."""
    return [sum(c in "aeiou" for c in t) / max(1, len(t)) for t in texts]


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    from dpolab.models.load import tiny_config
    from dpolab.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("tiny-gpt2", tok, {"n_layer": 1, "n_embd": 32, "n_head": 2}))
    return model, tok


def test_oracle_reward_eval_reproducible_and_ci(tiny):
    model, tok = tiny
    kw = dict(n_samples=2, max_new_tokens=12, seed=3, batch_size=4)
    a = oracle_reward_eval(model, tok, PROMPTS, length_oracle, **kw)
    b = oracle_reward_eval(model, tok, PROMPTS, length_oracle, **kw)
    assert a == b and a["n"] == len(PROMPTS)
    assert 0.0 <= a["oracle_reward"] <= 1.0 and math.isfinite(a["oracle_reward_ci"]) and a["oracle_reward_ci"] > 0
    c = oracle_reward_eval(model, tok, PROMPTS, length_oracle, **dict(kw, seed=4))
    assert c["oracle_reward"] != a["oracle_reward"]
    one = oracle_reward_eval(model, tok, PROMPTS[:1], length_oracle, **kw)
    assert one["n"] == 1 and math.isnan(one["oracle_reward_ci"]) and math.isfinite(one["oracle_reward"])


def test_oracle_reward_eval_with_vader(tiny):
    pytest.importorskip("vaderSentiment")
    model, tok = tiny
    res = oracle_reward_eval(model, tok, PROMPTS, "vader", max_new_tokens=8, top_p=0.9, temperature=0.7)
    assert -1.0 <= res["oracle_reward"] <= 1.0


def test_oracle_reward_hook(tiny):
    model, tok = tiny
    hook = oracle_reward_hook([{"prompt": p} for p in PROMPTS], length_oracle, limit=4, max_new_tokens=8)
    out = hook(model, tok, 0)
    assert set(out) == {"oracle_reward", "oracle_reward_ci"} and out == hook(model, tok, 10)
    assert set(oracle_reward_hook(PROMPTS[:1], length_oracle, max_new_tokens=4)(model, tok, 0)) == {"oracle_reward"}


def test_build_preference_tiers(tiny, tmp_path):
    model, tok = tiny
    prompts = [
        {"prompt": p, "review": f" a human continuation number {i}", "id": f"r{i}"} for i, p in enumerate(PROMPTS)
    ]
    kw = dict(oracle=length_oracle, n_samples=3, max_new_tokens=10, seed=1, batch_size=8)
    tiers = S.build_preference_tiers(model, tok, prompts, out_dir=tmp_path, **kw)
    assert tiers == S.build_preference_tiers(model, tok, prompts, **kw)
    samples = S.sample_pairs(model, tok, [p["prompt"] for p in prompts], n=3, max_new_tokens=10, seed=1, batch_size=8)
    assert len(samples) == len(prompts) and all(len(g) == 3 for g in samples)
    for i, (h, low) in enumerate(zip(tiers["high"], tiers["low"])):
        assert {h["chosen"], h["rejected"]} == set(samples[i][:2])
        best = max(samples[i], key=lambda t: length_oracle([t])[0])
        assert {low["chosen"], low["rejected"]} == {best, prompts[i]["review"]}
    assert sum(r["replaced"] for r in tiers["medium"]) == len(prompts) // 2
    for name in S.TIERS:
        rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert rows == tiers[name]
