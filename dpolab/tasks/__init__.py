"""Built-in tasks (``data.task``): each module defines its rows and registers itself (:mod:`dpolab.tasks.registry`).

Adding a task = a new module here that ends with ``register(Task(...))`` + one line in the import list below.
"""
from .registry import Task, get_task, list_tasks, register, rows_for, task_names, unregister

# The built-in tasks (importing a module registers it):
from . import arithmetic  # noqa: E402,F401
from . import imdb_cad  # noqa: E402,F401
from . import sentiment  # noqa: E402,F401
from . import paraphrase  # noqa: E402,F401
from . import sonnets  # noqa: E402,F401
from . import pretrain_text  # noqa: E402,F401

__all__ = ["Task", "get_task", "list_tasks", "register", "rows_for", "task_names", "unregister"]
