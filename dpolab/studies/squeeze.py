"""Study S4: squeezing and Gate-DPO (arXiv 2605.02626, with Ren & Sutherland's probes, arXiv 2407.10490).

From one SFT-warmed policy, train DPO, IPO, Cal-DPO, Gate-DPO (seq and q10 gates), gated IPO, gated Cal-DPO,
and extended SFT (SFT on chosen *and* rejected) followed by DPO, for several epochs; score a fixed probe set
at every evaluation; then sweep the seq gate's alpha and tau. The report gives delta chosen / rejected /
margin / others / argmax mass with 95 % CIs over seeds, the curves over training and the gate sweep.

Design choices (documented in the report): one SFT warm-up shared by all seeds (seeds vary the preference
stage's data order); the arithmetic task's near/far misses as preference pairs (size ``small``: the IMDb
counterfactual minimal edits, real text, on the pretrained SmolLM2-135M-Instruct with LoRA); deltas are against the
start of the preference stage, which is also the reference model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..stats import Verdict, VerdictTable, compare, every, fmt_ci, none_of
from .budget import MEASURED
from .claims import SEED_CLAIMS, Claim, claim_from_verdict, write_claims
from .common import (
    CELLS_TEXT,
    CPU_MODEL,
    HEADERS,
    NATS,
    NATS_TEXT,
    PAPER_MODEL,
    arithmetic_accuracy_hook,
    arithmetic_data,
    arithmetic_sft_spec,
    base_config,
    by_seed,
    curves,
    data_root,
    deep_merge,
    describe_model,
    group_runs,
    method_table,
    pref_steps,
    probed_budget,
    probed_preference,
    with_beta,
)
from .compare_online import as_offline_measures, online_spec
from .pilot import (
    PilotPlan,
    dpo_cell_specs,
    draw_slices,
    lr_epochs_pilot,
    pilot_section,
    pilot_stages,
    read_choice,
    regime,
    slice_paths,
)
from .report import markdown_table
from .runner import RunResult, RunSpec
from .study import Study

METHODS: Dict[str, List[Dict[str, Any]]] = {
    "DPO": [{"name": "dpo"}],
    "IPO": [{"name": "ipo"}],
    "Cal-DPO": [{"name": "cal-dpo"}],
    "Gate-DPO seq": [{"name": "dpo", "gate": {"mode": "seq"}}],
    "Gate-DPO q10": [{"name": "dpo", "gate": {"mode": "q10"}}],
    "gated IPO": [{"name": "ipo", "gate": {"mode": "seq"}}],
    "gated Cal-DPO": [{"name": "cal-dpo", "gate": {"mode": "seq"}}],
    "ext-SFT -> DPO": [{"name": "dpo"}],
    "DPOP": [{"name": "dpop", "params": {"lam": 50.0}}],
}
SWEEP_ALPHA = (10.0, 30.0, 100.0)
SWEEP_TAU = (0.05, 0.1, 0.2)
# the small size's gate sweep: 2 x 2 around the seq gate's default (alpha 30, tau 0.1), at the chosen regime, one seed
SMALL_SWEEP = ((10.0, 0.05), (10.0, 0.2), (100.0, 0.05), (100.0, 0.2))
# the on-policy arm: DPO's twin (dpolab.studies.compare_online.online_spec) sampling its pairs from the current policy,
# judged by the size's ``on_policy`` judge; its sampling settings
ON_POLICY_ARM = "on-policy DPO"
ON_POLICY_SETTINGS = {"samples_per_prompt": 2, "max_new_tokens": 24}

SIZES = {
    # steps are optimiser steps; pref_epochs passes over n_pairs pairs at batch 16
    "cpu": dict(
        model=CPU_MODEL,
        sft_steps=1500,
        sft_lr=2e-3,
        n_pairs=512,
        n_eval=64,
        pref_epochs=4,
        pref_lr=1e-4,
        batch=16,
        eval_every=16,
        ext_sft_epochs=1,
        beta=0.1,
        on_policy="task:arithmetic",
        pilot=dict(
            lrs=(1e-4, 1e-3),
            epochs=(2, 4),
            seeds=(100, 101),
            fallback=(1e-3, 4),
            fallback_why="the grid's strongest push (largest lr, most epochs), where squeezing had the most room.",
        ),
    ),
    "paper": dict(
        model=PAPER_MODEL,
        sft_steps=2000,
        sft_lr=1e-5,
        n_pairs=4096,
        n_eval=256,
        pref_epochs=3,
        pref_lr=5e-7,
        batch=64,
        eval_every=50,
        ext_sft_epochs=1,
        beta=0.1,
    ),
}
SMOKE = dict(
    model={"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
    sft_steps=4,
    sft_lr=1e-3,
    n_pairs=16,
    n_eval=8,
    pref_epochs=1,
    pref_lr=1e-4,
    batch=8,
    eval_every=1,
    ext_sft_epochs=1,
    beta=0.1,
    on_policy="task:arithmetic",
    pilot=dict(
        lrs=(1e-4, 1e-3),
        epochs=(1,),
        seeds=(100, 101),
        fallback=(1e-3, 1),
        fallback_why="the grid's strongest push (largest lr, most epochs), where squeezing had the most room.",
    ),
)
# small: the real SmolLM2-135M-Instruct with LoRA r=16 on real text pairs (the IMDb counterfactual minimal edits,
# imdb-cad kind=low, where DPO's fall of the chosen likelihood is expected); lr and epochs are chosen by the pilot
# (pref_lr / pref_epochs below are its fallback cell); the budget: `dpolab study squeeze --size small --dry-run` and
# docs/studies-pilot.md
SIZES["small"] = dict(
    model={"name_or_path": "smollm2-135m"},
    lora={"enabled": True, "r": 16, "alpha": 32.0},
    pairs="imdb-low",
    methods=("DPO", "Gate-DPO seq", "Gate-DPO q10", "Cal-DPO", "IPO", "DPOP", "ext-SFT -> DPO"),
    sweep="small",
    sft_steps=16,
    sft_lr=2e-4,
    sft_batch=8,
    max_length=96,
    n_pairs=96,
    n_eval=24,
    pref_epochs=2,
    pref_lr=1e-3,
    batch=8,
    eval_every=16,
    ext_sft_epochs=1,
    beta=0.1,
    on_policy="task:sentiment",  # the minimal edits' chosen side is the positive one: VADER judges the samples
    pilot=dict(
        lrs=(1e-4, 3e-4, 1e-3),
        epochs=(1, 2),
        seeds=(100, 101),
        fallback=(1e-3, 2),
        fallback_why="the grid's strongest push (largest lr, most epochs), where squeezing had the most room.",
    ),
)
SMOKE_SMALL = dict(
    SIZES["small"],
    probe_greedy_tokens=4,
    sft_steps=2,
    sft_batch=2,
    max_length=48,
    n_pairs=4,
    n_eval=2,
    batch=2,
    eval_every=1,
    n_train_sft=4,
    pilot=dict(SIZES["small"]["pilot"], lrs=(1e-4, 1e-3), epochs=(1,), fallback=(1e-3, 1)),
)
SMALL_CUTS = (
    "Cut at this size against `--size paper`: gated IPO and gated Cal-DPO, the full 3 x 3 gate sweep (a 2 x 2 "
    "sweep around the default at one seed kept), {n_pairs} IMDb counterfactual training pairs "
    "(minimal human edits) instead of 4,096, lr and epochs chosen by the pilot instead of the paper's, a "
    "{sft_steps}-step SFT warm-up on "
    "the review text, sequences cut to {max_length} tokens, probes on {n_eval} held-out pairs instead of 256."
)


def _imdb_pairs(s: Dict[str, Any], data_dir: Optional[str]) -> tuple[Dict[str, Any], Dict[str, Any]]:
    """(preference data, SFT warm-up data) on the IMDb counterfactual pairs of ``s['pairs']`` (imdb-low / imdb-high)."""
    from ..data.types import DataError

    root = data_root(data_dir) / "imdb-cad-sentiment"
    if not (root / "paired" / "train_paired.tsv").exists():
        raise DataError(
            "study squeeze at this size runs on the IMDb counterfactual pairs; pass --data-dir with the folder "
            "that holds imdb-cad-sentiment/",
            source=str(root),
        )
    task = {
        "task": "imdb-cad",
        "max_length": s["max_length"],
        "task_args": {"path": str(root.resolve()), "n_eval": s["n_eval"]},
    }
    # every seed trains on the same pairs and is probed on the same held-out pairs (task seed 0): seeds vary the
    # order and the adapters' start, and the pilot's slice is drawn disjoint from exactly these
    pref = deep_merge(task, {"task_args": {"kind": s["pairs"].split("-")[1], "n_train": s["n_pairs"], "seed": 0}})
    return pref, deep_merge(task, {"task_args": {"n_train": s.get("n_train_sft")}})


def _stages(s: Dict[str, Any], smoke: bool, data_dir: Optional[str]):
    """(base config, preference data, hooks, the SFT warm-up spec) of a size's settings ``s``."""
    base = base_config(s, s["n_eval"])
    if s.get("pairs"):  # real text pairs: no exact answer to score, so no accuracy hook
        pref_data, sft_data = _imdb_pairs(s, data_dir)
        hooks: list = []
        out = [
            RunSpec(
                "sft",
                deep_merge(
                    base,
                    {
                        "data": sft_data,
                        "train": {
                            "mode": "sft",
                            "max_steps": s["sft_steps"],
                            "batch_size": s.get("sft_batch", s["batch"]),
                            "lr": s["sft_lr"],
                            "schedule": "cosine",
                        },
                        "eval": {"every": max(1, s["sft_steps"] // 2)},
                    },
                ),
                {"stage": "sft"},
            )
        ]
    else:
        pref_data = arithmetic_data(s["n_pairs"], s["n_eval"], "mixed")
        hooks = [arithmetic_accuracy_hook(pref_data, limit=s["n_eval"])]
        out = [arithmetic_sft_spec("sft", base, s, smoke, hooks[0])]
    for spec in out:
        spec.labels["smoke"] = smoke
    return base, pref_data, hooks, out[0]


def _pilot(s: Dict[str, Any], smoke: bool, data_dir: Optional[str], out: Optional[Path]) -> Optional[PilotPlan]:
    """The size's pilot: DPO from the SFT warm-up over lr x epochs, on pairs disjoint from the confirmation's."""
    if "pilot" not in s:
        return None
    base, pref_data, _, sft = _stages(s, smoke, data_dir)
    folder = Path(out or f"runs/study-squeeze-{s.get('pairs', 'arithmetic')}") / "pilot" / "data"
    if s.get("pairs"):
        args = pref_data["task_args"]
        candidates = deep_merge(pref_data, {"task_args": {"n_train": None, "n_eval": 10**6}})
        words = f"{args['n_train']} IMDb counterfactual training pairs and {args['n_eval']} held-out pairs"
    else:
        args = pref_data["task_args"]
        candidates = arithmetic_data(4 * args["n_train"], 4 * args["n_eval"], args["miss"], seed=1)
        words = f"{args['n_train']} arithmetic training pairs and {args['n_eval']} held-out pairs"
    pilot = lr_epochs_pilot(s["pilot"], "DPO from the SFT warm-up", words)
    data = {**slice_paths(folder), "max_length": pref_data["max_length"]}
    return PilotPlan(
        pilot,
        lambda cell: dpo_cell_specs(pilot, cell, s, base, data, [sft]),
        lambda: draw_slices(folder, [pref_data], candidates, args["n_train"], args["n_eval"]),
    )


def _plan(s: Dict[str, Any], seeds: int, smoke: bool, data_dir: Optional[str]) -> List[RunSpec]:
    methods = {m: METHODS[m] for m in s.get("methods", METHODS)}
    base, pref_data, hooks, sft = _stages(s, smoke, data_dir)
    out = [sft]
    if "ext-SFT -> DPO" in methods:
        ext_steps = max(1, s["ext_sft_epochs"] * 2 * s["n_pairs"] // s["batch"])
        out.append(
            RunSpec(
                "ext-sft",
                deep_merge(
                    base,
                    {
                        "data": deep_merge(pref_data, {"sft_from_pairs": "both"}),
                        "train": {
                            "mode": "sft",
                            "max_steps": ext_steps,
                            "lr": s["pref_lr"] * 5,
                            "schedule": "constant",
                        },
                    },
                ),
                {"stage": "ext-sft"},
                init_from="sft",
                hooks=hooks,
            )
        )
    pref = deep_merge(base, {"data": pref_data}, probed_preference(s, pref_steps(s)))
    for seed in range(seeds):
        for method, loss in methods.items():
            start = "ext-sft" if method.startswith("ext-SFT") else "sft"
            cfg = deep_merge(pref, {"loss": with_beta(loss, s["beta"]), "train": {"seed": seed}})
            out.append(
                RunSpec(
                    f"{_slug(method)}/seed{seed}",
                    cfg,
                    {"method": method, "seed": seed, "smoke": smoke},
                    init_from=start,
                    hooks=hooks,
                )
            )
            if method == "DPO" and s.get("on_policy"):  # its on-policy twin: same start, seed, steps and probes
                twin = online_spec(out[-1], s["on_policy"], run_id=f"on-policy-dpo/seed{seed}", label=ON_POLICY_ARM)
                out.append(replace(twin, config=deep_merge(twin.config, {"online": ON_POLICY_SETTINGS})))
    sweep = (
        list(SMALL_SWEEP)
        if s.get("sweep", True) == "small"
        else []
        if not s.get("sweep", True)
        else ([(a, t) for a in SWEEP_ALPHA for t in SWEEP_TAU] if not smoke else [(SWEEP_ALPHA[0], SWEEP_TAU[0])])
    )
    for a, t in sweep:
        gate = {"mode": "seq", "alpha": a, "tau": t}
        cfg = deep_merge(pref, {"loss": with_beta([{"name": "dpo", "gate": gate}], s["beta"])})
        out.append(
            RunSpec(
                f"sweep/alpha{a:g}-tau{t:g}", cfg, {"sweep": True, "alpha": a, "tau": t}, init_from="sft", hooks=hooks
            )
        )
    return out


def _slug(name: str) -> str:
    return name.lower().replace(" -> ", "-then-").replace(" ", "-")


KEYS = (
    "probe/delta/chosen",
    "probe/delta/rejected",
    "probe/margin",
    "probe/reward_accuracy",
    "probe/delta/others",
    "probe/delta/random",
    "probe/delta/argmax_mass",
    "eval/answer_accuracy",
)


SWEEP_KEYS = ("probe/delta/chosen", "probe/delta/rejected", "probe/margin", "probe/delta/others")
GATED = ("Gate-DPO seq", "Gate-DPO q10", "gated IPO", "gated Cal-DPO")
CHOSEN, OTHERS, ARGMAX = "probe/delta/chosen", "probe/delta/others", "probe/delta/argmax_mass"
ACC = "probe/reward_accuracy"


def _setting(results: Dict[str, RunResult], groups: Dict[str, List[RunResult]], size: str) -> str:
    """The setting as run: the model, the data sizes and the preference stage, from the runs' configs."""
    sft = results.get("sft")
    sft_acc = sft.final("eval/answer_accuracy") if sft else None
    any_pref = next((rs[0] for rs in groups.values() if rs), None)
    seeds = sorted({r.spec.labels.get("seed") for rs in groups.values() for r in rs}, key=str)
    text = f"Setting ({size}): "
    imdb = sft is not None and sft.spec.config.get("data", {}).get("task") == "imdb-cad"
    if sft is not None:
        args = sft.spec.config.get("data", {}).get("task_args", {})
        what = (
            f"{'all' if args.get('n_train') is None else args['n_train']} IMDb review chunks"
            if imdb
            else f"{args.get('n_train', '?')} arithmetic chains"
        )
        text += (
            f"{describe_model(sft.spec.config.get('model', {}), sft.spec.config.get('lora'))}; "
            f"one SFT warm-up on {what} "
            f"for {sft.spec.config.get('train', {}).get('max_steps', '?')} steps"
            + ("" if imdb else f" (answer accuracy {'-' if sft_acc is None else f'{sft_acc:.3f}'})")
        )
    if any_pref is not None:
        c = any_pref.spec.config
        args, train = c.get("data", {}).get("task_args", {}), c.get("train", {})
        beta = next((loss.get("params", {}).get("beta") for loss in c.get("loss", []) if "params" in loss), None)
        pairs = (
            (
                "IMDb counterfactual pairs ("
                + ("minimal human edits" if args.get("kind") == "low" else "another review's span")
                + ")"
            )
            if imdb
            else "preference pairs (rejected = a near or far miss, mixed)"
        )
        text += (
            f"; then each method from it on {args.get('n_train', '?')} {pairs}, "
            f"{train.get('max_steps', '?')} steps of batch {train.get('batch_size', '?')} at lr "
            f"{train.get('lr', '?')}, β = {beta}; probes on {c.get('eval', {}).get('probe_examples', '?')} held-out "
            f"pairs"
        )
    return (
        text + f"; {len(seeds)} seed(s) vary the preference stage's data order. Probe deltas are summed response "
        "log-probs (nats) on held-out pairs, final evaluation minus the start of preference training (= the "
        "reference). 'Others' are other prompts' chosen responses; 'argmax mass' sums the most likely token's "
        "log-prob at each position of the chosen response. " + CELLS_TEXT
    )


def verdicts(groups: Dict[str, List[RunResult]]) -> tuple[VerdictTable, List[str]]:
    """The paired comparisons of the claim and the sentences that read them."""
    table, text, _ = _verdicts(groups)
    return table, text


def _verdicts(groups: Dict[str, List[RunResult]]) -> tuple[VerdictTable, List[str], Dict[str, Verdict]]:
    """The verdict table, its sentences and the verdicts the claims file reads (by claim id)."""
    table = VerdictTable(("method", "question"))
    text: List[str] = []
    if "DPO" not in groups:
        return table, ["No DPO runs: nothing to compare the gated methods with."], {}
    dpo_c, dpo_o = by_seed(groups["DPO"], CHOSEN), by_seed(groups["DPO"], OTHERS)
    base = table.add(
        compare(dpo_c, 0.0, metric="Δ chosen", higher_is_better=None, label_a="DPO", label_b="0", **NATS),
        "DPO",
        "does Δ chosen move from 0?",
    )
    text.append(f"- {base.sentence()} (DPO's squeezing, which the gates should prevent.)")
    claims = {"S4.dpo-chosen": base}
    above0, others, keeps = [], [], []
    for m in (*GATED, "ext-SFT -> DPO", "DPOP", ON_POLICY_ARM):
        if m not in groups:
            continue
        c, o = by_seed(groups[m], CHOSEN), by_seed(groups[m], OTHERS)
        v0 = table.add(
            compare(c, 0.0, metric="Δ chosen", higher_is_better=None, label_a=m, label_b="0", **NATS),
            m,
            "does Δ chosen move from 0?",
        )
        vc = table.add(
            compare(c, dpo_c, metric="Δ chosen", higher_is_better=True, label_a=m, label_b="DPO", **NATS),
            m,
            "Δ chosen against DPO",
        )
        vo = table.add(
            compare(o, dpo_o, metric="Δ others", higher_is_better=True, label_a=m, label_b="DPO", **NATS),
            m,
            "Δ others against DPO",
        )
        if m == "Gate-DPO seq":
            claims.update({"S4.gate-chosen": v0, "S4.gate-others": vo})
        if m in GATED:
            above0.append(v0)
            others.append(vo)
            for key, limits, name in (
                (ACC, (-1.0, 1.0), "reward accuracy"),
                ("probe/margin", None, "margin"),
            ):
                bound = {"bound": 0.02} if limits else NATS  # a share of the pairs, as dpolab compare words it
                v = compare(
                    by_seed(groups[m], key),
                    by_seed(groups["DPO"], key),
                    metric=name,
                    higher_is_better=True,
                    label_a=m,
                    label_b="DPO",
                    limits=limits,
                    **bound,
                )
                keeps.append(table.add(v, m, f"{name} against DPO"))
        text.append(f"- {v0.sentence()} {vc.sentence()} {vo.sentence()}")
    squeezing = []
    for m, rs in groups.items():
        for key, name in ((OTHERS, "Δ others"), (ARGMAX, "Δ argmax mass")):
            v = compare(by_seed(rs, key), 0.0, metric=name, higher_is_better=None, label_a=m, label_b="0", **NATS)
            squeezing.append(f"- {table.add(v, m, f'does {name} move from 0?').sentence()}")
            if m == "DPO" and key == OTHERS:
                claims["S4.dpo-others"] = v  # the premise of S4.gate-others: DPO's others fall
    # the claims compare a gate with DPO's squeezing: where DPO did not squeeze, their premise is absent, and a gate
    # that is "higher" or "better" shows nothing against squeezing (said beside each such part, never dropped)
    no_squeeze = premise_absent(base, "DPO did not lower Δ chosen")
    no_fall = premise_absent(claims.get("S4.dpo-others"), "DPO's Δ others did not fall")
    text += [
        "",
        "The claim, tested run by run (each part true only where every paired interval says so):",
        "",
        "- "
        + none_of(above0, "lowered Δ chosen below 0", subject="gated method", expect="lower")
        + " (The paper's 'Δ chosen ≥ 0' is contradicted where an interval lies below 0.)"
        + (f" But {no_squeeze}: keeping Δ chosen ≥ 0 shows nothing against squeezing here." if no_squeeze else ""),
        "- "
        + every(others, "shrank the fall of Δ others compared with DPO", subject="gated method", expect="better")
        + (f" But {no_fall}: there was no fall to shrink, so this part is not tested here." if no_fall else ""),
        "- "
        + none_of(
            keeps,
            "lost preference against DPO",
            subject="gated comparison (reward accuracy or margin)",
            expect="worse",
        )
        + " (A gate keeps the preference where neither its reward accuracy nor its margin is worse than DPO's.)",
        "",
        "Squeezing, method by method (Δ others and Δ argmax mass against 0; the argmax mass falls when the "
        "probability of the most likely token is pushed away from the chosen response's positions):",
        "",
        *squeezing,
    ]
    return table, text, claims


def premise_absent(dpo: Optional[Verdict], what: str) -> str:
    """``what`` with DPO's verdict when DPO did not squeeze (its paired interval not wholly below 0), else ''."""
    if dpo is None or dpo.word == "lower":
        return ""
    return (
        f"{what} ({dpo.word}, {dpo.mean:+.2f}, 95 % CI {dpo.low:+.2f} to {dpo.high:+.2f})"
        if dpo.has_interval
        else (f"{what} ({dpo.word})")
    )


def claims(measured: Dict[str, Verdict], setting: str) -> List[Claim]:
    """S4's seed claims (:data:`dpolab.studies.claims.SEED_CLAIMS`) from the report's verdicts; one not measured is
    written as such. The evidence table reads them from claims.json (:func:`dpolab.studies.claims.read_claims`)."""
    out = []
    premises = {
        "S4.gate-chosen": premise_absent(measured.get("S4.dpo-chosen"), "DPO did not lower Δ chosen"),
        "S4.gate-others": premise_absent(measured.get("S4.dpo-others"), "DPO's Δ others did not fall"),
    }
    for cid in ("S4.dpo-chosen", "S4.gate-chosen", "S4.gate-others"):
        if cid in measured:
            c = claim_from_verdict(cid, measured[cid], setting=setting, figure="squeeze_deltas.png", unit="nats")
            if premises.get(cid):
                c.verdict = f"{c.verdict}; premise absent: {premises[cid]}"
            out.append(c)
        else:
            study, text, paper = SEED_CLAIMS[cid]
            why = "no DPO runs" if not measured else "no Gate-DPO seq runs"
            out.append(Claim(cid, study, text, paper, setting, None, None, None, f"not measured ({why})"))
    return out


def _claim_setting(groups: Dict[str, List[RunResult]]) -> str:
    """One line: model, data, steps, lr of the DPO runs as run."""
    runs = groups.get("DPO") or next(iter(groups.values()), [])
    if not runs:
        return "no runs"
    c = runs[0].spec.config
    args, train = c.get("data", {}).get("task_args", {}), c.get("train", {})
    data = f"{args.get('n_train', '?')} {c.get('data', {}).get('task', 'file')} pairs" + (
        f" (kind {args['kind']})" if "kind" in args else ""
    )
    return (
        f"{c.get('model', {}).get('name_or_path', '?')}{' + LoRA' if (c.get('lora') or {}).get('enabled') else ''}; "
        f"{data}; {train.get('max_steps', '?')} steps of batch {train.get('batch_size', '?')} at lr "
        f"{train.get('lr', '?')}; {len(runs)} seed(s)"
    )


def _on_policy_text(groups: Dict[str, List[RunResult]]) -> str:
    runs = groups.get(ON_POLICY_ARM)
    if not runs:
        return "on-policy arm: missing (not in this grid)"
    judge = (runs[0].spec.config.get("online") or {}).get("judge", "?")
    return (
        f"the on-policy arm ({ON_POLICY_ARM}) is DPO's twin: the same start, seed, steps and lr, its pairs sampled "
        f"from the current policy ({ON_POLICY_SETTINGS['samples_per_prompt']} samples per prompt, best against "
        f"worst) and judged by `{judge}`, probed on the same held-out pairs; at its last evaluation the judge tied "
        f"on a share {fmt_ci([r.final('eval/online/tie_rate') for r in runs])} of the prompts' samples (pairs per "
        f"prompt {fmt_ci([r.final('eval/online/pairs_per_prompt') for r in runs])}; a tie trains nothing)"
    )


def _report(
    results: Dict[str, RunResult], out: Path, size: str, cuts: List[str], pilot: List[str], smoke: bool
) -> List[str]:
    results = {rid: as_offline_measures(r) for rid, r in results.items()}  # the on-policy arm's probes as the others'
    groups = group_runs(results, "method")
    plot1 = curves(
        out / "squeeze_deltas.png",
        groups,
        [
            ("probe/delta/chosen", "Δ log p(chosen)"),
            ("probe/delta/rejected", "Δ log p(rejected)"),
            ("probe/delta/others", "Δ log p(others)"),
        ],
        title="S4: probe log-probs against the start of preference training (mean over seeds)",
    )
    plot2 = curves(
        out / "squeeze_argmax.png",
        groups,
        [
            ("probe/delta/argmax_mass", "Δ argmax-token mass along chosen"),
            ("probe/delta/greedy", "Δ log p(greedy response)"),
            ("eval/answer_accuracy", "answer accuracy"),
        ],
    )
    sweep = [r for r in results.values() if r.spec.labels.get("sweep")]

    def gate_mean(r: RunResult) -> Optional[float]:
        v = r.final("eval/gate/mean")
        return v if v is not None else r.final("eval/dpo/gate/mean")

    sweep_rows = [
        [f"{r.spec.labels['alpha']:g}", f"{r.spec.labels['tau']:g}"]
        + [fmt_ci([r.final(k)]) for k in SWEEP_KEYS]
        + [fmt_ci([gate_mean(r)])]
        for r in sweep
    ]
    table, findings, measured = _verdicts(groups)
    write_claims(out, "squeeze", size, claims(measured, _claim_setting(groups)), smoke=smoke)
    lines = [
        "Paper's claim (Gate-DPO, arXiv 2605.02626; Pythia-410M on Anthropic-HH): gated training keeps "
        "Δ chosen ≥ 0 and "
        "shrinks the fall of unrelated responses compared with DPO — DPO Δ chosen / Δ rejected / Δ others "
        "= -11.90 / -26.35 / "
        "-27.55; Gate-DPO (seq) +1.17 / -7.31 / -1.42.",
        "",
        _setting(results, groups, size),
        "",
        *cuts,
        *pilot,
        f"Arms: {', '.join(groups) or 'none ran'}; " + _on_policy_text(groups) + ".",
        "",
        method_table(groups, KEYS),
        "",
        "### What the measurement says against the claim",
        "",
        NATS_TEXT,
        "",
        *findings,
        "",
        *table.lines(),
        "",
        f"![deltas]({plot1.name})",
        "",
        f"![argmax mass]({plot2.name})",
        "",
        "### Gate sweep (Gate-DPO seq, one seed: no intervals, no verdicts)",
        "",
        "The seq gate's default is alpha 30, tau 0.1. Read against the Gate-DPO seq row above: where no swept gate "
        "keeps Δ chosen ≥ 0 either, a failure is the method's at this regime rather than the default's (one seed: a "
        "reading, not a verdict)."
        if sweep_rows
        else "",
        "",
        markdown_table(["alpha", "tau"] + [HEADERS[k] for k in SWEEP_KEYS] + ["gate mean"], sweep_rows)
        if sweep_rows
        else "No sweep run was in this grid (the size cuts it, or it has not run yet).",
    ]
    return lines


def study_budget(s: Dict[str, Any], seeds: int, measured: Dict[str, float]) -> list:
    """The small size's stages: the pilot (every cell: its worst case), the SFT warm-up, extended SFT, the arms and
    the gate sweep at the grid's longest cell (the confirmation's worst case), and their probe evaluations."""
    from .budget import Stage

    p = s["pilot"]
    longest = {**s, "pref_lr": max(p["lrs"]), "pref_epochs": max(p["epochs"])}
    stages = pilot_stages(s, measured)
    methods = [m for m in s["methods"]] + ([ON_POLICY_ARM] if s.get("on_policy") else [])
    sweep = len(SMALL_SWEEP if s.get("sweep") == "small" else ())
    runs = len(methods) * seeds + sweep
    what = (
        f"{len(methods)} arms x {seeds} seeds + {sweep} gate-sweep runs on {s['pairs']}, at the "
        f"grid's longest cell ({max(p['epochs'])} epochs)"
    )
    rows = probed_budget(longest, measured, runs, what, s["sft_steps"], s["max_length"])
    if s.get("on_policy"):  # the on-policy arm also samples (and judges) every step
        k, tokens = ON_POLICY_SETTINGS["samples_per_prompt"], ON_POLICY_SETTINGS["max_new_tokens"]
        rows.append(
            Stage(
                f"{ON_POLICY_ARM}: sampling {k} x {tokens} tokens per prompt, {s['batch']} prompts per step",
                seeds,
                pref_steps(longest) * s["batch"] * k,
                tokens * MEASURED["gen_token"],
                "samples",
            )
        )
    if "ext-SFT -> DPO" in methods:
        ext = max(1, s["ext_sft_epochs"] * 2 * s["n_pairs"] // s["batch"])
        rows.insert(
            1, Stage(f"extended SFT on chosen and rejected (batch {s['batch']})", 1, ext, measured["sft"] * s["batch"])
        )
    return stages + rows


class SqueezeStudy(Study):
    name = "squeeze"
    title = "S4: squeezing and Gate-DPO"
    summary = "S4: squeezing and Gate-DPO, with likelihood probes (arXiv 2605.02626)"
    sizes, smoke, smoke_small, small_cuts = SIZES, SMOKE, SMOKE_SMALL, SMALL_CUTS

    def pilot(
        self, size: str, smoke: bool = False, data_dir: Optional[str] = None, out: Optional[Path] = None
    ) -> Optional[PilotPlan]:
        return _pilot(self.settings(size, smoke), smoke, data_dir, out)

    def plan(
        self, size: str, seeds: int, smoke: bool = False, data_dir: Optional[str] = None, out: Optional[Path] = None
    ) -> List[RunSpec]:
        s = self.settings(size, smoke)
        chosen = regime(_pilot(s, smoke, data_dir, out), out)  # the recorded choice, else the fallback cell
        return _plan({**s, **chosen}, seeds, smoke, data_dir)

    def report(self, results: Dict[str, RunResult], out: Path, size: str) -> List[str]:
        smoke = any(r.spec.labels.get("smoke") for r in results.values())
        declared = "pilot" in self.settings(size, smoke)
        return _report(results, out, size, self.cuts_lines(size), pilot_section(read_choice(out), declared), smoke)

    def small_budget(self, s: Dict[str, Any], seeds: int) -> list:
        return study_budget(s, seeds, MEASURED["squeeze"])


STUDY = SqueezeStudy()
