"""dataset loaders: end to end from files and memory, first-error raising, skip mode, one summary line."""

import json

import pytest

from dpolab.data.dataset import load_preference_data, load_sft_data
from dpolab.data.types import DataError
from dpolab.models.tokenizer import build_char_tokenizer

TOK = build_char_tokenizer()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"prompt": "p", "chosen": "a", "rejected": "b", "rm_margin": 1.5}


def test_load_from_jsonl_with_extras_and_one_summary(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [GOOD, dict(GOOD, rejected="a"), GOOD])
    logs = []
    pairs, skips = load_preference_data(str(p), TOK, extras=("rm_margin",), log=logs.append)
    assert len(pairs) == 2 and pairs[0].extras == {"rm_margin": 1.5}
    assert skips.counts == {"identical chosen and rejected": 1}
    assert logs == [
        f"{p}: 2 pairs loaded; skipped 1 identical chosen and rejected; truncation cut no prompt or response "
        "of 2 rows (max_length 512, max_prompt_length 256)"
    ]


def test_first_bad_row_raises_one_line(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, dict(GOOD, chosen=3), dict(GOOD, chosen=None)])
    with pytest.raises(DataError) as e:
        load_preference_data(str(p), TOK, log=lambda m: None)
    assert str(e.value) == f"{p}: row 3: field 'chosen': expected text or chat messages, got int"


def test_skip_mode_counts_bad_rows(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(GOOD) + "\n{oops\n" + json.dumps(dict(GOOD, chosen=3)) + "\n")
    logs = []
    pairs, skips = load_preference_data(str(p), TOK, on_error="skip", log=logs.append)
    assert len(pairs) == 1
    assert skips.counts == {"invalid row": 1, "invalid row (field 'chosen')": 1}
    assert len(logs) == 3 and "row 2" in logs[0] and "row 3" in logs[1]


def test_memory_source_transform_and_limit():
    rows = [{"q": f"q{i}", "label": i % 2} for i in range(10)]

    def to_pair(rec):
        if rec["q"] == "q3":
            raise DataError("bad label", field="label")
        yes, no = ("yes", "no") if rec["label"] else ("no", "yes")
        return {"prompt": rec["q"] + "?", "chosen": yes, "rejected": no}

    with pytest.raises(DataError, match=r"^<memory>: row 4: field 'label': bad label$"):
        load_preference_data(rows, TOK, transform=to_pair, log=lambda m: None)
    pairs, skips = load_preference_data(rows, TOK, transform=to_pair, on_error="skip", limit=5, log=lambda m: None)
    assert len(pairs) == 5 and skips.total == 1 and pairs[0].meta == {"row": 1}


def test_load_sft_from_csv(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("prompt,completion\nQ: 1+1\\nA: ,2\nx,\n")
    rows, skips = load_sft_data(str(p), TOK, log=lambda m: None)
    assert len(rows) == 1 and skips.counts == {"empty response": 1}


def test_bad_on_error():
    with pytest.raises(ValueError, match="on_error"):
        load_preference_data([], TOK, on_error="ignore")


def test_data_split_reaches_the_loader(tmp_path):
    """data.split picks the split of a saved Hugging Face DatasetDict (it used to be accepted and ignored)."""
    import datasets

    from dpolab.config import build_config
    from dpolab.engine.data_setup import prepare_data
    from dpolab.models.tokenizer import build_char_tokenizer

    row = lambda c: {"prompt": "Q: ", "chosen": c, "rejected": "zz"}  # noqa: E731
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([row("a")] * 3), "other": datasets.Dataset.from_list([row("b")] * 5)}
    ).save_to_disk(str(tmp_path / "ds"))
    cfg = build_config({"data": {"train": str(tmp_path / "ds"), "split": "other", "eval_fraction": 0}})
    train, _ = prepare_data(cfg.data, build_char_tokenizer(), "preference", 0, log=lambda s: None)
    assert len(train) == 5
