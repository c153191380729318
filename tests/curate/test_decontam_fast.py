"""The hashed decontamination index gives exactly the reference's answers (report App. B, Algorithm 1).

Randomised corpora use a small vocabulary, so n-grams repeat, ratios tie and
every rule is exercised: planted copies, partial copies, allow-listed 13-grams,
short and tiny texts, identical items under different keys, Unicode that only
matches after NFKC and lower-casing, and tiny batches (texts split across
batches and hash segments).
"""

import json
import random

import numpy as np
import pytest

from phiforge.curate import decontam, decontam_fast
from phiforge.curate.decontam import (
    DecontamConfig,
    ItemHit,
    ReferenceIndex,
    Verdict,
    classify,
    ngrams,
    normalize_words,
)
from phiforge.curate.decontam_fast import HashedIndex, build_from_files, hash_words, read_benchmark_files
from phiforge.errors import DataError
from phiforge.evals.contamination import flag_tasks

VOCAB = ["the", "of", "A", "apple", "Ünïcode", "café", "ＦＵＬＬ", "ﬁne", "İstanbul", "x_1", "42", "1.8",
         "kg", "naïve", "日本", "Straße", "is", "what", "ΣΟΦΙΑ", "½"]
SEPARATORS = [" ", " ", " ", ", ", ". ", "\n", " — ", "'", "(", ") ", "…", "\u00a0", "\u2028"]


def words(prefix: str, stop: int, start: int = 0) -> str:
    return " ".join(f"{prefix}{i}" for i in range(start, stop))


def random_text(rng: random.Random, n: int, vocab=VOCAB) -> str:
    return "".join(rng.choice(vocab) + rng.choice(SEPARATORS) for _ in range(n))


def mutate(rng: random.Random, text: str) -> str:
    """A copy with some words replaced, cased or re-punctuated (a partial or exact copy after normalising)."""
    ws = text.split()
    for i in range(len(ws)):
        r = rng.random()
        if r < 0.08:
            ws[i] = rng.choice(VOCAB)
        elif r < 0.15:
            ws[i] = ws[i].upper()
    return rng.choice([" ", ", ", "\n"]).join(ws)


def random_case(seed: int) -> tuple[list[tuple[str, str, str]], list[str], DecontamConfig]:
    """Items, documents and settings for one seed."""
    rng = random.Random(seed)
    vocab = VOCAB[:rng.choice([4, 8, 20])]  # small vocabularies: repeated n-grams and ties
    texts = [random_text(rng, rng.choice([0, 1, 2, 3, 5, 6, 7, 8, 12, 13, 14, 20, 40]), vocab) for _ in range(25)]
    texts += [texts[0], texts[3], words("q", 20)]  # identical items under other keys: ties
    items = [(rng.choice(["mmlu", "gsm8k", "b"]), str(i), t) for i, t in enumerate(texts)]
    long_grams = [g for t in texts for g in ngrams(normalize_words(t), 13)]
    config = DecontamConfig(allowed_long_ngrams=frozenset(rng.sample(long_grams, min(3, len(long_grams)))),
                            info_threshold=rng.choice([0.3, 0.5]), contaminated_threshold=rng.choice([0.6, 0.8]))
    docs = []
    for _ in range(60):
        kind = rng.random()
        if kind < 0.25:
            docs.append(mutate(rng, rng.choice(texts)))
        elif kind < 0.45:
            docs.append(f"{random_text(rng, rng.randint(0, 30), vocab)} {rng.choice(texts)} "
                        f"{random_text(rng, rng.randint(0, 30), vocab)}")
        elif kind < 0.55:
            ws = rng.choice(texts).split()
            a = rng.randrange(len(ws) + 1)
            docs.append(" ".join(ws[a:a + rng.randint(1, 14)]))
        elif kind < 0.65:  # a fragment with one word changed: partial overlaps
            ws = normalize_words(rng.choice(texts[-3:] + texts))
            a = rng.randrange(max(len(ws) - 9, 1))
            frag = ws[a:a + rng.randint(9, 12)]
            if frag:
                frag[rng.randrange(len(frag))] = "zzz"
            docs.append(" ".join(frag))
        elif kind < 0.7:
            docs.append(rng.choice(["", "   ", "!!", "Paris", "what is"]))
        else:
            docs.append(random_text(rng, rng.randint(0, 60), vocab))
    docs += [" ".join(t for _, _, t in items[:5]), words("q", 20), words("q", 13, start=3)]
    return items, docs, config


