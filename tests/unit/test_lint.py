"""The tree is lint-clean and formatted by ruff, with the settings in pyproject.toml ([tool.ruff]): `make test` fails
on a new finding, so `ruff check --fix .` and `ruff format .` are run before a commit, not after a review."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_finds_nothing():
    done = _ruff("check", "--no-cache", "--output-format", "concise", ".")
    assert done.returncode == 0, (
        f"ruff check found (fix with `ruff check --fix .` or by hand):\n{done.stdout}{done.stderr}"
    )


def test_ruff_format_changes_nothing():
    done = _ruff("format", "--no-cache", "--check", ".")
    assert done.returncode == 0, f"ruff format would reformat (run `ruff format .`):\n{done.stdout}{done.stderr}"


def test_the_checks_can_fail(tmp_path):
    """The same settings flag a long line, an unused import and unformatted code in a scratch file."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = {  'a':1}\ny = '" + "z" * 130 + "'\n")
    cfg = str(ROOT / "pyproject.toml")
    check = _ruff("check", "--no-cache", "--config", cfg, "--output-format", "concise", str(bad))
    assert check.returncode != 0 and "F401" in check.stdout and "E501" in check.stdout
    assert _ruff("format", "--no-cache", "--config", cfg, "--check", str(bad)).returncode != 0
