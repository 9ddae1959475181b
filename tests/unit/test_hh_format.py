"""data.format=hh: Anthropic-HH text parsed into chat messages, rendered with the tokenizer's chat template."""

from __future__ import annotations

import json

import pytest

from dpolab.config import ConfigError, DataConfig, build_config
from dpolab.data.dataset import load_preference_data
from dpolab.data.formats import parse_hh, to_preference_row
from dpolab.data.tokenize import render_texts
from dpolab.data.types import DataError
from dpolab.engine.data_setup import prepare_data
from dpolab.models.tokenizer import build_char_tokenizer

Q = "\n\nHuman: What is 2+2?\n\nAssistant: Let me think.\n\nHuman: Go on.\n\nAssistant:"
PAIR = {"chosen": Q + " It is 4.", "rejected": Q + " It is 5, surely."}


def test_parse_hh_turns():
    assert parse_hh("\n\nHuman: hi there \n\nAssistant: hello\n\nHuman: bye") == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    assert parse_hh("Human: hi\n\nAssistant: yo") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]  # no leading blank lines


def test_hh_pair_becomes_shared_prompt_and_final_assistant_turns():
    row = to_preference_row(PAIR, source="p.jsonl", row=1, data_format="hh")
    assert row.prompt == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Let me think."},
        {"role": "user", "content": "Go on."},
    ]
    assert row.chosen == [{"role": "assistant", "content": "It is 4."}]
    assert row.rejected == [{"role": "assistant", "content": "It is 5, surely."}]


def test_hh_with_explicit_prompt_column():
    row = to_preference_row({"prompt": Q, "chosen": " It is 4.", "rejected": " It is 5."}, data_format="hh")
    assert row.prompt[-1] == {"role": "user", "content": "Go on."}  # the trailing empty Assistant turn is dropped
    assert row.chosen == [{"role": "assistant", "content": "It is 4."}]


def test_hh_without_chat_template_keeps_the_text_as_auto_does():
    assert to_preference_row(PAIR, data_format="hh", chat=False) == to_preference_row(PAIR)


@pytest.mark.parametrize(
    "record, field, message",
    [
        ({"chosen": "just text", "rejected": "other text"}, "chosen", r"no '\n\nHuman:'"),
        (
            {"chosen": "preamble\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
            "chosen",
            "text before the first turn",
        ),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c\n\nHuman: d"},
            "rejected",
            "the last turn must be the Assistant's",
        ),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: x\n\nAssistant: c"},
            "rejected",
            "differs from chosen's at turn 1",
        ),
        (
            {"chosen": [{"role": "assistant", "content": "b"}], "rejected": "\n\nHuman: x\n\nAssistant: c"},
            "chosen",
            "got chat messages",
        ),
    ],
)
def test_text_that_does_not_parse_is_a_one_line_error_naming_file_row_and_field(tmp_path, record, field, message):
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps(PAIR) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as e:
        load_preference_data(str(path), build_char_tokenizer(), data_format="hh", log=lambda m: None)
    text = str(e.value)
    assert text.startswith(f"{path}: row 2: field '{field}': ") and message in text and "\n" not in text


def test_load_renders_the_chat_template_and_says_so():
    tok, logs = build_char_tokenizer(), []
    pairs, _ = load_preference_data([PAIR], tok, data_format="hh", log=logs.append)
    row = to_preference_row(PAIR, data_format="hh")
    prompt_text, (chosen_text, _), _ = render_texts(tok, row.prompt, [row.chosen, row.rejected])
    assert prompt_text.startswith("user: What is 2+2?\nassistant: Let me think.\nuser: Go on.\nassistant: ")
    assert tok.decode(pairs[0].prompt_ids, skip_special_tokens=True) == prompt_text
    assert tok.decode(pairs[0].chosen_ids, skip_special_tokens=True) == chosen_text == "It is 4.\n"
    assert any("data.format=hh: Human/Assistant turns rendered with the tokenizer's chat template" in m for m in logs)
    plain, logs = build_char_tokenizer(chat_template=False), []
    pairs, _ = load_preference_data([PAIR], plain, data_format="hh", log=logs.append)
    assert plain.decode(pairs[0].prompt_ids, skip_special_tokens=True) == Q  # the text kept as it is
    assert any("no chat template" in m for m in logs)


