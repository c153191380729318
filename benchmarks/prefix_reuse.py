"""Prefix reuse in ``LocalBackend``: 64 rollouts of one prefix, prefix computed once vs 64 times.

    .venv/bin/python benchmarks/prefix_reuse.py [--prefix 200] [--rollouts 64] [--new-tokens 32] [--batch 32]

Why: Pivotal Token Search (Phi-4 report §4.3 (PTS)) estimates p(success | prefix)
from many rollouts of the same prefix. ``LocalBackend`` runs each distinct prefix
through the model once and copies its KV cache to the rollouts; this measures what
that saves against the naive path, where every rollout is its own prompt and
recomputes the prefix (what ``model.generate(num_return_sequences=n)`` does).

What is identical: the model (``tiny`` preset, RANDOM weights, seed 0, fp32, CPU
unless ``--device``), the tokenizer (a byte-level BPE trained here on synthetic
text, its size used as the model's vocabulary), the prefix (``--prefix`` random
token ids), temperature 1, ``--new-tokens`` per rollout, ``--batch`` rows decoded at
once. All paths use the same decoding loop:

* ``reuse``: ``LocalBackend``'s default. One prefix pass; the rollouts share the
  prefix KV in place (shared-prefix attention: one matmul over the prefix per
  prefix group and step, merged with each row's attention over its own tokens).
* ``reuse_copied_kv``: one prefix pass, the prefix KV copied into every row and
  ordinary attention (``shared_attention=False``).
* ``no_reuse``: ``share_prefixes=False``, every rollout its own prefix pass, in
  batches of ``--batch`` prompts (the honest naive path).

EOS stopping is switched off so every rollout decodes exactly ``--new-tokens``
tokens in every path, and the script checks that all paths drew identical tokens
(same seed): the work differs only in how the prefix is handled.

It also times ``LocalBackend.sample`` on ``--rollouts`` different prompts: one call
per prompt (batch of one) vs one batched call, as generated tokens per second.

Times are the median of ``--repeats`` runs; the prefix-reuse variants run round-robin
(after one warm-up run each) so drift in machine speed hits them alike. "other load" is
the CPU (in cores) other processes used meanwhile; above ~0.1 on a 2-core machine
the numbers are unreliable, and the script says so.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch
import transformers

from phiforge.backends.base import SamplingParams
from phiforge.backends.local import LocalBackend
from phiforge.model.presets import build_config, build_model
from phiforge.tokenize import train_bpe
from phiforge.testing.load import OtherLoad

RESULTS = Path(__file__).resolve().parent / "results" / "prefix_reuse.json"
SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--prefix", type=int, default=200, help="prefix length in tokens")
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=32, help="rows decoded together (all paths)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    """Tokenizer and random-weight model of the preset (vocabulary sized to the tokenizer)."""
    rng = random.Random(0)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randrange(1, 4))) for _ in range(3000)]
    corpus = [" ".join(rng.choices(words, k=200)) for _ in range(300)]
    tok = train_bpe(corpus, vocab_size=2048)
    cfg = build_config(args.preset, {"vocab_size": len(tok)})
    model = build_model(cfg, seed=0).to(args.device).eval()
    return model, tok


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up run), and its last result."""
    if warmup:
        fn()
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def backend(model, tok, args, share: bool, shared_attention: bool | None = None) -> LocalBackend:
    be = LocalBackend(model, tok, device=args.device, batch_size=args.batch, share_prefixes=share,
                      shared_attention=shared_attention)
    be.stop_ids = set()  # every rollout decodes exactly --new-tokens tokens
    return be


# name -> (share_prefixes, shared_attention); None = LocalBackend's default for this model
VARIANTS = {"reuse": (True, None), "reuse_copied_kv": (True, False), "no_reuse": (False, False)}


