"""The resource plan of ``--dry-run``: parameters, memory per GPU, FLOPs per token, GPU-days.

    phiforge run recipes/phi4-14b.toml --dry-run
    phiforge run recipes/phi4-14b.toml --dry-run resources.gpus=256 resources.sharding=ddp

**Batch.** Every GPU is a data-parallel rank (FSDP shards the model over the same ranks), so
one optimizer step takes ``micro_batch_size x grad_accum x max(1, resources.gpus)`` sequences
(or ``global_batch``, when a stage sets it, with grad_accum derived);
phi4-14b: 3 x 1 x 1920 = 5760 sequences of 4096 tokens, the report's global batch (§3).

**Memory per GPU** (bytes; B micro-batch, s sequence, h hidden, h_kv KV width, i MLP width,
a heads, L layers, V vocabulary, N parameters, G GPUs):

* Model states, mixed-precision AdamW as counted by ZeRO (Rajbhandari et al. 2020, §3.1):
  bf16 weights 2N, bf16 grads 2N (reduced in fp32), fp32 master weights + Adam m + v 12N.
  ``fsdp`` (ZeRO-3) divides all three by G; ``ddp`` keeps them whole on every GPU. FSDP2 with
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` holds fp32 weights 4N + fp32
  grads 4N + m, v 8N instead: the same 16N.
* FSDP buffers: the gathered bf16 weights of the running and the prefetched unit (2 x 2 B),
  and that unit's unsharded bf16 grads plus their fp32 copy for the reduce-scatter (2 + 4 B):
  10 B per parameter of the largest unit (phi4-14b: the 100K-vocab output head, > one layer).
* Activations. Korthikanti et al. 2022 (arXiv:2205.05198, §4.1) count the bytes each op keeps
  for backward: s·B·h·(34 + 5·a·s/h) per GPT-3 layer. The 5·a·s/h term is the a·s² attention
  matrix (softmax output, dropout mask); SDPA / flash attention never stores it, and our
  trainer uses SDPA, so it is dropped. The 34 belongs to a LayerNorm + GeLU(4h) block with
  dropout. The same count for our Phi-3 block (Hugging Face ``Phi3DecoderLayer``, bf16) is
  ``s·B·(24h + 6·h_kv + 8i + 4a + 8)``:
  - 24h: each of the two RMSNorms keeps an fp32 copy of its input (4h), the bf16 normalised
    value (2h) and its output, the next matmul's input (2h); the attention output twice (SDPA's
    and the contiguous copy ``o_proj`` reads, 4h); the rotated queries (2h); the fused qkv
    output that V is a view of (2h + 4·h_kv);
  - 2·h_kv more for the rotated keys; 8i for SwiGLU: gate|up (4i), silu(gate) (2i), product (2i);
  - 4a + 8: SDPA's fp32 log-sum-exp and the norms' fp32 1/rms.
  For phi4-14b (h_kv = h/4, i = 3.5h) that is 53.5·s·B·h per layer against GPT-3's 34: the
  wider gated MLP and the fp32 norm copies. ``tests/run/test_resources.py`` checks the formula
  against the bytes the Hugging Face layer actually saves.
  With full activation checkpointing a layer keeps only its bf16 input (2·s·B·h) and one layer
  at a time is recomputed in full. The final norm adds s·B·(8h + 4) either way.
* Logits: the loss upcasts them to fp32; log-softmax keeps its fp32 output (4 B per token and
  vocabulary entry) and the backward starts with two more fp32 tensors of that size (the NLL
  gradient, the log-softmax input gradient): 12·s·B·V, 14.8 GB at 3 x 4096 x 100352. A fused or
  chunked cross-entropy would remove most of it.

The CUDA context, NCCL and allocator fragmentation take a few GiB more, so a plan with less
than 10% free is flagged as tight.

**FLOPs per token**: 6N + 12·L·h·s (PaLM, Chowdhery et al. 2022, App. B, the MFU definition;
torchtitan counts the same). N is the parameters that take part in a matmul: all but the input
embedding table, whose lookup costs nothing, while the untied output head is a matmul
(phi4-14b: 14,145,704,960 of 14,659,507,200). Kaplan et al. 2020's 6·N_non-embedding would omit
the head's 6·h·V = 3.1 GFLOP per token (3%). 12·L·h·s is Q·Kᵀ and attention·V, 2·s·h FLOPs each
per layer and token forward, times 3 with backward, over the full s as PaLM counts it (a causal
kernel skips half). The same count serves the GPU-days and the model-card check.

**GPU-days** = tokens x FLOPs per token / (dense bf16 peak x MFU). The model-card check inverts
it: 9.8T tokens on 1920 H100s in 21 days implies the MFU printed. The 21 days are wall-clock
(restarts, evaluations, likely the 250B-token midtraining too), so the MFU achieved was higher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from phiforge.model import presets

GIB = 2**30
DAY_S = 86400


@dataclass(frozen=True, kw_only=True, slots=True)
class GPUSpec:
    label: str
    memory_mib: int  # total memory as nvidia-smi reports it
    bf16_tflops: float  # dense bf16 tensor-core peak

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20


# Dense bf16 tensor-core peaks from NVIDIA's datasheets, which print twice these "with sparsity":
# H100 SXM5 989.4 (1,979); H200 SXM the same compute, 989.4 (1,979); A100 312 (624); L40S 362.05 (733).
GPU_SPECS: dict[str, GPUSpec] = {
    "h100-80g": GPUSpec(label="H100 SXM 80GB", memory_mib=81559, bf16_tflops=989.4),
    "h200-141g": GPUSpec(label="H200 SXM 141GB", memory_mib=143771, bf16_tflops=989.4),
    "a100-80g": GPUSpec(label="A100 SXM 80GB", memory_mib=81920, bf16_tflops=312.0),
    "a100-40g": GPUSpec(label="A100 SXM 40GB", memory_mib=40960, bf16_tflops=312.0),
    "l40s-48g": GPUSpec(label="L40S 48GB", memory_mib=46068, bf16_tflops=362.05),
}

# The microsoft/phi-4 model card: 9.8T training tokens on 1920 H100-80G in 21 days; the
# pretraining context is 4096 (report §3).
MODEL_CARD = dict(tokens=9.8e12, gpus=1920, gpu="h100-80g", days=21.0, seq_len=4096)
# Report §3: global batch 5760 (sequences of 4096, DERIVED), about 10T tokens.
PAPER_PRETRAIN = dict(sequences=5760, seq_len=4096, tokens=10e12)

STATE_BYTES = {"weights": 2, "grads": 2, "optimizer": 12}  # per parameter, ZeRO's mixed-precision Adam
FSDP_BUFFER_BYTES = 10  # per parameter of the largest FSDP unit: 2 x 2 gathered + 2 + 4 grads
LOGIT_BYTES = 12  # per token and vocabulary entry: fp32 log-softmax + two fp32 gradients
CPU_FP32_FACTOR = 2  # CPUs train in fp32: measured 1.8x the bf16 activation bytes
TIGHT = 0.10  # flag plans with less free GPU memory than this share


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    params: int  # all parameters
    non_embedding: int  # without the input embedding and the output head

    @property
    def matmul_params(self) -> int:
        """The N of 6N: every parameter but the input embedding table (a lookup)."""
        return self.params - self.vocab * self.hidden

    @property
    def layer_params(self) -> int:
        return (self.non_embedding - self.hidden) // self.layers  # less the final norm

    @property
    def largest_unit(self) -> int:
        """Parameters of the biggest FSDP unit: one decoder layer or the embedding / output head."""
        return max(self.layer_params, self.vocab * self.hidden)


def model_shape(preset: str, overrides: dict | None, vocab: int) -> ModelShape:
    cfg = presets.build_config(preset, {**(overrides or {}), "vocab_size": vocab})
    n = presets.count_params(cfg)
    return ModelShape(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, intermediate=cfg.intermediate_size,
                      heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, vocab=vocab,
                      params=n["total"], non_embedding=n["non_embedding"])


def recipe_shape(recipe, vocab: int | None = None) -> ModelShape:
    """The recipe's model; ``vocab`` defaults to the tokenizer's planned size."""
    vocab = vocab or (presets.PHI4_VOCAB if recipe.tokenizer.kind == "phi4" else recipe.tokenizer.vocab_size)
    return model_shape(recipe.model.preset, recipe.model.overrides(), vocab)


def param_count(recipe, vocab: int | None = None) -> int:
    """All parameters of the recipe's model (preset + overrides + vocabulary)."""
    return recipe_shape(recipe, vocab).params


