"""Likelihood probes on a tiny model."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpolab.data.types import TokenizedPair
from dpolab.diagnostics.probes import build_probe_set, probe_metrics, score_probes
from dpolab.models.load import tiny_config
from dpolab.models.logprobs import response_logps
from dpolab.models.tokenizer import build_char_tokenizer


@pytest.fixture(scope="module")
def setup():
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("tiny-gpt2", tok, {"n_layer": 1, "n_embd": 32, "n_head": 2}))
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = [
        TokenizedPair(
            [tok.bos_token_id] + enc(f"Q: {i}+1\nA: "),
            enc(f"{i}+1={i + 1}") + [tok.eos_token_id],
            enc(f"{i}+1={i + 2}") + [tok.eos_token_id],
            meta={"edit_bucket": "near" if i % 2 else "far"},
        )
        for i in range(5)
    ]
    return tok, model, pairs


def test_probe_set_contents(setup):
    tok, model, pairs = setup
    p = build_probe_set(pairs, tok, n=4, model=model, greedy_tokens=6)
    assert len(p) == 4 and set(p.responses) == {"chosen", "rejected", "others", "random", "greedy"}
    assert p.responses["others"][0] == pairs[1].chosen_ids  # another prompt's response
    assert [len(r) for r in p.responses["random"]] == [len(x.chosen_ids) for x in pairs[:4]]
    assert all(1 <= len(g) <= 7 for g in p.responses["greedy"])
    assert p.buckets == ["far", "near", "far", "near"]


def test_scores_match_the_training_log_probs_and_bound_argmax_mass(setup):
    tok, model, pairs = setup
    p = build_probe_set(pairs, tok, n=5, model=model, greedy_tokens=6)
    s = score_probes(model, p, tok.pad_token_id, batch_size=2)
    from dpolab.data.collate import collate_preference

    b = collate_preference(pairs, tok.pad_token_id)
    ref = response_logps(model.eval(), b.input_ids, b.attention_mask, b.loss_mask).sums
    assert torch.allclose(s["chosen"], ref[:5], atol=1e-5) and torch.allclose(s["rejected"], ref[5:], atol=1e-5)
    assert (s["argmax_mass"] >= s["chosen"] - 1e-6).all()  # the argmax token is at least as likely at every position
    # greedy responses are the argmax continuation, so their per-token log-probs are the argmax mass of their own path
    assert (s["greedy"] <= 0).all()


def test_probe_metrics_deltas_and_buckets(setup):
    base = {"chosen": torch.tensor([-5.0, -6.0]), "rejected": torch.tensor([-7.0, -7.0])}
    now = {"chosen": torch.tensor([-4.0, -8.0]), "rejected": torch.tensor([-9.0, -6.0])}
    m = probe_metrics(now, base, ["near", "far"])
    assert m["probe/delta/chosen"] == pytest.approx(-0.5) and m["probe/delta/rejected"] == pytest.approx(-0.5)
    assert m["probe/margin"] == pytest.approx(0.0) and m["probe/reward_accuracy"] == pytest.approx(0.5)
    assert m["probe/near/delta/chosen"] == pytest.approx(1.0) and m["probe/far/margin"] == pytest.approx(-3.0)
    assert probe_metrics(base, base, ["a", "a"])["probe/delta/chosen"] == 0.0


def test_probe_reward_accuracy_counts_float_noise_as_a_tie():
    """Issue 34 item 5: the same log-probs scored in another batch differ by ~1e-5 nats; that is no win."""
    base = {"chosen": torch.tensor([-1500.0, -1400.0, -1450.0]), "rejected": torch.tensor([-1600.0, -1300.0, -1500.0])}
    now = {"chosen": base["chosen"] + torch.tensor([1e-4, 2e-4, 0.5]), "rejected": base["rejected"].clone()}
    assert probe_metrics(now, base, ["a"] * 3)["probe/reward_accuracy"] == pytest.approx(1 / 3)  # only the 0.5 nats
