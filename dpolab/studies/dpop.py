"""Study S3: DPOP against DPO on low and high edit-distance pairs (arXiv 2402.13228).

Pairs whose responses differ by a few tokens (arithmetic near misses; IMDb counterfactual minimal edits) and
pairs that differ a lot (arithmetic far misses; IMDb chosen spans paired with another review's negative span),
each from a policy warmed up with SFT on the same kind of text; DPO and DPOP over a lambda sweep. Measured on
a fixed probe set of held-out pairs: the change of the chosen and rejected log-probs against the reference,
the margin and the reward accuracy, over training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from ..stats import fmt_ci
from .common import CPU_MODEL, PAPER_MODEL, arithmetic_accuracy_hook, arithmetic_data, arithmetic_sft_spec, curves, deep_merge
from .report import markdown_table
from .runner import RunResult, RunSpec

NAME = "dpop"
TITLE = "S3: DPOP vs DPO on low and high edit-distance pairs"
LAMBDAS = (5.0, 50.0, 500.0)

SIZES = {
    "cpu": dict(model=CPU_MODEL, sft_steps=1500, imdb_sft_steps=800, sft_lr=2e-3, n_pairs=512, n_eval=64, pref_epochs=3,
                pref_lr=1e-4, batch=16, eval_every=16, beta=0.1),
    "paper": dict(model=PAPER_MODEL, sft_steps=2000, imdb_sft_steps=2000, sft_lr=1e-5, n_pairs=1700, n_eval=245,
                  pref_epochs=3, pref_lr=5e-7, batch=32, eval_every=25, beta=0.1),
}
SMOKE = dict(model={"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}}, sft_steps=4,
             imdb_sft_steps=2, sft_lr=1e-3, n_pairs=16, n_eval=8, pref_epochs=1, pref_lr=1e-4, batch=8, eval_every=1, beta=0.1)

# dataset name -> (edit-distance bucket, family)
DATASETS = {"arith-near": ("low", "arithmetic"), "arith-far": ("high", "arithmetic"),
            "imdb-low": ("low", "imdb"), "imdb-high": ("high", "imdb")}


def methods() -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {"DPO": [{"name": "dpo"}]}
    out.update({f"DPOP λ={lam:g}": [{"name": "dpop", "params": {"lam": lam}}] for lam in LAMBDAS})
    return out


def _imdb_dir(data_dir: Optional[str]) -> Optional[Path]:
    root = Path(data_dir or "../shared/data") / "imdb-cad-sentiment"
    return root if (root / "paired" / "train_paired.tsv").exists() else None


def specs(size: str, seeds: int, smoke: bool = False, data_dir: Optional[str] = None, out: Optional[Path] = None) -> List[RunSpec]:
    s = SMOKE if smoke else SIZES[size]
    base = {"model": s["model"], "train": {"batch_size": s["batch"], "log_every": 4},
            "eval": {"batch_size": 64, "max_examples": s["n_eval"]}, "output": {"progress": False}}
    data = {"arith-near": arithmetic_data(s["n_pairs"], s["n_eval"], "near"),
            "arith-far": arithmetic_data(s["n_pairs"], s["n_eval"], "far")}
    hooks = {name: [arithmetic_accuracy_hook(d, limit=s["n_eval"])] for name, d in data.items()}
    out = [arithmetic_sft_spec("sft-arithmetic", base, s, smoke, hooks["arith-near"][0])]
    imdb = _imdb_dir(data_dir)
    if imdb is not None:
        task = {"task": "imdb-cad", "max_length": 320, "task_args": {"path": str(imdb.resolve()), "n_eval": s["n_eval"]}}
        out.append(RunSpec("sft-imdb", deep_merge(base, {
            "data": deep_merge(task, {"task_args": {"n_train": None if not smoke else 32}}),
            "train": {"mode": "sft", "max_steps": s["imdb_sft_steps"], "lr": s["sft_lr"], "warmup_steps": 0 if smoke else 50,
                      "schedule": "cosine"},
            "eval": {"every": max(1, s["imdb_sft_steps"] // 4)}, "output": {"save_every": 200}}), {"stage": "sft"}))
        for kind in ("low", "high"):
            data[f"imdb-{kind}"] = deep_merge(task, {"task_args": {"kind": kind, "n_train": s["n_pairs"]}})
            hooks[f"imdb-{kind}"] = []
    steps = max(1, s["pref_epochs"] * s["n_pairs"] // s["batch"])
    for seed in range(seeds):
        for dname, dcfg in data.items():
            for method, loss in methods().items():
                cfg = deep_merge(base, {
                    "data": dcfg, "loss": [deep_merge(c, {"params": {"beta": s["beta"]}}) for c in loss],
                    "eval": {"every": s["eval_every"], "probes": True, "probe_examples": s["n_eval"]},
                    "train": {"mode": "preference", "max_steps": steps, "lr": s["pref_lr"], "schedule": "constant",
                              "warmup_steps": min(10, steps // 4), "seed": seed}})
                start = "sft-arithmetic" if DATASETS[dname][1] == "arithmetic" else "sft-imdb"
                out.append(RunSpec(f"{dname}/{method.replace(' ', '').replace('λ=', 'lam')}/seed{seed}", cfg,
                                   {"data": dname, "method": method, "seed": seed}, init_from=start, hooks=hooks[dname]))
    return out


KEYS = [("probe/delta/chosen", "Δ chosen"), ("probe/delta/rejected", "Δ rejected"), ("probe/margin", "margin"),
        ("probe/reward_accuracy", "reward acc."), ("probe/delta/others", "Δ others"), ("eval/answer_accuracy", "answer acc.")]


def _edit_distances(results: Dict[str, RunResult]) -> Dict[str, str]:
    """Median token edit distance of each dataset's held-out pairs (the probes), with the run's tokenizer."""
    from ..config import build_config
    from ..diagnostics.edit_distance import token_edit_distance
    from ..engine.data_setup import prepare_data
    from ..models.load import load_tokenizer

    out: Dict[str, str] = {}
    for r in results.values():
        d = r.spec.labels.get("data")
        if d is None or d in out:
            continue
        cfg = build_config(r.spec.config)
        tok = load_tokenizer(build_config({"model": {"name_or_path": str(r.dir / "final")}}).model)
        _, evals = prepare_data(cfg.data, tok, "preference", 0, log=lambda s: None)
        dist = sorted(token_edit_distance(p.chosen_ids, p.rejected_ids) for p in evals)
        out[d] = f"{dist[len(dist) // 2]}" if dist else "-"
    return out


def report(results: Dict[str, RunResult], out: Path, size: str) -> List[str]:
    by: Dict[str, Dict[str, List[RunResult]]] = {}
    for r in results.values():
        if "method" in r.spec.labels:
            by.setdefault(r.spec.labels["data"], {}).setdefault(r.spec.labels["method"], []).append(r)
    dist = _edit_distances(results)
    lines = [
        "Paper's claim (DPOP / Smaug, arXiv 2402.13228): on pairs whose responses differ by few tokens, DPO can lower the "
        "likelihood of the preferred response while the margin grows; DPOP, which penalises log π(y_w) falling below the "
        "reference, does not.",
        "",
        f"Setting ({size}): a tiny GPT-2 with a character tokenizer, warmed up with SFT on arithmetic chains and, separately, "
        "on IMDb review text; then DPO and DPOP (λ in " + ", ".join(f"{x:g}" for x in LAMBDAS) + ") on each pair set. Δ = summed "
        "response log-prob on held-out pairs at the end minus at the start of preference training (= the reference); "
        "margin = Δ chosen − Δ rejected; reward accuracy = share of held-out pairs with a positive margin. Mean ± 95 % CI over seeds.",
        "",
    ]
    if not any(d.startswith("imdb") for d in by):
        lines += ["*The IMDb pair sets were skipped: `../shared/data/imdb-cad-sentiment` was not found (pass --data-dir).*", ""]
    findings = []
    for dname, groups in by.items():
        bucket = DATASETS[dname][0]
        rows = [[m] + [fmt_ci([r.final(k) for r in rs]) for k, _ in KEYS] for m, rs in groups.items()]
        lines += [f"### {dname} ({bucket} edit distance; median token edit distance {dist.get(dname, '-')})", "",
                  markdown_table(["method"] + [h for _, h in KEYS], rows), ""]
        png = curves(out / f"dpop_{dname}.png", groups, [("probe/delta/chosen", "Δ log p(chosen)"),
                                                         ("probe/delta/rejected", "Δ log p(rejected)"),
                                                         ("probe/margin", "margin")], title=f"{dname}: over training (mean over seeds)")
        lines += [f"![{dname}]({png.name})", ""]
        if "DPO" in groups:
            mean = lambda rs, k: sum(r.final(k) or 0.0 for r in rs) / len(rs)  # noqa: E731
            dc, dm = mean(groups["DPO"], "probe/delta/chosen"), mean(groups["DPO"], "probe/margin")
            dpop = ", ".join(f"{m.split()[-1]}: {mean(rs, 'probe/delta/chosen'):+.2f}" for m, rs in groups.items() if m != "DPO")
            findings.append(f"- **{dname}** ({bucket}): DPO Δ chosen {dc:+.2f} with margin {dm:+.2f} — "
                            + ("the chosen likelihood fell while the margin grew" if dc < 0 < dm else "no fall of the chosen likelihood with a growing margin")
                            + f"; DPOP Δ chosen by λ: {dpop}.")
    lines += ["### What the measurement says against the claim", "", *findings]
    return lines
