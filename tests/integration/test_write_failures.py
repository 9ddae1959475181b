"""A write that cannot succeed (file-size limit, full disk, read-only target) is one line naming the path and the
cause, never a traceback, and never leaves half a JSONL row (issue 32.4)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dpolab.cli import main
from dpolab.engine.checkpoint import list_checkpoints

TINY = [
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
    "data.task=arithmetic",
    "data.task_args={n_train: 16, n_eval: 4, n_terms: [2, 2], max_value: 9}",
    "data.max_length=48",
    "train.batch_size=4",
    "train.lr=1e-3",
    "eval.batch_size=4",
    "output.progress=false",
    "data.cache=false",
]

LIMITED = textwrap.dedent("""
    import resource, sys
    from dpolab.cli import main
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # SIGXFSZ is ignored by Python: writes fail with EFBIG
    sys.exit(main(["train", *sys.argv[3:], f"output.dir={sys.argv[1]}"]))
""")


def _limited(run: Path, limit: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(run), str(limit), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_a_file_size_limit_at_the_optimizer_state_is_one_line(tmp_path):
    """``ulimit -f`` between the weights' size and the optimiser state's, a checkpoint every step: torch's writer
    fails with RuntimeError('unexpected pos ...'); the run stops with one line and no partial checkpoint."""
    probe = tmp_path / "probe"
    assert main(["train", *TINY, "train.max_steps=1", "eval.at_start=false", f"output.dir={probe}"]) == 0
    ckpt = list_checkpoints(probe)[-1]
    weights, optimizer = (ckpt / "model" / "model.safetensors").stat().st_size, (ckpt / "optimizer.pt").stat().st_size
    assert optimizer > 1.6 * weights
    run = tmp_path / "run"
    proc = _limited(run, int(weights * 1.5), *TINY, "train.max_steps=3", "output.save_every=1")
    line = _one_error_line(proc)
    assert line.startswith(f"error: could not write the step-1 checkpoint in {run}: File too large"), line
    assert not list_checkpoints(run) and not list((run / "checkpoints").glob(".*"))


def test_a_file_size_limit_while_logging_is_one_line_and_leaves_whole_rows(tmp_path):
    run = tmp_path / "run"
    proc = _limited(run, 6000, *TINY, "train.max_steps=40", "output.save_every=0", "output.save_final=false")
    line = _one_error_line(proc)
    assert line == f"error: could not write {run / 'metrics.jsonl'}: File too large", line
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") and len(text) < 6000
    rows = [json.loads(r) for r in text.splitlines()]  # every row whole
    assert rows and rows[-1]["step"] < 40


def _pairs(tmp_path) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": "Q: 1+2\nA: ", "chosen": "1+2=3", "rejected": "1+2=4"}) + "\n" for _ in range(3))
    )
    return data


@pytest.mark.parametrize("flag", ["--out", "--per-pair"])
def test_eval_to_a_read_only_target_is_one_line(tmp_path, capsys, monkeypatch, flag):
    model = tmp_path / "run"
    assert main(["train", *TINY, "train.max_steps=1", f"output.dir={model}"]) == 0
    target = tmp_path / "ro" / "result.json"
    real = Path.write_text

    def read_only(self, *a, **k):
        if self.parent == target.parent:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", read_only)
    capsys.readouterr()
    rc = main(["eval", "--model", str(model / "final"), "--data", str(_pairs(tmp_path)), flag, str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == f"error: could not write {target}: Read-only file system", err
    assert not target.parent.exists() or not list(target.parent.iterdir())


def test_compare_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "cmp"
    rc = main(
        [
            "compare",
            "--out",
            str(out),
            "--budget",
            "2steps",
            "--seeds",
            "1",
            "--task",
            "arithmetic",
            "--methods",
            "dpo",
            *[
                f"--set={s}"
                for s in [
                    "data.task_args.n_train=48",
                    "data.task_args.n_eval=12",
                    "model.tiny.n_layer=1",
                    "model.tiny.n_embd=32",
                    "model.tiny.n_head=2",
                ]
            ],
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == f"error: could not write {out}: Not a directory", err
