"""Judge-guided DPO pairs (Phi-4 report §4.2 "DPO stage 2", App. A.2, Table 8).

The second DPO round of Phi-4 trains on ~850k pairs built like this: for each
prompt, one response each from GPT-4o, GPT-4t and the phi-4 model; "any vs any"
pairings of those responses; a GPT-4o judge that reads the conversation and two
replies and returns JSON with each reply's ``faults`` (classified as comprehension
gap, logical error, factual error or stylistic issue, or "none"), a
``faults_discussion``, and 1-5 ``accuracy`` / ``style`` / ``detail`` scores; the
reply with the higher accuracy is chosen ("any vs any accuracy", 532k pairs in
Table 8) or the one with the higher mean of the three ("any vs any overall", 266k).
The judge must not penalise length or detail the user did not ask for.

How we implement it (``JudgeGuidedDPOPairs``):

* **Candidates**: ``n_per_candidate`` responses from each role in ``candidates``
  (resolved in the step's ``models`` dict; a missing role is a config error, not a
  silent fallback to the teacher). Empty responses are dropped from the pool.
* **Pairs**: every unordered pair of distinct candidate responses, at most
  ``max_pairs_per_prompt`` (a seeded sample, so reruns agree). Byte-identical
  responses are not paired (``identical_responses``): no preference exists.
* **Judge**: role ``judge_role``; JSON through :func:`~phiforge.synth.jsonask.ask_json`
  (an invalid reply is re-asked with its error; a pair with an invalid verdict in
  either presentation order is dropped as ``judge_invalid_json``). Validation requires only the scores that labelling
  uses; ``faults`` and ``faults_discussion`` are asked for (they make the judge
  reason before scoring) but a reply that omits them is not re-asked.
* **Labels**: per pair and per type in ``pair_types``, the response whose score
  exceeds the other's by more than ``tie_margin`` is chosen; otherwise the pair
  is dropped for that type (``tie_accuracy`` / ``tie_overall``).

Our additions and UNCONFIRMED choices:

* ``swap_positions`` (default on, our addition): every pair is judged in both
  presentation orders and each response's scores are averaged over the two, since
  LLM judges favour one position; ``position_disagreements`` counts pairs whose
  overall winner changed with the order.
* Tie handling is UNCONFIRMED in the paper; ties (margin 0 by default) are dropped.
* ``judge_sees_reference`` (default off: the paper's judge has no reference) adds
  ``metadata[reference_key]`` to the judge prompt, for verifiable domains with a
  weak judge.
* Sampling settings, the pair cap and the judge's wording are ours (UNCONFIRMED).

Output, one record per (pair, type): ``messages`` = the prompt up to and including
its last user turn, ``metadata`` = ``{"kind": "judge_accuracy" | "judge_overall", "chosen", "rejected",
"max_response_tokens": None, ...provenance}``; :func:`text_row` gives the flat
text-pair row that ``phiforge.posttrain.pairs.text_pairs_to_token_pairs`` reads. Counters: ``candidates``,
``empty_candidates``, ``pairs_formed``, ``pairs_judged``, ``judge_invalid_json``,
``ties_accuracy`` / ``ties_overall``, ``pairs_accuracy`` / ``pairs_overall``,
``position_disagreements``.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field, replace
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import get_template
from phiforge.errors import ConfigError
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.synth.jsonask import ask_json

TECHNIQUE = "judge_dpo"
PairType = Literal["accuracy", "overall"]
ASPECTS = ("accuracy", "style", "detail")
FAULT_TYPES = ("comprehension gap", "logical error", "factual error", "stylistic issue")
IDENT = r"^[a-z][a-z0-9_]*$"  # a model role name, as in ``recipe.schema``
_REFERENCE = ("\n[Reference answer: use it only to check correctness; a reply need not match its wording]\n"
              "{reference}\n[End of reference answer]\n")


class StepConfig(BaseModel):
    """Base of this package's step configs: unknown keys rejected, defaults validated.

    The same settings as ``recipe.schema.Section``, not imported from there: the recipe
    schema validates these configs while it is itself being imported (an import cycle).
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)


