"""The eval stage's registry benchmarks: ``[[eval.tasks]]`` on every checkpoint, optionally split by contamination.

Each task runs on each checkpoint it names (default ``eval.models``) through a
``LocalBackend`` over the already loaded model, into
``eval/tasks/<model>/<task>/`` (``evals.runner`` layout), and its summary goes to
``stats.json["tasks"][model][task]`` for the report's Table-1-style comparison.

Tasks that take a ``format`` parameter (``tinymath``, ``recall``) get the chat
format on post-trained checkpoints and the plain-text one on base checkpoints
unless the recipe sets it: the same rule the headline exact-answer eval follows.

With ``eval.contamination = true`` every task's items are looked up in this run's
training data (the data stage's training files and post-training sets) with the
Phi-4 hybrid 13/7-gram test (report App. B; ``curate.decontam``), and every score
is also reported on clean, partial and contaminated items separately.
"""

from __future__ import annotations

from collections.abc import Iterator

from phiforge.data.records import read_jsonl
from phiforge.evals.registry import make_task, task_class
from phiforge.evals.runner import evaluate_task
from phiforge.evals.suite import describe
from phiforge.evals.task import TaskOptions
from phiforge.run.context import StageContext

CHAT_FORMAT, TEXT_FORMAT = "chat", "text"


def task_options(ctx: StageContext, spec, model_name: str, chat_models: tuple[str, ...]) -> TaskOptions:
    """A recipe task spec as ``TaskOptions``: ``data:`` paths resolved, the prompt format chosen per checkpoint."""
    params = dict(spec.params)
    if "format" in task_class(spec.task).known_params and "format" not in params:
        params["format"] = CHAT_FORMAT if model_name in chat_models else TEXT_FORMAT
    return TaskOptions(path=_resolve(ctx, spec.path), repeats=spec.repeats, temperature=spec.temperature,
                       max_tokens=spec.max_tokens, max_items=spec.max_items, few_shot=spec.few_shot,
                       seed=spec.seed, params=params)


def _resolve(ctx: StageContext, path: str | None) -> str | None:
    if path and path.startswith("data:"):
        name = path.split(":", 1)[1] or "eval"
        return str(ctx.input_dir("data") / f"{name}.jsonl")
    return path


def specs_for(ctx: StageContext, model_name: str) -> list:
    return [s for s in ctx.recipe.eval.tasks if s.models is None or model_name in s.models]


def run_model_tasks(ctx: StageContext, model_name: str, backend, chat_models: tuple[str, ...],
                    flags: dict | None) -> dict:
    """Every task spec that applies to ``model_name``; summaries by task label."""
    out = {}
    for spec in specs_for(ctx, model_name):
        opts = task_options(ctx, spec, model_name, chat_models)
        task = make_task(spec.task, opts, tokenizer=backend.tokenizer)
        task_flags = None if flags is None else flags.get(spec.label, {})
        summary = evaluate_task(task, backend, ctx.stage_dir / "tasks" / model_name / spec.label, flags=task_flags,
                                bootstrap=ctx.recipe.eval.bootstrap, overwrite=True,
                                log=lambda m: ctx.log(f"{model_name}: {m}"))
        ctx.log(f"{model_name}: {describe(spec.label, summary)}")
        out[spec.label] = summary
    return out


def contamination_flags(ctx: StageContext, tokenizer) -> tuple[dict, dict]:
    """``{task label: {item id: verdict}}`` for every task (one pass over the corpus), and counts per verdict."""
    from phiforge.evals.contamination import flag_tasks

    wanted = {}
    for spec in ctx.recipe.eval.tasks:
        task = make_task(spec.task, task_options(ctx, spec, "pretrain", ()), tokenizer=tokenizer)
        items = task.load()
        wanted[spec.label] = (items, [task.contamination_text(it) for it in items])
    found = flag_tasks(wanted, _training_texts(ctx),
                       progress=lambda n: n % 10_000 == 0 and ctx.log(f"contamination: {n:,} documents"))
    flags, counts = {}, {}
    for label, per_item in found.items():
        flags[label] = {item_id: f.verdict for item_id, f in per_item.items()}
        counts[label] = {v: sum(1 for x in flags[label].values() if x == v)
                         for v in ("clean", "partial", "contaminated")}
        ctx.log(f"contamination: {label}: {counts[label]}")
    return flags, counts


def _training_texts(ctx: StageContext) -> Iterator[str]:
    """The run's training documents: pretraining sources (curated where curated) and post-training sets."""
    from phiforge.curate.stage import curated_files

    data, curated = ctx.input_dir("data"), curated_files(ctx)
    files = [curated.get(p.stem, p) for p in sorted((data / "train").glob("*.jsonl"))]
    files += sorted((data / "posttrain").glob("*.jsonl"))
    for path in files:
        for row in read_jsonl(path):
            yield _row_text(row)


def _row_text(row: dict) -> str:
    if isinstance(row.get("text"), str):
        return row["text"]
    if isinstance(row.get("messages"), list):
        return "\n".join(str(m.get("content", "")) for m in row["messages"] if isinstance(m, dict))
    return "\n".join(str(row[k]) for k in ("question", "answer") if k in row)
