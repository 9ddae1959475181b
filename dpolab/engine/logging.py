"""Metrics: one JSON row per logged step in ``metrics.jsonl``, plus optional TensorBoard / W&B."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from ..atomic import append_text, reported_as, write_text
from ..errors import MissingPackageError


def to_float(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().float()
        return v.item() if v.numel() == 1 else v.mean().item()
    if isinstance(v, (int, float, bool, str)) or v is None:
        return v
    return float(v)


def clean(row: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in row.items():
        f = to_float(v)
        if isinstance(f, float) and not math.isfinite(f):
            f = str(f)  # JSON has no NaN/inf; keep it visible as text
        out[k] = f
    return out


class MetricsLogger:
    """Appends rows to ``metrics.jsonl``; on resume, rows after the checkpoint's step are dropped first.

    ``resumed_eval``: the evaluation row logged at the resumed step (every process reads it), so a run killed after
    its final evaluation, e.g. while publishing ``final/``, does not evaluate and log that step twice."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool = True,
        tensorboard: bool = False,
        wandb: bool = False,
        config: Optional[dict] = None,
        resume_step: Optional[int] = None,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        self.wandb = None
        self.resumed_eval = None
        if resume_step is not None and self.path.exists():
            self.resumed_eval = next(
                (
                    r
                    for r in reversed(read_metrics(self.path))
                    if r.get("step") == resume_step and any(k.startswith("eval/") for k in r)
                ),
                None,
            )
        if not enabled:
            return
        with reported_as(self.path):  # an immutable or read-only metrics.jsonl: one line naming it
            if resume_step is not None and self.path.exists():
                self._truncate_after(resume_step)
            elif resume_step is None and self.path.exists():
                self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise MissingPackageError(
                    "output.tensorboard needs the tensorboard package: pip install tensorboard"
                ) from e
            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as _wandb
            except ImportError as e:
                raise MissingPackageError("output.wandb needs the wandb package: pip install wandb") from e
            self.wandb = _wandb.init(
                project=os.environ.get("WANDB_PROJECT", "dpolab"), config=config, dir=str(run_dir), resume="allow"
            )

    def _truncate_after(self, step: int) -> None:
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line from a kill
            if row.get("step", 0) <= step:
                keep.append(line)
        write_text(self.path, "".join(line + "\n" for line in keep))

    def log(self, row: Mapping[str, Any]) -> Dict[str, Any]:
        row = clean(row)
        if not self.enabled:
            return row
        append_text(self.path, json.dumps(row) + "\n")  # whole row or none; a failed write is one line (WriteError)
        step = int(row.get("step", 0))
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
        return row

    def log_final_eval(self, step: int, evaluate: Callable[[], Mapping[str, Any]]) -> Dict[str, Any]:
        """Log ``evaluate()`` as the final evaluation at ``step``, unless the run was resumed at ``step`` and its
        evaluation row is already logged (a kill after it): that row is the final evaluation, logged once."""
        kept = self.resumed_eval
        return dict(kept) if kept is not None and kept.get("step") == step else self.log(evaluate())

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: Path) -> list[dict]:
    rows = []
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows
