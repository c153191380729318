"""MinHash near-duplicate detection: phiforge's dedup vs datasketch's default usage, on planted copies.

    .venv/bin/python benchmarks/dedup.py [--docs 5000] [--copies 500] [--threshold 0.8]

Why: the curation stage drops near-duplicates (``phiforge.curate.dedup``). We want
to know how many true near-duplicates it finds (recall, goal >= 0.95), whether it
drops anything that is not one (precision), and how fast it is against the usual
way of doing this in Python.

Corpus (deterministic): ``--docs`` distinct documents of 150-250 words in about 10
sentences. The words are drawn Zipf-like from 20,000 pseudo-words. Then ``--copies``
planted copies of random base documents, spread evenly over these kinds:

* ``edit_X%``: X% of the words edited, each edit a random substitution, insertion
  or deletion. With word 5-gram shingles, every edit changes up to 5 shingles,
  so 2% edits on 200 words puts a copy at about Jaccard 0.8, and 5% or 10% puts it
  well below. Those copies are *not* near-duplicates at threshold 0.8. They are
  reported to show where the threshold falls.
* ``swap_sentences``: two adjacent sentences swapped (about 0.85-0.9).
* ``shuffle_sentences``: all sentences in random order (about 0.7).

Ground truth follows the dedup contract: a pair is a near-duplicate when the exact
Jaccard similarity of its word-5-gram shingle sets is >= the threshold. Truth
clusters are the connected components of those pairs. All pairs within each
planted group are checked, plus every pair either method predicts. Pair-level
recall and precision are over pairs that share a cluster. The cluster-level score
is the fraction of true clusters reproduced exactly.

The two methods see the same texts and the same shingles (``phiforge.curate.dedup.shingles``):

* ``phiforge``: ``dedup_clusters`` with defaults (rensa MinHash, 128 permutations,
  16 bands x 8 rows, exact-Jaccard verification, union-find), except
  ``exact=False``, because the corpus has no exact copies.
* ``datasketch``: the usage in its README. It builds ``MinHash(num_perm=128)`` and
  calls ``update(shingle.encode())`` per shingle. It builds
  ``MinHashLSH(threshold=<same>, num_perm=128)``, which picks its own bands x rows
  (9 x 13 at 0.8), inserts every document and queries every document. Candidates
  are taken as duplicates (no verification) and clustered with the same union-find
  rule. The datasketch default threshold is 0.9; here it is set to ours so that
  both target the same similarity.

Docs/s counts shingling, hashing, LSH and clustering, from texts to representatives.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections import defaultdict
from pathlib import Path

from phiforge.curate.dedup import DedupConfig, dedup_clusters, jaccard, shingles
from phiforge.testing.load import OtherLoad

RESULTS = Path(__file__).resolve().parent / "results" / "dedup.json"
EDIT_RATES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.10)
KINDS = tuple(f"edit_{r:.1%}" for r in EDIT_RATES) + ("swap_sentences", "shuffle_sentences")
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qui", "dor", "len", "bra", "ste", "ul"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=5000, help="distinct base documents")
    p.add_argument("--copies", type=int, default=500, help="planted near-duplicate copies")
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold for both methods")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


# -- corpus ----------------------------------------------------------------------------


def vocabulary(rng: random.Random, size: int = 20_000) -> tuple[list[str], list[float]]:
    """Distinct pseudo-words and Zipf cumulative weights (a few common words, a long tail)."""
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    ordered = sorted(words)
    rng.shuffle(ordered)
    cum, total = [], 0.0
    for rank in range(1, size + 1):
        total += 1.0 / rank
        cum.append(total)
    return ordered, cum


def document(rng: random.Random, vocab: list[str], cum: list[float]) -> list[list[str]]:
    """About 10 sentences, 150-250 words in all; a document is a list of sentences (word lists)."""
    n_words = rng.randint(150, 250)
    words = rng.choices(vocab, cum_weights=cum, k=n_words)
    cuts = sorted(rng.sample(range(8, n_words - 8), 9))
    return [words[a:b] for a, b in zip([0, *cuts], [*cuts, n_words])]


def render(sentences: list[list[str]]) -> str:
    return " ".join(" ".join(s).capitalize() + "." for s in sentences if s)


def edit_words(rng: random.Random, sentences: list[list[str]], rate: float, vocab: list[str]) -> list[list[str]]:
    """``rate`` x word count random substitutions / insertions / deletions."""
    out = [list(s) for s in sentences]
    n_edits = max(1, round(rate * sum(map(len, out))))
    for _ in range(n_edits):
        s = rng.choice([s for s in out if s])
        i = rng.randrange(len(s))
        op = rng.choice(("sub", "ins", "del"))
        if op == "sub":
            s[i] = rng.choice(vocab)
        elif op == "ins":
            s.insert(i, rng.choice(vocab))
        elif len(s) > 1:
            del s[i]
    return out


def planted_copy(rng: random.Random, sentences: list[list[str]], kind: str, vocab: list[str]) -> list[list[str]]:
    if kind.startswith("edit_"):
        return edit_words(rng, sentences, float(kind[5:-1]) / 100, vocab)
    out = list(sentences)
    if kind == "swap_sentences":
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    else:
        rng.shuffle(out)
    return out


def build_corpus(n_docs: int, n_copies: int, seed: int) -> tuple[list[str], list[int], list[str]]:
    """Shuffled texts, each text's planted group (its base document's number) and kind ("base" or a KINDS entry)."""
    rng = random.Random(seed)
    vocab, cum = vocabulary(rng)
    bases = [document(rng, vocab, cum) for _ in range(n_docs)]
    rows = [(render(b), g, "base") for g, b in enumerate(bases)]
    for c in range(n_copies):
        g, kind = rng.randrange(n_docs), KINDS[c % len(KINDS)]
        rows.append((render(planted_copy(rng, bases[g], kind, vocab)), g, kind))
    rng.shuffle(rows)
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


# -- methods -----------------------------------------------------------------------------


def run_phiforge(texts: list[str], threshold: float) -> list[int]:
    return dedup_clusters(texts, DedupConfig(exact=False, threshold=threshold))


def run_datasketch(texts: list[str], threshold: float) -> list[int]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    sketches = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=128)
        for s in shingles(text, 5):
            m.update(s.encode("utf-8"))
        lsh.insert(i, m)
        sketches.append(m)
    pairs = {(min(i, j), max(i, j)) for i, m in enumerate(sketches) for j in lsh.query(m) if j != i}
    return representatives(len(texts), pairs)


def representatives(n: int, pairs) -> list[int]:
    """Union-find over ``pairs``; each component's smallest index is its representative."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in sorted(pairs):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


