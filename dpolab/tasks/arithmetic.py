"""The built-in task: arithmetic chains with an exact oracle (no download, deterministic for a seed).

Format::

    prompt      "Q: 17+25-8\\nA: "
    completion  "17+25=42; 42-8=34"        one step per operator, the final value last

Operands are in [1, max_value]; subtraction never goes below zero, so every value in a correct chain is a
non-negative integer.

Preference pairs (``preference_rows``): chosen = the correct chain, rejected =

- ``near`` miss (low edit distance): one step's result is off by a small amount (1..3) and the error is
  carried consistently through the later steps (a single arithmetic slip, so the final value is wrong and
  the exact oracle rejects it); only the corrupted result and the values derived from it change;
- ``far`` miss (high edit distance): the correct chain of a different random problem with the same
  number of terms and a different final value: well-formed but clearly unrelated to the question;
- ``mixed``: near or far with probability 1/2 each.

``label_noise`` swaps chosen and rejected with that probability (``flipped`` records it). Each row also
carries ``edit_bucket`` ('near' / 'far'), ``answer`` (the true final value) and ``id``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dpolab.data.types import DataError
from dpolab.tasks.registry import Task, register

ALPHABET = "0123456789+-=; QA:\n"  # every character of prompts and answers (negatives use '-')
MISS_KINDS = ("near", "far", "mixed")
_FINAL = re.compile(r"=\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Problem:
    """A chain ``terms[0] ops[0] terms[1] ops[1] ...`` evaluated left to right."""

    terms: Tuple[int, ...]
    ops: Tuple[str, ...]

    @property
    def question(self) -> str:
        return str(self.terms[0]) + "".join(op + str(t) for op, t in zip(self.ops, self.terms[1:]))

    @property
    def prompt(self) -> str:
        return f"Q: {self.question}\nA: "

    @property
    def values(self) -> List[int]:
        """The running value after each step (the last one is the answer)."""
        return _run(self.terms, self.ops)

    @property
    def value(self) -> int:
        return self.values[-1]

    @property
    def completion(self) -> str:
        return chain_text(self.terms, self.ops, self.values)


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def _run(terms: Sequence[int], ops: Sequence[str], start: Optional[int] = None) -> List[int]:
    cur, out = terms[0] if start is None else start, []
    for op, t in zip(ops, terms[1:]):
        cur = _apply(cur, op, t)
        out.append(cur)
    return out


def chain_text(terms: Sequence[int], ops: Sequence[str], values: Sequence[int]) -> str:
    """``"a+b=v1; v1-c=v2"``: step i reads the previous *written* value, so a slip carries through."""
    steps, left = [], terms[0]
    for op, t, v in zip(ops, terms[1:], values):
        steps.append(f"{left}{op}{t}={v}")
        left = v
    return "; ".join(steps)


def _problem(rng: random.Random, n_terms: Tuple[int, int], max_value: int) -> Problem:
    k = rng.randint(*n_terms)
    terms, ops = [rng.randint(1, max_value)], []
    cur = terms[0]
    for _ in range(k - 1):
        op = rng.choice("+-") if cur >= 1 else "+"
        t = rng.randint(1, min(max_value, cur)) if op == "-" else rng.randint(1, max_value)
        terms.append(t)
        ops.append(op)
        cur = _apply(cur, op, t)
    return Problem(tuple(terms), tuple(ops))


def make_problems(n: int, seed: int, n_terms: Tuple[int, int] = (2, 4), max_value: int = 50) -> List[Problem]:
    """``n`` random problems with ``n_terms[0]..n_terms[1]`` operands (inclusive) in [1, max_value]."""
    if n_terms[0] < 2 or n_terms[1] < n_terms[0]:
        raise DataError(f"n_terms must be (lo, hi) with 2 <= lo <= hi, got {n_terms}")
    if max_value < 1:
        raise DataError(f"max_value must be >= 1, got {max_value}")
    rng = random.Random(seed)
    return [_problem(rng, n_terms, max_value) for _ in range(n)]


def sft_rows(problems: Sequence[Problem]) -> List[dict]:
    """``{prompt, completion, answer, id}`` per problem."""
    return [
        {"prompt": p.prompt, "completion": p.completion, "answer": p.value, "id": i} for i, p in enumerate(problems)
    ]


def near_miss(problem: Problem, rng: random.Random) -> str:
    """The chain with one step's result off by 1..3, carried consistently through the later steps."""
    values = problem.values
    step = rng.randrange(len(values))
    delta = rng.choice((-3, -2, -1, 1, 2, 3))

    def corrupted(d: int) -> List[int]:
        start = values[step] + d
        return values[:step] + [start] + _run((0,) + problem.terms[step + 2 :], problem.ops[step + 1 :], start)

    wrong = corrupted(delta)
    if min(wrong) < 0:
        wrong = corrupted(abs(delta))  # keep every value non-negative
    return chain_text(problem.terms, problem.ops, wrong)


def far_miss(problem: Problem, rng: random.Random, max_value: int) -> str:
    """The correct chain of another random problem with as many terms and a different answer."""
    k = len(problem.terms)
    for _ in range(100):
        other = _problem(rng, (k, k), max_value)
        if other.value != problem.value and other.terms != problem.terms:
            return other.completion
    raise RuntimeError("could not draw a far miss")  # pragma: no cover - needs max_value == 1


