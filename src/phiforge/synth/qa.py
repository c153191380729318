"""QA pairs from documents: reasoning steps of a passage turned into grounded question-answer pairs.

Phi-4 report §2.1 ("Creating Question-Answer pairs from diverse sources"): an LLM
pipeline reads books, papers and code and, rather than only picking out explicit
Q&A, "detects deduction chains and logical progressions" and turns the key
reasoning steps into question-answer pairs; done well, training on the pairs beats
training on the original content.

How we implement it (``DocumentQAGenerator``), in two batched teacher calls:

1. ``qa_detect_chains``: the teacher lists the passage's reasoning chains as JSON
   (summary + steps). Skipped when the seed already carries App. D.1.1
   ``reasoning_steps`` from ``seeds.ExcerptTagger`` (``use_tagged_steps``), or when
   ``detect_chains`` is off (then step 2 finds the steps itself: one call, cheaper).
2. ``qa_pairs``: one pair per key step, as JSON ``{question, answer, reasoning_step,
   evidence}``.

Each pair is checked, then written as a chat record (user question, assistant
answer) with the passage id as seed. Checks: the evidence quote occurs in the
passage after normalisation (case, punctuation, spacing, quote styles; ``...``
splits a quote into parts that must occur in order), the question does not contain
its own answer, the question is self-contained (no "the passage"), lengths within
bounds, no repeated question. The paper gives neither prompts nor filters: these
are ours (UNCONFIRMED), chosen because ungrounded answers and context-dependent
questions are the typical failures of document QA.

Accounting: every passage either yields candidate pairs (``passages_expanded``) or is
dropped (``empty_passage``, ``chain_detection_invalid_json``, ``no_reasoning_chain``,
``qa_invalid_json``, ``no_qa_pairs``); every candidate pair (``pairs_proposed``) is
either yielded or dropped (``qa_over_limit``, ``qa_question_length``,
``qa_answer_length``, ``qa_refers_to_passage``, ``qa_evidence_too_short``,
``qa_ungrounded``, ``qa_answer_in_question``, ``qa_duplicate``).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Iterator

from pydantic import BaseModel, BeforeValidator, Field, model_validator

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import get_template
from phiforge.recipe.schema import Section
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.synth.jsonask import ask_json

_PUNCT_MAP = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                            "\u2013": "-", "\u2014": "-", "\u2212": "-"})
_REFERS = re.compile(r"\b(?:the|this|above|given|following) (?:passage|text|excerpt|article|document|author)\b",
                     re.IGNORECASE)
_ELLIPSIS = re.compile(r"\.\.\.+|\u2026|\[\.\.\.\]")


def _as_text(value: object) -> object:
    """A weak model's step given as an object or number becomes a string."""
    if isinstance(value, dict):
        return " ".join(str(v) for v in value.values())
    if isinstance(value, (int, float)):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_as_text)]


def _wrap(data: object, key: str, item_key: str) -> object:
    """Accept a bare list, or a single item, for ``{key: [...]}`` (weak models drop the wrapper)."""
    if isinstance(data, list):
        return {key: data}
    if isinstance(data, dict) and key not in data and item_key in data:
        return {key: [data]}
    return data


class ReasoningChain(BaseModel):
    summary: Text = ""
    steps: list[Text] = Field(min_length=1)


class ReasoningChains(BaseModel):
    """Step 1 reply."""

    chains: list[ReasoningChain]

    @model_validator(mode="before")
    @classmethod
    def _accept(cls, data: object) -> object:
        return _wrap(data, "chains", "steps")


class QAPair(BaseModel):
    question: Text = Field(min_length=1)
    answer: Text = Field(min_length=1)
    reasoning_step: Text = ""
    evidence: Text = ""


class QAPairs(BaseModel):
    """Step 2 reply."""

    pairs: list[QAPair]

    @model_validator(mode="before")
    @classmethod
    def _accept(cls, data: object) -> object:
        return _wrap(data, "pairs", "question")


