"""Config: YAML + overrides, typed checks, clear errors that list the valid choices."""

import pytest

from dpolab.config import ConfigError, build_config, describe_config, load_config, parse_override


def test_defaults_and_overrides():
    cfg = build_config(
        {"train": {"lr": 1e-4}}, ["train.batch_size=4", "lora.enabled=true", "loss=[{name: ipo, params: {beta: 0.5}}]"]
    )
    assert cfg.train.lr == 1e-4 and cfg.train.batch_size == 4 and cfg.lora.enabled is True
    assert cfg.loss == [{"name": "ipo", "params": {"beta": 0.5}}]
    assert cfg.model.name_or_path == "tiny-gpt2"


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name_or_path: tiny-llama\ntrain:\n  mode: sft\n  epochs: 2\n")
    cfg = load_config(p, ["train.seed=3"])
    assert (
        cfg.model.name_or_path == "tiny-llama"
        and cfg.train.mode == "sft"
        and cfg.train.epochs == 2.0
        and cfg.train.seed == 3
    )


@pytest.mark.parametrize(
    "data, overrides, match",
    [
        ({"trian": {}}, [], r"unknown key 'trian' \(did you mean 'train'\?\); valid keys: model, lora, data"),
        ({}, ["train.lrr=1"], r"unknown key 'train.lrr'.*valid keys:.*lr"),
        ({}, ["train.optimizer=adam"], r"train.optimizer: 'adam' is not valid; choose one of: adamw, rmsprop, sgd"),
        ({}, ["train.batch_size=0"], r"train.batch_size: must be >= 1"),
        ({}, ["train.batch_size=two"], r"train.batch_size: expected an integer"),
        ({}, ["train.lr=-1"], r"train.lr: must be > 0"),
        ({}, ["lora.enabled=maybe"], r"lora.enabled: expected true or false"),
        ({}, ["loss=[{name: dpoo}]"], r"loss: unknown loss 'dpoo' \(did you mean dpo"),
        (
            {},
            ["loss=[{name: dpo, params: {betta: 1}}]"],
            r"loss 'dpo' has no parameter 'betta'; valid: beta, label_smoothing",
        ),
        ({"train": 3}, [], r"train: expected a mapping"),
    ],
)
def test_errors_name_the_key_and_list_choices(data, overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config(data, overrides)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)


def test_every_option_is_documented():
    text = describe_config()
    for key in (
        "train.lr",
        "lora.r",
        "data.columns",
        "reference.mode",
        "output.save_every",
        "eval.every",
        "model.init_from",
    ):
        assert key in text
    assert "{adamw|rmsprop|sgd}" in text


@pytest.mark.parametrize(
    "text, line, cause",
    [
        (
            "train:\n  lr: 1e-4\n  mode sft\nmodel:\n  name_or_path: x\n",
            3,
            "could not find expected ':'",
        ),  # reported at 4
        ("train:\n  lr: 1e-4\n  mode sft", 3, "could not find expected ':'"),
        ("train:\n  mode: 'sft\nmodel: {}\n", 2, "end of stream while scanning a quoted scalar"),  # reported at 4
        ("a: 1\nb: [1,\n\n", 2, "expected the node content"),  # reported at 4, past the last line
        ("train:\n  lr: 1e-4\n   mode: sft\n", 3, "mapping values are not allowed here"),
        ("train:\n\tlr: 1\n", 2, "found character '\\\\t'"),
        ("loss: [a, b\ntrain: {}\n", 2, "but got ':'; while parsing a flow sequence from line 1"),
    ],
)
def test_invalid_yaml_names_the_line_a_person_counts(tmp_path, text, line, cause):
    """The line of the mistake, 1-based, not where YAML's scanner gave up (often the next line or past the end)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=rf"bad\.yaml: line {line} is not valid YAML \(.*{cause}"):
        load_config(bad)
