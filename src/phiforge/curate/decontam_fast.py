"""Fast benchmark decontamination: Algorithm 1 on 64-bit n-gram hashes in sorted arrays (report App. B).

Why: the Phi-4 report decontaminates *all* training data against 20 benchmarks
with a hybrid 13-gram / 7-gram test (App. B; §7.4 of ``docs/phi4-recipe.md``).
Web-scale corpora make the per-document cost the whole story: the reference
:class:`~phiforge.curate.decontam.ReferenceIndex` builds a Python string per
n-gram and manages a few MB/s per core. :class:`HashedIndex` answers the same
questions with the same results (verdict, matched item, ratio, tie-breaking,
allow-list, short-text rules, ``items_in_corpus``) from numpy arrays, in batches::

    index = HashedIndex.build([("gsm8k", "17", "Ana has 3 apples ..."), ...])
    index.check(text)                   # one document -> Verdict
    index.check_many(texts)             # many documents, vectorised -> [Verdict]
    index.items_in_corpus(docs)         # the reverse question, for the eval split
    index.save("decontam.npz"); HashedIndex.load("decontam.npz")
    build_from_files({"gsm8k": "gsm8k_test.jsonl", "mmlu": "mmlu_test.jsonl"})

How (``benchmarks/decontam.py`` measures it against the reference):

* **Words** come from :func:`~phiforge.curate.decontam.normalize_words` semantics
  (NFKC, lower-case, ``\\w+`` runs) without building a string per word: a batch
  of texts is normalised as whole strings (NFKC is skipped for ASCII texts, where
  it is the identity), joined, and viewed as an array of code points (1 byte per
  character for ASCII, UTF-32 otherwise). A per-code-point table says which
  characters ``\\w`` matches (``re``'s ``\\w`` is a per-character class), so word
  runs are the rising and falling edges of that mask.
* **Word hashes**: a polynomial hash of each word's code points (prefix sums of
  ``c_j * B**-j`` mod 2**64, so no per-word loop), then MurmurHash3's 64-bit
  finaliser. It depends only on the word, not on its position or batch.
* **n-gram hashes**: ``G(w_i..w_{i+n-1}) = sum w_{i+j} * P**(n-1-j)`` mod 2**64,
  built by doubling (``G_2a(i) = G_a(i) * P**a + G_a(i+a)``), about ten array
  operations for 13-grams and two more for 7-grams; plus ``n * K``, so a short
  text's whole-text feature (fewer than 7 words) never equals a 7-gram's hash.
  Windows running from one text of the batch into the next are hashed too (one
  array operation for all) and dropped when they hit.
* **Index**: for 13-grams and for 7-gram features, the sorted unique hashes with
  the ascending positions of the items holding each (CSR arrays), and per item
  the number of distinct 7-gram features ``|B7|``. Allow-listed 13-grams are
  left out at build time (the reference skips them at query time: same answer).
  A bit table indexed by a hash's top bits (about 1/64 full) screens queries,
  so only a few percent reach ``np.searchsorted``.
* **Per document**: the first 13-gram hit in document order names the item first
  in ``(benchmark, item_id)`` order among those holding that 13-gram. Otherwise
  the document's distinct 7-gram features are counted (only for documents that
  share at least one), shared features are expanded to ``(doc, item)`` pairs and
  counted, ``ratio = overlap / min(|F7|, |B7|)`` (float64 division of integers,
  bit-identical to Python's), and the argmax breaks ties towards the lowest item
  position. Verdicts come from the shared ``classify``. A batch in which no
  document shares a 7-gram skips the 13-gram lookup: a shared 13-gram contains
  seven shared 7-grams.

**Speed** (``benchmarks/decontam.py``: 20 MB of web-like text, 3,000 items, one
core, another process busy on the second core): :meth:`HashedIndex.check_many`
and ``items_in_corpus`` about 67 MB/s, 17x the reference (3.8 MB/s);
:meth:`HashedIndex.check` one document at a time about 39 MB/s (10x), since
numpy's fixed cost of about 30 µs per call dominates short documents. In a batch
the time splits roughly in thirds between text handling (lower-casing and NFKC,
code points, word runs), word hashing (prefix sums over characters), and the
13-gram and 7-gram look-ups.

**Hash collisions.** Two different n-grams get the same hash with probability
about 2**-63 per pair (word hashes behave as random 64-bit values; the n-gram
combination is linear in them with odd multipliers). Even comparing 10**10
document n-grams with 10**7 benchmark n-grams, the expected number of false
matches is about 0.01, and one false 7-gram match only moves a ratio by
``1 / min(|F7|, |B7|)``. The character-level polynomial is a plain mod 2**64
hash, for which adversarial collisions exist for words thousands of characters
long (Thue-Morse strings); natural text has none. Results are otherwise identical
to :class:`ReferenceIndex`, which ``tests/curate/test_decontam_fast.py`` checks
on randomised corpora and the benchmark checks on its whole corpus.
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phiforge.curate.decontam import (
    NORMALIZER,
    PROGRESS_EVERY,
    VERDICTS,
    WORD_PATTERN,
    DecontamConfig,
    DecontamIndex,
    ItemHit,
    ItemKey,
    Verdict,
    classify,
    collect_items,
)
from phiforge.data.records import read_jsonl_lines
from phiforge.errors import ConfigError, DataError
from phiforge.evals.loaders import ID_FIELDS

HASHER = "poly64-codepoints-fmix64-poly64-words/1"
"""Names the hash scheme below; saved indexes record it and refuse to load under another."""
BATCH_CHARS = 1 << 19
"""Texts are hashed and looked up this many characters at a time (bounds memory, amortises numpy calls)."""
SEGMENT_CHARS = 1 << 17
"""Longest stretch of characters hashed with one prefix sum (bounds the power tables)."""
DEFAULT_TEXT_FIELDS = ("question", "problem", "prompt", "passage", "question_stem", "ctx", "goal", "sentence",
                       "instruction", "text", "turns", "choices", "options", "endings", "option1", "option2",
                       "sol1", "sol2")
"""Benchmark item fields read by :func:`read_benchmark_files`, in this order (question first, options after).

