"""The report of ``dpolab compare``: what each method did on the held-out pairs, judged against a baseline.

Every judgement is a :class:`dpolab.stats.Verdict` (paired by seed, 95 % t-interval) against the measure's smallest
meaningful difference (``BOUNDS``, stated in the report): 'negligible' when the interval lies inside it, a direction
only when the interval lies wholly beyond it, 'maybe negligible' in between, 'inconclusive' when it contains 0 and
reaches beyond it. The summary's sentences are those verdicts' own sentences and lists built from their words, never
a recommendation the intervals do not support. Shares (reward accuracy, ties) and the KL estimate, which cannot be
negative, get t-intervals clipped to their range (``RANGES``), so no cell shows a value the quantity cannot take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..stats import Verdict, VerdictTable, compare
from .common import curves, describe_model, fmt_cell
from .report import markdown_table
from .run import runs_sections
from .runner import RunResult

# (metric key, name in the report, higher is better: True / None = no direction is better)
METRICS = [
    ("probe/reward_accuracy", "reward accuracy", True),
    ("eval/reward_ties", "ties", None),
    ("probe/margin", "margin", None),
    ("probe/delta/chosen", "Δ chosen", None),
    ("probe/delta/rejected", "Δ rejected", None),
    ("probe/delta/others", "Δ others", None),
    ("probe/delta/greedy", "Δ greedy", None),
    ("eval/compare/kl", "KL to ref.", None),
    ("eval/compare/sample_tokens", "sample length", None),
    ("eval/compare/rm_reward", "RM reward", True),
    ("eval/compare/oracle", "oracle", True),
    ("eval/compare/judge", "judge score", True),
]
# the smallest difference worth a word, per measure: (size, unit); a measure not here has none stated (the report
# says so): a reward model's or an oracle's scale is its own
BOUNDS = {
    "probe/reward_accuracy": (0.02, ""),  # a share of the pairs
    "eval/reward_ties": (0.02, ""),
    "probe/margin": (0.1, "nats"),
    "probe/delta/chosen": (0.1, "nats"),
    "probe/delta/rejected": (0.1, "nats"),
    "probe/delta/others": (0.1, "nats"),
    "probe/delta/greedy": (0.1, "nats"),
    "eval/compare/kl": (0.1, "nats"),
    "eval/compare/sample_tokens": (1.0, "tokens"),
}
# the range a measure's value can take: its mean's t-interval over seeds is clipped to it, and a paired difference's
# to (low - high, high - low)
RANGES = {
    "probe/reward_accuracy": (0.0, 1.0),
    "eval/reward_ties": (0.0, 1.0),
    "eval/compare/kl": (0.0, float("inf")),
    "eval/compare/sample_tokens": (0.0, float("inf")),
}
RUN_COSTS = [("wall_clock_s", "train s"), ("peak_memory_mb", "peak RSS MB")]
SUMMARY_KEYS = (
    "probe/reward_accuracy",
    "probe/margin",
    "probe/delta/chosen",
    "probe/delta/rejected",
    "eval/compare/kl",
    "eval/compare/rm_reward",
    "eval/compare/oracle",
    "eval/compare/judge",
)
EXPLAIN = {
    "probe/reward_accuracy": "share of held-out pairs whose chosen response gained more log-prob than the rejected one "
    "since the start (ties, margins within float32 rounding, count as misses)",
    "eval/reward_ties": "share of held-out pairs whose log-ratio margin is 0 to within float32 rounding of the sums "
    "it is made of (the eval code's count; methods with a reference only)",
    "probe/margin": "Δ chosen − Δ rejected, nats",
    "probe/delta/chosen": "change of the summed log-prob of the held-out chosen responses against the reference (the "
    "starting model), nats",
    "probe/delta/rejected": "the same for the rejected responses",
    "probe/delta/others": "the same for another prompt's chosen response (an unrelated, fluent response)",
    "probe/delta/greedy": "the same for the starting model's greedy response",
    "eval/compare/kl": "estimate of KL(π‖π_ref) over responses sampled from π: per sampled token, with r = "
    "π_ref/π, (r − 1) − log r (never negative, unbiased), summed over the response and averaged "
    "over responses, nats",
    "eval/compare/sample_tokens": "mean length of the sampled responses, tokens",
    "eval/compare/rm_reward": "mean reward-model score of the sampled responses",
    "eval/compare/oracle": "mean of the oracle's score of the sampled responses",
    "eval/compare/judge": "mean of the judge's (--judge) score of the sampled responses (task:arithmetic: the share "
    "whose final value is right)",
}


def _diff_limits(key: str) -> Optional[tuple]:
    """The range a paired difference of ``key`` can take (None: unbounded)."""
    lo, hi = RANGES.get(key, (float("-inf"), float("inf")))
    return None if hi - lo == float("inf") else (lo - hi, hi - lo)


def _cell(rs: Sequence[RunResult], key: str) -> str:
    return fmt_cell([value(r, key) for r in rs], limits=RANGES.get(key))


def measure_note(key: str) -> str:
    """What the report says of a measure's smallest meaningful difference and of its interval's form."""
    if key in BOUNDS:
        size, unit = BOUNDS[key]
        text = f"smallest meaningful difference ±{size:g}" + (f" {unit}" if unit else "")
    else:
        text = (
            "no smallest meaningful difference stated (its scale is its own), so its verdicts say only whether "
            "the interval excludes 0"
        )
    if key in RANGES:
        lo, hi = RANGES[key]
        span = f"[{lo:g}, {hi:g}]" if hi != float("inf") else f"≥ {lo:g}"
        text += f"; its cells show mean (low to high), the 95 % t-interval over seeds clipped to {span}"
    return text


def value(r: RunResult, key: str) -> Optional[float]:
    """A run's final value of ``key``; ties only where the method has a reference (else they mean something else)."""
    if key == "eval/reward_ties" and r.summary.get("reference_mode") is None:
        return None
    return r.final(key)


