"""The Phi-4 chat format: template, string rendering and SFT loss masks (other models: their own template).

Phi-4 is post-trained on the ChatML-style format of the report's §4 (post-training)
with ``<|im_sep|>`` between role and content and no newlines anywhere::

    <|im_start|>user<|im_sep|>Prompt<|im_end|><|im_start|>assistant<|im_sep|>Answer<|im_end|>

The same layout exists three times and must never drift apart: as the Jinja
``CHAT_TEMPLATE`` that Hugging Face tooling (``apply_chat_template``, vLLM, ...)
reads from a saved tokenizer, as the pure-Python ``render_chat`` that data stages
use without a tokenizer, and as ``render_conversation`` which yields token ids with
a loss mask so SFT trains on the assistant's tokens only (Phi-4 report §4.1).
The tests check all three against each other. A tokenizer that carries another
chat template (a foreign model post-trained from its own folder, ``sft.init =
"/models/..."``) is rendered in that template instead (``tokenize.template``).
"""

from __future__ import annotations

from typing import Any, Sequence

from phiforge.errors import ConfigError, DataError

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IM_SEP = "<|im_sep|>"

# Order matters: tokenizers trained from scratch (bpe.py) place them at ids 0..3.
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, IM_SEP)

ROLES = ("system", "user", "assistant")

# One line, no whitespace between Jinja tags: any stray newline would end up in
# the prompt the model sees and silently differ from what it was trained on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)

GENERATION_PROMPT = f"{IM_START}assistant{IM_SEP}"


def validate_messages(messages: Any) -> list[dict]:
    """Check a conversation and return it as a list of message dicts.

    Raises ``DataError`` naming the message index and field, so a user can find
    the bad record; content holding a control token such as ``<|im_end|>`` is
    rejected because it would forge a turn boundary (and mis-align the loss mask).
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise DataError(f"messages: expected a list of {{'role', 'content'}} dicts, "
                        f"got {type(messages).__name__}")
    for i, message in enumerate(messages):
        _validate_message(i, message)
    return list(messages)


def _validate_message(i: int, message: Any) -> None:
    if not isinstance(message, dict):
        raise DataError(f"messages[{i}]: expected a dict with 'role' and 'content', "
                        f"got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise DataError(f"messages[{i}].role: {role!r} is not one of {list(ROLES)}; "
                        "fix the role of this message")
    content = message.get("content")
    if not isinstance(content, str):
        raise DataError(f"messages[{i}].content: expected a string, got "
                        f"{type(content).__name__}; multimodal or tool content is not supported")
    for token in SPECIAL_TOKENS:
        if token in content:
            raise DataError(f"messages[{i}].content: contains the control token {token!r}, "
                            "which would forge a turn boundary; remove or escape it")


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """Render ``messages`` exactly as ``CHAT_TEMPLATE`` does, without Jinja or a tokenizer."""
    parts = [_turn(m["role"], m["content"]) for m in validate_messages(messages)]
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


def _turn(role: str, content: str) -> str:
    return f"{IM_START}{role}{IM_SEP}{content}{IM_END}"


def render_conversation(tokenizer, messages: Sequence[dict],
                        add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Tokenize a conversation into ``(token_ids, loss_mask)`` for SFT.

    Each piece (role, content) is tokenized on its own and control tokens are
    inserted as single ids, so the boundaries of the assistant's content are known
    exactly instead of being guessed from offsets. The mask is 1 on each assistant
    content token and its closing ``<|im_end|>`` (the model must learn to stop),
    0 elsewhere. The ids equal ``tokenizer.encode(render_chat(messages))`` because
    special tokens split the text before pre-tokenization anyway.
    """
    messages = validate_messages(messages)
    if not uses_phi4_format(tokenizer):
        return _render_foreign(tokenizer, messages, add_generation_prompt)
    start, sep, end = _control_ids(tokenizer)
    texts = [piece for m in messages for piece in (m["role"], m["content"])]
    encoded = _encode_pieces(tokenizer, texts)
    ids: list[int] = []
    mask: list[int] = []
    for k, message in enumerate(messages):
        role_ids, content_ids = encoded[2 * k], encoded[2 * k + 1]
        trained = 1 if message["role"] == "assistant" else 0
        ids += [start, *role_ids, sep, *content_ids, end]
        mask += [0] * (len(role_ids) + 2) + [trained] * (len(content_ids) + 1)
    if add_generation_prompt:
        prompt = [start, *_encode_pieces(tokenizer, ["assistant"])[0], sep]
        ids += prompt
        mask += [0] * len(prompt)
    return ids, mask


def uses_phi4_format(tokenizer) -> bool:
    """True for our tokenizers (Phi-4 control tokens, our template or none); False for a model's own template.

    A foreign model (Qwen, Llama, ...) is post-trained in the chat format it was
    instruction-tuned with, read from its tokenizer's chat template
    (``phiforge.tokenize.template``); rendering it in the Phi-4 format would teach
    it a second format.
    """
    template = getattr(tokenizer, "chat_template", None)
    if template and template != CHAT_TEMPLATE:
        return False
    return _has_control_tokens(tokenizer) or not template


def _has_control_tokens(tokenizer) -> bool:
    for token in (IM_START, IM_SEP, IM_END):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
            return False
    return True


def _render_foreign(tokenizer, messages: list[dict], add_generation_prompt: bool) -> tuple[list[int], list[int]]:
    from phiforge.tokenize.template import check_no_special_tokens, render_with_template

    check_no_special_tokens(tokenizer, messages)
    return render_with_template(tokenizer, messages, add_generation_prompt=add_generation_prompt)


def render_reply(tokenizer, messages: Sequence[dict], reply: str) -> list[int]:
    """Token ids of an assistant ``reply`` after ``messages``, ended as the chat format ends a turn.

    Phi-4 format: the reply's tokens + ``<|im_end|>``; a model's own template: the
    trained span of the reply's turn (e.g. ``...<|eot_id|>`` for Llama 3). DPO
    responses use it so the model learns where to stop (report §4.2).
    """
    if uses_phi4_format(tokenizer):
        end = _control_ids(tokenizer)[2]
        return [*tokenizer(reply, add_special_tokens=False)["input_ids"], end]
    from phiforge.tokenize.template import reply_ids_with_template

    validate_messages([*messages, {"role": "assistant", "content": reply}])
    return reply_ids_with_template(tokenizer, messages, reply)


def chat_prompt_text(tokenizer, messages: Sequence[dict]) -> str:
    """The text a chat model is prompted with: ``render_chat`` for Phi-4, else the model's own template."""
    if uses_phi4_format(tokenizer):
        return render_chat(messages, add_generation_prompt=True)
    from phiforge.tokenize.template import apply_template

    return apply_template(tokenizer, validate_messages(messages), add_generation_prompt=True)


def _encode_pieces(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _control_ids(tokenizer) -> tuple[int, int, int]:
    """Ids of ``<|im_start|>``, ``<|im_sep|>``, ``<|im_end|>``; ConfigError if absent."""
    ids = []
    for token in (IM_START, IM_SEP, IM_END):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise ConfigError(f"tokenizer: has no chat template and no {token!r} token, so it cannot render "
                              "chats; give it a chat_template (an instruct model's tokenizer has one) or use "
                              "phiforge.tokenize.phi4_tokenizer() or train_bpe()")
        ids.append(token_id)
    return ids[0], ids[1], ids[2]
