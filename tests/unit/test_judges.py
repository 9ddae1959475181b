"""Judges of train.mode=online: each kind scores, and every failure is one line naming the judge and the prompt."""

from __future__ import annotations

import math
import sys

import pytest

from dpolab.config import ConfigError
from dpolab.engine.judges import JudgeError, build_judge
from dpolab.errors import UserError
from dpolab.tasks.arithmetic import make_problems


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(
        "import math\n"
        "def length(prompt, response):\n    return float(len(response))\n"
        "def boom(prompt, response):\n    if 'bad' in prompt:\n        raise RuntimeError('cannot judge this')\n"
        "    return 1.0\n"
        "def nan(prompt, response):\n    return math.nan if 'bad' in prompt else 0.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_judges"
    sys.modules.pop("my_judges", None)


def test_arithmetic_judge_is_exact():
    p = make_problems(1, seed=3)[0]
    judge = build_judge("task:arithmetic")
    assert judge.score([p.prompt, p.prompt], [p.completion, "1+1=3"]) == [1.0, 0.0]


def test_user_function_judge(user_module):
    assert build_judge(f"{user_module}:length").score(["a", "b"], ["xy", ""]) == [2.0, 0.0]


def test_a_raising_judge_is_one_line_naming_it_and_the_prompt(user_module):
    with pytest.raises(JudgeError) as e:
        build_judge(f"{user_module}:boom").score(["fine", "a bad prompt"], ["x", "y"])
    text = str(e.value)
    assert "my_judges:boom" in text and "'a bad prompt'" in text and "cannot judge this" in text and "\n" not in text
    assert isinstance(e.value.__cause__, RuntimeError)


def test_nan_and_wrong_count_are_one_line(user_module):
    with pytest.raises(JudgeError, match=r"my_judges:nan returned nan, not a finite number \(on prompt 'bad two'\)"):
        build_judge(f"{user_module}:nan").score(["one", "bad two"], ["x", "y"])
    from dpolab.engine.judges import Judge

    with pytest.raises(JudgeError, match="returned 1 scores for 2 completions"):
        Judge("short", lambda ps, cs: [0.0]).score(["a", "b"], ["x", "y"])
    with pytest.raises(JudgeError, match="task:arithmetic raised ValueError: not an arithmetic task prompt"):
        build_judge("task:arithmetic").score(["hello"], ["2"])


def test_sentiment_judge_and_bad_specs():
    pytest.importorskip("vaderSentiment")
    scores = build_judge("task:sentiment").score(["", ""], ["What a wonderful film.", "Dull and awful."])
    assert scores[0] > 0 > scores[1] and all(math.isfinite(s) for s in scores)


@pytest.mark.parametrize("spec", ["nonsense", "task:chess", "no_such_module_xyz:fn", "rm:", ":fn", "mod:"])
def test_bad_specs_are_one_line(spec):
    with pytest.raises(UserError) as e:
        build_judge(spec)
    assert "online.judge" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["nonsense", "task:chess", "rm:", "mod:"])
def test_a_bad_spec_stops_before_data_and_model_load(spec):
    from dpolab.config import build_config
    from dpolab.engine.objectives.online import OnlineObjective

    with pytest.raises(ConfigError, match="online.judge"):
        OnlineObjective(build_config({"online": {"judge": spec}}, ["train.mode=online"]))
