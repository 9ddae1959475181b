"""A pre-registered regime choice (a pilot) that a study runs before its confirmation runs.

The study declares, before anything trains: a grid of settings (e.g. learning rate x preference epochs), a
:class:`Rule` (code, and its text, printed verbatim in the report) that picks one cell from the pilot's paired
intervals, the pilot's own seeds and a fallback cell for when no cell meets the rule. The pilot trains the baseline
(e.g. DPO) through the ordinary runner (:func:`dpolab.studies.runner.run_grid`: resumable, its own run folders under
``runs/pilot/``) on its own slice of the pairs, drawn disjoint from the confirmation's (:func:`disjoint_slice`,
checked). Cells run in the rule's order and the pilot stops at the first cell that meets it, so a cell after it is
never run (the rule would not pick it anyway). The choice is written to ``<study>/pilot/choice.json`` with the
pilot's numbers; a resumed study reads it back and never chooses again (:func:`run_pilot`); a study whose declared
pilot differs from the recorded one is refused. :func:`pilot_section` is the report's section, from that file alone.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..stats import LEVEL, Verdict, compare
from .report import markdown_table
from .runner import RunResult, RunSpec, run_grid

CHOICE_FILE = Path("pilot") / "choice.json"


@dataclass(frozen=True)
class Rule:
    """Pick the first cell, in the order of ``order`` (the grid's settings, each ascending: the first key varies
    slowest), whose paired interval of ``metric`` lies wholly below ``-margin`` (``below``) or above ``margin``."""

    text: str  # the rule in words, printed verbatim in the report
    order: Tuple[str, ...]  # settings, most important first; each ascending
    metric: str = "probe/delta/chosen"
    below: bool = True
    margin: float = 0.0  # how far beyond 0 the whole interval must lie (in the metric's unit)

    def ordered(self, cells: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        return sorted((dict(c) for c in cells), key=lambda c: tuple(c[k] for k in self.order))

    def meets(self, verdict: Verdict) -> bool:
        if not verdict.has_interval:
            return False
        return verdict.high < -self.margin if self.below else verdict.low > self.margin

    def pick(self, verdicts: Sequence[Tuple[Mapping[str, Any], Verdict]]) -> Optional[Dict[str, Any]]:
        """The cell the rule picks among ``(cell, verdict)`` pairs (any order); None when no cell meets it."""
        met = [dict(c) for c, v in verdicts if self.meets(v)]
        return self.ordered(met)[0] if met else None


@dataclass(frozen=True)
class Pilot:
    """A declared pilot: ``grid`` (setting -> values), ``rule``, ``seeds`` (never the confirmation's), the
    ``fallback`` cell (with ``fallback_why``: why that cell), what it trains (``what``), how each setting is named
    in the report (``names``) and the slice of pairs it trains and probes on (``data``: words, e.g. sizes)."""

    grid: Mapping[str, Tuple[Any, ...]]
    rule: Rule
    seeds: Tuple[int, ...]
    fallback: Mapping[str, Any]
    fallback_why: str
    what: str
    names: Mapping[str, str] = field(default_factory=dict)
    data: str = ""
    short: Mapping[str, str] = field(default_factory=dict)  # setting -> its short name in run ids (lr, ep)

    def __post_init__(self) -> None:
        if set(self.rule.order) != set(self.grid):
            raise ValueError(f"the rule orders {self.rule.order}, the grid has {tuple(self.grid)}")
        if dict(self.fallback) not in self.cells():
            raise ValueError(f"the fallback cell {dict(self.fallback)} is not in the grid")
        if len(self.seeds) < 2:
            raise ValueError("a pilot needs at least two seeds: the rule reads a paired interval")

    def cells(self) -> List[Dict[str, Any]]:
        """Every cell of the grid, in the rule's order."""
        keys = list(self.grid)
        return self.rule.ordered(dict(zip(keys, vals)) for vals in itertools.product(*self.grid.values()))

    def cell_id(self, cell: Mapping[str, Any]) -> str:
        return "-".join(f"{self.short.get(k, k)}{v:g}" for k, v in cell.items())

    def describe(self, cell: Mapping[str, Any]) -> str:
        return ", ".join(f"{self.names.get(k, k)} = {v:g}" for k, v in cell.items())

    def definition(self) -> Dict[str, Any]:
        """What the choice was made under (recorded with it; a resumed study must declare the same)."""
        return {
            "grid": {k: list(v) for k, v in self.grid.items()},
            "rule": self.rule.text,
            "order": list(self.rule.order),
            "metric": self.rule.metric,
            "seeds": list(self.seeds),
            "fallback": dict(self.fallback),
            "what": self.what,
            "data": self.data,
            "names": dict(self.names),
            "short": dict(self.short),
            "fallback_why": self.fallback_why,
            "below": self.rule.below,
            "margin": self.rule.margin,
        }

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> "Pilot":
        """The pilot a recorded :meth:`definition` declares."""
        rule = Rule(d["rule"], tuple(d["order"]), d["metric"], d.get("below", True), d.get("margin", 0.0))
        return cls(
            {k: tuple(v) for k, v in d["grid"].items()},
            rule,
            tuple(d["seeds"]),
            d["fallback"],
            d["fallback_why"],
            d["what"],
            d.get("names", {}),
            d.get("data", ""),
            d.get("short", {}),
        )

    def check_seeds(self, confirmation_seeds: Iterable[Any]) -> None:
        shared = sorted(set(self.seeds) & set(confirmation_seeds))
        if shared:
            raise ConfigError(
                f"the pilot's seeds {list(self.seeds)} and the confirmation's share {shared}: with that many "
                "confirmation seeds, the pilot's would be reused; lower --seeds"
            )


@dataclass
class PilotPlan:
    """A study's pilot at one size: the declaration and how to run it. ``specs_of(cell)`` returns the runs of one
    cell for every pilot seed (with the runs they start from; a run the confirmation shares, e.g. the SFT warm-up,
    keeps its run id so it trains once); ``prepare()`` draws and writes the pilot's slice of the pairs (checking it
    is disjoint from the confirmation's) before the first cell trains. The pilot reads the runs labelled ``pilot``
    (their ``seed`` label pairs them)."""

    pilot: Pilot
    specs_of: Callable[[Mapping[str, Any]], List[RunSpec]]
    prepare: Callable[[], None] = lambda: None


def row_key(row: Mapping[str, Any]) -> str:
    """What makes two preference rows the same pair for disjointness: the prompt and the chosen response (two pair
    sets that share them, such as low and high edit distance, count as the same)."""
    return json.dumps([row.get("prompt"), row.get("chosen")], sort_keys=True)


def disjoint_slice(candidates: Sequence[dict], used: Iterable[Mapping[str, Any]], n: int, seed: int, what: str):
    """``n`` rows of ``candidates`` (a seeded draw, in their order) none of which is in ``used`` (:func:`row_key`)."""
    from ..data.types import DataError

    taken = {row_key(r) for r in used}
    pool, seen = [], set()
    for r in candidates:
        k = row_key(r)
        if k not in taken and k not in seen:
            pool.append(r)
            seen.add(k)
    if len(pool) < n:
        raise DataError(f"the pilot's {what} needs {n} pairs not used by the confirmation; only {len(pool)} are left")
    keep = sorted(random.Random(seed).sample(range(len(pool)), n))
    out = [pool[i] for i in keep]
    assert_disjoint(out, taken, what)
    return out


def assert_disjoint(rows: Iterable[Mapping[str, Any]], used: Iterable[Any], what: str) -> None:
    """Refuse a pilot slice that shares a pair with the confirmation (``used``: rows or :func:`row_key` keys)."""
    keys = {u if isinstance(u, str) else row_key(u) for u in used}
    both = [r for r in rows if row_key(r) in keys]
    if both:
        raise ConfigError(f"the pilot's {what} shares {len(both)} pair(s) with the confirmation's, e.g. {both[0]!r}")


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Preference rows (prompt, chosen, rejected) as JSONL, rewritten only when their content changes (so a resumed
    study's tokenised-data cache stays valid)."""
    from ..atomic import write_text

    text = "".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows)
    path = Path(path)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    return path


def seed_values(results: Iterable[RunResult], metric: str) -> Dict[Any, Optional[float]]:
    return {r.spec.labels.get("seed"): r.final(metric) for r in results}


def read_choice(out: Path) -> Optional[Dict[str, Any]]:
    """The recorded choice of the study folder ``out`` (None before the pilot has chosen)."""
    path = Path(out) / CHOICE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the pilot's recorded choice ({e}); remove it to choose again") from e


def regime(plan: Optional[PilotPlan], out: Optional[Path]) -> Dict[str, Any]:
    """The cell the confirmation runs at: the recorded choice (or fallback) of ``out``; the fallback cell while
    nothing is recorded (a dry run, a plan without a study folder); {} without a pilot."""
    if plan is None:
        return {}
    recorded = read_choice(out) if out is not None else None
    if recorded is not None and recorded.get("definition") == plan.pilot.definition():
        return dict(recorded["regime"])
    return dict(plan.pilot.fallback)


def choice_line(out: Path) -> str:
    """One line on the regime of the study folder ``out``, for tables that summarise studies (EVIDENCE.md)."""
    choice = read_choice(out)
    if choice is None:
        return "no pilot choice recorded"
    pilot = Pilot.of(choice["definition"])
    if choice["chosen"] is not None:
        return f"regime chosen by the pilot: {pilot.describe(choice['chosen'])}"
    return f"no pilot cell showed the effect (the finding); fallback {pilot.describe(choice['regime'])}"


def _cell_record(pilot: Pilot, cell: Mapping[str, Any], v: Verdict, values: Mapping[Any, Optional[float]]):
    return {
        "cell": dict(cell),
        "values": {str(k): values[k] for k in sorted(values, key=str)},
        "mean": v.mean if v.n else None,
        "low": v.low if v.has_interval else None,
        "high": v.high if v.has_interval else None,
        "n": v.n,
        "meets": pilot.rule.meets(v),
    }


def run_pilot(
    plan: PilotPlan,
    out: Path,
    *,
    confirmation_seeds: Iterable[Any] = (),
    log: Callable[[str], None] = print,
    executor=None,
) -> Tuple[Dict[str, Any], Dict[str, RunResult]]:
    """Run the pilot (cells in the rule's order, stopping at the first that meets it), choose and record the choice
    in ``<out>/pilot/choice.json``; with a recorded choice of the same declaration, reuse it (never choose again).
    Returns (the recorded choice, the pilot's runs)."""
    from .runner import collect, run_is_finished

    pilot, out = plan.pilot, Path(out)
    pilot.check_seeds(confirmation_seeds)
    path = out / CHOICE_FILE
    recorded = read_choice(out)
    if recorded is not None:
        if recorded.get("definition") != pilot.definition():
            raise ConfigError(
                f"{path} records a choice made under another pilot declaration (grid, rule, seeds or slice); the "
                "confirmation must not be chosen twice: remove the file and the runs/pilot folder, or use another --out"
            )
        results: Dict[str, RunResult] = {}
        for rec in recorded["cells"]:
            for spec in plan.specs_of(rec["cell"]):
                if spec.run_id not in results and run_is_finished(spec, out):
                    results[spec.run_id] = collect(spec, out, True)
        log(f"pilot: the recorded choice ({path}) is reused")
        return recorded, results
    plan.prepare()
    cells, results, chosen = [], {}, None
    for i, cell in enumerate(pilot.cells(), start=1):
        log(f"pilot cell {i}/{len(pilot.cells())}: {pilot.describe(cell)}")
        res = run_grid(plan.specs_of(cell), out, log=log, executor=executor)
        results.update(res)
        runs = [r for r in res.values() if r.spec.labels.get("pilot") and r.spec.labels.get("seed") in pilot.seeds]
        values = seed_values(runs, pilot.rule.metric)
        v = compare(values, 0.0, metric=pilot.rule.metric, higher_is_better=None, label_a=pilot.what, label_b="0")
        cells.append(_cell_record(pilot, cell, v, values))
        if pilot.rule.meets(v):
            chosen = dict(cell)
            break
    choice = {
        "definition": pilot.definition(),
        "cells": cells,
        "chosen": chosen,
        "regime": chosen if chosen is not None else dict(pilot.fallback),
    }
    from ..atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(choice, indent=1))
    log(f"pilot: {'chose ' + pilot.describe(chosen) if chosen else 'no cell meets the rule'} -> {path}")
    return choice, results


