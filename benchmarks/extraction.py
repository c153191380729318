"""HTML extraction: pages/s and fidelity of phiforge's extractor vs plain trafilatura, same pages.

    .venv/bin/python benchmarks/extraction.py [--pages 300] [--rounds 3] [--seed 0]

Why: the Phi-4 report (§2.3) runs web pages through a custom extractor that keeps
equations, code, tables and forum threads, which naive extraction corrupts. Ours
(``phiforge.curate.html.html_to_text``) is DOM rules around trafilatura, so two
questions: what do the rules cost per page, and how many fragile items survive
that plain ``trafilatura.extract`` (its defaults) loses?

Corpus: ``--pages`` pages built from the hand-written fixture pages under
``tests/curate/fixtures/html/`` (MathJax, MathML, code, tables, forum, blog with
comments, boilerplate-heavy article). Each copy gets a random mix of boilerplate
(navigation, cookie banner, ads, sidebar, related links, share bar, newsletter box,
footer) around its content and 0-3 random prose paragraphs after its title, so
no two pages are identical. Both extractors get the same page strings, in the same
order, after one warm-up pass; the time is the best of ``--rounds`` passes.

Fidelity items come from each fixture's expected text (``<name>.txt``):

* math: each ``$...$``/``$$...$$``/``\\(...\\)``/``\\[...\\]`` of at least 3 characters;
  kept if its TeX (spaces ignored) is in the output.
* code: each fenced block; kept if its lines appear consecutively, indentation intact.
* table: each Markdown table; kept if every row's cells appear, in order, on one line.
* post: each ``**author** (date):`` post; kept if the author's name is followed,
  within 300 characters, by the start of the post's body (who said what).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import time
from pathlib import Path

from phiforge.testing.load import OtherLoad

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "curate" / "fixtures" / "html"
RESULTS = Path(__file__).resolve().parent / "results" / "extraction.json"
KINDS = ("math", "code", "table", "post")
WORDS = ("bee scout swarm hive colony queen worker nectar pollen flower meadow branch cavity dance quorum "
         "signal flight season summer winter honey comb wax forager site choice").split()
BOILERPLATE = {
    "nav": '<nav class="main-nav"><ul>{links}</ul></nav>',
    "cookie": '<div class="cookie-banner">We use cookies to improve your experience. <a href="/p">Privacy</a> '
              '<button>Accept</button></div>',
    "ad": '<div class="ad-container"><span>Advertisement</span><a href="https://ads.example/{n}">'
          '<img src="/ad{n}.png" alt="Offer {n}"></a></div>',
    "sidebar": '<div id="sidebar"><h3>Popular</h3><ul>{links}</ul></div>',
    "related": '<section class="related-posts"><h2>Related</h2><ul>{links}</ul></section>',
    "share": '<div class="share-bar"><a href="#">Share</a> <a href="#">Tweet</a> <a href="#">Email</a></div>',
    "newsletter": '<div class="newsletter"><p>Get weekly stories by email.</p><form><input type="email">'
                  '<button>Subscribe</button></form></div>',
    "footer": '<footer class="site-footer"><p>&copy; 20{n} Example Media</p><ul>{links}</ul></footer>',
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3, help="timing passes over the corpus; the best counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


# -- corpus ----------------------------------------------------------------------------------


def sentence(rng: random.Random, n: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def links(rng: random.Random) -> str:
    return "".join(f'<li><a href="/p/{rng.randrange(10**6)}">{sentence(rng, 4)[:-1]}</a></li>'
                   for _ in range(rng.randint(3, 7)))


def decorate(html: str, rng: random.Random) -> str:
    """``html`` with random boilerplate at the top and bottom of the body and prose after the title."""
    kinds = rng.sample(sorted(BOILERPLATE), rng.randint(3, len(BOILERPLATE)))
    blocks = [BOILERPLATE[k].format(links=links(rng), n=rng.randrange(10, 99)) for k in kinds]
    cut = rng.randint(0, len(blocks))
    top, bottom = "".join(blocks[:cut]), "".join(blocks[cut:])
    html = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + top, html, count=1)
    html = html.replace("</body>", bottom + "</body>", 1)
    prose = "".join(f"<p>{' '.join(sentence(rng) for _ in range(4))}</p>" for _ in range(rng.randint(0, 3)))
    return re.sub(r"(</h1>)", lambda m: m.group(1) + prose, html, count=1)


def fixture_items(expected: str) -> dict[str, list]:
    """The fidelity items of one fixture, from its expected text (module docstring)."""
    math = re.findall(r"\$\$(.+?)\$\$|(?<![$\\])\$([^$\n]+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", expected, re.S)
    math = [next(g for g in groups if g) for groups in math]
    code = [m.group(2).split("\n") for m in re.finditer(r"^(`{3,})[\w+#-]*\n(.*?)\n\1$", expected, re.M | re.S)]
    tables = [table_rows(block) for block in re.findall(r"(?:^\|.*\|$\n?)+", expected, re.M)]
    posts = re.findall(r"^\*\*(.+?)\*\*(?: \(.+?\))?:\n(.+)$", expected, re.M)
    return {"math": [m for m in math if len(re.sub(r"\s", "", m)) >= 3], "code": code, "table": tables,
            "post": [(author, body[:40]) for author, body in posts]}


def table_rows(block: str) -> list[list[str]]:
    rows = []
    for line in block.strip().split("\n"):
        if re.fullmatch(r"\|(?:-+\|)+", line):
            continue
        cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
        rows.append([c.strip() for c in cells if c.strip()])  # pipes stay escaped, as both outputs write them
    return rows


# -- fidelity checks -------------------------------------------------------------------------


def kept(kind: str, item, text: str, squashed: str) -> bool:
    if kind == "math":
        return re.sub(r"\s", "", item) in squashed
    if kind == "code":
        lines = [line.rstrip() for line in text.split("\n")]
        n = len(item)
        return any(lines[i:i + n] == item for i in range(len(lines) - n + 1))
    if kind == "table":
        return all(re.search(".*".join(map(re.escape, row)), text) for row in item)
    author, body = item
    return re.search(re.escape(author) + r".{0,300}?" + re.escape(body), text, re.S) is not None


def fidelity(outputs: list[str], items: list[dict]) -> dict:
    counts = {k: 0 for k in KINDS}
    for text, page_items in zip(outputs, items):
        squashed = re.sub(r"\s", "", text)
        for kind in KINDS:
            counts[kind] += sum(kept(kind, item, text, squashed) for item in page_items[kind])
    return counts


# -- timing ----------------------------------------------------------------------------------


def best_time(fn, pages: list[str], rounds: int) -> tuple[float, list[str]]:
    best, outputs = float("inf"), []
    for _ in range(rounds):
        t0 = time.perf_counter()
        outputs = [fn(p) or "" for p in pages]
        best = min(best, time.perf_counter() - t0)
    return best, outputs


def main(argv=None) -> dict:
    args = parse_args(argv)
    import trafilatura

    from phiforge.curate.html import html_to_text

    fixtures = sorted(FIXTURES.glob("*.html"))
    rng = random.Random(args.seed)
    pages, items = [], []
    for i in range(args.pages):
        path = fixtures[i % len(fixtures)]
        pages.append(decorate(path.read_text(encoding="utf-8"), rng))
        items.append(fixture_items(path.with_suffix(".txt").read_text(encoding="utf-8")))
    for fn in (trafilatura.extract, html_to_text):  # warm-up: imports, regex and XPath compilation
        [fn(p) for p in pages[: len(fixtures)]]
    with OtherLoad() as load:
        t_base, out_base = best_time(trafilatura.extract, pages, args.rounds)
        t_ours, out_ours = best_time(html_to_text, pages, args.rounds)
    total = {k: sum(len(it[k]) for it in items) for k in KINDS}
    ours, base = fidelity(out_ours, items), fidelity(out_base, items)
    result = {"pages": args.pages, "corpus_mb": sum(map(len, pages)) / 1e6, "rounds": args.rounds,
              "trafilatura_pages_per_s": args.pages / t_base, "phiforge_pages_per_s": args.pages / t_ours,
              "ratio": t_ours / t_base, "items": total, "kept_phiforge": ours, "kept_trafilatura": base,
              "machine": platform.machine(), "other_cores_max": load.cores}
    report(result, len(fixtures))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(r: dict, n_fixtures: int) -> None:
    print(f"{r['pages']} pages ({r['corpus_mb']:.1f} MB) from {n_fixtures} fixtures, best of {r['rounds']} passes, "
          "1 process")
    print(f"  trafilatura.extract : {r['trafilatura_pages_per_s']:7.1f} pages/s")
    print(f"  phiforge html_to_text: {r['phiforge_pages_per_s']:6.1f} pages/s")
    print(f"extraction ratio (phiforge / trafilatura time per page): {r['ratio']:.2f}x"
          f"  (other load on the machine: {r['other_cores_max']} cores)")
    print(f"  {'kept items':<10} {'total':>6} {'phiforge':>9} {'trafilatura':>12}")
    for kind in KINDS:
        print(f"  {kind:<10} {r['items'][kind]:>6} {r['kept_phiforge'][kind]:>9} {r['kept_trafilatura'][kind]:>12}")


if __name__ == "__main__":
    main()
