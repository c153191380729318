"""Eval items/s on the bundled teacher: the batched runner vs a naive one-item-at-a-time loop.

    .venv/bin/python benchmarks/eval_throughput.py [--items 64] [--max-tokens 96] [--task mgsm]

Why: an evaluation is thousands of generations (MMLU 14K items, GPQA x 10
repeats, AMC x 10-100 runs); a harness that sends one item at a time leaves the
hardware idle, which is what this measures. Both sides run the same task file
(generated grade-school word problems in the MGSM layout), the same model (the
bundled SmolLM2-135M-Instruct, fp32 on CPU), the same prompts (the task's chat
prompt), temperature (0.5, simple-evals) and token budget, on this machine's cores:

* ``naive``: for each item, ``model.generate`` on that one prompt, then grade it;
  the loop many eval scripts start as.
* ``runner``: ``phiforge.evals.runner.evaluate_task`` through ``LocalBackend``:
  chunks of items in one ``sample`` call (rows batched, KV cache, per-row stop).

Items/s counts items fully generated and graded. Accuracy is printed for both as a
sanity check (the samples differ: different random streams), not as a result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from phiforge.testing.load import OtherLoad

RESULTS = Path(__file__).resolve().parent / "results" / "eval_throughput.json"
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana"]
THINGS = ["apples", "stickers", "marbles", "books", "coins", "shells"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--task", default="mgsm")
    p.add_argument("--batch-size", type=int, default=32, help="runner: rows decoded together")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def word_problems(n: int, seed: int = 0) -> list[dict]:
    """Two-step grade-school problems with integer answers (MGSM item layout)."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        who, what = rng.choice(NAMES), rng.choice(THINGS)
        a, b, c = rng.randint(3, 40), rng.randint(2, 20), rng.randint(1, 9)
        q = (f"{who} has {a} {what}. A friend gives {who} {b} more, then {who} gives away {c}. "
             f"How many {what} does {who} have now?")
        items.append({"id": f"p{i}", "question": q, "answer": str(a + b - c), "language": "en"})
    return items


def naive(task, model, tok, items, max_tokens: int) -> tuple[float, float]:
    """One prompt at a time through ``model.generate``; returns (seconds, accuracy)."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    correct = 0.0
    stops = [tok.eos_token_id] + [t for t in [tok.convert_tokens_to_ids("<|im_end|>")] if isinstance(t, int)]
    for item in items:
        ids = tok.apply_chat_template(task.prompt(item, 0), add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=True, temperature=0.5, top_k=0,
                                 top_p=1.0, eos_token_id=stops, pad_token_id=tok.eos_token_id)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += task.grade_many([item], [text], [0])[0].score
    return time.perf_counter() - t0, correct / len(items)


def batched(task, model, tok, items, batch_size: int) -> tuple[float, float]:
    from phiforge.backends.local import LocalBackend
    from phiforge.evals.runner import evaluate_task

    backend = LocalBackend(model, tok, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        s = evaluate_task(task, backend, out, items=items, bootstrap=0)
        return time.perf_counter() - t0, s["score"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from phiforge.backends.teacher import load_teacher
    from phiforge.evals.registry import make_task
    from phiforge.evals.task import TaskOptions

    model, tok = load_teacher(dtype=torch.float32)
    items = word_problems(args.items)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "items.jsonl"
        path.write_text("".join(json.dumps(it) + "\n" for it in items))
        task = make_task(args.task, TaskOptions(path=str(path), max_tokens=args.max_tokens, repeats=1))
        batched(task, model, tok, items[:4], args.batch_size)  # warm-up (allocator, kernels)
        with OtherLoad() as load:
            t_naive, acc_naive = naive(task, model, tok, items, args.max_tokens)
            t_batch, acc_batch = batched(task, model, tok, items, args.batch_size)
    result = {"task": args.task, "items": args.items, "max_tokens": args.max_tokens, "threads": args.threads,
              "batch_size": args.batch_size, "naive_items_per_s": args.items / t_naive,
              "runner_items_per_s": args.items / t_batch, "speedup": t_naive / t_batch,
              "accuracy_naive": acc_naive, "accuracy_runner": acc_batch, "machine": platform.machine(),
              "other_cores_max": load.cores}
    print(f"{args.task}, {args.items} items, max {args.max_tokens} tokens, bundled teacher fp32, "
          f"{args.threads} threads")
    print(f"  naive loop : {result['naive_items_per_s']:.2f} items/s  (accuracy {acc_naive:.1%})")
    print(f"  runner     : {result['runner_items_per_s']:.2f} items/s  (accuracy {acc_batch:.1%})")
    print(f"  speedup    : {result['speedup']:.2f}x  (other load on the machine: {load.cores} cores)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
