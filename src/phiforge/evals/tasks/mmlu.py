"""MMLU as simple-evals runs it: 0-shot chain of thought, the letter read from "Answer: X".

Why: MMLU is the first row of the Phi-4 report's Table 1 (84.8 for phi-4; report §6,
simple-evals, temperature 0.5). The score depends on how the letter is read, so we
follow simple-evals: delete Markdown/LaTeX markup (``**``, ``$``, ``\\boxed{``...), then
try the word "Answer:" in English first and then in the other languages simple-evals
lists (Antwort, Respuesta, Réponse, 答案, ...); the *first* match of a marker followed by
a letter counts; Arabic, Bengali and full-width letters map to A-D. The letter is
matched in any case but compared case-sensitively, as in simple-evals ("Answer: b"
scores 0). A response without such a line is an extraction failure (``extracted =
None``, score 0); unlike ``verify.choice`` there is no fallback to a bare letter.

Items: ``question``, the options as ``choices`` (a list of 4) or as fields ``A``-``D``,
``answer`` (a letter or a 0-based index) and optionally ``subject``; simple-evals' CSV
spelling (``Question``, ``A``-``D``, ``Answer``, ``Subject``) works too. Metrics:
``accuracy`` plus ``accuracy/<subject>`` when items have a subject.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from phiforge.errors import DataError
from phiforge.evals.task import Grade, Task
from phiforge.evals.tasks.simple_evals import (LETTERS, accuracy_by, format_multichoice, load_any_schema,
                                               overall_accuracy, pick, strip_markup, user_message)

SCHEMAS = (("question", "choices", "answer"), ("question", "A", "B", "C", "D", "answer"),
           ("Question", "A", "B", "C", "D", "Answer"))

ANSWER_MARKERS = (
    r"Answer\s*:", r"Answer\s*:\u200b+",  # English; Korean text may carry zero-width spaces
    r"উত্তর\s*:", r"उत्तर\s*:", r"উত্তরঃ",  # Bengali, Hindi
    r"Antwort\s*:", r"답변\s*:", r"정답\s*:", r"답\s*:",  # German, Korean
    r"答案\s*：", r"答案\s*:", r"答\s*：", r"答\s*:", r"答复\s*：", r"答曰\s*：",  # Chinese
    r"الإجابة:", r"الجواب:", r"إجابة:", r"الإجابة النهائية:", r"الإجابة الصحيحة:", r"الإجابة الصحيحة هي:",
    r"الإجابة هي:", r"الجواب النهائي:",  # Arabic
    r"Respuesta\s*:", r"Risposta\s*:",  # Spanish, Italian
    r"答え\s*:", r"答え\s*：", r"回答\s*:", r"回答\s*：", r"解答\s*:",  # Japanese
    r"Jawaban\s*:", r"Réponse\s*:", r"Resposta\s*:", r"Jibu\s*:",  # Indonesian, French, Portuguese, Swahili
    r"Idahun\s*:", r"Ìdáhùn\s*:", r"Idáhùn\s*:", r"Àmọ̀nà\s*:", r"Àdáhùn\s*:", r"Ànúgọ\s*:", r"Àṣàyàn\s*:",  # Yoruba
)
"""The word "Answer" as simple-evals' multilingual MMLU accepts it, tried in this order."""

_LOCAL_LETTERS = {"أ": "A", "ب": "B", "ج": "C", "د": "D",  # Arabic
                  "অ": "A", "ব": "B", "ড": "C", "ঢ": "D",  # Bengali
                  "Ａ": "A", "Ｂ": "B", "Ｃ": "C", "Ｄ": "D"}  # full-width (Japanese)
_LETTER = "([A-D]|[" + "".join(_LOCAL_LETTERS) + "])"
_PATTERNS = tuple(re.compile(rf"(?i){marker}[ \t]*{_LETTER}") for marker in ANSWER_MARKERS)


def extract_mmlu_letter(response: str) -> str | None:
    """The letter after the first answer marker that has one (markers tried in order), else None."""
    text = strip_markup(response)
    for pattern in _PATTERNS:
        m = pattern.search(text)
        if m:
            return _LOCAL_LETTERS.get(m.group(1), m.group(1))
    return None


def answer_letter(raw, item_id: str) -> str:
    """The key as a letter: "B", "b", " B " and 1 all mean B."""
    if isinstance(raw, bool):
        raw = None  # a JSON true/false is not a key
    if isinstance(raw, int) and 0 <= raw < 4:
        return LETTERS[raw]
    if isinstance(raw, str) and raw.strip().upper() in tuple(LETTERS):
        return raw.strip().upper()
    if isinstance(raw, str) and raw.strip() in ("0", "1", "2", "3"):
        return LETTERS[int(raw.strip())]
    raise DataError(f"task 'mmlu': item {item_id!r}: answer {raw!r} is not a letter A-D or an index 0-3")


class MMLU(Task):
    """Massive Multitask Language Understanding (Hendrycks et al. 2021), 0-shot CoT, simple-evals grading."""

    name = "mmlu"
    description = "MMLU, 0-shot chain of thought, 'Answer: X' extraction (simple-evals)"
    max_tokens = 2048
    required_fields = SCHEMAS[0]

    def load(self) -> list[dict]:
        items, schema = load_any_schema(self.options.path, self.name, SCHEMAS)
        return [self._canonical(item, schema) for item in items]

    def _canonical(self, item: dict, schema: tuple[str, ...]) -> dict:
        choices = item["choices"] if "choices" in schema else [item[k] for k in LETTERS]
        if not isinstance(choices, (list, tuple)) or len(choices) != 4:
            raise DataError(f"task 'mmlu': item {item['id']!r}: needs exactly 4 choices, got {choices!r}")
        out = {"id": item["id"], "question": str(pick(item, "question", "Question")),
               "choices": [str(c) for c in choices],
               "answer": answer_letter(pick(item, "answer", "Answer"), item["id"])}
        subject = pick(item, "subject", "Subject")
        if subject not in (None, ""):
            out["subject"] = str(subject)
        return out

    def prompt(self, item: dict, repeat: int):
        return user_message(format_multichoice(item["question"], item["choices"]))

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        got = extract_mmlu_letter(response)
        extra = {"subject": item["subject"]} if "subject" in item else {}
        if got is None:
            return Grade(0.0, None, "no_answer", extra)
        right = got == item["answer"]
        return Grade(float(right), got, "correct" if right else "incorrect", extra)

    def metrics(self, groups: Sequence[Sequence[dict]]) -> dict[str, float]:
        return {"accuracy": overall_accuracy(groups), **accuracy_by(groups, "subject")}

    @property
    def metric_is_item_mean(self) -> bool:
        return True  # the headline is still the mean of per-item scores; per-subject keys are extras
