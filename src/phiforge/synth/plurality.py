"""Plurality (agreement-based) difficulty filter for question datasets.

Phi-4 report §2.1 ("Question datasets"; recipe doc §3.2.2): for each collected
question, several independent answers are generated and majority voting is
applied; questions where every answer agrees are dropped as too easy, questions
whose answers are completely inconsistent are dropped as too hard or ambiguous,
and for the rest the **plurality answer replaces the ground truth** in later
rejection sampling (``synth.rejection.RejectionSampler`` reads
``metadata["plurality_answer"]``).

How we implement it:

* ``n_samples`` answers per question come from ONE batched call
  (``SamplingParams(n=n_samples)``) for a whole batch of questions, from a chat
  model (``prompt_style="chat"``) or a base model with a plain-text prompt
  (``prompt_style="completion"``, stopped at the next "Problem:"/"Question:").
* Each answer's final answer is extracted (``answer_kind="math"``:
  ``verify.math.extract_answer``; ``"choice"``: ``verify.choice.extract_choice``)
  and normalised; identical normalised answers are grouped first (a dict, O(N)),
  then each distinct answer joins the first cluster whose *representative* it is
  equivalent to (``answers_equivalent``: at most distinct x clusters comparisons,
  each cached; equivalence is not assumed transitive).
* ``agreement`` = plurality cluster size / answers extracted. Drops, in order:
  ``no_extractable_answers`` (fewer than ``min_extracted_fraction`` of the samples
  gave an answer), ``too_easy_unanimous`` (``agreement >= max_agreement``; by
  default: every extracted answer agrees), ``too_hard_inconsistent`` (the
  plurality has a single vote, i.e. all answers differ, or ``agreement <
  min_agreement``), and ``plurality_tie`` when ``on_tie="drop"``.
* Ties for the plurality are broken deterministically: the tied cluster whose
  first member came first in sample order wins (sampling is seeded, so reruns
  agree); ``plurality_tie`` in the metadata flags it.

Deviations: the paper gives no sample count, thresholds or generator model
(UNCONFIRMED); our defaults are documented on ``PluralityFilterConfig``.
Extraction failures do not count as disagreement (a weak model's format slips
would otherwise make every question "hard"); they are bounded separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Literal, Sequence

from pydantic import Field

from phiforge.dataflow.records import PROVENANCE_FIELDS, Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import PromptTemplate, get_template
from phiforge.errors import ConfigError
from phiforge.recipe.schema import Section
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.verify.choice import extract_choice
from phiforge.verify.math import answers_equivalent, extract_answer, normalize_answer

AnswerKind = Literal["math", "choice"]
PromptStyle = Literal["chat", "completion"]
COMPLETION_STOPS = ("\nProblem:", "\nQuestion:", "\n\n\n")


class PluralityFilterConfig(Section):
    """Settings of :class:`PluralityFilter` (the paper gives none of these numbers)."""

    n_samples: int = Field(8, ge=2, le=64, description=(
        "independent answers per question, sampled in one call with n=n_samples. UNCONFIRMED: the "
        "paper says 'several'; 8 gives agreement steps of 1/8 at a modest cost"))
    answer_kind: AnswerKind = Field("math", description="how final answers are read and compared")
    choice_letters: str = Field("ABCD", pattern=r"^[A-Za-z]{2,26}$",
                                description="valid option letters when answer_kind='choice'")
    prompt_style: PromptStyle = Field("chat", description=(
        "'chat': chat-message prompt (instruct models); 'completion': plain-text prompt (base models)"))
    template: str | None = Field(None, description=(
        "template id to use instead of plurality_{answer|complete}_{answer_kind}; placeholder {question}"))
    question_key: str | None = Field(None, description=(
        "metadata key holding the question; None: the record's text, else its last user message"))
    temperature: float = Field(0.8, ge=0.0, le=2.0, description=(
        "UNCONFIRMED: independent answers need real sampling; 0.8 diversifies without derailing"))
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=1, description="per answer; long enough for a worked solution")
    stop: list[str] | None = Field(None, description=(
        "stop strings; None: none for chat, next 'Problem:'/'Question:' for completion prompts"))
    min_extracted_fraction: float = Field(0.5, gt=0.0, le=1.0, description=(
        "drop (no_extractable_answers) when fewer than ceil(this * n_samples) answers (and at least 2) "
        "could be read. UNCONFIRMED: below half, the vote is too small to estimate agreement"))
    max_agreement: float = Field(1.0, gt=0.0, le=1.0, description=(
        "drop as too_easy_unanimous when agreement >= this. 1.0 (paper: 'all answers agree'): only "
        "unanimous questions are too easy"))
    min_agreement: float = Field(0.25, ge=0.0, le=1.0, description=(
        "drop as too_hard_inconsistent when agreement < this (a single-vote plurality is always "
        "inconsistent). UNCONFIRMED: 0.25 keeps a 2-of-8 plurality, the weakest one that is not noise"))
    on_tie: Literal["first_seen", "drop"] = Field("first_seen", description=(
        "tied plurality: 'first_seen' takes the cluster sampled first (deterministic), 'drop' drops "
        "the question as plurality_tie"))
    keep_samples: bool = Field(False, description="store the sampled answers in metadata['plurality_samples']")


@dataclass
class Cluster:
    """Answers judged equivalent to ``representative`` (``members`` are sample indices)."""

    key: str
    representative: str
    members: list[int] = field(default_factory=list)


@dataclass
class Vote:
    """The outcome of one question's vote (all numbers go into metadata)."""

    clusters: list[Cluster]
    n_samples: int
    n_extracted: int

    @property
    def plurality(self) -> Cluster | None:
        # max() returns the first maximal cluster; clusters are in first-seen order
        return max(self.clusters, key=lambda c: len(c.members)) if self.clusters else None

    @property
    def agreement(self) -> float:
        top = self.plurality
        return len(top.members) / self.n_extracted if top else 0.0

    @property
    def tie(self) -> bool:
        sizes = sorted((len(c.members) for c in self.clusters), reverse=True)
        return len(sizes) > 1 and sizes[0] == sizes[1]

    def metadata(self, kind: str) -> dict:
        ordered = sorted(self.clusters, key=lambda c: -len(c.members))  # stable: ties stay first-seen
        top = self.plurality
        return {"plurality_answer": top.representative if top else None,
                "agreement": round(self.agreement, 4), "plurality_tie": self.tie,
                "cluster_sizes": [len(c.members) for c in ordered],
                "cluster_answers": [c.representative for c in ordered],
                "n_samples": self.n_samples, "n_extracted": self.n_extracted,
                "extraction_failures": self.n_samples - self.n_extracted, "answer_kind": kind}


