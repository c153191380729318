"""AMC 10/12 under the official scoring rule: the Phi-4 report's contamination-proof math test.

Why: the report's headline math result (Fig. 1, App. C; §7.2 of
``docs/phi4-recipe.md``) is the November 2024 AMC 10A/10B/12A/12B, released after
all its training data was collected. The protocol:

* the prompt says it is a 25-question, 5-option multiple-choice test with exactly
  one correct option, gives the official scoring (6 points correct, 1.5 blank,
  0 wrong), asks for step-by-step work ending in ``\\boxed{A}``..``\\boxed{E}`` or
  ``\\boxed{blank}``, then the question and options (A)-(E);
* 10 samples per question at temperature 0.5 (App. C; Fig. 1's caption says 100 runs);
* a test scores at most 150; the headline is the mean over runs of the average over
  the tests, with 2-sigma error bars over runs;
* GPT-4o read each solution's final choice, because models often did not box it, and
  "otherwise-correct" answers such as a boxed numeric value equal to the right option
  counted as correct.

Items: ``{"id", "test": "2024 AMC 10A", "number", "question", "options": {"A": .., "E": ..}``
(or ``"choices"``: a list of 5), ``"answer": "C"}``; ``number`` is optional. Questions that
appear on two tests (10A/12A overlap) are two items, each scored within its test.

Reading the answer (deviation: rules first, the LLM only as a fallback, to spend
grader calls only where needed): the last ``\\boxed{}`` holding a letter ("C",
"(C)", "\\text{C}", "C) 12") or "blank"; else a boxed value equal (``verify.math``) to
exactly one option's content; else the grader model (greedy, where the paper sampled
GPT-4o at temperature 1). ``params = {"extractor": "auto" | "llm" | "rules"}``: ``auto``
(default) asks the grader when one is given, ``llm`` requires one, ``rules`` never asks
(offline; answers without a readable box then score 0). Only an explicit blank
earns 1.5 points; an unreadable answer scores 0, like a wrong one, and counts as an
extraction failure (``extracted`` None, label ``no_answer``).
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Sequence

from phiforge.backends.base import Backend, SamplingParams
from phiforge.errors import ConfigError, DataError
from phiforge.evals.task import Grade, Task
from phiforge.verify.math import answers_equivalent, last_boxed

LETTERS = "ABCDE"
POINTS = {"correct": 6.0, "blank": 1.5, "wrong": 0.0, "no_answer": 0.0}
MAX_POINTS = POINTS["correct"]
EXTRACTORS = ("auto", "llm", "rules")
GRADER_TAIL_CHARS = 8000
"""The grader sees the end of long solutions only: the final choice is there, and prompts stay bounded."""

PROMPT = (
    "You are taking a 25-question multiple-choice math test. Every question has five options, (A) to (E), "
    "and exactly one of them is correct. The test is scored with the official rule: 6 points for a correct "
    "answer, 1.5 points for a question left blank, and 0 points for a wrong answer. Work through the "
    "question step by step. Finish your response with your choice in a box: \\boxed{{A}}, \\boxed{{B}}, "
    "\\boxed{{C}}, \\boxed{{D}} or \\boxed{{E}}, or \\boxed{{blank}} to leave the question blank.\n\n"
    "Question: {question}\n\n{options}"
)
GRADER_PROMPT = (
    "Below are a multiple-choice math question with options (A) to (E) and a solution to it. Which option did "
    "the solution choose as its final answer? If the final answer is a value rather than a letter, choose the "
    "option whose value equals it. If the solution explicitly leaves the question blank, reply blank. If it "
    "gives no final answer, or one that matches no option, reply none. Reply with one word only: "
    "A, B, C, D, E, blank or none.\n\n"
    "Question: {question}\n\n{options}\n\nSolution:\n{solution}"
)

_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LETTER = re.compile(r"\(?([A-E])\)?(?:\s*[).:].*|\s+(?![=+\-*/^<>]).*)?", re.DOTALL)
_GRADER_REPLY = re.compile(r"(?<![A-Za-z])(?:([A-E])|((?i:blank|none)))(?![A-Za-z])")


class AMC(Task):
    name = "amc"
    description = "AMC 10/12 with official scoring (6 correct / 1.5 blank / 0 wrong), max 150 per test"
    repeats = 10
    """App. C: 10 independent generations per question."""
    max_tokens = 4096
    """Step-by-step competition solutions run long; 1024 tokens would cut many before the box."""
    primary_metric = "score"
    metric_scale = 1.0
    required_fields = ("test", "question", "answer")
    known_params = ("extractor",)

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        mode = self.param("extractor", "auto")
        if mode not in EXTRACTORS:
            raise ConfigError(f"task 'amc': params.extractor must be one of {', '.join(EXTRACTORS)}, got {mode!r}")
        if mode == "llm" and not isinstance(grader, Backend):
            raise ConfigError("task 'amc': params.extractor = 'llm' needs a grader model (the eval grader "
                              "backend); configure one or use extractor = 'rules'")
        self.use_llm = mode == "llm" or (mode == "auto" and isinstance(grader, Backend))

    # -- data ----------------------------------------------------------------------
    def load(self) -> list[dict]:
        """The user's items, each checked to have five options and a letter key (errors name the item)."""
        items = super().load()
        for item in items:
            where = f"{self.options.path}: amc item {item['id']!r}"
            choices_of(item, where)
            answer_key(item, where)
        return items

    def contamination_text(self, item: dict) -> str:
        return "\n".join([str(item["question"]), *choices_of(item)])

    # -- prompt and grading -----------------------------------------------------------
    def prompt(self, item: dict, repeat: int) -> list[dict]:
        return [{"role": "user", "content": PROMPT.format(question=item["question"], options=format_options(item))}]

    def grade_many(self, items: Sequence[dict], responses: Sequence[str], repeats: Sequence[int]) -> list[Grade]:
        """Rule-based reading for all; the unreadable ones go to the grader in one batch when enabled."""
        found = [read_answer(r, choices_of(it)) for it, r in zip(items, responses, strict=True)]
        pending = [i for i, (choice, _) in enumerate(found) if choice is None]
        if self.use_llm and pending:
            replies = self._ask_grader([items[i] for i in pending], [responses[i] for i in pending])
            for i, reply in zip(pending, replies):
                found[i] = (parse_grader_reply(reply), "llm")
        return [score_answer(item, choice, via) for item, (choice, via) in zip(items, found)]

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        return self.grade_many([item], [response], [repeat])[0]

    def _ask_grader(self, items: Sequence[dict], responses: Sequence[str]) -> list[str]:
        prompts = [[{"role": "user", "content": GRADER_PROMPT.format(
            question=it["question"], options=format_options(it), solution=r[-GRADER_TAIL_CHARS:])}]
            for it, r in zip(items, responses)]
        result = self.grader.sample(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=64, logprobs=False))
        return [completions[0].text for completions in result.completions]

    # -- metrics ---------------------------------------------------------------------
    def metrics(self, groups: Sequence[Sequence[dict]]) -> dict[str, float]:
        """AMC points per test and run (run r = repeat r of every question), averaged over tests, then runs."""
        rows = [r for g in groups for r in g]
        if not rows:
            return {"score": 0.0, "score_2sigma": 0.0, "runs": 0, "blank_rate": 0.0, "accuracy": 0.0}
        points, questions = _points_by_run_and_test(groups)
        per_run = [statistics.fmean(tests.values()) for tests in points.values()]
        out = {"score": statistics.fmean(per_run),
               "score_2sigma": 2 * statistics.stdev(per_run) if len(per_run) > 1 else 0.0,
               "runs": len(per_run),
               "blank_rate": sum(r["label"] == "blank" for r in rows) / len(rows),
               "accuracy": sum(r["label"] == "correct" for r in rows) / len(rows)}
        for test in sorted(questions):
            scores = [tests[test] for tests in points.values() if test in tests]
            out[f"score/{test}"] = statistics.fmean(scores)
            out[f"max_points/{test}"] = MAX_POINTS * questions[test]
        return out