Covers the layouts of the report's benchmarks as commonly distributed (MMLU/ARC/GPQA
``question`` + ``choices``, MATH ``problem``, HumanEval ``prompt``, MBPP ``text``,
HellaSwag ``ctx`` + ``endings``, PIQA ``goal`` + ``sol1``/``sol2``, WinoGrande
``sentence`` + ``option1``/``option2``, OpenBookQA ``question_stem``, MT-Bench
``turns``). Answers are left out on purpose, as in ``Task.contamination_text``.
"""

_MASK64 = (1 << 64) - 1
_CHAR_BASE = 0x9E3779B97F4A7C15
# odd, and P - 1 = 2 * odd: two swapped words collide only if their hashes agree in 63 bits
_WORD_BASE = 0xC2B2AE3D27D4EB4F
_LENGTH_SALT = 0x165667B19E3779F9
_FMIX1, _FMIX2 = np.array(0xFF51AFD7ED558CCD, np.uint64), np.array(0xC4CEB9FE1A85EC53, np.uint64)
_SHIFT33, _U3, _U7 = np.array(33, np.uint64), np.array(3, np.uint64), np.array(7, np.uint64)
# 0-d arrays rather than numpy scalars: binary operations with them dispatch faster (per-document calls)
_REASONS = ("", "13gram", "7gram")
"""``reason`` strings by code (``_classify_codes``)."""
_EMPTY_U64 = np.zeros(0, np.uint64)
_EMPTY_I64 = np.zeros(0, np.int64)


def _u64(x: int) -> np.ndarray:
    """``x`` mod 2**64 as a 0-d uint64 array."""
    return np.array(x & _MASK64, np.uint64)


@functools.cache
def _word_power(k: int) -> np.ndarray:
    """``P**k`` mod 2**64."""
    return _u64(pow(_WORD_BASE, k, 1 << 64))


@functools.cache
def _salt(n: int) -> np.ndarray:
    """Added to every ``n``-word feature hash, so features of different lengths never coincide by design."""
    return _u64(n * _LENGTH_SALT)


def _nonzero(mask: np.ndarray) -> np.ndarray:
    """``np.flatnonzero`` of a 1-D mask without its Python wrapper (this runs many times per document)."""
    return mask.nonzero()[0]


# -- words as hashes -----------------------------------------------------------------


@functools.cache
def _ascii_word_table() -> np.ndarray:
    """Which bytes ``\\w`` matches (only 0-127 occur: the ASCII path)."""
    return np.array([bool(WORD_PATTERN.fullmatch(chr(c))) for c in range(256)], dtype=np.bool_)


@functools.cache
def _unicode_word_table() -> np.ndarray:
    """Which code points ``\\w`` matches, from the normaliser's own regex (about 0.2 s, once per process)."""
    table = np.zeros(0x110000, dtype=np.bool_)
    for m in WORD_PATTERN.finditer("".join(map(chr, range(0x110000)))):
        table[m.start():m.end()] = True
    return table


class _PowerTable:
    """``base**k`` and ``base**-k`` mod 2**64 for ``k < len``, grown on demand (base odd, so invertible)."""

    def __init__(self, base: int):
        self.base, self.inverse = base, pow(base, -1, 1 << 64)
        self.up = self.down = np.ones(1, np.uint64)

    def ensure(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.up) < n:
            size = max(n, 2 * len(self.up), SEGMENT_CHARS + (1 << 16))
            self.up, self.down = _powers(self.base, size), _powers(self.inverse, size)
        return self.up, self.down


