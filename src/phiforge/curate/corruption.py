"""Drop corrupted text and binary files: fixed thresholds and corpus-relative outliers.

Why: the Phi-4 report removes "corrupted text and binary files" from its web
and targeted sources by "outlier detection on n-gram statistics and compression
ratios" (report §2.3; §4 of ``docs/phi4-recipe.md``, "Filtering web dumps"),
and stresses that seed documents must be clean because small errors spread into
everything synthesised from them. The report gives no feature list, threshold
or method; everything below is our reading of that one sentence.

:func:`features` measures each document (all fractions are of its characters):

* ``compression_ratio``: zlib-compressed / raw UTF-8 bytes. Near 1 means random
  or binary bytes; near 0 means the same text over and over.
* ``control_fraction``: C0/C1 control characters other than ``\\t \\n \\v \\f \\r``,
  plus lone surrogates (bytes smuggled through ``surrogateescape``).
* ``replacement_fraction``: U+FFFD, left where a decoder met invalid bytes.
* ``mojibake_fraction``: characters in the tell-tale sequences of UTF-8 read as
  cp1252/latin-1 (``Ã©``, ``Â°``, ``â€™``, ``ã€‚``, the BOM ``ï»¿``, ``ï¿½``) or
  of UTF-8 U+FFFD read as GBK (``锟斤拷``), the patterns ftfy's "badness" looks for.
* ``alpha_fraction``: letters among non-space characters.
* ``dup_line_fraction``: characters of non-blank lines that repeat an earlier line.
* ``top_bigram_fraction`` / ``top_word_fraction``: share of the most frequent
  character bigram (whitespace collapsed) / lower-cased word (a run of letters
  and digits, so table pipes and ``=`` signs do not count): n-gram statistics.
* ``mean_word_length`` and ``longest_token``. Words are whitespace-separated,
  except that CJK ideographs, kana, Thai, Lao, Myanmar and Khmer (scripts
  written without spaces) count one character per word.

**Fixed mode** drops definite corruption, first match wins: ``binary_junk``,
``mojibake``, ``replacement_chars``, ``control_chars``, ``repeated_boilerplate``.
**Outlier mode** computes robust z-scores ``(x - median) / (1.4826 * MAD)`` of
each feature over the documents of a block and drops the document as
``outlier_<feature>`` (its most extreme feature) when one exceeds
``max_robust_z``. Blocks are up to ``block_size`` documents of one shard,
buffered (so memory is one block); a trailing block smaller than ``min_docs``
is judged with the previous block's statistics, or not at all if there is none.
In mode ``"both"`` the fixed checks run first and the reference statistics come
from the documents that passed them. Outlier features are one-sided where only
one direction means corruption (e.g. more control characters), and each has a
floor on its scale so that a feature that is 0 in most documents (MAD = 0)
does not flag every document with a single odd character.

Choices the report does not give (all UNCONFIRMED; checked on the fixtures in
``tests/curate/test_corruption.py``: English prose, Python code, LaTeX math, a
markdown table, Chinese, Japanese and Hindi text):

* ``max_compression_ratio = 0.8``: random bytes read as latin-1 and random
  printable ASCII compress to 0.83-0.89 at 500-2,000 characters; real text
  (code, markdown, our Chinese and Japanese fixtures) to at most 0.73 at 500
  characters and 0.57 at 2,000. Random text over a smaller alphabet (base64:
  0.77) escapes this check; it has no spaces, so outlier mode catches it
  (``outlier_mean_word_length``).
* ``min_compression_ratio = 0.1``: prose compresses to 0.3-0.5 and long
  documents to about 0.25; a sentence repeated 500 times compresses to 0.006.
* ``min_chars = 500``: below it, zlib's fixed overhead makes ratios meaningless
  (real 200-character snippets reach 0.87), so size-dependent checks
  (compression, duplicated lines) and outlier mode skip shorter documents.
* ``binary_control_fraction = 0.05`` / ``max_control_fraction = 0.01``: random
  bytes are 25% control characters, text essentially none.
* ``max_replacement_fraction = max_mojibake_fraction = 0.001`` (about two bad
  characters per 2,000): real mojibake hits every accented letter or smart
  quote, while a single lost emoji does not cost the document. Curation in the
  report is "perfectionistic", so we lean towards dropping.
* ``max_dup_line_fraction = 0.5``: more than half of the text is lines seen
  before (navigation, repeated log lines); code's repeated ``}`` or ``end``
  lines are short and stay far below.
* ``max_robust_z = 6``: under a normal distribution a 6-sigma event is about
  one in 10^9, so only documents far outside the block's bulk go, even with the
  heavy tails of a mixed block of prose, code and other scripts.
* The scale floors in :data:`OUTLIER_SPECS` (one sixth of a deviation that is
  clearly wrong, e.g. alpha_fraction 0.72 below the median, a bigram 0.42 above
  it) keep a block of near-identical documents from flagging ordinary variety.
  On 1,000 real 2,000-character chunks of installed packages (720 Python, 262
  READMEs and .md/.rst/.txt files, 18 licences) mode ``"both"`` dropped 5%:
  mostly numeric test data (scipy's pdist inputs), generated protobuf code,
  Unicode and lookup tables and tests made of near-identical lines; the only
  hand-written prose or code among them were three READMEs that are mostly
  HTML badges and a module of long regular expressions.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from statistics import median
from typing import Literal

import numpy as np

from phiforge.dataflow.records import Record
from phiforge.dataflow.step import Step, StepContext
from phiforge.errors import ConfigError

FEATURES = ("compression_ratio", "control_fraction", "replacement_fraction", "mojibake_fraction",
            "alpha_fraction", "dup_line_fraction", "top_bigram_fraction", "top_word_fraction",
            "mean_word_length", "longest_token")
FIXED_REASONS = ("binary_junk", "mojibake", "replacement_chars", "control_chars", "repeated_boilerplate")

_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_CP1252_HIGH = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ\x80-\x9f"  # bytes 0x80-0x9F as cp1252 (or latin-1)
_MOJIBAKE = re.compile(
    f"[ÂÃ][{_CP1252_HIGH}\xa0-\xbf]"  # 2-byte UTF-8 (é -> Ã©, ° -> Â°, à -> Ã + NBSP)
    f"|[ÄÅ][{_CP1252_HIGH}]"           # 2-byte UTF-8 of Latin Extended-A (ł -> Å‚, ą -> Ä…)
    f"|â[{_CP1252_HIGH}]"              # 3-byte UTF-8 from E2 (’ -> â€™, → -> â†’, ∞ -> âˆž)
    "|ã[€‚ƒ\x80-\x83]"                # 3-byte UTF-8 from E3 (。 -> ã€‚; not Portuguese "ã…")
    "|ï»¿|ï¿½|锟斤拷")                   # BOM, U+FFFD via cp1252; U+FFFD x2 via GBK
_NO_SPACE_SCRIPTS = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"[{_NO_SPACE_SCRIPTS}]|[^\\s{_NO_SPACE_SCRIPTS}]+")
_WORD = re.compile(f"[{_NO_SPACE_SCRIPTS}]|[^\\W_{_NO_SPACE_SCRIPTS}]+")
_NO_SPACE_CHAR = re.compile(f"[{_NO_SPACE_SCRIPTS}]")
_PLAIN_WORD = re.compile(r"[^\W_]+")


def _count(pattern: re.Pattern, text: str) -> int:
    return pattern.subn("", text)[1]


def _compression_ratio(text: str) -> float:
    raw = text.encode("utf-8", "surrogatepass")
    return len(zlib.compress(raw, 6)) / len(raw)


def _dup_line_fraction(text: str) -> float:
    seen: set[str] = set()
    total = dup = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        total += len(line)
        if line in seen:
            dup += len(line)
        else:
            seen.add(line)
    return dup / total if total else 0.0


def _top_fraction(items: list[str]) -> float:
    return max(Counter(items).values()) / len(items) if items else 0.0


def _top_bigram_fraction(text: str) -> float:
    """Share of the most frequent character bigram (numpy: about 3x faster than a Counter of 2-char strings)."""
    if len(text) < 2:
        return 0.0
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    _, counts = np.unique((codes[:-1] << np.uint64(32)) | codes[1:], return_counts=True)
    return float(counts.max()) / (len(text) - 1)


def _tokens_and_words(lowered: str) -> tuple[list[str], list[str]]:
    """Tokens (cover every non-space character) and words (letter/digit runs); fast path without CJK etc."""
    if _NO_SPACE_CHAR.search(lowered) is None:
        return lowered.split(" "), _PLAIN_WORD.findall(lowered)
    return _TOKEN.findall(lowered), _WORD.findall(lowered)


def _word_features(squeezed: str, n_nonspace: int) -> dict[str, float]:
    if not squeezed:
        return {"top_word_fraction": 0.0, "mean_word_length": 0.0, "longest_token": 0.0}
    tokens, words = _tokens_and_words(squeezed.lower())
    return {"top_word_fraction": _top_fraction(words), "mean_word_length": n_nonspace / len(tokens),
            "longest_token": float(max(map(len, tokens)))}


def features(text: str, *, max_chars: int | None = None) -> dict[str, float]:
    """The corruption features of ``text`` (its first ``max_chars`` characters), keyed as :data:`FEATURES`."""
    text = text[:max_chars] if max_chars else text
    n = len(text)
    if n == 0:
        return dict.fromkeys(FEATURES, 0.0)
    squeezed = " ".join(text.split())
    n_nonspace = len(squeezed) - squeezed.count(" ")
    return {
        "compression_ratio": _compression_ratio(text),
        "control_fraction": _count(_CONTROL, text) / n,
        "replacement_fraction": text.count("\ufffd") / n,
        "mojibake_fraction": (n - len(_MOJIBAKE.sub("", text))) / n,
        "alpha_fraction": sum(map(str.isalpha, squeezed)) / max(n_nonspace, 1),
        "dup_line_fraction": _dup_line_fraction(text),
        "top_bigram_fraction": _top_bigram_fraction(squeezed),
        **_word_features(squeezed, n_nonspace),
    }


Mode = Literal["fixed", "outlier", "both"]


@dataclass(frozen=True)
class _OutlierSpec:
    side: Literal["high", "low", "both"]
    """Which direction of deviation is suspicious."""
    min_scale: float
    """Floor of the robust scale (1.4826 * MAD), in the feature's (transformed) unit."""
    log: bool = False
    """Compare log2(1 + x) (for heavy-tailed lengths)."""


