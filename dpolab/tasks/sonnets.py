"""Shakespeare sonnet continuation (study S1): the first 3 lines are given, the model writes the rest.

Files (CS224N "Build GPT-2" release, ``../shared/data/shakespeare-sonnets/``):

- ``sonnets.txt``: a 9-line Folger header, then for each sonnet its number alone on a line, a blank line and
  its lines (131 sonnets, 1-131; CRLF line endings; sonnet 99 has 15 lines, 126 has 12, the rest 14);
- ``sonnets_held_out_dev.txt``: the same header, then the first 3 lines of sonnets 132-143 (dev prompts);
- ``TRUE_sonnets_held_out_dev.txt``: the full text of sonnets 132-143 (dev references).

:func:`parse_sonnets` accepts CRLF, LF or CR line endings and a UTF-8 BOM, ignores everything before the first
line that is a number alone (the header), and keeps each line's leading indentation (the final couplet is
indented by two spaces in the Folger text) with trailing whitespace removed. Line counts are not forced to 14.

Rows (``prompt`` = the first ``n_prompt_lines`` lines joined by ``\\n`` plus a final ``\\n``; continuation =
the remaining lines joined by ``\\n``, no final newline; the data pipeline appends EOS):

- :func:`sft_rows` ``{prompt, completion, reference, number, id}``;
- :func:`dev_rows`: the dev prompts paired with their references (checked to agree on the first lines);
- preference pairs, chosen = the true continuation, rejected =
  * :func:`sampled_rejected_rows`: a continuation sampled from the current model (the paper's construction;
    seeded; samples identical to the truth or empty are dropped and counted);
  * :func:`shuffled_rejected_rows` (model-free, the default of ``task: sonnets`` in preference mode): the true
    continuation with its lines in a seeded random non-identity order. Same words, same length, so the pair
    isolates order and coherence (rhyme scheme, syntax running across lines) rather than vocabulary;
  * :func:`other_sonnet_rejected_rows` (model-free): the continuation of a different sonnet (a seeded
    derangement): fluent Shakespeare that does not follow from the prompt.

Metrics:

- :func:`chrf_metrics`: continuations sampled from the model (``do_sample``, ``temperature``, ``top_p``, seeded;
  or greedy) for each prompt, cut to the reference's number of lines, scored with **corpus-level** chrF
  (``sacrebleu.corpus_chrf(hyps, [refs])``, chrF2, character 6-grams, as the CS224N project) -> ``chrf``; the
  mean of sentence-level chrF over sonnets is also given as ``chrf_sentence_mean``;
- :func:`continuation_nll`: held-out log-likelihood of the true continuations given their prompts: summed
  token NLL / number of continuation tokens (EOS not counted) -> ``nll_per_token`` (and ``ppl``), and per
  character ``nll_per_char`` (comparable across tokenizers), via :func:`dpolab.models.logprobs.response_logps`.

:func:`chrf_hook`, :func:`nll_hook` and :func:`sonnet_metrics_hook` wrap them for the engine's ``eval_hooks``.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

from dpolab.data.types import DataError, SkipCounter
from dpolab.tasks.registry import Task, register, require_path

N_PROMPT_LINES = 3
REJECTED_KINDS = ("shuffle", "other")
SKIP_SAME_SAMPLE = "sampled continuation identical to the truth or empty"
_NUMBER = re.compile(r"\s*(\d+)\s*")


def parse_sonnets(path: Union[str, Path], *, text: Optional[str] = None) -> Dict[int, List[str]]:
    """``{number: [lines]}`` in file order from a sonnet file (or from ``text``); see the module docstring."""
    name = str(path)
    if text is None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError("file not found", source=name)
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"invalid UTF-8 at byte {e.start}", source=name) from e
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    sonnets: Dict[int, List[str]] = {}
    cur: Optional[int] = None
    for lineno, line in enumerate(text.split("\n"), 1):
        m = _NUMBER.fullmatch(line)
        if m:
            cur = int(m.group(1))
            if cur in sonnets:
                raise DataError(f"sonnet {cur} appears twice", source=name, row=lineno)
            sonnets[cur] = []
        elif cur is not None and line.strip():
            sonnets[cur].append(line.rstrip())
    empty = [n for n, lines in sonnets.items() if not lines]
    if empty:
        raise DataError(f"sonnet(s) {empty} have no lines", source=name)
    if not sonnets:
        raise DataError("no sonnets found (expected a number alone on a line before each sonnet)", source=name)
    return sonnets


def split_sonnet(lines: Sequence[str], n_prompt_lines: int = N_PROMPT_LINES):
    """(prompt, continuation): the first lines joined with a trailing newline, the rest joined (no trailing newline)."""
    return "\n".join(lines[:n_prompt_lines]) + "\n", "\n".join(lines[n_prompt_lines:])


def sft_rows(sonnets: Union[str, Path, Dict[int, List[str]]], *, n_prompt_lines: int = N_PROMPT_LINES) -> List[dict]:
    """``{prompt, completion, reference, number, id}`` per sonnet with more than ``n_prompt_lines`` lines."""
    if not isinstance(sonnets, dict):
        sonnets = parse_sonnets(sonnets)
    rows = []
    for n, lines in sonnets.items():
        if len(lines) <= n_prompt_lines:
            continue
        prompt, cont = split_sonnet(lines, n_prompt_lines)
        rows.append(
            {
                "prompt": prompt,
                "completion": cont,
                "reference": cont,
                "n_lines": len(lines) - n_prompt_lines,
                "number": n,
                "id": f"sonnet-{n}",
            }
        )
    return rows


def dev_rows(
    prompts_path: Union[str, Path], references_path: Union[str, Path], *, n_prompt_lines: int = N_PROMPT_LINES
) -> List[dict]:
    """Dev prompts (first lines of each held-out sonnet) with their full references: rows like :func:`sft_rows`.
    A prompt whose lines differ from its reference's first lines, or a prompt without a reference, raises."""
    prompts, refs = parse_sonnets(prompts_path), parse_sonnets(references_path)
    rows = []
    for n, plines in prompts.items():
        if n not in refs:
            raise DataError(f"dev prompt {n} has no reference in {references_path}", source=str(prompts_path))
        k = min(len(plines), n_prompt_lines)
        if [x.strip() for x in refs[n][:k]] != [x.strip() for x in plines[:k]]:
            raise DataError(
                f"dev prompt {n} does not match the first {k} lines of its reference", source=str(prompts_path)
            )
        rows.extend(sft_rows({n: refs[n]}, n_prompt_lines=k))
    return rows


