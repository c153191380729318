"""From-scratch byte-level BPE for small runs, plus tokenizer save/load.

Small recipes (e.g. the tiny one) cannot afford Phi-4's 100,352-token embedding,
so they train their own byte-level BPE with the same chat layout and control
tokens as Phi-4 (report §3/§4) at a vocabulary size that fits the model. Byte
level means every string encodes (no unknown token) and decodes back exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast

from phiforge.errors import CheckpointError, ConfigError, DataError
from phiforge.tokenize.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END, IM_SEP, IM_START, SPECIAL_TOKENS

PAD_TOKEN = "<|pad|>"
# Placed at ids 0..4 so they are identical across every trained vocabulary.
BPE_SPECIAL_TOKENS: tuple[str, ...] = (*SPECIAL_TOKENS, PAD_TOKEN)
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(BPE_SPECIAL_TOKENS)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
              split_digits: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    ``split_digits`` gives every digit its own token (as LLaMA does), which helps
    small models with arithmetic; off by default to keep GPT-style number chunks.
    The special tokens sit at ids 0..4, no BOS is added, ``<|endoftext|>``
    separates documents and ``<|pad|>`` pads. Training is deterministic: the same
    texts give the same vocabulary and merges.
    """
    _check_sizes(vocab_size, min_frequency)
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = _pre_tokenizer(split_digits)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(BPE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    counter = _Counter()
    tok.train_from_iterator(counter.checked(texts), trainer=trainer)
    if counter.n == 0:
        raise DataError("train_bpe: the corpus is empty; give at least one non-empty text")
    return _wrap(tok)


def _check_sizes(vocab_size: int, min_frequency: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ConfigError(f"tokenizer.vocab_size: {vocab_size!r} must be an integer "
                          f">= {MIN_VOCAB_SIZE}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(f"tokenizer.vocab_size: {vocab_size} is too small; byte-level BPE "
                          f"needs at least {MIN_VOCAB_SIZE} (256 bytes + "
                          f"{len(BPE_SPECIAL_TOKENS)} special tokens)")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ConfigError(f"tokenizer.min_frequency: {min_frequency!r} must be an integer >= 1")


def _pre_tokenizer(split_digits: bool):
    """GPT-2 byte-level split, optionally preceded by one-digit-per-token splitting."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if not split_digits:
        return byte_level
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])


class _Counter:
    """Passes texts through to the trainer, type-checking and counting them."""

    def __init__(self) -> None:
        self.n = 0

    def checked(self, texts: Iterable[str]) -> Iterator[str]:
        if isinstance(texts, (str, bytes)):
            raise DataError("train_bpe: texts must be an iterable of strings, got a single "
                            f"{type(texts).__name__}; wrap it in a list")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"train_bpe: texts[{i}] is {type(text).__name__}, expected str")
            self.n += bool(text)
            yield text


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=ENDOFTEXT,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START, IM_END, IM_SEP],
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def save_tokenizer(tok: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Save ``tok`` (vocab, merges, special tokens, chat template) into folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(path))
    return path


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer folder written by ``save_tokenizer``, never touching the Hub."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path}: no tokenizer.json here; point to a folder written by "
                              "save_tokenizer (or re-run the tokenizer stage)")
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
