"""Every fast path gives the plain path's per-sequence log-probs and gradients (fp32, 1e-5), on tiny GPT-2 and Llama,
with varied lengths, and through LoRA (Liger-Kernel style: each fast path against a plain reference). Other model
families, bf16 and the probe's limits: ``test_fastpath_families.py``."""

import random
import warnings

import pytest
import torch

from dpolab.data.collate import collate_preference, collate_preference_fast, collate_sft_fast
from dpolab.data.packing import preference_layout
from dpolab.data.types import TokenizedPair, TokenizedSFT
from dpolab.engine.batching import BatchPlan
from dpolab.models.fastpath import batch_logps, fast_path_report
from dpolab.models.load import disable_dropout, tiny_config
from dpolab.models.logprobs import response_logps
from dpolab.models.tokenizer import build_char_tokenizer

TOK = build_char_tokenizer()
PATHS = [(lay, lg) for lay in ("padded", "packed", "prefix") for lg in ("response", "response-recompute", "full")]


def _pairs(seed=0, n=5):
    rng = random.Random(seed)
    ids = lambda k: [rng.randrange(4, 60) for _ in range(k)]  # noqa: E731
    lens = [(1, 7, 3), (12, 2, 9), (4, 4, 4), (20, 11, 1), (6, 3, 15), (9, 1, 1)][:n]
    return [
        TokenizedPair(prompt_ids=[1] + ids(a), chosen_ids=ids(b) + [2], rejected_ids=ids(c) + [2]) for a, b, c in lens
    ]


def _model(preset, attn="sdpa", lora=False):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(tiny_config(preset, TOK), attn_implementation=attn)
    disable_dropout(m)
    if lora:
        from dpolab.config import LoraConfig
        from dpolab.models.load import apply_lora

        m = apply_lora(m, LoraConfig(enabled=True, r=4, alpha=8))
        for n, p in m.named_parameters():  # non-zero B so the adapters matter
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
    return m


def _grads(model, lp, w):
    model.zero_grad(set_to_none=True)
    (lp.sums * w).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(model, batch, layout, logits, chunk_rows=5):
    """Log-probs, gradients and WPO's per-token log sum p^2 (``with_sq``) of the fast path equal the plain path's."""
    plain = response_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask, with_sq=True)
    w = torch.linspace(-1.0, 1.5, plain.sums.shape[0])
    g0 = _grads(model, plain, w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a silent fallback to the plain path would make this test vacuous
        fast = batch_logps(model, batch, layout=layout, logits=logits, chunk_rows=chunk_rows, with_sq=True)
    g1 = _grads(model, fast, w)
    m = plain.token_mask
    assert not fast.token_log_sum_sq.requires_grad and (fast.token_log_sum_sq[~m] == 0).all()
    assert torch.allclose(fast.token_log_sum_sq, plain.token_log_sum_sq, atol=1e-5, rtol=0)
    assert (plain.token_log_sum_sq[m] < 0).all() and plain.token_log_sum_sq[m].std() > 1e-3  # real, varied values
    assert fast.sums.shape == plain.sums.shape and fast.token_logps.shape == plain.token_logps.shape
    assert torch.equal(fast.counts, plain.counts) and torch.equal(fast.token_mask, plain.token_mask)
    # per token: 1e-5 absolute; per sequence the sum of up to ~60 such tokens, added in another order, so fp32
    # rounding grows with its size (measured up to 1.5e-5 on sums near -74); a wrong mask moves it by ~0.1
    assert torch.allclose(fast.sums, plain.sums, atol=1e-5, rtol=1e-6)
    assert torch.allclose(fast.token_logps, plain.token_logps, atol=1e-5, rtol=0)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        assert torch.allclose(g1[n], g0[n], atol=1e-5, rtol=1e-4), n
    assert fast_path_report(model).get((layout, logits)) is None


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("layout,logits", PATHS)
def test_fast_paths_equal_plain(preset, layout, logits):
    model = _model(preset)
    batch = collate_preference_fast(_pairs(), TOK.pad_token_id, layout, capacity=24)  # several rows, packing
    _compare(model, batch, layout, logits)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_eager_attention_and_one_row(preset):
    model = _model(preset, attn="eager")
    _compare(model, collate_preference_fast(_pairs(1), TOK.pad_token_id, "prefix"), "prefix", "response")


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("layout", ["packed", "prefix"])
def test_through_lora(preset, layout):
    model = _model(preset, lora=True)
    _compare(model, collate_preference_fast(_pairs(2), TOK.pad_token_id, layout), layout, "response")
    with model.disable_adapter():  # the reference under LoRA: adapters off
        with torch.no_grad():
            b = collate_preference_fast(_pairs(2), TOK.pad_token_id, layout)
            a = batch_logps(model, b, layout=layout)
            p = response_logps(model, b.input_ids, b.attention_mask, b.loss_mask)
            assert torch.allclose(a.sums, p.sums, atol=1e-5)


def test_lora_on_lm_head_untied():
    from transformers import AutoModelForCausalLM

    from dpolab.config import LoraConfig
    from dpolab.models.load import apply_lora

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(tiny_config("tiny-llama", TOK, {"tie_word_embeddings": False}))
    m = apply_lora(m, LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "lm_head"]))
    for n, p in m.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    _compare(m, collate_preference_fast(_pairs(3), TOK.pad_token_id, "prefix"), "prefix", "response")


def test_sq_only_when_asked():
    model = _model("tiny-llama")
    batch = collate_preference_fast(_pairs(), TOK.pad_token_id, "prefix")
    for layout, logits in PATHS:
        assert batch_logps(model, batch, layout=layout, logits=logits).token_log_sum_sq is None
    assert response_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask).token_log_sum_sq is None


