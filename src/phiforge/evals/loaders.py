"""Eval items from local files (JSONL, JSONL.gz, Parquet) or, if installed, Hugging Face ``datasets``.

No hub downloads at run time are ours to make: ``hf:<name>[:<config>]:<split>``
goes through the user's own ``datasets`` installation and cache (it may download
if the user has not cached the dataset; that is their call). Every item gets a
string ``id``: the item's own ``id`` (or ``task_id`` / ``unique_id``) when present,
else its 0-based position among the items. Duplicate ids are an error, because results are keyed by id
and a rerun computes only missing ones.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from phiforge.errors import ConfigError, DataError

ID_FIELDS = ("id", "task_id", "unique_id", "question_id")
DATASETS_HINT = "pip install datasets  (only needed for hf:<dataset> task paths)"


def load_items(path: str | None, *, task: str, required: tuple[str, ...] = ()) -> list[dict]:
    """All items of ``path`` with ``id`` set and ``required`` fields checked (file:line errors)."""
    if path is None:
        raise ConfigError(f"task {task!r}: no data path given")
    if str(path).startswith("hf:"):
        rows = list(enumerate(_hf_rows(str(path), task), start=1))
        where = str(path)
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"task {task!r}: data file {p} not found; give a JSONL, JSONL.gz or Parquet file")
        rows = list(_file_rows(p))
        where = str(p)
    return _with_ids(rows, where, task, required)


def _file_rows(p: Path) -> Iterator[tuple[int, dict]]:
    name = p.name.lower()
    if name.endswith(".parquet"):
        yield from enumerate(_parquet_rows(p), start=1)
        return
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield lineno, _parse(line, p, lineno)
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not valid UTF-8 ({e}); re-encode the file as UTF-8") from e
    except (OSError, EOFError) as e:
        raise DataError(f"{p}: cannot read ({e})") from e


def _parse(line: str, p: Path, lineno: int) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); one JSON object per line") from e
    if not isinstance(obj, dict):
        raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _parquet_rows(p: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ConfigError(f"{p}: reading Parquet needs pyarrow (pip install pyarrow)") from e
    try:
        return pq.read_table(p).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{p}: not a readable Parquet file ({e})") from e


def _hf_rows(spec: str, task: str) -> list[dict]:
    parts = spec[3:].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"task {task!r}: path {spec!r} must be hf:<dataset>:<split> or hf:<dataset>:<config>:<split>")
    try:
        import datasets
    except ImportError as e:
        raise ConfigError(f"task {task!r}: path {spec!r} needs Hugging Face datasets: {DATASETS_HINT}") from e
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    return list(datasets.load_dataset(name, config, split=split))


def _with_ids(rows: list[tuple[int, dict]], where: str, task: str, required: tuple[str, ...]) -> list[dict]:
    if not rows:
        raise DataError(f"task {task!r}: {where} holds no items")
    items, seen = [], {}
    for position, (lineno, row) in enumerate(rows):
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{where}:{lineno}: task {task!r} item lacks field(s) {', '.join(missing)} "
                            f"(has: {', '.join(sorted(row))})")
        item = dict(row)
        key = next((str(row[k]) for k in ID_FIELDS if row.get(k) not in (None, "")), str(position))
        if key in seen:
            raise DataError(f"{where}:{lineno}: duplicate item id {key!r} (first at line {seen[key]}); "
                            "ids must be unique because results are keyed by them")
        seen[key] = lineno
        item["id"] = key
        items.append(item)
    return items
