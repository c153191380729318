"""Self-revision with a critic rubric (Phi-4 report §2.2 "Self-revision", App. D.1.2).

The paper's workflow: an author writes a plan and a first version (revision 0); a
critic agent scores it on each criterion of a rubric (e.g. External Knowledge 1,
Plausibility of Choices 2, Challenge Level 1) with concrete suggestions; the author
writes a new plan and a revised version that address the critique; repeat until
the rubric is met. We implement it as a step::

    draft (or the record's own draft) -> critique -> [revise -> critique] x up to K

* The **rubric is data** (:class:`RubricCriterion`: name, description, ``scale_max``,
  ``threshold``), a built-in name from :data:`RUBRICS` or a list in the config. We
  ship App. D.1.2's reading-comprehension rubric and a default "reasoning & factual
  accuracy" rubric (the report says the rubrics focus on reasoning and accuracy).
* The **critic** is role ``"critic"`` (falling back to the teacher's model). It
  answers JSON through :func:`~phiforge.synth.jsonask.ask_json`; a reply that
  misses a criterion or scores outside ``0..scale_max`` is re-asked with the error.
  A criterion passes when its numeric score reaches its threshold; the critic's own
  ``passed`` flag is kept in the history but not trusted (models contradict their
  numbers).
* **Stopping rule** (the paper's is UNCONFIRMED): stop as soon as every criterion
  passes, or after ``max_rounds`` revisions (K = 3 by default), i.e. at most K + 1
  critiques. An empty revision also ends the loop (the item did not pass).
* **Every round is kept**: the final record carries ``metadata["rounds"]``
  (round, plan, artifact, scores, suggestions, passed) and ``records_per_round``
  emits one record per round instead (``provenance.round = r``, the chosen one
  flagged ``final``). Items that never passed are dropped as ``never_passed``,
  or kept with ``keep_unpassed`` (then the best-scored round is the final one).

Input: a seed passage in ``text`` (the author's task from the config or the record's
``metadata[task_key]``), or an existing draft (``metadata[draft_key]``, with the
passage in ``text``), or ``messages`` whose last user turn is the task and whose
final assistant turn, if any, is the draft (the output then keeps the conversation,
with the revised reply in place of the draft). Drops: ``empty_draft``, ``critic_invalid_json``,
``never_passed``.

Deviation: the author is one model call per round (plan + artifact in one reply,
split at ``PLAN:`` / ``RESULT:``), where the paper shows them as two stages of one
transcript; the critic sees the passage, so it can check facts against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Iterator, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import get_template
from phiforge.recipe.schema import Section
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.synth.jsonask import ask_json

TECHNIQUE = "self_revision"


class RubricCriterion(Section):
    """One rubric line: the critic scores it on ``0..scale_max``; it passes at ``score >= threshold``."""

    name: str = Field(min_length=1, description="criterion name the critic must echo back")
    description: str = Field(min_length=1, description="what a high score means, shown to critic and author")
    scale_max: int = Field(5, ge=1, description="top of the score scale (scores are 0..scale_max)")
    threshold: float = Field(4, ge=0, description="pass score; UNCONFIRMED in the paper (4 of 5: 'good')")

    @model_validator(mode="after")
    def _threshold_on_scale(self):
        if self.threshold > self.scale_max:
            raise ValueError(f"criterion {self.name!r}: threshold {self.threshold} exceeds scale_max "
                             f"{self.scale_max}; lower the threshold or raise scale_max")
        return self


# App. D.1.2's three requirements for a reading-comprehension exercise. The paper shows
# scores like 1 and 2 but not the scale or the pass mark: 1..5 and 4 are UNCONFIRMED.
READING_COMPREHENSION_RUBRIC = (
    RubricCriterion(name="External Knowledge", description=(
        "Answering requires both a careful reading of the passage and advanced knowledge from "
        "outside it; neither alone is enough.")),
    RubricCriterion(name="Plausibility of Choices", description=(
        "The wrong options are plausible enough to mislead a reader who has not fully understood "
        "the passage, while exactly one option is clearly correct.")),
    RubricCriterion(name="Challenge Level", description=(
        "The difficulty suits advanced undergraduates in the field: it needs multi-step, "
        "conditional or counterfactual reasoning, not recall.")),
)

# The report: rubrics "focused on reasoning and factual accuracy" (§2.2). Ours, UNCONFIRMED.
REASONING_ACCURACY_RUBRIC = (
    RubricCriterion(name="Factual Accuracy", description=(
        "Every statement, number and answer is correct and consistent with the passage and "
        "established knowledge."), threshold=5),
    RubricCriterion(name="Reasoning", description=(
        "The solution reasons step by step, each step follows from the previous ones, and the "
        "final answer follows from the steps.")),
    RubricCriterion(name="Self-Containedness", description=(
        "The result can be understood and solved without seeing the passage or any other context.")),
)

RUBRICS: dict[str, tuple[RubricCriterion, ...]] = {
    "reasoning_accuracy": REASONING_ACCURACY_RUBRIC,
    "reading_comprehension": READING_COMPREHENSION_RUBRIC,
}

# The author's default task per built-in rubric (App. D.1.2's exercise; a generic one otherwise).
RUBRIC_TASKS: dict[str, str] = {
    "reasoning_accuracy": (
        "Turn the key idea of the source passage into one self-contained exercise with a complete "
        "solution that reasons step by step and ends with 'Answer: <answer>'."),
    "reading_comprehension": (
        "Write one challenging multiple-choice reading-comprehension exercise about the source "
        "passage: the passage (or the part needed), a question, four options labelled A-D, and the "
        "correct option with a short explanation."),
}


class SelfRevisionConfig(Section):
    """Settings of :class:`SelfRevision` (Phi-4 report §2.2, App. D.1.2)."""

    rubric: str | list[RubricCriterion] = Field(
        "reasoning_accuracy", description=f"a built-in rubric name ({', '.join(RUBRICS)}) or a list of criteria")
    task: str | None = Field(None, description="author's task instructions; None: the built-in rubric's task "
                                               "(a record's metadata[task_key] wins over both)")
    task_key: str = Field("task", description="metadata key of a per-record task")
    draft_key: str = Field("draft", description="metadata key of an existing draft (round 0 is then not written)")
    max_rounds: int = Field(3, ge=0, le=10, description=(
        "K: most revisions after the draft (K + 1 critiques). UNCONFIRMED: the paper loops 'until the "
        "rubric is met'; 3 bounds the cost, most gains come in the first rounds"))
    keep_unpassed: bool = Field(False, description="keep items that never met the rubric (final = best-scored "
                                                   "round) instead of dropping them as never_passed")
    records_per_round: bool = Field(False, description="emit one record per round (provenance.round = r) "
                                                       "instead of only the final one")
    temperature: float = Field(0.7, ge=0, description="author sampling temperature")
    max_tokens: int = Field(1024, ge=1, description="author reply limit (plan + artifact), tokens")
    critic_temperature: float = Field(0.0, ge=0, description="critic temperature (greedy: stable scores)")
    critic_max_tokens: int = Field(512, ge=1, description="critic reply limit, tokens")
    max_reasks: int = Field(2, ge=0, description="re-asks of a critic reply that is not valid JSON")
    batch_size: int = Field(16, ge=1, description="records per model call")
    seed: int = Field(0, ge=0, description="sampling seed")

    @field_validator("rubric")
    @classmethod
    def _known_rubric(cls, value):
        if isinstance(value, str) and value not in RUBRICS:
            raise ValueError(f"unknown rubric {value!r}; use one of {sorted(RUBRICS)} or a list of criteria")
        if isinstance(value, list):
            names = [normalise_name(c.name) for c in value]
            if not value or len(set(names)) != len(names):
                raise ValueError("a rubric needs at least one criterion and distinct criterion names")
        return value

    def criteria(self) -> tuple[RubricCriterion, ...]:
        return RUBRICS[self.rubric] if isinstance(self.rubric, str) else tuple(self.rubric)

    def rubric_name(self) -> str:
        return self.rubric if isinstance(self.rubric, str) else "custom"

    def default_task(self) -> str:
        return self.task or RUBRIC_TASKS.get(self.rubric_name(), RUBRIC_TASKS["reasoning_accuracy"])


# --------------------------------------------------------------------------- critic schema


def normalise_name(name: str) -> str:
    """Criterion names compared case- and punctuation-insensitively ('challenge level' == 'Challenge-Level')."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


