"""Instruction reversal for code, with a fidelity check (Phi-4 report §2.2 "Instruction reversal").

The paper takes code snippets from its code corpus, has a model write the
instruction (problem description) each one answers, and builds instruction -> code
pairs with the instruction first. To keep only faithful pairs it regenerates code from
the generated instruction and keeps pairs whose original and regenerated code agree
closely; the metric and threshold are not given (UNCONFIRMED). Ours:

1. ``code`` = the record's text (or ``metadata[code_key]``); a fenced block is taken
   out of it (``verify.code.extract_code``). None -> ``no_code_found``; not Python ->
   ``original_syntax_error``.
2. The teacher writes the instruction (``reversal_instruction``). Fenced blocks in it
   that define a function or class are cut (a leaked solution would fake fidelity;
   ``instruction_code_stripped``); nothing left -> ``empty_instruction``.
3. **Tests** come from ``metadata[tests_key]`` (a list of snippets, or one test
   program; ``metadata[entry_point_key]`` adds ``check(<entry_point>)`` for
   HumanEval-style suites) or are written by the teacher from the ORIGINAL code as
   JSON assert snippets (``reversal_tests``). A test set is valid only if the original
   code passes it: the original runs in the sandbox first, and any failing test drops
   the record (``original_fails_tests``; with ``prune_failing_tests`` the failing tests
   are removed instead, keeping at least ``min_tests``). No usable tests ->
   ``no_valid_tests`` (or, with ``require_tests=False``, fidelity from the AST alone).
4. The teacher regenerates code from the instruction alone (``reversal_regenerate``,
   greedy by default). Empty -> ``no_code_found``; unparsable -> ``regenerated_syntax_error``.
5. **Fidelity** = ``pass_weight * pass_rate + (1 - pass_weight) * ast_similarity``:
   ``pass_rate`` is the share of the valid tests the regenerated code passes;
   ``ast_similarity`` is ``difflib.SequenceMatcher.ratio`` over the token sequences of
   the two normalised ASTs (:func:`normalise_ast`: docstrings and comments removed,
   annotations dropped, user-defined names renamed ``v0, v1, ...`` in order of first
   use, builtins and attribute names kept). Below ``keep_threshold`` -> ``low_fidelity``.

Every test run is a separate sandboxed process (``verify.sandbox.run_many``, in
parallel), never in-process: a harness program execs the code as module
``solution`` (so ``if __name__ == "__main__"`` blocks do not run), then each test in
its own copy of the namespace under a per-test alarm, and reports per-test outcomes.

Kept pairs become ``messages`` (user = instruction, assistant = the ORIGINAL code)
with the fidelity parts in ``metadata``. Dropped ``low_fidelity`` and
``original_fails_tests`` records carry the diagnostics in ``metadata["instruction_reversal"]``.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Iterator

from pydantic import BaseModel, Field, field_validator, model_validator

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import get_template
from phiforge.recipe.schema import Section
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.synth.jsonask import ask_json
from phiforge.verify.code import extract_code, failure_reason
from phiforge.verify.sandbox import SandboxConfig, SandboxJob, run_many

TECHNIQUE = "instruction_reversal"


class InstructionReversalConfig(Section):
    """Settings of :class:`InstructionReversal` (Phi-4 report §2.2)."""

    code_key: str | None = Field(None, description="metadata key holding the code; None: the record's text")
    tests_key: str = Field("tests", description="metadata key of given tests (list of snippets or one program)")
    entry_point_key: str = Field("entry_point", description="metadata key naming the function a "
                                                            "HumanEval-style check(candidate) suite tests")
    num_tests: int = Field(5, ge=1, le=30, description="tests asked of the teacher when none are given")
    min_tests: int = Field(1, ge=1, description="fewest valid tests a pair needs")
    prune_failing_tests: bool = Field(False, description="drop the tests the original fails instead of the "
                                                         "record (the strict default: the whole set must pass)")
    require_tests: bool = Field(True, description="without valid tests drop the record (no_valid_tests); "
                                                  "False: fidelity = AST similarity alone")
    pass_weight: float = Field(0.7, ge=0, le=1, description=(
        "w in fidelity = w * pass_rate + (1 - w) * ast_similarity. UNCONFIRMED: behaviour matters most; "
        "the AST term separates a faithful re-implementation from one that merely passes thin tests"))
    keep_threshold: float = Field(0.8, ge=0, le=1, description=(
        "keep pairs with fidelity >= this. UNCONFIRMED ('high fidelity'): with w = 0.7 a pair passing every "
        "test needs AST similarity >= 1/3; one failing a test in ten needs >= 0.57"))
    fence_code: bool = Field(True, description="assistant reply is the code in a ```python fence")
    instruction_temperature: float = Field(0.3, ge=0, description="temperature of the instruction")
    regenerate_temperature: float = Field(0.0, ge=0, description="temperature of the regenerated code "
                                                                 "(greedy: fidelity of the instruction, not luck)")
    tests_temperature: float = Field(0.0, ge=0, description="temperature of the generated tests")
    instruction_max_tokens: int = Field(512, ge=1)
    code_max_tokens: int = Field(1024, ge=1)
    tests_max_tokens: int = Field(512, ge=1)
    max_reasks: int = Field(2, ge=0, description="re-asks of a tests reply that is not valid JSON")
    test_timeout_s: float = Field(2.0, gt=0, description="per-test (and per module import) alarm, seconds")
    sandbox_timeout_s: float = Field(20.0, gt=0, description="wall limit of one sandboxed run, seconds")
    sandbox_memory_mb: int = Field(512, ge=64, description="address space per sandboxed process, MiB")
    sandbox_workers: int | None = Field(None, ge=1, description="parallel sandbox runs; None: run_many's default")
    batch_size: int = Field(16, ge=1, description="records per model call")
    seed: int = Field(0, ge=0, description="sampling seed")

    @model_validator(mode="after")
    def _timeouts(self):
        if self.test_timeout_s >= self.sandbox_timeout_s:
            raise ValueError("test_timeout_s must be below sandbox_timeout_s (one run holds every test)")
        return self

    def sandbox(self) -> SandboxConfig:
        return SandboxConfig(timeout_s=self.sandbox_timeout_s, memory_mb=self.sandbox_memory_mb)


class GeneratedTests(BaseModel):
    """``{"tests": ["assert ...", ...]}``: snippets that parse and assert something (a bare list is accepted)."""

    tests: list[str]

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, value):
        if isinstance(value, list):
            value = {"tests": value}
        if isinstance(value, dict) and isinstance(value.get("tests"), str):
            value = {**value, "tests": [value["tests"]]}
        return value

    @field_validator("tests")
    @classmethod
    def _usable(cls, tests):
        usable = [t for t in (extract_code(t).strip() for t in tests) if "assert" in t and parses(t)]
        if not usable:
            raise ValueError("no test is valid Python containing an assert statement")
        return usable


# --------------------------------------------------------------------------- AST similarity

_BUILTINS = frozenset(dir(builtins))


class _Normaliser(ast.NodeTransformer):
    """Rename user-defined names v0, v1, ... in order of first use; drop docstrings and annotations."""

    def __init__(self):
        self.names: dict[str, str] = {}

    def canon(self, name: str | None) -> str | None:
        if name is None or name in _BUILTINS:
            return name
        return self.names.setdefault(name, f"v{len(self.names)}")

    def visit_Name(self, node):
        node.id = self.canon(node.id)
        return node

    def visit_arg(self, node):
        node.arg, node.annotation = self.canon(node.arg), None
        return node

    def visit_keyword(self, node):
        node.arg = self.canon(node.arg)
        return self.generic_visit(node)

    def _definition(self, node):
        node.name = self.canon(node.name)
        if hasattr(node, "returns"):
            node.returns = None
        return self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _definition

    def visit_ExceptHandler(self, node):
        node.name = self.canon(node.name)
        return self.generic_visit(node)

    def visit_Global(self, node):
        node.names = [self.canon(n) for n in node.names]
        return node

    visit_Nonlocal = visit_Global

    def visit_alias(self, node):
        node.asname = self.canon(node.asname)
        return node

    def visit_Expr(self, node):  # docstrings and other bare string statements carry no behaviour
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None
        return self.generic_visit(node)


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def normalise_ast(code: str) -> list[str]:
    """The normalised AST in pre-order: node types and leaf values (comments vanish in parsing).

    Load/Store contexts and punctuation are left out: they are shared by any two programs
    and would lift the similarity of unrelated code.
    """
    return list(_preorder(_Normaliser().visit(ast.parse(code))))


def _preorder(node: ast.AST) -> Iterator[str]:
    yield type(node).__name__
    for name, value in ast.iter_fields(node):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, ast.AST):
                if not isinstance(item, ast.expr_context):
                    yield from _preorder(item)
            elif item is not None and name != "type_comment":
                yield repr(item)


def ast_similarity(a: str, b: str) -> float:
    """``difflib`` ratio (2 * matching tokens / all tokens) of the two normalised ASTs, in [0, 1]."""
    return difflib.SequenceMatcher(None, normalise_ast(a), normalise_ast(b), autojunk=False).ratio()


# --------------------------------------------------------------------------- sandboxed tests

_HARNESS = """\
import json as _json, signal as _signal, sys as _sys
_SOURCE = {source!r}
_TESTS = {tests!r}
_LIMIT = {limit!r}


