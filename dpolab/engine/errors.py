"""Why training stopped, in words a user can act on."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from ..errors import UserError, is_oom  # noqa: F401 - is_oom: the one out-of-memory rule, used by the trainer


class TrainError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss, unusable output folder, out of memory); the message says why."""


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:160]


def check_finite(model, last_eval: Optional[Dict[str, Any]], step: int) -> None:
    """A model with non-finite weights or eval loss is never checkpointed, saved or marked done: raise instead."""
    bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    loss = (last_eval or {}).get("eval/loss")  # the metrics log writes non-finite numbers as strings ("nan")
    try:
        loss = float(loss) if loss is not None else None
    except (TypeError, ValueError):
        loss = None
    if bad is None and (loss is None or math.isfinite(loss)):
        return
    what = f"weights ({bad})" if bad else f"eval loss ({loss})"
    raise TrainError(
        f"after step {step} the model has non-finite {what}: it is not saved or marked done, and "
        f"the last checkpoint is kept. Try a lower train.lr or train.max_grad_norm"
    )
