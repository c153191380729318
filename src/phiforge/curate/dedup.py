"""Exact and near-duplicate removal: content hashing, then MinHash-LSH with exact verification.

Why: repeated documents waste training tokens and raise memorisation. For its
organic data (report §2.3; recipe ``docs/phi4-recipe.md`` §4, "Deduplication"),
the Phi-4 report says only that the data went through "standard n-gram
deduplication". The method and thresholds are UNCONFIRMED, so this module
implements the standard method with defaults taken from published practice:

* **Exact** (``exact=True``): the BLAKE2b-128 hash of the text, lower-cased and
  with whitespace runs collapsed. The first occurrence is kept. A 128-bit hash
  makes an accidental collision negligible even over billions of documents.
* **Fuzzy** (``fuzzy=True``): word ``shingle_size``-grams (default 5) of
  :func:`~phiforge.curate.decontam.normalize_words`, the same normaliser that
  decontamination uses. Then ``num_perm`` (default 128) MinHash values per
  document from ``rensa`` (Rust), and LSH banding in numpy. Candidate pairs are
  pairs that share a band. They are checked against the **exact** Jaccard
  similarity of their shingle sets (``verify=True``), and union-find turns the
  checked pairs into clusters. Word 5-grams with a Jaccard threshold of 0.8
  follow Lee et al. 2022 ("Deduplicating Training Data Makes Language Models
  Better"). FineWeb/datatrove also use 5-grams, with 14 bands of 8 rows.
* **Bands x rows**: :func:`bands_for` picks the shape that minimises a weighted
  sum of the LSH S-curve's false-positive area (below the threshold) and its
  false-negative area (above it). This is the criterion datasketch uses, but
  computed here. Verification removes every false positive, which then costs
  only checking time, so by default the weight is 0.95 on false negatives:
  16 bands x 8 rows at threshold 0.8. A pair at Jaccard 0.8 then becomes a
  candidate with probability 0.95, and a pair at 0.85 with probability 0.99.
  With ``verify=False`` the LSH candidates are dropped as they are, so the
  weights are balanced (0.5/0.5, datasketch's default). That gives 9 x 13.
* **Why exact verification** rather than the signature estimate: with 128
  permutations, the estimate has a standard deviation of about 0.035 at
  J = 0.8. It would reject about a quarter of the true pairs at J = 0.82.
  Shingle sets are rebuilt only for documents in candidate pairs, so memory
  stays at the texts plus the signatures.

**The kept representative** of a cluster is the member that comes first in input
order. Union-find always makes the smaller index the root, so the result does not
depend on bucket order, band hash values or the order of the other members. An
exact duplicate of a document that is itself a near-duplicate points
(``dup_of``) at the kept representative, so ``dup_of`` always names a kept record.

**Edge cases.** A text with fewer than ``shingle_size`` words has one shingle: its
whole normalised text. A text with no words (empty, or only punctuation) has no
shingles and is never fuzzy-matched; exact deduplication still applies to it. A
bucket holding more than :data:`MAX_BUCKET_ALL_PAIRS` documents, such as
templated pages, gives star-and-chain pairs in input order rather than all
k(k-1)/2 pairs. Within such a bucket the clusters may then depend on the order.

**Scope.** :class:`Dedup` must see every record it compares, so it buffers one
shard. Deduplicating across shards needs the stage run as one task over one shard,
or a later two-phase design (signatures per shard, then a global clustering pass).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache

import numpy as np

from phiforge.curate.decontam import normalize_words
from phiforge.dataflow.records import Record
from phiforge.dataflow.step import Step, StepContext
from phiforge.errors import ConfigError

INSTALL_HINT = "pip install 'phiforge[curate]'"
VERIFIED_FN_WEIGHT = 0.95
"""False-negative weight for :func:`bands_for` when candidates are verified (false positives cost only time)."""
UNVERIFIED_FN_WEIGHT = 0.5
"""Balanced weights when LSH candidates are dropped unverified (false positives are wrong drops)."""
MAX_BUCKET_ALL_PAIRS = 32
"""A band bucket with more members gives star-and-chain pairs (2k) instead of all k(k-1)/2."""
SIGNATURE_CHUNK = 4096
"""Documents shingled and hashed at once (bounds the memory held by shingle lists)."""
_MAX_SEED = 2**64
_BAND_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio) for band hashing
_CURVE = np.linspace(0.0, 1.0, 1001)


# -- configuration ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Settings of exact + MinHash deduplication (defaults and their reasons: module docstring)."""

    exact: bool = True
    """Drop documents whose whitespace/case-normalised text hashes equal an earlier one."""
    fuzzy: bool = True
    """Drop near-duplicates (Jaccard of word shingles >= ``threshold``) via MinHash-LSH."""
    shingle_size: int = 5
    """Words per shingle (n-gram of normalised words)."""
    num_perm: int = 128
    """MinHash values per document (signature length)."""
    threshold: float = 0.8
    """Jaccard similarity of shingle sets at or above which two documents are near-duplicates."""
    bands: int | None = None
    """LSH bands; None (with ``rows`` None) = :func:`bands_for` of ``threshold`` and ``num_perm``."""
    rows: int | None = None
    """Signature values per band; ``bands * rows`` must not exceed ``num_perm``."""
    verify: bool = True
    """Confirm each LSH candidate pair with the exact Jaccard of its shingle sets."""
    seed: int = 0
    """MinHash seed (0 <= seed < 2**64); a different seed may find different borderline candidates."""

    def __post_init__(self) -> None:
        for name in ("exact", "fuzzy", "verify"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"dedup: {name} must be true or false, got {getattr(self, name)!r}")
        if not (self.exact or self.fuzzy):
            raise ConfigError("dedup: exact and fuzzy are both false, so nothing would be removed; "
                              "enable at least one (or leave the dedup step out)")
        for name in ("shingle_size", "num_perm"):
            _check_positive_int(name, getattr(self, name))
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise ConfigError(f"dedup: threshold must be a Jaccard similarity in (0, 1], got {t!r}")
        self._check_band_shape()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < _MAX_SEED:
            raise ConfigError(f"dedup: seed must be an integer in [0, 2**64), got {self.seed!r}")

    def _check_band_shape(self) -> None:
        if self.bands is None and self.rows is None:
            return
        if self.bands is None or self.rows is None:
            raise ConfigError("dedup: set both bands and rows, or neither (then they are chosen from "
                              f"threshold and num_perm); got bands={self.bands!r}, rows={self.rows!r}")
        _check_positive_int("bands", self.bands)
        _check_positive_int("rows", self.rows)
        if self.bands * self.rows > self.num_perm:
            raise ConfigError(f"dedup: bands * rows = {self.bands * self.rows} exceeds num_perm = "
                              f"{self.num_perm}; lower bands or rows, or raise num_perm")

    def band_shape(self) -> tuple[int, int]:
        """``(bands, rows)``: the configured ones, else :func:`bands_for` with the verify-aware weight."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        weight = VERIFIED_FN_WEIGHT if self.verify else UNVERIFIED_FN_WEIGHT
        return bands_for(self.threshold, self.num_perm, false_negative_weight=weight)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> DedupConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"dedup: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"dedup: {name} must be a positive integer, got {value!r}")


# -- LSH parameters --------------------------------------------------------------


def candidate_probability(similarity, bands: int, rows: int):
    """The LSH S-curve: P(two documents share a band) = 1 - (1 - s**rows)**bands."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=float) ** rows) ** bands


