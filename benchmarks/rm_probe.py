"""How well can a reward model on a given backbone rank a study's preference pairs? A linear-probe ceiling.

    .venv/bin/python benchmarks/rm_probe.py probe MODEL TRAIN.jsonl EVAL.jsonl [--pairs 160,320,640]
                                            [--label study,oracle]
    .venv/bin/python benchmarks/rm_probe.py sample MODEL IMDB_DIR OUT_DIR --prompts 640 [--split train]
                                            [--temperature 1]

``sample`` builds more S2 pairs than a study size holds, with the study's own code (two sampled continuations per IMDb
prompt, VADER scores, the Bradley-Terry label draw, the tiers) into OUT_DIR/{high,medium,low}.jsonl.

MODEL is a saved policy folder (e.g. ``runs/study-madpo-small/runs/sft/final``) or a model preset (``smollm2-135m``);
TRAIN and EVAL are pair files with ``prompt``, ``chosen``, ``rejected`` and the oracle's ``oracle_chosen`` /
``oracle_rejected`` scores (the S2 tiers ``data/<tier>.jsonl`` and ``data/eval/<tier>.jsonl``).

The backbone is frozen; each text (prompt + response) becomes two feature vectors: the final hidden state at the last
token (what a ``*ForSequenceClassification`` head reads) and the mean over tokens. An L2-regularised logistic
regression on the feature difference of each pair (both orders, no intercept, standardised features) is fitted on the
first N training pairs for each N of ``--pairs``, with the labels the study trains its reward models on (``study``:
chosen > rejected as labelled, i.e. the Bradley-Terry draw) and, for comparison, with the oracle's own order
(``oracle``: noise-free labels; pairs the oracle ties are left out). It is scored on the held-out pairs as the share
where the sign of the probe's margin matches the oracle's order (oracle ties left out), with a 95 % Wilson interval.

A probe is not the study's reward model (that one also adapts the backbone with LoRA), but when a probe with many more
pairs, or with noise-free labels, stays far below a target, the features the backbone gives these texts do not carry
the oracle's order well enough, and a short reward-model training cannot be expected to reach it either.
Appends one JSON line per (pooling, labels, N, regularisation) to $OUT (default benchmarks/results/rm_probe.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from dpolab.stats import proportion_ci

RESULTS = os.environ.get("OUT", str(Path(__file__).resolve().parent / "results" / "rm_probe.jsonl"))


def read_pairs(path: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, r in enumerate(rows, 1):
        missing = [k for k in ("prompt", "chosen", "rejected", "oracle_chosen", "oracle_rejected") if k not in r]
        if missing:
            raise SystemExit(f"{path}: row {i}: no field {missing[0]!r} (this probe needs pairs scored by an oracle)")
    return rows


@torch.no_grad()
def features(model, tok, texts: list[str], max_length: int, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(last-token, mean) final hidden states of each text, float64 [N, H] each."""
    last, mean = [], []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i : i + batch], return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        h = model.base_model(**enc).last_hidden_state.double()  # the backbone only: the LM head's logits are not needed
        m = enc["attention_mask"]
        idx = (m * torch.arange(m.shape[1])).argmax(1)  # rightmost real token, whichever side pads
        last.append(h[torch.arange(h.shape[0]), idx])
        mean.append((h * m[..., None]).sum(1) / m.sum(1, keepdim=True))
    return torch.cat(last), torch.cat(mean)


