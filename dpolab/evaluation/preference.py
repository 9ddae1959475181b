"""``dpolab eval``: how a model ranks the pairs of a preference set (with or without a reference model).

Every scored pair is a win (chosen above rejected), a tie or a loss. A tie is a margin within the float32 rounding
of the sums it is made of (:func:`dpolab.models.preference_logps.tie_tolerance`, about 1e-3 nats for 500-token
responses; each pair's is ``tie_tolerance`` in ``per_pair``), so the same log-probs summed in another order or batch
are no win. ``reward_accuracy`` is the share of strict wins over all scored pairs and ``reward_ties`` the share of
ties (a model scored against itself ties every pair: accuracy 0, ties 1), the same definitions as training's
metrics.

With a reference, a pair's score is its log-ratio margin, ``(log p(chosen) - log ref(chosen)) - (log p(rejected) -
log ref(rejected))`` (``logratio_margin``; the implicit reward margin ``rewards/margin`` is beta times it). Without
one it is the plain log-prob difference ``log p(chosen) - log p(rejected)`` (``logp_margin``), summed over each
response's tokens, which favours the shorter response: a warning says so, and the length-normalised variant (mean
per-token log-probs) is reported beside it as ``length_normalised/...``.

Intervals (95 %): Wilson's for accuracies (:func:`dpolab.stats.proportion_ci`), Student's t for mean margins
(:func:`dpolab.stats.mean_ci`). ``per_pair`` writes one JSON line per scored pair.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import nullcontext
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..config import ModelConfig
from ..models.device import describe, inference_autocast, resolve_bf16, resolve_device, set_threads, uses_bf16
from ..models.load import load_saved_model, load_tokenizer
from ..models.preference_logps import TIE_ULPS, generic_metrics, pair_tolerance, preference_outputs
from ..models.reference import SeparateModel
from ..models.unwrap import unwrap
from ..progress import pair_bar

LENGTH_BIAS_WARNING = (
    "warning: no --reference: accuracy compares summed log-probs, which favour the shorter response; "
    "length_normalised/* compares mean per-token log-probs (or give --reference)"
)


def _load(path: str, tokenizer: Optional[str] = None, device: Optional[torch.device] = None):
    tok = load_tokenizer(ModelConfig(name_or_path=path, tokenizer=tokenizer))
    model = load_saved_model(path, tok)
    model.eval()
    return (model.to(device) if device is not None else model), tok


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def outcome(margin: float, tolerance: float = 0.0) -> str:
    """A pair's result from its margin: ``win`` (> tolerance), ``tie`` (|margin| <= tolerance) or ``loss``."""
    return "win" if margin > tolerance else "tie" if abs(margin) <= tolerance else "loss"


def rank_summary(margins: List[float], name: str, tolerances: Optional[List[float]] = None) -> Dict[str, Any]:
    """Accuracy (strict wins over all pairs) with its Wilson interval, ties (|margin| within its tolerance; exactly
    0 without ``tolerances``), and the mean margin with its t-interval, as ``reward_accuracy``, ``reward_ties``,
    ``<name>`` (+ ``_ci95`` [low, high] for both)."""
    from ..stats import mean_ci, proportion_ci

    n = len(margins)
    tols = tolerances if tolerances is not None else [0.0] * n
    results = [outcome(m, t) for m, t in zip(margins, tols)]
    wins, ties = results.count("win"), results.count("tie")
    acc, lo, hi = proportion_ci(wins, n)
    mean, half = mean_ci(margins)
    return {
        "reward_accuracy": acc,
        "reward_accuracy_ci95": [lo, hi],
        "reward_ties": ties / n if n else float("nan"),
        name: mean,
        f"{name}_ci95": [mean - half, mean + half],
    }


def _fmt(summary: Dict[str, Any], margin: str) -> str:
    lo, hi = summary["reward_accuracy_ci95"]
    mlo, mhi = summary[f"{margin}_ci95"]
    return (
        f"accuracy {summary['reward_accuracy']:.3f} (95 % CI {lo:.3f} to {hi:.3f}), ties {summary['reward_ties']:.3f}; "
        f"{margin} {summary[margin]:.4f} (95 % CI {mlo:.4f} to {mhi:.4f})"
    )