class CriterionScore(BaseModel):
    """The critic's verdict on one criterion."""

    criterion: str = Field(validation_alias=AliasChoices("criterion", "name"))
    score: float
    passed: bool | None = None
    suggestion: str = Field("", validation_alias=AliasChoices("suggestion", "suggestions"))

    @field_validator("suggestion", mode="before")
    @classmethod
    def _join_lists(cls, value):
        return "; ".join(map(str, value)) if isinstance(value, list) else value


class Critique(BaseModel):
    """``{"scores": [CriterionScore, ...]}``; a bare list or a ``{name: score}`` object is accepted too."""

    scores: list[CriterionScore]

    @model_validator(mode="before")
    @classmethod
    def _lenient_shapes(cls, value):
        if isinstance(value, list):
            return {"scores": value}
        if isinstance(value, dict) and "scores" not in value:
            lists = [v for v in value.values() if isinstance(v, list)]
            if len(lists) == 1:
                return {"scores": lists[0]}
            if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
                return {"scores": [{"criterion": k, "score": v} for k, v in value.items()]}
        return value

    def by_criterion(self) -> dict[str, CriterionScore]:
        return {normalise_name(s.criterion): s for s in self.scores}


def critique_schema(criteria: tuple[RubricCriterion, ...]) -> type[Critique]:
    """A :class:`Critique` that also requires every criterion, each scored on its scale."""

    class RubricCritique(Critique):
        @model_validator(mode="after")
        def _covers_rubric(self):
            got = self.by_criterion()
            missing = [c.name for c in criteria if normalise_name(c.name) not in got]
            if missing:
                raise ValueError(f"missing a score for criterion {', '.join(repr(m) for m in missing)}")
            for c in criteria:
                score = got[normalise_name(c.name)].score
                if not 0 <= score <= c.scale_max:
                    raise ValueError(f"score {score} for {c.name!r} is outside 0..{c.scale_max}")
            return self

    return RubricCritique


