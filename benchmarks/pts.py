"""Pivotal Token Search: our engine against the naive fixed-N baseline, in the same run.

    .venv/bin/python benchmarks/pts.py                      # planted policy + tiny random model, < 1 min
    .venv/bin/python benchmarks/pts.py --tasks 400 --seeds 3 --body 48
    .venv/bin/python benchmarks/pts.py --model runs/tiny/sft/model --queries eval.jsonl --max-tokens 256

Why: PTS (Phi-4 report §4.3) estimates p(success | prefix) from many rollouts at every
prefix its binary search visits, so policy tokens are its cost. The baseline is the
report's procedure run plainly: every prefix gets a fixed N = 64 rollouts, segments
split at the token-count midpoint, no rollout reuse, and (on a real model) no prefix
KV sharing (``LocalBackend(share_prefixes=False)``). Ours: adaptive rounds that stop
when a confidence interval settles a comparison, the report's log-prob midpoint split,
comparisons through the policy's own probability of a segment, and rollout reuse.

(a) Planted-pivot policy (``phiforge.testing.planted``): p(success | prefix) is known in
closed form, so we score recall (true pivots of the searched solutions found) and false
positives (reported pivots whose true |Δp| < p_gap), and policy tokens generated per
true pivot found. Half the tasks are of medium difficulty, the rest easy or hard (the
query window should drop them cheaply). Also ablations: each of our changes switched off.

(b) A real model through ``LocalBackend``: by default a tiny RANDOM-weight Phi-3 model
whose oracle accepts a response containing an 'a' or an 'e' (the token that first
brings one is a genuine pivot); or ``--model`` (a Hugging Face folder, e.g. a tiny-recipe
SFT checkpoint) with ``--queries``, a JSONL of ``{"prompt": ..., "answer": ...}``: integer
answers must be the last integer of the response, others a case-insensitive substring.
Reported: pivots found, tokens per pivot, wall time, ours vs naive. No ground truth here.

Results go to ``benchmarks/results/pts.json`` (``--out``). Wall times on a shared CPU
are noisy; "other load" is the CPU other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "pts.json"
WORDS = ["cat", "dog", "fox", "hat", "mat", "sun", "cup", "box", "pen", "map", "owl", "kit"]
CORPUS = ["the cat sat on the mat and looked at the hat", "a quick brown fox jumps over the lazy dog",
          "two plus two is four and three plus five is eight", "hello world this is a tiny test"] * 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=80, help="planted tasks per seed")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--body", type=int, default=24, help="planted response body length (tokens)")
    p.add_argument("--skip-real", action="store_true", help="run the planted benchmark only")
    p.add_argument("--model", type=Path, help="Hugging Face model folder for (b) (default: tiny random model)")
    p.add_argument("--queries", type=Path, help="JSONL of {prompt, answer} for --model")
    p.add_argument("--real-queries", type=int, default=8, help="queries for the random model")
    p.add_argument("--max-tokens", type=int, default=12, help="response budget in (b)")
    p.add_argument("--preset", default="tiny", help="architecture preset of the random model")
    p.add_argument("--batch", type=int, default=64, help="LocalBackend rows decoded together")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); 1 because on a "
                   "shared CPU, OpenMP threads of a tiny model slow down many times over when another process is busy")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


# -- (a) planted-pivot policy ---------------------------------------------------------------

ABLATIONS = {  # name -> PTSConfig overrides of ours
    "ours": {},
    "ours_max_rollouts_32": {"max_rollouts": 32},
    "no_reuse": {"reuse_rollouts": False},
    "no_segment_mass": {"segment_mass": False},
    "count_split": {"split": "count"},
    "screen_z_equals_z": {"screen_z": None},
    "fixed_n": {"adaptive": False},
}


def planted(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant on the same tasks and seeds; totals over seeds, ratios against naive."""
    from phiforge.posttrain.pts import PTSConfig
    from phiforge.testing.planted import random_tasks

    configs = {name: (lambda s, o=over: PTSConfig(max_tokens=args.body + 8, seed=s, **o))
               for name, over in ABLATIONS.items()}
    configs["naive"] = lambda s: PTSConfig.naive(max_tokens=args.body + 8, seed=s)
    totals: dict[str, dict[str, float]] = {name: {} for name in configs}
    for seed in range(args.seeds):
        tasks = random_tasks(args.tasks, seed=seed, body_len=args.body)
        for name, config in configs.items():
            for key, value in planted_run(tasks, config(seed)).items():
                totals[name][key] = totals[name].get(key, 0) + value
    for row in totals.values():
        row["recall"] = row["found"] / max(row["true_pivots"], 1)
        row["tokens_per_pivot"] = row["completion_tokens"] / max(row["found"], 1)
    for row in totals.values():
        row["tokens_per_pivot_vs_naive"] = totals["naive"]["tokens_per_pivot"] / row["tokens_per_pivot"]
    return totals


