"""Load a recipe file, apply ``key=value`` overrides, validate, and explain errors.

Overrides use one syntax, ``section.key=value``, where the value is read as a TOML
value (``3e-4``, ``true``, ``"text"``, ``[1, 2]``, ``{a = 0.5}``) and falls back to a
plain string. Validation errors name the dotted key, the bad value and what is
allowed, e.g. ``pretrain.lr: got 'fast' — input should be a valid number``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from phiforge.errors import ConfigError
from phiforge.recipe.schema import Recipe


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read ``path`` (TOML), apply ``overrides`` and return the validated ``Recipe``."""
    raw = _read_toml(Path(path)) if path is not None else {}
    for key, value in parse_overrides(overrides or []):
        _set_dotted(raw, key, value)
    return validate_recipe(raw, source=str(path) if path else "<defaults>")


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found; pass a path such as recipes/tiny.toml")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["pretrain.lr=1e-3"]`` → ``[("pretrain.lr", 0.001)]``."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. pretrain.max_steps=100")
        out.append((key.strip(), _parse_value(text.strip())))
    return out


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set ``a.b.c``; a number indexes into a list of tables (``synth.pipelines.0.max_records``)."""
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, key, ".".join(parts[:i + 1]))
    if isinstance(node, list):
        raise ConfigError(f"override {key}: '{'.'.join(parts[:-1])}' is a list; give an index, then a key")
    node[parts[-1]] = value


def _child(node: Any, part: str, key: str, where: str) -> Any:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"override {key}: '{where}' is not an index of a list with {len(node)} entries")
        child = node[int(part)]
    else:
        child = node.setdefault(part, {})
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"override {key}: '{where}' is a value, not a section")
    return child


def validate_recipe(raw: dict, source: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        lines = [format_error(err) for err in e.errors()]
        raise ConfigError(f"{source}: invalid recipe\n  " + "\n  ".join(lines)) from None


def format_error(err: dict) -> str:
    """One line per problem: dotted key, what was given, what is allowed."""
    loc = [str(p) for p in err["loc"]]
    key = dotted(err["loc"]) or "(recipe)"
    if err["type"] == "extra_forbidden":
        allowed = allowed_keys(loc[:-1])
        return f"{key}: unknown key; allowed keys here: {', '.join(allowed)}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    return f"{key}: got {_short(err.get('input'))} — {msg[0].lower() + msg[1:]}"


def dotted(loc) -> str:
    """``("data", "sources", 0, "name")`` → ``data.sources[0].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def allowed_keys(loc: list[str]) -> list[str]:
    """The field names of the section at ``loc`` (for 'unknown key' messages)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif part.isdigit():
            continue
        else:
            inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            if not inner:
                break
            model = inner[0]
    return sorted(model.model_fields)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolved_dict(recipe: Recipe) -> dict:
    """The fully resolved recipe (defaults filled in) as plain data."""
    return recipe.model_dump(mode="json")
