"""HTML -> text that keeps the fragile content: equations, code, tables and forum threads.

Why: the Phi-4 report (§2.3; ``docs/phi4-recipe.md`` §4, "Custom extraction and
cleaning") runs general web pages through a custom extractor because naive parsers
corrupt exactly the content a reasoning model learns most from: TeX and MathML
equations (MathJax keeps TeX in ``<script>`` tags that extractors drop; MathML
flattens to ``x2+1``), code blocks (indentation, line-number gutters and highlighter
spans), tables (cells run together) and forum threads (who said what). The report's
extractor prunes and normalises the DOM tree, classifying elements as boilerplate,
ads, equations or syntax-highlighter artifacts by tag name, CSS class, content
length and tree depth. This module does that on top of a maintained main-content
extractor (trafilatura), so we write only the DOM rules.

Pipeline (:func:`extract_html`; each rule is a small named function below):

1. **Bound the input**: documents over ``max_chars`` are cut at a tag boundary
   (counted ``truncated``); XML declarations and control characters are removed.
   lxml parses with libxml2's depth limit (256 levels); content nested deeper is
   lost (counted ``depth_limit``), and no rule here recurses in Python on the tree.
2. **Protect equations**: MathJax ``<script type="math/tex[; mode=display]">``,
   KaTeX (its TeX annotation), MathJax 3 ``<mjx-container>``, Wikipedia math,
   ``<math>`` (TeX annotation, else :mod:`~phiforge.curate.html_math`) and
   ``<img class="latex" alt=...>`` become ``$...$`` / ``$$...$$``. TeX already in
   the text (``\\(...\\)``, ``$...$``) is text and stays as written. MathJax 2's
   rendered glyph spans are dropped (its source script sits next to them).
3. **Prune boilerplate** (:data:`BOILERPLATE_TAGS`, :data:`BOILERPLATE_PARTS`,
   :data:`BOILERPLATE_TOKENS`): nav/aside/forms/buttons, page-level header/footer,
   hidden elements, and elements whose class/id words name ads, cookie banners,
   share bars, sidebars, related links, menus, signatures... Content length
   overrules a class match: an element holding ``keep_text_chars`` of mostly
   non-link text is content (``<div class="with-sidebar">`` wrapping the article),
   and loses its class so trafilatura's own class rules do not drop it either.
4. **Protect code**: ``<pre>`` (and SyntaxHighlighter's per-line tables) become
   fenced blocks with the language from ``language-x``/``lang-x``/``brush: x``/
   ``sourceCode x``/``highlight-x``/``data-lang``; line-number gutters and copy
   buttons are removed, highlighter token spans flatten to their text, ``<br>`` and
   per-line ``<div>`` become newlines. ``<code>``/``<kbd>`` in running text become
   `` `x` ``.
5. **Protect tables**: a data table becomes a Markdown table (header row, pipes
   escaped, colspans as empty cells, caption above); a layout table (one row or
   column, ``role="presentation"``, cells holding code, headings or over 400
   characters) is unwrapped into blocks. Innermost tables first.
6. **Protect forum posts**: an element with a class/id token naming a post
   (``post``, ``message``, ``comment``, ``reply``, ``answer``; not a part of one such
   as ``post-body``) that contains an author (``username``, ``fn``, ``itemprop=author``
   ...) becomes ``**author** (date):`` and its body (quotes as ``> ``), posts set off
   by blank lines, replies after their parent. Only where a page has two or more,
   and never an element holding an ``<h1>`` (a blog article classed ``post``).
7. **Extract main content** with ``trafilatura.extract`` (txt output, comments
   included) on the modified tree. Steps 2 and 4-6 replaced each item by a
   placeholder: two unique tokens around the item's plain text, so trafilatura's
   text-density scoring sees as much text as before, in a ``<p>`` that also
   replaces wrappers holding nothing else (trafilatura drops any class containing
   "bar", e.g. Prism's ``code-toolbar``). The tokens are then swapped for the
   rendered items. If trafilatura finds nothing (tiny pages) our own renderer of
   the pruned DOM is used (counted ``own_renderer``); if it left out the page's
   ``<h1>`` (it often does outside ``<article>``), the title goes first.

Deviations and limits: output follows trafilatura's txt format (one block per
line; headings, emphasis and quotes outside posts are not marked); blocks we render
(code, tables, posts) are set off by blank lines. A ``$`` in ordinary text (prices)
is not escaped, so ``$...$`` is ambiguous downstream, as in the pages themselves.
AsciiMath scripts stay plain text; Content MathML is not converted. One document's
cost is bounded by ``max_chars`` but not time-limited (about 1-2 s per MB on one
core). The fixture outputs pin trafilatura's behaviour (2.3), so a new release
that changes it shows up in ``tests/curate/test_html.py``.
"""
from __future__ import annotations

import codecs
import dataclasses
import html as html_lib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from phiforge.curate.html_math import is_display, local_name, mathml_to_latex, strip_displaystyle
from phiforge.dataflow.records import Record
from phiforge.dataflow.step import Step, StepContext
from phiforge.errors import ConfigError, DataError

INSTALL_HINT = "pip install 'phiforge[curate]'"
KINDS = ("math", "code", "table", "post")
"""Kinds of protected content, as counted in :class:`HtmlExtraction` and the step's counters."""

BOILERPLATE_TAGS = ("nav", "aside", "form", "button", "input", "select", "textarea", "iframe", "noscript",
                    "svg", "canvas", "object", "embed", "template", "dialog", "menu", "script", "style",
                    "link", "meta")
