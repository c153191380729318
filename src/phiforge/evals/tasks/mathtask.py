"""MATH as simple-evals runs it, judged by symbolic equivalence instead of a GPT-4 equality checker.

Why: MATH is one of the two benchmarks where phi-4 beats its teacher GPT-4o (80.4 vs
74.6; report §6, Table 1, simple-evals at temperature 0.5). simple-evals asks for a
last line "Answer: $ANSWER", reads the rest of the line after the first "Answer:", and
asks GPT-4-turbo whether that and the key are "equivalent after trivial
simplification". A paid judge makes scores hard to reproduce, so by default the
comparison is ``verify.math.answers_equivalent`` (math-verify with sympy, the same
test our PTS and rejection-sampling oracles use): ``0.5 = \\frac{1}{2}``,
``2\\sqrt{2} = \\sqrt{8}``, ``x = 2`` equals ``2``, units and ``\\boxed{}`` wrappers are
stripped ("5 cm" equals 5, in the spirit of the judge's "benefit of the doubt to
units"), intervals must agree on their endpoints and on open/closed ends.

``params = {"checker": ...}``:

* ``"symbolic"`` (default): the symbolic test alone.
* ``"llm"``: the symbolic test, then the grader backend's Yes/No judgement for the
  answers it rejected (a symbolic "equal" is trusted; the judge only rescues
  spellings the parser cannot read, such as words).
* ``"llm_only"``: the judge alone, as simple-evals (with your grader as the judge).

Our addition: a response without an "Answer:" line is read from its last
``\\boxed{}``; only a response with neither is an extraction failure.

Items: ``problem`` with ``answer``, or with ``solution`` (the key is its last
``\\boxed{}``, as in the MATH release); simple-evals' ``Question``/``Answer`` works too.
simple-evals' runner samples MATH 10 times; we default to 1 (``repeats`` to change it),
since more samples only narrow the interval on 5,000 problems.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from phiforge.backends.base import SamplingParams
from phiforge.errors import ConfigError, DataError
from phiforge.evals.task import Grade, Task
from phiforge.evals.tasks.simple_evals import answer_line, load_any_schema, pick, user_message
from phiforge.verify.math import answers_equivalent, last_boxed

SCHEMAS = (("problem", "answer"), ("problem", "solution"), ("Question", "Answer"))
CHECKERS = ("symbolic", "llm", "llm_only")

QUERY_TEMPLATE = """\
Solve the math problem below step by step. The last line of your reply should have the form Answer: $ANSWER \
(without quotes), where $ANSWER is the final answer to the problem.

{problem}

Remember to write the final answer on its own line after "Answer:"; there is no need for a \\boxed command."""

EQUALITY_TEMPLATE = """\
Below are two expressions, each an answer to a math problem. Decide whether they are equivalent, allowing \
only trivial simplifications.

Examples:

    Expression 1: $2x+3$
    Expression 2: $3+2x$
Yes

    Expression 1: 3/2
    Expression 2: 1.5
Yes

    Expression 1: $x^2+2x+1$
    Expression 2: $y^2+2y+1$
No

    Expression 1: $x^2+2x+1$
    Expression 2: $(x+1)^2$
Yes

    Expression 1: 3245/5
    Expression 2: 649
No
(equal in value, but showing it takes more than a trivial simplification)

    Expression 1: 2/(-3)
    Expression 2: -2/3
Yes
(a trivial simplification)

    Expression 1: 72 degrees
    Expression 2: 72
Yes
(units get the benefit of the doubt)

    Expression 1: 64
    Expression 2: 64 square feet
Yes
(units get the benefit of the doubt)

---

YOUR TASK

Reply with only "Yes" or "No" (without quotes), and no explanation.

    Expression 1: {expected}
    Expression 2: {given}"""

JUDGE_PARAMS = SamplingParams(n=1, temperature=0.0, max_tokens=16, logprobs=False)
_YES = re.compile(r"(?i)^\W*yes\b")


def extract_math_answer(response: str) -> str | None:
    """The first "Answer:" line's text; else (our addition) the last ``\\boxed{}``; else None."""
    found = answer_line(response)
    if found is None:
        boxed = last_boxed(response)
        found = boxed.strip() if boxed and boxed.strip() else None
    return found


class MATH(Task):
    """Competition mathematics (Hendrycks et al. 2021), 0-shot CoT, final "Answer:" line, symbolic check."""

    name = "math"
    description = "MATH, 0-shot chain of thought, 'Answer:' line, symbolic equivalence (simple-evals protocol)"
    max_tokens = 2048
    required_fields = SCHEMAS[0]
    known_params = ("checker",)

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        self.checker = self.param("checker", "symbolic")
        if self.checker not in CHECKERS:
            raise ConfigError(f"task 'math': checker must be one of {', '.join(CHECKERS)}, got {self.checker!r}")
        if self.checker != "symbolic" and self.grader is None:
            raise ConfigError(f"task 'math': checker = {self.checker!r} needs a grader model; "
                              "configure one or use checker = 'symbolic'")

    def load(self) -> list[dict]:
        items, schema = load_any_schema(self.options.path, self.name, SCHEMAS)
        return [self._canonical(item, schema) for item in items]

    def _canonical(self, item: dict, schema: tuple[str, ...]) -> dict:
        answer = last_boxed(str(item["solution"])) if "solution" in schema else pick(item, "answer", "Answer")
        if answer is None or not str(answer).strip():
            raise DataError(f"task 'math': item {item['id']!r}: no answer (empty, or no \\boxed{{}} in its solution)")
        return {"id": item["id"], "problem": str(pick(item, "problem", "Question")), "answer": str(answer).strip()}

    def prompt(self, item: dict, repeat: int):
        return user_message(QUERY_TEMPLATE.format(problem=item["problem"]))

    def grade_many(self, items: Sequence[dict], responses: Sequence[str], repeats: Sequence[int]) -> list[Grade]:
        found = [extract_math_answer(r) for r in responses]
        same: list[bool | None] = [None if f is None else self._symbolic(f, it["answer"])
                                   for f, it in zip(found, items, strict=True)]
        ask = [] if self.checker == "symbolic" else [i for i, f in enumerate(found) if f is not None and not same[i]]
        judged = dict(zip(ask, self._judge([items[i]["answer"] for i in ask], [found[i] for i in ask])))
        return [self._grade(found[i], judged.get(i, same[i]), "llm" if i in judged else "symbolic")
                for i in range(len(found))]

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        return self.grade_many([item], [response], [repeat])[0]

    def _symbolic(self, found: str, expected: str) -> bool | None:
        """The symbolic verdict; None under ``llm_only`` (the judge decides everything)."""
        return None if self.checker == "llm_only" else answers_equivalent(found, expected)

    def _judge(self, expected: list[str], given: list[str]) -> list[bool]:
        """The grader's Yes/No verdicts, one batched call."""
        if not expected:
            return []
        prompts = [user_message(EQUALITY_TEMPLATE.format(expected=e, given=g)) for e, g in zip(expected, given)]
        result = self.grader.sample(prompts, JUDGE_PARAMS)
        return [bool(_YES.match(c[0].text)) for c in result.completions]

    @staticmethod
    def _grade(found: str | None, same: bool | None, judge: str) -> Grade:
        if found is None:
            return Grade(0.0, None, "no_answer")
        return Grade(float(bool(same)), found, "correct" if same else "incorrect", {"judge": judge})