def cluster_answers(answers: Sequence[str | None], same: Callable[[str, str], bool],
                    normalize: Callable[[str], str] = str.strip) -> list[Cluster]:
    """Group extracted answers (None = not extracted): exact keys first, then by ``same`` on representatives."""
    by_key: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        if answer is not None:
            by_key.setdefault(normalize(answer), []).append(i)
    clusters: list[Cluster] = []
    for key, members in by_key.items():
        home = next((c for c in clusters if same(key, c.key)), None)
        if home is None:
            clusters.append(Cluster(key, answers[members[0]].strip(), list(members)))
        else:
            home.members.extend(members)
    for c in clusters:
        c.members.sort()
    return clusters


def question_of(record: Record, key: str | None) -> str | None:
    """The question: ``metadata[key]``, else the text, else the last user message (None if empty)."""
    if key is not None:
        value = record.metadata.get(key)
    elif record.text is not None:
        value = record.text
    else:
        value = next((m["content"] for m in reversed(record.messages or []) if m["role"] == "user"), None)
    return value if isinstance(value, str) and value.strip() else None


def parent_provenance(record: Record) -> dict:
    """The input record's own provenance (non-empty fields), kept when a filter re-labels a record."""
    p = record.provenance
    return {k: getattr(p, k) for k in PROVENANCE_FIELDS if getattr(p, k) is not None}