def _powers(base: int, n: int) -> np.ndarray:
    out = np.full(n, _u64(base), np.uint64)
    out[0] = 1
    return np.cumprod(out, out=out)  # uint64 products wrap mod 2**64, as intended


_CHAR_POWERS = _PowerTable(_CHAR_BASE)


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place: every output bit depends on every input bit."""
    x ^= x >> _SHIFT33
    x *= _FMIX1
    x ^= x >> _SHIFT33
    x *= _FMIX2
    x ^= x >> _SHIFT33
    return x


def _normalized(text: str) -> str:
    """The string whose ``\\w+`` runs are ``normalize_words(text)`` (NFKC is the identity on ASCII)."""
    return text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).lower()


@dataclass(frozen=True, slots=True)
class Words:
    """The normalised words of a batch of texts as 64-bit hashes.

    Text ``t`` owns ``hashes[bounds[t]:bounds[t + 1]]``; a word's hash depends only on the word.
    """

    hashes: np.ndarray
    bounds: np.ndarray

    @property
    def n_texts(self) -> int:
        return len(self.bounds) - 1

    def lengths(self) -> np.ndarray:
        return self.bounds[1:] - self.bounds[:-1]


def hash_words(texts: Sequence[str]) -> Words:
    """Hash the :func:`~phiforge.curate.decontam.normalize_words` words of every text, without a string per word."""
    parts = [_normalized(t) for t in texts]
    joined = "\n".join(parts) if len(parts) != 1 else parts[0]  # "\n" is no word character: no word spans two texts
    if joined.isascii():
        cps = np.frombuffer(joined.encode("ascii"), np.uint8)
        is_word = _ascii_word_table()[cps]
    else:
        cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), np.uint32)
        is_word = _unicode_word_table()[cps]
    starts, ends = _runs(is_word)
    hashes = _run_hashes(cps, starts, ends)
    if len(parts) == 1:
        return Words(hashes, np.array([0, len(hashes)]))
    text_starts = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)) + 1, out=text_starts[1:])
    return Words(hashes, np.searchsorted(starts, text_starts))


def _runs(is_word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of every maximal run of word characters."""
    padded = np.zeros(len(is_word) + 2, np.bool_)
    padded[1:-1] = is_word
    edges = _nonzero(padded[1:] != padded[:-1])
    return edges[0::2], edges[1::2]


