"""MathML -> LaTeX, for the HTML extractor (``curate/html.py``).

Why: the Phi-4 report (§2.3) names equations among the fragile content that naive
HTML-to-text corrupts; a ``<math>`` element flattened to its text gives ``x2+1`` for
``x^2+1``. Pages that carry the TeX source (a ``<annotation encoding="application/x-tex">``,
as KaTeX and Wikipedia emit) are read verbatim; the rest are converted here.

The converter covers presentation MathML as pages use it: tokens (``mi mn mo mtext ms
mspace``), layout (``mrow mstyle mpadded semantics mfenced menclose``), scripts
(``msup msub msubsup mover munder munderover mmultiscripts``), ``mfrac msqrt mroot``
and ``mtable``. Unknown elements contribute their children. Content MathML is not
handled (rare on the web). Trees deeper than ``MAX_DEPTH`` fall back to their text,
so a hostile page cannot exhaust the Python stack.
"""

from __future__ import annotations

import re

MAX_DEPTH = 200
TEX_ENCODINGS = ("application/x-tex", "application/x-latex", "tex", "latex", "text/x-tex")

# Unicode -> TeX for operators and identifiers pages commonly use (not exhaustive).
SYMBOLS = {
    "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "ε": r"\epsilon", "ϵ": r"\epsilon",
    "ζ": r"\zeta", "η": r"\eta", "θ": r"\theta", "ι": r"\iota", "κ": r"\kappa", "λ": r"\lambda",
    "μ": r"\mu", "ν": r"\nu", "ξ": r"\xi", "π": r"\pi", "ρ": r"\rho", "σ": r"\sigma", "τ": r"\tau",
    "υ": r"\upsilon", "φ": r"\phi", "ϕ": r"\phi", "χ": r"\chi", "ψ": r"\psi", "ω": r"\omega",
    "Γ": r"\Gamma", "Δ": r"\Delta", "Θ": r"\Theta", "Λ": r"\Lambda", "Ξ": r"\Xi", "Π": r"\Pi",
    "Σ": r"\Sigma", "Φ": r"\Phi", "Ψ": r"\Psi", "Ω": r"\Omega",
    "∑": r"\sum", "∏": r"\prod", "∫": r"\int", "∮": r"\oint", "∬": r"\iint", "⋃": r"\bigcup",
    "⋂": r"\bigcap", "±": r"\pm", "∓": r"\mp", "×": r"\times", "÷": r"\div", "⋅": r"\cdot",
    "·": r"\cdot", "∘": r"\circ", "∗": "*", "−": "-", "≤": r"\le", "≥": r"\ge", "≠": r"\neq",
    "≈": r"\approx", "≡": r"\equiv", "∼": r"\sim", "≃": r"\simeq", "≅": r"\cong", "∝": r"\propto",
    "<": "<", ">": ">", "≪": r"\ll", "≫": r"\gg", "∈": r"\in", "∉": r"\notin", "∋": r"\ni",
    "⊂": r"\subset", "⊃": r"\supset", "⊆": r"\subseteq", "⊇": r"\supseteq", "∪": r"\cup",
    "∩": r"\cap", "∅": r"\emptyset", "∞": r"\infty", "∂": r"\partial", "∇": r"\nabla",
    "∀": r"\forall", "∃": r"\exists", "¬": r"\neg", "∧": r"\wedge", "∨": r"\vee", "⊕": r"\oplus",
    "⊗": r"\otimes", "→": r"\to", "←": r"\leftarrow", "↔": r"\leftrightarrow", "⇒": r"\Rightarrow",
    "⇐": r"\Leftarrow", "⇔": r"\Leftrightarrow", "↦": r"\mapsto", "…": r"\ldots", "⋯": r"\cdots",
    "⋮": r"\vdots", "⋱": r"\ddots", "′": "'", "″": "''", "°": r"^\circ", "ℝ": r"\mathbb{R}",
    "ℕ": r"\mathbb{N}", "ℤ": r"\mathbb{Z}", "ℚ": r"\mathbb{Q}", "ℂ": r"\mathbb{C}", "ℓ": r"\ell",
    "ℏ": r"\hbar", "⟨": r"\langle", "⟩": r"\rangle", "⌊": r"\lfloor", "⌋": r"\rfloor",
    "⌈": r"\lceil", "⌉": r"\rceil", "∣": r"\mid", "‖": r"\|", "{": r"\{", "}": r"\}",
    "%": r"\%", "#": r"\#", "&": r"\&", "\u2061": "", "\u2062": "", "\u2063": ",", "\u2064": "+",
}
FUNCTIONS = frozenset("sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp "
                      "lim liminf limsup max min sup inf det dim ker gcd deg arg Pr hom mod".split())
