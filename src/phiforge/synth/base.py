"""What every model-calling synthetic-data step shares: a backend handle, batching, accounting.

A step is pickled to worker processes (``LocalExecutor(workers>1)``, Ray), where no
live model may travel, so ``GenerationStep`` holds either a live ``Backend`` (the
in-process case: the stage's ``ctx.backend("teacher")``) or a ``ModelRef`` from the
recipe, which each worker opens lazily, once, at its first call and closes at exit.

Every call adds to the step's counters: ``model_calls``, ``cached_calls``,
``prompt_tokens``, ``completion_tokens`` (per role when a step uses several
models), which the stage stats sum over tasks; "teacher calls and tokens per kept
record" (the synthetic-data benchmark) is read off these.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
from typing import Iterable, Iterator, Sequence

from phiforge.backends.base import Completion, Prompt, SamplingParams
from phiforge.dataflow.records import Record
from phiforge.dataflow.step import Step, StepContext


class ModelHandle:
    """A live backend, or a ``ModelRef`` opened lazily (once per process) on first use."""

    def __init__(self, model, role: str = "teacher"):
        self.role = role
        self._ref = None if _is_backend(model) else model
        self._backend = model if _is_backend(model) else None
        self._stack = None

    def get(self):
        if self._backend is None:
            if self._ref is None:
                raise ValueError(f"no model given for role {self.role!r}")
            from phiforge.backends.registry import open_backend

            self._stack = contextlib.ExitStack()
            self._backend = self._stack.enter_context(open_backend(self._ref, role=self.role))
            atexit.register(self._stack.close)
        return self._backend

    def __getstate__(self):
        """Pickle the recipe reference only; a live backend cannot cross processes."""
        if self._ref is None:
            raise TypeError(f"step holds a live {self.role} backend; give it the recipe's ModelRef to run "
                            "in worker processes (workers > 1 or Ray)")
        return {"role": self.role, "_ref": self._ref, "_backend": None, "_stack": None}


def _is_backend(obj) -> bool:
    return hasattr(obj, "sample") and hasattr(obj, "usage")


class GenerationStep(Step):
    """Base of steps that call models: ``self.sample(ctx, prompts, params, role)`` with accounting.

    ``models`` maps a role (``teacher``, ``critic``, ``judge``, ...) to a ``Backend`` or a
    ``ModelRef``; a single model is used for every role. Records are processed in
    batches of ``batch_size`` so a backend can batch (local) or run requests
    concurrently (HTTP).
    """

    technique = "generation"

    def __init__(self, models, *, batch_size: int = 16, seed: int = 0):
        if not isinstance(models, dict):
            models = {"teacher": models}
        self.models = {role: ModelHandle(m, role) for role, m in models.items()}
        self.batch_size, self.seed = batch_size, seed

    def backend(self, role: str = "teacher"):
        handle = self.models.get(role) or self.models.get("teacher") or next(iter(self.models.values()))
        return handle.get()

    def model_name(self, role: str = "teacher") -> str:
        return getattr(self.backend(role), "name", role)

    def sample(self, ctx: StepContext, prompts: Sequence[Prompt], params: SamplingParams,
               role: str = "teacher") -> list[list[Completion]]:
        """``params.n`` completions per prompt from ``role``'s model, counted in ``ctx``."""
        if not prompts:
            return []
        result = self.backend(role).sample(list(prompts), params)
        u = result.usage
        suffix = "" if role == "teacher" else f"_{role}"
        for name, value in (("model_calls", u.calls), ("cached_calls", u.cached_calls),
                            ("prompt_tokens", u.prompt_tokens), ("completion_tokens", u.completion_tokens)):
            ctx.stat(name + suffix, value)
        return result.completions

    def batches(self, records: Iterable[Record]) -> Iterator[list[Record]]:
        batch: list[Record] = []
        for record in records:
            batch.append(record)
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def params(self, **kwargs) -> SamplingParams:
        """Sampling settings with this step's seed (reproducible reruns, cache hits over HTTP)."""
        return SamplingParams(seed=self.seed, **kwargs)


def user(content: str, system: str | None = None) -> list[dict]:
    """A one-turn chat prompt."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]


def child_id(parent: str, *parts: object) -> str:
    """A stable id for a record derived from ``parent`` (same inputs, same id: reruns dedupe)."""
    tail = "/".join(str(p) for p in parts)
    return f"{parent}/{tail}" if len(parent) + len(tail) < 120 else \
        f"{hashlib.sha1(parent.encode()).hexdigest()[:16]}/{tail}"


def record_content(record: Record, key: str | None = None) -> str | None:
    """What a step works on: ``metadata[key]`` if ``key``, else the text, else the last assistant turn.

    None when that is missing, not a string, or blank.
    """
    if key is not None:
        value = record.metadata.get(key)
    elif record.text is not None:
        value = record.text
    else:
        value = next((m["content"] for m in reversed(record.messages or []) if m["role"] == "assistant"), None)
    return value if isinstance(value, str) and value.strip() else None
