"""``dpolab demo``: the whole pipeline on the built-in arithmetic task, offline, in a few minutes on 2 quiet CPU cores.

1. SFT a tiny GPT-2 (character tokenizer, built from a config) on arithmetic chains.
2. From the SFT checkpoint, train DPO, DPOP and Gate-DPO on preference pairs whose rejected answer is a
   near miss (one corrupted value) or a far miss.
3. Write ``report.md`` with a table (answer accuracy, reward accuracy, change of chosen and rejected
   log-probs against the reference, log-ratio margin, wall-clock), plots of the log-prob trajectories, and the
   judgement of each method's answer accuracy against the SFT start point: per eval problem (correct or not, greedy),
   paired by problem, worded by :func:`dpolab.stats.every` / :func:`dpolab.stats.none_of` from the 95 % intervals.

It says what it does as it goes: each stage with an estimate of its time (:class:`Pace`: first the time measured on
2 quiet cores, then this machine's own pace), a note when other jobs share the cores, and at the end the commands
to try next on what it wrote (:func:`next_steps`).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .atomic import write_text
from .config import build_config
from .engine import train
from .engine.logging import read_metrics
from .stats import Verdict, compare, every, none_of
from .studies.report import markdown_table, plot_lines, versions
from .tasks import rows_for

# Sizes: FULL is what `dpolab demo` runs (a few minutes on 2 quiet cores); QUICK is a seconds-long smoke test.
FULL = dict(
    n_train=3000,
    n_eval=128,
    sft_steps=1500,
    pref_steps=150,
    eval_every=25,
    layers=4,
    width=128,
    sft_batch=32,
    pref_batch=16,
)
QUICK = dict(
    n_train=64, n_eval=16, sft_steps=6, pref_steps=4, eval_every=2, layers=1, width=32, sft_batch=8, pref_batch=4
)

METHODS: Dict[str, List[Dict[str, Any]]] = {
    "DPO": [{"name": "dpo", "params": {"beta": 0.1}}],
    "DPOP": [{"name": "dpop", "params": {"beta": 0.1, "lam": 50.0}}],
    "Gate-DPO (seq)": [{"name": "dpo", "params": {"beta": 0.1}, "gate": {"mode": "seq"}}],
}


# The time of a FULL demo on 2 quiet CPU cores: `dpolab demo` took 3 min 05 s on 2026-12-07 on a 2-core AMD EPYC
# (AVX512-BF16, no AMX; load average 0.1 at the start; SFT 120 s of training, each preference stage about 18 s with its
# evaluations): the run of the committed report (docs/results/demo/). Earlier: 2 min 43 s at commit 6be185c. Cores
# shared with other jobs take many times longer: a `make demo` on 2 shared cores took 29 min, an earlier report's 52.
QUIET_2_CORES_S = 185
# a preference step (policy forward and backward and the reference's forward, 16 pairs) against an SFT step (forward
# and backward, 32 sequences of the same length): 0.087 s / 0.069 s in that run
PREF_STEP_COST = 1.3


def clock(seconds: float) -> str:
    """``2 min 05 s``, ``45 s``."""
    n = int(round(seconds))
    return f"{n // 60} min {n % 60:02d} s" if n >= 60 else f"{n} s"


def machine() -> Dict[str, Any]:
    """The cores this process may use and the 1-minute load average (None where the system keeps none)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load: Optional[float] = round(os.getloadavg()[0], 1)
    except (OSError, AttributeError):
        load = None
    return {"cores": cores, "load": load}


def busy_note(m: Dict[str, Any]) -> Optional[str]:
    """A line when other jobs share the cores (load average above their number), else None."""
    if m["load"] is None or m["load"] <= m["cores"]:
        return None
    return (
        f"[demo] note: other jobs share this machine (load average {m['load']} on {m['cores']} cores), so expect "
        f"it to take several times longer than on quiet cores; the progress bars show the real pace"
    )


