"""SFT epoch time: padded rows vs packed rows, and the trained-positions-only LM head vs full logits.

    .venv/bin/python benchmarks/sft_throughput.py [--preset tiny] [--examples 64] [--max-length 512] [--repeats 3]
    .venv/bin/python benchmarks/sft_throughput.py --quick          # smoke run, seconds

Why: ``phiforge.posttrain.sft`` (Phi-4 report §4.1) offers padded batches (one
conversation per row) and packed batches (conversations concatenated, position
ids restarting per conversation so attention stays block-diagonal), and its
``masked_lm_loss`` sends only the trained (assistant) positions through the LM
head. Chat data has very uneven lengths, so padding wastes compute; a 100K
vocabulary makes full logits expensive. This measures both choices on the same work.

What is identical: the examples (``--examples`` seeded random-token conversations of
``--min-length`` to ``--max-length`` tokens, the first 20-60% of each a prompt with
mask 0), the model (preset, RANDOM weights, seed 0, fp32), the micro-batch size in
rows, and the optimizer step (``Trainer``'s AdamW, clipping). Each variant runs ONE
epoch over all examples (packing makes fewer, longer rows, so per-step times are
not comparable; per-epoch times are), from the same starting weights, round-robin
over ``--repeats`` after one warm-up epoch; the median is reported. Before timing,
the script checks that all variants give the same token-weighted loss over the
epoch at the starting weights (packing must not change any token's loss).
"other load" is the CPU other processes used meanwhile (above ~0.1 core on a
2-core box the numbers are unreliable, and the script says so).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from phiforge.model.presets import build_config, build_model
from phiforge.posttrain.sft import SFTExample, SFTSampler, collate, masked_lm_loss
from phiforge.testing.load import OtherLoad
from phiforge.train.trainer import TrainSpec, build_optimizer

RESULTS = Path(__file__).resolve().parent / "results" / "sft_throughput.json"
VARIANTS = {"padded": (False, "trained_head"), "packed": (True, "trained_head"),
            "padded_full_logits": (False, "full_logits")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--min-length", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--micro-batch", type=int, default=8, help="rows per forward pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="16 examples of up to 128 tokens, 1 repeat")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.examples, args.max_length, args.repeats = 16, 128, 1
    return args


def make_examples(args: argparse.Namespace, vocab: int) -> list[SFTExample]:
    """Seeded conversations with uneven lengths (log-uniform) and a masked prompt share."""
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.uniform(np.log(args.min_length), np.log(args.max_length), args.examples)).astype(int)
    out = []
    for n in lengths:
        mask = np.zeros(n, np.int8)
        mask[int(n * rng.uniform(0.2, 0.6)):] = 1
        out.append(SFTExample(rng.integers(5, vocab, n).astype(np.int64), mask))
    return out


def full_logits_loss(model, batch, autocast):
    """The usual path: (B, T, vocab) logits, then cross-entropy at the trained positions."""
    with autocast():
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    n = batch.trained_tokens
    return F.cross_entropy(logits[batch.loss_mask].float(), batch.targets[batch.loss_mask], reduction="sum") / n, {}


def epoch_batches(examples, packed: bool, args) -> list:
    rows = SFTSampler(examples, 0, packing=packed, max_length=args.max_length, seed=0).rows_of_epoch(0)
    mb = args.micro_batch
    return [collate([[examples[i] for i in r] for r in rows[j:j + mb]], 0, packed).to(args.device)
            for j in range(0, len(rows), mb)]


class Epoch:
    """One epoch of optimizer steps over fixed batches, from the same starting weights each time."""

    def __init__(self, model, batches, objective, device: str):
        self.model, self.batches, self.objective, self.device = model, batches, objective, device
        self.start = {k: v.clone() for k, v in model.state_dict().items()}
        self.optimizer = build_optimizer(model, TrainSpec(max_steps=1, micro_batch_size=1, seq_len=1, lr=1e-5))

    def __call__(self) -> None:
        self.model.load_state_dict(self.start)
        for batch in self.batches:
            loss = _loss(self.objective(self.model, batch, _NoAutocast))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.no_grad()
    def start_loss(self) -> float:
        """Token-weighted loss of the epoch at the starting weights."""
        self.model.load_state_dict(self.start)
        total = sum(_loss(self.objective(self.model, b, _NoAutocast)).item() * b.trained_tokens for b in self.batches)
        return total / sum(b.trained_tokens for b in self.batches)


def _loss(out):
    return out[0] if isinstance(out, tuple) else out


class _NoAutocast:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def measure(epochs: dict[str, Epoch], repeats: int) -> dict:
    for run in epochs.values():
        run()  # warm-up
    times: dict[str, list[float]] = {n: [] for n in epochs}
    loads: dict[str, list] = {n: [] for n in epochs}
    for _ in range(repeats):
        for name, run in epochs.items():
            with OtherLoad() as load:
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
            loads[name].append(load.cores)
    return {n: {"seconds": statistics.median(times[n]), "all_seconds": times[n],
                "other_cores": max((c for c in loads[n] if c is not None), default=None)} for n in epochs}


def describe(batches) -> dict:
    real = sum(b.n_tokens for b in batches)
    slots = sum(b.input_ids.numel() for b in batches)
    return {"steps": len(batches), "rows": sum(b.input_ids.shape[0] for b in batches), "real_tokens": real,
            "trained_tokens": sum(b.trained_tokens for b in batches), "padding_share": 1 - real / slots}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_config(args.preset, {"max_position_embeddings": max(args.max_length, 128)})
    model = build_model(cfg, seed=0).to(args.device).train()
    examples = make_examples(args, cfg.vocab_size)
    batches = {n: epoch_batches(examples, packed, args) for n, (packed, _) in VARIANTS.items()}
    objectives = {"trained_head": masked_lm_loss, "full_logits": full_logits_loss}
    epochs = {n: Epoch(model, batches[n], objectives[head], args.device) for n, (_, head) in VARIANTS.items()}
    start = {n: e.start_loss() for n, e in epochs.items()}
    same = max(start.values()) - min(start.values()) <= 1e-4 * max(1.0, abs(start["padded"]))
    res = measure(epochs, args.repeats)
    print(f"{args.preset} preset, random weights, vocab {cfg.vocab_size}, {args.device}, "
          f"{torch.get_num_threads()} threads; {args.examples} conversations of {args.min_length}-{args.max_length} "
          f"tokens, micro-batch {args.micro_batch} rows; one epoch = fwd + bwd + AdamW per micro-batch:")
    for n in VARIANTS:
        d = describe(batches[n])
        res[n] |= d
        print(f"  {n:<20} {res[n]['seconds']:7.2f} s  {d['steps']:3d} steps  padding {d['padding_share']:5.1%}  "
              f"{d['real_tokens'] / res[n]['seconds']:9,.0f} tok/s")
    print(f"  same start loss in every variant: {same} ({start['padded']:.5f})")
    print(f"sft_throughput packed speedup: {res['padded']['seconds'] / res['packed']['seconds']:.2f}x; "
          f"trained-head speedup: {res['padded_full_logits']['seconds'] / res['padded']['seconds']:.2f}x")
    busy = max((r["other_cores"] for r in res.values() if r["other_cores"] is not None), default=None)
    if busy is not None and busy > 0.1:
        print(f"WARNING: other processes used up to {busy:.2f} CPU cores meanwhile; rerun on a quiet machine")
    result = {"preset": args.preset, "random_weights": True, "vocab_size": cfg.vocab_size, "examples": args.examples,
              "min_length": args.min_length, "max_length": args.max_length, "micro_batch": args.micro_batch,
              "repeats": args.repeats, "device": args.device, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "transformers": transformers.__version__, "machine": platform.machine(),
              "same_start_loss": same, "start_loss": start, "variants": res, "other_cores_max": busy}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
