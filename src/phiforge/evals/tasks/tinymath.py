"""The tiny recipe's held-out word problems as evaluation tasks: generated answers and a log-likelihood view.

Why: the tiny recipe stands in for Phi-4's reasoning data (report §2.1, §3.1) with
arithmetic word problems whose answers a program checks; its ``eval`` stage scored
checkpoints by exact answer (``evals.exact_answer``). :class:`TinyMath` is that
evaluation as a task: base checkpoints see the textbook prompt ("Problem: ...
\\nSolution:"), post-trained ones the question as a user turn (they were trained on
the chat format, report §4); decoding is greedy by default, the recipe's headline
(``temperature`` can be set to sample, as simple-evals does at 0.5, §7.1); the score
is 1 when the first ``Answer: N`` equals the key, and a completion without one is an
extraction failure.

:class:`TinyMathMC` scores the same items the way the report's pretraining harness
scores base models (log-likelihood multiple choice, report §3): the key and three
nearby distractors. Training documents always reach ``Answer: N`` through a worked
solution ("5 + 3 = 8. 8 * 2 = 16.\\nAnswer: 16"), never directly, so the default
context (``params.context = "steps"``) is the textbook document up to the last
``=``, rebuilt from the question, and each option continues it exactly as training
text would (" 16.\\nAnswer: 16"): it asks whether the model ranks the right final
result highest after a correct worked solution. ``"direct"`` asks for the answer
with no working ("Problem: ...\\nSolution:\\nAnswer:" + " N"), which the model never
saw; expect it near chance for small models.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import ClassVar

from phiforge.data import tinymath
from phiforge.errors import ConfigError, DataError
from phiforge.evals.task import Grade, Task
from phiforge.evals.tasks.base import mean_by

FORMATS = ("textbook", "text", "chat")
"""``text`` is ``textbook`` by the name the eval stage gives base checkpoints' plain-text format."""
CONTEXTS = ("steps", "direct")
OFFSETS = (-3, -2, -1, 1, 2, 3)
"""Distractors are the key plus one of these (never negative): the near misses of a slipped step."""


def _int_answer(item: dict) -> dict:
    """The item with ``answer`` as an int (files may store "7"); DataError naming the item otherwise."""
    try:
        return {**item, "answer": int(item["answer"])}
    except (TypeError, ValueError):
        raise DataError(f"tinymath item {item['id']!r}: answer {item['answer']!r} is not an integer") from None


class TinyMath(Task):
    """Exact-answer accuracy on held-out tinymath word problems, plus accuracy per step count.

    Items: ``question``, ``answer`` (an integer), optional ``steps`` (the data stage's
    ``eval.jsonl``). ``params.format``: ``"textbook"`` (or ``"text"``; the prompt
    "Problem: ...\nSolution:", base checkpoints) or ``"chat"`` (the question as a user
    message, post-trained checkpoints); it sets ``self.chat``.
    """

    name = "tinymath"
    description = "tiny recipe's held-out word problems, first 'Answer: N' vs the key"
    mode = "generate"
    chat = False
    temperature = 0.0
    max_tokens = 64
    required_fields = ("question", "answer")
    known_params = ("format",)
    stop: ClassVar[tuple[str, ...]] = ()
    """No stop strings: the first ``Answer: N`` is read, so text after it does not matter."""

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        self.format = self.param("format", "textbook")
        if self.format not in FORMATS:
            raise ConfigError(f"task {self.name!r}: params.format must be 'textbook' (or 'text'; base checkpoints) "
                              f"or 'chat' (post-trained ones), got {self.format!r}")
        self.chat = self.format == "chat"

    def load(self) -> list[dict]:
        return [_int_answer(it) for it in super().load()]

    def prompt(self, item: dict, repeat: int):
        if self.chat:
            return [{"role": "user", "content": item["question"]}]
        return tinymath.prompt_text(item["question"])

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        got = tinymath.extract_answer(response)
        extra = {"steps": item["steps"]} if item.get("steps") is not None else {}
        if got is None:
            return Grade(0.0, None, "no_answer", extra)
        right = got == int(item["answer"])
        return Grade(float(right), str(got), "correct" if right else "incorrect", extra)

    def metrics(self, groups: Sequence[Sequence[dict]]) -> dict[str, float]:
        """``accuracy`` plus ``accuracy/steps=<k>`` per number of solution steps."""
        per_item = [sum(r["score"] for r in g) / len(g) for g in groups if g]
        return {"accuracy": sum(per_item) / len(per_item) if per_item else 0.0,
                **mean_by(groups, "steps", "accuracy/steps={}")}

    @property
    def metric_is_item_mean(self) -> bool:
        return True  # the headline is the mean of per-item scores; per-step keys are extras