def n_evals(steps: int, every: int) -> int:
    """Evaluations of a run: at the start, every ``every`` steps before the last, and at the end."""
    return 1 + (steps - 1) // every + 1 if every else 2


class Pace:
    """The demo's time estimates, from what this run has measured so far. Before anything has run, the full sizes'
    time on 2 quiet cores (:data:`QUIET_2_CORES_S`); after the SFT stage, each preference stage from its cost per
    training step (times :data:`PREF_STEP_COST`) and per evaluation; after a preference stage, each one left takes
    what that one took."""

    def __init__(self, sizes: Dict[str, Any], stages: int):
        self.s, self.left = sizes, stages
        self.step_s = self.eval_s = self.stage_s = None  # type: Optional[float]

    def sft_done(self, stage_s: float, summary: Dict[str, Any]) -> None:
        self.step_s = summary["wall_clock_s"] / max(1, summary["steps"])
        evals = n_evals(self.s["sft_steps"], self.s["sft_steps"] // 4 or 1)
        self.eval_s = max(0.0, stage_s - summary["wall_clock_s"]) / evals  # each evaluation, with its share of set-up

    def pref_done(self, stage_s: float) -> None:
        self.stage_s, self.left = stage_s, self.left - 1

    def pref_stage_s(self) -> float:
        if self.stage_s is not None:
            return self.stage_s
        return (
            self.s["pref_steps"] * self.step_s * PREF_STEP_COST
            + n_evals(self.s["pref_steps"], self.s["eval_every"]) * self.eval_s
        )

    def remaining_s(self) -> float:
        return self.left * self.pref_stage_s()


class StageClock:
    """An eval hook that adds no metric: at each evaluation inside a stage, a line with the step, the time so far and
    the time left in the stage at its pace since the first evaluation (before step 1, after the set-up; the training
    bar shows the same between evaluations)."""

    def __init__(self, name: str, steps: int, print_fn=print):
        self.name, self.steps, self.print = name, steps, print_fn
        self.t0 = time.perf_counter()

    def __call__(self, model, tokenizer, step: int) -> Dict[str, float]:
        if step == 0:
            self.t0 = time.perf_counter()
        elif step < self.steps:
            spent = time.perf_counter() - self.t0
            self.print(
                f"[demo]   {self.name} step {step} of {self.steps}, {clock(spent)} in: about "
                f"{clock(spent / step * (self.steps - step))} left in this stage",
                flush=True,
            )
        return {}


def next_steps(out: Path, example: Dict[str, Any]) -> List[str]:
    """Commands to try on what the demo wrote (each checked by tests/integration/test_demo_progress.py)."""
    q = lambda *parts: shlex.quote(str(out.joinpath(*parts)))  # noqa: E731
    prompt = example["prompt"].replace("\\", "\\\\").replace("\n", "\\n")
    return [
        f"printf {shlex.quote(prompt)} | dpolab generate --model {q('dpo', 'final')} --temperature 0 "
        f"--max-new-tokens 24    # the DPO model's answer to '{example['prompt'].splitlines()[0][3:]}' "
        f"(right: {example['answer']})",
        f"dpolab eval --model {q('dpop', 'final')} --reference {q('sft', 'final')} --data {q('eval_pairs.jsonl')}"
        f"    # DPOP's reward accuracy and margins on the held-out pairs, with 95 % intervals",
        f'dpolab train --config {q("dpo", "config.yaml")} "loss=[{{name: ipo, params: {{beta: 0.1}}}}]" '
        f"output.dir={q('ipo')}    # the DPO stage again with another loss (dpolab losses lists them all)",
    ]


class AnswerHook:
    """The arithmetic task's greedy answer accuracy (``eval/answer_accuracy``, ``eval/answer_parsed``), keeping each
    problem's hit (1 correct, 0 not) from the latest call: after a run, the final model's, for paired comparisons."""

    def __init__(self, rows: List[dict], *, max_new_tokens: int = 24):
        self.prompts, self.answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
        self.max_new_tokens = max_new_tokens
        self.hits: Dict[int, float] = {}

    def __call__(self, model, tokenizer, step: int) -> Dict[str, float]:
        from .evaluation.generation import generate
        from .tasks.arithmetic import parse_answer

        outs = generate(model, tokenizer, self.prompts, max_new_tokens=self.max_new_tokens, batch_size=64)
        parsed = [parse_answer(o) for o in outs]
        self.hits = {i: float(p == a) for i, (p, a) in enumerate(zip(parsed, self.answers))}
        n = max(1, len(outs))
        return {"answer_accuracy": sum(self.hits.values()) / n, "answer_parsed": sum(p is not None for p in parsed) / n}


ANSWER_BOUND = 0.02  # the smallest answer-accuracy difference (a share of the problems) a verdict words as one


def answer_verdicts(hits: Dict[str, Dict[int, float]], start: str = "SFT") -> List[Verdict]:
    """Each method's per-problem answer hits against the start point's, paired by eval problem."""
    return [
        compare(
            h,
            hits[start],
            metric="answer accuracy",
            higher_is_better=True,
            label_a=name,
            label_b=start,
            digits=3,
            bound=ANSWER_BOUND,
            limits=(-1.0, 1.0),
        )
        for name, h in hits.items()
        if name != start
    ]


def answer_judgement(verdicts: List[Verdict], n_problems: int) -> str:
    """The report's sentence on answer accuracy, from the paired intervals alone."""
    lowered = every(
        verdicts, "lowered answer accuracy below the SFT start point", subject="preference method", expect="worse"
    )
    raised = none_of(
        verdicts, "raised answer accuracy above the SFT start point", subject="preference method", expect="better"
    )
    return (
        f"{lowered} {raised} (Differences are paired by eval problem, {n_problems} problems, each scored correct or "
        f"not by greedy generation, and judged against a smallest meaningful difference of ±{ANSWER_BOUND:g} of "
        "accuracy: 'negligible' inside it, a direction only beyond it; one training seed, so this says nothing "
        "about seed-to-seed variation.)"
    )


def _base(out: Path, s: Dict[str, Any], seed: int) -> Dict[str, Any]:
    return {
        "model": {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": s["layers"], "n_embd": s["width"], "n_head": 4}},
        "data": {
            "task": "arithmetic",
            "task_args": {
                "n_train": s["n_train"],
                "n_eval": s["n_eval"],
                "miss": "mixed",
                "n_terms": [2, 3],
                "max_value": 20,
            },
            "max_length": 96,
        },
        "eval": {"every": s["eval_every"], "batch_size": 64, "max_examples": s["n_eval"]},
        "train": {"seed": seed, "log_every": 5},
        "output": {"overwrite": True},
    }


def run_demo(out_dir: str = "runs/demo", *, quick: bool = False, seed: int = 0, print_fn=print) -> Path:
    out = Path(out_dir)
    s = QUICK if quick else FULL
    base = _base(out, s, seed)
    t0 = time.perf_counter()
    cfg0 = build_config(base, [])
    _, eval_rows = rows_for(cfg0.data.task, cfg0.data.task_args, "preference", seed)
    eval_rows = list(eval_rows)[: s["n_eval"]]
    hooks: Dict[str, AnswerHook] = {}
    pace, start = Pace(s, stages=len(METHODS)), machine()
    say = lambda msg: print_fn(msg, flush=True)  # noqa: E731

    say(
        f"[demo] SFT, then {', '.join(METHODS)} from the SFT model, then a report in {out}"
        + ("" if quick else f": about {clock(QUIET_2_CORES_S)} on 2 quiet CPU cores")
    )
    if busy_note(start):
        say(busy_note(start))
    say(f"[demo] 1/{len(METHODS) + 1} SFT on arithmetic chains ({s['sft_steps']} steps of {s['sft_batch']})")
    sft_cfg = build_config(
        base,
        [
            "train.mode=sft",
            f"train.max_steps={s['sft_steps']}",
            f"train.batch_size={s['sft_batch']}",
            "train.lr=2e-3",
            "train.warmup_steps=50" if not quick else "train.warmup_steps=0",
            "train.schedule=cosine",
            f"eval.every={s['sft_steps'] // 4 or 1}",
            f"output.dir={out / 'sft'}",
        ],
    )
    hooks["SFT"] = AnswerHook(eval_rows)
    stage0 = time.perf_counter()
    results: Dict[str, Dict[str, Any]] = {
        "SFT": train(sft_cfg, eval_hooks=[hooks["SFT"], StageClock("SFT", s["sft_steps"], print_fn)])
    }
    pace.sft_done(time.perf_counter() - stage0, results["SFT"])
    say(
        f"[demo] 1/{len(METHODS) + 1} done in {clock(time.perf_counter() - stage0)}; the {len(METHODS)} preference "
        f"stages take about {clock(pace.remaining_s())} more at this machine's pace"
    )

    for i, (name, loss) in enumerate(METHODS.items(), start=2):
        say(
            f"[demo] {i}/{len(METHODS) + 1} {name} from the SFT model ({s['pref_steps']} steps of {s['pref_batch']} "
            f"pairs; about {clock(pace.pref_stage_s())})"
        )
        folder = out / name.split()[0].lower()
        cfg = build_config(
            {**base, "loss": loss},
            [
                "train.mode=preference",
                f"model.init_from={out / 'sft' / 'final'}",
                f"train.max_steps={s['pref_steps']}",
                f"train.batch_size={s['pref_batch']}",
                "train.lr=1e-4",
                "train.warmup_steps=10" if not quick else "train.warmup_steps=0",
                "train.schedule=constant",
                f"output.dir={folder}",
            ],
        )
        hooks[name] = AnswerHook(eval_rows)
        stage0 = time.perf_counter()
        results[name] = train(cfg, eval_hooks=[hooks[name]])
        results[name]["_dir"] = str(folder)
        pace.pref_done(time.perf_counter() - stage0)
        say(
            f"[demo] {i}/{len(METHODS) + 1} done in {clock(pace.stage_s)}"
            + (f"; about {clock(pace.remaining_s())} more" if pace.left else "")
        )
    results["SFT"]["_dir"] = str(out / "sft")
    write_text(
        out / "eval_pairs.jsonl",
        "".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in eval_rows),
    )
    report = write_report(
        out, results, time.perf_counter() - t0, quick=quick, hits={n: h.hits for n, h in hooks.items()}, machine=start
    )
    say(f"[demo] done in {clock(time.perf_counter() - t0)}: {report}")
    say("[demo] what to try next:\n" + "\n".join(f"  {c}" for c in next_steps(out, eval_rows[0])))
    return report


def _machine_words(m: Optional[Dict[str, Any]]) -> str:
    """Where the wall-clock was measured: the cores, and the load averages that say whether other jobs shared them."""
    if not m:
        return ""
    if m.get("load") is None:
        return f" on {m['cores']} CPU cores"
    return f" on {m['cores']} CPU cores, load average {m['load']} when it started" + (
        " (other jobs shared the cores: quiet ones take much less)" if m["load"] > m["cores"] else ""
    )


def _eval_series(run_dir: str, key: str):
    rows = [r for r in read_metrics(Path(run_dir)) if key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def write_report(
    out: Path,
    results: Dict[str, Dict[str, Any]],
    wall: float,
    *,
    quick: bool = False,
    hits: Optional[Dict[str, Dict[int, float]]] = None,
    machine: Optional[Dict[str, Any]] = None,
) -> Path:
    """``hits``: per method, each eval problem's final answer hit (1/0), for the paired verdicts against SFT.
    ``machine``: the cores and the load average at the start (:func:`machine`), said beside the wall-clock."""
    verdicts = {v.label_a: v for v in answer_verdicts(hits)} if hits else {}
    sft_final = results["SFT"]["final_eval"] or {}
    rows = [
        [
            "SFT (start point)",
            sft_final.get("eval/answer_accuracy"),
            "-",
            None,
            0.0,
            0.0,
            0.0,
            results["SFT"]["wall_clock_s"],
        ]
    ]
    for name, r in results.items():
        if name == "SFT":
            continue
        f, v = r["final_eval"] or {}, verdicts.get(name)
        vs_sft = f"{v.difference()} ({v.interval()})" if v is not None else "-"
        rows.append(
            [
                name,
                f.get("eval/answer_accuracy"),
                vs_sft,
                f.get("eval/reward_accuracy"),
                f.get("eval/logratio/chosen"),
                f.get("eval/logratio/rejected"),
                f.get("eval/logratio_margin"),
                r["wall_clock_s"],
            ]
        )
    headers = [
        "method",
        "answer accuracy",
        "answer acc. - SFT (95 % CI, paired by problem)",
        "reward accuracy",
        "Δ log p(chosen)",
        "Δ log p(rejected)",
        "log-ratio margin",
        "train s",
    ]
    n_problems = len(next(iter(hits.values()))) if hits else 0
    judgement = answer_judgement(list(verdicts.values()), n_problems) if verdicts else ""
    panels = []
    for key, title in (
        ("eval/logratio/chosen", "Δ log p(chosen) vs reference"),
        ("eval/logratio/rejected", "Δ log p(rejected) vs reference"),
        ("eval/answer_accuracy", "answer accuracy (greedy)"),
    ):
        panels.append(
            (
                title,
                "nats" if "logratio" in key else "accuracy",
                {n: _eval_series(r["_dir"], key) for n, r in results.items() if n != "SFT"},
            )
        )
    plot = plot_lines(
        out / "logprob_trajectories.png", panels, title="dpolab demo: preference training from the SFT model"
    )
    sft_curve = plot_lines(
        out / "sft_curve.png",
        [("SFT eval loss", "nats/token", {"SFT": _eval_series(results["SFT"]["_dir"], "eval/loss")})],
    )
    lines = [
        "# dpolab demo report",
        "",
        "Built-in arithmetic task (`17+25-8` -> `17+25=42; 42-8=34`), a tiny GPT-2 trained from scratch with a "
        "character "
        "tokenizer: SFT first, then DPO, DPOP (lambda 50) and Gate-DPO (seq gate) from the SFT checkpoint on pairs "
        "whose "
        "rejected answer is a near miss (one corrupted value) or a far miss. Δ log p is the mean change of the "
        "response "
        "log-probability against the reference (the SFT model) on held-out pairs after training; the log-ratio margin "
        "is "
        "Δ log p(chosen) - Δ log p(rejected) (the implicit reward margin is beta = 0.1 times it); reward accuracy "
        "counts "
        "strict wins (ties apart)."
        + (" **Quick mode: numbers are from a smoke-sized run and mean nothing.**" if quick else ""),
        "",
        markdown_table(headers, rows),
        "",
        *([judgement, ""] if judgement else []),
        f"![log-prob trajectories]({plot.name})",
        "",
        f"![SFT curve]({sft_curve.name})",
        "",
        "How to read it: DPO raises the margin; whether it does so by pushing the chosen answer *down* less than the "
        "rejected one is what the Δ log p(chosen) column shows. DPOP and Gate-DPO are designed to keep Δ log p(chosen) "
        "from falling.",
        "",
        f"Total wall-clock {wall:.0f} s{_machine_words(machine)}. Versions: {json.dumps(versions())}. Runs: "
        + ", ".join(f"`{r['_dir']}`" for r in results.values())
        + ".",
        "",
    ]
    report = out / "report.md"
    write_text(report, "\n".join(lines))
    return report
