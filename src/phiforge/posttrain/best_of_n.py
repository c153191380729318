"""Best-of-N SFT responses picked by an LLM judge (Phi-4 report §4.1; recipe doc §6.1).

Phi-4's SFT data pairs curated and synthetic prompts with responses where
"several model responses per prompt" are generated and "the best is picked by an
LLM-based evaluation". ``BestOfN`` is that step:

1. **Prompt**: the record's ``messages`` up to and including the last user turn,
   or its ``text`` as one user turn (``metadata[prompt_key]`` if configured).
2. **Candidates**: ``n_per_candidate`` samples from each role in ``candidates``
   (default: the ``teacher`` only), role ``i`` with seed ``seed + i`` so two roles
   served by one model do not repeat each other. Optionally the record's own final
   assistant reply joins as role ``existing`` (``include_existing``). Left out
   before judging, with a status: empty, truncated (``finish_reason == "length"``:
   an answer without its end would teach the model to stop mid-answer), holding a
   chat control token (it would forge a turn in SFT), or a byte-identical
   duplicate (it shares the first copy's score).
3. **Verifier** (optional): a hook that filters candidates before judging, for
   domains with ground truth (e.g. a math answer must equal the reference). Either
   ``oracle="math" | "choice"`` in the config (``phiforge.verify``, checked against
   the record's reference; records without one are dropped as ``no_reference``
   before any sampling), or a ``verifier=`` argument: an ``Oracle`` (same use) or a
   callable ``(record, text) -> bool | Verdict``. A step runs in worker processes,
   so a callable must be picklable (a module-level function, not a lambda).
4. **Judge**: role ``judge_role`` scores each remaining candidate on its own, 1-10
   with a short rationale, as JSON through
   :func:`~phiforge.synth.jsonask.ask_json` (an invalid reply is re-asked with its
   error). With ``judge_sees_reference`` the record's reference answer is shown
   to the judge as a correctness check.
5. **Selection**: the highest score; ties go to the first candidate in order
   (role order, then sample index). Below ``min_score`` the record is dropped.

Output: an SFT row, ``messages`` = prompt + the chosen reply as the assistant turn,
and ``metadata["best_of_n"]`` with every candidate's role, model, status, score and
rationale. Drop reasons: ``no_prompt``, ``invalid_messages``, ``no_reference``,
``no_valid_candidate``, ``no_verified_candidate``, ``judge_invalid_json``,
``below_min_score``. Counters: ``candidates``, ``<status>_candidates``,
``verified_candidates``, ``judged_candidates``, ``selected``, ``chosen_<role>``.

UNCONFIRMED (the report gives none of them): N, the candidate models, the judge's
prompt and scale, tie handling, the score threshold; defaults are documented on
:class:`BestOfNConfig`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import get_template
from phiforge.errors import ConfigError, DataError
from phiforge.recipe.schema import IDENT, Section
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.synth.jsonask import ask_json
from phiforge.tokenize.chat import SPECIAL_TOKENS, validate_messages
from phiforge.verify.oracle import Oracle, Verdict

TECHNIQUE = "best_of_n"
EXISTING = "existing"
_REFERENCE = ("\n[Reference answer: use it only to check correctness; a reply need not match its wording]\n"
              "{reference}\n[End of reference answer]\n")
Verifier = Callable[[Record, str], "bool | Verdict"]  # a hook: (record, candidate text) -> verdict


class BestOfNConfig(Section):
    """Settings of :class:`BestOfN` (Phi-4 report §4.1). Every default is our choice (UNCONFIRMED)."""

    candidates: list[str] = Field(["teacher"], min_length=1, description=(
        "model roles that write candidate responses; each must be a key of the step's models"))
    n_per_candidate: int = Field(4, ge=1, le=32, description="samples per candidate role and prompt (N)")
    include_existing: bool = Field(False, description=(
        "also judge the record's own final assistant reply (role 'existing'), e.g. a dataset's original answer"))
    drop_truncated: bool = Field(True, description="leave out candidates that hit max_tokens (no natural end)")
    min_score: float = Field(1.0, ge=1.0, le=10.0, description=(
        "drop the record (below_min_score) when the best score is lower; 1 keeps every judged record"))
    oracle: Literal["math", "choice"] | None = Field(None, description=(
        "verifier checked before judging against the reference: math-answer equivalence or a choice letter"))
    reference_keys: list[str] = Field(["reference", "answer"], min_length=1, description=(
        "metadata keys searched in order for the reference answer (verifier and judge)"))
    judge_sees_reference: bool = Field(True, description="show the judge the reference answer when there is one")
    prompt_key: str | None = Field(None, description=(
        "metadata key holding the prompt text; None: the messages up to the last user turn, else the text"))
    judge_role: str = Field("judge", pattern=IDENT, description="model role of the judge (falls back to the teacher)")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="candidate sampling temperature: diverse, coherent")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=1, description="candidate response limit, tokens")
    judge_temperature: float = Field(0.0, ge=0.0, description="judge temperature (greedy: stable scores)")
    judge_max_tokens: int = Field(256, ge=1, description="judge reply limit, tokens (rationale + score)")
    max_reasks: int = Field(2, ge=0, description="re-asks of a judge reply that is not valid JSON")
    choice_letters: str = Field("ABCD", pattern=r"^[A-Za-z]{2,26}$", description="options for oracle='choice'")
    batch_size: int = Field(8, ge=1, description="prompts per batch of model calls")
    seed: int = Field(0, ge=0, description="sampling seed (candidate role i uses seed + i)")

    @field_validator("candidates")
    @classmethod
    def _candidate_roles(cls, value: list[str]) -> list[str]:
        bad = [r for r in value if not re.match(IDENT, r) or r == EXISTING]
        if bad:
            raise ValueError(f"candidate roles must be snake_case model roles other than '{EXISTING}', got {bad}")
        if len(set(value)) != len(value):
            raise ValueError(f"candidates lists a role twice ({value}); raise n_per_candidate instead")
        return value


class CandidateScore(BaseModel):
    """The judge's JSON for one candidate: a 1-10 score and a short rationale."""

    score: float = Field(validation_alias=AliasChoices("score", "rating"))
    rationale: str = Field("", validation_alias=AliasChoices("rationale", "reason", "explanation", "justification"))

    @field_validator("score", mode="before")
    @classmethod
    def _one_to_ten(cls, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 10:
            raise ValueError(f"must be a number from 1 to 10, got {value!r}")
        return value


@dataclass
class Candidate:
    """One candidate reply, who wrote it, and what happened to it."""

    role: str
    index: int  # sample index within the role
    text: str
    model: str
    status: str = "eligible"  # eligible | empty | truncated | control_token | duplicate | failed_verification
    #                           | judged | judge_invalid_json
    score: float | None = None
    rationale: str = ""
    verdict: str | None = None

    def describe(self) -> dict:
        return {"role": self.role, "index": self.index, "model": self.model, "status": self.status,
                "score": self.score, "rationale": self.rationale, "verdict": self.verdict}


@dataclass
class Item:
    """One record in flight: its prompt, reference and candidates."""

    record: Record
    prompt: list[dict]
    existing: str | None
    reference: str | None
    candidates: list[Candidate]


def split_prompt(record: Record, prompt_key: str | None = None) -> tuple[list[dict] | None, str | None]:
    """``(prompt, existing reply)``: messages up to the last user turn and the final assistant reply after it."""
    if prompt_key is not None:
        value = record.metadata.get(prompt_key)
        return (user(value.strip()) if isinstance(value, str) and value.strip() else None), None
    if record.messages:
        last = max((i for i, m in enumerate(record.messages) if m["role"] == "user"), default=None)
        if last is None:
            return None, None
        after = [m["content"] for m in record.messages[last + 1:] if m["role"] == "assistant"]
        return [dict(m) for m in record.messages[:last + 1]], (after[-1] if after else None)
    return (user(record.text.strip()) if record.text and record.text.strip() else None), None


def conversation_text(messages: list[dict]) -> str:
    """Chat messages as ``User: ...`` blocks for the judge to read (the judge-guided DPO layout)."""
    from phiforge.posttrain.judge import render_conversation

    return render_conversation(messages)


class BestOfN(GenerationStep):
    """N candidate replies per prompt, each scored by an LLM judge, the best kept (Phi-4 report §4.1).

    ``BestOfN(BestOfNConfig(...), {"teacher": ..., "judge": ...}, verifier=None)``.
    """

    technique = TECHNIQUE

    def __init__(self, config: BestOfNConfig, models, *, verifier: Verifier | Oracle | None = None):
        super().__init__(models, batch_size=config.batch_size, seed=config.seed)
        self.config = config
        missing = [r for r in config.candidates if r not in self.models]
        if missing:
            raise ConfigError(f"{TECHNIQUE}: candidate role(s) {missing} have no model; pass them in models "
                              f"(known roles: {sorted(self.models)})")
        if verifier is not None and config.oracle is not None:
            raise ConfigError(f"{TECHNIQUE}: give either oracle={config.oracle!r} in the config or a verifier, "
                              "not both")
        self.verifier = verifier if verifier is not None else _oracle(config)
        self.template = get_template("best_of_n_judge")
        self.templates = (self.template,)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            yield from self._run_batch(batch, ctx)

    def _run_batch(self, batch: list[Record], ctx: StepContext) -> Iterator[Record]:
        items = [item for item in (self._item(r, ctx) for r in batch) if item is not None]
        self._sample(items, ctx)
        for item in items:
            self._screen(item, ctx)
        self._judge([(item, c) for item in items for c in item.candidates if c.status == "eligible"], ctx)
        for item in items:
            kept = self._select(item, ctx)
            if kept is not None:
                yield kept

    # ---- inputs

    def _item(self, record: Record, ctx: StepContext) -> Item | None:
        prompt, existing = split_prompt(record, self.config.prompt_key)
        if prompt is None:
            ctx.drop(record, "no_prompt")
            return None
        try:
            validate_messages(prompt)
        except DataError:
            ctx.drop(record, "invalid_messages")
            return None
        reference = self.reference(record)
        if reference is None and self._needs_reference():
            ctx.drop(record, "no_reference")
            return None
        return Item(record, prompt, existing, reference, [])

    def reference(self, record: Record) -> str | None:
        """The first non-blank ``metadata[key]`` of ``reference_keys``, as a string."""
        for key in self.config.reference_keys:
            value = record.metadata.get(key)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
                return str(value).strip()
        return None

    def _needs_reference(self) -> bool:
        return self.verifier is not None and hasattr(self.verifier, "check")

    # ---- candidates

    def _sample(self, items: list[Item], ctx: StepContext) -> None:
        cfg = self.config
        for i, role in enumerate(cfg.candidates):
            params = replace(self.params(n=cfg.n_per_candidate, temperature=cfg.temperature, top_p=cfg.top_p,
                                         max_tokens=cfg.max_tokens), seed=cfg.seed + i)
            model = self.model_name(role)
            for item, completions in zip(items, self.sample(ctx, [it.prompt for it in items], params, role=role)):
                for k, c in enumerate(completions):
                    status = "truncated" if cfg.drop_truncated and c.finish_reason == "length" else "eligible"
                    item.candidates.append(Candidate(role, k, c.text.strip(), model, status))
        for item in items:
            if cfg.include_existing and item.existing is not None:
                model = item.record.provenance.model or EXISTING
                item.candidates.append(Candidate(EXISTING, 0, item.existing.strip(), model))

    def _screen(self, item: Item, ctx: StepContext) -> None:
        """Mark unusable candidates (empty, control token, duplicate), then apply the verifier."""
        seen: dict[str, Candidate] = {}
        for c in item.candidates:
            ctx.stat("candidates")
            if c.status == "eligible":
                c.status = _text_problem(c.text) or ("duplicate" if c.text in seen else "eligible")
            if c.status == "eligible":
                seen[c.text] = c
                self._verify(item, c, ctx)
            if c.status != "eligible":
                ctx.stat(f"{c.status}_candidates")

    def _verify(self, item: Item, c: Candidate, ctx: StepContext) -> None:
        if self.verifier is None:
            return
        if hasattr(self.verifier, "check"):
            verdict = self.verifier.check(c.text, item.reference)
        else:
            verdict = self.verifier(item.record, c.text)
        ok = bool(verdict)
        c.verdict = verdict.reason if isinstance(verdict, Verdict) else ("passed" if ok else "failed")
        if ok:
            ctx.stat("verified_candidates")
        else:
            c.status = "failed_verification"

    # ---- judging

    def _judge(self, jobs: list[tuple[Item, Candidate]], ctx: StepContext) -> None:
        if not jobs:
            return
        cfg = self.config
        prompts = [self._judge_prompt(item, c, ctx) for item, c in jobs]
        params = self.params(temperature=cfg.judge_temperature, max_tokens=cfg.judge_max_tokens)
        answers = ask_json(self, ctx, prompts, CandidateScore, params, role=cfg.judge_role,
                           max_reasks=cfg.max_reasks)
        for (_, c), answer in zip(jobs, answers):
            if answer.value is None:
                c.status = "judge_invalid_json"
                ctx.stat("judge_invalid_json_candidates")
            else:
                c.status, c.score, c.rationale = "judged", float(answer.value.score), answer.value.rationale.strip()
                ctx.stat("judged_candidates")

    def _judge_prompt(self, item: Item, c: Candidate, ctx: StepContext) -> list[dict]:
        show = self.config.judge_sees_reference and item.reference is not None
        reference = _REFERENCE.format(reference=item.reference) if show else ""
        return user(ctx.render(self.template, conversation=conversation_text(item.prompt), reference=reference,
                               response=c.text))

    # ---- selection

    def _select(self, item: Item, ctx: StepContext) -> Record | None:
        _copy_duplicate_scores(item.candidates)
        judged = [c for c in item.candidates if c.status == "judged"]
        best = max(judged, key=lambda c: c.score, default=None)  # max keeps the first of equal scores
        reason = _drop_reason(item.candidates, best, self.config.min_score)
        record = self._output(item, best)
        if reason is not None:
            ctx.drop(replace(item.record, metadata=record.metadata), reason)
            return None
        ctx.stat("selected")
        ctx.stat(f"chosen_{best.role}")
        return record

    def _output(self, item: Item, best: Candidate | None) -> Record:
        info = {"candidates": [c.describe() for c in item.candidates],
                "chosen": None if best is None else item.candidates.index(best),
                "chosen_role": None if best is None else best.role,
                "score": None if best is None else best.score,
                "judge_model": self.model_name(self.config.judge_role),
                "reference_shown": self.config.judge_sees_reference and item.reference is not None}
        meta = dict(item.record.metadata) | {TECHNIQUE: info}
        messages = item.prompt + ([{"role": "assistant", "content": best.text}] if best is not None else [])
        prov = Provenance(seed_id=item.record.id, technique=TECHNIQUE, template_id=self.template.id,
                          template_version=self.template.version, model=None if best is None else best.model)
        return Record(child_id(item.record.id, TECHNIQUE), messages=messages, metadata=meta, provenance=prov)


def _oracle(config: BestOfNConfig):
    if config.oracle == "math":
        from phiforge.verify.math import MathOracle

        return MathOracle()
    if config.oracle == "choice":
        from phiforge.verify.choice import ChoiceOracle

        return ChoiceOracle(config.choice_letters)
    return None


def _text_problem(text: str) -> str | None:
    if not text:
        return "empty"
    if any(token in text for token in SPECIAL_TOKENS):
        return "control_token"
    return None


def _copy_duplicate_scores(candidates: list[Candidate]) -> None:
    """A duplicate carries its first copy's score in the metadata (it is never chosen over it)."""
    first = {c.text: c for c in reversed(candidates) if c.status != "duplicate"}
    for c in candidates:
        if c.status == "duplicate" and c.text in first:
            c.score, c.rationale = first[c.text].score, first[c.text].rationale


def _drop_reason(candidates: list[Candidate], best: Candidate | None, min_score: float) -> str | None:
    if best is not None:
        return "below_min_score" if best.score < min_score else None
    statuses = {c.status for c in candidates}
    if "judge_invalid_json" in statuses:
        return "judge_invalid_json"
    if "failed_verification" in statuses:
        return "no_verified_candidate"
    return "no_valid_candidate"
