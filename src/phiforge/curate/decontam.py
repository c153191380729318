"""Benchmark decontamination with the Phi-4 hybrid n-gram check (report App. B, Algorithm 1).

Why: a model that saw a benchmark's test items during training scores higher on
them for the wrong reason. The Phi-4 report decontaminates all training data
against 20 benchmarks (App. B; §7.4 of ``docs/phi4-recipe.md``): a document is
*contaminated* if it shares a 13-gram with any test item (unless that 13-gram is
on an allow-list of common boilerplate), or if its 7-gram overlap ratio with one
test item reaches a threshold; a lower ratio above an "info" threshold is
*partial*. The same index answers the reverse question for evaluation: which
benchmark items appear somewhere in a training corpus
(:meth:`DecontamIndex.items_in_corpus`, used by ``evals.contamination``).

:class:`ReferenceIndex` keeps Python sets of n-gram strings: slow, but obviously
correct. :class:`~phiforge.curate.decontam_fast.HashedIndex` (hashed n-grams in
sorted arrays) implements the same :class:`DecontamIndex` interface and gives
identical results; it reuses ``collect_items``, ``classify`` and the word regex,
and computes what ``short_features``, ``overlap_ratio``, ``argmax_ratio`` and
``merge_hit`` define on arrays (tested against this class).

Choices where the report is silent (all UNCONFIRMED there):

* **Normaliser** (:func:`normalize_words`): Unicode NFKC, lower-case, every run of
  non-word characters (punctuation, symbols, whitespace) is a separator, so
  "1.8 kg" gives ``["1", "8", "kg"]``, as in the report's worked example. NFKC
  makes full-width digits and ligatures match their plain forms.
* **Thresholds**: ``info_threshold = 0.5`` (partial when *more than half* of the
  shorter side's 7-grams are shared) and ``contaminated_threshold = 0.8``. Each
  changed word removes up to seven 7-grams, so a copy with one or two edits
  stays at or above 0.8, while rewording or changing a few numbers drops the
  ratio below 0.5. The report's worked example (a 13-gram hit whose 7-gram
  ratio was 0.395) shows ratios near 0.4 occur for real leaks caught by the
  13-gram test, so the 7-gram test is kept for denser overlap than that.
* **Short texts**: a text with fewer than ``short_n`` (7) words has no 7-grams;
  its single 7-gram-step feature is then the whole normalised text, so it
  matches only an identical short text (ratio 1.0). Texts with fewer than
  ``min_words`` (3) words have no features at all and are always clean: a
  one-word answer such as "Paris" would otherwise flag every document that is
  that word. A text with fewer than ``long_n`` (13) words has no 13-grams, so
  only the 7-gram test applies to it.
* **Ties** in the 7-gram argmax go to the first item in ``(benchmark, item_id)``
  order; a 13-gram shared by several items names the first of them.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TypeVar

from phiforge.errors import ConfigError, DataError

VERDICTS = ("clean", "partial", "contaminated")
"""From least to most severe; ``merge_hit`` keeps the most severe."""
_SEVERITY = {v: i for i, v in enumerate(VERDICTS)}
NORMALIZER = "nfkc-lower-words/1"
"""Names :func:`normalize_words`; saved indexes record it and refuse to load under another."""
PROGRESS_EVERY = 1000
"""``items_in_corpus`` calls its progress callback every this many documents, and at the end."""
WORD_PATTERN = re.compile(r"\w+")
"""The word regex of :func:`normalize_words`; ``decontam_fast`` derives its per-character word table from it."""
_WORD = WORD_PATTERN

IndexT = TypeVar("IndexT", bound="DecontamIndex")
ItemKey = tuple[str, str]
"""``(benchmark, item_id)``."""


def normalize_words(text: str) -> list[str]:
    """Lower-cased word tokens with punctuation as separators: "1.8 kg" -> ["1", "8", "kg"]."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def normalize_ngram(text: str) -> str:
    """One n-gram in the index's form (normalised words joined by single spaces)."""
    return " ".join(normalize_words(text))


