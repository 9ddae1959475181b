"""Shared fixtures: ``shared_data`` points at ../shared/data (or $DPOLAB_SHARED_DATA), skipping when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; tests using it skip with the reason when it is not there."""
    path = Path(os.environ.get("DPOLAB_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(
            f"shared data not found at {path} (set DPOLAB_SHARED_DATA to the folder holding quora-paraphrase/ etc.)"
        )
    return path