"""Tags removed wherever they are (math scripts are converted before this runs)."""
BOILERPLATE_PARTS = (
    "ad", "ads", "adsbygoogle", "advert", "adverts", "advertisement", "advertising", "sponsor", "sponsored",
    "banner", "cookie", "cookies", "consent", "gdpr", "share", "sharing", "sharebar", "social", "related",
    "recommended", "sidebar", "breadcrumb", "breadcrumbs", "menu", "nav", "navbar", "navigation", "newsletter",
    "subscribe", "popup", "modal", "promo", "signature", "signaturecontainer", "copyright", "clipboard",
    "pagination", "pager", "footer", "masthead", "vote", "votes", "voting", "skip", "navbox", "postprofile",
    "userinfo", "avatar", "tags",
)
"""A word of an element's class or id (split on ``-``, ``_`` and camelCase) that marks it as boilerplate.

Not "copy" (``body-copy`` is article text) nor "widget" (page builders put whole
articles in ``elementor-widget-text-editor``): those are whole tokens below."""
BOILERPLATE_TOKENS = ("sr-only", "screen-reader-text", "visually-hidden", "comment-reply-link", "reply-link",
                      "post-actions", "permalink", "like-button", "toolbar", "widget", "widget-area", "copy",
                      "copy-link", "copy-button")
"""Whole class/id tokens that mark boilerplate."""
GUTTER_TOKENS = ("gutter", "linenos", "lineno", "linenodiv", "line-numbers-rows", "line-number", "line-numbers",
                 "linenumber", "linenumbers", "hljs-ln-numbers", "ln-num", "blob-num", "copy-button",
                 "copy-code", "code-copy", "btn-copy", "toolbar", "code-toolbar-item")
"""Class tokens of syntax-highlighter debris (line-number gutters, copy buttons), removed before code is read."""
POST_PARTS = ("post", "message", "comment", "reply", "answer")
"""Class/id words of a forum post (or blog comment) element."""
POST_META_PARTS = ("meta", "metadata", "header", "head", "author", "byline", "user", "username", "details",
                   "info", "date", "time", "timestamp", "footer", "body", "content", "text", "list", "count",
                   "container", "form", "title", "says", "vcard", "fn", "link", "links", "actions", "signature",
                   "profile", "postprofile", "avatar", "number", "num", "id")
"""Class words that mark a *part* of a post (its header, body...), so such an element is not a post."""
AUTHOR_TOKENS = ("author", "username", "user-name", "fn", "poster", "nickname", "comment-author", "post-author",
                 "message-author", "postauthor", "user-link", "display-name")
"""Class tokens of the element naming a post's author (also ``itemprop=author``, ``rel=author``)."""
DATE_PARTS = ("date", "time", "timestamp", "posted", "published", "postdate", "datetime")
"""Class words of the element giving a post's date (``<time>`` is tried first)."""

_TOKEN = "XPHFX"
_PAIR = re.compile(_TOKEN + r"(\d+)S(.*?)" + _TOKEN + r"\1E", re.DOTALL)
_ORPHAN = re.compile(_TOKEN + r"(\d+)([SE])")
_PAIR_START = re.compile(_TOKEN + r"(\d+)S")
_WS = re.compile(r"\s+")
_WORD_SPLIT = re.compile(r"[-_:]|(?<=[a-z0-9])(?=[A-Z])")
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_FENCE = re.compile(r"^(`{3,})")
BLOCK_TAGS = frozenset(
    "p div section article main header footer aside nav h1 h2 h3 h4 h5 h6 ul ol li dl dt dd blockquote pre "
    "table tr thead tbody tfoot caption form fieldset figure figcaption address hr details summary center "
    "body html".split())
STOP_WRAPPERS = frozenset("body html main article section td th li dd blockquote".split())
"""Ancestors a placeholder never replaces, even when they hold only it."""
INLINE_PARENTS = frozenset(
    "p span a em strong b i u label dt h1 h2 h3 h4 h5 h6 sup sub font small big q cite "
    "figcaption abbr mark s del ins".split())
"""Parents in which a replaced element is inline text, not a block of its own."""
KNOWN_LANGUAGES = frozenset(
    "python py javascript js typescript ts java c cpp c++ csharp cs go rust rs ruby rb php perl lua r julia "
    "matlab octave haskell hs scala kotlin swift objectivec sql bash sh shell zsh console powershell ps1 "
    "html xml css scss json yaml yml toml ini dockerfile makefile cmake latex tex diff fortran ocaml fsharp "
    "elixir erlang clojure lisp scheme racket dart zig nim prolog asm nasm vb vbnet groovy graphql "
    "protobuf verilog vhdl".split())
NO_LANGUAGE = frozenset({"text", "plaintext", "plain", "txt", "none", "nohighlight", "default", "output",
                         "code", "source", "highlight", "hljs", "prettyprint", "sourcecode", "notranslate"})
WHATWG_WINDOWS_1252 = frozenset({"latin-1", "latin1", "iso-8859-1", "iso8859-1", "iso_8859-1", "ascii",
                                 "us-ascii", "l1", "cp819", "ibm819"})
"""Charset labels that browsers decode as windows-1252 (WHATWG Encoding standard)."""


