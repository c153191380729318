"""Math answers: extract the final answer, normalise it, and decide equivalence.

Why: Phi-4's math data is rejection-sampled against ground truth or a plurality
answer (report §2.1, App. D.2), its PTS math oracle is "comparison with the
ground-truth answer" (§4.3, footnote 6), and MATH/GSM8K scores (§6) are the same
test. A checker that says "0.5 != \\frac{1}{2}" throws away good samples and flips
PTS pivots, so equivalence is decided symbolically:

1. ``math-verify`` (``pip install 'phiforge[verify]'``): LaTeX/expression parsing to
   sympy plus its comparison rules (sets, intervals, equations, matrices, ...).
2. Without it, a small sympy path (fractions, radicals, powers, pi) with a numeric
   check.
3. Then an exact comparison of the normalised strings.

Thread safety: math-verify bounds each parse/compare with ``signal.alarm``, which only
works in the main thread; from worker threads we pass ``timeout=None`` (its
documented option) and bound the work ourselves by refusing over-long answers and
huge exponents before parsing. Parses and verdicts are cached (``lru_cache``), so the
thousands of repeated references in PTS and rejection sampling parse once.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from phiforge.errors import ConfigError
from phiforge.verify.oracle import Verdict

Extractor = Literal["boxed", "answer_is", "hash", "last_number"]
Backend = Literal["auto", "math_verify", "sympy", "string"]
DEFAULT_EXTRACTORS: tuple[Extractor, ...] = ("boxed", "answer_is", "hash", "last_number")
MAX_ANSWER_CHARS = 300
"""Longer "answers" are compared as strings only: a parse of a paragraph is slow and meaningless."""
INSTALL_HINT = "pip install 'phiforge[verify]'  (math-verify with its ANTLR LaTeX parser)"

# --------------------------------------------------------------------------- extraction


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (6 if text.startswith("\\boxed", start) else 5)  # past the command name
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] != "{":  # "\boxed 5"
        m = re.match(r"[^\s$.,]+", text[i:])
        return m.group(0) if m else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None  # unbalanced


_ANSWER_IS = re.compile(r"(?i)(?:final answer|the answer)\s*(?:is|:|=)\s*:?\s*(.+?)(?:\n|$)")
_HASH = re.compile(r"####\s*(.+?)\s*(?:\n|$)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def extract_answer(text: str, extractors: Sequence[Extractor] = DEFAULT_EXTRACTORS) -> str | None:
    """The final answer in ``text`` by the first extractor that finds one, else None.

    ``boxed``: last ``\\boxed{}``; ``answer_is``: last "the answer is X"; ``hash``:
    GSM8K's "#### X"; ``last_number``: the last number in the text.
    """
    for name in extractors:
        found = _EXTRACTORS[name](text)
        if found is not None and found.strip():
            return found.strip()
    return None


def _answer_is(text: str) -> str | None:
    found = _ANSWER_IS.findall(text)
    if not found:
        return None
    answer = found[-1].strip()
    inner = last_boxed(answer)
    if inner is not None:
        return inner
    # "The answer is 6. So, the steps..." -> "6": the sentence ends at ". " (not at "3.5")
    answer = _SENTENCE_END.split(answer, maxsplit=1)[0]
    return answer.rstrip(".").strip("$ ")


_SENTENCE_END = re.compile(r"\.\s|\s+(?:so|because|since|which|as)\b", re.IGNORECASE)


def _hash(text: str) -> str | None:
    found = _HASH.findall(text)
    return found[-1] if found else None


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1].rstrip(",") if found else None


_EXTRACTORS = {"boxed": last_boxed, "answer_is": _answer_is, "hash": _hash, "last_number": _last_number}

# --------------------------------------------------------------------------- normalisation

UNITS = ("cm", "mm", "km", "m", "kg", "g", "mg", "lb", "lbs", "oz", "s", "sec", "seconds", "second", "min",
         "minutes", "minute", "hours", "hour", "hrs", "days", "day", "weeks", "years", "year", "dollars", "dollar",
         "cents", "cent", "units", "unit", "degrees", "degree", "inches", "inch", "feet", "foot", "ft", "meters",
         "meter", "miles", "mile", "mph", "liters", "liter", "ml", "L", "sq", "square", "cubic", "points",
         "people", "students", "apples", "marbles", "pages", "books", "items", "pounds", "ounces", "grams",
         "kilograms", "centimeters", "millimeters", "kilometers", "yards", "yard", "gallons", "percent")
_UNIT_RE = re.compile(r"(?<=[\d}).])(?:\s*\b(?:" + "|".join(UNITS) + r")\b(?:\^\{?[23]\}?)?\.?)+\s*$")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def normalize_answer(answer: str) -> str:
    """A canonical spelling: no wrappers, spacing macros, units, %, $ or thousands commas."""
    s = answer.strip()
    inner = last_boxed(s) if s.startswith(("\\boxed", "\\fbox")) else None
    s = inner if inner is not None else s
    s = s.strip().strip("$").strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", "")
    s = re.sub(r"\\left\b|\\right\b|\\!|\\,|\\;|\\:|\\quad|\\qquad|\\displaystyle", "", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    s = _TEXT_CMD.sub(lambda m: m.group(1), s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = _UNIT_RE.sub("", s).strip()
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=[^=])", "", s)  # "x = 5" -> "5"
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


# --------------------------------------------------------------------------- equivalence


def answers_equivalent(predicted: str, reference: str, backend: Backend = "auto") -> bool:
    """Whether two (already extracted) answers are mathematically the same."""
    return _equivalent(normalize_answer(predicted), normalize_answer(reference), _pick_backend(backend))


@functools.lru_cache(maxsize=65536)
def _equivalent(pred: str, ref: str, backend: str) -> bool:
    if not pred or not ref:
        return False
    if pred == ref or pred.replace(" ", "") == ref.replace(" ", ""):
        return True
    if not (_safe_to_parse(pred) and _safe_to_parse(ref)) or backend == "string":
        return False
    if backend == "math_verify":
        return _math_verify_equal(pred, ref)
    pair = _collections(pred, ref)
    if pair is not None:
        return _collections_equal(*pair, backend)
    return _sympy_equal(pred, ref)


_COLLECTION = re.compile(r"^(\\\{|[(\[])(.*)(\\\}|[)\]])$")


def _collections(pred: str, ref: str):
    """(open, items, close) for both when both are tuples, intervals or sets; else None."""
    a, b = _COLLECTION.match(pred), _COLLECTION.match(ref)
    if not a or not b or "," not in pred + ref:
        return None
    split = lambda m: (m.group(1), [x.strip() for x in m.group(2).split(",")], m.group(3))  # noqa: E731
    return split(a), split(b)


def _collections_equal(a, b, backend: str) -> bool:
    """Same brackets and element-wise equal items; a set's items in any order."""
    (open_a, items_a, close_a), (open_b, items_b, close_b) = a, b
    if (open_a, close_a) != (open_b, close_b) or len(items_a) != len(items_b):
        return False
    if open_a == "\\{":
        rest = list(items_b)
        for x in items_a:
            match = next((y for y in rest if _equivalent(x, y, backend)), None)
            if match is None:
                return False
            rest.remove(match)
        return True
    return all(_equivalent(x, y, backend) for x, y in zip(items_a, items_b))