class DocumentQAGeneratorConfig(Section):
    """QA from documents (Phi-4 report §2.1); every filter value is ours (UNCONFIRMED)."""

    role: str = Field("teacher", description="model role to ask")
    detect_chains: bool = Field(True, description=(
        "ask for the passage's reasoning chains first (the paper's 'detects deduction chains'); "
        "off = one call that finds the steps while writing pairs"))
    use_tagged_steps: bool = Field(True, description=(
        "use metadata.excerpt.reasoning_steps from ExcerptTagger instead of detecting chains"))
    max_chains: int = Field(4, ge=1, description="chains asked for per passage. UNCONFIRMED")
    max_pairs: int = Field(6, ge=1, description=(
        "pairs asked for and kept per passage; extra ones are dropped (qa_over_limit). UNCONFIRMED"))
    min_question_chars: int = Field(15, ge=1, description="shorter questions are dropped (qa_question_length)")
    max_question_chars: int = Field(1000, ge=1, description="longer questions are dropped (qa_question_length)")
    min_answer_chars: int = Field(1, ge=1, description="shorter answers are dropped (qa_answer_length)")
    max_answer_chars: int = Field(2000, ge=1, description="longer answers are dropped (qa_answer_length)")
    min_evidence_chars: int = Field(12, ge=0, description=(
        "normalised evidence shorter than this cannot show grounding (qa_evidence_too_short). UNCONFIRMED: "
        "a few words; one word would match almost any passage"))
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    detect_max_tokens: int = Field(768, ge=1, description="completion budget of the chain-detection reply")
    max_tokens: int = Field(1536, ge=1, description="completion budget of the QA-pairs reply")
    max_reasks: int = Field(2, ge=0, description="re-asks on invalid JSON (synth.jsonask)")
    batch_size: int = Field(16, ge=1, description="passages per model call")
    seed: int = Field(0, ge=0, description="sampling seed")


def normalize_for_match(text: str) -> str:
    """Lower-case words separated by single spaces: what grounding and leakage checks compare."""
    text = unicodedata.normalize("NFKC", text).translate(_PUNCT_MAP).lower()
    return " ".join(re.findall(r"[^\W_]+", text))


def evidence_found(evidence: str, passage: str) -> bool:
    """Whether every ``...``-separated part of ``evidence`` occurs in ``passage``, in order."""
    haystack = f" {normalize_for_match(passage)} "
    pos = 0
    parts = [normalize_for_match(p) for p in _ELLIPSIS.split(evidence)]
    for part in filter(None, parts):
        at = haystack.find(f" {part} ", pos)
        if at < 0:
            return False
        pos = at + len(part) + 1
    return any(parts)


def answer_in_question(question: str, answer: str) -> bool:
    """Whether the whole (normalised) answer appears, as whole words, in the question."""
    a = normalize_for_match(answer)
    return bool(a) and f" {a} " in f" {normalize_for_match(question)} "


def tagged_steps(record: Record) -> list[str]:
    """App. D.1.1 reasoning steps from ``ExcerptTagger`` metadata, as sentences."""
    steps = (record.metadata.get("excerpt") or {}).get("reasoning_steps") or []
    out = []
    for s in steps:
        if isinstance(s, dict):
            note = f" ({s['description']})" if s.get("description") else ""
            out.append(f"{s.get('assumption', '')} -> {s.get('conclusion', '')}{note}")
    return out


def format_steps(chains: list[ReasoningChain] | list[str] | None) -> str:
    if chains is None:
        return "(none given: find the key reasoning steps of the passage yourself)"
    lines, n = [], 0
    for chain in chains:
        for step in ([chain] if isinstance(chain, str) else chain.steps):
            n += 1
            lines.append(f"{n}. {step}")
    return "\n".join(lines)