@lru_cache(maxsize=64)
def bands_for(threshold: float, num_perm: int, *, false_negative_weight: float = 0.5) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising the weighted S-curve error.

    The error is ``(1 - w) * FP + w * FN``. FP is the area under the S-curve over
    similarities below ``threshold``, and FN is the area above the curve over
    similarities from ``threshold`` to 1. Both are trapezoid integrals on a
    1001-point grid. Ties go to the fewest bands, then the fewest rows.
    """
    if not 0 < threshold <= 1 or num_perm < 1 or not 0 <= false_negative_weight <= 1:
        raise ConfigError(f"dedup: bands_for needs 0 < threshold <= 1, num_perm >= 1 and a weight in "
                          f"[0, 1]; got {threshold!r}, {num_perm!r}, {false_negative_weight!r}")
    below = _CURVE <= threshold
    best = (float("inf"), 1, 1)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = candidate_probability(_CURVE, bands, rows)
            fp = _area(p[below], _CURVE[below])
            fn = _area(1.0 - p[~below], _CURVE[~below])
            error = (1 - false_negative_weight) * fp + false_negative_weight * fn
            if error < best[0] - 1e-12:
                best = (error, bands, rows)
    return best[1], best[2]


def _area(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid-rule integral of ``y`` over ``x`` (0 for fewer than two points)."""
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2) if len(x) > 1 else 0.0