@pytest.mark.parametrize("seed", range(8))
def test_identical_to_the_reference_on_random_corpora(seed, monkeypatch):
    items, docs, config = random_case(seed)
    ref, fast = ReferenceIndex.build(items, config), HashedIndex.build(items, config)
    assert fast.keys == ref.keys and len(fast) == len(ref)
    want = [ref.check(d) for d in docs]
    assert [fast.check(d) for d in docs] == want
    assert fast.check_many(docs) == want
    assert fast.items_in_corpus(docs) == ref.items_in_corpus(docs)
    # tiny batches and hash segments: texts split across batches, words across segments
    monkeypatch.setattr(decontam_fast, "BATCH_CHARS", 1 + seed * 40)
    monkeypatch.setattr(decontam_fast, "SEGMENT_CHARS", 1 + seed * 7)
    assert fast.check_many(docs) == want
    assert fast.items_in_corpus(docs) == ref.items_in_corpus(docs)


def test_the_random_cases_reach_every_verdict():
    seen = set()
    for seed in range(8):
        items, docs, config = random_case(seed)
        ref = ReferenceIndex.build(items, config)
        seen |= {(v.verdict, v.reason) for v in map(ref.check, docs)}
        seen |= {(h.verdict, h.reason, "item") for h in ref.items_in_corpus(docs).values()}
    assert seen >= {("clean", ""), ("partial", "7gram"), ("contaminated", "7gram"), ("contaminated", "13gram"),
                    ("partial", "7gram", "item"), ("contaminated", "7gram", "item"),
                    ("contaminated", "13gram", "item")}


def test_small_n_settings_are_identical_too():
    config = DecontamConfig(long_n=4, short_n=2, min_words=1, info_threshold=0.2, contaminated_threshold=0.5)
    rng = random.Random(7)
    items = [("t", str(i), random_text(rng, rng.randint(0, 9), VOCAB[:5])) for i in range(30)]
    docs = [random_text(rng, rng.randint(0, 20), VOCAB[:5]) for _ in range(80)]
    ref, fast = ReferenceIndex.build(items, config), HashedIndex.build(items, config)
    assert fast.check_many(docs) == [ref.check(d) for d in docs]
    assert fast.items_in_corpus(docs) == ref.items_in_corpus(docs)


def test_the_reference_unit_cases():
    index = HashedIndex.build([("agieval", "q1", words("a", 20)), ("agieval", "q2", words("b", 20))])
    assert index.check(f"intro {words('a', 13)} {words('x', 15)}") == Verdict("contaminated", "agieval", "q1",
                                                                               0.5, "13gram")
    gram = words("a", 13).upper().replace(" ", ", ")
    index = HashedIndex.build([("mmlu", "q1", words("a", 20))], DecontamConfig(allowed_long_ngrams=[gram]))
    assert index.check(f"intro {words('a', 13)} {words('x', 15)}") == Verdict("clean", "mmlu", "q1", 0.5, "")
    index = HashedIndex.build([("gsm8k", "a", "What is 2+2?"), ("gsm8k", "b", "Paris?")])
    assert index.check("what is 2 + 2") == Verdict("contaminated", "gsm8k", "a", 1.0, "7gram")
    assert index.check("Paris").verdict == "clean"
    assert index.check("") == Verdict("clean", "", "", 0.0, "")


def test_ties_and_the_first_13gram_name_the_first_item_in_key_order():
    text = words("q", 20)
    index = HashedIndex.build([("b", "1", text), ("a", "9", text), ("a", "10", text)])
    assert index.keys == (("a", "10"), ("a", "9"), ("b", "1"))
    assert index.check(text) == Verdict("contaminated", "a", "10", 1.0, "13gram")
    assert index.check(words("q", 12, start=2)) == Verdict("contaminated", "a", "10", 1.0, "7gram")
    # two items hit by 13-grams: the one whose 13-gram comes first in the document wins
    index = HashedIndex.build([("t", "A", words("a", 20)), ("t", "B", words("b", 20))])
    assert index.check(f"{words('b', 13)} {words('a', 13)}").item_id == "B"


def test_progress_is_reported_like_the_reference(monkeypatch):
    monkeypatch.setattr(decontam, "PROGRESS_EVERY", 10)
    monkeypatch.setattr(decontam_fast, "PROGRESS_EVERY", 10)
    items = [("t", "A", words("a", 20))]
    docs = [words("a", 20) if i % 7 == 0 else words("x", 5) for i in range(25)]
    seen_ref, seen_fast = [], []
    assert (HashedIndex.build(items).items_in_corpus(iter(docs), seen_fast.append)
            == ReferenceIndex.build(items).items_in_corpus(iter(docs), seen_ref.append))
    assert seen_fast == seen_ref == [10, 20, 25]
    assert HashedIndex.build(items).items_in_corpus([]) == {("t", "A"): ItemHit()}


def test_word_hashes_depend_only_on_the_normalised_word():
    rng = random.Random(3)
    alphabet = [chr(c) for c in list(range(32, 127)) + [0xe9, 0x130, 0x2160, 0x0301, 0xff21, 0xfb01, 0x3000,
                                                          0x1d400, 0x0663, 0xd800, 0x2028, 0x00b2]]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(200)]
    batch = hash_words(texts)
    for t, text in enumerate(texts):
        ws = normalize_words(text)
        own = batch.hashes[batch.bounds[t]:batch.bounds[t + 1]]
        assert len(own) == len(ws)
        assert own.tolist() == [hash_words([w]).hashes[0] for w in ws]
    vocab = {w for t in texts for w in normalize_words(t)} | {f"w{i}" for i in range(20000)}
    assert len(set(hash_words(sorted(vocab)).hashes.tolist())) == len(vocab)


