"""Seeded multi-step arithmetic word problems: the tiny recipe's stand-in corpus.

The Phi-4 report's central claim (§2.1, §3.1) is that clean, step-by-step
synthetic text teaches reasoning better than terse, noisy web text. The tiny
recipe reproduces that contrast at a scale two CPU cores can train in minutes,
in a domain whose answers a program can check:

* ``textbook`` documents: a problem followed by a worked solution that states
  every intermediate result ("12 + 7 = 19") and ends with ``Answer: N``.
* ``web`` documents: the same kind of problem written as a terse forum post,
  with casual spelling, skipped steps and a configurable share of wrong answers.
* ``long`` documents: worksheets of many textbook problems, naturally longer than
  the pretraining context, for midtraining (§3.3: natural long documents beat
  artificially packed ones).
* ``eval`` items: held-out problems (question + answer), never seen in training.
* post-training sets (``posttrain_sets``): SFT conversations (user = question,
  assistant = the step-by-step solution, Phi-4 chat format) and prompts with
  answer keys for Pivotal Token Search and judge-guided DPO, drawn from their own
  random stream so adding them never changes the pretraining corpus.

Until the synthetic-data and curation stages land, this module is the tiny
recipe's data stage. Everything is a pure function of the seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = ["Sam", "Mia", "Leo", "Ava", "Noah", "Zoe", "Eli", "Ivy", "Max", "Lily",
         "Ben", "Ada", "Tom", "Eva", "Kai", "Nia", "Omar", "Rosa", "Yuki", "Ines"]
OBJECTS = ["apples", "marbles", "stickers", "books", "pencils", "coins", "cards",
           "shells", "stamps", "cookies", "balloons", "beads"]
GAIN = ["buys", "finds", "gets", "is given", "picks up", "wins"]
LOSS = ["gives away", "loses", "eats", "sells", "drops", "uses"]
ANSWER_RE = re.compile(r"Answer:\s*(-?\d+)")


@dataclass(frozen=True)
class Problem:
    """One word problem: a start amount and a chain of (op, amount) steps."""

    name: str
    obj: str
    start: int
    steps: tuple[tuple[str, int], ...]  # op in {"+", "-", "*2"}

    @property
    def answer(self) -> int:
        return self.trace()[-1]

    def trace(self) -> list[int]:
        """Intermediate totals after each step, starting with ``start``."""
        values = [self.start]
        for op, k in self.steps:
            values.append(_apply(values[-1], op, k))
        return values


def _apply(value: int, op: str, k: int) -> int:
    if op == "+":
        return value + k
    if op == "-":
        return value - k
    return value * 2


def sample_problem(rng: random.Random, max_steps: int = 3) -> Problem:
    """Draw a problem whose intermediate values all stay in 0..60."""
    start = rng.randint(2, 20)
    steps, value = [], start
    for _ in range(rng.randint(1, max_steps)):
        op = rng.choices(["+", "-", "*2"], weights=[5, 4, 1])[0]
        if op == "*2" and value > 30:
            op = "-"
        if op == "-" and value < 2:
            op = "+"
        k = 2 if op == "*2" else rng.randint(1, min(9, value) if op == "-" else 9)
        steps.append((op, k))
        value = _apply(value, op, k)
    return Problem(rng.choice(NAMES), rng.choice(OBJECTS), start, tuple(steps))


def question_text(p: Problem) -> str:
    """The problem statement shared by textbook documents and eval prompts."""
    parts = [f"{p.name} has {p.start} {p.obj}."]
    for i, (op, k) in enumerate(p.steps):
        lead = "Then" if i else "First"
        if op == "*2":
            parts.append(f"{lead} the number of {p.obj} doubles.")
        else:
            verb = GAIN[(p.start + i + k) % len(GAIN)] if op == "+" else LOSS[(p.start + i + k) % len(LOSS)]
            parts.append(f"{lead} {p.name} {verb} {k}.")
    parts.append(f"How many {p.obj} does {p.name} have now?")
    return " ".join(parts)


def solution_text(p: Problem) -> str:
    """A step-by-step solution stating each intermediate result."""
    values = p.trace()
    lines = [f"{p.name} starts with {p.start}."]
    for (op, k), before, after in zip(p.steps, values, values[1:]):
        expr = f"{before} * 2" if op == "*2" else f"{before} {op} {k}"
        lines.append(f"{expr} = {after}.")
    lines.append(f"Answer: {p.answer}")
    return " ".join(lines[:-1]) + "\n" + lines[-1]


def prompt_text(question: str) -> str:
    """The evaluation prompt: the textbook layout up to where the solution begins."""
    return f"Problem: {question}\nSolution:"


def textbook_doc(p: Problem) -> str:
    return f"{prompt_text(question_text(p))} {solution_text(p)}"


def web_doc(p: Problem, rng: random.Random, wrong_rate: float) -> str:
    """A terse forum post: lower-case, abbreviated, often no working, sometimes wrong."""
    ops = ", ".join("doubled" if op == "*2" else (f"+{k}" if op == "+" else f"-{k}")
                    for op, k in p.steps)
    q = f"{p.name.lower()} had {p.start} {p.obj} then {ops}. how many {rng.choice(['now', 'left', 'total'])}{rng.choice(['?', '??', ' lol', ''])}"
    answer = p.answer
    if rng.random() < wrong_rate:
        answer = max(0, answer + rng.choice([-3, -2, -1, 1, 2, 3, 10]))
    reply = rng.choice([f"its {answer}", f"{answer} i think", f"ans = {answer}", f"= {answer}", f"pretty sure {answer}"])
    user = rng.choice(["mathfan", "user123", "anon", "qwerty", "helper99"])
    return f"[thread] {q}\n> {user}: {reply}"


def long_doc(problems: list[Problem], title: int) -> str:
    """A worksheet: many numbered textbook problems in one naturally long document."""
    body = "\n\n".join(f"Exercise {i + 1}.\n{textbook_doc(p)}" for i, p in enumerate(problems))
    return f"Worksheet {title}\n\n{body}"


def extract_answer(text: str) -> int | None:
    """The first ``Answer: N`` in a completion, or None if the model gave none."""
    m = ANSWER_RE.search(text)
    return int(m.group(1)) if m else None


def generate(seed: int, n_textbook: int, n_web: int, n_long: int, n_eval: int,
             n_valid: int, web_wrong_rate: float, long_problems: int = 12) -> dict[str, list[dict]]:
    """Make every split of the tiny corpus; eval questions never occur in training."""
    rng = random.Random(seed)
    eval_problems = _unique_problems(random.Random(seed + 1), n_eval, set())
    held = {question_text(p) for p in eval_problems}
    # The order of random draws is part of the data: keep it (textbook, web, long, valid).
    train = {"textbook": _rows("textbook", [textbook_doc(p) for p in _problems(rng, n_textbook, held)])}
    train["web"] = _web_rows("web", _problems(rng, n_web, held), rng, web_wrong_rate)
    train["long"] = _rows("long", [long_doc(_problems(rng, long_problems, held), i) for i in range(n_long)])
    valid = {"textbook": _rows("valid-textbook", [textbook_doc(p) for p in _problems(rng, n_valid, held)])}
    valid["web"] = _web_rows("valid-web", _problems(rng, n_valid, held), rng, web_wrong_rate)
    out = {f"train/{k}": v for k, v in train.items()}
    out.update({f"valid/{k}": v for k, v in valid.items()})
    out["eval"] = [{"id": f"eval-{i:05d}", "question": question_text(p), "answer": p.answer,
                    "steps": len(p.steps)} for i, p in enumerate(eval_problems)]
    return out


def _problems(rng: random.Random, n: int, exclude: set[str]) -> list[Problem]:
    out = []
    while len(out) < n:
        p = sample_problem(rng)
        if question_text(p) not in exclude:
            out.append(p)
    return out


def _unique_problems(rng: random.Random, n: int, exclude: set[str]) -> list[Problem]:
    seen, out = set(exclude), []
    while len(out) < n:
        p = sample_problem(rng)
        q = question_text(p)
        if q not in seen:
            seen.add(q)
            out.append(p)
    return out


def _rows(prefix: str, texts: list[str]) -> list[dict]:
    return [{"id": f"{prefix}-{i:06d}", "text": t} for i, t in enumerate(texts)]


def _web_rows(prefix: str, problems: list[Problem], rng: random.Random, wrong_rate: float) -> list[dict]:
    """Web posts, each with the problem's true answer and its clean statement as metadata.

    A post's own answer is wrong ``wrong_rate`` of the time; ``answer`` is the truth
    (what a real corpus has as an accepted answer, or what the plurality filter
    estimates), which lets synthetic rewrites be verified (Phi-4 report §2.2,
    rejection sampling against ground truth). Training reads only ``text``.
    """
    texts = [web_doc(p, rng, wrong_rate) for p in problems]
    return [{"id": f"{prefix}-{i:06d}", "text": t, "answer": p.answer, "question": question_text(p)}
            for i, (t, p) in enumerate(zip(texts, problems))]


def sft_messages(p: Problem) -> list[dict]:
    """A chat SFT example: the question as the user turn, the worked solution as the answer."""
    return [{"role": "user", "content": question_text(p)}, {"role": "assistant", "content": solution_text(p)}]


def posttrain_sets(seed: int, n_sft: int, n_prompts: int, exclude: set[str]) -> dict[str, list[dict]]:
    """SFT conversations and answer-keyed prompts for post-training (Phi-4 report §4).

    Drawn from ``seed + 2`` (the corpus uses ``seed``, eval ``seed + 1``) and never
    repeating an eval question (``exclude``) or each other, so the post-training
    stages are measured on the same held-out eval items as pretraining.
    """
    problems = _unique_problems(random.Random(seed + 2), n_sft + n_prompts, set(exclude))
    sft = [{"id": f"sft-{i:06d}", "messages": sft_messages(p)} for i, p in enumerate(problems[:n_sft])]
    prompts = [{"id": f"prompt-{i:05d}", "question": question_text(p), "answer": p.answer,
                "steps": len(p.steps)} for i, p in enumerate(problems[n_sft:])]
    return {"posttrain/sft": sft, "posttrain/prompts": prompts}
