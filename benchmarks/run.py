"""dpolab vs TRL vs a bare PyTorch loop: ``python benchmarks/run.py --workload imdb`` (see benchmarks/README.md).

Each arm runs in its own subprocess (clean peak RSS); arms are interleaved round-robin (``--rounds``, order rotated
each round) so they see the same machine load. Per arm: median step time over all measured steps (after warm-up) of
all rounds, pairs/s and tokens/s from it, median peak RSS, step-0 loss and mean chosen log-prob (must agree across
arms: same weights, same tokens). The table is printed and appended to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from arms import ARMS  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

DEFAULT_ARMS = {
    "imdb": ["dpolab", "trl-default", "trl-tuned", "bare", "dpolab-live-ref", "dpolab-plain"],
    "longprompt": ["dpolab", "dpolab-packed", "dpolab-padded", "bare"],
    "smollm": ["dpolab", "trl-default", "bare", "dpolab-live-ref"],
}


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs"


def versions() -> str:
    import importlib.metadata as md

    out = [f"python {platform.python_version()}"]
    for p in ("torch", "transformers", "trl", "peft", "accelerate", "dpolab"):
        try:
            out.append(f"{p} {md.version(p)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(out)


def run_arm(arm: str, workload: str, env: dict) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    p = subprocess.run([sys.executable, str(HERE / "arms.py"), arm, workload, out], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"arm {arm} failed:\n{p.stderr[-3000:]}")
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    return res


def summarise(runs: list) -> dict:
    w = runs[0]["warmup"]
    times, toks = [], []
    for r in runs:
        times += r["step_times"][w:]
        toks += r["tokens_per_step"][w:]
    med = statistics.median(times)
    b = runs[0]["batch_size"]
    return dict(step_s=med, pairs_s=b / med, tokens_s=statistics.mean(toks) / med,
                rss=statistics.median(r["peak_rss_mb"] for r in runs), loss0=runs[0]["loss0"],
                setup_s=statistics.median(r["setup_s"] for r in runs), total_s=statistics.median(r["total_s"] for r in runs),
                lp0=runs[0]["logps_chosen0"], n=len(times), all_steps=[round(t, 3) for t in times])


def table(workload: str, results: dict, ref: str = "dpolab") -> str:
    base = results[ref]
    lines = ["| arm | median step (s) | pairs/s | tokens/s | dpolab speed-up (x) | peak RSS (MB) | RSS / dpolab | "
             "setup (s) | run total (s) | step-0 loss | step-0 mean chosen log-p |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, s in results.items():
        lines.append(f"| {arm} | {s['step_s']:.3f} | {s['pairs_s']:.2f} | {s['tokens_s']:.0f} | "
                     f"{s['step_s'] / base['step_s']:.2f} | {s['rss']:.0f} | {s['rss'] / base['rss']:.2f} | "
                     f"{s['setup_s']:.1f} | {s['total_s']:.1f} | {s['loss0']:.4f} | {s['lp0']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workload", default="imdb", help="imdb | longprompt | smollm | comma list | all (= imdb,longprompt,smollm)")
    ap.add_argument("--arms", default=None, help=f"comma list of arms (default per workload); valid: {', '.join(ARMS)}")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each arm once per round)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per arm run (default per workload)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per arm run, not measured")
    ap.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    wls = ["imdb", "longprompt", "smollm"] if a.workload == "all" else a.workload.split(",")
    env = dict(os.environ)
    if a.steps:
        env["BENCH_STEPS"] = str(a.steps)
    if a.warmup is not None:
        env["BENCH_WARMUP"] = str(a.warmup)
    command = "python benchmarks/run.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    report = [f"\n## {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} — `{command}`\n",
              f"- machine: {machine()}; load average before the run {os.getloadavg()[0]:.2f} "
              "(timings are medians of interleaved runs)",
              f"- versions: {versions()}"]
    for wl in wls:
        w = WORKLOADS[wl]
        arms = a.arms.split(",") if a.arms else DEFAULT_ARMS[wl]
        runs = {arm: [] for arm in arms}
        for r in range(a.rounds):
            order = arms[r % len(arms):] + arms[: r % len(arms)]
            for arm in order:
                print(f"[{wl}] round {r + 1}/{a.rounds}: {arm} ...", file=sys.stderr, flush=True)
                runs[arm].append(run_arm(arm, wl, env))
                print(f"    steps {[round(t, 2) for t in runs[arm][-1]['step_times']]}", file=sys.stderr, flush=True)
        results = {arm: summarise(rs) for arm, rs in runs.items()}
        r0 = runs[arms[0]][0]
        txt = (f"\n### workload `{wl}` — model {w.model}{' + LoRA r=16' if w.lora else ''}, batch {w.batch_size} pairs, "
               f"{r0['warmup']} warm-up + {r0['steps']} measured steps per run x {a.rounds} rounds, fp32, "
               f"{r0['torch_threads']} torch threads\n\n" + (table(wl, results) if "dpolab" in results else "")
               + "\n\n<details><summary>all measured step times (s)</summary>\n\n"
               + "\n".join(f"- {arm}: {s['all_steps']}" for arm, s in results.items()) + "\n\n</details>")
        print(txt)
        report.append(txt + f"\n\nLoad average (1 min) after this workload: {os.getloadavg()[0]:.2f}.")
        if not a.no_write:  # each workload as it finishes: a later failure does not lose it
            with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
                f.write("\n".join(report) + "\n")
            report = []


if __name__ == "__main__":
    main()
