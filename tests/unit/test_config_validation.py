"""Nonsense values are refused when the config is built, before any data or model loads: one line naming the key and
its valid range (each of these was accepted at 58b3a56, and trained nothing, or ascended, or failed later)."""

import math

import pytest

from dpolab.cli import main
from dpolab.config import ConfigError, build_config, load_config

C = [
    "model.name_or_path=tiny-gpt2",
    "data.task=arithmetic",
    "output.save_every=3",
    "train.batch_size=4",
    "train.lr=1e-3",
    "output.progress=false",
]


@pytest.mark.parametrize(
    "override, match",
    [
        (
            "train.max_steps=-5",
            r"^train\.max_steps: must be >= 1 or null, got -5$",
        ),  # trained 0 steps, published final/
        ("train.max_steps=0", r"^train\.max_steps: must be >= 1 or null"),
        ("train.lr=inf", r"^train\.lr: must be a finite number, got 'inf'$"),  # a NaN at step 2
        ("train.lr=nan", r"^train\.lr: must be a finite number"),  # rejected late without naming the key
        ("train.lr=.nan", r"^train\.lr: must be a finite number"),
        ("train.lr=1e400", r"^train\.lr: must be a finite number"),
        ("train.lr=0", r"^train\.lr: must be > 0"),
        ("train.epochs=0", r"^train\.epochs: must be > 0"),
        ("train.epochs=.inf", r"^train\.epochs: must be a finite number"),
        ("train.batch_size=0", r"^train\.batch_size: must be >= 1"),
        ("train.grad_accum=0", r"^train\.grad_accum: must be >= 1"),
        ("train.max_grad_norm=-1", r"^train\.max_grad_norm: must be >= 0 or null"),
        ("train.max_grad_norm=nan", r"^train\.max_grad_norm: must be a finite number"),
        ("train.warmup_steps=-1", r"^train\.warmup_steps: must be >= 0"),
        ("train.weight_decay=-0.1", r"^train\.weight_decay: must be >= 0"),
        ("train.seed=-1", r"^train\.seed: must be >= 0"),
        ("train.log_every=0", r"^train\.log_every: must be >= 1"),
        ("eval.every=-1", r"^eval\.every: must be >= 0"),
        ("eval.batch_size=0", r"^eval\.batch_size: must be >= 1"),
        ("eval.max_examples=0", r"^eval\.max_examples: must be >= 1 or null"),
        ("eval.probe_examples=0", r"^eval\.probe_examples: must be >= 1"),
        ("output.save_every=-3", r"^output\.save_every: must be >= 0"),
        ("output.keep_last=0", r"^output\.keep_last: must be >= 1"),
        ("data.max_length=1", r"^data\.max_length: must be >= 2, got 1$"),
        ("data.max_prompt_length=0", r"^data\.max_prompt_length: must be >= 1 or null"),
        (
            "data.max_prompt_length=512",
            r"^data\.max_prompt_length: must be in \[1, data\.max_length\) = \[1, 512\), got 512$",
        ),
        ("data.limit=0", r"^data\.limit: must be >= 1 or null"),
        ("data.eval_fraction=1", r"^data\.eval_fraction: must be in \[0, 1\), got 1\.0$"),
        ("data.eval_fraction=-0.5", r"^data\.eval_fraction: must be in \[0, 1\)"),
        ("data.eval_fraction=nan", r"^data\.eval_fraction: must be a finite number"),
        ("lora.r=0", r"^lora\.r: must be >= 1"),
        ("lora.alpha=0", r"^lora\.alpha: must be > 0"),
        ("lora.alpha=-inf", r"^lora\.alpha: must be a finite number"),
        ("lora.dropout=1", r"^lora\.dropout: must be in \[0, 1\)"),
        ("rm.center_weight=inf", r"^rm\.center_weight: must be a finite number"),
        ("rm.center_weight=-1", r"^rm\.center_weight: must be >= 0"),
    ],
)
def test_out_of_range_values_name_the_key_and_range(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        build_config({}, [override])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "loss, match",
    [
        ("[{name: dpo, weight: 0}]", r"^loss: at least one weight must be > 0 \(got dpo: 0\)"),  # trained nothing
        ("[{name: dpo, weight: 0}, {name: sft, weight: 0}]", r"^loss: at least one weight must be > 0"),
        ("[{name: dpo, weight: -1}]", r"^loss\[0\] \(dpo\): weight must be a finite number >= 0, got -1\.0$"),  # ascent
        ("[{name: dpo}, {name: sft, weight: -0.2}]", r"^loss\[1\] \(sft\): weight must be a finite number >= 0"),
        ("[{name: dpo, weight: .inf}]", r"^loss\[0\] \(dpo\): weight must be a finite number >= 0, got inf$"),
        ("[{name: dpo, weight: nan}]", r"^loss\[0\] \(dpo\): weight must be a finite number >= 0, got nan$"),
    ],
)
def test_loss_weights_are_finite_non_negative_and_one_is_positive(loss, match):
    with pytest.raises(ConfigError, match=match):
        build_config({}, [f"loss={loss}"])


