"""Post-training from a Hugging Face model folder that is not Phi-4 (sft.init = a path), through the pipeline.

A tiny Llama folder with a Llama-3-style chat template stands in for a user's
Qwen/Llama/Phi-3 instruct model: SFT and DPO start from it, the exports keep its
architecture and tokenizer, the base-model stages are skipped, and bad paths fail
with the recipe field named.
"""

import json
from pathlib import Path

import pytest

from phiforge.errors import CheckpointError, ConfigError
from phiforge.recipe import load_recipe
from phiforge.run import pipeline
from phiforge.run.rundir import MARKER
from phiforge.testing.foreign import EOT, LLAMA3_STYLE_TEMPLATE, save_tiny_foreign_model

ROOT = Path(__file__).resolve().parents[2]
SFT = ["sft.enabled=true", "sft.max_steps=2", "sft.micro_batch_size=4", "sft.valid_examples=2", "sft.seq_len=128",
       "sft.eval_every=1", "sft.checkpoint_every=1", "sft.log_every=1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_foreign_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sft_rows(n: int = 12) -> list[dict]:
    return [{"id": f"c{i}", "messages": [{"role": "user", "content": f"Sam has {i} apples and buys 3."},
                                         {"role": "assistant", "content": f"Answer: {i + 3}"}]} for i in range(n)]


def _overrides(fast_overrides, folder: Path, tmp_path: Path) -> list[str]:
    sft = _write_jsonl(tmp_path / "sft.jsonl", _sft_rows())
    return fast_overrides + SFT + ["data.generator=\"none\"", f"sft.init=\"{folder}\"", f"sft.data=[\"{sft}\"]",
                                   "eval.enabled=false"]


def _token_pairs(folder: Path, path: Path) -> Path:
    """Judge-style text pairs rendered with the model's own template (render_reply ends them with <|eot_id|>)."""
    from phiforge.model.hf import load_chat_tokenizer
    from phiforge.posttrain.pairs import text_pairs_to_token_pairs, write_token_pairs

    tok = load_chat_tokenizer(folder)
    rows = [{"id": f"p{i}", "kind": "test", "messages": [{"role": "user", "content": f"Sam has {i} apples."}],
             "chosen": f"Answer: {i}", "rejected": f"Answer: {i + 1}"} for i in range(10)]
    pairs, counts = text_pairs_to_token_pairs(tok, rows)
    assert counts["kept"] == 10 and all(p.chosen_ids[-1] == tok.convert_tokens_to_ids(EOT) for p in pairs)
    write_token_pairs(path, pairs)
    return path


def test_sft_and_dpo_start_from_a_foreign_model_folder(fast_overrides, folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = _token_pairs(folder, tmp_path / "pairs.jsonl")
    evals = _write_jsonl(tmp_path / "eval.jsonl", [{"question": f"Sam has {i} apples.", "answer": i} for i in range(3)])
    overrides = _overrides(fast_overrides, folder, tmp_path) + [
        "pts.enabled=true", f"pts.prompts=\"{evals}\"", "pts.max_queries=2", "pts.chunk_size=2",
        "pts.search.max_tokens=4", "pts.search.max_rollouts=4", "pts.search.round_size=4",
        "pts.search.query_min_p=0.0", "pts.search.query_max_p=1.0",
        "dpo.enabled=true", f"dpo.pairs=[\"{pairs}\"]", "dpo.max_steps=2", "dpo.micro_batch_size=4",
        "dpo.valid_fraction=0.2", "dpo.eval_every=1", "dpo.checkpoint_every=1",
        "eval.enabled=true", "eval.models=[\"sft\",\"dpo\"]", "eval.tasks=[]", "eval.contamination=false",
        f"data.eval_file=\"{evals}\""]
    run_dir = pipeline.run_pipeline(load_recipe(ROOT / "recipes" / "tiny.toml", overrides), log=lambda m: None)

    assert not any((run_dir / s).exists() for s in ("tokenizer", "pretrain", "midtrain"))
    sft = json.loads((run_dir / "sft" / "stats.json").read_text())
    assert sft["init"] == str(folder) and sft["steps"] == 2 and sft["data"]["train"]["trained_tokens"] > 0
    for stage in ("sft", "dpo"):
        model = AutoModelForCausalLM.from_pretrained(run_dir / stage / "model")
        tok = AutoTokenizer.from_pretrained(run_dir / stage / "model")
        assert type(model).__name__ == "LlamaForCausalLM" and model.config.model_type == "llama"
        assert tok.chat_template == LLAMA3_STYLE_TEMPLATE and tok.eos_token == EOT
    pts = json.loads((run_dir / "pts" / "stats.json").read_text())  # the policy: sft/model, prompted in its template
    assert pts["search"]["queries"] == 2 and pts["search"]["completion_tokens"] > 0
    _check_policy_prompts_match_training(run_dir / "sft" / "model")
    dpo = json.loads((run_dir / "dpo" / "stats.json").read_text())
    assert dpo["init"] == "sft" and dpo["steps"] == 2
    ev = json.loads((run_dir / "eval" / "stats.json").read_text())
    assert set(ev["models"]) == {"sft", "dpo"} and ev["models"]["sft"]["prompt_format"] == "chat"
    row = json.loads((run_dir / "eval" / "predictions" / "sft.jsonl").read_text().splitlines()[0])
    assert row["question"] == "Sam has 0 apples."


def _check_policy_prompts_match_training(folder: Path) -> None:
    """The PTS policy (a LocalBackend on the export) prompts with the ids SFT trained after."""
    from phiforge.backends.local import LocalBackend
    from phiforge.tokenize.chat import render_conversation

    policy = LocalBackend.from_pretrained(folder, device="cpu")
    messages = [{"role": "user", "content": "Sam has 2 apples."}]
    ids = policy.chat_prompt(messages)
    assert ids == render_conversation(policy.tokenizer, messages, add_generation_prompt=True)[0]
    assert policy.tokenizer.decode(ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_changing_the_model_folder_changes_the_sft_fingerprint(fast_overrides, folder, tmp_path):
    copy = tmp_path / "copy"
    save_tiny_foreign_model(copy)
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", _overrides(fast_overrides, copy, tmp_path))
    before = pipeline.fingerprints(recipe)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    after = pipeline.fingerprints(recipe)
    assert before["sft"] != after["sft"] and before["data"] == after["data"] == "disabled"
    payload = pipeline.stage_payload(json.loads(json.dumps(recipe.model_dump(mode="json"))),
                                     pipeline.get_stage("sft"), after)
    assert payload["start_model"]["path"] == str(copy.resolve()) and "model.safetensors" in payload["start_model"]["files"]


def test_post_training_only_run_skips_the_base_model_stages(fast_overrides, folder, tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", _overrides(fast_overrides, folder, tmp_path))
    assert [s.name for s in pipeline.select(recipe, None, None)] == ["sft", "report"]
    assert recipe.start_model() == str(folder)


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing", r"sft.init = '.*missing': no such folder"),
    (lambda p: p.mkdir() or p, "not a model folder \\(no config.json\\)"),
])
def test_bad_model_folder_names_the_field_and_path(fast_overrides, folder, tmp_path, make, match):
    bad = make(tmp_path / "bad")
    overrides = _overrides(fast_overrides, folder, tmp_path) + [f"sft.init=\"{bad}\""]
    with pytest.raises(CheckpointError, match=match):
        pipeline.run_pipeline(load_recipe(ROOT / "recipes" / "tiny.toml", overrides), log=lambda m: None)


def test_model_with_soft_capped_logits_is_refused(tmp_path):
    from phiforge.model.hf import load_causal_lm

    capped = save_tiny_foreign_model(tmp_path / "capped")
    config = json.loads((capped / "config.json").read_text())
    (capped / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 30.0}))
    with pytest.raises(CheckpointError, match="sft.init = .*final_logit_softcapping = 30.0"):
        load_causal_lm(capped, field="sft.init")


