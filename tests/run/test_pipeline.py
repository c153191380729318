"""The shortened tiny recipe end to end, plus skip / resume / change-detection rules."""

import json
from pathlib import Path

import pytest

from phiforge.errors import StageError
from phiforge.recipe import load_recipe
from phiforge.run import pipeline
from phiforge.run.rundir import MARKER

ROOT = Path(__file__).resolve().parents[2]


def _run(overrides, **kw):
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", overrides)
    logs = []
    run_dir = pipeline.run_pipeline(recipe, log=logs.append, **kw)
    return run_dir, logs


def test_shortened_tiny_run_end_to_end(fast_overrides, small_synth):
    fast_overrides = fast_overrides + small_synth  # every stage, the synth one on the real bundled teacher
    run_dir, logs = _run(fast_overrides)
    enabled = [s.name for s in pipeline.select(load_recipe(ROOT / "recipes" / "tiny.toml", fast_overrides), None, None)]
    assert {"data", "synth", "pretrain", "midtrain", "eval", "report"} <= set(enabled)
    for stage in enabled:
        assert (run_dir / stage / MARKER).is_file(), stage
        stats = json.loads((run_dir / stage / "stats.json").read_text())
        assert stats["stage"] == stage and stats["wall_s"] >= 0 and stats["peak_rss_mb"] > 0
    assert (run_dir / "report.html").stat().st_size > 1000
    assert json.loads((run_dir / "config.resolved.json").read_text())["pretrain"]["max_steps"] == 6
    assert (run_dir / "config.resolved.toml").is_file()
    for stage in ("pretrain", "midtrain"):
        model_dir = run_dir / stage / "model"
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in model_dir.iterdir()}
    mid_cfg = json.loads((run_dir / "midtrain" / "model" / "config.json").read_text())
    pre_cfg = json.loads((run_dir / "pretrain" / "model" / "config.json").read_text())
    want = load_recipe(ROOT / "recipes" / "tiny.toml").midtrain.rope_theta
    assert pre_cfg["rope_parameters"]["rope_theta"] == 10000.0 < want
    assert mid_cfg["rope_parameters"]["rope_theta"] == want and mid_cfg["max_position_embeddings"] >= 128
    ev = json.loads((run_dir / "eval" / "stats.json").read_text())
    assert set(ev["models"]) == {"pretrain", "midtrain"} and ev["n_items"] == 16
    assert 0.0 <= ev["models"]["midtrain"]["accuracy"] <= 1.0
    mix = json.loads((run_dir / "pretrain" / "mixture.json").read_text())
    assert {r["source"] for r in mix["rows"]} == {"textbook", "web"}
    assert any("mixture" in line and "tokens" in line for line in logs)

    # Rerun: everything finished is skipped (the report is always rebuilt).
    _, logs2 = _run(fast_overrides)
    assert sum("skipping" in line for line in logs2) == 6
    synth = json.loads((run_dir / "synth" / "stats.json").read_text())
    assert set(synth["pipelines"]) == {"web_rewrite", "plurality"} and synth["models"]["teacher"]["calls"] > 0

    # A changed key makes its stage out of date: a clear error, not a silent redo.
    with pytest.raises(StageError, match="pretrain.lr") as e:
        _run(fast_overrides + ["pretrain.lr=0.001"])
    assert "--from pretrain" in str(e.value)

    # --from reruns that stage and all later ones, nothing earlier.
    _, logs3 = _run(fast_overrides + ["pretrain.lr=0.001"], start="pretrain")
    assert any(line.startswith("[data] already finished") for line in logs3) is False  # not selected at all
    assert any(line.startswith("[pretrain] start") for line in logs3)
    assert any(line.startswith("[eval] start") for line in logs3)


def test_killed_stage_leaves_no_marker_and_rerun_redoes_it(fast_overrides, monkeypatch):
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", fast_overrides)
    boom = pipeline.Stage("tokenizer", ("tokenizer",), ("data",), _explode)
    stages = [boom if s.name == "tokenizer" else s for s in pipeline.STAGES]
    monkeypatch.setattr(pipeline, "STAGES", stages)
    with pytest.raises(RuntimeError):
        pipeline.run_pipeline(recipe, log=lambda m: None)
    run_dir = pipeline.run_dir_for(recipe)
    assert (run_dir / "data" / MARKER).is_file()
    assert not (run_dir / "tokenizer" / MARKER).exists()
    assert (run_dir / "tokenizer" / "half-written.bin").exists()
    assert json.loads((run_dir / "run.json").read_text())["stages"]["tokenizer"]["status"] == "failed"
    monkeypatch.undo()
    logs = []
    pipeline.run_pipeline(recipe, only="tokenizer", log=logs.append)
    assert not (run_dir / "tokenizer" / "half-written.bin").exists()
    assert (run_dir / "tokenizer" / MARKER).is_file()


def _explode(ctx):
    (ctx.stage_dir / "half-written.bin").write_bytes(b"partial")
    raise RuntimeError("killed half-way")


def test_training_stage_resumes_from_its_checkpoint(fast_overrides):
    overrides = fast_overrides + ["midtrain.enabled=false", "eval.enabled=false", "report.enabled=false"]
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", overrides)
    pipeline.run_pipeline(recipe, only="data", log=lambda m: None)
    pipeline.run_pipeline(recipe, only="tokenizer", log=lambda m: None)
    run_dir = pipeline.run_dir_for(recipe)
    # Simulate a crash after step 3 by running the stage with a trainer that stops early.
    from phiforge.train import trainer as trainer_mod
    original = trainer_mod.Trainer.__init__

    def stop_early(self, *a, **kw):
        original(self, *a, **kw)
        self.stop_after = 4

    trainer_mod.Trainer.__init__ = stop_early
    try:
        pipeline.run_pipeline(recipe, only="pretrain", log=lambda m: None)
    finally:
        trainer_mod.Trainer.__init__ = original
    (run_dir / "pretrain" / MARKER).unlink()  # as if it died before finishing
    logs = []
    pipeline.run_pipeline(recipe, log=logs.append)
    assert any("resumed from" in line and "step 3/6" in line for line in logs)
    assert (run_dir / "pretrain" / MARKER).is_file()


def test_only_needs_finished_inputs(fast_overrides):
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", fast_overrides)
    with pytest.raises(StageError, match="needs the output of stage 'tokenizer'"):
        pipeline.run_pipeline(recipe, only="pretrain", log=lambda m: None)
    with pytest.raises(StageError, match="unknown stage"):
        pipeline.run_pipeline(recipe, only="nonsense", log=lambda m: None)


def test_phi4_tokenizer_run_saves_phi4_ids(fast_overrides):
    overrides = fast_overrides + ["tokenizer.kind=phi4", "pretrain.max_steps=2", "midtrain.enabled=false",
                                  "eval.models=['pretrain']", "eval.max_items=2", "report.enabled=false"]
    run_dir, _ = _run(overrides)
    cfg = json.loads((run_dir / "pretrain" / "model" / "config.json").read_text())
    assert cfg["vocab_size"] == 100352 and cfg["eos_token_id"] == 100257 and cfg["pad_token_id"] == 100349
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(run_dir / "pretrain" / "model")
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|im_sep|>"]) == [100264, 100265, 100266]
