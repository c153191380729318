"""Prompt templates: versioned text files, validated on render, listed in stage stats.

The Phi-4 synthetic data comes from "multi-stage prompting procedures" over ~50
dataset types (report §2.2, App. D); which prompt produced a record decides its
quality, so prompts live in files (not f-strings in code), carry an id and a
version, and every stage reports the templates it used as ``id@version`` plus a
content hash (an edited file without a version bump still shows up).

A template file (``src/phiforge/synth/templates/*.txt`` ships with the package)::

    ---
    id: rewrite_as_exercise
    version: 1
    description: Turn a passage into an exercise with a worked solution.
    ---
    Rewrite the passage below as an exercise ...
    {passage}

The body uses ``{name}`` placeholders (``{{`` / ``}}`` for literal braces).
``render(**values)`` fails with the template and variable named if a value is
missing or not a placeholder of the template.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from phiforge.errors import PhiforgeError

_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_HEADER_KEYS = ("id", "version", "description")
TEMPLATE_SUFFIX = ".txt"


class TemplateError(PhiforgeError):
    """A template file is malformed, or a render got missing/unknown variables."""


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """One prompt template; ``key`` (``id@version``) and ``sha256`` identify it in stats."""

    id: str
    version: int
    description: str
    body: str
    placeholders: frozenset[str]
    sha256: str
    path: str = ""

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    def render(self, **values: object) -> str:
        """The prompt with every placeholder filled; all of them, and only them, must be given."""
        missing = sorted(self.placeholders - values.keys())
        unknown = sorted(values.keys() - self.placeholders)
        if missing or unknown:
            raise TemplateError(f"template {self.key} ({self.path or 'in memory'}): "
                                + "; ".join(filter(None, [
                                    missing and f"missing value for {', '.join(missing)}",
                                    unknown and f"unknown variable {', '.join(unknown)} "
                                    f"(placeholders are {sorted(self.placeholders)})"])))
        return self.body.format(**values)

    def describe(self) -> dict:
        """What stage stats record about this template."""
        return {"id": self.id, "version": self.version, "sha256": self.sha256[:16],
                "description": self.description}


def parse_template(text: str, path: str = "<string>") -> PromptTemplate:
    """Parse a template file's text (front matter + body); errors name ``path:line``."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise TemplateError(f"{path}:1: a template starts with a '---' line, then id/version/description, then '---'")
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        raise TemplateError(f"{path}: front matter is not closed; add a '---' line after the header")
    header = _parse_header(lines[1:end], path)
    body = "".join(lines[end + 1:])
    return PromptTemplate(id=header["id"], version=header["version"], description=header["description"],
                          body=body, placeholders=_placeholders(body, path, end + 2),
                          sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), path=path)


def _parse_header(lines: list[str], path: str) -> dict:
    header: dict = {}
    for lineno, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or key not in _HEADER_KEYS:
            raise TemplateError(f"{path}:{lineno}: expected 'key: value' with key in {list(_HEADER_KEYS)}, got {line.strip()!r}")
        header[key] = value
    missing = [k for k in _HEADER_KEYS if not header.get(k)]
    if missing:
        raise TemplateError(f"{path}: front matter lacks {', '.join(missing)}")
    if not _ID.match(header["id"]):
        raise TemplateError(f"{path}: id {header['id']!r} must be snake_case (a-z, 0-9, _)")
    if not header["version"].isdigit() or int(header["version"]) < 1:
        raise TemplateError(f"{path}: version {header['version']!r} must be a positive integer")
    header["version"] = int(header["version"])
    return header


def _placeholders(body: str, path: str, first_line: int) -> frozenset[str]:
    try:
        parsed = list(string.Formatter().parse(body))
    except ValueError as e:
        raise TemplateError(f"{path}: bad braces in body ({e}); write literal braces as '{{{{' and '}}}}'") from e
    names = set()
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise TemplateError(f"{path}: placeholder {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} "
                                f"(body starts at line {first_line}) must be a plain {{name}}")
        names.add(name)
    return frozenset(names)


def load_template(path: str | Path) -> PromptTemplate:
    """Load one template file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TemplateError(f"{path}: cannot read template ({e.strerror})") from e
    return parse_template(text, str(path))


def builtin_template_dir() -> Path:
    """The templates shipped in the package (``phiforge/synth/templates``)."""
    return Path(str(resources.files("phiforge"))) / "synth" / "templates"


def load_templates(folder: str | Path | None = None) -> dict[str, PromptTemplate]:
    """Every ``*.txt`` template of ``folder`` (default: the built-in ones), keyed ``id@version``."""
    folder = Path(folder) if folder is not None else builtin_template_dir()
    found: dict[str, PromptTemplate] = {}
    for path in sorted(folder.glob("*" + TEMPLATE_SUFFIX)):
        t = load_template(path)
        if t.key in found:
            raise TemplateError(f"{path}: {t.key} is also defined in {found[t.key].path}; bump the version")
        found[t.key] = t
    return found


def get_template(template_id: str, version: int | None = None,
                 folder: str | Path | None = None) -> PromptTemplate:
    """The template ``template_id`` at ``version`` (default: its highest version)."""
    templates = load_templates(folder)
    matches = [t for t in templates.values() if t.id == template_id and version in (None, t.version)]
    if not matches:
        known = sorted(templates)
        raise TemplateError(f"no template {template_id}{'@' + str(version) if version else ''} in "
                            f"{folder or builtin_template_dir()}; known: {known}")
    return max(matches, key=lambda t: t.version)
