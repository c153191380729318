"""Seed curation: the two-stage educational filter and excerpt extraction with tagging.

Phi-4 report §2.1 ("Seed curation", web and code seeds) and App. D.1.1. Seeds are
excerpts of web pages, books and code "chosen for complexity, depth of reasoning and
educational value", selected in two stages, then tagged with metadata that both
filters them and seeds later generation pipelines. A pipeline is::

    [PageEducationalFilter, PassageSegmenter, PassageScorer, ExcerptTagger, SeedMetadataFilter]

(``educational_filter_steps`` builds the first three). How we implement it:

* ``PageEducationalFilter`` (stage 1): the teacher scores a whole page's educational
  potential 0-5 as JSON; pages below ``threshold`` are dropped
  (``page_low_educational_value``).
* ``PassageSegmenter`` + ``PassageScorer`` (stage 2): kept pages are cut into passages
  at paragraph breaks (packed up to a target length, over-long paragraphs split at
  sentences), and each passage is scored 0-5 for factual and for reasoning content;
  ``passage_low_factual`` / ``passage_low_reasoning`` drops.
* ``ExcerptTagger`` (App. D.1.1): the teacher reads a line-numbered document and
  returns excerpts tagged with the paper's schema (start/end line, information type,
  brief description, complexity and factual obscurity grades A-F, a
  chain-of-reasoning flag, reasoning steps with assumption/conclusion/description,
  dependencies). The excerpt text is cut from the document by the line range, never
  copied from the reply, so a seed is always organic text.
* ``SeedMetadataFilter``: keeps tagged seeds by grade, flag, step count and type.

Deviations: the paper gives no scales, thresholds, prompts or passage length; ours
are marked UNCONFIRMED in the configs (the 0-5 scale and cutoff 3 follow the
FineWeb-Edu annotator, a public recipe of the same kind). The paper's classifiers
were presumably distilled for scale; here the teacher scores every page directly.

Accounting of the one-to-many steps (segmenter, tagger): every input record either
yields candidates (counter ``*_expanded``) or is dropped with a reason, and every
candidate (passage, excerpt) is either yielded or dropped with its own reason.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Annotated, Iterator, Literal

from pydantic import BaseModel, BeforeValidator, Field, model_validator

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import Filter, Step, StepContext
from phiforge.dataflow.templates import get_template
from phiforge.recipe.schema import Section
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.synth.jsonask import ask_json

GRADES = "ABCDEF"
_GRADE = re.compile(r"^(?:GRADE\s*[:=]?\s*)?([A-F])\s*[+-]?$")


def parse_grade(value: object) -> str:
    """``"b"``, ``"B+"``, ``"Grade: B"`` -> ``"B"``; anything else is a validation error."""
    m = _GRADE.match(str(value).strip().upper())
    if not m:
        raise ValueError(f"must be a letter grade A-F, got {value!r}")
    return m.group(1)


Grade = Annotated[str, BeforeValidator(parse_grade)]


def _as_list_of_str(value: object) -> object:
    """Dependencies given as one string ("prior findings, line 3") become a list."""
    if isinstance(value, str):
        return [part.strip() for part in re.split(r"[;,\n]", value) if part.strip()]
    return [] if value is None else value


# --------------------------------------------------------------------------- schemas


class ReasoningStep(BaseModel):
    """One step of an excerpt's reasoning (App. D.1.1)."""

    assumption: str
    conclusion: str
    description: str = ""


class ExcerptTag(BaseModel):
    """The App. D.1.1 metadata of one excerpt; lines are 1-based and inclusive."""

    start_line: int
    end_line: int
    information_type: str = Field(min_length=1)
    brief_description: str = Field(min_length=1)
    complexity: Grade
    factual_obscurity: Grade
    chain_of_reasoning: bool
    reasoning_steps: list[ReasoningStep] = Field(default_factory=list)
    dependencies: Annotated[list[str], BeforeValidator(_as_list_of_str)] = Field(default_factory=list)


class ExcerptTagging(BaseModel):
    """The tagger's reply; a bare list or a single excerpt object is accepted too."""

    excerpts: list[ExcerptTag]

    @model_validator(mode="before")
    @classmethod
    def _wrap(cls, data: object) -> object:
        if isinstance(data, list):
            return {"excerpts": data}
        if isinstance(data, dict) and "excerpts" not in data and "start_line" in data:
            return {"excerpts": [data]}
        return data


