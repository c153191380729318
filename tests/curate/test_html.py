"""HTML -> text that keeps equations, code, tables and forum threads (curate/html.py).

The fixture pages under ``fixtures/html/`` are written by hand, each with the text we
expect (``<name>.txt``); a changed rule or a new trafilatura release that changes
the output shows up as a line diff here.
"""

import pickle
import time
from pathlib import Path

import pytest

pytest.importorskip("trafilatura")

from phiforge.curate import html as H  # noqa: E402
from phiforge.curate.html import (  # noqa: E402
    HtmlConfig,
    HtmlToText,
    decode_html,
    extract_html,
    html_to_text,
    read_html_files,
)
from phiforge.curate.html_math import mathml_to_latex  # noqa: E402
from phiforge.dataflow.records import Record  # noqa: E402
from phiforge.dataflow.step import StepContext  # noqa: E402
from phiforge.errors import ConfigError, DataError  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "html"
PAGES = sorted(p.stem for p in FIXTURES.glob("*.html"))
PROSE = "Bees choose a new home by a quorum of scouts that dance for the sites they found. " * 3


def page(body: str, head: str = "") -> str:
    """A page whose ``<article>`` holds ``body`` next to enough prose for the extractor to pick it."""
    return f"<html><head>{head}</head><body><article><h1>Title</h1><p>{PROSE}</p>{body}<p>{PROSE}</p>" \
           "</article></body></html>"


# -- fixture pages ---------------------------------------------------------------------------


def test_there_is_a_fixture_for_every_fragile_kind():
    assert {"mathjax", "mathml", "code", "tables", "forum", "boilerplate", "blog_comments"} <= set(PAGES)


@pytest.mark.parametrize("name", PAGES)
def test_fixture_page_gives_its_expected_text(name):
    html = (FIXTURES / f"{name}.html").read_text(encoding="utf-8")
    expected = (FIXTURES / f"{name}.txt").read_text(encoding="utf-8")
    got = html_to_text(html)
    assert [line.rstrip() for line in got.splitlines()] == [line.rstrip() for line in expected.splitlines()]


def test_boilerplate_never_reaches_the_text():
    text = html_to_text((FIXTURES / "boilerplate.html").read_text(encoding="utf-8"))
    for junk in ("cookies", "Advertisement", "Subscribe", "You might also like", "Sponsored", "BEES20",
                 "Skip to content", "Tweet", "Popular", "2023 The Field Notes", "Wait!", "Sign up"):
        assert junk not in text


def test_items_found_are_kept_in_the_fixtures():
    for name in PAGES:
        result = extract_html((FIXTURES / f"{name}.html").read_text(encoding="utf-8"))
        assert result.kept == result.found, name


# -- equations -------------------------------------------------------------------------------


def _math(xml: str) -> str:
    from lxml import html as lxml_html

    return mathml_to_latex(lxml_html.fragment_fromstring(xml))


