"""Benchmark decontamination as a curation step: tag every document, drop the contaminated ones.

Why: the Phi-4 report removes training documents that overlap its 20 evaluation
benchmarks with a hybrid 13-gram / 7-gram test (App. B, Algorithm 1; §7.4 of
``docs/phi4-recipe.md``), including the collected Q&A data. This step applies
that test with a :class:`~phiforge.curate.decontam_fast.HashedIndex` built once
from the user's local benchmark files (:func:`build_index`) and saved; each
worker loads it lazily on first use (the step pickles as a path, not arrays).

Per record, ``metadata["decontam"] = {"verdict", "benchmark", "item_id", "ratio",
"reason"}`` (the :class:`~phiforge.curate.decontam.Verdict`), then:

* ``contaminated``: dropped as ``contaminated_13gram`` (a shared 13-gram that is
  not allow-listed) or ``contaminated_7gram`` (7-gram ratio at or above the
  contaminated threshold);
* ``partial``: kept and counted (``partial``), or dropped as ``partial_overlap``
  with ``drop_partial=True``. The report does not say what it did with partial
  matches ("info" threshold); keeping them is the default, because a ratio just
  above 0.5 is often shared boilerplate rather than a leaked item;
* ``clean``: kept.

Counters: ``checked``, ``partial``, and per benchmark ``contaminated/<name>`` and
``partial/<name>``, so the curation report shows which benchmarks leak where.
Records are checked in batches (``batch_chars``) because the index is vectorised
over a batch; output order equals input order. A chat record is checked on its
messages' contents joined by blank lines.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from phiforge.curate.decontam import DecontamConfig, Verdict
from phiforge.curate.decontam_fast import DEFAULT_TEXT_FIELDS, HashedIndex, build_from_files
from phiforge.dataflow.records import Record
from phiforge.dataflow.step import Step, StepContext
from phiforge.errors import ConfigError

DROP_REASONS = {"13gram": "contaminated_13gram", "7gram": "contaminated_7gram"}
"""Drop reason of a contaminated record, by ``Verdict.reason``."""


@dataclass(frozen=True, kw_only=True)
class DecontamStepConfig:
    """Settings of :class:`Decontaminate` (the n-gram settings live in the saved index)."""

    index_path: str = ""
    """The ``.npz`` index written by :func:`build_index`; required unless an index object is passed."""
    drop_partial: bool = False
    """Also drop ``partial`` documents (7-gram ratio above ``info_threshold``), as ``partial_overlap``."""
    batch_chars: int = 1 << 20
    """Characters of text buffered and checked together (the index is vectorised per batch)."""
    batch_records: int = 4096
    """At most this many records per batch (bounds latency for streams of tiny records)."""

    def __post_init__(self) -> None:
        if not isinstance(self.index_path, (str, os.PathLike)):
            raise ConfigError(f"decontamination step: index_path must be a path, got {self.index_path!r}")
        object.__setattr__(self, "index_path", str(self.index_path))
        if not isinstance(self.drop_partial, bool):
            raise ConfigError(f"decontamination step: drop_partial must be true or false, got {self.drop_partial!r}")
        for name in ("batch_chars", "batch_records"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"decontamination step: {name} must be a positive integer, got {value!r}")

    def build(self, index: HashedIndex | None = None) -> Decontaminate:
        return Decontaminate(self, index)


class Decontaminate(Step):
    """Tag ``metadata["decontam"]``; drop contaminated (and optionally partial) documents (report App. B)."""

    def __init__(self, config: DecontamStepConfig | None = None, index: HashedIndex | None = None):
        self.config = config or DecontamStepConfig()
        if index is None and not self.config.index_path:
            raise ConfigError("decontamination step: set index_path to an index written by "
                              "phiforge.curate.decontam_step.build_index (or pass an index)")
        self._index = index

    def __getstate__(self) -> dict:
        """Ship the path, not the arrays, when the index lives in a file (each worker loads it once)."""
        state = self.__dict__.copy()
        if self.config.index_path:
            state["_index"] = None
        return state

    @property
    def index(self) -> HashedIndex:
        if self._index is None:
            path = Path(self.config.index_path)
            stat = path.stat() if path.is_file() else None
            self._index = _load_index(str(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
        return self._index

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        index = self.index
        for batch, texts in _record_batches(records, self.config.batch_chars, self.config.batch_records):
            for record, verdict in zip(batch, index.check_many(texts)):
                if self._keep(record, verdict, ctx):
                    yield record

    def _keep(self, record: Record, v: Verdict, ctx: StepContext) -> bool:
        """Tag and count one record; False when it is dropped (``ctx.drop`` already called)."""
        record.metadata["decontam"] = {"verdict": v.verdict, "benchmark": v.benchmark, "item_id": v.item_id,
                                       "ratio": v.ratio, "reason": v.reason}
        ctx.stat("checked")
        if v.verdict == "clean":
            return True
        ctx.stat(f"{v.verdict}/{v.benchmark}")
        if v.verdict == "contaminated":
            ctx.drop(record, DROP_REASONS[v.reason])
            return False
        if self.config.drop_partial:
            ctx.drop(record, "partial_overlap")
            return False
        ctx.stat("partial")
        return True


def build_index(benchmark_files: Mapping[str, str | Path], out_path: str | Path,
                config: DecontamConfig | None = None,
                text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS) -> HashedIndex:
    """Index local benchmark JSONL files ``{benchmark_name: path}`` and save the index (atomically) at ``out_path``.

    Build once per benchmark set; :class:`Decontaminate` and ``items_in_corpus``
    (``HashedIndex.load``) reuse the file.
    """
    index = build_from_files(benchmark_files, text_fields, config)
    index.save(out_path)
    return index


@functools.lru_cache(maxsize=4)
def _load_index(path: str, mtime_ns: int, size: int) -> HashedIndex:
    """One load per process and file version (tasks of one worker share it)."""
    return HashedIndex.load(path)




def _record_batches(records: Iterator[Record], max_chars: int,
                    max_records: int) -> Iterator[tuple[list[Record], list[str]]]:
    """Consecutive records with their texts, about ``max_chars`` characters and at most ``max_records`` at a time."""
    batch: list[Record] = []
    texts: list[str] = []
    size = 0
    for record in records:
        batch.append(record)
        texts.append(record.content())
        size += len(texts[-1])
        if size >= max_chars or len(batch) >= max_records:
            yield batch, texts
            batch, texts, size = [], [], 0
    if batch:
        yield batch, texts