# -- scoring ------------------------------------------------------------------------------


def cluster_pairs(reps: list[int]) -> set[tuple[int, int]]:
    """Every (i, j), i < j, of documents in the same cluster."""
    members = defaultdict(list)
    for i, r in enumerate(reps):
        members[r].append(i)
    return {(a, b) for m in members.values() for k, a in enumerate(m) for b in m[k + 1:]}


def true_pairs(texts, groups, predicted: set[tuple[int, int]], threshold: float):
    """Pairs at or above the threshold among each planted group's members and the predicted pairs."""
    sets = {}

    def sim(i, j):
        for k in (i, j):
            if k not in sets:
                sets[k] = set(shingles(texts[k], 5))
        return jaccard(sets[i], sets[j])

    by_group = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    cands = {(a, b) for m in by_group.values() for k, a in enumerate(m) for b in m[k + 1:]} | predicted
    return {p for p in cands if sim(*p) >= threshold}, sim


def score(reps: list[int], truth_reps: list[int]) -> dict:
    pred, true = cluster_pairs(reps), cluster_pairs(truth_reps)
    hit = len(pred & true)
    truth_clusters = _clusters(truth_reps)
    return {"pair_recall": hit / len(true) if true else 1.0,
            "pair_precision": hit / len(pred) if pred else 1.0,
            "cluster_exact_match": len(truth_clusters & _clusters(reps)) / max(1, len(truth_clusters)),
            "predicted_duplicates": sum(r != i for i, r in enumerate(reps))}


def _clusters(reps: list[int]) -> set[frozenset[int]]:
    members = defaultdict(set)
    for i, r in enumerate(reps):
        members[r].add(i)
    return {frozenset(m) for m in members.values() if len(m) > 1}