# -- preference pairs -----------------------------------------------------------------------------------


def _pair(row: dict, rejected: str, kind: str, **extra) -> dict:
    return {
        "prompt": row["prompt"],
        "chosen": row["completion"],
        "rejected": rejected,
        "rejected_kind": kind,
        "number": row["number"],
        "id": row["id"],
        **extra,
    }


def shuffled_rejected_rows(rows: Sequence[dict], *, seed: int = 0) -> List[dict]:
    """rejected = the true continuation with its lines in a seeded random order different from the original
    (rows whose continuation has fewer than 2 distinct lines are dropped)."""
    rng = random.Random(f"sonnets-shuffle-{seed}")
    out = []
    for r in rows:
        lines = r["completion"].split("\n")
        if len(set(lines)) < 2:
            continue
        order = list(range(len(lines)))
        while [lines[i] for i in order] == lines:
            rng.shuffle(order)
        out.append(_pair(r, "\n".join(lines[i] for i in order), "shuffle"))
    return out


def other_sonnet_rejected_rows(rows: Sequence[dict], *, seed: int = 0) -> List[dict]:
    """rejected = the continuation of a different sonnet (a seeded single-cycle derangement; needs 2+ rows)."""
    if len(rows) < 2:
        raise DataError("other_sonnet_rejected_rows needs at least 2 rows")
    rng = random.Random(f"sonnets-other-{seed}")
    cyc = list(range(len(rows)))
    for i in range(len(cyc) - 1, 0, -1):  # Sattolo: a uniformly random single cycle, so no row keeps its own
        j = rng.randrange(i)
        cyc[i], cyc[j] = cyc[j], cyc[i]
    donor = {a: b for a, b in zip(cyc, cyc[1:] + cyc[:1])}
    return [
        _pair(r, rows[donor[i]]["completion"], "other", donor_number=rows[donor[i]]["number"])
        for i, r in enumerate(rows)
    ]


