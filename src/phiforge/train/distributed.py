"""Data-parallel training on PyTorch's own stack: torchrun, FSDP2, DDP-style replication.

    torchrun --nproc_per_node 8 -m phiforge run recipes/gpu-1b.toml            # one node
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint $HEAD:29500 -m phiforge run recipes/phi4-14b.toml      # several nodes

``torchrun`` starts one process per GPU and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` joins them into one process group (NCCL on
GPUs, gloo on CPUs, so the same code is tested with two CPU processes). Every rank
is a data-parallel rank; the model is then either

* ``fsdp`` (default): FSDP2 ``fully_shard`` on every decoder layer, the model body
  (embeddings + final norm) and the output head, so weights, gradients and AdamW
  state are sharded over all ranks (ZeRO-3). With ``precision = "bf16"`` a
  ``MixedPrecisionPolicy`` computes in bf16 and reduces gradients in fp32 while the
  sharded master weights and Adam moments stay fp32 (the report trains in bf16, §3;
  the reduce dtype is our choice, UNCONFIRMED). The body and the head are separate
  FSDP roots on purpose: the SFT and DPO objectives call ``model.model`` and
  ``lm_head`` directly (only trained positions go through the 100K-vocab head), and a
  root wrapper around both would never see those calls.
* ``ddp``: weights and optimizer state replicated on every rank, gradients averaged
  with bucketed all-reduces after the backward pass. It is DDP's arithmetic without
  ``DistributedDataParallel``'s wrapper, because that wrapper only syncs gradients of
  a forward that goes through it, and our objectives call submodules (see above).
  The price is no overlap of communication with the backward pass: use it for small
  models or where FSDP2 cannot run.
* ``none``: one process (the tiny recipe, ``make run``).

Activation checkpointing (``resources.activation_checkpointing``) recomputes each
decoder layer in the backward pass (transformers' non-reentrant checkpointing, which
works under FSDP2). Checkpoints go through ``torch.distributed.checkpoint``, keyed by
parameter name, not by rank, so a run saved on N ranks resumes on M (see
``phiforge.train.checkpoint``). Rank 0 alone logs, writes metrics and exports.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Literal

import torch

from phiforge.errors import ConfigError

Sharding = Literal["fsdp", "ddp", "none"]
# Rank 0 may run a long non-collective step (export, evaluation) while the others
# wait in a collective; the default 10-minute NCCL timeout would kill such jobs.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=2)
DDP_BUCKET_ELEMENTS = 25 * 2**20  # ~100 MB of fp32 gradients per all-reduce, as DDP's default bucket


@dataclass(frozen=True, kw_only=True, slots=True)
class DistEnv:
    """This process's place in the job (what torchrun's environment variables say)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True, kw_only=True, slots=True)
class ParallelConfig:
    """How a training stage uses its ranks (the recipe's ``[resources]``)."""

    sharding: Sharding = "fsdp"
    activation_checkpointing: bool = False

    def resolved(self, world_size: int) -> Sharding:
        """One rank has nothing to shard or replicate: ``none``."""
        return "none" if world_size <= 1 else self.sharding

    @classmethod
    def from_resources(cls, resources) -> "ParallelConfig":
        return cls(sharding=resources.sharding, activation_checkpointing=resources.activation_checkpointing)


def launched_env() -> DistEnv:
    """The torchrun environment of this process (one rank when not launched by torchrun)."""
    try:
        return DistEnv(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                       local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun): {e}") from e


def current_env() -> DistEnv:
    """The process group this process has joined (one rank when none is initialised)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=launched_env().local_rank)
    return DistEnv()


def init_distributed(device_type: str) -> DistEnv:
    """Join torchrun's process group once (NCCL on CUDA, gloo on CPU); a no-op for one process."""
    import torch.distributed as dist

    env = launched_env()
    if not env.distributed or dist.is_initialized():
        return current_env()
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
        dist.init_process_group("nccl", timeout=PROCESS_GROUP_TIMEOUT,
                                device_id=torch.device("cuda", env.local_rank))
    else:
        dist.init_process_group("gloo", timeout=PROCESS_GROUP_TIMEOUT)
    return current_env()


@contextlib.contextmanager
def process_group(device_type: str):
    """Join torchrun's process group for the block (yields the ``DistEnv``); leave it if we joined it."""
    import torch.distributed as dist

    joined_before = dist.is_available() and dist.is_initialized()
    env = init_distributed(device_type)
    try:
        yield env
    finally:
        if not joined_before:
            shutdown_distributed()


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str) -> str:
    """``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``) under torchrun."""
    if device == "cuda" and launched_env().distributed:
        return f"cuda:{launched_env().local_rank}"
    return device


