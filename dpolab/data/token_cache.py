"""A disk cache of tokenised training data, so a second run with the same settings skips tokenisation.

An entry is keyed (SHA-256) by everything that can change the token ids or which rows are kept:

- the tokenizer: its class, its full serialised form (vocab, merges, normaliser, pre-tokeniser: ``backend_tokenizer``)
  or its vocabulary, added and special tokens, chat template and init settings;
- the data: every local file or folder it reads (``data.train``, ``data.eval``, a task's ``path``) by resolved path,
  size, modification time and (files up to 64 MB) SHA-256 of each file; a hub dataset (no local file to check) is
  not cached;
- every tokenisation setting: the whole ``data`` section except the cache's own keys (max lengths, truncation mode,
  columns, format, extras, limit, eval split...), the run's data kind (``train.mode``'s) and seed;
- the code that turns rows into tokens: the source of ``dpolab/data``, ``dpolab/tasks`` and the engine's data set-up.

An entry holds the (train, eval) lists and the lines the tokenisation logged (row counts, skips, what truncation
cut): on a hit those lines are logged again, so the run reports the same counts as a fresh one. An entry is JSON, never
a pickle (a shared cache folder must not run code on load): a header line with the SHA-256 of the body, then the body
(each example's fields and type). An entry whose body does not match its checksum (edited, swapped, a flipped bit)
or that cannot be read is recomputed with a notice, and rewritten; entries are written atomically
(``dpolab.atomic``). ``.pkl`` entries of earlier dpolab versions are never read. Default folder:
``$DPOLAB_CACHE/tokens`` or ``~/.cache/dpolab/tokens`` (beside ``dpolab pretrain``'s ``pretrained/``);
``data.cache_dir`` moves it and ``data.cache=false`` turns the cache off. Nothing is evicted: delete the folder to
reclaim its space.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .. import atomic
from .types import TokenizedPair, TokenizedSFT, TokenizedUnpaired

FORMAT = 2  # bump when an entry's layout changes (1: a pickle)
_TYPES = {cls.__name__: cls for cls in (TokenizedPair, TokenizedSFT, TokenizedUnpaired)}  # what an entry may hold
_CACHE_KEYS = ("cache", "cache_dir")  # data settings that do not change the tokens
_GENERATED_TASKS = ("arithmetic",)  # built-in tasks whose rows come from their arguments and seed, not from a file
_CODE_DIRS = ("data", "tasks")
_PACKAGE = Path(__file__).resolve().parents[1]


def default_cache_dir() -> Path:
    env = os.environ.get("DPOLAB_CACHE")
    return (Path(env).expanduser() / "tokens") if env else Path.home() / ".cache" / "dpolab" / "tokens"


def _sha(blob: str) -> str:
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash of everything about ``tokenizer`` that changes its token ids or the chat rendering."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    init = {
        k: v
        for k, v in (getattr(tokenizer, "init_kwargs", None) or {}).items()
        if isinstance(v, (str, int, float, bool, type(None)))
    }
    extra = {
        "class": type(tokenizer).__name__,
        "special": getattr(tokenizer, "special_tokens_map", {}),
        "added": sorted(map(list, tokenizer.get_added_vocab().items()))
        if hasattr(tokenizer, "get_added_vocab")
        else None,
        "chat_template": getattr(tokenizer, "chat_template", None),
        "init": init,
        "sides": [getattr(tokenizer, "padding_side", None), getattr(tokenizer, "truncation_side", None)],
    }
    return _sha(body + json.dumps(extra, sort_keys=True, default=str))


HASH_LIMIT = (
    64 << 20
)  # files up to this size are keyed by their content too (a same-size rewrite within the clock's tick)


def _file_identity(p: Path) -> List[Any]:
    st = p.stat()
    out: List[Any] = [st.st_size, st.st_mtime_ns]
    if st.st_size <= HASH_LIMIT:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out.append(h.hexdigest())
    return out


def path_identity(path: Path) -> Dict[str, Any]:
    """Resolved path plus size, mtime (ns) and, up to ``HASH_LIMIT`` bytes, SHA-256 of the file or of every file under
    the folder."""
    path = path.expanduser().resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        "path": str(path),
        "files": [[str(p.relative_to(path)) if p != path else "", *_file_identity(p)] for p in files],
    }


def code_identity() -> str:
    """A hash of the source that turns rows into tokens (any edit there misses every entry)."""
    h = hashlib.sha256()
    for p in sorted(f for d in _CODE_DIRS for f in (_PACKAGE / d).rglob("*.py")) + [
        _PACKAGE / "engine" / "data_setup.py"
    ]:
        h.update(f"{p.relative_to(_PACKAGE)}\0".encode())
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()


def data_identity(settings: Mapping[str, Any]) -> Tuple[Optional[Dict[str, Any]], str]:
    """The identity of every local file the data settings read, or (None, why the data cannot be cached)."""
    out: Dict[str, Any] = {}
    for key in ("train", "eval"):
        src = settings.get(key)
        if src is None:
            continue
        if not isinstance(src, str) or not Path(src).expanduser().exists():
            return None, f"data.{key} is not a local file or folder (a hub dataset or in-memory rows)"
        out[key] = path_identity(Path(src))
    task = settings.get("task")
    if task:
        path = (settings.get("task_args") or {}).get("path")
        if path is not None:
            if not Path(str(path)).expanduser().exists():
                return None, f"data.task_args.path {path!r} is not a local file or folder"
            out["task_path"] = path_identity(Path(str(path)))
        elif task not in _GENERATED_TASKS:
            return None, f"task '{task}' reads a default file (no data.task_args.path to check)"
    return out, ""


def tokenised_data_key(settings: Mapping[str, Any], tokenizer: Any, kind: str, seed: int) -> Tuple[Optional[str], str]:
    """(the key of the tokenised-data cache entry of this data, '') or (None, why this data is not cached)."""
    ident, why = data_identity(settings)
    if ident is None:
        return None, why
    keyed = {k: v for k, v in settings.items() if k not in _CACHE_KEYS}
    blob = json.dumps(
        {
            "format": FORMAT,
            "settings": keyed,
            "kind": kind,
            "seed": seed,
            "data": ident,
            "tokenizer": tokenizer_identity(tokenizer),
            "code": code_identity(),
        },
        sort_keys=True,
        default=str,
    )
    return _sha(blob)[:32], ""


def cached_tokenisation(
    settings: Mapping[str, Any],
    tokenizer: Any,
    kind: str,
    seed: int,
    compute: Callable[[Callable[[str], Any]], Tuple[list, list]],
    *,
    log: Callable[[str], Any] = print,
    enabled: bool = True,
    cache_dir: Optional[os.PathLike] = None,
) -> Tuple[list, list]:
    """``compute(log)`` -> (train, eval), or the cached result of an earlier call with the same key.

    ``settings`` is the run's ``data`` section as a dict (``cache``, ``cache_dir`` are ignored in the key)."""
    if not enabled:
        return compute(log)
    key, why = tokenised_data_key(settings, tokenizer, kind, seed)
    if key is None:
        log(f"tokenised-data cache not used: {why}")
        return compute(log)
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entry = path / f"{key}.json"
    if entry.is_file():
        try:
            stored, problem = read_entry(entry)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign entry is a miss, rewritten below
            stored, problem = None, f"unreadable ({type(e).__name__})"
        if stored is None:
            log(f"tokenised-data cache entry {entry} {problem}; tokenising again")
        else:
            log(f"tokenised data from the cache: {entry} (data.cache=false re-tokenises); as first logged:")
            for line in stored["log"]:
                log(line)
            return stored["train"], stored["eval"]
    lines: List[str] = []

    def tee(msg: str) -> None:
        lines.append(str(msg))
        log(msg)

    train, evals = compute(tee)
    blob = encode_entry(train, evals, lines)
    if blob is None:
        log("tokenised-data cache not written: the examples are not of a type it stores exactly")
        return train, evals
    try:
        atomic.write_bytes(entry, blob)
    except OSError as e:  # a read-only or full disk must not stop the run: it only loses the cache
        log(f"tokenised-data cache not written ({entry}: {e.strerror or e})")
    return train, evals


