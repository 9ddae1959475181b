"""dpolab vs TRL vs a bare PyTorch loop: ``python benchmarks/run.py --workload imdb`` (see benchmarks/README.md).

Per workload: first the same-math check (every fp32 arm trains ``--check-steps`` steps; their last loss, log-probs,
margin and a checksum of the weight update must agree within ``harness.TOLERANCES``, else the run stops with an
error and writes nothing), then ``--rounds`` timed rounds: each runs every arm once, each arm in its own subprocess
(clean peak RSS), the order rotated each round; the 1-min load average is recorded before, during (sampled) and after
each round, and a round whose load differs from the first round's by more than ``--load-margin`` is flagged and left
out of the headline (but shown). Ratios to the base arm (``dpolab-live``) are computed within each round; the table
gives their median and min-max. The end-to-end columns (1 and 3 epochs) are computed from each run's measured setup
and step times (``harness.end_to_end``), not measured. The section is printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from arms import ARMS, BETA, LR, get_arm  # noqa: E402
from workloads import WORKLOADS, imdb_pairs  # noqa: E402

DEFAULT_ARMS = {
    "imdb": ["dpolab-live", "trl-default", "trl-tuned", "bare", "dpolab-precompute", "dpolab-live-plain"],
    "longprompt": ["dpolab-live", "dpolab-live-packed", "dpolab-live-padded", "bare"],
    "smollm": ["dpolab-live", "trl-default", "bare", "dpolab-precompute"],
}
BASE = "dpolab-live"
EPOCHS = (1, 3)


def cpu() -> str:
    """This machine's CPU: model name and the bf16 / AVX2 flags (:func:`harness.cpu_text`)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    rec = harness.cpu_record(text)
    rec["model"] = rec["model"] or platform.processor() or None
    return harness.cpu_text(rec)


def machine() -> str:
    return f"{platform.system()} {platform.release()}, {cpu()}, {os.cpu_count()} logical CPUs"


