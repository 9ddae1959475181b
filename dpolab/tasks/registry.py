"""Task registry: built-in tasks (``data.task``) as plugins.

A task turns ``data.task_args`` into raw rows, ``(train_rows, eval_rows)``, for the SFT or the preference
pipeline; it may also offer evaluation hooks (e.g. arithmetic answer accuracy) that studies and the demo look up by
task name. A task module defines its rows function and registers itself with one line::

    register(Task("my-task", "one-line description", ("path", "n_train"), my_rows))

and :mod:`dpolab.tasks` imports the module (one line in its import list). ``task_rows`` then finds it by name;
unknown names and unknown ``task_args`` are :class:`~dpolab.data.types.DataError` listing the valid ones.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..data.types import DataError

Rows = Tuple[List[dict], List[dict]]
# rows(args, mode, seed, tokenizer) -> (train_rows, eval_rows); args is the task's own copy of data.task_args
RowsFn = Callable[[Dict[str, Any], str, int, Any], Rows]
# an eval hook as the engine takes it: hook(model, tokenizer, step) -> {metric: value}
Hook = Callable[[Any, Any, int], Dict[str, float]]
# a metric-hook factory: factory(eval_rows, **options) -> Hook
HookFactory = Callable[..., Hook]

_REGISTRY: Dict[str, "Task"] = {}


@dataclass(frozen=True)
class Task:
    """One built-in task.

    ``args`` are the valid ``data.task_args`` names (checked before ``rows`` runs); ``rows(args, mode, seed,
    tokenizer)`` returns ``(train_rows, eval_rows)`` for ``mode`` 'sft' or 'preference' (a task that serves one mode
    raises a DataError for the other); ``metric_hooks`` maps a metric name to a factory ``(eval_rows, **options) ->
    hook(model, tokenizer, step)``, the first one being the task's default metric."""

    name: str
    description: str
    args: Tuple[str, ...]
    rows: RowsFn
    metric_hooks: Mapping[str, HookFactory] = field(default_factory=dict)

    def metric_hook(self, eval_rows: Sequence[dict], metric: Optional[str] = None, **options: Any) -> Hook:
        """An engine eval hook scoring ``eval_rows`` with ``metric`` (default: the task's first metric)."""
        if not self.metric_hooks:
            raise DataError(f"task '{self.name}' has no metric hooks")
        name = metric or next(iter(self.metric_hooks))
        if name not in self.metric_hooks:
            raise DataError(f"task '{self.name}' has no metric '{name}'; valid: {', '.join(self.metric_hooks)}")
        return self.metric_hooks[name](eval_rows, **options)


def register(task: Task) -> Task:
    """Add ``task`` to the registry (a name registered twice is an error)."""
    if task.name in _REGISTRY:
        raise RuntimeError(f"task '{task.name}' registered twice")
    _REGISTRY[task.name] = task
    return task


def unregister(name: str) -> None:
    """Remove a task (for tests that register throwaway tasks)."""
    _REGISTRY.pop(name, None)


def _ensure_loaded() -> None:
    # Importing the package registers every built-in task.
    from .. import tasks  # noqa: F401


def task_names() -> List[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def list_tasks() -> List[Task]:
    """All registered tasks, sorted by name."""
    return [_REGISTRY[k] for k in task_names()]


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is a DataError listing the valid ones."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise DataError(f"unknown built-in task '{name}'{hint}; valid: {', '.join(sorted(_REGISTRY))}")


def check_args(task: Task, args: Mapping[str, Any]) -> None:
    extra = sorted(set(args) - set(task.args))
    if extra:
        raise DataError(f"unknown data.task_args {extra} for task '{task.name}'; valid: {', '.join(task.args)}")


def rows_for(name: str, task_args: Optional[Mapping[str, Any]], mode: str, seed: int, tokenizer: Any = None) -> Rows:
    """(train, eval) raw rows of task ``name`` for ``mode`` ('sft' or 'preference')."""
    task = get_task(name)
    args = dict(task_args or {})
    check_args(task, args)
    return task.rows(args, mode, seed, tokenizer)


def require_path(task: str, args: Mapping[str, Any]) -> None:
    """The plain 'needs data.task_args.path' error of tasks that read a file or folder."""
    if "path" not in args:
        raise DataError(f"task '{task}' needs data.task_args.path")
