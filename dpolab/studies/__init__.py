"""Studies: grids of runs, aggregation with confidence intervals, and reports (markdown + PNG).

``dpolab study NAME --size cpu|paper`` runs one. Every study is a :class:`dpolab.studies.study.Study` object;
:data:`STUDIES` is the registry (``dpolab study --help`` lists it): the packaged studies by module, imported on first
use (a study module imports torch, and ``dpolab --help`` must not), plus any :func:`register` adds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Dict, Tuple, Union

if TYPE_CHECKING:
    from .study import Study

# name -> the Study object, or (module whose STUDY it is, its one-line summary) until first use; the summary is what
# `dpolab study --help` shows (tests/integration/test_cli_and_tools.py checks it is the study's own)
STUDIES: Dict[str, Union["Study", Tuple[str, str]]] = {
    "dpop": ("dpolab.studies.dpop", "S3: DPOP vs DPO on low and high edit-distance pairs (arXiv 2402.13228)"),
    "madpo": (
        "dpolab.studies.madpo",
        "S2: MADPO vs DPO, IPO and beta-DPO across data-quality tiers (arXiv 2510.05342)",
    ),
    "sft-dpo": ("dpolab.studies.sft_dpo", "S1: SFT vs DPO vs SFT->DPO, full fine-tuning vs LoRA (arXiv 2603.20100)"),
    "squeeze": ("dpolab.studies.squeeze", "S4: squeezing and Gate-DPO, with likelihood probes (arXiv 2605.02626)"),
}


def register(study: "Study") -> "Study":
    """Add a study object under its ``name`` (for ``dpolab study NAME``, ``--dry-run`` and ``--help``)."""
    if not study.name or not study.summary:
        raise ValueError("a study needs a name and a one-line summary to be registered")
    if study.name in STUDIES:
        raise ValueError(f"a study named '{study.name}' is already registered")
    STUDIES[study.name] = study
    return study


def list_studies() -> list:
    """``(name, one-line summary)`` of every registered study, by name."""
    return [(name, entry[1] if isinstance(entry, tuple) else entry.summary) for name, entry in sorted(STUDIES.items())]


def get_study(name: str) -> "Study":
    """The study object registered under ``name``."""
    if name not in STUDIES:
        from ..errors import ConfigError

        raise ConfigError(f"unknown study '{name}'; valid: {', '.join(sorted(STUDIES))}")
    entry = STUDIES[name]
    if isinstance(entry, tuple):
        entry = STUDIES[name] = importlib.import_module(entry[0]).STUDY
    return entry
