"""Tokenizers for phiforge: the real Phi-4 (cl100k) one, small from-scratch BPEs, chat format.

Every tokenizer here shares the Phi-4 chat layout (``chat.CHAT_TEMPLATE``) and its
control tokens, so data, SFT and eval code never need to know which one a run uses.
"""

from phiforge.tokenize.bpe import (
    BPE_SPECIAL_TOKENS,
    MIN_VOCAB_SIZE,
    PAD_TOKEN,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)
from phiforge.tokenize.chat import (
    CHAT_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    IM_SEP,
    IM_START,
    SPECIAL_TOKENS,
    render_chat,
    render_conversation,
    validate_messages,
)
from phiforge.tokenize.phi4 import (
    CL100K_PATTERN,
    PHI4_END_OF_TURN_ID,
    PHI4_END_OF_TURN_TOKEN,
    PHI4_EOS_ID,
    PHI4_EOS_TOKEN,
    PHI4_MAX_LENGTH,
    PHI4_PAD_ID,
    PHI4_PAD_TOKEN,
    PHI4_SPECIAL_IDS,
    PHI4_VOCAB_SIZE,
    build_phi4_tokenizer,
    phi4_tokenizer,
)

__all__ = [
    "BPE_SPECIAL_TOKENS", "CHAT_TEMPLATE", "CL100K_PATTERN", "ENDOFTEXT", "IM_END", "IM_SEP",
    "IM_START", "MIN_VOCAB_SIZE", "PAD_TOKEN", "PHI4_END_OF_TURN_ID", "PHI4_END_OF_TURN_TOKEN",
    "PHI4_EOS_ID", "PHI4_EOS_TOKEN", "PHI4_MAX_LENGTH", "PHI4_PAD_ID", "PHI4_PAD_TOKEN",
    "PHI4_SPECIAL_IDS", "PHI4_VOCAB_SIZE", "SPECIAL_TOKENS", "build_phi4_tokenizer",
    "load_tokenizer", "phi4_tokenizer", "render_chat", "render_conversation",
    "save_tokenizer", "train_bpe", "validate_messages",
]
