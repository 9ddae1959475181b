"""Study S1: SFT vs DPO vs SFT->DPO, full fine-tuning vs LoRA, on a small model (arXiv 2603.20100).

Tasks: paraphrase detection (Quora Question Pairs as a one-token cloze, :mod:`dpolab.tasks.paraphrase`)
and sonnet continuation (3 lines given, :mod:`dpolab.tasks.sonnets`).

Grid per (task, parameterisation, seed), five runs that share their SFT stages:

- ``sft-k1``: SFT for k1 epochs (the early hand-over point);
- ``sft-k2``: SFT for k2 epochs = the **SFT only** schedule;
- ``dpo-base``: **DPO only**, from the base model;
- ``dpo-k1``, ``dpo-k2``: **SFT k -> DPO**, DPO from the SFT run's final model (the reference is that model).

Parameterisations: full fine-tuning and LoRA ranks 4, 8, 16 (alpha = 2 r, so the adapter scale is the same for
every rank; LoRA learning rates are 10x the full ones, as usual for adapters). In a chained LoRA run the SFT
adapter is merged into the weights and DPO trains a fresh adapter of the same rank.

Base model: ``cpu``: a tiny GPT-2 (character tokenizer) that ``dpolab pretrain`` trains on tiny-shakespeare
(cached under ``$DPOLAB_CACHE`` / ``~/.cache/dpolab/pretrained`` and shared by every run and every study
invocation); ``small``: the pretrained SmolLM2-135M-Instruct (model preset ``smollm2-135m``), full fine-tuning against
LoRA r = 16, SFT only and SFT -> DPO (docs/results/SMALL_SIZES.md); ``paper``: ``gpt2`` from the hub.

Preference pairs: paraphrase, chosen = the correct label token, rejected = the other; sonnets, chosen = the true
continuation, rejected = a continuation **sampled from the base model** (temperature 1, top-p 0.9, seeded; one
sample per training sonnet, drawn once and shared by all DPO runs; cut to the true continuation's number of lines
and number of characters: a sample is never longer than the truth, though it may be shorter). The paper samples
from the current model;
sampling once from the base keeps the budget (a sampling stage per SFT run would double the sonnet cost) at the
price of being off-policy for the SFT-started DPO runs. Documented in the report.

Metrics: accuracy and macro-F1 (paraphrase, at every evaluation); held-out NLL per character of the true
continuation (sonnets, every evaluation) and corpus chrF of sampled continuations (final evaluation only: it is
slow); training wall-clock per epoch (training steps only, evaluation excluded), peak RSS and trainable
parameters from each run's summary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..data.types import DataError
from ..stats import SMALL, VerdictTable, compare, every, fmt_ci, mean_ci, none_of
from .budget import MEASURED, Stage
from .common import data_root, deep_merge, describe_model, fmt_cell
from .report import markdown_table, plot_lines
from .runner import RunResult, RunSpec, mark_stage, stage_is_current
from .study import Study

PARAMS: Dict[str, Dict[str, Any]] = {
    "full": {"enabled": False},
    "lora-4": {"enabled": True, "r": 4, "alpha": 8.0},
    "lora-8": {"enabled": True, "r": 8, "alpha": 16.0},
    "lora-16": {"enabled": True, "r": 16, "alpha": 32.0},
}
TASKS = ("paraphrase", "sonnets")
# the paper's numbers (GPT-2, full fine-tuning): SFT -> SFT+DPO
PAPER = {"paraphrase": ("accuracy %", 89.87, 90.05), "sonnets": ("chrF", 41.29, 41.48)}

# per task: n_train / n_eval rows (None: all), eval_loss_examples (pairs for the engine's eval loss; the task metric
# uses all n_eval), SFT epochs k1 (early hand-over) and k2 (late = "SFT only"), DPO epochs, batch, prompt and total
# length in tokens, evaluations per run (besides the one at the start)
_TASK_CPU = {
    # sized so the whole grid (120 runs) fits ~75 min on 2 cores; a quora prompt is cut to its last 160 characters
    # (the second question and the cloze survive)
    "paraphrase": dict(
        n_train=384,
        n_eval=256,
        eval_loss_examples=64,
        k1=1,
        k2=3,
        dpo_epochs=1,
        batch=32,
        max_prompt=160,
        max_length=168,
        evals_per_run=2,
    ),
    "sonnets": dict(
        n_train=None,
        n_eval=None,
        eval_loss_examples=None,
        k1=1,
        k2=3,
        dpo_epochs=1,
        batch=16,
        max_prompt=192,
        max_length=720,
        evals_per_run=2,
    ),
}
_TASK_PAPER = {
    "paraphrase": dict(
        n_train=16000,
        n_eval=2000,
        eval_loss_examples=512,
        k1=1,
        k2=3,
        dpo_epochs=1,
        batch=16,
        max_prompt=256,
        max_length=264,
        evals_per_run=4,
    ),
    "sonnets": dict(
        n_train=None,
        n_eval=None,
        eval_loss_examples=None,
        k1=3,
        k2=10,
        dpo_epochs=3,
        batch=8,
        max_prompt=96,
        max_length=384,
        evals_per_run=4,
    ),
}
_TASK_SMOKE = {
    "paraphrase": dict(
        n_train=16,
        n_eval=8,
        eval_loss_examples=8,
        k1=1,
        k2=2,
        dpo_epochs=1,
        batch=8,
        max_prompt=96,
        max_length=104,
        evals_per_run=1,
    ),
    "sonnets": dict(
        n_train=8,
        n_eval=3,
        eval_loss_examples=None,
        k1=1,
        k2=2,
        dpo_epochs=1,
        batch=8,
        max_prompt=48,
        max_length=128,
        evals_per_run=1,
    ),
}
# small: the real SmolLM2-135M-Instruct (BPE: a sonnet is ~170 tokens, a quora prompt ~45), sized by the budget of
# docs/results/SMALL_SIZES.md (about 100 minutes of training on 2 CPU cores). k1 = None: the early hand-over (SFT k1 ->
# DPO) is cut, SFT k2 -> DPO is kept; dpo_only = False: the DPO-only schedule is cut (none of the paper's three claims
# needs it); at_start = False: no evaluation before the first step (the base model is not measured).
# Paraphrase: 256 training pairs were too few (full SFT scored 57.8 % on 128 held-out pairs, below the 63.3 % of always
# answering "no"; a linear probe on the frozen model needed ~2,000 pairs to clear it, see SMALL_SIZES.md), so SFT gets
# 2,048 pairs and the evaluation 512 (a 95 % interval of about +-4 points), and DPO a quarter epoch (512 pairs) of them.
# sft_schedule: the SFT learning rate decays linearly to 0 (default: constant, so that at the other sizes SFT k1 is the
# first part of SFT k2). With a constant rate, seed 2's SFT ended answering "no" to every held-out pair (full and LoRA),
# while the same seed with the linear decay scored 72.3 % (full) and 71.7 % (LoRA) against the 63.7 % majority
_TASK_SMALL = {
    "paraphrase": dict(
        n_train=2048,
        n_eval=512,
        eval_loss_examples=16,
        k1=None,
        k2=1,
        dpo_epochs=0.25,
        batch=16,
        max_prompt=64,
        max_length=66,
        evals_per_run=1,
        at_start=False,
        dpo_only=False,
        sft_schedule="linear",
    ),
    "sonnets": dict(
        n_train=32,
        n_eval=8,
        eval_loss_examples=8,
        k1=None,
        k2=1,
        dpo_epochs=1,
        batch=8,
        max_prompt=64,
        max_length=224,
        evals_per_run=1,
        at_start=False,
        dpo_only=False,
    ),
}
_TASK_SMOKE_SMALL = {
    "paraphrase": dict(
        _TASK_SMALL["paraphrase"], n_train=4, n_eval=4, eval_loss_examples=4, batch=2, max_prompt=24, max_length=26
    ),
    "sonnets": dict(
        _TASK_SMALL["sonnets"], n_train=2, n_eval=1, eval_loss_examples=1, batch=2, max_prompt=16, max_length=40
    ),
}
_OPT = dict(lora_lr_factor=10.0, beta=0.1)
# claim 3's timing runs (measured alone: RunSpec.alone): SFT from the base for `steps` steps per task, parameterisation
# and seed, LoRA and full alternated by seed (L, F, F, L, ...), no evaluation hooks; seconds per step after the first
TIMING_CPU = dict(tasks=TASKS, steps=12)
SIZES = {
    # pretrain = the dpolab pretrain settings of the base (those of `dpolab pretrain --text .../input.txt`, so both
    # share one cached model); paper: gpt2 from the hub instead
    "cpu": dict(
        pretrain=dict(steps=600, batch_size=32, lr=2e-3, tiny={"n_layer": 4, "n_embd": 128, "n_head": 4}),
        model=None,
        tasks=_TASK_CPU,
        sft_lr=1e-3,
        dpo_lr=3e-4,
        params=tuple(PARAMS),
        timing=TIMING_CPU,
        **_OPT,
    ),
    "paper": dict(
        pretrain=None,
        model={"name_or_path": "gpt2"},
        tasks=_TASK_PAPER,
        sft_lr=2e-5,
        dpo_lr=1e-6,
        params=tuple(PARAMS),
        timing=dict(tasks=TASKS, steps=50),
        **_OPT,
    ),
}
SMOKE = dict(
    pretrain=dict(steps=4, batch_size=8, lr=2e-3, tiny={"n_layer": 1, "n_embd": 32, "n_head": 2}, chunk_chars=64),
    model=None,
    tasks=_TASK_SMOKE,
    sft_lr=1e-3,
    dpo_lr=1e-4,
    params=("full", "lora-4"),
    timing=dict(tasks=("paraphrase",), steps=3),
    **_OPT,
)
SIZES["small"] = dict(
    pretrain=None,
    model={"name_or_path": "smollm2-135m"},
    tasks=_TASK_SMALL,
    sft_lr=2e-5,
    dpo_lr=5e-6,
    params=("full", "lora-16"),
    timing=dict(tasks=("paraphrase",), steps=8),  # ~8 minutes alone on 2 cores (dry run); sonnets' steps cost 2x
    **_OPT,
)
SMOKE_SMALL = dict(SIZES["small"], tasks=_TASK_SMOKE_SMALL, timing=dict(tasks=("paraphrase",), steps=3))
SMALL_CUTS = (
    "Cut at this size against `--size paper`: LoRA ranks 4 and 8 (full fine-tuning against LoRA r = 16 kept), "
    "the DPO-only schedule and the early hand-over (SFT only and SFT -> DPO kept: the paper's three claims need "
    "no more), {p_n} Quora training pairs instead of 16,000 and {p_e} held-out pairs instead of 2,000, {s_n} "
    "training sonnets and {s_e} dev sonnets, one SFT epoch, DPO for {p_d:g} epoch (paraphrase) and {s_d:g} epoch "
    "(sonnets), prompts cut to {p_p} (paraphrase) and {s_p} tokens (sonnets), one evaluation per run (at its end; "
    "the base model is not evaluated)."
)


def small_cuts() -> str:
    p, s = _TASK_SMALL["paraphrase"], _TASK_SMALL["sonnets"]
    return SMALL_CUTS.format(
        p_n=f"{p['n_train']:,}",
        p_e=p["n_eval"],
        s_n=s["n_train"],
        s_e=s["n_eval"],
        p_d=p["dpo_epochs"],
        s_d=s["dpo_epochs"],
        p_p=p["max_prompt"],
        s_p=s["max_prompt"],
    )


SAMPLE_SEED = 1234  # the sonnet rejected samples and the chrF samples use fixed seeds (models differ only by weights)


# -- data and the base model ----------------------------------------------------------------------------


def data_paths(data_dir: Optional[str], need_text: bool = True) -> Dict[str, Path]:
    """The study's data files; ``need_text``: the pretraining text too (not for the paper size's hub model)."""
    root = data_root(data_dir)
    paths = {"quora": root / "quora-paraphrase" / "quora-dev.csv", "sonnets": root / "shakespeare-sonnets"}
    if need_text:
        paths["text"] = root / "tiny-shakespeare" / "input.txt"
    missing = [str(p) for k, p in paths.items() if not (p / "sonnets.txt" if k == "sonnets" else p).exists()]
    if missing:
        raise DataError(
            f"study sft-dpo needs {', '.join(missing)}; pass --data-dir with the folder that holds "
            "quora-paraphrase/, shakespeare-sonnets/" + (" and tiny-shakespeare/" if need_text else ""),
            source=str(root),
        )
    return {k: p.resolve() for k, p in paths.items()}


def _pretrain_spec(s: Dict[str, Any], text: Path):
    from ..engine.pretrain import PretrainSpec

    return PretrainSpec(text=str(text), **s["pretrain"])


def base_model(
    s: Dict[str, Any], paths: Dict[str, Path], out: Path, smoke: bool
) -> Tuple[Dict[str, Any], Callable[[], None]]:
    """(model config of the base, a prepare callable that makes sure it exists)."""
    if s["pretrain"] is None:
        return dict(s["model"]), lambda: None
    from ..engine.pretrain import cached_path, pretrain

    spec = _pretrain_spec(s, paths["text"])
    cache = out / "pretrained" if smoke else None  # smoke runs keep their tiny base to themselves
    final = cached_path(spec, cache)
    return {"name_or_path": str(final)}, lambda: pretrain(spec, cache, progress=False, log=lambda m: None)


def _load(model_cfg: Dict[str, Any]):
    from ..config import ModelConfig
    from ..models.load import load_base_model, load_tokenizer

    mc = ModelConfig(**model_cfg)
    tok = load_tokenizer(mc)
    return load_base_model(mc, tok), tok


def sonnet_pair_files(out: Path) -> Tuple[Path, Path]:
    return out / "data" / "sonnets-pairs.jsonl", out / "data" / "sonnets-pairs-dev.jsonl"


def build_sonnet_pairs(out: Path, sonnets_dir: Path, model_cfg: Dict[str, Any], t: Dict[str, Any]) -> None:
    """Cached: rejected = one continuation per sonnet sampled from the base model (train and dev)."""
    from ..tasks import sonnets as S

    files = sonnet_pair_files(out)
    base = Path(str(model_cfg.get("name_or_path", "")))
    inputs = sorted(base.glob("*.safetensors")) + [sonnets_dir / "sonnets.txt"]
    settings = {"model": model_cfg, "n_train": t["n_train"], "n_eval": t["n_eval"], "seed": SAMPLE_SEED}
    if stage_is_current(files, inputs, settings):
        return
    from ..atomic import write_text

    model, tok = _load(model_cfg)
    train = S.sft_rows(S.parse_sonnets(sonnets_dir / "sonnets.txt"))[: t["n_train"] or None]
    dev = S.dev_rows(sonnets_dir / "sonnets_held_out_dev.txt", sonnets_dir / "TRUE_sonnets_held_out_dev.txt")[
        : t["n_eval"] or None
    ]
    longest = max(len(tok(r["completion"], add_special_tokens=False)["input_ids"]) for r in train + dev)
    for rows, path, seed in ((train, files[0], SAMPLE_SEED), (dev, files[1], SAMPLE_SEED + 1)):
        pairs = S.sampled_rejected_rows(
            model, tok, rows, seed=seed, batch_size=32, max_new_tokens=longest + 8, log=lambda m: None
        )
        # a sample is cut to the true continuation's line count (sonnets.py) and character length: never longer than
        # the truth (and a base model that never writes a newline costs no more compute)
        out_rows = [
            {
                "prompt": p["prompt"],
                "chosen": p["chosen"],
                "rejected": p["rejected"][: len(p["chosen"])].rstrip(),
                "id": p["id"],
            }
            for p in pairs
        ]
        write_text(path, "".join(json.dumps(r) + "\n" for r in out_rows if r["rejected"].strip()))
    mark_stage(files, inputs, settings)


# -- hooks --------------------------------------------------------------------------------------------


def paraphrase_hook(quora: Path, t: Dict[str, Any]):
    """Accuracy / macro-F1 on the held-out pairs; labels resolved for the run's tokenizer at the first call."""
    from ..config import build_config
    from ..tasks import get_task, rows_for
    from ..tasks.paraphrase import resolve_labels

    data = build_config({"data": _paraphrase_data(quora, t)}).data
    cache: Dict[Any, Any] = {}

    def hook(model, tokenizer, step):
        key = resolve_labels(tokenizer)  # (labels, answer prefix): the rows are built once per labelling
        if key not in cache:
            _, rows = rows_for(data.task, data.task_args, "sft", 0, tokenizer)
            cache[key] = get_task("paraphrase").metric_hook(
                rows, "labels", labels=key[0], limit=None, batch_size=64, max_prompt_length=t["max_prompt"]
            )
        return cache[key](model, tokenizer, step)

    return hook