# --------------------------------------------------------------------------- author replies

_PLAN = re.compile(r"^[ \t>*#_]*PLAN\b[ \t*_]*(?::|$)[ \t*_]*", re.IGNORECASE | re.MULTILINE)
_RESULT = re.compile(r"^[ \t>*#_]*RESULT\b[ \t*_]*(?::|$)[ \t*_]*", re.IGNORECASE | re.MULTILINE)


def split_plan(reply: str) -> tuple[str, str, bool]:
    """``(plan, artifact, marked)`` from a ``PLAN: ... RESULT: ...`` reply; unmarked: all of it is the artifact."""
    results = list(_RESULT.finditer(reply))
    if not results:
        return "", reply.strip(), False
    head, artifact = reply[:results[-1].start()], reply[results[-1].end():]
    plan = _PLAN.search(head)
    return (head[plan.end():] if plan else head).strip(), artifact.strip(), True


# --------------------------------------------------------------------------- the loop


@dataclass
class _Item:
    """One record's way through the loop."""

    record: Record
    passage: str
    task: str
    source: Literal["passage", "draft", "messages"]
    rounds: list[dict] = field(default_factory=list)
    prefix: list[dict] = field(default_factory=list)  # messages before the artifact ("messages" source)
    drafted: bool = False  # round 0 was written by this step
    outcome: str | None = None  # None while looping, then passed | exhausted | empty_revision | a drop reason

    @property
    def artifact(self) -> str:
        return self.rounds[-1]["artifact"]


