"""HELMET-style JSON key-value recall: find one key's value in a long random JSON object.

Why: Phi-4's midtraining extends the context from 4K to 16K tokens (report §3.3, §5 of
``docs/phi4-recipe.md``) and Table 6 checks it with HELMET, whose Recall category
asks for "the value for a key in a random long JSON", scored by SubEM (substring exact
match). phi-4 scores 100.0 at 8K and 99.0 at 16K. This task generates such items for
the evaluated model: keys and values are random UUID strings (nothing to guess from
pretraining), and the object is grown until the whole prompt, in *that model's*
tokens, fills the target length minus the answer budget (``max_tokens``) and the chat
template's tokens. The queried key sits at a controlled depth (0 = first pair, 1 =
last), spread evenly over each length's items, so a failure can be located.

Items are a pure function of ``options.seed`` and the tokenizer. Sizing estimates the
tokens per key-value pair once from a sample and then corrects the pair count with a
few whole-prompt tokenisations, so a 16K-token item takes milliseconds, not one
tokenisation per pair. Decoding is greedy (HELMET decodes greedily). The prompt wording
is ours.

params: ``lengths`` (target total tokens, default 4096, 8192, 16384), ``per_length``
(items per length, default 20), ``depths`` (key depths in [0, 1], cycled over each
length's items; default evenly spaced), ``format`` (``"chat"``, a user message for
instruct models, or ``"text"`` for base models). Lengths beyond the model's context
are reported by :meth:`JSONKVRecall.items_fitting` and skipped by the runner.
"""

from __future__ import annotations

import json
import math
import random
import re
import uuid
from collections.abc import Sequence

from phiforge.errors import ConfigError
from phiforge.evals.task import Grade, Task
from phiforge.evals.tasks.base import mean_by, normalize_text, row_value

DEFAULT_LENGTHS = (4096, 8192, 16384)
FORMATS = ("chat", "text")
MIN_LENGTH = 256
"""Shorter targets leave no room for a JSON object after the instruction and the answer budget."""
SAMPLE_PAIRS = 64
"""Key-value pairs tokenised once to estimate the tokens one pair costs."""
MAX_ROUNDS = 8
"""Whole-prompt tokenisations per item while correcting the pair count (2-3 suffice in practice)."""
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

INSTRUCTION = ("Below is a JSON object whose keys and values are random identifiers. Find the key given after "
               "the object and reply with the value stored under it, exactly as written and nothing else.")


def prompt_content(context: str, key: str) -> str:
    """The instruction, the JSON object and the queried key (the user message, or the whole text prompt)."""
    return f"{INSTRUCTION}\n\nJSON object:\n{context}\n\nKey: \"{key}\"\nValue:"


