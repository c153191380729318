"""Several tasks on one model: task specs, the per-model results file, and `phiforge eval` outside a recipe.

``phiforge eval MODEL [MODEL ...] --tasks mmlu=path/to/mmlu.jsonl,humaneval`` works on
any Hugging Face model folder (``local``), the bundled teacher (``bundled``) or an
OpenAI-compatible endpoint (``http://host:port/v1#model-name``), writes one folder per
model and task (``evals.runner``) plus ``results.json`` per model, and prints the
models side by side in the report's Table-1 layout (``evals.table``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from phiforge.errors import ConfigError
from phiforge.evals.registry import make_task
from phiforge.evals.runner import evaluate_task
from phiforge.evals.task import TaskOptions

RESULTS = "results.json"


@dataclass(frozen=True)
class TaskSpec:
    """A task name with the options a user set for it."""

    name: str
    options: TaskOptions = TaskOptions()


def parse_tasks(text: str, *, repeats: int | None = None, temperature: float | None = None,
                max_items: int | None = None, max_tokens: int | None = None, seed: int = 0,
                params: Sequence[str] = ()) -> list[TaskSpec]:
    """``"mmlu=data/mmlu.jsonl,humaneval"`` plus shared overrides and ``task.key=value`` params."""
    specs = []
    per_task = _parse_params(params)
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, _, path = part.partition("=")
        opts = TaskOptions(path=path or None, repeats=repeats, temperature=temperature, max_items=max_items,
                           max_tokens=max_tokens, seed=seed, params=per_task.pop(name, {}))
        specs.append(TaskSpec(name, opts))
    if not specs:
        raise ConfigError("--tasks is empty; give e.g. --tasks mmlu=mmlu.jsonl,humaneval")
    if per_task:
        raise ConfigError(f"--param names task(s) {', '.join(sorted(per_task))} that are not in --tasks")
    return specs


def _parse_params(items: Sequence[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        m = re.fullmatch(r"([\w.:-]+?)\.(\w+)=(.*)", item)
        if not m:
            raise ConfigError(f"--param {item!r}: expected TASK.KEY=VALUE, e.g. recall.lengths=[4096,8192]")
        task, key, raw = m.groups()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(task, {})[key] = value
    return out


def run_suite(backend, specs: Sequence[TaskSpec], out_dir: str | Path, *, grader=None,
              flags: Mapping[str, Mapping[str, str]] | None = None, chunk_items: int = 64,
              overwrite: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Every task in ``specs`` on ``backend``; ``results.json`` maps task name to its summary."""
    out = Path(out_dir)
    tokenizer = getattr(backend, "tokenizer", None)
    tasks = [(s, make_task(s.name, s.options, tokenizer=tokenizer, grader=grader)) for s in specs]  # validate all first
    results = {}
    for spec, task in tasks:
        task_flags = None if flags is None else flags.get(spec.name, {})
        results[spec.name] = evaluate_task(task, backend, out / spec.name, flags=task_flags,
                                           chunk_items=chunk_items, overwrite=overwrite, log=log)
        if log:
            log(describe(spec.name, results[spec.name]))
    payload = {"model": getattr(backend, "name", "model"), "tasks": results}
    tmp = out / (RESULTS + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(out / RESULTS)
    return payload


def describe(name: str, s: dict) -> str:
    """One log line: score with interval and the extraction-failure rate."""
    scale = s.get("metric_scale", 100.0)
    score = s.get("score")
    if score is None:
        return f"{name}: no score"
    lo, hi = s.get("ci95") or (None, None)
    ci = f" (95% CI {lo * scale:.1f}-{hi * scale:.1f})" if lo is not None else ""
    fail = s.get("extraction_failure_rate")
    return (f"{name}: {s['primary_metric']} {score * scale:.1f}{ci} over {s['n_items']} items x {s['repeats']}"
            + (f", extraction failures {fail:.1%}" if fail is not None else ""))


def model_ref(spec: str, *, device: str = "auto", batch_size: int = 32, api_key_env: str | None = None):
    """A ``ModelRef`` from a CLI model argument: a folder, ``bundled``, or ``http(s)://host[:port][/v1]#name``."""
    from phiforge.recipe.schema import ModelRef

    if spec.startswith(("http://", "https://")):
        url, _, name = spec.partition("#")
        if not name:
            raise ConfigError(f"model {spec!r}: add the served model name after '#', e.g. {url}#my-model")
        return ModelRef(backend="http", base_url=url.rstrip("/").removesuffix("/v1"), model=name,
                        api_key_env=api_key_env)
    if spec != "bundled" and not (Path(spec).expanduser() / "config.json").is_file():
        raise ConfigError(f"model {spec!r}: not a model folder (no config.json), 'bundled', or an http(s):// URL")
    return ModelRef(backend="local", model=spec, device=device, batch_size=batch_size)


def model_dir_name(spec: str) -> str:
    """A folder name for a model argument (results of several models side by side)."""
    base = spec.partition("#")[2] if spec.startswith("http") else Path(spec).name or spec
    return re.sub(r"[^\w.-]+", "_", base) or "model"


def with_overrides(spec: TaskSpec, **changes) -> TaskSpec:
    return TaskSpec(spec.name, replace(spec.options, **changes))
