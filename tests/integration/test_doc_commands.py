"""Every shell command in a ```bash block of README.md and docs/**/*.md (not the generated study reports) is run here,
in one fresh folder that holds the repository's ``examples/``, in page order, so that a command can use what an
earlier one wrote; a command already run (the same text on another page) is not run again.

A command that cannot run here says why on the line before it, ``# needs: TAG[, TAG] (words)``, with the tags in
``NEEDS``. A ``long`` command runs in the shortened form ``SHORTENED`` gives, or is covered as ``NOT_SHORTENED`` says;
a ``smollm2`` command runs when ``DPOLAB_DOC_SMOLLM2=1`` (it loads the 135 M model; ``make setup`` installs it). An
unmarked command that fails, an unknown tag, or a shortened form whose command is no longer in the docs fails the test.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").rglob("*.md") if "results" not in p.parts)

NEEDS = {
    "long": "takes minutes or more",
    "shared-data": "reads ../shared/data, which the repository does not ship",
    "smollm2": "loads the smollm2-135m preset (set DPOLAB_DOC_SMOLLM2=1 to run)",
    "network": "downloads from the internet",
    "gpu": "needs a GPU",
    "cluster": "needs a Ray or Slurm cluster",
    "interactive": "reads from a terminal",
    "interrupted-run": "continues a stopped run; tests/integration/test_resume_kill.py stops runs and resumes them",
}

# long command (as written, continuation lines joined, comment dropped) -> the short form this test runs instead
SHORTENED = {
    "make demo": "dpolab demo --quick",
    "dpolab compare --task arithmetic --methods dpo,dpop:lam=50,simpo --seeds 3 --budget 16steps --evals 4 --samples 8 "
    "--max-new-tokens 12 --cpus 1 --set data.task_args.n_train=64 --set data.task_args.n_eval=16 "
    "--set data.max_length=96 --set train.lr=1e-3 --out runs/compare-arith": "dpolab compare --task arithmetic "
    "--methods dpo,simpo --seeds 2 --budget 2steps --evals 1 --samples 2 "
    "--max-new-tokens 4 --cpus 1 --set data.task_args.n_train=16 --set data.task_args.n_eval=8 "
    "--set data.max_length=96 --set train.lr=1e-3 --out runs/compare-arith",
    "dpolab train model.name_or_path=smollm2-135m lora.enabled=true data.train=examples/chat_pairs.jsonl "
    "data.eval=examples/chat_pairs_heldout.jsonl data.max_length=256 train.batch_size=8 train.max_steps=10 "
    "train.lr=5e-5 output.dir=runs/smol-dpo": "dpolab train model.name_or_path=smollm2-135m lora.enabled=true "
    "data.train=examples/chat_pairs.jsonl "
    "data.eval=examples/chat_pairs_heldout.jsonl data.max_length=64 train.batch_size=2 train.max_steps=1 "
    "train.lr=5e-5 eval.max_examples=2 output.dir=runs/smol-dpo",
    "dpolab train model.name_or_path=smollm2-135m lora.enabled=true train.mode=sft data.task=arithmetic "
    "'data.task_args={n_train: 32, n_eval: 32, n_terms: [2, 2], max_value: 9}' data.max_length=64 "
    "train.batch_size=8 train.max_steps=2 train.lr=1e-3 output.dir=runs/arith-sft": "dpolab train "
    "model.name_or_path=smollm2-135m lora.enabled=true train.mode=sft data.task=arithmetic "
    "'data.task_args={n_train: 8, n_eval: 4, n_terms: [2, 2], max_value: 9}' data.max_length=64 "
    "train.batch_size=4 train.max_steps=1 train.lr=1e-3 output.dir=runs/arith-sft",
    "dpolab train model.name_or_path=smollm2-135m lora.enabled=true train.mode=online "
    "model.init_from=runs/arith-sft/final online.judge=task:arithmetic online.samples_per_prompt=4 "
    "online.max_new_tokens=16 data.task=arithmetic "
    "'data.task_args={n_train: 32, n_eval: 32, n_terms: [2, 2], max_value: 9}' data.max_length=64 "
    "train.batch_size=8 train.max_steps=10 train.lr=5e-4 train.schedule=constant "
    "'loss=[{name: dpo, params: {beta: 0.1}}]' output.dir=runs/arith-online": "dpolab train "
    "model.name_or_path=smollm2-135m lora.enabled=true train.mode=online "
    "model.init_from=runs/arith-sft/final online.judge=task:arithmetic online.samples_per_prompt=2 "
    "online.max_new_tokens=4 data.task=arithmetic "
    "'data.task_args={n_train: 8, n_eval: 4, n_terms: [2, 2], max_value: 9}' data.max_length=64 "
    "train.batch_size=2 train.max_steps=1 train.lr=5e-4 train.schedule=constant "
    "'loss=[{name: dpo, params: {beta: 0.1}}]' output.dir=runs/arith-online",
}

NOT_SHORTENED = {
    "make test": "the test suite itself (this test is part of it)",
    "make test-fast": "the test suite without the slow tests (this test is one of them)",
    "make test-small-studies": "tests/integration/test_studies_small.py, run by `make test-small-studies`",
    "dpolab compare --model tiny-gpt2 --data examples/text_pairs.jsonl --eval-data examples/text_pairs_heldout.jsonl "
    "--methods dpo,ipo,dpop:lam=50,cal-dpo,gate-dpo,simpo --seeds 3 --budget 200steps --out runs/compare-mine": (
        "its grid is the --dry-run command next to it, which runs"
    ),
    "dpolab compare --config examples/compare.yaml": "test_compare_yaml_loads checks the file; the --dry-run runs",
    "dpolab compare --config examples/compare.yaml --executor local --parallel 4": (
        "test_compare_yaml_loads checks the file; executors: tests/integration/test_executors*.py"
    ),
    "python benchmarks/run.py --workload imdb": "tests/unit/test_bench_harness.py checks the harness",
    "dpolab study squeeze": "the studies' smoke sizes: tests/integration/test_studies*.py",
    "dpolab study dpop": "the studies' smoke sizes: tests/integration/test_studies*.py",
    "dpolab study dpop --smoke": "the studies' smoke sizes: tests/integration/test_studies*.py",
    "dpolab study squeeze --executor local --parallel 4": "executors: tests/integration/test_executors*.py",
    "accelerate launch --multi_gpu --num_processes 2 -m dpolab.cli train --config examples/tiny_dpo.yaml": (
        "tests/integration/test_multiprocess.py trains two processes"
    ),
}
# commands an existing test already runs exactly: (test file, text that must be in it)
COVERED = {"dpolab demo --quick": ("tests/integration/test_cli_and_tools.py", '["demo", "--quick"')}


@dataclass
class Command:
    page: Path
    line: int
    text: str  # continuation lines joined, whitespace collapsed, trailing comment dropped
    needs: FrozenSet[str] = field(default_factory=frozenset)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


_NEEDS_LINE = re.compile(r"#\s*needs:\s*([\w\-, ]+?)\s*(\(.*\))?\s*$")


def _strip_comment(text: str) -> str:
    """The command without a trailing ``# comment`` (a ``#`` outside quotes that starts a word)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.rstrip()


