"""DROP as simple-evals runs it: read a passage, reason, end with "Answer: ...", scored by DROP's F1.

Why: DROP is one of the three benchmarks where phi-4 trails Qwen-2.5-14B (75.5 vs
85.5; report §6, Table 1, simple-evals at temperature 0.5), and the authors call its
simple-evals number reductive, so it matters that ours is the same number: the
official DROP metric (Dua et al. 2019) in our own code. Answers are compared as bags
of tokens after DROP's normalisation (lower case; punctuation removed except inside
numbers; numbers as floats, "5" = "5.0"; articles dropped; tokens split at spaces and
hyphens). A multi-span gold answer is aligned one-to-one with the predicted spans for
the best total F1 (exhaustively up to 8 spans, greedily beyond; the official code uses
scipy's assignment solver, same result up to 8), and a pair only scores when the gold
has no number or shares one with the prediction. An item's score is the best F1 over
its acceptable answers; EM likewise.

Extraction as simple-evals: the rest of the line after the first "Answer:"; with no
such line the *whole response* is scored (simple-evals' rule), but ``extracted`` is
None so the line's absence shows in the extraction-failure rate.

Metrics: ``f1`` (0-1; simple-evals and Table 1 show it x100, as our tables do) and
``em``. Few-shot: simple-evals puts 3 examples from DROP's train split before each
question; we ship no train data, so the default is 0-shot. Give ``params =
{"examples_path": <file of items>}`` and examples are drawn per item (by seed and item
id), ``few_shot`` of them (default 3 when a file is given).

Items: ``passage``, ``question``, ``answers`` (each acceptable answer a string, or a
list of spans for a multi-span answer); or simple-evals' ``context`` and
``ref_text`` (answers joined by "|"); or the Hugging Face release's ``answers_spans``.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from itertools import permutations

from phiforge.errors import ConfigError, DataError
from phiforge.evals.task import Grade, Task
from phiforge.evals.tasks.simple_evals import answer_line, load_any_schema, stable_seed, user_message

SCHEMAS = (("passage", "question", "answers"), ("context", "ref_text"),
           ("passage", "question", "answers_spans"))
SIMPLE_EVALS_SHOTS = 3
MAX_EXACT_SPANS = 8

INTRO = "You will be asked to read a passage and answer a question."
INTRO_EXAMPLES = " Some worked examples of passages with questions and answers come first.\n\n# Examples"
TASK = "\n# Your Task\n\n---\n{context}\n\nThink step by step, then end your reply with a line of the form " \
       "\"Answer: $ANSWER\"."

# --------------------------------------------------------------------------- the DROP metric

_PUNCT = set(string.punctuation)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _normalise_token(token: str) -> str:
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCT)
    if _is_number(token):
        token = str(float(token))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", token).split())


def normalise_span(text: str) -> str:
    """DROP's answer normalisation: per space/hyphen token, lower, punctuation, number, article rules."""
    return " ".join(t for t in (_normalise_token(tok) for tok in re.split(" |-", text)) if t.strip())


def _bag_f1(predicted: set[str], gold: set[str]) -> float:
    common = len(predicted & gold)
    precision = common / len(predicted) if predicted else 1.0
    recall = common / len(gold) if gold else 1.0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _numbers_agree(gold: set[str], predicted: set[str]) -> bool:
    gold_numbers = {t for t in gold if _is_number(t)}
    return not gold_numbers or bool(gold_numbers & predicted)


def _best_pairs(scores: list[list[float]]) -> list[tuple[int, int]]:
    """(gold, predicted) pairs of a one-to-one matching with the largest total score."""
    n_gold, n_pred = len(scores), len(scores[0])
    if max(n_gold, n_pred) <= MAX_EXACT_SPANS:
        if n_gold <= n_pred:
            cols = max(permutations(range(n_pred), n_gold), key=lambda c: sum(scores[g][p] for g, p in enumerate(c)))
            return list(enumerate(cols))
        rows = max(permutations(range(n_gold), n_pred), key=lambda r: sum(scores[g][p] for p, g in enumerate(r)))
        return [(g, p) for p, g in enumerate(rows)]
    ranked = sorted(((scores[g][p], g, p) for g in range(n_gold) for p in range(n_pred)), reverse=True)
    used_g, used_p, pairs = set(), set(), []
    for _, g, p in ranked:
        if g not in used_g and p not in used_p:
            used_g.add(g)
            used_p.add(p)
            pairs.append((g, p))
    return pairs


def drop_em_f1(predicted: str | Sequence[str], gold: str | Sequence[str]) -> tuple[float, float]:
    """Exact match and F1 (both 0-1) of one prediction against one gold answer, each a span or spans."""
    pred_spans = [normalise_span(s) for s in ([predicted] if isinstance(predicted, str) else predicted)]
    gold_spans = [normalise_span(s) for s in ([gold] if isinstance(gold, str) else gold)]
    em = float(set(pred_spans) == set(gold_spans) and len(pred_spans) == len(gold_spans))
    pred_bags, gold_bags = [set(s.split()) for s in pred_spans], [set(s.split()) for s in gold_spans]
    scores = [[_bag_f1(p, g) if _numbers_agree(g, p) else 0.0 for p in pred_bags] for g in gold_bags]
    total = sum(scores[g][p] for g, p in _best_pairs(scores))
    return em, round(total / max(len(gold_bags), len(pred_bags)), 4)


