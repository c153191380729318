"""Teacher calls and tokens per kept record, per synthetic-data technique, on the bundled teacher.

    .venv/bin/python benchmarks/synth_cost.py [--records 4] [--max-tokens 192] [--only rewrite,plurality_filter]

Why: the Phi-4 recipe's synthetic data costs teacher tokens (~400B of them in the
report, §2.2); what a kept record costs decides what a budget buys. Every technique
runs through the real executor (``LocalExecutor``, in-process) on ``--records``
fixed inputs suited to it, with the bundled SmolLM2-135M-Instruct as teacher and
critic (``LocalBackend``, bf16 where the CPU has it natively), every token limit
capped at ``--max-tokens``. Printed per technique: records in / kept, model calls,
prompt + generated tokens, calls and tokens per kept record, and the ratio
"tokens per kept / tokens per input record" (the price of what the filters throw
away; ``inf`` when nothing survives, which with a 135M teacher is common: the
numbers measure the machinery and the prompts' length, not a strong teacher's yield).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

from phiforge.data import tinymath
from phiforge.dataflow import LocalExecutor, Record, write_shards
from phiforge.synth.registry import build_step, config_class

RESULTS = Path(__file__).resolve().parent / "results" / "synth_cost.json"

PASSAGES = [
    "Photosynthesis turns light into chemical energy. Chlorophyll absorbs red and blue light, so leaves look "
    "green. The light reactions split water and release oxygen; the Calvin cycle then fixes carbon dioxide "
    "into sugars using the ATP and NADPH the light reactions made. Without light the cycle stops within minutes.",
    "A binary search halves the search interval at every step, so a sorted list of one million items needs at "
    "most twenty comparisons. The list must be sorted first; sorting costs n log n comparisons, which only pays "
    "off when many searches follow. If the middle element is too small, the left half can be discarded.",
    "Compound interest adds the interest to the principal each period. At 5% a year, 1000 dollars grows to "
    "1050 after one year and to 1102.50 after two, because the second year's interest is paid on 1050. "
    "Doubling takes about 72 / 5 = 14.4 years by the rule of 72.",
    "Tides are caused mainly by the Moon's gravity pulling the near side of the ocean more strongly than the "
    "Earth's centre, and the centre more strongly than the far side. That makes two bulges, so most coasts see "
    "two high tides a day. When Sun and Moon align, at new and full moon, the tides are highest.",
]
CODE = [
    "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n"
    "        if n % i == 0:\n            return False\n        i += 1\n    return True\n",
    "def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n        if i % 15 == 0:\n"
    "            out.append('FizzBuzz')\n        elif i % 3 == 0:\n            out.append('Fizz')\n"
    "        elif i % 5 == 0:\n            out.append('Buzz')\n        else:\n            out.append(str(i))\n"
    "    return out\n",
    "def reverse_words(s):\n    words = s.split()\n    words.reverse()\n    return ' '.join(words)\n",
    "def running_max(xs):\n    best = None\n    out = []\n    for x in xs:\n        best = x if best is None "
    "else max(best, x)\n        out.append(best)\n    return out\n",
]


def inputs(kind: str, n: int) -> list[Record]:
    if kind == "passage":
        return [Record(f"p{i}", text=PASSAGES[i % len(PASSAGES)]) for i in range(n)]
    if kind == "code":
        return [Record(f"c{i}", text=CODE[i % len(CODE)]) for i in range(n)]
    rows = tinymath.generate(7, 4, 4 * n, 1, 4, 2, 0.2)["train/web"][:n]
    if kind == "post":
        return [Record(r["id"], text=r["text"], metadata={"answer": r["answer"]}) for r in rows]
    return [Record(r["id"], text=r["question"], metadata={"answer": r["answer"], "question": r["question"]})
            for r in rows]


def techniques(t: int) -> dict[str, tuple[str, dict]]:
    """name -> (input kind, config): the paper's defaults, token limits capped at ``t``."""
    return {
        "page_educational_filter": ("passage", {"max_tokens": t, "threshold": 0}),
        "passage_scorer": ("passage", {"max_tokens": t, "min_factual": 0, "min_reasoning": 0}),
        "excerpt_tagger": ("passage", {"max_tokens": t}),
        "document_qa": ("passage", {"max_tokens": t, "detect_max_tokens": t}),
        "rewrite": ("passage", {"max_tokens": t, "plan_max_tokens": t}),
        "rewrite_tinymath": ("post", {"technique": "rewrite", "kinds": ["exercise"], "plan_first": False,
                                      "templates": {"exercise": "rewrite_tinymath"}, "prompt_style": "completion",
                                      "required_markers": {"exercise": ["Solution:"]}, "n": 4,
                                      "max_kept_per_kind": 1, "max_tokens": 64, "stop": ["\nPost:", "\n\n"]}),
        "plurality_filter": ("question", {"n_samples": 8, "max_tokens": t}),
        "rejection_sampling": ("question", {"k": 8, "max_tokens": t}),
        "self_revision": ("passage", {"max_tokens": t, "critic_max_tokens": t, "max_rounds": 2}),
        "conversation": ("passage", {"turns": 4, "turn_max_tokens": t, "revision_max_tokens": t,
                                     "profile_max_tokens": t}),
        "instruction_reversal": ("code", {"instruction_max_tokens": t, "code_max_tokens": t, "tests_max_tokens": t}),
        "execution_validation": ("code", {"test_max_tokens": t}),
        "fill_in_the_middle": ("code", {"k": 4, "max_tokens": t}),
    }


