"""The data pipeline: sources -> formats -> tokenize -> collate (see each module's docstring).

Public API::

    read_records(source, *, split=None) -> Iterator[(row, record)]
    to_preference_row(record, *, source, row, columns=None, extras=(), skips=None) -> PreferenceRow | None
    to_sft_row(record, *, source, row, columns=None, skips=None) -> SFTRow | None
    tokenize_preference(row, tokenizer, *, max_length=512, ...) -> TokenizedPair | None
    tokenize_sft(row, tokenizer, *, max_length=512, ...) -> TokenizedSFT | None
    collate_preference(pairs, pad_id, *, pad_to_multiple_of=None) -> PairBatch  (dpolab.data.batches)
    collate_sft(rows, pad_id, *, pad_to_multiple_of=None) -> RowBatch
    load_preference_data(source, tokenizer, ...) -> (list[TokenizedPair], SkipCounter)
    load_sft_data(source, tokenizer, ...) -> (list[TokenizedSFT], SkipCounter)
"""

from dpolab.data.collate import collate_preference, collate_sft, length_grouped_indices, pair_length
from dpolab.data.dataset import load_preference_data, load_sft_data
from dpolab.data.formats import split_common_prefix, to_preference_row, to_sft_row
from dpolab.data.sources import iter_records, read_records, sniff_delimiter
from dpolab.data.tokenize import tokenize_preference, tokenize_sft
from dpolab.data.types import DataError, PreferenceRow, SFTRow, SkipCounter, TokenizedPair, TokenizedSFT

__all__ = [
    "DataError",
    "PreferenceRow",
    "SFTRow",
    "SkipCounter",
    "TokenizedPair",
    "TokenizedSFT",
    "read_records",
    "iter_records",
    "sniff_delimiter",
    "to_preference_row",
    "to_sft_row",
    "split_common_prefix",
    "tokenize_preference",
    "tokenize_sft",
    "collate_preference",
    "collate_sft",
    "length_grouped_indices",
    "pair_length",
    "load_preference_data",
    "load_sft_data",
]