class PluralityFilter(GenerationStep):
    """Keep questions of useful difficulty, labelled with their plurality answer (Phi-4 report §2.1).

    ``PluralityFilter(PluralityFilterConfig(...), models)``; the ``teacher`` role answers
    (any chat or base model; the paper does not say which generated the votes).
    """

    technique = "plurality_filter"

    def __init__(self, config: PluralityFilterConfig, models, *, batch_size: int = 16, seed: int = 0):
        super().__init__(models, batch_size=batch_size, seed=seed)
        self.config = config
        self.template = self._template()
        self.templates = (self.template,)

    def _template(self) -> PromptTemplate:
        cfg = self.config
        style = "answer" if cfg.prompt_style == "chat" else "complete"
        template = get_template(cfg.template or f"plurality_{style}_{cfg.answer_kind}")
        if template.placeholders != {"question"}:
            raise ConfigError(f"plurality_filter.template {template.key} must have exactly one placeholder, "
                              f"{{question}}; it has {sorted(template.placeholders)}")
        return template

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            yield from self._run_batch(batch, ctx)

    def _run_batch(self, batch: list[Record], ctx: StepContext) -> Iterator[Record]:
        asked, prompts = [], []
        for record in batch:
            question = question_of(record, self.config.question_key)
            if question is None:
                ctx.drop(record, "no_question")
                continue
            asked.append(record)
            prompts.append(self._prompt(ctx, question))
        samples = self.sample(ctx, prompts, self._params())
        for record, completions in zip(asked, samples):
            texts = [c.text for c in completions]
            kept = self._judge(record, texts, ctx)
            if kept is not None:
                yield kept

    def _prompt(self, ctx: StepContext, question: str):
        text = ctx.render(self.template, question=question.strip())
        return user(text) if self.config.prompt_style == "chat" else text

    def _params(self):
        cfg = self.config
        stop = cfg.stop if cfg.stop is not None else (COMPLETION_STOPS if cfg.prompt_style == "completion" else ())
        return self.params(n=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                           max_tokens=cfg.max_tokens, stop=tuple(stop))

    def vote(self, texts: Sequence[str]) -> Vote:
        """Extract, normalise and cluster the sampled answers of one question."""
        if self.config.answer_kind == "choice":
            answers = [extract_choice(t, self.config.choice_letters) for t in texts]
            clusters = cluster_answers(answers, str.__eq__, str.upper)
        else:
            answers = [extract_answer(t) for t in texts]
            clusters = cluster_answers(answers, answers_equivalent, normalize_answer)
        return Vote(clusters, len(texts), sum(a is not None for a in answers))

    def drop_reason(self, vote: Vote) -> str | None:
        """Why a question's vote disqualifies it, or None to keep it (see the module docstring)."""
        cfg = self.config
        if vote.n_extracted < max(2, math.ceil(cfg.min_extracted_fraction * vote.n_samples)):
            return "no_extractable_answers"
        if vote.agreement >= cfg.max_agreement:
            return "too_easy_unanimous"
        if len(vote.plurality.members) < 2 or vote.agreement < cfg.min_agreement:
            return "too_hard_inconsistent"
        if vote.tie and cfg.on_tie == "drop":
            return "plurality_tie"
        return None

    def _judge(self, record: Record, texts: list[str], ctx: StepContext) -> Record | None:
        vote = self.vote(texts)
        ctx.stat("samples", vote.n_samples)
        ctx.stat("extraction_failures", vote.n_samples - vote.n_extracted)
        ctx.stat("plurality_ties", int(vote.tie))
        meta = dict(record.metadata) | vote.metadata(self.config.answer_kind)
        if self.config.keep_samples:
            meta["plurality_samples"] = texts
        if parent_provenance(record):
            meta["parent_provenance"] = parent_provenance(record)
        reason = self.drop_reason(vote)
        if reason is not None:
            ctx.drop(replace(record, metadata=meta), reason)
            return None
        ctx.stat("kept")
        return Record(child_id(record.id, "plurality"), text=record.text, messages=record.messages,
                      metadata=meta, provenance=self._provenance(record))

    def _provenance(self, record: Record) -> Provenance:
        return Provenance(seed_id=record.id, technique=self.technique, template_id=self.template.id,
                          template_version=self.template.version, model=self.model_name("teacher"))