def sonnet_hooks(sonnets_dir: Path, t: Dict[str, Any], final_step: int) -> List[Callable]:
    """NLL at every evaluation; chrF only at ``final_step`` (sampling is slow)."""
    from ..tasks import sonnets as S

    dev = S.dev_rows(sonnets_dir / "sonnets_held_out_dev.txt", sonnets_dir / "TRUE_sonnets_held_out_dev.txt")[
        : t["n_eval"] or None
    ]
    chrf = S.chrf_hook(dev, seed=SAMPLE_SEED, batch_size=16)
    return [
        S.nll_hook(dev, batch_size=16, max_length=1024),  # never truncated: NLL per char must cover every char
        lambda model, tok, step: chrf(model, tok, step) if step >= final_step else {},
    ]


# -- the grid -----------------------------------------------------------------------------------------


def _paraphrase_data(quora: Path, t: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "task": "paraphrase",
        "max_length": t["max_length"],
        "max_prompt_length": t["max_prompt"],
        "task_args": {"path": str(quora), "n_train": t["n_train"], "n_eval": t["n_eval"], "seed": 0},
    }


def _steps(n_rows: int, batch: int, epochs: float) -> int:
    return max(1, math.ceil(epochs * math.ceil(n_rows / batch)))


def _n_rows(task: str, t: Dict[str, Any], paths: Dict[str, Path]) -> int:
    if task == "paraphrase":
        return t["n_train"]
    from ..tasks import sonnets as S

    return len(S.sft_rows(S.parse_sonnets(paths["sonnets"] / "sonnets.txt"))[: t["n_train"] or None])