class JSONKVRecall(Task):
    """Recall of one value from a random JSON object of 4K-16K tokens, scored by SubEM (report §3.3, Table 6)."""

    name = "recall"
    description = "HELMET JSON key-value recall at 4K/8K/16K tokens, SubEM (report §3.3, Table 6)"
    mode = "generate"
    chat = True
    temperature = 0.0
    max_tokens = 64
    primary_metric = "subem"
    bundled_data = True
    known_params = ("lengths", "per_length", "depths", "format")

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        self.lengths = _check_lengths(self.param("lengths", list(DEFAULT_LENGTHS)))
        self.per_length = self.param("per_length", 20)
        if isinstance(self.per_length, bool) or not isinstance(self.per_length, int) or self.per_length < 1:
            raise ConfigError(f"task 'recall': params.per_length must be a positive integer, got {self.per_length!r}")
        self.depths = _check_depths(self.param("depths", None), self.per_length)
        self.format = self.param("format", "chat")
        if self.format not in FORMATS:
            raise ConfigError(f"task 'recall': params.format must be 'chat' or 'text', got {self.format!r}")
        self.chat = self.format == "chat"
        self._per_pair: float | None = None
        self._template: int | None = None

    # -- items -------------------------------------------------------------------
    def load(self) -> list[dict]:
        """``per_length`` generated items per target length, ids ``len{L}-{i}``.

        Ordered by index, then length (``len4096-0, len8192-0, ..., len4096-1, ...``), so a
        ``max_items`` cut keeps every length.
        """
        self._require_tokenizer()
        return [self.make_item(length, i) for i in range(self.per_length) for length in self.lengths]

    def make_item(self, length: int, index: int) -> dict:
        """One item of ``length`` target tokens; its key at depth ``depths[index % len(depths)]``."""
        rng = random.Random(f"recall:{self.options.seed}:{length}:{index}")
        depth = self.depths[index % len(self.depths)]
        budget = length - self.n_max_tokens - self.template_tokens()
        pairs: list[tuple[str, str]] = []
        n, tokens = self._fit_pairs(pairs, rng, depth, budget)
        keyed = _key_index(depth, n)
        return {"id": f"len{length}-{index}", "length": length, "depth": depth, "position": keyed,
                "n_pairs": n, "tokens": tokens + self.template_tokens(), "key": pairs[keyed][0],
                "value": pairs[keyed][1], "context": _json(pairs[:n])}

    def _fit_pairs(self, pairs: list, rng: random.Random, depth: float, budget: int) -> tuple[int, int]:
        """The largest pair count whose prompt fits ``budget`` tokens (``pairs`` grows as needed)."""
        per_pair = self.tokens_per_pair()
        fixed = self.count_tokens(prompt_content("{}", _uuid(random.Random(0))))
        n = max(1, int((budget - fixed) / per_pair))
        fit, over = None, None  # (n, tokens) that fits; smallest n known not to fit
        for _ in range(MAX_ROUNDS):
            tokens = self._prompt_tokens(pairs, rng, depth, n)
            if tokens <= budget:
                fit = (n, tokens)
                n += int((budget - tokens) / per_pair)
            else:
                over = n
                n -= max(1, math.ceil((tokens - budget) / per_pair))
            n = _clamp(n, fit[0] if fit else 0, over)
            if n is None:
                break
        if fit is None:
            target = budget + self.n_max_tokens + self.template_tokens()
            raise ConfigError(f"task 'recall': a target of {target} tokens leaves no room for a JSON object; "
                              f"use longer lengths or a smaller max_tokens")
        return fit

    def _prompt_tokens(self, pairs: list, rng: random.Random, depth: float, n: int) -> int:
        while len(pairs) < n:
            pairs.append((_uuid(rng), _uuid(rng)))
        return self.count_tokens(prompt_content(_json(pairs[:n]), pairs[_key_index(depth, n)][0]))

    def tokens_per_pair(self) -> float:
        """Average tokens one ``"key": "value", `` pair adds, from a fixed sample (computed once)."""
        if self._per_pair is None:
            rng = random.Random("recall:estimate")
            sample = [(_uuid(rng), _uuid(rng)) for _ in range(SAMPLE_PAIRS)]
            self._per_pair = max(1.0, (self.count_tokens(_json(sample)) - self.count_tokens("{}")) / SAMPLE_PAIRS)
        return self._per_pair

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the runner encodes a text prompt (no special tokens added)."""
        self._require_tokenizer()
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the fast path, and no "longer than model_max_length" warning
            return len(backend.encode(text, add_special_tokens=False).ids)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def template_tokens(self) -> int:
        """Tokens the chat template adds around one user message (0 for the text format)."""
        if not self.chat:
            return 0
        if self._template is None:
            self._template = _chat_overhead(self.tokenizer, self.count_tokens)
        return self._template

    def items_fitting(self, items: Sequence[dict], max_positions: int | None) -> tuple[list[dict], list[int]]:
        """(items whose target length fits the model's context, the target lengths that do not)."""
        if max_positions is None:
            return list(items), []
        kept = [it for it in items if it["length"] <= max_positions]
        skipped = sorted({it["length"] for it in items if it["length"] > max_positions})
        return kept, skipped

    def _require_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise ConfigError("task 'recall' sizes its JSON objects in the evaluated model's tokens: "
                              "it needs the model's tokenizer (make_task(..., tokenizer=...))")

    # -- prompting and grading ------------------------------------------------------
    def prompt(self, item: dict, repeat: int):
        content = prompt_content(item["context"], item["key"])
        return [{"role": "user", "content": content}] if self.chat else content

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        """SubEM: 1 when the value occurs in the normalised response (HELMET's substring exact match)."""
        found = UUID_RE.search(response)
        extracted = found.group(0) if found else (response.strip() or None)
        right = normalize_text(item["value"]) in normalize_text(response)
        label = "blank" if extracted is None else ("correct" if right else "incorrect")
        return Grade(float(right), extracted, label, {"length": item["length"], "depth": item["depth"]})

    def metrics(self, groups: Sequence[Sequence[dict]]) -> dict[str, float]:
        """``subem`` over all items plus ``subem/<length>`` per target length."""
        per_item = [sum(r["score"] for r in g) / len(g) for g in groups if g]
        out = {"subem": sum(per_item) / len(per_item) if per_item else 0.0}
        keyed = [[{**r, "length": _row_length(r)} for r in g] for g in groups]
        return {**out, **mean_by(keyed, "length", "subem/{}")}

    @property
    def metric_is_item_mean(self) -> bool:
        return True  # the headline is the mean of per-item scores; per-length keys are extras


# --------------------------------------------------------------------------- helpers


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _json(pairs: Sequence[tuple[str, str]]) -> str:
    return json.dumps(dict(pairs))


def _key_index(depth: float, n: int) -> int:
    return round(depth * (n - 1))


def _clamp(n: int, fit: int, over: int | None) -> int | None:
    """``n`` kept strictly between the largest fitting and the smallest overflowing count; None once they touch."""
    if over is not None and fit + 1 >= over:
        return None
    if n <= fit:
        return None if over is None else fit + 1
    if over is not None and n >= over:
        return over - 1
    return n


def _row_length(row: dict) -> int | None:
    """The target length of a graded row: from the grade's extra, else parsed from the id ``len{L}-{i}``."""
    value = row_value(row, "length")
    item_id = row.get("item_id", row.get("id"))
    if value is None and isinstance(item_id, str):
        m = re.match(r"len(\d+)-", item_id)
        value = int(m.group(1)) if m else None
    return value


def _chat_overhead(tokenizer, count) -> int:
    """Tokens of the chat template around a one-message conversation (with the generation prompt)."""
    probe = [{"role": "user", "content": "x"}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(probe, tokenize=True, return_dict=False, add_generation_prompt=True)
    else:
        from phiforge.tokenize.chat import render_conversation

        ids = render_conversation(tokenizer, probe, add_generation_prompt=True)[0]
    return max(0, len(ids) - count("x"))


def _check_lengths(lengths) -> list[int]:
    if isinstance(lengths, (str, int)) or not lengths:
        raise ConfigError(f"task 'recall': params.lengths must be a non-empty list of token counts, got {lengths!r}")
    bad = [x for x in lengths if isinstance(x, bool) or not isinstance(x, int) or x < MIN_LENGTH]
    if bad:
        raise ConfigError(f"task 'recall': params.lengths must be integers >= {MIN_LENGTH}, got {bad[0]!r}")
    return list(dict.fromkeys(lengths))


def _check_depths(depths, per_length: int) -> list[float]:
    if depths is None:
        return [i / (per_length - 1) for i in range(per_length)] if per_length > 1 else [0.5]
    if isinstance(depths, (str, int, float)) or not depths:
        raise ConfigError(f"task 'recall': params.depths must be a non-empty list of numbers in [0, 1], got {depths!r}")
    bad = [d for d in depths if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1]
    if bad:
        raise ConfigError(f"task 'recall': params.depths must lie in [0, 1] (0 = first pair, 1 = last), got {bad[0]!r}")
    return [float(d) for d in depths]
