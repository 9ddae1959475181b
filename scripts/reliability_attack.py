"""Reliability attack harness: drive the `dpolab` CLI as a new user would, as subprocesses on tiny models, and check
that no run is lost or silently mixed and that nothing ends in a Python traceback (issue 32).

    .venv/bin/python scripts/reliability_attack.py --out /tmp/attack [--only NAME_SUBSTRING]

Each scenario records: name, what was done, the exit code(s), whether stderr holds a traceback, whether a finished
run's final/ weights or metrics rows changed (data lost), whether a resume is bitwise equal to an uninterrupted
reference run (where that applies) and a verdict (ok, or DEFECT with a one-line reason). Results go to
<out>/results.jsonl; a table and the totals line are printed; the exit code is 1 if any scenario is a DEFECT.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TB = "Traceback (most recent call last)"
ENV = dict(
    os.environ,
    OMP_NUM_THREADS="1",
    MKL_NUM_THREADS="1",
    TOKENIZERS_PARALLELISM="false",
    PYTHONWARNINGS="ignore",
)

TINY = "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}"
# a quick run: 6 steps, checkpoints at 2, 4, 6
BASE = [
    TINY,
    "data.task=arithmetic",
    "data.task_args={n_train: 16, n_eval: 4, n_terms: [2, 2], max_value: 9}",
    "data.max_length=48",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.lr=1e-3",
    "train.seed=0",
    "eval.batch_size=4",
    "eval.at_start=false",
    "output.progress=false",
    "output.save_every=2",
]
# a run long enough to be killed at chosen points: dropout (RNG), beta-DPO (loss state), a linear schedule, 2+ epochs
KSTEPS = 30
KILL = [
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2, resid_pdrop: 0.1, embd_pdrop: 0.1}",
    "model.dropout=true",
    "data.task=arithmetic",
    "data.task_args={n_train: 48, n_eval: 4, n_terms: [2, 2], max_value: 9}",
    "data.max_length=48",
    "train.batch_size=4",
    "train.lr=1e-3",
    "train.schedule=linear",
    "train.warmup_steps=3",
    f"train.max_steps={KSTEPS}",
    "loss=[{name: beta-dpo}, {name: sft, weight: 0.1}]",
    "eval.batch_size=8",
    "eval.every=5",
    "output.progress=false",
    "output.save_every=1",
    "output.keep_last=2",
]

# a run stopped after its step-4 checkpoint (what a killed run leaves), made in-process as the tests do
INTERRUPT = """
import shutil, sys
from pathlib import Path
from dpolab.config import build_config
from dpolab.engine import Trainer
run = Path(sys.argv[1])
cfg = build_config({}, [*sys.argv[2:], f"output.dir={run}"])
t = Trainer(cfg)
t.total_steps = 4
t.fit()
for f in ("DONE", "summary.json"):
    (run / f).unlink()
shutil.rmtree(run / "final")
"""

LIMITED = """
import resource, signal, sys
from dpolab.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


# -- helpers ----------------------------------------------------------------------------------------------------------
class Ctx:
    def __init__(self, out: Path):
        self.out = out
        self.stderr: list[str] = []
        self.rcs: list[int] = []

    def run(self, args, *, stdin: bytes | None = None, preexec=None, timeout: float = 300, cmd=None) -> tuple:
        full = cmd if cmd is not None else [PY, "-m", "dpolab.cli", *args]
        p = subprocess.run(
            full,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            env=ENV,
            cwd=ROOT,
            timeout=timeout,
            preexec_fn=preexec,
        )
        err = p.stderr.decode("utf-8", "replace")
        self.stderr.append(err)
        self.rcs.append(p.returncode)
        return p.returncode, err

    def train(self, run: Path, *extra, base=BASE, resume=False, **kw):
        return self.run(["train", *(["--resume"] if resume else []), *base, *extra, f"output.dir={run}"], **kw)

    def start(self, run: Path, *extra, base=KILL, resume=False) -> subprocess.Popen:
        cmd = [PY, "-m", "dpolab.cli", "train", *(["--resume"] if resume else []), *base, *extra, f"output.dir={run}"]
        return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_until(self, proc: subprocess.Popen, ready, timeout: float = 240.0) -> str:
        t0 = time.monotonic()
        while not ready():
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                return "missed"
            time.sleep(0.005)
        return "hit"

    def kill_when(self, proc: subprocess.Popen, ready, sig=signal.SIGKILL, timeout: float = 240.0) -> str:
        """Send `sig` once `ready()` holds; returns 'hit', or 'missed' when the run ended first."""
        t0 = time.monotonic()
        state = "hit"
        while not ready():
            if proc.poll() is not None:
                state = "missed"
                break
            if time.monotonic() - t0 > timeout:
                break
            time.sleep(0.001)
        if state == "hit":
            proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        self.stderr.append(err.decode("utf-8", "replace"))
        self.rcs.append(proc.returncode)
        return state


def last_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def one_line_error(rc: int, err: str, *words: str) -> list[str]:
    """Problems with a refusal: exit 2, a last line `error: ...` holding each word."""
    probs = []
    line = last_error(err)
    if rc != 2:
        probs.append(f"exit {rc}, expected 2 (refusal); last line: {line[:160]}")
    if not line.startswith("error:"):
        probs.append(f"last stderr line is not 'error: ...': {line[:160]}")
    for w in words:
        if w.lower() not in line.lower():
            probs.append(f"error line lacks {w!r}: {line[:160]}")
    return probs


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(run: Path) -> dict:
    if not run.exists():
        return {}
    return {p.relative_to(run).as_posix(): sha(p) for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def final_state(run: Path) -> tuple:
    """(checksum of final/, the metrics rows): what a finished run must never lose."""
    final = run / "final"
    fsum = hashlib.sha256()
    if final.exists():
        for p in sorted(final.rglob("*")):
            if p.is_file():
                fsum.update(p.name.encode() + sha(p).encode())
    rows = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    return fsum.hexdigest(), rows


def weights_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    fa, fb = a / "final" / "model.safetensors", b / "final" / "model.safetensors"
    if not (fa.exists() and fb.exists()):
        return False
    wa, wb = load_file(str(fa)), load_file(str(fb))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def train_rows(run: Path) -> list:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["loss"], r.get("lr")) for r in rows if "grad_norm" in r]


