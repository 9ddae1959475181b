"""On-policy training (issue 30): the time split of an online DPO step and what the judge and held-out accuracy did.

    python benchmarks/online.py --threads 2                    # smollm2-135m + LoRA, arithmetic, the README's run
    python benchmarks/online.py --smoke                        # tiny GPT-2, seconds: does it run

Workload: the built-in arithmetic task (``data.task=arithmetic``, ``--terms`` operands in 1..``--max-value``;
``--prompts`` training problems, ``--heldout`` others), run through the ordinary CLI (``dpolab train``, called
through its entry point in this process; the command is printed and recorded):

1. the weak start: ``--sft-steps`` LoRA SFT steps on the task's chains (``train.mode=sft``);
2. online DPO from it (``train.mode=online online.judge=task:arithmetic``, LoRA, the adapter-disabled start as the
   live reference): each step samples ``--k`` completions of each of ``train.batch_size`` prompts at temperature 1,
   judges them (1 for the exact final value, else 0), pairs the best with the worst (ties skipped) and trains DPO.

Measured, from the run's ``metrics.jsonl``: per step the time split sample / judge / train (``online/time_sample_s``,
``online/time_judge_s``; train = the next step's ``online/time_train_s``, which times the previous step's forwards,
backwards and optimiser step; for the last step the step time ``time/step_s`` less sample and judge), the judge's mean
score of the step's samples with its 95 % interval (``online/judge_mean``, ``online/judge_ci``), the tie rate and the
largest on-policy gap (``online/logp_gap/max``). The judge's mean over the samples of the first and of the last
``--window`` steps (``samples.jsonl``), each with its 95 % interval (unpaired: other prompts, other samples).
Held-out answer accuracy: each held-out problem's share of right answers among ``--draws`` completions sampled at
temperature 1 with fixed row seeds, from the start (the SFT model) and from the online run's final model (the same
seeds: paired draw by draw), compared paired over problems with :func:`dpolab.stats.compare`. ``--rounds`` repeats
the online run (same seed, own folder) for the timings: per-step times are medians over rounds; the accuracy is
measured on the first round's model.

The result goes to ``benchmarks/results/online[-SUFFIX].json``; a section is appended to ``benchmarks/RESULTS.md``
only with ``--results-md``. The section names the CPU (model, amx_bf16 / avx512_bf16 / avx2).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import cpu, publish, versions  # noqa: E402

SMOKE = dict(model="tiny-gpt2", sft_steps=2, steps=2, prompts=4, heldout=4, draws=2, k=2, new_tokens=8, batch_size=4)


def task_args(a) -> dict:
    lo, hi = (int(x) for x in a.terms.split(","))
    return {"n_train": a.prompts, "n_eval": a.heldout, "n_terms": [lo, hi], "max_value": a.max_value}


def _flow(d: dict) -> str:
    """A dict as a YAML flow mapping for a command-line override."""
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in d.items()) + "}"


def commands(a, work: Path) -> tuple:
    """The two ``dpolab train`` argument lists: the SFT start and the online run (round ``r`` gets its own folder)."""
    common = [
        f"model.name_or_path={a.model}", "lora.enabled=true", f"lora.r={a.lora_r}", f"lora.alpha={2 * a.lora_r}",
        "data.task=arithmetic", f"data.task_args={_flow(task_args(a))}", "data.max_length=64",
        f"train.batch_size={a.batch_size}", "train.schedule=constant", "train.seed=0",
        "eval.at_start=false", "eval.max_examples=4", "output.progress=false", "output.overwrite=true",
    ]  # fmt: skip
    if a.threads:
        common.append(f"train.threads={a.threads}")
    sft = ["train", *common, "train.mode=sft", f"train.max_steps={a.sft_steps}", f"train.lr={a.sft_lr}",
           f"output.dir={work / 'sft'}"]  # fmt: skip
    online = [
        "train", *common, "train.mode=online", f"model.init_from={work / 'sft' / 'final'}",
        "online.judge=task:arithmetic", f"online.samples_per_prompt={a.k}", f"online.max_new_tokens={a.new_tokens}",
        f"loss=[{{name: dpo, params: {{beta: {a.beta}}}}}]", f"train.max_steps={a.steps}", f"train.lr={a.lr}",
    ]  # fmt: skip
    return sft, online


def dpolab(args: list, log) -> float:
    """Run ``dpolab ARGS`` through the CLI's own entry point, in this process (its log on stderr); the wall time.
    Stops if the command fails (its one-line error is above)."""
    from dpolab.cli import main as cli

    log("$ dpolab " + " ".join(shlex.quote(x) for x in args))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        rc = cli(list(args))
    if rc:
        raise SystemExit(f"dpolab {args[0]} failed (exit {rc}; its error is above)")
    return time.perf_counter() - t0


def step_rows(metrics: list) -> list:
    """Per optimiser step: sample / judge / train seconds, judge mean and interval, tie rate, on-policy gap."""
    rows = [r for r in metrics if "online/time_sample_s" in r and "step" in r]
    rows.sort(key=lambda r: r["step"])
    out = []
    for i, r in enumerate(rows):
        sample, judge = r["online/time_sample_s"], r["online/time_judge_s"]
        if i + 1 < len(rows):
            train = rows[i + 1]["online/time_train_s"]
        else:  # nothing times the last step's training: the step's time less its sampling and judging
            train = r["time/step_s"] - sample - judge
        out.append({
            "step": r["step"], "sample_s": sample, "judge_s": judge, "train_s": train, "step_s": r["time/step_s"],
            "judge_mean": r["online/judge_mean"], "judge_ci": r.get("online/judge_ci"),
            "tie_rate": r["online/tie_rate"], "logp_gap_max": r.get("online/logp_gap/max"),
        })  # fmt: skip
    return out


def median_steps(rounds: list) -> list:
    """Each step's times as the median over rounds (the judge statistics are the first round's)."""
    out = []
    for i, first in enumerate(rounds[0]):
        row = dict(first)
        for k in ("sample_s", "judge_s", "train_s", "step_s"):
            row[k] = statistics.median(r[i][k] for r in rounds)
        out.append(row)
    return out


def judge_change(samples: list, steps: int, window: int) -> dict:
    """The judge's mean score of every sample of the first and of the last ``window`` steps (``samples.jsonl`` rows),
    each with the half-width of its 95 % interval over those samples (windows never overlap: at most half the
    steps)."""
    from dpolab.stats import mean_ci

    w = max(1, min(window, steps // 2 or 1))
    first = [r["score"] for r in samples if r["step"] <= w]
    last = [r["score"] for r in samples if r["step"] > steps - w]
    return {"window": w, "first": list(mean_ci(first)), "last": list(mean_ci(last)), "n": [len(first), len(last)]}


def accuracy(model, tok, prompts: list, problems: list, draws: int, new_tokens: int) -> dict:
    """Each problem's share of right answers among ``draws`` completions at temperature 1 (row seeds 0, 1, ...)."""
    import torch

    from dpolab.models.generation import sample_ids
    from dpolab.tasks.arithmetic import is_correct

    flat = [p for p in prompts for _ in range(draws)]
    with torch.no_grad():
        samples = sample_ids(
            model, flat, row_seeds=list(range(len(flat))), max_new_tokens=new_tokens, eos_id=tok.eos_token_id,
            pad_id=tok.pad_token_id, batch_size=64,
        )  # fmt: skip
    out = {}
    for i, prob in enumerate(problems):
        texts = [tok.decode(s.ids, skip_special_tokens=True) for s in samples[i * draws : (i + 1) * draws]]
        out[prob.question] = sum(is_correct(prob, t) for t in texts) / draws
    return out


