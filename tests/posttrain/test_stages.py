"""The post-training stages in a shortened tiny recipe: plumbing, files, resume and recipe errors.

The policy here is a few-step random-ish model, so PTS finds no pivots; the DPO
stage is fed a token-pair file written from the SFT data instead, which exercises
the real trainer path. Pivots on a trained policy are covered by the slow tiny-recipe test.
"""

import json
from pathlib import Path

import pytest

from phiforge.errors import ConfigError
from phiforge.recipe import load_recipe
from phiforge.run import pipeline
from phiforge.run.rundir import MARKER

ROOT = Path(__file__).resolve().parents[2]
POST = ["data.tinymath.sft_examples=48", "data.tinymath.posttrain_prompts=12",
        "sft.enabled=true", "sft.max_steps=3", "sft.micro_batch_size=4", "sft.valid_examples=4",
        "sft.eval_every=2", "sft.checkpoint_every=2",
        "pts.enabled=true", "pts.max_queries=4", "pts.chunk_size=2", "pts.search.max_tokens=6",
        "pts.search.max_rollouts=8", "pts.search.query_min_p=0.0", "pts.search.query_max_p=1.0",
        "eval.models=[\"midtrain\",\"sft\",\"dpo\"]"]


def _recipe(overrides):
    return load_recipe(ROOT / "recipes" / "tiny.toml", overrides)