class JudgeGuidedDPOPairsConfig(StepConfig):
    """Settings of :class:`JudgeGuidedDPOPairs` (Phi-4 report §4.2, App. A.2)."""

    candidates: list[str] = Field(["teacher", "policy"], min_length=1, description=(
        "model roles that write candidate responses (paper: GPT-4o, GPT-4t and the phi-4 model); each "
        "must be a key of the step's models"))
    n_per_candidate: int = Field(1, ge=1, le=16, description="responses per candidate role and prompt (paper: 1)")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description=(
        "cap on judged pairs per prompt (a seeded sample); None: every pair ('any vs any')"))
    pair_types: list[PairType] = Field(["accuracy", "overall"], min_length=1, description=(
        "labels to emit per judged pair: 'accuracy' (higher accuracy chosen) and/or 'overall' (higher "
        "mean of accuracy, style, detail)"))
    swap_positions: bool = Field(True, description=(
        "judge each pair in both orders and average the scores (our addition, against position bias; "
        "doubles judge calls)"))
    tie_margin: float = Field(0.0, ge=0.0, lt=4.0, description=(
        "a label needs chosen score > rejected score + this (1-5 scale); otherwise the pair is a tie "
        "and dropped for that type. UNCONFIRMED: the paper does not say how ties are handled"))
    judge_sees_reference: bool = Field(False, description=(
        "show the judge metadata[reference_key] as a reference answer (paper: no reference); for "
        "verifiable domains with a weak judge"))
    reference_key: str = Field("reference", description="metadata key of a record's reference answer")
    judge_role: str = Field("judge", pattern=IDENT, description="model role of the judge")
    scoring: Literal["json", "logprob"] = Field("json", description=(
        "'json': the judge writes faults, discussion and the JSON scores (App. A.2); 'logprob' (our addition, "
        "G-Eval style): the judge's reply is forced to the JSON skeleton and each 1-5 score is the "
        "probability-weighted mean over the digits' next-token log-probs (needs a backend with score() and a "
        "tokenizer whose digits are single tokens). For small judges that cannot write valid JSON"))
    temperature: float = Field(0.7, ge=0.0, description="candidate sampling temperature (UNCONFIRMED)")
    max_tokens: int = Field(1024, ge=1, description="candidate response limit, tokens")
    judge_temperature: float = Field(0.0, ge=0.0, description="judge temperature (greedy: stable scores)")
    judge_max_tokens: int = Field(1024, ge=1, description="judge reply limit, tokens (faults + discussion + JSON)")
    max_reasks: int = Field(2, ge=0, description="re-asks of a judge reply that is not valid JSON")
    batch_size: int = Field(8, ge=1, description="prompts per batch of model calls")
    seed: int = Field(0, ge=0, description="sampling seed (candidate role i uses seed + i) and pair-cap seed")

    @field_validator("candidates")
    @classmethod
    def _candidate_roles(cls, value: list[str]) -> list[str]:
        bad = [r for r in value if not re.match(IDENT, r)]
        if bad:
            raise ValueError(f"candidate roles must be snake_case model roles, got {bad}")
        if len(set(value)) != len(value):
            raise ValueError(f"candidates lists a role twice ({value}); raise n_per_candidate instead")
        return value

    @field_validator("pair_types")
    @classmethod
    def _distinct_types(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"pair_types lists a type twice: {value}")
        return value

    @model_validator(mode="after")
    def _enough_candidates(self):
        if len(self.candidates) * self.n_per_candidate < 2:
            raise ValueError("one candidate response per prompt cannot make a pair: list two candidate roles "
                             "or set n_per_candidate >= 2")
        return self


# --------------------------------------------------------------------------- judge schema


