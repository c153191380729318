"""Training throughput: phiforge's ``Trainer`` vs a plain Hugging Face ``transformers.Trainer``.

    .venv/bin/python benchmarks/train_throughput.py [--steps N] [--preset tiny] [--batch 16] [--seq-len 256]

Why: phiforge owns its training loop (exact resume, mixture accounting, one
metrics row per step). That is only worth it if the loop costs nothing next to
the stock HF loop, so this script measures both on identical work.

What is identical (and how):

* **Model**: ``build_config(preset)`` and two ``build_model(cfg, seed=0)`` copies,
  so both start from the same weights; fp32, CPU, no KV cache (phiforge passes
  ``use_cache=False``; HF Trainer sets ``config.use_cache = args.use_cache`` = False).
* **Data**: seeded random-token documents in one ``TokenSource``, packed by a
  ``MixtureSampler`` into ``[n, seq_len + 1]`` sequences. HF gets exactly the
  sequences phiforge's sampler yields (pre-drawn from a sampler with the same seed),
  in the same order (``train_sampling_strategy="sequential"``), same micro-batch.
* **Predicted tokens**: phiforge predicts ``seq[1:]`` from ``seq[:-1]`` (``seq_len``
  targets per row). HF's causal-LM loss would shift ``labels`` itself and then lose
  the last position (``seq_len - 1`` targets), so each HF row is
  ``input_ids = seq[:-1]``, ``labels = seq[:-1]`` and ``shift_labels = seq[1:]``: the
  loss uses ``shift_labels`` as-is, giving the same ``seq_len`` targets, the same
  mean cross-entropy (HF divides the summed loss by its count of ``shift_labels``)
  and the same forward/backward shapes.
* **Optimiser**: AdamW (torch, non-fused, like phiforge) with the same lr, betas,
  eps, weight decay 0.1 on matrices only (both exclude the 1-D RMSNorm gains),
  grad-clip 1.0, linear decay to 0 without warm-up over the same number of steps.
  ``--hf-optim adamw_torch_fused`` measures HF's own default instead.
* **Threads**: one ``torch.set_num_threads`` for the whole process, checked
  before each measurement.
* **Overheads**: no eval, no checkpoints, ``report_to=[]``,
  ``dataloader_num_workers=0``, HF logging left at its defaults (every 500 steps),
  tqdm progress bar off (this script prints its own table).

Timing: both loops are run for ``warmup + steps + 1`` optimizer steps and
timestamped at the start of every step's forward pass (phiforge: a wrapper around
its ``objective``; HF: the ``on_step_begin`` callback, which fires after the batch
is fetched). Throughput is ``steps × batch × seq_len`` over the time from step
``warmup + 1`` to step ``warmup + steps + 1``: whole loop iterations, data fetching,
logging and bookkeeping included, model construction and data building excluded.
phiforge's self-reported tokens/s over the same steps (from ``metrics.jsonl``,
whose ``elapsed_s`` is cumulative train time) is shown as a cross-check. As a
check that the two loops really did the same work, the script reports the largest
parameter difference between the two trained models.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from phiforge.model.presets import build_config, build_model
from phiforge.train.mixture import MixtureSampler
from phiforge.train.packing import TokenSource
from phiforge.train.trainer import Trainer, TrainSpec, causal_lm_loss, read_metrics

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
SEED = 0
LR, WEIGHT_DECAY, BETAS, EPS, CLIP = 3e-4, 0.1, (0.9, 0.95), 1e-8, 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="measured optimizer steps per trainer")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before measuring")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16, help="micro-batch size (sequences)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per trainer, alternating which goes first; the median is reported")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--hf-optim", default="adamw_torch", help="HF TrainingArguments.optim")
    p.add_argument("--quick", action="store_true", help="10 measured steps, 2 warm-up (for smoke tests)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 10, 2
    return args


def make_source(vocab_size: int, eos_id: int, n_tokens: int, doc_len: int) -> TokenSource:
    """Seeded random-token documents, enough for ``n_tokens`` training tokens without repeats."""
    gen = torch.Generator().manual_seed(SEED)
    n_docs = n_tokens // doc_len + 2
    docs = torch.randint(0, vocab_size, (n_docs, doc_len), generator=gen)
    return TokenSource.from_token_lists("random", docs.tolist(), eos_id)


def make_sampler(source: TokenSource, seq_len: int) -> MixtureSampler:
    return MixtureSampler({"random": source}, {"random": 1.0}, seq_len, seed=SEED)


def time_span(stamps: list[float], warmup: int, steps: int) -> float:
    """Seconds from the start of step ``warmup + 1`` to the start of step ``warmup + steps + 1``."""
    if len(stamps) < warmup + steps + 1:
        raise RuntimeError(f"expected {warmup + steps + 1} step timestamps, got {len(stamps)}")
    return stamps[warmup + steps] - stamps[warmup]


# -- phiforge ---------------------------------------------------------------
def run_phiforge(cfg, source: TokenSource, args: argparse.Namespace, work: Path) -> tuple[dict, torch.nn.Module]:
    """Train with phiforge's own loop; time whole steps via a wrapper around the objective."""
    total = args.warmup + args.steps + 1
    model = build_model(cfg, seed=SEED)
    spec = TrainSpec(max_steps=total, micro_batch_size=args.batch, seq_len=args.seq_len, lr=LR,
                     weight_decay=WEIGHT_DECAY, beta1=BETAS[0], beta2=BETAS[1], eps=EPS,
                     grad_clip=CLIP, log_every=10**9)
    stamps: list[float] = []
    threads: list[int] = []

    def timed_objective(m, batch, autocast):
        stamps.append(time.perf_counter())
        threads.append(torch.get_num_threads())
        return causal_lm_loss(m, batch, autocast)

    trainer = Trainer(model, spec, make_sampler(source, args.seq_len), work / "phiforge",
                      objective=timed_objective, log=lambda s: print(f"  [phiforge] {s}"))
    trainer.fit()
    rows = [r for r in read_metrics(work / "phiforge" / "metrics.jsonl") if r["kind"] == "train"]
    by_step = {r["step"]: r for r in rows}
    self_s = by_step[args.warmup + args.steps]["elapsed_s"] - by_step[args.warmup]["elapsed_s"] \
        if args.warmup else by_step[args.steps]["elapsed_s"]
    result = _result(time_span(stamps, args.warmup, args.steps), args, set(threads))
    result["self_reported_seconds"] = round(self_s, 4)
    result["self_reported_tokens_per_s"] = _tokens(args) / self_s
    result["mean_train_loss"] = statistics.fmean(r["loss"] for r in rows)
    return result, model


