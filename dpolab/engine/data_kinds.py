"""Data kinds: what an objective trains on, how its rows are read and tokenised, and how they derive from another kind.

An objective declares its kind (``Objective.data_kind``, a :class:`DataKind`); :mod:`dpolab.engine.data_setup` asks
the kind, never the objective, how to load files and built-in tasks, and whether the data settings ask for rows of
another kind converted to it (SFT on the responses of preference pairs, KTO on pairs split into two rows: those
conversions live with their objectives). ``name`` keys the tokenised-data cache (:mod:`dpolab.data.token_cache`) and
asks a built-in task for its rows; registering an objective registers its kind (:func:`register_kind`), so
``prepare_data(..., "name", ...)`` finds it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..config import DataConfig
from ..data.types import DataError
from ..tasks.registry import rows_for


class DataKind:
    """One kind of training example. Override :meth:`load` (or set ``loader``), and for a derived kind
    :meth:`derived_from` and :meth:`convert`."""

    name: str = ""
    inspect_as: str = "sft"  # how `dpolab inspect-data` reads a file of this kind: 'preference', 'sft' or 'prompt'
    reads_pairs: bool = False  # its files are preference pairs: data.extras and data.format apply
    pairs_setting: str = ""  # the data setting that reads preference pairs as this kind (for error messages)

    def load(self, source: Any, tokenizer, **options) -> Tuple[List[Any], Any]:
        """Tokenised examples of ``source`` (a file, folder, dataset name or a list of raw rows) and the skips."""
        raise NotImplementedError

    def options(self, data: DataConfig) -> Dict[str, Any]:
        """Loader options of this kind beyond the common ones; refuses settings that do not apply to it."""
        if self.reads_pairs:
            return dict(extras=tuple(data.extras), data_format=data.format)
        if data.format != "auto":
            hint = f" set {self.pairs_setting}" if self.pairs_setting else ""
            raise DataError(
                f"data.format={data.format} reads preference pairs; for {self.name} rows on such data" + hint
            )
        return {}

    def task_rows(self, data: DataConfig, seed: int, tokenizer: Any = None) -> Tuple[List[dict], List[dict]]:
        """(train, eval) raw rows of the built-in task ``data.task`` for this kind."""
        return rows_for(data.task, data.task_args, self.name, seed, tokenizer)

    def derived_from(self, data: DataConfig) -> Optional["DataKind"]:
        """The kind this one is converted from under ``data``'s settings; None: read as itself."""
        return None

    def convert(self, items: List[Any], data: DataConfig, split: str) -> List[Any]:
        """Tokenised examples of :meth:`derived_from`'s kind as this kind's (``split``: 'train' or 'eval')."""
        raise NotImplementedError(f"data kind '{self.name}' converts from no other kind")

    def stored_as(self, data: DataConfig) -> "DataKind":
        """The kind the data files hold under ``data``'s settings (this one, or the one it derives from)."""
        source = self.derived_from(data)
        return self if source is None else source.stored_as(data)


class PreferencePairs(DataKind):
    """Preference pairs (prompt, chosen, rejected, extras): DPO family, reward models."""

    name = "preference"
    inspect_as = "preference"
    reads_pairs = True

    def load(self, source, tokenizer, **options):
        from ..data.dataset import load_preference_data

        return load_preference_data(source, tokenizer, **options)


PREFERENCE_PAIRS = PreferencePairs()
KINDS: Dict[str, DataKind] = {PREFERENCE_PAIRS.name: PREFERENCE_PAIRS}


def register_kind(kind: DataKind) -> DataKind:
    """Make ``kind`` findable by name; a second kind under a taken name is refused."""
    known = KINDS.setdefault(kind.name, kind)
    if known is not kind and type(known) is not type(kind):
        raise ValueError(f"data kind '{kind.name}' is already registered ({type(known).__name__})")
    return kind


def get_kind(kind) -> DataKind:
    """``kind`` itself, or the registered kind of that name."""
    if isinstance(kind, DataKind):
        return kind
    if kind not in KINDS:
        raise ValueError(f"unknown data kind '{kind}'; known: {', '.join(sorted(KINDS))}")
    return KINDS[kind]