def drop_score(predicted: str, answers: Sequence[str | Sequence[str]]) -> tuple[float, float]:
    """The best (EM, F1) over the acceptable answers (blank ones skipped, as simple-evals does)."""
    scored = [drop_em_f1(predicted, a) for a in answers if _nonblank(a)]
    return (max(e for e, _ in scored), max(f for _, f in scored)) if scored else (0.0, 0.0)


def _nonblank(answer) -> bool:
    return bool(answer.strip()) if isinstance(answer, str) else any(str(s).strip() for s in answer)


# --------------------------------------------------------------------------- the task


def _gold_answers(item: dict, schema: tuple[str, ...]) -> list:
    """Our ``answers`` list; or the Hugging Face release's one answer (its spans, several for multi-span)."""
    if "answers" in schema:
        return [item["answers"]] if isinstance(item["answers"], str) else list(item["answers"] or [])
    spans = list((item["answers_spans"] or {}).get("spans") or [])
    return [spans if len(spans) > 1 else spans[0]] if spans else []


def _canonical(item: dict, schema: tuple[str, ...], task: str) -> dict:
    """Items of either layout as {id, context, answers}; ``context`` ends with "Answer:" as in simple-evals."""
    if schema is SCHEMAS[1]:
        context, answers = str(item["context"]), str(item["ref_text"]).split("|")
        shown = item.get("completion")
    else:
        context = f"Passage: {item['passage']}\nQuestion: {item['question']}\nAnswer:"
        answers, shown = _gold_answers(item, schema), None
    answers = [[str(s) for s in a] if isinstance(a, (list, tuple)) else str(a) for a in answers]
    if not any(_nonblank(a) for a in answers):
        raise DataError(f"task {task!r}: item {item['id']!r} has no non-empty answer")
    first = answers[0] if isinstance(answers[0], str) else ", ".join(answers[0])
    return {"id": item["id"], "context": context, "answers": answers, "shown_answer": str(shown or first).strip()}


class DROP(Task):
    """Discrete reasoning over paragraphs (Dua et al. 2019), CoT with a final "Answer:" line, DROP F1."""

    name = "drop"
    description = "DROP, chain of thought, 'Answer:' line, DROP F1 over acceptable answers (simple-evals)"
    max_tokens = 2048
    primary_metric = "f1"
    required_fields = SCHEMAS[0]
    known_params = ("examples_path",)
    supports_few_shot = True

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        self.examples_path = self.param("examples_path", None)
        if self.options.few_shot is not None and self.options.few_shot < 0:
            raise ConfigError(f"task 'drop': few_shot must be >= 0, got {self.options.few_shot}")
        if self.n_few_shot > 0 and not self.examples_path:
            raise ConfigError(f"task 'drop': few_shot = {self.n_few_shot} needs params.examples_path, a file of "
                              "DROP items to draw examples from (simple-evals uses 3 from the train split)")
        self._examples: list[dict] | None = None

    @property
    def n_few_shot(self) -> int:
        if self.options.few_shot is not None:
            return self.options.few_shot
        return SIMPLE_EVALS_SHOTS if self.param("examples_path", None) else 0

    def load(self) -> list[dict]:
        items, schema = load_any_schema(self.options.path, self.name, SCHEMAS)
        return [_canonical(item, schema, self.name) for item in items]

    def examples(self) -> list[dict]:
        """The few-shot pool from ``params.examples_path`` (read once)."""
        if self._examples is None:
            items, schema = load_any_schema(self.examples_path, f"{self.name} examples", SCHEMAS)
            self._examples = [_canonical(item, schema, self.name) for item in items]
            if len(self._examples) < self.n_few_shot:
                raise DataError(f"task 'drop': {self.examples_path} holds {len(self._examples)} examples, "
                                f"fewer than few_shot = {self.n_few_shot}")
        return self._examples

    def prompt(self, item: dict, repeat: int):
        text = INTRO
        if self.n_few_shot > 0:
            pool = [e for e in self.examples() if e["context"] != item["context"]]
            rng = random.Random(stable_seed("drop", self.options.seed, item["id"]))
            shots = rng.sample(pool, min(self.n_few_shot, len(pool)))
            text += INTRO_EXAMPLES + "".join(f"\n---\n{e['context']} {e['shown_answer']}\n" for e in shots)
        return user_message(text + TASK.format(context=item["context"]))

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        found = answer_line(response)
        em, f1 = drop_score(found if found is not None else response, item["answers"])
        label = "exact_match" if em == 1.0 else "partial" if f1 > 0 else "incorrect"
        return Grade(f1, found, label, {"em": em})

    def metrics(self, groups: Sequence[Sequence[dict]]) -> dict[str, float]:
        groups = [g for g in groups if g]
        n = len(groups) or 1
        f1 = sum(sum(r["score"] for r in g) / len(g) for g in groups) / n
        em = sum(sum(r["label"] == "exact_match" for r in g) / len(g) for g in groups) / n
        return {"f1": f1, "em": em}

    @property
    def metric_is_item_mean(self) -> bool:
        return True  # f1 is the mean of per-item mean scores

    def contamination_text(self, item: dict) -> str:
        return item["context"].removesuffix("Answer:").strip()
