"""``[[eval.tasks]]`` in a recipe: registry tasks on every checkpoint, the contamination split, the report page."""

from __future__ import annotations

import json
from pathlib import Path

from phiforge.recipe import load_recipe
from phiforge.run import pipeline

ROOT = Path(__file__).resolve().parents[2]
TASKS = ('eval.tasks=[{task="tinymath_mc", path="data:eval"}, '
         '{task="tinymath", name="tinymath_t05", path="data:eval", repeats=2, temperature=0.5, models=["midtrain"]}]')


def test_tasks_per_checkpoint_with_contamination_split(fast_overrides):
    overrides = fast_overrides + [TASKS, "eval.contamination=true", "eval.bootstrap=200"]
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", overrides)
    run_dir = pipeline.run_pipeline(recipe, log=lambda m: None, only=None)
    # Leak one eval problem into the training data, then re-evaluate: it must be flagged and split out.
    leaked = json.loads((run_dir / "data" / "eval.jsonl").read_text().splitlines()[0])
    with (run_dir / "data" / "train" / "web.jsonl").open("a") as f:
        f.write(json.dumps({"id": "leak", "text": f"Problem: {leaked['question']}\nAnswer: {leaked['answer']}"}) + "\n")
    pipeline.run_pipeline(recipe, log=lambda m: None, start="eval")

    stats = json.loads((run_dir / "eval" / "stats.json").read_text())
    assert set(stats["tasks"]) == {"pretrain", "midtrain"}
    assert set(stats["tasks"]["pretrain"]) == {"tinymath_mc"}
    assert set(stats["tasks"]["midtrain"]) == {"tinymath_mc", "tinymath_t05"}
    mc = stats["tasks"]["midtrain"]["tinymath_mc"]
    assert mc["n_items"] == 16 and mc["n_samples"] == 16 and 0.0 <= mc["score"] <= 1.0
    t05 = stats["tasks"]["midtrain"]["tinymath_t05"]
    assert t05["n_samples"] == 32 and t05["temperature"] == 0.5
    rows = (run_dir / "eval" / "tasks" / "midtrain" / "tinymath_t05" / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 32
    assert stats["contamination"]["tinymath_mc"]["contaminated"] >= 1
    split = mc["by_contamination"]
    assert split["contaminated"]["n_items"] >= 1
    assert split["clean"]["n_items"] + split["partial"]["n_items"] + split["contaminated"]["n_items"] == 16
    flagged = {r["item_id"] for r in map(json.loads, (run_dir / "eval" / "tasks" / "midtrain" / "tinymath_mc"
                                                      / "samples.jsonl").read_text().splitlines())}
    assert leaked["id"] in flagged or str(0) in flagged

    html = (run_dir / "report.html").read_text()
    assert "Benchmarks (Table 1 layout)" in html and "Scores by contamination" in html
    assert "tinymath_t05 (accuracy)" in html