def _num(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:+.2f}"


def pilot_section(choice: Optional[Mapping[str, Any]], declared: bool = True) -> List[str]:
    """The report's section on the regime choice (before any verdict), from the recorded ``choice`` alone
    (:func:`read_choice`); ``declared``: whether the study has a pilot at this size."""
    head = ["### Regime choice (pilot, pre-registered; before any verdict)", ""]
    if not declared:
        return head + ["No pilot at this size: the runs below use the size's declared regime.", ""]
    if choice is None:
        return head + [
            "The pilot has not chosen yet (no pilot/choice.json): the runs below use the declared fallback cell and "
            "confirm nothing.",
            "",
        ]
    d = choice["definition"]
    pilot = Pilot.of(d)
    names = [pilot.names.get(k, k) for k in d["grid"]]
    grid = " × ".join(f"{n} ∈ {{{', '.join(f'{v:g}' for v in vals)}}}" for n, vals in zip(names, d["grid"].values()))
    lines = head + [
        f"Declared before the pilot ran: {d['what']} over the grid {grid}, on the pilot's own seeds "
        f"({', '.join(str(s) for s in d['seeds'])}) and its own slice of the pairs ({d['data']}; drawn disjoint from "
        "the confirmation's and checked). The cells run in the rule's order and the pilot stops at the first cell "
        "that meets the rule. The rule, verbatim:",
        "",
        f"> {d['rule']}",
        "",
    ]
    done = {json.dumps(c["cell"], sort_keys=True): c for c in choice["cells"]}
    rows = []
    for cell in pilot.cells():
        c = done.get(json.dumps(cell, sort_keys=True))
        vals = [f"{cell[k]:g}" for k in d["grid"]]
        if c is None:
            rows.append(vals + ["not run (an earlier cell met the rule)", "-", "-", "-"])
            continue
        per_seed = ", ".join(f"{s}: {_num(v)}" for s, v in c["values"].items())
        ci = "-" if c["low"] is None else f"{c['low']:+.2f} to {c['high']:+.2f}"
        rows.append(vals + [per_seed, _num(c["mean"]), ci, "yes" if c["meets"] else "no"])
    metric = "Δ chosen" if d["metric"] == "probe/delta/chosen" else d["metric"]
    lines += [
        markdown_table(names + [f"{metric} per seed", "mean", f"{LEVEL} CI", "meets the rule"], rows),
        "",
    ]
    if choice["chosen"] is not None:
        lines.append(f"**Choice: {pilot.describe(choice['chosen'])}.** Every confirmation run below uses it.")
    else:
        lines.append(
            "**No cell shows the effect: that is the finding.** The confirmation runs below use the declared "
            f"fallback cell ({pilot.describe(choice['regime'])}): {pilot.fallback_why}"
        )
    return lines + [""]