@pytest.mark.parametrize(("mathml", "tex"), [
    ("<math><mfrac><mn>1</mn><mi>n</mi></mfrac></math>", r"\frac{1}{n}"),
    ("<math><msup><mi>e</mi><mrow><mi>i</mi><mi>π</mi></mrow></msup></math>", r"e^{i\pi}"),
    ("<math><msqrt><mn>2</mn></msqrt><mo>≈</mo><mn>1.414</mn></math>", r"\sqrt{2}\approx1.414"),
    ("<math><mroot><mi>x</mi><mn>5</mn></mroot></math>", r"\sqrt[5]{x}"),
    ("<math><msub><mi>a</mi><mrow><mi>n</mi><mo>+</mo><mn>1</mn></mrow></msub></math>", r"a_{n+1}"),
    ("<math><mover><mi>x</mi><mo>¯</mo></mover></math>", r"\overline{x}"),
    ("<math><munder><mo>lim</mo><mrow><mi>n</mi><mo>→</mo><mi>∞</mi></mrow></munder></math>",
     r"\lim_{n\to\infty}"),
    ("<math><mfenced><mi>x</mi><mi>y</mi></mfenced></math>", "(x,y)"),
    ("<math><mtext>if</mtext><mi>x</mi><mo>∈</mo><mi>ℝ</mi></math>", r"\text{if}x\in\mathbb{R}"),
    ("<math><mfenced open='[' close=']'><mtable><mtr><mtd><mn>1</mn></mtd><mtd><mn>0</mn></mtd></mtr>"
     "<mtr><mtd><mn>0</mn></mtd><mtd><mn>1</mn></mtd></mtr></mtable></mfenced></math>",
     r"[\begin{matrix}1 & 0 \\ 0 & 1\end{matrix}]"),
    ("<math><semantics><mi>x</mi><annotation encoding='application/x-tex'>{\\displaystyle x_0}"
     "</annotation></semantics></math>", "x_0"),
])
def test_mathml_becomes_latex(mathml, tex):
    assert _math(mathml) == tex


def test_hostile_mathml_nesting_does_not_exhaust_the_stack():
    deep = "<math>" + "<mrow>" * 240 + "<mi>x</mi>" + "</mrow>" * 240 + "</math>"
    assert "x" in _math(deep)


def test_katex_mathjax3_and_mathml_scripts():
    body = ('<p>Inline <span class="katex"><span class="katex-mathml"><math><semantics><mi>a</mi>'
            '<annotation encoding="application/x-tex">a^2</annotation></semantics></math></span>'
            '<span class="katex-html" aria-hidden="true">a2</span></span> and '
            '<mjx-container class="MathJax" jax="CHTML"><mjx-math>glyphs</mjx-math><mjx-assistive-mml>'
            '<math><msub><mi>b</mi><mn>1</mn></msub></math></mjx-assistive-mml></mjx-container> and '
            '<script type="math/mml"><math><mi>c</mi></math></script>.</p>')
    text = html_to_text(page(body))
    assert "Inline $a^2$ and $b_{1}$ and $c$." in text
    assert "glyphs" not in text and "a2" not in text


# -- code ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("markup", "language"), [
    ('<pre><code class="language-rust">x</code></pre>', "rust"),
    ('<pre class="prettyprint lang-go">x</pre>', "go"),
    ('<pre class="brush: ruby; gutter: false">x</pre>', "ruby"),
    ('<div class="sourceCode"><pre class="sourceCode haskell"><code>x</code></pre></div>', "haskell"),
    ('<div class="highlight-sql notranslate"><div class="highlight"><pre>x</pre></div></div>', "sql"),
    ('<pre data-lang="julia">x</pre>', "julia"),
    ('<div class="content c"><pre>x</pre></div>', ""),  # a wrapper's bare word is not a language
    ('<pre><code class="language-text">x</code></pre>', ""),
])
def test_code_language_comes_from_classes(markup, language):
    from lxml import html as lxml_html

    pre = next(lxml_html.fragment_fromstring(markup, create_parent="div").iter("pre"))
    assert H.code_language(pre) == language


def test_tidy_text_leaves_code_alone():
    assert H.tidy_text("a  \n\n\n\nb\n```\nx  \n\n\n\ny\n```\n\n\nc") == "a\n\nb\n```\nx  \n\n\n\ny\n```\n\nc"


def test_fence_outgrows_backticks_inside():
    assert H.fence("a ```` b", "md") == "\n`````md\na ```` b\n`````\n"


def test_prism_line_numbers_class_keeps_the_block():
    body = ('<pre class="line-numbers language-js"><code class="language-js">let a = 1;\nlet b = 2;'
            '<span aria-hidden="true" class="line-numbers-rows"><span></span><span></span></span></code></pre>')
    assert "```js\nlet a = 1;\nlet b = 2;\n```" in html_to_text(page(body))


# -- tables ----------------------------------------------------------------------------------


