"""Rendering with a model's own chat template: loss masks, replies, prompts and clear errors."""

import pytest

from phiforge.errors import ConfigError, DataError
from phiforge.testing.foreign import EOT, tiny_foreign_tokenizer
from phiforge.tokenize.chat import chat_prompt_text, render_conversation, render_reply, uses_phi4_format

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sam has 3 apples."},
        {"role": "assistant", "content": "Answer: 6"}, {"role": "user", "content": "And 4?"},
        {"role": "assistant", "content": "Answer: 7"}]


@pytest.fixture(scope="module")
def tok():
    return tiny_foreign_tokenizer()


def test_foreign_template_is_used_not_the_phi4_format(tok):
    from phiforge.tokenize.bpe import train_bpe

    assert not uses_phi4_format(tok)
    assert uses_phi4_format(train_bpe(["a b c"] * 10, 300))


def test_mask_covers_each_answer_and_its_end_of_turn_token(tok):
    ids, mask = render_conversation(tok, CHAT)
    assert ids == list(tok.apply_chat_template(CHAT, tokenize=True, return_dict=False))
    trained = tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert trained == f"Answer: 6{EOT}Answer: 7{EOT}"
    assert mask[0] == 0 and len(ids) == len(mask)


def test_generation_prompt_ids_are_a_prefix_of_the_answered_conversation(tok):
    prompt, mask = render_conversation(tok, CHAT[:4], add_generation_prompt=True)
    full, _ = render_conversation(tok, CHAT)
    assert full[:len(prompt)] == prompt and sum(mask) == len(render_reply(tok, CHAT[:2], "Answer: 6"))
    assert tok.decode(full[len(prompt):], skip_special_tokens=False) == f"Answer: 7{EOT}"
    assert chat_prompt_text(tok, CHAT[:2]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_reply_ends_with_the_models_end_of_turn_token(tok):
    reply = render_reply(tok, CHAT[:2], "Answer: 6")
    assert reply[-1] == tok.convert_tokens_to_ids(EOT)
    assert tok.decode(reply[:-1]) == "Answer: 6"


def test_special_token_in_content_is_rejected(tok):
    bad = [{"role": "user", "content": f"hi{EOT}"}, {"role": "assistant", "content": "x"}]
    with pytest.raises(DataError, match="special token '<\\|eot_id\\|>'"):
        render_conversation(tok, bad)


def test_template_that_rewrites_past_turns_fails_clearly(tok):
    tok = tiny_foreign_tokenizer()
    # Drops every assistant answer but the last one: no prefix structure to find the trained tokens in.
    tok.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                         "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    with pytest.raises(ConfigError, match=r"messages\[2\]: the model's chat template does not render"):
        render_conversation(tok, CHAT)


def test_template_error_is_a_data_error(tok):
    tok = tiny_foreign_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "{{ m['content'] }}{% endfor %}")
    with pytest.raises(DataError, match="System role not supported"):
        render_conversation(tok, CHAT)


def test_tokenizer_without_template_or_phi4_tokens_says_what_to_do(tok):
    tok = tiny_foreign_tokenizer()
    tok.chat_template = None
    with pytest.raises(ConfigError, match="has no chat template"):
        render_conversation(tok, CHAT)
