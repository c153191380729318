"""Rewrite and augment: a passage turned into exercises, discussions and reasoning tasks.

Phi-4 report §2.2 ("Rewrite and Augment"): seeds are transformed "through multi-step
prompting workflows", rewriting most of a passage's useful content into exercises,
discussions or structured reasoning tasks; answers are checked by rejection
sampling against ground truth where it exists (§2.1, App. D.2).

How we implement it (``PassageRewriter``), batched over records:

1. ``rewrite_plan`` (``plan_first``): study notes on the passage (the question stated in
   full, key facts, the reasoning redone, the passage's mistakes). This is our
   reading of "multi-step": the paper shows no prompts (UNCONFIRMED).
2. One prompt per output kind (``kinds``; template per kind in ``templates``:
   ``rewrite_exercise``, ``rewrite_discussion``, ``rewrite_reasoning_task``), given the
   passage and the notes; ``n`` samples each.
3. Checks per sample: truncated, too short, duplicate, the kind's layout headers
   missing (``required_markers``); for kinds in ``verify_kinds``
   whose seed has a ground-truth answer in ``metadata[answer_key]``, the final
   ``Answer:`` line is compared with ``verify.math.MathOracle`` and mismatches are
   dropped (``answer_mismatch``). With ``n > 1`` this is rejection sampling against
   the known answer: every verified sample is kept (up to ``max_kept_per_kind``).

The exercise prompt is written so that a noisy forum post with a (possibly wrong)
answer, like the tiny recipe's ``data.tinymath`` web posts, becomes the SAME problem
stated cleanly with a step-by-step solution ending ``Answer: N``; verification
against the true answer then filters out copied wrong answers.

Accounting: every seed either yields samples (``seeds_expanded``) or is dropped
(``empty_passage``, ``no_reference_answer``); every sample (``samples``) is either
yielded or dropped (``truncated_output``, ``output_too_short``, ``duplicate_sample``,
``layout_missing``, ``answer_missing``, ``answer_mismatch``, ``over_limit``).
"""

from __future__ import annotations

import re
from typing import Iterator, Literal

from pydantic import Field, model_validator

from phiforge.backends.base import Completion
from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import get_template
from phiforge.errors import ConfigError
from phiforge.recipe.schema import Section
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.verify.math import MathOracle
from phiforge.verify.oracle import Verdict

DEFAULT_TEMPLATES = {"exercise": "rewrite_exercise", "discussion": "rewrite_discussion",
                     "reasoning_task": "rewrite_reasoning_task"}
DEFAULT_MARKERS = {"exercise": ["Exercise:", "Solution:"], "reasoning_task": ["Given:", "Question:", "Reasoning:",
                                                                            "Conclusion:"]}
