"""Model backends: one interface to local models and OpenAI-compatible servers.

Every later stage (synthetic data, judges, PTS rollouts, evaluation) talks to
models only through ``phiforge.backends.base.Backend``.
"""