# -- configuration ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DecontamConfig:
    """Settings of the hybrid n-gram check (defaults and their reasons: module docstring)."""

    long_n: int = 13
    """Words per exact-match n-gram (Algorithm 1 step 1)."""
    short_n: int = 7
    """Words per overlap n-gram (Algorithm 1 steps 2-4)."""
    info_threshold: float = 0.5
    """A 7-gram ratio strictly above this is at least partial."""
    contaminated_threshold: float = 0.8
    """A 7-gram ratio at or above this (and above ``info_threshold``) is contaminated."""
    min_words: int = 3
    """Texts with fewer normalised words have no features and are always clean."""
    allowed_long_ngrams: frozenset[str] = frozenset()
    """Allow-listed ``long_n``-grams (boilerplate) that never count as a 13-gram hit; normalised here."""

    def __post_init__(self) -> None:
        for name in ("long_n", "short_n", "min_words"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"decontamination: {name} must be a positive integer, got {value!r}")
        if self.short_n > self.long_n:
            raise ConfigError(f"decontamination: short_n ({self.short_n}) must not exceed long_n ({self.long_n})")
        if self.min_words > self.short_n:
            raise ConfigError(f"decontamination: min_words ({self.min_words}) must not exceed short_n "
                              f"({self.short_n})")
        self._check_thresholds()
        object.__setattr__(self, "allowed_long_ngrams", self._normalized_allow_list())

    def _check_thresholds(self) -> None:
        info, dirty = self.info_threshold, self.contaminated_threshold
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (info, dirty))
        if not numbers or not 0 < info <= dirty <= 1:
            raise ConfigError(f"decontamination: need 0 < info_threshold <= contaminated_threshold <= 1, "
                              f"got info_threshold={info!r}, contaminated_threshold={dirty!r}")

    def _normalized_allow_list(self) -> frozenset[str]:
        if isinstance(self.allowed_long_ngrams, str):
            raise ConfigError("decontamination: allowed_long_ngrams must be a collection of n-grams, not one string")
        out = set()
        for entry in self.allowed_long_ngrams:
            gram = normalize_ngram(str(entry))
            if len(gram.split()) != self.long_n:
                raise ConfigError(f"decontamination: allow-list entry {entry!r} has {len(gram.split())} words "
                                  f"after normalisation; each must have long_n = {self.long_n}")
            out.add(gram)
        return frozenset(out)

    def to_dict(self) -> dict:
        """JSON-ready settings (the allow-list as a sorted list)."""
        d = asdict(self)
        d["allowed_long_ngrams"] = sorted(self.allowed_long_ngrams)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> DecontamConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"decontamination: unknown setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        d = dict(d)
        if "allowed_long_ngrams" in d:
            d["allowed_long_ngrams"] = frozenset(d["allowed_long_ngrams"])
        return cls(**d)


def load_allow_list(path: str | Path, long_n: int = 13) -> frozenset[str]:
    """Read an allow-list file: one n-gram per line; blank lines and ``#`` comments skipped.

    Entries are normalised like documents, so they may keep their punctuation
    ("(A) I only (B) II only ..."). Errors name ``file:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: allow-list file not found")
    grams = set()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            gram = normalize_ngram(line)
            if len(gram.split()) != long_n:
                raise DataError(f"{path}:{lineno}: allow-list entry has {len(gram.split())} words after "
                                f"normalisation; each line must hold exactly one {long_n}-gram")
            grams.add(gram)
    return frozenset(grams)


# -- results ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Algorithm 1's answer for one document.

    ``benchmark``/``item_id`` name the matched item: the 13-gram hit's item, else
    the 7-gram argmax (empty when no item shares a 7-gram). ``ratio`` is the
    7-gram overlap ratio with that item (also for 13-gram hits, as the report's
    worked example quotes it). ``reason`` is "13gram", "7gram" or "" (clean).
    """

    verdict: str
    benchmark: str
    item_id: str
    ratio: float
    reason: str