def versions() -> str:
    import importlib.metadata as md

    out = [f"python {platform.python_version()}"]
    for p in ("torch", "transformers", "trl", "peft", "accelerate", "dpolab"):
        try:
            out.append(f"{p} {md.version(p)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(out)


def publish(rec: dict, out: Path, text: str, results_md: bool) -> None:
    """Write ``rec`` as JSON to ``out``, print the section ``text``; with ``results_md``, append it to RESULTS.md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1) + "\n", encoding="utf-8")
    print(text)
    if results_md:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(text + "\n")


def run_arm(arm: str, workload: str, env: dict) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    p = subprocess.run(
        [sys.executable, str(HERE / "arms.py"), arm, workload, out], env=env, capture_output=True, text=True
    )
    if p.returncode != 0:
        raise RuntimeError(f"arm {arm} failed:\n{p.stderr[-3000:]}")
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    return res


class LoadSampler:
    """The 1-min load average every ``every`` seconds while a round runs (in a thread; the arms are subprocesses)."""

    def __init__(self, every: float = 2.0):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def same_math_check(wl: str, arms: list, steps: int, lr: float, factor: float, env: dict) -> tuple:
    """(markdown, problems): every fp32 arm trains ``steps`` steps and reports its values (harness.same_math)."""
    checked = [a for a in arms if get_arm(a).fp32]
    skipped = [a for a in arms if a not in checked]
    if not checked:
        return f"Same-math check: **not run**: no fp32 arm ({', '.join(skipped)}).", []
    ref = BASE if BASE in checked else checked[0]
    cenv = dict(env, BENCH_STEPS=str(steps), BENCH_WARMUP="0", BENCH_CHECK="1", BENCH_LR=repr(lr))
    checks = {}
    for arm in [ref] + [a for a in checked if a != ref]:
        print(f"[{wl}] same-math check: {arm} ({steps} steps) ...", file=sys.stderr, flush=True)
        checks[arm] = run_arm(arm, wl, cenv).get("check")
    problems = harness.same_math(checks, reference=ref, factor=factor)
    md = (
        f"Same-math check: every fp32 arm trained {steps} optimiser steps from the same weights on the same pairs "
        f"in the same order, peak lr {lr:g} (the timed runs: {LR:g}; larger here so that a few steps move the loss "
        f"measurably) decaying linearly to 0 over these {steps} steps, beta {BETA:g}; below, the values of the last "
        f"step's batch and of the weight update, compared with {ref}'s. "
        + (f"Not checked (not fp32): {', '.join(skipped)}. " if skipped else "")
        + ("**Passed.**" if not problems else "**FAILED:** " + "; ".join(problems))
        + "\n\n"
        + harness.check_table(checks)
        + "\n\nTolerances: "
        + "; ".join(harness.tolerance_lines(factor=factor))
        + f". The check can fail: {ref}'s last loss must be at least {harness.WEAK_FACTOR:g} loss tolerances from "
        "ln 2, which every arm starts from whatever its beta."
    )
    return md, problems


def notes(s: dict, arms: list, base: str, epoch_pairs: int, spe: int, run_pairs: int) -> str:
    trl = [x for x in arms if get_arm(x).impl == "trl"]
    return (
        "Reference column: `live` = a reference forward inside every step, `precomputed` = dpolab's "
        "`reference.mode=precomputed` (computed once, in the setup time). Median step, pairs/s, tokens/s, RSS and "
        f"setup: over the kept rounds. Ratios: the arm's value / {base}'s within each round, median [min-max] over "
        "the kept rounds. End to end = computed, not measured: setup + the warm-up steps as measured + the "
        f"remaining steps at the run's median step time, for an epoch of {epoch_pairs} pairs ({spe} steps); the "
        "part of the setup that grows with the data (dpolab's reference precomputation) is scaled from the run's "
        f"{run_pairs} pairs to the epoch's and done once for all epochs"
        + (
            "; TRL's tokenisation (median "
            + ", ".join(f"{x} {s[x]['excluded_s']:.1f} s" for x in trl)
            + ") is left out, since dpolab and the bare loop are given token ids."
            if trl
            else "."
        )
    )


def run_workload(wl: str, arms: list, a, env: dict) -> str:
    w = WORKLOADS[wl]
    base = BASE if BASE in arms else arms[0]
    parts = []
    if a.check_steps > 0:
        md, problems = same_math_check(wl, arms, a.check_steps, a.check_lr or w.check_lr, a.check_tol_factor, env)
        if problems:
            print(md, file=sys.stderr)
            raise SystemExit(f"[{wl}] same-math check failed (nothing written):\n- " + "\n- ".join(problems))
        parts.append(md)
    else:
        parts.append(
            "Same-math check: **skipped** (`--check-steps 0`): these arms are not shown to compute the same thing."
        )
    if a.check_only:
        return "\n\n".join([f"### workload `{wl}`: same-math check only"] + parts)
    runs = {arm: [] for arm in arms}
    loads, orders = [], []
    for r in range(a.rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        orders.append(order)
        before = os.getloadavg()[0]
        with LoadSampler() as sampler:
            for arm in order:
                print(f"[{wl}] round {r + 1}/{a.rounds}: {arm} ...", file=sys.stderr, flush=True)
                runs[arm].append(run_arm(arm, wl, env))
                print(f"    steps {[round(t, 2) for t in runs[arm][-1]['step_times']]}", file=sys.stderr, flush=True)
        loads.append(harness.round_load(before, sampler.samples, os.getloadavg()[0]))
    flags = harness.flag_rounds(loads, a.load_margin)
    kept = [f is None for f in flags]
    epoch_pairs = a.epoch_pairs or len(imdb_pairs(10**9))
    s = harness.summary(runs, base, kept, epoch_pairs, EPOCHS)
    live = [x for x in arms if get_arm(x).reference == "live" and get_arm(x).fp32]
    r0 = runs[arms[0]][0]
    spe = harness.steps_per_epoch(epoch_pairs, w.batch_size)
    title = (
        f"### workload `{wl}` — model {w.model}{' + LoRA r=16' if w.lora else ''}, batch {w.batch_size} pairs, "
        f"{r0['warmup']} warm-up + {r0['steps']} measured steps per run x {a.rounds} rounds, fp32 unless the arm "
        f"says bf16, {r0['torch_threads']} torch threads"
    )
    where = f"CPU: {cpu()}"  # in every section: a later section is appended without the run's header
    if a.json:
        raw = dict(workload=wl, cpu=cpu(), loads=loads, flags=flags, orders=orders, runs=runs, summary=s)
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(raw, indent=1, default=str))
    txt = (
        [title, where]
        + parts
        + [
            harness.headline(s, base, live, sum(kept), a.rounds, EPOCHS, cpu=cpu()),
            harness.main_table(s, base, EPOCHS),
            notes(s, arms, base, epoch_pairs, spe, r0["pairs"]),
            "Rounds (median measured step time of each arm in each round):\n\n"
            + harness.rounds_table(runs, loads, flags, orders),
            "<details><summary>all measured step times (s), by round</summary>\n\n"
            + "\n".join(
                f"- {arm}: " + " | ".join(str([round(t, 3) for t in harness.measured(r)]) for r in rs)
                for arm, rs in runs.items()
            )
            + "\n\n</details>",
        ]
    )
    return "\n\n".join(txt)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--workload", default="imdb", help="imdb | longprompt | smollm | comma list | all (= imdb,longprompt,smollm)"
    )
    ap.add_argument("--arms", default=None, help=f"comma list of arms (default per workload); valid: {', '.join(ARMS)}")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (each arm once per round, order rotated)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per arm run (default per workload)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per arm run, not measured")
    ap.add_argument(
        "--check-steps", type=int, default=5, help="steps of the same-math check run of every arm (0: skip)"
    )
    ap.add_argument(
        "--check-lr",
        type=float,
        default=None,
        help="peak lr of the same-math check runs (default per workload: imdb, longprompt 1e-4; smollm 1e-3)",
    )
    ap.add_argument(
        "--check-tol-factor", type=float, default=1.0, help="multiply every same-math tolerance (stated in the results)"
    )
    ap.add_argument("--check-only", action="store_true", help="run the same-math check only (prints; writes nothing)")
    ap.add_argument(
        "--load-margin",
        type=float,
        default=0.5,
        help="a round whose load average differs from the first round's by more than this is left out of the headline",
    )
    ap.add_argument(
        "--epoch-pairs",
        type=int,
        default=None,
        help="pairs in one epoch for the end-to-end columns (default: every pair of the data file)",
    )
    ap.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--json", default=None, help="also write every round's raw results and the summary to this file")
    a = ap.parse_args(argv)
    wls = ["imdb", "longprompt", "smollm"] if a.workload == "all" else a.workload.split(",")
    for wl in wls:
        if wl not in WORKLOADS:
            ap.error(f"unknown workload '{wl}'; valid: {', '.join(WORKLOADS)}, all")
    arm_lists = {}
    for wl in wls:
        arm_lists[wl] = a.arms.split(",") if a.arms else DEFAULT_ARMS[wl]
        for arm in arm_lists[wl]:
            try:
                get_arm(arm)
            except ValueError as e:
                ap.error(str(e))
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    env = dict(os.environ)
    if a.steps:
        env["BENCH_STEPS"] = str(a.steps)
    if a.warmup is not None:
        env["BENCH_WARMUP"] = str(a.warmup)
    command = "python benchmarks/run.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])
    )
    header = [
        f"\n## {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} — `{command}`\n",
        f"- machine: {machine()}; load average (1 min) before the run {os.getloadavg()[0]:.2f}",
        f"- versions: {versions()}",
        f"- settings: {a.rounds} rounds, load margin {a.load_margin:g}, same-math check "
        f"{f'{a.check_steps} steps' if a.check_steps else 'skipped'}, end-to-end columns computed (not measured)",
    ]
    for wl in wls:
        txt = run_workload(wl, arm_lists[wl], a, env)
        print(txt)
        if a.no_write or a.check_only:
            continue
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:  # each workload as it finishes
            f.write(
                "\n".join(header) + "\n\n" + txt + f"\n\nLoad average (1 min) after this workload: "
                f"{os.getloadavg()[0]:.2f}.\n"
            )
        header = []


if __name__ == "__main__":
    main()