# -- the pilot of a probed preference study (S3, S4): DPO over lr x epochs on its own slice of the pairs --------------

LR_EPOCHS_MARGIN = 0.5  # nats: five times the smallest meaningful change of a summed log-prob (0.1)
LR_EPOCHS_RULE = (
    "The smallest learning rate, then the fewest preference epochs, at which DPO's Δ chosen (summed chosen log-prob "
    "on the pilot's held-out pairs, end minus start of preference training) has a paired 95 % interval over the "
    f"pilot seeds wholly below -{LR_EPOCHS_MARGIN:g} nats (five times the smallest meaningful change of a log-prob: "
    "an effect at the edge of that change, -0.19 nats in the first small S4 pilot, did not carry over to the "
    "confirmation's pairs)."
)


def lr_epochs_pilot(p: Mapping[str, Any], what: str, data: str) -> Pilot:
    """The pilot declared by a size's ``pilot`` settings ``p``: ``lrs``, ``epochs``, ``seeds``, ``fallback`` (lr,
    epochs) and ``fallback_why``, under :data:`LR_EPOCHS_RULE`."""
    return Pilot(
        {"pref_lr": tuple(float(x) for x in p["lrs"]), "pref_epochs": tuple(int(x) for x in p["epochs"])},
        Rule(LR_EPOCHS_RULE, ("pref_lr", "pref_epochs"), margin=LR_EPOCHS_MARGIN),
        tuple(p["seeds"]),
        {"pref_lr": float(p["fallback"][0]), "pref_epochs": int(p["fallback"][1])},
        p["fallback_why"],
        what,
        {"pref_lr": "lr", "pref_epochs": "epochs"},
        data,
        {"pref_lr": "lr", "pref_epochs": "ep"},
    )


