"""Hallucination-refusal SFT and DPO data (Phi-4 report §4.4, App. A.1, Fig. 6).

Without mitigation phi-4 almost never admitted ignorance. The paper's fix keeps
the knowledge from pretraining and teaches refusal exactly where the model's
knowledge ends, measured per question:

1. seed trivia questions with an answer key (e.g. TriviaQA, plus alternate forms);
2. sample the policy (base phi-4) several times per question and grade every answer
   against the key with a GPT-4o **checker**, which writes a free-form comparison,
   then JSON ``matches_key`` in {true, false, "uncertain"}; it judges equivalence
   only, does not solve the question, and ignores doubts about the key;
3. GPT-4o writes (1) a correct answer, (2) a refusal (role-playing an LLM that does
   not know and cannot look it up; "# Response" section), (3) a **bogus** variant
   of the question that cannot be answered (names, dates or places swapped; real
   countries, no homages; "# Response" + "# Quality" 1-5 sections), (4) a refusal
   to the bogus question;
4. SFT on (question, correct answer) where the policy is usually right, (question,
   refusal) where it is usually wrong, (bogus, refusal) for every bogus question;
   DPO correct > refusal where it is sometimes right, refusal > wrong where it is
   sometimes wrong, on the first 5 tokens of each response only.

Thresholds, precisely (``n_correct`` / ``n_wrong`` count graded samples; the
checker's "uncertain" and invalid verdicts are left out of the denominator, an
empty policy answer counts as wrong; with fewer than ``min_graded`` graded
samples no accuracy-based row is made)::

    accuracy = n_correct / (n_correct + n_wrong)
    sft_correct                 accuracy      >= usually     (default 0.7)
    sft_refuse                  1 - accuracy  >= usually
    dpo_correct_over_refusal    accuracy      >= sometimes   (default 0.2)
    dpo_refusal_over_wrong      1 - accuracy  >= sometimes   (rejected: the first wrong sample)

"Sometimes" is "at least ``sometimes`` of the time", so an always-correct question
also gets correct > refusal (do not refuse what you know). With ``sometimes <= 0.5``
every graded question gets at least one DPO pair; questions between ``1 - usually``
and ``usually`` get no SFT row.

UNCONFIRMED (the paper gives none of these): ``n_policy_samples``, both
thresholds, ``bogus_min_quality``, sampling settings. Our additions:
``verify_correct_answer`` (grade the teacher's "correct" answer with the same
checker), ``policy_prompt_style="completion"`` for a base policy.

Every row is a record with ``metadata["kind"]`` = ``refusal_sft_correct`` |
``refusal_sft_refuse`` | ``refusal_sft_bogus`` | ``refusal_dpo_correct_over_refusal``
| ``refusal_dpo_refusal_over_wrong``. SFT rows carry the conversation in
``messages`` (ending with the assistant turn); DPO rows carry the prompt in
``messages`` and ``chosen`` / ``rejected`` / ``max_response_tokens`` in metadata
(:func:`phiforge.posttrain.judge.text_row` gives the flat row ``phiforge.posttrain.pairs`` reads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import PromptTemplate, get_template
from phiforge.errors import ConfigError
from phiforge.posttrain.judge import IDENT, StepConfig
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.synth.jsonask import ask_json

TECHNIQUE = "hallucination_refusal"
# every row kind this step emits (``metadata["kind"]``): a stage splits SFT rows from DPO pairs by it
KINDS = ("refusal_sft_correct", "refusal_sft_refuse", "refusal_sft_bogus",
         "refusal_dpo_correct_over_refusal", "refusal_dpo_refusal_over_wrong")
Verdict = Literal["correct", "wrong", "uncertain", "invalid", "empty"]
_EPS = 1e-9  # 7/10 >= 0.7 must hold despite float rounding
COMPLETION_STOPS = ("\nQuestion:", "\n\n")


class HallucinationRefusalConfig(StepConfig):
    """Settings of :class:`HallucinationRefusal` (Phi-4 report §4.4, App. A.1)."""

    n_policy_samples: int = Field(8, ge=1, le=64, description=(
        "policy answers per question, to estimate its accuracy. UNCONFIRMED: the paper says 'several'"))
    min_graded: int = Field(2, ge=1, description=(
        "fewest samples graded true/false (not uncertain/invalid) for an accuracy estimate; fewer: no "
        "SFT/DPO rows from the question (bogus rows are still made)"))
    usually: float = Field(0.7, gt=0.5, le=1.0, description=(
        "'usually correct' = accuracy >= this; 'usually wrong' = 1 - accuracy >= this. UNCONFIRMED"))
    sometimes: float = Field(0.2, gt=0.0, le=0.5, description=(
        "'sometimes correct' = accuracy >= this; 'sometimes wrong' = 1 - accuracy >= this. UNCONFIRMED"))
    dpo_response_tokens: int | None = Field(5, ge=1, description=(
        "max_response_tokens of DPO rows: the trainer uses only the first N tokens of chosen and "
        "rejected (paper: 5); None: whole responses"))
    bogus: bool = Field(True, description="write a bogus unanswerable variant per question, plus its refusal")
    bogus_min_quality: int = Field(4, ge=1, le=5, description=(
        "keep a bogus question when its self-rated '# Quality' is at least this (1-5). UNCONFIRMED"))
    verify_correct_answer: bool = Field(False, description=(
        "grade the teacher's correct answer with the checker and drop it unless it matches the key "
        "(our addition)"))
    question_key: str | None = Field(None, description=(
        "metadata key of the question; None: the text, else the last user message"))
    answer_key: str = Field("answer", description="metadata key of the answer key")
    aliases_key: str = Field("aliases", description="metadata key of the key's alternate forms (a list)")
    checker_role: str = Field("judge", pattern=IDENT, description="model role that grades answers")
    policy_prompt_style: Literal["chat", "completion"] = Field("chat", description=(
        "'chat': the question as a user turn; 'completion': 'Question: ...\\nAnswer:' for a base policy"))
    policy_temperature: float = Field(1.0, ge=0.0, description=(
        "policy sampling temperature: 1.0 samples the model's own distribution, the quantity estimated"))
    policy_max_tokens: int = Field(128, ge=1, description="policy answer limit, tokens")
    temperature: float = Field(0.7, ge=0.0, description="teacher temperature (answers, refusals, bogus)")
    max_tokens: int = Field(512, ge=1, description="teacher reply limit, tokens")
    checker_temperature: float = Field(0.0, ge=0.0, description="checker temperature (greedy)")
    checker_max_tokens: int = Field(384, ge=1, description="checker reply limit (comparison + JSON), tokens")
    max_reasks: int = Field(2, ge=0, description="re-asks of a checker reply that is not valid JSON")
    batch_size: int = Field(16, ge=1, description="questions per batch of model calls")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _graded_fits(self):
        if self.min_graded > self.n_policy_samples:
            raise ValueError(f"min_graded ({self.min_graded}) exceeds n_policy_samples ({self.n_policy_samples}); "
                             "lower min_graded or sample more")
        return self


class KeyCheck(BaseModel):
    """The checker's verdict: ``{"matches_key": true | false | "uncertain"}``."""

    matches_key: bool | Literal["uncertain"]

    @field_validator("matches_key", mode="before")
    @classmethod
    def _words(cls, value):
        if isinstance(value, str):
            word = value.strip().lower()
            mapped = {"true": True, "yes": True, "false": False, "no": False,
                      "uncertain": "uncertain", "unsure": "uncertain", "unknown": "uncertain"}
            if word in mapped:
                return mapped[word]
            raise ValueError('must be true, false or "uncertain"')
        return value


