"""Rows left with no response token to score (after truncation, or a lone token with no prompt or BOS before it) are
counted and skipped, never passed on: at 58b3a56 `data.max_length=1` kept every pair as an empty prompt plus a
one-token response, whose only token has no position before it, so a batch scored nothing and training died with
`RuntimeError: element 0 of tensors does not require grad`."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpolab.data.collate import collate_preference, collate_sft
from dpolab.data.dataset import load_preference_data, load_sft_data
from dpolab.data.tokenize import SKIP_EMPTY_TRUNCATED, SKIP_UNSCORABLE, tokenize_preference, tokenize_sft
from dpolab.data.types import PreferenceRow, SFTRow, SkipCounter
from dpolab.models.tokenizer import build_char_tokenizer

TOK = build_char_tokenizer()
ROWS = [{"prompt": f"Q: {i}+{i}\nA: ", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}"} for i in range(1, 9)]


def _scored_tokens(batch):
    """Per sequence, the response tokens a causal LM scores (a token at position 0 has no logits before it)."""
    return batch.loss_mask[:, 1:].sum(-1)


def test_max_length_1_skips_and_counts_every_row():
    logs = []
    pairs, skips = load_preference_data(ROWS, TOK, max_length=1, log=logs.append)
    assert pairs == [] and skips.counts == {SKIP_EMPTY_TRUNCATED: len(ROWS)}
    assert logs == [f"<memory>: 0 pairs loaded; skipped {len(ROWS)} {SKIP_EMPTY_TRUNCATED}"]
    rows, skips = load_sft_data(
        [{"prompt": r["prompt"], "completion": r["chosen"]} for r in ROWS], TOK, max_length=1, log=lambda m: None
    )
    assert rows == [] and skips.counts == {SKIP_EMPTY_TRUNCATED: len(ROWS)}


def test_a_prompt_cut_to_nothing_leaves_a_lone_token_unscored():
    skips = SkipCounter()
    # max_prompt_length=0 drops the prompt and its BOS; a one-token response then has nothing before it
    assert (
        tokenize_preference(
            PreferenceRow("a long prompt", "x", "y"), TOK, max_length=3, max_prompt_length=0, add_eos=False, skips=skips
        )
        is None
    )
    assert skips.counts == {SKIP_EMPTY_TRUNCATED: 1}
    t = tokenize_preference(PreferenceRow("a long prompt", "xy", "zw"), TOK, max_length=3, max_prompt_length=0)
    assert t.prompt_ids == [] and len(t.chosen_ids) >= 2  # two tokens: the second one is scored


def test_no_prompt_no_bos_one_token_response_is_skipped():
    skips = SkipCounter()
    assert tokenize_preference(PreferenceRow("", "x", "yz"), TOK, add_bos=False, add_eos=False, skips=skips) is None
    assert tokenize_sft(SFTRow("", "x"), TOK, add_bos=False, add_eos=False, skips=skips) is None
    assert skips.counts == {SKIP_UNSCORABLE: 2}
    t = tokenize_sft(SFTRow("", "x"), TOK, add_bos=False)  # with EOS: 'x' predicts EOS
    assert t.prompt_ids == [] and len(t.completion_ids) == 2


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt=texts,
    chosen=texts,
    rejected=texts,
    max_length=st.integers(1, 12),
    max_prompt=st.one_of(st.none(), st.integers(0, 11)),
    mode=st.sampled_from(["keep_end", "keep_start"]),
    bos=st.booleans(),
    eos=st.booleans(),
)
def test_every_kept_row_has_a_scored_token_in_each_response(
    prompt, chosen, rejected, max_length, max_prompt, mode, bos, eos
):
    if max_prompt is not None and max_prompt >= max_length:
        max_prompt = max_length - 1
    skips = SkipCounter()
    kw = dict(
        max_length=max_length, max_prompt_length=max_prompt, truncation_mode=mode, add_bos=bos, add_eos=eos, skips=skips
    )
    t = tokenize_preference(PreferenceRow(prompt, chosen, rejected), TOK, **kw)
    s = tokenize_sft(SFTRow(prompt, chosen), TOK, **kw)
    if t is not None:
        assert (_scored_tokens(collate_preference([t], TOK.pad_token_id)) > 0).all()
    if s is not None:
        assert (_scored_tokens(collate_sft([s], TOK.pad_token_id)) > 0).all()
    assert skips.total == (t is None) + (s is None)  # nothing vanishes uncounted
