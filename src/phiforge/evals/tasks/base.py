"""Base-model evaluations: few-shot log-likelihood multiple choice and few-shot generation.

Why: base checkpoints follow zero-shot instructions poorly, so Phi-4's pretraining
harness scores them with few-shot prompts (report §3; §2.2 of ``docs/phi4-recipe.md``):
MMLU 5-shot, MMLU-Pro and ARC-C 1-shot by the log-likelihood of each option
(:class:`MCLogLik`), TriviaQA 1-shot, MBPP 3-shot, MATH 4-shot and GSM8k 8-shot by
greedy generation (:class:`FewShotGen`). The report does not publish its prompts; ours
follow the public conventions these numbers are usually quoted with: Hendrycks et
al.'s MMLU layout scored on the answer letter, the lm-evaluation-harness ARC layout
scored on the option text, and "Question: ... Answer: ..." shots for generation.

Few-shot examples are chosen deterministically. With ``params = {"dev_path": file}``
they come from that file; otherwise the first ``k`` items of the data file are the
examples and are **excluded from evaluation**, so no item is scored with its own
answer in the prompt (the item count drops by ``k`` per subject). Items with a
``subject`` get examples of the same subject first (as MMLU's dev split is used),
topped up from the rest of the pool in file order.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any, ClassVar

from phiforge.errors import ConfigError, DataError
from phiforge.evals.loaders import load_items
from phiforge.evals.task import Grade, Task, mean_by, row_value

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# --------------------------------------------------------------------------- shared by the built-in tasks


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation (lower case, no punctuation, no articles, single spaces).

    Used by TriviaQA-style matching here and by HELMET's substring exact match (SubEM).
    """
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCT = frozenset(string.punctuation)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (what a server's ``stop`` would return)."""
    cut = len(text)
    for stop in stops:
        i = text.find(stop) if stop else -1
        if 0 <= i < cut:
            cut = i
    return text[:cut]


# --------------------------------------------------------------------------- few-shot examples


class FewShotTask(Task):
    """A task whose prompt starts with ``k`` worked examples (see the module docstring for their source)."""

    known_params: ClassVar[tuple[str, ...]] = ("dev_path",)
    supports_few_shot = True

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        if self.n_few_shot < 0:
            raise ConfigError(f"task {self.name!r}: few_shot must be >= 0, got {self.n_few_shot}")
        self._pool: list[dict] | None = None

    def load(self) -> list[dict]:
        """The items to score; also fixes the example pool (the first ``k`` per subject without a dev file)."""
        items = [self.check_item(it) for it in super().load()]
        dev = self.param("dev_path", None)
        if dev:
            pool = [self.check_item(it) for it in load_items(dev, task=self.name, required=self.required_fields)]
        else:
            pool, items = split_first_per_subject(items, self.n_few_shot)
        if not items:
            raise DataError(f"task {self.name!r}: every item of {self.options.path} went into the {self.n_few_shot}"
                            "-shot examples; give a larger file, fewer shots, or params.dev_path")
        self._pool = pool
        return items

    def check_item(self, item: dict) -> dict:
        """Validate (and possibly canonicalise) one item; DataError naming the item id."""
        return item

    def shots_for(self, item: dict) -> list[dict]:
        """The examples shown before ``item``: same subject first, then the pool in order; never the item."""
        if self._pool is None:
            self.load()
        k = self.n_few_shot
        subject = item.get("subject")
        same = [s for s in self._pool if s.get("subject") == subject]
        rest = [s for s in self._pool if s.get("subject") != subject]
        return [s for s in same + rest if s["id"] != item["id"]][:k]


def split_first_per_subject(items: list[dict], k: int) -> tuple[list[dict], list[dict]]:
    """(the first ``k`` items of each subject, the remaining items), both in file order."""
    seen: dict[Any, int] = {}
    shots, rest = [], []
    for item in items:
        subject = item.get("subject")
        if seen.get(subject, 0) < k:
            seen[subject] = seen.get(subject, 0) + 1
            shots.append(item)
        else:
            rest.append(item)
    return shots, rest


# --------------------------------------------------------------------------- log-likelihood multiple choice


class MCLogLik(FewShotTask):
    """Few-shot multiple choice scored by the log-likelihood of each option (MMLU, MMLU-Pro, ARC-C).

    Items: ``question``; options as ``choices`` (a list, or ARC's ``{"text", "label"}``),
    ``options`` (MMLU-Pro) or fields ``A``, ``B``, ...; the key as ``answer`` / ``answerKey``
    / ``answer_index`` (a letter, a label, a 0-based index or the option text); optional
    ``subject``.

    ``params.score``: ``"letter"`` (default; Hendrycks' MMLU harness: options listed
    A., B., ..., continuations " A", " B", ...) or ``"text"`` (ARC-style: the options
    are not listed and each continuation is " " + the option text). Options of
    different lengths are compared fairly only per token, so text scoring sets
    ``normalise = True``: the runner then uses the length-normalised pick.
    """

    name = "mc_loglik"
    description = "few-shot multiple choice by log-likelihood (MMLU 5-shot, MMLU-Pro, ARC-C 1-shot; report §3)"
    mode = "loglik"
    chat = False
    temperature = 0.0
    few_shot = 5
    required_fields = ("question",)
    known_params = ("dev_path", "score")
    normalise: ClassVar[bool] = False
    """Whether the runner should pick by length-normalised log-likelihood (set per instance from ``score``)."""

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        self.scoring = self.param("score", "letter")
        if self.scoring not in ("letter", "text"):
            raise ConfigError(f"task {self.name!r}: params.score must be 'letter' or 'text', got {self.scoring!r}")
        self.normalise = self.scoring == "text"

    def check_item(self, item: dict) -> dict:
        mc_options(item)  # raises DataError on a malformed item
        return item

    def choices(self, item: dict) -> tuple[str, list[str], int]:
        texts, gold = mc_options(item)
        shots = self.shots_for(item)
        if self.scoring == "text":
            context = "".join(_text_block(s, True) + "\n\n" for s in shots) + _text_block(item, False)
            return context, [f" {t}" for t in texts], gold
        blocks = "".join(_letter_block(s, True) + "\n\n" for s in shots)
        context = mmlu_header(item.get("subject")) + blocks + _letter_block(item, False)
        return context, [f" {letter}" for letter in LETTERS[:len(texts)]], gold

    def contamination_text(self, item: dict) -> str:
        return "\n".join([str(item["question"]), *mc_options(item)[0]])


def mmlu_header(subject: str | None) -> str:
    """Hendrycks et al.'s first line, with the subject's underscores as spaces."""
    about = f" about {' '.join(str(subject).split('_'))}" if subject else ""
    return f"The following are multiple choice questions (with answers){about}.\n\n"


def _letter_block(item: dict, with_answer: bool) -> str:
    texts, gold = mc_options(item)
    lines = [str(item["question"]).strip(), *(f"{letter}. {t}" for letter, t in zip(LETTERS, texts))]
    return "\n".join(lines) + "\nAnswer:" + (f" {LETTERS[gold]}" if with_answer else "")


def _text_block(item: dict, with_answer: bool) -> str:
    texts, gold = mc_options(item)
    return f"Question: {str(item['question']).strip()}\nAnswer:" + (f" {texts[gold]}" if with_answer else "")


def mc_options(item: dict) -> tuple[list[str], int]:
    """(option texts, 0-based index of the key) from any of the supported item layouts."""
    texts, labels = _option_texts(item)
    if not 2 <= len(texts) <= len(LETTERS):
        raise DataError(f"item {item.get('id')!r}: needs 2..{len(LETTERS)} options, got {len(texts)}")
    key = next((item[k] for k in ("answer", "answerKey", "answer_index") if item.get(k) is not None), None)
    if key is None:
        raise DataError(f"item {item.get('id')!r}: no key; give 'answer' "
                        "(a letter, a 0-based index or the option text)")
    return texts, _gold_index(item, key, texts, labels)


def _option_texts(item: dict) -> tuple[list[str], list[str]]:
    raw = item.get("choices", item.get("options"))
    if isinstance(raw, dict) and isinstance(raw.get("text"), (list, tuple)):
        return [str(t) for t in raw["text"]], [str(x) for x in raw.get("label") or []]
    if isinstance(raw, (list, tuple)):
        return [str(t) for t in raw], []
    texts = []
    for letter in LETTERS:
        if item.get(letter) is None:
            break
        texts.append(str(item[letter]))
    if not texts:
        raise DataError(f"item {item.get('id')!r}: no options; give 'choices' (a list) or fields 'A', 'B', ...")
    return texts, []


def _gold_index(item: dict, key, texts: list[str], labels: list[str]) -> int:
    n = len(texts)
    if isinstance(key, int) and not isinstance(key, bool):
        index = key
    elif str(key).strip() in labels:
        index = labels.index(str(key).strip())
    elif str(key).strip().upper() in LETTERS[:n] and len(str(key).strip()) == 1:
        index = LETTERS.index(str(key).strip().upper())
    elif str(key).strip().isdigit():
        index = int(str(key).strip())
    elif str(key) in texts:
        index = texts.index(str(key))
    else:
        index = -1
    if not 0 <= index < n:
        raise DataError(f"item {item.get('id')!r}: key {key!r} names none of its {n} options "
                        f"(letters {LETTERS[0]}-{LETTERS[n - 1]} or 0-based indices 0-{n - 1})")
    return index


# --------------------------------------------------------------------------- few-shot generation

MATCHES = ("exact", "math", "contains")


class FewShotGen(FewShotTask):
    """Few-shot generation graded against a reference (TriviaQA, MATH, GSM8k; report §3).

    Items: ``question`` and ``answer`` (a string or number; a list of aliases, or
    TriviaQA's ``{"value", "aliases"}``). Prompt: ``k`` shots "Question: ...\\nAnswer: ...",
    blank-line separated, then "Question: {q}\\nAnswer:". Decoding is greedy (base-model
    harnesses decode greedily; the report's t = 0.5 is simple-evals' setting for
    instruct models, §7.1) and stops at ``stop``: the model tends to go on with a new
    "Question:", so the completion is cut at the first blank line (also in ``grade``).

    ``params.match``: ``"exact"`` (default; the first line equals an alias after SQuAD
    normalisation), ``"contains"`` (an alias occurs in the normalised completion,
    TriviaQA-style) or ``"math"`` (``verify.math`` equivalence of the boxed / "the answer
    is" / "####" answer, else of the one-line completion, else of its last number).
    ``params.stop`` replaces the stop strings (e.g. ``[]`` for multi-paragraph answers).
    MBPP needs code execution and is not graded here.
    """

    name = "fewshot_gen"
    description = "few-shot generation, exact/contains/math match (TriviaQA, MATH, GSM8k; report §3)"
    mode = "generate"
    chat = False
    temperature = 0.0
    max_tokens = 256
    few_shot = 4
    required_fields = ("question", "answer")
    known_params = ("dev_path", "match", "stop")
    stop: ClassVar[tuple[str, ...]] = ("\n\nQuestion:", "\n\n")
    """Stop strings for ``SamplingParams.stop`` (an instance may override them with ``params.stop``)."""

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        self.match = self.param("match", "exact")
        if self.match not in MATCHES:
            raise ConfigError(f"task {self.name!r}: params.match must be one of {', '.join(MATCHES)}, "
                              f"got {self.match!r}")
        stop = self.param("stop", None)
        if stop is not None:
            if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
                raise ConfigError(f"task {self.name!r}: params.stop must be a list of non-empty strings, got {stop!r}")
            self.stop = tuple(stop)

    def check_item(self, item: dict) -> dict:
        if not gold_aliases(item["answer"]):
            raise DataError(f"item {item.get('id')!r}: empty answer {item['answer']!r}")
        return item

    def prompt(self, item: dict, repeat: int) -> str:
        shots = "".join(f"Question: {str(s['question']).strip()}\nAnswer: {gold_aliases(s['answer'])[0]}\n\n"
                        for s in self.shots_for(item))
        return shots + f"Question: {str(item['question']).strip()}\nAnswer:"

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        text = cut_at_stop(response, self.stop).strip()
        aliases = gold_aliases(item["answer"])
        if self.match == "math":
            got = math_prediction(text)
            right = got is not None and any(_math_equal(got, a) for a in aliases)
        elif self.match == "contains":
            got = text or None
            right = got is not None and any(normalize_text(a) in normalize_text(text) for a in aliases)
        else:
            got = text.split("\n")[0].strip() or None
            right = got is not None and normalize_text(got) in {normalize_text(a) for a in aliases}
        label = "no_answer" if got is None else ("correct" if right else "incorrect")
        return Grade(float(right), got, label)


def gold_aliases(answer) -> list[str]:
    """The accepted answers: a string or number, a list of aliases, or ``{"value", "aliases"}``."""
    if isinstance(answer, dict):
        values = [answer.get("value"), *(answer.get("aliases") or [])]
    elif isinstance(answer, (list, tuple)):
        values = list(answer)
    else:
        values = [answer]
    out = [str(v).strip() for v in values if v is not None and str(v).strip()]
    return list(dict.fromkeys(out))


def math_prediction(text: str) -> str | None:
    """A structured answer (boxed, "the answer is", "####"), else the one-line completion, else the last number."""
    from phiforge.verify.math import extract_answer

    found = extract_answer(text, ("boxed", "answer_is", "hash"))
    if found is not None:
        return found
    if text and "\n" not in text:
        return text
    return extract_answer(text, ("last_number",))


def _math_equal(predicted: str, reference: str) -> bool:
    """Equivalence against a reference, reading a worked reference's boxed or "####" answer first."""
    from phiforge.verify.math import answers_equivalent, extract_answer

    ref = extract_answer(reference, ("boxed", "hash")) or reference
    return answers_equivalent(predicted, ref)
