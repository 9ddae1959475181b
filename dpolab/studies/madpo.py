"""Study S2: MADPO against DPO, IPO and beta-DPO across data quality (arXiv 2510.05342).

Stages, each an ordinary dpolab step whose output the next one reads (all cached under ``<out>``, so a restarted
study reuses them):

1. ``sft``: SFT on IMDb reviews (prompt = the first words of a review, completion = the rest).
2. tiers (before the first reward model): the SFT model samples two continuations per training prompt, VADER
   scores them, a seeded Bradley-Terry draw labels them, and the High / Medium / Low tiers are built
   (:func:`dpolab.tasks.sentiment.build_preference_tiers`) for training prompts (``orig/train.tsv``) and,
   separately, for held-out pairs (``orig/dev.tsv``). Written to ``<out>/data/{tier}.jsonl`` and
   ``<out>/data/eval/{tier}.jsonl``.
3. ``rm-<tier>``: one Bradley-Terry reward model per tier (``train.mode=rm``), its backbone from the SFT model.
4. scoring (before a tier's first policy): ``dpolab rm score`` adds ``rm_margin`` to the tier's train and
   held-out pairs (``<out>/data/{tier}.scored.jsonl``).
5. ``<tier>/<method>/seed<k>``: DPO, IPO, beta-DPO and MADPO policies from the SFT model on the scored pairs.
   The seed varies the policy's data order and sampling; the tiers and reward models are shared by the seeds
   (one reward model per tier, as in the paper).
6. the addendum (the tiers of ``margin_tiers``): ``<tier>/MADPO-oracle[-noise-A]/seed<k>``, MADPO as in 5 with its
   margin from the oracle, or from the oracle plus noise calibrated to pairwise accuracy A
   (:mod:`dpolab.studies.margin_arms`; files ``<out>/data/{tier}.oracle*.jsonl``, records in ``data/margins.json``);
   the report plots MADPO's gain over DPO against each margin's measured accuracy.

Metric: mean VADER reward of sampled continuations (temperature 1, top-p 1) of held-out prompts
(``orig/test.tsv``), the same prompts and sampling seed for every policy.

Sizes: ``cpu`` (a tiny GPT-2 trained from scratch), ``small`` (the pretrained SmolLM2-135M-Instruct with LoRA r = 16,
High and Low tiers, about 100 minutes on 2 CPU cores: docs/results/SMALL_SIZES.md), ``paper``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..data.types import DataError
from ..stats import Verdict, VerdictTable, compare, every, fmt_ci, mean_ci, proportion_ci
from . import margin_arms as MA
from .budget import MEASURED, Stage
from .claims import claim_from_verdict, write_claims
from .common import (
    CELLS_TEXT,
    RANGES,
    base_config,
    by_seed,
    curves,
    data_root,
    deep_merge,
    describe_model,
    fmt_cell,
    group_runs,
    mean_series,
    verdict_rules,
    with_beta,
)
from .report import markdown_table, plot_lines
from .runner import RunResult, RunSpec, mark_stage, stage_is_current
from .study import Study

METHODS: Dict[str, List[Dict[str, Any]]] = {
    "DPO": [{"name": "dpo"}],
    "IPO": [{"name": "ipo"}],
    "beta-DPO": [{"name": "beta-dpo"}],
    "MADPO": [{"name": "madpo"}],
}
TIERS = ("high", "medium", "low")
# the paper's mean oracle reward (High / Medium / Low), METHODS.md
PAPER = {
    "MADPO": (2.23, 2.23, 1.95),
    "beta-DPO": (1.67, 1.84, 1.76),
    "DPO": (1.62, 1.71, 1.48),
    "IPO": (0.35, 0.31, 0.10),
}

# the addendum's arms: MADPO with the oracle's margin and with it plus noise calibrated to these pairwise accuracies
# (dpolab/studies/margin_arms.py), on the tiers of a size's ``margin_tiers``, beside the learned reward model's margin.
# Accuracy is against the labels, which are Bradley-Terry draws: even the oracle's margin reaches only about 0.8 on the
# High tier (docs/results/madpo*/report.md: oracle agrees 0.75-0.81, ties half), so 0.95 cannot be reached by any
# reward model; these targets span the range between the oracle and chance (the learned ones scored 0.44-0.62)
MARGIN_ACCURACIES = (0.75, 0.65, 0.55)

# cpu size: a tiny GPT-2 with the real GPT-2 tokenizer (whole words, which the VADER lexicon needs; a character
# model's samples are mostly non-words that VADER scores 0), trained from scratch on the reviews
CPU_MODEL = {
    "name_or_path": "tiny-gpt2",
    "tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4},
    "tokenizer": "gpt2-offline",
}
SIZES = {
    "cpu": dict(
        model=CPU_MODEL,
        sft_steps=800,
        sft_lr=2e-3,
        sft_chars=600,
        sft_max_length=192,
        n_prompts=512,
        n_pair_eval=64,
        n_eval=64,
        eval_samples=2,
        max_new_tokens=48,
        review_chars=200,
        rm_epochs=2,
        rm_lr=5e-4,
        pref_epochs=2,
        pref_lr=1e-4,
        batch=16,
        beta=0.1,
        eval_every=16,
        max_length=128,
        margin_tiers=("high",),
        margin_accuracies=MARGIN_ACCURACIES,
    ),
    "paper": dict(
        model={"name_or_path": "gpt2"},
        sft_steps=2000,
        sft_lr=2e-5,
        sft_chars=1000,
        sft_max_length=320,
        n_prompts=1700,
        n_pair_eval=245,
        n_eval=245,
        eval_samples=4,
        max_new_tokens=48,
        review_chars=200,
        rm_epochs=2,
        rm_lr=1e-5,
        pref_epochs=3,
        pref_lr=1e-6,
        batch=32,
        beta=0.1,
        eval_every=25,
        max_length=128,
        margin_tiers=("high",),
        margin_accuracies=MARGIN_ACCURACIES,
    ),
}
# small size: the real pretrained SmolLM2-135M-Instruct (preset smollm2-135m) with LoRA r=16, sized by the budget in
# docs/results/SMALL_SIZES.md (about 100 minutes of training on 2 CPU cores;
# `dpolab study madpo --size small --dry-run`).
# Cut against the paper size: the Medium tier (High and Low kept, the two ends of data quality), pairs per tier,
# policy steps (about one pass over part of the pairs), one oracle evaluation per policy (at its end), shorter
# continuations. The instruct model continues the review prefixes as plain text (no chat template; see SMALL_SIZES.md)
# and gets a short SFT on the reviews so that its samples read as reviews.
SMALL_MODEL = {"name_or_path": "smollm2-135m"}
SMALL_LORA = {"enabled": True, "r": 16, "alpha": 32.0}
SIZES["small"] = dict(
    model=SMALL_MODEL,
    lora=SMALL_LORA,
    tiers=("high", "low"),
    sft_steps=16,
    sft_lr=2e-4,
    sft_chars=300,
    sft_max_length=96,
    sft_batch=8,
    n_prompts=160,
    n_pair_eval=128,
    n_eval=128,
    eval_samples=1,
    max_new_tokens=24,
    review_chars=160,
    rm_epochs=1,
    rm_lr=3e-4,
    pref_epochs=1,
    pref_lr=2e-4,
    pref_steps=7,
    batch=8,
    beta=0.1,
    eval_every=7,
    max_length=64,
    policy_evals=1,
    policy_eval_pairs=8,
    policy_at_start=False,
    margin_tiers=("high",),
    margin_accuracies=MARGIN_ACCURACIES,
)
# what the small size leaves out or shortens against the paper size (the report says it)
SMALL_CUTS = (
    "Cut at this size against `--size paper`: the Medium tier (High and Low kept), {n_prompts} pairs per tier "
    "instead of 1,700, a short SFT ({sft_steps} steps), one reward-model epoch, {pref_steps} policy steps of "
    "{batch} pairs instead of 3 epochs of 32, continuations of at most {max_new_tokens} tokens, the policies' held-out "
    "loss on {policy_eval_pairs} pairs at their end only, and one oracle evaluation per policy (at its end) on "
    "{n_eval} prompts."
)
SMOKE = dict(
    model={"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "tokenizer": "gpt2-offline"},
    sft_steps=4,
    sft_lr=1e-3,
    sft_chars=200,
    sft_max_length=64,
    n_prompts=16,
    n_pair_eval=8,
    n_eval=8,
    eval_samples=1,
    max_new_tokens=12,
    review_chars=60,
    rm_epochs=1,
    rm_lr=1e-3,
    pref_epochs=1,
    pref_lr=1e-4,
    batch=8,
    beta=0.1,
    eval_every=1,
    max_length=64,
    margin_tiers=("high",),
    margin_accuracies=(0.55,),  # below the oracle's own accuracy on 16 pairs, so the noise path runs
)
# the small size's code path (its model, LoRA, tiers, evaluation schedule) at smoke scale: `--size small --smoke`
SMOKE_SMALL = dict(
    SIZES["small"],
    sft_steps=2,
    sft_chars=120,
    sft_max_length=32,
    sft_batch=2,
    n_prompts=4,
    n_pair_eval=4,
    n_eval=2,
    max_new_tokens=6,
    review_chars=60,
    rm_epochs=1,
    pref_steps=2,
    batch=2,
    eval_every=1,
    max_length=32,
)


EVAL_SEED = 1234  # the sampling seed of every oracle evaluation (so policies differ only by their weights)
STAGES_FILE = "stages.json"


def imdb_dir(data_dir: Optional[str]) -> Path:
    root = data_root(data_dir) / "imdb-cad-sentiment"
    if not (root / "orig" / "train.tsv").exists():
        raise DataError(
            "study madpo needs the IMDb reviews (orig/{train,dev,test}.tsv); pass --data-dir with the folder "
            "that holds imdb-cad-sentiment/",
            source=str(root),
        )
    return root.resolve()


def _record_stage(out: Path, name: str, seconds: float, **extra: Any) -> None:
    from ..atomic import write_text

    path = out / "data" / STAGES_FILE
    stages = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    stages[name] = {"seconds": round(seconds, 2), **extra}
    write_text(path, json.dumps(stages, indent=1))


def _tier_files(out: Path, tier: str, scored: bool = False) -> tuple[Path, Path]:
    suffix = ".scored.jsonl" if scored else ".jsonl"
    return out / "data" / f"{tier}{suffix}", out / "data" / "eval" / f"{tier}{suffix}"


def _build_tiers(out: Path, root: Path, s: Dict[str, Any]) -> None:
    """Stage 2 (cached): sample, score and label pairs with the SFT model; write the tiers."""
    from ..config import ModelConfig
    from ..models.load import load_saved_model, load_tokenizer
    from ..tasks import sentiment as S

    sft = out / "runs" / "sft" / "final"
    outputs = [f for t in TIERS for f in _tier_files(out, t)]
    inputs = sorted(sft.glob("*.safetensors"))
    settings = {k: s[k] for k in ("n_prompts", "n_pair_eval", "review_chars", "max_new_tokens")}
    if stage_is_current(outputs, inputs, settings):
        return
    t0 = time.perf_counter()
    tok = load_tokenizer(ModelConfig(name_or_path=str(sft)))
    model = load_saved_model(sft)
    files = S.local_files(root)
    knobs = dict(review_chars=s["review_chars"])
    gen = dict(max_new_tokens=s["max_new_tokens"], batch_size=64)
    train_prompts = S.prompt_rows(str(files["train"]), max_rows=s["n_prompts"], **knobs)
    eval_prompts = S.prompt_rows(str(files["dev"]), max_rows=s["n_pair_eval"], **knobs)
    tiers = S.build_preference_tiers(model, tok, train_prompts, seed=0, out_dir=out / "data", **gen)
    S.build_preference_tiers(model, tok, eval_prompts, seed=1, out_dir=out / "data" / "eval", **gen)
    mark_stage(outputs, inputs, settings)
    high = tiers["high"]
    _record_stage(
        out,
        "tiers",
        time.perf_counter() - t0,
        pairs=len(high),
        eval_pairs=len(eval_prompts),
        sample_reward=sum(r["oracle_chosen"] + r["oracle_rejected"] for r in high) / (2 * len(high)),
    )


def _score_tier(out: Path, tier: str, max_length: int) -> None:
    """Stage 4 (cached): the tier's reward margins on its train and held-out pairs."""
    from ..rewards.score import score_file

    targets = list(zip(_tier_files(out, tier), _tier_files(out, tier, scored=True)))
    outputs = [dst for _, dst in targets]
    rm = out / "runs" / f"rm-{tier}" / "final"
    inputs = sorted(rm.glob("*.safetensors")) + [src for src, _ in targets]
    if stage_is_current(outputs, inputs, {"max_length": max_length}):
        return
    t0 = time.perf_counter()
    summaries = [
        score_file(
            str(out / "runs" / f"rm-{tier}" / "final"),
            str(src),
            str(dst),
            max_length=max_length,
            batch_size=32,
            progress=False,
            log=lambda m: None,
        )
        for src, dst in targets
    ]
    mark_stage(outputs, inputs, {"max_length": max_length})
    _record_stage(
        out,
        f"score-{tier}",
        time.perf_counter() - t0,
        train_accuracy=summaries[0]["pairwise_accuracy"],
        eval_accuracy=summaries[1]["pairwise_accuracy"],
    )


