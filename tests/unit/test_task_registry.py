"""Tasks are plugins: a task registered from outside dpolab is found by ``task_rows`` / ``prepare_data`` like a
built-in one; unknown task names and task_args are one-line DataErrors listing the valid ones."""

import pytest

from dpolab.config import DataConfig
from dpolab.data.types import DataError
from dpolab.engine.data_setup import prepare_data, task_rows
from dpolab.models.tokenizer import build_char_tokenizer
from dpolab.tasks import Task, get_task, list_tasks, register, task_names, unregister

BUILT_IN = ("arithmetic", "imdb-cad", "paraphrase", "pretrain-text", "sentiment", "sonnets")


# -- a whole task: a rows function and one registration line ------------------------------------------------


def echo_rows(args, mode, seed, tokenizer=None):
    n, word = int(args.get("n", 3)), args.get("word", "hi")
    if mode == "sft":
        return (
            [{"prompt": f"{word} {i} ", "completion": "ok"} for i in range(n)],
            [{"prompt": f"{word} eval ", "completion": "ok"}],
        )
    return (
        [{"prompt": f"{word} {i} ", "chosen": "ok", "rejected": "no"} for i in range(n)],
        [{"prompt": f"{word} eval ", "chosen": "ok", "rejected": "no"}],
    )


ECHO = Task(
    "echo-test",
    "a throwaway task for the registry test",
    ("n", "word"),
    echo_rows,
    {"count": lambda rows, **kw: lambda model, tok, step: {"n": float(len(rows))}},
)


@pytest.fixture
def echo():
    register(ECHO)
    yield ECHO
    unregister(ECHO.name)


def test_registered_task_is_found(echo):
    assert "echo-test" in task_names() and get_task("echo-test") is echo
    train, evals = task_rows(DataConfig(task="echo-test", task_args={"n": 4, "word": "yo"}), "preference", 0)
    assert len(train) == 4 and train[0]["prompt"] == "yo 0 " and evals[0]["rejected"] == "no"
    sft, _ = task_rows(DataConfig(task="echo-test"), "sft", 0)
    assert [r["completion"] for r in sft] == ["ok"] * 3
    hook = echo.metric_hook(evals)  # the first metric hook is the default
    assert hook(None, None, 0) == {"n": 1.0}
    with pytest.raises(DataError, match="no metric 'bleu'; valid: count"):
        echo.metric_hook(evals, "bleu")


def test_registered_task_trains_through_prepare_data(echo):
    tok = build_char_tokenizer()
    train, evals = prepare_data(
        DataConfig(task="echo-test", task_args={"n": 5}), tok, "preference", 0, log=lambda m: None
    )
    assert len(train) == 5 and len(evals) == 1


def test_unknown_task_lists_valid_names(echo):
    with pytest.raises(DataError, match="unknown built-in task 'no-such-task'") as e:
        task_rows(DataConfig(task="no-such-task"), "sft", 0)
    assert all(name in str(e.value) for name in BUILT_IN + ("echo-test",))
    with pytest.raises(DataError, match="did you mean arithmetic"):
        task_rows(DataConfig(task="arithmetik"), "sft", 0)


def test_unknown_task_args_list_valid_ones(echo):
    with pytest.raises(DataError, match=r"unknown data.task_args \['bogus'\] for task 'echo-test'; valid: n, word"):
        task_rows(DataConfig(task="echo-test", task_args={"n": 1, "bogus": 2}), "sft", 0)
    with pytest.raises(
        DataError, match=r"unknown data.task_args \['bogus'\] for task 'arithmetic'; valid: n_train, n_eval, miss"
    ):
        task_rows(DataConfig(task="arithmetic", task_args={"bogus": 1}), "sft", 0)


def test_registering_a_name_twice_is_an_error(echo):
    with pytest.raises(RuntimeError, match="registered twice"):
        register(ECHO)


def test_built_in_tasks_are_registered():
    tasks = {t.name: t for t in list_tasks()}
    assert set(BUILT_IN) <= set(tasks)
    for t in tasks.values():
        assert t.description and "\n" not in t.description and t.args
    assert "answer_accuracy" in tasks["arithmetic"].metric_hooks and "labels" in tasks["paraphrase"].metric_hooks
    assert {"chrf", "nll"} <= set(tasks["sonnets"].metric_hooks)