def _slot(key: object) -> str:
    """'1', 1, 'Assistant 1', 'assistant_2' -> '1' / '2' (other keys unchanged)."""
    digits = re.findall(r"\d+", str(key))
    return digits[-1] if len(digits) == 1 else str(key)


class Fault(BaseModel):
    """One classified fault; an unlisted classification is kept as ``other``."""

    type: str = "other"
    fault: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value):
        if isinstance(value, str):
            return {"type": _fault_type(value), "fault": value}
        if isinstance(value, dict):
            kind = value.get("type") or value.get("category") or value.get("classification") or ""
            text = value.get("fault") or value.get("description") or value.get("text") or ""
            return {"type": _fault_type(str(kind) or str(text)), "fault": str(text)}
        return value


def _fault_type(text: str) -> str:
    low = text.lower()
    return next((t for t in FAULT_TYPES if t in low or t.split()[0] in low), "other")


class JudgeVerdict(BaseModel):
    """The judge's JSON (App. A.2): scores for assistants "1" and "2" are required, 1..5."""

    faults: dict[str, list[Fault]] = Field(default_factory=dict)
    faults_discussion: str = ""
    accuracy: dict[str, float]
    style: dict[str, float]
    detail: dict[str, float]

    @field_validator("faults", mode="before")
    @classmethod
    def _faults_shape(cls, value):
        if isinstance(value, list) and len(value) == 2:
            value = {"1": value[0], "2": value[1]}
        if not isinstance(value, dict):
            return value
        return {_slot(k): [f for f in (v if isinstance(v, list) else [v]) if not _is_none(f)]
                for k, v in value.items()}

    @field_validator("faults_discussion", mode="before")
    @classmethod
    def _join(cls, value):
        return "\n".join(map(str, value)) if isinstance(value, list) else value

    @field_validator(*ASPECTS, mode="before")
    @classmethod
    def _scores(cls, value):
        if not isinstance(value, dict):
            raise ValueError('must be an object {"1": <1-5>, "2": <1-5>}')
        scores = {_slot(k): v for k, v in value.items()}
        if set(scores) != {"1", "2"}:
            raise ValueError(f'needs exactly the keys "1" and "2", got {sorted(map(str, value))}')
        for k, v in scores.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= 5:
                raise ValueError(f'score of assistant {k} must be a number from 1 to 5, got {v!r}')
        return scores


def _is_none(fault: object) -> bool:
    return isinstance(fault, str) and fault.strip().strip(".").lower() in ("none", "", "n/a")


# --------------------------------------------------------------------------- helpers


def prompt_messages(record: Record) -> list[dict] | None:
    """The prompt: ``messages`` up to and including the last user turn, or ``text`` as one user turn."""
    if record.messages:
        last = max((i for i, m in enumerate(record.messages) if m["role"] == "user"), default=None)
        return None if last is None else [dict(m) for m in record.messages[:last + 1]]
    return user(record.text) if record.text and record.text.strip() else None


