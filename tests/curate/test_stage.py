"""The curate stage in a run: planted pages caught by the right filter, the curated source used downstream."""

from __future__ import annotations

import json
from pathlib import Path

from phiforge.recipe import load_recipe
from phiforge.report import build_report
from phiforge.run import pipeline

ROOT = Path(__file__).resolve().parents[2]
CURATE = ["curate.enabled=true", "data.tinymath.web_html=true", "curate.annotate_docs=12",
          'data.tinymath.web_plants={duplicate=0.05, near_duplicate=0.05, foreign=0.05, junk=0.05, empty=0.02, '
          'leaked=4}', "curate.workers=1"]


def test_curate_stage_catches_planted_pages(fast_overrides):
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", fast_overrides + CURATE)
    logs = []
    for stage in ("data", "curate", "tokenizer", "pretrain"):
        run_dir = pipeline.run_pipeline(recipe, log=logs.append, only=stage)
    stats = json.loads((run_dir / "curate" / "stats.json").read_text())
    web = stats["sources"]["web"]
    plants = web["plants"]
    assert plants["leaked"] == {"decontaminate/contaminated_13gram": 4}
    assert set(plants["foreign"]) == {"language_id/language_not_allowed"}
    assert "kept" not in plants["junk"] and "kept" not in plants["empty"]
    assert plants["none"]["kept"] >= 0.9 * 200
    # every planted duplicate is caught, or its original is (whichever came first is kept)
    dup_drops = sum(v for k, v in plants["duplicate"].items() if k.startswith("dedup/"))
    orig_drops = sum(v for k, v in plants["none"].items() if k.startswith("dedup/"))
    assert dup_drops + orig_drops >= 10
    assert [s["name"] for s in web["steps"]] == ["html_to_text", "corruption_filter", "language_id", "dedup",
                                                 "decontaminate", "quality_filter"]
    assert web["quality"]["annotated"] == 12
    curated = [json.loads(x) for x in (run_dir / "curate" / "train" / "web.jsonl").read_text().splitlines()]
    assert len(curated) == web["kept_docs"] and "<div" not in curated[0]["text"]
    manifest = json.loads((run_dir / "curate" / "mixture.json").read_text())
    assert {r["source"] for r in manifest["rows"]} == {"textbook", "web"}
    # the tokenizer encoded the curated web source, not the data stage's
    tok_stats = json.loads((run_dir / "tokenizer" / "stats.json").read_text())
    assert tok_stats["sources"]["train/web"]["docs"] == len(curated)
    # held-out pages are extracted the same way, and the tokenizer encodes them for validation loss
    valid = (run_dir / "curate" / "valid" / "web.jsonl").read_text().splitlines()
    assert len(valid) == tok_stats["sources"]["valid/web"]["docs"] and "<div" not in valid[0]
    # pretraining reads the manifest and redoes it with exact token counts
    assert any("curate's estimate -> exact: textbook" in line for line in logs)
    html = build_report(run_dir).read_text()
    assert "Curation (organic data)" in html and "Planted pages" in html and "Decontamination hits" in html


def test_curate_steps_on_a_ray_cluster_match_local(fast_overrides):
    """``run.executor = "ray"``: the per-document steps run as Ray tasks with the same result."""
    ray = __import__("pytest").importorskip("ray")
    import os

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    base = fast_overrides + CURATE + ['curate.steps=["html", "corruption", "langid"]']
    outputs = {}
    try:
        for executor in ("local", "ray"):
            recipe = load_recipe(ROOT / "recipes" / "tiny.toml", base + [f"run.executor={executor}",
                                                                          f"run.name={executor}"])
            for stage in ("data", "curate"):
                run_dir = pipeline.run_pipeline(recipe, log=lambda m: None, only=stage)
            outputs[executor] = (run_dir / "curate" / "train" / "web.jsonl").read_text()
        assert ray.is_initialized()  # the tasks really went through Ray
    finally:
        ray.shutdown()
    assert outputs["ray"] == outputs["local"] and outputs["local"].count("\n") > 100
