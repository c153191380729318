"""Rejection sampling against an oracle, and execution validation of code records.

Phi-4 report §2.1-2.2 and App. D.2 (recipe doc §3.2.2, §3.3): chain-of-thought
solutions are produced by **rejection sampling** "against ground truth or the
plurality answer where available", and synthetic code is "validated through
execution loops and tests". Two steps:

``RejectionSampler``
    For each problem with a reference (``metadata["answer"]``, else the
    ``"plurality_answer"`` written by ``synth.plurality.PluralityFilter``; for code,
    ``metadata["tests"]`` + optional ``"entry_point"``), sample ``k`` solutions in
    one batched call, check each with the configured oracle (``verify.math``,
    ``verify.choice``, or the sandboxed tests of ``verify.code``, all runs of a
    batch in parallel), and emit up to ``keep_per_problem`` distinct correct
    solutions (distinct after lower-casing and collapsing whitespace) as
    ``user: question / assistant: solution`` records with ``pass_count`` and
    ``p_correct`` in their metadata. Problems with no correct sample are dropped
    (``no_correct_sample``).
``ExecutionValidator``
    Runs each code record in the sandbox against its tests (given in metadata, or
    written by the teacher as assert lines through ``ask_json``), keeps the passing
    ones and drops the others with the verdict's reason (``syntax_error``,
    ``assertion_failed``, ``timeout``, ``runtime_error``, ...). Generated tests are
    only trusted if the code runs cleanly on its own first; when the code runs but
    fails the generated tests, we cannot tell which side is wrong, so the record is
    dropped as ``generated_tests_invalid`` (the brief's rule).

Deviations: the paper gives no ``k``, no number of solutions kept per problem and
no test-generation procedure (UNCONFIRMED); defaults are documented on the configs.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Iterator, Literal

from pydantic import BaseModel, Field, field_validator

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import get_template
from phiforge.errors import ConfigError
from phiforge.recipe.schema import Section
from phiforge.synth.base import GenerationStep, child_id, record_content, user
from phiforge.synth.jsonask import ask_json
from phiforge.synth.plurality import parent_provenance, question_of
from phiforge.verify.choice import ChoiceOracle
from phiforge.verify.code import CodeTests, check_code_many, extract_code
from phiforge.verify.math import MathOracle
from phiforge.verify.oracle import Verdict
from phiforge.verify.sandbox import SandboxConfig

OracleKind = Literal["math", "choice", "code"]


# --------------------------------------------------------------------------- shared helpers


def normalize_solution(text: str) -> str:
    """The dedupe key of a solution: lower case, whitespace collapsed."""
    return " ".join(text.lower().split())


def reason_slug(reason: str) -> str:
    """A verdict reason as a snake_case drop reason: ``'syntax_error: ... (line 3)'`` -> ``syntax_error``."""
    head = reason.split(":", 1)[0].strip().lower()
    return re.sub(r"[^a-z0-9_]+", "_", head).strip("_") or "execution_failed"


def tests_of(record: Record, tests_key: str, entry_point_key: str) -> CodeTests | None:
    """The record's tests (a string, or a list of lines) as ``CodeTests``; None if it has none."""
    tests = record.metadata.get(tests_key)
    if isinstance(tests, list):
        tests = "\n".join(str(t) for t in tests)
    if not isinstance(tests, str) or not tests.strip():
        return None
    entry = record.metadata.get(entry_point_key)
    return CodeTests(tests, entry if isinstance(entry, str) and entry else None)


def sandbox_config(timeout_s: float, memory_mb: int) -> SandboxConfig:
    return SandboxConfig(timeout_s=timeout_s, memory_mb=memory_mb)


# --------------------------------------------------------------------------- rejection sampling


