"""GPQA (diamond) as simple-evals runs it: options shuffled per sample, the letter read from "Answer: X".

Why: GPQA is where phi-4 beats its teacher GPT-4o (56.1 vs 50.6; report §6, Table 1,
simple-evals at temperature 0.5). It has only 198 diamond questions, so simple-evals
samples each 10 times (its runner's default), each time with the four options in a
new order; we do the same (``repeats = 10``). The order is a function of (seed, item
id, repeat) through a SHA-256 seed, so a resumed or re-run evaluation shows every
sample the same order and the grade knows which letter is right for that sample.
simple-evals draws its orders from one ``Random(0)`` stream instead, so the exact orders
differ; the protocol does not.

Extraction as in simple-evals' GPQA: on the raw response, the first ``Answer:`` (any
case) followed by an optional ``$`` and a letter A-D; compared case-sensitively; no
match means an extraction failure (score 0).

Items: ``question``, ``correct_answer`` and ``incorrect_answers`` (3), or the columns of
the GPQA release (``Question``, ``Correct Answer``, ``Incorrect Answer 1``-``3``).
"""

from __future__ import annotations

import random
import re

from phiforge.errors import DataError
from phiforge.evals.task import Grade, Task
from phiforge.evals.tasks.simple_evals import LETTERS, format_multichoice, load_any_schema, stable_seed, user_message

SCHEMAS = (("question", "correct_answer", "incorrect_answers"),
           ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"))

ANSWER_PATTERN = re.compile(r"(?i)Answer[ \t]*:[ \t]*\$?([A-D])\$?")


def extract_gpqa_letter(response: str) -> str | None:
    """The letter after the first "Answer:" (as written, so "answer: b" gives "b"), else None."""
    m = ANSWER_PATTERN.search(response)
    return m.group(1) if m else None


def option_order(item_id: str, repeat: int, seed: int) -> list[int]:
    """For each shown option A-D, its index in [correct, incorrect 1-3]; fixed by (seed, item id, repeat)."""
    return random.Random(stable_seed("gpqa", seed, item_id, repeat)).sample(range(4), 4)


class GPQA(Task):
    """Graduate-level Google-proof Q&A (Rein et al. 2023), 0-shot CoT, shuffled options per repeat."""

    name = "gpqa"
    description = "GPQA, 0-shot chain of thought, options shuffled per repeat, 'Answer: X' (simple-evals)"
    repeats = 10
    max_tokens = 2048
    required_fields = SCHEMAS[0]

    def load(self) -> list[dict]:
        items, schema = load_any_schema(self.options.path, self.name, SCHEMAS)
        return [self._canonical(item, schema) for item in items]

    def _canonical(self, item: dict, schema: tuple[str, ...]) -> dict:
        if schema is SCHEMAS[0]:
            question, correct, wrong = item["question"], item["correct_answer"], item["incorrect_answers"]
        else:
            question, correct = item["Question"], item["Correct Answer"]
            wrong = [item[f"Incorrect Answer {i}"] for i in (1, 2, 3)]
        if not isinstance(wrong, (list, tuple)) or len(wrong) != 3:
            raise DataError(f"task 'gpqa': item {item['id']!r}: needs exactly 3 incorrect answers, got {wrong!r}")
        return {"id": item["id"], "question": str(question).strip(), "correct_answer": str(correct).strip(),
                "incorrect_answers": [str(w).strip() for w in wrong]}

    def options_for(self, item: dict, repeat: int) -> tuple[list[str], str]:
        """The four options in this sample's order, and the letter of the correct one."""
        pool = [item["correct_answer"], *item["incorrect_answers"]]
        order = option_order(item["id"], repeat, self.options.seed)
        return [pool[i] for i in order], LETTERS[order.index(0)]

    def prompt(self, item: dict, repeat: int):
        options, _ = self.options_for(item, repeat)
        return user_message(format_multichoice(item["question"], options))

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        _, key = self.options_for(item, repeat)
        got = extract_gpqa_letter(response)
        if got is None:
            return Grade(0.0, None, "no_answer", {"key": key})
        return Grade(float(got == key), got, "correct" if got == key else "incorrect", {"key": key})

    def contamination_text(self, item: dict) -> str:
        return "\n".join([item["question"], item["correct_answer"], *item["incorrect_answers"]])
