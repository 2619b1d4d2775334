"""Built-in tasks: each task module declares its facts once, beside the task, as `TASK = BuiltinTask(...)`.

A built-in task is a `data.source` name that needs no file: it generates its prompts and ground truths
(seeded, with a disjoint eval split) and brings its own reward rule (and cost rule, for Safe-RLHF).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

RuleFn = Callable[[str, Any, bool], float]

# The modules that define a `TASK`; a new built-in task adds its module here.
_TASK_MODULES = ("rlkit.data.arithmetic", "rlkit.data.chat_sums", "rlkit.envs.guess_number", "rlkit.envs.calculator")


@dataclass(frozen=True)
class BuiltinTask:
    """What rlkit needs to know about one built-in task."""

    name: str
    """The `data.source` value that selects it."""
    description: str
    """One line for listings and errors."""
    make: Callable[[dict[str, Any]], Any]
    """Keyword arguments -> the task object, whose `problems(n, split)` gives {"prompt", "ground_truth"} dicts
    (and "extra_info", a dict, where the task has more to say about a row)."""
    kwargs_from_data: Callable[[Any], dict[str, Any]]
    """The task's keyword arguments read from a `DataConfig` (e.g. digits, operators, seed)."""
    reward: RuleFn
    """The task's own reward rule `(response_text, ground_truth, eos_seen) -> float` (what `evaluate` counts)."""
    cost: RuleFn | None = None
    """The task's rule cost for Safe-RLHF, or None."""
    default_rows: dict[str, int] = field(default_factory=lambda: {"train": 4096, "eval": 64})
    """Rows of each split when no size is given."""


def builtin_tasks() -> dict[str, BuiltinTask]:
    """name -> task, for every module of `_TASK_MODULES`."""
    tasks = {}
    for module in _TASK_MODULES:
        task = importlib.import_module(module).TASK
        tasks[task.name] = task
    return tasks


def get_task(name: Any) -> BuiltinTask | None:
    """The built-in task called `name`, or None (a file, a folder or a hub dataset)."""
    return builtin_tasks().get(name) if isinstance(name, str) else None