LARGE_OPS = frozenset({r"\sum", r"\prod", r"\int", r"\oint", r"\iint", r"\bigcup", r"\bigcap", r"\lim",
                       r"\max", r"\min", r"\sup", r"\inf", r"\liminf", r"\limsup"})
ACCENTS_OVER = {"¯": r"\overline", "‾": r"\overline", "^": r"\hat", "ˆ": r"\hat", "~": r"\tilde",
                "˜": r"\tilde", "→": r"\vec", "⃗": r"\vec", "˙": r"\dot", "¨": r"\ddot", "⏞": r"\overbrace",
                "︷": r"\overbrace"}
ACCENTS_UNDER = {"_": r"\underline", "̲": r"\underline", "¯": r"\underline", "⏟": r"\underbrace",
                 "︸": r"\underbrace"}
_COMMAND_END = re.compile(r"\\[A-Za-z]+$")
_DISPLAYSTYLE = re.compile(r"^\{\\(?:displaystyle|textstyle)\s*(.*)\}$", re.DOTALL)


def local_name(el) -> str:
    """``m:mfrac`` / ``{ns}mfrac`` -> ``mfrac`` (pages use both prefixed and namespaced MathML)."""
    tag = el.tag if isinstance(el.tag, str) else ""
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1].lower()


def mathml_to_latex(math) -> str:
    """LaTeX for a ``<math>`` element: its TeX annotation when present, else converted."""
    tex = tex_annotation(math)
    if tex is not None:
        return strip_displaystyle(tex)
    return _convert(math, 0).strip()


def tex_annotation(math) -> str | None:
    """The ``<annotation encoding="application/x-tex">`` text (KaTeX, Wikipedia), or None."""
    for el in math.iter():
        if local_name(el) == "annotation" and el.get("encoding", "").lower() in TEX_ENCODINGS:
            text = (el.text or "").strip()
            if text:
                return text
    return None


def strip_displaystyle(tex: str) -> str:
    """``{\\displaystyle x^{2}}`` (Wikipedia's wrapper) -> ``x^{2}``."""
    m = _DISPLAYSTYLE.match(tex.strip())
    return m.group(1).strip() if m else tex.strip()


def is_display(math) -> bool:
    """A ``<math display="block">`` (or mode="display", MathML 1) is display math."""
    return math.get("display", "").lower() == "block" or math.get("mode", "").lower() == "display"


def _convert(el, depth: int) -> str:
    if depth > MAX_DEPTH:
        return " ".join(el.itertext())
    name = local_name(el)
    handler = _HANDLERS.get(name)
    if handler is not None:
        return handler(el, depth + 1)
    if name in ("annotation", "annotation-xml", "none", "mprescripts", "mphantom"):
        return ""
    return _join(_convert(c, depth + 1) for c in _children(el))


def _children(el) -> list:
    return [c for c in el if isinstance(c.tag, str)]


def _join(parts) -> str:
    """Concatenate, adding a space where a command would swallow the next letter (``\\alpha x``)."""
    out = ""
    for part in parts:
        if not part:
            continue
        if part[0].isalpha() and _COMMAND_END.search(out[-32:]):
            out += " "
        out += part
    return out


def _group(tex: str) -> str:
    """A script base: braces unless one character, one command or already bracketed (``(a+b)``)."""
    tex = tex.strip()
    if len(tex) == 1 or re.fullmatch(r"\\[A-Za-z]+", tex) or _bracketed(tex):
        return tex
    return "{" + tex + "}"


def _script(tex: str) -> str:
    """A sub/superscript, always braced (``x^{2}``, as Wikipedia and KaTeX annotations write it)."""
    return "{" + tex.strip() + "}"


def _bracketed(tex: str) -> bool:
    """``(...)``/``[...]`` whose first bracket closes at the very end."""
    pairs = {"(": ")", "[": "]"}
    if len(tex) < 2 or tex[0] not in pairs or tex[-1] != pairs[tex[0]]:
        return False
    depth = 0
    for i, ch in enumerate(tex):
        depth += (ch == tex[0]) - (ch == tex[-1])
        if depth == 0 and i < len(tex) - 1:
            return False
    return True


def _args(el, depth: int, n: int) -> list[str]:
    kids = [_convert(c, depth) for c in _children(el)]
    return (kids + [""] * n)[:n]


def _token_text(el) -> str:
    return re.sub(r"\s+", " ", "".join(el.itertext())).strip()


def _mi(el, depth: int) -> str:
    text = _token_text(el)
    if text in FUNCTIONS:
        return "\\" + text
    if len(text) > 1 and text.isalpha():
        return r"\mathrm{" + text + "}"
    if el.get("mathvariant") == "normal" and text.isalpha():
        return r"\mathrm{" + text + "}"
    return _symbols(text)


def _symbols(text: str) -> str:
    return _join(SYMBOLS.get(ch, ch) for ch in text)


