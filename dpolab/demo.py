"""``dpolab demo``: the whole pipeline on the built-in arithmetic task, offline, in a few minutes on a CPU.

1. SFT a tiny GPT-2 (character tokenizer, built from a config) on arithmetic chains.
2. From the SFT checkpoint, train DPO, DPOP and Gate-DPO on preference pairs whose rejected answer is a
   near miss (one corrupted value) or a far miss.
3. Write ``report.md`` with a table (answer accuracy, reward accuracy, change of chosen and rejected
   log-probs against the reference, log-ratio margin, wall-clock), plots of the log-prob trajectories, and the
   judgement of each method's answer accuracy against the SFT start point: per eval problem (correct or not, greedy),
   paired by problem, worded by :func:`dpolab.stats.every` / :func:`dpolab.stats.none_of` from the 95 % intervals.
"""
from __future__ import annotations

import json
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

# Sizes: FULL is what `dpolab demo` runs (a few minutes on 2 cores); QUICK is a seconds-long smoke test.
FULL = dict(n_train=3000, n_eval=128, sft_steps=1500, pref_steps=150, eval_every=25, layers=4, width=128, sft_batch=32, pref_batch=16)
QUICK = dict(n_train=64, n_eval=16, sft_steps=6, pref_steps=4, eval_every=2, layers=1, width=32, sft_batch=8, pref_batch=4)

METHODS: Dict[str, List[Dict[str, Any]]] = {
    "DPO": [{"name": "dpo", "params": {"beta": 0.1}}],
    "DPOP": [{"name": "dpop", "params": {"beta": 0.1, "lam": 50.0}}],
    "Gate-DPO (seq)": [{"name": "dpo", "params": {"beta": 0.1}, "gate": {"mode": "seq"}}],
}


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


def answer_verdicts(hits: Dict[str, Dict[int, float]], start: str = "SFT") -> List[Verdict]:
    """Each method's per-problem answer hits against the start point's, paired by eval problem."""
    return [compare(h, hits[start], metric="answer accuracy", higher_is_better=True, label_a=name, label_b=start, digits=3)
            for name, h in hits.items() if name != start]


def answer_judgement(verdicts: List[Verdict], n_problems: int) -> str:
    """The report's sentence on answer accuracy, from the paired intervals alone."""
    lowered = every(verdicts, "lowered answer accuracy below the SFT start point", subject="preference method",
                    expect="worse")
    raised = none_of(verdicts, "raised answer accuracy above the SFT start point", subject="preference method",
                     expect="better")
    return (f"{lowered} {raised} (Differences are paired by eval problem, {n_problems} problems, each scored correct or "
            "not by greedy generation; one training seed, so this says nothing about seed-to-seed variation.)")


