"""Built-in tasks (``data.task``): each module defines its rows and registers itself (:mod:`dpolab.tasks.registry`).

Adding a task = a new module here that ends with ``register(Task(...))`` + one line in the import list below.
"""

# The built-in tasks (importing a module registers it):
from . import (
    arithmetic,  # noqa: F401
    imdb_cad,  # noqa: F401
    paraphrase,  # noqa: F401
    pretrain_text,  # noqa: F401
    sentiment,  # noqa: F401
    sonnets,  # noqa: F401
)
from .registry import Task, get_task, list_tasks, register, rows_for, task_names, unregister

__all__ = ["Task", "get_task", "list_tasks", "register", "rows_for", "task_names", "unregister"]