class DocumentQAGenerator(GenerationStep):
    """QA pairs from documents, Phi-4 report §2.1: reasoning steps -> grounded chat QA records.

    See the module docstring for the two calls, the checks and the drop reasons.
    Output: ``messages`` = [user question, assistant answer]; ``metadata`` has the
    passage id, reasoning step and evidence; provenance names ``qa_pairs``.
    """

    technique = "document_qa"

    def __init__(self, config: DocumentQAGeneratorConfig, models):
        super().__init__(models, batch_size=config.batch_size, seed=config.seed)
        self.config = config
        self.detect_template = get_template("qa_detect_chains")
        self.pairs_template = get_template("qa_pairs")
        self.templates = (self.detect_template, self.pairs_template)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            passages = []
            for record in batch:
                if (record.text or "").strip():
                    passages.append(record)
                else:
                    ctx.drop(record, "empty_passage")
            with_steps = self.reasoning_steps(ctx, passages)
            yield from self.pairs(ctx, with_steps)

    def reasoning_steps(self, ctx: StepContext, passages: list[Record]) -> list[tuple[Record, object]]:
        """(passage, chains or tagged steps or None) for passages that go on to step 2."""
        cfg = self.config
        found: dict[int, object] = {}
        to_detect = []
        for i, record in enumerate(passages):
            steps = tagged_steps(record) if cfg.use_tagged_steps else []
            if steps:
                ctx.stat("steps_from_tags")
                found[i] = steps
            elif cfg.detect_chains:
                to_detect.append(i)
            else:
                found[i] = None
        self.detect(ctx, passages, to_detect, found)
        return [(passages[i], found[i]) for i in sorted(found)]

    def detect(self, ctx: StepContext, passages: list[Record], indices: list[int], found: dict) -> None:
        cfg = self.config
        params = self.params(temperature=cfg.temperature, max_tokens=cfg.detect_max_tokens)
        prompts = [user(ctx.render(self.detect_template, passage=passages[i].text, max_chains=cfg.max_chains))
                   for i in indices]
        answers = ask_json(self, ctx, prompts, ReasoningChains, params, role=cfg.role, max_reasks=cfg.max_reasks)
        for i, answer in zip(indices, answers):
            if answer.value is None:
                ctx.drop(passages[i], "chain_detection_invalid_json")
            elif not answer.value.chains:
                ctx.drop(passages[i], "no_reasoning_chain")
            else:
                ctx.stat("chains_detected", len(answer.value.chains))
                found[i] = answer.value.chains[:cfg.max_chains]

    def pairs(self, ctx: StepContext, items: list[tuple[Record, object]]) -> Iterator[Record]:
        cfg = self.config
        params = self.params(temperature=cfg.temperature, max_tokens=cfg.max_tokens)
        prompts = [user(ctx.render(self.pairs_template, passage=r.text, steps=format_steps(s), max_pairs=cfg.max_pairs))
                   for r, s in items]
        answers = ask_json(self, ctx, prompts, QAPairs, params, role=cfg.role, max_reasks=cfg.max_reasks)
        for (record, _), answer in zip(items, answers):
            if answer.value is None:
                ctx.drop(record, "qa_invalid_json")
            elif not answer.value.pairs:
                ctx.drop(record, "no_qa_pairs")
            else:
                ctx.stat("passages_expanded")
                yield from self.checked(ctx, record, answer.value.pairs)

    def checked(self, ctx: StepContext, passage: Record, pairs: list[QAPair]) -> Iterator[Record]:
        seen: set[str] = set()
        for i, pair in enumerate(pairs):
            ctx.stat("pairs_proposed")
            out = self.qa_record(passage, i, pair)
            reason = "qa_over_limit" if i >= self.config.max_pairs else self.problem(pair, passage.text or "", seen)
            if reason:
                ctx.drop(out, reason)
                continue
            seen.add(normalize_for_match(pair.question))
            yield out

    def problem(self, pair: QAPair, passage: str, seen: set[str]) -> str | None:
        """The first check ``pair`` fails, or None."""
        cfg = self.config
        q, a = pair.question.strip(), pair.answer.strip()
        if not cfg.min_question_chars <= len(q) <= cfg.max_question_chars:
            return "qa_question_length"
        if not cfg.min_answer_chars <= len(a) <= cfg.max_answer_chars:
            return "qa_answer_length"
        if _REFERS.search(q):
            return "qa_refers_to_passage"
        if len(normalize_for_match(pair.evidence)) < cfg.min_evidence_chars:
            return "qa_evidence_too_short"
        if not evidence_found(pair.evidence, passage):
            return "qa_ungrounded"
        if answer_in_question(q, a):
            return "qa_answer_in_question"
        if normalize_for_match(q) in seen:
            return "qa_duplicate"
        return None

    def qa_record(self, passage: Record, index: int, pair: QAPair) -> Record:
        meta = {**passage.metadata, "passage_id": passage.id, "reasoning_step": pair.reasoning_step,
                "evidence": pair.evidence, "pair_index": index}
        prov = Provenance(seed_id=passage.id, technique=self.technique, template_id=self.pairs_template.id,
                          template_version=self.pairs_template.version, model=self.model_name(self.config.role))
        messages = [{"role": "user", "content": pair.question.strip()},
                    {"role": "assistant", "content": pair.answer.strip()}]
        return Record(child_id(passage.id, "qa", index), messages=messages, metadata=meta, provenance=prov)
