"""fp32 vs bf16 autocast on the same run (issue 18, lever 1): loss curves, their largest smoothed difference,
step times.

    python benchmarks/bf16_check.py [--steps 300] [--model 6x384] [--data-dir ../shared/data] [--task arithmetic]
                                    [--out benchmarks/results/bf16_check.json]

Both runs are the same ``dpolab train`` run (same weights from config, data, order, optimiser, seed) apart from
``train.bf16``; each runs in this process one after the other. The curves are smoothed with an exponential moving
average (``--ema``, default 0.05 per step, about 20 steps) and compared step by step; the JSON holds both raw
curves, the smoothed ones, ``max_abs_diff_smoothed``, the final held-out losses and the median step time of each arm,
plus what ``train.bf16=auto`` would choose on this machine and why. A paragraph for RESULTS.md is printed.
Step times only mean something on a quiet machine: the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ema(xs, alpha):
    out, m = [], None
    for x in xs:
        m = x if m is None else (1 - alpha) * m + alpha * x
        out.append(m)
    return out


def run(arm: str, base: dict, out_dir: Path) -> dict:
    from dpolab.config import build_config
    from dpolab.engine import train
    from dpolab.engine.logging import read_metrics

    cfg = build_config(base, [f"train.bf16={'true' if arm == 'bf16' else 'false'}", f"output.dir={out_dir / arm}"])
    t = time.perf_counter()
    summary = train(cfg, log=lambda m: None)
    rows = [r for r in read_metrics(out_dir / arm) if "loss" in r and "eval/loss" not in r]
    return {
        "wall_s": round(time.perf_counter() - t, 1),
        "loss": [r["loss"] for r in rows],
        "step_s": [r["time/step_s"] for r in rows],
        "final_eval_loss": (summary["final_eval"] or {}).get("eval/loss"),
        "first_eval_loss": (summary["first_eval"] or {}).get("eval/loss"),
        "runtime": summary.get("runtime"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--model", default="6x384", help="LAYERSxWIDTH of a GPT-2 built from config")
    ap.add_argument("--task", default="arithmetic", choices=["arithmetic", "imdb-cad"])
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ema", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=1e-3, help="large enough that the loss moves well off ln 2")
    ap.add_argument("--out", default=str(HERE / "results" / "bf16_check.json"))
    a = ap.parse_args()
    import torch

    from dpolab.engine.precision import cpu_flags, resolve_bf16

    layers, width = (int(x) for x in a.model.split("x"))
    if a.task == "imdb-cad":
        data = {
            "task": "imdb-cad",
            "task_args": {"path": str(Path(a.data_dir) / "imdb-cad-sentiment")},
            "max_length": 512,
        }
        tok = "gpt2-offline"
    else:
        data = {
            "task": "arithmetic",
            "task_args": {"n_train": 4000, "n_eval": 64, "n_terms": [2, 3], "max_value": 99},
            "max_length": 64,
        }
        tok = "char"
    base = {
        "model": {
            "name_or_path": "tiny-gpt2",
            "tokenizer": tok,
            "tiny": {"n_layer": layers, "n_embd": width, "n_head": max(1, width // 64)},
        },
        "data": data,
        "train": {
            "batch_size": 8,
            "max_steps": a.steps,
            "lr": a.lr,
            "warmup_steps": 10,
            "schedule": "constant",
            "threads": a.threads,
            "seed": 0,
        },
        "eval": {"max_examples": 64, "batch_size": 16},
        "output": {"progress": False, "save_final": False},
    }
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        arms = {arm: run(arm, base, Path(tmp)) for arm in ("fp32", "bf16")}
    s32, s16 = ema(arms["fp32"]["loss"], a.ema), ema(arms["bf16"]["loss"], a.ema)
    diffs = [abs(x - y) for x, y in zip(s32, s16)]
    auto, why = resolve_bf16("auto", torch.device("cpu"))
    flags = cpu_flags() or set()
    med = {k: statistics.median(v["step_s"][5:] or v["step_s"]) for k, v in arms.items()}
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_1min": [load0, os.getloadavg()[0]],
        "config": base,
        "ema_alpha": a.ema,
        "cpu": {
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_flags": sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f"}),
            "auto_choice": "bf16" if auto else "fp32",
            "auto_reason": why,
        },
        "max_abs_diff_smoothed": max(diffs),
        "max_abs_diff_smoothed_at_step": diffs.index(max(diffs)) + 1,
        "final_smoothed": {"fp32": s32[-1], "bf16": s16[-1]},
        "final_eval_loss": {k: v["final_eval_loss"] for k, v in arms.items()},
        "median_step_s": med,
        "bf16_speedup": med["fp32"] / med["bf16"],
        "curves": {k: {"loss": v["loss"], "step_s": v["step_s"], "runtime": v["runtime"]} for k, v in arms.items()},
        "smoothed": {"fp32": s32, "bf16": s16},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    para = (
        f"bf16 check ({result['when']}, GPT-2 {a.model} from config, {a.task}, {a.steps} steps, batch 8, "
        f"lr {a.lr:g}, {a.threads} threads, load {load0:.1f}->{os.getloadavg()[0]:.1f}): "
        f"the EMA-smoothed (alpha {a.ema}) training "
        f"loss curves of fp32 and bf16 autocast differ by at most {max(diffs):.2e} nats (step "
        f"{result['max_abs_diff_smoothed_at_step']}); "
        f"final smoothed loss {s32[-1]:.4f} (fp32) vs {s16[-1]:.4f} (bf16); "
        f"held-out loss {arms['fp32']['final_eval_loss']:.4f} vs {arms['bf16']['final_eval_loss']:.4f}. Median step "
        f"{med['fp32']:.3f} s (fp32) vs {med['bf16']:.3f} s (bf16): x{med['fp32'] / med['bf16']:.2f}. This CPU "
        f"({result['cpu']['torch_capability']}, bf16 flags: {', '.join(result['cpu']['bf16_flags']) or 'none'}) -> "
        f"train.bf16=auto picks {result['cpu']['auto_choice']}. `python benchmarks/bf16_check.py --steps {a.steps} "
        f"--model {a.model} --task {a.task} --lr {a.lr:g}` -> benchmarks/results/bf16_check.json."
    )
    print(para)
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
