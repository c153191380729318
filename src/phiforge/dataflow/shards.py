"""Sharded record files: JSONL, zstd-compressed JSONL or Parquet, written atomically.

A stage's output is a folder of ``shard-00000.<format>`` files, one per task, that
``datasets.load_dataset("json"|"parquet", data_files="out/shard-*")`` reads as it is.
Writes go to a hidden temp file that is renamed into place only when complete
(``os.replace``), so a reader never sees half a shard and a killed task leaves
nothing that looks finished; ``discard_partial`` removes its leftovers.

    write_shards(records, "seeds/", records_per_shard=10_000, format="jsonl.zst")
    for rec in read_records("seeds/"): ...
"""

from __future__ import annotations

import glob as _glob
import io
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from phiforge.dataflow import jsonio
from phiforge.dataflow.records import DROP_COLUMNS, Record
from phiforge.errors import ConfigError, DataError

FORMATS = ("jsonl", "jsonl.zst", "parquet")
_WRITE_BUFFER = 1 << 20  # large buffered writes: one syscall per MiB, not per line
_PARQUET_BATCH = 8192


def check_format(fmt: str, field: str = "format") -> str:
    """Return ``fmt`` if it is a shard format, else raise ``ConfigError`` naming the choices."""
    if fmt not in FORMATS:
        raise ConfigError(f"{field}={fmt!r} is not a shard format; use one of {list(FORMATS)}")
    return fmt


def shard_name(index: int, fmt: str) -> str:
    """``shard-00042.jsonl`` etc.: zero-padded so names sort in task order."""
    return f"shard-{index:05d}.{fmt}"


def format_of(path: str | Path) -> str:
    """The shard format from a file name, or ``DataError`` if it is none of them."""
    name = str(path)
    for fmt in sorted(FORMATS, key=len, reverse=True):  # .jsonl.zst before .jsonl
        if name.endswith("." + fmt):
            return fmt
    raise DataError(f"{path}: not a shard file; names must end in one of "
                    f"{['.' + f for f in FORMATS]}")


# ---------------------------------------------------------------- writing

def _open_zstd_writer(raw):
    try:
        import zstandard
    except ImportError as e:
        raise ConfigError("format 'jsonl.zst' needs zstandard: pip install zstandard "
                          "(or use format='jsonl')") from e
    return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)


def _arrow_schema(extra: tuple[str, ...] = ()):
    pa = _import_pyarrow()
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    fields = [("id", pa.string()), ("text", pa.string()), ("messages", pa.list_(message)),
              ("metadata", pa.string()), ("seed_id", pa.string()), ("technique", pa.string()),
              ("template_id", pa.string()), ("template_version", pa.int64()), ("model", pa.string()),
              ("round", pa.int64())]
    return pa.schema(fields + [(name, pa.string()) for name in extra])


def _import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (submodule must be imported explicitly)
    except ImportError as e:
        raise ConfigError("format 'parquet' needs pyarrow: pip install pyarrow (or use format='jsonl')") from e
    return pyarrow


class ShardWriter:
    """Write flat rows to ``path`` via a temp file; ``commit()`` renames it into place.

    Use as a context manager: leaving the block normally commits, an exception
    deletes the temp file. ``dropped=True`` adds the ``drop_reason``/``drop_step``
    columns (Parquet needs them in its schema).
    """

    def __init__(self, path: str | Path, dropped: bool = False):
        self.path = Path(path)
        self.format = format_of(self.path)
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self._extra = DROP_COLUMNS if dropped else ()
        self._raw = open(self._tmp, "wb", buffering=_WRITE_BUFFER)
        self._out = _open_zstd_writer(self._raw) if self.format == "jsonl.zst" else self._raw
        self._rows: list[dict] = []
        self._pq = None

    def write(self, row: dict) -> None:
        """Append one flat row (``Record.to_dict()``, plus drop columns for a dropped shard)."""
        self.count += 1
        if self.format == "parquet":
            self._rows.append(row)
            if len(self._rows) >= _PARQUET_BATCH:
                self._flush_parquet()
        else:
            self._out.write(jsonio.dumps_line(row))

    def write_record(self, record: Record) -> None:
        self.write(record.to_dict())

    def _flush_parquet(self) -> None:
        pa = _import_pyarrow()
        schema = _arrow_schema(self._extra)
        if self._pq is None:
            self._pq = pa.parquet.ParquetWriter(self._raw, schema)
        self._pq.write_table(pa.Table.from_pylist(self._rows, schema=schema))
        self._rows = []

    def commit(self) -> Path:
        """Finish the file and atomically move it to ``path``."""
        if self.format == "parquet":
            if self._rows or self._pq is None:  # an empty shard still gets a valid file
                self._flush_parquet()
            self._pq.close()
        elif self._out is not self._raw:
            self._out.close()  # flushes the zstd frame; closefd=False keeps _raw open
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the temp file (the target path is left untouched)."""
        try:
            self._raw.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def discard_partial(path: str | Path) -> None:
    """Delete ``path`` and any temp files a killed writer left for it (before redoing a task)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        tmp.unlink(missing_ok=True)


