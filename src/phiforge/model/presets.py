"""Phi-4 architecture presets on Hugging Face ``Phi3Config`` / ``Phi3ForCausalLM``.

Phi-4 (report §3, released config.json) "closely follows phi-3-medium": 40 pre-norm
layers, hidden 5120, SwiGLU MLP 17920, 40 query / 10 KV heads (GQA), RMSNorm 1e-5,
no biases, untied embeddings, full attention (no sliding window), a 100,352-token
padded tiktoken vocabulary, 16K context and RoPE base 250K after midtraining.
We use transformers' own Phi3 modelling code, so checkpoints load in
``AutoModelForCausalLM`` and vLLM unchanged.

The smaller presets keep the same shape rules (GQA, SwiGLU, untied) at sizes for
CPUs (``tiny``), quick experiments (``small``) and single GPUs (``1b``).
The pretraining RoPE base is not disclosed (UNCONFIRMED); like phi-3-medium we use
10K and raise it to 250K in midtraining, except for ``phi4-14b`` which is the
released (post-midtraining) config.
"""

from __future__ import annotations

from typing import Any

from phiforge.errors import ConfigError

PHI4_VOCAB = 100352

PRESETS: dict[str, dict[str, Any]] = {
    "phi4-14b": dict(num_hidden_layers=40, hidden_size=5120, intermediate_size=17920,
                     num_attention_heads=40, num_key_value_heads=10, vocab_size=PHI4_VOCAB,
                     max_position_embeddings=16384, rope_theta=250000.0),
    "1b": dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=5632,
               num_attention_heads=16, num_key_value_heads=4, vocab_size=PHI4_VOCAB,
               max_position_embeddings=4096, rope_theta=10000.0),
    "small": dict(num_hidden_layers=6, hidden_size=512, intermediate_size=1408,
                  num_attention_heads=8, num_key_value_heads=4, vocab_size=8192,
                  max_position_embeddings=2048, rope_theta=10000.0),
    "tiny": dict(num_hidden_layers=4, hidden_size=256, intermediate_size=704,
                 num_attention_heads=8, num_key_value_heads=4, vocab_size=2048,
                 max_position_embeddings=1024, rope_theta=10000.0),
}

# Settings shared by every preset, straight from Phi-4's released config.
COMMON = dict(hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=False,
              attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
              initializer_range=0.02, sliding_window=None)


def preset_names() -> list[str]:
    return sorted(PRESETS)


def build_config(preset: str, overrides: dict[str, Any] | None = None,
                 special_ids: dict[str, int] | None = None):
    """A ``Phi3Config`` for ``preset`` with ``overrides`` (e.g. the tokenizer's vocab size)."""
    from transformers import Phi3Config

    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; choose one of {preset_names()}")
    fields = {**COMMON, **PRESETS[preset], **{k: v for k, v in (overrides or {}).items() if v is not None}}
    _check_heads(fields)
    theta = float(fields.pop("rope_theta"))
    fields["original_max_position_embeddings"] = fields["max_position_embeddings"]
    ids = special_ids or _default_special_ids(fields["vocab_size"])
    cfg = Phi3Config(**fields, rope_parameters={"rope_type": "default", "rope_theta": theta},
                     bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    return cfg


def _default_special_ids(vocab_size: int) -> dict[str, int]:
    """Phi-4's ``<|endoftext|>`` (100257) where the vocabulary has it, else id 0 (our BPE's)."""
    eot = 100257 if vocab_size > 100257 else 0
    return {"bos": eot, "eos": eot, "pad": eot}


def _check_heads(f: dict[str, Any]) -> None:
    if f["hidden_size"] % f["num_attention_heads"]:
        raise ConfigError(f"model.hidden_size={f['hidden_size']} must be divisible by "
                          f"model.num_attention_heads={f['num_attention_heads']}")
    if f["num_attention_heads"] % f["num_key_value_heads"]:
        raise ConfigError(f"model.num_attention_heads={f['num_attention_heads']} must be a multiple of "
                          f"model.num_key_value_heads={f['num_key_value_heads']} (grouped-query attention)")


def rope_theta(config) -> float:
    """The RoPE base of a config, across transformers' old and new field layouts."""
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def set_rope_theta(config, theta: float) -> None:
    """Raise the RoPE base in place (midtraining, report §3.3)."""
    params = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
    params["rope_theta"] = float(theta)
    config.rope_parameters = params


def build_model(config, device: str = "cpu", seed: int | None = None):
    """Instantiate ``Phi3ForCausalLM`` (on ``meta`` for parameter counting without memory)."""
    import torch
    from transformers import Phi3ForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = Phi3ForCausalLM(config)
    return model


def count_params(model_or_config) -> dict[str, int]:
    """Total, embedding (input + untied output) and non-embedding parameter counts."""
    model = model_or_config
    if not hasattr(model, "parameters"):
        model = build_model(model_or_config, device="meta")
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    if not model.config.tie_word_embeddings:
        emb += model.get_output_embeddings().weight.numel()
    return {"total": total, "embedding": emb, "non_embedding": total - emb}