def _safe_to_parse(s: str) -> bool:
    """Refuse inputs whose parse or comparison could run for minutes (no timeout off the main thread)."""
    if len(s) > MAX_ANSWER_CHARS:
        return False
    exponents = re.findall(r"(?:\^|\*\*)\s*\{?\s*(-?\d+)", s)
    return all(len(e.lstrip("-")) <= 4 for e in exponents) and s.count("^") + s.count("**") <= 8


def _pick_backend(backend: Backend) -> str:
    if backend == "auto":
        return "math_verify" if _have("math_verify") else "sympy" if _have("sympy") else "string"
    if backend not in ("math_verify", "sympy", "string"):
        raise ConfigError(f"math backend must be auto|math_verify|sympy|string, got {backend!r}")
    if backend != "string" and not _have(backend):
        raise ConfigError(f"math backend {backend!r} is not installed; {INSTALL_HINT}")
    return backend


@functools.lru_cache(maxsize=None)
def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _timeout() -> int | None:
    """math-verify's signal-based timeout works only in the main thread."""
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=65536)
def _mv_parse(s: str, timeout: int | None):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its one-off "timeout disabled" warning
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return tuple(parse(f"${s}$", extraction_config=config, parsing_timeout=timeout))


def _math_verify_equal(pred: str, ref: str) -> bool:
    from math_verify import verify

    timeout = _timeout()
    gold, target = _mv_parse(ref, timeout), _mv_parse(pred, timeout)
    if not gold or not target:
        return False
    return bool(verify(list(gold), list(target), timeout_seconds=timeout))


