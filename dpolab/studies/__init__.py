"""Studies: grids of runs, aggregation with confidence intervals, and reports (markdown + PNG).

``dpolab study NAME --size cpu|paper`` runs one; see :data:`STUDIES` for the names.
"""
from __future__ import annotations

import importlib

STUDIES = {"dpop": "dpolab.studies.dpop", "madpo": "dpolab.studies.madpo", "sft-dpo": "dpolab.studies.sft_dpo", "squeeze": "dpolab.studies.squeeze"}


def get_study(name: str):
    if name not in STUDIES:
        raise ValueError(f"unknown study '{name}'; valid: {', '.join(sorted(STUDIES))}")
    return importlib.import_module(STUDIES[name])
