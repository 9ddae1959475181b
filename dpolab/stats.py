"""Pure statistics helpers (no dpolab imports, no torch): means with 95 % t-intervals, their formatting, and the
one verdict helper every study report words its judgements with.

A judgement in a report is a :class:`Verdict` from :func:`compare`: two sets of per-seed results paired by seed
(only seeds where both values exist; a missing value is reported as missing, never as 0), the mean paired
difference with its 95 % t-interval, and a word that follows from the interval alone. Without a smallest
meaningful effect (``bound``): ``better`` / ``worse`` (or ``higher`` / ``lower`` when no direction is better) only
when the interval excludes 0, ``inconclusive`` whenever it contains 0. With a ``bound`` b > 0 (statistically
significant is not the same as meaningful):

- ``negligible``: the whole interval lies inside [-b, +b] (whether or not it excludes 0);
- ``better`` / ``worse`` / ``higher`` / ``lower``: the interval excludes 0 and lies wholly beyond +b or -b;
- ``<that word>, maybe negligible`` (e.g. ``lower, maybe negligible``): the interval excludes 0 but reaches inside
  [-b, +b] (the direction is shown, a meaningful size is not);
- ``inconclusive``: the interval contains 0 and reaches beyond [-b, +b].

Always ``inconclusive (one seed)`` with one pair, ``no data`` with none. ``limits`` clips an interval to the range
its quantity can take (a t-interval clipped; e.g. [-1, 1] for a difference of two shares). :class:`VerdictTable`
collects the verdicts of a section and says how many would look significant by chance; :func:`every` words "every
X did Y" claims, true only when each interval says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

# two-sided 95 % Student t quantiles by degrees of freedom; a df between two keys takes the smaller key's (larger,
# so conservative) quantile; the normal 1.96 beyond 120
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}

LEVEL = "95 %"


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (nan for df < 1)."""
    if df <= 0:
        return float("nan")
    if df > 120:
        return 1.96
    return _T95[max(k for k in _T95 if k <= df)]


