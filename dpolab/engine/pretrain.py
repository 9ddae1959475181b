"""``dpolab pretrain``: a tiny GPT-2 that knows some English, pretrained by dpolab itself on a public-domain text
file (e.g. ``../shared/data/tiny-shakespeare/input.txt``) and cached, so studies and users share one base model.

It is an ordinary ``dpolab train`` run (``train.mode=sft``, ``data.task=pretrain-text``) in a cache folder keyed
by a hash of everything that changes the weights: model size, tokenizer, the text's content (SHA-256 and size),
the windowing, steps, batch, learning rate, schedule and seed. Layout under the cache dir (default
``~/.cache/dpolab/pretrained``, or ``$DPOLAB_CACHE/pretrained``, or ``--cache-dir``)::

    <key>/final/          the model (HF format + tokenizer): pass it as model.name_or_path or model.init_from
    <key>/summary.json    the training run's summary; <key>/pretrain.json: the settings and the text's identity
    .partial-<key>/       a run in progress (checkpointed: a killed pretrain resumes from its newest checkpoint)

The finished folder appears only by an atomic rename of the partial one once training is done, so a folder named
``<key>`` is always complete. A second call with the same settings returns the cached path and trains nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .. import atomic
from ..data.types import DataError

FORMAT = 1  # bump when the run recipe changes in a way the fields below do not capture
DEFAULT_TINY = {"n_layer": 4, "n_embd": 128, "n_head": 4}


@dataclass
class PretrainSpec:
    text: str  # path of a UTF-8 text file
    preset: str = "tiny-gpt2"
    tiny: Dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TINY))
    tokenizer: str = "char"
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    schedule: str = "cosine"
    chunk_chars: int = 256
    n_eval: int = 32
    seed: int = 0


def default_cache_dir() -> Path:
    env = os.environ.get("DPOLAB_CACHE")
    return (Path(env).expanduser() / "pretrained") if env else Path.home() / ".cache" / "dpolab" / "pretrained"


def text_identity(path: Path) -> Dict[str, Any]:
    """Size and SHA-256 of the text file (the content, not its name or mtime, keys the cache)."""
    if not path.is_file():
        raise DataError("text file not found (dpolab pretrain needs a plain UTF-8 text file)", source=str(path))
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def pretrained_model_key(spec: PretrainSpec, ident: Dict[str, Any]) -> str:
    """The cache folder name of the model ``spec`` pretrains on the text ``ident`` (:func:`text_identity`): the
    preset and a hash of the settings and the text's content."""
    keyed = {k: v for k, v in asdict(spec).items() if k != "text"}
    blob = json.dumps({"format": FORMAT, "spec": keyed, "text": ident}, sort_keys=True)
    return f"{spec.preset}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def run_config(spec: PretrainSpec, run_dir: Path, progress: bool = True) -> Dict[str, Any]:
    return {
        "model": {"name_or_path": spec.preset, "tiny": dict(spec.tiny), "tokenizer": spec.tokenizer},
        "data": {
            "task": "pretrain-text",
            "max_length": spec.chunk_chars + 8,
            "task_args": {
                "path": str(Path(spec.text).expanduser().resolve()),
                "chunk_chars": spec.chunk_chars,
                "n_eval": spec.n_eval,
            },
        },
        "train": {
            "mode": "sft",
            "max_steps": spec.steps,
            "batch_size": spec.batch_size,
            "lr": spec.lr,
            "warmup_steps": min(spec.warmup_steps, spec.steps // 4),
            "schedule": spec.schedule,
            "seed": spec.seed,
            "log_every": 10,
        },
        "eval": {"every": 0, "batch_size": 32, "max_examples": spec.n_eval},
        "output": {
            "dir": str(run_dir),
            "save_every": max(1, min(250, spec.steps // 4)),
            "keep_last": 1,
            "progress": progress,
        },
    }


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock (POSIX flock) so two processes never train the same key at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        yield


def cached_path(spec: PretrainSpec, cache_dir: Optional[os.PathLike] = None) -> Path:
    """Where the finished model of ``spec`` is (or would be): ``<cache>/<key>/final``."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return cache / pretrained_model_key(spec, text_identity(Path(spec.text).expanduser())) / "final"


def pretrain(
    spec: PretrainSpec,
    cache_dir: Optional[os.PathLike] = None,
    *,
    progress: bool = True,
    log: Callable[[str], Any] = print,
) -> Path:
    """The ``final/`` folder of the pretrained model, training it first unless it is cached."""
    from ..config import build_config
    from . import train  # looked up on the package at call time (tests stub dpolab.engine.train)
    from .checkpoint import latest_checkpoint
    from .run_folder import DONE_MARKER

    final = cached_path(spec, cache_dir)
    done_dir = final.parent
    if (final / "config.json").exists():
        log(f"cached: {final}")
        return final
    with _lock(done_dir.parent / f".lock-{done_dir.name}"):
        if (final / "config.json").exists():  # another process finished it while we waited
            log(f"cached: {final}")
            return final
        partial = done_dir.parent / f".partial-{done_dir.name}"
        # a finished partial run (DONE: killed before it was moved into place) is trained again, never resumed
        resume = latest_checkpoint(partial) is not None and not (partial / DONE_MARKER).exists()
        cfg = build_config(run_config(spec, partial, progress))
        cfg.output.overwrite = not resume
        log(
            f"pretraining {spec.preset} {spec.tiny} on {spec.text} for {spec.steps} steps"
            + (" (resuming)" if resume else "")
            + f" -> {done_dir}"
        )
        summary = train(cfg, resume=resume, log=log)
        ident = text_identity(Path(spec.text).expanduser())
        atomic.write_text(
            partial / "pretrain.json", json.dumps({"spec": asdict(spec), "text": ident, "format": FORMAT}, indent=1)
        )
        shutil.rmtree(partial / "checkpoints", ignore_errors=True)  # the final model is all a user needs
        if done_dir.exists():  # a folder without a model (e.g. its final/ was deleted by hand) is not a cache hit:
            aside = done_dir.parent / f".old-{done_dir.name}-{os.getpid()}"  # swapped out only once the new one is in
            os.rename(done_dir, aside)
            os.rename(partial, done_dir)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(partial, done_dir)
        ev = (summary.get("final_eval") or {}).get("eval/loss")
        log(
            f"done: {summary['steps']} steps in {summary['wall_clock_s']:.0f}s"
            + (f", held-out loss {ev:.3f} nats/token" if isinstance(ev, (int, float)) else "")
        )
    return final
