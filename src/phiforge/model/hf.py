"""Start post-training from any Hugging Face causal-LM folder (report §4 applied to your own model).

The Phi-4 post-training recipe (SFT → PTS-DPO → judge-guided DPO, report §4)
does not depend on the Phi-4 architecture: it needs a causal LM, its tokenizer
and its chat template. ``sft.init`` (or ``dpo.init`` / ``dpo_judge.init`` when SFT
is off) may therefore name a local model folder (``config.json`` + weights +
tokenizer) instead of a stage of this run. This module loads such folders for
training, and gives the pipeline a cheap identity of the folder so that a changed
model reruns the stages trained from it.

Run: ``model = load_causal_lm("/models/Qwen2.5-1.5B-Instruct", field="sft.init")``;
``tok = load_chat_tokenizer(path, field="sft.init")``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from phiforge.errors import CheckpointError, ConfigError

# Files whose size and modification time identify the weights without reading them.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Files that change what the tokenizer or chat template produce.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                   "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "generation_config.json")


def model_folder(path: str | Path, field: str) -> Path:
    """The folder as a ``Path``; ``CheckpointError`` naming ``field`` when it is not a model folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{field} = {str(path)!r}: no such folder on this machine; point it to a "
                              "local Hugging Face model folder (config.json + weights + tokenizer)")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{field} = {str(path)!r}: not a model folder (no config.json); point it to a "
                              "Hugging Face model folder, e.g. one made by `huggingface-cli download`")
    return folder


# Config keys of architectures whose logits are not ``lm_head(hidden)`` (Gemma 2/3 soft-capping, Cohere and
# Granite scaling). SFT and DPO apply the LM head to the trained positions' hidden states only, so they
# would train on different logits than the model's; such models are refused until the losses apply these.
LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}


def load_causal_lm(path: str | Path, device: str = "cpu", field: str = "model"):
    """Any ``AutoModelForCausalLM`` architecture, in fp32 on ``device``.

    fp32 master weights on GPUs as well: the trainer runs bf16 autocast (mixed
    precision), and AdamW updates on bf16 weights would round small steps away.
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder = model_folder(path, field)
    check_plain_logits(folder, field)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{field} = {str(path)!r}: cannot load it as a causal language model ({e}); "
                              "it needs config.json and the weights of a decoder-only model") from e
    return model.to(device)


def check_plain_logits(folder: Path, field: str) -> None:
    """Refuse models whose logits are soft-capped or scaled after the LM head (see ``LOGIT_TRANSFORMS``)."""
    import json

    cfg = json.loads((folder / "config.json").read_text())
    text = cfg.get("text_config") or cfg
    for key, neutral in LOGIT_TRANSFORMS.items():
        value = text.get(key)
        if value is not None and value != neutral:
            raise CheckpointError(f"{field} = {str(folder)!r}: the model transforms its logits after the LM head "
                                  f"(config {key} = {value}), which phiforge's SFT/DPO losses do not apply yet; "
                                  "use a model without it (Qwen, Llama, Mistral, Phi-3 ...)")


def load_chat_tokenizer(path: str | Path, field: str = "model"):
    """The tokenizer saved in the model folder; it must carry a chat template (SFT renders chats with it)."""
    from transformers import AutoTokenizer

    folder = model_folder(path, field)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{field} = {str(path)!r}: no usable tokenizer in the folder ({e}); save the "
                              "model's tokenizer next to its weights") from e
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"{field} = {str(path)!r}: the tokenizer has no chat template, so post-training "
                          "cannot render conversations; start from an instruct model, or add a "
                          "'chat_template' to its tokenizer_config.json (or a chat_template.jinja file)")
    return tok


def folder_identity(path: str | Path) -> dict:
    """Path, ``config.json`` hash and weight/tokenizer file sizes + mtimes: cheap, changes with the model.

    Goes into the fingerprint of stages that start from the folder, so replacing
    the model (or its tokenizer) marks them out of date. A missing folder gets
    ``{"missing": true}``: the dry-run still works, the stage fails when it runs.
    """
    folder = Path(path).expanduser()
    out: dict = {"path": str(folder.resolve()) if folder.exists() else str(folder)}
    config = folder / "config.json"
    if not config.is_file():
        return {**out, "missing": True}
    out["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    files = sorted(p for p in folder.iterdir() if p.is_file()
                   and (p.suffix in WEIGHT_SUFFIXES or p.name in TOKENIZER_FILES or p.name.endswith(".index.json")))
    out["files"] = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    return out


def describe_folder(path: str | Path) -> str:
    """One line for the dry-run: architecture and size from ``config.json``, or why it is unknown."""
    import json

    folder = Path(path).expanduser()
    config = folder / "config.json"
    if not config.is_file():
        return f"{path} (not on this machine: no config.json there yet)"
    cfg = json.loads(config.read_text())
    arch = ",".join(cfg.get("architectures") or [cfg.get("model_type", "?")])
    text = cfg.get("text_config") or cfg
    return (f"{path} ({arch}, {text.get('num_hidden_layers', '?')} layers, hidden {text.get('hidden_size', '?')}, "
            f"vocab {text.get('vocab_size', '?')})")
