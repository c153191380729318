"""What the simple-evals tasks share: the multiple-choice prompt, the "Answer:" line, stable seeds,
items in more than one column layout, and accuracy per group.

Why: the Phi-4 report scores MMLU, GPQA, MATH, MGSM, SimpleQA and DROP with OpenAI's
simple-evals, "their own prompts and answer extraction", at temperature 0.5 (report §6,
Table 1; §7.1 of ``docs/phi4-recipe.md``). The wording of our prompts is our own; their
shape (a question, ``A) ...`` option lines, a last line ``Answer: ...``) and the
extraction rules follow simple-evals' documented behaviour, quirks included (the *first*
``Answer:`` match counts, not the last), so that a score means the same thing here as
in the report's table.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from phiforge.evals.loaders import load_items
from phiforge.evals.task import mean_by, row_value  # noqa: F401  (row_value re-exported for the tasks)

LETTERS = "ABCD"

MULTICHOICE_TEMPLATE = """\
Answer the multiple-choice question below. Think it through step by step, and make the last line of \
your reply read 'Answer: $LETTER' (without the quotes), where LETTER is one of ABCD.

{question}

A) {A}
B) {B}
C) {C}
D) {D}"""

ANSWER_LINE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
"""simple-evals' free-form answer pattern (MATH, DROP): the rest of the line after the first "Answer:"."""

_MARKUP = ("**", "$\\boxed{", "}$", "\\$", "$\\text{", "$", "\\mathrm{", "\\{", "\\text", "\\(", "\\mathbf{", "{",
           "\\boxed")
"""Markdown/LaTeX that simple-evals deletes (in this order) before reading an MMLU letter."""


def user_message(content: str) -> list[dict]:
    """simple-evals sends each question as one user turn (no few-shot turns, no system prompt of ours)."""
    return [{"role": "user", "content": content}]


def format_multichoice(question: str, options: Sequence[str]) -> str:
    """The 0-shot chain-of-thought multiple-choice prompt (MMLU, GPQA)."""
    return MULTICHOICE_TEMPLATE.format(question=question, **dict(zip(LETTERS, options, strict=True)))


def answer_line(text: str) -> str | None:
    """What follows the first "Answer:" (any case) up to the end of its line, stripped; None if absent."""
    m = ANSWER_LINE.search(text)
    return m.group(1).strip() if m and m.group(1).strip() else None


def strip_markup(text: str) -> str:
    """Bold markers, ``$``, ``\\boxed{``, ``\\text`` and braces removed, so "**Answer: $\\boxed{B}$**" reads."""
    for token in _MARKUP:
        text = text.replace(token, "")
    return text


def stable_seed(*parts) -> int:
    """A seed from ``parts`` that is the same in every process (``hash()`` is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def pick(item: dict, *names: str, default=None):
    """The first of ``names`` present in ``item`` (one task accepts several column spellings)."""
    return next((item[n] for n in names if n in item), default)


def load_any_schema(path: str, task: str, schemas: Sequence[tuple[str, ...]]) -> tuple[list[dict], tuple[str, ...]]:
    """Items of ``path`` and the field layout they use: the first of ``schemas`` the first item fits.

    Every item must then have that layout's fields; if one does not, the loader is run
    again with them required, so the error names the file and line of the offending item.
    """
    items = load_items(path, task=task)
    schema = next((s for s in schemas if all(k in items[0] for k in s)), schemas[0])
    if any(k not in item for item in items for k in schema):
        load_items(path, task=task, required=schema)  # raises DataError naming file:line
    return items, schema


def item_mean(group: Sequence[dict], value=lambda row: row["score"]) -> float:
    """The mean over one item's samples (repeats)."""
    return sum(value(r) for r in group) / len(group)


def accuracy_by(groups: Sequence[Sequence[dict]], key: str, prefix: str = "accuracy") -> dict[str, float]:
    """``{"<prefix>/<value>": accuracy}`` for each value of the grades' ``key`` (subject, language)."""
    return mean_by(groups, key, prefix + "/{}")


def overall_accuracy(groups: Sequence[Sequence[dict]]) -> float:
    """The base ``Task.metrics`` headline: mean over items of each item's mean score."""
    per_item = [item_mean(g) for g in groups if g]
    return sum(per_item) / len(per_item) if per_item else 0.0
