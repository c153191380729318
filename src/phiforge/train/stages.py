"""The ``pretrain`` and ``midtrain`` stages: build the inputs, run the ``Trainer``, export.

Pretraining (report §3): the Phi-4 architecture from a preset, the source mixture
with exact fractions and epoch accounting, AdamW (wd 0.1), linear warm-up + decay.
Midtraining (report §3.3): the pretrained weights with the RoPE base raised
(10K → 250K by default) and a longer context, peak LR / 10, and a mixture of 30%
long documents and 70% replayed pretraining data (both configurable).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from phiforge.data.records import write_json
from phiforge.errors import DataError
from phiforge.model import presets
from phiforge.run.context import StageContext, resolve_precision
from phiforge.tokenize.stage import load_run_tokenizer, load_sources
from phiforge.train.checkpoint import export_hf_model, load_hf_model
from phiforge.train.mixture import MixtureSampler, format_mixture_table, normalize_weights
from phiforge.train.packing import TokenSource
from phiforge.train.trainer import Trainer, TrainSpec


def train_spec(section, lr: float, device: str, ranks: int = 1, where: str = "pretrain") -> TrainSpec:
    """The Trainer settings of a recipe section; ``grad_accum`` follows ``global_batch`` over ``ranks``."""
    fields = {k: getattr(section, k) for k in TrainSpec.__dataclass_fields__
              if k not in ("lr", "precision", "grad_accum") and hasattr(section, k)}
    return TrainSpec(**fields, lr=lr, grad_accum=section.grad_accum_for(ranks, where),
                     precision=resolve_precision(section.precision, device))


def eval_sets(valid: dict[str, TokenSource], seq_len: int, n: int, seed: int) -> dict[str, torch.Tensor]:
    """The first ``n`` packed sequences of each held-out source (fixed across the run)."""
    out = {}
    for name, src in valid.items():
        if src.n_chunks(seq_len) >= 1:
            k = min(n, src.n_chunks(seq_len))
            out[name] = torch.from_numpy(np.stack([src.chunk(i, seq_len, seed) for i in range(k)]).astype(np.int64))
    return out


def write_mixture(path: Path, sampler: MixtureSampler, spec: TrainSpec) -> str:
    total_seqs = spec.max_steps * spec.micro_batch_size * spec.grad_accum * sampler.world_size
    rows = sampler.plan(total_seqs)
    write_json(path, {"seq_len": spec.seq_len, "total_tokens": total_seqs * spec.seq_len,
                      "rows": [{**r.__dict__, "epochs": r.epochs} for r in rows]})
    return format_mixture_table(rows, title=f"mixture ({total_seqs * spec.seq_len:,} tokens)")


def _check_manifest(ctx: StageContext, sampler: MixtureSampler, spec: TrainSpec) -> None:
    """Read the curate stage's mixture manifest (estimated before tokenisation) and redo it exactly.

    Curation changes how many unique tokens a source has; a source the mixture would
    repeat more than ``curate.max_epochs`` times gets a warning here, with exact counts
    (report §3.2, Table 5: epochs = fraction x total tokens / unique tokens).
    """
    if not (ctx.recipe.curate.enabled and ctx.has_output("curate")):
        return
    from phiforge.curate.mixture import build_manifest, read_manifest

    planned = read_manifest(ctx.input_dir("curate") / "mixture.json")
    total = spec.max_steps * spec.micro_batch_size * spec.grad_accum * sampler.world_size * spec.seq_len
    exact = build_manifest(sampler.weights, {n: s.n_tokens for n, s in sampler.sources.items()}, total,
                           max_epochs=ctx.recipe.curate.max_epochs)
    before = {r["source"]: r["epochs"] for r in planned.rows}
    ctx.log("epochs per source, curate's estimate -> exact: " + ", ".join(
        f"{r['source']} {before.get(r['source'], float('nan')):.2f} -> {r['epochs']:.2f}" for r in exact.rows))
    for warning in exact.warnings:
        ctx.log(f"WARNING: {warning}")


def run_pretrain(ctx: StageContext) -> dict:
    r, device = ctx.recipe, ctx.device
    tok_dir = ctx.input_dir("tokenizer")
    tok = load_run_tokenizer(tok_dir)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    train = load_sources(tok_dir, "train", r.pretrain.mixture, eos)
    valid = load_sources(tok_dir, "valid", r.pretrain.mixture, eos)
    env = ctx.dist
    spec = train_spec(r.pretrain, r.pretrain.lr, device, env.world_size, "pretrain")
    sampler = MixtureSampler(train, r.pretrain.mixture, spec.seq_len, seed=r.run.seed, where="pretrain.mixture",
                             rank=env.rank, world_size=env.world_size)
    ctx.log(write_mixture(ctx.stage_dir / "mixture.json", sampler, spec))
    _check_manifest(ctx, sampler, spec)
    model = _new_model(ctx, tok)  # on the CPU: the Trainer places (or shards) it on the device
    return _train_and_export(ctx, model, tok, spec, sampler, eval_sets(valid, spec.seq_len,
                             r.pretrain.valid_sequences, r.run.seed))


def _new_model(ctx: StageContext, tok):
    r = ctx.recipe
    ids = {"bos": tok.convert_tokens_to_ids(tok.eos_token), "eos": tok.convert_tokens_to_ids(tok.eos_token),
           "pad": tok.pad_token_id}
    config = presets.build_config(r.model.preset, {**r.model.overrides(), "vocab_size": len(tok)}, ids)
    model = presets.build_model(config, seed=r.run.seed)
    n = presets.count_params(model)
    ctx.log(f"model: preset {r.model.preset}, {n['total'] / 1e6:.2f}M parameters "
            f"({n['non_embedding'] / 1e6:.2f}M non-embedding)")
    return model


def _train_and_export(ctx: StageContext, model, tok, spec: TrainSpec, sampler, evals) -> dict:
    torch.manual_seed(ctx.recipe.run.seed)
    if ctx.recipe.run.threads:
        torch.set_num_threads(ctx.recipe.run.threads)
    params = presets.count_params(model)  # before sharding: counts of the whole model
    trainer = Trainer(model, spec, sampler, ctx.stage_dir, eval_sets=evals, device=ctx.device, log=ctx.log,
                      parallel=ctx.parallel)
    summary = trainer.fit()
    speed = _throughput(ctx, model, spec, trainer)
    export_hf_model(model, tok, ctx.stage_dir / "model")
    ctx.log(f"exported Hugging Face model to {ctx.stage_dir / 'model'}")
    return {**summary, **speed, "epochs": sampler.epochs_so_far(), "params": params,
            "precision": spec.precision, "device": ctx.device, "ranks": ctx.dist.world_size,
            "sharding": ctx.parallel.resolved(ctx.dist.world_size)}


def _throughput(ctx: StageContext, model, spec: TrainSpec, trainer: Trainer) -> dict:
    """Median tokens/s, and on GPUs the MFU and peak memory, next to what the dry-run plan assumed."""
    from phiforge.run.resources import gpu_key_for, measured_throughput, model_shape
    from phiforge.train.trainer import read_metrics

    if not ctx.dist.is_main:
        return {}
    cfg = model.config
    shape = model_shape(ctx.recipe.model.preset, {**ctx.recipe.model.overrides(), **_shape_of(cfg)}, cfg.vocab_size)
    gpu = None
    out: dict = {}
    if torch.device(ctx.device).type == "cuda":
        gpu = gpu_key_for(torch.cuda.get_device_name(), ctx.recipe.resources.gpu)
        out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    rows = [r for r in read_metrics(trainer.metrics_path) if r["kind"] == "train"]
    out.update(measured_throughput(rows, shape, spec.seq_len, ctx.dist.world_size, gpu))
    if "mfu" in out:
        ctx.log(f"throughput {out['tokens_per_s_median']:,.0f} tokens/s (median), MFU {out['mfu']:.1%} of "
                f"{ctx.dist.world_size} x {gpu} bf16 peak (plan assumed {ctx.recipe.resources.mfu:.0%}), "
                f"peak memory {out['peak_gpu_memory_gib']} GiB")
    return out


def _shape_of(cfg) -> dict:
    return {k: getattr(cfg, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                         "num_attention_heads", "num_key_value_heads")}


def run_midtrain(ctx: StageContext) -> dict:
    r, device = ctx.recipe, ctx.device
    tok_dir = ctx.input_dir("tokenizer")
    tok = load_run_tokenizer(tok_dir)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    weights = midtrain_weights(r.pretrain.mixture, r.data.long_source_names(), r.midtrain.long_fraction)
    train = load_sources(tok_dir, "train", weights, eos)
    _check_long_sources(ctx, train, r.data.long_source_names(), r.pretrain.seq_len)
    env = ctx.dist
    spec = train_spec(r.midtrain, r.midtrain_lr(), device, env.world_size, "midtrain")
    sampler = MixtureSampler(train, weights, spec.seq_len, seed=r.run.seed + 1, where="midtrain mixture",
                             rank=env.rank, world_size=env.world_size)
    ctx.log(write_mixture(ctx.stage_dir / "mixture.json", sampler, spec))
    model = extend_context(load_hf_model(ctx.input_dir("pretrain") / "model"), r.midtrain.rope_theta,
                           spec.seq_len)
    ctx.log(f"RoPE base {r.midtrain.rope_theta:,.0f}, context {spec.seq_len}, peak LR {spec.lr:.2e}")
    valid = load_sources(tok_dir, "valid", weights, eos)
    return _train_and_export(ctx, model, tok, spec, sampler,
                             eval_sets(valid, spec.seq_len, r.midtrain.valid_sequences, r.run.seed))


def midtrain_weights(pretrain_mix: dict[str, float], long_sources: list[str], long_fraction: float) -> dict[str, float]:
    """30% long documents (split evenly) + 70% replay of the pretraining mixture, by default."""
    replay = normalize_weights(pretrain_mix, "pretrain.mixture")
    weights = {n: w * (1 - long_fraction) for n, w in replay.items() if n not in long_sources}
    for n in long_sources:
        weights[n] = weights.get(n, 0.0) + long_fraction / len(long_sources)
    return weights


def _check_long_sources(ctx: StageContext, train: dict[str, TokenSource], names: list[str], short_len: int) -> None:
    for n in names:
        if n not in train:
            raise DataError(f"midtrain: long source '{n}' has no encoded data; check the data stage output")
        src = train[n]
        lengths = src.offsets[1:] - src.offsets[:-1]
        share = float((lengths > short_len).mean())
        ctx.log(f"long source {n}: {share:.0%} of documents exceed the pretraining context ({short_len})")


def extend_context(model, rope_theta: float, seq_len: int):
    """Raise the RoPE base and the context length; rebuild so rotary caches match."""
    cfg = model.config
    presets.set_rope_theta(cfg, rope_theta)
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, seq_len)
    cfg.original_max_position_embeddings = cfg.max_position_embeddings
    fresh = presets.build_model(cfg)
    fresh.load_state_dict(model.state_dict())
    return fresh