class EducationalScore(BaseModel):
    """Stage 1 reply: a page's educational potential."""

    score: float = Field(ge=0, le=5)
    reason: str = ""


class PassageScore(BaseModel):
    """Stage 2 reply: a passage's factual and reasoning content."""

    factual: float = Field(ge=0, le=5)
    reasoning: float = Field(ge=0, le=5)
    reason: str = ""


# --------------------------------------------------------------------------- configs


class _TeacherCall(Section):
    """Teacher-call settings shared by the model-calling steps of this module."""

    role: str = Field("teacher", description="model role to ask (a key of the step's models)")
    temperature: float = Field(0.0, ge=0, description="0 = greedy: scores and tags should be reproducible")
    max_tokens: int = Field(256, ge=1, description="completion budget per reply")
    max_reasks: int = Field(2, ge=0, description="re-asks on invalid JSON (synth.jsonask)")
    batch_size: int = Field(16, ge=1, description="records per model call")
    seed: int = Field(0, ge=0, description="sampling seed")


class PageEducationalFilterConfig(_TeacherCall):
    """Stage 1 of the seed filter (Phi-4 report §2.1)."""

    threshold: float = Field(3.0, ge=0, le=5, description=(
        "keep pages scoring >= this on 0-5. UNCONFIRMED: the paper gives no scale; 3 is FineWeb-Edu's cutoff"))
    max_chars: int = Field(8000, ge=100, description=(
        "page characters shown to the scorer (the rest is cut). UNCONFIRMED: fits a 4k-token prompt"))


class PassageSegmenterConfig(Section):
    """How kept pages are cut into passages (Phi-4 report §2.1; lengths UNCONFIRMED)."""

    target_chars: int = Field(1500, ge=50, description=(
        "pack paragraphs into passages up to this many characters. UNCONFIRMED: ~300-400 tokens, "
        "room for one argument or worked example"))
    max_chars: int = Field(3000, ge=50, description="split longer paragraphs at sentence ends (then hard-cut)")
    min_chars: int = Field(200, ge=0, description=(
        "drop shorter passages (passage_too_short). UNCONFIRMED: below ~40 words little reasoning fits"))

    @model_validator(mode="after")
    def _check(self) -> "PassageSegmenterConfig":
        if not self.min_chars <= self.target_chars <= self.max_chars:
            raise ValueError(f"need min_chars <= target_chars <= max_chars, got {self.min_chars}, "
                             f"{self.target_chars}, {self.max_chars}")
        return self


class PassageScorerConfig(_TeacherCall):
    """Stage 2 of the seed filter: per-passage factual and reasoning scores (report §2.1)."""

    min_factual: float = Field(3.0, ge=0, le=5, description="keep passages with factual >= this. UNCONFIRMED")
    min_reasoning: float = Field(3.0, ge=0, le=5, description=(
        "keep passages with reasoning >= this. UNCONFIRMED: 3 = at least one argument or calculation"))


class ExcerptTaggerConfig(_TeacherCall):
    """Excerpt extraction and App. D.1.1 tagging."""

    max_tokens: int = Field(1536, ge=1, description="completion budget (a few tagged excerpts in JSON)")
    max_excerpts: int = Field(4, ge=1, description=(
        "excerpts asked for per document; extra ones are dropped (excerpt_over_limit). UNCONFIRMED"))
    max_lines: int = Field(400, ge=1, description=(
        "document lines shown to the tagger; later lines are cut (counter document_truncated). UNCONFIRMED"))
    min_excerpt_chars: int = Field(40, ge=1, description="drop shorter excerpts (excerpt_too_short). UNCONFIRMED")
    out_of_range: Literal["clamp", "drop"] = Field("clamp", description=(
        "a range partly outside the document: clamp it to the document, or drop it (excerpt_out_of_range)"))


class SeedMetadataFilterConfig(Section):
    """Which tagged excerpts to keep (report §2.1: "raw content is later filtered on this metadata")."""

    min_complexity: Grade | None = Field("C", description=(
        "keep complexity grades at least this demanding (A most). None = any. UNCONFIRMED"))
    require_chain_of_reasoning: bool = Field(False, description="keep only excerpts flagged chain_of_reasoning")
    min_reasoning_steps: int = Field(0, ge=0, description="keep excerpts with at least this many reasoning steps")
    information_types: list[str] | None = Field(None, description=(
        "keep only these information types (case-insensitive); None = any"))


# --------------------------------------------------------------------------- helpers


