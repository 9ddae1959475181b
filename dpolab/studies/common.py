"""Pieces shared by the study definitions: model presets, the arithmetic task, warm-up stages, plots."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..stats import fmt_ci, mean_ci
from .report import markdown_table, plot_lines
from .runner import RunResult, RunSpec

# cpu size: a tiny GPT-2 with a character tokenizer (trains from scratch in about a minute)
CPU_MODEL = {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4}}
# paper size: a real pretrained model from the hub (needs a network and ideally a GPU)
PAPER_MODEL = {"name_or_path": "EleutherAI/pythia-410m"}


def data_root(data_dir: Optional[str]) -> Path:
    """The folder with the real data sets: ``--data-dir``, or ``../shared/data``."""
    return Path(data_dir or "../shared/data")


def base_config(s: Dict[str, Any], eval_examples: int) -> Dict[str, Any]:
    """What every run of a study size shares: its model (and LoRA), batch, logging, evaluation size, no progress bar."""
    base = {
        "model": s["model"],
        "train": {"batch_size": s["batch"], "log_every": 4},
        "eval": {"batch_size": 64, "max_examples": eval_examples},
        "output": {"progress": False},
    }
    if s.get("lora"):
        base["lora"] = dict(s["lora"])
    return base


def with_beta(loss: List[Dict[str, Any]], beta: float) -> List[Dict[str, Any]]:
    """A loss list with every entry's ``beta`` set."""
    return [deep_merge(c, {"params": {"beta": beta}}) for c in loss]


