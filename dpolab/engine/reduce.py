"""Metric reduction: micro-batch rows -> one row per optimiser step (or per evaluation), across processes.

A row is a dict of metrics plus ``_weight`` (the pairs or tokens it averages over). Means are weighted by it, so
accumulation and several processes report what one big batch would; ``.../min`` and ``.../max`` metrics (MADPO's
weights) are extremes, not means. Keys starting with ``_`` are private to the objective (e.g. raw rewards).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch

from .logging import to_float


def weighted_means(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    """Weighted mean of every numeric public metric; extremes for ``/min`` and ``/max``."""
    out: Dict[str, float] = {}
    keys = dict.fromkeys(k for r in rows for k in r if not k.startswith("_"))  # every row's, in order of appearance
    for k in keys:
        vals = [(to_float(r[k]), r["_weight"]) for r in rows if k in r]
        if all(isinstance(v, (int, float)) for v, _ in vals):
            out[k] = sum(v * w for v, w in vals) / max(1e-12, sum(w for _, w in vals))
    for k in [k for k in out if k.endswith(("/min", "/max"))]:
        out[k] = (min if k.endswith("/min") else max)(to_float(r[k]) for r in rows if k in r)
    return out


def across_processes(
    out: Dict[str, float], weight: float, tokens: float, accelerator
) -> tuple[Dict[str, float], float]:
    """Combine each process's step metrics as one process would have computed them (weighted by each process's
    pairs or tokens; extremes over processes). Returns (metrics, total tokens).

    The names are every process's (a process may lack some: online training's process whose samples all tied has
    no pair and no pair metric); a metric averages over the processes that have it, and where their weights are all
    0, it is their plain mean."""
    if accelerator.num_processes == 1:
        return out, tokens
    from accelerate.utils import gather_object

    names = sorted(set().union(*gather_object([sorted(out)])))
    extremes = [k for k in names if k.endswith(("/min", "/max"))]
    dev = accelerator.device
    has = [float(n in out) for n in names]
    values = [out.get(n, 0.0) for n in names]
    row = [v * weight for v in values] + [h * weight for h in has] + values + has + [weight, float(tokens)]
    t = accelerator.reduce(torch.tensor(row, dtype=torch.float64).to(dev), reduction="sum").cpu().tolist()
    k = len(names)
    merged = {}
    for j, n in enumerate(names):
        total, weights, plain, count = t[j], t[k + j], t[2 * k + j], t[3 * k + j]
        merged[n] = total / weights if weights > 0 else plain / max(1.0, count)
    if extremes:
        none = [float("inf") if n.endswith("/min") else float("-inf") for n in extremes]
        mine = [[out.get(n, x) for n, x in zip(extremes, none)]]
        ext = accelerator.gather(torch.tensor(mine, dtype=torch.float64).to(dev)).cpu()
        for j, n in enumerate(extremes):
            merged[n] = float(ext[:, j].min() if n.endswith("/min") else ext[:, j].max())
    return merged, float(t[-1])


def eval_metrics(
    rows: List[Dict[str, Any]], set_statistics: Callable[[List[Dict[str, Any]]], Dict[str, float]], accelerator
) -> Dict[str, float]:
    """An evaluation's metrics from this process's rows (each with its ``_batch`` number): every process's rows are
    gathered (moved to the CPU) and sorted by batch number, so the weighted means and the objective's exact
    ``set_statistics`` see the rows one process would have made, in its order; every process returns them."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rows = gather_object([_to_cpu(r) for r in rows])
    rows = sorted(rows, key=lambda r: r["_batch"])
    return {**weighted_means(rows), **set_statistics(rows)}


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x
