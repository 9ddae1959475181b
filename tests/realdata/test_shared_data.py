"""Real files from ../shared/data (skipped when absent): the Quora TSV's malformed rows are reported,
and the IMDb counterfactual pairs read as minimal-edit preference pairs."""

from collections import defaultdict

import pytest

from dpolab.data.dataset import load_preference_data
from dpolab.data.sources import read_records
from dpolab.data.types import DataError
from dpolab.models.tokenizer import build_char_tokenizer

pytestmark = pytest.mark.realdata
TOK = build_char_tokenizer()


def quora_pair(rec):
    """A paraphrase record -> a preference pair (chosen = the right label word); bad labels are errors."""
    label = rec["is_duplicate"]
    if label not in ("0.0", "1.0"):
        raise DataError(f"expected label 0.0 or 1.0, got {label!r}", field="is_duplicate")
    yes, no = ("yes", "no") if label == "1.0" else ("no", "yes")
    return {
        "prompt": f"Q1: {rec['sentence1']}\nQ2: {rec['sentence2']}\nParaphrase? ",
        "chosen": yes,
        "rejected": no,
        "id": rec["id"],
    }


@pytest.fixture(scope="module")
def quora(shared_data):
    return str(shared_data / "quora-paraphrase" / "quora-dev.csv")


def test_quora_is_read_as_tsv_despite_csv_name(quora):
    row, rec = next(iter(read_records(quora)))
    assert row == 1 and set(rec) == {"", "id", "sentence1", "sentence2", "is_duplicate"}
    assert rec["is_duplicate"] in ("0.0", "1.0")


def test_quora_malformed_rows_are_reported_not_crashed_on(quora):
    logs = []
    pairs, skips = load_preference_data(
        quora, TOK, transform=quora_pair, on_error="skip", max_length=64, log=logs.append
    )
    assert skips.counts == {"invalid row (field 'is_duplicate')": 2}
    assert len(pairs) == 20212
    assert "row 2576" in logs[0] and "row 14221" in logs[1]
    with pytest.raises(DataError) as e:
        load_preference_data(quora, TOK, transform=quora_pair, max_length=64, log=lambda m: None)
    assert str(e.value) == f"{quora}: row 2576: field 'is_duplicate': expected label 0.0 or 1.0, got ''"


def test_imdb_paired_tsv_gives_minimal_edit_pairs(shared_data):
    path = shared_data / "imdb-cad-sentiment" / "paired" / "dev_paired.tsv"
    by_batch = defaultdict(dict)
    for _, rec in read_records(str(path)):
        by_batch[rec["batch_id"]][rec["Sentiment"]] = rec["Text"]
    assert len(by_batch) == 245 and all(set(v) == {"Positive", "Negative"} for v in by_batch.values())
    records = [{"chosen": v["Positive"], "rejected": v["Negative"]} for v in by_batch.values()]  # implicit prompt
    pairs, skips = load_preference_data(records, TOK, max_length=4096, log=lambda m: None)
    assert len(pairs) + skips.total == 245 and len(pairs) >= 240
    assert sum(len(p.prompt_ids) > 1 for p in pairs) > 50  # many edits share a prefix, split off as the prompt