OUTLIER_SPECS = {
    "compression_ratio": _OutlierSpec("both", 0.05),
    "control_fraction": _OutlierSpec("high", 0.001),
    "replacement_fraction": _OutlierSpec("high", 0.0005),
    "mojibake_fraction": _OutlierSpec("high", 0.0005),
    "alpha_fraction": _OutlierSpec("low", 0.12),
    "dup_line_fraction": _OutlierSpec("high", 0.07),
    "top_bigram_fraction": _OutlierSpec("high", 0.07),
    "top_word_fraction": _OutlierSpec("high", 0.03),
    "mean_word_length": _OutlierSpec("high", 1.0),
    "longest_token": _OutlierSpec("high", 0.75, log=True),
}
"""How outlier mode treats each feature (floors UNCONFIRMED: about 1/6 of the deviation that is clearly wrong)."""


@dataclass(frozen=True, kw_only=True)
class CorruptionConfig:
    """Settings of :class:`CorruptionFilter` (reasons for the defaults: module docstring)."""

    mode: Mode = "both"
    """``"fixed"`` thresholds (streaming), ``"outlier"`` robust z-scores per block, or ``"both"``."""
    max_chars: int = 100_000
    """Measure only the first this-many characters of a document (bounds the time per document)."""
    min_chars: int = 500
    """Shorter documents skip the size-dependent checks and outlier mode."""
    max_compression_ratio: float = 0.8
    """``binary_junk`` above this (documents of at least ``min_chars``)."""
    min_compression_ratio: float = 0.1
    """``repeated_boilerplate`` below this (documents of at least ``min_chars``)."""
    binary_control_fraction: float = 0.05
    """``binary_junk`` at or above this fraction of control characters."""
    max_control_fraction: float = 0.01
    """``control_chars`` above this."""
    max_replacement_fraction: float = 0.001
    """``replacement_chars`` above this fraction of U+FFFD."""
    max_mojibake_fraction: float = 0.001
    """``mojibake`` above this fraction of characters in mojibake sequences."""
    max_dup_line_fraction: float = 0.5
    """``repeated_boilerplate`` above this (documents of at least ``min_chars``)."""
    max_robust_z: float = 6.0
    """Outlier mode: drop when a feature's robust z-score (in its suspicious direction) exceeds this."""
    outlier_features: tuple[str, ...] = FEATURES
    """Features outlier mode tests."""
    block_size: int = 10_000
    """Outlier mode: documents buffered and scored together."""
    min_docs: int = 50
    """Outlier mode: fewest reference documents (of at least ``min_chars``) for a block's statistics."""
    keep_features: bool = False
    """Store all rounded features in kept records' ``metadata["corruption"]`` (else only the compression ratio)."""

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "outlier", "both"):
            raise ConfigError(f"corruption: mode must be 'fixed', 'outlier' or 'both', got {self.mode!r}")
        for name in ("max_chars", "min_chars", "block_size", "min_docs"):
            _check_number(name, getattr(self, name), integer=True, low=1)
        for name in ("max_compression_ratio", "min_compression_ratio", "binary_control_fraction",
                     "max_control_fraction", "max_replacement_fraction", "max_mojibake_fraction",
                     "max_dup_line_fraction"):
            _check_number(name, getattr(self, name), low=0, high=1)
        _check_number("max_robust_z", self.max_robust_z, low=0)
        if self.min_compression_ratio >= self.max_compression_ratio:
            raise ConfigError("corruption: min_compression_ratio must be below max_compression_ratio")
        if self.max_control_fraction > self.binary_control_fraction:
            raise ConfigError("corruption: max_control_fraction must not exceed binary_control_fraction")
        feats = (self.outlier_features,) if isinstance(self.outlier_features, str) else tuple(self.outlier_features)
        unknown = [f for f in feats if f not in OUTLIER_SPECS]
        if unknown or not feats:
            raise ConfigError(f"corruption: outlier_features must be a non-empty subset of {list(FEATURES)}, "
                              f"got unknown {unknown}" if unknown else "corruption: outlier_features is empty")
        object.__setattr__(self, "outlier_features", feats)
        if self.min_docs > self.block_size:
            raise ConfigError(f"corruption: min_docs ({self.min_docs}) must not exceed block_size ({self.block_size})")

    def build(self) -> CorruptionFilter:
        return CorruptionFilter(self)