def deep_merge(base: Dict[str, Any], *updates: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for up in updates:
        for k, v in up.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = deep_merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
    return out


def arithmetic_data(
    n_train: int, n_eval: int, miss: str = "mixed", *, seed: int = 0, label_noise: float = 0.0
) -> Dict[str, Any]:
    """The built-in task with its problems fixed by ``seed`` (independent of the training seed)."""
    return {
        "task": "arithmetic",
        "max_length": 96,
        "task_args": {
            "n_train": n_train,
            "n_eval": n_eval,
            "miss": miss,
            "n_terms": [2, 3],
            "max_value": 20,
            "seed": seed,
            "label_noise": label_noise,
        },
    }


def arithmetic_accuracy_hook(data_cfg: Dict[str, Any], limit: int = 64):
    """Greedy answer accuracy on the task's held-out prompts."""
    from ..config import build_config
    from ..tasks import get_task, rows_for

    data = build_config({"data": data_cfg}).data
    _, eval_rows = rows_for(data.task, data.task_args, "preference", 0)
    return get_task(data.task).metric_hook(eval_rows, "answer_accuracy", max_new_tokens=24, limit=limit)


def mean_series(results: Sequence[RunResult], key: str):
    """Mean over runs (seeds) of a logged series, on the steps all runs share."""
    series = [dict(zip(*r.series(key))) for r in results]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    return steps, [mean_ci([s[x] for s in series])[0] for x in steps]


def curves(
    path: Path, groups: Dict[str, List[RunResult]], panels: Sequence[tuple[str, str]], title: Optional[str] = None
) -> Path:
    """One PNG: a panel per (metric key, panel title), a line per group (mean over its seeds)."""
    return plot_lines(
        path,
        [
            (
                ptitle,
                "nats" if "delta" in key or "logp" in key else "",
                {g: mean_series(rs, key) for g, rs in groups.items()},
            )
            for key, ptitle in panels
        ],
        title=title,
    )


def arithmetic_sft_spec(run_id: str, base: Dict[str, Any], s: Dict[str, Any], smoke: bool, hook) -> RunSpec:
    """The SFT warm-up on arithmetic chains that preference stages start from (checkpointed, so it resumes)."""
    return RunSpec(
        run_id,
        deep_merge(
            base,
            {
                "data": arithmetic_data(3000 if not smoke else 32, 128 if not smoke else 8),
                "train": {
                    "mode": "sft",
                    "max_steps": s["sft_steps"],
                    "batch_size": 32 if not smoke else 8,
                    "lr": s["sft_lr"],
                    "warmup_steps": 50 if not smoke else 0,
                    "schedule": "cosine",
                },
                "eval": {"every": max(1, s["sft_steps"] // 4)},
                "output": {"save_every": 250},
            },
        ),
        {"stage": "sft"},
        hooks=[hook],
    )


def pref_steps(s: Dict[str, Any]) -> int:
    """Optimiser steps of a probed preference stage: ``pref_epochs`` passes over ``n_pairs`` at ``batch``."""
    return max(1, s["pref_epochs"] * s["n_pairs"] // s["batch"])


def probed_preference(s: Dict[str, Any], steps: int) -> Dict[str, Any]:
    """The evaluation (probes every ``eval_every`` steps) and training settings of a probed preference stage."""
    return {
        "eval": {
            "every": s["eval_every"],
            "probes": True,
            "probe_examples": s["n_eval"],
            **({"probe_greedy_tokens": s["probe_greedy_tokens"]} if "probe_greedy_tokens" in s else {}),
        },
        "train": {
            "mode": "preference",
            "max_steps": steps,
            "lr": s["pref_lr"],
            "schedule": "constant",
            "warmup_steps": min(10, steps // 4),
        },
    }


def probed_budget(
    s: Dict[str, Any], measured: Dict[str, float], runs: int, what: str, sft_steps: int, max_length: int
) -> list:
    """The small size's stages of a probed study: one SFT warm-up on IMDb text, ``runs`` preference runs (``what``)
    and their probe evaluations, at the ``measured`` seconds per example (:mod:`dpolab.studies.budget`)."""
    from .budget import Stage

    steps = pref_steps(s)
    evals = steps // s["eval_every"] + 1  # the start (= the reference) and every eval_every steps
    return [
        Stage(
            f"SFT warm-up on IMDb text (batch {s['sft_batch']}, <= {max_length} tokens)",
            1,
            sft_steps,
            measured["sft"] * s["sft_batch"],
        ),
        Stage(f"{what} (batch {s['batch']} pairs)", runs, steps, measured["pref"] * s["batch"]),
        Stage(
            f"probe + held-out evaluations ({s['n_eval']} pairs, {evals} per run)",
            runs,
            evals,
            measured["probe_eval"] * s["n_eval"],
            "evals",
        ),
    ]


# -- facts for reports: per-seed values, table cells that show what is missing, the model that ran -----------------


def by_seed(runs: Sequence[RunResult], key: str, scale: float = 1.0) -> Dict[Any, Optional[float]]:
    """seed -> the final value of ``key`` (None where a run did not report it: missing, never 0)."""
    out: Dict[Any, Optional[float]] = {}
    for r in runs:
        v = r.final(key)
        out[r.spec.labels.get("seed", 0)] = None if v is None else v * scale
    return out


def verdict_rules(against: str, directions: str = "'better' / 'worse'") -> str:
    """The paragraph that says how a report's verdicts are worded, ``against`` naming the smallest meaningful
    difference (dpolab.stats.compare's ``bound``) and ``directions`` the words of a clear difference."""
    return (
        "Every judgement below is a paired comparison by seed (95 % t-interval of the mean difference), worded "
        f"against {against}: 'negligible' when the interval lies inside it; {directions} only when it excludes 0 "
        "and lies wholly beyond it; 'maybe negligible' when it excludes 0 but reaches inside it; 'inconclusive' "
        "when it contains 0 and reaches beyond it. A missing value is listed as missing, never read as 0."
    )


# The smallest change of a summed log-prob that a study report words as a change (issue 34): pass as
# compare(..., **NATS); the words then follow it (dpolab.stats) and NATS_TEXT says so in the report.
NATS: Dict[str, Any] = {"bound": 0.1, "unit": "nats"}
NATS_TEXT = verdict_rules(
    "the smallest meaningful change of a log-prob, ±0.1 nats", "'lower' / 'higher' (or 'worse' / 'better')"
)


# The range a reported measure can take: its mean's t-interval over seeds is shown clipped to it, as
# "mean (low to high)" (fmt_cell(..., limits=RANGES.get(key))); CLIPPED_TEXT says so in a report.
RANGES: Dict[str, Tuple[float, float]] = {
    "probe/reward_accuracy": (0.0, 1.0),
    "eval/answer_accuracy": (0.0, 1.0),
    "eval/oracle_reward": (-1.0, 1.0),
}
CLIPPED_TEXT = (
    "Shares and bounded scores are shown as mean (low to high): the 95 % t-interval over seeds clipped to "
    "the range the quantity can take."
)
# how a report's table cells read (ends a report's setting paragraph)
CELLS_TEXT = "Mean ± 95 % CI over seeds ('n=k of m' when a run did not report a value). " + CLIPPED_TEXT

# the column headers of the measures the probed studies (S3, S4) tabulate, by metric key
HEADERS = {
    "probe/delta/chosen": "Δ chosen",
    "probe/delta/rejected": "Δ rejected",
    "probe/margin": "margin",
    "probe/reward_accuracy": "reward acc.",
    "probe/delta/others": "Δ others",
    "probe/delta/random": "Δ random",
    "probe/delta/argmax_mass": "Δ argmax mass",
    "eval/answer_accuracy": "answer acc.",
}


def group_runs(results: Mapping[str, RunResult], *labels: str) -> Dict[Any, Any]:
    """The runs of the methods (those labelled ``method``) grouped by the values of ``labels``, nested in that order:
    ``group_runs(results, "tier", "method")[tier][method]`` is a list of runs (one per seed)."""
    out: Dict[Any, Any] = {}
    for r in results.values():
        if "method" not in r.spec.labels:
            continue
        node = out
        for label in labels[:-1]:
            node = node.setdefault(r.spec.labels[label], {})
        node.setdefault(r.spec.labels[labels[-1]], []).append(r)
    return out


def method_table(groups: Mapping[str, Sequence[RunResult]], keys: Sequence[str]) -> str:
    """A markdown table: a row per method, a column per metric key (final values, mean ± CI over its runs)."""
    rows = [[m] + [fmt_cell([r.final(k) for r in rs], limits=RANGES.get(k)) for k in keys] for m, rs in groups.items()]
    return markdown_table(["method"] + [HEADERS[k] for k in keys], rows)


def fmt_cell(values: Sequence[Optional[float]], digits: int = 2, limits: Optional[Tuple[float, float]] = None) -> str:
    """``mean ± CI`` of the values present, saying how many are missing when some (not all) are; with ``limits``
    (the range the quantity can take) ``mean (low to high)``, the interval clipped to it
    (:func:`dpolab.stats.fmt_ci`)."""
    present = [v for v in values if v is not None]
    text = fmt_ci(present, digits, limits)
    if present and len(present) < len(values):
        text += f" (n={len(present)} of {len(values)})"
    return text


_TOKENIZERS = {"char": "a character tokenizer", "gpt2-offline": "the GPT-2 BPE tokenizer"}


def _dims(cfg: Mapping[str, Any]) -> str:
    """``4 layers, width 128, 4 heads, vocabulary 100`` from a transformers config dict (what it has of them)."""

    def pick(*keys):
        return next((cfg[k] for k in keys if cfg.get(k) is not None), None)

    layers, width = pick("n_layer", "num_hidden_layers"), pick("n_embd", "hidden_size")
    heads, vocab = pick("n_head", "num_attention_heads"), pick("vocab_size")
    parts = (
        ([f"{layers} layer{'s' if layers != 1 else ''}"] if layers is not None else [])
        + ([f"width {width}"] if width is not None else [])
        + ([f"{heads} head{'s' if heads != 1 else ''}"] if heads is not None else [])
        + ([f"vocabulary {vocab:,}"] if isinstance(vocab, int) else [])
    )
    return ", ".join(parts)


def _tokenizer(tok: Optional[str]) -> str:
    return _TOKENIZERS.get(tok, "its own tokenizer") if tok in _TOKENIZERS or tok is None else f"the `{tok}` tokenizer"


def describe_model(model: Mapping[str, Any], lora: Optional[Mapping[str, Any]] = None) -> str:
    """The starting model of a run, in words, from its ``model`` config as run: a tiny preset is described by the
    config it builds, a model preset (``smollm2-135m``) by its name, a local folder by its saved config, anything else
    as a hub name; with the run's ``lora`` config, how it was fine-tuned."""
    text = _describe_base(model)
    if lora and lora.get("enabled"):
        text += f", fine-tuned with LoRA (r = {lora.get('r', 8)}, alpha = {lora.get('alpha', 16.0):g})"
    return text


def _describe_base(model: Mapping[str, Any]) -> str:
    name = str(model.get("name_or_path", "?"))
    from ..models.presets import MODEL_PRESETS

    if name in MODEL_PRESETS:
        p = MODEL_PRESETS[name]
        return (
            f"the pretrained {p.title} (model preset `{name}`: the {Path(p.file).name} file of the {p.dist} "
            f"{p.version} package, de-quantised to float32), with its own tokenizer"
        )
    tok = model.get("tokenizer")
    try:
        folder = Path(name)
        if (folder / "config.json").exists():
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            meta_file = folder / "dpolab_model.json"
            origin = json.loads(meta_file.read_text(encoding="utf-8")).get("model", {}) if meta_file.exists() else {}
            if tok is None:
                tok = origin.get("tokenizer") or (
                    "char" if str(origin.get("name_or_path", "")).startswith("tiny-") else None
                )
            dims = _dims(cfg)
            return (
                f"a {cfg.get('model_type', 'transformer')} model ({dims + '; ' if dims else ''}saved at `{name}`), "
                f"with {_tokenizer(tok)}"
            )
        from ..models.load import TINY_PRESETS

        if name in TINY_PRESETS:
            from ..config import ModelConfig
            from ..models.load import load_tokenizer, tiny_config

            tokenizer = load_tokenizer(ModelConfig(name_or_path=name, tokenizer=tok))
            cfg = tiny_config(name, tokenizer, dict(model.get("tiny") or {})).to_dict()
            dims = _dims(cfg)
            return (
                f"a tiny {cfg.get('model_type', name)} built from scratch (`{name}`{': ' + dims if dims else ''}), "
                f"with {_tokenizer(tok or 'char')}"
            )
    except Exception:  # noqa: BLE001 - a description must never stop a report
        pass
    if name.startswith(("/", "./", "../", "~")):
        return f"the model at `{name}` (not found when this report was written), with {_tokenizer(tok)}"
    return f"`{name}` from the Hugging Face hub, with {_tokenizer(tok)}"
