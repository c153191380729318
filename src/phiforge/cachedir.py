"""The one cache root for built artefacts (Phi-4 tokenizer, converted teacher model)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$PHIFORGE_CACHE``, by default ``~/.cache/phiforge``."""
    return Path(os.environ.get("PHIFORGE_CACHE") or Path.home() / ".cache" / "phiforge")