def activation_bytes(micro_batch: int, seq_len: int, layers: int, hidden: int, intermediate: int, heads: int,
                     kv_heads: int, checkpointing: bool) -> int:
    """Bytes kept for backward by the decoder layers and the final norm (bf16; module docstring)."""
    tokens = micro_batch * seq_len
    kv = hidden // heads * kv_heads
    layer = tokens * (24 * hidden + 6 * kv + 8 * intermediate + 4 * heads + 8)
    final_norm = tokens * (8 * hidden + 4)
    if checkpointing:
        return layers * 2 * tokens * hidden + layer + final_norm
    return layers * layer + final_norm


def memory_per_gpu(n_params: int, n_gpus: int, sharding: str, micro_batch: int, seq_len: int, layers: int,
                   hidden: int, heads: int, kv_heads: int, checkpointing: bool, *, intermediate: int, vocab: int,
                   unit_params: int = 0) -> dict[str, int]:
    """Bytes per GPU: weights, grads, optimizer, fsdp_buffers, activations, logits and total."""
    shards = n_gpus if sharding == "fsdp" and n_gpus > 1 else 1
    out = {name: math.ceil(n_params * size / shards) for name, size in STATE_BYTES.items()}
    out["fsdp_buffers"] = FSDP_BUFFER_BYTES * unit_params if shards > 1 else 0
    out["activations"] = activation_bytes(micro_batch, seq_len, layers, hidden, intermediate, heads, kv_heads,
                                          checkpointing)
    out["logits"] = LOGIT_BYTES * micro_batch * seq_len * vocab
    out["total"] = sum(out.values())
    return out


