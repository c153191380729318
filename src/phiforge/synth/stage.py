"""The ``synth`` stage: run the recipe's synthetic-data pipelines (Phi-4 report §2.1-2.2, App. D).

Each ``[[synth.pipelines]]`` entry takes seeds (a data source, an earlier
pipeline's output, or a record file), runs its steps through the data-stage
executor and writes::

    runs/<run>/synth/<pipeline>/inputs/      the seeds as shards (the unit of resume)
    runs/<run>/synth/<pipeline>/out/         shard-*.jsonl, dropped/, _dataflow/stats.json
    runs/<run>/synth/train/<pipeline>.jsonl  {"id", "text"} pretraining documents (source = true)
    runs/<run>/synth/examples.json           per pipeline: kept and dropped examples for the report

The stage is resumable: finished input shards have completion markers and are not
redone after a crash, and seeded model calls are answered from the run's request
cache. Models come from ``[models.<role>]`` through ``ctx.backend`` (in-process,
shared by all steps) or, with ``workers > 1``, as recipe references that every
worker opens itself.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Iterator

from phiforge.data.records import read_jsonl, write_jsonl
from phiforge.dataflow import Record, read_dropped, read_records, write_shards
from phiforge.errors import StageError
from phiforge.run.context import StageContext
from phiforge.synth.registry import build_step

INPUT_MARKER = "_INPUTS_COMPLETE"


def run_synth(ctx: StageContext) -> dict:
    stats: dict = {"pipelines": {}}
    examples: dict = {}
    for pipe in ctx.recipe.synth.pipelines:
        folder = ctx.stage_dir / pipe.name
        seeds = _write_inputs(ctx, pipe, folder / "inputs")
        remote = pipe.workers > 1 or ctx.remote_tasks
        steps = [build_step(s.technique, s.config, _models(ctx, s, remote)) for s in pipe.steps]
        ctx.log(f"pipeline {pipe.name}: {seeds} seeds from {pipe.input} -> "
                + " -> ".join(s.technique for s in pipe.steps))
        run = ctx.executor(steps, input=str(folder / "inputs"), output_dir=str(folder / "out"),
                           workers=pipe.workers, progress=True).run()
        docs = _write_source(ctx, pipe, folder / "out") if pipe.source else None
        stats["pipelines"][pipe.name] = _summary(pipe, seeds, run, docs)
        examples[pipe.name] = _examples(folder / "out", ctx.recipe.synth.examples_per_step)
        ctx.log(f"pipeline {pipe.name}: {run['records_out']} records kept of {seeds} seeds"
                + (f"; {docs} pretraining documents" if docs is not None else ""))
    (ctx.stage_dir / "examples.json").write_text(json.dumps(examples, indent=1, ensure_ascii=False) + "\n")
    return stats


# ---------------------------------------------------------------------------- inputs


def _write_inputs(ctx: StageContext, pipe, folder: Path) -> int:
    """Seeds as record shards, written once (a marker says they are complete)."""
    marker = folder / INPUT_MARKER
    if marker.is_file():
        return int(marker.read_text())
    records = itertools.islice(_seed_records(ctx, pipe.input), pipe.max_records)
    shards = write_shards(records, folder, records_per_shard=pipe.records_per_shard, format="jsonl")
    count = sum(1 for _ in read_records(folder)) if shards else 0
    if count == 0:
        raise StageError(f"synth pipeline {pipe.name!r}: input {pipe.input!r} has no records")
    marker.write_text(str(count))
    return count


def _seed_records(ctx: StageContext, name: str) -> Iterator[Record]:
    """Records of a data source ({"id", "text", ...extra fields as metadata}), a pipeline, or a path."""
    data_file = ctx.input_dir("data") / "train" / f"{name}.jsonl"
    if data_file.is_file():
        for row in read_jsonl(data_file, required=("id", "text")):
            meta = {k: v for k, v in row.items() if k not in ("id", "text")}
            yield Record(str(row["id"]), text=row["text"], metadata=meta)
        return
    earlier = ctx.stage_dir / name / "out"
    yield from read_records(earlier if earlier.is_dir() else name)


def _models(ctx: StageContext, spec, remote: bool) -> dict:
    """Step role -> backend: live and shared in-process, recipe references for worker processes or Ray."""
    step_roles = {"teacher", "critic", "judge", "author", *spec.models}
    out = {}
    for role in step_roles:
        recipe_role = spec.models.get(role) or (role if role in ctx.recipe.models.roles() else "teacher")
        if remote:
            out[role] = ctx.recipe.models.get(recipe_role)
        else:
            out[role] = _LazyBackend(ctx, recipe_role)
    return out


class _LazyBackend:
    """Opens ``ctx.backend(role)`` at the first call, so unused roles load nothing."""

    def __init__(self, ctx: StageContext, role: str):
        self._ctx, self._role = ctx, role

    def sample(self, *args, **kwargs):
        return self._ctx.backend(self._role).sample(*args, **kwargs)

    @property
    def usage(self):
        from phiforge.backends.base import Usage

        return self._ctx.backend(self._role).usage if self._ctx.has_backend(self._role) else Usage()

    def __getattr__(self, name):  # name, score, chat_prompt, tokenizer, sample_continuations, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._ctx.backend(self._role), name)


# ---------------------------------------------------------------------------- outputs


def _write_source(ctx: StageContext, pipe, out_dir: Path) -> int:
    """The pipeline's records as pretraining documents; no file at all when none survived."""
    rows = ({"id": r.id, "text": pipe.text_prefix + pretraining_text(r, pipe.text_format)}
            for r in read_records(out_dir))
    docs = [r for r in rows if r["text"].strip()]
    if docs:
        return write_jsonl(ctx.stage_dir / "train" / f"{pipe.name}.jsonl", docs)
    if pipe.name in ctx.recipe.pretrain.mixture:
        raise StageError(f"synth pipeline {pipe.name!r} kept no records, but pretrain.mixture uses it as a source; "
                         f"see {out_dir / 'dropped'} for why, then raise max_records / n, use a stronger teacher, "
                         "or take it out of the mixture")
    ctx.log(f"pipeline {pipe.name}: no records kept, so no pretraining documents")
    return 0