KIND_PLACEHOLDERS = frozenset({"passage", "notes", "difficulty"})
NOTES = "\nNotes from a first reading (check them: they may contain mistakes):\n{plan}\n"
_ANSWER_LINE = re.compile(r"^[\s*_#>]*(?:final\s+)?answer[\s*_]*[:=]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_NUMBER_THEN_WORDS = re.compile(r"^\$?(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)\s*[A-Za-z][A-Za-z ]*\.?$")


class PassageRewriterConfig(Section):
    """Rewrite and augment (Phi-4 report §2.2); every value is ours (UNCONFIRMED) unless noted."""

    kinds: list[str] = Field(["exercise", "discussion", "reasoning_task"], min_length=1, description=(
        "output kinds made from every passage, each with its template in `templates`"))
    templates: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TEMPLATES), description=(
        "kind -> template id (latest version); placeholders among {passage, notes, difficulty}"))
    plan_first: bool = Field(True, description="write study notes first and give them to every kind's prompt")
    n: int = Field(1, ge=1, description="samples per (passage, kind); > 1 = rejection sampling for verified kinds")
    answer_key: str = Field("answer", min_length=1, description="seed metadata key holding the ground-truth answer")
    verify_kinds: list[str] = Field(["exercise"], description=(
        "kinds whose final 'Answer:' is checked when a reference exists (kinds not in `kinds` are ignored)"))
    require_reference: bool = Field(False, description=(
        "skip verified kinds for seeds without a reference answer (and drop the seed, "
        "no_reference_answer, if no kind is left); False = pass them unverified"))
    max_kept_per_kind: int | None = Field(None, ge=1, description=(
        "keep at most this many samples per (passage, kind); None = all that pass"))
    required_markers: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_MARKERS), description=(
        "kind -> section headers its output must contain (case-insensitive; layout_missing): the layouts "
        "the default templates ask for. Set {} for templates without a fixed layout"))
    min_chars: int = Field(40, ge=1, description="drop shorter outputs (output_too_short)")
    drop_truncated: bool = Field(True, description="drop outputs cut by max_tokens (truncated_output)")
    difficulty: str = Field("challenging", description="fills {difficulty} in templates that have it")
    role: str = Field("teacher", description="model role to ask")
    temperature: float = Field(0.7, ge=0, description=(
        "sampling temperature of the rewrites. UNCONFIRMED: diverse samples for n > 1, still coherent"))
    max_tokens: int = Field(1024, ge=1, description="completion budget of one rewrite")
    prompt_style: Literal["chat", "completion"] = Field("chat", description=(
        "chat: the rendered template is a user turn; completion: the raw text is continued (few-shot templates "
        "that end with a cue, for base models and small teachers)"))
    stop: list[str] = Field(default_factory=list, description=(
        "stop strings of a rewrite (e.g. the start of the next few-shot example); a stop is not truncation"))
    plan_max_tokens: int = Field(512, ge=1, description="completion budget of the notes (greedy)")
    batch_size: int = Field(16, ge=1, description="passages per model call")
    seed: int = Field(0, ge=0, description="sampling seed")

    @model_validator(mode="after")
    def _check(self) -> "PassageRewriterConfig":
        unknown = [k for k in self.kinds if k not in self.templates]
        if unknown:
            raise ValueError(f"kinds {unknown} have no template; add them to `templates` "
                             f"(known: {sorted(self.templates)})")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds {self.kinds} has duplicates")
        return self


def final_answer(text: str) -> str | None:
    """The value on the last ``Answer: ...`` line ("19 apples" -> "19"), or None."""
    found = _ANSWER_LINE.findall(text)
    if not found:
        return None
    answer = found[-1].strip().strip("*_").strip()
    m = _NUMBER_THEN_WORDS.match(answer)
    return (m.group(1) if m else answer) or None


