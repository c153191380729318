"""The recipe's ``synth`` stage end to end: seeds from the data stage, steps through the executor,
a new pretraining source, the report page, resume; the teacher is a real local HTTP server whose
replies a test script decides (right answer for some posts, wrong for others)."""

from __future__ import annotations

import json

import pytest

from phiforge.data import tinymath
from phiforge.recipe import load_recipe
from phiforge.run.pipeline import run_pipeline
from phiforge.testing.http import ScriptedOpenAIServer



def _truth(seed: int = 1234) -> dict[str, int]:
    rows = tinymath.generate(seed, 8, 12, 1, 4, 2, 0.2)["train/web"]
    return {r["text"]: r["answer"] for r in rows}


def _reply(truth):
    """A perfect solver for even-numbered calls, a wrong one otherwise; junk for non-rewrite prompts."""
    def reply(prompt, seed, index):
        if not isinstance(prompt, str) or "Post:" not in prompt:
            return "The answer is 3."
        answer = truth[prompt.rsplit("Post:\n", 1)[1].rsplit("\n\nProblem:", 1)[0]]
        if index % 2:  # wrong arithmetic, right layout
            return f"A problem.\nSolution: 1 + 1 = 3.\nAnswer: {answer + 1}"
        return f"A problem.\nSolution: {answer} + 0 = {answer}.\nAnswer: {answer}"
    return reply


def _recipe(tmp_path, url, extra=()):
    path = tmp_path / "r.toml"
    path.write_text(f"""
[run]
name = "s"
out_dir = "{tmp_path / 'runs'}"
[data.tinymath]
textbook_docs = 8
web_docs = 12
long_docs = 1
eval_problems = 4
valid_docs = 2
[models.teacher]
backend = "http"
base_url = "{url}"
model = "t"
profile = "vllm"
[synth]
enabled = true
[[synth.pipelines]]
name = "web_rewrite"
input = "web"
max_records = 6
records_per_shard = 2
text_prefix = "Problem: "
[[synth.pipelines.steps]]
technique = "rewrite"
kinds = ["exercise"]
templates = {{ exercise = "rewrite_tinymath" }}
required_markers = {{ exercise = ["Solution:"] }}
plan_first = false
prompt_style = "completion"
require_reference = true
n = 2
max_kept_per_kind = 1
max_tokens = 32
[[synth.pipelines.steps]]
technique = "arithmetic_check"
[pretrain]
mixture = {{ textbook = 0.5, web = 0.3, web_rewrite = 0.2 }}
""")
    return load_recipe(path, ["data.tinymath.textbook_docs=8", *extra])


def test_synth_stage_makes_a_verified_source_with_stats_and_examples(tmp_path):
    with ScriptedOpenAIServer(reply=_reply(_truth())) as srv:
        recipe = _recipe(tmp_path, srv.url)
        run_dir = run_pipeline(recipe, only="data", log=lambda m: None)
        run_pipeline(recipe, only="synth", log=lambda m: None)
    stats = json.loads((run_dir / "synth" / "stats.json").read_text())
    pipe = stats["pipelines"]["web_rewrite"]
    assert pipe["seeds"] == 6 and pipe["records_out"] == 6 and pipe["documents"] == 6
    rewrite = pipe["steps"][0]
    assert rewrite["counters"]["samples"] == 12 and rewrite["drop_reasons"] == {"answer_mismatch": 6}
    assert rewrite["counters"]["model_calls"] == 6  # n=2 in one request per seed (vllm profile)
    assert stats["models"]["teacher"]["calls"] == 6 and "rewrite_tinymath@1" in pipe["templates"]
    docs = [json.loads(line) for line in (run_dir / "synth" / "train" / "web_rewrite.jsonl").open()]
    assert all(d["text"].startswith("Problem: A problem.\nSolution:") for d in docs)
    examples = json.loads((run_dir / "synth" / "examples.json").read_text())["web_rewrite"]
    assert len(examples["kept"]) == 3 and "passage_rewriter: answer_mismatch" in examples["dropped"]