def number_lines(lines: list[str]) -> str:
    """``"   3| text"`` per line: the tagger names excerpts by these numbers."""
    width = len(str(len(lines)))
    return "\n".join(f"{i:>{width}}| {line}" for i, line in enumerate(lines, start=1))


def check_range(start: int, end: int, num_lines: int, mode: str) -> tuple[int, int, str | None]:
    """The usable (start, end) for a document of ``num_lines``, and a drop reason or None."""
    if end < start:
        return start, end, "excerpt_bad_line_range"
    if start > num_lines or end < 1:
        return start, end, "excerpt_out_of_range"
    if start >= 1 and end <= num_lines:
        return start, end, None
    if mode == "drop":
        return start, end, "excerpt_out_of_range"
    return max(start, 1), min(end, num_lines), None


def split_passages(text: str, target: int, hard_max: int) -> list[str]:
    """Paragraphs packed greedily up to ``target`` chars; longer ones split at sentences."""
    pieces = [p for para in re.split(r"\n\s*\n", text) for p in _split_long(para.strip(), hard_max) if p]
    passages: list[str] = []
    for piece in pieces:
        if passages and len(passages[-1]) + 2 + len(piece) <= target:
            passages[-1] += "\n\n" + piece
        else:
            passages.append(piece)
    return passages


def _split_long(paragraph: str, hard_max: int) -> list[str]:
    if len(paragraph) <= hard_max:
        return [paragraph]
    out: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        while len(sentence) > hard_max:
            out.append(sentence[:hard_max])
            sentence = sentence[hard_max:]
        if out and len(out[-1]) + 1 + len(sentence) <= hard_max:
            out[-1] += " " + sentence
        elif sentence:
            out.append(sentence)
    return out


def _with_metadata(record: Record, **extra: object) -> Record:
    return dataclasses.replace(record, metadata={**record.metadata, **extra})


# --------------------------------------------------------------------------- stage 1 and 2 scoring


class _ScoringFilter(GenerationStep):
    """Ask the teacher a JSON score per record, annotate it, keep or drop (one-to-one)."""

    template_id = ""
    schema: type[BaseModel] = BaseModel
    invalid_reason = ""

    def __init__(self, config, models):
        super().__init__(models, batch_size=config.batch_size, seed=config.seed)
        self.config = config
        self.template = get_template(self.template_id)
        self.templates = (self.template,)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        cfg = self.config
        params = self.params(temperature=cfg.temperature, max_tokens=cfg.max_tokens)
        for batch in self.batches(records):
            prompts = [user(ctx.render(self.template, **self.values(r))) for r in batch]
            answers = ask_json(self, ctx, prompts, self.schema, params, role=cfg.role, max_reasks=cfg.max_reasks)
            for record, answer in zip(batch, answers):
                if answer.value is None:
                    ctx.drop(_with_metadata(record, score_error=answer.error), self.invalid_reason)
                    continue
                scored = _with_metadata(record, **self.annotate(answer.value))
                reason = self.verdict(answer.value)
                if reason:
                    ctx.drop(scored, reason)
                else:
                    ctx.stat("kept")
                    yield scored

    def values(self, record: Record) -> dict:
        raise NotImplementedError

    def annotate(self, value) -> dict:
        raise NotImplementedError

    def verdict(self, value) -> str | None:
        raise NotImplementedError


class PageEducationalFilter(_ScoringFilter):
    """Stage 1 of the Phi-4 seed filter (report §2.1): keep pages of strong educational potential.

    The teacher scores each page 0-5 (``seeds_page_educational``); pages scoring
    below ``threshold`` are dropped as ``page_low_educational_value``, unusable
    replies as ``page_score_invalid_json``. Kept pages pass through unchanged but for
    ``metadata.educational_score`` / ``educational_reason``.
    """

    template_id = "seeds_page_educational"
    schema = EducationalScore
    invalid_reason = "page_score_invalid_json"

    def __init__(self, config: PageEducationalFilterConfig, models):
        super().__init__(config, models)

    def values(self, record: Record) -> dict:
        return {"page": (record.text or "")[:self.config.max_chars]}

    def annotate(self, value: EducationalScore) -> dict:
        return {"educational_score": value.score, "educational_reason": value.reason}

    def verdict(self, value: EducationalScore) -> str | None:
        return "page_low_educational_value" if value.score < self.config.threshold else None


