import json

import pytest
import torch

from phiforge.errors import CheckpointError, ConfigError
from phiforge.model import presets
from phiforge.train.checkpoint import export_hf_model, load_hf_model


def test_phi4_14b_matches_the_paper_config_and_size():
    cfg = presets.build_config("phi4-14b")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (40, 5120, 17920)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (40, 10, 100352)
    assert cfg.max_position_embeddings == 16384 and presets.rope_theta(cfg) == 250000.0
    assert cfg.tie_word_embeddings is False and cfg.sliding_window is None
    model = presets.build_model(cfg, device="meta")
    n = presets.count_params(model)
    assert abs(n["total"] - 14.66e9) <= 0.01e9
    assert n["embedding"] == 2 * 100352 * 5120
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())


@pytest.mark.parametrize("name, lo, hi", [("tiny", 2e6, 9e6), ("small", 20e6, 30e6), ("1b", 0.9e9, 1.4e9)])
def test_preset_sizes(name, lo, hi):
    n = presets.count_params(presets.build_config(name))["total"]
    assert lo <= n <= hi


def test_gqa_head_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        presets.build_config("tiny", {"num_attention_heads": 8, "num_key_value_heads": 3})


def test_set_rope_theta_roundtrip():
    cfg = presets.build_config("tiny")
    assert presets.rope_theta(cfg) == 10000.0
    presets.set_rope_theta(cfg, 250000)
    assert presets.rope_theta(cfg) == 250000.0


def test_export_loads_with_automodel(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = presets.build_config("tiny", {"vocab_size": 300, "num_hidden_layers": 2, "hidden_size": 64,
                                        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2})
    model = presets.build_model(cfg, seed=0)
    export_hf_model(model, None, tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["architectures"] == ["Phi3ForCausalLM"] and saved["rope_theta"] == 10000.0
    assert (tmp_path / "model" / "model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    x = torch.randint(0, 300, (1, 10))
    assert torch.allclose(model(x).logits, again(x).logits, atol=1e-6)


def test_checkpoint_from_another_architecture_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    with pytest.raises(CheckpointError, match="architecture is 'llama'"):
        load_hf_model(tmp_path / "llama")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf_model(tmp_path / "missing")


def test_export_with_tokenizer_is_portable(tmp_path):
    from transformers import AutoTokenizer

    from phiforge.tokenize import render_chat, train_bpe

    tok = train_bpe(["Problem: Sam has 3 apples. Answer: 3"] * 50, vocab_size=300)
    cfg = presets.build_config("tiny", {"vocab_size": len(tok), "num_hidden_layers": 1, "hidden_size": 32,
                                        "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2})
    export_hf_model(presets.build_model(cfg, seed=0), tok, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast" and "chat_template" in saved
    assert saved["model_max_length"] == cfg.max_position_embeddings
    again = AutoTokenizer.from_pretrained(tmp_path / "m")
    msgs = [{"role": "user", "content": "hi"}]
    assert again.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        render_chat(msgs, add_generation_prompt=True)
    ids = again("<|im_start|>", add_special_tokens=False)["input_ids"]
    assert ids == [tok.convert_tokens_to_ids("<|im_start|>")]