def pretraining_text(record: Record, fmt: str) -> str:
    """One pretraining document from a synthetic record (see ``SynthPipeline.text_format``)."""
    if record.messages is None:
        return record.text or ""
    if fmt == "problem_solution":
        user = next((m["content"] for m in record.messages if m["role"] == "user"), "")
        reply = next((m["content"] for m in reversed(record.messages) if m["role"] == "assistant"), "")
        return f"Problem: {user.strip()}\nSolution: {reply.strip()}"
    if fmt == "chat":
        return "".join(f"<|im_start|>{m['role']}<|im_sep|>{m['content']}<|im_end|>" for m in record.messages)
    return "\n\n".join(m["content"] for m in record.messages)


def _summary(pipe, seeds: int, run: dict, docs: int | None) -> dict:
    return {"input": pipe.input, "seeds": seeds, "records_out": run["records_out"], "dropped": run["dropped"],
            "drop_reasons": run["drop_reasons"], "documents": docs, "seconds": run.get("wall_seconds"),
            "steps": [{"technique": spec.technique, **step} for spec, step in zip(pipe.steps, run["steps"])],
            "templates": sorted(run.get("templates", {}))}


def _examples(out_dir: Path, k: int) -> dict:
    kept = [_example(r) for r in itertools.islice(read_records(out_dir), k)]
    dropped: dict[str, list] = {}
    if (out_dir / "dropped").is_dir():
        for record, reason, step in read_dropped(out_dir / "dropped"):
            bucket = dropped.setdefault(f"{step}: {reason}", [])
            if len(bucket) < 1:
                bucket.append(_example(record))
    return {"kept": kept, "dropped": dropped}


def _example(r: Record) -> dict:
    return {"id": r.id, "text": r.text, "messages": r.messages, "metadata": r.metadata,
            "technique": r.provenance.technique, "template": r.provenance.template_id}


def load_synth_sources(synth_dir: Path) -> list[Path]:
    """The pretraining documents the synth stage made (``train/<pipeline>.jsonl``)."""
    return sorted((synth_dir / "train").glob("*.jsonl"))


def read_examples(synth_dir: Path) -> dict:
    path = synth_dir / "examples.json"
    return json.loads(path.read_text()) if path.is_file() else {}


__all__ = ["run_synth", "pretraining_text", "load_synth_sources", "read_examples", "read_jsonl"]