def _alarm(signum, frame):
    raise TimeoutError("over the per-test time limit")


def _main():
    namespace = {{"__name__": "solution"}}
    results = [0] * len(_TESTS)
    _signal.signal(_signal.SIGALRM, _alarm)
    try:
        _signal.setitimer(_signal.ITIMER_REAL, _LIMIT)
        exec(compile(_SOURCE, "solution.py", "exec"), namespace)
        _signal.setitimer(_signal.ITIMER_REAL, 0)
    except BaseException as e:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        _sys.stderr.write("solution failed: %r\\n" % (e,))
        return results
    for i, test in enumerate(_TESTS):
        try:
            _signal.setitimer(_signal.ITIMER_REAL, _LIMIT)
            exec(compile(test, "test_%d.py" % i, "exec"), dict(namespace))
            results[i] = 1
        except BaseException:
            pass
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
    return results


_outcome = _main()
_sys.stdout.flush()
_sys.stderr.write("\\n" + {marker!r} + _json.dumps(_outcome) + "\\n")
"""


def run_tests(codes: list[str], suites: list[list[str]],
              config: InstructionReversalConfig) -> list[tuple[list[int], str]]:
    """Per-test 0/1 outcomes of each code on its suite (one sandboxed process each, in parallel), and why."""
    markers = [f"__phiforge_reversal_{secrets.token_hex(8)}__" for _ in codes]
    jobs = [SandboxJob(source=_HARNESS.format(source=code, tests=tests, limit=config.test_timeout_s, marker=m))
            for code, tests, m in zip(codes, suites, markers)]
    results = run_many(jobs, config=config.sandbox(), workers=config.sandbox_workers)
    return [_outcomes(result, marker, len(tests)) for result, marker, tests in zip(results, markers, suites)]


def _outcomes(result, marker: str, n: int) -> tuple[list[int], str]:
    at = result.stderr.rfind(marker)
    if at < 0:
        return [0] * n, failure_reason(result)
    line = result.stderr[at + len(marker):].splitlines()[0]
    outcome = json.loads(line)
    return outcome, "passed" if all(outcome) else "tests_failed"


# --------------------------------------------------------------------------- the step

_FENCED = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
_DEFINES = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s", re.MULTILINE)


def strip_leaked_code(instruction: str) -> tuple[str, bool]:
    """The instruction without fenced blocks that define a function or class (a leaked solution)."""
    cut = _FENCED.sub(lambda m: "" if _DEFINES.search(m.group(1)) else m.group(0), instruction)
    return cut.strip(), cut != instruction


@dataclass
class _Pair:
    record: Record
    code: str
    instruction: str = ""
    tests: list[str] = field(default_factory=list)
    tests_source: str = "none"
    tests_total: int = 0
    regenerated: str = ""
    regenerated_results: list[int] = field(default_factory=list)
    regenerated_reason: str = ""
    outcome: str | None = None  # a drop reason, or None while alive


class InstructionReversal(GenerationStep):
    """Code -> instruction -> regenerated code; keep pairs whose regenerated code is faithful (§2.2)."""

    technique = TECHNIQUE

    def __init__(self, config: InstructionReversalConfig, models):
        super().__init__(models, batch_size=config.batch_size, seed=config.seed)
        self.config = config
        self.instruction_t, self.tests_t, self.regenerate_t = (
            get_template("reversal_instruction"), get_template("reversal_tests"), get_template("reversal_regenerate"))
        self.templates = (self.instruction_t, self.tests_t, self.regenerate_t)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            yield from self._run_batch(batch, ctx)

    def _run_batch(self, batch: list[Record], ctx: StepContext) -> Iterator[Record]:
        pairs = [self._pair(record) for record in batch]
        for stage in (self._write_instructions, self._collect_tests, self._check_original, self._regenerate,
                      self._check_regenerated):
            stage([p for p in pairs if p.outcome is None], ctx)
        for p in pairs:
            yield from self._finish(p, ctx)

    # ---- stages (each batched over the live pairs)

    def _pair(self, record: Record) -> _Pair:
        source = record.metadata.get(self.config.code_key) if self.config.code_key else record.text
        code = extract_code(source).strip() if isinstance(source, str) else ""
        pair = _Pair(record, code)
        if not code:
            pair.outcome = "no_code_found"
        elif not parses(code):
            pair.outcome = "original_syntax_error"
        return pair

    def _write_instructions(self, pairs: list[_Pair], ctx: StepContext) -> None:
        prompts = [user(ctx.render(self.instruction_t, code=p.code)) for p in pairs]
        params = self.params(temperature=self.config.instruction_temperature,
                             max_tokens=self.config.instruction_max_tokens)
        for p, completions in zip(pairs, self.sample(ctx, prompts, params) if pairs else []):
            p.instruction, stripped = strip_leaked_code(completions[0].text)
            if stripped:
                ctx.stat("instruction_code_stripped")
            if not p.instruction:
                p.outcome = "empty_instruction"

    def _collect_tests(self, pairs: list[_Pair], ctx: StepContext) -> None:
        ask = []
        for p in pairs:
            given = self._given_tests(p.record)
            if given:
                p.tests, p.tests_source = given, "metadata"
            else:
                ask.append(p)
        if ask:
            self._generate_tests(ask, ctx)
        for p in pairs:
            p.tests_total = len(p.tests)
            if len(p.tests) < self.config.min_tests:
                p.tests = []  # too few to judge behaviour
                if self.config.require_tests:
                    p.outcome = "no_valid_tests"

    def _given_tests(self, record: Record) -> list[str]:
        tests = record.metadata.get(self.config.tests_key)
        entry = record.metadata.get(self.config.entry_point_key)
        if isinstance(tests, str) and tests.strip():
            return [tests + (f"\ncheck({entry})" if entry else "")]
        if isinstance(tests, list):
            return [t for t in tests if isinstance(t, str) and t.strip()]
        return []

    def _generate_tests(self, pairs: list[_Pair], ctx: StepContext) -> None:
        prompts = [user(ctx.render(self.tests_t, code=p.code, count=self.config.num_tests)) for p in pairs]
        params = self.params(temperature=self.config.tests_temperature, max_tokens=self.config.tests_max_tokens)
        for p, answer in zip(pairs, ask_json(self, ctx, prompts, GeneratedTests, params,
                                             max_reasks=self.config.max_reasks)):
            if answer.value is not None:
                p.tests, p.tests_source = answer.value.tests[:self.config.num_tests], "generated"
            else:
                ctx.stat("tests_invalid_json")

    def _check_original(self, pairs: list[_Pair], ctx: StepContext) -> None:
        tested = [p for p in pairs if p.tests]
        for p, (outcome, _) in zip(tested, run_tests([p.code for p in tested], [p.tests for p in tested],
                                                     self.config) if tested else []):
            ctx.stat("sandbox_runs")
            if all(outcome):
                continue
            if self.config.prune_failing_tests:
                p.tests = [t for t, ok in zip(p.tests, outcome) if ok]
                ctx.stat("tests_pruned", len(outcome) - len(p.tests))
            if not self.config.prune_failing_tests or len(p.tests) < self.config.min_tests:
                p.outcome = "original_fails_tests"

    def _regenerate(self, pairs: list[_Pair], ctx: StepContext) -> None:
        prompts = [user(ctx.render(self.regenerate_t, instruction=p.instruction)) for p in pairs]
        params = self.params(temperature=self.config.regenerate_temperature, max_tokens=self.config.code_max_tokens)
        for p, completions in zip(pairs, self.sample(ctx, prompts, params) if pairs else []):
            p.regenerated = extract_code(completions[0].text).strip()
            if not p.regenerated:
                p.outcome = "no_code_found"
                ctx.stat("regenerated_empty")
            elif not parses(p.regenerated):
                p.outcome = "regenerated_syntax_error"

    def _check_regenerated(self, pairs: list[_Pair], ctx: StepContext) -> None:
        tested = [p for p in pairs if p.tests]
        for p, (outcome, reason) in zip(tested, run_tests([p.regenerated for p in tested],
                                                          [p.tests for p in tested], self.config) if tested else []):
            p.regenerated_results, p.regenerated_reason = outcome, reason
            ctx.stat("sandbox_runs")

    # ---- output

    def _fidelity(self, p: _Pair) -> dict:
        similarity = ast_similarity(p.code, p.regenerated)
        pass_rate = sum(p.regenerated_results) / len(p.tests) if p.tests else None
        w = self.config.pass_weight
        fidelity = similarity if pass_rate is None else w * pass_rate + (1 - w) * similarity
        return {"fidelity": round(fidelity, 4), "pass_rate": pass_rate, "ast_similarity": round(similarity, 4),
                "pass_weight": w, "keep_threshold": self.config.keep_threshold,
                "regenerated_results": p.regenerated_results, "regenerated_reason": p.regenerated_reason,
                "tests": p.tests, "tests_source": p.tests_source, "tests_total": p.tests_total,
                "tests_valid": len(p.tests), "regenerated_code": p.regenerated, "instruction": p.instruction}

    def _finish(self, p: _Pair, ctx: StepContext) -> Iterator[Record]:
        if p.outcome is not None:
            info = {"tests": p.tests, "tests_source": p.tests_source, "instruction": p.instruction}
            ctx.drop(self._annotated(p.record, info) if p.outcome == "original_fails_tests" else p.record, p.outcome)
            return
        parts = self._fidelity(p)
        if parts["fidelity"] < self.config.keep_threshold:
            ctx.drop(self._annotated(p.record, parts), "low_fidelity")
            return
        ctx.stat("pairs_kept")
        yield self._record(p, parts)

    def _record(self, p: _Pair, parts: dict) -> Record:
        answer = f"```python\n{p.code}\n```" if self.config.fence_code else p.code
        messages = [{"role": "user", "content": p.instruction}, {"role": "assistant", "content": answer}]
        meta = {k: v for k, v in parts.items() if k != "instruction"}
        prov = Provenance(seed_id=p.record.id, technique=TECHNIQUE, template_id=self.instruction_t.id,
                          template_version=self.instruction_t.version, model=self.model_name("teacher"))
        return Record(child_id(p.record.id, "reversal"), messages=messages, metadata=meta, provenance=prov)

    @staticmethod
    def _annotated(record: Record, info: dict) -> Record:
        return replace(record, metadata={**record.metadata, "instruction_reversal": info})
