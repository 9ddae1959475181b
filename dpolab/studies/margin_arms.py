"""S2 addendum: the margin MADPO reads from a reward model of known quality.

Besides the learned reward model's ``rm_margin``, MADPO runs with margins from

- ``oracle``: the oracle's score difference on the Bradley-Terry scale the labels were drawn with,
  ``(oracle(chosen) - oracle(rejected)) / T`` (a perfect reward model: the labels' own log-odds);
- ``oracle+noise@A``: that margin plus Gaussian noise ``sigma * N(0, 1)`` (one draw per pair, seeded), ``sigma``
  calibrated by bisection on the training pairs (the calibration split) so that the expected pairwise accuracy
  against the labels, ``mean_i Phi(m_i / sigma)``, is ``A``; the accuracy the report uses is the one *measured* on
  the held-out pairs with their drawn noise, never the target. A target at or above the oracle margin's own accuracy
  cannot be reached by adding noise: sigma is 0 and the record says so.

Accuracy counts a margin > 0 as right (the label's chosen response scores higher) and a margin of exactly 0 as half.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

ORACLE = "oracle"
MARGINS_FILE = "margins.json"  # in <out>/data: every arm's calibration and measured accuracy


def noisy(accuracy: float) -> str:
    """The margin source's name of a target accuracy, e.g. ``oracle+noise@0.80``."""
    return f"{ORACLE}+noise@{accuracy:.2f}"


def sources(accuracies: Sequence[float]) -> List[str]:
    return [ORACLE] + [noisy(a) for a in accuracies]


def target_of(source: str) -> Optional[float]:
    return float(source.split("@", 1)[1]) if "@" in source else None


def slug(source: str) -> str:
    """The source in a file or run name: ``oracle``, ``oracle-noise-0.80``."""
    return source.replace("+", "-").replace("@", "-")


def oracle_margin(row: Dict[str, Any], temperature: float) -> float:
    return (float(row["oracle_chosen"]) - float(row["oracle_rejected"])) / temperature


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def expected_accuracy(margins: Sequence[float], sigma: float) -> float:
    """Expected pairwise accuracy against the labels of ``m + sigma * N(0, 1)``: the mean of ``Phi(m / sigma)``
    (sigma 0: 1 for m > 0, 1/2 for m = 0, 0 for m < 0)."""
    if not margins:
        raise ValueError("no margins to calibrate on")
    if sigma <= 0:
        return sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / len(margins)
    return sum(_phi(m / sigma) for m in margins) / len(margins)


def accuracy(margins: Iterable[float]) -> float:
    ms = list(margins)
    return expected_accuracy(ms, 0.0)


@dataclass
class Calibration:
    target: float
    sigma: float
    calibration_accuracy: float  # expected accuracy on the calibration pairs at sigma
    oracle_accuracy: float  # the noiseless oracle margin's accuracy on the calibration pairs
    reachable: bool  # False: the target is at or above the oracle's own accuracy (sigma 0)
    calibration_pairs: int


def calibrate(margins: Sequence[float], target: float, tol: float = 1e-4, iters: int = 200) -> Calibration:
    """The noise scale at which the expected accuracy of ``margins`` + noise is ``target`` (within ``tol``)."""
    if not 0.5 < target < 1.0:
        raise ValueError(f"a target pairwise accuracy must lie in (0.5, 1), got {target}")
    acc0 = expected_accuracy(margins, 0.0)
    if target >= acc0:
        return Calibration(target, 0.0, acc0, acc0, False, len(margins))
    scale = max(abs(m) for m in margins) or 1.0
    lo, hi = 0.0, scale
    while expected_accuracy(margins, hi) > target and hi < scale * 1e6:
        lo, hi = hi, hi * 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        a = expected_accuracy(margins, mid)
        if abs(a - target) <= tol / 4:
            lo = hi = mid
            break
        lo, hi = (mid, hi) if a > target else (lo, mid)
    sigma = (lo + hi) / 2
    return Calibration(target, sigma, expected_accuracy(margins, sigma), acc0, True, len(margins))


def add_noise(margins: Sequence[float], sigma: float, seed: str) -> List[float]:
    rng = random.Random(seed)
    return [m + sigma * rng.gauss(0.0, 1.0) for m in margins]


def read_jsonl(path: Path) -> List[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def write_margin_files(
    train_src: Path,
    eval_src: Path,
    train_dst: Path,
    eval_dst: Path,
    source: str,
    temperature: float,
) -> Dict[str, Any]:
    """The tier's pairs with ``rm_margin`` from ``source`` (train and held-out); returns the record of the arm:
    calibration (on the training pairs) and the accuracy measured on the held-out pairs."""
    from ..atomic import write_text

    train, held = read_jsonl(train_src), read_jsonl(eval_src)
    m_train = [oracle_margin(r, temperature) for r in train]
    m_held = [oracle_margin(r, temperature) for r in held]
    target = target_of(source)
    record: Dict[str, Any] = {"source": source, "temperature": temperature}
    if target is not None:
        cal = calibrate(m_train, target)
        record.update(asdict(cal))
        m_train = add_noise(m_train, cal.sigma, f"{source}/train")
        m_held = add_noise(m_held, cal.sigma, f"{source}/eval")
    for rows, ms, dst in ((train, m_train, train_dst), (held, m_held, eval_dst)):
        write_text(dst, "".join(json.dumps({**r, "rm_margin": m}) + "\n" for r, m in zip(rows, ms)))
    record.update(
        heldout_accuracy=accuracy(m_held),
        heldout_pairs=len(m_held),
        train_accuracy=accuracy(m_train),
        heldout_oracle_agreement=oracle_agreement([{**r, "rm_margin": m} for r, m in zip(held, m_held)]),
    )
    return record


def oracle_agreement(rows: Sequence[Dict[str, Any]]) -> Optional[float]:
    """Share of pairs (oracle ties left out) whose ``rm_margin`` sign matches the oracle difference's sign."""
    usable = [r for r in rows if r.get("rm_margin") is not None and r["oracle_chosen"] != r["oracle_rejected"]]
    if not usable:
        return None
    hits = sum((r["rm_margin"] > 0) == (r["oracle_chosen"] > r["oracle_rejected"]) for r in usable)
    return hits / len(usable)