def fit_probe(diff: torch.Tensor, l2: float) -> torch.Tensor:
    """Logistic regression of 'first beats second' on pair differences (each pair in both orders)."""
    x = torch.cat([diff, -diff])
    y = torch.cat([torch.ones(len(diff)), torch.zeros(len(diff))]).double()
    scale = x.std(0) + 1e-8
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits((x / scale) @ w, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (w / scale).detach()


def sample(args) -> None:
    from dpolab.config import ModelConfig
    from dpolab.models.load import load_saved_model, load_tokenizer
    from dpolab.tasks import sentiment as S

    files = S.local_files(args.imdb)
    if not files[args.split].exists():
        raise SystemExit(
            f"{files[args.split]}: not found (IMDB_DIR is the imdb-cad-sentiment folder, with orig/{args.split}.tsv)"
        )
    tok = load_tokenizer(ModelConfig(name_or_path=args.model))
    model = load_saved_model(args.model).eval()
    prompts = S.prompt_rows(str(files[args.split]), max_rows=args.prompts, review_chars=args.review_chars)
    t0 = time.perf_counter()
    tiers = S.build_preference_tiers(
        model,
        tok,
        prompts,
        seed=args.seed,
        out_dir=args.out,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        batch_size=64,
    )
    print(f"{len(tiers['high'])} pairs per tier -> {args.out} in {time.perf_counter() - t0:.0f} s")


def main() -> None:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("sample", help="sample and label S2 pairs with the study's code")
    sp.add_argument("model")
    sp.add_argument("imdb", help="the imdb-cad-sentiment folder")
    sp.add_argument("out")
    sp.add_argument("--prompts", type=int, default=640)
    sp.add_argument("--split", default="train", choices=("train", "dev", "test"))
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--max-new-tokens", type=int, default=24)
    sp.add_argument("--review-chars", type=int, default=160)
    sp.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    ap = sub.add_parser("probe", help="fit and score linear probes")
    ap.add_argument("model")
    ap.add_argument("train")
    ap.add_argument("eval")
    ap.add_argument("--pairs", default="160,320,640", help="training-pair counts (the first N pairs of TRAIN)")
    ap.add_argument(
        "--label", default="study,oracle", help="study (the pairs' labels) and/or oracle (the oracle's order)"
    )
    ap.add_argument(
        "--l2",
        default="0.1,1",
        help="penalties: l2 / N * |w|^2 added to the mean log-loss over both orders "
        "of N pairs, on standardised features (scikit-learn's C = 1 / (4 l2))",
    )
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    args = top.parse_args()
    torch.set_num_threads(args.threads)
    if args.cmd == "sample":
        return sample(args)

    labels = args.label.split(",")
    unknown = [v for v in labels if v not in ("study", "oracle")]
    if unknown:  # checked before minutes of feature extraction
        raise SystemExit(f"--label: unknown '{unknown[0]}' (study or oracle)")

    from dpolab.config import ModelConfig
    from dpolab.models.load import load_saved_model, load_tokenizer

    train, held = read_pairs(args.train), read_pairs(args.eval)
    counts = sorted({min(int(n), len(train)) for n in args.pairs.split(",")})
    train = train[: counts[-1]]
    tok = load_tokenizer(ModelConfig(name_or_path=args.model))
    model = load_saved_model(args.model).eval()  # a saved folder, or a preset such as smollm2-135m
    t0 = time.perf_counter()
    feats = {}
    for name, rows in (("train", train), ("eval", held)):
        c = features(model, tok, [r["prompt"] + r["chosen"] for r in rows], args.max_length)
        j = features(model, tok, [r["prompt"] + r["rejected"] for r in rows], args.max_length)
        feats[name] = {"last": c[0] - j[0], "mean": c[1] - j[1]}
    print(f"features of {2 * (len(train) + len(held))} texts in {time.perf_counter() - t0:.0f} s", flush=True)

    order = torch.tensor([r["oracle_chosen"] > r["oracle_rejected"] for r in held])
    untied = torch.tensor([r["oracle_chosen"] != r["oracle_rejected"] for r in held])
    train_order = torch.tensor([r["oracle_chosen"] > r["oracle_rejected"] for r in train])
    train_untied = torch.tensor([r["oracle_chosen"] != r["oracle_rejected"] for r in train])
    label_agree = float(train_order[train_untied].double().mean())
    print(
        f"training labels agree with the oracle's order on {label_agree:.3f} of the untied training pairs; "
        f"{int(untied.sum())} of {len(held)} held-out pairs are untied"
    )
    print("| pooling | labels | train pairs | l2 | oracle agreement (95 % CI) |\n|---|---|---:|---:|---|")
    for pooling in ("last", "mean"):
        for label in labels:
            for n in counts:
                d = feats["train"][pooling][:n]
                if label == "oracle":
                    keep = train_untied[:n]
                    d = torch.where(train_order[:n, None], d, -d)[keep]
                for l2 in (float(v) for v in args.l2.split(",")):
                    w = fit_probe(d, l2 / len(d))
                    hit = ((feats["eval"][pooling] @ w > 0) == order)[untied]
                    k, m = int(hit.sum()), len(hit)
                    _, lo, hi = proportion_ci(k, m)
                    rec = {
                        "model": args.model,
                        "train": args.train,
                        "eval": args.eval,
                        "pooling": pooling,
                        "labels": label,
                        "train_pairs": len(d),
                        "l2": l2,
                        "oracle_agreement": k / m,
                        "ci": [lo, hi],
                        "eval_pairs": m,
                        "train_label_agreement": label_agree,
                        "threads": args.threads,
                    }
                    print(
                        f"| {pooling} | {label} | {len(d)} | {l2:g} | {k / m:.3f} ({lo:.3f} to {hi:.3f}) |", flush=True
                    )
                    with open(RESULTS, "a", encoding="utf-8") as f:
                        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
