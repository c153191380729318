"""Keep only worked solutions whose every stated calculation holds (``verify.arithmetic``).

Rejection sampling against the final answer (Phi-4 report §2.2, App. D.2) lets
through solutions that land on the right number by wrong steps, or with no steps;
the report's accuracy principle (§2.1) wants every step valid. For arithmetic word
problems (the tiny recipe) each ``a op b = c`` is checkable, so this filter drops a
record unless all its equations are exact, there are at least ``min_equations``,
and the last one's result is the record's final answer.
"""

from __future__ import annotations

from pydantic import Field

from phiforge.dataflow.step import Filter
from phiforge.recipe.schema import Section
from phiforge.verify.arithmetic import check_arithmetic


class ArithmeticCheckConfig(Section):
    min_equations: int = Field(1, ge=0, description="fewer stated calculations: drop (too_few_equations)")
    answer_key: str | None = Field("answer", description="metadata key with the final answer to match the last "
                                   "result (None: do not check)")


class ArithmeticCheck(Filter):
    """Drop reasons: ``wrong_equation``, ``too_few_equations``, ``answer_not_last_result``."""

    def __init__(self, config: ArithmeticCheckConfig | None = None):
        super().__init__(name="arithmetic_check")
        self.config = config or ArithmeticCheckConfig()

    def keep(self, record):
        text = record.text or "\n".join(m["content"] for m in record.messages or [] if m["role"] == "assistant")
        answer = record.metadata.get(self.config.answer_key) if self.config.answer_key else None
        verdict = check_arithmetic(text, answer, self.config.min_equations)
        return True if verdict.correct else (False, verdict.reason)