def test_synth_source_joins_tokenizer_and_pretraining_and_the_report(tmp_path):
    with ScriptedOpenAIServer(reply=_reply(_truth())) as srv:
        recipe = _recipe(tmp_path, srv.url, ["pretrain.max_steps=2", "pretrain.micro_batch_size=2",
                                             "pretrain.seq_len=32", "pretrain.warmup_steps=1",
                                             "midtrain.enabled=false", "eval.max_new_tokens=4",
                                             "model.num_hidden_layers=1", "model.hidden_size=32",
                                             "model.intermediate_size=64", "model.num_attention_heads=2",
                                             "model.num_key_value_heads=1", "pretrain.valid_sequences=1",
                                             "eval.models=[\"pretrain\"]"])
        run_dir = run_pipeline(recipe, log=lambda m: None)
        calls = len(srv.requests)
        run_pipeline(recipe, log=lambda m: None)  # everything finished: skipped, no model calls
        assert len(srv.requests) == calls
    tok = json.loads((run_dir / "tokenizer" / "stats.json").read_text())
    assert tok["sources"]["train/web_rewrite"]["docs"] == 6
    mix = json.loads((run_dir / "pretrain" / "mixture.json").read_text())
    assert {r["source"] for r in mix["rows"]} == {"textbook", "web", "web_rewrite"}
    html = (run_dir / "report.html").read_text()
    assert "Synthetic data" in html and "answer_mismatch" in html and "rewrite_tinymath@1" in html


def test_synth_resumes_finished_shards_after_a_crash(tmp_path, monkeypatch):
    """A crash after some input shards finished: the rerun asks the teacher only for the rest."""
    from phiforge.synth import rewrite

    truth = _truth()
    with ScriptedOpenAIServer(reply=_reply(truth)) as srv:
        recipe = _recipe(tmp_path, srv.url, ["models.teacher.cache=false"])
        rp = run_pipeline
        rp(recipe, only="data", log=lambda m: None)
        real, seen = rewrite.PassageRewriter.run, []

        def crashing(self, records, ctx):
            for out in real(self, records, ctx):
                seen.append(out.id)
                if len(seen) == 3:  # the second shard (2 seeds each) is half done
                    raise RuntimeError("crash")
                yield out
        monkeypatch.setattr(rewrite.PassageRewriter, "run", crashing)
        with pytest.raises(Exception, match="crash"):
            rp(recipe, only="synth", log=lambda m: None)
        first = len(srv.requests)
        monkeypatch.setattr(rewrite.PassageRewriter, "run", real)
        run_dir = rp(recipe, only="synth", log=lambda m: None)
    assert len(srv.requests) - first == 4  # shards 2 and 3 (2 seeds each); shard 1 was complete
    stats = json.loads((run_dir / "synth" / "stats.json").read_text())["pipelines"]["web_rewrite"]
    assert stats["records_out"] == 6


def test_a_source_pipeline_that_keeps_nothing_is_a_clear_error_only_if_pretraining_needs_it(tmp_path):
    from phiforge.errors import StageError

    wrong = lambda prompt, seed, index: "A problem.\nSolution: 1 + 1 = 2.\nAnswer: -1"  # noqa: E731
    with ScriptedOpenAIServer(reply=wrong) as srv:
        recipe = _recipe(tmp_path, srv.url)
        run_pipeline(recipe, only="data", log=lambda m: None)
        with pytest.raises(StageError, match="kept no records, but pretrain.mixture uses it"):
            run_pipeline(recipe, only="synth", log=lambda m: None)
        (tmp_path / "b").mkdir()
        recipe = _recipe(tmp_path / "b", srv.url, ['pretrain.mixture={textbook = 0.7, web = 0.3}'])
        run_dir = run_pipeline(recipe, only="data", log=lambda m: None)
        run_pipeline(recipe, only="synth", log=lambda m: None)
    assert not (run_dir / "synth" / "train" / "web_rewrite.jsonl").exists()


@pytest.mark.parametrize("override, message", [
    ("synth.pipelines.0.steps.0.technique=rewrit", "unknown technique 'rewrit'; choose one of"),
    ("synth.pipelines.0.steps.0.nn=2", "technique 'rewrite': nn: unknown key \\(allowed: .*kinds"),
    ("synth.pipelines.0.steps.0.n=0", "technique 'rewrite': n: Input should be greater than or equal to 1"),
    ("synth.pipelines.0.input=nowhere", "input = 'nowhere' is neither a data source"),
    ("synth.pipelines.0.steps.0.models={teacher = \"critic\"}", "unknown model role\\(s\\) \\['critic'\\]"),
    ("synth.pipelines.7.max_records=2", "'synth.pipelines.7' is not an index of a list with 2 entries"),
])
def test_bad_synth_entries_are_clear_errors(override, message):
    from pathlib import Path

    from phiforge.errors import ConfigError

    tiny = Path(__file__).resolve().parents[2] / "recipes" / "tiny.toml"
    with pytest.raises(ConfigError, match=message):
        load_recipe(tiny, [override])