def planted_run(tasks, config) -> dict[str, float]:
    from phiforge.posttrain.pts import PTSQuery, search
    from phiforge.testing.planted import PlantedOracle, PlantedPolicy

    policy = PlantedPolicy(tasks)
    queries = [PTSQuery(f"q{i}", policy.prompt_ids(i), "yes") for i in range(len(tasks))]
    result = search(policy, queries, PlantedOracle(), config)
    truth = {(s.query_id, s.index, i) for s in result.solutions
             for i in tasks[int(s.query_id[1:])].true_pivots(s.ids, config.p_gap)}
    found = {(p.query_id, p.solution, p.position) for p in result.pivots}
    s = result.stats
    return {"queries_searched": s.queries_searched, "true_pivots": len(truth), "found": len(truth & found),
            "false_positives": len(found - truth), "pairs": s.pairs, "completion_tokens": s.completion_tokens,
            "rollouts": s.rollouts, "rounds": s.rounds, "seconds": s.seconds}


def print_planted(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(f"(a) planted-pivot policy: {args.tasks} tasks x {args.seeds} seeds, body {args.body} tokens, p_gap 0.2")
    print(f"  {'variant':22s} {'searched':>8s} {'true':>5s} {'found':>5s} {'recall':>6s} {'false+':>6s} "
          f"{'rollouts':>9s} {'tokens':>9s} {'rounds':>6s} {'tok/pivot':>9s} {'vs naive':>8s}")
    for name, r in rows.items():
        print(f"  {name:22s} {r['queries_searched']:8.0f} {r['true_pivots']:5.0f} {r['found']:5.0f} "
              f"{r['recall']:6.2f} {r['false_positives']:6.0f} {r['rollouts']:9.0f} {r['completion_tokens']:9.0f} "
              f"{r['rounds']:6.0f} {r['tokens_per_pivot']:9.0f} {r['tokens_per_pivot_vs_naive']:7.2f}x")


# -- (b) real model ------------------------------------------------------------------------------


class AnswerOracle:
    """Integer answers: the last integer of the response; others: case-insensitive substring."""

    def check_many(self, responses, references):
        from phiforge.verify.oracle import Verdict

        out = []
        for text, ref in zip(responses, references, strict=True):
            ref = str(ref).strip()
            if re.fullmatch(r"-?\d+", ref):
                numbers = re.findall(r"-?\d+", text)
                got = numbers[-1] if numbers else None
                out.append(Verdict(got == ref, got, "equivalent" if got == ref else "not_equivalent"))
            else:
                hit = ref.lower() in text.lower()
                out.append(Verdict(hit, ref if hit else None, "equivalent" if hit else "not_equivalent"))
        return out


class LettersOracle:
    """Random-model oracle: correct when the response contains any letter of the reference."""

    def check_many(self, responses, references):
        from phiforge.verify.oracle import Verdict

        return [Verdict(any(ch in text for ch in ref), None, "contains" if any(ch in text for ch in ref) else "no")
                for text, ref in zip(responses, references, strict=True)]


def real_setup(args: argparse.Namespace):
    """(model, tokenizer, queries, oracle, description) for (b)."""
    from phiforge.posttrain.pts import PTSQuery

    if args.model:
        from phiforge.backends.local import LocalBackend

        probe = LocalBackend.from_pretrained(args.model, device=args.device)
        items = [json.loads(line) for line in args.queries.read_text().splitlines() if line.strip()]
        queries = [PTSQuery(f"q{i}", probe.chat_prompt([{"role": "user", "content": it["prompt"]}]),
                            it["answer"]) for i, it in enumerate(items)]
        return probe.model, probe.tokenizer, queries, AnswerOracle(), f"{args.model} ({len(queries)} queries)"
    from phiforge.model.presets import build_config, build_model
    from phiforge.tokenize import render_chat, train_bpe

    tok = train_bpe(CORPUS, vocab_size=300)
    model = build_model(build_config(args.preset, {"vocab_size": len(tok) + 20}), seed=0).eval()
    prompts = [tok(render_chat([{"role": "user", "content": f"say {WORDS[i % len(WORDS)]} {i}"}],
                               add_generation_prompt=True), add_special_tokens=False)["input_ids"]
               for i in range(args.real_queries)]
    queries = [PTSQuery(f"q{i}", list(ids), "ae") for i, ids in enumerate(prompts)]
    return model, tok, queries, LettersOracle(), f"{args.preset} preset, RANDOM weights, 'contains a or e' oracle"


def real(args: argparse.Namespace) -> dict[str, Any]:
    """Ours (prefix KV shared) vs naive (every rollout recomputes its prefix) on the same model."""
    import torch

    from phiforge.backends.local import LocalBackend
    from phiforge.posttrain.pts import PTSConfig
    from phiforge.testing.load import OtherLoad

    model, tok, queries, oracle, what = real_setup(args)
    runs = {"ours": (PTSConfig(max_tokens=args.max_tokens), True),
            "naive": (PTSConfig.naive(max_tokens=args.max_tokens), False)}
    out: dict[str, Any] = {"model": what, "params": sum(p.numel() for p in model.parameters()),
                           "queries": len(queries), "max_tokens": args.max_tokens,
                           "threads": torch.get_num_threads()}
    for name, (config, share) in runs.items():
        backend = LocalBackend(model, tok, device=args.device, batch_size=args.batch, share_prefixes=share)
        counter = _TokenCounter(model)
        with OtherLoad() as load, counter:
            t0 = time.perf_counter()
            result = _search(backend, queries, oracle, config)
            seconds = time.perf_counter() - t0
        s = result.stats
        out[name] = {"seconds": seconds, "pivots": s.pivots, "pairs": s.pairs, "searched": s.queries_searched,
                     "completion_tokens": s.completion_tokens, "wasted_tokens": s.wasted_tokens,
                     "rollouts": s.rollouts, "rounds": s.rounds, "prompt_tokens": s.prompt_tokens,
                     "tokens_per_pivot": s.completion_tokens / max(s.pivots, 1), "other_cores": load.cores,
                     "model_tokens": counter.tokens, "model_tokens_per_pivot": counter.tokens / max(s.pivots, 1)}
    out["tokens_per_pivot_ratio"] = out["naive"]["tokens_per_pivot"] / out["ours"]["tokens_per_pivot"]
    out["model_tokens_per_pivot_ratio"] = out["naive"]["model_tokens_per_pivot"] / out["ours"]["model_tokens_per_pivot"]
    out["wall_time_ratio"] = out["naive"]["seconds"] / out["ours"]["seconds"]
    return out


class _TokenCounter:
    """Token positions the policy runs through (prefill + decode, padding included): its compute.

    Generated tokens count only decoding; without prefix sharing every rollout also
    recomputes its prompt + prefix, which this counts.
    """

    def __init__(self, model):
        self.model, self.tokens, self._handle = model, 0, None

    def __enter__(self):
        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self.tokens += int(ids.numel())
        self._handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False


def _search(backend, queries, oracle, config):
    from phiforge.posttrain.pts import search

    return search(backend, queries, oracle, config)


def print_real(r: dict[str, Any]) -> None:
    print(f"(b) LocalBackend: {r['model']}, {r['params'] / 1e6:.2f}M params, {r['queries']} queries, "
          f"max_tokens {r['max_tokens']}, {r['threads']} threads")
    for name in ("ours", "naive"):
        x = r[name]
        load = f", other load {x['other_cores']:.2f} cores" if x["other_cores"] is not None else ""
        print(f"  {name:5s}: {x['pivots']} pivots ({x['searched']} queries searched), {x['rollouts']} rollouts, "
              f"{x['completion_tokens']} tokens ({x['wasted_tokens']} cut), {x['rounds']} rounds, "
              f"{x['tokens_per_pivot']:.0f} tokens/pivot, {x['seconds']:.1f} s{load}")
    print(f"  model tokens (prefill + decode) per pivot: naive / ours = {r['model_tokens_per_pivot_ratio']:.2f}x")
    print(f"  tokens per pivot: naive / ours = {r['tokens_per_pivot_ratio']:.2f}x; "
          f"wall time: naive / ours = {r['wall_time_ratio']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model and not args.queries:
        raise SystemExit("--model needs --queries (a JSONL of {\"prompt\": ..., \"answer\": ...})")
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = planted(args)
    print_planted(rows, args)
    result: dict[str, Any] = {"planted": {"tasks": args.tasks, "seeds": args.seeds, "body": args.body,
                                          "variants": rows},
                              "torch": torch.__version__, "transformers": transformers.__version__,
                              "machine": platform.machine(), "device": args.device}
    if not args.skip_real:
        result["real"] = real(args)
        print_real(result["real"])
    ours = rows["ours"]["tokens_per_pivot_vs_naive"]
    print(f"pts planted tokens-per-true-pivot: naive / ours = {ours:.2f}x "
          f"(recall {rows['ours']['recall']:.2f} vs {rows['naive']['recall']:.2f}, false positives "
          f"{rows['ours']['false_positives']:.0f} vs {rows['naive']['false_positives']:.0f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
