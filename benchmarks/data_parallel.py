"""Data-parallel overhead: 2 ranks (FSDP2, DDP-style) against 1 process, same global batch.

    .venv/bin/python benchmarks/data_parallel.py [--steps 30] [--preset tiny] [--global-batch 16] [--seq-len 256]

Why: the training stages run under torchrun with the same ``Trainer``; what data
parallelism costs (all-gathers, reduce-scatters, the per-step reduction of the logged
loss, DCP-free steps) should be measured, not assumed. On this 2-core CPU the fair
baseline is one process with both cores (2 torch threads) against two gloo ranks with
one thread each: the same cores, the same global batch, the same data and the same
initial weights, so the ratio is the price of the communication and of splitting the
batch. On GPUs each rank has its own device and the ratio becomes a scaling efficiency
(docs/scaling.md).

Layouts, each for ``warmup + steps`` optimizer steps (the first ``warmup`` untimed):

* ``1 x 2 threads``   one process, micro-batch = global batch  (the baseline)
* ``2 ranks fsdp``    FSDP2, micro-batch = global / 2 per rank
* ``2 ranks ddp``     replicated weights, bucketed gradient all-reduce

Timing: the Trainer's own per-step ``tokens_per_s`` (rank 0, tokens of all ranks),
median over the timed steps. The script also prints each layout's final loss: equal
losses show the layouts did the same work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "data_parallel.json"


def _train(out_dir: str, args: dict, sharding: str) -> dict:
    import numpy as np

    from phiforge.model.presets import build_config, build_model
    from phiforge.train.distributed import ParallelConfig, current_env
    from phiforge.train.mixture import MixtureSampler
    from phiforge.train.packing import TokenSource
    from phiforge.train.trainer import Trainer, TrainSpec, read_metrics

    env = current_env()
    cfg = build_config(args["preset"], {})
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, cfg.vocab_size, int(n)).tolist() for n in rng.integers(50, 400, 3000)]
    sampler = MixtureSampler({"s": TokenSource.from_token_lists("s", docs, 0)}, {"s": 1.0}, args["seq_len"],
                             seed=0, rank=env.rank, world_size=env.world_size)
    steps = args["warmup"] + args["steps"]
    spec = TrainSpec(max_steps=steps, micro_batch_size=args["global_batch"] // env.world_size, seq_len=args["seq_len"],
                     lr=1e-3, warmup_steps=0, log_every=10**6, eval_every=0, checkpoint_every=0)
    trainer = Trainer(build_model(cfg, seed=0), spec, sampler, Path(out_dir), log=lambda m: None,
                      parallel=ParallelConfig(sharding=sharding))
    trainer.fit()
    rows = [r for r in read_metrics(Path(out_dir) / "metrics.jsonl") if r["kind"] == "train"]
    timed = [r["tokens_per_s"] for r in rows[args["warmup"]:]]
    return {"tokens_per_s": statistics.median(timed), "final_loss": rows[-1]["loss"]}


def _two_ranks(out_dir: str, args: dict, sharding: str) -> dict:
    return _train(out_dir, args, sharding)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    import torch

    from phiforge.testing.dist import run_ranks

    args = {"preset": a.preset, "global_batch": a.global_batch, "seq_len": a.seq_len, "steps": a.steps,
            "warmup": a.warmup}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(2)
        results["1 x 2 threads"] = _train(f"{tmp}/single", args, "none")
        for sharding in ("fsdp", "ddp"):
            results[f"2 ranks {sharding}"] = run_ranks(_two_ranks, 2, args=(f"{tmp}/{sharding}", args, sharding))
    base = results["1 x 2 threads"]["tokens_per_s"]
    print(f"{'layout':<16} {'tokens/s':>10} {'vs 1 process':>13} {'final loss':>11}")
    for name, r in results.items():
        r["ratio"] = round(r["tokens_per_s"] / base, 3)
        print(f"{name:<16} {r['tokens_per_s']:>10,.0f} {r['ratio']:>12.2f}x {r['final_loss']:>11.4f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"args": args, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
