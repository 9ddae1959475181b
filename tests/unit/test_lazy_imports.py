"""Commands that need no model start fast: ``dpolab --help`` and ``dpolab config`` import neither torch nor
transformers (each import costs seconds on a small machine; ``benchmarks/startup_check.py`` measures them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from dpolab.cli import main
try:
    main({args!r})
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "accelerate", "datasets") if m in sys.modules)
print("HEAVY", ",".join(heavy))
"""


@pytest.mark.parametrize("args", [["--help"], ["config"]])
def test_light_commands_import_no_heavy_modules(args):
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=120)
    line = [x for x in out.stdout.splitlines() if x.startswith("HEAVY")]
    assert line, out.stderr[-2000:]
    assert line[0] == "HEAVY ", f"dpolab {' '.join(args)} imported {line[0][6:]}"
