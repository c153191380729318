"""A tiny non-Phi-4 instruct model folder (Llama architecture, Llama-3-style chat template), built offline.

Why: post-training from a user's own Hugging Face model (``sft.init = "/models/..."``,
Phi-4 report §4 applied to any causal LM) must work with an architecture and a chat
format that are not Phi-4's. Tests and the CPU smoke check build this folder in a
second instead of downloading a model: a byte-level BPE trained on a few texts, with
Llama-3's control tokens and template, and a 2-layer ``LlamaForCausalLM``.

Run: ``save_tiny_foreign_model(tmp_path / "llama")`` → a folder that
``AutoModelForCausalLM`` / ``AutoTokenizer`` (and ``sft.init``) load.
"""

from __future__ import annotations

from pathlib import Path

BEGIN, HEADER_START, HEADER_END, EOT = "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"

# Llama 3's layout (without its date-stamped default system prompt): header, blank line, content, <|eot_id|>.
LLAMA3_STYLE_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def tiny_foreign_tokenizer(texts: list[str] | None = None, vocab_size: int = 400):
    """A byte-level BPE with Llama-3 control tokens (no Phi-4 ones) and a Llama-3-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = texts or [f"Problem: Sam has {i} apples and buys {i + 3}. Answer: {2 * i + 3}" for i in range(200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BEGIN, HEADER_START, HEADER_END, EOT, "<|pad|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BEGIN, eos_token=EOT, pad_token="<|pad|>",
                                   chat_template=LLAMA3_STYLE_TEMPLATE, clean_up_tokenization_spaces=False)


def tiny_foreign_model(tokenizer, seed: int = 0):
    """A 2-layer, 32-wide ``LlamaForCausalLM`` over ``tokenizer``'s vocabulary, EOS = ``<|eot_id|>``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=eot, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = [eot]
    return model


def save_tiny_foreign_model(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny Llama model and its tokenizer into ``path`` (a Hugging Face model folder)."""
    path = Path(path)
    tok = tiny_foreign_tokenizer()
    tiny_foreign_model(tok, seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path