def test_colspans_and_pipes_in_a_data_table():
    body = ("<table><tr><th>a|b</th><th>c</th><th>d</th></tr><tr><td colspan='2'>wide</td><td>1</td></tr>"
            "</table>")
    assert "| a\\|b | c | d |\n|---|---|---|\n| wide |  | 1 |" in html_to_text(page(body))


@pytest.mark.parametrize("table", [
    "<table><tr><td><p>only cell</p></td></tr></table>",
    "<table><tr><td>row</td></tr><tr><td>only one column</td></tr></table>",
    "<table role='presentation'><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>",
    "<table><tr><td>code</td><td><pre>x = 1\ny = 2</pre></td></tr><tr><td>a</td><td>b</td></tr></table>",
])
def test_layout_tables_are_unwrapped(table):
    text = html_to_text(page(table))
    assert "|---" not in text


def test_keep_flags_leave_items_to_trafilatura():
    body = ("<table><tr><th>k</th><th>v</th></tr><tr><td>x</td><td>1</td></tr></table>"
            "<pre><code class='language-c'>int x;</code></pre><p>see <script type='math/tex'>x^2</script></p>")
    off = HtmlConfig(keep_tables=False, keep_code=False, keep_math=False)
    result = extract_html(page(body), off)
    assert not result.found and "```c" not in result.text and "x^2" not in result.text
    assert extract_html(page(body)).kept == {"table": 1, "code": 1, "math": 1}


# -- boilerplate and posts -------------------------------------------------------------------


def test_class_rules_spare_long_prose_and_drop_short_matches():
    long = " ".join(f"Sentence {i} of a long article." for i in range(60))
    body = f'<div class="with-sidebar"><p>{long}</p></div><div class="ad-slot">Buy now</div>'
    text = html_to_text(page(body))
    assert "Sentence 59 of a long article." in text and "Buy now" not in text


def test_a_single_post_is_not_a_thread():
    body = '<div class="post"><span class="username">bob</span><p>Only one.</p></div>'
    assert "**bob**" not in html_to_text(page(body))


def test_own_renderer_when_trafilatura_finds_nothing(monkeypatch):
    monkeypatch.setattr(H, "run_trafilatura", lambda root, config: "")
    result = extract_html((FIXTURES / "forum.html").read_text(encoding="utf-8"))
    assert result.own_renderer and result.kept == result.found
    assert "**kahan_fan** (Sat Mar 02, 2024 10:02 am):" in result.text and "> Is my interpreter broken?" in result.text
    assert "Powered by phpBB" not in result.text  # pruned before rendering


# -- decoding --------------------------------------------------------------------------------


def test_decode_html_reports_how():
    assert decode_html("<p>café</p>".encode()) == ("<p>café</p>", "utf-8")
    latin = '<meta charset="ISO-8859-1"><p>café</p>'.encode("latin-1")
    assert decode_html(latin) == ('<meta charset="ISO-8859-1"><p>café</p>', "declared:iso-8859-1")
    koi = '<meta http-equiv="Content-Type" content="text/html; charset=koi8-r"><p>привет</p>'.encode("koi8-r")
    assert decode_html(koi)[1] == "declared:koi8-r" and "привет" in decode_html(koi)[0]
    assert decode_html("<p>“smart” quotes</p>".encode("cp1252")) == ("<p>“smart” quotes</p>", "cp1252")
    text, how = decode_html(b"<p>\x81\x8d</p>")
    assert how == "replaced" and "\ufffd" in text
    assert decode_html("<p>hi</p>".encode("utf-16")) == ("<p>hi</p>", "utf-16")