def test_valid_edges_are_accepted():
    cfg = build_config(
        {},
        [
            "loss=[{name: dpo}, {name: sft, weight: 0}]",  # 0 on one component: logged, not trained
            "train.max_grad_norm=0",
            "data.max_length=2",
            "data.max_prompt_length=1",
            "train.max_steps=1",
            "data.eval_fraction=0",
            "eval.every=0",
            "output.save_every=0",
            "train.warmup_steps=0",
            "lora.dropout=0",
            "eval.max_examples=null",
        ],
    )
    assert cfg.loss[1]["weight"] == 0 and cfg.train.max_grad_norm == 0.0 and cfg.data.max_length == 2
    assert build_config({}, ["train.max_grad_norm=null"]).train.max_grad_norm is None
    assert (
        build_config({}, ["train.mode=sft", "loss=[{name: dpo, weight: 0}]"]).train.mode == "sft"
    )  # loss unused in sft


def test_yaml_file_values_are_checked_too(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match=r"^train\.lr: must be a finite number"):
        load_config(p)
    p.write_text("train:\n  max_steps: -5\n")
    with pytest.raises(ConfigError, match=r"^train\.max_steps: must be >= 1"):
        load_config(p)


def test_folder_names_longer_than_the_filesystem_allows(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"^output\.dir: the folder name 'x{40}'\.\.\. is 300 bytes; this filesystem "
        r"allows at most \d+$",
    ):
        build_config({}, [f"output.dir={tmp_path / ('x' * 300)}"])
    with pytest.raises(ConfigError, match=r"^reference\.cache_dir: the folder name"):
        build_config({}, [f"reference.cache_dir={tmp_path / 'ok' / ('y' * 300) / 'z'}"])
    with pytest.raises(ConfigError, match=r"^output\.dir: must be a folder path"):
        build_config({}, ["output.dir="])
    assert build_config({}, [f"output.dir={tmp_path / ('x' * 200)}"]).output.dir.endswith("x" * 200)


def test_float_fields_are_finite_after_build():
    cfg = build_config({}, [])
    for section in (cfg.train, cfg.lora, cfg.data, cfg.rm):
        for v in vars(section).values():
            if isinstance(v, float):
                assert math.isfinite(v)


def _cli(argv, capsys):
    rc = main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "bad, first_words",
    [
        ("train.max_steps=-5", "error: train.max_steps: must be >= 1"),
        ("train.lr=inf", "error: train.lr: must be a finite number"),
        ("loss=[{name: dpo, weight: 0}]", "error: loss: at least one weight must be > 0"),
        ("data.max_length=1", "error: data.max_length: must be >= 2"),
    ],
)
def test_cli_refuses_before_loading_data(tmp_path, capsys, bad, first_words):
    run = tmp_path / "run"
    rc, err = _cli(["train", *C, f"output.dir={run}", bad], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(first_words), err
    assert not run.exists()  # the run folder is set up before the data: nothing was started


def test_cli_refuses_a_too_long_output_dir(tmp_path, capsys):
    rc, err = _cli(["train", *C, f"output.dir={tmp_path / ('d' * 300)}"], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: output.dir: the folder name"), err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_loss_parameter_is_refused_when_the_config_is_built(value):
    """The attack harness's loss-beta-nan: refused at the first step before, after the run folder had been made."""
    with pytest.raises(ConfigError, match=r"loss: loss 'dpo': beta must be a finite number"):
        build_config({"loss": [{"name": "dpo", "params": {"beta": float(value)}}]})
