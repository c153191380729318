"""Prompt templates: files with id/version front matter, strict render, listed in stats."""

from __future__ import annotations

import pytest

from phiforge.dataflow import TemplateError, get_template, load_template, load_templates
from phiforge.dataflow.templates import builtin_template_dir, parse_template

GOOD = "---\nid: ask\nversion: 2\ndescription: asks\n---\nQ: {question} ({{literal}})\n"


def test_builtin_template_ships_and_renders():
    t = get_template("rewrite_as_exercise")
    assert t.key == "rewrite_as_exercise@1" and t.placeholders == {"passage", "difficulty"}
    assert "2 + 2" in t.render(passage="2 + 2", difficulty="easy")
    assert str(builtin_template_dir()) in t.path


def test_render_names_missing_and_unknown_variables():
    t = parse_template(GOOD, "ask.txt")
    assert t.render(question="why?") == "Q: why? ({literal})\n"
    with pytest.raises(TemplateError, match=r"template ask@2 \(ask.txt\): missing value for question"):
        t.render()
    with pytest.raises(TemplateError, match="unknown variable answer"):
        t.render(question="q", answer="a")


@pytest.mark.parametrize("text, fragment", [
    ("id: x\n", ":1: a template starts with"),
    ("---\nid: x\nversion: 1\ndescription: d\n", "not closed"),
    ("---\nid: x\nversion: 1\n---\nbody", "lacks description"),
    ("---\nid: X-1\nversion: 1\ndescription: d\n---\n", "snake_case"),
    ("---\nid: x\nversion: v1\ndescription: d\n---\n", "positive integer"),
    ("---\nid: x\nauthor: me\n---\n", ":3: expected 'key: value'"),
    ("---\nid: x\nversion: 1\ndescription: d\n---\n{a.b}", "plain {name}"),
    ("---\nid: x\nversion: 1\ndescription: d\n---\n{a", "bad braces"),
])
def test_malformed_templates_fail_with_location(text, fragment):
    with pytest.raises(TemplateError, match=None) as e:
        parse_template(text, "t.txt")
    assert fragment in str(e.value) and "t.txt" in str(e.value)


def test_versions_and_duplicates(tmp_path):
    (tmp_path / "a.txt").write_text(GOOD)
    (tmp_path / "b.txt").write_text(GOOD.replace("version: 2", "version: 3"))
    assert get_template("ask", folder=tmp_path).version == 3
    assert get_template("ask", 2, folder=tmp_path).version == 2
    assert load_template(tmp_path / "a.txt").sha256 != load_template(tmp_path / "b.txt").sha256
    with pytest.raises(TemplateError, match="known: "):
        get_template("nope", folder=tmp_path)
    (tmp_path / "c.txt").write_text(GOOD)
    with pytest.raises(TemplateError, match="ask@2 is also defined"):
        load_templates(tmp_path)