def test_classify_codes_match_classify():
    config = DecontamConfig(info_threshold=0.5, contaminated_threshold=0.8)
    ratios = np.array([0.0, 0.1, 0.5, 0.5000001, 0.79, 0.8, 0.9, 1.0] * 2)
    is_long = np.repeat([False, True], 8)
    severity, reason = decontam_fast._classify_codes(is_long, ratios, config)
    got = [(decontam.VERDICTS[s], decontam_fast._REASONS[r]) for s, r in zip(severity, reason)]
    assert got == [classify(bool(b), float(r), config) for b, r in zip(is_long, ratios)]


def test_save_load_round_trip(tmp_path):
    items, docs, config = random_case(1)
    index = HashedIndex.build(items, config)
    index.save(tmp_path / "sub" / "index.npz")
    loaded = HashedIndex.load(tmp_path / "sub" / "index.npz")
    assert loaded.config == config and loaded.keys == index.keys
    assert loaded.check_many(docs) == index.check_many(docs)
    assert loaded.items_in_corpus(docs) == index.items_in_corpus(docs)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["index.npz"]  # no temp file left


def test_load_refuses_other_versions_kinds_and_garbage(tmp_path):
    path = tmp_path / "index.npz"
    HashedIndex.build([("t", "A", words("a", 20))]).save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for field, value, message in (("version", 99, "version 99.*rebuild"), ("hasher", "other/0", "hasher 'other/0'"),
                                  ("normalizer", "x/2", "normalizer 'x/2'")):
        meta = json.loads(arrays["meta"].tobytes()) | {field: value}
        np.savez(path, **(arrays | {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}))
        with pytest.raises(DataError, match=message):
            HashedIndex.load(path)
    np.savez(path, **(arrays | {"long_offsets": arrays["long_offsets"][:-1]}))
    with pytest.raises(DataError, match="inconsistent"):
        HashedIndex.load(path)
    ReferenceIndex.build([("t", "A", words("a", 20))]).save(tmp_path / "ref.json")
    path.write_bytes((tmp_path / "ref.json").read_bytes())
    with pytest.raises(DataError, match="rebuild"):
        HashedIndex.load(path)
    with pytest.raises(DataError, match="not found"):
        HashedIndex.load(tmp_path / "missing.npz")


def test_build_from_files_reads_benchmark_layouts(tmp_path):
    mmlu, arc = tmp_path / "mmlu.jsonl", tmp_path / "arc.jsonl"
    mmlu.write_text(json.dumps({"question": "What is the capital of France today?", "choices": ["Paris", "Rome"],
                                "answer": 0}) + "\n\n"
                    + json.dumps({"question": "Which gas do plants take in?", "choices": ["CO2", "O2"]}) + "\n")
    arc.write_text(json.dumps({"id": "Mercury_7", "question": "Which planet is closest to the sun?",
                               "choices": {"text": ["Mercury", "Venus"], "label": ["A", "B"]}}) + "\n")
    triples = read_benchmark_files({"mmlu": mmlu, "arc": arc})
    assert triples == [("mmlu", "0", "What is the capital of France today?\nParis\nRome"),
                       ("mmlu", "1", "Which gas do plants take in?\nCO2\nO2"),
                       ("arc", "Mercury_7", "Which planet is closest to the sun?\nMercury\nVenus")]
    index = build_from_files({"mmlu": mmlu, "arc": arc})
    assert index.check("Q: which planet is closest to the Sun? Mercury, Venus.").item_id == "Mercury_7"


@pytest.mark.parametrize(("line", "message"), [
    ('{"question": "fine"}\n{"question": oops}\n', r"bench\.jsonl:2: malformed JSON"),
    ('{"question": "fine"}\n\n{"answer": "4"}\n', r"bench\.jsonl:3: item has none of the text fields"),
    ('{"id": 1, "question": "a"}\n{"id": "1", "question": "b"}\n', r"bench\.jsonl:2: duplicate item id '1'"),
])
def test_benchmark_file_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bench.jsonl"
    path.write_text(line)
    with pytest.raises(DataError, match=message):
        build_from_files({"b": path})


def test_flag_tasks_accepts_the_hashed_index():
    items = [{"id": "1", "question": words("a", 20)}, {"id": "2", "question": words("b", 9)}]
    texts = [it["question"] for it in items]
    corpus = [f"x {words('a', 15)} y", words("b", 9), words("z", 30)]
    tasks = {"t": (items, texts)}
    assert flag_tasks(tasks, corpus, index_cls=HashedIndex) == flag_tasks(tasks, corpus)