def heldout(a, work: Path) -> dict:
    """Held-out accuracy of the start and of round 1's final model, paired over problems."""
    from dpolab.config import ModelConfig
    from dpolab.data.prompts import _prompt_ids
    from dpolab.models.load import load_saved_model, load_tokenizer
    from dpolab.stats import compare
    from dpolab.tasks.arithmetic import problem_of_prompt, task_rows

    tok = load_tokenizer(ModelConfig(name_or_path=a.model))
    _, rows = task_rows(task_args(a), "preference", 0)
    problems = [problem_of_prompt(r["prompt"]) for r in rows]
    prompts = [_prompt_ids(tok, r["prompt"], True) for r in rows]
    acc = {}
    for name, folder in (("start", work / "sft" / "final"), ("online", work / "online-1" / "final")):
        model = load_saved_model(folder, tok).eval()
        acc[name] = accuracy(model, tok, prompts, problems, a.draws, a.new_tokens)
    v = compare(acc["online"], acc["start"], metric="held-out answer accuracy", higher_is_better=True,
                label_a="online", label_b="start", limits=(-1.0, 1.0))  # fmt: skip
    mean = {k: sum(d.values()) / len(d) for k, d in acc.items()}
    return {"start": mean["start"], "online": mean["online"], "gain": [v.mean, v.low, v.high], "n": v.n,
            "per_problem": acc}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a preset (smollm2-135m) or tiny-gpt2 / tiny-llama")
    ap.add_argument("--terms", default="2,2", help="operands per problem: lo,hi")
    ap.add_argument("--max-value", type=int, default=9)
    ap.add_argument("--prompts", type=int, default=32, help="training problems")
    ap.add_argument("--heldout", type=int, default=32, help="held-out problems")
    ap.add_argument("--sft-steps", type=int, default=2)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--k", type=int, default=4, help="online.samples_per_prompt")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--draws", type=int, default=4, help="sampled answers per held-out problem")
    ap.add_argument("--window", type=int, default=3, help="steps averaged at the start and the end of the judge")
    ap.add_argument("--rounds", type=int, default=1, help="online runs timed (the same run again)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (train.threads; default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="tiny GPT-2, a few steps: does it run")
    ap.add_argument("--work", default="", help="run folders here (default: a temporary folder, removed)")
    ap.add_argument("--suffix", default="", help="results/online-SUFFIX.json instead of results/online.json")
    ap.add_argument("--json", default="", help="write the result here instead of benchmarks/results/")
    ap.add_argument("--results-md", action="store_true", help="also append a section to benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    if a.smoke:
        for k, v in SMOKE.items():
            setattr(a, k, v)
    if a.threads:
        from dpolab.models.device import set_threads

        set_threads(a.threads)

    def log(msg):
        print(msg, file=sys.stderr)

    tmp = None if a.work else tempfile.TemporaryDirectory(prefix="dpolab-online-bench-")
    work = Path(a.work or tmp.name)
    try:
        sft_cmd, online_cmd = commands(a, work)
        sft_s = dpolab(sft_cmd, log)
        loads, rounds, wall = [], [], []
        for r in range(1, a.rounds + 1):
            before = os.getloadavg()[0]
            wall.append(dpolab([*online_cmd, f"output.dir={work / f'online-{r}'}"], log))
            loads.append({"before": before, "after": os.getloadavg()[0]})
            text = (work / f"online-{r}" / "metrics.jsonl").read_text(encoding="utf-8")
            rounds.append(step_rows([json.loads(x) for x in text.splitlines() if x.strip()]))
            if r == 1:
                text = (work / "online-1" / "samples.jsonl").read_text(encoding="utf-8")
                samples = [json.loads(x) for x in text.splitlines() if x.strip()]
        acc = heldout(a, work)
    finally:
        if tmp is not None:
            tmp.cleanup()
    steps = median_steps(rounds)
    total = {k: sum(s[k] for s in steps) for k in ("sample_s", "judge_s", "train_s")}
    gaps = [s["logp_gap_max"] for s in steps if s["logp_gap_max"] is not None]
    rec = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/online.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
        "cpu": cpu(),
        "versions": versions(),
        "threads": a.threads,
        "settings": {k: v for k, v in vars(a).items() if k not in ("results_md", "suffix", "work", "json")},
        "task_args": task_args(a),
        "online_command": "dpolab " + " ".join(shlex.quote(x) for x in online_cmd),
        "sft_s": sft_s,
        "online_wall_s": wall,
        "loads": loads,
        "steps": steps,
        "rounds_steps": rounds,
        "time_total_s": total,
        "time_share": {k: v / (sum(total.values()) or 1.0) for k, v in total.items()},
        "judge": judge_change(samples, len(steps), a.window),
        "tie_rate_mean": statistics.mean(s["tie_rate"] for s in steps),
        "logp_gap_max": max(gaps) if gaps else None,
        "heldout": acc,
    }
    name = "online" + (f"-{a.suffix}" if a.suffix else "") + ("-smoke" if a.smoke else "") + ".json"
    publish(rec, Path(a.json) if a.json else HERE / "results" / name, section(rec), a.results_md)
    return 0


def section(rec: dict) -> str:
    s, t, share, j, h = rec["settings"], rec["time_total_s"], rec["time_share"], rec["judge"], rec["heldout"]
    rows = "\n".join(
        f"| {x['step']} | {x['sample_s']:.2f} | {x['judge_s']:.4f} | {x['train_s']:.2f} | {x['step_s']:.2f} | "
        f"{x['judge_mean']:.3f} ± {x['judge_ci'] if x['judge_ci'] is not None else float('nan'):.3f} | "
        f"{x['tie_rate']:.2f} |"
        for x in rec["steps"]
    )
    gain = h["gain"]
    gap = rec["logp_gap_max"]
    return "\n\n".join(
        [
            f"\n## {rec['date'][:16].replace('T', ' ')} — `{rec['command']}`",
            f"### workload `online` — model {s['model']} + LoRA r={s['lora_r']}, arithmetic "
            f"({rec['task_args']}), {s['sft_steps']} SFT steps (lr {s['sft_lr']}) as the start, then {s['steps']} "
            f"online DPO steps (beta {s['beta']}, lr {s['lr']}): {s['batch_size']} prompts x {s['k']} samples per "
            f"step, temperature 1, at most {s['new_tokens']} new tokens, judge task:arithmetic; {s['rounds']} "
            f"round(s), {rec['threads'] or 'default'} torch threads",
            f"CPU: {rec['cpu']}; load average (1 min) before/after each round: "
            + ", ".join(f"{x['before']:.2f}/{x['after']:.2f}" for x in rec["loads"])
            + f"; versions: {rec['versions']}",
            f"The online run: `{rec['online_command']} output.dir=...`",
            f"**Headline** (on {rec['cpu']}): of a step's time, sampling {share['sample_s']:.0%}, judging "
            f"{share['judge_s']:.2%}, training {share['train_s']:.0%} ({t['sample_s']:.1f} / {t['judge_s']:.3f} / "
            f"{t['train_s']:.1f} s over {len(rec['steps'])} steps). Judge mean (share of exact answers among the "
            f"samples) over the first {j['window']} steps {j['first'][0]:.3f} ± {j['first'][1]:.3f}, over the last "
            f"{j['window']} {j['last'][0]:.3f} ± {j['last'][1]:.3f}; mean tie rate {rec['tie_rate_mean']:.2f}; "
            f"largest on-policy log-prob gap {'n/a' if gap is None else f'{gap:.2g}'}. Held-out answer accuracy "
            f"({h['n']} problems x {s['draws']} sampled answers, the same seeds before and after): start "
            f"{h['start']:.3f}, after {h['online']:.3f}, gain {gain[0]:+.3f} (95 % interval {gain[1]:+.3f} to "
            f"{gain[2]:+.3f}, paired over problems).",
            "| step | sample (s) | judge (s) | train (s) | step (s) | judge mean ± 95 % | tie rate |\n"
            "|---|---|---|---|---|---|---|\n" + rows,
            "Train (s) = the next step's `online/time_train_s` (the forwards, backwards and optimiser step of this "
            "step's pairs); for the last step, the step time less sampling and judging. Times: median over rounds.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
