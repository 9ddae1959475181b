"""The benchmark's arithmetic, as pure functions (no torch, no subprocesses): the same-math check, the load flags of
rounds, ratios paired by round, the end-to-end estimate and the markdown tables. ``run.py`` runs the arms and calls
these; ``tests/unit/test_bench_harness.py`` tests them.

A *run* is the dict one arm's subprocess writes (``arms.py``): ``step_times`` (every step, warm-up first),
``warmup``, ``batch_size``, ``pairs`` (pairs the run trains on), ``setup_s`` (process start to the first step),
``scaled_setup_s`` (the part of setup that grows with the number of pairs: dpolab's reference precomputation),
``excluded_setup_s`` (setup left out of every end-to-end figure: TRL's tokenisation, since dpolab and the bare loop
are given token ids), ``peak_rss_mb``, ``tokens_per_step`` and, in a check run, ``check`` (see :func:`same_math`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

LN2 = math.log(2.0)


# -- same math ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tol:
    """|arm - reference| <= atol + rtol * |reference[scale or the quantity itself]| (+ rtol2 * |reference[scale2]|);
    ``exact``: must be equal."""

    atol: float = 0.0
    rtol: float = 0.0
    scale: Optional[str] = None
    exact: bool = False
    rtol2: float = 0.0
    scale2: Optional[str] = None

    def limit(self, ref: Mapping[str, float], q: str, factor: float = 1.0) -> float:
        second = self.rtol2 * abs(ref[self.scale2]) if self.scale2 else 0.0
        return factor * (self.atol + self.rtol * abs(ref[self.scale or q]) + second)

    def text(self, q: str) -> str:
        if self.exact:
            return "equal"
        parts = (
            ([f"{self.atol:g}"] if self.atol else [])
            + ([f"{self.rtol:g} x abs({self.scale or q})"] if self.rtol else [])
            + ([f"{self.rtol2:g} x abs({self.scale2})"] if self.scale2 else [])
        )
        return "abs(diff) <= " + " + ".join(parts)  # no '|': it goes into markdown tables


# What every arm reports after --check-steps optimiser steps (fp32, same weights, pairs, order, lr schedule):
#   loss, logps_chosen, logps_rejected, margin: the loss, mean policy log-probs and mean log-ratio margin
#     h = (log pi - log ref)(chosen) - (same)(rejected) of the *last* step's batch (computed before its update);
#   n_tensors, n_params: the trainable parameters; weights_abs_sum = sum |w| after the last update;
#   delta_abs_sum, delta_l2, delta_index_sum: sum |dw|, sqrt(sum dw^2) and sum dw_i * c_i, c_i = ((i mod 9973)+1)/9973
#     with i the flat index inside each tensor, of the update dw = w_after - w_before (all in float64).
# The tolerances allow fp32 rounding differences between implementations (other kernels, batch layouts, fused or
# plain AdamW), far below what another beta (the loss moves with beta * margin), learning rate or schedule (the
# update moves with the learning rate, Adam being scale-free in the gradient) or data order gives.
TOLERANCES: Dict[str, Tol] = {
    "n_tensors": Tol(exact=True),
    "n_params": Tol(exact=True),
    "loss": Tol(atol=1e-4),
    "logps_chosen": Tol(atol=0.01, rtol=1e-4),
    "logps_rejected": Tol(atol=0.01, rtol=1e-4),
    "margin": Tol(atol=0.005, rtol=0.01),
    # sum |w0 + dw| moves with the update: arms whose updates agree within the delta tolerance below may differ by
    # that much here too (smollm 2026-12-02: TRL and bare were 1.5e-7 and 3.1e-7 x sum|w| from dpolab-live, within
    # 1e-6 of their sum |dw|, and failed a 1e-7 x sum|w| bound); a different start (another init) moves it by far more
    "weights_abs_sum": Tol(rtol=1e-7, rtol2=1e-3, scale2="delta_abs_sum"),
    "delta_abs_sum": Tol(rtol=1e-3),
    "delta_l2": Tol(rtol=1e-3),
    "delta_index_sum": Tol(rtol=1e-3, scale="delta_abs_sum"),
}
# the check must be able to fail: the reference arm's last loss must be at least this many loss tolerances away from
# ln 2 (where every arm starts, whatever its beta), else a different beta could pass unnoticed
WEAK_FACTOR = 10.0


def tolerance_lines(tolerances: Mapping[str, Tol] = TOLERANCES, factor: float = 1.0) -> List[str]:
    out = [f"`{q}`: {t.text(q)}" for q, t in tolerances.items()]
    if factor != 1.0:
        out.append(f"(every tolerance above multiplied by {factor:g})")
    return out


def same_math(
    checks: Mapping[str, Optional[Mapping[str, float]]],
    tolerances: Mapping[str, Tol] = TOLERANCES,
    reference: Optional[str] = None,
    factor: float = 1.0,
) -> List[str]:
    """Problems (empty: every arm agrees with ``reference``, default the first arm, within ``tolerances`` scaled by
    ``factor``). ``checks``: arm -> the values named in :data:`TOLERANCES` (None: the arm reported nothing). Also a
    problem: a check too weak to fail (the reference's last loss within WEAK_FACTOR loss tolerances of ln 2, or no
    update at all)."""
    problems: List[str] = []
    if not checks:
        return ["no arm reported same-math values"]
    ref_arm = reference or next(iter(checks))
    ref = checks.get(ref_arm)
    if ref is None:
        return [f"the reference arm {ref_arm} reported no same-math values"]
    for arm, vals in checks.items():
        if vals is None:
            problems.append(f"{arm}: reported no same-math values")
            continue
        for q in tolerances:
            v = vals.get(q)
            if v is None or not math.isfinite(float(v)):
                problems.append(f"{arm}: `{q}` missing or not finite ({v!r})")
    if problems:
        return problems
    loss_tol = tolerances["loss"].limit(ref, "loss", factor) if "loss" in tolerances else 0.0
    if "loss" in tolerances and abs(ref["loss"] - LN2) < WEAK_FACTOR * loss_tol:
        problems.append(
            f"check too weak: {ref_arm}'s last loss {ref['loss']:.6f} is within {WEAK_FACTOR:g} x "
            f"{loss_tol:g} of ln 2 = {LN2:.6f}, so another beta would pass; use more --check-steps"
        )
    if "delta_abs_sum" in tolerances and not ref["delta_abs_sum"] > 0:
        problems.append(f"check too weak: {ref_arm}'s weights did not change")
    for arm, vals in checks.items():
        if arm == ref_arm:
            continue
        for q, tol in tolerances.items():
            a, b = float(vals[q]), float(ref[q])
            if tol.exact:
                if a != b:
                    problems.append(f"{arm}: `{q}` = {a:g}, {ref_arm}: {b:g} (must be equal)")
                continue
            lim = tol.limit(ref, q, factor)
            if abs(a - b) > lim:
                problems.append(f"{arm}: `{q}` = {a:.8g}, {ref_arm}: {b:.8g}; abs(diff) {abs(a - b):.3g} > {lim:.3g}")
    return problems


def check_table(checks: Mapping[str, Mapping[str, float]], tolerances: Mapping[str, Tol] = TOLERANCES) -> str:
    arms = list(checks)
    lines = ["| quantity | tolerance | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for q, t in tolerances.items():
        cells = []
        for a in arms:
            v = (checks[a] or {}).get(q)
            cells.append("-" if v is None else (f"{v:.0f}" if t.exact else f"{v:.8g}"))
        lines.append(f"| `{q}` | {t.text(q)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- rounds and load ---------------------------------------------------------------------------------------------
def round_load(before: float, samples: Sequence[float], after: float) -> Dict[str, float]:
    """The 1-min load average before a round, the mean of the samples taken while it ran (and at its end), and after
    it."""
    during = statistics.mean(list(samples) + [after])  # not before: it reflects what ran before the round
    return {"before": before, "during": during, "after": after}


def flag_rounds(loads: Sequence[Mapping[str, float]], margin: float) -> List[Optional[str]]:
    """None for a round kept in the headline, else why it is left out: its load ('during' and 'after') differs from
    the first round's by more than ``margin``. 'before' is recorded, not compared: before the first round the
    benchmark itself has not loaded the machine yet, before every later one it has (the 1-min average lags)."""
    out: List[Optional[str]] = []
    for i, ld in enumerate(loads):
        if i == 0:
            out.append(None)
            continue
        bad = [
            f"{k} {ld[k]:.2f} vs {loads[0][k]:.2f}" for k in ("during", "after") if abs(ld[k] - loads[0][k]) > margin
        ]
        out.append(f"load differs from round 1's by more than {margin:g} ({'; '.join(bad)})" if bad else None)
    return out


def measured(run: Mapping) -> List[float]:
    return list(run["step_times"][run["warmup"] :])


def round_step(run: Mapping) -> float:
    """The median measured step time of one arm's run (one round)."""
    return statistics.median(measured(run))