def draw_slices(
    folder: Path, confirmation: Sequence[Mapping[str, Any]], candidates: Mapping[str, Any], n_train: int, n_eval: int
) -> Dict[str, str]:
    """Write the pilot's training and held-out pairs to ``folder`` (train.jsonl, eval.jsonl): ``n_train`` and
    ``n_eval`` rows of the built-in task data ``candidates`` (a data config), none of which is a pair (prompt and
    chosen response) of the ``confirmation`` data configs' training or held-out rows. Returns the two paths."""
    from ..tasks import rows_for

    used: List[Mapping[str, Any]] = []
    for cfg in confirmation:
        train, evals = rows_for(cfg["task"], cfg.get("task_args"), "preference", 0)
        used += train + evals
    c_train, c_eval = rows_for(candidates["task"], candidates.get("task_args"), "preference", 0)
    train = disjoint_slice(c_train, used, n_train, 100, "training pairs")
    evals = disjoint_slice(c_eval, used + train, n_eval, 101, "held-out pairs")
    return {
        "train": str(write_rows(Path(folder) / "train.jsonl", train)),
        "eval": str(write_rows(Path(folder) / "eval.jsonl", evals)),
    }


def slice_paths(folder: Path) -> Dict[str, str]:
    return {"train": str(Path(folder) / "train.jsonl"), "eval": str(Path(folder) / "eval.jsonl")}