def preference_rows(
    problems: Sequence[Problem],
    *,
    miss: str = "near",
    label_noise: float = 0.0,
    seed: int = 0,
    max_value: Optional[int] = None,
) -> List[dict]:
    """``{prompt, chosen, rejected, edit_bucket, flipped, answer, id}`` per problem (see module docstring)."""
    if miss not in MISS_KINDS:
        raise DataError(f"miss must be one of {MISS_KINDS}, got {miss!r}")
    if not 0.0 <= label_noise <= 1.0:
        raise DataError(f"label_noise must be in [0, 1], got {label_noise}")
    rng = random.Random(seed)
    top = max_value or max((t for p in problems for t in p.terms), default=50)
    rows = []
    for i, p in enumerate(problems):
        bucket = miss if miss != "mixed" else rng.choice(("near", "far"))
        rejected = near_miss(p, rng) if bucket == "near" else far_miss(p, rng, max(top, 2))
        chosen, flipped = p.completion, rng.random() < label_noise
        if flipped:
            chosen, rejected = rejected, chosen
        rows.append(
            {
                "prompt": p.prompt,
                "chosen": chosen,
                "rejected": rejected,
                "edit_bucket": bucket,
                "flipped": flipped,
                "answer": p.value,
                "id": i,
            }
        )
    return rows


def parse_answer(text: str) -> Optional[int]:
    """The final value of an answer: the integer after the last '=' of its first line (or a bare integer).

    Only the first line is read (a model may keep generating after the answer); None if there is no value.
    """
    if not isinstance(text, str):
        return None
    line = text.strip().split("\n", 1)[0].strip().rstrip(";").strip()
    m = _FINAL.search(line)
    if m:
        return int(m.group(1))
    return int(line) if re.fullmatch(r"-?\d+", line) else None


def is_correct(problem: Problem, text: str, *, strict: bool = False) -> bool:
    """Exact oracle: the final value equals the problem's answer (``strict``: the whole chain matches)."""
    if strict:
        return text.strip().split("\n", 1)[0].strip() == problem.completion
    return parse_answer(text) == problem.value


_PROMPT = re.compile(r"Q: (\d+)((?:[+-]\d+)+)\nA:")


def problem_of_prompt(prompt: str) -> Optional[Problem]:
    """The problem a task prompt (``"Q: 3+4-2\\nA: "``) asks, read back from its text; None for another text."""
    m = _PROMPT.fullmatch(prompt.strip()) if isinstance(prompt, str) else None
    if m is None:
        return None
    parts = re.findall(r"([+-])(\d+)", m.group(2))
    return Problem((int(m.group(1)), *(int(t) for _, t in parts)), tuple(op for op, _ in parts))


# -- the task: ``data.task=arithmetic`` ----------------------------------------------------------------


def task_rows(args: Dict[str, Any], mode: str, seed: int, tokenizer: Any = None) -> Tuple[List[dict], List[dict]]:
    """Distinct problems (the first ``n_eval`` for evaluation, the next ``n_train`` for training: evaluation prompts
    never appear in training); ``seed`` = the problems' own seed (default: train.seed), so studies can fix the data."""
    n_train = int(args.pop("n_train", 512))
    n_eval = int(args.pop("n_eval", 64))
    seed = int(args.pop("seed", seed))
    miss = args.pop("miss", "mixed")
    label_noise = float(args.pop("label_noise", 0.0))
    problem_args = {k: args.pop(k) for k in list(args) if k in ("n_terms", "max_value")}
    want = n_train + n_eval
    problems = make_problems(want * 4, seed=seed, **problem_args)
    unique = list({p.prompt: p for p in reversed(problems)}.values())[::-1]  # first occurrence, in order
    if len(unique) < want:
        raise DataError(
            f"task 'arithmetic' has only {len(unique)} distinct problems for these settings "
            f"({problem_args or 'defaults'}), fewer than n_train + n_eval = {want}; raise max_value or n_terms"
        )
    eval_p, train_p = unique[:n_eval], unique[n_eval:want]
    if mode == "sft":
        return sft_rows(train_p), sft_rows(eval_p)
    return (
        preference_rows(train_p, miss=miss, label_noise=label_noise, seed=seed),
        preference_rows(eval_p, miss=miss, label_noise=0.0, seed=seed + 1),
    )


def answer_accuracy_hook(rows: Sequence[dict], *, max_new_tokens: int = 24, limit: int = 128):
    """Greedy answer accuracy (``eval/answer_accuracy``, ``eval/answer_parsed``) on rows with ``prompt`` and
    ``answer``."""
    from dpolab.evaluation.oracle import answer_accuracy_hook as hook

    return hook(rows, parse_answer, max_new_tokens=max_new_tokens, limit=limit)


register(
    Task(
        "arithmetic",
        "arithmetic chains with an exact oracle, generated offline (near / far miss pairs)",
        ("n_train", "n_eval", "miss", "label_noise", "n_terms", "max_value", "seed"),
        task_rows,
        {"answer_accuracy": answer_accuracy_hook},
    )
)
