"""Preference losses for dpolab.

Every loss is a pure function of a :class:`PreferenceOutputs` record (or, for beta-DPO, a small
stateful object), registered by name. Use :func:`compute_loss` for one-off calls, :class:`CompositeLoss`
for a weighted list (``[{"name": "dpo"}, {"name": "sft", "weight": 0.2}]``), and :func:`list_losses`
to see what exists.
"""

from . import _all  # noqa: F401  (registers every loss)
from .base import LOCAL, DistContext, LossConfigError, LossInfo, LossOutput, PreferenceOutputs
from .fdpo import FDivergence
from .gate import GateConfig
from .length import LDConfig
from .madpo import madpo_weight
from .registry import CompositeLoss, LossSpec, compute_loss, get_loss, list_losses, register
from .wpo import WPOWeighting

__all__ = [
    "PreferenceOutputs",
    "DistContext",
    "LOCAL",
    "LossOutput",
    "LossInfo",
    "LossConfigError",
    "CompositeLoss",
    "LossSpec",
    "compute_loss",
    "get_loss",
    "list_losses",
    "register",
    "madpo_weight",
    "GateConfig",
    "FDivergence",
    "LDConfig",
    "WPOWeighting",
]
