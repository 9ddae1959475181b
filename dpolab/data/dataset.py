"""Top-level loaders: source -> records -> validated rows -> token ids, with one skip summary.

``load_preference_data`` / ``load_sft_data`` / ``load_unpaired_data`` (KTO) read ``source`` (a path, a saved
dataset folder, a hub name, or an in-memory list of dicts named ``<memory>``), optionally pass each raw record through
``transform`` (a function record -> record that may raise :class:`DataError` for a bad row, e.g. to
build preference pairs from a labelled dataset), validate it (:mod:`dpolab.data.formats`) and tokenise it
(:mod:`dpolab.data.tokenize`).

``on_error="raise"`` (default) raises the first bad row's one-line :class:`DataError`
(``path: row 17: field 'chosen': expected text or chat messages, got int``). ``on_error="skip"`` counts
each bad row in the :class:`SkipCounter` under ``"invalid row (field 'x')"`` and logs the first few
messages. Rows skipped by design (identical responses, empty responses, empty after truncation) are
always counted, never raised. The summary is logged once, at the end, with what truncation cut (how many prompts
and responses, median and max tokens removed: :mod:`dpolab.data.truncation_report`).

``data_format="hh"`` (preference data) parses Anthropic-HH text into chat messages rendered with the tokenizer's
chat template (:func:`dpolab.data.formats.parse_hh`); a tokenizer without one keeps the text, and the log says so.

``limit`` stops reading once that many examples were kept (later rows are not read, nor checked).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple

from dpolab.data.formats import FORMATS, to_preference_row, to_sft_row, to_unpaired_row
from dpolab.data.sources import Source, iter_records, source_name
from dpolab.data.tokenize import boundary_note, tokenize_preference, tokenize_sft, tokenize_unpaired
from dpolab.data.truncation_report import truncation_line, truncation_stats
from dpolab.data.types import DataError, SkipCounter, TokenizedPair
from dpolab.errors import ConfigError, first_sentence

ON_ERROR = ("raise", "skip")
MAX_LOGGED_ERRORS = 3


def invalid_reason(err: DataError) -> str:
    """The SkipCounter reason for a bad row under ``on_error='skip'``."""
    return f"invalid row (field '{err.field}')" if err.field else "invalid row"


def _located(err: DataError, name: str, row: int) -> DataError:
    """``err`` with the source and row filled in (a ``transform`` raises without knowing them)."""
    if err.source is not None and err.row is not None:
        return err
    return DataError(err.reason, source=err.source or name, row=err.row or row, field=err.field)


def _check_options(max_length: int, max_prompt_length: Optional[int], truncation_mode: str) -> None:
    from dpolab.data.tokenize import TRUNCATION_MODES, _check_lengths

    _check_lengths(max_length, max_prompt_length)
    if truncation_mode not in TRUNCATION_MODES:
        raise ConfigError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")


def _one_line(err: DataError) -> DataError:
    """Error messages are one line, whatever the data put in a column name or value."""
    if "\n" not in str(err) and "\r" not in str(err):
        return err
    fix = lambda t: None if t is None else str(t).replace("\r", "\\r").replace("\n", "\\n")  # noqa: E731
    return DataError(fix(err.reason), source=fix(err.source), row=err.row, field=fix(err.field))


def _load(
    source: Source,
    tokenizer: Any,
    *,
    convert: Callable,
    tokenize: Callable,
    check_options: Callable,
    split: Optional[str],
    transform: Optional[Callable],
    limit: Optional[int],
    on_error: str,
    log: Callable[[str], Any],
    kind: str,
    limits: str = "",
) -> Tuple[list, SkipCounter]:
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    name, skips, out, logged = source_name(source), SkipCounter(), [], 0
    check_options()  # bad settings are errors of the call, not of every row
    for row, rec in iter_records(source, split=split):
        if limit is not None and len(out) >= limit:
            break
        try:
            if isinstance(rec, DataError):
                raise rec
            if transform is not None:
                rec = transform(rec)
            item = convert(rec, source=name, row=row, skips=skips)
            try:
                tok = tokenize(item, tokenizer, skips=skips) if item is not None else None
            except (ValueError, TypeError) as e:  # the tokenizer (or chat template) rejecting a row: a bad row too
                raise DataError(
                    f"cannot tokenise: {type(e).__name__}: {first_sentence(e)}", source=name, row=row
                ) from e
        except DataError as e:
            err = _one_line(_located(e, name, row))
            if on_error == "raise":
                raise err from e.__cause__  # the root cause (a decode or tokenizer error), if any, not the copy
            skips.add(invalid_reason(err))
            if logged < MAX_LOGGED_ERRORS:
                log(f"skipping bad row: {err}")
                logged += 1
            continue
        if tok is not None:
            out.append(tok)
    cut = f"; {truncation_line(truncation_stats(out))}{f' ({limits})' if limits else ''}" if out else ""
    log(f"{name}: {len(out)} {kind} loaded; {skips.summary()}{cut}")
    note = boundary_note(out)  # rows whose response could not be split off the joint tokenisation
    if note:
        log(f"{name}: {note}")
    return out, skips


def _limits(max_length: int, max_prompt_length: Optional[int]) -> str:
    prompt = max_length // 2 if max_prompt_length is None else max_prompt_length
    return f"max_length {max_length}, max_prompt_length {prompt}"


def _chat_rows(tokenizer: Any, data_format: str, name: str, log: Callable[[str], Any]) -> bool:
    """Whether ``data.format=hh`` rows become chat messages (the tokenizer has a chat template), said once per load."""
    if data_format not in FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got {data_format!r}")
    chat = bool(getattr(tokenizer, "chat_template", None))
    if data_format == "hh":
        log(
            f"{name}: data.format=hh: "
            + (
                "Human/Assistant turns rendered with the tokenizer's chat template"
                if chat
                else "the tokenizer has no chat template; the HH text is kept as it is (checked turn by turn)"
            )
        )
    return chat


def load_preference_data(
    source: Source,
    tokenizer: Any,
    *,
    columns: Optional[Mapping[str, str]] = None,
    extras: Iterable[str] = (),
    max_length: int = 512,
    max_prompt_length: Optional[int] = None,
    truncation_mode: str = "keep_end",
    add_bos: bool = True,
    add_eos: bool = True,
    limit: Optional[int] = None,
    split: Optional[str] = None,
    transform: Optional[Callable[[dict], dict]] = None,
    on_error: str = "raise",
    log: Callable[[str], Any] = print,
    data_format: str = "auto",
) -> Tuple[List[TokenizedPair], SkipCounter]:
    """Load, validate and tokenise preference pairs; returns the pairs and the skip counts. ``data_format`` "hh":
    Anthropic-HH text parsed into chat messages (see :mod:`dpolab.data.formats`)."""
    extras = tuple(extras)
    _check_options(max_length, max_prompt_length, truncation_mode)
    chat = _chat_rows(tokenizer, data_format, source_name(source), log)
    convert = lambda rec, **kw: to_preference_row(  # noqa: E731
        rec,
        columns=columns,
        extras=extras,
        data_format=data_format,
        chat=chat,
        **kw,
    )
    tokenize = lambda row, tok, skips: tokenize_preference(  # noqa: E731
        row,
        tok,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation_mode=truncation_mode,
        add_bos=add_bos,
        add_eos=add_eos,
        skips=skips,
    )
    check = lambda: _check_options(max_length, max_prompt_length, truncation_mode)  # noqa: E731
    return _load(
        source,
        tokenizer,
        convert=convert,
        tokenize=tokenize,
        check_options=check,
        split=split,
        transform=transform,
        limit=limit,
        on_error=on_error,
        log=log,
        kind="pairs",
        limits=_limits(max_length, max_prompt_length),
    )


def _completion_loader(to_row: Callable, tokenize_row: Callable, kind: str, doc: str):
    """A loader of rows with one completion after the prompt (SFT rows, KTO's unpaired rows)."""

    def load(
        source: Source,
        tokenizer: Any,
        *,
        columns: Optional[Mapping[str, str]] = None,
        max_length: int = 512,
        max_prompt_length: Optional[int] = None,
        truncation_mode: str = "keep_end",
        add_bos: bool = True,
        add_eos: bool = True,
        limit: Optional[int] = None,
        split: Optional[str] = None,
        transform: Optional[Callable[[dict], dict]] = None,
        on_error: str = "raise",
        log: Callable[[str], Any] = print,
    ):
        convert = lambda rec, **kw: to_row(rec, columns=columns, **kw)  # noqa: E731
        tokenize = lambda row, tok, skips: tokenize_row(  # noqa: E731
            row,
            tok,
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            truncation_mode=truncation_mode,
            add_bos=add_bos,
            add_eos=add_eos,
            skips=skips,
        )
        check = lambda: _check_options(max_length, max_prompt_length, truncation_mode)  # noqa: E731
        return _load(
            source,
            tokenizer,
            convert=convert,
            tokenize=tokenize,
            check_options=check,
            split=split,
            transform=transform,
            limit=limit,
            on_error=on_error,
            log=log,
            kind=kind,
            limits=_limits(max_length, max_prompt_length),
        )

    load.__doc__ = doc
    return load


load_sft_data = _completion_loader(
    to_sft_row,
    tokenize_sft,
    "rows",
    "Load, validate and tokenise SFT rows; returns (list of TokenizedSFT, skip counts).",
)
load_unpaired_data = _completion_loader(
    to_unpaired_row,
    tokenize_unpaired,
    "unpaired rows",
    "Load, validate and tokenise unpaired (KTO) rows: SFT fields plus a boolean ``label``; returns (list of "
    "TokenizedUnpaired, skip counts).",
)
