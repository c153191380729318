"""Quality classifier distilled from teacher labels, its agreement metrics, the filter and the amplifier."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
from pydantic import ValidationError

from phiforge.curate.annotate import Annotation
from phiforge.curate.quality import (NonStemAmplifierConfig, QualityClassifier,
                                     QualityClassifierConfig, QualityFilter, QualityFilterConfig, cohen_kappa,
                                     edu_agreement, select_with_quotas, split_holdout, topic_agreement,
                                     train_and_evaluate)
from phiforge.dataflow.records import Record
from phiforge.dataflow.step import StepContext
from phiforge.errors import DataError

TOPIC_WORDS = {
    "math": "equation integral theorem prime fraction algebra triangle derivative".split(),
    "history": "empire revolution century king treaty dynasty war medieval".split(),
    "travel": "hotel beach flight museum passport itinerary island tour".split(),
    "programming": "python function variable compile loop class debug array".split(),
}
EDU_WORDS = "explains because therefore example definition proof step lesson understand method".split()
JUNK_WORDS = "buy click free cheap subscribe winner discount now offer lol".split()


def synthetic_corpus(n: int, seed: int = 0) -> tuple[list[str], list[Annotation]]:
    """Documents whose teacher label is their share of educational words (0-5), topic from topic words."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        topic, q = rng.choice(sorted(TOPIC_WORDS)), rng.randint(0, 5)
        words = rng.choices(TOPIC_WORDS[topic], k=8)
        words += [rng.choice(EDU_WORDS) if rng.random() < q / 5 else rng.choice(JUNK_WORDS) for _ in range(20)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(Annotation(float(q), q, topic, method="json"))
    return texts, labels


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(600)


@pytest.fixture(scope="module")
def trained(corpus):
    return train_and_evaluate(*corpus, QualityClassifierConfig(hash_bits=16))


# --------------------------------------------------------------------------- classifier


def test_classifier_agrees_with_teacher_far_above_baselines(trained):
    clf, m = trained
    assert m["n_train"] + m["n_holdout"] == 600 and m["n_holdout"] == 120
    edu, base = m["edu"], m["edu_baseline_mean"]
    assert edu["spearman"] > 0.85 and edu["pearson"] > 0.85 and edu["within_1"] > 0.9
    assert edu["mae"] < 0.6 * base["mae"] and base["pearson"] is None
    assert edu["kappa"] > 0.6 and base["kappa"] == 0.0 and edu["f1"] > 0.8
    assert edu["exact"] > m["edu_baseline_majority"]["exact"] + 0.2
    assert m["topic"]["accuracy"] > 0.95 and m["topic_baseline_majority"]["accuracy"] < 0.4
    assert m["topic"]["macro_f1"] > 0.95 and m["topic"]["group_accuracy"] > 0.95
    assert sum(m["teacher_edu_histogram"]) == m["n_edu"] == 120
    (good, topic, prob), (bad, _, _) = clf.predict([
        "python function loop compile explains therefore example proof step lesson method",
        "python function loop compile buy click free cheap winner discount now offer lol"])
    assert topic == "programming" and good > 3.5 > 1.5 > bad and 0.5 < prob <= 1


def test_logistic_edu_model_and_char_ngrams(corpus):
    texts, labels = corpus
    cfg = QualityClassifierConfig(hash_bits=14, edu_model="logistic", char_ngrams=True)
    clf, m = train_and_evaluate(texts[:300], labels[:300], cfg)
    assert m["edu"]["spearman"] > 0.7 and m["topic"]["accuracy"] > 0.9
    assert all(0 <= s <= 5 for s, _, _ in clf.predict(texts[:20]))


def test_unlabelled_documents_and_a_single_topic():
    texts, labels = synthetic_corpus(40, seed=3)
    labels = [Annotation(a.edu, a.edu_label, "math", method="json") for a in labels]
    labels[0] = Annotation(None, None, None, error="invalid JSON")
    clf = QualityClassifier.train(texts, labels, QualityClassifierConfig(hash_bits=12))
    assert clf.baselines["n_train_edu"] == 39
    assert {t for _, t, p in clf.predict(texts[:5])} == {"math"}
    with pytest.raises(DataError, match="annotate more"):
        QualityClassifier.train(texts[:1], labels[:1])


def test_training_is_deterministic_and_save_load_identical(trained, corpus, tmp_path):
    clf, _ = trained
    texts, labels = corpus
    again, _ = train_and_evaluate(texts, labels, QualityClassifierConfig(hash_bits=16))
    probe = texts[:50] + ["", "completely unseen words here"]
    assert clf.predict(probe) == again.predict(probe)
    path = clf.save(tmp_path / "sub" / "clf.pkl")
    assert not list(path.parent.glob(".*tmp*"))  # atomic write left no temp file
    loaded = QualityClassifier.load(path)
    assert loaded.predict(probe) == clf.predict(probe) and loaded.config == clf.config
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"kind": "other"}))
    with pytest.raises(DataError, match="retrain"):
        QualityClassifier.load(tmp_path / "bad.pkl")
    with pytest.raises(DataError, match="train one first"):
        QualityClassifier.load(tmp_path / "missing.pkl")