def extract(page: Path) -> List[Command]:
    """The commands of a page's ```bash blocks, each with the ``# needs:`` tags of the line before it."""
    out: List[Command] = []
    in_block, needs, pending = False, frozenset(), None
    for no, raw in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line.startswith("```"):
            in_block, needs, pending = line == "```bash", frozenset(), None
            continue
        if not in_block:
            continue
        if pending is not None:  # a continuation line
            pending[1].append(line)
        elif line.startswith("#"):
            m = _NEEDS_LINE.match(line)
            if m:
                needs = frozenset(t.strip() for t in m.group(1).split(",") if t.strip())
            elif line.lower().startswith("# needs"):
                raise AssertionError(
                    f"{page.relative_to(ROOT)}:{no}: malformed marker {line!r}; write '# needs: TAG[, TAG] (words)'"
                )
            continue
        elif line:
            pending = (no, [line])
        if pending is not None and not pending[1][-1].endswith("\\"):
            joined = " ".join(part.rstrip("\\").strip() for part in pending[1])
            out.append(Command(page, pending[0], " ".join(_strip_comment(joined).split()), needs))
            needs, pending = frozenset(), None
    return out


COMMANDS = [c for page in PAGES for c in extract(page)]


def test_markers_are_explicit_and_current():
    assert len(COMMANDS) > 30, "the extractor found too few commands: is it still reading the ```bash blocks?"
    unknown = [(c.where, t) for c in COMMANDS for t in c.needs if t not in NEEDS]
    assert not unknown, f"unknown '# needs:' tags (known: {', '.join(NEEDS)}): {unknown}"
    texts = {c.text: c for c in COMMANDS}
    for table in (SHORTENED, NOT_SHORTENED, COVERED):
        stale = [t for t in table if t not in texts]
        assert not stale, f"no longer in the docs (update this test): {stale}"
    for text in (*SHORTENED, *NOT_SHORTENED):
        assert "long" in texts[text].needs, f"{texts[text].where}: has a shortened form but no '# needs: long'"
    unhandled = [
        c.where
        for c in COMMANDS
        if "long" in c.needs
        and c.text not in SHORTENED
        and c.text not in NOT_SHORTENED
        and not c.needs & (set(NEEDS) - {"long", "smollm2"})
    ]
    assert not unhandled, f"'# needs: long' without a shortened form or a reason in NOT_SHORTENED: {unhandled}"
    for text, (test_file, snippet) in COVERED.items():
        assert snippet in (ROOT / test_file).read_text(encoding="utf-8"), f"{test_file} no longer runs {text!r}"