def attention_flops_per_token(layers: int, hidden: int, seq_len: int) -> int:
    return 12 * layers * hidden * seq_len


def flops_per_token(n_params: int, layers: int, hidden: int, seq_len: int) -> int:
    """Training FLOPs per token, 6N + 12·L·h·s, with N the matmul parameters (module docstring)."""
    return 6 * n_params + attention_flops_per_token(layers, hidden, seq_len)


def training_days(tokens: float, flops_per_token: float, n_gpus: int, peak_tflops: float, mfu: float) -> float:
    """Wall-clock days on ``n_gpus`` GPUs running at ``mfu`` of their dense bf16 peak."""
    return tokens * flops_per_token / (n_gpus * peak_tflops * 1e12 * mfu * DAY_S)


def implied_mfu(tokens: float, flops_per_token: float, n_gpus: int, peak_tflops: float, days: float) -> float:
    """The model FLOPs utilisation that trains ``tokens`` on ``n_gpus`` in ``days``."""
    return tokens * flops_per_token / (n_gpus * peak_tflops * 1e12 * days * DAY_S)


def model_card_check() -> dict:
    """The MFU implied by the phi-4 model card (9.8T tokens, 1920 H100-80G, 21 days) for the phi4-14b preset."""
    shape = model_shape("phi4-14b", None, presets.PHI4_VOCAB)
    mc = MODEL_CARD
    fpt = flops_per_token(shape.matmul_params, shape.layers, shape.hidden, mc["seq_len"])
    gpu = GPU_SPECS[mc["gpu"]]
    return {**mc, "gpu_label": gpu.label, "flops_per_token": fpt, "flops": mc["tokens"] * fpt,
            "mfu": implied_mfu(mc["tokens"], fpt, mc["gpus"], gpu.bf16_tflops, mc["days"])}


