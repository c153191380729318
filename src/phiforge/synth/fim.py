"""Fill-in-the-middle (FIM) exercises with rejection-sampled chain-of-thought solutions.

Phi-4 report App. D.2 (recipe doc §3.3): to rejection-sample reasoning on free-form
text, remove a meaningful "middle" span so that the rest is the context and the
span the ground truth; the hard part is choosing spans that reasoning can
reconstruct. The report applies it to public code snippets; its example transcript
has Background, Reasoning and Final Guess sections, then a comparison with the
correct answer, a grade (e.g. 3 = partial) and a hint.

How we implement it:

* **Span choice (no model).** Code (Python, chosen with ``ast``): a whole
  single-line statement (assignment, return value, call, assert, raise) or a whole
  function body (docstring kept in the context); never arbitrary characters. Text:
  a sentence carrying a fact (a number or a proper noun), or a comma/semicolon
  clause carrying a number. Spans that are too short/long (``min_span_chars`` /
  ``max_span_chars``), trivial (whitespace, brackets, a pure comment, ``pass``) or
  leave too little context (``min_context_chars``) are skipped; spans with context
  on both sides are preferred; one is picked by a stable hash of (seed, record id).
  No candidate: ``no_suitable_span``.
* **Rejection sampling.** ``k`` teacher attempts per exercise in one batched call;
  each attempt's "Final Guess" is graded against the removed span. Code passes if
  it equals the span after normalisation (whitespace, comments) or as an AST, or
  (when the record has tests in metadata) if the program with the guess filled in
  passes them in the sandbox. Text passes if the normalised token F1 reaches
  ``text_f1_threshold`` and (``require_numbers``) every number of the span is in
  the guess. The best passing attempt (highest grade, then earliest) becomes the
  record ``user: exercise with [MISSING] / assistant: the chain of thought up to
  the final guess``. No pass: ``no_passing_attempt``.

Deviations: the report's grader is a model writing a comparison, a 1-5 grade and a
hint; we grade programmatically (exact, deterministic, free) and, for exercises no
attempt solved, run ``hint_rounds`` more rounds whose prompt carries a programmatic
hint (length and first words of the span, more words each round); the hint stays
in the kept record's user turn so the chain of thought matches its prompt.
Thresholds and ``k`` are not in the paper (UNCONFIRMED; see the config).
"""

from __future__ import annotations

import ast
import hashlib
import re
import string
import textwrap
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterator, Literal

from pydantic import Field

from phiforge.dataflow.records import Provenance, Record
from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import get_template
from phiforge.recipe.schema import Section
from phiforge.synth.base import GenerationStep, child_id, record_content, user
from phiforge.synth.rejection import sandbox_config, tests_of
from phiforge.verify.code import CodeTests, check_code_many

MISSING = "[MISSING]"
ContentKind = Literal["code", "text"]


class FillInTheMiddleConfig(Section):
    """Settings of :class:`FillInTheMiddle` (App. D.2 gives no numbers)."""

    content_kind: Literal["auto", "code", "text"] = Field("auto", description=(
        "'auto': code if the source parses as Python with at least one real statement, else text"))
    source_key: str | None = Field(None, description=(
        "metadata key holding the source; None: the text, else the last assistant message (its fenced "
        "code block for code)"))
    code_span_kinds: list[Literal["statement", "function_body"]] = Field(
        ["statement", "function_body"], min_length=1, description="code spans that may be removed")
    text_span_kinds: list[Literal["sentence", "clause"]] = Field(
        ["sentence", "clause"], min_length=1, description="text spans that may be removed")
    min_span_chars: int = Field(12, ge=1, description=(
        "fewest non-space characters of a span. UNCONFIRMED: shorter spans are trivia (a name, 'i += 1')"))
    max_span_chars: int = Field(400, ge=1, description=(
        "most characters of a span. UNCONFIRMED: about 10 lines of code or 3 sentences; longer spans are "
        "rarely reconstructible"))
    min_context_chars: int = Field(80, ge=0, description="fewest characters left around the span")
    k: int = Field(4, ge=1, le=64, description=(
        "attempts per exercise and round, in one call with n=k. UNCONFIRMED: the report shows one graded attempt"))
    hint_rounds: int = Field(1, ge=0, le=5, description=(
        "extra rounds with a hint for exercises no attempt solved (the report's transcript ends with a hint)"))
    hint_words: int = Field(3, ge=0, description="leading words of the span each hint round reveals (never all)")
    text_f1_threshold: float = Field(0.6, gt=0.0, le=1.0, description=(
        "token F1 a text guess needs. UNCONFIRMED: 0.6 accepts a paraphrase of the span, not a different fact"))
    require_numbers: bool = Field(True, description="a text guess must contain every number of the span")
    tests_key: str = Field("tests", description="metadata key of tests for behaviour checks of code guesses")
    entry_point_key: str = Field("entry_point", description="metadata key of a HumanEval-style entry point")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="UNCONFIRMED: diverse attempts")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(768, ge=1, description="per attempt: background, reasoning and the guess")
    sandbox_timeout_s: float = Field(10.0, gt=0.0)
    sandbox_memory_mb: int = Field(512, ge=64)
    sandbox_workers: int | None = Field(None, ge=1)


