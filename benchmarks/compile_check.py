"""torch.compile (inductor) vs eager on the same dpolab run (issue 18, lever 2): warm-up cost, gain per step, and
whether the numbers stay the same.

    python benchmarks/compile_check.py [--size tiny|imdb|both] [--steps 20]
                                       [--out benchmarks/results/compile_check.json]

Each arm is the same ``dpolab train`` run (weights from config, data, order, optimiser, seed) with
``train.compile=false`` or ``true``, in its own Python process (inductor's in-process caches would favour a second
compiled run; its on-disk cache is pointed at a fresh folder per arm). Per arm: the run's set-up, each step's time
(``time/step_s``: the compiled arm's first steps include compiling each new batch shape), the loss curve. Reported:
warm-up cost = the compiled arm's first ``--warm`` steps minus the eager arm's, gain per step = median eager step -
median compiled step after them, the steps needed to pay the warm-up back, and the largest loss difference per step.
Sizes: ``tiny`` = GPT-2 2x64, char tokenizer, arithmetic; ``imdb`` = GPT-2 6x384, real GPT-2 tokenizer, IMDb CAD pairs
(``--data-dir``), max length 512, batch 8 pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from dpolab.config import build_config
from dpolab.engine import Trainer
from dpolab.engine.logging import read_metrics
cfg = build_config(json.loads(sys.argv[1]))
s = time.perf_counter()
tr = Trainer(cfg, log=lambda m: None)
setup = time.perf_counter() - s
summary = tr.fit()
rows = [r for r in read_metrics(cfg.output.dir) if "loss" in r and "eval/loss" not in r]
print("RESULT " + json.dumps({"setup_s": setup, "total_s": time.perf_counter() - t0, "loss": [r["loss"] for r in rows],
      "step_s": [r["time/step_s"] for r in rows], "runtime": summary["runtime"]}))
"""


def config(size: str, steps: int, data_dir: str, out: str) -> dict:
    if size == "tiny":
        model = {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4}}
        data = {
            "task": "arithmetic",
            "task_args": {"n_train": 2000, "n_eval": 16, "n_terms": [2, 3], "max_value": 99},
            "max_length": 64,
        }
    else:
        model = {
            "name_or_path": "tiny-gpt2",
            "tokenizer": "gpt2-offline",
            "tiny": {"n_layer": 6, "n_embd": 384, "n_head": 6},
        }
        data = {
            "task": "imdb-cad",
            "task_args": {"path": str(Path(data_dir) / "imdb-cad-sentiment")},
            "max_length": 512,
        }
    return {
        "model": model,
        "data": data,
        "train": {"batch_size": 8, "max_steps": steps, "lr": 1e-4, "schedule": "constant", "threads": 2, "seed": 0},
        "eval": {"at_start": False, "max_examples": 8, "batch_size": 8},
        "output": {"dir": out, "progress": False, "save_final": False, "overwrite": True},
    }


def arm(size: str, compiled: bool, a, tmp: Path, timeout: int) -> dict:
    cfg = config(size, a.steps, a.data_dir, str(tmp / f"{size}-{compiled}"))
    cfg["train"]["compile"] = compiled
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor-{size}-{compiled}")}
    s = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(cfg)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "wall_s": round(time.perf_counter() - s, 1)}
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        return {
            "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}",
            "wall_s": round(time.perf_counter() - s, 1),
        }
    return {**json.loads(line[0][7:]), "wall_s": round(time.perf_counter() - s, 1)}


def compare(eager: dict, comp: dict, warm: int) -> dict:
    if "error" in eager or "error" in comp:
        return {"eager": eager, "compiled": comp}
    e_med = statistics.median(eager["step_s"][warm:] or eager["step_s"])
    c_med = statistics.median(comp["step_s"][warm:] or comp["step_s"])
    # compiling is lazy (at each new shape's first call), so it lands in the first steps, not in set-up (whose
    # difference between the arms is the load and the tokenised-data cache, which the first arm fills)
    warmup = sum(comp["step_s"][:warm]) - sum(eager["step_s"][:warm])
    gain = e_med - c_med
    return {
        "eager": eager,
        "compiled": comp,
        "eager_median_step_s": e_med,
        "compiled_median_step_s": c_med,
        "gain_per_step_s": gain,
        "warmup_cost_s": warmup,
        "break_even_steps": (warmup / gain) if gain > 0 else None,
        "max_abs_loss_diff": max(abs(x - y) for x, y in zip(eager["loss"], comp["loss"])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="both", choices=["tiny", "imdb", "both"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warm", type=int, default=5, help="first steps of each arm counted as warm-up")
    ap.add_argument("--timeout", type=int, default=1500, help="seconds per arm")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(HERE / "results" / "compile_check.json"))
    a = ap.parse_args()
    out_path = Path(a.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    sizes = ["tiny", "imdb"] if a.size == "both" else [a.size]
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            load0 = os.getloadavg()[0]
            eager, comp = arm(size, False, a, Path(tmp), a.timeout), arm(size, True, a, Path(tmp), a.timeout)
            r = compare(eager, comp, a.warm)
            r.update(
                when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                steps=a.steps,
                warm=a.warm,
                load_1min=[load0, os.getloadavg()[0]],
                command=f"python benchmarks/compile_check.py --size {size} --steps {a.steps} --warm {a.warm}",
            )
            result[size] = r
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=1) + "\n")
            brief = {k: r[k] for k in r if k not in ("eager", "compiled")}
            print(size, json.dumps(brief), flush=True)
    print(f"-> {out_path}")


if __name__ == "__main__":
    main()
