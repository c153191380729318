"""The mixture manifest: target fractions and a token budget turned into tokens and epochs per source.

Why: the Phi-4 report fixes its pretraining mixture as token fractions per source
and reports how often each source is repeated (§3.2, Table 5: web 1.2 epochs,
synthetic 13.8; epochs = fraction × total tokens / unique tokens; a 10T budget
reproduces every row). Curation changes the unique tokens of a source (filters,
dedup), so the epochs a mixture implies must be recomputed after it, and a source
repeated too often is a warning worth seeing before paying for training: the
report's own ablations (§3.1) show that repeating synthetic data has limits.

The curate stage writes ``curate/mixture.json`` with unique tokens estimated from
characters (the tokenizer is trained later); the pretrain stage reads it, recomputes
the same rows with exact token counts and warns again if a source passes the limit.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from phiforge.errors import ConfigError, DataError
from phiforge.train.mixture import MixtureRow, plan_mixture

FORMAT = "phiforge-mixture-manifest"
VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """Rows of the Table-5-style plan, the budget, the epoch limit and any warnings."""

    total_tokens: int
    max_epochs: float
    rows: list[dict]
    warnings: list[str] = field(default_factory=list)
    estimated: bool = False
    """True when unique tokens are estimated from characters (before tokenisation)."""

    def fractions(self) -> dict[str, float]:
        return {r["source"]: r["fraction"] for r in self.rows}


def build_manifest(weights: dict[str, float], unique_tokens: dict[str, int], total_tokens: int, *,
                   max_epochs: float, estimated: bool = False) -> Manifest:
    """Table 5 arithmetic for ``weights`` over ``unique_tokens`` with a ``total_tokens`` budget."""
    missing = sorted(set(weights) - set(unique_tokens))
    if missing:
        raise ConfigError(f"mixture: no token count for source(s) {missing}; sources with data: {sorted(unique_tokens)}")
    if max_epochs <= 0:
        raise ConfigError(f"mixture: max_epochs must be > 0, got {max_epochs}")
    rows = plan_mixture(weights, {k: max(1, int(v)) for k, v in unique_tokens.items() if k in weights}, total_tokens)
    return Manifest(total_tokens=int(total_tokens), max_epochs=float(max_epochs),
                    rows=[_row(r) for r in rows], warnings=epoch_warnings(rows, max_epochs), estimated=estimated)


def _row(r: MixtureRow) -> dict:
    return {**asdict(r), "epochs": round(r.epochs, 4)}


def epoch_warnings(rows: list[MixtureRow], max_epochs: float) -> list[str]:
    """One line per source repeated more than ``max_epochs`` times under the plan."""
    return [f"source '{r.source}' would be repeated {r.epochs:.1f} epochs (> {max_epochs:g}): {r.unique_tokens:,} "
            f"unique tokens for {r.planned_tokens:,} planned; lower its fraction, add data, or raise the limit"
            for r in rows if r.epochs > max_epochs]


def write_manifest(path: str | Path, manifest: Manifest) -> None:
    """Atomic write (temp file + rename): a crash never leaves half a manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, **asdict(manifest)}, indent=2) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{path}: mixture manifest not found; run the curate stage first") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not a JSON mixture manifest ({e})") from e
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise DataError(f"{path}: not a version-{VERSION} {FORMAT} (got {data.get('format')!r} "
                        f"v{data.get('version')!r}); rebuild it with this phiforge")
    fields = {k: data[k] for k in ("total_tokens", "max_epochs", "rows", "warnings", "estimated") if k in data}
    return Manifest(**fields)


def format_manifest(manifest: Manifest, title: str = "mixture") -> str:
    """The manifest as the same text table the trainer logs, plus its warnings."""
    from phiforge.train.mixture import format_mixture_table

    rows = [MixtureRow(r["source"], r["fraction"], r["unique_tokens"], r["planned_tokens"]) for r in manifest.rows]
    text = format_mixture_table(rows, title=title + (" (unique tokens estimated)" if manifest.estimated else ""))
    return text + "".join(f"\n  WARNING: {w}" for w in manifest.warnings)