def _run_hashes(cps: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Each run's hash, a stretch of at most ``SEGMENT_CHARS`` characters (or one longer word) at a time."""
    if len(cps) <= SEGMENT_CHARS:
        return _fmix64(_segment_hashes(cps, starts, ends))
    out = np.empty(len(starts), np.uint64)
    k = 0
    while k < len(starts):
        c0 = int(starts[k])
        stop = max(int(np.searchsorted(ends, c0 + SEGMENT_CHARS, "right")), k + 1)
        out[k:stop] = _segment_hashes(cps[c0:int(ends[stop - 1])], starts[k:stop] - c0, ends[k:stop] - c0)
        k = stop
    return _fmix64(out)


def _segment_hashes(cps: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``sum_j c_j * B**(e-1-j)`` over each run ``[s, e)``, from one prefix sum of ``c_j * B**-j``."""
    up, down = _CHAR_POWERS.ensure(len(cps) + 1)
    prefix = np.empty(len(cps) + 1, np.uint64)
    prefix[0] = 0
    np.multiply(cps, down[:len(cps)], out=prefix[1:])
    np.cumsum(prefix[1:], out=prefix[1:])
    return (prefix[ends] - prefix[starts]) * up[ends - 1]


# -- n-grams of words as hashes ---------------------------------------------------------


class Grams:
    """Hashes of every window of ``n`` consecutive words of a :class:`Words` batch (memoised per ``n``).

    Windows are hashed at every position, also those that run from one text into the
    next; lookups drop those afterwards (:func:`window_hits`), which is cheaper than
    filtering every window first.
    """

    def __init__(self, words: Words):
        self.words = words
        self._memo = {1: words.hashes}

    def window_hashes(self, n: int) -> np.ndarray:
        """``G_n(i)`` for every start ``i`` in ``0 .. len(words) - n``, ignoring text bounds, without salt."""
        if n not in self._memo:
            if n % 2 == 0:
                g, half = self.window_hashes(n // 2), n // 2
                m = max(len(g) - half, 0)
                self._memo[n] = g[:m] * _word_power(half) + g[half:half + m]
            else:
                g, w = self.window_hashes(n - 1), self.words.hashes
                m = max(len(g) - 1, 0)
                self._memo[n] = g[:m] * _word_power(1) + w[n - 1:n - 1 + m]
        return self._memo[n]

    def features(self, n: int) -> np.ndarray:
        """Feature hashes of the ``n``-word windows at every position (salted by ``n``)."""
        return self.window_hashes(n) + _salt(n)

    def text_of(self, positions: np.ndarray) -> np.ndarray:
        """The text each word position belongs to."""
        if self.words.n_texts == 1:
            return np.zeros(len(positions), np.int64)
        return np.searchsorted(self.words.bounds, positions, "right") - 1

    def windows_of(self, texts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(text, feature hash)`` of every ``n``-word window inside each of ``texts`` (ascending)."""
        counts = np.maximum(self.words.lengths()[texts] - n + 1, 0)
        j, positions = _ranges(self.words.bounds[texts], counts)
        return texts[j], self.features(n)[positions]

    def whole_texts(self, texts: np.ndarray, n: int) -> np.ndarray:
        """Feature hashes of ``texts`` that have exactly ``n`` words, each taken as one ``n``-gram."""
        return self.window_hashes(n)[self.words.bounds[texts]] + _salt(n)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(j, starts[j] + r)`` for ``r`` in ``range(counts[j])``, for every ``j`` (concatenated)."""
    j = np.repeat(np.arange(len(counts)), counts)
    return j, np.arange(len(j)) + np.repeat(starts - (np.cumsum(counts) - counts), counts)


def _short_texts(grams: Grams, config: DecontamConfig) -> Iterator[tuple[int, np.ndarray]]:
    """``(n, texts)``: the texts with exactly ``n`` words, for ``min_words <= n < short_n`` (one feature each)."""
    if grams.words.n_texts == 1:
        n = int(grams.words.bounds[1])
        if config.min_words <= n < config.short_n:
            yield n, np.zeros(1, np.int64)
        return
    lengths = grams.words.lengths()
    short = _nonzero((lengths >= config.min_words) & (lengths < config.short_n))
    if len(short) == 1:
        yield int(lengths[short[0]]), short
    elif len(short):
        for n in np.unique(lengths[short]).tolist():
            yield n, short[lengths[short] == n]


def long_features(grams: Grams, config: DecontamConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(text, hash)`` of every ``long_n``-gram of every text."""
    return grams.windows_of(np.arange(grams.words.n_texts), config.long_n)


def short_features(grams: Grams, config: DecontamConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(text, hash)`` of the 7-gram step's features (``decontam.short_features``: 7-grams, or the whole
    text when it has ``min_words`` to ``short_n - 1`` words); duplicates within a text are kept."""
    texts, hashes = [], []
    for n, which in _short_texts(grams, config):
        texts.append(which)
        hashes.append(grams.whole_texts(which, n))
    t, h = grams.windows_of(np.arange(grams.words.n_texts), config.short_n)
    return np.concatenate([t, *texts]), np.concatenate([h, *hashes])


def window_hits(table: GramTable, grams: Grams, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(text, key)`` of every ``n``-word window inside one text whose hash is in ``table``, in batch order."""
    which, keys = table.find(grams.features(n))
    if grams.words.n_texts == 1:  # every window is inside the one text
        return np.zeros(len(which), np.int64), keys
    texts = grams.text_of(which)
    inside = _nonzero(which + n <= grams.words.bounds[texts + 1])
    return texts[inside], keys[inside]


# -- the index arrays --------------------------------------------------------------------


class GramTable:
    """Sorted unique n-gram hashes, each with the ascending positions of the items holding it (CSR).

    A bit table indexed by a hash's top bits screens queries before ``np.searchsorted``.
    """

    def __init__(self, keys: np.ndarray, offsets: np.ndarray, items: np.ndarray):
        self.keys, self.offsets, self.items = keys, offsets, items
        # a bit per 2**-bits slice of the hash range, about 1/64 set: ~2% of absent queries get past it
        bits = int(min(max(np.ceil(np.log2(max(len(keys), 1) * 64)), 13), 28))
        self._shift = _u64(64 - bits)
        self._screen = np.zeros(1 << (bits - 3), np.uint8)
        slot = keys >> self._shift
        np.bitwise_or.at(self._screen, (slot >> _U3).astype(np.intp), np.left_shift(1, slot & _U7).astype(np.uint8))

    def _maybe(self, hashes: np.ndarray) -> np.ndarray:
        """Positions of the queries whose screen bit is set (every present key's is)."""
        slot = hashes >> self._shift
        return _nonzero((self._screen[slot >> _U3] >> (slot & _U7).astype(np.uint8)) & 1)

    @classmethod
    def from_pairs(cls, hashes: np.ndarray, items: np.ndarray) -> GramTable:
        """From ``(hash, item)`` pairs in any order, duplicates allowed."""
        order = np.lexsort((items, hashes))
        hashes, items = hashes[order], items[order]
        keep = np.ones(len(hashes), np.bool_)
        keep[1:] = (hashes[1:] != hashes[:-1]) | (items[1:] != items[:-1])
        hashes, items = hashes[keep], items[keep]
        keys, first = np.unique(hashes, return_index=True)
        return cls(keys, np.append(first, len(hashes)).astype(np.int64), items.astype(np.int32))

    def find(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(i, k)``: ``hashes[i] == keys[k]``, for every query that is in the table, ``i`` ascending."""
        if not len(self.keys):
            return _EMPTY_I64, _EMPTY_I64
        maybe = self._maybe(hashes)
        queries = hashes[maybe]
        k = np.minimum(np.searchsorted(self.keys, queries), len(self.keys) - 1)
        hit = self.keys[k] == queries
        return maybe[hit], k[hit]

    def first_items(self, k: np.ndarray) -> np.ndarray:
        """The lowest item position holding each key."""
        return self.items[self.offsets[k]]

    def expand(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(j, item)`` for every item of every key ``k[j]``."""
        j, at = _ranges(self.offsets[k], self.offsets[k + 1] - self.offsets[k])
        return j, self.items[at]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.offsets.nbytes + self.items.nbytes


@dataclass(frozen=True)
class _Pairs:
    """``(text, item)`` pairs sharing at least one 7-gram feature, sorted, with their ratios."""

    texts: np.ndarray
    items: np.ndarray
    ratios: np.ndarray

    def ratio_of(self, texts: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
        """The ratio of each ``(texts[j], items[j])`` (0.0 for a pair that shares no 7-gram)."""
        have = self.texts * n_items + self.items
        want = texts * n_items + items
        out = np.zeros(len(want))
        if len(have):
            k = np.minimum(np.searchsorted(have, want), len(have) - 1)
            found = have[k] == want
            out[found] = self.ratios[k[found]]
        return out


def _text_items(table: GramTable, texts: np.ndarray, keys: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``text * n_items + item`` codes of the items behind ``(text, key)`` occurrences, and
    how many distinct keys each ``(text, item)`` shares (repeated occurrences count once)."""
    if not len(keys):
        return _EMPTY_I64, _EMPTY_I64
    n_keys = len(table.keys)
    text_key = np.unique(texts * n_keys + keys)
    j, items = table.expand(text_key % n_keys)
    return np.unique((text_key // n_keys)[j] * n_items + items, return_counts=True)


def _unique_counts(texts: np.ndarray, hashes: np.ndarray, n_texts: int) -> np.ndarray:
    """Number of distinct hashes per text."""
    order = np.lexsort((hashes, texts))
    t, h = texts[order], hashes[order]
    new = np.ones(len(t), np.bool_)
    new[1:] = (t[1:] != t[:-1]) | (h[1:] != h[:-1])
    return np.bincount(t[new], minlength=n_texts)


def _first_per_text(texts: np.ndarray) -> np.ndarray:
    """Index of the first entry of each run of equal values in a sorted array."""
    first = np.ones(len(texts), np.bool_)
    first[1:] = texts[1:] != texts[:-1]
    return _nonzero(first)


def _classify_codes(is_long: np.ndarray, ratios: np.ndarray, config: DecontamConfig) -> tuple[np.ndarray, np.ndarray]:
    """``decontam.classify`` on arrays: (severity 0/1/2 into ``VERDICTS``, reason code into ``_REASONS``)."""
    above = ratios > config.info_threshold
    severity = np.where(is_long, 2, np.where(above, np.where(ratios >= config.contaminated_threshold, 2, 1), 0))
    reason = np.where(is_long, 1, np.where(above, 2, 0))
    return severity.astype(np.int8), reason.astype(np.int8)


class _Tally:
    """The running :class:`ItemHit` of every item, as arrays (``decontam.merge_hit`` vectorised)."""

    def __init__(self, n_items: int):
        self.severity = np.zeros(n_items, np.int8)
        self.doc = np.full(n_items, -1, np.int64)
        self.reason = np.zeros(n_items, np.int8)
        self.ratio = np.zeros(n_items)

    def add(self, items: np.ndarray, docs: np.ndarray, severity: np.ndarray, reason: np.ndarray,
            ratios: np.ndarray) -> None:
        """Fold in one batch's pairs (its documents come after every earlier batch's)."""
        np.maximum.at(self.ratio, items, ratios)
        flagged = _nonzero(severity > 0)
        order = flagged[np.lexsort((docs[flagged], -severity[flagged], items[flagged]))]
        first = order[_first_per_text(items[order])]  # per item: the worst verdict's first document
        worse = first[severity[first] > self.severity[items[first]]]
        self.severity[items[worse]] = severity[worse]
        self.doc[items[worse]] = docs[worse]
        self.reason[items[worse]] = reason[worse]

    def hits(self) -> list[ItemHit]:
        return [ItemHit(VERDICTS[s], r, d if s else None, _REASONS[c]) for s, r, d, c in
                zip(self.severity.tolist(), self.ratio.tolist(), self.doc.tolist(), self.reason.tolist())]


# -- the index ------------------------------------------------------------------------------


class HashedIndex(DecontamIndex):
    """Algorithm 1 on hashed n-grams in sorted arrays: same answers as ``ReferenceIndex``, far faster.

    Use :meth:`check_many` (or ``items_in_corpus``) for throughput: :meth:`check`
    pays numpy's per-call overhead on every document.
    """

    FORMAT = "phiforge.decontam.HashedIndex"
    VERSION = 1

    def __init__(self, config: DecontamConfig, keys: Iterable[ItemKey], long: GramTable, short: GramTable,
                 short_sizes: np.ndarray):
        """Internal; use :meth:`build` or :meth:`load`."""
        self.config = config
        self.keys = tuple(keys)
        self._long, self._short, self._sizes = long, short, short_sizes
        assert len(self._sizes) == len(self.keys)
        self._no_hit = Verdict("clean", "", "", 0.0, "")

    @classmethod
    def build(cls, items, config=None):
        config = config or DecontamConfig()
        rows = collect_items(items)
        long_t, long_h, short_t, short_h = [], [], [], []
        first = 0
        for batch in _batches([text for _, text in rows], BATCH_CHARS):
            grams = Grams(hash_words(batch))
            for out_t, out_h, (t, h) in ((long_t, long_h, long_features(grams, config)),
                                         (short_t, short_h, short_features(grams, config))):
                out_t.append(t + first)
                out_h.append(h)
            first += len(batch)
        lt, lh = np.concatenate([_EMPTY_I64, *long_t]), np.concatenate([_EMPTY_U64, *long_h])
        keep = ~np.isin(lh, allowed_hashes(config))
        short = GramTable.from_pairs(np.concatenate([_EMPTY_U64, *short_h]), np.concatenate([_EMPTY_I64, *short_t]))
        sizes = np.bincount(short.items, minlength=len(rows)).astype(np.int64)
        return cls(config, [key for key, _ in rows], GramTable.from_pairs(lh[keep], lt[keep]), short, sizes)

    @property
    def nbytes(self) -> int:
        """Size of the index arrays (what :meth:`save` writes, less the metadata)."""
        return self._long.nbytes + self._short.nbytes + self._sizes.nbytes

    # -- Algorithm 1 ------------------------------------------------------------------------
    def check(self, text: str) -> Verdict:
        return self._check_batch([text])[0]

    def check_many(self, texts: Iterable[str]) -> list[Verdict]:
        """:meth:`check` for every text, vectorised over batches of about ``BATCH_CHARS`` characters."""
        out: list[Verdict] = []
        for batch in _batches(texts, BATCH_CHARS):
            out += self._check_batch(batch)
        return out

    def _check_batch(self, texts: list[str]) -> list[Verdict]:
        grams = Grams(hash_words(texts))
        pairs = self._short_pairs(grams)
        out = [self._no_hit] * len(texts)
        if not len(pairs.texts):  # a shared 13-gram implies shared 7-grams, so this batch is clean
            return out
        order = np.lexsort((pairs.items, -pairs.ratios, pairs.texts))  # per text: best ratio, then lowest item
        best = order[_first_per_text(pairs.texts[order])]
        for t, i, r in zip(pairs.texts[best].tolist(), pairs.items[best].tolist(), pairs.ratios[best].tolist()):
            verdict, reason = classify(False, r, self.config)
            out[t] = Verdict(verdict, *self.keys[i], r, reason)
        hit_texts, hit_keys = self._long_hits(grams)
        first = _first_per_text(hit_texts)  # hits come in document order: the first is Algorithm 1's
        texts_hit, items = hit_texts[first], self._long.first_items(hit_keys[first])
        ratios = pairs.ratio_of(texts_hit, items, len(self.keys))
        for t, i, r in zip(texts_hit.tolist(), items.tolist(), ratios.tolist()):
            out[t] = Verdict("contaminated", *self.keys[i], r, "13gram")
        return out

    def _long_hits(self, grams: Grams) -> tuple[np.ndarray, np.ndarray]:
        """``(text, key)`` of every indexed long n-gram occurrence, in text then position order."""
        return window_hits(self._long, grams, self.config.long_n)

    def _short_pairs(self, grams: Grams) -> _Pairs:
        """Steps 2-3: every ``(text, item)`` sharing a 7-gram feature, with ``|F7 & B7| / min(|F7|, |B7|)``."""
        texts, keys = window_hits(self._short, grams, self.config.short_n)
        for n, which in _short_texts(grams, self.config):
            found, k = self._short.find(grams.whole_texts(which, n))
            texts, keys = np.concatenate([texts, which[found]]), np.concatenate([keys, k])
        if not len(keys):
            return _Pairs(_EMPTY_I64, _EMPTY_I64, np.zeros(0))
        n_items = len(self.keys)
        f_sizes = self._feature_counts(grams, np.unique(texts))
        text_item, overlap = _text_items(self._short, texts, keys, n_items)
        pt, pi = text_item // n_items, text_item % n_items
        return _Pairs(pt, pi, overlap / np.minimum(f_sizes[pt], self._sizes[pi]))

    def _feature_counts(self, grams: Grams, texts: np.ndarray) -> np.ndarray:
        """``|F7|`` (distinct 7-gram step features) of each of ``texts``, indexed by text (0 elsewhere)."""
        lengths = grams.words.lengths()
        counts = np.zeros(grams.words.n_texts, np.int64)
        counts[texts[lengths[texts] < self.config.short_n]] = 1  # a short text is one feature
        t, h = grams.windows_of(texts[lengths[texts] >= self.config.short_n], self.config.short_n)
        return counts + _unique_counts(t, h, grams.words.n_texts)

    # -- the reverse question -----------------------------------------------------------------
    def items_in_corpus(self, docs, progress=None):
        tally = _Tally(len(self.keys))
        n_docs = 0
        for batch in _batches(docs, BATCH_CHARS, align=PROGRESS_EVERY):
            self._tally_batch(batch, n_docs, tally)
            n_docs += len(batch)
            if progress is not None and n_docs % PROGRESS_EVERY == 0:
                progress(n_docs)
        if progress is not None and n_docs % PROGRESS_EVERY != 0:
            progress(n_docs)
        return dict(zip(self.keys, tally.hits()))

    def _tally_batch(self, texts: list[str], first_doc: int, tally: _Tally) -> None:
        """Every ``(doc, item)`` sharing a non-allow-listed 13-gram or a 7-gram feature, folded into ``tally``."""
        n_items = len(self.keys)
        if not n_items:
            return
        grams = Grams(hash_words(texts))
        pairs = self._short_pairs(grams)
        if not len(pairs.texts):  # a shared 13-gram implies shared 7-grams
            return
        long_pairs = _text_items(self._long, *self._long_hits(grams), n_items)[0]
        every = np.union1d(long_pairs, pairs.texts * n_items + pairs.items)
        texts, items = every // n_items, every % n_items
        severity, reason = _classify_codes(np.isin(every, long_pairs), pairs.ratio_of(texts, items, n_items),
                                           self.config)
        tally.add(items, texts + first_doc, severity, reason, pairs.ratio_of(texts, items, n_items))

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """One ``.npz`` (arrays plus a JSON ``meta`` entry: format, version, normaliser, hasher, config, keys)."""
        path = Path(path)
        meta = {"format": self.FORMAT, "version": self.VERSION, "normalizer": NORMALIZER, "hasher": HASHER,
                "config": self.config.to_dict(), "keys": [list(k) for k in self.keys]}
        arrays = {"meta": np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), np.uint8),
                  "short_sizes": self._sizes}
        for name, table in (("long", self._long), ("short", self._short)):
            arrays |= {f"{name}_keys": table.keys, f"{name}_offsets": table.offsets, f"{name}_items": table.items}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        path = Path(path)
        arrays = _read_npz(path)
        meta = _parse_meta(arrays.pop("meta", None), path)
        _check_meta(meta, path, cls.FORMAT, cls.VERSION)
        try:
            config = DecontamConfig.from_dict(meta["config"])
        except (ConfigError, TypeError) as e:
            raise DataError(f"{path}: bad saved settings ({e}); rebuild the index") from e
        keys = _parse_keys(meta["keys"], path)
        tables = [_table(arrays, name, len(keys), path) for name in ("long", "short")]
        sizes = arrays.get("short_sizes", _EMPTY_U64)
        if sizes.dtype != np.int64 or sizes.shape != (len(keys),):
            raise DataError(f"{path}: short_sizes does not match the {len(keys)} items; rebuild the index")
        return cls(config, keys, *tables, sizes)


# -- helpers: batching, allow-list, persistence ------------------------------------------------


def _batches(texts: Iterable[str], max_chars: int, align: int = 0) -> Iterator[list[str]]:
    """Consecutive lists of texts of about ``max_chars`` characters; with ``align``, a list also ends
    whenever the running count of texts reaches a multiple of ``align`` (exact progress reports)."""
    batch: list[str] = []
    size = count = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        count += 1
        if size >= max_chars or (align and count % align == 0):
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def allowed_hashes(config: DecontamConfig) -> np.ndarray:
    """Feature hashes of the allow-listed ``long_n``-grams (each entry is exactly one, normalised)."""
    grams = Grams(hash_words(sorted(config.allowed_long_ngrams)))
    return long_features(grams, config)[1]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: decontamination index not found; build it and save it first")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable decontamination index ({e}); rebuild the index") from e


def _parse_meta(raw: np.ndarray | None, path: Path) -> dict:
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (AttributeError, ValueError) as e:
        raise DataError(f"{path}: missing or unreadable index metadata ({e}); rebuild the index") from e
    if not isinstance(meta, dict):
        raise DataError(f"{path}: index metadata is not a JSON object; rebuild the index")
    return meta


def _check_meta(meta: dict, path: Path, fmt: str, version: int) -> None:
    """Refuse files of another index kind, format version, normaliser or hash scheme: their hashes would not match."""
    if meta.get("format") != fmt:
        raise DataError(f"{path}: format {meta.get('format')!r} is not {fmt!r}; load it with its own index class")
    if meta.get("version") != version:
        raise DataError(f"{path}: written in format version {meta.get('version')!r}, this phiforge reads "
                        f"version {version}; rebuild the index")
    for field, ours in (("normalizer", NORMALIZER), ("hasher", HASHER)):
        if meta.get(field) != ours:
            raise DataError(f"{path}: built with {field} {meta.get(field)!r}, this phiforge uses {ours!r}; "
                            "rebuild the index")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("keys"), list):
        raise DataError(f"{path}: missing or malformed 'config' / 'keys'; rebuild the index")


def _parse_keys(rows: list, path: Path) -> list[ItemKey]:
    ok = all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in rows)
    keys = [tuple(r) for r in rows] if ok else []
    if not ok or keys != sorted(set(keys)):
        raise DataError(f"{path}: index keys are malformed, not unique or not sorted; rebuild the index")
    return keys


def _table(arrays: Mapping[str, np.ndarray], name: str, n_items: int, path: Path) -> GramTable:
    """One saved :class:`GramTable`, shape- and type-checked."""
    try:
        keys, offsets, items = (arrays[f"{name}_{part}"] for part in ("keys", "offsets", "items"))
    except KeyError as e:
        raise DataError(f"{path}: index array {e} is missing; rebuild the index") from e
    ok = (keys.dtype == np.uint64 and offsets.dtype == np.int64 and items.dtype == np.int32
          and offsets.shape == (len(keys) + 1,) and offsets[0] == 0 and offsets[-1] == len(items)
          and (not len(items) or (items.min() >= 0 and items.max() < n_items)))
    if not ok:
        raise DataError(f"{path}: index arrays '{name}_*' are inconsistent; rebuild the index")
    return GramTable(keys, offsets, items)


# -- benchmark files ------------------------------------------------------------------------------


def read_benchmark_files(paths: Mapping[str, str | Path],
                         text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS) -> list[tuple[str, str, str]]:
    """``(benchmark, item_id, text)`` for every item of every local benchmark JSONL file.

    An item's id is its ``id`` / ``task_id`` / ``unique_id`` / ``question_id``, else its
    0-based position among the file's items (the rule of ``evals.loaders``, so ids
    match eval items). Its text joins the ``text_fields`` it has, in that order
    (strings, numbers, lists of them, or ``{"text": [...]}`` as in ARC choices).
    Errors name ``file:line``.
    """
    triples = []
    for benchmark, path in paths.items():
        seen: dict[str, int] = {}
        for position, (lineno, row) in enumerate(read_jsonl_lines(path)):
            item_id = next((str(row[k]) for k in ID_FIELDS if row.get(k) not in (None, "")), str(position))
            if item_id in seen:
                raise DataError(f"{path}:{lineno}: duplicate item id {item_id!r} (first at line {seen[item_id]})")
            seen[item_id] = lineno
            parts = [s for f in text_fields if f in row for s in _strings(row[f])]
            if not parts:
                raise DataError(f"{path}:{lineno}: item has none of the text fields {', '.join(text_fields)} "
                                f"(has: {', '.join(sorted(row))}); pass text_fields naming its question field")
            triples.append((benchmark, item_id, "\n".join(parts)))
        if not seen:
            raise DataError(f"{path}: benchmark {benchmark!r} holds no items")
    return triples


def _strings(value) -> list[str]:
    """The text pieces of one field value (see :func:`read_benchmark_files`)."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, Mapping):
        return [s for k in ("text", "content") if k in value for s in _strings(value[k])]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def build_from_files(paths: Mapping[str, str | Path], text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
                     config: DecontamConfig | None = None) -> HashedIndex:
    """A :class:`HashedIndex` over local benchmark files ``{benchmark_name: jsonl_path}``.

    Any subset of the report's 20 benchmarks works: index what you have locally.
    """
    if not paths:
        raise ConfigError("decontamination: no benchmark files given; pass {benchmark_name: jsonl_path}")
    return HashedIndex.build(read_benchmark_files(paths, text_fields), config)
