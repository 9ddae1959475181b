"""``dpolab pretrain``: a cached tiny GPT-2, never a half-finished folder, one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import dpolab.engine
from dpolab.cli import main
from dpolab.config import ModelConfig
from dpolab.engine.pretrain import PretrainSpec, cached_path, pretrain, pretrained_model_key, text_identity
from dpolab.models.load import load_saved_model, load_tokenizer
from dpolab.models.tokenizer import build_char_tokenizer

pytestmark = pytest.mark.slow

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
CLI_TINY = [
    "--tiny",
    "n_layer=1",
    "--tiny",
    "n_embd=32",
    "--tiny",
    "n_head=2",
    "--steps",
    "2",
    "--batch-size",
    "4",
    "--chunk-chars",
    "64",
    "--no-progress",
]


@pytest.fixture()
def text(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("".join(f"Line {i}: shall I compare thee to a summer's day?\n" for i in range(120)), encoding="utf-8")
    return p


def _spec(text, **kw):
    return PretrainSpec(text=str(text), tiny=dict(TINY), steps=2, batch_size=4, chunk_chars=64, n_eval=4, **kw)


def test_pretrain_then_cache_hit(tmp_path, text, monkeypatch):
    cache = tmp_path / "cache"
    final = pretrain(_spec(text), cache, progress=False, log=lambda m: None)
    assert final == cached_path(_spec(text), cache) and (final / "config.json").exists()
    assert (final.parent / "summary.json").exists() and (final.parent / "pretrain.json").exists()
    assert not list(cache.glob(".partial-*")) and not (final.parent / "checkpoints").exists()
    # the char tokenizer comes back from the folder, as name_or_path and as init_from
    ref = build_char_tokenizer()
    for mc in (ModelConfig(name_or_path=str(final)), ModelConfig(name_or_path="tiny-gpt2", init_from=str(final))):
        tok = load_tokenizer(mc)
        assert tok("Thou art!")["input_ids"] == ref("Thou art!")["input_ids"] and tok.eos_token == ref.eos_token
    assert load_saved_model(final).config.n_layer == 1

    def boom(*a, **k):
        raise AssertionError("a cached pretrain must not train again")

    monkeypatch.setattr(dpolab.engine, "train", boom)
    logs = []
    assert pretrain(_spec(text), cache, progress=False, log=logs.append) == final
    assert logs == [f"cached: {final}"]


def test_pretrained_model_key_follows_content_and_settings(tmp_path, text):
    ident = text_identity(text)
    copy = tmp_path / "elsewhere.txt"
    shutil.copy(text, copy)
    key = pretrained_model_key
    assert key(_spec(text), ident) == key(_spec(copy), text_identity(copy))  # content, not the name
    assert key(_spec(text), ident) != key(_spec(text, seed=1), ident)
    assert key(_spec(text), ident) != key(PretrainSpec(text=str(text), tiny=dict(TINY), steps=3), ident)
    text.write_text(text.read_text() + "more\n")
    assert key(_spec(text), ident) != key(_spec(text), text_identity(text))


def test_killed_pretrain_leaves_no_finished_folder(tmp_path, text, monkeypatch):
    cache = tmp_path / "cache"
    real = dpolab.engine.train

    def killed(cfg, **kw):
        from pathlib import Path

        Path(cfg.output.dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output.dir) / "metrics.jsonl").write_text("{}\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(dpolab.engine, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_spec(text), cache, progress=False, log=lambda m: None)
    final = cached_path(_spec(text), cache)
    assert not final.parent.exists() and list(cache.glob(".partial-*"))
    monkeypatch.setattr(dpolab.engine, "train", real)
    assert (
        pretrain(_spec(text), cache, progress=False, log=lambda m: None) == final and (final / "config.json").exists()
    )
    assert not list(cache.glob(".partial-*"))


def test_killed_pretrain_resumes_from_its_checkpoint(tmp_path, text, monkeypatch):
    cache = tmp_path / "cache"
    real = dpolab.engine.train
    spec = PretrainSpec(text=str(text), tiny=dict(TINY), steps=4, batch_size=4, chunk_chars=64, n_eval=4)

    def killed_after_two_steps(cfg, **kw):  # checkpoints at step 1 (save_every = 1 for 4 steps), then "dies"
        t = dpolab.engine.Trainer(cfg, **kw)
        t.total_steps = 2
        t.fit()
        for name in ("DONE", "summary.json", "final"):  # what a run killed after its step-2 checkpoint has not written
            shutil.rmtree(Path(cfg.output.dir) / name) if name == "final" else (Path(cfg.output.dir) / name).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(dpolab.engine, "train", killed_after_two_steps)
    with pytest.raises(KeyboardInterrupt):
        pretrain(spec, cache, progress=False, log=lambda m: None)
    monkeypatch.setattr(dpolab.engine, "train", real)
    logs = []
    final = pretrain(spec, cache, progress=False, log=logs.append)
    assert any("(resuming)" in m for m in logs) and any("resumed from" in m for m in logs)
    assert '"steps": 4' in (final.parent / "summary.json").read_text()


def test_cli_prints_path_and_reuses_it(tmp_path, text, capsys):
    args = ["pretrain", "--text", str(text), "--cache-dir", str(tmp_path / "c"), *CLI_TINY]
    assert main(args) == 0
    first = capsys.readouterr()
    path = first.out.strip()
    assert path.endswith("/final") and "pretraining" in first.err
    assert main(args) == 0
    second = capsys.readouterr()
    assert second.out.strip() == path and "cached:" in second.err and "pretraining" not in second.err


def test_env_cache_dir(tmp_path, text, monkeypatch):
    monkeypatch.setenv("DPOLAB_CACHE", str(tmp_path / "env"))
    assert str(cached_path(_spec(text))).startswith(str(tmp_path / "env" / "pretrained"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
        (["--text", "TEXT", "--tiny", "n_layer"], "--tiny must look like key=value"),
        (["--text", "TEXT", "--steps", "0"], "--steps must be a positive integer"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, text, capsys, extra, message):
    extra = [str(text) if a == "TEXT" else a for a in extra]
    rc = main(["pretrain", "--cache-dir", str(tmp_path / "c"), "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_a_pretrain_killed_after_its_run_finished_trains_again(tmp_path, text, monkeypatch):
    """Killed after the run wrote DONE but before the folder was moved into place: a finished run is never resumed
    (--resume refuses it), so the partial folder is trained again instead of the pretrain failing."""
    cache = tmp_path / "cache"
    real = dpolab.engine.train

    def killed_after_done(cfg, **kw):
        real(cfg, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(dpolab.engine, "train", killed_after_done)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_spec(text), cache, progress=False, log=lambda m: None)
    monkeypatch.setattr(dpolab.engine, "train", real)
    final = pretrain(_spec(text), cache, progress=False, log=lambda m: None)
    assert (final / "config.json").exists() and not list(cache.glob(".partial-*"))