# -- shingles and exact keys ---------------------------------------------------------


def shingles(text: str, size: int) -> list[str]:
    """Word ``size``-grams of the normalised text; the whole text when shorter; ``[]`` when it has no words."""
    words = normalize_words(text)
    if len(words) < size:
        return [" ".join(words)] if words else []
    return list(map(" ".join, zip(*(words[i:] for i in range(size)))))


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (0.0 for two empty sets: no evidence of duplication)."""
    inter = len(a & b)
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


def exact_key(text: str) -> bytes:
    """BLAKE2b-128 of the lower-cased text with whitespace runs collapsed to one space."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8"), digest_size=16).digest()


def exact_representatives(texts: Sequence[str]) -> list[int]:
    """For each text, the index of the first text with the same :func:`exact_key` (itself if first)."""
    first: dict[bytes, int] = {}
    return [first.setdefault(exact_key(t), i) for i, t in enumerate(texts)]


# -- MinHash signatures and banding ----------------------------------------------


def _rensa():
    try:
        import rensa
    except ImportError as e:
        raise ImportError(f"fuzzy deduplication needs the rensa package: {INSTALL_HINT}") from e
    return rensa


def signatures(texts: Sequence[str], config: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(len(texts), num_perm)`` uint32 MinHash signatures (rensa ``RMinHash``) of the word shingles,
    and a bool mask of the texts that have any shingle (the others' rows are meaningless)."""
    rmh = _rensa().RMinHash
    sigs = np.empty((len(texts), config.num_perm), dtype=np.uint32)
    has_shingles = np.zeros(len(texts), dtype=bool)
    for start in range(0, len(texts), SIGNATURE_CHUNK):
        chunk = [shingles(t, config.shingle_size) for t in texts[start:start + SIGNATURE_CHUNK]]
        matrix = rmh.digest_matrix_from_token_sets(chunk, config.num_perm, config.seed)
        sigs[start:start + len(chunk)] = np.asarray(matrix.to_rows(), dtype=np.uint32).reshape(len(chunk), -1)
        has_shingles[start:start + len(chunk)] = [bool(c) for c in chunk]
    return sigs, has_shingles


def _band_keys(band: np.ndarray) -> np.ndarray:
    """One uint64 hash per row of a ``(n, rows)`` band (collisions only cost a verification)."""
    key = np.zeros(band.shape[0], dtype=np.uint64)
    for col in band.T:
        key = (key ^ col.astype(np.uint64)) * _BAND_MULT
        key ^= key >> np.uint64(29)
    return key


def _bucket_pairs(members: np.ndarray) -> np.ndarray:
    """``(m, 2)`` index pairs for one bucket (members ascending): all pairs, or star + chain if large."""
    k = len(members)
    if k <= MAX_BUCKET_ALL_PAIRS:
        i, j = np.triu_indices(k, 1)
    else:
        i = np.concatenate([np.zeros(k - 1, dtype=np.int64), np.arange(1, k - 1)])
        j = np.concatenate([np.arange(1, k), np.arange(2, k)])
    return np.stack([members[i], members[j]], axis=1)


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Sorted unique ``(i, j)`` row pairs, ``i < j``, that share at least one LSH band."""
    found = [np.empty((0, 2), dtype=np.int64)]
    for b in range(bands):
        keys = _band_keys(sigs[:, b * rows:(b + 1) * rows])
        order = np.argsort(keys, kind="stable")  # stable: members of a bucket stay in input order
        sorted_keys = keys[order]
        cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        starts, ends = np.r_[0, cuts], np.r_[cuts, len(keys)]
        for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
            found.append(_bucket_pairs(order[s:e]))
    pairs = np.concatenate(found)
    if len(pairs) == 0:
        return pairs
    codes = np.unique(pairs[:, 0] * len(sigs) + pairs[:, 1])
    return np.stack([codes // len(sigs), codes % len(sigs)], axis=1)


# -- clustering ------------------------------------------------------------------------


class _UnionFind:
    """Disjoint sets whose root is always the smallest index (the first in input order)."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(frozen=True)
class DedupResult:
    """What :func:`find_duplicates` decided for each input text, plus counters."""

    representatives: list[int]
    """Index of the kept text each text duplicates; its own index when kept."""
    reasons: list[str | None]
    """None (kept), ``"exact_duplicate"`` or ``"near_duplicate"``."""
    counters: dict[str, int] = field(default_factory=dict)
    """exact_duplicates, near_duplicates, clusters, candidate_pairs, verified_pairs, no_shingles."""


def _verified(pairs: np.ndarray, texts: Sequence[str], config: DedupConfig) -> list[tuple[int, int]]:
    """The candidate pairs whose exact shingle-set Jaccard is >= threshold (all of them if not verifying)."""
    if not config.verify:
        return [(int(i), int(j)) for i, j in pairs]
    cache: dict[int, set[str]] = {}

    def shingle_set(i: int) -> set[str]:
        if i not in cache:
            cache[i] = set(shingles(texts[i], config.shingle_size))
        return cache[i]

    return [(int(i), int(j)) for i, j in pairs if jaccard(shingle_set(i), shingle_set(j)) >= config.threshold]


def _fuzzy_edges(texts: Sequence[str], candidates: list[int], config: DedupConfig,
                 counters: dict[str, int]) -> list[tuple[int, int]]:
    """Verified near-duplicate pairs (original indices) among ``candidates`` (indices into texts)."""
    subset = [texts[i] for i in candidates]
    sigs, has_shingles = signatures(subset, config)
    counters["no_shingles"] = int((~has_shingles).sum())
    keep = np.flatnonzero(has_shingles)
    bands, rows = config.band_shape()
    pairs = candidate_pairs(sigs[keep], bands, rows)
    pairs = keep[pairs] if len(pairs) else pairs
    counters["candidate_pairs"] = len(pairs)
    edges = _verified(pairs, subset, config)
    counters["verified_pairs"] = len(edges)
    return [(candidates[i], candidates[j]) for i, j in edges]


def find_duplicates(texts: Sequence[str], config: DedupConfig | None = None) -> DedupResult:
    """Exact then fuzzy deduplication of ``texts``; the first member of each cluster is kept."""
    config = config or DedupConfig()
    n = len(texts)
    exact = exact_representatives(texts) if config.exact else list(range(n))
    counters = {"exact_duplicates": sum(r != i for i, r in enumerate(exact)), "near_duplicates": 0,
                "clusters": 0, "candidate_pairs": 0, "verified_pairs": 0, "no_shingles": 0}
    uf = _UnionFind(n)
    for i, r in enumerate(exact):
        uf.union(i, r)
    if config.fuzzy:
        for a, b in _fuzzy_edges(texts, [i for i in range(n) if exact[i] == i], config, counters):
            uf.union(a, b)
    reps = [uf.find(i) for i in range(n)]
    reasons = [None if r == i else "exact_duplicate" if exact[i] != i else "near_duplicate"
               for i, r in enumerate(reps)]
    counters["near_duplicates"] = reasons.count("near_duplicate")
    counters["clusters"] = len({r for i, r in enumerate(reps) if r != i})
    return DedupResult(reps, reasons, counters)


def dedup_clusters(texts: Sequence[str], config: DedupConfig | None = None) -> list[int]:
    """For each text, the index of its cluster's kept representative (its own index when kept)."""
    return find_duplicates(texts, config).representatives


# -- the pipeline step -------------------------------------------------------------------




class Dedup(Step):
    """Drop exact and near-duplicate records of a shard, keeping each cluster's first record.

    The step buffers the whole shard (deduplication compares every pair), then yields
    the kept records in input order. A dropped record gets ``metadata["dup_of"]`` =
    the kept record's id, and reason ``exact_duplicate`` or ``near_duplicate``.
    Counters: exact_duplicates, near_duplicates, clusters, candidate_pairs,
    verified_pairs, no_shingles. Records in different shards or tasks are not
    compared (module docstring, "Scope").
    """

    def __init__(self, config: DedupConfig | None = None):
        self.config = config or DedupConfig()

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        buffered = list(records)
        result = find_duplicates([r.content() for r in buffered], self.config)
        for name, value in result.counters.items():
            ctx.stat(name, value)
        for record, rep, reason in zip(buffered, result.representatives, result.reasons):
            if reason is None:
                yield record
            else:
                record.metadata["dup_of"] = buffered[rep].id
                ctx.drop(record, reason)