def _seeds(runs: Sequence[RunResult], key: str) -> Dict[Any, Optional[float]]:
    return {r.spec.labels.get("seed", 0): value(r, key) for r in runs}


def _present(groups: Dict[str, List[RunResult]]) -> List[tuple]:
    return [
        (k, name, hib) for k, name, hib in METRICS if any(value(r, k) is not None for rs in groups.values() for r in rs)
    ]


def _setting(opts, prep, methods: Dict[str, Any], baseline: str, groups: Dict[str, List[RunResult]]) -> str:
    any_run = next(iter(groups.values()))[0]
    c = any_run.spec.config
    train = c.get("train", {})
    model = dict(c.get("model", {}))
    start = model.pop("init_from", None)
    data = opts.data or (
        f"the built-in task `{opts.task}`"
        if opts.task
        else c.get("data", {}).get("train") or c.get("data", {}).get("task")
    )
    held = (
        f"`{opts.eval_data}`"
        if opts.eval_data
        else "the task's own held-out problems"
        if opts.task
        else (
            f"a held-out split of {opts.eval_fraction:g} of the rows (split seed {opts.split_seed}, "
            "the same for every run)"
        )
    )
    return (
        f"Setting: {describe_model(model)}"
        + (f" (starting weights made once from seed {opts.model_seed}, shared by every run)" if start else "")
        + f", {'LoRA' if c.get('lora', {}).get('enabled') else 'full fine-tuning'}; training pairs: {data} "
        f"({prep.n_train} pairs); held-out pairs: {held} ({prep.n_eval} pairs, probes on "
        f"{c.get('eval', {}).get('probe_examples')}); {train.get('max_steps') or prep.steps} steps of batch "
        f"{train.get('batch_size', 8)} at lr {train.get('lr', 5e-6)} per run ({opts.budget}); {len(methods)} method(s) "
        f"x {opts.seeds} seed(s) (seeds vary the data order); baseline: **{baseline}**. Values are at the end of "
        "training; mean ± 95 % CI over seeds, or for measures with a bounded range (shares, the KL, lengths) "
        "mean (low to high), the t-interval clipped to that range ('n=k of m' when a run did not report a value)."
    )


