"""Read raw records (plain dicts) from files, saved datasets, the Hugging Face hub or memory.

Every reader yields ``(row, record)`` pairs where ``row`` is the 1-based number a user would look up:

- ``.jsonl``: the physical line number in the file (blank lines are skipped but still counted);
- ``.csv`` / ``.tsv``: the data row number (row 1 is the first row after the header; a quoted field
  spanning several lines still counts as one row);
- ``.json``, ``.parquet``, saved/hub datasets and in-memory lists: the 1-based index of the record.

The text formats may be gzipped (``.jsonl.gz``, ``.json.gz``, ``.csv.gz``, ``.tsv.gz``, as Anthropic HH ships): they
are decompressed while reading, with the same row numbers and messages (naming the ``.gz`` file). A corrupt or
truncated gzip file is a file-level :class:`DataError`.

Per-row problems (a bad JSON line, invalid UTF-8, a CSV row with the wrong number of fields) are
reported as :class:`DataError` naming the file and row. :func:`read_records` raises them;
:func:`iter_records` yields them in place of the record so a loader can count and skip them.
File-level problems (missing file, unreadable container) always raise.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import sys
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Tuple, Union

from dpolab.data.types import DataError

Source = Union[str, os.PathLike, Iterable[dict]]
TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
FILE_SUFFIXES = (*TEXT_SUFFIXES, ".parquet", *(s + ".gz" for s in TEXT_SUFFIXES))
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)  # bad header or CRC, truncated stream, bad deflate data
MEMORY = "<memory>"
_SURROGATE = re.compile("[\udc80-\udcff]")  # what invalid UTF-8 bytes decode to under 'surrogateescape'


def source_name(source: Source) -> str:
    """The name used in error messages: the path, the hub name, or ``<memory>``."""
    return str(source) if isinstance(source, (str, os.PathLike)) else MEMORY


def read_records(source: Source, *, split: Optional[str] = None) -> Iterator[Tuple[int, dict]]:
    """Yield ``(row, record)`` from ``source``; raise :class:`DataError` at the first bad row.

    ``source`` is a path (.jsonl, .json, .csv, .tsv, each optionally .gz, .parquet, or a folder written by
    ``datasets.save_to_disk``), a Hugging Face hub dataset name, or an iterable of dicts.
    ``split`` picks the split of a hub dataset or a saved ``DatasetDict`` (default 'train').
    See the module docstring for what ``row`` means for each format.
    """
    for row, rec in iter_records(source, split=split):
        if isinstance(rec, DataError):
            raise rec
        yield row, rec


def iter_records(source: Source, *, split: Optional[str] = None) -> Iterator[Tuple[int, Union[dict, DataError]]]:
    """Like :func:`read_records` but yields a :class:`DataError` in place of each bad row."""
    if not isinstance(source, (str, os.PathLike)):
        return _iter_memory(source)
    path = Path(os.path.expanduser(str(source)))
    suffix, gz = _file_type(path)
    kind = suffix + (".gz" if gz else "")
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as e:  # e.g. a file name longer than the filesystem allows
        raise DataError(f"cannot open: {e.strerror or e}", source=str(source)) from e
    if is_dir:
        return _iter_hf(_load_saved(path, split), str(source))
    if is_file:
        readers = {
            ".jsonl": _iter_jsonl,
            ".json": _iter_json,
            ".csv": _iter_csv,
            ".tsv": _iter_csv,
            ".parquet": _iter_parquet,
        }
        if kind not in FILE_SUFFIXES:
            raise DataError(
                f"unsupported file type '{kind}' (expected one of {', '.join(FILE_SUFFIXES)})", source=str(source)
            )
        return readers[suffix](path, str(source), gz) if gz else readers[suffix](path, str(source))
    if kind in FILE_SUFFIXES or gz or str(source).startswith((".", "/", "~")):
        raise DataError("file not found", source=str(source))
    return _iter_hf(_load_hub(str(source), split), str(source))


def _file_type(path: Path) -> Tuple[str, bool]:
    """(format suffix, gzipped): ``d.jsonl.gz`` -> ('.jsonl', True), ``d.csv`` -> ('.csv', False)."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return Path(path.stem).suffix.lower(), True
    return suffix, False


def _gzip_error(e: BaseException, name: str, after_line: Optional[int] = None) -> DataError:
    where = f" after line {after_line}" if after_line else ""  # (line 0: the header is already bad)
    detail = str(e).replace("\n", " ") or type(e).__name__
    return DataError(f"corrupt or truncated gzip file{where} ({detail})", source=name)


def _read_bytes(path: Path, name: str, gz: bool) -> bytes:
    """The whole file, decompressed if ``gz``; a corrupt gzip file is a file-level DataError."""
    if not gz:
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except _GZIP_ERRORS as e:
        raise _gzip_error(e, name) from e


def _lines(f: Any, name: str) -> Iterator[bytes]:
    """The lines of a (possibly gzip) binary file; corrupt compressed data stops with a DataError naming the file."""
    it, line = iter(f), 0
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except _GZIP_ERRORS as e:
            raise _gzip_error(e, name, after_line=line) from e
        line += 1
        yield raw


