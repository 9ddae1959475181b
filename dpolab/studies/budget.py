"""Time budgets of study sizes: the stages a size runs, how many runs and steps each, the measured seconds per
step, and the minutes that makes (``dpolab study NAME --size small --dry-run`` prints it).

A study that has budgets implements :meth:`dpolab.studies.study.Study.small_budget`, returning :class:`Stage` rows built
from its size definition (so the table follows the definition) and the measured costs in :data:`MEASURED`. The costs are
measured, never assumed: :data:`MEASURED` records the command, the machine's load and what was timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

# Seconds per unit on SmolLM2-135M-Instruct (preset smollm2-135m, float32, LoRA r=16 unless the key says full),
# measured by benchmarks/small_sizes.py: a few real dpolab steps of each stage at a reduced batch (the first is
# warm-up),
# timed as the process CPU seconds of one step with ONE torch thread, divided by the batch. On the shared machine the
# measurement ran under a load of 14-20 on 2 cores, so wall-clock was meaningless (5-10x inflated) and 2-thread CPU time
# was inflated too (waiting threads spin: 5x the 1-thread CPU time for the same step); 1-thread CPU time is not. The
# budget uses it as the wall-clock of a step on 2 cores, i.e. it assumes no gain from the second core: that is the
# margin (a second core typically saves 30-45 %). The raw records: benchmarks/results/small_sizes.jsonl; the tables:
# docs/results/SMALL_SIZES.md.
MEASURED: Dict[str, Any] = {
    # sampling (temperature 1, a batch of 16 review prompts, 48 new tokens): seconds per generated token of one sample
    "gen_token": 1.256 / 48,
    # sft: an IMDb review SFT sequence timed at <= 192 tokens (the sizes use <= 96: an over-estimate)
    # score = forward only: a third of the reward model's forward + backward per pair (derived, not timed)
    "madpo": {"sft": 5.19 / 2, "rm": 2.85 / 2, "pref": 3.58 / 2, "score": 2.85 / 2 / 3},
    # S1 per example. Timed at the study's own batches (16 quora prompts of <= 64 tokens, 8 sonnets of <= 224 tokens;
    # the mean of steps 2-5 of 5, 1 thread, load 3.5-4.1 on 2 cores; stages s1-*-b16 / -b8 with STEPS=5): SFT full and
    # LoRA on both tasks, DPO full and LoRA on quora pairs; the paraphrase evaluation (label log-probs of 64 held-out
    # prompts in one batch; stage s1-para-eval-b64): 0.209 since it reads them by the fast path, timed in alternation
    # with the full-logits code, which took 0.344 in the same rounds at a load of 2.7 (0.283 at load 4 before).
    # Derived, not timed: sonnet DPO (sonnet SFT x the quora DPO / SFT ratio of the same parameterisation) and the
    # sonnet NLL evaluation (half a LoRA SFT example)
    "sft-dpo": {
        "paraphrase": {
            "sft-full": 11.87 / 16,
            "sft-lora": 7.53 / 16,
            "dpo-lora": 8.62 / 16,
            "dpo-full": 11.5 / 16,
            "eval": 0.209,
        },
        "sonnets": {
            "sft-full": 20.69 / 8,
            "sft-lora": 15.18 / 8,
            "dpo-lora": 15.18 / 8 * 8.62 / 7.53,
            "dpo-full": 20.69 / 8 * 11.5 / 11.87,
            "eval": 15.18 / 8 / 2,
        },
    },
    # probe_eval per held-out pair (derived, not timed): 5 probe responses + chosen and rejected through the policy and
    # the reference = 9 forwards of a pair's sequence; a DPO pair's step is 8 (2 sequences x forward + backward ~ 3,
    # plus 2 reference forwards)
    # pref: a DPO pair of imdb-cad kind=low (minimal edits; timed)
    "dpop": {"sft": 5.19 / 2, "pref": 3.75 / 2, "probe_eval": 9 / 8 * 3.75 / 2},
    "squeeze": {"sft": 5.19 / 2, "pref": 3.75 / 2, "probe_eval": 9 / 8 * 3.75 / 2},
}


@dataclass(frozen=True)
class Stage:
    name: str
    runs: int
    units: int  # optimiser steps per run (or generated samples, see ``unit``)
    seconds_per_unit: float
    unit: str = "steps"

    @property
    def minutes(self) -> float:
        return self.runs * self.units * self.seconds_per_unit / 60.0


def total_minutes(stages: Sequence[Stage]) -> float:
    return sum(s.minutes for s in stages)


def budget_lines(stages: Sequence[Stage], title: str = "") -> List[str]:
    """A markdown table of the stages and their total."""
    lines = [title, ""] if title else []
    lines += ["| stage | runs | per run | s / unit | minutes |", "|---|---:|---:|---:|---:|"]
    for s in stages:
        lines.append(f"| {s.name} | {s.runs} | {s.units} {s.unit} | {s.seconds_per_unit:.2f} | {s.minutes:.1f} |")
    lines.append(
        f"| **total** | {sum(s.runs for s in stages if s.unit == 'steps')} training runs | | | "
        f"**{total_minutes(stages):.0f}** |"
    )
    return lines


def dry_run(
    name: str,
    *,
    size: str = "cpu",
    seeds: Optional[int] = None,
    smoke: bool = False,
    out: Optional[str] = None,
    data_dir: Optional[str] = None,
) -> str:
    """What ``dpolab study NAME --dry-run`` prints: the runs the grid would train and the size's time budget."""
    from . import get_study

    study = get_study(name)
    seeds, out_dir = study.resolve(size, seeds, smoke, out)
    specs = study.plan(size, seeds, smoke, data_dir=data_dir, out=out_dir)
    lines = [f"study {name} ({size}{', smoke' if smoke else ''}, {seeds} seed(s)): {len(specs)} runs -> {out_dir}"]
    lines += [f"  {s.run_id}" + (f"  (from {s.init_from})" if s.init_from else "") for s in specs]
    stages = study.budget(size, seeds) if not smoke else None
    if stages:
        lines += [
            "",
            *budget_lines(
                stages,
                f"Time budget ({size}, {seeds} seeds; measured CPU seconds of one thread per "
                "unit, see docs/results/SMALL_SIZES.md). The minutes are for one run at a "
                "time; `--parallel 2 --cpus 1` trains two at once on 2 cores (at best half "
                "the wall-clock, when neither waits for the other):",
            ),
        ]
    else:
        lines += ["", f"(no measured time budget for size '{size}'" + (" at smoke scale)" if smoke else ")")]
    return "\n".join(lines)
