"""tokenize: prompt is a token prefix, single BOS, EOS appended, truncation modes, never an empty response."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpolab.data.tokenize import tokenize_preference, tokenize_sft
from dpolab.data.types import PreferenceRow, SFTRow, SkipCounter
from dpolab.models.tokenizer import build_char_tokenizer, gpt2_tokenizer_offline

CHAR = build_char_tokenizer()
BOS, EOS = CHAR.bos_token_id, CHAR.eos_token_id


def enc(s):
    return CHAR(s, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer_offline()


def test_text_pair_layout():
    t = tokenize_preference(PreferenceRow("Q: hi\n", "good", "bad", extras={"m": 1.0}, meta={"id": 3}), CHAR)
    assert t.prompt_ids == [BOS] + enc("Q: hi\n")
    assert t.chosen_ids == enc("good") + [EOS] and t.rejected_ids == enc("bad") + [EOS]
    assert t.extras == {"m": 1.0} and t.meta == {"id": 3}


def test_single_bos_and_no_double_eos():
    t = tokenize_preference(PreferenceRow("<bos>abc", "x<eos>", "y"), CHAR)
    assert t.prompt_ids.count(BOS) == 1 and t.prompt_ids[0] == BOS
    assert t.chosen_ids == enc("x") + [EOS] and t.chosen_ids.count(EOS) == 1
    t = tokenize_preference(PreferenceRow("abc", "x", "y"), CHAR, add_bos=False, add_eos=False)
    assert BOS not in t.prompt_ids and t.chosen_ids == enc("x")


def test_empty_prompt_gets_bos_only():
    t = tokenize_preference(PreferenceRow("", "x", "y"), CHAR)
    assert t.prompt_ids == [BOS]


def test_prompt_is_token_prefix_with_bpe(gpt2):
    # jointly tokenised " world" would merge differently; separate tokenisation keeps the prompt a prefix
    row = PreferenceRow("hello", " world", "!!")
    t = tokenize_preference(row, gpt2, add_bos=False)
    assert t.prompt_ids == gpt2("hello", add_special_tokens=False)["input_ids"]
    assert (t.prompt_ids + t.chosen_ids)[: len(t.prompt_ids)] == t.prompt_ids
    assert t.chosen_ids[-1] == gpt2.eos_token_id


def test_chat_rows_rendered_with_template():
    row = PreferenceRow(
        [{"role": "user", "content": "hi"}],
        [{"role": "assistant", "content": "yo"}],
        [{"role": "assistant", "content": "no"}],
    )
    t = tokenize_preference(row, CHAR)
    assert t.prompt_ids == [BOS] + enc("user: hi\nassistant: ")
    assert t.chosen_ids == enc("yo\n") + [EOS] and "template_fallback" not in t.meta


def test_chat_template_fallback_when_not_prefix_consistent():
    tok = build_char_tokenizer()
    tok.chat_template = (
        "{% for m in messages|reverse %}{{ m['content'] }};{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    row = PreferenceRow(
        [{"role": "user", "content": "hi"}],
        [{"role": "assistant", "content": "yo"}],
        [{"role": "assistant", "content": "no"}],
    )
    t = tokenize_preference(row, tok)
    assert t.chosen_ids == enc("yo") + [EOS] and t.meta["template_fallback"] is True


def test_truncation_keep_end_keeps_last_prompt_tokens():
    row = PreferenceRow("abcdefghij", "XYZ", "UV")
    t = tokenize_preference(row, CHAR, max_length=8, max_prompt_length=4, truncation_mode="keep_end")
    assert t.prompt_ids == [BOS] + enc("hij")  # BOS kept in front, then the end of the prompt
    assert t.chosen_ids == enc("XYZ") + [EOS] and len(t.prompt_ids) + len(t.chosen_ids) <= 8


def test_truncation_keep_start_and_response_cut():
    row = PreferenceRow("abcdefghij", "XYZWVUTS", "UV")
    t = tokenize_preference(row, CHAR, max_length=8, max_prompt_length=4, truncation_mode="keep_start")
    assert t.prompt_ids == [BOS] + enc("abc")
    assert t.chosen_ids == enc("XYZW")  # cut from the right: no EOS
    assert t.rejected_ids == enc("UV") + [EOS]


def test_no_truncation_when_it_fits():
    row = PreferenceRow("abcdefghij", "X", "Y")
    t = tokenize_preference(row, CHAR, max_length=64, max_prompt_length=2)
    assert t.prompt_ids == [BOS] + enc("abcdefghij")


def test_prompt_budget_must_leave_room_for_a_response():
    # max_prompt_length < max_length is enforced, so truncation always leaves >= 1 response token
    with pytest.raises(ValueError, match="max_prompt_length"):
        tokenize_preference(PreferenceRow("abcdef", "X", "Y"), CHAR, max_length=4, max_prompt_length=4)
    t = tokenize_preference(PreferenceRow("abcdef", "XYZ", "Y"), CHAR, max_length=4, max_prompt_length=3)
    assert t.prompt_ids == [BOS] + enc("ef") and t.chosen_ids == enc("X") and t.rejected_ids == enc("Y")


def test_empty_response_tokens_skipped():
    skips = SkipCounter()
    assert tokenize_preference(PreferenceRow("p", "", "y"), CHAR, skips=skips) is None
    assert skips.counts == {"empty response (no tokens)": 1}


def test_bad_options():
    with pytest.raises(ValueError, match="truncation_mode"):
        tokenize_preference(PreferenceRow("a" * 30, "b", "c"), CHAR, max_length=8, truncation_mode="middle")
    with pytest.raises(ValueError, match="chat template"):
        tokenize_preference(
            PreferenceRow([], [{"role": "assistant", "content": "a"}], "b"), build_char_tokenizer(chat_template=False)
        )


def test_sft():
    t = tokenize_sft(SFTRow("", "hello"), CHAR)
    assert t.prompt_ids == [BOS] and t.completion_ids == enc("hello") + [EOS]
    t = tokenize_sft(SFTRow("p" * 10, "hello"), CHAR, max_length=6, max_prompt_length=5)
    assert t.prompt_ids == [BOS] + enc("pppp") and t.completion_ids == enc("h")


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt=texts,
    chosen=texts,
    rejected=texts,
    max_length=st.integers(1, 24),
    mode=st.sampled_from(["keep_end", "keep_start"]),
    bos=st.booleans(),
    eos=st.booleans(),
)
def test_property_never_crashes_never_empty(prompt, chosen, rejected, max_length, mode, bos, eos):
    skips = SkipCounter()
    t = tokenize_preference(
        PreferenceRow(prompt, chosen, rejected),
        CHAR,
        max_length=max_length,
        truncation_mode=mode,
        add_bos=bos,
        add_eos=eos,
        skips=skips,
    )
    if t is None:
        assert skips.total == 1
        return
    assert t.chosen_ids and t.rejected_ids
    assert len(t.prompt_ids) + max(len(t.chosen_ids), len(t.rejected_ids)) <= max_length
    assert t.prompt_ids.count(BOS) <= 1 and (BOS not in t.prompt_ids or t.prompt_ids[0] == BOS)


@settings(max_examples=25, deadline=None)
@given(prompt=st.text(max_size=40), chosen=st.text(max_size=40), rejected=st.text(max_size=40))
def test_property_bpe_prefix_and_eos(prompt, chosen, rejected):
    tok = _GPT2[0] if _GPT2 else _GPT2.append(gpt2_tokenizer_offline()) or _GPT2[0]
    t = tokenize_preference(PreferenceRow(prompt, chosen, rejected), tok, max_length=4096, add_bos=False)
    if t is None:
        assert chosen == "" or rejected == ""
        return
    assert t.prompt_ids == tok(prompt, add_special_tokens=False)["input_ids"] if prompt else t.prompt_ids == []
    assert t.chosen_ids[-1] == tok.eos_token_id and len(t.chosen_ids) >= 2


_GPT2 = []