# --------------------------------------------------------------------------- spans


@dataclass(frozen=True)
class Span:
    """Characters ``[start, end)`` of the source to remove; ``indent`` is kept before the marker (code lines)."""

    start: int
    end: int
    kind: str
    indent: str = ""

    def answer(self, source: str) -> str:
        text = source[self.start:self.end]
        return textwrap.dedent(text).strip("\n") if self.indent or "\n" in text else text.strip()

    def context(self, source: str) -> str:
        return source[:self.start] + self.indent + MISSING + source[self.end:]

    def filled(self, source: str, guess: str) -> str:
        body = textwrap.indent(textwrap.dedent(guess).strip("\n"), self.indent)
        return source[:self.start] + body + source[self.end:]


def looks_like_code(source: str) -> bool:
    """Python with at least one statement that is not a bare name or constant (prose never parses)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, (ast.Constant, ast.Name))) for n in tree.body)


def _line_offsets(source: str) -> list[int]:
    offsets, pos = [0], 0
    for line in source.splitlines(keepends=True):
        pos += len(line)
        offsets.append(pos)
    return offsets


def _line_span(source: str, offsets: list[int], first: int, last: int, kind: str) -> Span:
    """Whole lines ``first..last`` (1-based), without the final newline."""
    start, end = offsets[first - 1], offsets[last]
    line = source[start:offsets[first]]
    end -= len(source[start:end]) - len(source[start:end].rstrip("\r\n"))
    return Span(start, end, kind, line[:len(line) - len(line.lstrip())])


_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Expr, ast.Assert, ast.Raise, ast.Delete)


def _meaningful_statement(node: ast.AST) -> bool:
    if not isinstance(node, _SIMPLE) or node.lineno != node.end_lineno:
        return False
    if isinstance(node, ast.Expr):
        return isinstance(node.value, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom))
    return getattr(node, "value", True) is not None  # "return" / "x: int" without a value


def _alone_on_lines(lines: list[str], node: ast.stmt, last: ast.stmt) -> bool:
    """Nothing but indentation before ``node`` and nothing but a comment after ``last`` on their lines."""
    before = lines[node.lineno - 1][:node.col_offset]
    after = lines[last.end_lineno - 1][last.end_col_offset:].strip()
    return not before.strip() and (not after or after.startswith("#"))


def _body_of(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.stmt]:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring stays in the context: it is the best clue
    return body


def code_spans(source: str, kinds: list[str]) -> list[Span]:
    """Candidate statement and function-body spans of Python ``source`` (empty if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines, offsets, spans = source.splitlines(), _line_offsets(source), []
    for node in ast.walk(tree):
        if "statement" in kinds and _meaningful_statement(node) and _alone_on_lines(lines, node, node):
            spans.append(_line_span(source, offsets, node.lineno, node.lineno, "statement"))
        if "function_body" in kinds and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = _body_of(node)
            if not body:
                continue
            first = min([body[0].lineno] + [d.lineno for d in getattr(body[0], "decorator_list", [])])
            if body[-1].end_lineno > first and _alone_on_lines(lines, body[0], body[-1]):
                spans.append(_line_span(source, offsets, first, body[-1].end_lineno, "function_body"))
    return spans


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n")
_FACT = re.compile(r"\d|(?<=\s)[A-Z][a-z]")
_CLAUSE_BREAK = re.compile(r"[,;:]\s+")


def _segments(text: str, start: int, pattern: re.Pattern) -> list[tuple[int, int]]:
    """Stripped pieces of ``text`` between matches of ``pattern``, as absolute offsets."""
    out, pos = [], 0
    for m in list(pattern.finditer(text)) + [None]:
        stop = m.start() if m else len(text)
        piece = text[pos:stop]
        lead = len(piece) - len(piece.lstrip())
        if piece.strip():
            out.append((start + pos + lead, start + pos + lead + len(piece.strip())))
        pos = m.end() if m else len(text)
    return out


def text_spans(source: str, kinds: list[str]) -> list[Span]:
    """Sentences carrying a fact (number or proper noun) and clauses carrying a number."""
    spans = []
    for start, end in _segments(source, 0, _SENTENCE_BREAK):
        sentence = source[start:end]
        if "sentence" in kinds and _FACT.search(sentence):
            spans.append(Span(start, end, "sentence"))
        if "clause" in kinds:
            for a, b in _segments(sentence, start, _CLAUSE_BREAK):
                b -= len(source[a:b]) - len(source[a:b].rstrip(".!?"))
                if (a, b) != (start, end) and b > a and re.search(r"\d", source[a:b]):
                    spans.append(Span(a, b, "clause"))
    return spans


_TRIVIAL_CODE = {"pass", "return", "...", "break", "continue", "return none", "return true", "return false",
                 "return self", "raise", "else:"}


def is_trivial(span_text: str, kind: ContentKind) -> bool:
    """Whitespace, brackets/punctuation only, a pure comment, or a do-nothing statement."""
    s = span_text.strip()
    if not s or re.fullmatch(r"[\W_]*", s):
        return True
    lines = [line.strip() for line in s.splitlines() if line.strip()]
    if kind == "code":
        return all(line.startswith("#") for line in lines) or s.lower() in _TRIVIAL_CODE
    return False


# --------------------------------------------------------------------------- grading


@dataclass(frozen=True)
class Grade:
    """One attempt's grade: ``score`` in [0, 1], how it was decided, and whether it passes."""

    score: float
    method: str
    passed: bool


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def text_tokens(s: str) -> list[str]:
    """SQuAD-style tokens: lower case, no punctuation or articles."""
    s = s.lower().translate(str.maketrans("", "", string.punctuation.replace(".", "")))
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)  # keep decimal points
    return _ARTICLES.sub(" ", s).split()