def latest_ckpt(run: Path):
    d = run / "checkpoints"
    if not d.exists():
        return None
    done = sorted(p for p in d.iterdir() if p.name.startswith("step-") and (p / "COMPLETE").exists())
    return done[-1] if done else None


def ckpt_step(run: Path) -> int:
    c = latest_ckpt(run)
    return int(c.name.split("-")[1]) if c else 0


def tmp_in(folder: Path) -> bool:
    try:
        return any(".tmp-" in p.name for p in folder.iterdir())
    except FileNotFoundError:
        return False


# -- the scenarios ----------------------------------------------------------------------------------------------------
SCENARIOS: list = []


def scenario(name: str, what: str):
    def deco(fn):
        SCENARIOS.append((name, what, fn))
        return fn

    return deco


class Refs:
    """Uninterrupted reference runs, made once."""

    base: Path
    kill: Path
    model: Path  # a tiny model folder (the base reference's final/)


REFS = Refs()


def interrupted(c: Ctx, name: str, *extra) -> Path:
    run = c.out / name
    rc, err = c.run([], cmd=[PY, "-c", INTERRUPT, str(run), *BASE, *extra])
    if rc != 0:
        raise RuntimeError(f"could not prepare an interrupted run: {err[-800:]}")
    c.stderr.pop()  # setup, not the attack
    c.rcs.pop()
    return run


def finished(c: Ctx, name: str, *extra) -> Path:
    run = c.out / name
    rc, err = c.train(run, *extra)
    if rc != 0:
        raise RuntimeError(f"could not prepare a finished run: {err[-800:]}")
    c.stderr.pop()
    c.rcs.pop()
    return run


def resume_to_end(c: Ctx, run: Path, base=KILL, ref=None, steps=KSTEPS) -> dict:
    """--resume to the end; compare with the uninterrupted reference."""
    rc, err = c.train(run, base=base, resume=True)
    res = {"problems": []}
    if rc != 0:
        res["problems"].append(f"--resume exit {rc}: {last_error(err)[:160]}")
        res["bitwise"] = False
        return res
    ref = ref or REFS.kill
    res["bitwise"] = weights_equal(run, ref)
    if not res["bitwise"]:
        res["problems"].append("resumed final/ weights differ from the uninterrupted run")
    rows = train_rows(run)
    if [s for s, *_ in rows] != list(range(1, steps + 1)):
        res["problems"].append(f"metrics steps not 1..{steps} exactly once: {[s for s, *_ in rows][:40]}")
    elif rows != train_rows(ref):
        res["problems"].append("per-step losses/lr differ from the uninterrupted run")
    debris = list((run / "checkpoints").glob(".*tmp-*")) + list(run.glob(".*tmp-*"))
    if debris:
        res["problems"].append(f"temporaries left: {[p.name for p in debris]}")
    return res


def kill_resume(c: Ctx, name: str, ready, sig=signal.SIGKILL, want_rc=None, extra_kills=0) -> dict:
    run = c.out / name
    proc = c.start(run)
    state = c.kill_when(proc, lambda: ready(run), sig=sig)
    probs = []
    note = f"kill point {state}"
    if state == "hit" and want_rc is not None and c.rcs[-1] not in (want_rc, 0):
        probs.append(f"signalled run exited {c.rcs[-1]}, expected {want_rc}")
    if state == "hit" and sig != signal.SIGKILL and c.rcs[-1] == want_rc:
        err = c.stderr[-1]
        if "to continue:" not in err or "--resume" not in err:
            probs.append(f"interrupted run did not print how to continue: {last_error(err)[:160]}")
    for _ in range(extra_kills):
        first = ckpt_step(run)
        if first + 3 >= KSTEPS or (run / "DONE").exists():
            break
        proc = c.start(run, resume=True)
        c.kill_when(proc, lambda r=run, f=first: ckpt_step(r) >= f + 2)
    if (run / "DONE").exists():  # the run finished before the kill: nothing to resume, compare as is
        res = {"problems": [], "bitwise": weights_equal(run, REFS.kill)}
        if not res["bitwise"]:
            res["problems"].append("final/ differs from the uninterrupted run")
    else:
        res = resume_to_end(c, run)
    res["problems"] = probs + res["problems"]
    res["note"] = note
    return res


@scenario("kill9-mid-training", "SIGKILL at step>=8 (checkpoints every step), then --resume; bitwise vs uninterrupted")
def s_kill9_mid(c):
    return kill_resume(c, "k9mid", lambda r: ckpt_step(r) >= 8)


@scenario("kill9-during-checkpoint-save", "SIGKILL while a checkpoint's temporary folder exists, then --resume")
def s_kill9_save(c):
    return kill_resume(c, "k9save", lambda r: ckpt_step(r) >= 2 and tmp_in(r / "checkpoints"))


@scenario("kill9-before-first-checkpoint", "SIGKILL once the run folder has config.yaml, before any checkpoint")
def s_kill9_early(c):
    return kill_resume(c, "k9early", lambda r: (r / "config.yaml").exists() and ckpt_step(r) == 0)


@scenario("kill9-twice", "SIGKILL mid-run, --resume, SIGKILL again two checkpoints later, --resume to the end")
def s_kill9_twice(c):
    return kill_resume(c, "k9twice", lambda r: ckpt_step(r) >= 5, extra_kills=1)


@scenario("kill9-during-final-publish", "SIGKILL while final/ is being published (.final.tmp-PID), then --resume")
def s_kill9_final(c):
    return kill_resume(c, "k9final", lambda r: tmp_in(r) or (r / "final").exists())