def test_model_folder_without_chat_template_is_refused(fast_overrides, tmp_path):
    plain = save_tiny_foreign_model(tmp_path / "base")
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    overrides = _overrides(fast_overrides, plain, tmp_path)
    with pytest.raises(ConfigError, match="sft.init = .*has no chat template"):
        pipeline.run_pipeline(load_recipe(ROOT / "recipes" / "tiny.toml", overrides), log=lambda m: None)


@pytest.mark.parametrize("overrides, match", [
    (["sft.init=\"midtrian\""], "sft.init.*neither one of \\['auto', 'pretrain', 'midtrain'\\] nor a path"),
    (["sft.init=\"/m/x\"", "eval.models=[\"pretrain\",\"sft\"]"], "eval.models lists \\['pretrain'\\].*does not pretrain"),
    (["sft.init=\"/m/x\"", "eval.contamination=true"], "eval.contamination"),
    (["sft.enabled=false", "dpo.enabled=true", "dpo.pairs=[\"p.jsonl\"]"], "dpo starts from the SFT model"),
    (["sft.init=\"/m/x\"", "data.generator=\"none\"", "eval.contamination=false"], r"eval.tasks\[0\].path"),
])
def test_start_model_recipe_errors(overrides, match):
    base = ["synth.enabled=false", "curate.enabled=false", "pts.enabled=false", "dpo.enabled=false",
            "judge.enabled=false", "dpo_judge.enabled=false", "sft.enabled=true", "eval.models=[\"sft\"]"]
    with pytest.raises(ConfigError, match=match):
        load_recipe(ROOT / "recipes" / "tiny.toml", base + overrides)


def test_dpo_alone_may_start_from_a_model_folder():
    base = ["synth.enabled=false", "curate.enabled=false", "pts.enabled=false", "judge.enabled=false",
            "dpo_judge.enabled=false", "sft.enabled=false", "eval.models=[\"dpo\"]", "data.generator=\"none\"",
            "eval.contamination=false", "eval.tasks=[]"]
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", base + ["dpo.enabled=true", "dpo.pairs=[\"p.jsonl\"]",
                                                                 "dpo.init=\"/m/x\""])
    assert recipe.start_model() == "/m/x" and recipe.start_model_field() == "dpo.init"
    assert [s.name for s in pipeline.select(recipe, None, None)] == ["dpo", "eval", "report"]


def test_http_policy_tokenizer_may_name_a_stage_of_the_run(folder, tmp_path):
    """``[models.policy] tokenizer = "stage:sft"``: a vLLM-served policy gets the exported folder's chat template."""
    import shutil

    from phiforge.backends.registry import _tokenizer

    shutil.copytree(folder, tmp_path / "run" / "sft" / "model")
    tok = _tokenizer("stage:sft", tmp_path / "run")
    assert tok.chat_template == LLAMA3_STYLE_TEMPLATE
    with pytest.raises(ConfigError, match="run the 'dpo' stage first"):
        _tokenizer("stage:dpo", tmp_path / "run")