# -- Hugging Face Trainer ----------------------------------------------------
def hf_rows(source: TokenSource, args: argparse.Namespace) -> list[dict]:
    """The exact sequences phiforge's sampler yields, as HF rows with ``seq_len`` targets each."""
    sampler = make_sampler(source, args.seq_len)
    total = args.warmup + args.steps + 1
    seqs = torch.cat([sampler.next_batch(args.batch) for _ in range(total)])
    return [{"input_ids": s[:-1], "labels": s[:-1], "shift_labels": s[1:]} for s in seqs]


def run_hf(cfg, rows: list[dict], args: argparse.Namespace, work: Path) -> tuple[dict, torch.nn.Module]:
    """Train with a stock ``transformers.Trainer``; time whole steps via ``on_step_begin``."""
    from transformers import Trainer as HFTrainer, TrainerCallback, TrainingArguments

    class StepClock(TrainerCallback):
        def __init__(self):
            self.stamps: list[float] = []
            self.threads: set[int] = set()

        def on_step_begin(self, *a, **kw):
            self.stamps.append(time.perf_counter())
            self.threads.add(torch.get_num_threads())

    model = build_model(cfg, seed=SEED)
    hf_args = TrainingArguments(
        output_dir=str(work / "hf"), max_steps=len(rows) // args.batch, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=LR, weight_decay=WEIGHT_DECAY, adam_beta1=BETAS[0],
        adam_beta2=BETAS[1], adam_epsilon=EPS, max_grad_norm=CLIP, lr_scheduler_type="linear",
        warmup_steps=0, optim=args.hf_optim, use_cpu=True, eval_strategy="no", save_strategy="no",
        report_to=[], dataloader_num_workers=0, disable_tqdm=True, seed=SEED,
        train_sampling_strategy="sequential",  # same order as phiforge's sampler
        remove_unused_columns=False,  # keep ``shift_labels`` (forward takes it via **kwargs)
    )
    clock = StepClock()
    out = HFTrainer(model=model, args=hf_args, train_dataset=rows, callbacks=[clock]).train()
    result = _result(time_span(clock.stamps, args.warmup, args.steps), args, clock.threads)
    result["mean_train_loss"] = out.training_loss
    return result, model


