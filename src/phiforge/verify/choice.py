"""Multiple-choice answers: read the letter a response chose and score it against a key.

Why: generic multiple-choice Q&A is the largest slice of Phi-4's PTS data (Table 7,
132,859 pairs; §4.3) and of the evaluations (MMLU, GPQA; §6). The paper does not
name the MC oracle; matching the chosen letter against the answer key is the obvious
choice, and how the letter is read decides the score, so the rules are explicit:
an explicit statement ("Answer: C", "the answer is (C)", ``\\boxed{C}``) wins, the
last one if there are several; otherwise the last standalone letter of the valid set
(bare, "(C)", "C)" or "C."), never a letter inside a word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from phiforge.errors import ConfigError
from phiforge.verify.oracle import Verdict


def _explicit_patterns(letters: str) -> list[re.Pattern]:
    L = f"[{re.escape(letters)}]"
    return [
        re.compile(rf"\\boxed\{{\s*(?:\\text\{{)?\s*\(?({L})\)?\s*\}}?\s*\}}"),
        re.compile(rf"(?i:answer|correct(?: option| choice)?)\s*(?:is|:|=)?\s*(?:\*\*)?\s*(?i:option\s+|choice\s+)?"
                   rf"[\(\[]?({L})[\)\]]?(?![\w'’])"),
    ]


def _loose_pattern(letters: str) -> re.Pattern:
    L = f"[{re.escape(letters)}]"
    return re.compile(rf"(?<![\w'’])[\(\[]?({L})(?:[\)\]]|(?![\w'’]))")


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The chosen letter (upper case) or None. See the module docstring for the rules."""
    letters = letters.upper()
    for pattern in _explicit_patterns(letters):
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    found = _loose_pattern(letters).findall(text)
    return found[-1].upper() if found else None


@dataclass(frozen=True, slots=True)
class ChoiceOracle:
    """Oracle for multiple choice: the reference is the key's letter (any case)."""

    letters: str = "ABCD"

    def __post_init__(self):
        if not self.letters or not self.letters.isalpha() or len(set(self.letters.upper())) != len(self.letters):
            raise ConfigError(f"ChoiceOracle.letters must be distinct letters such as 'ABCD', got {self.letters!r}")

    def check(self, response: str, reference: str) -> Verdict:
        key = reference.strip().strip("()").upper()
        if key not in self.letters.upper():
            raise ConfigError(f"answer key {reference!r} is not one of the choices {self.letters!r}")
        got = extract_choice(response, self.letters)
        if got is None:
            return Verdict(False, None, "no_answer")
        return Verdict(got == key, got, "match" if got == key else "mismatch")

    def check_many(self, responses: Sequence[str], references: Sequence[str]) -> list[Verdict]:
        return [self.check(r, k) for r, k in zip(responses, references, strict=True)]


def score_choices(responses: Sequence[str], keys: Sequence[str], letters: str = "ABCD") -> float:
    """Accuracy of ``responses`` against answer ``keys`` (unreadable answers count as wrong)."""
    verdicts = ChoiceOracle(letters).check_many(responses, keys)
    return sum(v.correct for v in verdicts) / len(verdicts) if verdicts else 0.0
