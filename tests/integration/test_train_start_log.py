"""`dpolab train` says which model it trains on its first line, and warns when that is the built-in tiny default."""

from __future__ import annotations

import pytest

from dpolab.cli import main
from dpolab.config import build_config
from dpolab.engine import Trainer

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}


def _cfg(tmp_path, model):
    return build_config(
        {
            "model": model,
            "data": {
                "task": "arithmetic",
                "task_args": {"n_train": 8, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
                "max_length": 48,
            },
            "train": {"mode": "sft", "batch_size": 4, "max_steps": 1},
            "eval": {"batch_size": 4, "at_start": False},
            "output": {"dir": str(tmp_path / "run"), "progress": False},
        }
    )


def test_the_default_model_is_named_first_and_warned_about(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "train.mode=sft",
                "data.task=arithmetic",
                "data.max_length=48",
                "train.max_steps=1",
                "train.batch_size=4",
                "eval.at_start=false",
                "output.progress=false",
                "data.task_args={n_train: 8, n_eval: 4, n_terms: [2, 2], max_value: 9}",
                f"output.dir={tmp_path / 'run'}",
            ]
        )
        == 0
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[0] == "sft training: model tiny-gpt2 (tiny preset: random weights, built from a config)", err[:3]
    assert err[1].startswith(
        "warning: tiny-gpt2 is the built-in default model (what runs when model.name_or_path is "
        "not set): 2 layers with random weights"
    )
    assert "set model.name_or_path to a Hugging Face model name" in err[1]
    from dpolab.models.load import tiny_config
    from dpolab.models.tokenizer import build_char_tokenizer

    assert tiny_config("tiny-gpt2", build_char_tokenizer()).n_layer == 2  # what the warning says
    # the line before training gives the parameter count and the model's family
    assert any(
        line.startswith("sft training: 8 examples, 1 steps, ") and "parameters trainable (gpt2) -> " in line
        for line in err
    ), err


@pytest.mark.parametrize(
    "model, first",
    [
        ({"tiny": TINY}, "sft training: model tiny-gpt2 (tiny preset: random weights, built from a config)"),
        (
            {"name_or_path": "tiny-llama"},
            "sft training: model tiny-llama (tiny preset: random weights, built from a config)",
        ),
    ],
)
def test_a_chosen_model_is_named_without_the_warning(tmp_path, model, first):
    notes = []
    Trainer(_cfg(tmp_path, model), log=notes.append).close()
    assert notes[0] == first
    assert not any(n.startswith("warning:") for n in notes), notes


def test_a_run_from_a_checkpoint_names_it(tmp_path):
    from dpolab.engine import train

    train(_cfg(tmp_path / "a", {"tiny": TINY}))
    notes = []
    start = tmp_path / "a" / "run" / "final"
    Trainer(_cfg(tmp_path / "b", {"tiny": TINY, "init_from": str(start)}), log=notes.append).close()
    assert notes[0] == f"sft training: model {start} (model.init_from)"
