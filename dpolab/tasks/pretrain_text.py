"""Plain language-model pretraining rows from a public-domain text file (e.g. ``../shared/data/tiny-shakespeare/
input.txt``), so ``dpolab train train.mode=sft data.task=pretrain-text`` can give a tiny GPT-2 some English.

:func:`text_windows` cuts the text into consecutive, non-overlapping windows of at most ``chunk_chars``
characters that start at a line start (whole lines are packed greedily; a line longer than ``chunk_chars`` is
cut hard). :func:`pretrain_rows` returns them as SFT rows ``{text, id}`` (prompt '': the loss covers every token
after BOS). The evaluation windows are the LAST ``n_eval`` windows of the file (one contiguous tail), so no
training window overlaps evaluation text; training takes the first ``n_train`` windows of the rest (all when
``None``). Deterministic: no randomness (the engine shuffles batches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from dpolab.data.types import DataError
from dpolab.tasks.registry import Task, register, require_path

CHUNK_CHARS = 256


def text_windows(text: str, chunk_chars: int = CHUNK_CHARS) -> List[str]:
    """Consecutive windows of at most ``chunk_chars`` characters, each starting at a line start (CRLF -> LF)."""
    if not isinstance(chunk_chars, int) or chunk_chars < 1:
        raise DataError(f"chunk_chars must be a positive integer, got {chunk_chars!r}")
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    out: List[str] = []
    cur = ""
    for line in text.splitlines(keepends=True):
        while len(line) > chunk_chars:  # an over-long line: flush, then hard cuts
            if cur:
                out.append(cur)
                cur = ""
            out.append(line[:chunk_chars])
            line = line[chunk_chars:]
        if len(cur) + len(line) > chunk_chars:
            out.append(cur)
            cur = ""
        cur += line
    if cur:
        out.append(cur)
    return [w for w in (w.rstrip("\n") for w in out) if w.strip()]


def pretrain_rows(
    path: Union[str, Path], *, chunk_chars: int = CHUNK_CHARS, n_train: Optional[int] = None, n_eval: int = 64
) -> Tuple[List[dict], List[dict]]:
    """(train, eval) SFT rows ``{text, id}``; see the module docstring."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            "file not found (task 'pretrain-text' needs data.task_args.path: a plain text file)", source=str(path)
        )
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"invalid UTF-8 at byte {e.start}", source=str(path)) from e
    windows = text_windows(text, chunk_chars)
    if n_eval < 0 or (n_train is not None and n_train < 1):
        raise DataError(f"n_eval must be >= 0 and n_train >= 1 (or None), got n_eval={n_eval}, n_train={n_train}")
    if len(windows) <= n_eval:
        raise DataError(
            f"only {len(windows)} windows of {chunk_chars} characters, not more than n_eval = {n_eval}",
            source=str(path),
        )
    rows = [{"text": w, "id": f"window-{i}"} for i, w in enumerate(windows)]
    cut = len(rows) - n_eval
    train, evals = rows[:cut], rows[cut:]
    return (train[:n_train] if n_train else train), evals


# -- the task: ``data.task=pretrain-text`` (SFT only) --------------------------------------------------


def task_rows(args: Dict[str, Any], mode: str, seed: int, tokenizer: Any = None) -> Tuple[List[dict], List[dict]]:
    """Language-model pretraining windows of a text file; SFT mode only."""
    require_path("pretrain-text", args)
    if mode != "sft":
        raise DataError("task 'pretrain-text' is plain language modelling: use train.mode=sft")
    n_train = args.get("n_train")
    return pretrain_rows(
        str(args["path"]),
        chunk_chars=int(args.get("chunk_chars", CHUNK_CHARS)),
        n_train=int(n_train) if n_train else None,
        n_eval=int(args.get("n_eval", 64)),
    )


register(
    Task(
        "pretrain-text",
        "plain language-model pretraining windows of a text file (SFT)",
        ("path", "chunk_chars", "n_train", "n_eval"),
        task_rows,
    )
)
