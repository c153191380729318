"""Evaluation tasks by name.

Built-in tasks live in ``phiforge.evals.tasks.*`` and are imported only when asked
for (no heavy imports, no side effects at import). Users add their own with
``@register`` on a :class:`~phiforge.evals.task.Task` subclass, or by naming a class
as ``"package.module:ClassName"``.
"""

from __future__ import annotations

import importlib

from phiforge.errors import ConfigError
from phiforge.evals.task import Task, TaskOptions

BUILTIN: dict[str, str] = {
    # simple-evals (report §6, Table 1)
    "mmlu": "phiforge.evals.tasks.mmlu:MMLU",
    "gpqa": "phiforge.evals.tasks.gpqa:GPQA",
    "math": "phiforge.evals.tasks.mathtask:MATH",
    "humaneval": "phiforge.evals.tasks.humaneval:HumanEval",
    "mgsm": "phiforge.evals.tasks.mgsm:MGSM",
    "simpleqa": "phiforge.evals.tasks.simpleqa:SimpleQA",
    "drop": "phiforge.evals.tasks.drop:DROP",
    # the AMC protocol (report Fig. 1, App. C)
    "amc": "phiforge.evals.tasks.amc:AMC",
    # long context (HELMET JSON key-value recall, report §3.3)
    "recall": "phiforge.evals.tasks.recall:JSONKVRecall",
    # base-model evals (report §3): few-shot log-likelihood MC and few-shot generation
    "mc_loglik": "phiforge.evals.tasks.base:MCLogLik",
    "fewshot_gen": "phiforge.evals.tasks.base:FewShotGen",
    # the tiny recipe's held-out word problems
    "tinymath": "phiforge.evals.tasks.tinymath:TinyMath",
    "tinymath_mc": "phiforge.evals.tasks.tinymath:TinyMathMC",
}

_REGISTERED: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available by its ``name``."""
    if not cls.name:
        raise ConfigError(f"{cls.__qualname__}: a task needs a non-empty `name`")
    _REGISTERED[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTERED))


def task_class(name: str) -> type[Task]:
    """The Task class for a registered name or a ``module:Class`` path."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = BUILTIN.get(name, name if ":" in name else None)
    if target is None:
        raise ConfigError(f"unknown eval task {name!r}; known: {', '.join(task_names())} "
                          "(or give 'package.module:ClassName')")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"eval task {name!r}: cannot import {target} ({e})") from e
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"eval task {name!r}: {target} is not a phiforge.evals.task.Task subclass")
    return cls


def make_task(name: str, options: TaskOptions | None = None, *, tokenizer=None, grader=None) -> Task:
    return task_class(name)(options, tokenizer=tokenizer, grader=grader)