def model_free_rejected_rows(rows: Sequence[dict], kind: str = "shuffle", *, seed: int = 0) -> List[dict]:
    if kind not in REJECTED_KINDS:
        raise DataError(f"rejected must be one of {REJECTED_KINDS} (model-free) , got {kind!r}", field="rejected")
    return shuffled_rejected_rows(rows, seed=seed) if kind == "shuffle" else other_sonnet_rejected_rows(rows, seed=seed)


def cut_lines(text: str, n_lines: int) -> str:
    """The first ``n_lines`` lines of ``text`` (a model may keep writing past the end of the sonnet)."""
    return "\n".join(text.split("\n")[:n_lines]).rstrip()


def sample_continuations(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    max_new_tokens: Optional[int] = None,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 0.9,
    seed: int = 0,
    batch_size: int = 16,
) -> List[str]:
    """One continuation per row's prompt (seeded), cut to the row's number of reference lines.
    ``max_new_tokens`` default: 1.25 x the longest reference continuation in tokens (+ 8)."""
    from dpolab.evaluation.generation import generate

    if not rows:
        return []
    if max_new_tokens is None:
        longest = max(len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows)
        max_new_tokens = int(longest * 1.25) + 8
    outs = generate(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    return [cut_lines(o, r.get("n_lines") or len(r["completion"].split("\n"))) for o, r in zip(outs, rows)]


def sampled_rejected_rows(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 0.9,
    max_new_tokens: Optional[int] = None,
    batch_size: int = 16,
    skips: Optional[SkipCounter] = None,
    log: Callable[[str], Any] = print,
) -> List[dict]:
    """rejected = a continuation sampled from ``model`` (the current policy, e.g. the SFT model) for each
    prompt; pairs whose sample is empty or equal to the truth are dropped and counted in ``skips``."""
    skips = skips if skips is not None else SkipCounter()
    samples = sample_continuations(
        model,
        tokenizer,
        rows,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
    )
    out = []
    for r, s in zip(rows, samples):
        if not s.strip() or s.strip() == r["completion"].strip():
            skips.add(SKIP_SAME_SAMPLE)
            continue
        out.append(_pair(r, s, "sampled"))
    if skips.total:
        log(f"sonnets sampled_rejected_rows: {len(out)} pairs; {skips.summary()}")
    return out


# -- metrics -------------------------------------------------------------------------------------------


def chrf_metrics(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 0.9,
    seed: int = 0,
    max_new_tokens: Optional[int] = None,
    batch_size: int = 16,
    return_samples: bool = False,
) -> Dict[str, Any]:
    """Corpus chrF (and the mean sentence chrF) of sampled continuations against the true continuations."""
    import sacrebleu

    rows = list(rows)
    hyps = sample_continuations(
        model,
        tokenizer,
        rows,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
    )
    refs = [r["reference"] if "reference" in r else r["completion"] for r in rows]
    res: Dict[str, Any] = {
        "chrf": float(sacrebleu.corpus_chrf(hyps, [refs]).score) if rows else 0.0,
        "chrf_sentence_mean": (sum(sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hyps, refs)) / len(rows))
        if rows
        else 0.0,
        "n": len(rows),
    }
    if return_samples:
        res["samples"] = hyps
    return res


