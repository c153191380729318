"""Exact and MinHash-LSH deduplication on documents whose Jaccard similarity is known by hand.

Texts are made of distinct numbered words, so shingles never repeat by accident.
With k words there are k - 4 five-gram shingles. Replacing one word far from the
ends and from other edits removes 5 shared shingles and adds 5 new ones, so with
e edits the Jaccard similarity is (k - 4 - 5e) / (k - 4 + 5e):

* k = 100: 1 edit -> 91/101 = 0.90, 2 edits -> 86/106 = 0.81, 3 edits -> 81/111 = 0.73;
* k = 94: 2 edits -> 80/100 = 0.80, exactly the default threshold.

Tests about verification use ``bands=128, rows=1``. Any shared MinHash value then
makes a candidate, so the verifier alone decides and LSH chance plays no part.
"""

import sys
from itertools import permutations

import numpy as np
import pytest

pytest.importorskip("rensa")

from phiforge.curate.dedup import (  # noqa: E402
    MAX_BUCKET_ALL_PAIRS,
    Dedup,
    DedupConfig,
    bands_for,
    candidate_pairs,
    candidate_probability,
    dedup_clusters,
    exact_key,
    find_duplicates,
    jaccard,
    shingles,
)
from phiforge.dataflow.records import Record  # noqa: E402
from phiforge.dataflow.step import StepContext  # noqa: E402
from phiforge.errors import ConfigError  # noqa: E402

FORCED = {"bands": 128, "rows": 1}  # every pair sharing one MinHash value is a candidate


def words(prefix: str, k: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(k))


def edited(text: str, *positions: int, tag: str = "z") -> str:
    """``text`` with the words at ``positions`` replaced by words found nowhere else."""
    ws = text.split()
    for p in positions:
        ws[p] = f"{tag}{p}"
    return " ".join(ws)


def sim(a: str, b: str) -> float:
    return jaccard(set(shingles(a, 5)), set(shingles(b, 5)))


BASE = words("w", 100)


def test_the_hand_computed_jaccards_hold():
    assert sim(BASE, edited(BASE, 50)) == pytest.approx(91 / 101)
    assert sim(BASE, edited(BASE, 30, 60)) == pytest.approx(86 / 106)
    assert sim(BASE, edited(BASE, 20, 50, 80)) == pytest.approx(81 / 111)
    assert sim(words("v", 94), edited(words("v", 94), 30, 60)) == 0.8


# -- exact -------------------------------------------------------------------------


def test_exact_duplicates_ignore_case_and_whitespace_and_keep_the_first():
    texts = ["Hello  World\n", "other text", "hello world", "HELLO WORLD "]
    r = find_duplicates(texts, DedupConfig(fuzzy=False))
    assert r.representatives == [0, 1, 0, 0]
    assert r.reasons == [None, None, "exact_duplicate", "exact_duplicate"]
    assert r.counters["exact_duplicates"] == 2 and r.counters["clusters"] == 1
    assert exact_key("a b") != exact_key("a. b")  # punctuation matters for the exact key


def test_without_exact_an_identical_copy_is_a_near_duplicate():
    r = find_duplicates([BASE, BASE.upper()], DedupConfig(exact=False))
    assert r.reasons == [None, "near_duplicate"]


# -- fuzzy ------------------------------------------------------------------------


def test_a_near_duplicate_with_default_settings_is_dropped():
    texts = [words("u", 100), BASE, edited(BASE, 50)]
    r = find_duplicates(texts)
    assert r.representatives == [0, 1, 1]
    assert r.reasons == [None, None, "near_duplicate"]
    assert r.counters["verified_pairs"] == 1 and r.counters["candidate_pairs"] >= 1


@pytest.mark.parametrize(("copy", "is_dup"), [
    (edited(BASE, 50), True),             # 0.90
    (edited(BASE, 30, 60), True),         # 0.81
    (edited(BASE, 20, 50, 80), False),    # 0.73
])
def test_verification_decides_at_the_threshold(copy, is_dup):
    r = find_duplicates([BASE, copy], DedupConfig(**FORCED))
    assert r.counters["candidate_pairs"] == 1
    assert r.reasons[1] == ("near_duplicate" if is_dup else None)


def test_a_jaccard_exactly_at_the_threshold_is_a_duplicate():
    base = words("v", 94)
    assert dedup_clusters([base, edited(base, 30, 60)], DedupConfig(**FORCED)) == [0, 0]
    assert dedup_clusters([base, edited(base, 30, 60)], DedupConfig(threshold=0.81, **FORCED)) == [0, 1]


def test_without_verification_every_lsh_candidate_is_dropped():
    copy = edited(BASE, 20, 50, 80)  # 0.73: below the threshold, but it shares MinHash values
    assert dedup_clusters([BASE, copy], DedupConfig(verify=False, **FORCED)) == [0, 0]


def test_unrelated_documents_are_all_kept():
    texts = [words(p, 60) for p in "abcdefgh"]
    r = find_duplicates(texts)
    assert r.representatives == list(range(8))
    assert r.counters["candidate_pairs"] == 0


# -- clusters and the representative ----------------------------------------------------


def test_clusters_are_transitive_and_the_first_in_input_order_is_kept():
    a = BASE
    b = edited(a, 30)                     # a-b: 0.90
    c = edited(b, 60, 80, tag="y")        # b-c: 0.81, a-c: 3 edits = 0.73
    assert sim(a, c) < 0.8
    for order in permutations(range(3)):
        texts = [(a, b, c)[i] for i in order]
        assert dedup_clusters(texts, DedupConfig(**FORCED)) == [0, 0, 0]