def eval_hook(root: Path, s: Dict[str, Any], every: int = 0):
    """The oracle reward of sampled continuations of the held-out prompts; with ``every``, only at steps that are
    positive multiples of it (sampling is the slow part of an evaluation; a policy's step 0 is the SFT model,
    whose reward the SFT run already measured with the same prompts and seed)."""
    from ..tasks import get_task
    from ..tasks import sentiment as S

    prompts = S.prompt_rows(str(S.local_files(root)["test"]), max_rows=s["n_eval"], review_chars=s["review_chars"])
    hook = get_task("sentiment").metric_hook(
        prompts,
        "oracle_reward",
        oracle="vader",
        limit=s["n_eval"],
        n_samples=s["eval_samples"],
        max_new_tokens=s["max_new_tokens"],
        seed=EVAL_SEED,
        batch_size=64,
    )
    if not every:
        return hook
    return lambda model, tok, step: hook(model, tok, step) if step > 0 and step % every == 0 else {}


def _plan(s: Dict[str, Any], seeds: int, smoke: bool, data_dir: Optional[str], out: Path) -> List[RunSpec]:
    root = imdb_dir(data_dir)
    hook = eval_hook(root, s)
    pref_steps = _pref_steps(s)
    # oracle reward half-way and at the end (small size: at the end only, sampling is its slowest part)
    policy_hook = eval_hook(root, s, every=max(1, pref_steps // s.get("policy_evals", 2)))
    tiers = s.get("tiers", TIERS)
    base = base_config(s, s["n_pair_eval"])
    sft_every = (
        s["sft_steps"] if s.get("lora") else max(1, s["sft_steps"] // 4)
    )  # small: the start (= the base) and the end
    specs_: List[RunSpec] = [
        RunSpec(
            "sft",
            deep_merge(
                base,
                {
                    "data": {
                        "task": "sentiment",
                        "max_length": s["sft_max_length"],
                        "task_args": {"path": str(root), "n_eval": s["n_eval"], "max_chars": s["sft_chars"]},
                    },
                    "train": {
                        "mode": "sft",
                        "max_steps": s["sft_steps"],
                        "lr": s["sft_lr"],
                        "batch_size": s.get("sft_batch", s["batch"]),
                        "warmup_steps": 0 if smoke or s["sft_steps"] < 100 else 50,
                        "schedule": "cosine",
                    },
                    "eval": {"every": sft_every},
                    "output": {"save_every": 200},
                },
            ),
            {"stage": "sft", "oracle_eval": {k: s[k] for k in ("n_eval", "eval_samples", "max_new_tokens")}},
            hooks=[hook],
        )
    ]
    pair_data = {"max_length": s["max_length"], "extras": ["rm_margin"]}
    rm_steps = _rm_steps(s)
    for tier in tiers:
        train_f, eval_f = _tier_files(out, tier)
        specs_.append(
            RunSpec(
                f"rm-{tier}",
                deep_merge(
                    base,
                    {
                        "data": {"train": str(train_f), "eval": str(eval_f), "max_length": s["max_length"]},
                        "train": {
                            "mode": "rm",
                            "max_steps": rm_steps,
                            "lr": s["rm_lr"],
                            "warmup_steps": min(10, rm_steps // 4),
                            "schedule": "cosine",
                        },
                        "eval": {"every": max(1, rm_steps // 4)},
                    },
                ),
                {"stage": "rm", "tier": tier},
                init_from="sft",
                prepare=lambda: _build_tiers(out, root, s),
            )
        )
    for seed in range(seeds):
        for tier in tiers:
            train_f, eval_f = _tier_files(out, tier, scored=True)
            for method, loss in METHODS.items():
                cfg = deep_merge(
                    base,
                    {
                        "data": {**pair_data, "train": str(train_f), "eval": str(eval_f)},
                        "loss": with_beta(loss, s["beta"]),
                        "eval": {
                            "every": s["eval_every"],
                            "max_examples": s.get("policy_eval_pairs", s["n_pair_eval"]),
                            **({"at_start": False} if s.get("policy_at_start") is False else {}),
                        },
                        "train": {
                            "mode": "preference",
                            "max_steps": pref_steps,
                            "lr": s["pref_lr"],
                            "schedule": "constant",
                            "warmup_steps": min(10, pref_steps // 4),
                            "seed": seed,
                        },
                    },
                )
                specs_.append(
                    RunSpec(
                        f"{tier}/{method}/seed{seed}",
                        cfg,
                        {"tier": tier, "method": method, "seed": seed},
                        init_from="sft",
                        hooks=[policy_hook],
                        after=(f"rm-{tier}",),
                        prepare=lambda tier=tier: _score_tier(out, tier, s["max_length"]),
                    )
                )
                if method == "MADPO" and tier in s.get("margin_tiers", ()):
                    specs_ += _margin_specs(cfg, out, root, s, tier, seed, policy_hook)
    return specs_


def _margin_specs(cfg: Dict[str, Any], out: Path, root: Path, s: Dict[str, Any], tier: str, seed: int, hook):
    """The addendum's arms of one tier and seed: MADPO as ``cfg`` trains it, its margin from the oracle (and noise)
    instead of the learned reward model; no "method" label, so the paper's tables leave them out."""
    specs = []
    for source in MA.sources(s.get("margin_accuracies", ())):
        train_f, eval_f = _margin_files(out, tier, source)
        specs.append(
            RunSpec(
                f"{tier}/MADPO-{MA.slug(source)}/seed{seed}",
                deep_merge(cfg, {"data": {"train": str(train_f), "eval": str(eval_f)}}),
                {"tier": tier, "arm": "MADPO", "margin": source, "seed": seed},
                init_from="sft",
                hooks=[hook],
                prepare=lambda: _margin_stage(out, root, s, tier),
            )
        )
    return specs


def _margin_files(out: Path, tier: str, source: str) -> tuple[Path, Path]:
    name = f"{tier}.{MA.slug(source)}.jsonl"
    return out / "data" / name, out / "data" / "eval" / name


def _margin_stage(out: Path, root: Path, s: Dict[str, Any], tier: str) -> None:
    """Stage 4b (cached): the tier's pairs with the margin of each addendum arm; calibration and measured accuracy
    recorded in ``<out>/data/margins.json``."""
    from ..atomic import write_text
    from ..tasks.sentiment import BT_TEMPERATURE

    _build_tiers(out, root, s)
    record_path = out / "data" / MA.MARGINS_FILE
    records = json.loads(record_path.read_text(encoding="utf-8")) if record_path.exists() else {}
    sources_ = MA.sources(s.get("margin_accuracies", ()))
    inputs = list(_tier_files(out, tier))
    for source in sources_:
        outputs = list(_margin_files(out, tier, source))
        key = f"{tier}/{source}"
        if key in records and stage_is_current(outputs, inputs, {"source": source, "T": BT_TEMPERATURE}):
            continue
        records[key] = {"tier": tier, **MA.write_margin_files(*inputs, *outputs, source, BT_TEMPERATURE)}
        mark_stage(outputs, inputs, {"source": source, "T": BT_TEMPERATURE})
        write_text(record_path, json.dumps(records, indent=1))


def _pref_steps(s: Dict[str, Any]) -> int:
    return s.get("pref_steps") or max(1, s["pref_epochs"] * s["n_prompts"] // s["batch"])


def _rm_steps(s: Dict[str, Any]) -> int:
    return max(1, s["rm_epochs"] * s["n_prompts"] // s["batch"])


def _small_budget(s: Dict[str, Any], seeds: int) -> List[Stage]:
    """The small size's stages at the measured seconds per unit (:mod:`dpolab.studies.budget`)."""
    m = dict(MEASURED["madpo"])
    m["sample"] = MEASURED["gen_token"] * s["max_new_tokens"]  # one sampled continuation
    tiers, pref = s.get("tiers", TIERS), _pref_steps(s)
    samples = 2 * (s["n_prompts"] + s["n_pair_eval"])
    arms = len(MA.sources(s.get("margin_accuracies", ()))) * len(s.get("margin_tiers", ())) * seeds
    return [
        Stage(
            f"SFT on reviews (batch {s['sft_batch']}, <= {s['sft_max_length']} tokens)",
            1,
            s["sft_steps"],
            m["sft"] * s["sft_batch"],
        ),
        Stage(
            f"oracle evaluations of the SFT run (start + end: {s['n_eval']} prompts x {s['eval_samples']})",
            1,
            2 * s["n_eval"] * s["eval_samples"],
            m["sample"],
            "samples",
        ),
        Stage(
            f"sample two continuations per train and held-out prompt ({s['max_new_tokens']} tokens)",
            1,
            samples,
            m["sample"],
            "samples",
        ),
        Stage(
            f"reward models ({', '.join(tiers)}; batch {s['batch']} pairs)",
            len(tiers),
            _rm_steps(s),
            m["rm"] * s["batch"],
        ),
        Stage(
            "rm score (train + held-out pairs, forward only)",
            len(tiers),
            s["n_prompts"] + s["n_pair_eval"],
            m["score"],
            "pairs",
        ),
        Stage(
            f"policies: 4 methods x {len(tiers)} tiers x {seeds} seeds (batch {s['batch']} pairs)",
            4 * len(tiers) * seeds,
            pref,
            m["pref"] * s["batch"],
        ),
        Stage(
            f"held-out loss of each policy ({s['policy_eval_pairs']} pairs, at the end; policy + reference forward)",
            4 * len(tiers) * seeds,
            s["policy_eval_pairs"],
            m["pref"] / 2,
            "pairs",
        ),
        Stage(
            f"oracle evaluation of each policy ({s['n_eval']} prompts x {s['eval_samples']}, end only)",
            4 * len(tiers) * seeds,
            s["n_eval"] * s["eval_samples"] * s.get("policy_evals", 2),
            m["sample"],
            "samples",
        ),
    ] + _arm_stages(s, arms, pref, m)


def _arm_stages(s: Dict[str, Any], arms: int, pref: int, m: Dict[str, float]) -> List[Stage]:
    """The addendum's MADPO arms (oracle margins): their training, held-out loss and oracle evaluation."""
    if not arms:
        return []
    label = f"addendum: MADPO with oracle (+ noise) margins, {arms} runs"
    return [
        Stage(f"{label} (batch {s['batch']} pairs)", arms, pref, m["pref"] * s["batch"]),
        Stage(f"{label}: held-out loss", arms, s.get("policy_eval_pairs", s["n_pair_eval"]), m["pref"] / 2, "pairs"),
        Stage(
            f"{label}: oracle evaluation",
            arms,
            s["n_eval"] * s["eval_samples"] * s.get("policy_evals", 2),
            m["sample"],
            "samples",
        ),
    ]


# ----------------------------------------------------------------------------------------------- report


def _read_jsonl(path: Path) -> List[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _tier_table(out: Path) -> List[List[Any]]:
    rows = []
    for tier in TIERS:
        data = _read_jsonl(_tier_files(out, tier)[0])
        if not data:
            continue
        n = len(data)
        human = sum(r["chosen_source"] == "human" for r in data) / n
        agree = sum(r["oracle_chosen"] > r["oracle_rejected"] for r in data) / n
        ties = sum(r["oracle_chosen"] == r["oracle_rejected"] for r in data) / n
        rows.append(
            [
                tier,
                n,
                f"{sum(r['replaced'] for r in data) / n:.2f}",
                f"{human:.2f}",
                f"{sum(r['oracle_chosen'] for r in data) / n:+.3f}",
                f"{sum(r['oracle_rejected'] for r in data) / n:+.3f}",
                f"{agree:.2f}",
                f"{ties:.2f}",
            ]
        )
    return rows


def _rm_table(out: Path, results: Dict[str, RunResult]) -> List[List[Any]]:
    rows = []
    for tier in TIERS:
        r = results.get(f"rm-{tier}")
        if r is None:
            continue
        scored = _read_jsonl(_tier_files(out, tier, scored=True)[1])
        usable = [x for x in scored if x.get("rm_margin") is not None and x["oracle_chosen"] != x["oracle_rejected"]]
        oracle_agree = (
            sum((x["rm_margin"] > 0) == (x["oracle_chosen"] > x["oracle_rejected"]) for x in usable) / len(usable)
            if usable
            else None
        )
        train_acc = [m["reward_accuracy"] for m in r.metrics if "reward_accuracy" in m and "step" in m]
        rows.append(
            [
                tier,
                r.final("eval/reward_accuracy"),
                oracle_agree,
                sum(train_acc[-5:]) / len(train_acc[-5:]) if train_acc else None,
                r.final("eval/margin"),
                r.final("eval/margin/std"),
            ]
        )
    return rows


def _weights_plot(out: Path) -> tuple[Optional[Path], List[List[Any]]]:
    """Histogram of the MADPO weight w(m) of every training pair, per tier, and a summary table."""
    import torch

    from ..losses.madpo import madpo_weight

    panels, rows = [], []
    for tier in TIERS:
        margins = [
            x["rm_margin"]
            for x in _read_jsonl(_tier_files(out, tier, scored=True)[0])
            if x.get("rm_margin") is not None
        ]
        if not margins:
            continue
        w = madpo_weight(torch.tensor(margins, dtype=torch.float64)).tolist()
        m = torch.tensor(margins)
        rows.append(
            [
                tier,
                len(w),
                f"{m.mean():+.2f} ± {m.std():.2f}",
                f"{sum(w) / len(w):.3f}",
                f"{min(w):.3f}",
                f"{max(w):.3f}",
                f"{sum(x > 1 for x in w) / len(w):.2f}",
            ]
        )
        panels.append((tier, w))
    if not panels:
        return None, rows
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (tier, w) in zip(axes[0], panels):
        ax.hist(w, bins=30, color="tab:purple", alpha=0.8)
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.set_title(f"{tier}: MADPO weights w(m)")
        ax.set_xlabel("weight")
        ax.set_ylabel("pairs")
    fig.tight_layout()
    path = out / "madpo_weights.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, rows


def _stage_table(out: Path, results: Dict[str, RunResult]) -> List[List[Any]]:
    path = out / "data" / STAGES_FILE
    stages = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    wall = lambda rs: [r.summary.get("wall_clock_s", 0.0) for r in rs]  # noqa: E731
    rows = [["SFT", 1, f"{sum(wall([results['sft']])):.0f}"]] if "sft" in results else []
    if "tiers" in stages:
        rows.append(["sample + score + label pairs (tiers)", 1, f"{stages['tiers']['seconds']:.0f}"])
    rms = [r for r in results.values() if r.spec.labels.get("stage") == "rm"]
    rows.append(["reward models", len(rms), f"{sum(wall(rms)):.0f}"])
    scores = [v["seconds"] for k, v in stages.items() if k.startswith("score-")]
    rows.append(["rm score (train + held-out pairs)", len(scores), f"{sum(scores):.0f}"])
    for method in METHODS:
        rs = [r for r in results.values() if r.spec.labels.get("method") == method]
        if rs:
            rows.append(
                [f"policies: {method}", len(rs), f"{sum(wall(rs)):.0f} ({sum(wall(rs)) / len(rs):.0f} per run)"]
            )
    return rows


def _setting(results: Dict[str, RunResult], by: Dict[str, Dict[str, List[RunResult]]], size: str) -> str:
    """The setting as run (model, SFT data, pairs, policies, oracle evaluation), from the runs' configs and
    summaries."""
    sft = results.get("sft")
    text = f"Setting ({size}): "
    if sft is not None:
        c = sft.spec.config
        n = sft.summary.get("train_examples")
        text += (
            f"{describe_model(c.get('model', {}), c.get('lora'))}, "
            f"SFT on {f'{n:,}' if isinstance(n, int) else '?'} IMDb CAD training "
            f"reviews for {c.get('train', {}).get('max_steps', '?')} steps; "
        )
    pref = next((rs[0] for ms in by.values() for rs in ms.values() if rs), None)
    text += (
        "then the pipeline of the module docstring: tiers from two SFT samples per prompt labelled by a "
        "Bradley-Terry draw (T = 0.25) on VADER scores; one reward model per tier; DPO, IPO, beta-DPO and MADPO "
    )
    if pref is not None:
        train = pref.spec.config.get("train", {})
        beta = next((loss.get("params", {}).get("beta") for loss in pref.spec.config.get("loss", [])), None)
        text += (
            f"(β = {beta}, MADPO's paper weights; {pref.summary.get('train_examples', '?')} training pairs per tier, "
            f"{train.get('max_steps', '?')} steps of batch {train.get('batch_size', '?')} "
            f"at lr {train.get('lr', '?')}) "
        )
    text += "from the SFT model. Oracle reward = mean VADER compound score (in [-1, 1]) of sampled continuations of "
    o = (sft.spec.labels.get("oracle_eval") if sft is not None else None) or {}
    text += (
        f"{o['n_eval']} held-out prompts ({o['eval_samples']} sample(s) each, up to {o['max_new_tokens']} new tokens; "
        if o
        else "held-out prompts ("
    )
    return text + ("IMDb CAD test reviews), the same prompts and sampling seed for every model. " + CELLS_TEXT)


def _report(results: Dict[str, RunResult], out: Path, size: str, cuts: List[str]) -> List[str]:
    by = group_runs(results, "tier", "method")
    sft = results.get("sft")
    sft_reward = sft.final("eval/oracle_reward") if sft else None
    key = "eval/oracle_reward"
    lines = [
        "Paper's claim (MADPO, arXiv 2510.05342): MADPO > beta-DPO > DPO >> IPO on every tier "
        "(mean oracle reward on High 2.23 vs 1.67 vs 1.62 vs 0.35).",
        "",
        _setting(results, by, size),
        "",
        *cuts,
        (
            f"The SFT model scores **{sft_reward:+.3f}** (one model, one evaluation)."
            if sft_reward is not None
            else "The SFT model's oracle reward was not measured."
        )
        + _base_line(sft),
        "",
        "### Mean oracle reward (VADER) by method and tier",
        "",
    ]
    headers = ["method"] + [f"{t}" for t in TIERS if t in by] + ["paper (H / M / L)"]
    rows = []
    for method in METHODS:
        row = [method] + [
            fmt_cell([r.final(key) for r in by[t].get(method, [])], 3, RANGES.get(key)) for t in TIERS if t in by
        ]
        rows.append(row + [" / ".join(f"{x:.2f}" for x in PAPER[method])])
    lines += [markdown_table(headers, rows), ""]
    # the order of the means, which is not a test (the paired comparisons below are)
    order_lines = []
    for t in TIERS:
        if t not in by:
            continue
        means = {m: mean_ci([r.final(key) for r in rs])[0] for m, rs in by[t].items()}
        ranked = sorted((m for m in means if not math.isnan(means[m])), key=lambda m: -means[m])
        order_lines.append(f"- **{t}**: " + ", ".join(f"{m} {means[m]:+.3f}" for m in ranked))
    lines += [
        "Methods by mean oracle reward, highest first (an order of means, not a test: the paired comparisons "
        "under 'Reading against the paper' decide):",
        "",
        *order_lines,
        "",
    ]
    if by:

        def series(rs):  # step 0 of every policy is the SFT model
            xs, ys = mean_series(rs, key)
            return ([0] + xs, [sft_reward] + ys) if sft_reward is not None and (not xs or xs[0] != 0) else (xs, ys)

        png = plot_lines(
            out / "madpo_oracle_reward.png",
            [(f"{t}: oracle reward", "VADER", {m: series(rs) for m, rs in by[t].items()}) for t in TIERS if t in by],
            title="Oracle reward over training (mean over seeds; step 0 = the SFT model)",
        )
        lines += [f"![oracle reward over training]({png.name})", ""]
    headline: Dict[str, Verdict] = {}
    lines += ["### Reading against the paper", "", *_reading(by, results, key, sft_reward, headline), ""]
    margin_lines, arm_verdicts = _margin_section(by, results, out, key)
    lines += margin_lines
    _write_claims(results, out, size, headline, arm_verdicts)
    lines += [
        "### Preference data by tier",
        "",
        "share replaced = pairs (best SFT sample, human review); human chosen = share whose chosen response is the "
        "human review; oracle agrees = share whose label matches the sign of the VADER difference (the rest are the "
        "Bradley-Terry draw's noise, or ties).",
        "",
        markdown_table(
            [
                "tier",
                "pairs",
                "share replaced",
                "human chosen",
                "oracle(chosen)",
                "oracle(rejected)",
                "oracle agrees",
                "ties",
            ],
            _tier_table(out),
        ),
        "",
    ]
    lines += [
        "### Reward models (one per tier)",
        "",
        "eval acc. = pairwise accuracy on the held-out pairs' labels; oracle agreement = share of held-out pairs "
        "(VADER ties left out) where the sign of the reward margin matches the sign of the VADER difference.",
        "",
        markdown_table(
            ["tier", "eval acc.", "oracle agreement", "train acc. (last logs)", "eval margin", "margin std"],
            _rm_table(out, results),
        ),
        "",
    ]
    png, wrows = _weights_plot(out)
    lines += [
        "### MADPO weights",
        "",
        "w(m) of every training pair from its reward margin m (c_max 2, c_min 0.5, λ 1, τ 6.907): w > 1 up-weights "
        "pairs the reward model finds clearly ordered, w < 1 down-weights pairs it finds reversed.",
        "",
        markdown_table(["tier", "pairs", "margin mean ± sd", "mean w", "min w", "max w", "share w > 1"], wrows),
        "",
    ]
    if png is not None:
        lines += [f"![MADPO weights]({png.name})", ""]
    beta_groups = {t: ms["beta-DPO"] for t, ms in by.items() if "beta-DPO" in ms}
    if beta_groups:
        png = curves(
            out / "beta_dpo_trajectory.png",
            beta_groups,
            [
                ("beta-dpo/beta", "β per batch"),
                ("beta-dpo/M0", "running mean M0 of the margin"),
                ("beta-dpo/std", "running std of the margin"),
            ],
            title="beta-DPO (mean over seeds)",
        )
        kept = {
            t: fmt_ci(
                [
                    sum(rr["beta-dpo/kept"] for rr in r.metrics if "beta-dpo/kept" in rr)
                    / max(1, sum(1 for rr in r.metrics if "beta-dpo/kept" in rr))
                    for r in rs
                ],
                1,
            )
            for t, rs in beta_groups.items()
        }
        r0 = next(iter(beta_groups.values()))[0]
        finals = {
            t: fmt_ci([r.series("beta-dpo/beta")[1][-1] for r in rs if r.series("beta-dpo/beta")[1]], 3)
            for t, rs in beta_groups.items()
        }
        lines += [
            "### beta-DPO",
            "",
            f"![beta-DPO trajectory]({png.name})",
            "",
            "Final β by tier: "
            + ", ".join(f"{t} {v}" for t, v in finals.items())
            + f" (β0 = 0.1); mean pairs kept per batch of {r0.spec.config['train']['batch_size']}: "
            + ", ".join(f"{t} {v}" for t, v in kept.items())
            + ".",
            "",
        ]
    lines += [
        "### Wall-clock of every stage",
        "",
        markdown_table(["stage", "runs", "seconds"], _stage_table(out, results)),
        "",
    ]
    return lines


def _base_line(sft: Optional[RunResult]) -> str:
    """The pretrained model's oracle reward before SFT (the SFT run's evaluation at step 0), when it was measured."""
    v = (sft.summary.get("first_eval") or {}).get("eval/oracle_reward") if sft is not None else None
    return (
        f" Before SFT, the starting model scored {v:+.3f} on the same prompts and sampling seed (what the SFT stage "
        "changed)."
        if isinstance(v, (int, float))
        else ""
    )


# the paper's order, link by link (a > b), plus its headline comparison
PAPER_LINKS = (("MADPO", "beta-DPO"), ("beta-DPO", "DPO"), ("DPO", "IPO"), ("MADPO", "DPO"))


ORACLE_BOUND = 0.02  # the smallest oracle-reward (VADER compound, in [-1, 1]) difference a verdict words as one


def _reading(
    by: Dict[str, Dict[str, List[RunResult]]],
    results: Dict[str, RunResult],
    key: str,
    sft_reward: Optional[float],
    headline: Optional[Dict[str, Verdict]] = None,
) -> List[str]:
    """What the measurement says about the paper's claim: every sentence from a paired verdict (dpolab.stats);
    ``headline`` receives each tier's MADPO - DPO verdict."""
    out: List[str] = [
        verdict_rules(
            f"the smallest meaningful difference of the oracle reward, ±{ORACLE_BOUND:g} "
            "(1 % of the VADER compound score's range [-1, 1])"
        ),
        "",
    ]
    table = VerdictTable(("tier", "comparison"))
    for t in TIERS:
        if t not in by:
            continue
        finals = {m: by_seed(rs, key) for m, rs in by[t].items()}
        links = []
        for a, b in PAPER_LINKS:
            if a in finals and b in finals:
                v = table.add(
                    compare(
                        finals[a],
                        finals[b],
                        metric="oracle reward",
                        higher_is_better=True,
                        label_a=f"{a} ({t})",
                        label_b=b,
                        digits=3,
                        bound=ORACLE_BOUND,
                        limits=(-2.0, 2.0),
                    ),
                    t,
                    f"{a} - {b}",
                )
                if (a, b) != ("MADPO", "DPO"):
                    links.append(v)
                elif headline is not None:
                    headline[t] = v
                out.append(f"- {v.sentence()}")
        if links:
            out.append(
                f"- **{t}**: "
                + every(
                    links,
                    "in the paper's order held (MADPO > beta-DPO > DPO > IPO)",
                    subject="link",
                    name=lambda v: f"{v.label_a} > {v.label_b}",
                )
            )
    gains = []
    if sft_reward is not None:
        for t in TIERS:
            for m, rs in by.get(t, {}).items():
                gains.append(
                    table.add(
                        compare(
                            by_seed(rs, key),
                            sft_reward,
                            metric="oracle reward",
                            higher_is_better=True,
                            label_a=f"{m} ({t})",
                            label_b="the SFT model",
                            digits=3,
                            bound=ORACLE_BOUND,
                            limits=(-2.0, 2.0),
                        ),
                        t,
                        f"{m} - SFT model",
                    )
                )
        out.append(
            "- "
            + every(gains, "raised the oracle reward over the SFT model", subject="method on a tier")
            + " (Against the SFT model's single evaluation, whose own sampling noise the interval leaves out.)"
        )
    rm = []
    for t in TIERS:
        r = results.get(f"rm-{t}")
        acc = r.final("eval/reward_accuracy") if r is not None else None
        n = int(r.summary.get("eval_examples") or 0) if r is not None else 0
        if acc is not None and n:
            p, lo, hi = proportion_ci(round(acc * n), n)
            rm.append((t, acc, lo, hi, n))
    if rm:
        chance = [t for t, _, lo, hi, _ in rm if lo <= 0.5 <= hi]
        above = [t for t, _, lo, _, _ in rm if lo > 0.5]
        below = [t for t, _, _, hi, _ in rm if hi < 0.5]
        if len(chance) == len(rm):
            reading = (
                "None is distinguishable from chance (0.5), so MADPO's weights carry little information about which "
                "pairs are clearly ordered, and MADPO cannot be expected to beat DPO here; its advantage in the paper "
                "rests on a reward model that ranks held-out pairs well."
            )
        else:
            reading = " ".join(
                x
                for x in (
                    f"Above chance (0.5): {', '.join(above)}." if above else "",
                    f"Indistinguishable from chance (0.5): {', '.join(chance)}." if chance else "",
                    f"Below chance (0.5): {', '.join(below)}." if below else "",
                )
                if x
            )
        out.append(
            "- Reward models, pairwise accuracy on their held-out pairs (95 % Wilson interval): "
            + "; ".join(f"{t} {a:.2f} ({lo:.2f} to {hi:.2f}, {n} pairs)" for t, a, lo, hi, n in rm)
            + ". "
            + reading
        )
    out.append(
        "- Scale: VADER compound scores lie in [-1, 1], the paper's classifier rewards around 0-2.5, so only the "
        "order of methods and the direction of changes are comparable, not the values."
    )
    out += ["", *table.lines()]
    return out


def _arms(results: Dict[str, RunResult]) -> Dict[str, Dict[str, List[RunResult]]]:
    """tier -> margin source -> the addendum's MADPO runs (one per seed)."""
    out: Dict[str, Dict[str, List[RunResult]]] = {}
    for r in results.values():
        if r.spec.labels.get("arm") == "MADPO":
            out.setdefault(r.spec.labels["tier"], {}).setdefault(r.spec.labels["margin"], []).append(r)
    return out


def _wilson(acc: Optional[float], n: int) -> tuple:
    if acc is None or not n:
        return None, None
    _, lo, hi = proportion_ci(round(acc * n), n)
    return lo, hi


def _margin_section(by, results, out: Path, key: str) -> tuple[List[str], Dict[str, Verdict]]:
    """The addendum: MADPO's gain over DPO (paired by seed) against the margin's measured pairwise accuracy on the
    held-out pairs, for the learned reward model and the oracle arms. Returns the lines and the verdicts by
    (tier/source)."""
    arms = _arms(results)
    if not arms:
        return [], {}
    path = out / "data" / MA.MARGINS_FILE
    records = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    table = VerdictTable(
        ("tier", "margin source", "target acc.", "noise σ", "held-out acc. (95 % CI, pairs)", "oracle agreement")
    )
    points, verdicts = [], {}
    for tier, sources_ in arms.items():
        dpo = by_seed(by.get(tier, {}).get("DPO", []), key)
        held = [x for x in _read_jsonl(_tier_files(out, tier, scored=True)[1]) if x.get("rm_margin") is not None]
        rm_acc = MA.accuracy(x["rm_margin"] for x in held) if held else None
        agree = {"learned reward model": MA.oracle_agreement(held) if held else None}
        rows = [("learned reward model", by.get(tier, {}).get("MADPO", []), rm_acc, len(held), None)]
        for source in sorted(sources_, key=lambda x: -(MA.target_of(x) or 1.0)):
            rec = records.get(f"{tier}/{source}", {})
            rows.append((source, sources_[source], rec.get("heldout_accuracy"), rec.get("heldout_pairs", 0), rec))
            agree[source] = rec.get("heldout_oracle_agreement")
        for source, runs, acc, n, rec in rows:
            v = compare(
                by_seed(runs, key),
                dpo,
                metric="oracle reward",
                higher_is_better=True,
                label_a=f"MADPO with {source} margins ({tier})",
                label_b="DPO",
                digits=3,
                bound=ORACLE_BOUND,
                limits=(-2.0, 2.0),
            )
            lo, hi = _wilson(acc, n)
            target = "-" if not rec or rec.get("target") is None else f"{rec['target']:.2f}"
            if rec and rec.get("target") is not None and not rec.get("reachable", True):
                target += " (unreachable: the oracle's own is lower; no noise)"
            sigma = f"{rec['sigma']:.3f}" if rec and rec.get("sigma") is not None else "-"
            acc_text = f"{acc:.3f} ({lo:.3f} to {hi:.3f}, {n})" if acc is not None and n else "not measured"
            a = agree.get(source)
            table.add(v, tier, source, target, sigma, acc_text, "-" if a is None else f"{a:.3f}")
            verdicts[f"{tier}/{source}"] = v
            points.append((tier, source, acc, lo, hi, v))
    lines = [
        "### MADPO's gain over DPO against reward-model accuracy (addendum)",
        "",
        "MADPO's weights are only as good as its margins. Besides the learned reward model, MADPO ran with the "
        "oracle's score difference on the labels' Bradley-Terry scale, (VADER(chosen) − VADER(rejected)) / T with "
        "T = 0.25 (a perfect reward model: the labels' own log-odds), and with that margin plus Gaussian noise "
        "whose scale was calibrated by bisection on the training pairs to a target pairwise accuracy against the "
        "labels (dpolab/studies/margin_arms.py). The accuracy shown is the one **measured** on the held-out pairs "
        "(with their own noise draw; Wilson 95 % interval), never the target; the oracle's own accuracy is below 1 "
        "because the labels are Bradley-Terry draws. Oracle agreement: the share of held-out pairs (VADER ties left "
        "out) where the margin's sign matches the sign of the VADER difference (1 for the oracle's own margin). The "
        "gain is MADPO − DPO in oracle reward, paired by seed.",
        "",
        *table.lines(),
        "",
    ]
    png = _gain_plot(out / "madpo_gain_vs_accuracy.png", points)
    if png is not None:
        lines += [f"![MADPO's gain over DPO against margin accuracy]({png.name})", ""]
    helped = sorted(
        ((acc, f"{src} ({t})") for t, src, acc, _, _, v in points if acc is not None and v.word == "better"),
    )
    tested = [p for p in points if p[2] is not None and p[5].has_interval]
    if not tested:
        lines.append("No margin source has two paired seeds yet: no reading.")
    elif helped:
        lines.append(
            f"The lowest measured margin accuracy at which MADPO beat DPO by more than ±{ORACLE_BOUND:g} (paired "
            f"interval wholly beyond it): {helped[0][0]:.3f} ({helped[0][1]}); every source where it did: "
            + ", ".join(f"{name} at {a:.3f}" for a, name in helped)
            + "."
        )
    else:
        lines.append(
            "At no measured margin accuracy (up to "
            f"{max(p[2] for p in tested):.3f}) did MADPO beat DPO by more than ±{ORACLE_BOUND:g} with a paired "
            "interval wholly beyond it: the weighting did not start to help in this range."
        )
    return lines + [""], verdicts


def _gain_plot(path: Path, points) -> Optional[Path]:
    pts = [p for p in points if p[2] is not None and p[5].n > 0]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for tier, source, acc, lo, hi, v in pts:
        learned = source == "learned reward model"
        yerr = [[v.mean - v.low], [v.high - v.mean]] if v.has_interval else None
        xerr = [[acc - lo], [hi - acc]] if lo is not None else None
        ax.errorbar(
            [acc],
            [v.mean],
            xerr=xerr,
            yerr=yerr,
            fmt="s" if learned else "o",
            color="tab:red" if learned else "tab:blue",
            capsize=3,
            label="learned reward model" if learned else None,
        )
        ax.annotate(
            source.replace("oracle+noise@", "noise@"),
            (acc, v.mean),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.axhline(0.0, color="grey", linewidth=0.8)
    for b in (ORACLE_BOUND, -ORACLE_BOUND):
        ax.axhline(b, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("margin's pairwise accuracy on held-out pairs (measured)")
    ax.set_ylabel("MADPO − DPO, oracle reward")
    ax.set_title("MADPO's gain over DPO (paired 95 % CI) against margin accuracy", fontsize=9)
    if any(p[1] == "learned reward model" for p in pts):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _setting_line(results: Dict[str, RunResult], size: str) -> str:
    """One line for the evidence table: model, pairs, policy steps and lr, as run."""
    pref = next((r for r in results.values() if r.spec.labels.get("method") == "DPO"), None)
    sft = results.get("sft")
    model = (
        describe_model((sft or pref).spec.config.get("model", {}), (sft or pref).spec.config.get("lora"))
        if (sft or pref)
        else "?"
    )
    if pref is None:
        return f"{size}: {model}"
    t = pref.spec.config.get("train", {})
    return (
        f"{size}: {model}; IMDb CAD prefixes, {pref.summary.get('train_examples', '?')} pairs per tier; "
        f"{t.get('max_steps', '?')} steps of batch {t.get('batch_size', '?')}, lr {t.get('lr', '?')}"
    )


def _write_claims(results, out: Path, size: str, main: Dict[str, Verdict], arms: Dict[str, Verdict]) -> None:
    setting = _setting_line(results, size)
    claims = []
    head = next((main[t] for t in TIERS if t in main), None)
    if head is not None:
        t = next(t for t in TIERS if t in main)
        claims.append(
            claim_from_verdict(
                "S2.madpo-vs-dpo",
                head,
                setting=setting,
                figure="madpo_oracle_reward.png",
                unit="oracle reward (VADER)",
                claim=f"MADPO > DPO on every data-quality tier ({t} shown)",
            )
        )
    oracle = next((arms[k] for k in arms if k.endswith(f"/{MA.ORACLE}")), None)
    if oracle is not None:
        claims.append(
            claim_from_verdict(
                "S2.madpo-oracle-margin",
                oracle,
                setting=setting,
                figure="madpo_gain_vs_accuracy.png",
                unit="oracle reward (VADER)",
            )
        )
    write_claims(out, "madpo", size, claims)


class MadpoStudy(Study):
    name = "madpo"
    title = "S2: MADPO vs DPO, IPO and beta-DPO across data quality"
    summary = "S2: MADPO vs DPO, IPO and beta-DPO across data-quality tiers (arXiv 2510.05342)"
    sizes, smoke, smoke_small, small_cuts = SIZES, SMOKE, SMOKE_SMALL, SMALL_CUTS

    def plan(
        self, size: str, seeds: int, smoke: bool = False, data_dir: Optional[str] = None, out: Optional[Path] = None
    ) -> List[RunSpec]:
        return _plan(self.settings(size, smoke), seeds, smoke, data_dir, Path(out or f"runs/study-{self.name}-{size}"))

    def report(self, results: Dict[str, RunResult], out: Path, size: str) -> List[str]:
        return _report(results, out, size, self.cuts_lines(size))

    def small_budget(self, s: Dict[str, Any], seeds: int) -> List[Stage]:
        return _small_budget(s, seeds)


STUDY = MadpoStudy()