def token_f1(guess: list[str], gold: list[str]) -> float:
    common = sum((Counter(guess) & Counter(gold)).values())
    if not common:
        return 0.0
    precision, recall = common / len(guess), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def grade_text(guess: str, answer: str, threshold: float, require_numbers: bool = True) -> Grade:
    g, a = text_tokens(guess), text_tokens(answer)
    if g == a and a:
        return Grade(1.0, "exact", True)
    f1 = round(token_f1(g, a), 4)
    numbers = {n.replace(",", "") for n in _NUMBER.findall(answer)}
    numbers_ok = not require_numbers or numbers <= {n.replace(",", "") for n in _NUMBER.findall(guess)}
    return Grade(f1, "token_f1", f1 >= threshold and numbers_ok)


def normalize_code(code: str) -> str:
    """Dedented, comment lines and blank lines dropped, whitespace runs collapsed."""
    lines = textwrap.dedent(code).splitlines()
    return "\n".join(" ".join(line.split()) for line in lines if line.strip() and not line.strip().startswith("#"))


def _ast_dump(code: str) -> str | None:
    try:
        return ast.dump(ast.parse(textwrap.dedent(code).strip("\n")))
    except (SyntaxError, ValueError):
        return None


def grade_code(guess: str, answer: str) -> Grade:
    """Exact after normalisation, or the same AST; else code-token F1 (not passing)."""
    if normalize_code(guess) == normalize_code(answer):
        return Grade(1.0, "exact", True)
    dump = _ast_dump(answer)
    if dump is not None and dump == _ast_dump(guess):
        return Grade(1.0, "ast_equal", True)
    tok = lambda s: re.findall(r"\w+|[^\w\s]", s)  # noqa: E731
    return Grade(round(token_f1(tok(guess), tok(answer)), 4), "token_f1", False)


_GUESS_HEAD = re.compile(r"(?im)^[ \t>#*_-]*final\s+guess\b[*_ \t]*:?[*_ \t]*")
_FENCED = re.compile(r"\s*```[\w+-]*[ \t]*\n(.*?)```", re.DOTALL)
_PARAGRAPH = re.compile(r"\s*(.*?)(?:\n[ \t]*\n|$)", re.DOTALL)


def parse_attempt(text: str, kind: ContentKind) -> tuple[str | None, str]:
    """(final guess or None, the attempt cut right after its final guess)."""
    heads = list(_GUESS_HEAD.finditer(text))
    if not heads:
        return None, text.strip()
    rest_at = heads[-1].end()
    block = _FENCED.match(text, rest_at)
    if block is None:
        block = _PARAGRAPH.match(text, rest_at)
    guess = block.group(1)
    guess = guess.strip("\n").rstrip() if kind == "code" else guess.strip().strip("\"'`“”").strip()
    return (guess if guess.strip() and guess.strip() != MISSING else None), text[:block.end()].rstrip()