def test_the_representative_is_stable_under_permutations_of_the_others():
    rep = BASE
    copies = [edited(BASE, p) for p in (20, 40, 60, 80)] + [BASE.upper()]
    others = [words("u", 50), words("t", 70)]
    for seed in (0, 1):
        for perm in list(permutations(copies))[::7]:
            texts = [others[0], rep, *perm, others[1]]
            r = find_duplicates(texts, DedupConfig(seed=seed))
            assert r.representatives == [0, 1, 1, 1, 1, 1, 1, 7]
            assert sorted(x for x in r.reasons if x) == ["exact_duplicate"] + ["near_duplicate"] * 4


def test_an_exact_copy_of_a_near_duplicate_points_at_the_kept_record():
    texts = [BASE, edited(BASE, 50), edited(BASE, 50)]
    r = find_duplicates(texts)
    assert r.representatives == [0, 0, 0]
    assert r.reasons == [None, "near_duplicate", "exact_duplicate"]
    assert r.counters == {"exact_duplicates": 1, "near_duplicates": 1, "clusters": 1,
                          "candidate_pairs": 1, "verified_pairs": 1, "no_shingles": 0}


# -- bad and short input ---------------------------------------------------------------


def test_empty_and_short_texts_never_crash():
    texts = ["", "   ", "!!!", "?", "a b", "A, B", "a b c", "a b c"]
    assert shingles("a b", 5) == ["a b"] and shingles("!!!", 5) == []
    r = find_duplicates(texts)
    # "" and "   " are exact duplicates; "!!!" and "?" have no shingles and are kept;
    # "a b" / "A, B" differ exactly (the comma) but share their one shingle "a b".
    assert r.representatives == [0, 0, 2, 3, 4, 4, 6, 6]
    assert r.reasons[5] == "near_duplicate" and r.reasons[7] == "exact_duplicate"
    assert r.counters["no_shingles"] == 3  # "", "!!!", "?" ("   " was removed as exact first)
    assert find_duplicates([]).representatives == []
    assert dedup_clusters(["", ""], DedupConfig(exact=False)) == [0, 1]


def test_large_buckets_use_star_and_chain_pairs():
    small = candidate_pairs(np.zeros((5, 8), dtype=np.uint32), bands=2, rows=4)
    assert len(small) == 10  # all pairs
    k = MAX_BUCKET_ALL_PAIRS + 8
    big = candidate_pairs(np.zeros((k, 8), dtype=np.uint32), bands=2, rows=4)
    assert len(big) == (k - 1) + (k - 2)
    assert {tuple(p) for p in big} >= {(0, k - 1), (k - 2, k - 1)}
    assert (big[:, 0] < big[:, 1]).all()


# -- configuration and LSH parameters ------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"shingle_size": 0}, {"num_perm": 0}, {"num_perm": 12.0}, {"threshold": 0}, {"threshold": 1.5},
    {"threshold": True}, {"bands": 16}, {"bands": 16, "rows": 9}, {"bands": 0, "rows": 8},
    {"exact": False, "fuzzy": False}, {"verify": "yes"}, {"seed": -1}, {"seed": 2**64},
])
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ConfigError, match="dedup"):
        DedupConfig(**bad)


def test_config_round_trips_and_rejects_unknown_keys():
    config = DedupConfig(threshold=0.7, bands=20, rows=6)
    assert DedupConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown setting.*jacard"):
        DedupConfig.from_dict({"jacard": 0.8})


def test_bands_for_matches_the_s_curve_criterion():
    # balanced weights give datasketch's _optimal_param choices for 128 permutations
    assert [bands_for(t, 128) for t in (0.7, 0.8, 0.9)] == [(14, 9), (9, 13), (5, 25)]
    assert DedupConfig().band_shape() == (16, 8)
    assert DedupConfig(verify=False).band_shape() == (9, 13)
    for t in (0.5, 0.8, 0.95):
        b, r = bands_for(t, 128, false_negative_weight=0.95)
        assert b * r <= 128
        assert candidate_probability(t, b, r) > 0.85
        curve = candidate_probability(np.linspace(0, 1, 21), b, r)
        assert (np.diff(curve) >= 0).all() and curve[0] == 0 and curve[-1] == 1
    with pytest.raises(ConfigError):
        bands_for(0.0, 128)


def test_missing_rensa_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rensa", None)
    with pytest.raises(ImportError, match=r"phiforge\[curate\]"):
        find_duplicates(["a b c d e f"])
    assert find_duplicates(["a", "A"], DedupConfig(fuzzy=False)).representatives == [0, 0]


# -- the step --------------------------------------------------------------------------


def test_the_step_drops_with_reasons_counts_and_keeps_input_order():
    records = [Record("r0", BASE), Record("r1", words("u", 80)), Record("r2", edited(BASE, 50)),
               Record("r3", BASE.lower() + "  "), Record("r4", messages=[{"role": "user", "content": BASE}])]
    dropped = []
    ctx = StepContext("dedup", sink=lambda rec, reason, step: dropped.append((rec.id, reason)))
    kept = list(Dedup().run(iter(records), ctx))
    assert [r.id for r in kept] == ["r0", "r1"]
    assert dropped == [("r2", "near_duplicate"), ("r3", "exact_duplicate"), ("r4", "exact_duplicate")]
    assert {r.id: r.metadata.get("dup_of") for r in records} == {"r0": None, "r1": None, "r2": "r0",
                                                                  "r3": "r0", "r4": "r0"}
    assert ctx.drops == {"near_duplicate": 1, "exact_duplicate": 2}
    assert ctx.counters["exact_duplicates"] == 2 and ctx.counters["near_duplicates"] == 1
    assert ctx.counters["clusters"] == 1 and ctx.counters["verified_pairs"] == 1
    assert Dedup().name == "dedup"