def test_holdout_split_is_order_independent_and_keeps_duplicates_together():
    texts = [f"doc {i}" for i in range(50)] + ["dup"] * 4
    train, hold = split_holdout(texts, 0.2, seed=1)
    assert len(hold) >= 11 and sorted(train + hold) == list(range(54))
    shuffled = texts[::-1]
    _, hold2 = split_holdout(shuffled, 0.2, seed=1)
    assert sorted(texts[i] for i in hold) == sorted(shuffled[i] for i in hold2)
    assert len({i in hold for i, t in enumerate(texts) if t == "dup"}) == 1
    assert split_holdout(texts, 0.2, seed=2)[1] != hold


# --------------------------------------------------------------------------- metrics on hand-computed cases


def test_edu_agreement_hand_computed():
    m = edu_agreement([0.2, 2.0, 5.0, 3.4], [1.0, 4.0, 5.0, 3.0], threshold=3.0)
    assert m["exact"] == 0.5 and m["within_1"] == 0.75  # labels 0,2,5,3 vs 1,4,5,3
    assert m["mae"] == pytest.approx((0.8 + 2 + 0 + 0.4) / 4)
    # keep decisions: pred F F T T, teacher F T T T -> tp 2, fp 0, fn 1
    assert (m["precision"], m["recall"], m["f1"], m["binary_accuracy"]) == (1.0, pytest.approx(2 / 3), 0.8, 0.75)
    assert m["kappa"] == pytest.approx(0.5)  # po = .75, pe = .5*.75 + .5*.25 = .5
    assert m["spearman"] == pytest.approx(0.8) and m["teacher_keep_rate"] == 0.75
    constant = edu_agreement([2.0] * 4, [1.0, 4.0, 5.0, 3.0])
    assert constant["pearson"] is None and constant["kappa"] == 0.0 and constant["precision"] is None


def test_kappa_hand_computed_and_against_sklearn():
    from sklearn.metrics import cohen_kappa_score

    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert cohen_kappa([1, 1], [1, 1]) is None  # both constant and agreeing: undefined
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 200).tolist(), rng.integers(0, 6, 200).tolist()
    assert cohen_kappa(a, b, range(6), "quadratic") == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_topic_agreement_hand_computed():
    m = topic_agreement(["math", "math", "arts", "travel"], ["math", "arts", "arts", "travel"])
    assert m["accuracy"] == 0.75 and m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m["group_accuracy"] == 0.75 and m["per_topic_f1"]["travel"] == 1.0


# --------------------------------------------------------------------------- steps


class StubClassifier:
    """predict_arrays from a table keyed by text: ``{text: (edu, topic)}``."""

    def __init__(self, table):
        self.table = table

    def predict_arrays(self, texts):
        rows = [self.table[t] for t in texts]
        return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=object), np.full(len(rows), 0.9))


def _run(step, records):
    ctx = StepContext(step.name)
    return list(step.run(iter(records), ctx)), ctx


