"""Preference pairs on exact token ids: the contract between pair producers and DPO.

Phi-4's DPO data (report §4, §4.3 and App. A) comes from three producers that all
write the same JSONL row, one pair per line::

    {"id": str, "kind": str, "prompt_ids": [int], "chosen_ids": [int], "rejected_ids": [int], ...metadata}

* ``kind`` says who made it: ``pts`` (Pivotal Token Search, §4.3: chosen and
  rejected are ONE token each after a shared prefix), ``judge_accuracy`` /
  ``judge_overall`` (judge-guided DPO, §4.2 / App. A.2: full responses) and
  ``refusal`` (hallucination pairs, App. A.1).
* ``prompt_ids`` already hold the chat template up to the assistant's turn (or,
  for PTS, the partial assistant answer up to the pivotal token), so DPO never
  re-tokenizes: the model is trained on exactly the ids the producer scored. PTS
  in particular depends on this: re-tokenizing a text prefix plus one token can
  merge across the boundary and silently change which token is preferred.
* Optional ``ref_chosen_logp`` / ``ref_rejected_logp`` (floats) carry the frozen
  reference model's log-probs once computed (``dpo.precompute_reference_logps``).

Judge and refusal steps write a *text* form instead
(``{"id", "kind", "messages", "chosen", "rejected", "max_response_tokens"}``);
``text_pairs_to_token_pairs`` renders it with the student's tokenizer. A full
response ends with ``<|im_end|>`` (the model must learn where to stop; a foreign
model's turn ends as its own chat template ends it, see ``tokenize.template``); with
``max_response_tokens`` set, as for the hallucination-refusal pairs that use only
the first 5 tokens of each response (App. A.1), the response is cut to that many
tokens and gets no end token, because the cut text does not end there.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from phiforge.data.records import read_jsonl_lines, write_jsonl
from phiforge.errors import DataError
from phiforge.tokenize.chat import render_conversation, render_reply

REQUIRED = ("id", "kind", "prompt_ids", "chosen_ids", "rejected_ids")
REF_KEYS = ("ref_chosen_logp", "ref_rejected_logp")
TEXT_REQUIRED = ("id", "kind", "messages", "chosen", "rejected")


@dataclass(slots=True)
class TokenPair:
    """One preference pair on token ids (see the module docstring for the row format)."""

    id: str
    kind: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    metadata: dict[str, Any] = field(default_factory=dict)
    ref_chosen_logp: float | None = None
    ref_rejected_logp: float | None = None

    @property
    def single_token(self) -> bool:
        """Both responses are one token (PTS): DPO scores them from one next-token distribution."""
        return len(self.chosen_ids) == 1 and len(self.rejected_ids) == 1

    @property
    def max_length(self) -> int:
        """Tokens of the longest sequence this pair puts through the model (prompt + longer response)."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen_logp is not None and self.ref_rejected_logp is not None

    def to_row(self) -> dict:
        """The JSONL row; metadata keys sit at the top level like the producers write them."""
        row = {**self.metadata, "id": self.id, "kind": self.kind, "prompt_ids": list(self.prompt_ids),
               "chosen_ids": list(self.chosen_ids), "rejected_ids": list(self.rejected_ids)}
        if self.has_reference:
            row["ref_chosen_logp"], row["ref_rejected_logp"] = self.ref_chosen_logp, self.ref_rejected_logp
        return row


# -- token-id rows ------------------------------------------------------------


def read_token_pairs(path: str | Path, vocab_size: int | None = None) -> list[TokenPair]:
    """Read and validate a token-pair JSONL file.

    Raises ``DataError`` naming ``file:line`` and the field for a missing key, a
    non-integer or out-of-vocabulary id (when ``vocab_size`` is given), an empty
    prompt or response, a bad reference log-prob, or an ``id`` used twice (the held-out
    split and reference cache rely on unique ids).
    """
    pairs, seen = [], {}
    for lineno, row in read_jsonl_lines(path, REQUIRED):
        where = f"{path}:{lineno}"
        pair = pair_from_row(row, where, vocab_size)
        if pair.id in seen:
            raise DataError(f"{where}: id {pair.id!r} already used on line {seen[pair.id]}; pair ids must be unique")
        seen[pair.id] = lineno
        pairs.append(pair)
    return pairs


def pair_from_row(row: dict, where: str, vocab_size: int | None = None) -> TokenPair:
    """Validate one token-pair row (``where`` prefixes error messages, e.g. ``file:line``)."""
    for key in REQUIRED:
        if key not in row:
            raise DataError(f"{where}: missing field '{key}' (fields present: {sorted(row)}); "
                            f"token-pair rows need {list(REQUIRED)}")
    for key in ("id", "kind"):
        if not isinstance(row[key], str) or not row[key]:
            raise DataError(f"{where}: field '{key}' must be a non-empty string, got {row[key]!r}")
    ids = {key: _check_ids(row[key], f"{where}: field '{key}'", vocab_size) for key in REQUIRED[2:]}
    refs = {key: _check_ref(row.get(key), f"{where}: field '{key}'") for key in REF_KEYS}
    metadata = {k: v for k, v in row.items() if k not in REQUIRED and k not in REF_KEYS}
    return TokenPair(id=row["id"], kind=row["kind"], **ids, metadata=metadata, **refs)


