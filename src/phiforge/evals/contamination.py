"""Scores split by contamination: which eval items appear in the training corpus.

Why: the Phi-4 report decontaminates its training data against the benchmarks
with a hybrid 13-gram / 7-gram check (App. B; §7.4 of ``docs/phi4-recipe.md``)
and, because n-gram checks miss rephrasings, also scores AMC exams released after
its training data was collected (contamination-proof, App. C). We additionally report every eval score on clean and
flagged items separately: if a model does much better on items found in its
training corpus, its headline number is inflated.

Two ways to get an item's verdict:

* :func:`flag_items` (one task) or :func:`flag_tasks` (several, one corpus pass)
  indexes the items and streams the training corpus through
  ``DecontamIndex.items_in_corpus`` (the reverse of Algorithm 1: which items
  does the corpus contain?).
* A precomputed *flags file* (:func:`write_flags` / :func:`read_flags`), e.g.
  from a curation run, handed to ``phiforge eval --contamination FILE``. It is
  JSONL, one row per item::

      {"task": "gsm8k", "id": "17", "verdict": "partial", "ratio": 0.62}

  ``task``, ``id`` and ``verdict`` are required; ``ratio`` (in [0, 1]),
  ``benchmark``, ``doc`` and ``reason`` are optional and informative. An item
  listed twice keeps its worst verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from phiforge.curate.decontam import VERDICTS, DecontamConfig, DecontamIndex, ItemHit, severity
from phiforge.curate.decontam_fast import HashedIndex
from phiforge.data.records import read_jsonl_lines, write_jsonl
from phiforge.errors import DataError

Flag = ItemHit
"""An item's verdict against a corpus: ``verdict``, ``ratio``, ``doc`` (first flagging document), ``reason``."""


def split_label(verdict: str) -> str:
    """The score split an item belongs to: "clean", "partial" or "contaminated" (unknown: ``DataError``)."""
    if isinstance(verdict, str) and verdict in VERDICTS:
        return verdict
    raise DataError(f"unknown contamination verdict {verdict!r}; expected one of {', '.join(VERDICTS)}")


def flag_items(task_name: str, items: Sequence[Mapping], texts: Sequence[str], corpus_docs: Iterable[str],
               config: DecontamConfig | None = None, index_cls: type[DecontamIndex] = HashedIndex,
               progress: Callable[[int], None] | None = None) -> dict[str, Flag]:
    """Each item's worst verdict over ``corpus_docs`` (streamed once), keyed by item id.

    ``texts[i]`` is ``items[i]``'s lookup text (``Task.contamination_text``).
    ``progress(n_docs)`` gets the number of documents read so far, periodically (``ReferenceIndex``:
    every 1000) and at the end.
    """
    return flag_tasks({task_name: (items, texts)}, corpus_docs, config, index_cls, progress)[task_name]


def flag_tasks(tasks: Mapping[str, tuple[Sequence[Mapping], Sequence[str]]], corpus_docs: Iterable[str],
               config: DecontamConfig | None = None, index_cls: type[DecontamIndex] = HashedIndex,
               progress: Callable[[int], None] | None = None) -> dict[str, dict[str, Flag]]:
    """:func:`flag_items` for several tasks in one pass over the corpus.

    ``{task: (items, texts)}`` in, ``{task: {item_id: Flag}}`` out; one index holds
    every task's items (benchmark = task name), so the corpus is read once, not once per task.
    """
    ids: dict[str, list[str]] = {}
    triples = []
    for task_name, (items, texts) in tasks.items():
        if len(items) != len(texts):
            raise ValueError(f"flag_items: task {task_name!r} has {len(items)} items but {len(texts)} texts")
        ids[task_name] = [str(item["id"]) for item in items]
        triples += [(task_name, i, t) for i, t in zip(ids[task_name], texts)]
    hits = index_cls.build(triples, config).items_in_corpus(corpus_docs, progress=progress)
    return {task: {i: hits[(task, i)] for i in task_ids} for task, task_ids in ids.items()}


# -- flags files ----------------------------------------------------------------------


def flag_rows(task_name: str, flags: Mapping[str, Flag]) -> Iterator[dict]:
    """Flags-file rows of one task (concatenate several tasks' rows into one file if you like)."""
    for item_id, flag in flags.items():
        yield {"task": task_name, "id": item_id, "verdict": split_label(flag.verdict), "ratio": flag.ratio,
               "doc": flag.doc, "reason": flag.reason}


def write_flags(path: str | Path, task_name: str, flags: Mapping[str, Flag]) -> int:
    """Write one task's flags atomically; returns the number of rows."""
    return write_jsonl(path, flag_rows(task_name, flags))


def read_flags(path: str | Path) -> dict[str, dict[str, str]]:
    """``{task: {item_id: verdict}}`` from a flags file; errors name ``file:line`` and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: contamination flags file not found; give a JSONL file with task, id and "
                        "verdict per line (see phiforge.evals.contamination)")
    out: dict[str, dict[str, str]] = {}
    for lineno, row in read_jsonl_lines(path):
        task, item_id, verdict = _parse_flag(row, f"{path}:{lineno}")
        seen = out.setdefault(task, {})
        if item_id not in seen or severity(verdict) > severity(seen[item_id]):
            seen[item_id] = verdict
    return out


def _parse_flag(row: dict, where: str) -> tuple[str, str, str]:
    """``(task, id, verdict)`` of one row, after checking every field it has."""
    for key in ("task", "id", "verdict"):
        if key not in row:
            raise DataError(f"{where}: missing field '{key}' (fields present: {sorted(row)}); "
                            "each row needs task, id and verdict")
    task, item_id = row["task"], row["id"]
    if not isinstance(task, str) or not task:
        raise DataError(f"{where}: field 'task' must be a non-empty string, got {task!r}")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise DataError(f"{where}: field 'id' must be a string or integer, got {item_id!r}")
    try:
        verdict = split_label(row["verdict"])
    except DataError as e:
        raise DataError(f"{where}: field 'verdict': {e}") from e
    _check_optional(row, where)
    return task, str(item_id), verdict


def _check_optional(row: dict, where: str) -> None:
    ratio = row.get("ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                              or not 0 <= ratio <= 1):
        raise DataError(f"{where}: field 'ratio' must be a number in [0, 1], got {ratio!r}")
    benchmark = row.get("benchmark")
    if benchmark is not None and not isinstance(benchmark, str):
        raise DataError(f"{where}: field 'benchmark' must be a string, got {benchmark!r}")