class PassageScorer(_ScoringFilter):
    """Stage 2 of the Phi-4 seed filter (report §2.1): score passages for factual and reasoning content.

    The teacher scores each passage 0-5 on both (``seeds_passage_score``); a passage
    below ``min_factual`` is dropped as ``passage_low_factual``, else below
    ``min_reasoning`` as ``passage_low_reasoning``; unusable replies as
    ``passage_score_invalid_json``. Scores go to ``metadata.factual_score`` /
    ``reasoning_score``.
    """

    template_id = "seeds_passage_score"
    schema = PassageScore
    invalid_reason = "passage_score_invalid_json"

    def __init__(self, config: PassageScorerConfig, models):
        super().__init__(config, models)

    def values(self, record: Record) -> dict:
        return {"passage": record.text or ""}

    def annotate(self, value: PassageScore) -> dict:
        return {"factual_score": value.factual, "reasoning_score": value.reasoning, "passage_reason": value.reason}

    def verdict(self, value: PassageScore) -> str | None:
        if value.factual < self.config.min_factual:
            return "passage_low_factual"
        if value.reasoning < self.config.min_reasoning:
            return "passage_low_reasoning"
        return None


class PassageSegmenter(Step):
    """Cut kept pages into passages for stage 2 of the seed filter (Phi-4 report §2.1).

    Splits at blank lines, packs paragraphs up to ``target_chars``, splits longer
    paragraphs at sentence ends (hard cut past ``max_chars``), and drops passages
    under ``min_chars`` (``passage_too_short``); a page with no text is dropped as
    ``empty_page``. The paper does not say how it segments (UNCONFIRMED).
    """

    technique = "passage_segmentation"

    def __init__(self, config: PassageSegmenterConfig | None = None):
        self.config = config or PassageSegmenterConfig()

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        cfg = self.config
        for page in records:
            passages = split_passages(page.text or "", cfg.target_chars, cfg.max_chars)
            if not passages:
                ctx.drop(page, "empty_page")
                continue
            ctx.stat("pages_expanded")
            for i, text in enumerate(passages):
                passage = self.passage(page, i, len(passages), text)
                ctx.stat("passages")
                if len(text) < cfg.min_chars:
                    ctx.drop(passage, "passage_too_short")
                else:
                    yield passage

    def passage(self, page: Record, index: int, total: int, text: str) -> Record:
        meta = {**page.metadata, "page_id": page.id, "passage_index": index, "num_passages": total}
        return Record(child_id(page.id, "p", index), text=text, metadata=meta,
                      provenance=Provenance(seed_id=page.id, technique=self.technique))


def educational_filter_steps(models, page: PageEducationalFilterConfig | None = None,
                             segment: PassageSegmenterConfig | None = None,
                             score: PassageScorerConfig | None = None) -> list[Step]:
    """The two-stage educational filter as pipeline steps: page filter, segmenter, passage scorer."""
    return [PageEducationalFilter(page or PageEducationalFilterConfig(), models),
            PassageSegmenter(segment or PassageSegmenterConfig()),
            PassageScorer(score or PassageScorerConfig(), models)]


# --------------------------------------------------------------------------- excerpt tagging