# --------------------------------------------------------------------------- the step


@dataclass
class Exercise:
    """One record's exercise and the state of its rejection sampling."""

    record: Record
    kind: ContentKind
    source: str
    span: Span
    tests: CodeTests | None
    attempts: int = 0
    passing: int = 0
    best_score: float = 0.0
    solution: dict | None = None

    @property
    def answer(self) -> str:
        return self.span.answer(self.source)


class FillInTheMiddle(GenerationStep):
    """FIM exercises from text or code, solved by rejection-sampled chain of thought (Phi-4 report App. D.2).

    ``FillInTheMiddle(FillInTheMiddleConfig(...), models)``; the ``teacher`` role attempts.
    """

    technique = "fill_in_the_middle"

    def __init__(self, config: FillInTheMiddleConfig, models, *, batch_size: int = 16, seed: int = 0):
        super().__init__(models, batch_size=batch_size, seed=seed)
        self.config = config
        self.code_template = get_template("fim_solve_code")
        self.text_template = get_template("fim_solve_text")
        self.templates = (self.code_template, self.text_template)

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for batch in self.batches(records):
            yield from self._run_batch(batch, ctx)

    # ---- exercise construction

    def source_of(self, record: Record) -> str | None:
        return record_content(record, self.config.source_key)

    def exercise(self, record: Record, ctx: StepContext) -> Exercise | None:
        """The record's exercise, or None when it has no suitable span."""
        source = self.source_of(record)
        if source is None:
            return None
        kind = self._kind(source)
        if kind == "code" and "```" in source:
            source = _FENCED.search(source).group(1) if _FENCED.search(source) else source
        span = self.choose_span(record.id, source, kind)
        if span is None:
            return None
        ctx.stat(f"spans_{kind}_{span.kind}")
        tests = tests_of(record, self.config.tests_key, self.config.entry_point_key) if kind == "code" else None
        return Exercise(record, kind, source, span, tests)

    def _kind(self, source: str) -> ContentKind:
        if self.config.content_kind != "auto":
            return self.config.content_kind
        fenced = _FENCED.search(source)
        return "code" if looks_like_code(fenced.group(1) if fenced else source) else "text"

    def choose_span(self, record_id: str, source: str, kind: ContentKind) -> Span | None:
        """A suitable span, picked by a stable hash of (seed, record id) among the preferred candidates."""
        cfg = self.config
        found = code_spans(source, cfg.code_span_kinds) if kind == "code" else text_spans(source, cfg.text_span_kinds)
        ok = list({(s.start, s.end): s for s in found if self._suitable(s, source, kind)}.values())
        inside = [s for s in ok if source[:s.start].strip() and source[s.end:].strip()]
        pool = sorted(inside or ok, key=lambda s: (s.start, s.end))
        if not pool:
            return None
        digest = hashlib.sha1(f"{self.seed}:{record_id}".encode()).hexdigest()
        return pool[int(digest, 16) % len(pool)]

    def _suitable(self, span: Span, source: str, kind: ContentKind) -> bool:
        cfg = self.config
        text = source[span.start:span.end]
        content = "".join(normalize_code(text).split()) if kind == "code" else "".join(text.split())
        return (len(content) >= cfg.min_span_chars and len(text.strip()) <= cfg.max_span_chars
                and not is_trivial(text, kind)
                and len(source) - len(text) >= cfg.min_context_chars)

    # ---- rejection sampling

    def hint(self, ex: Exercise, round_: int) -> str:
        """Round 0: none. Then the span's size and its first ``hint_words * round`` words (never all)."""
        if round_ == 0:
            return ""
        words = ex.answer.split()
        shown = min(self.config.hint_words * round_, len(words) // 2)
        start = f' and starts with "{" ".join(words[:shown])} ..."' if shown else ""
        size = (f"{len(ex.answer.splitlines())} line(s) of code" if ex.kind == "code"
                else f"about {len(words)} words")
        return f"\nHint: the missing part is {size}{start}.\n"

    def _prompt(self, ctx: StepContext, ex: Exercise, round_: int) -> str:
        template = self.code_template if ex.kind == "code" else self.text_template
        return ctx.render(template, context=ex.span.context(ex.source), hint=self.hint(ex, round_)).rstrip() + "\n"

    def _run_batch(self, batch: list[Record], ctx: StepContext) -> Iterator[Record]:
        exercises = []
        for record in batch:
            ex = self.exercise(record, ctx)
            if ex is None:
                ctx.drop(record, "no_suitable_span")
            else:
                exercises.append(ex)
        pending = exercises
        for round_ in range(self.config.hint_rounds + 1):
            if not pending:
                break
            pending = self._round(pending, round_, ctx)
        for ex in exercises:
            yield from self._finish(ex, ctx)

    def _round(self, pending: list[Exercise], round_: int, ctx: StepContext) -> list[Exercise]:
        """One batched round of ``k`` attempts per unsolved exercise; returns the still-unsolved ones."""
        cfg = self.config
        prompts = [self._prompt(ctx, ex, round_) for ex in pending]
        params = self.params(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
        samples = self.sample(ctx, [user(p) for p in prompts], params)
        parsed = [[parse_attempt(c.text, ex.kind) for c in comps] for ex, comps in zip(pending, samples)]
        grades = self.grade_all(pending, [[g for g, _ in attempts] for attempts in parsed])
        for ex, prompt, attempts, gs in zip(pending, prompts, parsed, grades):
            self._take_best(ex, prompt, attempts, gs, round_, ctx)
        return [ex for ex in pending if ex.solution is None]

    def grade_all(self, exercises: list[Exercise], guesses: list[list[str | None]]) -> list[list[Grade | None]]:
        """Grades of every guess (None: no final guess); code guesses with tests run in one sandbox batch."""
        cfg = self.config
        grades = [[None if g is None else grade_code(g, ex.answer) if ex.kind == "code"
                   else grade_text(g, ex.answer, cfg.text_f1_threshold, cfg.require_numbers) for g in gs]
                  for ex, gs in zip(exercises, guesses)]
        runs = [(i, j) for i, ex in enumerate(exercises) if ex.tests is not None
                for j, g in enumerate(grades[i]) if g is not None and not g.passed]
        if runs:
            programs = [exercises[i].span.filled(exercises[i].source, guesses[i][j]) for i, j in runs]
            verdicts = check_code_many(programs, [exercises[i].tests for i, _ in runs],
                                       config=sandbox_config(cfg.sandbox_timeout_s, cfg.sandbox_memory_mb),
                                       workers=cfg.sandbox_workers)
            for (i, j), v in zip(runs, verdicts):
                if v.correct:
                    grades[i][j] = Grade(1.0, "tests_passed", True)
        return grades

    def _take_best(self, ex: Exercise, prompt: str, attempts: list[tuple[str | None, str]],
                   grades: list[Grade | None], round_: int, ctx: StepContext) -> None:
        ex.attempts += len(attempts)
        ctx.stat("attempts", len(attempts))
        ctx.stat("attempts_without_final_guess", sum(g is None for g in grades))
        passing = [j for j, g in enumerate(grades) if g is not None and g.passed]
        ex.passing += len(passing)
        ctx.stat("passing_attempts", len(passing))
        ex.best_score = max([ex.best_score] + [g.score for g in grades if g is not None])
        if passing:
            j = max(passing, key=lambda j: (grades[j].score, -j))
            ex.solution = {"prompt": prompt, "attempt": attempts[j][1], "guess": attempts[j][0],
                           "grade": grades[j], "round": round_, "attempt_index": j, "hint": self.hint(ex, round_)}

    def _finish(self, ex: Exercise, ctx: StepContext) -> Iterator[Record]:
        meta = dict(ex.record.metadata) | {
            "content_kind": ex.kind, "span_kind": ex.span.kind, "missing_span": ex.answer,
            "span_start": ex.span.start, "span_end": ex.span.end, "attempts": ex.attempts,
            "passing_attempts": ex.passing}
        sol = ex.solution
        if sol is None:
            ctx.drop(replace(ex.record, metadata=meta | {"best_grade": ex.best_score}), "no_passing_attempt")
            return
        ctx.stat(f"solved_round_{sol['round']}")
        meta |= {"grade": sol["grade"].score, "grade_method": sol["grade"].method, "final_guess": sol["guess"],
                 "hint": sol["hint"].strip() or None, "round": sol["round"], "attempt_index": sol["attempt_index"]}
        template = self.code_template if ex.kind == "code" else self.text_template
        messages = [{"role": "user", "content": sol["prompt"].strip()},
                    {"role": "assistant", "content": sol["attempt"]}]
        prov = Provenance(seed_id=ex.record.id, technique=self.technique, template_id=template.id,
                          template_version=template.version, model=self.model_name("teacher"), round=sol["round"])
        yield Record(child_id(ex.record.id, "fim"), messages=messages, metadata=meta, provenance=prov)