def test_read_html_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.html").write_bytes('<meta charset="latin-1"><p>é</p>'.encode("latin-1"))
    (tmp_path / "sub" / "b.htm").write_text("<p>ok</p>", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not html")
    records = list(read_html_files(tmp_path))
    assert [r.id for r in records] == ["a", "sub/b"]
    assert [r.metadata["decoding"] for r in records] == ["declared:latin-1", "utf-8"]
    assert "é" in records[0].text
    with pytest.raises(DataError, match="no such HTML file or folder"):
        list(read_html_files(tmp_path / "missing"))


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("html", ["", "   \n", "<!-- only a comment -->", "<html></html>"])
def test_empty_documents_give_empty_text(html):
    assert html_to_text(html) == ""


def test_a_100mb_document_is_truncated_quickly():
    para = "<p>" + "The swarm hangs from a branch while scouts search the countryside. " * 4 + "</p>\n"
    big = "<html><body><article>" + para * (100_000_000 // len(para)) + "</article></body></html>"
    start = time.perf_counter()
    result = extract_html(big, HtmlConfig(max_chars=200_000))
    assert result.truncated and "scouts search" in result.text
    assert time.perf_counter() - start < 5


def test_truncation_cuts_at_a_tag():
    assert H.truncate_html("<p>aaaa</p><p>bbbb</p>", 15) == "<p>aaaa</p>"


def test_deep_trees_malformed_and_binary_input_never_raise():
    deep = "<html><body><p>before</p>" + "<div>" * 10_000 + "deep" + "</div>" * 10_000 + "</body></html>"
    result = extract_html(deep)
    assert result.depth_limit and result.text.startswith("before")
    assert "unclosed" in html_to_text("<html><body><div><p>unclosed <b>tags <i>everywhere")
    junk, _ = decode_html(bytes(range(256)) * 40)
    assert isinstance(html_to_text(junk), str)
    assert html_to_text("<?xml version='1.0' encoding='utf-8'?><html><body><p>xhtml</p></body></html>") == "xhtml"
    assert html_to_text("\x00<p>nul\x01 bytes</p>") == "nul bytes"


# -- the step --------------------------------------------------------------------------------


def test_step_counts_and_drops_per_document(monkeypatch):
    real = H.run_trafilatura

    def crashing(root, config):
        if "CRASH" in root.text_content():
            raise RuntimeError("extractor exploded")
        return real(root, config)

    monkeypatch.setattr(H, "run_trafilatura", crashing)
    code = (FIXTURES / "code.html").read_text(encoding="utf-8")
    records = [
        Record("code", code, metadata={"url": "https://x"}),
        Record("empty", "<html><body></body></html>"),
        Record("chat", None, messages=[{"role": "user", "content": "hi"}]),
        Record("crash", page("<p>CRASH</p>")),
        Record("big", page("") + "<p>tail</p>" * 1000),
    ]
    dropped = []
    ctx = StepContext("html_to_text", sink=lambda r, reason, step: dropped.append((r.id, reason, r.metadata)))
    step = HtmlToText(HtmlConfig(max_chars=len(code) + 1))
    out = list(step.run(iter(records), ctx))
    assert [r.id for r in out] == ["code", "big"]
    assert ctx.drops == {"empty_after_extraction": 1, "no_text": 1, "extractor_error": 1}
    assert ctx.counters["truncated"] == 1 and ctx.counters["code_kept"] == ctx.counters["code_found"] == 11
    assert out[0].metadata == {"url": "https://x", "extracted_from": "html", "html_chars": len(code)}
    assert out[0].text.startswith("Reading files in Python") and records[0].text == code
    crash = next(meta for rid, _, meta in dropped if rid == "crash")
    assert crash["extractor_error"] == "RuntimeError: extractor exploded"


def test_step_pickles_and_config_validates():
    step = pickle.loads(pickle.dumps(HtmlConfig(max_chars=10).build()))
    assert step.config.max_chars == 10
    for bad in ({"max_chars": 0}, {"min_chars": 0}, {"keep_math": "yes"}, {"boilerplate_parts": ("Ad",)},
                {"boilerplate_parts": "ad"}):
        with pytest.raises(ConfigError):
            HtmlConfig(**bad)