def render_conversation(messages: list[dict]) -> str:
    """Chat messages as ``User: ...`` blocks for the judge to read."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content'].strip()}" for m in messages)


def text_row(record: Record) -> dict:
    """A pair (or SFT) record as the flat text row of ``phiforge.posttrain.pairs``.

    ``{"id", "kind", "messages", "chosen", "rejected", "max_response_tokens", ...provenance}``
    for pairs, ``{"id", "kind", "messages", ...}`` for SFT rows (messages end with the reply).
    """
    return {**record.metadata, "id": record.id, "messages": record.messages}


@dataclass
class Candidate:
    """One candidate response and who wrote it."""

    role: str
    index: int  # sample index within the role
    text: str
    model: str


@dataclass
class Judged:
    """One pair of candidates with its judge verdicts (one per presentation order)."""

    a: Candidate
    b: Candidate
    verdicts: list[tuple[bool, JudgeVerdict | None]] = field(default_factory=list)  # (swapped, verdict)

    @property
    def valid(self) -> bool:
        return bool(self.verdicts) and all(v is not None for _, v in self.verdicts)

    def scores(self, slot: Literal["a", "b"]) -> dict[str, float]:
        """Aspect scores of ``a`` or ``b`` averaged over presentation orders, plus ``overall``."""
        got = {k: 0.0 for k in ASPECTS}
        for swapped, v in self.verdicts:
            label = "1" if (slot == "a") != swapped else "2"
            for k in ASPECTS:
                got[k] += getattr(v, k)[label] / len(self.verdicts)
        return got | {"overall": sum(got.values()) / len(ASPECTS)}


# --------------------------------------------------------------------------- the step


class JudgeGuidedDPOPairs(GenerationStep):
    """Candidates from several models, any-vs-any pairs, LLM-judged labels (Phi-4 report App. A.2)."""

    technique = TECHNIQUE

    def __init__(self, config: JudgeGuidedDPOPairsConfig, models):
        super().__init__(models, batch_size=config.batch_size, seed=config.seed)
        self.config = config
        missing = [r for r in config.candidates if r not in self.models]
        if missing:
            raise ConfigError(f"{TECHNIQUE}: candidate role(s) {missing} have no model; pass them in models "
                              f"(known roles: {sorted(self.models)}), e.g. models = {{{missing[0]} = "
                              f"\"{missing[0]}\"}} on the recipe step")
        self.template = get_template("judge_pair")
        self.templates = (self.template,)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            yield from self._run_batch(batch, ctx)

    def _run_batch(self, batch: list[Record], ctx: StepContext) -> Iterator[Record]:
        prompts = []
        for record in batch:
            messages = prompt_messages(record)
            if messages is None:
                ctx.drop(record, "no_prompt")
            else:
                prompts.append((record, messages))
        pools = self._candidates([m for _, m in prompts], ctx)
        pairs = [self._pairs(record, pool, ctx) for (record, _), pool in zip(prompts, pools)]
        self._judge([(rec, msgs, p) for (rec, msgs), ps in zip(prompts, pairs) for p in ps], ctx)
        for (record, messages), ps in zip(prompts, pairs):
            if not ps:
                ctx.drop(record, "too_few_candidates")
            for judged in ps:
                yield from self._label(record, messages, judged, ctx)

    # ---- candidates and pairs

    def _candidates(self, prompts: list[list[dict]], ctx: StepContext) -> list[list[Candidate]]:
        """``n_per_candidate`` responses per role per prompt; empty ones left out."""
        pools: list[list[Candidate]] = [[] for _ in prompts]
        cfg = self.config
        for i, role in enumerate(cfg.candidates):
            # distinct seeds per role: two roles served by one model must not give identical samples
            params = replace(self.params(n=cfg.n_per_candidate, temperature=cfg.temperature,
                                         max_tokens=cfg.max_tokens), seed=cfg.seed + i)
            model = self.model_name(role)
            for pool, completions in zip(pools, self.sample(ctx, prompts, params, role=role)):
                for k, c in enumerate(completions):
                    if c.text.strip():
                        pool.append(Candidate(role, k, c.text.strip(), model))
                    else:
                        ctx.stat("empty_candidates")
        ctx.stat("candidates", sum(map(len, pools)))
        return pools

    def _pairs(self, record: Record, pool: list[Candidate], ctx: StepContext) -> list[Judged]:
        """Any-vs-any unordered pairs, identical texts left out, capped by a seeded sample."""
        pairs = []
        for a, b in itertools.combinations(pool, 2):
            if a.text == b.text:
                ctx.stat("identical_responses")
            else:
                pairs.append(Judged(a, b))
        cap = self.config.max_pairs_per_prompt
        if cap is not None and len(pairs) > cap:
            keep = sorted(random.Random(f"{self.seed}:{record.id}").sample(range(len(pairs)), cap))
            pairs = [pairs[i] for i in keep]
        ctx.stat("pairs_formed", len(pairs))
        return pairs

    # ---- judging

    def _judge(self, items: list[tuple[Record, list[dict], Judged]], ctx: StepContext) -> None:
        orders = (False, True) if self.config.swap_positions else (False,)
        jobs = [(j, swapped, self._judge_prompt(ctx, rec, msgs, j, swapped))
                for rec, msgs, j in items for swapped in orders]
        if not jobs:
            return
        if self.config.scoring == "logprob":
            verdicts = self._logprob_verdicts(ctx, [p for _, _, p in jobs])
        else:
            params = self.params(temperature=self.config.judge_temperature, max_tokens=self.config.judge_max_tokens)
            answers = ask_json(self, ctx, [p for _, _, p in jobs], JudgeVerdict, params,
                               role=self.config.judge_role, max_reasks=self.config.max_reasks)
            verdicts = [answer.value for answer in answers]
        for (judged, swapped, _), verdict in zip(jobs, verdicts):
            judged.verdicts.append((swapped, verdict))

    def _logprob_verdicts(self, ctx: StepContext, prompts: list[list[dict]]) -> list[JudgeVerdict]:
        """Scores read off the judge's next-token distribution over "1".."5", one JSON slot at a time.

        The reply is written for the judge: ``{"accuracy": {"1": `` then, per slot, the
        expected score sum_d p(d) * d (over the five digits, renormalised) is recorded and
        the most likely digit is appended before the next slot, so later scores see the
        judge's own earlier ones. One batched ``score`` call per slot (6 per pair).
        """
        backend = self.backend(self.config.judge_role)
        tok, digits = _digit_tokens(backend)
        bases = [list(backend.chat_prompt(p)) for p in prompts]
        texts = ['{"' + ASPECTS[0] + '": {"1": '] * len(prompts)
        scores: list[dict] = [{a: {} for a in ASPECTS} for _ in prompts]
        for a, aspect in enumerate(ASPECTS):
            for slot in ("1", "2"):
                ids = [b + tok(t, add_special_tokens=False)["input_ids"] for b, t in zip(bases, texts)]
                flat = backend.score([x for x in ids for _ in digits], [[d] for _ in ids for d in digits])
                ctx.stat("judge_score_calls")
                for k in range(len(prompts)):
                    expected, best = _expected_digit([v[0] for v in flat[k * 5:(k + 1) * 5]])
                    scores[k][aspect][slot] = expected
                    texts[k] += str(best) + _skeleton_after(a, slot)
        return [JudgeVerdict(faults_discussion="(scored from next-token log-probs)", **s) for s in scores]

    def _judge_prompt(self, ctx: StepContext, record: Record, messages: list[dict], judged: Judged,
                      swapped: bool) -> list[dict]:
        first, second = (judged.b, judged.a) if swapped else (judged.a, judged.b)
        return user(ctx.render(self.template, conversation=render_conversation(messages),
                               reference=self._reference(record, ctx), reply_1=first.text, reply_2=second.text))

    def _reference(self, record: Record, ctx: StepContext) -> str:
        if not self.config.judge_sees_reference:
            return ""
        ref = record.metadata.get(self.config.reference_key)
        if not isinstance(ref, str) or not ref.strip():
            ctx.stat("judged_without_reference")
            return ""
        return _REFERENCE.format(reference=ref.strip())

    # ---- labels

    def _label(self, record: Record, messages: list[dict], judged: Judged, ctx: StepContext) -> Iterator[Record]:
        if not judged.valid:
            ctx.stat("judge_invalid_json")
            ctx.drop(self._pair_record(record, messages, judged, None), "judge_invalid_json")
            return
        ctx.stat("pairs_judged")
        sa, sb = judged.scores("a"), judged.scores("b")
        if {"a", "b"} <= set(_order_winners(judged)):
            ctx.stat("position_disagreements")
        for kind in self.config.pair_types:
            margin = sa[kind] - sb[kind]
            if abs(margin) <= self.config.tie_margin:
                ctx.stat(f"ties_{kind}")
                ctx.drop(self._pair_record(record, messages, judged, kind), f"tie_{kind}")
                continue
            ctx.stat(f"pairs_{kind}")
            yield self._pair_record(record, messages, judged, kind, a_wins=margin > 0)

    def _pair_record(self, record: Record, messages: list[dict], judged: Judged, kind: str | None,
                     a_wins: bool = True) -> Record:
        chosen, rejected = (judged.a, judged.b) if a_wins else (judged.b, judged.a)
        slots = ("a", "b") if a_wins else ("b", "a")
        meta = {"kind": f"judge_{kind}" if kind else "judge_unlabelled", "pair_type": kind,
                "chosen": chosen.text, "rejected": rejected.text, "max_response_tokens": None,
                "chosen_role": chosen.role, "rejected_role": rejected.role,
                "chosen_model": chosen.model, "rejected_model": rejected.model,
                "judge_model": self.model_name(self.config.judge_role), "swap_positions": self.config.swap_positions,
                "judgments": [_judgment(judged, swapped, v) for swapped, v in judged.verdicts]}
        if judged.valid:
            meta["scores"] = {"chosen": judged.scores(slots[0]), "rejected": judged.scores(slots[1])}
        ids = (f"{judged.a.role}{judged.a.index}", f"{judged.b.role}{judged.b.index}")
        rid = child_id(record.id, TECHNIQUE, kind or "pair", "-".join(ids))
        return Record(rid, messages=messages, metadata=meta, provenance=Provenance(
            seed_id=record.id, technique=TECHNIQUE, template_id=self.template.id,
            template_version=self.template.version, model=meta["judge_model"]))


def _digit_tokens(backend) -> tuple:
    """The judge's tokenizer and the ids of "1".."5" (each must be one token)."""
    tok = getattr(backend, "tokenizer", None)
    if tok is None or not hasattr(backend, "score"):
        raise ConfigError(f"{TECHNIQUE}: scoring = 'logprob' needs a judge backend with a tokenizer and score() "
                          "(local, or http with models.judge.tokenizer set); use scoring = 'json'")
    ids = [tok(str(d), add_special_tokens=False)["input_ids"] for d in range(1, 6)]
    if any(len(x) != 1 for x in ids):
        raise ConfigError(f"{TECHNIQUE}: scoring = 'logprob' needs the digits 1-5 to be single tokens of the "
                          "judge's tokenizer; use scoring = 'json'")
    return tok, [x[0] for x in ids]


def _expected_digit(logprobs: list[float]) -> tuple[float, int]:
    """(probability-weighted mean of 1..5, most likely digit), the five renormalised."""
    import math

    top = max(logprobs)
    weights = [math.exp(v - top) for v in logprobs]
    total = sum(weights)
    expected = sum((d + 1) * w for d, w in enumerate(weights)) / total
    return round(expected, 4), 1 + max(range(5), key=lambda d: logprobs[d])


def _skeleton_after(aspect_index: int, slot: str) -> str:
    """The JSON between one score slot and the next."""
    if slot == "1":
        return ', "2": '
    if aspect_index + 1 < len(ASPECTS):
        return '}, "' + ASPECTS[aspect_index + 1] + '": {"1": '
    return "}}"


def _order_winners(judged: Judged) -> list[str | None]:
    """Per presentation order, the candidate ('a'/'b') with the higher overall score (None: a tie)."""
    winners = []
    for swapped, v in judged.verdicts:
        first, second = (sum(getattr(v, k)[s] for k in ASPECTS) for s in ("1", "2"))
        winners.append(None if first == second else "a" if (first > second) != swapped else "b")
    return winners


def _judgment(judged: Judged, swapped: bool, verdict: JudgeVerdict | None) -> dict:
    """One verdict as stored in metadata: which candidate sat in which slot, and what the judge said."""
    a, b = f"{judged.a.role}#{judged.a.index}", f"{judged.b.role}#{judged.b.index}"
    order = [b, a] if swapped else [a, b]
    return {"order": order, "verdict": verdict.model_dump() if verdict is not None else None}
