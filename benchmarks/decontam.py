"""Decontamination MB/s per core: the hashed index vs the reference (Python sets of n-gram strings).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/decontam.py [--mb 20] [--items 3000] [--seed 0] [--repeats 2]

Why: the Phi-4 report checks *all* training data against 20 benchmarks with a
hybrid 13-gram / 7-gram test (App. B; §7.4 of ``docs/phi4-recipe.md``), so the
per-document cost decides whether decontamination is a footnote or the slowest
curation step. Both indexes answer the same questions and must give identical
results; this script checks that on its whole corpus and times, on one core
(numpy without BLAS is single-threaded; ``cpu/wall`` is printed to show it):

* ``reference``: ``ReferenceIndex.check`` per document (normalise, build every
  13-gram and 7-gram string, set and dict look-ups).
* ``hashed check``: ``HashedIndex.check`` per document (numpy per call).
* ``hashed check_many``: ``HashedIndex.check_many`` over the corpus (numpy per batch
  of about 1 MB; what ``Decontaminate`` uses).
* ``items_in_corpus`` on both: the reverse question (which items appear in the corpus).

The corpus is deterministic web-like text: sentences of words drawn with a
Zipf law from a 100,000-word vocabulary of made-up words plus common English
words, numbers and punctuation, about 5% of documents with non-ASCII text
(accents, curly quotes, full-width letters; the Unicode path), document lengths
log-normal around 3 KB. Planted in it: exact copies of benchmark items (13-gram
hits), copies with every 20th word changed, 9-12-word fragments alone, with
and without a changed word (7-gram contaminated / partial), copies of short
items, and allow-listed multiple-choice boilerplate (``PLANTS``). The
benchmarks are generated MMLU-like (question + four options) and GSM-like
(two-step word problems) items, written as JSONL and read back with
``read_benchmark_files``. MB counts UTF-8 bytes of the corpus (10**6 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from phiforge.curate.decontam import DecontamConfig, ReferenceIndex, ngrams, normalize_words
from phiforge.curate.decontam_fast import HashedIndex, read_benchmark_files
from phiforge.testing.load import OtherLoad

RESULTS = Path(__file__).resolve().parent / "results" / "decontam.json"
COMMON = ("the of and to a in is that for it as was with be by on not he i this are or his from at which but "
          "have an they you were her she there been one all we their has would when if so what no more out "
          "up into do any your about other can then some them these two may only its time new also").split()
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ar", "en")]
UNICODE_WORDS = ["café", "naïve", "Ünïcode", "“quoted”", "it’s", "—", "ＦＵＬＬ", "ﬁne", "Straße", "déjà", "½",
                 "①", "İstanbul", "ΣΟΦΙΑ", "日本語"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"]
THINGS = ["apples", "stickers", "marbles", "books", "coins", "shells", "pencils", "cards"]
BOILERPLATE = "(A) I only (B) II only (C) III only (D) II and III (E) I, II and III"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=20.0, help="corpus size in MB of UTF-8 text")
    p.add_argument("--items", type=int, default=3000, help="benchmark items (half MMLU-like, half GSM-like)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="time each measurement this many times, keep the fastest")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


# -- data ------------------------------------------------------------------------------


class Vocabulary:
    """Made-up words plus common English words, drawn with a Zipf law (rank r has weight 1/(r + 3))."""

    def __init__(self, rng: random.Random, size: int = 100_000):
        made_up = {"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(size * 2)}
        self.words = COMMON + sorted(made_up)[:size - len(COMMON)]
        rng.shuffle(self.words[len(COMMON):])
        weights = 1.0 / (np.arange(len(self.words)) + 3.0)
        self.cdf = np.cumsum(weights) / weights.sum()

    def draw(self, nprng: np.random.Generator, n: int) -> list[str]:
        idx = np.searchsorted(self.cdf, nprng.random(n))
        return [self.words[i] for i in np.minimum(idx, len(self.words) - 1)]


def sentence(words: list[str], rng: random.Random) -> str:
    if rng.random() < 0.3:
        words[rng.randrange(len(words))] += ","
    if rng.random() < 0.15:
        words.insert(rng.randrange(len(words)), rng.choice(["1.8", "2024", "42", "3.14", "7%", "$20"]))
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"])


def web_document(vocab: Vocabulary, rng: random.Random, nprng: np.random.Generator) -> str:
    """About 3 KB (log-normal) of sentences; 5% of documents carry non-ASCII words."""
    target = int(min(max(rng.lognormvariate(7.8, 0.7), 200), 40_000))
    unicode = rng.random() < 0.05
    out, size = [], 0
    while size < target:
        words = vocab.draw(nprng, rng.randint(6, 28))
        if unicode:
            words[rng.randrange(len(words))] = rng.choice(UNICODE_WORDS)
        out.append(sentence(words, rng))
        size += len(out[-1]) + 1
        if rng.random() < 0.08:
            out.append("\n\n")
    return " ".join(out)


def mmlu_like(i: int, vocab: Vocabulary, rng: random.Random, nprng: np.random.Generator) -> dict:
    stem = " ".join(vocab.draw(nprng, rng.randint(10, 40)))
    question = f"Which of the following best describes {stem}?"
    if rng.random() < 0.1:
        question += f" I. {' '.join(vocab.draw(nprng, 5))} II. {' '.join(vocab.draw(nprng, 5))} {BOILERPLATE}"
        return {"id": f"mmlu-{i}", "question": question, "choices": ["I only", "II only", "III only", "II and III"]}
    choices = [" ".join(vocab.draw(nprng, rng.randint(1, 6))) for _ in range(4)]
    return {"id": f"mmlu-{i}", "question": question, "choices": choices, "answer": rng.randrange(4)}


def gsm_like(i: int, vocab: Vocabulary, rng: random.Random, nprng: np.random.Generator) -> dict:
    """A two-step word problem; a clause of random words keeps items from sharing long template n-grams."""
    who, what, friend = rng.choice(NAMES), rng.choice(THINGS), rng.choice(NAMES)
    a, b, c, d = rng.randint(3, 400), rng.randint(2, 90), rng.randint(1, 9), rng.randint(2, 6)
    if rng.random() < 0.1:  # short items (fewer than 7 words): one whole-text feature
        return {"question": f"What is {a} times {b}?", "answer": str(a * b)}
    story = " ".join(vocab.draw(nprng, rng.randint(6, 12)))
    q = (f"{who} has {a} {what}. {friend} gives {who} {b} more {what} because {story}. Then {who} gives "
         f"away {c} of them to each of {d} classmates. How many {what} does {who} have now?")
    return {"question": q, "answer": str(a + b - c * d)}


def benchmark_files(n_items: int, vocab: Vocabulary, seed: int, folder: Path) -> dict[str, Path]:
    rng, nprng = random.Random(seed + 1), np.random.default_rng(seed + 1)
    files = {"mmlu": folder / "mmlu.jsonl", "gsm8k": folder / "gsm8k.jsonl"}
    rows = {"mmlu": [mmlu_like(i, vocab, rng, nprng) for i in range(n_items // 2)],
            "gsm8k": [gsm_like(i, vocab, rng, nprng) for i in range(n_items - n_items // 2)]}
    for name, path in files.items():
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[name]), encoding="utf-8")
    return files


def edited(words: list[str], rng: random.Random, every: int) -> list[str]:
    """``words`` with every ``every``-th one (from a random offset) replaced: a partial copy."""
    words = list(words)
    for i in range(rng.randrange(every), len(words), every):
        words[i] = "zq" + words[i]
    return words


def planted_text(kind: str, items: list[tuple[str, str, str]], rng: random.Random) -> str:
    """A copy of a benchmark item (see ``PLANTS``)."""
    words = rng.choice(items)[2].split()
    if kind == "sparse_edit":
        return " ".join(edited(words, rng, 20))
    if kind in ("fragment", "fragment_edit"):
        start = rng.randrange(max(len(words) - 12, 1))
        frag = words[start:start + rng.randint(9, 12)]
        return " ".join(edited(frag, rng, len(frag)) if kind == "fragment_edit" else frag)
    if kind == "short_copy":
        return rng.choice([t for _, _, t in items if len(t.split()) < 7])
    return " ".join(words)


PLANTS = {"exact": 0.02, "sparse_edit": 0.005, "fragment": 0.005, "fragment_edit": 0.005, "short_copy": 0.005,
          "boilerplate": 0.01}
"""Share of documents of each planted kind: a whole item (``exact``, inside a web document 70% of the
time), an item with every 20th word changed, a 9-12-word fragment alone (with one word changed:
``fragment_edit``), a short item alone, the allow-listed multiple-choice boilerplate in a web document."""


def corpus(mb: float, vocab: Vocabulary, items: list[tuple[str, str, str]], seed: int) -> tuple[list[str], Counter]:
    """Web documents up to ``mb`` MB with planted copies of items (counted by kind)."""
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    kinds, weights = list(PLANTS) + [None], list(PLANTS.values()) + [1 - sum(PLANTS.values())]
    docs, planted, size = [], Counter(), 0
    while size < mb * 1e6:
        doc, kind = web_document(vocab, rng, nprng), rng.choices(kinds, weights)[0]
        if kind == "boilerplate":
            doc = f"{doc} {BOILERPLATE}"
        elif kind in ("exact", "sparse_edit"):
            cut = rng.randrange(len(doc) + 1)
            text = planted_text(kind, items, rng)
            doc = f"{doc[:cut]} {text} {doc[cut:]}" if rng.random() < 0.7 else text
        elif kind is not None:
            doc = planted_text(kind, items, rng)
        planted[kind or "none"] += 1
        docs.append(doc)
        size += len(doc.encode("utf-8"))
    return docs, planted


# -- timing --------------------------------------------------------------------------------


def timed(fn, repeats: int):
    """``(result, wall seconds, CPU seconds of this process, other processes' cores)`` of the fastest run."""
    best = None
    for _ in range(repeats):
        with OtherLoad() as load:
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if best is None or wall < best[1]:
            best = (out, wall, cpu, load.cores)
    return best


def measure(name: str, fn, mb: float | None, rows: dict, repeats: int) -> object:
    """Run ``fn``, print and record its time (and MB/s over the corpus unless ``mb`` is None)."""
    out, wall, cpu, other = timed(fn, repeats)
    rows[name] = {"seconds": wall, "cpu_seconds": cpu, "other_cores": other}
    rate = ""
    if mb is not None:
        rows[name] |= {"mb_per_s": mb / wall, "mb_per_cpu_s": mb / cpu}
        rate = f"{mb / wall:8.2f} MB/s "
    print(f"  {name:28s} {rate}  ({wall:6.2f} s wall, cpu/wall {cpu / wall:.2f}, "
          f"other load {other if other is None else round(other, 2)} cores)")
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # numpy here uses no BLAS; this only rules it out
    vocab = Vocabulary(random.Random(args.seed + 2))
    config = DecontamConfig(allowed_long_ngrams=frozenset(ngrams(normalize_words(BOILERPLATE), 13)))
    with tempfile.TemporaryDirectory() as tmp:
        triples = read_benchmark_files(benchmark_files(args.items, vocab, args.seed, Path(tmp)))
        docs, planted = corpus(args.mb, vocab, triples, args.seed)
        mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
        print(f"corpus: {len(docs)} documents, {mb:.1f} MB; {len(triples)} benchmark items; planted {dict(planted)}")
        rows: dict = {}
        print(f"build ({len(triples)} items):")
        ref = measure("reference build", lambda: ReferenceIndex.build(triples, config), None, rows, args.repeats)
        fast = measure("hashed build", lambda: HashedIndex.build(triples, config), None, rows, args.repeats)
        sizes = index_sizes(ref, fast, Path(tmp))
    t0 = time.perf_counter()
    fast.check_many(docs[:200] + UNICODE_WORDS)  # one-time costs: Unicode word table, power tables
    sizes["hashed_warmup_seconds"] = time.perf_counter() - t0
    print("check (Algorithm 1 per document):")
    want = measure("reference check", lambda: [ref.check(d) for d in docs], mb, rows, args.repeats)
    got_each = measure("hashed check", lambda: [fast.check(d) for d in docs], mb, rows, args.repeats)
    got_many = measure("hashed check_many", lambda: fast.check_many(docs), mb, rows, args.repeats)
    identical = want == got_each == got_many
    print("items_in_corpus (the reverse question):")
    hits_ref = measure("reference items_in_corpus", lambda: ref.items_in_corpus(docs), mb, rows, args.repeats)
    hits_fast = measure("hashed items_in_corpus", lambda: fast.items_in_corpus(docs), mb, rows, args.repeats)
    identical_items = hits_ref == hits_fast
    result = summarise(args, docs, mb, planted, triples, rows, sizes, want, hits_ref, identical and identical_items)
    print_summary(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not result["identical"]:
        raise SystemExit("results differ between the reference and the hashed index")
    return result


def index_sizes(ref: ReferenceIndex, fast: HashedIndex, folder: Path) -> dict:
    ref.save(folder / "ref.json.gz")
    fast.save(folder / "fast.npz")
    t0 = time.perf_counter()
    HashedIndex.load(folder / "fast.npz")
    return {"hashed_array_bytes": fast.nbytes, "hashed_file_bytes": (folder / "fast.npz").stat().st_size,
            "hashed_load_seconds": time.perf_counter() - t0,
            "reference_file_bytes_gz": (folder / "ref.json.gz").stat().st_size}


def summarise(args, docs, mb, planted, triples, rows, sizes, verdicts, hits, identical) -> dict:
    return {"corpus_mb": mb, "documents": len(docs), "items": len(triples), "seed": args.seed,
            "mb_per_core_reference_check": rows["reference check"]["mb_per_s"],
            "mb_per_core_hashed_check": rows["hashed check"]["mb_per_s"],
            "mb_per_core_hashed_check_many": rows["hashed check_many"]["mb_per_s"],
            "planted": dict(planted), "verdicts": dict(Counter(f"{v.verdict}/{v.reason}" for v in verdicts)),
            "items_flagged": dict(Counter(h.verdict for h in hits.values())), "identical": identical,
            "timings": rows, "index": sizes,
            "speedup": {f"{kind} {clock}": rows[f"reference {ref}"][clock] / rows[f"hashed {kind}"][clock]
                        for kind, ref in (("check", "check"), ("check_many", "check"),
                                          ("items_in_corpus", "items_in_corpus"), ("build", "build"))
                        for clock in ("seconds", "cpu_seconds")},
            "other_cores_max": max((r["other_cores"] or 0.0) for r in rows.values()),
            "machine": platform.machine(), "cpus": os.cpu_count(), "numpy": np.__version__}


def print_summary(r: dict) -> None:
    t = r["timings"]
    print(f"verdicts: {r['verdicts']}; items flagged: {r['items_flagged']}")
    print(f"identical results: {r['identical']}")
    x = r["speedup"]
    print(f"speedup vs reference (wall / CPU time): check_many {x['check_many seconds']:.1f}x / "
          f"{x['check_many cpu_seconds']:.1f}x, check {x['check seconds']:.1f}x / {x['check cpu_seconds']:.1f}x, "
          f"items_in_corpus {x['items_in_corpus seconds']:.1f}x / {x['items_in_corpus cpu_seconds']:.1f}x")
    print(f"MB/s per CPU-second: reference {t['reference check']['mb_per_cpu_s']:.2f}, "
          f"hashed check_many {t['hashed check_many']['mb_per_cpu_s']:.1f}, "
          f"hashed check {t['hashed check']['mb_per_cpu_s']:.1f}")
    print(f"index: {r['index']}; other load on the machine: up to {r['other_cores_max']:.2f} cores")


if __name__ == "__main__":
    main()
