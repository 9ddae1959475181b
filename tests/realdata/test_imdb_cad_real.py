"""The real IMDb CAD paired files (skipped when ../shared/data is absent): every batch is a Positive/Negative
pair, the texts fit the char tokenizer after cleaning, and the low-distance rows are far closer than the
high-distance control when measured in char tokens."""

import statistics

import pytest

from dpolab.data.dataset import load_preference_data
from dpolab.data.types import SkipCounter
from dpolab.diagnostics import bucket_pairs
from dpolab.models.tokenizer import build_char_tokenizer
from dpolab.tasks import imdb_cad as C

pytestmark = pytest.mark.realdata


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def paired(shared_data):
    return shared_data / "imdb-cad-sentiment" / "paired"


@pytest.fixture(scope="module")
def train_pairs(paired):
    skips = SkipCounter()
    return C.load_cad_pairs(str(paired / "train_paired.tsv"), skips=skips, log=quiet), skips


def test_pairs_load(train_pairs, paired):
    pairs, skips = train_pairs
    # 1,707 batches; one (batch 8822) has the same text under both labels
    assert len(pairs) == 1706 and skips.counts == {C.SKIP_IDENTICAL_TEXTS: 2}
    assert len({p.batch_id for p in pairs}) == len(pairs)
    for name, n in (("dev_paired.tsv", 245), ("test_paired.tsv", 488)):
        assert len(C.load_cad_pairs(str(paired / name), log=quiet)) >= n - 2


def test_low_rows_are_far_closer_than_high_rows_in_char_tokens(train_pairs):
    pairs, _ = train_pairs
    skips = SkipCounter()
    low = C.minimal_edit_rows(pairs, skips=skips, log=quiet)
    high = C.high_distance_rows(pairs, log=quiet)
    assert len(low) == len(high) == len(pairs) and skips.total == 0  # the window follows the first edit
    assert sum(r["prompt"] == C.EMPTY_PROMPT for r in low) < len(low) // 5
    tok = build_char_tokenizer()
    tokenized, load_skips = load_preference_data(low + high, tok, max_length=512, log=quiet)
    assert len(tokenized) == 2 * len(pairs) and load_skips.total == 0
    assert not any(tok.unk_token_id in p.prompt_ids + p.chosen_ids + p.rejected_ids for p in tokenized)
    bucket_pairs(tokenized)
    dist = {b: [p.meta["edit_distance"] for p in tokenized if p.meta["edit_bucket"] == b] for b in ("low", "high")}
    med = {b: statistics.median(d) for b, d in dist.items()}
    assert med["low"] <= 20 and med["high"] >= 60 and med["low"] * 3 < med["high"]  # measured: 16 and 77
    # the control keeps length: rejected spans of the high rows are as long as the chosen ones (within 10 % median)
    ratio = statistics.median(len(r["rejected"]) / len(r["chosen"]) for r in high)
    assert 0.9 < ratio < 1.1
