"""The one contract for a data stage step: records in, records out, every drop explained.

Every synthetic-data technique (Phi-4 report §2.2: seed extraction, plurality
filtering, rewrites, self-revision, instruction reversal) and every curation filter
(§2.3: HTML extraction, language ID, quality classifiers, dedup, decontamination)
is a ``Step``::

    class Step:
        def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]

``run`` is a generator, so a model-calling step can pull a batch of records, send
one request and yield the results. It reports through ``ctx``: ``ctx.stat(name, n)``
counters, ``ctx.drop(record, reason)`` for every record it does not pass on (a
snake_case reason, counted, and written with the record to the optional dropped
shard), and ``ctx.render(template, **values)`` for prompts, so the stage stats list
each template used. ``Filter`` and ``Map`` cover the simple cases.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator

from phiforge.dataflow.records import Record
from phiforge.dataflow.templates import PromptTemplate

_REASON = re.compile(r"^[a-z][a-z0-9_]*$")
DropSink = Callable[[Record, str, str], None]


def snake_case(name: str) -> str:
    """``QualityFilter`` -> ``quality_filter`` (default names for steps and drop reasons)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("__", "_")


class StepContext:
    """What one step of one task sees: its counters, drop reasons and templates.

    ``task_index`` / ``num_tasks`` play the role of rank / world size (style rule 3),
    e.g. for a step that must partition work across tasks.
    """

    __slots__ = ("step_name", "task_index", "num_tasks", "input_path", "counters", "drops",
                 "templates", "_sink")

    def __init__(self, step_name: str, *, task_index: int = 0, num_tasks: int = 1,
                 input_path: str = "", sink: DropSink | None = None):
        self.step_name, self.task_index, self.num_tasks = step_name, task_index, num_tasks
        self.input_path = input_path
        self.counters: dict[str, int] = {}
        self.drops: dict[str, int] = {}
        self.templates: dict[str, dict] = {}
        self._sink = sink

    def stat(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` (summed over tasks in the stage stats)."""
        self.counters[name] = self.counters.get(name, 0) + n

    def drop(self, record: Record, reason: str) -> None:
        """Drop ``record`` for ``reason`` (snake_case): counted, and kept in the dropped shard if enabled."""
        if reason not in self.drops:
            if not isinstance(reason, str) or not _REASON.match(reason):
                raise ValueError(f"step {self.step_name}: drop reason {reason!r} must be snake_case "
                                 "(a-z, 0-9, _; e.g. 'too_short')")
            self.drops[reason] = 0
        self.drops[reason] += 1
        if self._sink is not None:
            self._sink(record, reason, self.step_name)

    def use_template(self, template: PromptTemplate) -> None:
        """List ``template`` (id@version + hash) in the stats, even if nothing is rendered."""
        if template.key not in self.templates:
            self.templates[template.key] = template.describe() | {"renders": 0}
        elif self.templates[template.key]["sha256"] != template.sha256[:16]:
            raise ValueError(f"step {self.step_name}: two different texts of template {template.key} "
                             f"({template.path}); bump the version of the edited one")

    def render(self, template: PromptTemplate, **values: object) -> str:
        """``template.render(**values)``, counted under the template in the stats."""
        self.use_template(template)
        self.templates[template.key]["renders"] += 1
        return template.render(**values)

    def stats(self) -> dict:
        return {"counters": dict(self.counters), "drop_reasons": dict(self.drops)}


class Step:
    """Base class of a pipeline step; subclasses implement ``run``.

    ``templates`` lists the prompt templates the step may use, so they appear in the
    stats even for a shard where the step rendered none. Steps are pickled to
    worker processes (``LocalExecutor(workers>1)``, Ray): keep them free of open
    handles and build heavy things (models, clients) lazily inside ``run``.
    """

    templates: tuple[PromptTemplate, ...] = ()

    @property
    def name(self) -> str:
        return snake_case(type(self).__name__)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        raise NotImplementedError(f"{type(self).__name__} must implement run(records, ctx)")


class Filter(Step):
    """Keep or drop each record: override ``keep`` or pass ``fn``.

    ``keep`` returns ``True`` (keep), ``False`` (drop with ``reason``, by default the
    step's name) or ``(False, "reason")`` for a specific reason.
    """

    def __init__(self, fn: Callable[[Record], bool | tuple[bool, str]] | None = None, *,
                 name: str | None = None, reason: str | None = None):
        self._fn = fn
        self._name = name or (snake_case(fn.__name__) if fn is not None else None)
        self.reason = reason

    @property
    def name(self) -> str:
        return self._name or snake_case(type(self).__name__)

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        if self._fn is None:
            raise NotImplementedError(f"{type(self).__name__} must implement keep(record) or be given fn")
        return self._fn(record)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        default_reason = self.reason or (self.name if _REASON.match(self.name) else "filtered")
        for record in records:
            verdict = self.keep(record)
            if type(verdict) is tuple:
                verdict, reason = verdict
            else:
                reason = default_reason
            if verdict:
                yield record
            else:
                ctx.drop(record, reason)


class Map(Step):
    """Transform each record one-to-one: override ``apply`` or pass ``fn``."""

    def __init__(self, fn: Callable[[Record], Record] | None = None, *, name: str | None = None):
        self._fn = fn
        self._name = name or (snake_case(fn.__name__) if fn is not None else None)

    @property
    def name(self) -> str:
        return self._name or snake_case(type(self).__name__)

    def apply(self, record: Record) -> Record:
        if self._fn is None:
            raise NotImplementedError(f"{type(self).__name__} must implement apply(record) or be given fn")
        return self._fn(record)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        apply = self.apply
        for record in records:
            yield apply(record)


def _counted(records: Iterable[Record], box: list[int]) -> Iterator[Record]:
    """Pass records through, counting them in ``box[0]`` (per-step records_out)."""
    n = 0
    try:
        for record in records:
            n += 1
            yield record
    finally:
        box[0] = n


def chain(steps: list[Step], records: Iterator[Record], contexts: list[StepContext],
          counts: list[list[int]]) -> Iterator[Record]:
    """Compose the steps lazily: each step's output is the next one's input."""
    for step, ctx, box in zip(steps, contexts, counts):
        for template in step.templates:
            ctx.use_template(template)
        records = _counted(step.run(records, ctx), box)
    return records
