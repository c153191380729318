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
is fetched). A step's time is the gap to the next timestamp, so it covers a whole
loop iteration (forward, backward, clipping, optimizer, logging/bookkeeping, fetching
the next batch); model construction and data building are excluded. Steps
``warmup + 1 .. warmup + steps`` are measured, for ``--repeats`` runs per trainer
with alternating order, after a few throwaway passes that warm the process up
(allocator, thread pool) so the first trainer is not charged for it. "tokens/s" is total tokens over total time; the ratio on
the last line uses the *median* step time, which shrugs off the stalls other
processes cause on a shared machine (both agree on a quiet one). phiforge's
self-reported speed (``metrics.jsonl``: per-step ``tokens_per_s``, timed inside
``_one_step``) is shown as a cross-check. As evidence that both loops really did
the same work, the script prints both mean training losses and the largest
parameter difference between the two trained models (0 means bit-identical).
The "other load" column is the CPU (in cores) that other processes used during
each trainer's runs; on a shared 2-core machine anything above ~0.1 makes the
numbers unreliable, and the script says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
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
from phiforge.testing.load import OtherLoad

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
    p.add_argument("--repeats", type=int, default=2,
                   help="runs per trainer, alternating which trainer goes first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--hf-optim", default="adamw_torch", help="HF TrainingArguments.optim")
    p.add_argument("--quick", action="store_true", help="10 measured steps, 2 warm-up, 1 repeat (smoke test)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats = 10, 2, 1
    return args


def make_source(vocab_size: int, eos_id: int, n_tokens: int, doc_len: int) -> TokenSource:
    """Seeded random-token documents, enough for ``n_tokens`` training tokens without repeats."""
    gen = torch.Generator().manual_seed(SEED)
    n_docs = n_tokens // doc_len + 2
    docs = torch.randint(0, vocab_size, (n_docs, doc_len), generator=gen)
    return TokenSource.from_token_lists("random", docs.tolist(), eos_id)


def make_sampler(source: TokenSource, seq_len: int) -> MixtureSampler:
    return MixtureSampler({"random": source}, {"random": 1.0}, seq_len, seed=SEED)


def step_times(stamps: list[float], warmup: int, steps: int) -> list[float]:
    """Durations of steps ``warmup + 1 .. warmup + steps`` from per-step start timestamps."""
    if len(stamps) < warmup + steps + 1:
        raise RuntimeError(f"expected {warmup + steps + 1} step timestamps, got {len(stamps)}")
    window = stamps[warmup: warmup + steps + 1]
    return [b - a for a, b in zip(window, window[1:])]


def _one_thread_count(threads: set[int]) -> int:
    if len(threads) != 1:
        raise RuntimeError(f"torch thread count changed during training: {sorted(threads)}")
    return threads.pop()


# -- phiforge ---------------------------------------------------------------
def run_phiforge(cfg, source: TokenSource, args: argparse.Namespace, work: Path) -> tuple[dict, torch.nn.Module]:
    """Train with phiforge's own loop; time whole steps via a wrapper around the objective."""
    model = build_model(cfg, seed=SEED)
    spec = TrainSpec(max_steps=args.warmup + args.steps + 1, micro_batch_size=args.batch, seq_len=args.seq_len,
                     lr=LR, weight_decay=WEIGHT_DECAY, beta1=BETAS[0], beta2=BETAS[1], eps=EPS,
                     grad_clip=CLIP, log_every=10**9)
    stamps: list[float] = []
    threads: set[int] = set()

    def timed_objective(m, batch, autocast):
        stamps.append(time.perf_counter())
        threads.add(torch.get_num_threads())
        return causal_lm_loss(m, batch, autocast)

    trainer = Trainer(model, spec, make_sampler(source, args.seq_len), work / "phiforge",
                      objective=timed_objective, log=lambda s: print(f"  [phiforge] {s}"))
    trainer.fit()
    rows = [r for r in read_metrics(work / "phiforge" / "metrics.jsonl") if r["kind"] == "train"]
    measured = [r for r in rows if args.warmup < r["step"] <= args.warmup + args.steps]
    per_step_tokens = args.batch * args.seq_len
    return {"step_s": step_times(stamps, args.warmup, args.steps), "threads": _one_thread_count(threads),
            "self_reported_step_s": [per_step_tokens / r["tokens_per_s"] for r in measured],
            "mean_train_loss": statistics.fmean(r["loss"] for r in rows)}, model


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
    return {"step_s": step_times(clock.stamps, args.warmup, args.steps),
            "threads": _one_thread_count(clock.threads), "mean_train_loss": out.training_loss}, model


# -- measuring and reporting -------------------------------------------------
def measure(args: argparse.Namespace) -> dict:
    """Build the shared config and data once, then run both trainers ``--repeats`` times."""
    cfg = build_config(args.preset)
    n_tokens = (args.warmup + args.steps + 1) * args.batch * (args.seq_len + 1)
    source = make_source(cfg.vocab_size, cfg.eos_token_id, n_tokens, doc_len=4 * args.seq_len)
    rows = hf_rows(source, args)
    warm_process(cfg, rows, args)
    runs: dict[str, list[dict]] = {"phiforge": [], "hf": []}
    diffs = []
    for rep in range(args.repeats):
        order = ["phiforge", "hf"] if rep % 2 == 0 else ["hf", "phiforge"]
        models = {}
        with tempfile.TemporaryDirectory() as tmp:
            for which in order:
                print(f"repeat {rep + 1}/{args.repeats}: {which} ...", flush=True)
                gc.collect()  # free the previous run's trainer now, not in the middle of this one
                with OtherLoad() as load:
                    if which == "phiforge":
                        res, models[which] = run_phiforge(cfg, source, args, Path(tmp))
                    else:
                        res, models[which] = run_hf(cfg, rows, args, Path(tmp))
                runs[which].append({**res, "other_cores": load.cores})
        diffs.append(max_param_diff(models["phiforge"], models["hf"]))
    n_params = sum(p.numel() for p in models["hf"].parameters())
    return {"runs": runs, "max_param_diff": max(diffs), "n_params": n_params}


def warm_process(cfg, rows: list[dict], args: argparse.Namespace, steps: int = 3) -> None:
    """A few throwaway forward/backward passes before anything is timed.

    The first training in a process pays extra for the allocator (about twice the
    page faults) and thread-pool start-up for several steps; without this, whichever
    trainer runs first, phiforge, is charged for it.
    """
    model = build_model(cfg, seed=SEED + 1)
    batch = torch.stack([r["input_ids"] for r in rows[:args.batch]])
    for _ in range(steps):
        model(input_ids=batch, use_cache=False).logits.float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest |Δ| between two models' parameters: 0 means both loops did the same updates."""
    sb = dict(b.named_parameters())
    return max(float((p.detach() - sb[n].detach()).abs().max()) for n, p in a.named_parameters())


def summarize(step_s: list[float], tokens_per_step: int, other: list[float | None]) -> dict:
    """Totals and medians over all measured steps (pooled across repeats)."""
    seconds, median = sum(step_s), statistics.median(step_s)
    known = [c for c in other if c is not None]
    return {"steps": len(step_s), "tokens": len(step_s) * tokens_per_step, "seconds": seconds,
            "tokens_per_s": len(step_s) * tokens_per_step / seconds, "median_step_s": median,
            "median_tokens_per_s": tokens_per_step / median, "other_cores_max": max(known) if known else None}


def summaries(runs: dict[str, list[dict]], tokens_per_step: int) -> dict[str, dict]:
    """Table rows: both trainers by wall clock, and phiforge by its own metrics.jsonl."""
    def pooled(key: str, which: str) -> list[float]:
        return [t for r in runs[which] for t in r[key]]

    def other(which: str) -> list[float | None]:
        return [r["other_cores"] for r in runs[which]]

    return {"phiforge Trainer": summarize(pooled("step_s", "phiforge"), tokens_per_step, other("phiforge")),
            "HF transformers.Trainer": summarize(pooled("step_s", "hf"), tokens_per_step, other("hf")),
            "phiforge (self-reported)": summarize(pooled("self_reported_step_s", "phiforge"), tokens_per_step,
                                                  other("phiforge"))}


def format_table(rows: dict[str, dict]) -> str:
    """'other load' = max CPU cores busy outside this process during that trainer's runs."""
    head = (f"{'trainer':<26} {'steps':>5} {'tokens':>9} {'seconds':>8} {'tokens/s':>9} "
            f"{'median s/step':>13} {'median tok/s':>12} {'other load':>10}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        other = "n/a" if r["other_cores_max"] is None else f"{r['other_cores_max']:.2f}"
        lines.append(f"{name:<26} {r['steps']:>5} {r['tokens']:>9,} {r['seconds']:>8.2f} {r['tokens_per_s']:>9,.0f} "
                     f"{r['median_step_s']:>13.3f} {r['median_tokens_per_s']:>12,.0f} {other:>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    measured = measure(args)
    rows = summaries(measured["runs"], args.batch * args.seq_len)
    pf, hf = rows["phiforge Trainer"], rows["HF transformers.Trainer"]
    ratio, ratio_total = pf["median_tokens_per_s"] / hf["median_tokens_per_s"], pf["tokens_per_s"] / hf["tokens_per_s"]
    print_summary(args, measured, rows, ratio_total)
    report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "n_params": measured["n_params"], "summary": rows, "ratio": ratio, "ratio_total": ratio_total,
              "max_param_diff": measured["max_param_diff"], "runs": measured["runs"], "environment": _environment()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    print(f"train_throughput ratio (phiforge / HF Trainer): {ratio:.2f}x")
    return 0


def print_summary(args: argparse.Namespace, measured: dict, rows: dict[str, dict], ratio_total: float) -> None:
    runs = measured["runs"]
    loss = {k: statistics.fmean(r["mean_train_loss"] for r in runs[k]) for k in runs}
    print(f"\npreset={args.preset} ({measured['n_params'] / 1e6:.2f}M params) batch={args.batch} "
          f"seq_len={args.seq_len} warmup={args.warmup} steps={args.steps} repeats={args.repeats} "
          f"threads={runs['hf'][0]['threads']} hf_optim={args.hf_optim}")
    print(format_table(rows))
    print(f"same work: mean train loss phiforge {loss['phiforge']:.6f} / HF {loss['hf']:.6f}; "
          f"max |param diff| after training {measured['max_param_diff']:.2e}")
    print(f"ratio of total tokens/s (sensitive to other processes): {ratio_total:.2f}x")
    busy = max((r["other_cores_max"] or 0.0) for r in rows.values())
    if busy > 0.15:
        print(f"WARNING: other processes used up to {busy:.2f} CPU cores during a run (column 'other load'); "
              f"timings are unreliable, rerun on an idle machine")


def _environment() -> dict:
    import transformers

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "cpus": cpus,
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}


if __name__ == "__main__":
    sys.exit(main())
