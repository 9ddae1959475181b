"""What ``--resume`` may continue: never a finished run, never under other settings or other training data than the
run was trained with (except the documented allow-list below, whose changes are recorded), and only from a
checkpoint that loads.

A resumed run keeps its original ``config.yaml``; each resume that changed an allowed setting appends one row to
``resume_changes.jsonl`` (``{"step": N, "changes": {"train.max_steps": [20, 40]}}``).
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..atomic import append_text
from ..config import RunConfig, build_config, save_config
from .checkpoint import latest_intact_checkpoint, list_checkpoints
from .errors import TrainError
from .run_folder import DONE_MARKER, RESUME_CHANGES

# settings that do not change what the weights learn: they may differ on resume, and the change is recorded
ALLOWED = (
    "train.max_steps",
    "train.threads",
    "train.compile",
    "train.log_every",
    "eval.every",
    "eval.batch_size",
    "eval.at_start",
    "output.dir",
    "output.save_every",
    "output.keep_last",
    "output.save_final",
    "output.tensorboard",
    "output.wandb",
    "data.cache",
    "data.cache_dir",
)
# how the folder is opened, not a setting of the run: never compared
_IGNORED = ("output.overwrite", "output.progress")


def _flat(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> Tuple[Dict[str, List[Any]], List[str]]:
    """(allowed changes as {key: [old, new]}, refused keys each with its old and new value) between two configs."""
    old, new = _flat(saved), _flat(now)
    allowed: Dict[str, List[Any]] = {}
    refused: List[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b or key in _IGNORED:
            continue
        longer = key == "train.max_steps" and isinstance(a, int) and isinstance(b, int) and b > a
        if key in ALLOWED and (key != "train.max_steps" or longer):
            allowed[key] = [a, b]
        else:
            refused.append(f"{key} ({_show(a)} -> {_show(b)})")
    return allowed, refused


def check_resumable(run_dir: Path, cfg: RunConfig, log: Callable[[str], None]) -> Tuple[Optional[Path], Dict[str, Any]]:
    """For ``--resume``: (the checkpoint to continue from, or None to start from the beginning; the allowed setting
    changes). Refuses, in one line, a finished run and settings that differ outside :data:`ALLOWED`."""
    if (run_dir / DONE_MARKER).exists():
        raise TrainError(
            f"{run_dir} holds a finished run ({DONE_MARKER}): --resume never trains it again; to train "
            f"it anew drop --resume and set output.overwrite=true, to train further start a new run from "
            f"it (model.init_from={run_dir / 'final'}), or choose another output.dir"
        )
    ckpt = latest_intact_checkpoint(run_dir, log=log)
    if ckpt is None and list_checkpoints(run_dir):  # the run's checkpoints are all damaged: never wiped silently
        raise TrainError(
            f"--resume refused: no checkpoint in {run_dir / 'checkpoints'} is intact (each is named "
            f"above); restore one, or start over (output.overwrite=true, no --resume)"
        )
    if ckpt is None:  # killed before its first checkpoint
        log(f"--resume: no intact checkpoint in {run_dir}; starting from the beginning")
        return None, {}
    saved = run_dir / "config.yaml"
    if not saved.exists():
        log(f"--resume: {saved} is missing; the settings cannot be checked against the run's")
        return ckpt, {}
    try:
        import yaml

        before = build_config(yaml.safe_load(saved.read_text(encoding="utf-8"))).to_dict()
    except Exception as e:
        raise TrainError(
            f"--resume refused: {saved} cannot be read to check the settings ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''})"
        ) from e
    allowed, refused = config_changes(before, cfg.to_dict())
    if refused:
        raise TrainError(
            f"--resume refused: the settings differ from the run's {saved} in {'; '.join(refused)}. "
            f"Resume with the run's settings, or start over (output.overwrite=true, no --resume) or in "
            f"another output.dir; only {', '.join(ALLOWED)} may change on resume (train.max_steps only "
            f"upward)"
        )
    return ckpt, allowed


def _bytes(v: Any) -> bytes:
    if isinstance(v, list):
        try:  # token ids: fast
            return b"q" + array("q", v).tobytes()
        except (TypeError, OverflowError):
            pass
    return b"j" + json.dumps(v, sort_keys=True, default=str).encode()


def data_fingerprint(items: Sequence[Any]) -> str:
    """SHA-256 of the training examples' content (token ids, labels, extras; not the passthrough ``meta``)."""
    h = hashlib.sha256()
    for x in items:
        fields = vars(x) if is_dataclass(x) else x if isinstance(x, Mapping) else {"": x}
        for k in sorted(f for f in fields if f != "meta"):
            h.update(f"\0{k}\0".encode() + _bytes(fields[k]))
    return h.hexdigest()


def check_same_data(ckpt: Optional[Path], fingerprint: str) -> str:
    """Refuse to continue ``ckpt`` on training examples other than those it was trained on (a data file edited
    since); returns ``fingerprint`` (:func:`data_fingerprint`). A checkpoint written before fingerprints were
    recorded is not checked."""
    if ckpt is None:
        return fingerprint
    recorded = json.loads((ckpt / "state.json").read_text(encoding="utf-8")).get("data_sha256")
    if recorded is not None and recorded != fingerprint:
        raise TrainError(
            f"--resume refused: the training examples differ from those {ckpt} was trained on (content "
            f"hash {fingerprint[:12]}, recorded {recorded[:12]}): a data file or data setting changed "
            f"since; restore it, or start over (output.overwrite=true, no --resume) or in another "
            f"output.dir"
        )
    return fingerprint


def record_start(
    run_dir: Path, cfg: RunConfig, ckpt: Optional[Path], changes: Dict[str, Any], step: int, log: Callable[[str], None]
) -> None:
    """A fresh run saves ``config.yaml``; a resumed one keeps the original and appends its allowed changes to
    ``resume_changes.jsonl``."""
    if ckpt is None or not (run_dir / "config.yaml").exists():
        save_config(cfg, run_dir / "config.yaml")
    if ckpt is not None and changes:
        append_text(run_dir / RESUME_CHANGES, json.dumps({"step": step, "changes": changes}, default=str) + "\n")
        log(
            f"--resume: changed settings recorded in {run_dir / RESUME_CHANGES}: "
            + ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())
        )
