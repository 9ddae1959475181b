"""Defects found by scripts/reliability_attack.py: a SIGTERM / SIGINT after a run wrote DONE advised `--resume`
(which refuses a finished run); `eval --out` / `--per-pair` below a regular file was a FileExistsError traceback; a
non-UTF-8 byte in output.dir trained until the first checkpoint, then the tokenizer's writer gave a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpolab.cli import Terminated, main
from dpolab.config import ConfigError, LoraConfig, ModelConfig, build_config
from dpolab.models.load import load_policy, save_model
from dpolab.models.tokenizer import build_char_tokenizer

C = [
    "model.name_or_path=tiny-gpt2",
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
    "data.task=arithmetic",
    "output.progress=false",
]


@pytest.mark.parametrize("exc, rc, name", [(Terminated(), 143, "SIGTERM"), (KeyboardInterrupt(), 130, "SIGINT")])
def test_a_signal_after_done_does_not_advise_resume(tmp_path, monkeypatch, capsys, exc, rc, name):
    run = tmp_path / "run"

    def finished_then_signalled(cfg, resume=False):
        ckpt = Path(cfg.output.dir) / "checkpoints" / "step-0000006"
        ckpt.mkdir(parents=True)
        (ckpt / "COMPLETE").write_text("")
        (Path(cfg.output.dir) / "DONE").write_text("")
        raise exc

    monkeypatch.setattr("dpolab.engine.train", finished_then_signalled)
    assert main(["train", *C, f"output.dir={run}"]) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"interrupted ({name}) after the run had finished (DONE in {run}); final/ is complete, nothing to resume"
    ]


@pytest.mark.parametrize("flag", ["--out", "--per-pair"])
def test_eval_output_below_a_regular_file_is_one_line(tmp_path, capsys, flag):
    tok = build_char_tokenizer()
    cfg = ModelConfig(name_or_path="tiny-gpt2")
    model = tmp_path / "tiny"
    save_model(load_policy(cfg, LoraConfig(), tok, seed=0), tok, model, cfg)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "Q: 1+1\\nA: ", "chosen": "2", "rejected": "3"}\n')
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "result.json"
    rc = main(["eval", "--model", str(model), "--data", str(pairs), "--no-progress", flag, str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == f"error: could not write {target}: {blocker} is a file, not a folder", err


def test_a_non_utf8_output_dir_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"output.dir: .* is not UTF-8 text \(byte 0xe9\)"):
        build_config({}, [f"output.dir={tmp_path}/caf\udce9"])