@dataclass(frozen=True)
class ItemHit:
    """How one benchmark item appears in a corpus (the reverse question).

    ``verdict``/``reason``: the worst over all documents; ``doc``: the index of the
    first document giving that verdict (``None`` when clean); ``ratio``: the
    highest 7-gram ratio over all documents (not necessarily from ``doc``).
    """

    verdict: str = "clean"
    ratio: float = 0.0
    doc: int | None = None
    reason: str = ""


# -- per-document logic shared by every index ------------------------------------


def ngrams(words: list[str], n: int) -> list[str]:
    """Space-joined n-grams of ``words`` in document order (none when fewer than n words)."""
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def short_features(words: list[str], config: DecontamConfig) -> set[str]:
    """The 7-gram step's feature set: 7-grams, the whole text when short, nothing when tiny."""
    if len(words) < config.min_words:
        return set()
    if len(words) < config.short_n:
        return {" ".join(words)}
    return set(ngrams(words, config.short_n))


def overlap_ratio(overlap: int, n_doc: int, n_item: int) -> float:
    """Algorithm 1's ratio: shared 7-grams over the smaller of the two feature sets."""
    return overlap / min(n_doc, n_item) if overlap else 0.0


def classify(long_hit: bool, ratio: float, config: DecontamConfig) -> tuple[str, str]:
    """``(verdict, reason)`` for one document-item pair (Algorithm 1 step 4)."""
    if long_hit:
        return "contaminated", "13gram"
    if ratio > config.info_threshold:
        return ("contaminated" if ratio >= config.contaminated_threshold else "partial"), "7gram"
    return "clean", ""


def argmax_ratio(ratios: Mapping[int, float]) -> tuple[int | None, float]:
    """The item position with the highest ratio; ties go to the lowest position (sorted key order)."""
    if not ratios:
        return None, 0.0
    pos, ratio = min(ratios.items(), key=lambda kv: (-kv[1], kv[0]))
    return pos, ratio


def merge_hit(old: ItemHit, new: ItemHit) -> ItemHit:
    """Fold one document's result into an item's running result (documents arrive in order)."""
    worse = severity(new.verdict) > severity(old.verdict)
    base = new if worse else old
    return replace(base, ratio=max(old.ratio, new.ratio))


def severity(verdict: str) -> int:
    """0 clean, 1 partial, 2 contaminated."""
    return _SEVERITY[verdict]


# -- the interface ------------------------------------------------------------------


class DecontamIndex(ABC):
    """A benchmark index answering Algorithm 1 per document and the reverse corpus question.

    ``keys`` are the items' ``(benchmark, item_id)`` pairs sorted as Python tuples of str (code-point order); an
    item's position in ``keys`` is its tie-breaking rank.
    """

    config: DecontamConfig
    keys: tuple[ItemKey, ...]

    @classmethod
    @abstractmethod
    def build(cls: type[IndexT], items: Iterable[tuple[str, str, str]],
              config: DecontamConfig | None = None) -> IndexT:
        """Index ``(benchmark, item_id, text)`` triples; duplicate keys are a ``DataError``."""

    @abstractmethod
    def check(self, text: str) -> Verdict:
        """Algorithm 1 for one training document."""

    @abstractmethod
    def items_in_corpus(self, docs: Iterable[str],
                        progress: Callable[[int], None] | None = None) -> dict[ItemKey, ItemHit]:
        """For every item, how it appears in ``docs`` (streamed once); see :class:`ItemHit`."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Persist atomically, so the index is built once."""

    @classmethod
    @abstractmethod
    def load(cls: type[IndexT], path: str | Path) -> IndexT:
        """Read what :meth:`save` wrote; a file from another format or normaliser is a ``DataError``."""

    def __len__(self) -> int:
        return len(self.keys)


def collect_items(items: Iterable[tuple[str, str, str]]) -> list[tuple[ItemKey, str]]:
    """``((benchmark, item_id), text)`` sorted by key; rejects duplicates and non-string fields."""
    texts: dict[ItemKey, str] = {}
    for n, triple in enumerate(items):
        if len(triple) != 3 or not all(isinstance(x, str) for x in triple):
            raise DataError(f"decontamination item #{n}: expected (benchmark, item_id, text) strings, "
                            f"got {triple!r:.200}")
        benchmark, item_id, text = triple
        if (benchmark, item_id) in texts:
            raise DataError(f"decontamination: duplicate item {item_id!r} in benchmark {benchmark!r}; "
                            "item ids must be unique within a benchmark")
        texts[(benchmark, item_id)] = text
    return sorted(texts.items())


