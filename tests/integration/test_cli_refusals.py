"""Nonsense on the command line is refused in one line (issue 32, defects 7 and 8): non-UTF-8 prompts, stdin and
config files; `dpolab eval` with nothing scorable, a non-finite or negative beta, NaN metrics (printed as null, valid
JSON); a non-finite temperature; output.dir set to the filesystem root or the home folder."""

from __future__ import annotations

import io
import json
import os

import pytest

from dpolab.cli import main
from dpolab.config import ConfigError, LoraConfig, ModelConfig, build_config, load_config
from dpolab.models.load import load_policy, save_model
from dpolab.models.tokenizer import build_char_tokenizer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    tok = build_char_tokenizer()
    cfg = ModelConfig(name_or_path="tiny-gpt2")
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(load_policy(cfg, LoraConfig(), tok, seed=0), tok, path, cfg)
    return str(path)


@pytest.fixture()
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q: {i}+1\nA: ", "chosen": f"{i + 1}", "rejected": f"{i + 2} or more"} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _one_line(capsys, rc, *words):
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()  # (model loading may log lines before it)
    assert err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    assert all(w in err[-1] for w in words), err[-1]
    return err[-1]


def _bytes_stdin(monkeypatch, data: bytes):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


# -- 7: non-UTF-8 input ---------------------------------------------------------------------------------------------
def test_a_non_utf8_prompt_argument_is_one_line(capsys):
    # a non-UTF-8 byte of argv reaches Python as a lone surrogate (surrogateescape): 0xff -> '\udcff'
    _one_line(capsys, main(["generate", "--model", "no-such-model", "hello \udcff"]), "prompt argument", "0xff")
    _one_line(capsys, main(["chat", "--model", "no-such-model", "--system", "be \udce9"]), "--system", "0xe9")


def test_non_utf8_stdin_is_one_line(monkeypatch, capsys, tiny_model):
    _bytes_stdin(monkeypatch, b"first line\nhello \xff there\n")
    _one_line(capsys, main(["generate", "--model", "no-such-model"]), "stdin: line 2", "0xff")
    _bytes_stdin(monkeypatch, b"hi\n\xe9t\xe9\n")
    _one_line(capsys, main(["chat", "--model", tiny_model, "--max-new-tokens", "2"]), "stdin: line 2", "0xe9")


def test_a_non_utf8_config_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"train:\n  lr: 1e-5\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"run.yaml: line 3 is not UTF-8 text \(byte 0xe9\)") as e:
        load_config(str(path))
    assert isinstance(e.value.__cause__, UnicodeDecodeError)
    _one_line(capsys, main(["train", "--config", str(path)]), "line 3 is not UTF-8")


# -- 8: nonsense options --------------------------------------------------------------------------------------------
def test_eval_with_nothing_scorable_is_an_error_not_zero_of_n(tiny_model, pairs, capsys):
    line = _one_line(
        capsys,
        main(["eval", "--model", tiny_model, "--data", pairs, "--max-length", "1"]),
        pairs,
        "no pair could be scored: 0 of 4 rows read",
        "max_length 1",
    )
    assert "NaN" not in line


@pytest.mark.parametrize("beta", ["nan", "-1", "0", "inf"])
def test_eval_refuses_a_beta_that_is_not_a_finite_positive_number(beta, capsys):
    _one_line(
        capsys, main(["eval", "--model", "m", "--data", "d", "--beta", beta]), "--beta must be a finite number > 0"
    )


def test_eval_prints_valid_json_where_a_metric_has_no_value(tiny_model, tmp_path, capsys):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"prompt": "Q: 1+1\nA: ", "chosen": "2", "rejected": "3"}) + "\n")
    out = tmp_path / "e.json"
    assert main(["eval", "--model", tiny_model, "--data", str(path), "--out", str(out)]) == 0

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    for text in (capsys.readouterr().out, out.read_text()):
        res = json.loads(text, parse_constant=refuse)  # one pair: its margin's interval has no value
        assert res["pairs"] == 1 and res["logp_margin_ci95"] == [None, None]


@pytest.mark.parametrize("temp", ["inf", "nan", "-1"])
def test_generate_refuses_a_non_finite_temperature(temp, capsys):
    _one_line(capsys, main(["generate", "--model", "m", "--temperature", temp, "hi"]), "--temperature must be a finite")


@pytest.mark.parametrize("where", ["/", "~/", "/../"])
def test_output_dir_that_is_not_a_folder_of_its_own_is_refused(where, capsys):
    with pytest.raises(ConfigError, match="output.dir: .* is (the filesystem root|your home folder)"):
        build_config({}, [f"output.dir={where}"])
    _one_line(capsys, main(["train", f"output.dir={where}"]), "output.dir")


def test_an_ordinary_output_dir_is_still_accepted(tmp_path):
    assert build_config({}, [f"output.dir={tmp_path / 'runs' / 'x'}"]).output.dir == str(tmp_path / "runs" / "x")
    assert os.path.expanduser("~") != "/"