def _online_lines(opts, groups: Dict[str, List[RunResult]]) -> List[str]:
    """What the on-policy arms (``online:<method>``) are, and what judged them: a paragraph, or nothing."""
    from ..config import build_config

    online = [m for m, rs in groups.items() if rs and rs[0].spec.config.get("train", {}).get("mode") == "online"]
    if not online:
        return []
    o = build_config(groups[online[0]][0].spec.config).online
    arms = ", ".join(f"**{m}**" for m in online)
    return [
        f"On-policy arms: {arms} (`train.mode=online`). Each optimiser step takes as many prompts as an offline arm "
        "takes pairs (the prompts of the same training pairs, in the same seeded order), samples "
        f"{o.samples_per_prompt} completions per prompt from the current policy (temperature {o.temperature:g}, "
        f"top-p {o.top_p:g}, at most {o.max_new_tokens} tokens), scores them with the judge `{o.judge}`, pairs them "
        f"({o.pairs}; exact ties skipped) and trains the method's loss on those pairs against a live reference (the "
        "starting model); the same starting model, seeds, steps, learning rate and schedule as the offline arms. "
        "They are measured like every arm on the same held-out pairs: their probes (reward accuracy, margin, Δ) "
        "come from the same probe set, scored by compare's hook instead of the objective; 'ties' is not reported "
        "for them (their own counts the sampled pairs' ties).",
        "",
    ]


def _reference_lines(reference: Dict[str, Any], n_ref_runs: int, results: Dict[str, RunResult]) -> List[str]:
    if not reference:
        return ["No method needs a reference model, so no reference table was computed."]
    cold, warm = reference["setup_cold_s"], reference["setup_warm_s"]
    per_run = cold - warm
    total_train = sum(r.summary.get("wall_clock_s", 0.0) for r in results.values())
    when = "" if reference.get("computed_now", True) else " when the table was computed, by an earlier invocation"
    return [
        f"The reference log-probs of all {reference['examples']} training and held-out pairs were computed once "
        f"(`{Path(reference['cache_file']).name}`) and shared by the {n_ref_runs} runs whose method needs a reference. "
        f"Measured{when}: a run's set-up took {cold:.2f} s with an empty cache (computing the table) and {warm:.2f} s "
        f"with the table in place, so computing it costs {per_run:.2f} s per run; sharing one table saved "
        f"{max(0, n_ref_runs - 1)} × {per_run:.2f} = {max(0, n_ref_runs - 1) * per_run:.1f} s "
        f"(the runs' training time in all: {total_train:.0f} s)."
    ]


def _verdicts(groups: Dict[str, List[RunResult]], baseline: str, present: Sequence[tuple]):
    """Per metric: a verdict table of every method against the baseline; and Δ chosen of every method against 0."""
    tables: Dict[str, VerdictTable] = {}
    against: Dict[str, Dict[str, Verdict]] = {}
    base = groups[baseline]
    for key, name, hib in present:
        table = VerdictTable(("method", f"{name} (mean ± CI)"))
        for m, rs in groups.items():
            if m == baseline:
                continue
            size, unit = BOUNDS.get(key, (None, ""))
            v = compare(
                _seeds(rs, key),
                _seeds(base, key),
                metric=name,
                higher_is_better=hib,
                label_a=m,
                label_b=baseline,
                bound=size,
                unit=unit,
                limits=_diff_limits(key),
            )
            table.add(v, m, _cell(rs, key))
            against.setdefault(key, {})[m] = v
        tables[key] = table
    size, unit = BOUNDS["probe/delta/chosen"]
    zero = {
        m: compare(
            _seeds(rs, "probe/delta/chosen"),
            0.0,
            metric="Δ chosen",
            higher_is_better=None,
            label_a=m,
            label_b="0",
            bound=size,
            unit=unit,
        )
        for m, rs in groups.items()
    }
    return tables, against, zero


