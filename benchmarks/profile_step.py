"""Where a benchmark arm's step time goes:
``python benchmarks/profile_step.py --workload imdb --arms dpolab-live,bare``.

Runs an arm of ``benchmarks/arms.py`` (the same model, pairs, order and settings as the timed benchmark) under
``torch.profiler`` (CPU activities only), skipping the set-up and the first ``--skip`` optimiser steps, recording the
next ``--steps``. Every profiled operator's *self* CPU time is put in one category (matrix products, attention, the
LM head's softmax work, optimiser, normalisation/activations, dtype casts, other copies and layout, other) and the
table gives each category's share of the recorded steps and its seconds per step, plus the model's matrix-product
FLOP per step (from
the profiler's shapes) and the rate they ran at, next to the rate of bare fp32 matrix products of a few shapes on the
same threads (the machine's practical peak). Results: printed and written as JSON (``--out``).

It answers "how far is this arm from the machine's matrix-product peak, and what else costs time"; the profiler adds
overhead of its own (a few per cent of a multi-second step), so its step times are not the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

CATEGORIES = [  # (category, substrings of aten op names), first match wins
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")),
    ("attention (sdpa)", ("scaled_dot_product", "_flash_attention", "_efficient_attention")),
    ("softmax / log-softmax / logsumexp", ("softmax", "logsumexp", "aten::exp", "aten::log", "_log_softmax")),
    (
        "optimiser",
        (
            "_foreach",
            "adam",
            "aten::addcdiv",
            "aten::addcmul",
            "aten::lerp",
            "aten::sqrt",
            "clip_grad",
            "aten::norm",
            "linalg_vector_norm",
        ),
    ),
    ("layer norm / activations", ("layer_norm", "rms_norm", "gelu", "silu", "tanh", "aten::pow", "aten::rsqrt")),
    (
        "copies, indexing, layout",
        (
            "copy_",
            "aten::cat",
            "aten::index",
            "gather",
            "scatter",
            "aten::contiguous",
            "aten::clone",
            "aten::to",
            "_to_copy",
            "aten::fill_",
            "aten::zero_",
            "aten::empty",
            "masked",
            "aten::where",
            "embedding",
        ),
    ),
    (
        "elementwise arithmetic",
        ("aten::add", "aten::mul", "aten::sub", "aten::div", "aten::neg", "aten::sum", "aten::mean"),
    ),
]


CASTS = "dtype casts (aten::to)"  # a copy_ made by aten::_to_copy: fp32 <-> bf16 of weights, activations, tiles


def category(name: str, parent: str = "") -> str:
    """The operator's kind; a ``copy_`` under ``aten::_to_copy`` (``.to(dtype)``, autocast's casts) is a cast."""
    if name == "aten::copy_" and parent == "aten::_to_copy":
        return CASTS
    for cat, keys in CATEGORIES:
        if any(k in name for k in keys):
            return cat
    return "other"


def gemm_rate(m: int, k: int, n: int, repeats: int = 5) -> float:
    """The best of ``repeats`` fp32 [m, k] x [k, n] products, in GFLOP/s, at torch's current thread count: what this
    machine's matrix products reach without a model around them."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b  # warm-up (allocation, library dispatch)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


GEMM_SHAPES = [(2048, 2048, 2048), (1024, 384, 1536), (1024, 384, 8192)]  # square; a GPT-2 6x384 MLP; an LM-head tile


