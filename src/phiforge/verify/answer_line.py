"""Oracle for answers written on a marked line, e.g. ``Answer: 42`` (the tiny recipe's format).

Why a separate oracle: the math oracle reads the *last* number or boxed answer,
but a model that writes "Answer: 12" and then rambles "... 13" must be judged on
what it declared. The tiny recipe trains that format (``data.tinymath``), so its
evaluation, PTS (Phi-4 report §4.3: "comparison with the ground-truth answer")
and rejection sampling all read the first ``Answer:`` line, the same rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from phiforge.errors import ConfigError
from phiforge.verify.oracle import Verdict

DEFAULT_PATTERN = r"Answer:\s*(-?\d+)"


@dataclass(frozen=True)
class AnswerLineOracle:
    """Correct iff the first match of ``pattern`` (group 1) equals the reference as a string."""

    pattern: str = DEFAULT_PATTERN

    def __post_init__(self):
        try:
            compiled = re.compile(self.pattern)
        except re.error as e:
            raise ConfigError(f"AnswerLineOracle.pattern {self.pattern!r} is not a valid regex: {e}") from e
        if compiled.groups < 1:
            raise ConfigError(f"AnswerLineOracle.pattern {self.pattern!r} needs a capture group for the answer")
        object.__setattr__(self, "_regex", compiled)

    def check(self, response: str, reference) -> Verdict:
        m = self._regex.search(response)
        if m is None:
            return Verdict(False, None, "no_answer")
        same = m.group(1).strip() == str(reference).strip()
        return Verdict(same, m.group(1), "equivalent" if same else "not_equivalent")

    def check_many(self, responses: Sequence[str], references: Sequence) -> list[Verdict]:
        return [self.check(r, ref) for r, ref in zip(responses, references, strict=True)]
