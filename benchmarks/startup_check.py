"""Where a short dpolab run's start-up time goes (issue 18, lever 4): imports, tokenizer, tokenisation (cold and
with the tokenised-data cache), model build, set-up, and the steps themselves.

    python benchmarks/startup_check.py [--data-dir ../shared/data] [--steps 2]
                                       [--out benchmarks/results/startup_check.json]

Each measurement runs in a fresh Python process: ``python -X importtime`` of the CLI commands and of
``dpolab.engine``, then the same short training run twice with a fresh tokenised-data cache folder (first run: cold,
tokenises; second: a cache hit). Timers wrap the trainer's own calls (monkeypatched here, not in the library).
Workload: GPT-2 6x384 from config, the real GPT-2 tokenizer (gpt2-offline), IMDb CAD pairs (data.task=imdb-cad,
max_length 512) when the data folder is there, else the arithmetic task.
"""

from __future__ import annotations

import argparse
import json
import os
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
import torch  # noqa: F401
t_torch = time.perf_counter()
import dpolab.engine.trainer as T
from dpolab.config import build_config
from dpolab.engine.objectives.base import Objective
t_import = time.perf_counter()
timers = {}

def timed(name, fn):
    def wrapper(*a, **k):
        s = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            timers[name] = timers.get(name, 0.0) + time.perf_counter() - s
    return wrapper

T.load_tokenizer = timed("tokenizer_load", T.load_tokenizer)
T.prepare_data = timed("data_prepare (read + tokenise, or cache)", T.prepare_data)
Objective.build_model = timed("model_build", Objective.build_model)
T.Trainer.evaluate = timed("evaluation", T.Trainer.evaluate)
T.Trainer._checkpoint = timed("final_checkpoint", T.Trainer._checkpoint)
cfg = build_config(json.loads(sys.argv[1]))
s = time.perf_counter()
trainer = T.Trainer(cfg, log=lambda m: None)
t_init = time.perf_counter() - s
s = time.perf_counter()
summary = trainer.fit()
t_fit = time.perf_counter() - s
out = {"import_torch_s": t_torch - t0, "import_dpolab_engine_s": t_import - t_torch, "trainer_init_s": t_init,
       "fit_s": t_fit, "steps_s": summary["wall_clock_s"], **{k + "_s": v for k, v in timers.items()},
       "total_s": time.perf_counter() - t0}
out["setup_other_s"] = t_init - sum(
    timers.get(k, 0) for k in ("tokenizer_load", "data_prepare (read + tokenise, or cache)", "model_build")
)
out["outside_steps_s"] = out["total_s"] - out["steps_s"]
print("RESULT " + json.dumps(out))
"""


def importtime(args, env) -> dict:
    """Wall time and the heaviest top-level imports of ``python -X importtime -m dpolab.cli ARGS``."""
    s = time.perf_counter()
    p = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - s
    rows = []
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = line.split("|")
            try:
                rows.append((int(cum.strip()), name.rstrip()))
            except ValueError:
                continue
    top = [(n.strip(), round(c / 1e6, 3)) for c, n in rows if not n.startswith("  ")]  # top-level imports only
    top.sort(key=lambda x: -x[1])
    names = {n.strip() for _, n in rows}
    return {
        "wall_s": round(wall, 2),
        "imports_torch": "torch" in names,
        "imports_transformers": "transformers" in names,
        "top_imports_s": top[:6],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "startup_check.json"))
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_1min_before": os.getloadavg()[0],
        "cli": {},
        "runs": [],
    }
    for cmd in (["--help"], ["losses"], ["config"]):
        result["cli"]["dpolab " + " ".join(cmd)] = importtime(["-m", "dpolab.cli", *cmd], env)
    result["cli"]["import dpolab.engine"] = importtime(["-c", "import dpolab.engine"], env)
    imdb = Path(a.data_dir) / "imdb-cad-sentiment"
    data = (
        {"task": "imdb-cad", "task_args": {"path": str(imdb)}, "max_length": 512}
        if imdb.is_dir()
        else {"task": "arithmetic", "task_args": {"n_train": 2000, "n_eval": 64}, "max_length": 64}
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "model": {
                "name_or_path": "tiny-gpt2",
                "tokenizer": "gpt2-offline",
                "tiny": {"n_layer": 6, "n_embd": 384, "n_head": 6},
            },
            "data": {**data, "cache_dir": str(Path(tmp) / "tokens")},
            "train": {"batch_size": 8, "max_steps": a.steps, "lr": 1e-5, "threads": 2},
            "eval": {"at_start": False, "max_examples": 8, "batch_size": 8},
            "output": {"dir": str(Path(tmp) / "run"), "progress": False, "save_final": False, "overwrite": True},
        }
        result["workload"] = {
            "model": "gpt2 6x384 (tiny-gpt2 preset)",
            "tokenizer": "gpt2-offline",
            "data": data,
            "steps": a.steps,
        }
        for label in ("cold (tokenises)", "warm (tokenised-data cache hit)"):
            p = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env, cwd=ROOT
            )
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                raise SystemExit(f"run failed:\n{p.stderr[-3000:]}")
            r = {k: round(v, 2) for k, v in json.loads(line[0][7:]).items()}
            result["runs"].append({"run": label, **r})
            print(label, r, flush=True)
    result["load_1min_after"] = os.getloadavg()[0]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["cli"], indent=1))
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