# -- reporting ---------------------------------------------------------------
def _tokens(args: argparse.Namespace) -> int:
    return args.steps * args.batch * args.seq_len


def _result(seconds: float, args: argparse.Namespace, threads: set[int]) -> dict:
    if len(threads) != 1:
        raise RuntimeError(f"torch thread count changed during training: {sorted(threads)}")
    return {"seconds": round(seconds, 4), "tokens": _tokens(args), "tokens_per_s": _tokens(args) / seconds,
            "s_per_step": seconds / args.steps, "threads": threads.pop()}


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest |Δ| between two models' parameters: ~0 means both loops did the same updates."""
    sb = dict(b.named_parameters())
    return max(float((p.detach() - sb[n].detach()).abs().max()) for n, p in a.named_parameters())


def format_table(runs: dict[str, list[dict]]) -> str:
    """One line per trainer (median over repeats) plus phiforge's self-reported figure."""
    head = f"{'trainer':<34} {'steps':>5} {'tokens':>9} {'seconds':>8} {'s/step':>7} {'tokens/s':>9}"
    lines = [head, "-" * len(head)]
    for name, results in runs.items():
        r = median_result(results)
        lines.append(f"{name:<34} {round(r['seconds'] / r['s_per_step']):>5} {r['tokens']:>9,} "
                     f"{r['seconds']:>8.2f} {r['s_per_step']:>7.3f} {r['tokens_per_s']:>9,.0f}")
    pf = median_result(runs["phiforge Trainer"])
    lines.append(f"{'phiforge (self-reported, metrics)':<34} {'':>5} {pf['tokens']:>9,} "
                 f"{pf['self_reported_seconds']:>8.2f} {'':>7} {pf['self_reported_tokens_per_s']:>9,.0f}")
    return "\n".join(lines)


def median_result(results: list[dict]) -> dict:
    """The repeat with the median tokens/s (a real run, so its fields stay consistent)."""
    ordered = sorted(results, key=lambda r: r["tokens_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def measure(args: argparse.Namespace) -> dict:
    """Build the shared config and data once, then run both trainers ``--repeats`` times."""
    cfg = build_config(args.preset)
    n_tokens = (args.warmup + args.steps + 1) * args.batch * (args.seq_len + 1)
    source = make_source(cfg.vocab_size, cfg.eos_token_id, n_tokens, doc_len=4 * args.seq_len)
    rows = hf_rows(source, args)
    runs: dict[str, list[dict]] = {"phiforge Trainer": [], "HF transformers.Trainer": []}
    diffs = []
    for rep in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            order = ["phiforge", "hf"] if rep % 2 == 0 else ["hf", "phiforge"]
            models = {}
            for which in order:
                print(f"repeat {rep + 1}/{args.repeats}: {which} ...", flush=True)
                if which == "phiforge":
                    res, models[which] = run_phiforge(cfg, source, args, Path(tmp))
                    runs["phiforge Trainer"].append(res)
                else:
                    res, models[which] = run_hf(cfg, rows, args, Path(tmp))
                    runs["HF transformers.Trainer"].append(res)
            diffs.append(max_param_diff(models["phiforge"], models["hf"]))
    return {"runs": runs, "max_param_diff": max(diffs), "n_params": sum(p.numel() for p in models["hf"].parameters())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    measured = measure(args)
    runs = measured["runs"]
    pf, hf = median_result(runs["phiforge Trainer"]), median_result(runs["HF transformers.Trainer"])
    ratio = pf["tokens_per_s"] / hf["tokens_per_s"]
    print()
    print(f"preset={args.preset} ({measured['n_params'] / 1e6:.2f}M params) batch={args.batch} "
          f"seq_len={args.seq_len} warmup={args.warmup} steps={args.steps} repeats={args.repeats} "
          f"threads={pf['threads']} hf_optim={args.hf_optim}")
    print(format_table(runs))
    print(f"mean train loss: phiforge {pf['mean_train_loss']:.5f}  HF {hf['mean_train_loss']:.5f}  "
          f"| max |param diff| after training: {measured['max_param_diff']:.2e}")
    report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "n_params": measured["n_params"], "runs": runs, "ratio": ratio,
              "max_param_diff": measured["max_param_diff"],
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version()},
              "machine": {"platform": platform.platform(), "cpus": _cpu_count()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    print(f"train_throughput ratio (phiforge / HF Trainer): {ratio:.2f}x")
    return 0


def _cpu_count() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
