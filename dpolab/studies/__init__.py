"""Studies: grids of runs, aggregation with confidence intervals, and reports (markdown + PNG).

``dpolab study NAME --size cpu|paper`` runs one; :data:`STUDIES` is the registry (``dpolab study --help`` lists it).
"""
from __future__ import annotations

import importlib

# name -> (module, one-line summary); the summary is what `dpolab study --help` shows
STUDIES = {
    "dpop": ("dpolab.studies.dpop", "S3: DPOP vs DPO on low and high edit-distance pairs (arXiv 2402.13228)"),
    "madpo": ("dpolab.studies.madpo", "S2: MADPO vs DPO, IPO and beta-DPO across data-quality tiers (arXiv 2510.05342)"),
    "sft-dpo": ("dpolab.studies.sft_dpo", "S1: SFT vs DPO vs SFT->DPO, full fine-tuning vs LoRA (arXiv 2603.20100)"),
    "squeeze": ("dpolab.studies.squeeze", "S4: squeezing and Gate-DPO, with likelihood probes (arXiv 2605.02626)"),
}


def list_studies() -> list:
    """``(name, one-line summary)`` of every packaged study, by name."""
    return [(name, STUDIES[name][1]) for name in sorted(STUDIES)]


def get_study(name: str):
    """The study module registered under ``name``."""
    if name not in STUDIES:
        from ..config import ConfigError

        raise ConfigError(f"unknown study '{name}'; valid: {', '.join(sorted(STUDIES))}")
    return importlib.import_module(STUDIES[name][0])