def start_model_shape(folder: str) -> ModelShape | None:
    """The shape of a post-training start model from its ``config.json`` (None when not on this machine)."""
    from transformers import AutoConfig

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        return None
    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    n = presets.count_params(_meta_model(cfg))
    heads = cfg.num_attention_heads
    return ModelShape(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, intermediate=cfg.intermediate_size,
                      heads=heads, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                      vocab=cfg.vocab_size, params=n["total"], non_embedding=n["non_embedding"])


def _meta_model(cfg):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


TRAIN_STAGES = ("pretrain", "midtrain", "sft", "dpo", "dpo_judge")


def plan(recipe, vocab: int | None = None) -> dict:
    """The resource plan of the recipe's training stages (``format_plan`` prints it).

    A post-training-only run (``sft.init`` = a model folder) is planned on that folder's
    shape; ``shape`` is None when the folder is not on this machine yet.
    """
    res = recipe.resources
    start = recipe.start_model()
    shape = start_model_shape(start) if start else recipe_shape(recipe, vocab)
    names = [n for n in TRAIN_STAGES if getattr(recipe, n).enabled and not (start and n in ("pretrain", "midtrain"))]
    stages = [_stage_plan(recipe, name, shape) for name in names] if shape else []
    return {"gpus": res.gpus, "gpu": res.gpu, "gpus_per_node": res.gpus_per_node, "sharding": res.sharding,
            "start_model": start,
            "checkpointing": res.activation_checkpointing, "mfu": res.mfu, "shape": shape, "stages": stages,
            "paper": PAPER_PRETRAIN if recipe.model.preset == "phi4-14b" else None,
            "model_card": model_card_check() if recipe.model.preset == "phi4-14b" else None}


def _stage_plan(recipe, name: str, shape: ModelShape) -> dict:
    """One training stage. DPO forwards chosen and rejected: 2 sequences per pair. Its steps follow
    from epochs x pairs unless ``max_steps`` is set, so its token count may be unknown before the data."""
    sec, res = getattr(recipe, name), recipe.resources
    dp = res.data_parallel()
    accum = sec.grad_accum_for(dp, name)
    seqs = sec.micro_batch_size * accum * dp
    per_pair = 2 if name.startswith("dpo") else 1
    steps = sec.max_steps
    tokens = steps * seqs * per_pair * sec.seq_len if steps else None
    fpt = flops_per_token(shape.matmul_params, shape.layers, shape.hidden, sec.seq_len)
    micro_rows = sec.micro_batch_size * per_pair
    memory = {key: memory_per_gpu(shape.params, res.gpus, res.sharding, micro_rows, sec.seq_len,
                                  shape.layers, shape.hidden, shape.heads, shape.kv_heads, ckpt,
                                  intermediate=shape.intermediate, vocab=shape.vocab, unit_params=shape.largest_unit)
              for key, ckpt in (("checkpointing", True), ("no_checkpointing", False))}
    out = {"name": name, "micro_batch": sec.micro_batch_size, "grad_accum": accum, "data_parallel": dp,
           "seq_len": sec.seq_len, "global_batch": seqs, "tokens_per_step": seqs * per_pair * sec.seq_len,
           "steps": steps, "tokens": tokens, "flops_per_token": fpt, "pairs": per_pair == 2,
           "attention_flops_per_token": attention_flops_per_token(shape.layers, shape.hidden, sec.seq_len),
           "flops": tokens * fpt if tokens else None, "memory": memory}
    if res.gpus and tokens:
        days = training_days(tokens, fpt, res.gpus, GPU_SPECS[res.gpu].bf16_tflops, res.mfu)
        out.update(days=days, gpu_days=days * res.gpus)
    return out


def format_plan(p: dict) -> str:
    if p["start_model"] and p["shape"] is None:
        return (f"resources: start model {p['start_model']} is not on this machine: the plan needs its "
                "config.json (run the dry-run where the folder is)")
    return _format_cpu(p) if p["gpus"] == 0 else _format_gpu(p)


