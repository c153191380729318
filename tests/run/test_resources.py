"""The resource plan: parameter count, memory per GPU, FLOPs, the model-card MFU, the dry-run section."""

from pathlib import Path
from typing import get_args

import pytest
import torch

from phiforge import cli
from phiforge.errors import ConfigError
from phiforge.model import presets
from phiforge.recipe import load_recipe
from phiforge.recipe.schema import ResourcesSection
from phiforge.run import resources

ROOT = Path(__file__).resolve().parents[2]
PHI4 = ROOT / "recipes" / "phi4-14b.toml"


def test_phi4_parameter_count():
    recipe = load_recipe(PHI4)
    assert resources.param_count(recipe) == 14_659_507_200
    shape = resources.recipe_shape(recipe)
    assert shape.matmul_params == 14_659_507_200 - 100_352 * 5120  # all but the input embedding
    assert shape.layer_params == 340_797_440 and shape.largest_unit == 100_352 * 5120


def test_memory_breakdown_by_hand():
    kw = dict(n_params=1000, n_gpus=4, micro_batch=2, seq_len=8, layers=2, hidden=16, heads=4, kv_heads=2,
              intermediate=32, vocab=50, unit_params=300)
    fsdp = resources.memory_per_gpu(sharding="fsdp", checkpointing=False, **kw)
    # 16 tokens; per layer 16 * (24*16 + 6*8 + 8*32 + 4*4 + 8) = 11,392; final norm 16 * (8*16 + 4) = 2,112
    assert fsdp == {"weights": 500, "grads": 500, "optimizer": 3000, "fsdp_buffers": 3000,
                    "activations": 2 * 11392 + 2112, "logits": 12 * 16 * 50, "total": 7000 + 24896 + 9600}
    ddp = resources.memory_per_gpu(sharding="ddp", checkpointing=False, **kw)
    assert (ddp["weights"], ddp["grads"], ddp["optimizer"], ddp["fsdp_buffers"]) == (2000, 2000, 12000, 0)
    ckpt = resources.memory_per_gpu(sharding="fsdp", checkpointing=True, **kw)
    assert ckpt["activations"] == 2 * (2 * 16 * 16) + 11392 + 2112 < fsdp["activations"]


def _saved_bytes(layers: int, checkpointing: bool) -> int:
    """Bytes of the (non-parameter) tensors a bf16 Phi-3 model keeps for backward."""
    cfg = presets.build_config("tiny", dict(num_hidden_layers=layers, hidden_size=64, intermediate_size=176,
                                            num_attention_heads=8, num_key_value_heads=2, vocab_size=128))
    model = presets.build_model(cfg, seed=0).to(torch.bfloat16).train()
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=torch.randint(0, 128, (2, 32)), use_cache=False)
    return sum(kept.values())


@pytest.mark.parametrize("checkpointing, by_hand", [(False, 64 * (24 * 64 + 6 * 16 + 8 * 176 + 4 * 8 + 8)),
                                                     (True, 2 * 64 * 64)])
def test_activation_formula_matches_what_the_hf_layer_saves(checkpointing, by_hand):
    """Two more layers add two layers' worth: the formula's per-layer term, byte for byte (2 x 32 tokens)."""
    measured = (_saved_bytes(3, checkpointing) - _saved_bytes(1, checkpointing)) // 2
    formula = [resources.activation_bytes(2, 32, n, 64, 176, 8, 2, checkpointing) for n in (1, 3)]
    assert measured == (formula[1] - formula[0]) // 2 == by_hand


def test_flops_per_token():
    assert resources.flops_per_token(100, 2, 16, 8) == 6 * 100 + 12 * 2 * 16 * 8
    shape = resources.model_shape("phi4-14b", None, presets.PHI4_VOCAB)
    assert resources.flops_per_token(shape.matmul_params, 40, 5120, 4096) == 84_874_229_760 + 10_066_329_600


def test_model_card_implied_mfu():
    check = resources.model_card_check()
    by_hand = 9.8e12 * 94_940_559_360 / (1920 * 989.4e12 * 21 * 86400)
    assert check["mfu"] == pytest.approx(by_hand, rel=1e-12) and 0.25 < check["mfu"] < 0.30
    assert resources.training_days(9.8e12, check["flops_per_token"], 1920, 989.4, check["mfu"]) == pytest.approx(21)


def test_phi4_recipe_matches_the_paper_and_fits_only_with_checkpointing():
    plan = resources.plan(load_recipe(PHI4))
    pre, mid, sft, dpo, dpo_judge = plan["stages"]
    assert sft["tokens"] == pytest.approx(8e9, rel=0.01)  # §4.1: ~8B tokens of SFT data
    assert dpo["steps"] is None and dpo["tokens_per_step"] == 1920 * 2 * 4096  # chosen + rejected per pair
    assert (pre["global_batch"], pre["seq_len"]) == (5760, 4096) and pre["tokens"] == pytest.approx(10e12, rel=1e-4)
    assert (mid["seq_len"], mid["tokens"]) == (16384, pytest.approx(250e9, rel=1e-3))
    memory = resources.GPU_SPECS["h100-80g"].memory_bytes
    for st in (pre, mid):
        assert st["memory"]["checkpointing"]["total"] < memory < st["memory"]["no_checkpointing"]["total"]
    assert pre["days"] == pytest.approx(14.5, abs=0.1)
    ddp = resources.plan(load_recipe(PHI4, ["resources.sharding=\"ddp\""]))
    assert ddp["stages"][0]["memory"]["checkpointing"]["optimizer"] == 12 * 14_659_507_200