class SelfRevision(GenerationStep):
    """Draft, critique against a rubric, revise; repeat until the rubric passes or K rounds (App. D.1.2)."""

    technique = TECHNIQUE

    def __init__(self, config: SelfRevisionConfig, models):
        super().__init__(models, batch_size=config.batch_size, seed=config.seed)
        self.config = config
        self.criteria = config.criteria()
        self.draft_t, self.critique_t, self.revise_t = (
            get_template("revision_draft"), get_template("revision_critique"), get_template("revision_revise"))
        self.templates = (self.draft_t, self.critique_t, self.revise_t)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            yield from self._run_batch(batch, ctx)

    def _run_batch(self, batch: list[Record], ctx: StepContext) -> Iterator[Record]:
        items = [self._item(record) for record in batch]
        self._write_drafts([it for it in items if not it.rounds], ctx)
        for it in items:
            if not it.artifact:
                it.outcome = "empty_draft"
        active = [it for it in items if it.outcome is None]
        for r in range(self.config.max_rounds + 1):
            self._critique(active, ctx)
            active = [it for it in active if it.outcome is None]
            if r == self.config.max_rounds:
                for it in active:
                    it.outcome = "exhausted"
                break
            self._revise(active, r + 1, ctx)
            active = [it for it in active if it.outcome is None]
        for it in items:
            yield from self._finish(it, ctx)

    # ---- round 0

    def _item(self, record: Record) -> _Item:
        meta = record.metadata
        task = str(meta.get(self.config.task_key) or self.config.default_task())
        if record.messages:  # the last user turn is the task; a final assistant turn is the draft
            has_draft = record.messages[-1]["role"] == "assistant"
            prefix = record.messages[:-1] if has_draft else list(record.messages)
            users = [m["content"] for m in prefix if m["role"] == "user"]
            rounds = [_round(0, "", record.messages[-1]["content"].strip())] if has_draft else []
            return _Item(record, record.text or "", users[-1] if users else task, "messages", rounds, prefix)
        if isinstance(meta.get(self.config.draft_key), str):
            return _Item(record, record.text or "", task, "draft",
                         [_round(0, "", meta[self.config.draft_key].strip())])
        return _Item(record, record.text or "", task, "passage")

    def _write_drafts(self, items: list[_Item], ctx: StepContext) -> None:
        if not items:
            return
        prompts = [user(ctx.render(self.draft_t, task=it.task, passage=_or_none(it.passage),
                                   requirements=self._requirements())) for it in items]
        for it, completions in zip(items, self.sample(ctx, prompts, self._author_params())):
            plan, artifact = self._parse_author(completions[0].text, ctx)
            it.rounds.append(_round(0, plan, artifact))
            it.drafted = True
        ctx.stat("drafts_written", len(items))

    # ---- critique and revision

    def _critique(self, items: list[_Item], ctx: StepContext) -> None:
        if not items:
            return
        prompts = [user(ctx.render(self.critique_t, task=it.task, passage=_or_none(it.passage),
                                   artifact=it.artifact, criteria=self._criteria_block())) for it in items]
        schema = critique_schema(self.criteria)  # built here, not stored: a local class does not pickle
        answers = ask_json(self, ctx, prompts, schema, self._critic_params(), role="critic",
                           max_reasks=self.config.max_reasks)
        ctx.stat("critiques", len(items))
        for it, answer in zip(items, answers):
            if answer.value is None:
                it.outcome = "critic_invalid_json"
                continue
            it.rounds[-1].update(self._scores(answer.value))
            if it.rounds[-1]["passed"]:
                it.outcome = "passed"
                ctx.stat(f"passed_at_round_{len(it.rounds) - 1}")

    def _scores(self, critique: Critique) -> dict:
        got = critique.by_criterion()
        scores, suggestions, critic_passed, failed = {}, {}, {}, []
        for c in self.criteria:
            s = got[normalise_name(c.name)]
            scores[c.name], suggestions[c.name], critic_passed[c.name] = s.score, s.suggestion, s.passed
            if s.score < c.threshold:
                failed.append(c.name)
        return {"scores": scores, "suggestions": suggestions, "critic_passed": critic_passed,
                "failed": failed, "passed": not failed}

    def _revise(self, items: list[_Item], r: int, ctx: StepContext) -> None:
        if not items:
            return
        prompts = [user(ctx.render(self.revise_t, task=it.task, passage=_or_none(it.passage),
                                   requirements=self._requirements(), artifact=it.artifact,
                                   critique=self._critique_block(it.rounds[-1]))) for it in items]
        for it, completions in zip(items, self.sample(ctx, prompts, self._author_params())):
            plan, artifact = self._parse_author(completions[0].text, ctx)
            if not artifact:
                it.outcome = "empty_revision"
                ctx.stat("empty_revision")
                continue
            it.rounds.append(_round(r, plan, artifact))
        ctx.stat("revisions", len(items))

    # ---- output

    def _finish(self, it: _Item, ctx: StepContext) -> Iterator[Record]:
        if it.outcome in ("empty_draft", "critic_invalid_json"):
            ctx.drop(it.record, it.outcome)
            return
        if it.outcome != "passed" and not self.config.keep_unpassed:
            ctx.drop(replace(it.record, metadata={**it.record.metadata, "self_revision": {
                "rounds": it.rounds, "stopped": it.outcome}}), "never_passed")
            return
        scored = [rd for rd in it.rounds if "scores" in rd]
        final = scored[-1] if it.outcome == "passed" else max(scored, key=self._mean_score)
        ctx.stat("kept_passed" if it.outcome == "passed" else "kept_unpassed")
        if not self.config.records_per_round:
            yield self._record(it, final, final, child_id(it.record.id, TECHNIQUE))
            return
        for rd in scored:
            yield self._record(it, rd, final, child_id(it.record.id, TECHNIQUE, rd["round"]))

    def _record(self, it: _Item, rd: dict, final: dict, rid: str) -> Record:
        meta = {"rubric": self.config.rubric_name(), "criteria": [c.model_dump() for c in self.criteria],
                "task": it.task, "source": it.source, "round": rd["round"], "final": rd is final,
                "passed": rd["passed"], "scores": rd["scores"], "suggestions": rd["suggestions"],
                "plan": rd["plan"], "final_round": final["round"], "stopped": it.outcome,
                "rounds_run": len(it.rounds), "critic_model": self.model_name("critic")}
        if rd is final:
            meta["rounds"] = it.rounds
        text, messages = rd["artifact"], None
        if it.source == "messages":
            text, messages = None, it.prefix + [{"role": "assistant", "content": rd["artifact"]}]
        return Record(rid, text=text, messages=messages, metadata=meta, provenance=self._provenance(it, rd["round"]))

    def _provenance(self, it: _Item, r: int) -> Provenance:
        if r == 0 and it.source != "passage" and not it.drafted:  # round 0 came from upstream: keep its origin
            p = it.record.provenance
            return Provenance(seed_id=it.record.id, technique=TECHNIQUE, template_id=p.template_id,
                              template_version=p.template_version, model=p.model, round=0)
        t = self.draft_t if r == 0 else self.revise_t
        return Provenance(seed_id=it.record.id, technique=TECHNIQUE, template_id=t.id,
                          template_version=t.version, model=self.model_name("teacher"), round=r)

    # ---- prompt pieces

    @staticmethod
    def _parse_author(reply: str, ctx: StepContext) -> tuple[str, str]:
        plan, artifact, marked = split_plan(reply)
        if not marked:
            ctx.stat("author_unmarked_reply")
        return plan, artifact

    def _mean_score(self, rd: dict) -> float:
        return sum(rd["scores"][c.name] / c.scale_max for c in self.criteria) / len(self.criteria)

    def _requirements(self) -> str:
        return "\n".join(f"- {c.name}: {c.description}" for c in self.criteria)

    def _criteria_block(self) -> str:
        return "\n".join(f"- {c.name} (score 0 to {c.scale_max}; {_num(c.threshold)} or more passes): "
                         f"{c.description}" for c in self.criteria)

    def _critique_block(self, rd: dict) -> str:
        lines = []
        for c in self.criteria:
            verdict = "passes" if c.name not in rd["failed"] else f"needs {_num(c.threshold)}"
            lines.append(f"- {c.name}: {_num(rd['scores'][c.name])}/{c.scale_max} ({verdict}). "
                         f"Suggestion: {rd['suggestions'][c.name] or 'none given'}")
        return "\n".join(lines)

    def _author_params(self):
        return self.params(temperature=self.config.temperature, max_tokens=self.config.max_tokens)

    def _critic_params(self):
        return self.params(temperature=self.config.critic_temperature, max_tokens=self.config.critic_max_tokens)


def _round(r: int, plan: str, artifact: str) -> dict:
    return {"round": r, "plan": plan, "artifact": artifact}


def _or_none(passage: str) -> str:
    return passage.strip() or "(none given)"


def _num(x: float) -> str:
    return f"{x:g}"
