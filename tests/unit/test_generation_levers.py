"""The sampling levers of ``dpolab.models.generation`` (issue 33): greedy outputs with sorting and finished rows
dropped equal ``model.generate`` run one prompt at a time, token for token, on a GPT-2 and a Llama with grouped-query
attention; the static cache only where transformers offers one; bf16 on a copy of the weights; sampling seeded and,
in dpolab's loop, independent of batching; the top-p filter the same as transformers'."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpolab.models import generation as G
from dpolab.models.generation import generate_ids, sample_ids
from dpolab.models.load import tiny_config
from dpolab.models.tokenizer import build_char_tokenizer

CHAR = build_char_tokenizer()
NEW = 12


def _model(preset, **over):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(preset, CHAR, over, max_positions=256)).eval()


def _bare(model, prompts, eos, new=NEW):
    """The baseline: ``model.generate`` one prompt at a time, greedy, cut before EOS."""
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        row = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
            pad_token_id=CHAR.pad_token_id, eos_token_id=eos,
        )[0, len(p) :].tolist()  # fmt: skip
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


def _prompts(n=10, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, len(CHAR)) for _ in range(rng.randint(1, 24))] for _ in range(n)]


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def case(request):
    """A model, prompts of mixed lengths, and an EOS the model emits mid-way in some rows and never in others (a
    token taken from the middle of a greedy output), so that rows finish at different steps."""
    over = {"n_layer": 1, "n_embd": 32, "n_head": 2} if request.param == "tiny-gpt2" else {"num_hidden_layers": 1}
    model = _model(request.param, initializer_range=0.5, **over)  # large weights: varied outputs, no near-ties
    if request.param == "tiny-llama":
        assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    prompts = _prompts()
    model.generation_config.eos_token_id = None
    free = _bare(model, prompts, eos=None)  # NEW tokens each: greedy output with EOS t is this cut before t
    for eos in sorted({t for row in free for t in row}):
        ref = [row[: row.index(eos)] if eos in row else row for row in free]
        lengths = {len(r) for r in ref}
        if NEW in lengths and len(lengths - {0, NEW}) >= 2:
            assert ref == _bare(model, prompts, eos)
            return model, prompts, eos, ref
    pytest.fail(f"no token makes rows end at different steps: {free}")


def test_greedy_levers_equal_generate_one_prompt_at_a_time(case, monkeypatch):
    """Sorted batches and dropped rows (the greedy defaults) give exactly the bare loop's tokens, in the caller's
    order; the batch did shrink (rows were dropped from the KV cache), so the check is of dpolab's loop."""
    model, prompts, eos, ref = case
    from transformers import DynamicCache

    kept = []
    real = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices", lambda self, i: (kept.append(len(i)), real(self, i))[1])
    for batch_size in (4, 32):
        got = generate_ids(model, prompts, max_new_tokens=NEW, batch_size=batch_size, pad_id=0, eos_id=eos)
        assert got == ref
    assert kept and min(kept) < 4


def test_each_lever_alone_equals_generate(case):
    model, prompts, eos, ref = case
    for kw in (
        dict(sort_by_length=False, drop_finished=False),
        dict(sort_by_length=True, drop_finished=False),
        dict(sort_by_length=False, drop_finished=True),
        dict(static_cache=True),
    ):
        assert generate_ids(model, prompts, max_new_tokens=NEW, batch_size=4, pad_id=0, eos_id=eos, **kw) == ref, kw


def test_a_processor_in_the_generation_config_sends_the_batch_to_generate(case):
    """dpolab's loop applies no repetition penalty: with one in the model's generation config ``generate`` runs,
    and the outputs still equal the bare loop's (which applies it)."""
    model, prompts, eos, _ = case
    model.generation_config.repetition_penalty = 3.0
    try:
        ref = _bare(model, prompts, eos)
        assert ref != _bare_no_penalty(model, prompts, eos)
        assert generate_ids(model, prompts, max_new_tokens=NEW, batch_size=4, pad_id=0, eos_id=eos) == ref
    finally:
        model.generation_config.repetition_penalty = 1.0


def _bare_no_penalty(model, prompts, eos):
    saved, model.generation_config.repetition_penalty = model.generation_config.repetition_penalty, 1.0
    try:
        return _bare(model, prompts, eos)
    finally:
        model.generation_config.repetition_penalty = saved