@scenario("sigterm-mid-training", "SIGTERM mid-run: exit 143 with the resume command; then --resume")
def s_term_mid(c):
    return kill_resume(c, "termmid", lambda r: ckpt_step(r) >= 7, sig=signal.SIGTERM, want_rc=143)


@scenario("sigterm-during-checkpoint-save", "SIGTERM while a checkpoint is being written; then --resume")
def s_term_save(c):
    return kill_resume(
        c, "termsave", lambda r: ckpt_step(r) >= 3 and tmp_in(r / "checkpoints"), sig=signal.SIGTERM, want_rc=143
    )


@scenario("sigint-mid-training", "SIGINT (Ctrl-C) mid-run: exit 130 with the resume command; then --resume")
def s_int_mid(c):
    return kill_resume(c, "intmid", lambda r: ckpt_step(r) >= 6, sig=signal.SIGINT, want_rc=130)


@scenario("sigint-during-checkpoint-save", "SIGINT while a checkpoint is being written; then --resume")
def s_int_save(c):
    return kill_resume(
        c, "intsave", lambda r: ckpt_step(r) >= 4 and tmp_in(r / "checkpoints"), sig=signal.SIGINT, want_rc=130
    )


@scenario("kill9-right-after-DONE", "SIGKILL as soon as DONE appears; --resume must refuse and lose nothing")
def s_kill9_done(c):
    run = c.out / "k9done"
    proc = c.start(run)
    c.kill_when(proc, lambda r=run: (r / "DONE").exists())
    before = final_state(run)
    rc, err = c.train(run, base=KILL, resume=True)
    probs = one_line_error(rc, err, "finished run")
    bit = weights_equal(run, REFS.kill)
    if not bit:
        probs.append("final/ differs from the uninterrupted run")
    return {"problems": probs, "lost": final_state(run) != before, "bitwise": bit}


def signal_after_done(c, name, sig):
    run = c.out / name
    proc = c.start(run)
    c.kill_when(proc, lambda r=run: (r / "DONE").exists(), sig=sig)
    probs = []
    if c.rcs[-1] != 0 and "--resume" in c.stderr[-1]:
        probs.append("signalled after DONE, the message advises --resume, which refuses a finished run")
    before = final_state(run)
    rc, err = c.train(run, base=KILL, resume=True)
    probs += one_line_error(rc, err, "finished run")
    return {"problems": probs, "lost": final_state(run) != before, "bitwise": weights_equal(run, REFS.kill)}


@scenario("sigterm-right-after-DONE", "SIGTERM as soon as DONE appears; no --resume advice, --resume refuses")
def s_term_done(c):
    return signal_after_done(c, "termdone", signal.SIGTERM)


@scenario("sigint-right-after-DONE", "SIGINT as soon as DONE appears; no --resume advice, --resume refuses")
def s_int_done(c):
    return signal_after_done(c, "intdone", signal.SIGINT)


def refused_resume(c, name, change, words):
    run = interrupted(c, name)
    before = snapshot(run)
    rc, err = c.train(run, *change, resume=True)
    probs = one_line_error(rc, err, "--resume refused", *words)
    if snapshot(run) != before:
        probs.append("the run folder changed")
    return {"problems": probs, "lost": snapshot(run) != before}


@scenario("resume-changed-lr", "interrupted run, --resume with train.lr changed: refused naming the key")
def s_ch_lr(c):
    return refused_resume(c, "chlr", ["train.lr=2e-3"], ["train.lr"])


@scenario("resume-changed-loss", "--resume with another loss: refused")
def s_ch_loss(c):
    return refused_resume(c, "chloss", ["loss=[{name: ipo}]"], ["loss"])


@scenario("resume-changed-seed", "--resume with train.seed changed: refused")
def s_ch_seed(c):
    return refused_resume(c, "chseed", ["train.seed=1"], ["train.seed"])


@scenario("resume-changed-data", "--resume with other task data (n_train): refused")
def s_ch_data(c):
    return refused_resume(c, "chdata", ["data.task_args.n_train=20"], ["n_train"])


@scenario("resume-shorter-max-steps", "--resume with a shorter train.max_steps: refused")
def s_ch_short(c):
    return refused_resume(c, "chshort", ["train.max_steps=3"], ["train.max_steps"])


@scenario("resume-changed-batch-and-lr", "--resume with two keys changed: both named in one line")
def s_ch_two(c):
    return refused_resume(c, "chtwo", ["train.lr=2e-3", "train.batch_size=2"], ["train.lr", "train.batch_size"])


