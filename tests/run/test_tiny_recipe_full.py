"""The full tiny recipe (the main job) learns: slow, run in CI with `make test-slow`."""

import json
from pathlib import Path

import pytest

from phiforge.recipe import load_recipe
from phiforge.run import pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_full_tiny_recipe_beats_trivial_baselines(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", [f"run.out_dir={tmp_path}"])
    run_dir = pipeline.run_pipeline(recipe, log=print)
    ev = json.loads((run_dir / "eval" / "stats.json").read_text())
    trivial = max(ev["baselines"].values())
    # Measured 43% / 53% (42% / 59% with the synth stage) against a 5% trivial baseline; thresholds leave room for
    # floating-point differences between machines.
    assert ev["models"]["pretrain"]["accuracy"] >= max(0.25, 4 * trivial)
    assert ev["models"]["midtrain"]["accuracy"] >= max(0.25, 4 * trivial)
    run = json.loads((run_dir / "run.json").read_text())
    assert all(s["status"] == "done" for s in run["stages"].values())
    # The synth stage ran on the bundled teacher and accounted for every seed.
    synth = json.loads((run_dir / "synth" / "stats.json").read_text())["pipelines"]
    assert synth["web_rewrite"]["seeds"] == 64 and synth["plurality"]["seeds"] == 12
    assert "Synthetic data" in (run_dir / "report.html").read_text()
    # Post-training (measured: SFT 84.3%, DPO round 1 86.7%, round 2 87.0%; PTS 116 pivots from 300 queries).
    models = ev["models"]
    assert models["sft"]["accuracy"] >= max(0.6, models["midtrain"]["accuracy"])
    assert models["dpo"]["accuracy"] >= models["sft"]["accuracy"] - 0.05  # a DPO round must not break the model
    assert models["dpo_judge"]["accuracy"] >= models["sft"]["accuracy"] - 0.05
    pts = json.loads((run_dir / "pts" / "stats.json").read_text())["search"]
    assert pts["pivots"] >= 20 and pts["pairs"] >= 20 and 0 < pts["queries_searched"] < pts["queries"]
    assert json.loads((run_dir / "dpo" / "stats.json").read_text())["pairs"]["train"] >= 20
    html = (run_dir / "report.html").read_text()
    assert "Post-training: accuracy by stage" in html and "Pivotal Token Search" in html
    # Curation (issue 7): every planted leak of an eval problem, foreign thread and junk page is caught.
    web = json.loads((run_dir / "curate" / "stats.json").read_text())["sources"]["web"]
    assert web["plants"]["leaked"] == {"decontaminate/contaminated_13gram": 12}
    assert "kept" not in web["plants"]["foreign"] and "kept" not in web["plants"]["junk"]
    # Registry benchmarks (issue 6) on every checkpoint, with the clean/contaminated split.
    assert set(ev["tasks"]) == {"pretrain", "midtrain", "sft", "dpo", "dpo_judge"}
    assert ev["tasks"]["sft"]["tinymath_t05"]["score"] >= 0.5
    assert ev["tasks"]["sft"]["tinymath_t05"]["by_contamination"]["clean"]["n_items"] > 0
    assert "Benchmarks (Table 1 layout)" in html and "Curation (organic data)" in html
