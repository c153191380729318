"""Quality classifier distilled from LLM labels, the step that applies it, and the non-STEM amplifier.

Why: the Phi-4 report filters web dumps with "small non-LLM classifiers trained on
~10^6 LLM-generated annotations" to keep a small fraction of the best documents; as
these over-index on STEM keywords, "a separate pipeline amplifies high-quality
non-STEM content" (arts, history, travel, culture, entertainment) with topic labels
also distilled from an LLM annotator (report §2.3; ``docs/phi4-recipe.md`` §4).

The pieces:

* :class:`QualityClassifier`: hashed word n-grams (optionally char n-grams), TF-IDF,
  then a linear model per label: ``Ridge`` regression on the teacher's 0-5
  educational value (or a 6-class ``LogisticRegression`` whose expected value is the
  score), and ``LogisticRegression`` over the topics. Annotations come from
  :func:`phiforge.curate.annotate.annotate`. ``evaluate`` reports agreement with
  held-out teacher labels next to trivial baselines (the training mean, the
  majority label), so a number can be read as "better than guessing" or not;
  :func:`train_and_evaluate` splits deterministically and does both.
* :class:`QualityFilter` (a ``Step``): scores records with a saved classifier
  (loaded lazily from ``model_path``, so the step pickles cheaply), writes
  ``metadata["edu_score"]``, ``["topic"]``, ``["topic_prob"]`` and drops
  ``low_quality`` below ``min_edu``, or below the lower ``min_edu_non_stem`` for
  non-STEM topics (the streaming form of the amplifier).
* :class:`NonStemAmplifier` (a ``Step``): buffers ``window`` scored records and keeps
  the best ``keep_fraction`` of them, reserving ``shares`` of the kept slots for topic
  groups or single topics (``{"non_stem": 0.3}``: at least 30% non-STEM when there
  are enough); selection by score, ties by id, so it is deterministic. The rest is
  dropped as ``topic_quota``. A relative budget also works with a weak teacher
  whose scores never reach an absolute threshold.

Choices (all UNCONFIRMED: the paper names neither classifier type, features, label
scheme nor thresholds):

* fastText-like features: word 1-2-grams (our token pattern keeps single characters
  and punctuation: digits, ``=``, ``{`` matter for math and code) hashed to 2^18
  columns, sublinear TF-IDF; char 3-5-grams are off by default (twice the
  features and time; for noisy or non-English text turn ``char_ngrams`` on).
* ``Ridge`` on the expected score (the logprob annotator's soft label carries more
  than its argmax) rather than a classifier; predictions are clipped to [0, 5].
* ``min_edu = 3``: FineWeb-Edu's cutoff on the same kind of additive 0-5 scale
  (it kept ~8% of FineWeb, "a small fraction" as in the report). ``min_edu_non_stem``
  defaults to ``min_edu - 1``: a STEM-biased classifier scores non-STEM pages lower.
  With the bundled 135M teacher the predicted scores cluster near its prior (about
  2), so an absolute threshold is meaningless there: use ``min_edu = 0`` and let
  ``NonStemAmplifier.keep_fraction`` select.
* Holdout split: documents sorted by a seeded hash of their text, so the split does
  not depend on input order and exact duplicates never straddle it (no leak).
* ``save``/``load`` use pickle (scikit-learn models): load only files you wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

from pydantic import Field, field_validator, model_validator

from phiforge.curate.annotate import STEM_TOPICS, Annotation, _Config
from phiforge.dataflow.records import Record
from phiforge.dataflow.step import Step, StepContext
from phiforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the pickled state changes; older files then fail to load with a "retrain" hint
KIND = "phiforge.curate.quality.QualityClassifier"
TOKEN_PATTERN = r"(?u)\b\w+\b|[^\w\s]"
EDU_MAX = 5
GROUPS = ("stem", "non_stem")
INSTALL_HINT = "pip install 'phiforge[curate]'"


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the quality classifier needs scikit-learn ({e}); run `{INSTALL_HINT}`") from e
    return sklearn


class QualityClassifierConfig(_Config):
    """Features and models of :class:`QualityClassifier` (see the module docstring)."""

    hash_bits: int = Field(18, ge=10, le=24, description="2^hash_bits hashed feature columns per feature kind")
    word_ngrams: int = Field(2, ge=1, le=3, description="word n-grams up to this n")
    char_ngrams: bool = Field(False, description="add hashed char 3-5-grams (robust to noise; 2x cost)")
    tfidf: bool = Field(True, description="sublinear TF-IDF weighting (fit on the training texts)")
    edu_model: Literal["ridge", "logistic"] = Field("ridge", description=(
        "'ridge': regression on the 0-5 expected score; 'logistic': 6 classes (rounded labels), expected value"))
    alpha: float = Field(1.0, gt=0, description="Ridge regularisation strength")
    C: float = Field(4.0, gt=0, description="LogisticRegression inverse regularisation (topic, logistic edu)")
    max_iter: int = Field(1000, ge=10, description="LogisticRegression iterations")
    max_chars: int | None = Field(20000, ge=100, description="characters of each text featurised (bounds cost)")
    keep_threshold: float = Field(3.0, ge=0, le=5, description="evaluate(): binary keep decision at edu >= this")
    stem_topics: list[str] = Field(sorted(STEM_TOPICS), description="evaluate(): the STEM group for group accuracy")
    seed: int = Field(0, ge=0, description="model seed and holdout-split seed")


# --------------------------------------------------------------------------- features


class _Featurizer:
    """Hashed n-gram counts per kind (word, char), each TF-IDF weighted and l2-normalised, then stacked."""

    def __init__(self, cfg: QualityClassifierConfig):
        from sklearn.feature_extraction.text import HashingVectorizer

        import numpy as np

        common = dict(n_features=2 ** cfg.hash_bits, alternate_sign=False, lowercase=True, norm=None,
                      dtype=np.float32)
        self.vectorizers = [HashingVectorizer(ngram_range=(1, cfg.word_ngrams), token_pattern=TOKEN_PATTERN,
                                              **common)]
        if cfg.char_ngrams:
            self.vectorizers.append(HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common))
        self.tfidf = cfg.tfidf
        self.max_chars = cfg.max_chars
        self.weights: list = []

    def _counts(self, texts: Sequence[str]) -> list:
        texts = [(t or "")[:self.max_chars] if self.max_chars else (t or "") for t in texts]
        return [v.transform(texts) for v in self.vectorizers]

    def fit_transform(self, texts: Sequence[str]):
        from sklearn.feature_extraction.text import TfidfTransformer

        blocks = self._counts(texts)
        self.weights = [TfidfTransformer(sublinear_tf=True).fit(b) if self.tfidf else None for b in blocks]
        return self._stack(blocks)

    def transform(self, texts: Sequence[str]):
        return self._stack(self._counts(texts))

    def _stack(self, blocks):
        import scipy.sparse as sp
        from sklearn.preprocessing import normalize

        scale = 1.0 / math.sqrt(len(blocks))
        out = [normalize(w.transform(b) if w is not None else b) * scale for w, b in zip(self.weights, blocks)]
        return out[0].tocsr() if len(out) == 1 else sp.hstack(out, format="csr")


# --------------------------------------------------------------------------- the classifier


class QualityClassifier:
    """Educational value (0-5) and topic from text, trained on teacher annotations.

    Build with :meth:`train` or :meth:`load`; :meth:`predict` gives
    ``(edu_score, topic, topic_prob)`` per text.
    """

    def __init__(self, config: QualityClassifierConfig, featurizer: _Featurizer, edu_model, topic_model,
                 topics: list[str], baselines: dict):
        self.config, self.featurizer = config, featurizer
        self.edu_model, self.topic_model = edu_model, topic_model
        self.topics = topics  # topic classes seen in training (a single one: topic_model is None)
        self.baselines = baselines  # training mean / majority labels, for evaluate()

    # ---- training

    @classmethod
    def train(cls, texts: Sequence[str], annotations: Sequence[Annotation],
              config: QualityClassifierConfig | None = None) -> "QualityClassifier":
        """Fit features and both models; annotations without a label (``None``) are left out of that model."""
        import numpy as np

        _sklearn()
        cfg = config or QualityClassifierConfig()
        if len(texts) != len(annotations):
            raise ConfigError(f"train: {len(texts)} texts but {len(annotations)} annotations; give one per text")
        edu_idx = [i for i, a in enumerate(annotations) if a.edu is not None]
        topic_idx = [i for i, a in enumerate(annotations) if a.topic is not None]
        if len(edu_idx) < 2 or not topic_idx:
            raise DataError(f"train: {len(edu_idx)} documents with an educational-value label and "
                            f"{len(topic_idx)} with a topic; annotate more documents (at least 2 and 1)")
        featurizer = _Featurizer(cfg)
        X = featurizer.fit_transform(list(texts))
        edu = np.array([annotations[i].edu for i in edu_idx], dtype=np.float64)
        topics = [annotations[i].topic for i in topic_idx]
        edu_model = _fit_edu(cfg, X[edu_idx], edu)
        classes = sorted(set(topics))
        topic_model = _fit_logistic(cfg, X[topic_idx], topics) if len(classes) > 1 else None
        labels = Counter(_label(x) for x in edu)
        baselines = {"edu_mean": float(edu.mean()), "edu_majority": min(labels, key=lambda k: (-labels[k], k)),
                     "topic_majority": min(Counter(topics).items(), key=lambda kv: (-kv[1], kv[0]))[0],
                     "n_train_edu": len(edu_idx), "n_train_topic": len(topic_idx)}
        return cls(cfg, featurizer, edu_model, topic_model, classes, baselines)

    # ---- prediction

    def predict_arrays(self, texts: Sequence[str]):
        """``(edu [n] float in [0, 5], topics [n] object, topic_probs [n] float)`` as numpy arrays."""
        import numpy as np

        X = self.featurizer.transform(list(texts))
        if self.config.edu_model == "ridge":
            edu = self.edu_model.predict(X)
        else:
            edu = self.edu_model.predict_proba(X) @ self.edu_model.classes_.astype(np.float64)
        edu = np.clip(edu, 0.0, float(EDU_MAX))
        if self.topic_model is None:
            topics = np.array([self.topics[0]] * len(texts), dtype=object)
            probs = np.ones(len(texts))
        else:
            p = self.topic_model.predict_proba(X)
            best = p.argmax(axis=1)
            topics = np.asarray(self.topic_model.classes_, dtype=object)[best]
            probs = p[np.arange(len(texts)), best]
        return edu, topics, probs

    def predict(self, texts: Sequence[str]) -> list[tuple[float, str, float]]:
        """``(edu_score, topic, topic_prob)`` per text."""
        edu, topics, probs = self.predict_arrays(texts)
        return [(float(e), str(t), float(p)) for e, t, p in zip(edu, topics, probs)]

    # ---- agreement with the teacher

    def evaluate(self, texts: Sequence[str], annotations: Sequence[Annotation]) -> dict:
        """Agreement of the predictions with (held-out) teacher labels, next to trivial baselines.

        ``edu``: see :func:`edu_agreement` (teacher side: ``annotation.edu``);
        ``edu_baseline_mean`` / ``edu_baseline_majority``: the same metrics for a
        constant prediction of the training mean / most common rounded label.
        ``topic``: see :func:`topic_agreement`; ``topic_baseline_majority`` predicts the
        training's most common topic. Documents without a teacher label are left out.
        """
        import numpy as np

        if len(texts) != len(annotations):
            raise ConfigError(f"evaluate: {len(texts)} texts but {len(annotations)} annotations")
        edu_pred, topic_pred, _ = self.predict_arrays(texts)
        thr, stem, b = self.config.keep_threshold, set(self.config.stem_topics), self.baselines
        e_idx = [i for i, a in enumerate(annotations) if a.edu is not None]
        t_idx = [i for i, a in enumerate(annotations) if a.topic is not None]
        teacher = np.array([annotations[i].edu for i in e_idx], dtype=np.float64)
        pred = edu_pred[e_idx]
        t_teacher = [annotations[i].topic for i in t_idx]
        const = lambda v: np.full(len(e_idx), float(v))  # noqa: E731
        return {
            "n": len(texts), "n_edu": len(e_idx), "n_topic": len(t_idx), "keep_threshold": thr,
            "edu": edu_agreement(pred, teacher, thr),
            "edu_baseline_mean": edu_agreement(const(b["edu_mean"]), teacher, thr),
            "edu_baseline_majority": edu_agreement(const(b["edu_majority"]), teacher, thr),
            "topic": topic_agreement([str(topic_pred[i]) for i in t_idx], t_teacher, stem),
            "topic_baseline_majority": topic_agreement([b["topic_majority"]] * len(t_idx), t_teacher, stem),
            "teacher_edu_histogram": _histogram(teacher),
            "predicted_edu_histogram": _histogram(pred),
            "teacher_topic_counts": dict(sorted(Counter(t_teacher).items())),
        }

    # ---- persistence

    def save(self, path: str | Path) -> Path:
        """Pickle to ``path`` atomically (a temp file renamed into place)."""
        sklearn = _sklearn()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"kind": KIND, "format": FORMAT, "sklearn": sklearn.__version__,
                   "config": self.config.model_dump(), "featurizer": self.featurizer, "edu_model": self.edu_model,
                   "topic_model": self.topic_model, "topics": self.topics, "baselines": self.baselines}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "QualityClassifier":
        """A classifier written by :meth:`save` (pickle: load only files you trust)."""
        sklearn = _sklearn()
        path = Path(path)
        try:
            with open(path, "rb") as f:
                payload = pickle.load(f)
        except FileNotFoundError:
            raise DataError(f"{path}: no quality classifier here; train one first (train_and_evaluate + save)")
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
            raise DataError(f"{path}: not a readable quality classifier ({e}); retrain and save it again") from e
        if not isinstance(payload, dict) or payload.get("kind") != KIND or payload.get("format") != FORMAT:
            got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise DataError(f"{path}: not a quality classifier of format {FORMAT} (got {got!r}); retrain it")
        if payload["sklearn"] != sklearn.__version__:
            log.warning("%s was saved with scikit-learn %s, loading with %s; retrain if predictions look off",
                        path, payload["sklearn"], sklearn.__version__)
        return cls(QualityClassifierConfig(**payload["config"]), payload["featurizer"], payload["edu_model"],
                   payload["topic_model"], payload["topics"], payload["baselines"])


def _fit_edu(cfg: QualityClassifierConfig, X, edu):
    if cfg.edu_model == "ridge":
        from sklearn.linear_model import Ridge

        return Ridge(alpha=cfg.alpha, random_state=cfg.seed).fit(X, edu)
    labels = [_label(x) for x in edu]
    if len(set(labels)) < 2:
        raise DataError("train: every educational-value label rounds to the same class; "
                        "use edu_model = 'ridge' or annotate a more varied sample")
    return _fit_logistic(cfg, X, labels)


def _fit_logistic(cfg: QualityClassifierConfig, X, y):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed).fit(X, y)


def _label(x: float) -> int:
    """A 0-5 score as its integer label (round half up, clipped)."""
    return int(min(EDU_MAX, max(0, math.floor(x + 0.5))))


def _histogram(values) -> list[int]:
    counts = Counter(_label(float(v)) for v in values)
    return [counts.get(k, 0) for k in range(EDU_MAX + 1)]


# --------------------------------------------------------------------------- agreement metrics


def cohen_kappa(a: Sequence, b: Sequence, labels: Sequence | None = None,
                weights: Literal[None, "quadratic"] = None) -> float | None:
    """Cohen's kappa of two raters (quadratic weights for ordinal labels); None where undefined (pe = 1)."""
    import numpy as np

    labels = list(labels) if labels is not None else sorted(set(a) | set(b))
    index = {v: i for i, v in enumerate(labels)}
    k = len(labels)
    observed = np.zeros((k, k))
    for x, y in zip(a, b):
        observed[index[x], index[y]] += 1
    observed /= max(1, len(a))
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((k, k))
    w = ((i - j) ** 2 / max(1, (k - 1) ** 2)) if weights == "quadratic" else (i != j).astype(float)
    disagreement_expected = float((w * expected).sum())
    if disagreement_expected <= 1e-12:
        return None
    return 1.0 - float((w * observed).sum()) / disagreement_expected