class TinyMathMC(Task):
    """Four-way log-likelihood multiple choice on tinymath items (base checkpoints; see the module docstring)."""

    name = "tinymath_mc"
    description = "tiny recipe's held-out word problems as 4-way log-likelihood multiple choice"
    mode = "loglik"
    chat = False
    temperature = 0.0
    required_fields = ("question", "answer")
    known_params = ("context",)
    normalise: ClassVar[bool] = False
    """Options differ only in a number: compare summed log-likelihoods."""

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        self.context = self.param("context", "steps")
        if self.context not in CONTEXTS:
            raise ConfigError(f"task {self.name!r}: params.context must be 'steps' or 'direct', got {self.context!r}")

    def load(self) -> list[dict]:
        """Items with their ``options`` (the key and three distractors, in a per-item seeded order)."""
        items = [_int_answer(it) for it in super().load()]
        if self.context == "steps":
            for it in items:
                parse_problem(it)  # fail at load, naming the item, not midway through scoring
        return [{**it, "options": mc_numbers(it["answer"], f"{self.options.seed}:{it['id']}")} for it in items]

    def choices(self, item: dict) -> tuple[str, list[str], int]:
        options = item.get("options") or mc_numbers(int(item["answer"]), f"{self.options.seed}:{item['id']}")
        gold = options.index(int(item["answer"]))
        if self.context == "direct":
            return tinymath.prompt_text(item["question"]) + "\nAnswer:", [f" {n}" for n in options], gold
        return steps_context(item), [f" {n}.\nAnswer: {n}" for n in options], gold


def mc_numbers(answer: int, seed: str) -> list[int]:
    """The key and three distinct non-negative near misses, shuffled; a pure function of ``seed``."""
    rng = random.Random(f"tinymath_mc:{seed}")
    offsets = list(OFFSETS)
    rng.shuffle(offsets)
    distractors = [answer + d for d in offsets if answer + d >= 0][:3]
    options = [answer, *distractors]
    rng.shuffle(options)
    return options


def steps_context(item: dict) -> str:
    """The textbook document of ``item`` up to (and including) the ``=`` of its last step."""
    doc = tinymath.textbook_doc(parse_problem(item))
    return doc[:doc.rindex(" = ") + 2]


_START = re.compile(r"^(?P<name>\w+) has (?P<start>\d+) (?P<obj>\w+)\.$")
_DOUBLES = re.compile(r"^(?:First|Then) the number of (?P<obj>\w+) doubles\.$")
_MOVE = re.compile(r"^(?:First|Then) (?P<name>\w+) (?P<verb>.+) (?P<k>\d+)\.$")


def parse_problem(item: dict) -> tinymath.Problem:
    """The ``Problem`` behind a question written by ``tinymath.question_text`` (checked by rewriting it)."""
    sentences = re.split(r"(?<=[.?]) ", item["question"].strip())
    start = _START.match(sentences[0])
    if start is None or len(sentences) < 3:
        raise _not_tinymath(item)
    steps = [_parse_step(s, start["name"]) for s in sentences[1:-1]]
    if None in steps:
        raise _not_tinymath(item)
    problem = tinymath.Problem(start["name"], start["obj"], int(start["start"]), tuple(steps))
    if tinymath.question_text(problem) != item["question"].strip() or problem.answer != int(item["answer"]):
        raise _not_tinymath(item)
    return problem


def _parse_step(sentence: str, name: str) -> tuple[str, int] | None:
    if _DOUBLES.match(sentence):
        return ("*2", 2)
    move = _MOVE.match(sentence)
    if move is None or move["name"] != name:
        return None
    op = "+" if move["verb"] in tinymath.GAIN else "-" if move["verb"] in tinymath.LOSS else None
    return (op, int(move["k"])) if op else None


def _not_tinymath(item: dict) -> DataError:
    return DataError(f"tinymath_mc item {item['id']!r}: the question is not in tinymath's wording (or its "
                     "answer does not match), so its worked solution cannot be rebuilt; use params.context = 'direct'")