def test_gpu_table_matches_the_schema_and_layout_is_checked():
    assert set(get_args(ResourcesSection.model_fields["gpu"].annotation)) == set(resources.GPU_SPECS)
    for bad in (["resources.gpus=8", "resources.sharding=\"none\""], ["resources.gpus=12"]):
        with pytest.raises(ConfigError, match="resources"):
            load_recipe(None, bad)


def test_dry_run_prints_the_plan_for_phi4(tmp_path, capsys):
    recipe = load_recipe(PHI4)
    overrides = []  # the recipe's corpora are placeholders: stand-in files for the data section
    for i, _ in enumerate(recipe.data.sources):
        (tmp_path / f"s{i}.jsonl").write_text('{"text": "a document"}\n')
        overrides.append(f"data.sources.{i}.paths=[\"{tmp_path / f's{i}.jsonl'}\"]")
    assert cli.main(["run", str(PHI4), "--dry-run", f"run.out_dir={tmp_path}", *overrides]) == 0
    out = capsys.readouterr().out
    assert "resources: 1920 x H100 SXM 80GB (240 nodes x 8), sharding fsdp" in out
    assert "DOES NOT FIT" in out and "model card: 9.80T tokens on 1920 H100" in out and "implies MFU = 27.0%" in out


def test_dry_run_prints_a_cpu_line_for_tiny(tmp_path, capsys):
    small = ["data.tinymath.textbook_docs=50", "data.tinymath.web_docs=50", "data.tinymath.long_docs=5"]
    assert cli.main(["run", str(ROOT / "recipes" / "tiny.toml"), "--dry-run", f"run.out_dir={tmp_path}", *small]) == 0
    out = capsys.readouterr().out
    assert "resources: this machine's CPU (resources.gpus = 0, fp32)" in out and "model card" not in out


def test_measured_mfu_agrees_with_the_plan_arithmetic():
    """At the measured MFU, the plan's wall-clock days equal tokens / measured tokens-per-second."""
    shape = resources.model_shape("1b", None, 100352)
    rows = [{"tokens_per_s": 1.0}] * 5 + [{"tokens_per_s": v} for v in (40000.0, 50000.0, 60000.0)]
    out = resources.measured_throughput(rows, shape, seq_len=2048, ranks=2, gpu="h100-80g")
    assert out["tokens_per_s_median"] == 50000.0 and out["steps_timed"] == 3  # warm-up steps skipped
    fpt = resources.flops_per_token(shape.matmul_params, shape.layers, shape.hidden, 2048)
    days = resources.training_days(1e9, fpt, 2, resources.GPU_SPECS["h100-80g"].bf16_tflops, out["mfu"])
    assert days == pytest.approx(1e9 / 50000.0 / 86400, rel=1e-3)
    assert "mfu" not in resources.measured_throughput(rows, shape, 2048, 1, gpu=None)  # CPU: no MFU


@pytest.mark.parametrize("name, key", [("NVIDIA H100 80GB HBM3", "h100-80g"), ("NVIDIA H200", "h200-141g"),
                                       ("NVIDIA A100-SXM4-40GB", "a100-40g"), ("NVIDIA A100 80GB PCIe", "a100-80g"),
                                       ("Tesla T4", "h100-80g")])
def test_gpu_names_map_to_specs(name, key):
    assert resources.gpu_key_for(name, default="h100-80g") == key


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_dry_run_plan_prints_for_every_shipped_recipe(path, tmp_path, capsys):
    overrides = [f"run.out_dir={tmp_path}"]
    recipe = load_recipe(path)
    if recipe.data.generator == "tinymath":  # keep the data estimate quick
        overrides += ["data.tinymath.textbook_docs=50", "data.tinymath.web_docs=50", "data.tinymath.long_docs=5"]
    if recipe.start_model():  # a post-training-only recipe: plan it on a model folder that exists here
        from phiforge.testing.foreign import save_tiny_foreign_model

        overrides.append(f"sft.init={save_tiny_foreign_model(tmp_path / 'start')}")
    assert cli.main(["run", str(path), "--dry-run", *overrides]) == 0
    out = capsys.readouterr().out
    assert "resources: " in out
    if recipe.resources.gpus:
        assert "memory/GPU, GiB" in out and "per token" in out
    if recipe.sft.enabled:
        assert "  sft: " in out


def test_post_training_plan_without_the_start_model_says_what_is_missing(tmp_path, capsys):
    path = ROOT / "recipes" / "posttrain-hf.toml"
    assert cli.main(["run", str(path), "--dry-run", f"run.out_dir={tmp_path}", f"sft.init={tmp_path / 'none'}"]) == 0
    assert "is not on this machine: the plan needs its config.json" in capsys.readouterr().out


def test_gpu_1b_plan_keeps_its_batch_on_eight_gpus(tmp_path, capsys):
    recipe = load_recipe(ROOT / "recipes" / "gpu-1b.toml", ["resources.gpus=8"])
    plan = resources.plan(recipe)
    pre = plan["stages"][0]
    assert (pre["micro_batch"], pre["grad_accum"], pre["data_parallel"], pre["global_batch"]) == (8, 4, 8, 256)
    with pytest.raises(ConfigError, match="pretrain.global_batch = 256 is not a multiple"):
        resources.plan(load_recipe(ROOT / "recipes" / "gpu-1b.toml", ["resources.gpus=24", "resources.gpus_per_node=8"]))