def _points_by_run_and_test(groups: Sequence[Sequence[dict]]) -> tuple[dict, dict]:
    """{repeat: {test: points}} and {test: questions}; a run's test score sums its questions' points."""
    points: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    questions: dict[str, int] = defaultdict(int)
    for group in groups:
        if not group:
            continue
        questions[group[0]["extra"]["test"]] += 1
        for row in group:
            points[row["repeat"]][row["extra"]["test"]] += row["extra"]["points"]
    return points, questions


# --------------------------------------------------------------------------- items


def choices_of(item: dict, where: str | None = None) -> list[str]:
    """The five option texts in order A-E, from ``options`` (a dict by letter) or ``choices`` (a list)."""
    where = where or f"amc item {item.get('id')!r}"
    options = item.get("options")
    if isinstance(options, dict):
        keys = {str(k).strip().strip("()").upper(): v for k, v in options.items()}
        if sorted(keys) != list(LETTERS):
            raise DataError(f"{where}: 'options' must have the keys A, B, C, D, E, got {sorted(options)}")
        return [str(keys[letter]) for letter in LETTERS]
    choices = item.get("choices", options)
    if isinstance(choices, (list, tuple)) and len(choices) == len(LETTERS):
        return [str(c) for c in choices]
    raise DataError(f"{where}: needs 'options' = {{\"A\": ..., \"E\": ...}} or 'choices' = a list of 5 "
                    f"option texts")