def _steps_text(st: dict) -> str:
    """``1,000 steps x 524,288 tokens = 524.29M tokens``, or per-step only when steps follow the data."""
    unit = f"{st['tokens_per_step']:,} tokens" + (" (chosen + rejected)" if st["pairs"] else "")
    if st["steps"] is None:
        return f"steps from epochs x pairs (known once the pairs exist) x {unit}"
    return f"{st['steps']:,} steps x {unit} = {_si(st['tokens'])} tokens"


def _format_cpu(p: dict) -> str:
    shape = p["shape"]
    states = sum(STATE_BYTES.values()) * shape.params
    lines = [f"resources: this machine's CPU (resources.gpus = 0, fp32): {shape.params:,} parameters; weights + "
             f"grads + AdamW {states / 2**20:,.1f} MiB (16 B/param)"]
    for st in p["stages"]:
        act = st["memory"]["no_checkpointing"]
        mib = (CPU_FP32_FACTOR * act["activations"] + act["logits"]) / 2**20
        flops = f", {st['flops']:.2e} FLOPs" if st["flops"] else ""
        lines.append(f"  {st['name']}: {_steps_text(st)}; {_si(st['flops_per_token'], 'FLOP')}/token{flops}; "
                     f"activations + logits ~{mib:,.0f} MiB")
    return "\n".join(lines)


def _format_gpu(p: dict) -> str:
    shape, gpu = p["shape"], GPU_SPECS[p["gpu"]]
    nodes = math.ceil(p["gpus"] / p["gpus_per_node"])
    lines = [f"resources: {p['gpus']} x {gpu.label} ({nodes} node{'s' * (nodes > 1)} x "
             f"{min(p['gpus'], p['gpus_per_node'])}), sharding {p['sharding']}, activation checkpointing "
             f"{'on' if p['checkpointing'] else 'off'}, assumed MFU {p['mfu']:.0%}",
             f"  parameters: {shape.params:,} ({_si(shape.params)}); N = {shape.matmul_params:,} in matmuls "
             "(all but the input embedding) for 6N"]
    for st in p["stages"]:
        lines += _format_stage(st, p, gpu)
    if p["paper"] and p["stages"] and p["stages"][0]["name"] == "pretrain":
        st, ref = p["stages"][0], p["paper"]
        lines.append(f"  paper check (report §3): global batch {st['global_batch']:,} x {st['seq_len']:,} "
                     f"(paper: {ref['sequences']} x {ref['seq_len']}), {_si(st['tokens'])} pretraining tokens "
                     f"(paper: ~{ref['tokens'] / 1e12:g}T)")
    if p["model_card"]:
        mc = p["model_card"]
        lines.append(f"  model card: {_si(mc['tokens'])} tokens on {mc['gpus']} {mc['gpu_label']} in {mc['days']:g} "
                     f"days = {mc['flops']:.2e} FLOPs ({_si(mc['flops_per_token'], 'FLOP')}/token at {mc['seq_len']} "
                     f"context) implies MFU = {mc['mfu']:.1%} (wall-clock days: the MFU achieved was higher)")
    return "\n".join(lines)