def _sympy_equal(pred: str, ref: str) -> bool:
    """The fallback without math-verify: plain-expression parse, then exact or numeric equality."""
    a, b = _sympy_parse(pred), _sympy_parse(ref)
    if a is None or b is None:
        return False
    try:
        import sympy

        if sympy.simplify(a - b) == 0:
            return True
        return abs(complex(sympy.N(a - b))) < 1e-9 * max(1.0, abs(complex(sympy.N(b))))
    except (TypeError, ValueError, AttributeError, ArithmeticError):
        return False


@functools.lru_cache(maxsize=65536)
def _sympy_parse(s: str):
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                            standard_transformations)

    expr = _latex_to_python(s)
    if expr is None:
        return None
    try:
        transforms = standard_transformations + (implicit_multiplication_application, convert_xor)
        return parse_expr(expr, transformations=transforms, evaluate=True)
    except Exception:  # sympy raises many types on bad input; all mean "not an expression"
        return None


def _latex_to_python(s: str) -> str | None:
    """The LaTeX subset common in final answers, as a sympy-parsable string (None: not an expression)."""
    if re.search(r"[,\[\]]|\\[{}]", s):
        return None  # tuples, sets, intervals: compared as strings only
    for _ in range(5):  # nested fractions / roots
        s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\s*\[([^\]]*)\]\s*\{([^{}]*)\}", r"((\2)**(1/(\1)))", s)
        s = re.sub(r"\\sqrt\s*\{([^{}]*)\}", r"sqrt(\1)", s)
        s = re.sub(r"\\sqrt\s*(\d+)", r"sqrt(\1)", s)
    s = s.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*").replace("{", "(").replace("}", ")")
    if "\\" in s or re.search(r"[=<>]", s):
        return None
    return s


# --------------------------------------------------------------------------- oracle


@dataclass(frozen=True, slots=True)
class MathOracle:
    """Oracle for math: the reference is the ground-truth answer (bare or in ``\\boxed{}``)."""

    extractors: tuple[Extractor, ...] = DEFAULT_EXTRACTORS
    backend: Backend = "auto"

    def __post_init__(self):
        bad = [e for e in self.extractors if e not in _EXTRACTORS]
        if bad or not self.extractors:
            raise ConfigError(f"MathOracle.extractors must be from {sorted(_EXTRACTORS)}, got {self.extractors!r}")
        _pick_backend(self.backend)

    def check(self, response: str, reference: str) -> Verdict:
        answer = extract_answer(response, self.extractors)
        if answer is None:
            return Verdict(False, None, "no_answer")
        same = answers_equivalent(answer, str(reference), self.backend)
        return Verdict(same, answer, "equivalent" if same else "not_equivalent")

    def check_many(self, responses: Sequence[str], references: Sequence[str]) -> list[Verdict]:
        return [self.check(r, ref) for r, ref in zip(responses, references, strict=True)]
