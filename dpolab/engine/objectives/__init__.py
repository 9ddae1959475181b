"""Training objectives, registered by ``train.mode`` name. A new objective: a new file + one line here."""

from __future__ import annotations

from typing import Dict, Type

from ...config import ConfigError
from ..data_kinds import register_kind
from .base import MicroResult, Objective, RunContext, RunParts
from .kto import KTOObjective
from .online import OnlineObjective
from .preference import PreferenceObjective
from .reward_model import RewardModelObjective
from .sft import SFTObjective

OBJECTIVES: Dict[str, Type[Objective]] = {}


def register(cls: Type[Objective]) -> Type[Objective]:
    """Make ``cls`` available as ``train.mode=<cls.name>``, and its data kind by its name."""
    register_kind(cls.data_kind)
    OBJECTIVES[cls.name] = cls
    return cls


register(SFTObjective)
register(PreferenceObjective)
register(RewardModelObjective)
register(KTOObjective)
register(OnlineObjective)


def get_objective(name: str) -> Type[Objective]:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown train.mode '{name}'; valid: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


__all__ = ["Objective", "MicroResult", "RunContext", "RunParts", "OBJECTIVES", "register", "get_objective"]