def test_config_option_and_its_checks(tmp_path):
    assert build_config({}, ["data.format=hh"]).data.format == "hh"
    with pytest.raises(ConfigError, match="data.format"):
        build_config({}, ["data.format=anthropic"])
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps(PAIR) + "\n")
    with pytest.raises(DataError, match="data.format=hh reads preference pairs"):  # never silently ignored
        prepare_data(DataConfig(train=str(path), format="hh"), build_char_tokenizer(), "sft", 0, log=lambda m: None)
    train, _ = prepare_data(
        DataConfig(train=str(path), format="hh", sft_from_pairs="chosen", eval_fraction=0.0),
        build_char_tokenizer(),
        "sft",
        0,
        log=lambda m: None,
    )
    assert len(train) == 1


# Shaped like rows of Anthropic's HH-RLHF helpful-base whose earlier turns differ between chosen and rejected (the
# conversations were sampled turn by turn, so a rejected branch can differ before its final Assistant turn)
H1 = "\n\nHuman: Can you recommend a book?\n\nAssistant:"
DIVERGED = {
    "chosen": H1 + " Sure, try Dune.\n\nHuman: Why that one?\n\nAssistant: It is a classic.",
    "rejected": H1 + " Maybe.\n\nHuman: Which one?\n\nAssistant: I don't know.",
}


def test_earlier_turns_that_differ_take_the_shared_turns_as_prompt_and_are_counted(tmp_path):
    from dpolab.data.types import SkipCounter

    skips = SkipCounter()
    row = to_preference_row(DIVERGED, source="hh.jsonl", row=2, data_format="hh", skips=skips)
    assert row.prompt == [{"role": "user", "content": "Can you recommend a book?"}]
    assert row.chosen == [
        {"role": "assistant", "content": "Sure, try Dune."},
        {"role": "user", "content": "Why that one?"},
        {"role": "assistant", "content": "It is a classic."},
    ]
    assert row.rejected[0] == {"role": "assistant", "content": "Maybe."} and len(row.rejected) == 3
    assert skips.total == 0 and sum(skips.notes.values()) == 1
    # without a chat template: the text rule of data.format=auto (the prompt ends after the last shared "Assistant:")
    plain = to_preference_row(DIVERGED, data_format="hh", chat=False)
    assert plain.prompt == H1 and plain == to_preference_row(DIVERGED)
    # a divergence at a Human turn: the prompt is the shared turns before the Assistant turn preceding it
    at_human = {
        "chosen": H1 + " Sure.\n\nHuman: Thanks!\n\nAssistant: Welcome.",
        "rejected": H1 + " Sure.\n\nHuman: Why?\n\nAssistant: Because.",
    }
    row = to_preference_row(at_human, data_format="hh")
    assert row.prompt == [{"role": "user", "content": "Can you recommend a book?"}]
    assert row.chosen[0] == row.rejected[0] == {"role": "assistant", "content": "Sure."}


def test_a_file_with_such_rows_loads_whole_and_the_log_says_how_many(tmp_path):
    path = tmp_path / "helpful-base.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (PAIR, DIVERGED, PAIR, DIVERGED)))
    logs = []
    pairs, skips = load_preference_data(str(path), build_char_tokenizer(), data_format="hh", log=logs.append)
    assert len(pairs) == 4 and skips.total == 0
    line = next(m for m in logs if "4 pairs loaded" in m)
    assert "no rows skipped; 2 rows kept whose earlier turns differ between chosen and rejected" in line