class PassageRewriter(GenerationStep):
    """Rewrite and augment, Phi-4 report §2.2: passage -> exercises, discussions, reasoning tasks.

    See the module docstring for the workflow, checks and drop reasons. Output
    ``text`` is the rewrite; ``metadata`` adds ``kind``, ``sample_index``,
    ``verified`` (True / None when unchecked), ``extracted_answer``, ``verdict``;
    provenance names the kind's template.
    """

    technique = "rewrite"

    def __init__(self, config: PassageRewriterConfig, models):
        super().__init__(models, batch_size=config.batch_size, seed=config.seed)
        self.config = config
        self.plan_template = get_template("rewrite_plan")
        self.kind_templates = {kind: get_template(config.templates[kind]) for kind in config.kinds}
        for kind, t in self.kind_templates.items():
            if not t.placeholders <= KIND_PLACEHOLDERS or "passage" not in t.placeholders:
                raise ConfigError(f"template {t.key} for kind {kind!r} has placeholders {sorted(t.placeholders)}; "
                                 f"it needs {{passage}} and may use {sorted(KIND_PLACEHOLDERS)}")
        self.templates = ((self.plan_template,) if config.plan_first else ()) + tuple(self.kind_templates.values())
        self.oracle = MathOracle()

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        cfg = self.config
        params = self.params(n=cfg.n, temperature=cfg.temperature, max_tokens=cfg.max_tokens, stop=tuple(cfg.stop))
        for batch in self.batches(records):
            seeds = [s for s in (self.seed_plan(ctx, r) for r in batch) if s is not None]
            notes = self.notes(ctx, [record for record, _ in seeds])
            jobs = [(record, kind, note) for (record, kinds), note in zip(seeds, notes) for kind in kinds]
            prompts = [self.as_prompt(self.prompt(ctx, kind, record, note)) for record, kind, note in jobs]
            for job, completions in zip(jobs, self.sample(ctx, prompts, params, role=cfg.role)):
                yield from self.checked(ctx, *job[:2], completions)

    def as_prompt(self, text: str):
        """A chat turn, or the raw text to continue (few-shot completion: what small teachers follow best)."""
        return text if self.config.prompt_style == "completion" else user(text)

    def reference(self, record: Record) -> str | None:
        value = record.metadata.get(self.config.answer_key)
        return None if value is None or str(value).strip() == "" else str(value)

    def seed_plan(self, ctx: StepContext, record: Record) -> tuple[Record, list[str]] | None:
        """(record, kinds to make from it), or None after dropping it."""
        cfg = self.config
        if not (record.text or "").strip():
            ctx.drop(record, "empty_passage")
            return None
        kinds = list(cfg.kinds)
        if cfg.require_reference and self.reference(record) is None:
            kinds = [k for k in kinds if k not in cfg.verify_kinds]
            ctx.stat("skipped_no_reference", len(cfg.kinds) - len(kinds))
            if not kinds:
                ctx.drop(record, "no_reference_answer")
                return None
        ctx.stat("seeds_expanded")
        return record, kinds

    def notes(self, ctx: StepContext, records: list[Record]) -> list[str]:
        """Step 1: study notes per record (greedy), as the text block the kind prompts embed."""
        if not self.config.plan_first or not records:
            return [""] * len(records)
        params = self.params(temperature=0.0, max_tokens=self.config.plan_max_tokens)
        prompts = [user(ctx.render(self.plan_template, passage=r.text)) for r in records]
        plans = [c[0].text.strip() for c in self.sample(ctx, prompts, params, role=self.config.role)]
        if not all(plans):
            ctx.stat("plan_empty", sum(not p for p in plans))
        return [NOTES.format(plan=p) if p else "" for p in plans]

    def prompt(self, ctx: StepContext, kind: str, record: Record, notes: str) -> str:
        template = self.kind_templates[kind]
        values = {"passage": record.text, "notes": notes, "difficulty": self.config.difficulty}
        return ctx.render(template, **{k: v for k, v in values.items() if k in template.placeholders})

    def checked(self, ctx: StepContext, seed: Record, kind: str, completions: list[Completion]) -> Iterator[Record]:
        reference = self.reference(seed) if kind in self.config.verify_kinds else None
        seen: set[str] = set()
        kept = 0
        for k, completion in enumerate(completions):
            ctx.stat("samples")
            text = completion.text.strip()
            verdict = self.verify(text, reference) if reference is not None else None
            out = self.output(seed, kind, k, text, verdict)
            reason = self.problem(kind, completion, text, seen, verdict, kept)
            if reason:
                ctx.drop(out, reason)
                continue
            seen.add(text)
            kept += 1
            ctx.stat("verified" if verdict is not None else "unverified")
            yield out

    def problem(self, kind: str, completion: Completion, text: str, seen: set[str], verdict: Verdict | None,
                kept: int) -> str | None:
        """The first check a sample fails, or None."""
        cfg = self.config
        if cfg.drop_truncated and completion.finish_reason == "length":
            return "truncated_output"
        if len(text) < cfg.min_chars:
            return "output_too_short"
        if text in seen:
            return "duplicate_sample"
        if not all(m.lower() in text.lower() for m in cfg.required_markers.get(kind, ())):
            return "layout_missing"
        if verdict is not None and not verdict.correct:
            return "answer_missing" if verdict.extracted is None else "answer_mismatch"
        if cfg.max_kept_per_kind is not None and kept >= cfg.max_kept_per_kind:
            return "over_limit"
        return None

    def verify(self, text: str, reference: str) -> Verdict:
        """The last ``Answer:`` line against the reference (no line: ``no_answer``).

        Only the line the prompt asks for counts: "the answer is 8" inside rambling
        text from a weak teacher would otherwise pass as a verified solution.
        """
        answer = final_answer(text)
        if answer is None:
            return Verdict(False, None, "no_answer")
        return self.oracle.check(f"The final answer is {answer}", reference)

    def output(self, seed: Record, kind: str, k: int, text: str, verdict: Verdict | None) -> Record:
        template = self.kind_templates[kind]
        meta = {**seed.metadata, "source_id": seed.id, "kind": kind, "sample_index": k,
                "verified": None if verdict is None else verdict.correct,
                "extracted_answer": None if verdict is None else verdict.extracted,
                "verdict": None if verdict is None else verdict.reason}
        prov = Provenance(seed_id=seed.id, technique=self.technique, template_id=template.id,
                          template_version=template.version, model=self.model_name(self.config.role))
        return Record(child_id(seed.id, kind, k), text=text or "(empty)", metadata=meta, provenance=prov)
