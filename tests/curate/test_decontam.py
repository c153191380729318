"""The reference decontamination index: Algorithm 1 of the Phi-4 report (App. B) on hand-computed cases.

Texts are built from distinct numbered words, so every n-gram count below can be
checked by hand: k words give k - 6 seven-grams and k - 12 thirteen-grams.
"""

import pytest

from phiforge.curate.decontam import (
    DecontamConfig,
    ItemHit,
    ReferenceIndex,
    Verdict,
    load_allow_list,
    normalize_words,
)
from phiforge.errors import ConfigError, DataError


def words(prefix: str, stop: int, start: int = 0) -> str:
    """``prefix0 prefix1 ...``: distinct words, so n-grams never repeat by accident."""
    return " ".join(f"{prefix}{i}" for i in range(start, stop))


def changed(text: str, index: int) -> str:
    """``text`` with word ``index`` replaced by a word found nowhere else."""
    ws = text.split()
    ws[index] = "zzz"
    return " ".join(ws)


def test_normalisation_matches_the_reports_example():
    assert normalize_words("It weighs 1.8 kg!") == ["it", "weighs", "1", "8", "kg"]
    assert normalize_words("Ünïcode café—ＦＵＬＬ width") == ["ünïcode", "café", "full", "width"]
    assert normalize_words("2+2=4, (A) I only") == ["2", "2", "4", "a", "i", "only"]


def test_a_13gram_hit_is_contaminated_and_names_the_item():
    index = ReferenceIndex.build([("agieval", "q1", words("a", 20)), ("agieval", "q2", words("b", 20))])
    # 29 words: 23 seven-grams; 7 of them are among q1's 14, so the ratio is 7 / min(23, 14) = 0.5.
    doc = f"intro {words('a', 13)} {words('x', 15)}"
    assert index.check(doc) == Verdict("contaminated", "agieval", "q1", 0.5, "13gram")


def test_an_allow_listed_13gram_falls_through_to_the_7gram_test():
    gram = words("a", 13).upper().replace(" ", ", ")  # normalised on the way in
    config = DecontamConfig(allowed_long_ngrams=[gram])
    index = ReferenceIndex.build([("mmlu", "q1", words("a", 20))], config)
    doc = f"intro {words('a', 13)} {words('x', 15)}"
    # ratio 0.5 is not above info_threshold = 0.5: clean, but the item is still reported
    assert index.check(doc) == Verdict("clean", "mmlu", "q1", 0.5, "")
    # the boilerplate alone: its 7 seven-grams all belong to the item (7 / min(7, 14) = 1)
    assert index.check(words("a", 13)) == Verdict("contaminated", "mmlu", "q1", 1.0, "7gram")


@pytest.mark.parametrize(("index_changed", "ratio", "verdict"), [
    (None, 1.0, "contaminated"),
    (10, 0.8, "contaminated"),  # 4/5: exactly the contaminated threshold
    (0, 0.8, "contaminated"),
    (9, 0.6, "partial"),        # 3/5
    (8, 0.4, "clean"),          # 2/5
    (5, 0.0, "clean"),          # the middle word is in all five 7-grams
])
def test_7gram_ratios_against_the_thresholds(index_changed, ratio, verdict):
    item = words("q", 11)  # 11 words: five 7-grams, no 13-gram
    index = ReferenceIndex.build([("gsm8k", "7", item)])
    doc = item if index_changed is None else changed(item, index_changed)
    got = index.check(doc)
    assert (got.verdict, got.ratio) == (verdict, ratio)
    assert got.reason == ("7gram" if verdict != "clean" else "")


def test_ratio_0_5_is_clean_and_just_above_is_partial():
    item = words("q", 12)  # six 7-grams
    index = ReferenceIndex.build([("gsm8k", "7", item)])
    assert index.check(changed(item, 9)).verdict == "clean"      # 3/6
    assert index.check(changed(item, 10)).verdict == "partial"   # 4/6


def test_the_denominator_is_the_smaller_feature_set():
    index = ReferenceIndex.build([("math", "long", words("q", 20))])  # fourteen 7-grams
    fragment = words("q", 12, start=3)  # 9 item words: three 7-grams, all shared, no 13-gram
    assert index.check(fragment) == Verdict("contaminated", "math", "long", 1.0, "7gram")
    # the same fragment inside a longer document: 3 / min(33, 14)
    got = index.check(f"{fragment} {words('x', 30)}")
    assert (got.verdict, got.ratio) == ("clean", 3 / 14)
    # a short item inside a long document: 5 / min(94, 5)
    short = ReferenceIndex.build([("math", "short", words("s", 11))])
    assert short.check(f"{words('x', 50)} {words('s', 11)} {words('y', 39)}").verdict == "contaminated"


def test_short_texts_match_only_as_a_whole_and_tiny_ones_never():
    index = ReferenceIndex.build([("gsm8k", "a", "What is 2+2?"), ("gsm8k", "b", "Paris?")])
    assert index.check("what is 2 + 2") == Verdict("contaminated", "gsm8k", "a", 1.0, "7gram")
    assert index.check("So, what is 2+2? Let us think step by step about it.").verdict == "clean"
    assert index.check("Paris").verdict == "clean"  # under min_words = 3: no features


