"""The ``eval`` stage: exact-answer accuracy of each trained checkpoint on held-out items.

Greedy decoding (the tiny model's checks are deterministic; the simple-evals
temperature 0.5 protocol arrives with the evaluation issue). Accuracy comes with
a 95% Wilson interval and two trivial baselines, so "far above trivial" is a
number, not a claim.
"""

from __future__ import annotations

import time

from phiforge.data import tinymath
from phiforge.data.records import read_jsonl, write_jsonl
from phiforge.evals.exact_answer import generate_greedy, score, trivial_baselines
from phiforge.evals.intervals import wilson_interval
from phiforge.run.context import StageContext
from phiforge.tokenize.stage import load_run_tokenizer
from phiforge.train.checkpoint import load_hf_model


def run_eval(ctx: StageContext) -> dict:
    r = ctx.recipe
    data_dir = ctx.input_dir("data")
    items = list(read_jsonl(data_dir / "eval.jsonl", required=("question", "answer")))[:r.eval.max_items]
    tok = load_run_tokenizer(ctx.input_dir("tokenizer"))
    results = {}
    for name in r.eval.models:
        if not getattr(r, name).enabled:
            continue
        results[name] = _evaluate_model(ctx, name, tok, items)
    return {"models": results, "baselines": trivial_baselines(items, _train_answers(data_dir)), "n_items": len(items)}


def _evaluate_model(ctx: StageContext, name: str, tok, items: list[dict]) -> dict:
    model = load_hf_model(ctx.input_dir(name) / "model", device=ctx.device)
    prompts = [tinymath.prompt_text(it["question"]) for it in items]
    t0 = time.perf_counter()
    completions = generate_greedy(model, tok, prompts, ctx.recipe.eval.max_new_tokens,
                                  batch_size=ctx.recipe.eval.batch_size, device=ctx.device,
                                  progress=lambda i, n: ctx.log(f"{name}: generated {i}/{n}"))
    summary, rows = score(items, completions)
    correct = sum(row["correct"] for row in rows)
    summary["accuracy_ci95"] = list(wilson_interval(correct, len(rows)))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    write_jsonl(ctx.stage_dir / "predictions" / f"{name}.jsonl", rows)
    lo, hi = summary["accuracy_ci95"]
    ctx.log(f"{name}: accuracy {summary['accuracy']:.1%} (95% CI {lo:.1%}-{hi:.1%}), "
            f"extraction failures {summary['extraction_failure_rate']:.1%}")
    return summary


def _train_answers(data_dir) -> list[int]:
    path = data_dir / "train" / "textbook.jsonl"
    if not path.is_file():
        return []
    return [a for a in (tinymath.extract_answer(r["text"]) for r in read_jsonl(path)) if a is not None]