def run_one(name: str, kind: str, config: dict, records: list[Record], teacher, tmp: Path) -> dict:
    config = dict(config)
    technique = config.pop("technique", name)
    step = build_step(technique, config_class(technique).model_validate(config),
                      {"teacher": teacher, "critic": teacher})
    write_shards(records, tmp / name / "in", records_per_shard=len(records), format="jsonl")
    t0 = time.perf_counter()
    stats = LocalExecutor([step], input=str(tmp / name / "in"), output_dir=str(tmp / name / "out"),
                          progress=False).run()
    seconds = time.perf_counter() - t0
    c = _all_roles(stats["steps"][0]["counters"])
    kept, calls = stats["records_out"], c.get("model_calls", 0)
    tokens = c.get("prompt_tokens", 0) + c.get("completion_tokens", 0)
    per_kept = tokens / kept if kept else math.inf
    return {"input": kind, "records_in": len(records), "kept": kept, "dropped": stats["drop_reasons"],
            "model_calls": calls, "prompt_tokens": c.get("prompt_tokens", 0),
            "completion_tokens": c.get("completion_tokens", 0), "calls_per_kept": calls / kept if kept else math.inf,
            "tokens_per_kept": per_kept, "tokens_per_input": tokens / len(records),
            "ratio_kept_vs_input": per_kept / (tokens / len(records)) if tokens else math.inf, "seconds": seconds}


def _all_roles(counters: dict) -> dict:
    """Sum ``model_calls``, ``model_calls_critic``, ... into one count per quantity (every role)."""
    out: dict = {}
    for key in ("model_calls", "prompt_tokens", "completion_tokens"):
        out[key] = sum(v for k, v in counters.items() if k == key or k.startswith(key + "_"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=192)
    p.add_argument("--only", default="", help="comma-separated technique names")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    from phiforge.backends.local import LocalBackend, _resolve_dtype
    from phiforge.backends.teacher import load_teacher

    model, tok = load_teacher(dtype=_resolve_dtype("fast", "cpu"))
    teacher = LocalBackend(model, tok, batch_size=32, name="teacher=local:smollm2-135m-instruct")
    chosen = {k: v for k, v in techniques(args.max_tokens).items() if not args.only or k in args.only.split(",")}
    rows, tmp = {}, Path(tempfile.mkdtemp(prefix="phiforge-synth-bench-"))
    for name, (kind, config) in chosen.items():
        rows[name] = run_one(name, kind, config, inputs(kind, args.records), teacher, tmp)
        r = rows[name]
        print(f"{name:<24} in {r['records_in']:>2} kept {r['kept']:>2}  calls {r['model_calls']:>4}  tokens "
              f"{r['prompt_tokens'] + r['completion_tokens']:>7,}  per kept: calls {r['calls_per_kept']:>6.1f} "
              f"tokens {r['tokens_per_kept']:>8,.0f}  (x{r['ratio_kept_vs_input']:.1f} of per-input)  "
              f"{r['seconds']:.0f}s", flush=True)
    result = {"records": args.records, "max_tokens": args.max_tokens, "teacher": teacher.name,
              "dtype": str(model.dtype), "machine": platform.machine(), "techniques": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