def _finite(v: Any) -> Optional[float]:
    """``v`` as a float, or None when it is missing or not a finite number."""
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def mean_ci(values: Sequence[Optional[float]]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (t distribution; nan for one value). Missing and
    non-finite values are left out (never counted as 0)."""
    vals = [x for x in (_finite(v) for v in values) if x is not None]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return m, t95(len(vals) - 1) * sd / math.sqrt(len(vals))


def fmt_ci(values: Sequence[Optional[float]], digits: int = 2, limits: Optional[Tuple[float, float]] = None) -> str:
    """``mean ± half-width`` over the values present (``-`` when none; the mean alone for one value). With
    ``limits`` (the range the quantity can take, e.g. (0, 1) for a share), ``mean (low to high)``: the t-interval
    clipped to that range, so it never shows values the quantity cannot take."""
    m, h = mean_ci(values)
    if math.isnan(m):
        return "-"
    if math.isnan(h):
        return f"{m:.{digits}f}"
    if limits is None:
        return f"{m:.{digits}f} ± {h:.{digits}f}"
    return f"{m:.{digits}f} ({max(limits[0], m - h):.{digits}f} to {min(limits[1], m + h):.{digits}f})"


def proportion_ci(successes: int, n: int) -> tuple[float, float, float]:
    """A share with its 95 % Wilson score interval: ``(share, low, high)`` (nan when n = 0)."""
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    z = 1.96
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


# ------------------------------------------------------------------------------------------------ verdicts

SIGNIFICANT = ("better", "worse", "higher", "lower")
SMALL = ", maybe negligible"  # appended to a direction whose interval reaches inside the smallest meaningful size
WORDS = (
    SIGNIFICANT
    + tuple(w + SMALL for w in SIGNIFICANT)
    + ("negligible", "inconclusive", "inconclusive (one seed)", "no data")
)


def _seed_text(seeds: Sequence[Any]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)


def _names(items: Sequence[str], limit: int = 8) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _sortable(seeds) -> List[Any]:
    try:
        return sorted(seeds)
    except TypeError:
        return sorted(seeds, key=str)


@dataclass(frozen=True)
class Verdict:
    """One paired comparison ``a - b`` of ``metric`` over seeds; build it with :func:`compare`. ``bound``: the
    smallest meaningful difference (None: none stated, the words follow the interval against 0 alone); ``unit``
    follows it in the text; ``limits``: the range the difference can take, the interval is clipped to it."""

    metric: str
    label_a: str
    label_b: str
    higher_is_better: Optional[bool]
    seeds: Tuple[Any, ...]  # the paired seeds, in order
    diffs: Tuple[float, ...]  # a - b for each paired seed
    missing: Tuple[Tuple[str, Tuple[Any, ...]], ...] = ()  # (label, seeds whose value is missing)
    digits: int = 2
    bound: Optional[float] = None
    unit: str = ""
    limits: Optional[Tuple[float, float]] = None

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return mean_ci(self.diffs)[0]

    @property
    def half_width(self) -> float:
        return mean_ci(self.diffs)[1]

    @property
    def low(self) -> float:
        low = self.mean - self.half_width
        return max(low, self.limits[0]) if self.limits and not math.isnan(low) else low

    @property
    def high(self) -> float:
        high = self.mean + self.half_width
        return min(high, self.limits[1]) if self.limits and not math.isnan(high) else high

    @property
    def has_interval(self) -> bool:
        return self.n >= 2

    @property
    def significant(self) -> bool:
        """The 95 % interval excludes 0 (needs at least two paired seeds)."""
        return self.has_interval and (self.low > 0 or self.high < 0)

    @property
    def negligible(self) -> bool:
        """The whole 95 % interval lies inside [-bound, +bound] (never without a bound)."""
        return self.bound is not None and self.has_interval and -self.bound <= self.low and self.high <= self.bound

    @property
    def meaningful(self) -> bool:
        """The interval excludes 0 and, with a bound, lies wholly beyond it: the word is a plain direction."""
        if not self.significant:
            return False
        return self.bound is None or self.low >= self.bound or self.high <= -self.bound

    @property
    def word(self) -> str:
        if self.n == 0:
            return "no data"
        if self.n == 1:
            return "inconclusive (one seed)"
        if self.negligible:
            return "negligible"
        if not self.significant:
            return "inconclusive"
        up = self.mean > 0
        if self.higher_is_better is None:
            word = "higher" if up else "lower"
        else:
            word = "better" if up == self.higher_is_better else "worse"
        return word if self.meaningful else word + SMALL

    @property
    def direction(self) -> Optional[str]:
        """``higher`` / ``lower`` when the interval excludes 0, else None."""
        return ("higher" if self.mean > 0 else "lower") if self.significant else None

    def bound_text(self) -> str:
        """``±0.1 nats`` (``-`` without a bound)."""
        return "-" if self.bound is None else f"±{self.bound:g}" + (f" {self.unit}" if self.unit else "")

    def _digits(self) -> int:
        """Enough digits that no end of a significant interval prints as 0, and that each end prints on the same side
        of ±bound as it lies (so the printed interval shows why the word is what it is)."""
        d = self.digits
        edges = () if self.bound is None or not self.has_interval else (self.bound, -self.bound)

        def unclear(d: int) -> bool:
            ends = (self.low, self.high)
            if self.significant and any(round(x, d) == 0 for x in ends):
                return True
            return any((x < e) != (round(x, d) < e) or (x > e) != (round(x, d) > e) for x in ends for e in edges)

        while d < 8 and unclear(d):
            d += 1
        return d

    def difference(self) -> str:
        return "-" if self.n == 0 else f"{self.mean:+.{self._digits()}f}"

    def interval(self) -> str:
        if not self.has_interval:
            return "-"
        d = self._digits()
        return f"{self.low:+.{d}f} to {self.high:+.{d}f}"

    def missing_text(self) -> str:
        return "; ".join(f"{label} {_seed_text(seeds)}" for label, seeds in self.missing)

    def _evidence(self) -> str:
        miss = f"; missing: {self.missing_text()}" if self.missing else ""
        size = f"; smallest meaningful difference {self.bound_text()}" if self.bound is not None else ""
        if self.n == 0:
            return f"(no seed has both values{miss})"
        if self.n == 1:
            return f"{self.difference()} (one seed, {_seed_text(self.seeds)}: no interval{size}{miss})"
        return f"{self.difference()} ({LEVEL} CI {self.interval()}, {self.n} seeds{size}{miss})"

    def sentence(self) -> str:
        """One sentence whose wording follows the interval, e.g. ``DPOP: Δ chosen higher than DPO (better), +0.30
        (95 % CI +0.10 to +0.50, 3 seeds).`` / ``DPOP: Δ chosen against DPO inconclusive, -0.10 (95 % CI -0.33 to +0.13,
        3 seeds).`` / ``SimPO: Δ chosen against DPO negligible, -0.001 (95 % CI -0.002 to -0.0005, 3 seeds; smallest
        meaningful difference ±0.1 nats).`` / ``... lower than DPO (maybe negligible), ...``."""
        if self.n == 0:
            return f"{self.label_a}: {self.metric} against {self.label_b}: no data {self._evidence()}."
        if not self.significant or self.negligible:
            return f"{self.label_a}: {self.metric} against {self.label_b} {self.word}, {self._evidence()}."
        judged = [self.word.replace(SMALL, "")] if self.higher_is_better is not None else []
        judged += [] if self.meaningful else ["maybe negligible"]
        note = f" ({', '.join(judged)})" if judged else ""
        return f"{self.label_a}: {self.metric} {self.direction} than {self.label_b}{note}, {self._evidence()}."

    def cells(self) -> List[str]:
        """difference, interval, seeds, verdict: the columns :class:`VerdictTable` adds to a row."""
        return [self.difference(), self.interval(), str(self.n), self.word]


Values = Mapping[Any, Optional[float]]


def compare(
    a: Values,
    b: Union[Values, float, int],
    *,
    metric: str,
    higher_is_better: Optional[bool],
    label_a: str,
    label_b: str,
    digits: int = 2,
    bound: Optional[float] = None,
    unit: str = "",
    limits: Optional[Tuple[float, float]] = None,
) -> Verdict:
    """``a`` against ``b``, paired by seed.

    ``a`` and ``b`` map seed -> value (None, a missing seed or a non-finite value is *missing*: left out of the pairs
    and listed in the verdict, never counted as 0). ``b`` may instead be one number that every seed of ``a`` is
    compared with (e.g. 0, or a single baseline run). ``higher_is_better`` None: the verdict says ``higher`` /
    ``lower`` instead of ``better`` / ``worse``. ``bound``: the smallest meaningful difference (> 0, in ``unit``),
    which the words respect (module docstring); ``limits``: (low, high), the range the difference can take, to
    which the interval is clipped (e.g. (-1, 1) for a difference of two shares).
    """
    if bound is not None and not (_finite(bound) is not None and bound > 0):
        raise ValueError(f"compare: the smallest meaningful difference must be a positive number, got {bound!r}")
    if limits is not None and not (len(limits) == 2 and limits[0] < limits[1]):
        raise ValueError(f"compare: limits must be (low, high) with low < high, got {limits!r}")
    constant = _finite(b) if isinstance(b, (int, float)) and not isinstance(b, bool) else None
    if isinstance(b, (int, float)) and not isinstance(b, bool) and constant is None:
        raise ValueError(f"compare: the constant to compare with must be finite, got {b!r}")
    b_map: Values = {} if constant is not None else b  # type: ignore[assignment]
    seeds = _sortable(set(a) | (set() if constant is not None else set(b_map)))
    paired, diffs = [], []
    miss_a, miss_b = [], []
    for s in seeds:
        va = _finite(a.get(s)) if s in a else None
        vb = constant if constant is not None else (_finite(b_map.get(s)) if s in b_map else None)
        if va is None:
            miss_a.append(s)
        if vb is None:
            miss_b.append(s)
        if va is not None and vb is not None:
            paired.append(s)
            diffs.append(va - vb)
    missing = tuple((lbl, tuple(ss)) for lbl, ss in ((label_a, miss_a), (label_b, miss_b)) if ss)
    return Verdict(
        metric,
        label_a,
        label_b,
        higher_is_better,
        tuple(paired),
        tuple(diffs),
        missing,
        digits,
        bound,
        unit,
        tuple(limits) if limits is not None else None,
    )


def chance_line(n_tests: int, n_significant: int, n_untested: int = 0) -> str:
    """How many of ``n_tests`` 95 % intervals would exclude 0 by chance alone, beside how many do."""
    if n_tests == 0:
        line = "No paired comparison here has an interval (fewer than two seeds)."
    else:
        line = (
            f"{n_tests} paired comparison{'s' if n_tests != 1 else ''}; at {LEVEL} each, about {n_tests * 0.05:.1f} "
            f"would look significant by chance even with no real differences; {n_significant} "
            f"{'do' if n_significant != 1 else 'does'}."
        )
    if n_untested:
        line += f" {n_untested} more {'have' if n_untested != 1 else 'has'} no interval (one seed or no data)."
    return line


@dataclass
class VerdictTable:
    """The verdicts of one report section: a markdown table (``headers`` name the leading cells of each row; by
    default the comparison and the metric) and a line that says how many comparisons it makes."""

    headers: Sequence[str] = ("comparison", "metric")
    rows: List[Tuple[Tuple[str, ...], Verdict]] = field(default_factory=list)

    def add(self, verdict: Verdict, *cells: Any) -> Verdict:
        if not cells:
            cells = (f"{verdict.label_a} - {verdict.label_b}", verdict.metric)
        if len(cells) != len(self.headers):
            raise ValueError(f"VerdictTable.add: {len(cells)} cells for headers {list(self.headers)}")
        self.rows.append((tuple(str(c) for c in cells), verdict))
        return verdict

    def extend(self, other: "VerdictTable") -> None:
        """Count ``other``'s verdicts here too (rows keep their own cells; only :meth:`counts` should mix tables
        with different headers)."""
        self.rows.extend(other.rows)

    @property
    def verdicts(self) -> List[Verdict]:
        return [v for _, v in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Verdict]:
        return iter(self.verdicts)

    def counts(self) -> Dict[str, int]:
        out = {w: 0 for w in WORDS}
        for v in self.verdicts:
            out[v.word] += 1
        return out

    def n_tests(self) -> int:
        return sum(v.has_interval for v in self.verdicts)

    def n_significant(self) -> int:
        return sum(v.significant for v in self.verdicts)

    def chance_line(self) -> str:
        line = chance_line(self.n_tests(), self.n_significant(), len(self) - self.n_tests())
        bounded = [v for v in self.verdicts if v.bound is not None and v.has_interval]
        if bounded:
            line += (
                f" With the smallest meaningful difference stated, {sum(v.meaningful for v in bounded)} of "
                f"{len(bounded)} lie wholly beyond it and {sum(v.negligible for v in bounded)} wholly inside it "
                f"(negligible)."
            )
        return line

    def markdown(self) -> str:
        missing = any(v.missing for v in self.verdicts)
        bounded = any(v.bound is not None for v in self.verdicts)
        headers = (
            list(self.headers)
            + ["difference", f"{LEVEL} CI", "seeds", "verdict"]
            + (["smallest meaningful"] if bounded else [])
            + (["missing"] if missing else [])
        )
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        for cells, v in self.rows:
            row = (
                list(cells)
                + v.cells()
                + ([v.bound_text()] if bounded else [])
                + ([v.missing_text() or "-"] if missing else [])
            )
            out.append("| " + " | ".join(row) + " |")
        return "\n".join(out)

    def lines(self) -> List[str]:
        """The table, a blank line and the chance line (nothing when the table is empty)."""
        return [self.markdown(), "", self.chance_line()] if self.rows else []


_OPPOSITE = {"better": "worse", "worse": "better", "higher": "lower", "lower": "higher"}


def _group(verdicts: Sequence[Verdict], expect: str) -> Dict[str, List[Verdict]]:
    """The verdicts by what they say about ``expect``: did / small (that way, maybe negligibly) / other / other_small /
    negligible / unsure (inconclusive, one seed, no data)."""
    opposite = _OPPOSITE[expect]
    keys = {
        expect: "did",
        expect + SMALL: "small",
        opposite: "other",
        opposite + SMALL: "other_small",
        "negligible": "negligible",
    }
    out: Dict[str, List[Verdict]] = {k: [] for k in ("did", "small", "other", "other_small", "negligible", "unsure")}
    for v in verdicts:
        out[keys.get(v.word, "unsure")].append(v)
    return out


def _is(k: int) -> str:
    return "is" if k == 1 else "are"


def every(
    verdicts: Sequence[Verdict], claim: str, *, subject: str = "comparison", expect: str = "better", name=None
) -> str:
    """A sentence for "every <subject> <claim>", true only when each verdict's interval says so (its word is
    ``expect``: better, worse, higher or lower, which with a smallest meaningful difference means wholly beyond it);
    otherwise it says how many did, how many went the other way, how many did either by an amount that may be
    negligible, how many are negligible and how many inconclusive, naming the ones that did not. ``name(v)`` names a
    verdict (default: its ``label_a``)."""
    if expect not in SIGNIFICANT:
        raise ValueError(f"every: expect must be one of {SIGNIFICANT}, got {expect!r}")
    name = name or (lambda v: v.label_a)
    n = len(verdicts)
    if n == 0:
        return f"No {subject} was measured, so nothing here says whether every {subject} {claim}."
    g = _group(verdicts, expect)
    did = g["did"]
    beyond = " and beyond the smallest meaningful difference" if any(v.bound is not None for v in did) else ""
    if len(did) == n:
        return (
            f"Every {subject} {claim}: all {n} paired {LEVEL} intervals exclude 0 in that direction{beyond} "
            f"(differences {min(v.mean for v in did):+.{did[0].digits}f} to "
            f"{max(v.mean for v in did):+.{did[0].digits}f})."
        )
    parts = [f"{len(did)} of {n} did (paired {LEVEL} interval excluding 0 in that direction{beyond})"]
    texts = {
        "small": "went that way by an amount that may be negligible",
        "other": "went the other way",
        "other_small": "went the other way by an amount that may be negligible",
    }
    for key in ("other", "small", "other_small"):
        if g[key]:
            parts.append(f"{len(g[key])} {texts[key]} ({_names([name(v) for v in g[key]])})")
    for key, word in (("negligible", "negligible"), ("unsure", "inconclusive")):
        if g[key]:
            parts.append(f"{len(g[key])} {_is(len(g[key]))} {word} ({_names([name(v) for v in g[key]])})")
    return "Not every " + subject + " " + claim + ": " + "; ".join(parts) + "."


def none_of(
    verdicts: Sequence[Verdict],
    did: str,
    *,
    subject: str = "comparison",
    subjects: Optional[str] = None,
    expect: str = "lower",
    name=None,
) -> str:
    """A sentence for "no <subject> <did>" (e.g. "lowered Δ chosen"), where doing it means a verdict with the word
    ``expect``. It never says more than the intervals do: with none of them showing it, the sentence says "no interval
    shows it" and counts the inconclusive ones; otherwise it says how many did and names them. A verdict that went
    that way by an amount that may be negligible (``lower, maybe negligible``) is named as such, never as "did not"."""
    if expect not in SIGNIFICANT:
        raise ValueError(f"none_of: expect must be one of {SIGNIFICANT}, got {expect!r}")
    subjects = subjects or subject + "s"
    name = name or (lambda v: v.label_a)
    n = len(verdicts)
    if n == 0:
        return f"No {subject} was measured, so nothing here says whether any {subject} {did}."
    g = _group(verdicts, expect)
    hits, small = g["did"], g["small"]
    other, unsure = len(g["other"]) + len(g["other_small"]), len(g["unsure"])
    rest = f"{other} went the other way, {unsure} {_is(unsure)} inconclusive"
    if g["negligible"]:
        rest += f", {len(g['negligible'])} {_is(len(g['negligible']))} negligible"
    maybe = (
        f"{len(small)} did by an amount that may be negligible ({_names([name(v) for v in small])}); " if small else ""
    )
    if not hits and not small:
        return f"No {subject} {did} (none of {n} paired {LEVEL} intervals shows it): {rest}."
    if not hits:
        return (
            f"No {subject} {did} by a meaningful amount (no paired {LEVEL} interval lies wholly beyond the "
            f"smallest meaningful difference): {maybe}{rest}."
        )
    beyond = " and beyond the smallest meaningful difference" if any(v.bound is not None for v in hits) else ""
    return (
        f"{len(hits)} of {n} {subjects if n != 1 else subject} {did} (paired {LEVEL} interval excluding 0{beyond}: "
        f"{_names([name(v) for v in hits])}); {maybe}{rest}."
    )