class ExcerptTagger(GenerationStep):
    """Seed extraction and tagging, Phi-4 report §2.1 and App. D.1.1.

    The teacher sees the document with numbered lines (``seeds_tag_excerpts``) and
    replies with JSON excerpts in the App. D.1.1 schema (``ExcerptTag``), re-asked
    when invalid. Each excerpt becomes one record whose text is the document's lines
    ``start_line..end_line`` (checked against the document: a range partly outside
    is clamped or dropped per ``out_of_range``) and whose ``metadata.excerpt`` is the
    tag. Document drops: ``empty_document``, ``tagging_invalid_json``,
    ``no_excerpts_tagged``; excerpt drops: ``excerpt_bad_line_range``,
    ``excerpt_out_of_range``, ``excerpt_too_short``, ``excerpt_duplicate``,
    ``excerpt_over_limit``.
    """

    technique = "seed_extraction"

    def __init__(self, config: ExcerptTaggerConfig, models):
        super().__init__(models, batch_size=config.batch_size, seed=config.seed)
        self.config = config
        self.template = get_template("seeds_tag_excerpts")
        self.templates = (self.template,)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        cfg = self.config
        params = self.params(temperature=cfg.temperature, max_tokens=cfg.max_tokens)
        for batch in self.batches(records):
            docs = []
            for record in batch:
                lines = (record.text or "").splitlines()
                if not any(line.strip() for line in lines):
                    ctx.drop(record, "empty_document")
                    continue
                if len(lines) > cfg.max_lines:
                    ctx.stat("document_truncated")
                docs.append((record, lines[:cfg.max_lines]))
            prompts = [user(self.prompt(ctx, lines)) for _, lines in docs]
            answers = ask_json(self, ctx, prompts, ExcerptTagging, params, role=cfg.role, max_reasks=cfg.max_reasks)
            for (record, lines), answer in zip(docs, answers):
                yield from self.excerpts(ctx, record, lines, answer)

    def prompt(self, ctx: StepContext, lines: list[str]) -> str:
        return ctx.render(self.template, document=number_lines(lines), num_lines=len(lines),
                          max_excerpts=self.config.max_excerpts)

    def excerpts(self, ctx: StepContext, record: Record, lines: list[str], answer) -> Iterator[Record]:
        if answer.value is None:
            ctx.drop(_with_metadata(record, tagging_error=answer.error), "tagging_invalid_json")
            return
        if not answer.value.excerpts:
            ctx.drop(record, "no_excerpts_tagged")
            return
        ctx.stat("documents_expanded")
        seen: set[tuple[int, int]] = set()
        for i, tag in enumerate(answer.value.excerpts):
            ctx.stat("excerpts_tagged")
            start, end, reason = check_range(tag.start_line, tag.end_line, len(lines), self.config.out_of_range)
            clamped = (start, end) != (tag.start_line, tag.end_line)
            tag = tag.model_copy(update={"start_line": start, "end_line": end})
            text = "\n".join(lines[start - 1:end]).strip() if reason is None else ""
            reason = reason or self.excerpt_problem(i, text, (start, end), seen)
            excerpt = self.excerpt_record(record, tag, text, clamped)
            if reason:
                ctx.drop(excerpt, reason)
                continue
            seen.add((start, end))
            if clamped:
                ctx.stat("excerpt_range_clamped")
            yield excerpt

    def excerpt_problem(self, index: int, text: str, span: tuple[int, int], seen: set) -> str | None:
        if index >= self.config.max_excerpts:
            return "excerpt_over_limit"
        if span in seen:
            return "excerpt_duplicate"
        if len(text) < self.config.min_excerpt_chars:
            return "excerpt_too_short"
        return None

    def excerpt_record(self, doc: Record, tag: ExcerptTag, text: str, clamped: bool) -> Record:
        """The excerpt as a seed record; a dropped one keeps the tag's JSON as its text."""
        meta = {**doc.metadata, "source_id": doc.id, "excerpt": tag.model_dump(), "range_clamped": clamped}
        prov = Provenance(seed_id=doc.id, technique=self.technique, template_id=self.template.id,
                          template_version=self.template.version, model=self.model_name(self.config.role))
        return Record(child_id(doc.id, "excerpt", f"{tag.start_line}-{tag.end_line}"),
                      text=text or json.dumps(tag.model_dump()), metadata=meta, provenance=prov)


class SeedMetadataFilter(Filter):
    """Keep tagged excerpts by their App. D.1.1 metadata (Phi-4 report §2.1).

    Reads ``metadata.excerpt`` written by ``ExcerptTagger``. Drop reasons:
    ``seed_untagged``, ``seed_low_complexity``, ``seed_no_chain_of_reasoning``,
    ``seed_few_reasoning_steps``, ``seed_information_type``.
    """

    def __init__(self, config: SeedMetadataFilterConfig | None = None):
        super().__init__()
        self.config = config or SeedMetadataFilterConfig()
        types = self.config.information_types
        self._types = None if types is None else {t.strip().lower() for t in types}

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        tag = record.metadata.get("excerpt")
        if not isinstance(tag, dict):
            return False, "seed_untagged"
        cfg = self.config
        if cfg.min_complexity and GRADES.index(tag["complexity"]) > GRADES.index(cfg.min_complexity):
            return False, "seed_low_complexity"
        if cfg.require_chain_of_reasoning and not tag["chain_of_reasoning"]:
            return False, "seed_no_chain_of_reasoning"
        if len(tag.get("reasoning_steps") or []) < cfg.min_reasoning_steps:
            return False, "seed_few_reasoning_steps"
        if self._types is not None and tag["information_type"].strip().lower() not in self._types:
            return False, "seed_information_type"
        return True
