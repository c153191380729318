"""The record every data stage reads and writes, and its flat on-disk row.

A ``Record`` is one document (``text``) or one conversation (``messages``), with
free ``metadata`` and a ``Provenance`` saying how it was made: the Phi-4 report
builds ~50 synthetic dataset types from seeds through multi-step prompting and
self-revision (§2.1-2.2, App. D), so every generated record must say which seed,
technique, prompt template (id + version), model and revision round produced it.

On disk a record is a FLAT row whose columns always have the same types, so
``datasets.load_dataset("json", ...)``, pandas and pyarrow read a folder of shards
without schema conflicts::

    id                str            (required, non-empty)
    text              str | null
    messages          list[{role: str, content: str}] | null   (OpenAI style)
    metadata          str            (a JSON object, encoded: free-form keys would
                                      otherwise give each shard its own schema)
    seed_id           str | null     provenance: the organic seed it derives from
    technique         str | null     e.g. "rewrite", "self_revision", "plurality_filter"
    template_id       str | null     prompt template used (see ``templates.py``)
    template_version  int | null
    model             str | null     generator model
    round             int | null     self-revision round (0 = first draft)

At least one of ``text`` / ``messages`` is set. Reading a row accepts ``metadata``
as a JSON string or an object, and missing provenance columns (so hand-written
``{"id": ..., "text": ...}`` lines are valid); anything else wrong fails with the
file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from phiforge.dataflow import jsonio
from phiforge.errors import DataError

ROLES = frozenset({"system", "user", "assistant", "tool"})
PROVENANCE_FIELDS = ("seed_id", "technique", "template_id", "template_version", "model", "round")
_PROV_TYPES = {"seed_id": str, "technique": str, "template_id": str, "template_version": int,
               "model": str, "round": int}
COLUMNS = ("id", "text", "messages", "metadata", *PROVENANCE_FIELDS)
_COLUMN_SET = frozenset(COLUMNS)
DROP_COLUMNS = ("drop_reason", "drop_step")  # extra columns of rows in a "dropped" shard


@dataclass(slots=True, kw_only=True)
class Provenance:
    """How a record was made (all optional: organic records have none)."""

    seed_id: str | None = None
    technique: str | None = None
    template_id: str | None = None
    template_version: int | None = None
    model: str | None = None
    round: int | None = None


@dataclass(slots=True)
class Record:
    """One document or conversation flowing through a data stage."""

    id: str
    text: str | None = None
    messages: list[dict] | None = None
    metadata: dict = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)

    def content(self) -> str:
        """The text a filter judges: ``text``, else the messages' contents joined by blank lines."""
        if self.text is not None:
            return self.text
        return "\n\n".join(str(m.get("content", "")) for m in self.messages or ())

    def to_dict(self) -> dict:
        """The flat row written to shards (every column present, see the module docstring)."""
        p = self.provenance
        return {"id": self.id, "text": self.text, "messages": self.messages,
                "metadata": _dumps_metadata(self.metadata), "seed_id": p.seed_id,
                "technique": p.technique, "template_id": p.template_id,
                "template_version": p.template_version, "model": p.model, "round": p.round}

    @classmethod
    def from_dict(cls, row: dict, where: str = "record") -> Record:
        """Validate a flat row and build the record; ``where`` (e.g. ``file:line``) prefixes errors.

        The checks are inlined (one ``get`` per column): validation runs on every row
        read and was the largest cost of a no-op stage (benchmarks/executor_overhead.py).
        """
        get = row.get if type(row) is dict else None
        if get is None or len(row) > len(COLUMNS) or not _COLUMN_SET.issuperset(row):
            return _raise_bad_row(row, where)
        rid, text, messages, meta = get("id"), get("text"), get("messages"), get("metadata")
        prov = Provenance(seed_id=get("seed_id"), technique=get("technique"), template_id=get("template_id"),
                          template_version=get("template_version"), model=get("model"), round=get("round"))
        if not (type(rid) is str and rid and (type(text) is str or (text is None and messages is not None))
                and (messages is None or _messages_problem(messages) is None) and _provenance_ok(prov)):
            return _raise_bad_row(row, where)
        if type(meta) is str:
            meta = _loads_metadata(meta, where)
        elif meta is None:
            meta = {}
        elif type(meta) is not dict:
            return _raise_bad_row(row, where)
        return cls(rid, text, messages, meta, prov)

    def validate(self) -> None:
        """Raise ``DataError`` if this record breaks the contract (steps call this on what they build)."""
        problem = row_problem({"id": self.id, "text": self.text, "messages": self.messages,
                               "metadata": self.metadata,
                               **{k: getattr(self.provenance, k) for k in PROVENANCE_FIELDS}})
        if problem:
            raise DataError(f"record {self.id!r}: {problem}")