class RejectionSamplerConfig(Section):
    """Settings of :class:`RejectionSampler`."""

    oracle: OracleKind = Field("math", description="how a sample is checked: math answer, choice letter, code tests")
    k: int = Field(8, ge=1, le=128, description=(
        "samples per problem, in one call with n=k. UNCONFIRMED: the paper does not say; 8 finds a correct "
        "sample for problems a strong teacher solves >= 25% of the time with ~90% probability"))
    keep_per_problem: int = Field(1, ge=1, description=(
        "distinct correct solutions kept per problem. UNCONFIRMED: 1 keeps the mix unweighted by how "
        "easy a problem is; raise it for more stylistic diversity"))
    answer_keys: list[str] = Field(["answer", "plurality_answer"], min_length=1, description=(
        "metadata keys searched in order for the reference answer (math/choice); 'plurality_answer' "
        "comes from PluralityFilter"))
    tests_key: str = Field("tests", description="metadata key of the tests (code oracle): str or list of lines")
    entry_point_key: str = Field("entry_point", description="metadata key of a HumanEval-style entry point")
    question_key: str | None = Field(None, description=(
        "metadata key holding the problem; None: the record's text, else its last user message"))
    choice_letters: str = Field("ABCD", pattern=r"^[A-Za-z]{2,26}$")
    template: str | None = Field(None, description="template id instead of rejection_solve_{oracle}; needs {question}")
    record_prompt: Literal["question", "prompt"] = Field("question", description=(
        "user turn of the output: the bare question, or the full rendered prompt with format instructions"))
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="UNCONFIRMED: diverse samples, still mostly coherent")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=1)
    sandbox_timeout_s: float = Field(10.0, gt=0.0, description="wall-clock limit per code run, seconds")
    sandbox_memory_mb: int = Field(512, ge=64, description="address-space limit per code run, MiB")
    sandbox_workers: int | None = Field(None, ge=1, description="parallel sandbox runs; None: run_many's default")