@torch.no_grad()
def continuation_nll(
    model, tokenizer, rows: Sequence[dict], *, batch_size: int = 8, max_length: int = 1024
) -> Dict[str, float]:
    """Mean NLL per token (and per character) of each row's true continuation given its prompt."""
    from dpolab.data.collate import collate_sft
    from dpolab.data.tokenize import tokenize_sft
    from dpolab.data.types import SFTRow
    from dpolab.models.logprobs import response_logps

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    toks, chars = [], 0
    for r in rows:
        t = tokenize_sft(SFTRow(r["prompt"], r["completion"]), tokenizer, max_length=max_length, add_eos=False)
        if t is not None:
            toks.append(t)
            chars += len(r["completion"])
    total, count = 0.0, 0
    for start in range(0, len(toks), batch_size):
        batch = collate_sft(toks[start : start + batch_size], tokenizer.pad_token_id).to(device)
        lp = response_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
        total -= float(lp.sums.sum())
        count += int(lp.counts.sum())
    model.train(was_training)
    nll = total / max(1, count)
    return {
        "nll_per_token": nll,
        "ppl": math.exp(min(nll, 50.0)),
        "nll_per_char": total / max(1, chars),
        "nll_tokens": count,
    }


def nll_hook(
    rows: Sequence[dict], *, batch_size: int = 8, max_length: int = 1024
) -> Callable[[Any, Any, int], Dict[str, float]]:
    rows = list(rows)

    def hook(model, tokenizer, step: int) -> Dict[str, float]:
        return continuation_nll(model, tokenizer, rows, batch_size=batch_size, max_length=max_length)

    return hook


def chrf_hook(
    rows: Sequence[dict],
    *,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 0.9,
    do_sample: bool = True,
    max_new_tokens: Optional[int] = None,
    batch_size: int = 16,
) -> Callable[[Any, Any, int], Dict[str, float]]:
    """Samples with the same ``seed`` at every evaluation, so changes between steps come from the model."""
    rows = list(rows)

    def hook(model, tokenizer, step: int) -> Dict[str, float]:
        res = chrf_metrics(
            model,
            tokenizer,
            rows,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        return {"chrf": res["chrf"], "chrf_sentence_mean": res["chrf_sentence_mean"]}

    return hook


def sonnet_metrics_hook(rows: Sequence[dict], **chrf_kwargs) -> Callable[[Any, Any, int], Dict[str, float]]:
    """chrF and held-out NLL in one hook."""
    a, b = chrf_hook(rows, **chrf_kwargs), nll_hook(rows)
    return lambda model, tokenizer, step: {**a(model, tokenizer, step), **b(model, tokenizer, step)}


# -- the task: ``data.task=sonnets`` -------------------------------------------------------------------


def task_rows(args: Dict[str, Any], mode: str, seed: int, tokenizer: Any = None):
    """``path`` = the shakespeare-sonnets folder (train sonnets.txt, eval sonnets_held_out_dev.txt +
    TRUE_sonnets_held_out_dev.txt); preference mode uses the model-free construction ``rejected`` = shuffle (lines
    of the true continuation shuffled, default) or other (another sonnet's continuation); sampled rejected
    responses need a model: :func:`sampled_rejected_rows`."""
    require_path("sonnets", args)
    root = Path(str(args["path"])).expanduser()
    k = int(args.get("n_prompt_lines", N_PROMPT_LINES))
    train = sft_rows(parse_sonnets(root / "sonnets.txt"), n_prompt_lines=k)
    evals = dev_rows(root / "sonnets_held_out_dev.txt", root / "TRUE_sonnets_held_out_dev.txt", n_prompt_lines=k)
    train, evals = train[: args.get("n_train") or None], evals[: args.get("n_eval") or None]
    if mode == "sft":
        return train, evals
    kind, data_seed = args.get("rejected", "shuffle"), int(args.get("seed", seed))
    return model_free_rejected_rows(train, kind, seed=data_seed), model_free_rejected_rows(
        evals, kind, seed=data_seed + 1
    )


register(
    Task(
        "sonnets",
        "Shakespeare sonnet continuation (3 lines given); rejected = shuffled lines or another sonnet",
        ("path", "n_prompt_lines", "rejected", "n_train", "n_eval", "seed"),
        task_rows,
        {"sonnet": sonnet_metrics_hook, "chrf": chrf_hook, "nll": nll_hook},
    )
)