# -- the reference implementation ------------------------------------------------------


class ReferenceIndex(DecontamIndex):
    """Algorithm 1 on Python sets of n-gram strings: the baseline a faster index must match.

    Inverted indexes map each 13-gram and 7-gram to the (sorted) positions of the
    items containing it, so a document is compared only with items it shares a
    feature with; every other item's ratio is 0.
    """

    FORMAT = "phiforge.decontam.ReferenceIndex"
    VERSION = 1

    def __init__(self, config: DecontamConfig, keys: Iterable[ItemKey],
                 short_sets: Iterable[frozenset[str]], long_sets: Iterable[frozenset[str]]):
        """Internal; use :meth:`build` or :meth:`load`."""
        self.config = config
        self.keys = tuple(keys)
        self._short = list(short_sets)
        self._long = list(long_sets)
        assert len(self.keys) == len(self._short) == len(self._long)
        self._short_index = _invert(self._short)
        self._long_index = _invert(self._long)

    @classmethod
    def build(cls, items, config=None):
        config = config or DecontamConfig()
        keys, shorts, longs = [], [], []
        for key, text in collect_items(items):
            words = normalize_words(text)
            keys.append(key)
            shorts.append(frozenset(short_features(words, config)))
            longs.append(frozenset(ngrams(words, config.long_n)))
        return cls(config, keys, shorts, longs)

    # -- Algorithm 1, one document ----------------------------------------------------
    def check(self, text: str) -> Verdict:
        words = normalize_words(text)
        short = short_features(words, self.config)
        pos = self._first_long_hit(words)
        if pos is not None:
            ratio = overlap_ratio(len(short & self._short[pos]), len(short), len(self._short[pos]))
            return Verdict("contaminated", *self.keys[pos], ratio, "13gram")
        pos, ratio = argmax_ratio(self._short_ratios(short))
        verdict, reason = classify(False, ratio, self.config)
        benchmark, item_id = self.keys[pos] if pos is not None else ("", "")
        return Verdict(verdict, benchmark, item_id, ratio, reason)

    def _first_long_hit(self, words: list[str]) -> int | None:
        """Step 1: the item of the document's first 13-gram that is indexed and not allow-listed."""
        n = self.config.long_n
        for i in range(len(words) - n + 1):
            gram = " ".join(words[i:i + n])
            if gram in self._long_index and gram not in self.config.allowed_long_ngrams:
                return self._long_index[gram][0]
        return None

    def _short_ratios(self, short: set[str]) -> dict[int, float]:
        """Steps 2-3: ratio per item sharing at least one 7-gram feature."""
        overlap: Counter[int] = Counter()
        for gram in short:
            overlap.update(self._short_index.get(gram, ()))
        return {p: overlap_ratio(c, len(short), len(self._short[p])) for p, c in overlap.items()}

    # -- the reverse question ------------------------------------------------------------
    def items_in_corpus(self, docs, progress=None):
        hits = [ItemHit()] * len(self.keys)
        n_docs = 0
        for n_docs, text in enumerate(docs, start=1):
            for pos, hit in self._doc_hits(text, n_docs - 1).items():
                hits[pos] = merge_hit(hits[pos], hit)
            if progress is not None and n_docs % PROGRESS_EVERY == 0:
                progress(n_docs)
        if progress is not None and n_docs % PROGRESS_EVERY != 0:
            progress(n_docs)
        return dict(zip(self.keys, hits))

    def _doc_hits(self, text: str, doc: int) -> dict[int, ItemHit]:
        """This document's result for every item it shares a 13-gram or 7-gram feature with."""
        words = normalize_words(text)
        long_hits = self._all_long_hits(words)
        ratios = self._short_ratios(short_features(words, self.config))
        out = {}
        for pos in long_hits | ratios.keys():
            ratio = ratios.get(pos, 0.0)
            verdict, reason = classify(pos in long_hits, ratio, self.config)
            out[pos] = ItemHit(verdict, ratio, doc if verdict != "clean" else None, reason)
        return out

    def _all_long_hits(self, words: list[str]) -> set[int]:
        """Every item sharing a non-allow-listed 13-gram with the document."""
        allowed = self.config.allowed_long_ngrams
        hits: set[int] = set()
        for gram in set(ngrams(words, self.config.long_n)):
            if gram not in allowed:
                hits.update(self._long_index.get(gram, ()))
        return hits

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """JSON (gzip when the name ends in ``.gz``) with format, version and normaliser names."""
        doc = {"format": self.FORMAT, "version": self.VERSION, "normalizer": NORMALIZER,
               "config": self.config.to_dict(),
               "items": [{"benchmark": b, "id": i, "short": sorted(s), "long": sorted(g)}
                         for (b, i), s, g in zip(self.keys, self._short, self._long)]}
        _write_atomic(Path(path), json.dumps(doc, ensure_ascii=False, separators=(",", ":")))

    @classmethod
    def load(cls, path):
        path = Path(path)
        doc = _read_json(path)
        _check_header(doc, path, cls.FORMAT, cls.VERSION)
        try:
            config = DecontamConfig.from_dict(doc["config"])
        except (ConfigError, TypeError) as e:
            raise DataError(f"{path}: bad saved settings ({e}); rebuild the index") from e
        rows = [_parse_row(r, path, n) for n, r in enumerate(doc["items"])]
        keys = [r[0] for r in rows]
        if keys != sorted(set(keys)):
            raise DataError(f"{path}: index items are not unique and sorted; rebuild the index")
        return cls(config, keys, [r[1] for r in rows], [r[2] for r in rows])