def _plan(s: Dict[str, Any], seeds: int, smoke: bool, data_dir: Optional[str], out: Path) -> List[RunSpec]:
    paths = data_paths(data_dir, need_text=s["pretrain"] is not None)
    model, ensure_base = base_model(s, paths, out, smoke)
    result: List[RunSpec] = []
    for task in TASKS:
        t = s["tasks"][task]
        n = _n_rows(task, t, paths)
        sft_data = (
            _paraphrase_data(paths["quora"], t)
            if task == "paraphrase"
            else {
                "task": "sonnets",
                "max_length": t["max_length"],
                "max_prompt_length": t["max_prompt"],
                "task_args": {"path": str(paths["sonnets"]), "n_train": t["n_train"], "n_eval": t["n_eval"]},
            }
        )
        if task == "paraphrase":
            pref_data, prepare = sft_data, ensure_base
        else:
            tr, ev = sonnet_pair_files(out)
            pref_data = {
                "train": str(tr),
                "eval": str(ev),
                "max_length": t["max_length"],
                "max_prompt_length": t["max_prompt"],
            }

            def prepare(t=t):
                return (ensure_base(), build_sonnet_pairs(out, paths["sonnets"], model, t))

        hook = paraphrase_hook(paths["quora"], t) if task == "paraphrase" else None
        for pname in s["params"]:
            lora = PARAMS[pname]
            factor = s["lora_lr_factor"] if lora["enabled"] else 1.0
            for seed in range(seeds):
                base = {
                    "model": model,
                    "lora": lora,
                    "train": {"batch_size": t["batch"], "seed": seed, "log_every": 1, "schedule": "constant"},
                    "eval": {"batch_size": 32, "max_examples": t["eval_loss_examples"]},
                    "output": {"progress": False},
                }
                prefix = f"{task}/{pname}/seed{seed}"
                labels = {"task": task, "param": pname, "seed": seed}
                ks = [k for k in (t["k1"], t["k2"]) if k]  # k1 None: the early hand-over is cut (small size)
                later = {"at_start": False} if t.get("at_start") is False else {}
                for k in ks:
                    steps = _steps(n, t["batch"], k)
                    cfg = deep_merge(
                        base,
                        {
                            "data": sft_data,
                            "train": {
                                "mode": "sft",
                                "max_steps": steps,
                                "lr": s["sft_lr"] * factor,
                                "schedule": t.get("sft_schedule", "constant"),
                            },
                            "eval": {"every": max(1, math.ceil(steps / t["evals_per_run"])), **later},
                        },
                    )
                    hooks = [hook] if hook else sonnet_hooks(paths["sonnets"], t, steps)
                    result.append(
                        RunSpec(
                            f"{prefix}/sft-k{k}",
                            cfg,
                            {**labels, "stage": "sft", "k": k},
                            hooks=hooks,
                            prepare=ensure_base,
                        )
                    )
                steps = _steps(n, t["batch"], t["dpo_epochs"])
                dpo = deep_merge(
                    base,
                    {
                        "data": pref_data,
                        "loss": [{"name": "dpo", "params": {"beta": s["beta"]}}],
                        "train": {"mode": "preference", "max_steps": steps, "lr": s["dpo_lr"] * factor},
                        "eval": {"every": max(1, math.ceil(steps / t["evals_per_run"]))},
                    },
                )
                hooks = [hook] if hook else sonnet_hooks(paths["sonnets"], t, steps)
                if t.get("dpo_only", True):
                    result.append(
                        RunSpec(
                            f"{prefix}/dpo-base", dpo, {**labels, "stage": "dpo", "k": 0}, hooks=hooks, prepare=prepare
                        )
                    )
                for k in ks:
                    result.append(
                        RunSpec(
                            f"{prefix}/dpo-k{k}",
                            deep_merge(dpo, {"eval": later}),
                            {**labels, "stage": "dpo", "k": k},
                            init_from=f"{prefix}/sft-k{k}",
                            hooks=hooks,
                            prepare=prepare,
                        )
                    )
        if task in (s.get("timing") or {}).get("tasks", ()):
            result += _timing_specs(s, task, t, model, sft_data, seeds, ensure_base)
    return result