@torch.no_grad()
def evaluate_preference_file(
    model: str,
    data: str,
    *,
    reference: Optional[str] = None,
    beta: float = 0.1,
    batch_size: int = 16,
    max_length: int = 512,
    limit: Optional[int] = None,
    columns: Optional[dict] = None,
    tokenizer: Optional[str] = None,
    probes: int = 0,
    per_pair: Optional[str] = None,
    data_format: str = "auto",
    log: Callable[[str], Any] = _stderr,
    device: str = "auto",
    progress: bool = True,
    bf16: Union[bool, str, None] = None,
    threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Mean log-probs of chosen and rejected, reward accuracy and ties, margin (with ``reference``: implicit rewards
    beta * log-ratio; without: plain log-prob differences, plus the length-normalised variant), with 95 % intervals,
    over every usable row of ``data`` (``limit``: the first that many).

    ``per_pair``: a .jsonl file that gets one line per scored pair (index, source row, log-probs, token counts,
    margin, its tie tolerance, win / tie / loss). ``probes`` > 0 also scores that many pairs as a probe set (see
    :mod:`dpolab.diagnostics.probes`); with a reference, the probe deltas are model minus reference (greedy
    responses come from the reference). ``device``: where the models run (:func:`dpolab.models.device.
    resolve_device`). ``bf16``: true, false or auto, as ``train.bf16`` (:func:`dpolab.models.device.resolve_bf16`);
    None: bf16 autocast on a GPU that supports it, else float32. ``threads``: torch's threads, as ``train.threads``
    (None: torch's default). ``progress``: a bar on stderr counting the pairs scored (pairs/s).

    Pairs are scored as training scores them (:func:`score_preference_pairs`: longest first, each prompt computed
    once for both responses, the LM head only at response positions); every output stays in file order."""
    from ..data.dataset import load_preference_data
    from ..data.types import DataError
    from ..errors import ConfigError

    if not (math.isfinite(beta) and beta > 0):
        raise ConfigError(f"beta must be a finite number > 0, got {beta}")
    dev = resolve_device(device)
    use_bf16, why = resolve_bf16(bf16, dev) if bf16 is not None else (uses_bf16(dev), None)
    intra, _, source, _ = set_threads(threads)
    autocast = inference_autocast(dev, use_bf16)
    log(f"device: {describe(dev, use_bf16)}" + (f" ({why})" if why else "") + f"; torch threads {intra} ({source})")
    policy, tok = _load(model, tokenizer, dev)
    ref = None
    if reference:
        ref_model, _ = _load(reference, tokenizer, dev)
        ref = SeparateModel(ref_model)
    pairs, skips = load_preference_data(
        data, tok, columns=columns, max_length=max_length, limit=limit, log=log, data_format=data_format
    )
    if not pairs:  # no metric has a value: say why rather than print NaNs
        raise DataError(
            f"no pair could be scored: 0 of {skips.total} rows read ({skips.summary()}; max_length {max_length})",
            source=data if isinstance(data, str) else None,
        )
    totals: Dict[str, float] = {}
    records: List[Optional[Dict[str, Any]]] = [None] * len(pairs)
    with pair_bar(len(pairs), "eval", enabled=progress) as bar:
        for idx, out in score_preference_pairs(policy, ref, pairs, tok.pad_token_id, batch_size, dev, autocast):
            for k, v in generic_metrics(out).items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(idx)
            for i, rec in zip(idx, _pair_records(out, [pairs[i] for i in idx], idx)):
                records[i] = rec
            bar.update(len(idx))
    n = max(1, len(pairs))
    result: Dict[str, Any] = {k: v / n for k, v in totals.items()}
    scored = f"{len(pairs)} of {len(pairs) + skips.total} rows read scored" + (
        f" (--limit {limit}: later rows not read)" if limit is not None and len(pairs) >= limit else ""
    )
    if ref is not None:
        result.update(
            rank_summary([r["margin"] for r in records], "logratio_margin", [r["tie_tolerance"] for r in records])
        )
        result["rewards/chosen"] = beta * result["logratio/chosen"]
        result["rewards/rejected"] = beta * result["logratio/rejected"]
        result["rewards/margin"] = beta * result["logratio_margin"]
        log(f"{scored}: {_fmt(result, 'logratio_margin')}")
    else:
        result.update(
            rank_summary([r["margin"] for r in records], "logp_margin", [r["tie_tolerance"] for r in records])
        )
        normalised = rank_summary(
            [r["margin_per_token"] for r in records], "logp_margin", [r["tie_tolerance_per_token"] for r in records]
        )
        result.update({f"length_normalised/{k}": v for k, v in normalised.items()})
        log(LENGTH_BIAS_WARNING)
        log(
            f"{scored}: summed log-probs: {_fmt(result, 'logp_margin')}; length-normalised: "
            f"{_fmt(normalised, 'logp_margin')}"
        )
    if probes:
        result.update(
            _probe_deltas(policy, ref.model if ref is not None else None, pairs, tok, probes, batch_size, autocast)
        )
    if per_pair:
        from ..atomic import write_text

        write_text(per_pair, "".join(json.dumps(r) + "\n" for r in records))
    result.update(
        {
            "pairs": len(pairs),
            "rows_read": len(pairs) + skips.total,
            "limit": limit,
            "skipped": skips.counts,
            "model": model,
            "reference": reference,
            "data": data,
        }
    )
    return result


def _hidden_size(model) -> Optional[int]:
    """The model's width (sets the packed rows' length; any length gives the same log-probs)."""
    cfg = getattr(unwrap(model, peft=True), "config", None)
    text = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    return getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)


def score_preference_pairs(
    policy, reference, pairs: Sequence, pad_id: int, batch_size: int, device, autocast=nullcontext
) -> Iterator[Tuple[List[int], Any]]:
    """(indices into ``pairs``, :class:`~dpolab.losses.PreferenceOutputs` of those pairs) for every batch, as
    training scores them: longest pairs first (the padding of a batch is that of pairs of similar length), in the
    prompt-prefix layout (each prompt computed once for both responses) through the fast path of
    :func:`dpolab.models.fastpath.logps_for_batch` (the LM head only where a response token is predicted); the
    same log-probs as a plain padded forward, to float rounding. ``reference``: a
    :class:`~dpolab.models.reference.Reference` or None."""
    from ..data.collate import collate_preference_fast, pair_length

    order = sorted(range(len(pairs)), key=lambda i: (-pair_length(pairs[i]), i))
    width = _hidden_size(policy)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate_preference_fast([pairs[i] for i in idx], pad_id, "prefix", hidden_size=width).to(device)
        yield idx, preference_outputs(policy, reference, batch, need_tokens=False, autocast=autocast)


def _pair_records(out, chunk, indices: Sequence[int]) -> List[Dict[str, Any]]:
    """One record per pair of a scored batch (plain floats, for JSON); margins in the tensors' own arithmetic, so a
    pair's win / tie is exactly what :func:`generic_metrics` counted."""
    has_ref = out.ref_chosen_logps is not None
    if has_ref:
        margin = (
            (out.policy_chosen_logps - out.ref_chosen_logps) - (out.policy_rejected_logps - out.ref_rejected_logps)
        ).tolist()
    else:
        margin = (out.policy_chosen_logps - out.policy_rejected_logps).tolist()
    pc, pr = out.policy_chosen_logps.tolist(), out.policy_rejected_logps.tolist()
    nc, nr = out.chosen_lengths.tolist(), out.rejected_lengths.tolist()
    rc = out.ref_chosen_logps.tolist() if has_ref else None
    rr = out.ref_rejected_logps.tolist() if has_ref else None
    tol = pair_tolerance(out).tolist()
    eps = torch.finfo(torch.float32).eps
    recs = []
    for i, pair in enumerate(chunk):
        rec: Dict[str, Any] = {
            "index": indices[i],
            "row": pair.meta.get("row"),
            "logp_chosen": pc[i],
            "logp_rejected": pr[i],
            "tokens_chosen": int(nc[i]),
            "tokens_rejected": int(nr[i]),
        }
        if has_ref:
            rec.update(ref_logp_chosen=rc[i], ref_logp_rejected=rr[i], margin=margin[i])
        else:
            rec.update(
                margin=margin[i],
                margin_per_token=pc[i] / max(1, nc[i]) - pr[i] / max(1, nr[i]),
                tie_tolerance_per_token=TIE_ULPS
                * eps
                * ((abs(pc[i]) + nc[i]) / max(1, nc[i]) + (abs(pr[i]) + nr[i]) / max(1, nr[i])),
            )
        rec["tie_tolerance"] = tol[i]
        rec["result"] = outcome(rec["margin"], tol[i])
        recs.append(rec)
    return recs


def _probe_deltas(model, reference, pairs, tok, n: int, batch_size: int, autocast=nullcontext) -> Dict[str, Any]:
    from ..diagnostics.probes import build_probe_set, probe_metrics, score_probes

    probes = build_probe_set(
        pairs, tok, n=n, model=reference if reference is not None else model, batch_size=batch_size
    )
    scores = score_probes(model, probes, tok.pad_token_id, batch_size=batch_size, autocast=autocast)
    base = (
        score_probes(reference, probes, tok.pad_token_id, batch_size=batch_size, autocast=autocast)
        if reference is not None
        else None
    )
    return probe_metrics(scores, base, probes.buckets)
