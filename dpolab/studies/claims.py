"""The machine-readable claims of a study report: one :class:`Claim` per seed claim, written as ``claims.json`` beside
``report.md`` (:func:`write_claims`), read back by the evidence table (:mod:`dpolab.studies.evidence`).

``claims.json`` is ``{"study": NAME, "size": SIZE, "smoke": bool, "claims": [Claim, ...]}``; a claim's fields are
those of :class:`Claim`. :data:`SEED_CLAIMS` lists every packaged study's seed claims (id, the paper's claim, the
paper's number), so a study that has not written its file yet still gets its rows, marked as not run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import UserError

CLAIMS_FILE = "claims.json"


@dataclass
class Claim:
    """One seed claim of a study as measured: ``ours`` with its 95 % interval ``low`` to ``high`` (None when not
    measured or one seed), in ``unit``; ``verdict``: the word of the paired verdict (:attr:`dpolab.stats.Verdict.word`)
    or a sentence when there is none; ``report_link`` and ``figure``: paths relative to the study folder."""

    id: str  # e.g. "S2.madpo-vs-dpo"; the seed claims' ids are those of SEED_CLAIMS
    study: str  # the packaged study's name (dpolab study NAME)
    claim: str  # the paper's claim, in words
    paper_number: str  # the paper's number(s), as text
    setting: str  # ours: model, data, steps, lr
    ours: Optional[float]
    low: Optional[float]
    high: Optional[float]
    verdict: str
    report_link: str = "report.md"
    figure: Optional[str] = None
    unit: str = ""  # of ours / low / high, e.g. "oracle reward"; "x ..." marks a ratio (read against 1)
    measured: str = ""  # what ours is, e.g. "MADPO - DPO, paired by seed, High tier"
    seeds: int = 0  # paired seeds behind the interval


# id -> (study, the paper's claim, the paper's number): the order of EVIDENCE.md's rows
SEED_CLAIMS: Dict[str, Tuple[str, str, str]] = {
    "S1.dpo-gain-paraphrase": (
        "sft-dpo",
        "DPO gives a small gain over a strong SFT (paraphrase)",
        "accuracy 89.87 -> 90.05 % (+0.18)",
    ),
    "S1.dpo-gain-sonnets": (
        "sft-dpo",
        "DPO gives a small gain over a strong SFT (sonnets)",
        "chrF 41.29 -> 41.48 (+0.19)",
    ),
    "S1.full-vs-lora": ("sft-dpo", "full fine-tuning beats LoRA at matched depth", "full > LoRA (no single number)"),
    "S1.lora-time": ("sft-dpo", "LoRA does not cut wall-clock time for a small model", "LoRA / full time ~ 1"),
    "S2.madpo-vs-dpo": ("madpo", "MADPO > DPO on every data-quality tier (High shown)", "High: 2.23 vs 1.62 (+0.61)"),
    "S2.madpo-oracle-margin": (
        "madpo",
        "MADPO's gain rests on the reward model's margins (addendum: a perfect reward model)",
        "not in the paper",
    ),
    "S3.dpo-chosen-low-ed": (
        "dpop",
        "DPO lowers the chosen likelihood on low edit-distance pairs",
        "chosen log-prob falls (figure, no single number)",
    ),
    "S3.dpop-chosen": ("dpop", "DPOP does not lower the chosen likelihood", "chosen log-prob kept (figure)"),
    "S4.dpo-chosen": ("squeeze", "DPO lowers delta chosen (squeezing)", "Pythia-410M: -11.90"),
    "S4.gate-chosen": ("squeeze", "Gate-DPO (seq) keeps delta chosen >= 0", "Pythia-410M: +1.17"),
    "S4.gate-others": ("squeeze", "Gate-DPO shrinks the fall of others against DPO", "-1.42 vs -27.55"),
}
STUDY_ORDER = ("sft-dpo", "madpo", "dpop", "squeeze")


class ClaimsError(UserError):
    """A claims.json that is not in the shape of :class:`Claim`."""


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def claim_from_verdict(claim_id: str, verdict, *, setting: str, figure: Optional[str] = None, **extra: Any) -> Claim:
    """A seed claim from a paired verdict (:class:`dpolab.stats.Verdict`): its mean difference, interval and word;
    the claim's words and the paper's number come from :data:`SEED_CLAIMS` unless given in ``extra``."""
    study, text, paper = SEED_CLAIMS.get(claim_id, ("", "", ""))
    has = verdict.n > 0
    return Claim(
        id=claim_id,
        study=extra.pop("study", study),
        claim=extra.pop("claim", text),
        paper_number=extra.pop("paper_number", paper),
        setting=setting,
        ours=_num(verdict.mean) if has else None,
        low=_num(verdict.low) if verdict.has_interval else None,
        high=_num(verdict.high) if verdict.has_interval else None,
        verdict=verdict.word,
        figure=figure,
        seeds=verdict.n,
        measured=extra.pop("measured", f"{verdict.label_a} - {verdict.label_b} ({verdict.metric}), paired by seed"),
        **extra,
    )


def write_claims(out: Path, study: str, size: str, claims: List[Claim], smoke: bool = False) -> Path:
    """``<out>/claims.json`` (atomically)."""
    from ..atomic import write_text

    path = Path(out) / CLAIMS_FILE
    doc = {"study": study, "size": size, "smoke": smoke, "claims": [asdict(c) for c in claims]}
    write_text(path, json.dumps(doc, indent=1, allow_nan=False))
    return path


def read_claims(path: Path) -> Dict[str, Any]:
    """A claims.json as ``{"study", "size", "smoke", "claims": [Claim]}``; a file in another shape is one line."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClaimsError(f"{path}: cannot read the claims file ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list) or not isinstance(doc.get("study"), str):
        raise ClaimsError(f"{path}: expected an object with 'study' (text) and 'claims' (a list)")
    names = {f.name for f in fields(Claim)}
    required = names - _DEFAULTS
    claims = []
    for i, c in enumerate(doc["claims"]):
        if not isinstance(c, dict):
            raise ClaimsError(f"{path}: claim {i} is not an object")
        unknown, missing = set(c) - names, required - set(c)
        if unknown or missing:
            raise ClaimsError(
                f"{path}: claim {i} ({c.get('id', '?')}): "
                + "; ".join(
                    x
                    for x in (
                        f"unknown field(s) {', '.join(sorted(unknown))}" if unknown else "",
                        f"missing field(s) {', '.join(sorted(missing))}" if missing else "",
                    )
                    if x
                )
            )
        for k in ("ours", "low", "high"):
            if c[k] is not None and _num(c[k]) is None:
                raise ClaimsError(f"{path}: claim {i} ({c['id']}): field {k} must be a finite number or null")
        claims.append(Claim(**c))
    return {"study": doc["study"], "size": doc.get("size", "?"), "smoke": bool(doc.get("smoke")), "claims": claims}


_DEFAULTS = {"report_link", "figure", "unit", "measured", "seeds"}