def _check_number(name: str, value: object, *, integer: bool = False, low: float, high: float = math.inf) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"corruption: {name} must be {kind} in [{low}, {high}], got {value!r}")


def fixed_reason(feats: dict[str, float], n_chars: int, config: CorruptionConfig) -> str | None:
    """The fixed-threshold drop reason of a document, or None to keep it (first match wins)."""
    sized = n_chars >= config.min_chars
    if feats["control_fraction"] >= config.binary_control_fraction or (
            sized and feats["compression_ratio"] > config.max_compression_ratio):
        return "binary_junk"
    if feats["mojibake_fraction"] > config.max_mojibake_fraction:
        return "mojibake"
    if feats["replacement_fraction"] > config.max_replacement_fraction:
        return "replacement_chars"
    if feats["control_fraction"] > config.max_control_fraction:
        return "control_chars"
    if sized and (feats["compression_ratio"] < config.min_compression_ratio
                  or feats["dup_line_fraction"] > config.max_dup_line_fraction):
        return "repeated_boilerplate"
    return None


Reference = dict[str, tuple[float, float]]
"""Feature -> (median, scale) of a block's reference documents (in the spec's transformed unit)."""


def _transform(name: str, value: float) -> float:
    return math.log2(1.0 + value) if OUTLIER_SPECS[name].log else value