def barrier() -> None:
    import torch.distributed as dist

    if current_env().distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], device: str) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (one collective)."""
    import torch.distributed as dist

    if not current_env().distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)  # fp64: token counts pass 2^24 at scale
    dist.all_reduce(t)
    return t.tolist()


# -- wrapping the model ----------------------------------------------------------------------


def decoder_layers(model) -> torch.nn.ModuleList:
    """The repeated transformer blocks of a Hugging Face causal LM (``model.model.layers`` and kin)."""
    body = getattr(model, "base_model", model)
    for name in ("layers", "h", "blocks"):
        found = getattr(body, name, None)
        if isinstance(found, torch.nn.ModuleList):
            return found
    raise ConfigError(f"{type(model).__name__}: cannot find its decoder layers (model.model.layers) to shard; "
                      "use resources.sharding = 'ddp'")


def parallelize(model, config: ParallelConfig, precision: str, device: str):
    """Apply activation checkpointing and the sharding mode; returns the model to train (same object).

    Idempotent: a model already parallelised (e.g. by DPO for its reference pass) is returned as is.
    """
    if hasattr(model, "_phiforge_sharding"):
        return model
    env = current_env()
    if config.activation_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mode = config.resolved(env.world_size)
    if mode == "fsdp" and getattr(model.config, "tie_word_embeddings", False):
        # The body and the head are separate FSDP roots (module docstring); a weight shared by both
        # cannot be sharded twice, so tied-embedding models (small Qwen/Llama/Gemma) train replicated.
        logging.getLogger(__name__).warning("tied input/output embeddings: training replicated (ddp) "
                                            "instead of fsdp")
        mode = "ddp"
    if mode == "fsdp":
        # fully_shard moves each unit's weights to the device itself, then frees what is not this
        # rank's shard: the GPU never holds more than one unsharded unit. Then the leftovers (buffers).
        _fully_shard(model, precision, device)
        model.to(device)
    else:
        model.to(device)
    if mode == "ddp":
        _broadcast_parameters(model)
    model._phiforge_sharding = mode
    return model


def sharding_of(model) -> Sharding:
    return getattr(model, "_phiforge_sharding", "none")


def handles_precision(model) -> bool:
    """FSDP's mixed-precision policy casts to bf16 itself: no autocast on top."""
    return sharding_of(model) == "fsdp" and getattr(model, "_phiforge_bf16", False)


def _fully_shard(model, precision: str, device: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(torch.device(device).type, (current_env().world_size,))
    kwargs = {"mesh": mesh}
    if precision == "bf16":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        model._phiforge_bf16 = True
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    body, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if body is None or body is model or head is None:
        fully_shard(model, **kwargs)
        return
    fully_shard(body, **kwargs)
    # The head is used last in forward: keep it gathered for the backward right after (as FSDP does for roots).
    fully_shard(head, reshard_after_forward=False, **kwargs)


def _broadcast_parameters(model) -> None:
    """Start every replica from rank 0's weights (they already match when seeded alike)."""
    import torch.distributed as dist

    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(model) -> None:
    """DDP's gradient average for the ``ddp`` mode: coalesced all-reduces over ~100 MB buckets."""
    import torch.distributed as dist

    if sharding_of(model) != "ddp":
        return
    world = current_env().world_size
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    for bucket in _buckets(grads, DDP_BUCKET_ELEMENTS):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def _buckets(tensors: list[torch.Tensor], size: int) -> list[list[torch.Tensor]]:
    out, current, n = [], [], 0
    for t in tensors:
        if current and (n + t.numel() > size or t.dtype != current[0].dtype):
            out.append(current)
            current, n = [], 0
        current.append(t)
        n += t.numel()
    return out + ([current] if current else [])


@contextlib.contextmanager
def accumulating(model, sync: bool):
    """FSDP: skip the reduce-scatter on all but the last micro-batch of a step (one per step)."""
    if sharding_of(model) != "fsdp" or sync:
        yield
        return
    modules = [m for m in model.modules() if hasattr(m, "set_requires_gradient_sync")]
    for m in modules:
        m.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            m.set_requires_gradient_sync(True, recurse=False)


def clip_grad_norm(model, max_norm: float) -> float:
    """Global gradient-norm clipping; the norm of sharded (DTensor) gradients is reduced over ranks."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def full_state_dict(model) -> dict[str, torch.Tensor] | None:
    """Full (unsharded) CPU weights on rank 0, ``None`` elsewhere; collective under FSDP."""
    if sharding_of(model) != "fsdp":
        if not current_env().is_main:
            return None
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if current_env().is_main else None