def test_softcap_falls_back_to_plain():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(tiny_config("tiny-gpt2", TOK))
    disable_dropout(m)
    m.config.final_logit_softcapping = 30.0  # we cannot reproduce it from hidden states: must refuse
    b = collate_preference_fast(_pairs(), TOK.pad_token_id, "prefix")
    with pytest.warns(UserWarning, match="post-processes the logits"):
        got = batch_logps(m, b)
    want = response_logps(m, b.input_ids, b.attention_mask, b.loss_mask)
    assert torch.allclose(got.sums, want.sums, atol=1e-5)


def test_sft_packed_equals_plain():
    model = _model("tiny-llama")
    rows = [
        TokenizedSFT(prompt_ids=[1] + [5] * k, completion_ids=list(range(6, 6 + j)) + [2])
        for k, j in [(3, 5), (0, 9), (7, 2)]
    ]
    _compare(model, collate_sft_fast(rows, TOK.pad_token_id, "packed", capacity=16), "packed", "response")


def test_prefix_layout_structure():
    # token ids that name their pair and part: pair i's prompt 1000 i + k, chosen 1000 i + 100 + k, rejected + 200
    pairs = [
        TokenizedPair(
            prompt_ids=[1000 * i + k for k in range(a)],
            chosen_ids=[1000 * i + 100 + k for k in range(b)],
            rejected_ids=[1000 * i + 200 + k for k in range(c)],
        )
        for i, (a, b, c) in enumerate([(3, 4, 2), (5, 1, 3)])
    ]
    lay = preference_layout(pairs, 0, "prefix", capacity=1000)
    assert lay["input_ids"].shape[0] == 1  # both pairs share one row
    ids, pos, m = lay["input_ids"][0].tolist(), lay["position_ids"][0].tolist(), lay["attn_mask"][0, 0]
    where = lambda i, part: [j for j, t in enumerate(ids) if t // 1000 == i and (t % 1000) // 100 == part]  # noqa: E731
    for i, p in enumerate(pairs):
        prompt, chosen, rejected = where(i, 0), where(i, 1), where(i, 2)
        assert [ids[j] for j in prompt + chosen + rejected] == p.prompt_ids + p.chosen_ids + p.rejected_ids
        n_p = len(prompt)  # both responses continue the prompt's positions
        assert [pos[j] for j in prompt + chosen] == list(range(n_p + len(chosen)))
        assert [pos[j] for j in rejected] == list(range(n_p, n_p + len(rejected)))
        for branch in (chosen, rejected):  # a response token sees its prompt and its own branch up to itself
            for q_at, q in enumerate(branch):
                assert m[q, prompt].all() and m[q, branch[: q_at + 1]].all()
        assert not m[rejected][:, chosen].any() and not m[chosen][:, rejected].any()  # the branches never meet
        others = [j for j in range(len(ids)) if j not in prompt + chosen + rejected]
        assert not m[prompt + chosen + rejected][:, others].any()  # nor another pair's tokens (or padding)
    assert m.diagonal().all() and not m.triu(1).any()
    assert lay["score_seq"].tolist().count(0) == len(pairs[0].chosen_ids) and lay["score_seq"].tolist().count(2) == 2


def test_collate_fast_keeps_padded_batch():
    pairs = _pairs()
    a, b = collate_preference(pairs, 0), collate_preference_fast(pairs, 0, "prefix")
    for k in ("input_ids", "attention_mask", "loss_mask"):
        assert torch.equal(getattr(a, k), getattr(b, k))
    assert collate_preference_fast(pairs, 0, "padded").packed is None


def test_length_grouped_plan_is_deterministic_and_a_permutation():
    lengths = [random.Random(i).randrange(5, 100) for i in range(40)]
    plan = BatchPlan(40, 4, 1, seed=3, lengths=lengths, length_grouped=True)
    assert plan.order(0) == BatchPlan(40, 4, 1, seed=3, lengths=lengths, length_grouped=True).order(0)
    assert sorted(plan.order(1)) == list(range(40)) and plan.order(0) != plan.order(1)
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plan.micro_batches(0, 0)]
    assert max(spread) < max(lengths) - min(lengths)


def test_row_length_choice_packs_short_units_and_gives_long_ones_a_row_each():
    from dpolab.data.packing import choose_rows, row_cost

    short = [30, 25, 40, 35, 20, 28, 33, 38]
    rows, fill = choose_rows(short, hidden_size=384)
    assert len(rows) < len(short) and max(fill) > max(short)  # shared rows: far less padding
    long = [300, 290, 295, 280, 299, 285, 290, 300]  # long, similar lengths: nothing to gain, a row each
    rows, fill = choose_rows(long, hidden_size=384)
    assert len(rows) == len(long) and max(fill) == 300
    # the choice is the cheapest of the candidates under the cost model (here: rows of 512 would cost more)
    assert row_cost(len(rows), max(fill), 384) < row_cost(len(long), 512, 384)
    mixed = [300, 200, 280, 220]  # 300 + 200 share a row of 500 more cheaply than padding 200 to 300
    rows, fill = choose_rows(mixed, hidden_size=384)
    assert len(rows) == 2
    # every unit is placed exactly once
    assert sorted(j for r in rows for j in r) == list(range(len(mixed)))


def test_automatic_row_length_keeps_the_log_probs():
    model = _model("tiny-gpt2")
    shapes = set()
    for hidden in (1, 4096):  # a narrow model: one unit per row; a wide one: several per row
        batch = collate_preference_fast(_pairs(), TOK.pad_token_id, "prefix", hidden_size=hidden)
        shapes.add(tuple(batch.packed["input_ids"].shape))
        _compare(model, batch, "prefix", "response")
    assert len(shapes) == 2  # the two widths really chose different rows
