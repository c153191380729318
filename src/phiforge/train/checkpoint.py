"""Training checkpoints with exact resume, and Hugging Face model export.

A training checkpoint is a folder ``checkpoints/step_000123/`` with the model
weights and optimizer state as a ``torch.distributed.checkpoint`` folder (``dcp/``,
sharded by rank, loadable at any world size) and ``state.json`` (step, sampler
position, metrics so far). It is written under a temporary name and renamed into
place, so a crash mid-write never leaves a folder a resume would trust.
The exported model (``model/``) is a plain Hugging Face folder that
``AutoModelForCausalLM.from_pretrained`` and vLLM load as is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch

from phiforge.errors import CheckpointError
from phiforge.train.distributed import barrier, current_env, full_state_dict, sharding_of

STEP_DIR = re.compile(r"^step_(\d{6,})$")
DCP_DIR = "dcp"  # model + optimizer shards (torch.distributed.checkpoint)
LEGACY_WEIGHTS = "model.safetensors"  # checkpoints of earlier phiforge versions


def save_training_checkpoint(directory: Path, step: int, model, optimizer, state: dict, keep: int) -> Path:
    """Atomically write checkpoint ``step`` (every rank takes part) and prune all but the newest ``keep``.

    Weights and optimizer state go through ``torch.distributed.checkpoint`` (DCP):
    each rank writes its shards, keyed by parameter name, so any world size can load
    them. Rank 0 writes ``state.json`` and renames the folder into place last.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    main = current_env().is_main
    final = directory / f"step_{step:06d}"
    tmp = directory / f".step_{step:06d}.tmp"  # one name for all ranks: they write into it together
    if main:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_ok():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / DCP_DIR))
    barrier()
    if main:
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _prune(directory, keep)
    barrier()
    return final


def _prune(directory: Path, keep: int) -> None:
    steps = list_checkpoints(directory)
    for path in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in step order (temporary folders are ignored)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def load_training_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model and optimizer in place, whatever world size wrote them; return the trainer state."""
    try:
        if (path / LEGACY_WEIGHTS).is_file():
            _load_legacy(path, model, optimizer)
        else:
            _load_dcp(path, model, optimizer)
        return json.loads((path / "state.json").read_text())
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot resume from this checkpoint ({e}); delete it to restart "
                              "the stage from the previous checkpoint") from e


def _load_dcp(path: Path, model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=str(path / DCP_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns that it assumes one process when no process group exists: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process")
        yield


def _load_legacy(path: Path, model, optimizer) -> None:
    """Checkpoints written before DCP (one process): safetensors weights + ``optimizer.pt``."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(path / LEGACY_WEIGHTS))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))


def export_hf_model(model, tokenizer, path: Path) -> Path:
    """Save a Hugging Face model folder (safetensors + config + tokenizer + chat template) atomically.

    Every rank calls it: a sharded (FSDP) model is gathered to rank 0, which alone writes.
    """
    if sharding_of(model) == "fsdp":
        weights = full_state_dict(model)
        model = _plain_model(model.config, weights) if weights is not None else None
    if current_env().is_main:
        _save_hf_folder(model, tokenizer, path)
    barrier()
    return path


def _plain_model(config, weights: dict):
    """An unsharded copy of the model for ``save_pretrained``, built on ``meta`` (no second init)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(weights, strict=False, assign=True)
    plain.tie_weights()
    return plain


def _save_hf_folder(model, tokenizer, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
        _portable_tokenizer_config(tmp, model.config.max_position_embeddings)
    _add_legacy_rope_theta(tmp / "config.json")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def _add_legacy_rope_theta(config_path: Path) -> None:
    """Also write the top-level ``rope_theta`` that transformers 4.x and older vLLM read."""
    cfg = json.loads(config_path.read_text())
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in cfg:
        cfg["rope_theta"] = theta
        config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def _portable_tokenizer_config(folder: Path, max_length: int) -> None:
    """Make ``tokenizer_config.json`` loadable by transformers 4.x and vLLM as well as 5.x.

    transformers 5 writes ``tokenizer_class: TokenizersBackend``, a list-valued
    ``extra_special_tokens`` and the chat template only in ``chat_template.jinja``;
    older loaders know none of these. We write the portable equivalents.
    """
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = cfg.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        cfg["additional_special_tokens"] = extra
    elif extra:
        cfg["extra_special_tokens"] = extra
    template = folder / "chat_template.jinja"
    if template.is_file():
        cfg["chat_template"] = template.read_text()
    cfg["model_max_length"] = int(max_length)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def load_hf_model(path: str | Path, device: str = "cpu"):
    """Load a Phi-4-architecture model folder, refusing other architectures clearly."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a model folder (no config.json); point to a stage's model/ "
                              "folder or a Hugging Face model directory")
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "phi3":
        raise CheckpointError(f"{path}: architecture is '{config.model_type}', but phiforge trains the Phi-4 "
                              "architecture (model_type 'phi3', Phi3ForCausalLM); convert the checkpoint or "
                              "start from a phiforge preset")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