def _corr(x, y) -> float | None:
    import numpy as np

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def edu_agreement(pred, teacher, threshold: float = 3.0) -> dict:
    """Agreement of predicted with teacher 0-5 scores.

    Correlations (``pearson``, ``spearman``; None when either side is constant),
    errors (``mae``, ``rmse``), on rounded labels ``exact`` and ``within_1`` accuracy
    and quadratic-weighted kappa (``kappa_quadratic``), and on the keep decision
    (``score >= threshold``) ``binary_accuracy``, ``precision`` / ``recall`` / ``f1``
    of the prediction against the teacher, Cohen's ``kappa`` and both keep rates.
    """
    import numpy as np
    from scipy.stats import rankdata

    pred, teacher = np.asarray(pred, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    n = len(teacher)
    if n == 0:
        return {"n": 0}
    pl, tl = [_label(x) for x in pred], [_label(x) for x in teacher]
    pb, tb = pred >= threshold, teacher >= threshold
    tp, fp, fn = int((pb & tb).sum()), int((pb & ~tb).sum()), int((~pb & tb).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "n": n, "pearson": _corr(pred, teacher), "spearman": _corr(rankdata(pred), rankdata(teacher)),
        "mae": float(np.abs(pred - teacher).mean()), "rmse": float(np.sqrt(((pred - teacher) ** 2).mean())),
        "exact": float(np.mean([p == t for p, t in zip(pl, tl)])),
        "within_1": float(np.mean([abs(p - t) <= 1 for p, t in zip(pl, tl)])),
        "kappa_quadratic": cohen_kappa(pl, tl, range(EDU_MAX + 1), "quadratic"),
        "binary_accuracy": float((pb == tb).mean()), "precision": precision, "recall": recall, "f1": f1,
        "kappa": cohen_kappa(pb.tolist(), tb.tolist(), [False, True]),
        "teacher_keep_rate": float(tb.mean()), "predicted_keep_rate": float(pb.mean()),
    }


def topic_agreement(pred: Sequence[str], teacher: Sequence[str], stem: Iterable[str] = STEM_TOPICS) -> dict:
    """``accuracy``, ``macro_f1`` (over topics in either list), per-topic F1, and ``group_accuracy``
    (both say STEM, or both non-STEM: what the amplifier depends on)."""
    n = len(teacher)
    if n == 0:
        return {"n": 0}
    stem = set(stem)
    per_topic = {}
    for t in sorted(set(pred) | set(teacher)):
        tp = sum(p == t and g == t for p, g in zip(pred, teacher))
        fp = sum(p == t and g != t for p, g in zip(pred, teacher))
        fn = sum(p != t and g == t for p, g in zip(pred, teacher))
        per_topic[t] = _ratio(2 * tp, 2 * tp + fp + fn) or 0.0
    return {"n": n, "accuracy": sum(p == g for p, g in zip(pred, teacher)) / n,
            "macro_f1": sum(per_topic.values()) / len(per_topic),
            "group_accuracy": sum((p in stem) == (g in stem) for p, g in zip(pred, teacher)) / n,
            "per_topic_f1": per_topic}


# --------------------------------------------------------------------------- split + train + evaluate


def split_holdout(texts: Sequence[str], fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(train, holdout)`` indices: texts ordered by a seeded hash, the first ``fraction`` held out.

    Independent of input order; copies of one text land on the same side.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"holdout_fraction: {fraction} must be between 0 and 1 (exclusive), e.g. 0.2")
    keys = [hashlib.blake2b(f"{seed}\0{t}".encode(), digest_size=8).digest() for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (keys[i], i))
    k = min(max(1, round(fraction * len(texts))), len(texts) - 1)
    while 0 < k < len(order) and keys[order[k]] == keys[order[k - 1]]:
        k += 1
    return sorted(order[k:]), sorted(order[:k])


def train_and_evaluate(texts: Sequence[str], annotations: Sequence[Annotation],
                       config: QualityClassifierConfig | None = None, holdout_fraction: float = 0.2,
                       seed: int | None = None) -> tuple[QualityClassifier, dict]:
    """Train on a deterministic split and report agreement on the held-out part.

    The returned classifier is the one evaluated (trained without the holdout).
    ``seed`` (default ``config.seed``) picks the split.
    """
    cfg = config or QualityClassifierConfig()
    if len(texts) != len(annotations):
        raise ConfigError(f"train_and_evaluate: {len(texts)} texts but {len(annotations)} annotations")
    if len(texts) < 3:
        raise DataError(f"train_and_evaluate: {len(texts)} annotated documents; need at least 3")
    train, hold = split_holdout(texts, holdout_fraction, cfg.seed if seed is None else seed)
    clf = QualityClassifier.train([texts[i] for i in train], [annotations[i] for i in train], cfg)
    metrics = clf.evaluate([texts[i] for i in hold], [annotations[i] for i in hold])
    return clf, {"n_train": len(train), "n_holdout": len(hold), "holdout_fraction": holdout_fraction, **metrics}


# --------------------------------------------------------------------------- steps


def _counter_name(topic: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(topic).lower()).strip("_") or "none"


def _batched(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class QualityFilterConfig(_Config):
    """Settings of :class:`QualityFilter`."""

    model_path: str = Field(min_length=1, description="a classifier saved by QualityClassifier.save")
    min_edu: float = Field(3.0, ge=0, le=5, description=(
        "keep STEM-topic records with edu_score >= this. UNCONFIRMED: FineWeb-Edu's cutoff on a 0-5 scale; "
        "0 keeps everything (scores only, e.g. before NonStemAmplifier)"))
    min_edu_non_stem: float | None = Field(None, ge=0, le=5, description=(
        "the bar for non-STEM topics (the amplifier's streaming form); None: min_edu - 1 (at least 0). "
        "UNCONFIRMED"))
    stem_topics: list[str] = Field(sorted(STEM_TOPICS), description="topics held to min_edu; others are non-STEM")
    batch_size: int = Field(512, ge=1, description="records featurised together")

    @model_validator(mode="after")
    def _order(self):
        if self.min_edu_non_stem is not None and self.min_edu_non_stem > self.min_edu:
            raise ValueError(f"min_edu_non_stem ({self.min_edu_non_stem}) must be <= min_edu ({self.min_edu}): "
                             "it lowers the bar for non-STEM topics")
        return self

    @property
    def non_stem_threshold(self) -> float:
        return self.min_edu_non_stem if self.min_edu_non_stem is not None else max(0.0, self.min_edu - 1.0)

    def build(self) -> "QualityFilter":
        return QualityFilter(self)


class QualityFilter(Step):
    """Score records with a saved :class:`QualityClassifier`; drop ``low_quality`` below the topic's bar.

    Sets ``metadata["edu_score"]``, ``["topic"]``, ``["topic_prob"]``. Records with no
    text are dropped as ``no_text``. Counters: ``kept_topic_<t>`` /
    ``dropped_topic_<t>``, ``edu_bucket_<0-5>`` (rounded scores of all scored
    records), ``kept_by_non_stem_threshold`` (non-STEM records kept below ``min_edu``).
    """

    def __init__(self, config: QualityFilterConfig, classifier: QualityClassifier | None = None):
        self.config = config
        self._classifier = classifier  # optional preloaded copy; never pickled

    def __getstate__(self):
        return {"config": self.config, "_classifier": None}

    def classifier(self) -> QualityClassifier:
        if self._classifier is None:
            self._classifier = QualityClassifier.load(self.config.model_path)
        return self._classifier

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        cfg, stem = self.config, set(self.config.stem_topics)
        clf = self.classifier()
        for batch in _batched(records, cfg.batch_size):
            live = []
            for record in batch:
                if record.text and record.text.strip():
                    live.append(record)
                else:
                    ctx.drop(record, "no_text")
            if not live:
                continue
            edu, topics, probs = clf.predict_arrays([r.text for r in live])
            for record, e, t, p in zip(live, edu, topics, probs):
                e, t = float(e), str(t)
                scored = dataclasses.replace(record, metadata={
                    **record.metadata, "edu_score": round(e, 4), "topic": t, "topic_prob": round(float(p), 4)})
                ctx.stat(f"edu_bucket_{_label(e)}")
                bar = cfg.min_edu if t in stem else cfg.non_stem_threshold
                if e >= bar:
                    ctx.stat(f"kept_topic_{_counter_name(t)}")
                    if e < cfg.min_edu:
                        ctx.stat("kept_by_non_stem_threshold")
                    yield scored
                else:
                    ctx.stat(f"dropped_topic_{_counter_name(t)}")
                    ctx.drop(scored, "low_quality")


class NonStemAmplifierConfig(_Config):
    """Settings of :class:`NonStemAmplifier` (topic quotas over windows of scored records)."""

    keep_fraction: float = Field(0.5, gt=0, le=1, description=(
        "keep this share of each window's records (the best by edu_score, under the quotas). UNCONFIRMED"))
    shares: dict[str, float] = Field({"non_stem": 0.3}, description=(
        "minimum shares of the kept slots reserved per topic group ('stem', 'non_stem') or single topic "
        "(e.g. {history = 0.05}); a topic key is filled first and its records then count for no group; "
        "unfilled reserved slots and the rest go to the best remaining records. UNCONFIRMED: 0.3 non-STEM"))
    stem_topics: list[str] = Field(sorted(STEM_TOPICS), description="topics in the 'stem' group")
    window: int = Field(10000, ge=1, description="records buffered per selection (per task, in input order)")
    min_edu: float | None = Field(None, ge=0, le=5, description=(
        "never keep records below this (dropped as low_quality), even to fill a quota; None: no floor"))

    @field_validator("shares")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"shares must be in [0, 1], got {bad}")
        if sum(value.values()) > 1 + 1e-9:
            raise ValueError(f"shares sum to {sum(value.values()):.3f}; they are shares of the kept slots, "
                             "so they must sum to at most 1")
        return value

    def build(self) -> "NonStemAmplifier":
        return NonStemAmplifier(self)


def select_with_quotas(items: Sequence[tuple[str, str, float]], k: int, shares: dict[str, float],
                       stem: Iterable[str]) -> tuple[set[int], dict[str, tuple[int, int]]]:
    """Indices of the ``k`` items ``(id, topic, score)`` to keep, and per share key (filled, quota).

    Each key reserves ``floor(share * k)`` slots, filled with its best items (score
    descending, then id); single topics first (sorted by name), then ``non_stem``,
    then ``stem``. Remaining slots go to the best items left, whatever their topic.
    """
    stem = set(stem)
    rank = sorted(range(len(items)), key=lambda i: (-items[i][2], items[i][0]))
    own = {k_ for k_ in shares if k_ not in GROUPS}
    order = sorted(own) + [g for g in ("non_stem", "stem") if g in shares]
    chosen: set[int] = set()
    report = {}
    for key in order:
        quota = min(int(math.floor(shares[key] * k + 1e-9)), k - len(chosen))
        if key in own:
            members = (i for i in rank if items[i][1] == key)
        else:
            members = (i for i in rank if items[i][1] not in own and (items[i][1] in stem) == (key == "stem"))
        picked = [i for i in members if i not in chosen][:quota]
        chosen.update(picked)
        report[key] = (len(picked), quota)
    chosen.update([i for i in rank if i not in chosen][:k - len(chosen)])
    return chosen, report


class NonStemAmplifier(Step):
    """Keep the best ``keep_fraction`` of each window under per-topic quotas; drop the rest as ``topic_quota``.

    Reads ``metadata["edu_score"]`` and ``["topic"]`` (put :class:`QualityFilter` first).
    Kept records leave in their input order. Counters: ``kept_topic_<t>``,
    ``dropped_topic_<t>``, ``quota_<key>_filled`` and ``quota_<key>_short`` (reserved
    slots with no record of that group to fill them).
    """

    def __init__(self, config: NonStemAmplifierConfig):
        self.config = config

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        for window in _batched(records, self.config.window):
            yield from self._select(window, ctx)

    def _select(self, window: list[Record], ctx: StepContext) -> Iterator[Record]:
        cfg = self.config
        k = math.ceil(cfg.keep_fraction * len(window))
        eligible = []
        for record in window:
            score, topic = _scored(record)
            if cfg.min_edu is not None and score < cfg.min_edu:
                ctx.stat(f"dropped_topic_{_counter_name(topic)}")
                ctx.drop(record, "low_quality")
            else:
                eligible.append((record, topic, score))
        chosen, report = select_with_quotas([(r.id, t, s) for r, t, s in eligible], k, cfg.shares, cfg.stem_topics)
        for key, (filled, quota) in report.items():
            ctx.stat(f"quota_{_counter_name(key)}_filled", filled)
            ctx.stat(f"quota_{_counter_name(key)}_short", quota - filled)
        for i, (record, topic, _) in enumerate(eligible):
            if i in chosen:
                ctx.stat(f"kept_topic_{_counter_name(topic)}")
                yield record
            else:
                ctx.stat(f"dropped_topic_{_counter_name(topic)}")
                ctx.drop(record, "topic_quota")


def _scored(record: Record) -> tuple[float, str]:
    score, topic = record.metadata.get("edu_score"), record.metadata.get("topic")
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not isinstance(topic, str):
        raise DataError(f"record {record.id!r}: NonStemAmplifier needs metadata 'edu_score' (a number) and "
                        "'topic' (a string); put QualityFilter (min_edu = 0 to score only) before it")
    return float(score), topic