def _mo(el, depth: int) -> str:
    text = _token_text(el)
    if text in FUNCTIONS:
        return "\\" + text
    return _symbols(text)


def _mtext(el, depth: int) -> str:
    text = _token_text(el)
    return r"\text{" + text + "}" if text else " "


def _mfrac(el, depth: int) -> str:
    num, den = _args(el, depth, 2)
    if el.get("linethickness") in ("0", "0pt", "0px"):
        return r"\binom{" + num + "}{" + den + "}"
    return r"\frac{" + num + "}{" + den + "}"


def _msqrt(el, depth: int) -> str:
    return r"\sqrt{" + _join(_convert(c, depth) for c in _children(el)) + "}"


def _mroot(el, depth: int) -> str:
    base, index = _args(el, depth, 2)
    return r"\sqrt[" + index + "]{" + base + "}"


def _msup(el, depth: int) -> str:
    base, sup = _args(el, depth, 2)
    return _group(base) + "^" + _script(sup)


def _msub(el, depth: int) -> str:
    base, sub = _args(el, depth, 2)
    return _group(base) + "_" + _script(sub)


def _msubsup(el, depth: int) -> str:
    base, sub, sup = _args(el, depth, 3)
    return _group(base) + "_" + _script(sub) + "^" + _script(sup)


def _mover(el, depth: int) -> str:
    return _decorated(el, depth, ACCENTS_OVER, "^", r"\overset")


def _munder(el, depth: int) -> str:
    return _decorated(el, depth, ACCENTS_UNDER, "_", r"\underset")


def _decorated(el, depth: int, accents: dict, script: str, stacked: str) -> str:
    """``<mover>``/``<munder>``: an accent command, a limit on a large operator, or a stacked symbol."""
    base, mark = _args(el, depth, 2)
    raw = _token_text(_children(el)[1]) if len(_children(el)) > 1 else ""
    if raw in accents:
        return accents[raw] + "{" + base + "}"
    if base.strip() in LARGE_OPS:
        return base + script + _script(mark)
    return stacked + "{" + mark + "}{" + base + "}"


def _munderover(el, depth: int) -> str:
    base, under, over = _args(el, depth, 3)
    if base.strip() in LARGE_OPS:
        return base + "_" + _script(under) + "^" + _script(over)
    return r"\overset{" + over + r"}{\underset{" + under + "}{" + base + "}}"


def _mmultiscripts(el, depth: int) -> str:
    """Post-scripts only (``base_{a}^{b}``); prescripts are rare and dropped."""
    kids = _children(el)
    base = _convert(kids[0], depth) if kids else ""
    out = _group(base)
    post = []
    for kid in kids[1:]:
        if local_name(kid) == "mprescripts":
            break
        post.append(_convert(kid, depth))
    for sub, sup in zip(post[0::2], post[1::2]):
        out += ("_" + _script(sub) if sub else "") + ("^" + _script(sup) if sup else "")
    return out


def _mfenced(el, depth: int) -> str:
    open_, close = el.get("open", "("), el.get("close", ")")
    seps = (el.get("separators", ",") or "").replace(" ", "")
    parts = [_convert(c, depth) for c in _children(el)]
    out = ""
    for i, part in enumerate(parts):
        if i:
            out += seps[min(i - 1, len(seps) - 1)] if seps else ""
        out += part
    return _symbols(open_) + out + _symbols(close)


def _mtable(el, depth: int) -> str:
    rows = []
    for row in _children(el):
        if local_name(row) not in ("mtr", "mlabeledtr"):
            continue
        cells = [c for c in _children(row) if local_name(c) == "mtd"]
        if local_name(row) == "mlabeledtr":
            cells = cells[1:]
        rows.append(" & ".join(_join(_convert(k, depth) for k in _children(c)) for c in cells))
    return r"\begin{matrix}" + r" \\ ".join(rows) + r"\end{matrix}"


def _semantics(el, depth: int) -> str:
    kids = _children(el)
    return _convert(kids[0], depth) if kids else ""


def _mspace(el, depth: int) -> str:
    return " "


def _menclose(el, depth: int) -> str:
    inner = _join(_convert(c, depth) for c in _children(el))
    return r"\boxed{" + inner + "}" if "box" in el.get("notation", "") else inner


_HANDLERS = {
    "mi": _mi, "mn": lambda el, d: _token_text(el), "mo": _mo, "mtext": _mtext,
    "ms": lambda el, d: r'\text{"' + _token_text(el) + '"}', "mspace": _mspace,
    "mfrac": _mfrac, "msqrt": _msqrt, "mroot": _mroot, "msup": _msup, "msub": _msub,
    "msubsup": _msubsup, "mover": _mover, "munder": _munder, "munderover": _munderover,
    "mmultiscripts": _mmultiscripts, "mfenced": _mfenced, "mtable": _mtable,
    "semantics": _semantics, "menclose": _menclose,
}