def verdict_of(check: KeyCheck | None) -> Verdict:
    """The checker's JSON as a verdict; ``None`` (invalid after re-asks) is ``invalid``."""
    if check is None:
        return "invalid"
    return "uncertain" if check.matches_key == "uncertain" else "correct" if check.matches_key else "wrong"


def row_kinds(n_correct: int, n_wrong: int, config: HallucinationRefusalConfig) -> list[str]:
    """The accuracy-based row kinds of a question (module docstring rules); bogus rows are separate."""
    graded = n_correct + n_wrong
    if graded < config.min_graded:
        return []
    rules = (("refusal_sft_correct", n_correct, config.usually), ("refusal_sft_refuse", n_wrong, config.usually),
             ("refusal_dpo_correct_over_refusal", n_correct, config.sometimes),
             ("refusal_dpo_refusal_over_wrong", n_wrong, config.sometimes))
    return [kind for kind, n, threshold in rules if n / graded >= threshold - _EPS]


_HEADER = re.compile(r"^[ \t]*(?:#+[ \t]*|\*\*)(response|quality)\b[ \t*:]*", re.IGNORECASE | re.MULTILINE)


def sections(reply: str) -> dict[str, str]:
    """``# Response`` / ``# Quality`` sections of a reply (first of each, lower-case keys)."""
    found = list(_HEADER.finditer(reply))
    out: dict[str, str] = {}
    for m, nxt in zip(found, found[1:] + [None]):
        out.setdefault(m.group(1).lower(), reply[m.end():nxt.start() if nxt else len(reply)].strip())
    return out