def _base(out: Path, s: Dict[str, Any], seed: int) -> Dict[str, Any]:
    return {
        "model": {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": s["layers"], "n_embd": s["width"], "n_head": 4}},
        "data": {"task": "arithmetic", "task_args": {"n_train": s["n_train"], "n_eval": s["n_eval"], "miss": "mixed",
                                                      "n_terms": [2, 3], "max_value": 20}, "max_length": 96},
        "eval": {"every": s["eval_every"], "batch_size": 64, "max_examples": s["n_eval"]},
        "train": {"seed": seed, "log_every": 5},
        "output": {"overwrite": True},
    }


def run_demo(out_dir: str = "runs/demo", *, quick: bool = False, seed: int = 0) -> Path:
    out = Path(out_dir)
    s = QUICK if quick else FULL
    base = _base(out, s, seed)
    t0 = time.perf_counter()
    cfg0 = build_config(base, [])
    _, eval_rows = rows_for(cfg0.data.task, cfg0.data.task_args, "preference", seed)
    eval_rows = list(eval_rows)[: s["n_eval"]]
    hooks: Dict[str, AnswerHook] = {}

    print("[demo] 1/4 SFT on arithmetic chains", flush=True)
    sft_cfg = build_config(base, [
        "train.mode=sft", f"train.max_steps={s['sft_steps']}", f"train.batch_size={s['sft_batch']}", "train.lr=2e-3",
        "train.warmup_steps=50" if not quick else "train.warmup_steps=0", "train.schedule=cosine",
        f"eval.every={s['sft_steps'] // 4 or 1}", f"output.dir={out / 'sft'}",
    ])
    hooks["SFT"] = AnswerHook(eval_rows)
    results: Dict[str, Dict[str, Any]] = {"SFT": train(sft_cfg, eval_hooks=[hooks["SFT"]])}

    for i, (name, loss) in enumerate(METHODS.items(), start=2):
        print(f"[demo] {i}/4 {name} from the SFT model", flush=True)
        folder = out / name.split()[0].lower()
        cfg = build_config({**base, "loss": loss}, [
            "train.mode=preference", f"model.init_from={out / 'sft' / 'final'}", f"train.max_steps={s['pref_steps']}",
            f"train.batch_size={s['pref_batch']}", "train.lr=1e-4", "train.warmup_steps=10" if not quick else "train.warmup_steps=0",
            "train.schedule=constant", f"output.dir={folder}",
        ])
        hooks[name] = AnswerHook(eval_rows)
        results[name] = train(cfg, eval_hooks=[hooks[name]])
        results[name]["_dir"] = str(folder)
    results["SFT"]["_dir"] = str(out / "sft")
    report = write_report(out, results, time.perf_counter() - t0, quick=quick, hits={n: h.hits for n, h in hooks.items()})
    print(f"[demo] done in {time.perf_counter() - t0:.0f}s", flush=True)
    return report


def _eval_series(run_dir: str, key: str):
    rows = [r for r in read_metrics(Path(run_dir)) if key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def write_report(out: Path, results: Dict[str, Dict[str, Any]], wall: float, *, quick: bool = False,
                 hits: Optional[Dict[str, Dict[int, float]]] = None) -> Path:
    """``hits``: per method, each eval problem's final answer hit (1/0), for the paired verdicts against SFT."""
    verdicts = {v.label_a: v for v in answer_verdicts(hits)} if hits else {}
    sft_final = results["SFT"]["final_eval"] or {}
    rows = [["SFT (start point)", sft_final.get("eval/answer_accuracy"), "-", None, 0.0, 0.0, 0.0, results["SFT"]["wall_clock_s"]]]
    for name, r in results.items():
        if name == "SFT":
            continue
        f, v = r["final_eval"] or {}, verdicts.get(name)
        vs_sft = f"{v.difference()} ({v.interval()})" if v is not None else "-"
        rows.append([name, f.get("eval/answer_accuracy"), vs_sft, f.get("eval/reward_accuracy"), f.get("eval/logratio/chosen"),
                     f.get("eval/logratio/rejected"), f.get("eval/logratio_margin"), r["wall_clock_s"]])
    headers = ["method", "answer accuracy", "answer acc. - SFT (95 % CI, paired by problem)", "reward accuracy",
               "Δ log p(chosen)", "Δ log p(rejected)", "log-ratio margin", "train s"]
    n_problems = len(next(iter(hits.values()))) if hits else 0
    judgement = answer_judgement(list(verdicts.values()), n_problems) if verdicts else ""
    panels = []
    for key, title in (("eval/logratio/chosen", "Δ log p(chosen) vs reference"),
                       ("eval/logratio/rejected", "Δ log p(rejected) vs reference"),
                       ("eval/answer_accuracy", "answer accuracy (greedy)")):
        panels.append((title, "nats" if "logratio" in key else "accuracy",
                       {n: _eval_series(r["_dir"], key) for n, r in results.items() if n != "SFT"}))
    plot = plot_lines(out / "logprob_trajectories.png", panels, title="dpolab demo: preference training from the SFT model")
    sft_curve = plot_lines(out / "sft_curve.png", [("SFT eval loss", "nats/token", {"SFT": _eval_series(results["SFT"]["_dir"], "eval/loss")})])
    lines = [
        "# dpolab demo report",
        "",
        "Built-in arithmetic task (`17+25-8` -> `17+25=42; 42-8=34`), a tiny GPT-2 trained from scratch with a character "
        "tokenizer: SFT first, then DPO, DPOP (lambda 50) and Gate-DPO (seq gate) from the SFT checkpoint on pairs whose "
        "rejected answer is a near miss (one corrupted value) or a far miss. Δ log p is the mean change of the response "
        "log-probability against the reference (the SFT model) on held-out pairs after training; the log-ratio margin is "
        "Δ log p(chosen) - Δ log p(rejected) (the implicit reward margin is beta = 0.1 times it); reward accuracy counts "
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
        f"Total wall-clock {wall:.0f} s. Versions: {json.dumps(versions())}. Runs: "
        + ", ".join(f"`{r['_dir']}`" for r in results.values()) + ".",
        "",
    ]
    report = out / "report.md"
    write_text(report, "\n".join(lines))
    return report
