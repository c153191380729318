"""Small importable steps for tests, benchmarks and examples.

They live in the package (not in ``tests/``) because worker processes (spawn) and
Ray workers must import a step's class by its module name.
"""

from __future__ import annotations

import time
from typing import Iterator

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import Filter, Map, Step, StepContext
from phiforge.dataflow.templates import PromptTemplate, get_template


class Noop(Step):
    """Pass every record through unchanged (measures executor overhead)."""

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        yield from records


class Sleep(Step):
    """Sleep ``seconds`` per record (a stand-in for a slow model call)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for record in records:
            time.sleep(self.seconds)
            ctx.stat("slept")
            yield record


class DropOddLength(Filter):
    """Keep records whose text length is even; drop the rest as ``odd_length``."""

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        return len(record.text or "") % 2 == 0 or (False, "odd_length")


class Upper(Map):
    """Upper-case the text."""

    def apply(self, record: Record) -> Record:
        record.text = (record.text or "").upper()
        return record


class RewritePrompt(Step):
    """Turn each text into a user message from a template (what a synth step does before the model call)."""

    def __init__(self, template: PromptTemplate | None = None):
        self.template = template or get_template("rewrite_as_exercise")
        self.templates = (self.template,)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        t = self.template
        for record in records:
            prompt = ctx.render(t, passage=record.text, difficulty="medium")
            yield Record(f"{record.id}/rewrite", messages=[{"role": "user", "content": prompt}],
                         provenance=Provenance(seed_id=record.id, technique="rewrite", template_id=t.id,
                                               template_version=t.version, model="none", round=0))


class FailOn(Step):
    """Raise on the record with id ``bad_id`` (tests error reporting)."""

    def __init__(self, bad_id: str):
        self.bad_id = bad_id

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for record in records:
            if record.id == self.bad_id:
                raise RuntimeError(f"boom on {record.id}")
            yield record