def by_kind(texts, groups, kinds, sim, reps_by_method: dict, threshold: float) -> dict:
    """Per planted kind: mean Jaccard to the base, share at/above threshold, share each method merged."""
    base_of = {g: i for i, (g, k) in enumerate(zip(groups, kinds)) if k == "base"}
    rows = {}
    for kind in KINDS:
        idx = [i for i, k in enumerate(kinds) if k == kind]
        j = {i: sim(min(i, base_of[groups[i]]), max(i, base_of[groups[i]])) for i in idx}
        above = [i for i in idx if j[i] >= threshold]
        row = {"copies": len(idx), "mean_jaccard": sum(j.values()) / max(1, len(idx)),
               "at_or_above_threshold": len(above) / max(1, len(idx))}
        for name, reps in reps_by_method.items():
            merged = {i for i in idx if reps[i] == reps[base_of[groups[i]]]}
            row[f"{name}_recall_above"] = len(merged.intersection(above)) / len(above) if above else None
            row[f"{name}_merged_below"] = sum(1 for i in merged if j[i] < threshold)
        rows[kind] = row
    return rows


# -- main ---------------------------------------------------------------------------------


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main(argv=None) -> dict:
    args = parse_args(argv)
    texts, groups, kinds = build_corpus(args.docs, args.copies, args.seed)
    run_phiforge(texts[:200], args.threshold)  # warm-up: imports, bands_for cache
    run_datasketch(texts[:50], args.threshold)
    with OtherLoad() as load:
        ours, t_ours = timed(run_phiforge, texts, args.threshold)
        theirs, t_theirs = timed(run_datasketch, texts, args.threshold)
    predicted = cluster_pairs(ours) | cluster_pairs(theirs)
    truth_edges, sim = true_pairs(texts, groups, predicted, args.threshold)
    truth = representatives(len(texts), truth_edges)
    result = {"docs": len(texts), "base_docs": args.docs, "copies": args.copies, "threshold": args.threshold,
              "shingle_size": 5, "num_perm": 128,
              "bands_rows_phiforge": list(DedupConfig(threshold=args.threshold).band_shape()),
              "true_duplicate_pairs": len(cluster_pairs(truth)),
              "phiforge": {"docs_per_s": len(texts) / t_ours, "seconds": t_ours, **score(ours, truth)},
              "datasketch": {"docs_per_s": len(texts) / t_theirs, "seconds": t_theirs, **score(theirs, truth)},
              "speedup": t_theirs / t_ours,
              "by_kind": by_kind(texts, groups, kinds, sim, {"phiforge": ours, "datasketch": theirs}, args.threshold),
              "machine": platform.machine(), "other_cores_max": load.cores}
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(r: dict) -> None:
    print(f"{r['docs']} docs ({r['base_docs']} distinct + {r['copies']} planted copies), word 5-grams, "
          f"Jaccard >= {r['threshold']}, {r['true_duplicate_pairs']} true duplicate pairs")
    for name in ("phiforge", "datasketch"):
        m = r[name]
        print(f"  {name:10s}: {m['docs_per_s']:8.0f} docs/s  pair recall {m['pair_recall']:.3f}  "
              f"precision {m['pair_precision']:.3f}  clusters exact {m['cluster_exact_match']:.3f}")
    print(f"  speedup   : {r['speedup']:.1f}x  (other load on the machine: {r['other_cores_max']} cores)")
    print(f"  {'kind':18s} {'copies':>6s} {'mean J':>7s} {'>=thr':>6s} {'ours rec':>8s} {'ds rec':>7s} "
          f"{'ours<thr':>8s} {'ds<thr':>7s}")
    for kind, k in r["by_kind"].items():
        rec = [f"{x:.3f}" if x is not None else "-" for x in (k["phiforge_recall_above"], k["datasketch_recall_above"])]
        print(f"  {kind:18s} {k['copies']:6d} {k['mean_jaccard']:7.3f} {k['at_or_above_threshold']:6.2f} "
              f"{rec[0]:>8s} {rec[1]:>7s} {k['phiforge_merged_below']:8d} {k['datasketch_merged_below']:7d}")


if __name__ == "__main__":
    main()
