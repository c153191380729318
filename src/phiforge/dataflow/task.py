"""One task = one input shard through the pipeline into one output shard, then a marker.

Layout of a stage's output folder (fixed, so reruns and readers agree)::

    shard-00000.jsonl                   records out of task 0 (format from config)
    dropped/shard-00000.jsonl           records dropped by task 0, + drop_reason, drop_step
    _dataflow/plan.json                 inputs, format and steps of the stage
    _dataflow/completions/00000.json    task 0's stats; written LAST, so it means "done"
    _dataflow/stats.json                merged stage stats

A task without its completion marker is redone from scratch: its partial files are
discarded first and the output name is fixed by the task index, so a rerun after
``kill -9`` neither loses nor duplicates records.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from phiforge.dataflow.records import Record
from phiforge.dataflow.shards import ShardWriter, discard_partial, read_shard, shard_name
from phiforge.dataflow.step import Step, StepContext, _counted, chain

META_DIR = "_dataflow"
DROPPED_DIR = "dropped"


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskSpec:
    """Everything a worker needs to run one task (picklable)."""

    index: int
    num_tasks: int
    input_path: str
    output_dir: str
    output_format: str
    keep_dropped: bool
    validate_output: bool = True

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir) / shard_name(self.index, self.output_format)

    @property
    def dropped_path(self) -> Path:
        return Path(self.output_dir) / DROPPED_DIR / shard_name(self.index, self.output_format)

    @property
    def marker_path(self) -> Path:
        return marker_path(self.output_dir, self.index)


def marker_path(output_dir: str | Path, index: int) -> Path:
    return Path(output_dir) / META_DIR / "completions" / f"{index:05d}.json"


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON via temp file + ``os.replace`` (markers and stats must never be half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_marker(output_dir: str | Path, index: int) -> dict | None:
    """The stats of a completed task, or None if it has not completed."""
    try:
        return json.loads(marker_path(output_dir, index).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class _DropWriter:
    """Sink for ``ctx.drop``: counts always, writes the dropped shard lazily if enabled."""

    def __init__(self, path: Path | None):
        self.path, self.writer, self.count = path, None, 0

    def __call__(self, record: Record, reason: str, step: str) -> None:
        self.count += 1
        if self.path is None:
            return
        if self.writer is None:
            self.writer = ShardWriter(self.path, dropped=True)
        self.writer.write(record.to_dict() | {"drop_reason": reason, "drop_step": step})


def run_task(steps: list[Step], spec: TaskSpec) -> dict:
    """Run ``steps`` over ``spec``'s input shard; commit output, dropped shard, then the marker."""
    t0 = time.perf_counter()
    for path in (spec.marker_path, spec.output_path, spec.dropped_path):
        discard_partial(path)  # redo from scratch: never trust a previous attempt's files
    drops = _DropWriter(spec.dropped_path if spec.keep_dropped else None)
    contexts = [StepContext(s.name, task_index=spec.index, num_tasks=spec.num_tasks,
                            input_path=spec.input_path, sink=drops) for s in steps]
    counts = [[0] for _ in range(len(steps) + 1)]
    writer = ShardWriter(spec.output_path)
    try:
        _write_all(writer, chain(steps, _counted(read_shard(spec.input_path), counts[-1]), contexts, counts),
                   spec.validate_output)
    except BaseException:
        writer.abort()
        if drops.writer is not None:
            drops.writer.abort()
        raise
    writer.commit()
    if drops.writer is not None:
        drops.writer.commit()
    stats = task_stats(steps, contexts, counts, spec, writer.count, drops.count, time.perf_counter() - t0)
    write_json_atomic(spec.marker_path, stats)
    return stats


def _write_all(writer: ShardWriter, records: Iterator[Record], validate: bool) -> None:
    """Write records; with ``validate`` a step's bad record fails here, not in the next stage's read."""
    write, check, where = writer.write, Record.from_dict, f"{writer.path.name}: a record the pipeline produced"
    for record in records:
        row = record.to_dict()
        if validate:
            check(row, where)
        write(row)


def task_stats(steps, contexts, counts, spec: TaskSpec, records_out: int, dropped: int, seconds: float) -> dict:
    """Per-task stats, the shape ``merge_stats`` sums over tasks."""
    templates: dict[str, dict] = {}
    drop_reasons: dict[str, int] = {}
    for ctx in contexts:
        for key, t in ctx.templates.items():
            templates.setdefault(key, dict(t, renders=0))["renders"] += t["renders"]
        for reason, n in ctx.drops.items():
            drop_reasons[reason] = drop_reasons.get(reason, 0) + n
    return {"tasks": 1, "records_in": counts[-1][0], "records_out": records_out, "dropped": dropped,
            "seconds": round(seconds, 4), "drop_reasons": drop_reasons, "templates": templates,
            "steps": [{"name": s.name, "records_out": box[0], **ctx.stats()}
                      for s, ctx, box in zip(steps, contexts, counts)],
            "input": spec.input_path}