@scenario("resume-changed-data-file", "data file edited in place between kill and --resume: refused")
def s_ch_file(c):
    data = c.out / "pairs_edit.jsonl"
    rows = [{"prompt": f"question {i} ", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = ["data.task=null", f"data.train={data}", "data.eval_fraction=0.25", "data.cache=false"]
    run = interrupted(c, "chfile", *over)
    rows[3]["chosen"], rows[3]["rejected"] = rows[3]["rejected"], rows[3]["chosen"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = snapshot(run)
    rc, err = c.train(run, *over, resume=True)
    probs = one_line_error(rc, err, "training examples differ")
    return {"problems": probs, "lost": snapshot(run) != before}


@scenario("resume-allowed-changes", "--resume with max_steps 6->8 and eval.every: accepted, recorded, config.yaml kept")
def s_allowed(c):
    run = interrupted(c, "allowed")
    cfg_before = (run / "config.yaml").read_text()
    rc, err = c.train(run, "train.max_steps=8", "eval.every=3", resume=True)
    probs = [] if rc == 0 else [f"exit {rc}: {last_error(err)[:160]}"]
    rec = run / "resume_changes.jsonl"
    rows = [json.loads(x) for x in rec.read_text().splitlines()] if rec.exists() else []
    want = [{"step": 4, "changes": {"eval.every": [0, 3], "train.max_steps": [6, 8]}}]
    if rows != want:
        probs.append(f"resume_changes.jsonl is {rows}, expected {want}")
    if (run / "config.yaml").read_text() != cfg_before:
        probs.append("config.yaml was overwritten")
    if rc == 0 and [s for s, *_ in train_rows(run)] != list(range(1, 9)):
        probs.append("metrics steps not 1..8 exactly once")
    return {"problems": probs}


@scenario("resume-allowed-no-effect", "--resume with log_every/keep_last/save_every changed: bitwise equal")
def s_allowed_same(c):
    run = interrupted(c, "allowed2")
    rc, err = c.train(run, "output.keep_last=5", "output.save_every=3", resume=True)
    probs = [] if rc == 0 else [f"exit {rc}: {last_error(err)[:160]}"]
    bit = rc == 0 and weights_equal(run, REFS.base)
    if rc == 0 and not bit:
        probs.append("resumed weights differ from the uninterrupted run")
    if not (run / "resume_changes.jsonl").exists():
        probs.append("resume_changes.jsonl not written")
    return {"problems": probs, "bitwise": bit}


@scenario("resume-interrupted-unchanged", "interrupted at step 4, --resume with the same settings: bitwise equal")
def s_resume_plain(c):
    run = interrupted(c, "plain")
    return resume_to_end(c, run, base=BASE, ref=REFS.base, steps=6)


@scenario("resume-finished-with-checkpoints", "--resume on a finished run: refused, final/ and metrics untouched")
def s_fin_ck(c):
    run = finished(c, "finck")
    before = snapshot(run)
    rc, err = c.train(run, resume=True)
    return {"problems": one_line_error(rc, err, "finished run"), "lost": snapshot(run) != before}


@scenario("resume-finished-without-checkpoints", "checkpoints/ deleted, --resume on the finished run: refused")
def s_fin_nock(c):
    run = finished(c, "finnock")
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    rc, err = c.train(run, resume=True)
    return {"problems": one_line_error(rc, err, "finished run"), "lost": snapshot(run) != before}


@scenario("rerun-over-finished-run", "train again into a finished run without --resume or overwrite: refused")
def s_rerun(c):
    run = finished(c, "rerun")
    before = snapshot(run)
    rc, err = c.train(run)
    return {"problems": one_line_error(rc, err, str(run)), "lost": snapshot(run) != before}


@scenario("rerun-over-interrupted-run", "train into an interrupted run without --resume: refused, names --resume")
def s_rerun_int(c):
    run = interrupted(c, "rerunint")
    before = snapshot(run)
    rc, err = c.train(run)
    return {"problems": one_line_error(rc, err, "--resume"), "lost": snapshot(run) != before}


@scenario("resume-no-run-folder", "--resume into a folder that does not exist: starts from the beginning, says so")
def s_resume_none(c):
    run = c.out / "nofolder"
    rc, err = c.train(run, resume=True)
    probs = [] if rc == 0 else [f"exit {rc}: {last_error(err)[:160]}"]
    bit = rc == 0 and weights_equal(run, REFS.base)
    if rc == 0 and not bit:
        probs.append("weights differ from a plain run")
    return {"problems": probs, "bitwise": bit}


def damaged(c, name, damage, want_bitwise=True, refuse=False):
    run = interrupted(c, name)
    ck = run / "checkpoints" / "step-0000004"
    damage(ck, run)
    rc, err = c.train(run, resume=True)
    if refuse:
        return {"problems": one_line_error(rc, err, "checkpoint")}
    probs = [] if rc == 0 else [f"exit {rc}: {last_error(err)[:160]}"]
    bit = rc == 0 and weights_equal(run, REFS.base)
    if rc == 0 and want_bitwise and not bit:
        probs.append("resumed weights differ from the uninterrupted run")
    if rc == 0 and [s for s, *_ in train_rows(run)] != list(range(1, 7)):
        probs.append(f"metrics steps not 1..6 exactly once: {[s for s, *_ in train_rows(run)]}")
    return {"problems": probs, "bitwise": bit}


def _trunc(p: Path, keep=0.5):
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


@scenario("ckpt-truncated-optimizer", "latest checkpoint's optimizer.pt truncated: falls back, bitwise equal")
def s_d_opt(c):
    return damaged(c, "dopt", lambda ck, r: _trunc(ck / "optimizer.pt"))


@scenario("ckpt-deleted-optimizer", "latest checkpoint's optimizer.pt deleted: falls back, bitwise equal")
def s_d_opt_del(c):
    return damaged(c, "doptdel", lambda ck, r: (ck / "optimizer.pt").unlink())


@scenario("ckpt-truncated-rng", "latest checkpoint's rng.pt truncated: falls back")
def s_d_rng(c):
    return damaged(c, "drng", lambda ck, r: _trunc(ck / "rng.pt"))


@scenario("ckpt-deleted-rng", "latest checkpoint's rng.pt deleted: falls back")
def s_d_rng_del(c):
    return damaged(c, "drngdel", lambda ck, r: (ck / "rng.pt").unlink())


@scenario("ckpt-emptied-state", "latest checkpoint's state.json emptied: falls back")
def s_d_state(c):
    return damaged(c, "dstate", lambda ck, r: (ck / "state.json").write_text(""))


@scenario("ckpt-deleted-state", "latest checkpoint's state.json deleted: falls back")
def s_d_state_del(c):
    return damaged(c, "dstatedel", lambda ck, r: (ck / "state.json").unlink())


@scenario("ckpt-truncated-weights", "latest checkpoint's model.safetensors truncated: falls back")
def s_d_w(c):
    return damaged(c, "dw", lambda ck, r: _trunc(ck / "model" / "model.safetensors", 0.9))


def _flip(p: Path):
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))


@scenario("ckpt-bitflip-weights", "one byte of the latest checkpoint's weights flipped: checksum catches it")
def s_d_flip(c):
    return damaged(c, "dflip", lambda ck, r: _flip(ck / "model" / "model.safetensors"))


@scenario("ckpt-deleted-checksums", "checksums.json deleted (a legacy checkpoint whose files load): resumes, bitwise")
def s_d_sums(c):
    return damaged(c, "dsums", lambda ck, r: (ck / "checksums.json").unlink())


@scenario("ckpt-legacy-truncated-optimizer", "no checksums.json and optimizer.pt truncated: falls back")
def s_d_legacy(c):
    return damaged(c, "dlegacy", lambda ck, r: ((ck / "checksums.json").unlink(), _trunc(ck / "optimizer.pt")))


@scenario("ckpt-garbage-checksums", "checksums.json is not JSON: falls back or resumes, never a traceback")
def s_d_sumsjunk(c):
    return damaged(c, "dsumsjunk", lambda ck, r: (ck / "checksums.json").write_text("{not json"))


def _all_bad(ck, run):
    for d in (run / "checkpoints").iterdir():
        if d.name.startswith("step-"):
            _trunc(d / "optimizer.pt")


@scenario("ckpt-all-damaged", "every checkpoint's optimizer.pt truncated: refused in one line")
def s_d_all(c):
    return damaged(c, "dall", _all_bad, refuse=True)


@scenario("stale-temporaries", "stale .final.tmp-PID / .DONE.tmp-PID / checkpoint tmp of a dead pid: cleaned on resume")
def s_stale(c):
    def plant(ck, run):
        (run / ".final.tmp-999999").mkdir()
        (run / ".final.tmp-999999" / "model.safetensors").write_bytes(b"junk")
        (run / ".DONE.tmp-999999").write_text("")
        (run / "checkpoints" / ".step-0000006.tmp-999999").mkdir()

    res = damaged(c, "stale", plant)
    run = c.out / "stale"
    left = [p.name for p in [*run.glob(".*tmp-*"), *(run / "checkpoints").glob(".*tmp-*")]]
    if left:
        res["problems"].append(f"stale temporaries left: {left}")
    return res


@scenario("tampered-token-cache", "a token-cache entry edited, same run again: recomputed, bitwise equal")
def s_tok(c):
    data = ROOT / "examples" / "text_pairs.jsonl"
    cache = c.out / "tokcache"
    over = [
        "data.task=null",
        f"data.train={data}",
        "data.eval_fraction=0.25",
        "data.cache=true",
        f"data.cache_dir={cache}",
        "data.max_length=96",
    ]
    rc1, err1 = c.train(c.out / "tokA", *over)
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    if rc1 != 0 or not files:
        return {"problems": [f"first run exit {rc1} or no cache files: {last_error(err1)[:160]}"]}
    for f in files:
        text = f.read_text()
        f.write_text(text.replace("1", "2", 5) if "1" in text else text[: len(text) // 2])
    rc2, err2 = c.train(c.out / "tokB", *over)
    probs = [] if rc2 == 0 else [f"second run exit {rc2}: {last_error(err2)[:160]}"]
    bit = rc2 == 0 and weights_equal(c.out / "tokA", c.out / "tokB")
    if rc2 == 0 and not bit:
        probs.append("a tampered token cache changed the trained weights")
    return {"problems": probs, "bitwise": bit}


def _tamper_ref(ck, run, how):
    import torch

    for f in (run / "ref_cache").glob("*.pt"):
        if how == "truncate":
            _trunc(f)
        else:
            obj = torch.load(f, weights_only=False)

            def bump(x):
                if isinstance(x, torch.Tensor) and x.is_floating_point():
                    return x + 1.0
                if isinstance(x, dict):
                    return {k: bump(v) for k, v in x.items()}
                if isinstance(x, (list, tuple)):
                    return type(x)(bump(v) for v in x)
                return x

            torch.save(bump(obj), f)


@scenario("tampered-reference-table", "reference log-probs edited (checksum kept), then --resume: recomputed, bitwise")
def s_ref(c):
    return damaged(c, "reftamper", lambda ck, r: _tamper_ref(ck, r, "bump"))


@scenario("truncated-reference-table", "reference table truncated, then --resume: recomputed, bitwise")
def s_ref_trunc(c):
    return damaged(c, "reftrunc", lambda ck, r: _tamper_ref(ck, r, "truncate"))


def limited(c, limit, args):
    return c.run([], cmd=[PY, "-c", LIMITED, str(limit), *args])


def _fsize_pre(limit):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


@scenario(
    "ulimit-f-at-optimizer", "ulimit -f 300 KB (weights fit, optimizer state does not): one line, no partial ckpt"
)
def s_ulimit_opt(c):
    run = c.out / "ulopt"
    rc, err = c.train(run, "output.save_every=1", "data.cache=false", preexec=_fsize_pre(300_000))
    probs = one_line_error(rc, err, "could not write")
    if (run / "checkpoints").exists() and list((run / "checkpoints").glob(".*tmp-*")):
        probs.append("a partial checkpoint folder was left")
    return {"problems": probs}


@scenario("ulimit-f-tiny", "ulimit -f 2 KB: the first write that outgrows it is one line naming the path")
def s_ulimit_tiny(c):
    run = c.out / "ultiny"
    rc, err = c.train(run, "output.save_every=1", "data.cache=false", preexec=_fsize_pre(2_000))
    return {"problems": one_line_error(rc, err, str(run), "File too large")}


@scenario("ulimit-f-then-resume", "ulimit -f stops the run at a checkpoint; --resume without the limit: bitwise")
def s_ulimit_resume(c):
    run = c.out / "ulres"
    rc, err = c.train(run, "data.cache=false", preexec=_fsize_pre(300_000))
    probs = one_line_error(rc, err, "could not write")
    res = resume_to_end(c, run, base=[*BASE, "data.cache=false"], ref=REFS.base, steps=6)
    res["problems"] = probs + res["problems"]
    return res


def _blocker(c) -> Path:
    b = c.out / "a-file"
    b.write_text("not a folder")
    return b


@scenario("eval-out-not-a-folder", "eval --out under a regular file: one line naming the path")
def s_eval_out(c):
    pairs = ROOT / "examples" / "text_pairs_heldout.jsonl"
    rc, err = c.run(["eval", "--model", str(REFS.model), "--data", str(pairs), "--out", str(_blocker(c) / "r.json")])
    return {"problems": one_line_error(rc, err, "a-file")}


@scenario("eval-per-pair-not-a-folder", "eval --per-pair under a regular file: one line")
def s_eval_pp(c):
    pairs = ROOT / "examples" / "text_pairs_heldout.jsonl"
    rc, err = c.run(["eval", "--model", str(REFS.model), "--data", str(pairs), "--per-pair", str(_blocker(c) / "p")])
    return {"problems": one_line_error(rc, err, "a-file")}


@scenario("eval-out-read-only-fs", "eval --out into /proc (a read-only target even for root): one line")
def s_eval_ro(c):
    pairs = ROOT / "examples" / "text_pairs_heldout.jsonl"
    rc, err = c.run(["eval", "--model", str(REFS.model), "--data", str(pairs), "--out", "/proc/dpolab-attack.json"])
    return {"problems": one_line_error(rc, err, "/proc/dpolab-attack.json")}


@scenario("eval-out-is-a-folder", "eval --out naming an existing folder: one line")
def s_eval_dir(c):
    pairs = ROOT / "examples" / "text_pairs_heldout.jsonl"
    d = c.out / "a-dir"
    d.mkdir(exist_ok=True)
    rc, err = c.run(["eval", "--model", str(REFS.model), "--data", str(pairs), "--out", str(d)])
    return {"problems": one_line_error(rc, err, "a-dir")}


COMPARE = [
    "--budget",
    "2steps",
    "--seeds",
    "1",
    "--task",
    "arithmetic",
    "--methods",
    "dpo",
    "--set=data.task_args.n_train=48",
    "--set=data.task_args.n_eval=12",
    "--set=model.tiny.n_layer=1",
    "--set=model.tiny.n_embd=32",
    "--set=model.tiny.n_head=2",
]


@scenario("compare-out-not-a-folder", "compare --out under a regular file: one line")
def s_cmp_out(c):
    rc, err = c.run(["compare", "--out", str(_blocker(c) / "cmp"), *COMPARE])
    return {"problems": one_line_error(rc, err, "a-file")}


@scenario("compare-rerun-other-budget", "compare, then the same --out with another --budget: refused, results kept")
def s_cmp_budget(c):
    out = c.out / "cmp"
    rc, err = c.run(["compare", "--out", str(out), *COMPARE], timeout=400)
    if rc != 0:
        return {"problems": [f"first compare exit {rc}: {last_error(err)[:160]}"]}
    before = snapshot(out)
    args = list(COMPARE)
    args[1] = "3steps"
    rc, err = c.run(["compare", "--out", str(out), *args])
    return {"problems": one_line_error(rc, err, "budget"), "lost": snapshot(out) != before}


@scenario("slurm-without-time", "compare --executor slurm without --time: refused in one line")
def s_slurm(c):
    rc, err = c.run(["compare", "--out", str(c.out / "slurm"), "--executor", "slurm", *COMPARE])
    return {"problems": one_line_error(rc, err, "--time")}


@scenario("non-utf8-config", "--config file with a 0xe9 byte: one line naming the line")
def s_u_cfg(c):
    p = c.out / "latin1.yaml"
    p.write_bytes(b"train:\n  lr: 1e-5\n# caf\xe9\n")
    rc, err = c.run(["train", "--config", str(p), f"output.dir={c.out / 'u8'}"])
    return {"problems": one_line_error(rc, err, "UTF-8")}


@scenario("non-utf8-override-argv", "a train override with a non-UTF-8 byte in argv: one line")
def s_u_over(c):
    cmd = [
        PY.encode(),
        b"-m",
        b"dpolab.cli",
        b"train",
        *[a.encode() for a in BASE],
        b"output.dir=" + str(c.out).encode(),
    ]
    cmd += [b"output.dir=" + str(c.out).encode() + b"/caf\xe9"]
    rc, err = c.run([], cmd=cmd)
    if rc == 0:  # a non-UTF-8 folder name is a legal path: accepted is fine too
        return {"problems": [], "note": "accepted (a legal byte path)"}
    return {"problems": one_line_error(rc, err)}


@scenario("non-utf8-generate-argv", "generate with a prompt argument holding byte 0xff: one line")
def s_u_gen_argv(c):
    cmd = [PY.encode(), b"-m", b"dpolab.cli", b"generate", b"--model", str(REFS.model).encode(), b"hello \xff"]
    rc, err = c.run([], cmd=cmd)
    return {"problems": one_line_error(rc, err, "0xff")}


@scenario("non-utf8-generate-stdin", "generate reading a prompt with byte 0xff from stdin: one line")
def s_u_gen_stdin(c):
    rc, err = c.run(["generate", "--model", str(REFS.model), "--max-new-tokens", "2"], stdin=b"first\nhello \xff\n")
    return {"problems": one_line_error(rc, err, "0xff")}


@scenario("non-utf8-chat-stdin", "chat with a non-UTF-8 second line on stdin: one line")
def s_u_chat(c):
    rc, err = c.run(["chat", "--model", str(REFS.model), "--max-new-tokens", "2"], stdin=b"hi\n\xe9t\xe9\n")
    return {"problems": one_line_error(rc, err, "0xe9")}


@scenario("non-utf8-chat-system", "chat --system with byte 0xe9: one line")
def s_u_chat_sys(c):
    cmd = [PY.encode(), b"-m", b"dpolab.cli", b"chat", b"--model", str(REFS.model).encode(), b"--system", b"be \xe9"]
    rc, err = c.run([], cmd=cmd, stdin=b"hi\n")
    return {"problems": one_line_error(rc, err, "0xe9")}


@scenario("non-utf8-data-file", "a JSONL data file with invalid UTF-8 in a row: one line naming the row, or skipped")
def s_u_data(c):
    p = c.out / "bad_utf8.jsonl"
    rows = [json.dumps({"prompt": f"q{i} ", "chosen": "yes", "rejected": "no"}).encode() for i in range(12)]
    rows[5] = b'{"prompt": "q\xff ", "chosen": "yes", "rejected": "no"}'
    p.write_bytes(b"\n".join(rows) + b"\n")
    rc, err = c.train(c.out / "u8data", "data.task=null", f"data.train={p}", "data.eval_fraction=0.25")
    if rc == 0:
        return {"problems": [], "note": "row skipped"}
    return {"problems": one_line_error(rc, err, "bad_utf8.jsonl")}


def _bad(c, args, *words):
    rc, err = c.run(args)
    return {"problems": one_line_error(rc, err, *words)}


def _bad_train(c, name, extra, *words):
    run = c.out / name
    rc, err = c.train(run, *extra)
    probs = one_line_error(rc, err, *words)
    if run.exists() and (run / ".lock").exists():
        probs.append("a refused run left a .lock behind")
    return {"problems": probs}


H = ROOT / "examples" / "text_pairs_heldout.jsonl"


@scenario("eval-max-length-1", "eval --max-length 1: nothing scorable, one line (not 0 of N)")
def s_b_ml(c):
    return _bad(c, ["eval", "--model", str(REFS.model), "--data", str(H), "--max-length", "1"], "max_length")


@scenario("eval-beta-nan", "eval --beta nan: one line")
def s_b_nan(c):
    return _bad(c, ["eval", "--model", str(REFS.model), "--data", str(H), "--beta", "nan"], "beta")


@scenario("eval-beta-negative", "eval --beta -1: one line")
def s_b_neg(c):
    return _bad(c, ["eval", "--model", str(REFS.model), "--data", str(H), "--beta", "-1"], "beta")


@scenario("eval-batch-size-zero", "eval --batch-size 0: one line")
def s_b_ebs(c):
    return _bad(c, ["eval", "--model", str(REFS.model), "--data", str(H), "--batch-size", "0"], "batch")


@scenario("eval-missing-data", "eval --data naming no file: one line")
def s_b_edata(c):
    return _bad(c, ["eval", "--model", str(REFS.model), "--data", str(c.out / "nope.jsonl")], "nope.jsonl")


@scenario("generate-temperature-inf", "generate --temperature inf: one line")
def s_b_temp(c):
    return _bad(c, ["generate", "--model", str(REFS.model), "--temperature", "inf", "hi"], "temperature")


@scenario("generate-max-new-tokens-negative", "generate --max-new-tokens -1: one line")
def s_b_mnt(c):
    return _bad(c, ["generate", "--model", str(REFS.model), "--max-new-tokens", "-1", "hi"], "max-new-tokens")


@scenario("generate-top-p-2", "generate --top-p 2: one line")
def s_b_topp(c):
    return _bad(c, ["generate", "--model", str(REFS.model), "--top-p", "2", "hi"], "top")


@scenario("output-dir-root", "train output.dir=/: refused")
def s_b_root(c):
    rc, err = c.run(["train", *BASE, "output.dir=/"])
    return {"problems": one_line_error(rc, err, "output.dir")}


@scenario("output-dir-is-a-file", "train output.dir naming a regular file: one line")
def s_b_dirfile(c):
    rc, err = c.run(["train", *BASE, f"output.dir={_blocker(c)}"])
    return {"problems": one_line_error(rc, err, "a-file")}


@scenario("negative-batch-size", "train.batch_size=-1: one line naming the key")
def s_b_bs(c):
    return _bad_train(c, "negbs", ["train.batch_size=-1"], "train.batch_size")


@scenario("nan-learning-rate", "train.lr=nan: one line naming the key")
def s_b_lr(c):
    return _bad_train(c, "nanlr", ["train.lr=nan"], "train.lr")


@scenario("max-length-1", "data.max_length=1: one line naming the key")
def s_b_mlen(c):
    return _bad_train(c, "ml1", ["data.max_length=1"], "data.max_length")


@scenario("unknown-loss", "loss=[{name: no-such-loss}]: one line")
def s_b_loss(c):
    return _bad_train(c, "badloss", ["loss=[{name: no-such-loss}]"], "no-such-loss")


@scenario("loss-beta-nan", "loss=[{name: dpo, params: {beta: nan}}]: one line")
def s_b_lbeta(c):
    return _bad_train(c, "lbeta", ["loss=[{name: dpo, params: {beta: nan}}]"], "beta")


@scenario("unknown-config-key", "train.no_such_key=1: one line naming the key")
def s_b_key(c):
    return _bad_train(c, "badkey", ["train.no_such_key=1"], "no_such_key")


@scenario("malformed-yaml", "--config with broken YAML: one line")
def s_b_yaml(c):
    p = c.out / "broken.yaml"
    p.write_text("train:\n  lr: [1e-5\n  batch_size: 4\n")
    rc, err = c.run(["train", "--config", str(p), f"output.dir={c.out / 'yaml'}"])
    return {"problems": one_line_error(rc, err, "broken.yaml")}


@scenario("missing-config-file", "--config naming no file: one line")
def s_b_nocfg(c):
    rc, err = c.run(["train", "--config", str(c.out / "nope.yaml")])
    return {"problems": one_line_error(rc, err, "nope.yaml")}


@scenario("missing-data-file", "data.train naming no file: one line")
def s_b_nodata(c):
    return _bad_train(c, "nodata", ["data.task=null", f"data.train={c.out / 'missing.jsonl'}"], "missing.jsonl")


@scenario("data-row-missing-field", "a JSONL row without 'rejected': one line naming file/row/field, or skipped")
def s_b_row(c):
    p = c.out / "missing_field.jsonl"
    rows = [{"prompt": f"q{i} ", "chosen": "yes", "rejected": "no"} for i in range(12)]
    del rows[4]["rejected"]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, err = c.train(c.out / "rowfield", "data.task=null", f"data.train={p}", "data.eval_fraction=0.25")
    if rc == 0:
        return {"problems": [], "note": "row skipped"}
    return {"problems": one_line_error(rc, err, "missing_field.jsonl")}


@scenario("empty-data-file", "an empty data file: one line")
def s_b_empty(c):
    p = c.out / "empty.jsonl"
    p.write_text("")
    return _bad_train(c, "emptydata", ["data.task=null", f"data.train={p}"], "empty.jsonl")


@scenario("missing-model-path", "model.name_or_path=/nonexistent/model: one line at once")
def s_b_model(c):
    t0 = time.monotonic()
    res = _bad_train(c, "nomodel", ["model.name_or_path=/nonexistent/model"], "/nonexistent/model")
    if time.monotonic() - t0 > 60:
        res["problems"].append("took over 60 s to refuse (network retries?)")
    return res


@scenario("eval-missing-model", "eval --model ./no/such/folder: one line")
def s_b_emodel(c):
    return _bad(c, ["eval", "--model", "./no/such/folder", "--data", str(H)], "no/such/folder")


@scenario("two-writers-same-dir", "a second train into a live run's folder: refused naming the pid; first run intact")
def s_lock(c):
    run = c.out / "twowriters"
    proc = c.start(run, "train.max_steps=400")
    state = c.wait_until(proc, lambda: ckpt_step(run) >= 2)
    probs = []
    if state == "hit":
        rc, err = c.train(run, "train.max_steps=400", base=KILL)
        probs += one_line_error(rc, err, "pid")
        rc, err = c.train(run, "train.max_steps=400", base=KILL, resume=True)
        probs += [f"--resume into a live run: {p}" for p in one_line_error(rc, err, "pid")]
    proc.kill()
    c.kill_when(proc, lambda: True)
    return {"problems": probs, "note": f"wait point {state}"}


@scenario("kto-mismatched-pairs", "KTO on pairs split into unpaired rows (mismatched pairs cross prompts): trains")
def s_kto(c):
    rc, err = c.train(c.out / "kto", "train.mode=kto", "data.unpaired_from_pairs=true", "loss=[{name: kto}]")
    return {"problems": [] if rc == 0 else [f"exit {rc}: {last_error(err)[:160]}"]}


@scenario("hh-format-eval", "eval --format hh on plain text pairs: one line or a result, never a traceback")
def s_hh(c):
    rc, err = c.run(["eval", "--model", str(REFS.model), "--data", str(H), "--format", "hh"])
    return {"problems": [] if rc == 0 else one_line_error(rc, err)}


@scenario("tr-dpo-skip-nonfinite", "TR-DPO (reference.sync_every=2) with on_nonfinite=skip: runs to the end")
def s_trdpo(c):
    rc, err = c.train(c.out / "trdpo", "reference.sync_every=2", "train.on_nonfinite=skip")
    return {"problems": [] if rc == 0 else [f"exit {rc}: {last_error(err)[:160]}"]}


# -- driver -----------------------------------------------------------------------------------------------------------
def make_refs(out: Path) -> None:
    c = Ctx(out)
    REFS.base = out / "ref-base"
    REFS.kill = out / "ref-kill"
    for run, base in ((REFS.base, BASE), (REFS.kill, KILL)):
        rc, err = c.train(run, base=base)
        if rc != 0:
            sys.exit(f"reference run failed ({run}): {err[-2000:]}")
    REFS.model = REFS.base / "final"


def run_one(out: Path, name: str, what: str, fn) -> dict:
    c = Ctx(out)
    t0 = time.monotonic()
    try:
        res = fn(c) or {}
    except Exception as e:  # noqa: BLE001 - the harness reports its own failures as defects of the scenario
        res = {"problems": [f"harness error: {type(e).__name__}: {e}"], "harness_tb": traceback.format_exc()}
    tb = any(TB in e for e in c.stderr)
    probs = list(res.get("problems", []))
    if tb:
        probs.insert(0, "Python traceback on stderr")
    if res.get("lost"):
        probs.insert(0, "a finished run lost data (final/ or metrics changed)")
    row = {
        "name": name,
        "what": what,
        "exit_codes": c.rcs,
        "traceback": tb,
        "data_lost": bool(res.get("lost", False)),
        "bitwise_equal": res.get("bitwise"),
        "verdict": "DEFECT" if probs else "ok",
        "reason": probs[0] if probs else "",
        "problems": probs,
        "note": res.get("note", ""),
        "seconds": round(time.monotonic() - t0, 1),
    }
    if tb:
        row["stderr_tail"] = next(e for e in c.stderr if TB in e)[-3000:]
    if "harness_tb" in res:
        row["harness_traceback"] = res["harness_tb"]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/dpolab-attack", help="work folder (emptied first)")
    ap.add_argument("--only", default="", help="run only scenarios whose name contains this")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print(f"reference runs -> {out}", flush=True)
    make_refs(out)
    results = []
    todo = [s for s in SCENARIOS if args.only in s[0]]
    with open(out / "results.jsonl", "w") as fh:
        for i, (name, what, fn) in enumerate(todo, 1):
            row = run_one(out, name, what, fn)
            results.append(row)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            bit = {True: "equal", False: "DIFF", None: "-"}[row["bitwise_equal"]]
            rcs = ",".join(map(str, row["exit_codes"]))
            print(
                f"{i:3d} {name:38s} rc={rcs:14s} tb={'Y' if row['traceback'] else '-'}"
                f" lost={'Y' if row['data_lost'] else '-'} bitwise={bit:5s} {row['verdict']}"
                + (f": {row['reason'][:110]}" if row["reason"] else "")
                + (f" ({row['note']})" if row["note"] else ""),
                flush=True,
            )
    n = len(results)
    d = sum(r["verdict"] == "DEFECT" for r in results)
    lost = sum(r["data_lost"] for r in results)
    tbs = sum(r["traceback"] for r in results)
    print(f"\n{n} scenarios, {d} defects, data lost in {lost}, tracebacks in {tbs}")
    print(f"results: {out / 'results.jsonl'}")
    return 1 if d else 0


if __name__ == "__main__":
    sys.exit(main())
