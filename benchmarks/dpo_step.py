"""DPO step time on single-token (PTS) pairs: shared prompt forward vs the full-sequence path.

    .venv/bin/python benchmarks/dpo_step.py [--pairs 4] [--prompt-min 100] [--prompt-max 200] [--repeats 3]

Why: Pivotal Token Search pairs (Phi-4 report §4.3) have ONE chosen and ONE
rejected token after a shared prefix. ``phiforge.posttrain.dpo`` scores both from
one forward pass of the prompt (two entries of the next-token distribution at the
last prompt position). The generic full-sequence path, what a DPO trainer does for
any pair (TRL's collator: prompt+chosen and prompt+rejected as two rows), runs the
prompt twice. This measures what sharing saves per optimizer step.

What is identical: the model (``tiny`` preset, RANDOM weights, seed 0, fp32, CPU
unless ``--device``), the pairs (``--pairs`` random prompts of ``--prompt-min`` to
``--prompt-max`` tokens with one random chosen and rejected token each, random
reference log-probs), one micro-batch per step, and the step itself: collate,
forward, DPO loss, backward, clip, AdamW step (``Trainer``'s optimizer). Both
paths start from the same weights each repeat (restored outside the timing), and
the script checks that they give the same loss. Times are the median of ``--repeats`` steps after one warm-up
step, run round-robin so machine drift hits both alike; "other load" is the CPU
(in cores) other processes used meanwhile (above ~0.1 on a 2-core box the numbers
are unreliable, and the script says so).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from phiforge.model.presets import build_config, build_model
from phiforge.posttrain.dpo import collate_pairs, dpo_objective
from phiforge.posttrain.pairs import TokenPair
from phiforge.testing.load import OtherLoad
from phiforge.train.trainer import TrainSpec, build_optimizer

RESULTS = Path(__file__).resolve().parent / "results" / "dpo_step.json"
PATHS = {"shared": True, "full_sequence": False}  # name -> collate_pairs(shared_forward=...)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--pairs", type=int, default=4, help="pairs per step (one micro-batch)")
    p.add_argument("--prompt-min", type=int, default=100)
    p.add_argument("--prompt-max", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def make_pairs(args: argparse.Namespace, vocab: int) -> list[TokenPair]:
    g = torch.Generator().manual_seed(1)
    pairs = []
    for i in range(args.pairs):
        n = int(torch.randint(args.prompt_min, args.prompt_max + 1, (1,), generator=g))
        ids = torch.randint(5, vocab, (n + 2,), generator=g).tolist()
        ref = (-torch.rand(2, generator=g) * 8).tolist()
        pairs.append(TokenPair(f"p{i}", "pts", ids[:n], ids[n:n + 1], ids[n + 1:],
                               ref_chosen_logp=ref[0], ref_rejected_logp=ref[1]))
    return pairs


class Stepper:
    """One DPO optimizer step on a fixed micro-batch, from the same starting weights every time."""

    def __init__(self, model, pairs, shared: bool, args):
        self.model, self.start = model, {k: v.clone() for k, v in model.state_dict().items()}
        self.pairs, self.shared, self.device = pairs, shared, args.device
        self.objective = dpo_objective(args.beta)
        self.spec = TrainSpec(max_steps=1, micro_batch_size=len(pairs), seq_len=args.prompt_max + 1, lr=1e-5)
        self.optimizer = build_optimizer(model, self.spec)

    def reset(self) -> None:
        """Back to the starting weights (outside the timed region)."""
        self.model.load_state_dict(self.start)

    def __call__(self) -> float:
        batch = collate_pairs(self.pairs, shared_forward=self.shared).to(self.device)
        loss, _ = self.objective(self.model, batch, _NoAutocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return loss.item()


class _NoAutocast:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def measure(steppers: dict[str, Stepper], repeats: int) -> dict:
    """Median step time per path, round-robin after one warm-up step each."""
    losses = {}
    for name, step in steppers.items():
        step.reset()
        losses[name] = step()
    times: dict[str, list[float]] = {name: [] for name in steppers}
    loads: dict[str, list] = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, step in steppers.items():
            step.reset()
            with OtherLoad() as load:
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
            loads[name].append(load.cores)
    out: dict = {name: {"seconds": statistics.median(times[name]), "all_seconds": times[name], "loss": losses[name],
                        "other_cores": max((c for c in loads[name] if c is not None), default=None)}
                 for name in steppers}
    out["same_loss"] = abs(losses["shared"] - losses["full_sequence"]) <= 1e-4 * max(1.0, abs(losses["shared"]))
    out["speedup"] = out["full_sequence"]["seconds"] / out["shared"]["seconds"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(build_config(args.preset), seed=0).to(args.device).train()
    pairs = make_pairs(args, model.config.vocab_size)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset} preset, random weights, {n_params / 1e6:.1f}M params, vocab {model.config.vocab_size}, "
          f"{args.device}, {torch.get_num_threads()} threads")
    steppers = {name: Stepper(model, pairs, shared, args) for name, shared in PATHS.items()}
    res = measure(steppers, args.repeats)
    tokens = sum(len(p.prompt_ids) for p in pairs)
    print(f"{args.pairs} single-token pairs, prompts {args.prompt_min}-{args.prompt_max} tokens ({tokens} prompt "
          f"tokens), one step = fwd + bwd + AdamW (median of {args.repeats}):")
    print(f"  shared prompt forward (phiforge):        {res['shared']['seconds']:.3f} s")
    print(f"  full-sequence (prompt+chosen, +rejected): {res['full_sequence']['seconds']:.3f} s")
    print(f"  same loss in both paths: {res['same_loss']} ({res['shared']['loss']:.6f})")
    print(f"dpo_step speedup: {res['speedup']:.2f}x")
    busy = max((res[n]["other_cores"] for n in PATHS if res[n]["other_cores"] is not None), default=None)
    if busy is not None and busy > 0.1:
        print(f"WARNING: other processes used up to {busy:.2f} CPU cores meanwhile; rerun on a quiet machine")
    result = {"preset": args.preset, "random_weights": True, "params": n_params,
              "vocab_size": model.config.vocab_size, "pairs": args.pairs, "prompt_min": args.prompt_min,
              "prompt_max": args.prompt_max, "prompt_tokens": tokens, "repeats": args.repeats,
              "device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "machine": platform.machine(), "dpo_step": res,
              "other_cores_max": busy}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
