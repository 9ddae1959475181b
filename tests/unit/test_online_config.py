"""The ``online`` section (train.mode=online): its checks are one-line ConfigErrors naming the key."""

from __future__ import annotations

import pytest

from dpolab.config import ConfigError, build_config


def test_defaults_and_a_valid_section():
    cfg = build_config({}, ["train.mode=online", "online.judge=task:arithmetic", "online.pairs=all"])
    assert cfg.online.samples_per_prompt == 2 and cfg.online.pairs == "all" and cfg.online.judge == "task:arithmetic"


@pytest.mark.parametrize(
    "override, words",
    [
        ("online.samples_per_prompt=1", "online.samples_per_prompt: must be >= 2"),
        ("online.pairs=some", "online.pairs: 'some' is not valid"),
        ("online.top_p=0", "online.top_p: must be in (0, 1]"),
        ("online.temperature=0", "online.temperature: must be > 0"),
        ("online.max_new_tokens=0", "online.max_new_tokens: must be >= 1"),
    ],
)
def test_bad_values_are_one_line(override, words):
    with pytest.raises(ConfigError) as e:
        build_config({}, ["train.mode=online", "online.judge=task:arithmetic", override])
    assert words in str(e.value) and "\n" not in str(e.value)


def test_online_needs_a_judge_and_a_valid_loss_list():
    with pytest.raises(ConfigError, match="online.judge: train.mode=online needs a judge"):
        build_config({}, ["train.mode=online"])
    with pytest.raises(ConfigError, match="loss"):
        build_config({"loss": [{"name": "nope"}]}, ["train.mode=online", "online.judge=task:arithmetic"])
