"""The package's layers only point down: ``lint-imports`` checks the contract in pyproject.toml ([tool.importlinter]),
counting imports inside functions too."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _lint_imports() -> str:
    bin_dir = str(Path(sys.executable).parent)
    exe = shutil.which("lint-imports", path=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]' installs it)")
    return exe


def test_layers_contract_is_kept():
    exe = _lint_imports()
    env = dict(os.environ, PATH=str(Path(exe).parent) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"an import breaks the layer contract (pyproject.toml [tool.importlinter]):\n{report}"
    assert "KEPT" in report and "BROKEN" not in report