def response_of(reply: str) -> tuple[str, bool]:
    """``(response, sectioned)``: the ``# Response`` section, or the whole reply when it has none."""
    got = sections(reply)
    return (got["response"], True) if "response" in got else (reply.strip(), False)


def parse_bogus(reply: str) -> tuple[str, int] | None:
    """``(question, quality)`` from the bogus generator's reply; None if a section is missing."""
    got = sections(reply)
    score = re.search(r"\b([1-5])\b", got.get("quality", ""))
    if not got.get("response") or score is None:
        return None
    return got["response"], int(score.group(1))


@dataclass
class _Question:
    """One trivia question's way through the step."""

    record: Record
    question: str
    answer: str
    aliases: list[str]
    samples: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    correct: str | None = None
    refusal: str | None = None
    bogus: tuple[str, int] | None = None  # (question, quality), kept ones only
    bogus_refusal: str | None = None

    def count(self, *verdicts: str) -> int:
        return sum(v in verdicts for v in self.verdicts)

    @property
    def wrong_answer(self) -> str | None:
        return next((s for s, v in zip(self.samples, self.verdicts) if v == "wrong"), None)


class HallucinationRefusal(GenerationStep):
    """Per-question policy accuracy -> refusal SFT rows and 5-token DPO pairs (Phi-4 report App. A.1).

    Roles: ``policy`` (sampled; required in ``models``), ``config.checker_role``
    (grades; falls back to the teacher) and ``teacher`` (writes answers, refusals,
    bogus questions).
    """

    technique = TECHNIQUE

    def __init__(self, config: HallucinationRefusalConfig, models):
        super().__init__(models, batch_size=config.batch_size, seed=config.seed)
        if "policy" not in self.models:
            raise ConfigError(f"{TECHNIQUE} samples the 'policy' model to estimate its accuracy, but models has "
                              f"only {sorted(self.models)}; pass models={{'policy': ...}} (recipe step: "
                              "models = {policy = \"policy\"})")
        self.config = config
        self.t = {name: get_template(f"refusal_{name}")
                  for name in ("check", "correct", "refuse", "bogus", "policy_complete")}
        self.templates = tuple(self.t.values())

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            yield from self._run_batch(batch, ctx)

    def _run_batch(self, batch: list[Record], ctx: StepContext) -> Iterator[Record]:
        items = [it for it in (self._item(record, ctx) for record in batch) if it is not None]
        self._sample_policy(items, ctx)
        self._grade_policy(items, ctx)
        self._write_teacher(items, ctx)
        self._write_bogus_refusals([it for it in items if it.bogus], ctx)
        if self.config.verify_correct_answer:
            self._verify_correct([it for it in items if it.correct], ctx)
        for it in items:
            yield from self._rows(it, ctx)

    def _item(self, record: Record, ctx: StepContext) -> _Question | None:
        from phiforge.synth.plurality import question_of  # not at import: plurality imports the recipe schema

        cfg = self.config
        question = question_of(record, cfg.question_key)
        answer = record.metadata.get(cfg.answer_key)
        if question is None:
            ctx.drop(record, "no_question")
            return None
        if not isinstance(answer, (str, int, float)) or not str(answer).strip():
            ctx.drop(record, "no_answer_key")
            return None
        aliases = record.metadata.get(cfg.aliases_key) or []
        aliases = [str(a) for a in (aliases if isinstance(aliases, list) else [aliases]) if str(a).strip()]
        return _Question(record, question.strip(), str(answer).strip(), aliases)

    # ---- policy accuracy

    def _sample_policy(self, items: list[_Question], ctx: StepContext) -> None:
        cfg = self.config
        chat = cfg.policy_prompt_style == "chat"
        prompts = [user(it.question) if chat else
                   ctx.render(self.t["policy_complete"], question=it.question).rstrip("\n") for it in items]
        params = self.params(n=cfg.n_policy_samples, temperature=cfg.policy_temperature,
                             max_tokens=cfg.policy_max_tokens, stop=() if chat else COMPLETION_STOPS)
        for it, completions in zip(items, self.sample(ctx, prompts, params, role="policy")):
            it.samples = [c.text.strip() for c in completions]
        ctx.stat("policy_samples", sum(len(it.samples) for it in items))

    def _grade_policy(self, items: list[_Question], ctx: StepContext) -> None:
        jobs = [(it, s) for it in items for s in it.samples if s]
        verdicts = iter(self.grade(ctx, [(it, s) for it, s in jobs]))
        for it in items:
            it.verdicts = [next(verdicts) if s else "empty" for s in it.samples]
            for v in it.verdicts:
                ctx.stat(f"policy_{v}")

    def grade(self, ctx: StepContext, jobs: list[tuple[_Question, str]]) -> list[Verdict]:
        """The checker's verdict on each (question, proposed answer); invalid JSON after re-asks -> 'invalid'."""
        if not jobs:
            return []
        prompts = [user(ctx.render(self.t["check"], question=it.question, answer=it.answer,
                                   aliases=", ".join(it.aliases) or "(none)", response=s)) for it, s in jobs]
        params = self.params(temperature=self.config.checker_temperature, max_tokens=self.config.checker_max_tokens)
        answers = ask_json(self, ctx, prompts, KeyCheck, params, role=self.config.checker_role,
                           max_reasks=self.config.max_reasks)
        ctx.stat("checks", len(jobs))
        return [verdict_of(a.value) for a in answers]

    # ---- teacher writing

    def _needs(self, it: _Question) -> tuple[bool, bool]:
        """(needs a correct answer, needs a refusal) for the question's accuracy-based rows."""
        kinds = set(row_kinds(it.count("correct"), it.count("wrong", "empty"), self.config))
        need_correct = bool(kinds & {"refusal_sft_correct", "refusal_dpo_correct_over_refusal"})
        need_refusal = bool(kinds & {"refusal_sft_refuse", "refusal_dpo_correct_over_refusal"}) or (
            "refusal_dpo_refusal_over_wrong" in kinds and it.wrong_answer is not None)
        return need_correct, need_refusal

    def _write_teacher(self, items: list[_Question], ctx: StepContext) -> None:
        """One teacher call for every needed correct answer, refusal and bogus question of the batch."""
        jobs: list[tuple[_Question, str, list[dict]]] = []
        for it in items:
            need_correct, need_refusal = self._needs(it)
            if need_correct:
                jobs.append((it, "correct", user(ctx.render(self.t["correct"], question=it.question, answer=it.answer,
                                                            aliases=", ".join(it.aliases) or "(none)"))))
            if need_refusal:
                jobs.append((it, "refuse", user(ctx.render(self.t["refuse"], question=it.question))))
            if self.config.bogus:
                jobs.append((it, "bogus", user(ctx.render(self.t["bogus"], question=it.question))))
        for (it, what, _), completions in zip(jobs, self.sample(ctx, [p for *_, p in jobs], self._teacher_params())):
            self._take(it, what, completions[0].text, ctx)

    def _take(self, it: _Question, what: str, reply: str, ctx: StepContext) -> None:
        if what == "bogus":
            self._take_bogus(it, reply, ctx)
            return
        text = self._response(reply, ctx)
        if what == "correct":
            it.correct = text
        else:
            it.refusal = text

    def _take_bogus(self, it: _Question, reply: str, ctx: StepContext) -> None:
        parsed = parse_bogus(reply)
        if parsed is None:
            ctx.stat("bogus_unparsed")
            ctx.drop(self._bogus_record(it, reply.strip(), None), "bogus_unparsed")
        elif parsed[1] < self.config.bogus_min_quality:
            ctx.stat("bogus_low_quality")
            ctx.drop(self._bogus_record(it, *parsed), "bogus_low_quality")
        else:
            ctx.stat("bogus_kept")
            it.bogus = parsed

    def _write_bogus_refusals(self, items: list[_Question], ctx: StepContext) -> None:
        prompts = [user(ctx.render(self.t["refuse"], question=it.bogus[0])) for it in items]
        for it, completions in zip(items, self.sample(ctx, prompts, self._teacher_params())):
            it.bogus_refusal = self._response(completions[0].text, ctx)

    def _verify_correct(self, items: list[_Question], ctx: StepContext) -> None:
        for it, verdict in zip(items, self.grade(ctx, [(it, it.correct) for it in items])):
            if verdict != "correct":
                ctx.stat("teacher_answer_rejected")
                it.correct = None

    def _response(self, reply: str, ctx: StepContext) -> str | None:
        text, sectioned = response_of(reply)
        if not sectioned:
            ctx.stat("unsectioned_replies")
        if not text:
            ctx.stat("empty_teacher_replies")
        return text or None

    def _teacher_params(self):
        return self.params(temperature=self.config.temperature, max_tokens=self.config.max_tokens)

    # ---- rows

    def _rows(self, it: _Question, ctx: StepContext) -> Iterator[Record]:
        rows = [row for row in self._accuracy_rows(it, ctx) if row is not None]
        if it.bogus and it.bogus_refusal:
            rows.append(self._sft(it, "refusal_sft_bogus", it.bogus[0], it.bogus_refusal, self.t["refuse"],
                                  {"bogus_quality": it.bogus[1], "original_question": it.question}))
        if not rows:
            graded = it.count("correct", "wrong", "empty")
            ctx.drop(self._annotated(it), "too_few_graded_answers" if graded < self.config.min_graded
                     else "no_rows_made")
        for row in rows:
            ctx.stat(row.metadata["kind"])
        yield from rows

    def _accuracy_rows(self, it: _Question, ctx: StepContext) -> Iterator[Record | None]:
        t = self.t
        for kind in row_kinds(it.count("correct"), it.count("wrong", "empty"), self.config):
            if kind == "refusal_sft_correct":
                yield it.correct and self._sft(it, kind, it.question, it.correct, t["correct"])
            elif kind == "refusal_sft_refuse":
                yield it.refusal and self._sft(it, kind, it.question, it.refusal, t["refuse"])
            elif kind == "refusal_dpo_correct_over_refusal":
                yield it.correct and it.refusal and self._dpo(it, kind, it.correct, it.refusal, t["correct"],
                                                             "teacher_correct", "teacher_refusal")
            elif it.wrong_answer is None:
                ctx.stat("no_wrong_answer_text")
            else:
                yield it.refusal and self._dpo(it, kind, it.refusal, it.wrong_answer, t["refuse"],
                                               "teacher_refusal", "policy_sample")

    def _sft(self, it: _Question, kind: str, question: str, reply: str, template: PromptTemplate,
             extra: dict | None = None) -> Record:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        return self._record(it, kind, messages, {"kind": kind, **(extra or {})}, template)

    def _dpo(self, it: _Question, kind: str, chosen: str, rejected: str, template: PromptTemplate,
             chosen_source: str, rejected_source: str) -> Record:
        meta = {"kind": kind, "chosen": chosen, "rejected": rejected,
                "max_response_tokens": self.config.dpo_response_tokens,
                "chosen_source": chosen_source, "rejected_source": rejected_source,
                "chosen_model": self.model_name("teacher"),
                "rejected_model": self.model_name("policy" if rejected_source == "policy_sample" else "teacher")}
        return self._record(it, kind, user(it.question), meta, template)

    def _record(self, it: _Question, kind: str, messages: list[dict], meta: dict,
                template: PromptTemplate) -> Record:
        return Record(child_id(it.record.id, TECHNIQUE, kind), messages=messages,
                      metadata=meta | self._accuracy_meta(it),
                      provenance=Provenance(seed_id=it.record.id, technique=TECHNIQUE, template_id=template.id,
                                            template_version=template.version, model=self.model_name("teacher")))

    def _accuracy_meta(self, it: _Question) -> dict:
        n_correct, n_wrong = it.count("correct"), it.count("wrong", "empty")
        graded = n_correct + n_wrong
        return {"question": it.question, "answer_key": it.answer, "aliases": it.aliases,
                "policy_accuracy": round(n_correct / graded, 4) if graded else None,
                "n_samples": len(it.samples), "n_correct": n_correct, "n_wrong": n_wrong,
                "n_empty": it.count("empty"), "n_uncertain": it.count("uncertain"), "n_invalid": it.count("invalid"),
                "policy_model": self.model_name("policy"), "checker_model": self.model_name(self.config.checker_role)}

    def _annotated(self, it: _Question) -> Record:
        """The input record with the accuracy estimate and samples, for the dropped shard."""
        meta = it.record.metadata | {TECHNIQUE: self._accuracy_meta(it) | {
            "samples": it.samples, "verdicts": it.verdicts}}
        return Record(it.record.id, text=it.record.text, messages=it.record.messages, metadata=meta,
                      provenance=it.record.provenance)

    def _bogus_record(self, it: _Question, question: str, quality: int | None) -> Record:
        return Record(child_id(it.record.id, TECHNIQUE, "bogus"), text=question or "(empty)",
                      metadata={"kind": "refusal_bogus_question", "bogus_quality": quality,
                                "original_question": it.question},
                      provenance=Provenance(seed_id=it.record.id, technique=TECHNIQUE, template_id=self.t["bogus"].id,
                                            template_version=self.t["bogus"].version,
                                            model=self.model_name("teacher")))