@dataclass(frozen=True, kw_only=True)
class HtmlConfig:
    """Settings of :class:`HtmlToText` (what each rule does: module docstring)."""

    max_chars: int = 5_000_000
    """Documents longer than this (characters of HTML) are cut at a tag boundary and counted ``truncated``."""
    min_chars: int = 1
    """Extracted texts shorter than this (characters, >= 1) are dropped as ``empty_after_extraction``."""
    keep_math: bool = True
    """Convert MathJax/KaTeX/MathML/LaTeX images to ``$...$``/``$$...$$`` (else the extractor sees them raw)."""
    keep_code: bool = True
    """Render ``<pre>``/``<code>`` as fenced/backticked code with the language kept."""
    keep_tables: bool = True
    """Render data tables as Markdown and unwrap layout tables (else trafilatura's own table text)."""
    keep_forum: bool = True
    """Render forum posts as ``**author** (date):`` + body (needs at least two posts on the page)."""
    favor_precision: bool = False
    """trafilatura's precision mode: less boilerplate, more risk of losing content (default: balanced)."""
    keep_text_chars: int = 1000
    """A class/id boilerplate match is ignored for elements with at least this much text (link density < 0.5)."""
    boilerplate_parts: tuple[str, ...] = BOILERPLATE_PARTS
    """Class/id words marking boilerplate (lower case); replace to tune for a crawl."""
    boilerplate_tokens: tuple[str, ...] = BOILERPLATE_TOKENS
    """Whole class/id tokens marking boilerplate (lower case)."""

    def __post_init__(self) -> None:
        for name in ("max_chars", "min_chars", "keep_text_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"html: {name} must be a positive integer, got {value!r}")
        for name in ("keep_math", "keep_code", "keep_tables", "keep_forum", "favor_precision"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"html: {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("boilerplate_parts", "boilerplate_tokens"):
            words = getattr(self, name)
            if isinstance(words, str) or not all(isinstance(w, str) and w == w.lower() for w in words):
                raise ConfigError(f"html: {name} must be a list of lower-case words, got {words!r}")
            object.__setattr__(self, name, tuple(words))  # a YAML list; tuples keep the config hashable

    def build(self) -> HtmlToText:
        return HtmlToText(self)


@dataclass(slots=True)
class HtmlExtraction:
    """The text of one page and what happened on the way (the step turns these into counters)."""

    text: str
    truncated: bool = False
    depth_limit: bool = False
    own_renderer: bool = False
    found: Counter = field(default_factory=Counter)
    """Protected items per kind found in the page (math is counted before boilerplate is pruned)."""
    kept: Counter = field(default_factory=Counter)
    """Protected items per kind present in the text (the rest were in what the extractor left out)."""


# -- public API ------------------------------------------------------------------------------


def html_to_text(html: str, config: HtmlConfig | None = None) -> str:
    """The main text of an HTML page with equations, code, tables and forum posts kept (pure)."""
    return extract_html(html, config).text


def extract_html(html: str, config: HtmlConfig | None = None) -> HtmlExtraction:
    """:func:`html_to_text` plus what happened (truncation, items found and kept)."""
    config = config or HtmlConfig()
    truncated = len(html) > config.max_chars
    html = clean_source(truncate_html(html, config.max_chars))
    root, depth_limit = parse_html(html)
    if root is None:
        return HtmlExtraction("", truncated=truncated)
    store = Placeholders()
    protect_fragile(root, store, config)
    text = run_trafilatura(root, config)
    own = not text.strip()
    if own:
        text = render_text(root.find("body") if root.find("body") is not None else root)
    text = maybe_prepend_title(text, page_title(root))
    text, kept = store.restore(text)
    return HtmlExtraction(tidy_text(text), truncated, depth_limit, own, store.found(), kept)


def protect_fragile(root, store: Placeholders, config: HtmlConfig) -> None:
    """Steps 2-6 of the module docstring, in place: placeholders in, debris out."""
    if config.keep_math:
        protect_math(root, store)
    remove_boilerplate(root, config)
    if config.keep_code:
        protect_code(root, store)
    if config.keep_tables:
        protect_tables(root, store)
    if config.keep_forum:
        protect_posts(root, store)


def decode_html(data: bytes) -> tuple[str, str]:
    """Bytes of a page -> ``(text, how)``: UTF-8, else the declared charset, else windows-1252.

    ``how`` is ``"utf-8"``, ``"utf-16"`` (byte-order mark), ``"declared:<label>"`` (the
    page's ``<meta charset>`` / ``http-equiv`` label, decoded as browsers do: latin-1
    labels mean windows-1252), ``"cp1252"`` (undeclared, decoded without loss) or
    ``"replaced"`` (undeclared bytes that are not windows-1252 became U+FFFD).
    """
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return data.decode("utf-16", errors="replace"), "utf-16"
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    label = declared_charset(data)
    if label is not None:
        codec = "cp1252" if label in WHATWG_WINDOWS_1252 else label
        try:
            return data.decode(codec), f"declared:{label}"
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), "replaced"


def declared_charset(data: bytes) -> str | None:
    """The charset label a page declares in its first 4 KB (``<meta charset>`` or ``http-equiv``), lower case."""
    m = _CHARSET.search(data[:4096])
    if m is None:
        return None
    label = m.group(1).decode("ascii", errors="ignore").lower()
    try:
        codecs.lookup(label)
    except LookupError:
        return None
    return label


def read_html_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[Record]:
    """Records from ``.html``/``.htm`` files (a folder is searched recursively, in sorted order).

    ``id`` is the file's path relative to the folder given, without the suffix;
    ``text`` the decoded HTML; metadata ``source_path`` and ``decoding`` (``how`` of
    :func:`decode_html`, so a stage can count non-UTF-8 inputs).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for top in map(Path, paths):
        if not top.exists():
            raise DataError(f"{top}: no such HTML file or folder")
        files = sorted(p for p in top.rglob("*") if p.suffix.lower() in (".html", ".htm") and p.is_file()) \
            if top.is_dir() else [top]
        for path in files:
            text, how = decode_html(path.read_bytes())
            rel = path.relative_to(top) if top.is_dir() else Path(path.name)
            yield Record(rel.with_suffix("").as_posix(), text,
                         metadata={"source_path": str(path), "decoding": how})


class HtmlToText(Step):
    """Replace each record's HTML ``text`` with its extracted text (:func:`extract_html`).

    Never stops the stage for one bad page: any exception from lxml/trafilatura on a
    document drops it as ``extractor_error`` (the error in ``metadata["extractor_error"]``
    of the dropped row); an empty result drops it as ``empty_after_extraction``; a
    record without text as ``no_text``. Counters: ``truncated``, ``depth_limit``,
    ``own_renderer``, ``<kind>_found`` / ``<kind>_kept`` for math, code, table, post.
    Kept records get metadata ``extracted_from="html"`` and ``html_chars``.
    """

    def __init__(self, config: HtmlConfig | None = None):
        self.config = config or HtmlConfig()

    def run(self, records: Iterator[Record], ctx: StepContext) -> Iterator[Record]:
        _lxml(), _trafilatura()  # a missing install fails the stage once, not every document
        for record in records:
            if not isinstance(record.text, str):
                ctx.drop(record, "no_text")
                continue
            try:
                result = extract_html(record.text, self.config)
            except Exception as e:  # noqa: BLE001 - one page must never kill the stage
                meta = {**record.metadata, "extractor_error": f"{type(e).__name__}: {e}"[:500]}
                ctx.drop(dataclasses.replace(record, metadata=meta), "extractor_error")
                continue
            count_extraction(result, ctx)
            if len(result.text) < self.config.min_chars:
                ctx.drop(record, "empty_after_extraction")
                continue
            meta = {**record.metadata, "extracted_from": "html", "html_chars": len(record.text)}
            yield dataclasses.replace(record, text=result.text, metadata=meta)


def count_extraction(result: HtmlExtraction, ctx: StepContext) -> None:
    """Per-document counters of :class:`HtmlToText`."""
    for name in ("truncated", "depth_limit", "own_renderer"):
        if getattr(result, name):
            ctx.stat(name)
    for kind in KINDS:
        if result.found[kind]:
            ctx.stat(f"{kind}_found", result.found[kind])
        if result.kept[kind]:
            ctx.stat(f"{kind}_kept", result.kept[kind])


# -- input bounds and parsing ----------------------------------------------------------------


def truncate_html(html: str, max_chars: int) -> str:
    """``html`` cut to at most ``max_chars``, at the last ``<`` before the limit if one is near."""
    if len(html) <= max_chars:
        return html
    cut = html.rfind("<", max(0, max_chars - 65536), max_chars)
    return html[:cut] if cut > 0 else html[:max_chars]


def clean_source(html: str) -> str:
    """Remove what makes lxml refuse a str: an XML declaration, control characters, a BOM."""
    html = _XML_DECL.sub("", html.lstrip("\ufeff"), count=1)
    return _CONTROL.sub("", html)


def parse_html(html: str):
    """``(root, depth_limit_hit)``; root is None for an empty document.

    A fresh parser per call (lxml parsers are not shared across threads) with the
    default depth limit: content nested deeper than 256 levels is dropped by libxml2,
    which we detect from its error log.
    """
    lxml_html, etree = _lxml()
    if not html.strip():
        return None, False
    parser = lxml_html.HTMLParser(remove_comments=True, remove_pis=True, collect_ids=False)
    try:
        root = lxml_html.document_fromstring(html, parser=parser)
    except etree.ParserError:  # "Document is empty": nothing but comments or whitespace
        return None, False
    depth_limit = any("Excessive depth" in e.message for e in parser.error_log)
    return root, depth_limit


def _lxml():
    try:
        import lxml.etree as etree
        import lxml.html as lxml_html
    except ImportError as e:
        raise ImportError(f"HTML extraction needs lxml (with trafilatura): {INSTALL_HINT}") from e
    return lxml_html, etree


def _trafilatura():
    try:
        import trafilatura
    except ImportError as e:
        raise ImportError(f"HTML extraction needs trafilatura: {INSTALL_HINT}") from e
    logger = logging.getLogger("trafilatura")
    if not logger.handlers:  # its "discarding data" warnings would reach stderr via logging.lastResort
        logger.addHandler(logging.NullHandler())
    return trafilatura


def run_trafilatura(root, config: HtmlConfig) -> str:
    """trafilatura's main text of the (modified) tree, or ``""`` when it finds none."""
    text = _trafilatura().extract(
        root, output_format="txt", include_comments=True, include_tables=not config.keep_tables,
        include_formatting=False, include_links=False, include_images=False, deduplicate=False,
        favor_precision=config.favor_precision, with_metadata=False)
    return text or ""


# -- placeholders ----------------------------------------------------------------------------


class Placeholders:
    """Rendered fragile items, stood in for by unique tokens while the extractor runs.

    A placeholder is ``XPHFX<i>S <plain text> XPHFX<i>E``: the plain text keeps the
    extractor's text-density scores unchanged, and the pair is swapped for the
    rendered item afterwards. An item's content may hold other items' tokens (a
    post with a code block), resolved in turn.
    """

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.contents: list[str] = []
        self.children: list[tuple[int, ...]] = []

    def add(self, kind: str, content: str, children: tuple[int, ...] = ()) -> int:
        self.kinds.append(kind)
        self.contents.append(content)
        self.children.append(children)
        return len(self.kinds) - 1

    def is_multiline(self, index: int) -> bool:
        return "\n" in self.contents[index].strip()

    def found(self) -> Counter:
        return Counter(self.kinds)

    @staticmethod
    def token(index: int, filler: str) -> str:
        filler = _WS.sub(" ", filler).strip()
        return f"{_TOKEN}{index}S {filler} {_TOKEN}{index}E"

    def resolve(self, text: str) -> tuple[str, tuple[int, ...]]:
        """``text`` with each placeholder pair in it replaced by its content, and the items used."""
        used: list[int] = []

        def sub(m: re.Match) -> str:
            used.append(int(m.group(1)))
            return self.contents[used[-1]]

        return _PAIR.sub(sub, text), tuple(used)

    def restore(self, text: str) -> tuple[str, Counter]:
        """Swap every placeholder (nested ones too) for its content; count the items kept."""
        kept: Counter = Counter()
        for _ in range(16):  # nesting depth of items (post > table > math) is small
            text, used = self.resolve(text)
            if not used:
                break
            for index in used:
                self._count(index, kept)
        return _ORPHAN.sub(self._orphan, text), kept

    def _count(self, index: int, kept: Counter) -> None:
        stack = [index]
        while stack:
            i = stack.pop()
            kept[self.kinds[i]] += 1
            stack.extend(self.children[i])

    def _orphan(self, m: re.Match) -> str:
        """A start token whose end the extractor cut: keep the item; a lone end token: drop it."""
        index = int(m.group(1))
        return self.contents[index] if m.group(2) == "S" and index < len(self.contents) else ""


def replace_inline(el, text: str) -> None:
    """Replace ``el`` by ``text`` flowing in its parent's text (its tail kept)."""
    parent = el.getparent()
    if parent is None:
        return
    text += el.tail or ""
    prev = el.getprevious()
    if prev is not None:
        prev.tail = (prev.tail or "") + text
    else:
        parent.text = (parent.text or "") + text
    parent.remove(el)


def replace_block(el, text: str) -> None:
    """Replace ``el`` by a paragraph holding ``text`` (its tail kept)."""
    parent = el.getparent()
    if parent is None:
        return
    block = el.makeelement("p", {})
    block.text, block.tail = text, el.tail
    parent.replace(el, block)


def put_placeholder(el, store: Placeholders, kind: str, content: str, *, block: bool,
                    children: tuple[int, ...] = ()) -> None:
    """Register ``content`` and put its placeholder where ``el`` was (a block or inline).

    A block replaces ``el`` together with the wrappers that hold nothing else
    (``<div class="code-toolbar"><pre>``): the extractor judges elements by class
    substrings (trafilatura drops any class containing "bar"), and those wrappers'
    classes describe the item we have already classified, not the page.
    """
    index = store.add(kind, content, children)
    token = store.token(index, plain_text(el) if kind in ("post", "table") else content)
    if block and not in_inline_context(el):
        replace_block(sole_wrapper(el), token)
    else:
        replace_inline(el, f" {token} " if block else token)


def sole_wrapper(el):
    """The outermost ancestor of ``el`` whose only content is ``el`` (stopping at cells, items, articles)."""
    top = el
    while True:
        parent = top.getparent()
        if parent is None or parent.tag in STOP_WRAPPERS or not holds_only(parent, top):
            return top
        top = parent


def holds_only(parent, child) -> bool:
    """Is ``child`` all the content of ``parent`` (other children empty, no text beside it)?"""
    if (parent.text or "").strip() or (child.tail or "").strip():
        return False
    for other in parent:
        if other is child:
            continue
        if (other.tail or "").strip() or other.tag == "img" or next(other.iter("img"), None) is not None \
                or plain_text(other):
            return False
    return True


def in_inline_context(el) -> bool:
    """Is ``el`` inside running text (a paragraph, a link, a list item...)?"""
    parent = el.getparent()
    return parent is not None and parent.tag in INLINE_PARENTS


# -- class/id words ---------------------------------------------------------------------------


def class_tokens(el) -> list[str]:
    """The lower-case tokens of ``el``'s class and id attributes."""
    value = f"{el.get('class', '')} {el.get('id', '')}"
    return value.lower().split() if value.strip() else []


def class_words(el) -> set[str]:
    """The words of ``el``'s class/id tokens: ``adBanner main-nav`` -> {ad, banner, main, nav}."""
    value = f"{el.get('class', '')} {el.get('id', '')}"
    if not value.strip():
        return set()
    return {w.lower() for token in value.split() for w in _WORD_SPLIT.split(token) if w}


def plain_text(el) -> str:
    """The whitespace-collapsed text under ``el`` (used as placeholder filler and for lengths)."""
    return _WS.sub(" ", el.text_content()).strip()


# -- 2. equations -----------------------------------------------------------------------------


def protect_math(root, store: Placeholders) -> None:
    """Replace every equation form we know with a ``$...$`` / ``$$...$$`` placeholder."""
    has_scripts = any(_is_math_script(s) for s in root.iter("script"))
    drop_rendered_mathjax(root, keep_mathml=not has_scripts)
    for container in _math_containers(root):
        math = next(iter(_xpath(MATH_XPATH)(container)), None)
        if math is not None:
            display = is_display(math) or _container_is_display(container)
            put_math(container, store, mathml_to_latex(math), display)
    for script in [s for s in root.iter("script") if _is_math_script(s)]:
        if script.get("type", "").lower().startswith("math/asciimath"):  # not TeX: keep it as text
            replace_inline(script, f" {script.text or ''} ")
            continue
        put_math(script, store, *_script_tex(script))
    for math in _xpath(MATH_XPATH)(root):
        if math.getparent() is not None:  # not inside an equation replaced just before
            put_math(math, store, mathml_to_latex(math), is_display(math))
    for img in [i for i in root.iter("img") if _is_latex_image(i)]:
        put_math(img, store, strip_displaystyle(img.get("alt", "")), "display" in img.get("class", ""))


MATH_XPATH = './/*[name()="math" or substring-after(name(), ":")="math"]'
"""``<math>`` and prefixed ``<m:math>`` (the HTML parser keeps prefixes in tag names)."""
MATHJAX2_XPATH = './/*[contains(@class, "MathJax") or contains(@class, "MJX") or contains(@class, "mjx-chtml")]'
CONTAINER_XPATH = ('.//*[self::mjx-container or contains(@class, "katex") or contains(@class, "mwe-math-element")'
                   ' or contains(@class, "MathJax")]')


@lru_cache(maxsize=None)
def _xpath(expr: str):
    """A compiled XPath (compiled on first use: no lxml import when this module loads)."""
    _, etree = _lxml()
    return etree.XPath(expr)


def put_math(el, store: Placeholders, tex: str, display: bool) -> None:
    """One equation: ``$tex$`` inline, ``$$tex$$`` display (a block unless inside running text)."""
    tex = tex.strip()
    if not tex:
        el.drop_tree()
        return
    if not display:
        tex = _WS.sub(" ", tex)
    content = f"$${tex}$$" if display else f"${tex}$"
    put_placeholder(el, store, "math", content, block=display)


def drop_rendered_mathjax(root, keep_mathml: bool) -> None:
    """Remove MathJax 2 output (glyph spans, previews) whose TeX source script sits beside it.

    Without source scripts (a page saved with them stripped) a rendered span that
    holds assistive MathML is kept, and the MathML is converted later. MathJax 3's
    ``<mjx-container>`` is never dropped: it keeps no source script.
    """
    doomed = [el for el in _xpath(MATHJAX2_XPATH)(root) if not el.tag.startswith("mjx-")
              and not (keep_mathml and _xpath(MATH_XPATH)(el))]
    for el in doomed:
        if el.getparent() is not None:
            el.drop_tree()


def _math_containers(root) -> list:
    """KaTeX, Wikipedia and MathJax 3 wrappers: one equation each, rendered glyphs beside the MathML."""
    found, seen = [], set()
    for el in _xpath(CONTAINER_XPATH)(root):
        tokens = el.get("class", "").split()
        if el.tag == "mjx-container" or {"katex", "mwe-math-element", "MathJax", "MathJax_Display"} & set(tokens):
            if seen.isdisjoint(el.iterancestors()):
                found.append(el)
                seen.add(el)
    return found


def _container_is_display(el) -> bool:
    parent = el.getparent()
    classes = f"{el.get('class', '')} {parent.get('class', '') if parent is not None else ''}"
    return el.get("display") == "true" or "katex-display" in classes or "Display" in classes


def _is_math_script(script) -> bool:
    return script.get("type", "").lower().startswith(("math/tex", "math/mml", "math/asciimath"))


def _script_tex(script) -> tuple[str, bool]:
    """``(tex, display)`` of a MathJax source script (MathML scripts are converted)."""
    kind = script.get("type", "").lower()
    display = "mode=display" in kind.replace(" ", "")
    body = script.text or ""
    if kind.startswith("math/mml"):
        lxml_html, _ = _lxml()
        math = lxml_html.fragment_fromstring(body, create_parent="div") if body.strip() else None
        mathml = next((m for m in math.iter() if local_name(m) == "math"), None) if math is not None else None
        return (mathml_to_latex(mathml) if mathml is not None else ""), display or (
            mathml is not None and is_display(mathml))
    return html_lib.unescape(body), display  # XHTML pages escape "<" as "&lt;" in scripts


def _is_latex_image(img) -> bool:
    """WordPress ``<img class="latex" alt="x^2">`` and formula images with TeX in ``alt``."""
    tokens = set(img.get("class", "").lower().split())
    return bool(img.get("alt", "").strip()) and bool(tokens & {"latex", "tex", "math", "mwe-math-fallback-image-inline",
                                                             "mwe-math-fallback-image-display"})


# -- 3. boilerplate ---------------------------------------------------------------------------


def remove_boilerplate(root, config: HtmlConfig) -> None:
    """Drop boilerplate elements (tags, hidden, class/id words), skipping inside code blocks.

    An element whose class says boilerplate but which holds long prose loses its
    class and id instead, so the extractor's own class rules (trafilatura drops any
    class containing "sidebar") do not undo the content-length verdict.
    """
    _, etree = _lxml()
    doomed = []
    walker = etree.iterwalk(root, events=("start",))
    for _, el in walker:
        if not isinstance(el.tag, str) or el.tag in ("pre", "code"):
            walker.skip_subtree()
            continue
        verdict = boilerplate_verdict(el, config)
        if verdict == "drop":
            doomed.append(el)
            walker.skip_subtree()
        elif verdict == "overruled":
            el.attrib.pop("class", None)
            el.attrib.pop("id", None)
    for el in doomed:
        el.drop_tree()


def boilerplate_verdict(el, config: HtmlConfig) -> str:
    """``"drop"`` (by tag, visibility or class/id words), ``"overruled"`` (class match on long prose) or ``"keep"``."""
    tag = el.tag
    if tag in ("html", "body", "main", "article"):
        return "keep"
    if tag in BOILERPLATE_TAGS or is_hidden(el):
        return "drop"
    if tag in ("header", "footer"):
        return "drop" if is_page_chrome(el) else "keep"
    if not (el.get("class") or el.get("id")):
        return "keep"
    parts, tokens = _word_sets(config.boilerplate_parts, config.boilerplate_tokens)
    if not (tokens.intersection(class_tokens(el)) or parts.intersection(class_words(el))):
        return "keep"
    return "overruled" if is_long_prose(el, config.keep_text_chars) else "drop"


@lru_cache(maxsize=16)
def _word_sets(parts: tuple[str, ...], tokens: tuple[str, ...]) -> tuple[frozenset, frozenset]:
    return frozenset(parts), frozenset(tokens)


def is_hidden(el) -> bool:
    """Hidden by attribute or inline style (screen-reader copies, collapsed menus, tracking divs)."""
    if el.get("hidden") is not None or el.get("aria-hidden") == "true":
        return True
    style = el.get("style", "").replace(" ", "").lower()
    return "display:none" in style or "visibility:hidden" in style


def is_page_chrome(el) -> bool:
    """A header/footer of the page (not of an article or comment, and not holding the title)."""
    if any(a.tag in ("article", "main") for a in el.iterancestors()):
        return False
    return el.tag == "footer" or not any(is_title(h) for h in el.iter("h1"))


def is_title(h1) -> bool:
    """An ``<h1>`` that titles the content: some text, mostly not a link (a site logo is a link home)."""
    text = plain_text(h1)
    links = sum(len(plain_text(a)) for a in h1.iter("a"))
    return 0 < len(text) <= 300 and links < 0.5 * len(text)


def page_title(root) -> str:
    """The first content ``<h1>`` left after pruning (placeholders resolved by the caller), or ``""``."""
    return next((plain_text(h) for h in root.iter("h1") if is_title(h)), "")


def maybe_prepend_title(text: str, title: str) -> str:
    """Put the page's ``<h1>`` first when the extractor left it out (it often does outside ``<article>``)."""
    if not title or not text.strip() or text.lstrip().startswith(title):
        return text
    return f"{title}\n{text}"


def is_long_prose(el, min_chars: int) -> bool:
    """Content length rule: lots of text that is mostly not links is content, whatever its class."""
    text = plain_text(el)
    if len(text) < min_chars:
        return False
    link_chars = sum(len(plain_text(a)) for a in el.iter("a"))
    return link_chars < 0.5 * len(text)


# -- 4. code ----------------------------------------------------------------------------------


def protect_code(root, store: Placeholders) -> None:
    """``<pre>`` and highlighter tables -> fenced blocks; inline ``<code>`` -> backticks."""
    remove_gutters(root)
    for el in _outermost(root, lambda e: e.tag == "pre" or "syntaxhighlighter" in class_tokens(e)):
        language = code_language(el)
        text = code_text(el)
        if not text.strip():
            el.drop_tree()
            continue
        put_placeholder(el, store, "code", fence(text, language), block=True)
    for el in _outermost(root, lambda e: e.tag in ("code", "kbd", "samp", "tt")):
        put_inline_code(el, store)


def put_inline_code(el, store: Placeholders) -> None:
    """``<code>`` in running text -> `` `x` ``; a multi-line one outside a paragraph -> a fenced block."""
    text = code_text(el)
    if not text.strip():
        replace_inline(el, text)
        return
    if "\n" in text.strip() and not in_inline_context(el):
        put_placeholder(el, store, "code", fence(text, code_language(el)), block=True)
        return
    text = _WS.sub(" ", text).strip()
    ticks = "``" if "`" in text else "`"
    pad = " " if ticks == "``" else ""
    put_placeholder(el, store, "code", f"{ticks}{pad}{text}{pad}{ticks}", block=False)


def _outermost(root, predicate) -> list:
    """Elements matching ``predicate`` that are not inside another match, in document order."""
    _, etree = _lxml()
    found = []
    walker = etree.iterwalk(root, events=("start",))
    for _, el in walker:
        if isinstance(el.tag, str) and predicate(el):
            found.append(el)
            walker.skip_subtree()
    return found


def remove_gutters(el) -> None:
    """Remove line-number gutters and copy buttons (:data:`GUTTER_TOKENS`) under ``el``.

    Never a ``<pre>``/``<code>`` itself: Prism marks numbered blocks ``<pre class="line-numbers">``.
    """
    gutter = frozenset(GUTTER_TOKENS)
    doomed = [d for d in el.iterdescendants() if isinstance(d.tag, str) and d.tag not in ("pre", "code")
              and (d.tag == "button" or gutter.intersection(class_tokens(d)))]
    for d in doomed:
        if d.getparent() is not None:
            d.drop_tree()


def code_text(el) -> str:
    """The text of a code block as written: newlines from ``<br>`` and per-line ``<div>``s, nbsp as space."""
    _, etree = _lxml()
    parts: list[str] = []
    for event, node in etree.iterwalk(el, events=("start", "end")):
        if not isinstance(node.tag, str):
            continue
        if event == "start":
            if node.tag == "br":
                parts.append("\n")
            parts.append(node.text or "")
        else:
            if node.tag in ("div", "p", "li", "tr") and parts and not parts[-1].endswith("\n"):
                parts.append("\n")
            if node is not el:
                parts.append(node.tail or "")
    text = "".join(parts).replace("\xa0", " ").replace("\u200b", "").replace("\r\n", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def code_language(el) -> str:
    """The language named by a code block's classes/attributes, its ``<code>`` child's or its wrappers'.

    A bare language word (``sourceCode python``) counts only on the block and its
    ``<code>``; on wrappers only prefixed forms do (``<div class="content c">`` is not C).
    """
    own = [el, *[c for c in el.iter("code")][:1]]
    for node, bare in [*((n, True) for n in own), *((a, False) for a in list(el.iterancestors())[:5])]:
        language = _language_of(node, bare)
        if language is not None:
            return language
    return ""


def _language_of(node, bare: bool) -> str | None:
    for attr in ("data-lang", "data-language"):
        if node.get(attr):
            return _normal_language(node.get(attr))
    classes = node.get("class", "")
    m = re.search(r"brush:\s*([\w+#.-]+)", classes)
    if m:
        return _normal_language(m.group(1))
    for token in classes.split():
        low = token.lower()
        for prefix in ("language-", "lang-", "highlight-source-", "highlight-"):
            if low.startswith(prefix) and len(low) > len(prefix):
                return _normal_language(low[len(prefix):])
        if bare and low in KNOWN_LANGUAGES:
            return low
    return None


def _normal_language(name: str) -> str:
    name = name.strip().strip(";").lower()
    return "" if name in NO_LANGUAGE else name


def fence(text: str, language: str) -> str:
    """A fenced code block, with a fence longer than any backtick run inside."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"\n{ticks}{language}\n{text}\n{ticks}\n"


# -- 5. tables --------------------------------------------------------------------------------


def protect_tables(root, store: Placeholders) -> None:
    """Data tables -> Markdown placeholders; layout tables unwrapped. Innermost tables first."""
    for table in reversed(list(root.iter("table"))):
        if table.getparent() is None:
            continue
        rows = table_rows(table)
        if is_data_table(table, rows, store):
            markdown, used = markdown_table(table, rows, store)
            put_placeholder(table, store, "table", markdown, block=True, children=used)
        else:
            unwrap_table(table)


def table_rows(table) -> list[list]:
    """The rows of ``table`` as lists of its ``td``/``th`` cells (inner tables are already gone)."""
    return [[c for c in tr if c.tag in ("td", "th")] for tr in table.iter("tr")
            if any(c.tag in ("td", "th") for c in tr)]


def is_data_table(table, rows: list[list], store: Placeholders) -> bool:
    """Tag, size and content rules separating data tables from layout tables.

    Layout: ``role="presentation"``, one row or one column, a cell holding a heading,
    ``<pre>``, a multi-line item (a code block, an unwrapped layout table) or more
    than 400 characters of text.
    """
    if table.get("role", "").lower() in ("presentation", "none"):
        return False
    if len(rows) < 2 or max(len(r) for r in rows) < 2:
        return False
    if next(table.iter("pre", "h1", "h2", "h3", "h4", "h5", "h6", "form", "iframe"), None) is not None:
        return False
    texts = [plain_text(c) for row in rows for c in row]
    if any(len(t) > 400 for t in texts):
        return False
    return not any(store.is_multiline(int(i)) for t in texts for i in _PAIR_START.findall(t))


def markdown_table(table, rows: list[list], store: Placeholders) -> tuple[str, tuple[int, ...]]:
    """A GitHub-flavoured Markdown table (header row first, pipes escaped, caption above)."""
    used: list[int] = []
    grid = []
    for row in rows:
        cells = []
        for cell in row:
            text, inner = store.resolve(" ".join(render_text(cell).split("\n")))
            used.extend(inner)
            cells.append(text.replace("|", r"\|").strip())
            span = cell.get("colspan", "1")
            cells.extend([""] * (min(int(span), 50) - 1 if span.isdigit() and int(span) > 1 else 0))
        grid.append(cells)
    width = max(len(r) for r in grid)
    grid = [r + [""] * (width - len(r)) for r in grid]
    lines = ["| " + " | ".join(r) + " |" for r in grid]
    lines.insert(1, "|" + "|".join(["---"] * width) + "|")
    caption = table.find("caption")
    title = plain_text(caption) + "\n" if caption is not None and plain_text(caption) else ""
    return "\n" + title + "\n".join(lines) + "\n", tuple(used)


def unwrap_table(table) -> None:
    """Turn a layout table into nested ``<div>``s so its cells flow as blocks."""
    for el in list(table.iter()):
        if el.tag in ("col", "colgroup"):
            el.drop_tree()
        elif el.tag in ("table", "tbody", "thead", "tfoot", "tr", "td", "th", "caption"):
            el.tag = "div"
            for attr in ("class", "id"):  # the classes described the layout; trafilatura would judge them
                el.attrib.pop(attr, None)


# -- 6. forum posts ---------------------------------------------------------------------------


def protect_posts(root, store: Placeholders) -> None:
    """Forum posts (two or more on the page) -> ``**author** (date):`` + body placeholders."""
    posts = [el for el in root.iter() if isinstance(el.tag, str) and is_post_candidate(el)
             and post_author(el) is not None]
    if len(posts) < 2:
        return
    for post in reversed(posts):  # innermost (replies) first: they become part of their parent
        if post.getparent() is None:
            continue
        author_el = post_author(post)
        if author_el is None:
            continue
        put_post(post, author_el, store)


def is_post_candidate(el) -> bool:
    """Classed like a post (a class/id token naming a post and no part of one), not the page's article.

    Per token: ``comment`` and ``post-123`` name posts, ``comment-body`` and
    ``post-header`` name parts of one; WordPress's ``comment-author-emmy`` marker on a
    reply's ``<li class="comment ...">`` does not stop the ``comment`` token counting.
    """
    if el.tag in ("html", "body", "main", "a", "span", "time", "p", "ul", "ol", "form"):
        return False
    if not any(_names_post(token) for token in class_tokens(el)):
        return False
    return next(el.iter("h1"), None) is None


def _names_post(token: str) -> bool:
    words = {w for w in _WORD_SPLIT.split(token) if w}
    return bool(words.intersection(POST_PARTS)) and not words.intersection(POST_META_PARTS)


def post_author(post):
    """The innermost element naming the author (``class="username"``, ``itemprop=author``...), or None."""
    for el in post.iterdescendants():
        if isinstance(el.tag, str) and _is_author(el) and not any(_is_author(d) for d in el.iterdescendants()
                                                                   if isinstance(d.tag, str)):
            if 0 < len(plain_text(el)) <= 80:
                return el
    return None


def _is_author(el) -> bool:
    if el.get("itemprop") == "author" or el.get("rel") == "author":
        return True
    tokens = class_tokens(el)
    return bool(set(tokens) & set(AUTHOR_TOKENS)) or "author" in class_words(el)


def post_date(post):
    """The post's ``<time>`` (or date-classed element), or None."""
    time_el = next(post.iter("time"), None)
    if time_el is not None:
        return time_el
    for el in post.iterdescendants():
        if isinstance(el.tag, str) and class_words(el) & set(DATE_PARTS) and 0 < len(plain_text(el)) <= 80:
            return el
    return None


def put_post(post, author_el, store: Placeholders) -> None:
    """``**author** (date):`` then the post's own text (header, profile and signature parts left out)."""
    date_el = post_date(post)
    skip = {author_el, *post_meta(post)}
    date = ""
    if date_el is not None:
        skip.add(date_el)
        date = plain_text(date_el) or date_el.get("datetime", "")
    header = f"**{plain_text(author_el)}**" + (f" ({date})" if date else "") + ":"
    body, used = store.resolve(render_text(post, skip=skip))
    put_placeholder(post, store, "post", f"\n{header}\n{body.strip()}\n", block=True, children=used)


def post_meta(post) -> list:
    """Parts of a post that are not its body: header/meta/profile blocks holding author or date."""
    return [el for el in post.iterdescendants() if isinstance(el.tag, str)
            and class_words(el) & {"meta", "metadata", "header", "byline", "details", "info", "profile",
                                   "postprofile", "userinfo", "vcard", "says", "author"}
            and len(plain_text(el)) <= 200]


# -- rendering ---------------------------------------------------------------------------------


class _Lines:
    """Text lines being built from a DOM walk, with ``> `` prefixes inside blockquotes."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.current: list[str] = []
        self.quote = 0
        self.prefix = ""

    def write(self, text: str) -> None:
        if text:
            if not self.current:
                self.prefix = "> " * self.quote
            self.current.append(text)

    def newline(self) -> None:
        line = _WS.sub(" ", "".join(self.current)).strip()
        if line:
            self.lines.append(self.prefix + line)
        self.current = []


def render_text(el, skip: set | frozenset = frozenset()) -> str:
    """Our own text of a subtree: one line per block, ``- `` list items, ``> `` quotes.

    Used for forum posts, table cells and pages where trafilatura finds nothing.
    Iterative (lxml's walker), so deep trees do not recurse in Python.
    """
    _, etree = _lxml()
    out = _Lines()
    walker = etree.iterwalk(el, events=("start", "end"))
    for event, node in walker:
        tag = node.tag if isinstance(node.tag, str) else ""
        if event == "start":
            if node in skip:
                walker.skip_subtree()
                continue
            _open(tag, out)
            if tag:
                out.write(node.text or "")
        else:
            if node not in skip:
                _close(node, tag, out)
            if node is not el:
                out.write(node.tail or "")
    out.newline()
    return "\n".join(out.lines)


def _open(tag: str, out: _Lines) -> None:
    if tag in BLOCK_TAGS or tag == "br":
        out.newline()
    if tag == "blockquote":
        out.quote += 1
    elif tag == "li":
        out.write("- ")


def _close(node, tag: str, out: _Lines) -> None:
    if tag in BLOCK_TAGS:
        out.newline()
    if tag == "blockquote":
        out.quote -= 1
    elif tag in ("td", "th"):
        out.write(" ")
    elif tag == "cite" and node.getparent() is not None and node.getparent().tag == "blockquote":
        out.newline()  # "alice wrote:" heading a forum quote


def tidy_text(text: str) -> str:
    """Trailing spaces off, at most one blank line in a row (inside code fences nothing changes)."""
    out: list[str] = []
    fence_open = ""
    for line in text.split("\n"):
        if fence_open:
            out.append(line)
            if line.strip() == fence_open:
                fence_open = ""
            continue
        line = line.rstrip()
        m = _FENCE.match(line)
        if m:
            fence_open = m.group(1)
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()