def _provenance_ok(p: Provenance) -> bool:
    return ((p.seed_id is None or type(p.seed_id) is str) and (p.technique is None or type(p.technique) is str)
            and (p.template_id is None or type(p.template_id) is str) and (p.model is None or type(p.model) is str)
            and (p.template_version is None or type(p.template_version) is int)
            and (p.round is None or type(p.round) is int))


def _raise_bad_row(row: Any, where: str):
    raise DataError(f"{where}: {row_problem(row) or 'invalid row'}")


def row_problem(row: Any) -> str | None:
    """What is wrong with a flat row, or None. Cheap checks, run on every row read."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    unknown = row.keys() - _COLUMN_SET
    if unknown:
        return (f"unknown field(s) {sorted(unknown)}; the columns are {list(COLUMNS)} "
                "(put extra fields inside 'metadata')")
    rid = row.get("id")
    if not isinstance(rid, str) or not rid:
        return f"field 'id' must be a non-empty string, got {rid!r}"
    return _content_problem(row) or _metadata_problem(row.get("metadata")) or _provenance_problem(row)


def _content_problem(row: dict) -> str | None:
    text, messages = row.get("text"), row.get("messages")
    if text is None and messages is None:
        return "needs 'text' or 'messages' (both are missing or null)"
    if text is not None and not isinstance(text, str):
        return f"field 'text' must be a string or null, got {type(text).__name__}"
    if messages is not None:
        return _messages_problem(messages)
    return None


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return f"field 'messages' must be a list of {{role, content}} objects, got {type(messages).__name__}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.keys() != {"role", "content"}:
            keys = sorted(m) if isinstance(m, dict) else type(m).__name__
            return f"messages[{i}] must have exactly the keys 'role' and 'content', got {keys}"
        if m["role"] not in ROLES:
            return f"messages[{i}].role is {m['role']!r}; use one of {sorted(ROLES)}"
        if not isinstance(m["content"], str):
            return f"messages[{i}].content must be a string, got {type(m['content']).__name__}"
    return None


def _metadata_problem(meta: Any) -> str | None:
    if meta is None or isinstance(meta, (dict, str)):
        return None
    return f"field 'metadata' must be an object (or its JSON string), got {type(meta).__name__}"


def _provenance_problem(row: dict) -> str | None:
    for key, typ in _PROV_TYPES.items():
        value = row.get(key)
        if value is not None and (type(value) is not typ):  # bool is not an int here
            return f"field '{key}' must be {typ.__name__} or null, got {value!r}"
    return None


def _dumps_metadata(meta: dict) -> str:
    if not meta:
        return "{}"
    try:
        return jsonio.dumps_sorted(meta)
    except TypeError as e:
        raise DataError(f"metadata is not JSON-serialisable ({e}); store plain str/int/float/list/dict") from e


def _loads_metadata(text: str, where: str) -> dict:
    if text == "{}":
        return {}
    try:
        meta = jsonio.loads(text)
    except jsonio.JSONDecodeError as e:
        raise DataError(f"{where}: field 'metadata' is a string but not JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DataError(f"{where}: field 'metadata' must encode a JSON object, got {type(meta).__name__}")
    return meta