def dpo_cell_specs(
    pilot: Pilot,
    cell: Mapping[str, Any],
    s: Mapping[str, Any],
    base: Mapping[str, Any],
    data: Mapping[str, Any],
    parents: Sequence[RunSpec],
) -> List[RunSpec]:
    """The runs of one cell: DPO (the size's β) from the last of ``parents`` (with them, so they train first), one
    per pilot seed, probing only at the start and the end of preference training."""
    from .common import deep_merge, pref_steps, probed_preference, with_beta

    sc = {**s, **cell}
    steps = pref_steps(sc)
    out = list(parents)
    for seed in pilot.seeds:
        cfg = deep_merge(
            dict(base),
            {"data": dict(data), "loss": with_beta([{"name": "dpo"}], s["beta"])},
            probed_preference(sc, steps),
            {"eval": {"every": steps}, "train": {"seed": seed}},
        )
        out.append(
            RunSpec(
                f"pilot/{pilot.cell_id(cell)}/seed{seed}",
                cfg,
                {"pilot": True, "seed": seed, "cell": pilot.cell_id(cell)},
                init_from=parents[-1].run_id,
            )
        )
    return out


def pilot_stages(s: Mapping[str, Any], measured: Mapping[str, float]) -> list:
    """The budget of a probed study's pilot (:class:`dpolab.studies.budget.Stage` rows, unit 'pilot steps': not
    counted among the confirmation's runs): every cell of the grid, its worst case (the pilot stops at the first cell
    that meets the rule), and the two probe evaluations of each run."""
    from .budget import Stage
    from .common import pref_steps

    p = s["pilot"]
    n = len(p["lrs"]) * len(p["seeds"])
    rows = [
        Stage(
            f"pilot: DPO at {ep} epoch(s), {len(p['lrs'])} lrs x {len(p['seeds'])} seeds (worst case: every cell)",
            n,
            pref_steps({**s, "pref_epochs": ep}),
            measured["pref"] * s["batch"],
            "pilot steps",
        )
        for ep in p["epochs"]
    ]
    rows.append(
        Stage(
            f"pilot probes (start and end, {s['n_eval']} pairs)",
            n * len(p["epochs"]),
            2,
            measured["probe_eval"] * s["n_eval"],
            "evals",
        )
    )
    return rows
