"""Judges: what scores sampled completions in ``train.mode=online`` (``online.judge``).

- ``rm:PATH``: a reward model folder (``dpolab rm train`` output or any one-output sequence classifier), scored as
  ``dpolab rm score`` scores a response (:func:`dpolab.rewards.score.score_texts`);
- ``module:function``: ``function(prompt, response) -> float``, loaded as ``dpolab compare --oracle`` loads its
  oracle (:func:`dpolab.rewards.user_oracle.load_oracle`);
- ``task:arithmetic``: 1 when the completion's final value is the prompt's problem's answer, else 0 (the task's
  exact check, :func:`dpolab.tasks.arithmetic.is_correct`); ``task:sentiment`` (or ``vader``): the VADER compound
  score of the completion (:mod:`dpolab.rewards.oracles`, as the sentiment task's oracle reward).

A judge that raises, returns a non-finite score or the wrong number of scores stops the run with one line naming the
judge and the (first) prompt concerned, the cause chained (:class:`JudgeError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from ..errors import ConfigError, UserError

TASK_JUDGES = ("arithmetic", "sentiment")


class JudgeError(UserError):
    """A judge failed on a batch of samples: one line naming the judge and the prompt."""


class _Failed(Exception):
    """A pointwise judge failed on item ``index`` (the cause is chained)."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def _pointwise(fn: Callable[[str, str], float]) -> Callable[[Sequence[str], Sequence[str]], List[float]]:
    def batch(prompts: Sequence[str], completions: Sequence[str]) -> List[float]:
        out = []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            try:
                out.append(fn(p, c))
            except Exception as e:
                raise _Failed(i) from e
        return out

    return batch


@dataclass
class Judge:
    """``score(prompts, completions)`` -> one finite float per completion; ``name`` is the ``online.judge`` spec."""

    name: str
    fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]]

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> List[float]:
        def where(i: int) -> str:
            return f"(on prompt {prompts[i][:40]!r})" if 0 <= i < len(prompts) else ""

        try:
            values = self.fn(list(prompts), list(completions))
        except _Failed as f:
            e = f.__cause__
            raise JudgeError(f"judge {self.name} raised {type(e).__name__}: {_first_line(e)} {where(f.index)}") from e
        except Exception as e:
            raise JudgeError(f"judge {self.name} raised {type(e).__name__}: {_first_line(e)} {where(0)}") from e
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError) as e:
            raise JudgeError(f"judge {self.name} returned a value that is not a number {where(0)}") from e
        if len(values) != len(completions):
            raise JudgeError(
                f"judge {self.name} returned {len(values)} scores for {len(completions)} completions {where(0)}"
            )
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise JudgeError(f"judge {self.name} returned {values[bad]}, not a finite number {where(bad)}")
        return values


def _first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text else ""


def _arithmetic(prompt: str, completion: str) -> float:
    from ..tasks.arithmetic import is_correct, problem_of_prompt

    problem = problem_of_prompt(prompt)
    if problem is None:
        raise ValueError("not an arithmetic task prompt ('Q: a+b-c\\nA:')")
    return 1.0 if is_correct(problem, completion) else 0.0


def _sentiment(prompts: Sequence[str], completions: Sequence[str]) -> List[float]:
    from ..rewards.oracles import vader_reward

    return vader_reward(list(completions))


def _reward_model(path: str, device) -> Callable[[Sequence[str], Sequence[str]], List[float]]:
    from ..rewards.model import load_trained_reward_model
    from ..rewards.score import score_texts

    model, tok = load_trained_reward_model(path)
    model = model.to(device) if device is not None else model

    def fn(prompts: Sequence[str], completions: Sequence[str]) -> List[float]:
        at = next(model.parameters()).device
        return score_texts(model, tok, list(zip(prompts, completions)), at)

    return fn


def check_judge_spec(spec: str) -> str:
    """``spec``'s kind ('rm', 'task' or 'function') without loading anything (a run refuses a bad spec before it loads
    data or a model); a spec that names no judge is a one-line ConfigError."""
    spec = (spec or "").strip()
    if spec.startswith("rm:") and spec[3:]:
        return "rm"
    if spec.startswith("task:") or spec == "vader":
        if spec != "vader" and spec[5:] not in TASK_JUDGES:
            raise ConfigError(f"online.judge: unknown task judge '{spec}'; valid: task:arithmetic, task:sentiment")
        return "task"
    module, _, name = spec.partition(":")
    if module and name:
        return "function"
    raise ConfigError(
        f"online.judge: '{spec}' names no judge; use rm:PATH, module:function, task:arithmetic or task:sentiment"
    )


def build_judge(spec: str, *, device=None, search_dir: Optional[str] = None) -> Judge:
    """The judge ``spec`` names (see the module docstring); a spec that names none is a one-line ConfigError."""
    spec = (spec or "").strip()
    kind = check_judge_spec(spec)
    if kind == "rm":
        return Judge(spec, _reward_model(spec[3:], device))
    if kind == "task":
        return Judge(spec, _pointwise(_arithmetic) if spec == "task:arithmetic" else _sentiment)
    from ..rewards.user_oracle import load_oracle

    return Judge(spec, _pointwise(load_oracle(spec, search_dir, option="online.judge")))