def test_quality_filter_thresholds_and_non_stem_bar():
    table = {"proof": (4.2, "math"), "spam": (0.3, "math"), "weak math": (2.5, "math"),
             "museum": (2.5, "history"), "gossip": (1.2, "entertainment")}
    records = [Record(k, text=k, metadata={"src": "web"}) for k in table] + [Record("empty", text="  ")]
    amplified = QualityFilter(QualityFilterConfig(model_path="unused"), classifier=StubClassifier(table))
    kept, ctx = _run(amplified, records)
    assert [r.id for r in kept] == ["proof", "museum"]  # non-STEM bar is min_edu - 1 = 2
    assert kept[1].metadata == {"src": "web", "edu_score": 2.5, "topic": "history", "topic_prob": 0.9}
    assert ctx.drops == {"low_quality": 3, "no_text": 1}
    assert ctx.counters["kept_by_non_stem_threshold"] == 1 and ctx.counters["kept_topic_history"] == 1
    assert ctx.counters["dropped_topic_math"] == 2 and ctx.counters["edu_bucket_3"] == 2
    plain = QualityFilter(QualityFilterConfig(model_path="unused", min_edu_non_stem=3.0),
                          classifier=StubClassifier(table))
    assert [r.id for r in _run(plain, records)[0]] == ["proof"]  # a plain threshold loses the history page
    assert records[0].metadata == {"src": "web"}  # inputs are not modified
    with pytest.raises(ValidationError, match="min_edu_non_stem"):
        QualityFilterConfig(model_path="x", min_edu=2, min_edu_non_stem=3)


def test_quality_filter_loads_lazily_and_pickles_cheaply(trained, corpus, tmp_path):
    clf, _ = trained
    path = clf.save(tmp_path / "clf.pkl")
    step = QualityFilterConfig(model_path=str(path), min_edu=0).build()
    kept, _ = _run(step, [Record(str(i), text=t) for i, t in enumerate(corpus[0][:10])])
    assert len(kept) == 10 and step._classifier is not None
    clone = pickle.loads(pickle.dumps(step))
    assert len(pickle.dumps(step)) < 1000 and clone._classifier is None
    assert [r.metadata for r in _run(clone, [Record("a", text=corpus[0][0])])[0]] == [kept[0].metadata]


def _scored(i, topic, score):
    return Record(f"r{i:02d}", text="x", metadata={"edu_score": score, "topic": topic})


def test_amplifier_reserves_slots_for_non_stem_topics():
    records = [_scored(i, "math", 4.0 + i / 100) for i in range(6)] + \
              [_scored(6, "history", 2.0), _scored(7, "arts", 2.5), _scored(8, "travel", 1.0), _scored(9, "math", 1.0)]
    top_k = NonStemAmplifierConfig(keep_fraction=0.4, shares={}).build()
    assert {r.metadata["topic"] for r in _run(top_k, records)[0]} == {"math"}  # plain top 4: all STEM
    kept, ctx = _run(NonStemAmplifierConfig(keep_fraction=0.4, shares={"non_stem": 0.5}).build(), records)
    assert [r.id for r in kept] == ["r04", "r05", "r06", "r07"]  # best 2 STEM + best 2 non-STEM, input order
    assert ctx.drops == {"topic_quota": 6} and ctx.counters["quota_non_stem_filled"] == 2
    assert ctx.counters["kept_topic_arts"] == 1 and ctx.counters["dropped_topic_math"] == 5


def test_amplifier_topic_quotas_floor_ties_and_windows():
    records = [_scored(i, t, s) for i, (t, s) in enumerate(
        [("math", 3.0), ("math", 3.0), ("history", 3.0), ("travel", 0.5), ("arts", 2.0), ("math", 1.0)])]
    cfg = NonStemAmplifierConfig(keep_fraction=0.5, shares={"travel": 0.4, "non_stem": 0.4}, min_edu=1.0)
    kept, ctx = _run(cfg.build(), records)
    # k = 3; travel's slot has no record >= the floor (short); non_stem: history; rest: ties by id -> r00, r01
    assert [r.id for r in kept] == ["r00", "r01", "r02"]
    assert ctx.counters["quota_travel_short"] == 1 and ctx.drops == {"low_quality": 1, "topic_quota": 2}
    windows, _ = _run(NonStemAmplifierConfig(keep_fraction=0.5, shares={}, window=2).build(), records)
    assert [r.id for r in windows] == ["r00", "r02", "r04"]  # one per window of two
    chosen, report = select_with_quotas([("a", "math", 1.0), ("b", "arts", 0.0)], 1, {"stem": 1.0}, ["math"])
    assert chosen == {0} and report == {"stem": (1, 1)}
    with pytest.raises(DataError, match="QualityFilter"):
        _run(cfg.build(), [Record("x", text="x")])
    with pytest.raises(ValidationError, match="at most 1"):
        NonStemAmplifierConfig(shares={"non_stem": 0.7, "stem": 0.5})
