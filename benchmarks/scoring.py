"""Scoring speed: ``dpolab eval``'s scoring path against a plain padded fp32 forward loop, at equal scores.

    python benchmarks/scoring.py                        # smollm2-135m, 352 HH-sized chat pairs, batch 8, 3 rounds
    python benchmarks/scoring.py --model tiny-gpt2 --pairs 16 --rounds 1 --no-write   # a smoke run

The workload (``scoring``): HH-sized chat pairs in Anthropic-HH text (``data.format=hh``, the model's chat template),
1 to 3 earlier turns and responses of 20 to 180 words taken from the IMDB reviews of ``workloads.DATA`` (random
words when that file is absent), seeded, cut at ``--max-length`` tokens (512) as ``dpolab eval`` cuts them. Arms,
each over every pair:

- ``plain``: file order, batches of ``--batch-size`` pairs padded to their longest, the model's full logits, the
  response tokens' log-probs gathered from them (``gather_logps``); fp32.
- ``dpolab``: :func:`dpolab.evaluation.preference.score_preference_pairs` (what ``dpolab eval`` runs: longest pairs
  first, the prompt-prefix layout, the LM head only at response positions); fp32.
- ``dpolab-bf16`` (``--bf16``): the same under bf16 autocast (``dpolab eval --bf16 true``).

Same-scores check: every response's mean per-token log-prob from ``dpolab`` within ``--tol`` (1e-4) of ``plain``'s
(its summed log-prob's largest difference is reported beside it: float32 sums of a few hundred terms round at about
1e-4 whichever path computes them), else the run stops and writes nothing; bf16's differences are reported, not
checked. Each round runs every arm once
(order rotated); times are medians over rounds, ratios = plain's time / the arm's within a round. The section names
the CPU (model, amx_bf16 / avx512_bf16 / avx2) and is appended to benchmarks/RESULTS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import cpu, versions  # noqa: E402


def _words(seed: int) -> list:
    try:
        from workloads import imdb_pairs

        text = " ".join(p + " " + n for p, n in imdb_pairs(400))
        words = text.split()
    except OSError:
        words = []
    if len(words) < 1000:  # no IMDB file: random lower-case words
        rng = random.Random(seed)
        words = ["".join(rng.choice("etaoinshrdlucmfw") for _ in range(rng.randint(2, 8))) for _ in range(5000)]
    return words


def hh_rows(n: int, seed: int = 0) -> list:
    """``n`` Anthropic-HH rows (``chosen`` / ``rejected`` transcripts sharing their earlier turns)."""
    rng = random.Random(seed)
    words = _words(seed)

    def say(lo: int, hi: int) -> str:
        k = rng.randint(lo, hi)
        start = rng.randrange(0, len(words) - k)
        return " ".join(words[start : start + k])

    rows = []
    for _ in range(n):
        turns = "".join(f"\n\nHuman: {say(8, 40)}\n\nAssistant: {say(15, 80)}" for _ in range(rng.randint(0, 2)))
        prompt = turns + f"\n\nHuman: {say(8, 40)}\n\nAssistant:"
        rows.append({"chosen": f"{prompt} {say(20, 180)}", "rejected": f"{prompt} {say(20, 180)}"})
    return rows


def plain_scores(model, pairs, pad_id: int, batch_size: int) -> list:
    """(chosen, rejected) summed log-probs by the plain padded forward, file order."""
    import torch

    from dpolab.data.collate import collate_preference
    from dpolab.models.logprobs import gather_logps, split_pairs

    out = []
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            b = collate_preference(pairs[s : s + batch_size], pad_id)
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
            c, r = split_pairs(gather_logps(logits, b.input_ids, b.loss_mask).sums, b.num_pairs)
            out += list(zip(c.tolist(), r.tolist()))
    return out


def dpolab_scores(model, pairs, pad_id: int, batch_size: int, bf16: bool) -> list:
    """The same by ``dpolab eval``'s path, put back in file order."""
    import torch

    from dpolab.evaluation.preference import score_preference_pairs
    from dpolab.models.device import inference_autocast

    autocast = inference_autocast(torch.device("cpu"), bf16) if bf16 else nullcontext
    out = [None] * len(pairs)
    with torch.no_grad():
        for idx, o in score_preference_pairs(model, None, pairs, pad_id, batch_size, torch.device("cpu"), autocast):
            for i, c, r in zip(idx, o.policy_chosen_logps.tolist(), o.policy_rejected_logps.tolist()):
                out[i] = (c, r)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a preset (smollm2-135m) or tiny-gpt2 / tiny-llama")
    ap.add_argument("--pairs", type=int, default=352, help="pairs scored per arm run (HH's held-out split: 352)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also time dpolab's path under bf16 autocast")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--tol", type=float, default=1e-4, help="same-scores tolerance (nats per response token)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    a = ap.parse_args(argv)

    from dpolab.config import LoraConfig, ModelConfig
    from dpolab.data.dataset import load_preference_data
    from dpolab.models.device import set_threads
    from dpolab.models.load import load_policy, load_tokenizer

    threads = set_threads(a.threads)[0]
    cfg = ModelConfig(name_or_path=a.model)
    tok = load_tokenizer(cfg)
    model = load_policy(cfg, LoraConfig(), tok, seed=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hh.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in hh_rows(a.pairs)))
        pairs, skips = load_preference_data(
            str(path), tok, max_length=a.max_length, log=lambda m: None, data_format="hh"
        )
    tokens = [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    arms = {
        "plain": lambda: plain_scores(model, pairs, tok.pad_token_id, a.batch_size),
        "dpolab": lambda: dpolab_scores(model, pairs, tok.pad_token_id, a.batch_size, False),
    }
    if a.bf16:
        arms["dpolab-bf16"] = lambda: dpolab_scores(model, pairs, tok.pad_token_id, a.batch_size, True)
    times = {k: [] for k in arms}
    scores = {}
    for r in range(a.rounds):
        names = list(arms)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            scores[name] = arms[name]()
            times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}: {name} {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    counts = [(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    diff, per_token = {}, {}
    for k in arms:
        if k == "plain":
            continue
        d = [(abs(x - y), n) for p, q, ns in zip(scores[k], scores["plain"], counts) for x, y, n in zip(p, q, ns)]
        diff[k], per_token[k] = max(e for e, _ in d), max(e / max(1, n) for e, n in d)
    if per_token["dpolab"] > a.tol:
        raise SystemExit(
            f"same-scores check failed: dpolab's per-token log-probs differ from plain's by {per_token['dpolab']:.2e} "
            f"> {a.tol:g} (nothing written)"
        )
    where = cpu()
    ratio = {k: statistics.median(p / t for p, t in zip(times["plain"], times[k])) for k in arms}
    rows = "\n".join(
        f"| {k} | {statistics.median(v):.2f} | {len(pairs) / statistics.median(v):.1f} | {ratio[k]:.2f} | "
        f"{'-' if k == 'plain' else f'{diff[k]:.1e}'} |"
        for k, v in times.items()
    )
    command = "python benchmarks/scoring.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    best = "; ".join(f"{k} {ratio[k]:.2f}x" for k in arms if k != "plain")
    text = "\n\n".join(
        [
            f"\n## {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} — `{command}`",
            f"### workload `scoring` — model {a.model}, {len(pairs)} HH-sized chat pairs ({skips.total} skipped; "
            f"prompt + longer response {min(tokens)}-{max(tokens)} tokens, median {statistics.median(tokens):.0f}), "
            f"batch {a.batch_size} pairs, {a.rounds} rounds, {threads} torch threads",
            f"CPU: {where}; load average (1 min) {os.getloadavg()[0]:.2f}; versions: {versions()}",
            f"Same scores: dpolab fp32 against the plain padded fp32 forward, largest difference of a summed "
            f"response log-prob {diff['dpolab']:.1e} nats, of a response's mean per-token log-prob "
            f"{per_token['dpolab']:.1e} (checked: at most {a.tol:g}; sums of a few hundred float32 terms of a few "
            f"nats each round at about 1e-4)."
            + (
                f" bf16: largest differences {diff['dpolab-bf16']:.2e} (sum) and {per_token['dpolab-bf16']:.2e} "
                f"(per token), rounding, not checked."
                if a.bf16
                else ""
            ),
            f"**Headline** (on {where}): scoring {len(pairs)} pairs, speed-up over the plain padded fp32 loop "
            f"(median over rounds): {best}.",
            "| arm | time (s) | pairs/s | speed-up | max abs diff |\n|---|---|---|---|---|\n" + rows,
        ]
    )
    print(text)
    if not a.no_write:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
