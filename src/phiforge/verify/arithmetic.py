"""Check every stated calculation in a worked solution ("12 + 7 = 19.").

Why: rejection sampling against the final answer alone (Phi-4 report §2.2, App.
D.2) keeps solutions that reach the right number by wrong steps or with no steps
at all; the report's accuracy principle (§2.1: "proofs are valid, explanations
match established knowledge") asks more. For arithmetic word problems every
intermediate step is checkable: each ``a op b = c`` with integers or decimals and
``+ - * / x ×`` must be exact, there must be at least ``min_equations`` of them,
and (if given) the final answer must equal the last computed result.
"""

from __future__ import annotations

import re
from fractions import Fraction

from phiforge.verify.oracle import Verdict

_NUM = r"-?\d+(?:\.\d+)?"
EQUATION = re.compile(rf"({_NUM})\s*([-+*/x×÷])\s*({_NUM})\s*=\s*({_NUM})")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "x": lambda a, b: a * b,
        "×": lambda a, b: a * b, "/": lambda a, b: a / b if b else None, "÷": lambda a, b: a / b if b else None}


def equations(text: str) -> list[tuple[Fraction, str, Fraction, Fraction]]:
    """Every ``a op b = c`` in ``text``, in order, as exact fractions."""
    return [(Fraction(a), op, Fraction(b), Fraction(c)) for a, op, b, c in EQUATION.findall(text)]


def check_arithmetic(text: str, final_answer: str | int | None = None, min_equations: int = 1) -> Verdict:
    """``correct`` iff every equation holds, there are enough, and the last result is the answer."""
    found = equations(text)
    if len(found) < min_equations:
        return Verdict(False, None, "too_few_equations")
    for a, op, b, c in found:
        if _OPS[op](a, b) != c:
            return Verdict(False, f"{a} {op} {b} = {c}", "wrong_equation")
    last = found[-1][3]
    if final_answer is not None and Fraction(str(final_answer)) != last:
        return Verdict(False, str(last), "answer_not_last_result")
    return Verdict(True, str(last), "equations_correct")
