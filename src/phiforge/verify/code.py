"""Code answers: run a candidate solution against its tests in the sandbox.

Why: Phi-4 validates synthetic code "through execution loops and tests" (report
§2.1, App. D), rejection-samples code solutions, and its PTS code oracle is "a
comprehensive test suite" (§4.3, footnote 6); HumanEval (§6) is the same check with
``check(candidate)``. Two test styles are supported:

* assert-style test code, appended after the solution;
* HumanEval-style: tests define ``check(candidate)``, and ``entry_point`` names the
  function under test, so the program ends with ``check(<entry_point>)``.

A test run passes only if the program exits 0 *and* prints a per-run random marker
that is written after the tests, so a solution that calls ``sys.exit(0)`` or
``os._exit(0)`` early does not pass. (A solution that reads its own source can
still find the marker: this guards against accidents, not adversaries.)
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from phiforge.verify.oracle import Verdict
from phiforge.verify.sandbox import SandboxConfig, SandboxJob, SandboxResult, run_many

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CodeTests:
    """The reference for :class:`CodeOracle`: test code, and the entry point for ``check(candidate)`` suites."""

    tests: str
    entry_point: str | None = None


def extract_code(response: str) -> str:
    """The last fenced Python block of a model response, else the response itself."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


def build_program(solution: str, tests: CodeTests, marker: str) -> str:
    """Solution, then tests, then the call (HumanEval style), then the pass marker."""
    parts = [solution.rstrip(), "", tests.tests.rstrip(), ""]
    if tests.entry_point:
        parts.append(f"check({tests.entry_point})")
    parts.append(f"print({marker!r})")
    return "\n".join(parts) + "\n"


def check_code(solution: str, tests: CodeTests | str, config: SandboxConfig | None = None) -> Verdict:
    """Run one solution against its tests; the verdict's reason says why it failed."""
    return check_code_many([solution], [tests], config=config)[0]


def check_code_many(solutions: Sequence[str], tests: Sequence[CodeTests | str], *,
                    config: SandboxConfig | None = None, workers: int | None = None) -> list[Verdict]:
    """Many solutions, run concurrently in the sandbox; syntax errors are caught before running."""
    tests = [t if isinstance(t, CodeTests) else CodeTests(t) for t in tests]
    if len(solutions) != len(tests):
        raise ValueError(f"{len(solutions)} solutions but {len(tests)} test suites")
    verdicts: list[Verdict | None] = [None] * len(solutions)
    jobs, slots, markers = [], [], []
    for i, (solution, suite) in enumerate(zip(solutions, tests)):
        marker = f"__phiforge_tests_passed_{secrets.token_hex(8)}__"
        program = build_program(solution, suite, marker)
        error = _syntax_error(program)
        if error is not None:
            verdicts[i] = Verdict(False, solution, error)
            continue
        jobs.append(SandboxJob(source=program))
        slots.append(i)
        markers.append(marker)
    for i, marker, result in zip(slots, markers, run_many(jobs, config=config, workers=workers)):
        verdicts[i] = _verdict(result, marker, solutions[i])
    return verdicts  # type: ignore[return-value]


def _syntax_error(program: str) -> str | None:
    """Compiling is safe (nothing runs) and saves a subprocess for unparsable code."""
    try:
        compile(program, "main.py", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes
        return f"syntax_error: {type(e).__name__}: {getattr(e, 'msg', e)} (line {getattr(e, 'lineno', '?')})"
    return None


def _verdict(result: SandboxResult, marker: str, solution: str) -> Verdict:
    passed = result.returncode == 0 and marker in result.stdout
    return Verdict(passed, solution, "passed" if passed else failure_reason(result))


def failure_reason(result: SandboxResult) -> str:
    """snake_case reason from a failed run: timeout, memory, assertion_failed, runtime_error: X, ..."""
    if result.status == "timeout":
        return "timeout"
    if result.status == "memory":
        return "memory"
    if result.status == "killed":
        return f"killed: {result.signal}"
    last = result.stderr.rstrip().splitlines()[-1] if result.stderr.strip() else ""
    exc = re.match(r"^([A-Za-z_][\w.]*)(?::|$)", last)
    name = exc.group(1).rsplit(".", 1)[-1] if exc else None
    if name == "AssertionError":
        return "assertion_failed"
    if name in ("SyntaxError", "IndentationError", "TabError"):
        return f"syntax_error: {last}"
    if name is not None:
        return f"runtime_error: {name}"
    return "exited_early" if result.returncode == 0 else f"exit_code: {result.returncode}"


@dataclass(frozen=True)
class CodeOracle:
    """Oracle for code: the response's last fenced block (or whole text) against :class:`CodeTests`."""

    config: SandboxConfig = field(default_factory=SandboxConfig)
    workers: int | None = None

    def check(self, response: str, reference: CodeTests | str) -> Verdict:
        return self.check_many([response], [reference])[0]

    def check_many(self, responses: Sequence[str], references: Sequence[CodeTests | str]) -> list[Verdict]:
        solutions = [extract_code(r) for r in responses]
        return check_code_many(solutions, references, config=self.config, workers=self.workers)
