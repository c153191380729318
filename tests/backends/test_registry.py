"""Recipe wiring: [models.<role>] → a live Backend, usage in stats.json, servers stopped."""

from __future__ import annotations

import json

import pytest

from phiforge.backends.base import SamplingParams
from phiforge.backends.http import HTTPBackend, PROFILES
from phiforge.backends.local import LocalBackend
from phiforge.backends.registry import open_backend, request_cache_path
from phiforge.errors import ConfigError
from phiforge.recipe import load_recipe
from phiforge.recipe.schema import ModelRef, ModelsSection
from phiforge.run import pipeline
from phiforge.testing.http import ScriptedOpenAIServer


def test_defaults_are_the_bundled_teacher_for_every_role():
    models = ModelsSection()
    assert models.get("teacher") == ModelRef(backend="local", model="bundled")
    assert models.get("judge") is models.teacher
    with pytest.raises(ConfigError, match=r"no model named 'critic'.*\[models.critic\]"):
        models.get("critic")


@pytest.mark.parametrize("override, message", [
    (["models.teacher.backend=http"], "needs base_url"),
    (["models.teacher.base_url=http://x:1"], "only for backend = 'http'"),
    (["models.teacher.backend=http", "models.teacher.base_url=localhost:8000"], "must start with http"),
    (["models.teacher.backend=llamacpp", "models.teacher.model=stage:sft"], "needs backend = 'local'"),
    (["models.teacher.concurrency=0"], "models.teacher.concurrency"),
])
def test_bad_model_entries_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, override)


def test_others_cannot_shadow_roles():
    with pytest.raises(ValueError, match="may not reuse the role names"):
        ModelsSection(others={"judge": ModelRef()})


def test_http_entry_opens_an_http_backend_with_the_run_cache(tmp_path):
    with ScriptedOpenAIServer() as srv:
        ref = ModelRef(backend="http", base_url=srv.url, model="m", profile="vllm")
        with open_backend(ref, run_dir=tmp_path, role="judge") as be:
            assert isinstance(be, HTTPBackend) and be.profile == PROFILES["vllm"]
            be.sample(["q"], SamplingParams(max_tokens=2, seed=0))
        assert request_cache_path(tmp_path).is_file() and "judge" in be.name


def test_stage_model_entry_loads_the_runs_checkpoint(tmp_path):
    from phiforge.model.presets import build_config, build_model
    from phiforge.tokenize import train_bpe
    from phiforge.train.checkpoint import export_hf_model

    tok = train_bpe(["one two three four five six seven eight nine ten"] * 20, vocab_size=280)
    cfg = build_config("tiny", dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                    num_attention_heads=2, num_key_value_heads=1, vocab_size=288))
    export_hf_model(build_model(cfg, seed=0), tok, tmp_path / "sft" / "model")
    with open_backend(ModelRef(model="stage:sft", device="cpu", cache=False), run_dir=tmp_path) as be:
        assert isinstance(be, LocalBackend)
        out = be.sample(["one two"], SamplingParams(max_tokens=3, seed=0))
        assert len(out.completions[0][0].token_ids) >= 1
    # With the cache (default), a rerun of the same seeded prompts costs no model calls.
    params = SamplingParams(n=2, max_tokens=4, seed=3)
    with open_backend(ModelRef(model="stage:sft", device="cpu"), run_dir=tmp_path, role="policy") as be:
        first = be.sample(["one two", "three"], params)
        assert first.usage.calls == 2 and first.usage.cached_calls == 0
    with open_backend(ModelRef(model="stage:sft", device="cpu"), run_dir=tmp_path, role="policy") as be:
        again = be.sample(["three", "one two", "four"], params)
        assert again.usage.calls == 1 and again.usage.cached_calls == 2 and be.usage.cached_calls == 2
        assert again.completions[1] == first.completions[0] and again.completions[0] == first.completions[1]
        unseeded = be.sample(["one two"], SamplingParams(max_tokens=4))
        assert unseeded.usage.calls == 1 and unseeded.usage.cached_calls == 0
    with pytest.raises(ConfigError, match=r"run the 'midtrain' stage first"):
        with open_backend(ModelRef(model="stage:midtrain"), run_dir=tmp_path):
            pass


def test_stage_usage_goes_to_stats_json(tmp_path):
    """A stage that calls ctx.backend(...) gets per-role token and call counts in stats.json."""
    with ScriptedOpenAIServer() as srv:
        recipe = load_recipe(None, [f"run.out_dir={tmp_path}", "run.name=u", "models.teacher.backend=http",
                                    f"models.teacher.base_url={srv.url}", "models.teacher.profile=llama.cpp",
                                    "models.teacher.cache=false"])

        def run(ctx):
            ctx.backend("teacher").sample(["a", "b"], SamplingParams(n=2, max_tokens=2, seed=0))
            ctx.backend("judge").sample(["c"], SamplingParams(max_tokens=2, seed=0))
            return {"kept": 3}

        stage = pipeline.Stage("probe_stage", ("models",), (), run)
        run_dir = pipeline.run_dir_for(recipe)
        (run_dir / "probe_stage").mkdir(parents=True)
        pipeline._execute(recipe, run_dir, stage, "fp", log=lambda m: None)
    stats = json.loads((run_dir / "probe_stage" / "stats.json").read_text())
    assert stats["kept"] == 3
    # The judge defaults to the teacher: one shared backend, reported once.
    shared = stats["models"]["teacher+judge"]
    assert shared["calls"] == 5  # llama.cpp profile: n=2 → two requests per prompt
    assert shared["prompt_tokens"] == 15 and shared["completion_tokens"] == 5
    assert shared["backend"].startswith("teacher=http:")


def test_distinct_roles_get_their_own_backends_and_counts(tmp_path):
    with ScriptedOpenAIServer() as srv:
        common = [f"run.out_dir={tmp_path}", "run.name=v", "models.teacher.backend=http", "models.judge.backend=http",
                  f"models.teacher.base_url={srv.url}", f"models.judge.base_url={srv.url}",
                  "models.teacher.profile=vllm", "models.judge.profile=vllm", "models.judge.model=big"]
        recipe = load_recipe(None, common)

        def run(ctx):
            ctx.backend("teacher").sample(["a", "b"], SamplingParams(max_tokens=2, seed=0))
            ctx.backend("judge").sample(["c"], SamplingParams(max_tokens=2, seed=0))
            return {}

        run_dir = pipeline.run_dir_for(recipe)
        (run_dir / "s").mkdir(parents=True)
        pipeline._execute(recipe, run_dir, pipeline.Stage("s", ("models",), (), run), "fp", log=lambda m: None)
    models = json.loads((run_dir / "s" / "stats.json").read_text())["models"]
    assert models["teacher"]["calls"] == 2 and models["judge"]["calls"] == 1


def test_stage_servers_are_closed_even_when_the_stage_fails(tmp_path, monkeypatch):
    closed = []

    class FakeCM:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return type("B", (), {"usage": None, "name": "fake"})()

        def __exit__(self, *exc):
            closed.append(True)
            return False

    monkeypatch.setattr("phiforge.backends.registry.open_backend", FakeCM)
    recipe = load_recipe(None, [f"run.out_dir={tmp_path}", "run.name=f"])

    def run(ctx):
        ctx.backend("teacher")
        raise RuntimeError("boom")

    run_dir = pipeline.run_dir_for(recipe)
    (run_dir / "s").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="boom"):
        pipeline._execute(recipe, run_dir, pipeline.Stage("s", ("models",), (), run), "fp", log=lambda m: None)
    assert closed == [True]