@dataclass
class Spread:
    median: float
    lo: float
    hi: float
    n: int
    per_round: List[Optional[float]]

    def text(self, digits: int = 2) -> str:
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{self.median:.{digits}f} (1 round)"
        return f"{self.median:.{digits}f} [{self.lo:.{digits}f}-{self.hi:.{digits}f}]"


def paired(values: Mapping[str, Sequence[float]], base: str, kept: Sequence[bool]) -> Dict[str, Spread]:
    """Per arm: value / base's value within each round (so both saw the same load), then the median and min-max of
    these per-round ratios over the kept rounds. ``values``: arm -> one value per round (e.g. :func:`round_step`)."""
    out = {}
    for arm, vs in values.items():
        ratios = [v / values[base][r] for r, v in enumerate(vs)]
        k = [x for x, keep in zip(ratios, kept) if keep]
        out[arm] = Spread(
            statistics.median(k) if k else float("nan"),
            min(k, default=float("nan")),
            max(k, default=float("nan")),
            len(k),
            ratios,
        )
    return out


# -- end to end --------------------------------------------------------------------------------------------------
def steps_per_epoch(epoch_pairs: int, batch_size: int) -> int:
    return -(-epoch_pairs // batch_size)


def end_to_end(run: Mapping, epochs: float, epoch_pairs: int) -> float:
    """Seconds to train ``epochs`` epochs of ``epoch_pairs`` pairs, computed from one run: its setup without the
    excluded part (TRL's tokenisation) and with the part that grows with the data (dpolab's reference
    precomputation, done once for all epochs) scaled from the run's pairs to the epoch's, plus its warm-up steps as
    measured, plus every further step at the run's median step time."""
    total = math.ceil(epochs * steps_per_epoch(epoch_pairs, run["batch_size"]))
    w = run["warmup"]
    scaled = run.get("scaled_setup_s") or 0.0
    fixed = run["setup_s"] - scaled - (run.get("excluded_setup_s") or 0.0)
    head = run["step_times"][: min(w, total)]
    return fixed + scaled * epoch_pairs / run["pairs"] + sum(head) + max(0, total - len(head)) * round_step(run)


# -- tables ------------------------------------------------------------------------------------------------------
def _median_kept(xs: Sequence[float], kept: Sequence[bool]) -> float:
    k = [x for x, keep in zip(xs, kept) if keep]
    return statistics.median(k) if k else float("nan")


def summary(
    runs: Mapping[str, Sequence[Mapping]],
    base: str,
    kept: Sequence[bool],
    epoch_pairs: int,
    epochs: Sequence[float] = (1, 3),
) -> Dict[str, dict]:
    """Per arm, over the kept rounds: median step time (of all measured steps), pairs/s and tokens/s from it, median
    peak RSS and setup, and per-round-paired ratios to ``base`` of the step time and of the end-to-end times."""
    step = paired({a: [round_step(r) for r in rs] for a, rs in runs.items()}, base, kept)
    e2e = {e: {a: [end_to_end(r, e, epoch_pairs) for r in rs] for a, rs in runs.items()} for e in epochs}
    e2e_ratio = {e: paired(e2e[e], base, kept) for e in epochs}
    out = {}
    for arm, rs in runs.items():
        times = [t for r, keep in zip(rs, kept) if keep for t in measured(r)]
        toks = [t for r, keep in zip(rs, kept) if keep for t in r["tokens_per_step"][r["warmup"] :]]
        med = statistics.median(times) if times else float("nan")
        b = rs[0]["batch_size"]
        out[arm] = dict(
            step_s=med,
            pairs_s=b / med,
            tokens_s=statistics.mean(toks) / med if toks else float("nan"),
            step_ratio=step[arm],
            rss=_median_kept([r["peak_rss_mb"] for r in rs], kept),
            setup_s=_median_kept([r["setup_s"] for r in rs], kept),
            excluded_s=_median_kept([r.get("excluded_setup_s") or 0.0 for r in rs], kept),
            e2e={e: _median_kept(e2e[e][arm], kept) for e in epochs},
            e2e_ratio={e: e2e_ratio[e][arm] for e in epochs},
            reference=rs[0].get("reference", "?"),
            n=len(times),
        )
    return out


def main_table(s: Mapping[str, dict], base: str, epochs: Sequence[float] = (1, 3)) -> str:
    head = [
        "arm",
        "reference",
        "median step (s)",
        "pairs/s",
        "tokens/s",
        f"step time / {base}'s, per round: median [min-max]",
        "peak RSS (MB)",
        f"RSS / {base}'s",
        "setup (s)",
    ]
    for e in epochs:
        head += [f"{e:g} epoch{'s' if e != 1 else ''}, computed (s)", f"/ {base}'s, per round"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, r in s.items():
        cells = [
            arm,
            r["reference"],
            f"{r['step_s']:.3f}",
            f"{r['pairs_s']:.2f}",
            f"{r['tokens_s']:.0f}",
            r["step_ratio"].text(),
            f"{r['rss']:.0f}",
            f"{r['rss'] / s[base]['rss']:.2f}",
            f"{r['setup_s']:.1f}",
        ]
        for e in epochs:
            cells += [f"{r['e2e'][e]:.0f}", r["e2e_ratio"][e].text()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rounds_table(
    runs: Mapping[str, Sequence[Mapping]],
    loads: Sequence[Mapping[str, float]],
    flags: Sequence[Optional[str]],
    orders: Sequence[Sequence[str]],
) -> str:
    arms = list(runs)
    head = ["round", "load before", "load during (mean)", "load after", "in headline"] + [f"{a} (s)" for a in arms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (ld, fl) in enumerate(zip(loads, flags)):
        cells = [
            str(i + 1),
            f"{ld['before']:.2f}",
            f"{ld['during']:.2f}",
            f"{ld['after']:.2f}",
            "yes" if fl is None else f"no: {fl}",
        ] + [f"{round_step(runs[a][i]):.3f}" for a in arms]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Order of the arms in each round: " + "; ".join(f"{i + 1}: {', '.join(o)}" for i, o in enumerate(orders))
    )
    return "\n".join(lines)


MIN_KEPT = 3  # kept rounds a headline needs before it is quoted


def headline(
    s: Mapping[str, dict],
    base: str,
    live: Sequence[str],
    n_kept: int,
    n_rounds: int,
    epochs: Sequence[float] = (1, 3),
    cpu: str = "an unrecorded CPU",
) -> str:
    """One paragraph: the like-for-like step-time ratios (arms in ``live``: a reference forward in every step, as in
    ``base``), then every other arm's end-to-end ratios; it names ``cpu`` (:func:`cpu_text`), the CPU measured on."""

    def e2e(arm):
        return ", ".join(f"{e:g} epoch{'s' if e != 1 else ''} {s[arm]['e2e_ratio'][e].text()}" for e in epochs)

    txt = [
        f"**Headline** (on {cpu}; {n_kept} of {n_rounds} rounds; ratio = the arm's time / {base}'s within a round, "
        f"median [min-max] over the kept rounds; above 1: {base} is faster)."
        + (
            f" Only {n_kept} round{'s' if n_kept != 1 else ''} kept: too few to quote; rerun."
            if n_kept < MIN_KEPT
            else ""
        )
    ]
    others = [a for a in live if a != base]
    if others:
        txt.append(
            "Like for like (a reference forward in every arm's steps), step time: "
            + "; ".join(f"{a} {s[a]['step_ratio'].text()}" for a in others)
            + "."
        )
        txt.append("End to end (computed): " + "; ".join(f"{a} {e2e(a)}" for a in others) + ".")
    rest = [a for a in s if a not in live and a != base]
    if rest:
        txt.append(
            "Not like for like in step time (no reference forward in the step, or another precision); "
            "end to end (computed): " + "; ".join(f"{a} {e2e(a)}" for a in rest) + "."
        )
    return " ".join(txt)


# -- the CPU a section was measured on ---------------------------------------------------------------------------
CPU_FLAGS = ("amx_bf16", "avx512_bf16", "avx2")  # bf16 speed (AMX, AVX-512 BF16) and the fp32 baseline (AVX2)


def cpu_record(cpuinfo: str) -> Dict[str, object]:
    """The CPU from the text of /proc/cpuinfo: ``model`` (its first ``model name``; None if absent) and, for each
    of :data:`CPU_FLAGS`, whether the first ``flags`` line has it (None each where there is no flags line)."""
    model, flags = None, None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() in ("flags", "Features") and flags is None:
            flags = set(value.split())
    return {"model": model, **{f: (f in flags if flags is not None else None) for f in CPU_FLAGS}}


def cpu_text(rec: Mapping[str, object]) -> str:
    """``AMD EPYC (amx_bf16 no, avx512_bf16 yes, avx2 yes)``, for every section and headline."""
    word = {True: "yes", False: "no", None: "unknown"}
    return f"{rec.get('model') or 'unknown CPU'} (" + ", ".join(f"{f} {word[rec.get(f)]}" for f in CPU_FLAGS) + ")"
