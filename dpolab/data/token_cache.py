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
cut): on a hit those lines are logged again, so the run reports the same counts as a fresh one. Entries are written
atomically (``dpolab.atomic``); an unreadable entry is a miss and is rewritten. Default folder: ``$DPOLAB_CACHE/tokens``
or ``~/.cache/dpolab/tokens`` (beside ``dpolab pretrain``'s ``pretrained/``); ``data.cache_dir`` moves it and
``data.cache=false`` turns the cache off. Nothing is evicted: delete the folder to reclaim its space.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .. import atomic

FORMAT = 1  # bump when an entry's layout changes
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
    init = {k: v for k, v in (getattr(tokenizer, "init_kwargs", None) or {}).items()
            if isinstance(v, (str, int, float, bool, type(None)))}
    extra = {"class": type(tokenizer).__name__, "special": getattr(tokenizer, "special_tokens_map", {}),
             "added": sorted(map(list, tokenizer.get_added_vocab().items())) if hasattr(tokenizer, "get_added_vocab") else None,
             "chat_template": getattr(tokenizer, "chat_template", None), "init": init,
             "sides": [getattr(tokenizer, "padding_side", None), getattr(tokenizer, "truncation_side", None)]}
    return _sha(body + json.dumps(extra, sort_keys=True, default=str))


HASH_LIMIT = 64 << 20  # files up to this size are keyed by their content too (a same-size rewrite within the clock's tick)


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
    return {"path": str(path), "files": [[str(p.relative_to(path)) if p != path else "", *_file_identity(p)] for p in files]}


def code_identity() -> str:
    """A hash of the source that turns rows into tokens (any edit there misses every entry)."""
    h = hashlib.sha256()
    for p in sorted(f for d in _CODE_DIRS for f in (_PACKAGE / d).rglob("*.py")) + [_PACKAGE / "engine" / "data_setup.py"]:
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


def cache_key(settings: Mapping[str, Any], tokenizer: Any, kind: str, seed: int) -> Tuple[Optional[str], str]:
    """(the entry's key, '') or (None, why this data is not cached)."""
    ident, why = data_identity(settings)
    if ident is None:
        return None, why
    keyed = {k: v for k, v in settings.items() if k not in _CACHE_KEYS}
    blob = json.dumps({"format": FORMAT, "settings": keyed, "kind": kind, "seed": seed, "data": ident,
                       "tokenizer": tokenizer_identity(tokenizer), "code": code_identity()}, sort_keys=True, default=str)
    return _sha(blob)[:32], ""


def cached_tokenisation(settings: Mapping[str, Any], tokenizer: Any, kind: str, seed: int,
                        compute: Callable[[Callable[[str], Any]], Tuple[list, list]], *, log: Callable[[str], Any] = print,
                        enabled: bool = True, cache_dir: Optional[os.PathLike] = None) -> Tuple[list, list]:
    """``compute(log)`` -> (train, eval), or the cached result of an earlier call with the same key.

    ``settings`` is the run's ``data`` section as a dict (``cache``, ``cache_dir`` are ignored in the key)."""
    if not enabled:
        return compute(log)
    key, why = cache_key(settings, tokenizer, kind, seed)
    if key is None:
        log(f"tokenised-data cache not used: {why}")
        return compute(log)
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entry = path / f"{key}.pkl"
    if entry.is_file():
        try:
            with entry.open("rb") as f:
                stored = pickle.load(f)
            if stored.get("format") != FORMAT:
                raise ValueError(f"format {stored.get('format')}")
        except Exception as e:  # noqa: BLE001 - a damaged or foreign entry is a miss, rewritten below
            log(f"tokenised-data cache entry {entry} unreadable ({type(e).__name__}); tokenising again")
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
    try:
        atomic.write_bytes(entry, pickle.dumps({"format": FORMAT, "train": train, "eval": evals, "log": lines},
                                               protocol=pickle.HIGHEST_PROTOCOL))
    except OSError as e:  # a read-only or full disk must not stop the run: it only loses the cache
        log(f"tokenised-data cache not written ({entry}: {e.strerror or e})")
    return train, evals