def test_no_overlap_is_clean_with_no_item():
    index = ReferenceIndex.build([("gsm8k", "a", words("q", 20))])
    assert index.check(words("x", 40)) == Verdict("clean", "", "", 0.0, "")
    assert index.check("").verdict == "clean"


def test_ties_go_to_the_first_item_in_key_order_whatever_the_build_order():
    text = words("q", 20)
    items = [("b", "1", text), ("a", "9", text), ("a", "10", text)]
    for order in (items, items[::-1]):
        index = ReferenceIndex.build(order)
        assert index.keys == (("a", "10"), ("a", "9"), ("b", "1"))
        assert index.check(text) == Verdict("contaminated", "a", "10", 1.0, "13gram")
        fragment = words("q", 12, start=2)  # 7-gram path only
        assert index.check(fragment) == Verdict("contaminated", "a", "10", 1.0, "7gram")


def test_items_in_corpus_finds_every_item_a_document_hits():
    index = ReferenceIndex.build([("t", "A", words("a", 20)), ("t", "B", words("b", 20)),
                                  ("t", "C", words("c", 11)), ("t", "D", words("d", 20))])
    docs = [
        f"intro {words('a', 13)} middle {words('b', 18, start=5)} outro",  # A and B: 13-gram hits
        changed(words("c", 11), 9),                                       # C partial (3/5)
        words("c", 11),                                                   # C contaminated (5/5)
        words("a", 20),                                                   # A again, a higher ratio
    ]
    # Algorithm 1 stops at the document's first 13-gram hit, naming only A ...
    assert index.check(docs[0]).item_id == "A"
    # ... while the reverse question reports every item.
    seen = []
    hits = index.items_in_corpus(iter(docs), progress=seen.append)
    assert hits[("t", "A")] == ItemHit("contaminated", 1.0, 0, "13gram")
    assert hits[("t", "B")] == ItemHit("contaminated", 0.5, 0, "13gram")
    assert hits[("t", "C")] == ItemHit("contaminated", 1.0, 2, "7gram")
    assert hits[("t", "D")] == ItemHit("clean", 0.0, None, "")
    assert seen == [4]


def test_items_in_corpus_keeps_the_first_document_of_the_worst_verdict():
    index = ReferenceIndex.build([("t", "C", words("c", 11))])
    docs = [words("x", 20), changed(words("c", 11), 9), changed(words("c", 11), 10), words("y", 3)]
    assert index.items_in_corpus(docs)[("t", "C")] == ItemHit("contaminated", 0.8, 2, "7gram")
    assert index.items_in_corpus(docs[:2])[("t", "C")] == ItemHit("partial", 0.6, 1, "7gram")


def test_save_load_round_trip_gives_identical_results(tmp_path):
    config = DecontamConfig(info_threshold=0.3, contaminated_threshold=0.9,
                            allowed_long_ngrams=frozenset({words("a", 13)}))
    index = ReferenceIndex.build([("t", "A", words("a", 20)), ("t", "B", words("b", 20)),
                                  ("u", "C", "What is 2+2?")], config)
    docs = [words("a", 13), f"x {words('b', 15)} y", "what is 2 + 2", words("a", 16, start=4), words("z", 30)]
    for name in ("index.json", "index.json.gz"):
        index.save(tmp_path / name)
        loaded = ReferenceIndex.load(tmp_path / name)
        assert loaded.config == config and loaded.keys == index.keys
        assert [loaded.check(d) for d in docs] == [index.check(d) for d in docs]
        assert loaded.items_in_corpus(docs) == index.items_in_corpus(docs)
    assert not list(tmp_path.glob(".*tmp*"))


def test_load_refuses_other_versions_and_garbage(tmp_path):
    path = tmp_path / "index.json"
    ReferenceIndex.build([("t", "A", words("a", 20))]).save(path)
    path.write_text(path.read_text().replace('"version":1', '"version":99'))
    with pytest.raises(DataError, match="version 99.*rebuild"):
        ReferenceIndex.load(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="rebuild"):
        ReferenceIndex.load(path)
    with pytest.raises(DataError, match="not found"):
        ReferenceIndex.load(tmp_path / "missing.json")


def test_duplicate_items_are_rejected():
    with pytest.raises(DataError, match="duplicate item 'q1' in benchmark 'mmlu'"):
        ReferenceIndex.build([("mmlu", "q1", "a b c"), ("mmlu", "q1", "d e f")])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"info_threshold": 0.9, "contaminated_threshold": 0.8}, "info_threshold <= contaminated_threshold"),
    ({"info_threshold": 0.0}, "0 < info_threshold"),
    ({"contaminated_threshold": 1.5}, "<= 1"),
    ({"short_n": 14}, "short_n"),
    ({"min_words": 8}, "min_words"),
    ({"allowed_long_ngrams": ["too short"]}, "has 2 words"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DecontamConfig(**kwargs)


def test_allow_list_file(tmp_path):
    path = tmp_path / "allow.txt"
    path.write_text("# multiple-choice boilerplate\n\n(A) I only (B) II only (C) III only (D) II and III\n")
    assert load_allow_list(path) == {"a i only b ii only c iii only d ii and iii"}
    path.write_text("a i only b ii only c iii only d ii and iii\nonly seven words in this line here\n")
    with pytest.raises(DataError, match=r"allow\.txt:2: .* has 7 words"):
        load_allow_list(path)
