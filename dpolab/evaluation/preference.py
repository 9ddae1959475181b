"""``dpolab eval``: how a model ranks the pairs of a preference set (with or without a reference model)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..config import ModelConfig
from ..models.preference_logps import generic_metrics, preference_outputs
from ..models.load import load_saved_model, load_tokenizer
from ..models.reference import Reference


def _load(path: str, tokenizer: Optional[str] = None):
    tok = load_tokenizer(ModelConfig(name_or_path=path, tokenizer=tokenizer))
    model = load_saved_model(path, tok)
    model.eval()
    return model, tok


@torch.no_grad()
def evaluate_preference_file(model: str, data: str, *, reference: Optional[str] = None, beta: float = 0.1,
                             batch_size: int = 16, max_length: int = 512, limit: Optional[int] = None,
                             columns: Optional[dict] = None, tokenizer: Optional[str] = None, probes: int = 0) -> Dict[str, Any]:
    """Mean log-probs of chosen and rejected, reward accuracy and margin (with ``reference``: implicit rewards
    beta * log-ratio; without: plain log-prob differences), over the rows of ``data``.

    ``probes`` > 0 also scores that many pairs as a probe set (see :mod:`dpolab.diagnostics.probes`); with a
    reference, the probe deltas are model minus reference (greedy responses come from the reference)."""
    from ..data.collate import collate_preference
    from ..data.dataset import load_preference_data

    policy, tok = _load(model, tokenizer)
    ref = None
    if reference:
        ref_model, _ = _load(reference, tokenizer)
        ref = Reference("separate", model=ref_model)
    pairs, skips = load_preference_data(data, tok, columns=columns, max_length=max_length, limit=limit)
    totals: Dict[str, float] = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = collate_preference(chunk, tok.pad_token_id)
        out = preference_outputs(policy, ref, batch, need_tokens=False)
        for k, v in generic_metrics(out).items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(chunk)
    n = max(1, len(pairs))
    result: Dict[str, Any] = {k: v / n for k, v in totals.items()}
    if probes:
        result.update(_probe_deltas(policy, ref.model if ref is not None else None, pairs, tok, probes, batch_size))
    if reference:
        result["rewards/chosen"] = beta * result["logratio/chosen"]
        result["rewards/rejected"] = beta * result["logratio/rejected"]
        result["rewards/margin"] = beta * result["margin"]
    result.update({"pairs": len(pairs), "skipped": skips.counts, "model": model, "reference": reference, "data": data})
    return result


def _probe_deltas(model, reference, pairs, tok, n: int, batch_size: int) -> Dict[str, Any]:
    from ..diagnostics.probes import build_probe_set, probe_metrics, score_probes

    probes = build_probe_set(pairs, tok, n=n, model=reference if reference is not None else model, batch_size=batch_size)
    scores = score_probes(model, probes, tok.pad_token_id, batch_size=batch_size)
    base = score_probes(reference, probes, tok.pad_token_id, batch_size=batch_size) if reference is not None else None
    return probe_metrics(scores, base, probes.buckets)