def _summary(against: Dict[str, Dict[str, Verdict]], zero: Dict[str, Verdict], baseline: str, present) -> List[str]:
    names = {k: n for k, n, _ in present}
    lines = [
        "Each sentence below is one paired comparison (by seed; 95 % t-interval of the mean difference), worded "
        "against the measure's smallest meaningful difference, which each sentence states: 'negligible' means the "
        "whole interval lies inside ± that size; 'higher' / 'lower' (or 'better' / 'worse') that it excludes 0 "
        "and lies wholly beyond it; 'maybe negligible' that it excludes 0 but reaches inside it; 'inconclusive' "
        "that it contains 0 and reaches beyond it. A measure with no size stated is judged against 0 alone.",
        "",
        "**The chosen responses' log-prob against the start** (does a method lower the likelihood of what it "
        "should prefer?):",
        "",
    ]
    lines += [f"- {v.sentence()}" for v in zero.values()]
    for key in SUMMARY_KEYS:
        if key not in against:
            continue
        lines += ["", f"**{names[key]} against {baseline}:**", ""]
        lines += [f"- {v.sentence()}" for v in against[key].values()]
        hib = next(h for k, _, h in present if k == key)
        if hib:
            said = {
                w: [m for m, v in against[key].items() if v.word == w]
                for w in ("better", "worse", "better, maybe negligible", "worse, maybe negligible", "negligible")
            }
            rest = [m for m, v in against[key].items() if not any(m in ms for ms in said.values())]
            extra = "".join(f"; {w}: {', '.join(ms)}" for w, ms in list(said.items())[2:] if ms)
            lines.append(
                f"- In short: better than {baseline} on {names[key]}: "
                f"{', '.join(said['better']) or 'none shown'}; worse: "
                f"{', '.join(said['worse']) or 'none shown'}{extra}; inconclusive: {', '.join(rest) or 'none'}."
            )
    return lines


def write_report(
    results: Dict[str, RunResult],
    out: Path,
    *,
    opts,
    methods: Dict[str, Any],
    baseline: str,
    prep,
    reference: Dict[str, Any],
    n_ref_runs: int,
    wall: float,
    executor: str,
    command: str,
) -> Path:
    from ..atomic import write_text

    groups: Dict[str, List[RunResult]] = {m: [] for m in methods}
    for r in results.values():
        groups[r.spec.labels["method"]].append(r)
    present = _present(groups)
    tables, against, zero = _verdicts(groups, baseline, present)
    values = [
        [m]
        + [_cell(rs, k) for k, _, _ in present]
        + [fmt_cell([r.summary.get(k) for r in rs], 1) for k, _ in RUN_COSTS]
        for m, rs in groups.items()
    ]
    panels1 = [
        (k, t)
        for k, t in (
            ("probe/delta/chosen", "Δ log p(chosen)"),
            ("probe/delta/rejected", "Δ log p(rejected)"),
            ("probe/delta/others", "Δ log p(others)"),
            ("probe/delta/greedy", "Δ log p(greedy)"),
        )
        if any(k == p[0] for p in present)
    ]
    panels2 = [
        (k, t)
        for k, t in (
            ("probe/margin", "margin"),
            ("probe/reward_accuracy", "reward accuracy"),
            ("eval/compare/kl", "KL to reference"),
            ("eval/compare/sample_tokens", "sample length"),
            ("eval/compare/rm_reward", "RM reward"),
            ("eval/compare/oracle", "oracle"),
            ("eval/compare/judge", "judge score"),
        )
        if any(k == p[0] for p in present)
    ]
    png1 = curves(
        out / "compare_logprobs.png",
        groups,
        panels1,
        title="held-out log-probs against the reference (mean over seeds)",
    )
    png2 = curves(
        out / "compare_measures.png", groups, panels2, title="held-out measures over training (mean over seeds)"
    )
    lines = [
        f"# Compare: {', '.join(methods)}",
        "",
        f"Generated by `{command}` (executor: {executor}).",
        "",
        _setting(opts, prep, methods, baseline, groups),
        "",
        *_online_lines(opts, groups),
        "## Summary",
        "",
        *_summary(against, zero, baseline, present),
        "",
        "## Every method, every measure",
        "",
        markdown_table(["method"] + [n for _, n, _ in present] + [n for _, n in RUN_COSTS], values),
        "",
        *[f"- **{n}**: {EXPLAIN[k]}; {measure_note(k)}." for k, n, _ in present],
        "",
        f"![held-out log-probs]({png1.name})",
        "",
        f"![held-out measures]({png2.name})",
        "",
        f"## Against {baseline}, measure by measure",
        "",
    ]
    for key, name, _ in present:
        lines += [
            f"### {name}",
            "",
            f"{measure_note(key)[0].upper()}{measure_note(key)[1:]}.",
            "",
            *(tables[key].lines() or ["(only the baseline ran)"]),
            "",
        ]
    lines += [
        "## Shared reference",
        "",
        *_reference_lines(reference, n_ref_runs, results),
        "",
        *runs_sections(results, wall),
    ]
    report = out / "report.md"
    write_text(report, "\n".join(lines))
    return report
