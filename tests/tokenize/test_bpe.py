"""From-scratch byte-level BPE: determinism, byte-level round trips, layout, save/load, errors."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from phiforge.errors import CheckpointError, ConfigError, DataError
from phiforge.tokenize import (
    BPE_SPECIAL_TOKENS,
    CHAT_TEMPLATE,
    MIN_VOCAB_SIZE,
    load_tokenizer,
    render_chat,
    render_conversation,
    save_tokenizer,
    train_bpe,
)

WORDS = ("the model learns to add numbers and explain each step of the proof carefully "
         "while training on synthetic data with curriculum and careful filtering").split()

ROUND_TRIP = [
    "",
    "hello world",
    "The model learns",
    "unseen words: xylophone quixotic zephyr",
    "digits 0 7 42 1234567890 3.14159 -0.5e10",
    "Héllo wörld, naïve café — façade",
    "日本語 中文 한국어 Русский العربية",
    "emoji 😀🎉👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈",
    "  leading spaces and trailing  ",
    "\n\n\nnewlines\r\n\tand tabs\t\t",
    "     ",
    "\u00a0\u2003\u200b odd spaces",
    "<|im_start|>user<|im_sep|>hi<|im_end|>",
    "\x00\x01\x7f control bytes",
]


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randint(0, len(words)), str(rng.randint(0, 99999)))
        lines.append(" ".join(words) + rng.choice([".", "!", "?\n", ",\n\n"]))
    return lines


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


@pytest.fixture(scope="module")
def tok(corpus):
    return train_bpe(corpus, vocab_size=400)


def test_special_tokens_at_first_ids(tok):
    assert BPE_SPECIAL_TOKENS == ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>",
                                  "<|pad|>")
    assert tok.convert_ids_to_tokens(list(range(5))) == list(BPE_SPECIAL_TOKENS)
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", 0)
    assert (tok.pad_token, tok.pad_token_id) == ("<|pad|>", 4)
    assert tok.bos_token is None
    assert tok.chat_template == CHAT_TEMPLATE


def test_vocab_size_reached_and_alphabet_complete(tok):
    assert len(tok) == 400
    assert MIN_VOCAB_SIZE == 261
    vocab = tok.get_vocab()
    # All 256 byte symbols are present, so no string can fall out of the vocabulary.
    assert sum(1 for t in vocab if len(t) == 1) == 256


def test_training_is_deterministic(corpus, tok):
    again = train_bpe(list(corpus), vocab_size=400)
    assert again.get_vocab() == tok.get_vocab()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_different_data_gives_different_vocab(tok):
    other = train_bpe(_corpus(seed=1) + ["zebra zebra zebra zebra"] * 50, vocab_size=400)
    assert other.get_vocab() != tok.get_vocab()


def test_generator_input_is_accepted(corpus, tok):
    from_gen = train_bpe((line for line in corpus), vocab_size=400)
    assert from_gen.get_vocab() == tok.get_vocab()


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_no_special_tokens_added(tok):
    ids = tok("the model")["input_ids"]
    assert not set(ids) & set(range(5))


def test_merges_compress_training_text(tok, corpus):
    text = corpus[0]
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2


def test_split_digits(corpus):
    split = train_bpe(corpus, vocab_size=400, split_digits=True)
    pieces = split.tokenize("year 20250 and 7")
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digit_pieces == ["2", "0", "2", "5", "0", "7"]
    assert split.decode(split.encode("a1b22 333")) == "a1b22 333"
    merged = train_bpe(corpus, vocab_size=400)  # default keeps multi-digit tokens possible
    assert any(len(t) > 1 and t.isdigit() for t in merged.get_vocab())
    assert not any(len(t) > 1 and t.isdigit() for t in split.get_vocab())


def test_chat_helpers_work_with_trained_tokenizer(tok):
    msgs = [{"role": "user", "content": "add 2 and 3"}, {"role": "assistant", "content": "5."}]
    assert tok.apply_chat_template(msgs, tokenize=False) == render_chat(msgs)
    ids, mask = render_conversation(tok, msgs)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "5.<|im_end|>"


def test_save_load_round_trip(tok, tmp_path):
    path = save_tokenizer(tok, tmp_path / "tok")
    loaded = load_tokenizer(path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert (loaded.eos_token, loaded.pad_token) == ("<|endoftext|>", "<|pad|>")
    assert loaded.chat_template == CHAT_TEMPLATE
    for text in ROUND_TRIP:
        assert loaded.encode(text) == tok.encode(text)


def test_load_missing_folder_is_checkpoint_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="nope"):
        load_tokenizer(missing)
    missing.mkdir()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(missing)


@pytest.mark.parametrize("vocab_size", [0, 100, 260, "400", 300.0, True])
def test_bad_vocab_size_is_config_error(vocab_size):
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size.*261"):
        train_bpe(["hello"], vocab_size=vocab_size)


def test_minimum_vocab_size_trains():
    tiny = train_bpe(["hello hello"], vocab_size=MIN_VOCAB_SIZE)
    assert len(tiny) == MIN_VOCAB_SIZE
    assert tiny.decode(tiny.encode("héllo 😀")) == "héllo 😀"


@pytest.mark.parametrize("min_frequency", [0, -1, 1.5])
def test_bad_min_frequency_is_config_error(min_frequency):
    with pytest.raises(ConfigError, match=r"tokenizer\.min_frequency"):
        train_bpe(["hello"], vocab_size=300, min_frequency=min_frequency)


@pytest.mark.parametrize("texts, match", [
    ("a single string", "single str"),
    (["ok", 3], r"texts\[1\]"),
    ([], "empty"),
    (["", ""], "empty"),
])
def test_bad_texts_are_data_errors(texts, match):
    with pytest.raises(DataError, match=match):
        train_bpe(texts, vocab_size=300)


def test_training_is_deterministic_across_processes(tok):
    # Rust hash maps and Python hash seeds differ per process; the vocabulary must not.
    code = ("import json, sys; from phiforge.tokenize import train_bpe; "
            "texts = json.load(sys.stdin); "
            "print(train_bpe(texts, vocab_size=400).backend_tokenizer.to_str())")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": _src_path()}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(_corpus()),
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == tok.backend_tokenizer.to_str()


def _src_path() -> str:
    import phiforge
    src = str(Path(phiforge.__file__).resolve().parents[1])
    return os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