class RejectionSampler(GenerationStep):
    """Keep only oracle-verified teacher solutions (Phi-4 report §2.1-2.2, App. D.2).

    ``RejectionSampler(RejectionSamplerConfig(...), models)``; the ``teacher`` role solves.
    """

    technique = "rejection_sampling"

    def __init__(self, config: RejectionSamplerConfig, models, *, batch_size: int = 16, seed: int = 0):
        super().__init__(models, batch_size=batch_size, seed=seed)
        self.config = config
        self.template = get_template(config.template or f"rejection_solve_{config.oracle}")
        if self.template.placeholders != {"question"}:
            raise ConfigError(f"rejection_sampler.template {self.template.key} must have exactly one placeholder, "
                              f"{{question}}; it has {sorted(self.template.placeholders)}")
        self.templates = (self.template,)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            yield from self._run_batch(batch, ctx)

    def reference(self, record: Record):
        """The record's reference (answer string or ``CodeTests``), or None."""
        cfg = self.config
        if cfg.oracle == "code":
            return tests_of(record, cfg.tests_key, cfg.entry_point_key)
        for key in cfg.answer_keys:
            value = record.metadata.get(key)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
                return str(value).strip()
        return None

    def _problem(self, record: Record, ctx: StepContext):
        """(question, reference) or None after dropping the record with a reason."""
        question = question_of(record, self.config.question_key)
        ref = self.reference(record)
        if question is None:
            ctx.drop(record, "no_question")
        elif ref is None:
            ctx.drop(record, "no_reference")
        elif self.config.oracle == "choice" and ref.strip("() ").upper() not in self.config.choice_letters.upper():
            ctx.drop(record, "invalid_reference")
        else:
            return question, ref
        return None

    def _run_batch(self, batch: list[Record], ctx: StepContext) -> Iterator[Record]:
        problems = []
        for record in batch:
            found = self._problem(record, ctx)
            if found is not None:
                problems.append((record, *found, ctx.render(self.template, question=found[0].strip())))
        cfg = self.config
        params = self.params(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
        samples = self.sample(ctx, [user(p[3]) for p in problems], params)
        texts = [[c.text for c in completions] for completions in samples]
        verdicts = self.check(texts, [p[2] for p in problems])
        for (record, question, ref, prompt), outs, checks in zip(problems, texts, verdicts):
            yield from self._keep(record, question if cfg.record_prompt == "question" else prompt,
                                  ref, outs, checks, ctx)

    def check(self, texts: list[list[str]], refs: list) -> list[list[Verdict]]:
        """Verdicts for every sample of every problem (code: one parallel sandbox batch)."""
        cfg = self.config
        flat = [(t, ref) for outs, ref in zip(texts, refs) for t in outs]
        if cfg.oracle == "code":
            config = sandbox_config(cfg.sandbox_timeout_s, cfg.sandbox_memory_mb)
            found = check_code_many([extract_code(t) for t, _ in flat], [r for _, r in flat],
                                    config=config, workers=cfg.sandbox_workers)
        else:
            oracle = MathOracle() if cfg.oracle == "math" else ChoiceOracle(cfg.choice_letters)
            found = [oracle.check(t, r) for t, r in flat]
        out, i = [], 0
        for outs in texts:
            out.append(found[i:i + len(outs)])
            i += len(outs)
        return out

    def _keep(self, record: Record, question: str, ref, texts: list[str], verdicts: list[Verdict],
              ctx: StepContext) -> Iterator[Record]:
        passed = sum(v.correct for v in verdicts)
        ctx.stat("samples", len(texts))
        ctx.stat("correct_samples", passed)
        stats = {"pass_count": passed, "k": len(texts), "p_correct": round(passed / len(texts), 4),
                 "oracle": self.config.oracle}
        if passed == 0:
            reasons = sorted({v.reason.split(":", 1)[0] for v in verdicts})
            ctx.drop(replace(record, metadata=dict(record.metadata) | stats | {"verdicts": reasons}),
                     "no_correct_sample")
            return
        seen: set[str] = set()
        for j, (text, verdict) in enumerate(zip(texts, verdicts)):
            key = normalize_solution(text)
            if not verdict.correct or len(seen) >= self.config.keep_per_problem:
                continue
            if key in seen:
                ctx.stat("duplicate_correct_samples")
                continue
            seen.add(key)
            yield self._record(record, question, ref, text, verdict, j, stats)
        ctx.stat("problems_solved")

    def _record(self, record: Record, question: str, ref, text: str, verdict: Verdict, j: int,
                stats: dict) -> Record:
        meta = dict(record.metadata) | stats | {"sample_index": j, "verdict": verdict.reason}
        if not isinstance(ref, CodeTests):
            meta |= {"reference": ref, "extracted": verdict.extracted}
        messages = [{"role": "user", "content": question.strip()}, {"role": "assistant", "content": text.strip()}]
        prov = Provenance(seed_id=record.id, technique=self.technique, template_id=self.template.id,
                          template_version=self.template.version, model=self.model_name("teacher"))
        return Record(child_id(record.id, "rs", j), messages=messages, metadata=meta, provenance=prov)


# --------------------------------------------------------------------------- execution validation


class GeneratedTests(BaseModel):
    """The teacher's reply when asked for tests: assert lines that compile."""

    tests: list[str] = Field(min_length=1)

    @field_validator("tests")
    @classmethod
    def _asserts_that_compile(cls, tests: list[str]) -> list[str]:
        tests = [t.strip() for t in tests if t.strip()]
        if not tests:
            raise ValueError("give at least one test line")
        for t in tests:
            if not t.startswith("assert"):
                raise ValueError(f"every test must be one line starting with 'assert'; got {t[:60]!r}")
            try:
                compile(t, "test", "exec")
            except SyntaxError as e:
                raise ValueError(f"test {t[:60]!r} is not valid Python ({e.msg})") from None
        return tests


class ExecutionValidatorConfig(Section):
    """Settings of :class:`ExecutionValidator`."""

    code_key: str | None = Field(None, description=(
        "metadata key holding the code; None: the text, else the last assistant message (fenced block "
        "extracted when there is one)"))
    task_key: str | None = Field(None, description=(
        "metadata key holding the task statement shown to the test writer; None: the last user message"))
    tests_key: str = Field("tests", description=(
        "metadata key of given tests (str or list of lines); generated tests are stored here"))
    entry_point_key: str = Field("entry_point", description="metadata key of a HumanEval-style entry point")
    when_no_tests: Literal["generate", "run_only", "drop"] = Field("generate", description=(
        "records without tests: ask the teacher for assert tests, only check the code runs, or drop (no_tests)"))
    max_generated_tests: int = Field(8, ge=1, description="tests kept from the teacher's reply (first ones)")
    test_temperature: float = Field(0.2, ge=0.0, le=2.0, description=(
        "UNCONFIRMED: low temperature, tests must be exact rather than diverse"))
    test_max_tokens: int = Field(512, ge=1)
    max_reasks: int = Field(2, ge=0, description="re-asks of an invalid test JSON (jsonask)")
    sandbox_timeout_s: float = Field(10.0, gt=0.0, description="wall-clock limit per run, seconds")
    sandbox_memory_mb: int = Field(512, ge=64, description="address-space limit per run, MiB")
    sandbox_workers: int | None = Field(None, ge=1, description="parallel sandbox runs; None: run_many's default")


class ExecutionValidator(GenerationStep):
    """Keep code records that run and pass their tests (Phi-4 report §2.1, "execution loops and tests").

    ``ExecutionValidator(ExecutionValidatorConfig(...), models=None)``: a model (``teacher`` role)
    is only needed when ``when_no_tests="generate"`` meets a record without tests.
    """

    technique = "execution_validation"

    def __init__(self, config: ExecutionValidatorConfig, models=None, *, batch_size: int = 16, seed: int = 0):
        super().__init__({} if models is None else models, batch_size=batch_size, seed=seed)
        self.config = config
        self.template = get_template("rejection_write_tests")
        self.templates = (self.template,)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            yield from self._run_batch(batch, ctx)

    def code_of(self, record: Record) -> str | None:
        """The code to run (see ``code_key``), or None."""
        value = record_content(record, self.config.code_key)
        if value is None:
            return None
        code = extract_code(value) if "```" in value else value
        return code if code.strip() else None

    def _run_batch(self, batch: list[Record], ctx: StepContext) -> Iterator[Record]:
        items = []  # [record, code, tests | None, tests_source]
        for record in batch:
            code = self.code_of(record)
            if code is None:
                ctx.drop(record, "no_code")
                continue
            tests = tests_of(record, self.config.tests_key, self.config.entry_point_key)
            source = "given" if tests is not None else self.config.when_no_tests
            if source == "drop":
                ctx.drop(record, "no_tests")
                continue
            items.append([record, code, tests, source])
        items = self._generate_tests(items, ctx)
        yield from self._validate(items, ctx)

    def _generate_tests(self, items: list[list], ctx: StepContext) -> list[list]:
        """Fill in teacher-written tests where asked; drop records whose test reply never validated."""
        todo = [it for it in items if it[3] == "generate"]
        if not todo:
            return items
        cfg = self.config
        prompts = [user(ctx.render(self.template, code=it[1].strip(), task=self._task(it[0]),
                                   max_tests=cfg.max_generated_tests)) for it in todo]
        params = self.params(temperature=cfg.test_temperature, max_tokens=cfg.test_max_tokens)
        answers = ask_json(self, ctx, prompts, GeneratedTests, params, max_reasks=cfg.max_reasks)
        failed = set()
        for it, answer in zip(todo, answers):
            if answer.value is None:
                ctx.drop(it[0], "test_generation_failed")
                failed.add(id(it))
            else:
                it[2] = CodeTests("\n".join(answer.value.tests[:cfg.max_generated_tests]))
                ctx.stat("tests_generated", len(answer.value.tests[:cfg.max_generated_tests]))
        return [it for it in items if id(it) not in failed]

    def _task(self, record: Record) -> str:
        key = self.config.task_key
        task = record.metadata.get(key) if key else (question_of(record, None) if record.messages else None)
        return f"Task the code solves:\n{task.strip()}\n\n" if isinstance(task, str) and task.strip() else ""

    def _validate(self, items: list[list], ctx: StepContext) -> Iterator[Record]:
        """One parallel sandbox batch: code + tests, plus code alone where tests were generated or absent."""
        jobs = []
        for record, code, tests, source in items:
            if source != "given":
                jobs.append((code, CodeTests("")))  # does the code run on its own?
            if tests is not None:
                jobs.append((code, tests))
        cfg = self.config
        verdicts = iter(check_code_many([c for c, _ in jobs], [t for _, t in jobs],
                                        config=sandbox_config(cfg.sandbox_timeout_s, cfg.sandbox_memory_mb),
                                        workers=cfg.sandbox_workers))
        for record, code, tests, source in items:
            alone = next(verdicts) if source != "given" else None
            full = next(verdicts) if tests is not None else alone
            kept = self._decide(record, tests, source, alone, full, ctx)
            if kept is not None:
                yield kept

    def _decide(self, record: Record, tests: CodeTests | None, source: str, alone: Verdict | None,
                full: Verdict, ctx: StepContext) -> Record | None:
        info = {"tests_source": source, "verdict": full.reason}
        if alone is not None and not alone.correct:
            info["verdict"] = alone.reason
            reason = reason_slug(alone.reason)
        elif not full.correct:
            reason = "generated_tests_invalid" if source == "generate" else reason_slug(full.reason)
        else:
            reason = None
        meta = dict(record.metadata) | {"execution": info}
        if source == "generate":
            meta[self.config.tests_key] = tests.tests
        if parent_provenance(record):
            meta["parent_provenance"] = parent_provenance(record)
        if reason is not None:
            ctx.drop(replace(record, metadata=meta), reason)
            return None
        ctx.stat("passed")
        return Record(child_id(record.id, "exec"), text=record.text, messages=record.messages, metadata=meta,
                      provenance=self._provenance(record, source))

    def _provenance(self, record: Record, source: str) -> Provenance:
        generated = source == "generate"
        return Provenance(seed_id=record.id, technique=self.technique,
                          template_id=self.template.id if generated else None,
                          template_version=self.template.version if generated else None,
                          model=self.model_name("teacher") if generated else None)