def _format_stage(st: dict, p: dict, gpu: GPUSpec) -> list[str]:
    six_n = st["flops_per_token"] - st["attention_flops_per_token"]
    what = "pairs" if st["pairs"] else "sequences"
    cost = (f"; {st['flops']:.2e} FLOPs; at {p['mfu']:.0%} MFU {_time(st['gpu_days'], 'GPU-')} = "
            f"{_time(st['days'])} on {p['gpus']} GPU{'s' * (p['gpus'] > 1)}") if st["flops"] else ""
    lines = [f"  {st['name']}: {_steps_text(st)}; global batch {st['global_batch']:,} {what} x <= {st['seq_len']:,} "
             f"= {st['micro_batch']} (micro) x {st['grad_accum']} (accum) x {st['data_parallel']} (data-parallel ranks)",
             f"    per token {_si(st['flops_per_token'], 'FLOP')} = 6N {_si(six_n, 'FLOP')} + attention 12*L*h*s "
             f"{_si(st['attention_flops_per_token'], 'FLOP')}{cost}",
             f"    memory/GPU, GiB     {'weights':>8} {'grads':>7} {'adam':>7} {'fsdp-buf':>8} {'activ.':>7} "
             f"{'logits':>7} {'total':>7}  of {gpu.memory_bytes / GIB:.1f}"]
    for key, label in (("checkpointing", "checkpointing"), ("no_checkpointing", "no checkpointing")):
        m = st["memory"][key]
        chosen = "*" if (key == "checkpointing") == p["checkpointing"] else " "
        lines.append(f"    {chosen} {label:<17} {_gib(m['weights']):>8} {_gib(m['grads']):>7} "
                     f"{_gib(m['optimizer']):>7} {_gib(m['fsdp_buffers']):>8} {_gib(m['activations']):>7} "
                     f"{_gib(m['logits']):>7} {_gib(m['total']):>7}  {_fit(m['total'], gpu.memory_bytes)}")
    return lines


def _fit(total: int, memory: int) -> str:
    free = memory - total
    if free < 0:
        return f"DOES NOT FIT ({-free / GIB:.1f} GiB over)"
    return f"fits{', tight' if free < TIGHT * memory else ''} ({free / GIB:.1f} GiB free)"


def _time(days: float, prefix: str = "") -> str:
    """``27,766 GPU-days``, ``14.5 days``, ``11.0 hours``, ``0.1 seconds``."""
    if days >= 1:
        return f"{days:,.{0 if days >= 100 else 1}f} {prefix}days"
    if days >= 1 / 24:
        return f"{days * 24:.1f} {prefix}hours"
    return f"{days * DAY_S:.2g} {prefix}seconds"


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}" if n < 10 * GIB else f"{n / GIB:.1f}"


def _si(x: float, unit: str = "") -> str:
    """``94.94 GFLOP`` with a unit; a count without one: ``14.66B``, ``10.00T``."""
    prefixes = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)) if unit else \
        (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3))
    sep = " " if unit else ""
    for prefix, scale in prefixes:
        if x >= scale:
            return f"{x / scale:.2f}{sep}{prefix}{unit}"
    return f"{x:g}{sep}{unit}"


# -- measured against planned ---------------------------------------------------------------


def gpu_key_for(device_name: str, default: str) -> str:
    """The ``GPU_SPECS`` key of a CUDA device name ("NVIDIA H100 80GB HBM3" -> ``h100-80g``)."""
    name = device_name.lower()
    for key, needle in (("h200-141g", "h200"), ("h100-80g", "h100"), ("l40s-48g", "l40s")):
        if needle in name:
            return key
    if "a100" in name:
        return "a100-40g" if "40gb" in name else "a100-80g"
    return default


def measured_throughput(rows: list[dict], shape: ModelShape, seq_len: int, ranks: int, gpu: str | None,
                        skip: int = 5) -> dict:
    """Median tokens/s of a stage's train rows (after ``skip`` warm-up steps) and, on a GPU, its MFU.

    MFU = tokens/s x FLOPs per token (6N + 12·L·h·s, as the plan counts) / (ranks x dense bf16 peak).
    """
    speeds = sorted(r["tokens_per_s"] for r in rows[skip:] or rows)
    if not speeds:
        return {}
    tps = speeds[len(speeds) // 2]
    out = {"tokens_per_s_median": round(tps, 1), "steps_timed": len(speeds)}
    if gpu is not None:
        fpt = flops_per_token(shape.matmul_params, shape.layers, shape.hidden, seq_len)
        out.update(gpu=gpu, flops_per_token=fpt,
                   mfu=round(tps * fpt / (ranks * GPU_SPECS[gpu].bf16_tflops * 1e12), 4))
    return out