def profile_arm(arm_name: str, workload: str, skip: int, steps: int) -> dict:
    import arms
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule
    from workloads import WORKLOADS, data_file, model_dir

    arm = arms.get_arm(arm_name)
    w = WORKLOADS[workload]
    n_steps = skip + steps
    torch.manual_seed(0)
    mdir = str(model_dir(w.model))
    data = json.loads(data_file(workload, n_steps * w.batch_size).read_text())
    marks = []
    # the step boundaries: dpolab's Trainer._train_step, the bare loop's optimiser step, TRL's optimiser step
    prof = profile(
        activities=[ProfilerActivity.CPU],
        with_flops=True,
        schedule=schedule(wait=skip, warmup=0, active=steps, repeat=1),
    )
    orig_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        r = orig_step(self, *a, **k)
        marks.append(time.perf_counter())
        prof.step()
        return r

    torch.optim.AdamW.step = step
    try:
        with prof:
            arms.run_arm(arm, w, data, mdir, n_steps)
    finally:
        torch.optim.AdamW.step = orig_step
    if len(marks) != n_steps:
        raise RuntimeError(
            f"{arm_name}: {len(marks)} optimiser steps seen, expected {n_steps} (is the optimiser AdamW?)"
        )
    wall = marks[-1] - marks[skip - 1] if skip else float("nan")
    by_cat: dict = {}
    flops = 0.0
    mm_s = 0.0
    for ev in prof.events():  # one by one: a copy's parent tells a cast from another copy
        if ev.self_cpu_time_total <= 0:
            continue
        cat = category(ev.name, ev.cpu_parent.name if ev.cpu_parent is not None else "")
        by_cat[cat] = by_cat.get(cat, 0.0) + ev.self_cpu_time_total / 1e6
        if cat == "matrix products":
            flops += float(getattr(ev, "flops", 0) or 0)
            mm_s += ev.self_cpu_time_total / 1e6
    total = sum(by_cat.values())
    top = sorted(
        (
            (ev.key, ev.self_cpu_time_total / 1e6 / steps, ev.count // steps)
            for ev in prof.key_averages()
            if ev.self_cpu_time_total > 0
        ),
        key=lambda t: -t[1],
    )[:25]
    return dict(
        top_ops=[dict(op=k, s_per_step=v, calls_per_step=c, category=category(k)) for k, v, c in top],
        arm=arm_name,
        workload=workload,
        skip=skip,
        steps=steps,
        wall_s_per_step=wall / steps,
        profiled_cpu_s_per_step=total / steps,
        threads=torch.get_num_threads(),
        categories={
            k: dict(s_per_step=v / steps, share=v / total) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])
        },
        matmul_gflop_per_step=flops / steps / 1e9,
        matmul_gflops_rate=(flops / mm_s / 1e9) if mm_s else float("nan"),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="imdb")
    ap.add_argument("--arms", default="dpolab-live,bare")
    ap.add_argument("--skip", type=int, default=2, help="optimiser steps before recording (set-up is always skipped)")
    ap.add_argument("--steps", type=int, default=3, help="optimiser steps recorded")
    ap.add_argument("--top", type=int, default=0, help="also print the N operators with the most self time")
    ap.add_argument("--out", default=str(HERE / "results" / "profile_step.json"))
    a = ap.parse_args()
    if a.skip < 1:
        ap.error("--skip must be at least 1 (the first step includes the set-up's tail)")
    load = os.getloadavg()[0]
    import torch

    gemm = {f"{m}x{k}x{n}": gemm_rate(m, k, n) for m, k, n in GEMM_SHAPES}
    print(
        f"fp32 matrix products alone ({torch.get_num_threads()} threads), GFLOP/s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in gemm.items()),
        flush=True,
    )
    results = []
    for name in a.arms.split(","):
        print(f"[{a.workload}] profiling {name} ({a.skip} steps skipped, {a.steps} recorded) ...", flush=True)
        r = profile_arm(name, a.workload, a.skip, a.steps)
        results.append(r)
        print(
            f"  wall {r['wall_s_per_step']:.2f} s/step (profiled), matrix products "
            f"{r['matmul_gflop_per_step']:.0f} GFLOP/step at {r['matmul_gflops_rate']:.0f} GFLOP/s "
            f"(FLOP counted by the profiler / the products' self time)"
        )
        for cat, v in r["categories"].items():
            print(f"    {cat:36s} {v['s_per_step']:7.2f} s/step  {100 * v['share']:5.1f} %")
        for t in r["top_ops"][: a.top]:
            print(
                f"      {t['op'][:60]:60s} {t['s_per_step']:7.3f} s/step  "
                f"{t['calls_per_step']:6d} calls/step  ({t['category']})"
            )
    out = dict(
        date=time.strftime("%Y-%m-%d %H:%M"),
        load_before=load,
        load_after=os.getloadavg()[0],
        command="python benchmarks/profile_step.py " + " ".join(sys.argv[1:]),
        gemm_gflops=gemm,
        results=results,
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"written: {a.out}")


if __name__ == "__main__":
    main()
