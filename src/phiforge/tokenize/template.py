"""Render conversations with a model's OWN chat template, with SFT loss masks (report §4.1 on any model).

``chat.render_conversation`` builds the Phi-4 format piece by piece from its
control tokens. A foreign model (Qwen, Llama, Phi-3, ...) brings its own Jinja
chat template, whose layout we do not know in advance. We find the assistant's
tokens by rendering prefixes of the conversation with the template itself:

* ``prompt_k`` = the template on ``messages[:k]`` with the generation prompt (what
  the model sees at inference before answering turn ``k``);
* ``turn_k`` = the template on ``messages[:k+1]`` (the same plus the answer and
  whatever the template closes a turn with, e.g. ``<|im_end|>`` or ``<|eot_id|>``).

The trained span of assistant turn ``k`` is ``turn_k[len(prompt_k):]`` without
trailing whitespace: the content and the end-of-turn token, as in the Phi-4 mask
(the model must learn to stop). The text is cut into trained / untrained segments
and each segment is tokenized on its own, so the prompt's ids equal those the
model gets at inference (the generation prompt tokenized alone) and no token
straddles a mask boundary. Templates that rewrite earlier turns (e.g. dropping
reasoning from past answers) or render an answered turn differently from the
generation prompt have no such prefix structure; they fail with a clear error.
"""

from __future__ import annotations

from typing import Sequence

from phiforge.errors import ConfigError, DataError

Segment = tuple[str, bool]  # (text, trained)


def apply_template(tokenizer, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """The template's text for ``messages``; template errors become ``DataError`` (e.g. roles it refuses)."""
    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja2 TemplateError and raise_exception() calls inside templates
        raise DataError(f"the model's chat template cannot render this conversation ({type(e).__name__}: {e}); "
                        "check the roles and their order against what the model accepts") from e
    return text if isinstance(text, str) else "".join(text)


def template_segments(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[Segment]:
    """The rendered conversation cut into ``(text, trained)`` segments; assistant replies are trained."""
    full = apply_template(tokenizer, messages, add_generation_prompt)
    segments: list[Segment] = []
    pos = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = apply_template(tokenizer, messages[:k], add_generation_prompt=True) if k else ""
        turn = apply_template(tokenizer, messages[:k + 1], add_generation_prompt=False)
        _check_prefixes(full, prompt, turn, pos, k)
        reply = turn[len(prompt):]
        trained = reply.rstrip()
        segments += [(full[pos:len(prompt)], False), (trained, True)]
        pos = len(prompt) + len(trained)
    segments.append((full[pos:], False))
    return [(text, trained) for text, trained in segments if text]


def _check_prefixes(full: str, prompt: str, turn: str, pos: int, k: int) -> None:
    """Each answered turn must extend its generation prompt and be a prefix of the whole conversation."""
    if len(prompt) < pos or not turn.startswith(prompt) or not full.startswith(turn):
        raise ConfigError(
            f"messages[{k}]: the model's chat template does not render an answered assistant turn as its "
            "generation prompt followed by the answer (or it rewrites earlier turns), so the trained tokens "
            "cannot be located; use a model whose template is prefix-stable, or set a simpler chat_template "
            "in its tokenizer_config.json")


def render_with_template(tokenizer, messages: Sequence[dict],
                         add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """``(token_ids, loss_mask)`` of a conversation in the tokenizer's own chat template."""
    segments = template_segments(tokenizer, messages, add_generation_prompt)
    if not segments:
        return [], []
    encoded = tokenizer([text for text, _ in segments], add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    mask: list[int] = []
    for (_, trained), piece in zip(segments, encoded):
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask


def reply_ids_with_template(tokenizer, messages: Sequence[dict], reply: str) -> list[int]:
    """Token ids of ``reply`` as the template ends an assistant turn after ``messages`` (content + end token)."""
    ids, mask = render_with_template(tokenizer, [*messages, {"role": "assistant", "content": reply}])
    if 1 not in mask:
        return []
    last = len(mask) - 1 - mask[::-1].index(1)
    first = last
    while first > 0 and mask[first - 1]:
        first -= 1
    return ids[first:last + 1]


def check_no_special_tokens(tokenizer, messages: Sequence[dict]) -> None:
    """Reject content that holds one of the tokenizer's special tokens: it would forge a turn boundary."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t and len(t) > 1]
    for i, message in enumerate(messages):
        for token in specials:
            if token in message["content"]:
                raise DataError(f"messages[{i}].content: contains the tokenizer's special token {token!r}, "
                                "which would forge a turn boundary; remove or escape it")