def _pairs_file(path: Path, run_dir: Path) -> Path:
    """Token pairs made from the run's own tokenizer: chosen = the true answer's token, rejected = another."""
    from phiforge.tokenize.stage import load_run_tokenizer

    tok = load_run_tokenizer(run_dir / "tokenizer")
    rows = []
    for i in range(12):
        prompt = tok(f"Problem: Sam has {i} apples.\nSolution: Answer:", add_special_tokens=False)["input_ids"]
        good, bad = tok(f" {i}", add_special_tokens=False)["input_ids"], tok(f" {i + 1}", add_special_tokens=False)["input_ids"]
        rows.append({"id": f"p{i}", "kind": "test", "prompt_ids": prompt, "chosen_ids": good[:1], "rejected_ids": bad[:1]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_posttrain_stages_end_to_end(fast_overrides, tmp_path):
    base = fast_overrides + POST
    run_dir = pipeline.run_pipeline(_recipe(base), log=lambda m: None)
    for stage in ("sft", "pts"):
        assert (run_dir / stage / MARKER).is_file()
    assert {"config.json", "model.safetensors"} <= {p.name for p in (run_dir / "sft" / "model").iterdir()}
    sft = json.loads((run_dir / "sft" / "stats.json").read_text())
    assert sft["steps"] == 3 and sft["init"] == "midtrain" and sft["examples"] + sft["valid_examples"] == 48
    pts = json.loads((run_dir / "pts" / "stats.json").read_text())
    assert pts["search"]["queries"] == 4 and pts["search"]["completion_tokens"] > 0
    assert len(list((run_dir / "pts" / "chunks").glob("*.json"))) == 2
    queries = [json.loads(x) for x in (run_dir / "pts" / "queries.jsonl").read_text().splitlines()]
    assert [q["query_id"] for q in queries] == [f"prompt-{i:05d}" for i in range(4)]

    # DPO on a pair file (exact ids), then eval of every post-trained checkpoint in chat format.
    pairs = _pairs_file(tmp_path / "pairs.jsonl", run_dir)
    more = base + ["dpo.enabled=true", f"dpo.pairs=[\"{pairs}\"]", "dpo.max_steps=2", "dpo.micro_batch_size=4",
                   "dpo.eval_every=1", "dpo.checkpoint_every=1", "dpo.valid_fraction=0.2"]
    run_dir = pipeline.run_pipeline(_recipe(more), log=lambda m: None, start="dpo")
    dpo = json.loads((run_dir / "dpo" / "stats.json").read_text())
    assert dpo["init"] == "sft" and dpo["steps"] == 2 and dpo["pairs"]["train"] + dpo["pairs"]["valid"] == 12
    assert dpo["pair_kinds"] == {"test": 12} and dpo["valid_after"]["pairs"] == dpo["pairs"]["valid"]
    ev = json.loads((run_dir / "eval" / "stats.json").read_text())
    assert set(ev["models"]) == {"midtrain", "sft", "dpo"}
    assert ev["models"]["sft"]["prompt_format"] == "chat" and ev["models"]["midtrain"]["prompt_format"] == "textbook"
    html = (run_dir / "report.html").read_text()
    assert 'id="posttrain"' in html and 'id="pts"' in html and "DPO stage 1 (PTS)" in html


def test_pts_resumes_chunk_by_chunk(fast_overrides):
    base = fast_overrides + POST
    run_dir = pipeline.run_pipeline(_recipe(base), log=lambda m: None)
    chunk = run_dir / "pts" / "chunks" / "00001.json"
    first = json.loads(chunk.read_text())
    (run_dir / "pts" / MARKER).unlink()  # as if the stage crashed after its second chunk
    chunk.unlink()
    logs = []
    pipeline.run_pipeline(_recipe(base), log=logs.append, only="pts")
    assert any("chunk 1/2: already searched" in line for line in logs)
    assert json.loads(chunk.read_text())["pairs"] == first["pairs"]


@pytest.mark.parametrize("overrides, match", [
    (["pts.enabled=true"], "pts samples from the SFT model"),
    (["sft.enabled=true", "dpo.enabled=true"], "dpo.pairs names stage 'pts', which is disabled"),
    (["sft.enabled=true", "pts.enabled=true", "pts.search.p_gapp=0.3"], r"search.p_gapp: unknown key"),
    (["sft.enabled=true", "pts.enabled=true", "pts.search.p_gap=2"], r"search.p_gap"),
    (["sft.enabled=true", "judge.enabled=true", "judge.step.candidates=[\"teacher\"]"], "cannot make a pair"),
    (["sft.enabled=true", "data.generator=\"none\"",
      "data.sources=[{name=\"a\",paths=[\"x.jsonl\"],kind=\"long\"}]", "pretrain.mixture={a=1.0}"],
     "needs data.generator = 'tinymath'"),
])
def test_bad_posttrain_config_is_a_clear_error(overrides, match):
    base = ["synth.enabled=false", "sft.enabled=false", "pts.enabled=false", "dpo.enabled=false",
            "judge.enabled=false", "dpo_judge.enabled=false"]
    with pytest.raises(ConfigError, match=match):
        _recipe(base + overrides)


def test_sft_data_may_name_synth_pipelines_and_refusal_only_when_enabled():
    base = ["synth.enabled=false", "pts.enabled=false", "dpo.enabled=false", "judge.enabled=false",
            "dpo_judge.enabled=false", "sft.enabled=true"]
    with pytest.raises(ConfigError, match=r"sft.data names 'synth:best', but the enabled synth pipelines are \[\]"):
        _recipe(base + ["sft.data=[\"synth:best\"]"])
    with pytest.raises(ConfigError, match="refusal.enabled is false"):
        _recipe(base + ["sft.data=[\"refusal\"]"])
    ok = _recipe(base[1:] + ["synth.enabled=true", "sft.data=[\"synth:web_rewrite\"]"])
    assert ok.sft.data == ["synth:web_rewrite"]


def test_dry_run_lists_the_post_training_stages_in_order():
    from phiforge.run.plan import posttrain_section

    text = posttrain_section(_recipe([]), Path("/nonexistent"), None, None)
    names = [line.split()[0] for line in text.splitlines()[1:]]
    assert names == ["sft", "pts", "dpo", "judge", "dpo_judge"]
    assert "logprob scoring" in text and "window [0.2, 0.8]" in text
    assert posttrain_section(_recipe(["sft.enabled=false", "pts.enabled=false", "dpo.enabled=false",
                                      "judge.enabled=false", "dpo_judge.enabled=false"]), Path("."), None, None) is None
