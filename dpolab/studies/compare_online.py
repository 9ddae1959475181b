"""On-policy arms: ``online:<method>`` in ``dpolab compare``, and the on-policy twin of a study's preference run.

An offline arm trains its loss list on fixed pairs. Its on-policy twin (``train.mode=online``,
:mod:`dpolab.engine.objectives.online`) trains the same loss list from the same starting model with the same seed on
pairs it samples from the current policy, for the prompts of the same training pairs, scored by a judge
(``online.judge``). Same budget: the same optimiser steps (``--budget``), learning rate and schedule, and as many
prompts per step as the offline arm has pairs per step (``train.batch_size``, the same seeded order), each prompt
giving ``online.samples_per_prompt`` samples and their judged pairs; the twin spends more compute per step (sampling
and judging) and trains on as many pairs per step as its judge separates.

What the twin's config changes, and nothing else: ``train.mode=online``, ``online.judge``, ``reference.mode``
(``precomputed`` becomes ``auto``, a live reference: no table can hold sampled pairs) and ``eval.probes`` (off: the
online objective has no probes); the probes come instead from :class:`~dpolab.studies.compare_measures.HeldOutProbes`
on the same held-out pairs, logged as ``eval/probe/...`` and read back as ``probe/...`` by :func:`as_offline_measures`,
so the report compares every arm on the same measures.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, Optional

from ..config import ConfigError
from .common import deep_merge
from .compare_measures import HeldOutProbes
from .runner import RunResult, RunSpec

PREFIX = "online:"


def is_online(label: str) -> bool:
    """Whether a comparison's method label names an on-policy arm (``online:dpo``)."""
    return str(label).startswith(PREFIX)


def offline_method(label: str) -> str:
    """The method text after ``online:`` (``online:dpo:beta=0.2`` -> ``dpo:beta=0.2``); a one-line error if empty."""
    rest = str(label)[len(PREFIX) :].strip()
    if not rest:
        raise ConfigError(f"--methods '{label}': name the method after online: (e.g. online:dpo)")
    return rest


def check_judge(spec: Optional[str], option: str = "--judge") -> str:
    """The judge spec, its form checked (one line naming ``option`` when it names no judge)."""
    from ..engine.judges import check_judge_spec

    try:
        check_judge_spec(spec or "")
    except ConfigError as e:
        raise ConfigError(f"{option}: {str(e).removeprefix('online.judge: ')}") from None
    return str(spec).strip()


def online_config(cfg: Dict[str, Any], judge: str, online: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The on-policy twin of an offline preference run's config (see the module docstring); ``online``: other
    ``online.*`` settings (samples per prompt, temperature, ...)."""
    mode = (cfg.get("reference") or {}).get("mode", "auto")
    return deep_merge(
        cfg,
        {
            "train": {"mode": "online"},
            "online": {**(online or {}), "judge": judge},
            "reference": {"mode": "auto" if mode == "precomputed" else mode},
            "eval": {"probes": False},
        },
    )


def online_spec(spec: RunSpec, judge: str, *, run_id: Optional[str] = None, label: Optional[str] = None) -> RunSpec:
    """A study's on-policy arm: the twin of the offline preference run ``spec`` (same data, start, seed, steps,
    evaluations), with the held-out probes ``spec`` took from its objective (when its config asks for probes) now
    from a hook. ``label`` replaces ``labels['method']``; ``run_id`` defaults to ``<spec.run_id>-online``. The study's
    report reads the probes through :func:`as_offline_measures`."""
    probes = bool((spec.config.get("eval") or {}).get("probes"))
    hooks = list(spec.hooks) + ([HeldOutProbes(split_seed=spec.data_seed)] if probes else [])
    labels = dict(spec.labels)
    if label is not None:
        labels["method"] = label
    return replace(
        spec,
        run_id=run_id or f"{spec.run_id}-online",
        config=online_config(spec.config, judge),
        labels=labels,
        hooks=hooks,
    )


def as_offline_measures(result: RunResult) -> RunResult:
    """An on-policy run's results as an offline run's measures: the hook's ``eval/probe/...`` read as ``probe/...``
    (what the preference objective logs), and ``eval/reward_ties`` dropped (its online value counts the ties of the
    sampled pairs, not of the held-out pairs). Any other run is returned as it is."""
    if result.summary.get("mode") != "online":
        return result

    def fix(row: Dict[str, Any]) -> Dict[str, Any]:
        out = {k: v for k, v in row.items() if k != "eval/reward_ties"}
        out.update({k[len("eval/") :]: v for k, v in row.items() if k.startswith("eval/probe/")})
        return out

    summary = dict(result.summary)
    for key in ("first_eval", "final_eval"):
        if isinstance(summary.get(key), dict):
            summary[key] = fix(summary[key])
    return replace(result, summary=summary, metrics=[fix(r) for r in result.metrics])
