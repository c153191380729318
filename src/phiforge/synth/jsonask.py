"""Structured model output: find the JSON in a reply, validate it against a schema, re-ask if wrong.

Several Phi-4 techniques need structured answers from the teacher: the excerpt
tagging schema (App. D.1.1), critic scores per rubric criterion (self-revision,
App. D.1.2), judge verdicts (App. A.2). Models, small ones especially, wrap JSON
in prose or code fences, truncate it, or miss fields. ``ask_json`` takes the
first JSON value that parses *and* validates against a pydantic model; a reply
that fails is re-asked in the same conversation with the exact error
(``max_reasks`` times, batched across prompts), then the item is given up as
``None`` with the last error, for the caller to drop with a reason.

Counters: ``json_valid_first_try``, ``json_reasked``, ``json_valid_after_reask``, ``json_failed``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
REASK = ("Your reply could not be used: {error}\n"
         "Reply again with only one JSON object that follows the requested format exactly.")


@dataclass
class JsonAnswer:
    """One prompt's outcome: the validated value (or None), the raw reply, tries, last error."""

    value: Any
    reply: str
    tries: int
    error: str | None = None


def extract_json(text: str) -> Any:
    """The first JSON object or array in ``text`` (fenced blocks first); ``ValueError`` if none."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for chunk in candidates:
        for start in (i for i, ch in enumerate(chunk) if ch in "{["):
            try:
                value, _ = decoder.raw_decode(chunk, start)
            except json.JSONDecodeError:
                continue
            return value
    raise ValueError("no JSON object found in the reply" if "{" not in text else
                     "the JSON in the reply does not parse (truncated or malformed)")


def parse_as(text: str, schema: type[T]) -> T:
    """Extract and validate; raises ``ValueError`` with a short, model-readable message."""
    value = extract_json(text)
    try:
        return schema.model_validate(value)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}"
                             for err in e.errors()[:5])
        raise ValueError(f"the JSON does not match the required fields ({problems})") from None


def ask_json(step, ctx, prompts: Sequence[list[dict]], schema: type[T], params, *, role: str = "teacher",
             max_reasks: int = 2) -> list[JsonAnswer]:
    """Ask every chat prompt for JSON matching ``schema``; re-ask the failures with their error."""
    convos = [list(p) for p in prompts]
    answers: list[JsonAnswer | None] = [None] * len(convos)
    pending = list(range(len(convos)))
    for attempt in range(max_reasks + 1):
        replies = step.sample(ctx, [convos[i] for i in pending], params, role=role)
        still = []
        for i, completions in zip(pending, replies):
            reply = completions[0].text
            try:
                answers[i] = JsonAnswer(parse_as(reply, schema), reply, attempt + 1)
                ctx.stat("json_valid_first_try" if attempt == 0 else "json_valid_after_reask")
            except ValueError as e:
                answers[i] = JsonAnswer(None, reply, attempt + 1, str(e))
                convos[i] += [{"role": "assistant", "content": reply},
                              {"role": "user", "content": REASK.format(error=e)}]
                still.append(i)
        pending = still
        if not pending:
            break
        if attempt < max_reasks:
            ctx.stat("json_reasked", len(pending))
    ctx.stat("json_failed", len(pending))
    return answers  # type: ignore[return-value]