def _timing_specs(s, task: str, t: Dict[str, Any], model, sft_data, seeds: int, ensure_base) -> List[RunSpec]:
    """Claim 3's timing runs of one task: SFT from the base for ``timing.steps`` steps, every parameterisation and
    seed, each run alone (no other run of the grid beside it), LoRA and full alternated by seed (seed 0: LoRA first,
    seed 1: full first, ...) so that a drift of the machine's speed over the phase falls on both alike."""
    steps = s["timing"]["steps"]
    loras = [p for p in s["params"] if p != "full"]
    out = []
    for seed in range(seeds):
        for pname in loras + ["full"] if seed % 2 == 0 else ["full"] + loras:
            lora = PARAMS[pname]
            cfg = {
                "model": model,
                "lora": lora,
                "data": sft_data,
                "train": {
                    "mode": "sft",
                    "batch_size": t["batch"],
                    "seed": seed,
                    "log_every": 1,
                    "schedule": "constant",
                    "max_steps": steps,
                    "lr": s["sft_lr"] * (s["lora_lr_factor"] if lora["enabled"] else 1.0),
                },
                "eval": {"batch_size": 32, "max_examples": 8, "at_start": False},
                "output": {"progress": False},
            }
            labels = {"task": task, "param": pname, "seed": seed, "stage": "timing"}
            out.append(RunSpec(f"timing/{task}/{pname}/seed{seed}", cfg, labels, prepare=ensure_base, alone=True))
    return out


def _small_budget(s: Dict[str, Any], seeds: int) -> List[Stage]:
    """The small size's stages at the measured seconds per unit (:mod:`dpolab.studies.budget`)."""
    sample = MEASURED["gen_token"] * 150  # a sonnet continuation: ~11 lines, ~150 tokens
    n_sonnets = 32  # training sonnets at this size (n_train); the file has more
    out = []
    for task in TASKS:
        t, m = s["tasks"][task], MEASURED["sft-dpo"][task]
        n = t["n_train"] if task == "paraphrase" else min(n_sonnets, t["n_train"])
        sft, dpo = _steps(n, t["batch"], t["k2"]), _steps(n, t["batch"], t["dpo_epochs"])
        for p in s["params"]:
            kind = "full" if not PARAMS[p]["enabled"] else "lora"
            out += [
                Stage(f"{task} {p}: SFT {t['k2']} ep (batch {t['batch']})", seeds, sft, m[f"sft-{kind}"] * t["batch"]),
                Stage(
                    f"{task} {p}: SFT -> DPO, {t['dpo_epochs']:g} ep (batch {t['batch']})",
                    seeds,
                    dpo,
                    m[f"dpo-{kind}"] * t["batch"],
                ),
            ]
        if task in (s.get("timing") or {}).get("tasks", ()):
            out += [
                Stage(
                    f"{task} {p}: timing run alone, SFT {s['timing']['steps']} steps (batch {t['batch']})",
                    seeds,
                    s["timing"]["steps"],
                    m[f"sft-{'full' if not PARAMS[p]['enabled'] else 'lora'}"] * t["batch"],
                )
                for p in s["params"]
            ]
        ends = 2 * len(s["params"]) * seeds  # runs (SFT and SFT -> DPO per parameterisation and seed), each evaluated
        evals = ends * t["evals_per_run"]  # evals_per_run times (the last at its end)
        if task == "paraphrase":
            out.append(
                Stage(
                    f"paraphrase evaluations ({t['n_eval']} held-out prompts, {t['evals_per_run']} per run)",
                    evals,
                    t["n_eval"],
                    m["eval"],
                    "prompts",
                )
            )
        else:
            out += [
                Stage(
                    f"sonnet held-out NLL ({t['n_eval']} dev sonnets, {t['evals_per_run']} per run)",
                    evals,
                    t["n_eval"],
                    m["eval"],
                    "sonnets",
                ),
                Stage("sonnet chrF samples (end of each run)", ends, t["n_eval"], sample, "samples"),
                Stage("rejected sonnets sampled once from the base model", 1, n + t["n_eval"], sample, "samples"),
            ]
    return out


# -- report -------------------------------------------------------------------------------------------

METRICS = {  # task -> [(key, label, higher is better, scale)]
    "paraphrase": [("eval/accuracy", "accuracy %", True, 100.0), ("eval/macro_f1", "macro-F1 %", True, 100.0)],
    "sonnets": [("eval/chrf", "chrF", True, 1.0), ("eval/nll_per_char", "NLL / char (nats)", False, 1.0)],
}
# the smallest difference of each metric (by label, in its reported scale) that a verdict words as one (issue 34);
# timings have none: their verdicts are judged against 0 alone
BOUNDS = {"accuracy %": 1.0, "macro-F1 %": 1.0, "chrF": 1.0, "NLL / char (nats)": 0.01}


