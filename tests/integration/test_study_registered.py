"""A study defined outside dpolab/studies: registered here, then planned (--dry-run), trained and reported by
`dpolab study` with no edit of the runner (dpolab/studies/run.py) or the CLI."""

from __future__ import annotations

import pytest

from dpolab import studies
from dpolab.cli import main
from dpolab.studies.runner import RunSpec
from dpolab.studies.study import Study

pytestmark = pytest.mark.slow

TINY = {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}}


class ToyStudy(Study):
    name, title, summary = "toy", "S0: a toy study", "S0: one SFT run per seed on arithmetic chains"
    sizes = {"cpu": {"steps": 2}}
    smoke = {"steps": 1}

    def plan(self, size, seeds, smoke=False, data_dir=None, out=None):
        s = self.settings(size, smoke)
        cfg = {
            "model": TINY,
            "data": {
                "task": "arithmetic",
                "max_length": 64,
                "task_args": {"n_train": 16, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
            },
            "train": {"mode": "sft", "batch_size": 8, "max_steps": s["steps"], "schedule": "constant"},
            "eval": {"every": 0, "batch_size": 8},
            "output": {"progress": False},
        }
        return [
            RunSpec(f"sft/seed{k}", {**cfg, "train": {**cfg["train"], "seed": k}}, {"seed": k}) for k in range(seeds)
        ]

    def report(self, results, out, size):
        steps = sorted(r.summary.get("steps") for r in results.values())
        return [f"Toy report ({size}): {len(results)} runs, steps {steps}."]


def test_a_registered_study_is_planned_trained_and_reported_by_dpolab_study(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(studies, "STUDIES", dict(studies.STUDIES))
    studies.register(ToyStudy())
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert any(line.split() == ["toy", *ToyStudy.summary.split()] for line in capsys.readouterr().out.splitlines())
    assert main(["study", "toy", "--dry-run", "--seeds", "2", "--out", str(tmp_path / "toy")]) == 0
    dry = capsys.readouterr().out
    assert f"study toy (cpu, 2 seed(s)): 2 runs -> {tmp_path / 'toy'}" in dry and "  sft/seed1" in dry
    assert "no measured time budget for size 'cpu'" in dry
    assert main(["study", "toy", "--seeds", "2", "--out", str(tmp_path / "toy")]) == 0
    text = (tmp_path / "toy" / "report.md").read_text()
    assert text.startswith("# S0: a toy study\n") and "Toy report (cpu): 2 runs, steps [2, 2]." in text
    assert "## Runs" in text and "`sft/seed1`" in text  # the shared sections every study report ends with
    assert main(["study", "toy", "--size", "paper"]) == 2  # one line naming the sizes it has
    assert "study 'toy' has sizes cpu, not 'paper'" in capsys.readouterr().err