def test_static_cache_is_refused_where_rows_are_dropped_or_transformers_offers_none(case, monkeypatch):
    model, prompts, eos, _ = case
    with pytest.raises(ValueError, match="exclude each other"):
        generate_ids(model, prompts, eos_id=eos, static_cache=True, drop_finished=True)
    monkeypatch.setattr(type(model), "_can_compile_fullgraph", False, raising=False)
    monkeypatch.setattr(type(model), "_supports_static_cache", False, raising=False)
    with pytest.raises(ValueError, match="offers no static KV cache for"):
        generate_ids(model, prompts, eos_id=eos, static_cache=True)


def test_bf16_runs_on_a_bf16_copy_and_leaves_the_model_alone(case):
    model, prompts, eos, ref = case
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append((m.weight.dtype, o.dtype)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        got = generate_ids(model, prompts, max_new_tokens=NEW, batch_size=4, pad_id=0, eos_id=eos, bf16=True)
    finally:
        hook.remove()
    assert seen and all(d == (torch.bfloat16, torch.bfloat16) for d in seen)
    assert all(torch.equal(v, model.state_dict()[k]) and v.dtype == torch.float32 for k, v in before.items())
    assert len(got) == len(ref) and all(len(g) <= NEW for g in got)


def test_sampling_is_seeded_and_in_dpolab_s_loop_independent_of_batching(case):
    model, prompts, eos, _ = case
    kw = dict(max_new_tokens=NEW, temperature=1.0, pad_id=0, eos_id=eos, drop_finished=True)
    a = sample_ids(model, prompts, seed=3, batch_size=4, **kw)
    assert a == sample_ids(model, prompts, seed=3, batch_size=4, **kw)
    alone = sample_ids(model, prompts, seed=3, batch_size=1, sort_by_length=True, **kw)
    assert [(s.ids, s.ended) for s in a] == [(s.ids, s.ended) for s in alone]  # log-probs: float rounding of a batch
    assert all(torch.allclose(torch.tensor(s.logps), torch.tensor(t.logps), atol=1e-5) for s, t in zip(a, alone))
    assert a != sample_ids(model, prompts, seed=4, batch_size=4, **kw)
    assert any(s.ended for s in a) and not all(s.ended for s in a)
    for p, s in zip(prompts, a):  # at temperature 1, top-p 1: the policy's own log-prob of each token drawn
        ids = torch.tensor([p + s.ids + [eos] * s.ended])
        with torch.no_grad():
            own = model(ids).logits[0, len(p) - 1 : -1].log_softmax(-1).gather(-1, ids[0, len(p) :, None])
        assert len(s.logps) == len(s.ids) + s.ended
        assert torch.allclose(own.squeeze(-1), torch.tensor(s.logps), atol=1e-5)


def test_sampling_defaults_keep_generate_s_stream(case):
    """With no lever asked for, ``sample_ids`` samples through ``generate`` exactly as before (the online
    objective's resumed runs depend on that stream)."""
    model, prompts, eos, _ = case
    kw = dict(max_new_tokens=NEW, seed=5, batch_size=4, pad_id=0, eos_id=eos)
    default = sample_ids(model, prompts, **kw)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(5))))
    first = model.generate(
        input_ids=G._left_padded(prompts[:4], 0)[0], attention_mask=G._left_padded(prompts[:4], 0)[1],
        max_new_tokens=NEW, do_sample=True, top_k=0, pad_token_id=0, eos_token_id=eos,
    )[:, G._left_padded(prompts[:4], 0)[2] :].tolist()  # fmt: skip
    assert [s.ids for s in default[:4]] == [G._until_eos(r, eos) for r in first]


def test_top_p_and_temperature_filter_as_transformers_does():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    for t, p in ((1.0, 1.0), (0.7, 0.9), (1.3, 0.5), (1.0, 0.05)):
        want = TopPLogitsWarper(p)(None, TemperatureLogitsWarper(t)(None, logits)) if p < 1 else logits / t
        assert torch.equal(G._process(logits, t, p), want)


def test_a_draw_follows_the_probabilities_and_never_takes_a_filtered_token():
    scores = torch.log(torch.tensor([[0.5, 0.0, 0.3, 0.2]]))
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([G._draw(scores, [gen]) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    assert freq[1] == 0 and torch.allclose(freq, torch.tensor([0.5, 0.0, 0.3, 0.2], dtype=torch.float64), atol=0.03)