def _schedules(results: Dict[str, RunResult], task: str) -> List[Tuple[str, str, Optional[str]]]:
    """(schedule name, run suffix, SFT parent suffix or None)."""
    ks = sorted(
        {
            r.spec.labels["k"]
            for r in results.values()
            if r.spec.labels.get("task") == task and r.spec.labels["stage"] == "sft"
        }
    )
    if not ks:
        return []
    k1, k2 = ks[0], ks[-1]  # one k (the small size cuts the early hand-over): SFT only, DPO only, SFT -> DPO
    early = [(f"SFT {k1} ep -> DPO", f"dpo-k{k1}", f"sft-k{k1}")] if len(ks) > 1 else []
    dpo_only = (
        [("DPO only", "dpo-base", None)]
        if any(r.spec.run_id.endswith("/dpo-base") for r in results.values() if r.spec.labels.get("task") == task)
        else []
    )
    return [
        (f"SFT only ({k2} ep)", f"sft-k{k2}", None),
        *dpo_only,
        *early,
        (f"SFT {k2} ep -> DPO", f"dpo-k{k2}", f"sft-k{k2}"),
    ]


def _epochs(r: RunResult) -> float:
    rows = [x for x in r.metrics if isinstance(x.get("epoch"), (int, float))]
    return float(rows[-1]["epoch"]) if rows else float("nan")


def _sec_per_epoch(r: RunResult) -> float:
    e = _epochs(r)
    return r.summary.get("wall_clock_s", float("nan")) / e if e and e > 0 else float("nan")


def _timed_series(r: RunResult, key: str, offset: float = 0.0) -> Dict[float, Tuple[float, float]]:
    """step -> (training seconds since the schedule began, value) for the run's evaluations of ``key``."""
    elapsed = {x["step"]: x["time/elapsed_s"] for x in r.metrics if "time/elapsed_s" in x}
    elapsed[0] = 0.0
    return {st: (offset + elapsed.get(st, float("nan")), v) for st, v in zip(*r.series(key))}


def _cells(results, task, param, seed, suffix, parent):
    prefix = f"{task}/{param}/seed{seed}"
    run = results.get(f"{prefix}/{suffix}")
    par = results.get(f"{prefix}/{parent}") if parent else None
    return run, par


def _config_runs(results, task, param, suffix, parent):
    seeds = sorted({r.spec.labels["seed"] for r in results.values() if r.spec.labels.get("task") == task})
    out = []
    for seed in seeds:
        run, par = _cells(results, task, param, seed, suffix, parent)
        if run is not None and (parent is None or par is not None):
            out.append((seed, run, par))
    return out


def _value(run: RunResult, key: str, scale: float) -> Optional[float]:
    v = run.final(key)
    return None if v is None else v * scale


def _curve(runs, key: str, scale: float) -> Tuple[List[float], List[float]]:
    """Mean over seeds of (cumulative training seconds, metric) at the evaluations all seeds share."""
    per_seed = []
    for _, run, par in runs:
        pts: Dict[Tuple[int, int], Tuple[float, float]] = {}
        offset = 0.0
        if par is not None:
            for st, tv in _timed_series(par, key).items():
                pts[(0, st)] = tv
            offset = par.summary.get("wall_clock_s", 0.0)
        for st, tv in _timed_series(run, key, offset).items():
            if par is None or st > 0:
                pts[(1, st)] = tv
        per_seed.append(pts)
    if not per_seed:
        return [], []
    common = sorted(set.intersection(*(set(p) for p in per_seed)))
    xs = [mean_ci([p[c][0] for p in per_seed])[0] for c in common]
    ys = [mean_ci([p[c][1] * scale for p in per_seed])[0] for c in common]
    return xs, ys


def _seed_values(runs, key: str, scale: float) -> Dict[Any, Optional[float]]:
    """seed -> the final metric of each (seed, run, parent) (None when the run did not report it)."""
    return {seed: _value(run, key, scale) for seed, run, _ in runs}


def _seed_timings(runs) -> Dict[Any, Optional[float]]:
    """seed -> training seconds per epoch of the schedule's last stage (None when unknown)."""
    out: Dict[Any, Optional[float]] = {}
    for seed, run, _ in runs:
        v = _sec_per_epoch(run)
        out[seed] = None if v is None or math.isnan(v) else v
    return out