def answer_key(item: dict, where: str | None = None) -> str:
    """The correct letter, tolerating "(c)" or " C " in the data."""
    key = str(item.get("answer", "")).strip().strip("()").upper()
    if len(key) != 1 or key not in LETTERS:
        where = where or f"amc item {item.get('id')!r}"
        raise DataError(f"{where}: 'answer' must be one of the letters A-E, got {item.get('answer')!r}")
    return key


def format_options(item: dict) -> str:
    return "\n".join(f"({letter}) {text}" for letter, text in zip(LETTERS, choices_of(item)))


# --------------------------------------------------------------------------- answers


def read_answer(response: str, choices: Sequence[str]) -> tuple[str | None, str]:
    """(choice, how it was read): a letter A-E or "blank" from the last ``\\boxed{}``, or None."""
    boxed = last_boxed(response)
    if boxed is None:
        return None, "none"
    choice = boxed_choice(boxed)
    if choice is not None:
        return choice, "box"
    letter = option_with_value(boxed, choices)
    return (letter, "value") if letter is not None else (None, "none")


def boxed_choice(boxed: str) -> str | None:
    """A letter ("C", "(C)", "\\text{C}", "\\textbf{(C) }12", "C) 12") or "blank" (any case); else None."""
    text = _TEXT_MACRO.sub(r"\1", boxed)
    text = re.sub(r"\\[ ,;:!]|\\q?quad", " ", text).strip().strip("$").strip()
    if text.strip("(). ").lower() == "blank":
        return "blank"
    match = _LETTER.fullmatch(text)
    return match.group(1) if match else None


def option_with_value(boxed: str, choices: Sequence[str]) -> str | None:
    """The letter of the one option whose content equals the boxed value (e.g. 1/2 vs 0.5), else None."""
    hits = [letter for letter, text in zip(LETTERS, choices) if answers_equivalent(boxed, text)]
    return hits[0] if len(hits) == 1 else None


def parse_grader_reply(reply: str) -> str | None:
    """The grader's last word among A-E / blank / none; "none" or no such word means no answer."""
    found = _GRADER_REPLY.findall(reply)
    if not found:
        return None
    letter, word = found[-1]
    return letter or ("blank" if word.lower() == "blank" else None)


def score_answer(item: dict, choice: str | None, via: str) -> Grade:
    """AMC points for one answer; ``score`` = points / 6, so a blank is worth 0.25."""
    if choice is None:
        label = "no_answer"
    elif choice == "blank":
        label = "blank"
    else:
        label = "correct" if choice == answer_key(item) else "wrong"
    points = POINTS[label]
    return Grade(points / MAX_POINTS, choice, label, {"points": points, "test": str(item["test"]), "via": via})