def robust_reference(rows: list[dict[str, float]], names: tuple[str, ...]) -> Reference:
    """Median and robust scale ``max(1.4826 * MAD, floor)`` of each feature over ``rows``."""
    ref = {}
    for name in names:
        values = [_transform(name, row[name]) for row in rows]
        mid = median(values)
        mad = median(abs(v - mid) for v in values)
        ref[name] = (mid, max(1.4826 * mad, OUTLIER_SPECS[name].min_scale))
    return ref


def robust_z(feats: dict[str, float], ref: Reference) -> dict[str, float]:
    """Each feature's z-score in its suspicious direction (positive = suspicious)."""
    out = {}
    for name, (mid, scale) in ref.items():
        z = (_transform(name, feats[name]) - mid) / scale
        side = OUTLIER_SPECS[name].side
        out[name] = z if side == "high" else -z if side == "low" else abs(z)
    return out


def _outlier(feats: dict[str, float], ref: Reference, max_z: float) -> tuple[str, float] | None:
    """``(feature, z)`` of the most extreme feature beyond ``max_z``, or None."""
    zs = robust_z(feats, ref)
    name = max(zs, key=zs.__getitem__)
    return (name, zs[name]) if zs[name] > max_z else None




def _rounded(feats: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in feats.items()}


class CorruptionFilter(Step):
    """Drop corrupted and binary documents (fixed thresholds and/or block outliers; see the module docstring).

    Drop reasons: the fixed ones in :data:`FIXED_REASONS` and ``outlier_<feature>``.
    Dropped records carry all rounded features in ``metadata["corruption"]`` (plus
    ``robust_z`` for outliers); kept ones only ``compression_ratio`` unless
    ``keep_features``. Counters: ``checked``, ``outlier_blocks``,
    ``outlier_blocks_unscored`` (too few reference documents).
    """

    def __init__(self, config: CorruptionConfig | None = None):
        self.config = config or CorruptionConfig()

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        if self.config.mode == "fixed":
            for record in records:
                if self._check_fixed(record, ctx) is not None:
                    yield self._kept(record)
            return
        ref: Reference | None = None
        records = iter(records)
        while block := list(islice(records, self.config.block_size)):
            kept, ref = self._judge_block(block, ref, ctx)
            yield from kept

    def _measure(self, record: Record, ctx: StepContext) -> tuple[dict[str, float], int]:
        text = record.content()[: self.config.max_chars]
        ctx.stat("checked")
        return features(text), len(text)

    def _check_fixed(self, record: Record, ctx: StepContext) -> tuple[dict[str, float], int] | None:
        """``(features, n_chars)`` if the record passes the fixed checks (or mode is outlier), else drop it."""
        feats, n = self._measure(record, ctx)
        reason = None if self.config.mode == "outlier" else fixed_reason(feats, n, self.config)
        record.metadata["corruption"] = _rounded(feats)
        if reason is not None:
            ctx.drop(record, reason)
            return None
        return feats, n

    def _judge_block(self, block: list[Record], ref: Reference | None,
                     ctx: StepContext) -> tuple[list[Record], Reference | None]:
        """Fixed checks, then outliers against this block's statistics (else the previous block's ``ref``).

        Returns the kept records and the statistics a following small block should use.
        """
        cfg = self.config
        passed = [(r, m) for r in block if (m := self._check_fixed(r, ctx)) is not None]
        reference_rows = [feats for _, (feats, n) in passed if n >= cfg.min_chars]
        if len(reference_rows) >= cfg.min_docs:
            ref = robust_reference(reference_rows, cfg.outlier_features)
        ctx.stat("outlier_blocks" if ref is not None else "outlier_blocks_unscored")
        kept = []
        for record, (feats, n) in passed:
            hit = _outlier(feats, ref, cfg.max_robust_z) if ref is not None and n >= cfg.min_chars else None
            if hit is not None:
                record.metadata["corruption"]["robust_z"] = round(hit[1], 2)
                ctx.drop(record, f"outlier_{hit[0]}")
            else:
                kept.append(self._kept(record))
        return kept, ref

    def _kept(self, record: Record) -> Record:
        if not self.config.keep_features:
            feats = record.metadata["corruption"]
            record.metadata["corruption"] = {"compression_ratio": feats["compression_ratio"]}
        return record