def _report(results: Dict[str, RunResult], out: Path, size: str, cuts: List[str]) -> List[str]:
    lines: List[str] = []
    params = [p for p in PARAMS if any(r.spec.labels.get("param") == p for r in results.values())]
    model = next((r.spec.config.get("model", {}) for r in results.values()), {})
    local = Path(
        str(model.get("name_or_path", ""))
    ).is_absolute()  # the cpu sizes' base: `dpolab pretrain`'s cached model
    lines += [
        "## Set-up",
        "",
        f"Base model: {describe_model(model)}"
        + (" (pretrained by `dpolab pretrain` on tiny-shakespeare)" if local else "")
        + ". "
        + _data_sizes(results)
        + " Schedules per (task, parameterisation, seed): "
        + _schedule_words(results)
        + ". "
        + _lr_schedules(results)
        + " Parameterisations: full fine-tuning and "
        "LoRA (alpha = 2 r), the LoRA learning rate "
        f"x{SIZES.get(size, SMOKE)['lora_lr_factor']:g} of full fine-tuning's; a chained LoRA run merges the SFT "
        "adapter and trains a "
        "fresh one. Sonnet preference pairs: chosen = the true continuation, rejected = one continuation sampled "
        "from the **base** model (temperature 1, top-p 0.9), drawn once and shared by every DPO run, cut to the "
        "true continuation's line count and length in characters, so never longer than the truth (the paper "
        "samples from the current model; ours is off-policy for SFT-started DPO). Paraphrase pairs: chosen = "
        "the correct label token, rejected = the other. Metrics are at the end of each schedule; ± is the 95 % "
        "CI over seeds (t distribution; 'n=k of m' when a run did not report a value). Wall-clock is training "
        "steps only (evaluation excluded); s/epoch is of the schedule's last stage; total s includes the SFT "
        "stage of a chained schedule. chrF samples every dev sonnet once (seeded) and is computed only at the end "
        "of each run (it is slow), so the curves show the "
        "held-out NLL and the base model's chrF is not measured. In the plots, the SFT-only curve is hidden under "
        "the first part of the SFT k2 -> DPO curve (the same run).",
        "",
    ]
    lines += cuts
    claims: List[str] = []
    found: Dict[str, Any] = {}
    total = VerdictTable()
    majority: Optional[float] = None
    for task in TASKS:
        scheds = _schedules(results, task)
        if not scheds:
            if _timing_runs(results, task):  # only the timing runs of this task (e.g. a filtered grid): claim 3 alone
                timing_lines, t3 = _timing_claim(results, task, found)
                claims += [f"### {task}", "", *timing_lines]
                total.extend(t3)
            continue
        mets = METRICS[task]
        lines += [f"## {task}", ""]
        rows = []
        for name, suffix, parent in scheds:
            for p in params:
                runs = _config_runs(results, task, p, suffix, parent)
                if not runs:
                    continue
                totals = [
                    run.summary.get("wall_clock_s", 0.0) + (par.summary.get("wall_clock_s", 0.0) if par else 0.0)
                    for _, run, par in runs
                ]
                rows.append(
                    [
                        name,
                        p,
                        *[fmt_cell([_value(run, k, sc) for _, run, _ in runs]) for k, _, _, sc in mets],
                        fmt_ci(totals, 1),
                        fmt_ci([_sec_per_epoch(run) for _, run, _ in runs], 2),
                        fmt_ci([run.summary.get("peak_memory_mb", float("nan")) for _, run, _ in runs], 0),
                        f"{(runs[0][1].summary.get('parameters') or {}).get('trainable', 0):,}",
                    ]
                )
        lines += [
            markdown_table(
                [
                    "schedule",
                    "params",
                    *[lbl for _, lbl, _, _ in mets],
                    "total train s",
                    "s / epoch",
                    "peak RSS MB",
                    "trainable",
                ],
                rows,
            ),
            "",
        ]
        if task == "paraphrase":
            line, majority = _majority_line(results)
            lines += [line, ""]
        base_runs = [
            r for r in results.values() if r.spec.labels.get("task") == task and r.spec.run_id.endswith("dpo-base")
        ]
        if base_runs:
            start = [(r.summary.get("first_eval") or {}) for r in base_runs]
            shown = [
                f"{lbl} {fmt_ci([s[k] * sc for s in start if isinstance(s.get(k), (int, float))])}"
                for k, lbl, _, sc in mets
                if any(isinstance(s.get(k), (int, float)) for s in start)
            ]
            if shown:
                lines += ["Base model before any fine-tuning: " + ", ".join(shown) + ".", ""]
        key, lbl, _, sc = mets[0] if task == "paraphrase" else mets[1]
        panels = [
            (
                f"{p}: {lbl}",
                lbl,
                {
                    name: _curve(_config_runs(results, task, p, suffix, parent), key, sc)
                    for name, suffix, parent in scheds
                },
            )
            for p in params
        ]
        png = plot_lines(
            out / f"sft_dpo_{task}.png",
            panels,
            xlabel="training seconds (cumulative over stages)",
            title=f"S1 {task}: {lbl} against wall-clock (mean over seeds)",
        )
        lines += [f"![{task}: {lbl} against wall-clock]({png.name})", ""]
        if task == "paraphrase":
            claims += ["### paraphrase: before the claims", "", *_majority_check(results, scheds, params, majority)]
        claims += _claims(results, task, scheds, params, mets, total, found)
    lines += [
        "## The paper's claims beside what we measured",
        "",
        "Every verdict is a paired comparison by seed (95 % t-interval of the mean difference), worded against "
        "the metric's smallest meaningful difference (1 point of accuracy, macro-F1 or chrF; 0.01 nats of NLL "
        "per character; none for timings, judged against 0 alone): better / worse only when the interval "
        "excludes 0 and lies wholly beyond it, 'negligible' when it lies inside it, 'maybe negligible' when it "
        "excludes 0 but reaches inside it, inconclusive when it contains 0 and reaches beyond it; a missing "
        "value is listed as missing, never read as 0. Small models, few seeds and short schedules: read the "
        "magnitudes, not only the verdicts.",
        "",
        *claims,
    ]
    if len(total):
        lines += ["### All claims together", "", "In all: " + total.chance_line()]
    _write_claims(results, out, size, found)
    return lines


# the smallest speed difference claim 3's verdict words as one: 5 % either way (a ratio outside 1/1.05 to 1.05)
TIME_BOUND = math.log(1.05)


def _steady_s_per_step(r: RunResult) -> Optional[float]:
    """Mean seconds per optimiser step after the first (which pays for warm-up), from the run's per-step log."""
    rows = sorted((x["step"], x["time/step_s"]) for x in r.metrics if isinstance(x.get("time/step_s"), (int, float)))
    rows = rows[1:] if len(rows) > 1 else rows
    return sum(v for _, v in rows) / len(rows) if rows else None


def _timing_runs(results: Dict[str, RunResult], task: str) -> Dict[str, Dict[Any, RunResult]]:
    """param -> seed -> the task's timing run (stage ``timing``)."""
    out: Dict[str, Dict[Any, RunResult]] = {}
    for r in results.values():
        lab = r.spec.labels
        if lab.get("stage") == "timing" and lab.get("task") == task:
            out.setdefault(lab["param"], {})[lab["seed"]] = r
    return out


def _timing_claim(results: Dict[str, RunResult], task: str, found: Dict[str, Any]) -> Tuple[List[str], VerdictTable]:
    """Claim 3 from the timing runs measured alone: LoRA / full seconds per step, paired by seed (the interval of the
    mean log-ratio, shown as a ratio)."""
    from .runner import read_alone

    runs = _timing_runs(results, task)
    head = [
        "**Claim 3: LoRA does not cut wall-clock for a small model** (seconds per SFT step after the first, from "
        "timing runs measured alone; LoRA / full, paired by seed; below 1 is faster).",
        "",
    ]
    t3 = VerdictTable(("LoRA", "full s/step", "LoRA s/step", "ratio LoRA / full (95 % CI)"))
    if "full" not in runs:
        return head + ["No timing runs of this task: not measured.", ""], t3
    alone = {rid: read_alone(r.dir) for ps in runs.values() for rid, r in ((x.spec.run_id, x) for x in ps.values())}
    not_alone = sorted(rid for rid, rec in alone.items() if rec is None)
    recs = [rec for rec in alone.values() if rec]

    def steady(seed_runs: Dict[Any, RunResult]) -> Dict[Any, Optional[float]]:
        return {s: _steady_s_per_step(r) if alone[r.spec.run_id] else None for s, r in seed_runs.items()}

    full = steady(runs["full"])
    for p in (x for x in PARAMS if x in runs and x != "full"):
        lora = steady(runs[p])
        log = lambda d: {s: (math.log(v) if v else None) for s, v in d.items()}  # noqa: E731
        v = compare(
            log(lora),
            log(full),
            metric="log s/step",
            higher_is_better=False,
            label_a=f"{p} ({task})",
            label_b="full",
            digits=3,
            bound=TIME_BOUND,
        )
        ratio = (
            f"{math.exp(v.mean):.3f} ({math.exp(v.low):.3f} to {math.exp(v.high):.3f})"
            if v.has_interval
            else (f"{math.exp(v.mean):.3f} (no interval)" if v.n else "-")
        )
        t3.add(v, p, fmt_cell(list(full.values()), 3), fmt_cell(list(lora.values()), 3), ratio)
        found[f"lora-time-{task}"] = v  # the largest rank last
    cpus = sorted({f"{r['cpu']} ({r['cores']} cores, torch threads: {r['threads'] or 'default'})" for r in recs})
    execs = sorted({r["executor"] for r in recs})
    steps = {r.summary.get("steps") for ps in runs.values() for r in ps.values()}
    faster = [v for v in t3.verdicts if v.word == "better"]
    reading = none_of(
        t3.verdicts, "cut the seconds per step below full fine-tuning's", subject="LoRA rank", expect="better"
    ) + (
        " No comparison contradicts the claim; an inconclusive one cannot rule out a small cut."
        if not faster
        else " Where LoRA was faster the claim does not hold."
    )
    return head + [
        f"Measured alone: each timing run trained with no other run of the study beside it (the runner runs them one "
        f"at a time after the other runs of their wave), LoRA and full alternated by seed (seed 0 LoRA first, seed 1 "
        f"full first, ...), {'/'.join(str(x) for x in sorted(steps, key=str))} SFT steps from the base model each, "
        f"no evaluation hooks. CPU: {'; '.join(cpus) or 'not recorded'}; executor: {'; '.join(execs) or '-'}. "
        "The verdict is on the log of the ratio (difference of logs; ratio = exp), against a smallest meaningful "
        f"speed difference of 5 % (±{TIME_BOUND:.4f} in logs)."
        + (f" Left out (no record of running alone): {', '.join(not_alone)}." if not_alone else ""),
        "",
        *t3.lines(),
        "",
        reading,
        "",
    ], t3