def write_shards(records: Iterable[Record], folder: str | Path, *, records_per_shard: int,
                 format: str = "jsonl") -> list[Path]:
    """Split ``records`` into ``shard-NNNNN`` files of ``records_per_shard`` (e.g. a stage's input)."""
    check_format(format)
    if records_per_shard < 1:
        raise ConfigError(f"records_per_shard={records_per_shard} must be >= 1")
    paths, writer = [], None
    for record in records:
        if writer is None:
            writer = ShardWriter(Path(folder) / shard_name(len(paths), format))
        writer.write(record.to_dict())
        if writer.count >= records_per_shard:
            paths.append(writer.commit())
            writer = None
    if writer is not None:
        paths.append(writer.commit())
    return paths


# ---------------------------------------------------------------- reading

def list_shards(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """Shard files of a folder (``shard-*``-style files with a shard suffix), a glob, a file or a list.

    Hidden files (``.``: temp files) and ``_``-prefixed ones are skipped, and so are
    sub-folders (e.g. ``dropped/``). Sorted, so task indices are stable across reruns.
    """
    if not isinstance(source, (str, Path)):
        return [p for s in source for p in list_shards(s)]
    path = Path(source)
    if path.is_dir():
        found = [p for p in sorted(path.iterdir()) if p.is_file() and _is_shard_name(p.name)]
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in sorted(_glob.glob(str(source))) if _is_shard_name(Path(p).name)]
    if not found:
        raise DataError(f"{source}: no shard files found (expected a folder, glob or file of "
                        f"{['*.' + f for f in FORMATS]})")
    return found


def _is_shard_name(name: str) -> bool:
    return not name.startswith((".", "_")) and name.endswith(tuple("." + f for f in FORMATS))


def read_records(source: str | Path | Iterable[str | Path]) -> Iterator[Record]:
    """Every record of every shard of ``source``, validated (errors name ``file:line``)."""
    for path in list_shards(source):
        yield from read_shard(path)


def read_shard(path: str | Path) -> Iterator[Record]:
    """Records of one shard file, validated as they are read."""
    for where, row in read_rows(path):
        yield Record.from_dict(row, where)


def read_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """``(where, flat_row)`` pairs of one shard, unvalidated; ``where`` is ``file:line`` (or ``file:row N``)."""
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise DataError(f"{path}: shard file not found")
    return _parquet_rows(path) if fmt == "parquet" else _jsonl_rows(path, fmt)


def read_dropped(source: str | Path | Iterable[str | Path]) -> Iterator[tuple[Record, str, str]]:
    """``(record, drop_reason, drop_step)`` from dropped shards (``<output>/dropped/``)."""
    for path in list_shards(source):
        for where, row in read_rows(path):
            reason, step = row.pop("drop_reason", None), row.pop("drop_step", None)
            yield Record.from_dict(row, where), reason, step


def _jsonl_rows(path: Path, fmt: str) -> Iterator[tuple[str, dict]]:
    name, loads = str(path), jsonio.loads
    with open(path, "rb", buffering=_WRITE_BUFFER) as raw:
        f = raw if fmt == "jsonl" else _zstd_reader(raw, path)
        for lineno, line in enumerate(f, start=1):
            try:
                row = loads(line)
            except jsonio.JSONDecodeError:
                if not line.strip():
                    continue
                row = _parse(line, path, lineno)
            yield f"{name}:{lineno}", row


def _zstd_reader(raw, path: Path):
    try:
        import zstandard
    except ImportError as e:
        raise DataError(f"{path}: reading .jsonl.zst needs zstandard: pip install zstandard") from e
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw), buffer_size=_WRITE_BUFFER)


def _parse(line: bytes, path: Path, lineno: int):
    try:
        return jsonio.loads(line)
    except jsonio.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: malformed JSON ({e}); each line must be one JSON object") from e


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    pq = _import_pyarrow().parquet
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH):
        for row in batch.to_pylist():
            n += 1
            yield f"{path}:row {n}", row
