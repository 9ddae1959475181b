"""formats: normalisation to PreferenceRow / SFTRow, errors naming the field, counted skips."""

import pytest

from dpolab.data.formats import split_common_prefix, to_preference_row, to_sft_row
from dpolab.data.types import DataError, SkipCounter

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731


def pref(rec, **kw):
    return to_preference_row(rec, source="f.jsonl", row=17, **kw)


def test_text_row_and_meta_passthrough():
    r = pref({"prompt": "p", "chosen": "a", "rejected": "b", "id": "x1"})
    assert (r.prompt, r.chosen, r.rejected) == ("p", "a", "b")
    assert r.meta == {"id": "x1", "row": 17} and r.extras == {}


def test_chat_rows_lift_text_fields_to_messages():
    r = pref({"prompt": [U("hi")], "chosen": "yes", "rejected": [A("no")]})
    assert r.prompt == [U("hi")] and r.chosen == [A("yes")] and r.rejected == [A("no")]


def test_missing_field_names_source_row_field():
    with pytest.raises(DataError) as e:
        pref({"prompt": "p", "chosen": "a"})
    msg = str(e.value)
    assert msg.startswith("f.jsonl: row 17: field 'rejected': missing") and "\n" not in msg


@pytest.mark.parametrize("bad,kind", [(3, "int"), (None, "None"), ({"a": 1}, "dict")])
def test_wrong_type(bad, kind):
    with pytest.raises(DataError) as e:
        pref({"prompt": "p", "chosen": bad, "rejected": "b"})
    assert str(e.value) == f"f.jsonl: row 17: field 'chosen': expected text or chat messages, got {kind}"


def test_bad_chat_role_names_field_and_role():
    with pytest.raises(DataError, match=r"field 'chosen': message 0: unknown role 'bot'"):
        pref({"prompt": [U("hi")], "chosen": [{"role": "bot", "content": "x"}], "rejected": [A("y")]})
    with pytest.raises(DataError, match=r"field 'prompt': message 0: content must be text"):
        pref({"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"})


def test_implicit_prompt_hh_text():
    c = "\n\nHuman: What is 2+2?\n\nAssistant: It is 4."
    r = "\n\nHuman: What is 2+2?\n\nAssistant: It is 5."
    row = pref({"chosen": c, "rejected": r})
    assert row.prompt == "\n\nHuman: What is 2+2?\n\nAssistant:"
    assert (row.chosen, row.rejected) == (" It is 4.", " It is 5.")


def test_implicit_prompt_plain_text_splits_at_whitespace():
    assert split_common_prefix("I like cats", "I love cats") == ("I", " like cats", " love cats")
    assert split_common_prefix("abc", "abd") == ("", "abc", "abd")


def test_implicit_prompt_messages():
    c = [U("hi"), A("hello"), U("2+2?"), A("4")]
    r = [U("hi"), A("hello"), U("2+2?"), A("5")]
    row = pref({"chosen": c, "rejected": r})
    assert row.prompt == c[:3] and row.chosen == [A("4")] and row.rejected == [A("5")]


def test_column_mapping_and_extras():
    rec = {"question": "q", "good": "a", "bad": "b", "margin": "0.5", "score": 2}
    row = pref(
        rec,
        columns={"prompt": "question", "chosen": "good", "rejected": "bad", "rm_margin": "margin"},
        extras=("rm_margin", "score"),
    )
    assert (row.prompt, row.chosen, row.rejected) == ("q", "a", "b")
    assert row.extras == {"rm_margin": 0.5, "score": 2.0} and row.meta == {"row": 17}
    with pytest.raises(DataError, match=r"field 'good': missing"):
        pref({"question": "q", "bad": "b"}, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})


def test_non_numeric_extra_is_an_error():
    with pytest.raises(DataError, match=r"field 'rm_margin': expected a number"):
        pref({"prompt": "p", "chosen": "a", "rejected": "b", "rm_margin": "high"}, extras=("rm_margin",))
    with pytest.raises(DataError, match=r"field 'rm_margin': missing"):
        pref({"prompt": "p", "chosen": "a", "rejected": "b"}, extras=("rm_margin",))


def test_identical_and_empty_are_counted_skips_not_errors():
    skips = SkipCounter()
    assert pref({"prompt": "p", "chosen": "a", "rejected": "a"}, skips=skips) is None
    assert pref({"prompt": "p", "chosen": "", "rejected": "a"}, skips=skips) is None
    assert pref({"chosen": "same", "rejected": "same"}, skips=skips) is None
    assert skips.counts == {"identical chosen and rejected": 2, "empty response": 1}


def test_sft_variants():
    s = to_sft_row({"prompt": "p", "completion": "c"}, source="s", row=1)
    assert (s.prompt, s.completion) == ("p", "c")
    s = to_sft_row({"text": "hello"}, source="s", row=1)
    assert (s.prompt, s.completion) == ("", "hello")
    s = to_sft_row({"messages": [U("hi"), A("yo")]}, source="s", row=1)
    assert s.prompt == [U("hi")] and s.completion == [A("yo")]
    s = to_sft_row({"q": "p", "a": "c"}, source="s", row=1, columns={"prompt": "q", "completion": "a"})
    assert (s.prompt, s.completion) == ("p", "c")


def test_sft_errors_and_skips():
    with pytest.raises(DataError, match=r"s: row 4: field 'messages': the last message must be the assistant's"):
        to_sft_row({"messages": [A("yo"), U("hi")]}, source="s", row=4)
    with pytest.raises(DataError, match=r"field 'completion': no SFT fields"):
        to_sft_row({"foo": "bar"}, source="s", row=4)
    with pytest.raises(DataError, match=r"field 'text': expected text or chat messages, got float"):
        to_sft_row({"text": 1.5}, source="s", row=4)
    skips = SkipCounter()
    assert to_sft_row({"prompt": "p", "completion": ""}, source="s", row=1, skips=skips) is None
    assert skips.counts == {"empty response": 1}


def test_a_missing_column_points_at_data_columns():
    with pytest.raises(
        DataError,
        match=r"field 'chosen': missing \(columns present: question, good, bad; map yours "
        r"with data.columns, e.g. data.columns=\{chosen: your_column\}\)",
    ):
        pref({"question": "q", "good": "a", "bad": "b"})