def _check_ids(value: Any, where: str, vocab_size: int | None) -> list[int]:
    if not isinstance(value, list):
        raise DataError(f"{where}: expected a list of token ids, got {type(value).__name__}")
    if not value:
        raise DataError(f"{where}: is empty; a pair needs a prompt and a non-empty chosen and rejected response")
    for i, tok in enumerate(value):
        if not isinstance(tok, int) or isinstance(tok, bool):
            raise DataError(f"{where}[{i}]: token ids must be integers, got {tok!r}")
        if tok < 0 or (vocab_size is not None and tok >= vocab_size):
            raise DataError(f"{where}[{i}]: token id {tok} is outside the vocabulary [0, {vocab_size}); "
                            "were these pairs tokenized with another tokenizer?")
    return value


def _check_ref(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value > 0:
        raise DataError(f"{where}: a reference log-prob must be a finite number <= 0, got {value!r}")
    return float(value)


def write_token_pairs(path: str | Path, pairs: Iterable[TokenPair]) -> int:
    """Write pairs as JSONL atomically; returns the number written."""
    return write_jsonl(path, (p.to_row() for p in pairs))


# -- text rows -> token rows ----------------------------------------------------


def text_pairs_to_token_pairs(tokenizer, rows: Iterable[dict],
                              where: str = "text pairs") -> tuple[list[TokenPair], Counter]:
    """Render text-form pairs with the student's tokenizer; returns ``(pairs, counts)``.

    ``counts`` has ``kept`` and one ``dropped_<reason>`` key per drop reason:
    ``dropped_identical`` (chosen and rejected ids equal after tokenization, e.g. two
    refusals that agree in their first 5 tokens: no preference signal) and
    ``dropped_empty_response`` (a truncated response with no tokens). Malformed rows
    raise ``DataError`` naming ``where`` and the 1-based row number.
    """
    pairs: list[TokenPair] = []
    counts: Counter = Counter()
    for n, row in enumerate(rows, start=1):
        pair, reason = _text_row_to_pair(tokenizer, row, f"{where} row {n}")
        counts["kept" if pair else f"dropped_{reason}"] += 1
        if pair:
            pairs.append(pair)
    return pairs, counts


def _text_row_to_pair(tokenizer, row: dict, where: str) -> tuple[TokenPair | None, str]:
    for key in TEXT_REQUIRED:
        if key not in row:
            raise DataError(f"{where}: missing field '{key}' (fields present: {sorted(row)})")
    limit = row.get("max_response_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise DataError(f"{where}: field 'max_response_tokens' must be a positive integer or null, got {limit!r}")
    try:
        prompt, _ = render_conversation(tokenizer, row["messages"], add_generation_prompt=True)
    except DataError as e:
        raise DataError(f"{where} (id {row['id']!r}): {e}") from e
    chosen, rejected = (_response_ids(tokenizer, row["messages"], row[k], limit, f"{where}: field '{k}'")
                        for k in ("chosen", "rejected"))
    if not chosen or not rejected:
        return None, "empty_response"
    if chosen == rejected:
        return None, "identical"
    metadata = {k: v for k, v in row.items() if k not in (*TEXT_REQUIRED, "max_response_tokens")}
    if limit is not None:
        metadata["max_response_tokens"] = limit
    return TokenPair(id=str(row["id"]), kind=str(row["kind"]), prompt_ids=prompt, chosen_ids=chosen,
                     rejected_ids=rejected, metadata=metadata), ""


def _response_ids(tokenizer, messages: list, text: Any, limit: int | None, where: str) -> list[int]:
    """Response ids ended as the chat format ends a turn (``<|im_end|>`` for Phi-4, else the model's
    template); or its first ``limit`` content ids and no end token (App. A.1)."""
    if not isinstance(text, str):
        raise DataError(f"{where}: expected a string, got {type(text).__name__}")
    if limit is not None:
        return tokenizer(text, add_special_tokens=False)["input_ids"][:limit]
    try:
        return render_reply(tokenizer, messages, text)
    except DataError as e:
        raise DataError(f"{where}: {e}") from e


def to_trl_rows(pairs: Iterable[TokenPair], tokenizer) -> list[dict]:
    """Decode pairs to TRL's ``prompt``/``chosen``/``rejected`` text columns (control tokens kept).

    For inspection and cross-checks only: TRL re-tokenizes text, which need not give
    back the same ids (see the module docstring), so training uses the ids directly.
    """
    def text(ids):
        return tokenizer.decode(ids, skip_special_tokens=False)

    return [{"id": p.id, "kind": p.kind, "prompt": text(p.prompt_ids), "chosen": text(p.chosen_ids),
             "rejected": text(p.rejected_ids)} for p in pairs]


def format_counts(counts: Counter | dict) -> str:
    """One line like ``kept 120, dropped_identical 3`` for logs."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no pairs"

