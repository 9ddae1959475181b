"""The sampler of train.mode=online with a seed per row (``sample_ids(row_seeds=...)``): a completion depends on its
prompt, its seed and the weights, not on the rows batched with it, so processes that share out a step's prompts
sample what one process would; the log-probs it reports are the policy's own at temperature 1 (and those of the
warped distribution otherwise)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from dpolab.models.generation import sample_ids

EOS = 3
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=64, eos_token_id=EOS, bos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def _ids(samples):
    return [s.ids for s in samples]


def test_a_row_s_sample_does_not_depend_on_its_batch(model):
    kw = dict(max_new_tokens=10, eos_id=EOS, pad_id=0)
    together = sample_ids(model, PROMPTS, row_seeds=[1, 2, 3, 4], **kw)
    alone = sample_ids(model, PROMPTS[2:], row_seeds=[3, 4], batch_size=1, **kw)
    mixed = sample_ids(model, [PROMPTS[3], PROMPTS[0]], row_seeds=[4, 1], **kw)
    assert _ids(alone) == _ids(together)[2:] and _ids(mixed) == [together[3].ids, together[0].ids]
    assert len({tuple(x) for x in _ids(together)}) == 4  # really sampled, not one completion repeated
    other = sample_ids(model, PROMPTS, row_seeds=[5, 6, 7, 8], **kw)
    assert _ids(other) != _ids(together)  # the seed matters


def test_row_seeded_log_probs_are_the_policy_s(model):
    samples = sample_ids(model, PROMPTS, max_new_tokens=10, eos_id=EOS, pad_id=0, row_seeds=[1, 2, 3, 4])
    for p, s in zip(PROMPTS, samples):
        ids = torch.tensor([p + s.ids + [EOS] * s.ended])
        with torch.no_grad():
            logp = model(ids).logits[0, len(p) - 1 : -1].log_softmax(-1)
        own = float(logp.gather(-1, ids[0, len(p) :, None]).sum())
        assert own == pytest.approx(s.logp, abs=1e-4)
    hot = sample_ids(model, PROMPTS, max_new_tokens=10, eos_id=EOS, pad_id=0, row_seeds=[1, 2, 3, 4], temperature=0.5)
    assert all(s.logp > -60 for s in hot) and _ids(hot) != _ids(samples)  # a sharper distribution, other draws


def test_top_p_keeps_only_the_nucleus(model):
    """At top-p 1e-6 only the most likely token survives: row-seeded sampling is then greedy decoding."""
    greedy = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    s = sample_ids(model, PROMPTS[:1], max_new_tokens=6, eos_id=None, pad_id=0, row_seeds=[9], top_p=1e-6)[0]
    assert s.ids == greedy[0, len(PROMPTS[0]) :].tolist() and s.logp == pytest.approx(0.0, abs=1e-6)


def test_row_seeds_draw_the_same_in_dpolab_s_loop_and_in_generate(model):
    """dpolab's own decoding loop (drop_finished, sorted by length) and model.generate draw the same tokens for the
    same row seeds, with the same log-probs."""
    kw = dict(max_new_tokens=10, eos_id=EOS, pad_id=0, row_seeds=[1, 2, 3, 4], temperature=0.8, top_p=0.9)
    plain = sample_ids(model, PROMPTS, **kw)
    loop = sample_ids(model, PROMPTS, drop_finished=True, sort_by_length=True, batch_size=3, **kw)
    assert _ids(loop) == _ids(plain)
    assert [s.logp for s in loop] == pytest.approx([s.logp for s in plain], abs=1e-4)
