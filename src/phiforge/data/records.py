"""Record contract and JSONL I/O shared by every data stage.

A record is one JSON object per line with at least an ``id`` and either a ``text``
or ``messages`` field. Reading reports the file and line of any malformed record,
so a user can fix the exact line; writing is atomic (temp file + rename), so a
killed stage never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from phiforge.errors import DataError


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[dict]:
    """Yield the JSON objects of ``path``; blank lines are skipped (see ``read_jsonl_lines``)."""
    for _, obj in read_jsonl_lines(path, required):
        yield obj


def read_jsonl_lines(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of ``path``.

    Raises ``DataError`` naming ``file:line`` for invalid JSON, a non-object line,
    or a missing required field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; check the path in your recipe")
    with path.open("r", encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(_lines(f, path), start=1):
            if not line.strip():
                continue
            yield lineno, _parse_line(line, path, lineno, required)


def _lines(f, path: Path) -> Iterator[str]:
    try:
        yield from f
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e}); re-encode the file as UTF-8") from e


def _parse_line(line: str, path: Path, lineno: int, required: tuple[str, ...]) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                        "each line must be one JSON object") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    for key in required:
        if key not in obj:
            raise DataError(f"{path}:{lineno}: missing field '{key}' (fields present: "
                            f"{sorted(obj)}); add it or set the source's text_field")
    return obj


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write ``rows`` to ``path`` atomically and return the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def write_json(path: str | Path, obj) -> None:
    """Write one JSON document atomically (used for stats and markers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