def prefix_reuse(model, tok, args) -> dict:
    """Time every variant, round-robin over the repeats so slow drift on the machine hits all alike."""
    prefix = torch.randint(5, len(tok), (args.prefix,), generator=torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(temperature=1.0, max_tokens=args.new_tokens, seed=0)
    backends = {name: backend(model, tok, args, share, attention) for name, (share, attention) in VARIANTS.items()}
    calls = {name: functools.partial(be.sample_continuations, [prefix], args.rollouts, params)
             for name, be in backends.items()}
    samples = {name: [c.token_ids for c in call().completions[0]] for name, call in calls.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    loads: dict[str, list[float | None]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            with OtherLoad() as load:
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
            loads[name].append(load.cores)
    runs: dict = {name: {"seconds": statistics.median(times[name]), "all_seconds": times[name],
                         "shared_attention": backends[name].shared_attention,
                         "other_cores": max((c for c in loads[name] if c is not None), default=None),
                         "prefix_tokens_computed": prefix_tokens(model, calls[name])} for name in calls}
    runs["identical_samples"] = all(s == samples["no_reuse"] for s in samples.values())
    runs["speedup"] = runs["no_reuse"]["seconds"] / runs["reuse"]["seconds"]
    runs["speedup_copied_kv"] = runs["no_reuse"]["seconds"] / runs["reuse_copied_kv"]["seconds"]
    return runs


def prefix_tokens(model, fn) -> int:
    """Tokens that went through multi-token forwards (prefix passes) during ``fn()``: proof of reuse."""
    seen = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].numel()) if kwargs["input_ids"].shape[1] > 1
        else None, with_kwargs=True)
    try:
        fn()
    finally:
        hook.remove()
    return sum(seen)


def single_vs_batched(model, tok, args) -> dict:
    """Generated tokens/s: ``--rollouts`` different prompts one by one vs in one call."""
    rng = random.Random(2)
    prompts = [" ".join("".join(rng.choices(SYLLABLES, k=3)) for _ in range(rng.randrange(8, 24)))
               for _ in range(args.rollouts)]
    params = SamplingParams(temperature=1.0, max_tokens=args.new_tokens, seed=0)
    be = backend(model, tok, args, True)
    new_tokens = len(prompts) * args.new_tokens
    out = {}
    for name, fn in (("single", lambda: [be.sample([p], params) for p in prompts]),
                     ("batched", lambda: be.sample(prompts, params))):
        with OtherLoad() as load:
            seconds, _ = timed(fn, args.repeats, warmup=False)  # the process is warm by now
        out[name] = {"seconds": seconds, "tokens_per_s": new_tokens / seconds, "other_cores": load.cores}
    out["speedup"] = out["single"]["seconds"] / out["batched"]["seconds"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = build(args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset} preset, random weights, {n_params / 1e6:.1f}M params, vocab {len(tok)}, "
          f"{args.device}, {torch.get_num_threads()} threads")
    reuse = prefix_reuse(model, tok, args)
    batching = single_vs_batched(model, tok, args)
    print(f"{args.rollouts} rollouts x {args.new_tokens} new tokens from one {args.prefix}-token prefix, "
          f"batch {args.batch} (median of {args.repeats}):")
    print(f"  reuse, prefix KV shared in place (default): {reuse['reuse']['seconds']:.3f} s")
    print(f"  reuse, prefix KV copied to each row:        {reuse['reuse_copied_kv']['seconds']:.3f} s "
          f"({reuse['speedup_copied_kv']:.2f}x)")
    print(f"  no reuse (prefix recomputed per rollout):   {reuse['no_reuse']['seconds']:.3f} s")
    print(f"  identical samples in all paths: {reuse['identical_samples']}; prefix tokens computed: "
          + ", ".join(f"{v} {reuse[v]['prefix_tokens_computed']}" for v in VARIANTS))
    print(f"prefix_reuse speedup: {reuse['speedup']:.2f}x")
    print(f"sample(): {args.rollouts} prompts x {args.new_tokens} tokens: "
          f"single {batching['single']['tokens_per_s']:.0f} tok/s, "
          f"batched {batching['batched']['tokens_per_s']:.0f} tok/s ({batching['speedup']:.2f}x)")
    loads = [reuse[v]["other_cores"] for v in VARIANTS] + [batching[v]["other_cores"] for v in ("single", "batched")]
    busy = max((c for c in loads if c is not None), default=None)
    if busy is not None and busy > 0.1:
        print(f"WARNING: other processes used up to {busy:.2f} CPU cores meanwhile; rerun on a quiet machine")
    result = {"preset": args.preset, "random_weights": True, "params": n_params, "vocab_size": len(tok),
              "prefix_tokens": args.prefix, "rollouts": args.rollouts, "new_tokens": args.new_tokens,
              "batch_size": args.batch, "repeats": args.repeats, "device": args.device,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "machine": platform.machine(),
              "prefix_reuse": reuse, "sample_single_vs_batched": batching, "other_cores_max": busy}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