def _iter_memory(records: Iterable[Any]) -> Iterator[Tuple[int, Union[dict, DataError]]]:
    for row, rec in enumerate(records, 1):
        yield (
            row,
            rec
            if isinstance(rec, dict)
            else DataError(f"expected a dict, got {type(rec).__name__}", source=MEMORY, row=row),
        )


def _decode(raw: bytes, name: str, row: int) -> Union[str, DataError]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return DataError(f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})", source=name, row=row)


def _iter_jsonl(path: Path, name: str, gz: bool = False) -> Iterator[Tuple[int, Union[dict, DataError]]]:
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        for row, raw in enumerate(_lines(f, name), 1):
            text = _decode(raw, name, row)
            if isinstance(text, DataError):
                yield row, text
                continue
            if row == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                yield row, DataError(f"invalid JSON: {e.msg} (column {e.colno})", source=name, row=row)
                continue
            except RecursionError:
                yield row, DataError("invalid JSON: nested too deeply", source=name, row=row)
                continue
            yield (
                row,
                rec
                if isinstance(rec, dict)
                else DataError(f"expected a JSON object, got {type(rec).__name__}", source=name, row=row),
            )


def _iter_json(path: Path, name: str, gz: bool = False) -> Iterator[Tuple[int, Union[dict, DataError]]]:
    raw = _read_bytes(path, name, gz)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # one JSON document: name the line, there is no row yet
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"invalid UTF-8 at line {line}", source=name) from e
    try:
        data = json.loads(text.lstrip("\ufeff"))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", source=name) from e
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply", source=name) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError('expected a JSON list of objects or {"data": [...]}', source=name)
    for row, rec in enumerate(data, 1):
        yield (
            row,
            rec
            if isinstance(rec, dict)
            else DataError(f"expected a JSON object, got {type(rec).__name__}", source=name, row=row),
        )


def sniff_delimiter(header_line: str, default: str) -> str:
    """The delimiter of a delimited file: the most frequent of tab, comma, semicolon, pipe in the header
    line (the extension's ``default`` wins ties and is used when none occurs). Quora's ``.csv`` is
    tab-separated, so the extension alone is not enough."""
    counts = {d: header_line.count(d) for d in ("\t", ",", ";", "|")}
    best = max(counts.values())
    if best == 0 or counts.get(default, 0) == best:
        return default
    return max(counts, key=counts.get)


def _iter_csv(path: Path, name: str, gz: bool = False) -> Iterator[Tuple[int, Union[dict, DataError]]]:
    # 'surrogateescape' keeps invalid bytes as lone surrogates so the bad row can be named, not the file.
    text = _read_bytes(path, name, gz).decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    check_utf8 = bool(_SURROGATE.search(text))
    default = "\t" if _file_type(path)[0] == ".tsv" else ","
    delim = sniff_delimiter(text.split("\n", 1)[0], default)
    _raise_csv_field_limit()
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise DataError(f"unreadable header line: {e}", source=name) from e
    if header is None:
        return
    if check_utf8 and any(_SURROGATE.search(h) for h in header):
        raise DataError("invalid UTF-8 in the header line", source=name)
    if len(set(header)) != len(header):
        raise DataError(f"duplicate column names in the header: {header}", source=name)
    row = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # the reader cannot go on after this: report the row, then stop
            yield row + 1, DataError(f"malformed CSV: {e}", source=name, row=row + 1)
            return
        row += 1
        if not fields:  # a blank line
            continue
        if check_utf8 and any(_SURROGATE.search(v) for v in fields):
            yield row, DataError("invalid UTF-8", source=name, row=row)
        elif len(fields) != len(header):
            yield (
                row,
                DataError(
                    f"expected {len(header)} fields, got {len(fields)} (delimiter {delim!r})", source=name, row=row
                ),
            )
        else:
            yield row, dict(zip(header, fields))


def _raise_csv_field_limit() -> None:
    """Python's csv module refuses fields over 128 KiB by default; long documents are legitimate data."""
    limit = sys.maxsize
    while limit > 2**20:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # the limit must fit a C long
            limit //= 2


def _iter_parquet(path: Path, name: str) -> Iterator[Tuple[int, Union[dict, DataError]]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"cannot read parquet: {e}".replace("\n", " "), source=name) from e
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            yield row, rec


def _pick_split(dsd: Any, split: Optional[str], name: str) -> Any:
    keys = list(dsd.keys())
    if split is None:
        split = "train" if "train" in keys or len(keys) != 1 else keys[0]
    if split not in keys:
        raise DataError(f"no split '{split}' (available: {', '.join(keys)})", source=name)
    return dsd[split]


def _load_saved(path: Path, split: Optional[str]) -> Any:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"not a saved Hugging Face dataset folder: {e}".replace("\n", " "), source=str(path)) from e
    return _pick_split(ds, split, str(path)) if isinstance(ds, datasets.DatasetDict) else ds


def _load_hub(name: str, split: Optional[str]) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"no such local file, and loading it as a Hugging Face hub dataset (split={split or 'train'!r}) failed: "
            f"{msg}",
            source=name,
        ) from e


def _iter_hf(ds: Any, name: str) -> Iterator[Tuple[int, dict]]:
    for row, rec in enumerate(ds, 1):
        yield row, dict(rec)