def _parse_row(row, path: Path, n: int) -> tuple[ItemKey, frozenset[str], frozenset[str]]:
    """One saved item: ``((benchmark, id), 7-gram features, 13-grams)``, type-checked."""
    try:
        key, short, long = (row["benchmark"], row["id"]), row["short"], row["long"]
    except (KeyError, TypeError) as e:
        raise DataError(f"{path}: index item #{n} is malformed ({e!r}); rebuild the index") from e
    strings = all(isinstance(x, str) for x in key)
    lists = all(isinstance(x, list) and all(isinstance(g, str) for g in x) for x in (short, long))
    if not (strings and lists):
        raise DataError(f"{path}: index item #{n} has fields of the wrong type; rebuild the index")
    return key, frozenset(short), frozenset(long)


def _invert(feature_sets: list[frozenset[str]]) -> dict[str, list[int]]:
    """Feature -> ascending positions of the items holding it."""
    index: dict[str, list[int]] = {}
    for pos, feats in enumerate(feature_sets):
        for gram in feats:
            index.setdefault(gram, []).append(pos)
    return index


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a killed run never leaves a half-written index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = text.encode("utf-8")
    tmp.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: decontamination index not found; build it and save it first")
    try:
        data = path.read_bytes()
        doc = json.loads(gzip.decompress(data) if path.name.endswith(".gz") else data)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"{path}: not a readable decontamination index ({e}); rebuild the index") from e
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not a decontamination index (expected a JSON object)")
    return doc


def _check_header(doc: dict, path: Path, fmt: str, version: int) -> None:
    """Refuse files of another index kind, format version or normaliser: their n-grams would not match."""
    if doc.get("format") != fmt:
        raise DataError(f"{path}: format {doc.get('format')!r} is not {fmt!r}; load it with its own index class")
    if doc.get("version") != version:
        raise DataError(f"{path}: written in format version {doc.get('version')!r}, this phiforge reads "
                        f"version {version}; rebuild the index")
    if doc.get("normalizer") != NORMALIZER:
        raise DataError(f"{path}: built with normaliser {doc.get('normalizer')!r}, this phiforge uses "
                        f"{NORMALIZER!r}; rebuild the index")
    if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("items"), list):
        raise DataError(f"{path}: missing or malformed 'config' / 'items'; rebuild the index")