def _setting_line(results: Dict[str, RunResult], size: str, task: str) -> str:
    """Model, data, steps and lr of the task's runs, for the evidence table."""
    runs = [r for r in results.values() if r.spec.labels.get("task") == task and r.spec.labels.get("stage") == "sft"]
    if not runs:
        return f"{size}: not run"
    r = max(runs, key=lambda x: x.spec.config.get("train", {}).get("max_steps", 0))
    t = r.spec.config.get("train", {})
    dpo = next(
        (x for x in results.values() if x.spec.labels.get("task") == task and x.spec.labels.get("stage") == "dpo"), None
    )
    dpo_t = dpo.spec.config.get("train", {}) if dpo else {}
    return (
        f"{size}: {describe_model(r.spec.config.get('model', {}))}, {task} ({r.summary.get('train_examples', '?')} "
        f"rows); SFT {t.get('max_steps', '?')} steps lr {t.get('lr', '?')} (full)"
        + (f", DPO {dpo_t.get('max_steps', '?')} steps lr {dpo_t.get('lr', '?')}" if dpo else "")
    )


def _write_claims(results: Dict[str, RunResult], out: Path, size: str, found: Dict[str, Any]) -> None:
    from .claims import Claim, claim_from_verdict, write_claims

    claims = []
    for task in TASKS:
        v = found.get(f"dpo-gain-{task}")
        if v is not None:
            unit = METRICS[task][0][1]
            claims.append(
                claim_from_verdict(
                    f"S1.dpo-gain-{task}",
                    v,
                    setting=_setting_line(results, size, task),
                    figure=f"sft_dpo_{task}.png",
                    unit=unit,
                )
            )
    v = found.get("full-vs-lora-paraphrase")
    if v is not None:
        claims.append(
            claim_from_verdict(
                "S1.full-vs-lora",
                v,
                setting=_setting_line(results, size, "paraphrase"),
                unit="accuracy %",
                figure="sft_dpo_paraphrase.png",
            )
        )
    v = found.get("lora-time-paraphrase") or found.get("lora-time-sonnets")
    if v is not None:
        base = claim_from_verdict("S1.lora-time", v, setting=_setting_line(results, size, "paraphrase"))
        ratio = lambda x: None if x is None else math.exp(x)  # noqa: E731
        claims.append(
            Claim(
                **{
                    **base.__dict__,
                    "ours": ratio(base.ours),
                    "low": ratio(base.low),
                    "high": ratio(base.high),
                    "unit": "x (LoRA / full s per step, measured alone)",
                    "measured": f"{v.label_a} / {v.label_b} seconds per SFT step, paired by seed "
                    "('better': LoRA faster)",
                }
            )
        )
    write_claims(out, "sft-dpo", size, claims)


def _schedule_words(results: Dict[str, RunResult]) -> str:
    """The schedules that ran, in words (the small size runs no DPO-only schedule and one SFT length)."""
    ks = sorted({r.spec.labels["k"] for r in results.values() if r.spec.labels.get("stage") == "sft"})
    base = any(r.spec.run_id.endswith("/dpo-base") for r in results.values())
    sft = f"SFT for {' and '.join(f'{k}' for k in ks)} epoch{'s' if ks != [1] else ''}" if ks else "no SFT"
    return (
        sft
        + (", DPO from the base" if base else "")
        + (", DPO from each SFT model" if len(ks) > 1 else ", DPO from the SFT model" if ks else "")
    )


def _lr_schedules(results: Dict[str, RunResult]) -> str:
    """How each task's stages set the learning rate over their steps, as the runs' configs say."""
    from ..config import TrainConfig

    default = TrainConfig().schedule  # what a run whose config leaves the schedule unset trained with
    words = {"constant": "constant", "linear": "decaying linearly to 0", "cosine": "decaying along a cosine to 0"}
    parts = []
    for task in TASKS:
        for stage in ("sft", "dpo"):
            found = sorted(
                {
                    r.spec.config.get("train", {}).get("schedule", default)
                    for r in results.values()
                    if r.spec.labels.get("task") == task and r.spec.labels.get("stage") == stage
                }
            )
            if found:
                parts.append(f"{task} {stage.upper()} {' / '.join(words.get(f, f) for f in found)}")
    return ("Learning rate over each run's steps: " + "; ".join(parts) + ".") if parts else ""


def _data_sizes(results: Dict[str, RunResult]) -> str:
    """Training rows of each task's SFT and DPO stages, as the runs report them."""
    parts = []
    for task in TASKS:
        rows = {}
        for stage in ("sft", "dpo"):
            ns = {
                r.summary.get("train_examples")
                for r in results.values()
                if r.spec.labels.get("task") == task and r.spec.labels.get("stage") == stage
            }
            ns.discard(None)
            if ns:
                rows[stage] = "/".join(f"{n:,}" for n in sorted(ns))
        if rows:
            parts.append(f"{task}: {rows.get('sft', '-')} SFT rows and {rows.get('dpo', '-')} preference pairs")
    return ("Training data as run: " + "; ".join(parts) + ".") if parts else ""


def _majority(results: Dict[str, RunResult]) -> Tuple[int, float]:
    """(evaluation pairs, share of paraphrases) of the paraphrase runs' held-out set (the same for every run: its split
    seed is fixed). Raises when the rows cannot be built (e.g. the data file moved since the runs)."""
    from ..config import build_config
    from ..tasks import rows_for

    run = next(r for r in results.values() if r.spec.labels.get("task") == "paraphrase")
    data = build_config(run.spec.config).data
    _, rows = rows_for(data.task, data.task_args, "sft", 0)
    return len(rows), sum(r["label"] for r in rows) / max(1, len(rows))