def _encode_item(item: Any) -> Dict[str, Any]:
    if not (is_dataclass(item) and type(item).__name__ in _TYPES and _TYPES[type(item).__name__] is type(item)):
        raise TypeError(type(item).__name__)
    return {"type": type(item).__name__, **{f.name: getattr(item, f.name) for f in fields(item)}}


def _decode_item(d: Dict[str, Any]) -> Any:
    d = dict(d)
    return _TYPES[d.pop("type")](**d)


def encode_entry(train: list, evals: list, lines: List[str]) -> Optional[bytes]:
    """The entry's bytes: a header line ``{"format", "sha256"}`` (SHA-256 of the body), then the JSON body; None when
    an example is of another type or would not read back equal (the cache then stores nothing)."""
    try:
        body = json.dumps(
            {"train": [_encode_item(x) for x in train], "eval": [_encode_item(x) for x in evals], "log": lines},
            separators=(",", ":"),
        ).encode("utf-8")
    except (TypeError, ValueError):
        return None
    decoded = json.loads(body)
    if [_decode_item(x) for x in decoded["train"]] != train or [_decode_item(x) for x in decoded["eval"]] != evals:
        return None  # e.g. a tuple or a non-string key in meta: JSON would change it
    header = json.dumps({"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest()}).encode("utf-8")
    return header + b"\n" + body


def read_entry(entry: Path) -> Tuple[Optional[Dict[str, Any]], str]:
    """(the entry's {"train", "eval", "log"}, '') or (None, why it is not used): another format, or a body that does
    not match its checksum."""
    header, _, body = entry.read_bytes().partition(b"\n")
    head = json.loads(header)
    if head.get("format") != FORMAT:
        return None, f"has format {head.get('format')}, not {FORMAT}"
    if hashlib.sha256(body).hexdigest() != head.get("sha256"):
        return None, "does not match its checksum (changed since it was written)"
    stored = json.loads(body)
    return {
        "train": [_decode_item(x) for x in stored["train"]],
        "eval": [_decode_item(x) for x in stored["eval"]],
        "log": [str(line) for line in stored["log"]],
    }, ""