def test_compare_yaml_loads():
    from dpolab.studies.compare import CompareOptions

    opts = CompareOptions.from_sources(str(ROOT / "examples/compare.yaml"), {})
    assert opts.methods == ["dpo", "ipo", "dpop:lam=50"] and (ROOT / opts.data).is_file()
    assert (ROOT / opts.eval_data).is_file()


def _plan(cmd: Command, ran: Dict[str, str]) -> Optional[str]:
    """The command line to run for ``cmd``, or a skip reason (a string starting with 'skip: ')."""
    blocking = sorted(cmd.needs - {"long", "smollm2"})
    if blocking:
        return "skip: " + "; ".join(f"needs {t}: {NEEDS[t]}" for t in blocking)
    if "smollm2" in cmd.needs and os.environ.get("DPOLAB_DOC_SMOLLM2") != "1":
        return f"skip: needs smollm2: {NEEDS['smollm2']}"
    text = cmd.text
    if "long" in cmd.needs:
        if text in NOT_SHORTENED:
            return f"skip: needs long; covered: {NOT_SHORTENED[text]}"
        assert text in SHORTENED, f"{cmd.where}: '# needs: long' but no shortened form in SHORTENED"
        text = SHORTENED[text]
    if text in COVERED:
        return f"skip: run by {COVERED[text][0]}"
    if text in ran:
        return f"skip: the same command ran as {ran[text]}"
    return text


_SHELL = re.compile(r"[$|;&<>`]|^(source|\.|make|python|accelerate)\b|^\.venv/")


def _run(text: str, workdir: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "DPOLAB_CACHE": os.environ.get("DPOLAB_CACHE", str(Path.home() / ".cache" / "dpolab")),
    }
    if text.startswith("dpolab ") and not _SHELL.search(text):  # in this process: no second import of torch
        import torch

        from dpolab.cli import main

        threads, cwd = torch.get_num_threads(), os.getcwd()
        out, err = io.StringIO(), io.StringIO()
        os.chdir(workdir)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(shlex.split(text)[1:])
                except SystemExit as e:  # argparse's --help and usage errors
                    rc = e.code
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)
        assert rc == 0, f"{text}\nexit {rc}\n{out.getvalue()[-3000:]}\n{err.getvalue()[-3000:]}"
    else:
        res = subprocess.run(["bash", "-c", text], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{text}\nexit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """One work folder for every page (with ``examples/`` and ``.venv`` linked in: a later page may use what an earlier
    one wrote, as a reader following the docs would) and the commands already run."""
    d = tmp_path_factory.mktemp("doc-commands")
    (d / "examples").symlink_to(ROOT / "examples")
    (d / ".venv").symlink_to(Path(sys.prefix))  # `source .venv/bin/activate`: the environment running this test
    return {"folder": d, "ran": {}}


@pytest.mark.slow
@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_doc_command(cmd, state):
    plan = _plan(cmd, state["ran"])
    if plan.startswith("skip: "):
        pytest.skip(plan[len("skip: ") :])
    state["ran"][plan] = cmd.where
    _run(plan, state["folder"])