def _majority_line(results: Dict[str, RunResult]) -> Tuple[str, Optional[float]]:
    """The line on always answering the more frequent label (a small model often does), and that baseline's accuracy
    in % (None when it could not be computed)."""
    try:
        n, pos = _majority(results)
    except Exception as e:  # noqa: BLE001 - the report must not fail on a baseline line
        return f"(majority-class baseline unavailable: {e})", None
    acc = max(pos, 1 - pos) * 100
    return (
        f"Baselines on the {n} evaluation pairs ({pos * 100:.1f} % paraphrases): always answering the "
        f"majority label scores accuracy {acc:.2f} % and macro-F1 about "
        f"{100 * max(pos, 1 - pos) / (1 + max(pos, 1 - pos)):.2f} %; a model above that accuracy uses the questions."
    ), acc


def _majority_check(results, scheds, params, majority: Optional[float]) -> List[str]:
    """Paraphrase: does each (schedule, parameterisation) beat always answering the majority label? (A constant
    baseline on the same held-out pairs, so each seed's accuracy is compared with it.) Without that, claims 1-3
    compare models that do not read the questions."""
    out = [
        "**Check: the models use the questions** (accuracy against always answering the majority label, on the same "
        "held-out pairs; without this the claims below compare models that answer one label).",
        "",
    ]
    if majority is None:
        return out + ["Not checked: the majority-class baseline could not be computed (see above).", ""]
    t = VerdictTable(("schedule", "params"))
    for name, suffix, parent in scheds:
        for p in params:
            acc = _seed_values(_config_runs(results, "paraphrase", p, suffix, parent), "eval/accuracy", 100.0)
            if acc:
                t.add(
                    compare(
                        acc,
                        majority,
                        metric="accuracy %",
                        higher_is_better=True,
                        label_a=f"{name} ({p})",
                        label_b=f"majority label ({majority:.2f} %)",
                        bound=BOUNDS["accuracy %"],
                    ),
                    name,
                    p,
                )
    return out + [
        f"Difference (model) − (majority label, {majority:.2f} %):",
        "",
        *t.lines(),
        "",
        every(t.verdicts, "scored above the majority label", subject="(schedule, parameterisation)"),
        "",
    ]


def _claims(results, task, scheds, params, mets, total: VerdictTable, found: Dict[str, Any]) -> List[str]:
    """The paper's three claims for ``task``; ``found`` receives the verdicts the evidence table reads."""
    key, lbl, hb, sc = mets[0]
    (sft_name, sft_suf, _), (late_name, late_suf, late_par) = scheds[0], scheds[-1]
    paper = PAPER[task]
    out = [
        f"### {task}",
        "",
        "**Claim 1: DPO gives a small, task-dependent gain over a strong SFT** "
        f"(paper, {paper[0]}: {paper[1]} -> {paper[2]}).",
        "",
    ]
    t1 = VerdictTable(("params", "metric"))
    for p in params:
        for k, metric_label, h, s in mets:
            late = _seed_values(_config_runs(results, task, p, late_suf, late_par), k, s)
            sft = _seed_values(_config_runs(results, task, p, sft_suf, None), k, s)
            v = t1.add(
                compare(
                    late,
                    sft,
                    metric=metric_label,
                    higher_is_better=h,
                    label_a=f"{late_name} ({p})",
                    label_b=f"{sft_name} ({p})",
                    bound=BOUNDS.get(metric_label),
                ),
                p,
                metric_label,
            )
            if p == "full" and k == key:  # the paper's numbers are full fine-tuning's
                found[f"dpo-gain-{task}"] = v
    c = t1.counts()
    said = ("better", "worse", "better" + SMALL, "worse" + SMALL, "negligible")
    others = "".join(f", {w} in {c[w]}" for w in said[2:] if c[w])
    out += [
        f"Difference ({late_name}) − ({sft_name}), per parameterisation and metric:",
        "",
        *t1.lines(),
        "",
        f"DPO after the longest SFT is better in {c['better']}, worse in {c['worse']}{others} and inconclusive in "
        f"{len(t1) - sum(c[w] for w in said)} of {len(t1)} (parameterisation, metric) cells (the paper's gain: "
        f"{paper[2] - paper[1]:+.2f} {paper[0]}).",
        "",
    ]
    out += [f"**Claim 2: full fine-tuning beats LoRA at matched depth** (same schedule, same epochs; {lbl}).", ""]
    t2 = VerdictTable(("schedule", "LoRA"))
    for name, suf, par in scheds:
        full = _seed_values(_config_runs(results, task, "full", suf, par), key, sc)
        for p in params:
            if p != "full":
                lora = _seed_values(_config_runs(results, task, p, suf, par), key, sc)
                v = t2.add(
                    compare(
                        full,
                        lora,
                        metric=lbl,
                        higher_is_better=hb,
                        label_a=f"full ({name})",
                        label_b=p,
                        bound=BOUNDS.get(lbl),
                    ),
                    name,
                    p,
                )
                if name == sft_name:  # SFT only, the largest rank last (the closest to full)
                    found[f"full-vs-lora-{task}"] = v
    out += [
        "Difference full − LoRA:",
        "",
        *t2.lines(),
        "",
        every(
            t2.verdicts,
            f"had a better {lbl} with full fine-tuning than with LoRA",
            subject="(schedule, rank) comparison",
            name=lambda v: f"{v.label_a} vs {v.label_b}",
        ),
        "",
    ]
    timing_lines, t3 = _timing_claim(results, task, found)
    out += timing_lines
    for t in (t1, t2, t3):
        total.extend(t)
    return out


class SftDpoStudy(Study):
    name = "sft-dpo"
    title = "S1: SFT vs DPO vs SFT->DPO, full fine-tuning vs LoRA"
    summary = "S1: SFT vs DPO vs SFT->DPO, full fine-tuning vs LoRA (arXiv 2603.20100)"
    sizes, smoke, smoke_small = SIZES, SMOKE, SMOKE_SMALL

    def plan(
        self, size: str, seeds: int, smoke: bool = False, data_dir: Optional[str] = None, out: Optional[Path] = None
    ) -> List[RunSpec]:
        return _plan(self.settings(size, smoke), seeds, smoke, data_dir, Path(out or f"runs/study-{self.name}-{size}"))

    def report(self, results: Dict[str, RunResult], out: Path, size: str) -> List[str]:
        return _report(results, out, size, self.cuts_lines(size))

    def cuts_lines(self, size: str) -> List[str]:
        return [small_cuts(), ""] if size == "small" else []  # per-task settings: formatted by small_cuts

    def small_budget(self, s: Dict[str, Any], seeds: int) -> List[Stage]:
        return _small_budget(s, seeds)


STUDY = SftDpoStudy()
