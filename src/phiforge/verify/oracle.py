"""The one interface every answer checker shares, so Pivotal Token Search can take any.

Why: PTS estimates p(success | prefix) as the fraction of rollouts an *oracle* judges
correct (Phi-4 report §4.3: a test suite for code, the ground-truth answer for
math; an answer key for multiple choice). Rejection sampling (§2.1, App. D.2) and
evaluation (§6) ask the same question, so all of them take an :class:`Oracle`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a response is correct, what answer was read from it, and why."""

    correct: bool
    extracted: str | None
    """The answer (or code) found in the response; None if none was found."""
    reason: str
    """snake_case cause: 'equivalent', 'not_equivalent', 'no_answer', 'passed', 'assertion_failed', ..."""

    def __bool__(self) -> bool:
        return self.correct


@runtime_checkable
class Oracle(Protocol):
    """``check(response, reference) -> Verdict``; ``check_many`` for batches."""

    def check(self, response: str, reference: Any) -> Verdict: ...

    def check_many(self, responses: Sequence[str], references: Sequence[Any]) -> list[Verdict]: ...


def accuracy(verdicts: Sequence[Verdict]) -> float:
    """Fraction correct (0.0 for no verdicts): p(success) in PTS, accuracy in evals."""
    return sum(v.correct for v in verdicts) / len(verdicts) if verdicts else 0.0
