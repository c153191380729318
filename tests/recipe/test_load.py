from pathlib import Path

import pytest

from phiforge.errors import ConfigError
from phiforge.recipe import load_recipe, parse_overrides

ROOT = Path(__file__).resolve().parents[2]


def _error(overrides, path=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_recipe(path, overrides)
    return str(e.value)


def test_every_shipped_recipe_validates():
    recipes = sorted((ROOT / "recipes").glob("*.toml"))
    assert recipes, "no recipes shipped"
    for path in recipes:
        load_recipe(path)


def test_unknown_key_names_dotted_path_and_allowed_keys():
    msg = _error(["pretrain.lrr=1"])
    assert "pretrain.lrr: unknown key" in msg and "lr," in msg and "max_steps" in msg


def test_unknown_key_in_list_item_uses_index():
    msg = _error(['data.sources=[{name="x", paths=["a"], bad=1}]'])
    assert "data.sources[0].bad: unknown key" in msg


def test_wrong_type_names_key_and_value():
    msg = _error(["pretrain.lr=fast"])
    assert "pretrain.lr: got 'fast'" in msg and "number" in msg


def test_bad_value_says_what_is_allowed():
    msg = _error(["tokenizer.kind=sentencepiece"])
    assert "tokenizer.kind" in msg and "'bpe' or 'phi4'" in msg
    msg = _error(["model.preset=huge"])
    assert "model.preset" in msg and "phi4-14b" in msg
    msg = _error(["pretrain.max_steps=0"])
    assert "pretrain.max_steps: got 0" in msg and "greater than or equal to 1" in msg


def test_mixture_must_name_known_sources():
    msg = _error(["pretrain.mixture={textbook=1.0, books=1.0}"])
    assert "pretrain.mixture" in msg and "books" in msg and "textbook" in msg


def test_context_longer_than_model_allows():
    msg = _error(["pretrain.seq_len=4096"])
    assert "pretrain.seq_len=4096" in msg and "model.max_position_embeddings" in msg


def test_missing_recipe_file(tmp_path):
    msg = _error([], tmp_path / "nope.toml")
    assert "nope.toml" in msg and "not found" in msg


def test_invalid_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain\nlr = 1")
    assert "not valid TOML" in _error([], bad)


def test_overrides_parse_toml_values():
    got = dict(parse_overrides(["a.b=3", "a.c=1e-3", "a.d=true", "a.e=hello", 'a.f=[1, 2]', "a.g={x = 0.5}"]))
    assert got == {"a.b": 3, "a.c": 1e-3, "a.d": True, "a.e": "hello", "a.f": [1, 2], "a.g": {"x": 0.5}}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_overrides_apply_over_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[pretrain]\nmax_steps = 7\n")
    r = load_recipe(path, ["pretrain.lr=0.01"])
    assert r.pretrain.max_steps == 7 and r.pretrain.lr == 0.01 and r.midtrain.rope_theta == 250000.0


def test_midtrain_lr_defaults_to_pretrain_over_ten():
    r = load_recipe(None, ["pretrain.lr=0.002"])
    assert r.midtrain_lr() == pytest.approx(0.0002)


def test_posttrain_hf_recipe_dry_run_names_missing_files(tmp_path, capsys):
    """The post-training-only recipe plans without its model or data here, saying what is missing."""
    from phiforge import cli

    path = ROOT / "recipes" / "posttrain-hf.toml"
    recipe = load_recipe(path)
    assert recipe.start_model() == "/models/Qwen2.5-1.5B-Instruct" and recipe.models.policy.backend == "http"
    assert cli.main(["run", str(path), "--dry-run", f"run.out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "start model (sft.init): /models/Qwen2.5-1.5B-Instruct (not on this machine" in out
    assert "/data/posttrain/sft.jsonl not on this machine" in out
    for stage in ("data", "tokenizer", "pretrain", "midtrain"):
        assert f"  {stage:<10} disabled" in out
    for stage in ("sft", "pts", "dpo", "judge", "dpo_judge", "eval"):
        assert f"  {stage:<10} pending" in out


def test_global_batch_and_grad_accum_are_exclusive():
    msg = _error(["pretrain.global_batch=64", "pretrain.grad_accum=2"])
    assert "pretrain" in msg and "global_batch (64) or grad_accum (2), not both" in msg


def test_global_batch_must_divide_over_the_ranks():
    from phiforge.errors import ConfigError

    recipe = load_recipe(None, ["sft.enabled=true", "sft.micro_batch_size=4", "sft.global_batch=12"])
    assert recipe.sft.grad_accum_for(1, "sft") == 3 and recipe.sft.grad_accum_for(3, "sft") == 1
    with pytest.raises(ConfigError, match=r"sft.global_batch = 12 is not a multiple of micro_batch_size x ranks = 4 x 2"):
        recipe.sft.grad_accum_for(2, "sft")
