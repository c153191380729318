"""The ``eval`` stage: exact-answer accuracy of each trained checkpoint on held-out items.

Base checkpoints (pretrain, midtrain) see the textbook prompt ("Problem: ...
Solution:"); post-trained ones (sft, dpo, dpo_judge) see the question as a user
turn in the Phi-4 chat format and answer as the assistant, which is what they were
trained on (report §4). Greedy decoding by default; with ``eval.seeds`` each model
is also sampled once per seed at ``eval.temperature`` (simple-evals uses 0.5,
§7.1) and the table shows the mean with a t-interval over seeds, as the report's
Table 9 compares stages. Accuracy comes with a 95% Wilson interval and two
trivial baselines, so "far above trivial" is a number, not a claim.

``[[eval.tasks]]`` adds registry benchmarks on the same checkpoints (``evals.stage_tasks``):
simple-evals tasks, base-model log-likelihood and few-shot tasks, long-context recall,
each with bootstrap intervals and, with ``eval.contamination``, a clean/flagged split.
"""

from __future__ import annotations

import math
import statistics
import time

from phiforge.backends.local import LocalBackend
from phiforge.data import tinymath
from phiforge.data.records import read_jsonl, write_jsonl
from phiforge.evals.exact_answer import generate_greedy, score, trivial_baselines
from phiforge.evals.intervals import wilson_interval
from phiforge.evals.stage_tasks import contamination_flags, run_model_tasks, specs_for
from phiforge.run.context import StageContext
from phiforge.tokenize.chat import chat_prompt_text, render_chat
from phiforge.tokenize.stage import load_run_tokenizer
from phiforge.train.checkpoint import load_hf_model

CHAT_MODELS = ("sft", "dpo", "dpo_judge")  # stages whose models answer in the chat format


def run_eval(ctx: StageContext) -> dict:
    r = ctx.recipe
    items = _items(ctx)
    tok = _tokenizer(ctx)
    flags, flag_counts = contamination_flags(ctx, tok) if (r.eval.contamination and r.eval.tasks) else (None, None)
    results, tasks = {}, {}
    for name in r.eval.models:
        if not getattr(r, name).enabled:
            continue
        model = _load_model(ctx, name)
        if items:
            results[name] = _evaluate_model(ctx, name, model, tok, items)
        if specs_for(ctx, name):
            backend = LocalBackend(model, tok, device=ctx.device, batch_size=r.eval.batch_size, name=name)
            tasks[name] = run_model_tasks(ctx, name, backend, CHAT_MODELS, flags)
        del model
    baselines = trivial_baselines(items, _train_answers(ctx.input_dir("data"))) if items else {}
    stats = {"models": results, "baselines": baselines, "n_items": len(items)}
    if tasks:
        stats["tasks"] = tasks
    if flag_counts is not None:
        stats["contamination"] = flag_counts
    return stats


def _items(ctx: StageContext) -> list[dict]:
    """The held-out exact-answer items; none when the run has no data stage (post-training-only runs
    without ``data.eval_file``: only ``[[eval.tasks]]`` run then)."""
    if not ctx.recipe.data.makes_data():
        ctx.log("no data stage in this run: exact-answer items skipped, only [[eval.tasks]] run")
        return []
    path = ctx.input_dir("data") / "eval.jsonl"
    return list(read_jsonl(path, required=("question", "answer")))[:ctx.recipe.eval.max_items]


def _tokenizer(ctx: StageContext):
    """The run's tokenizer, or the start model folder's (its chat template) in a post-training-only run."""
    start = ctx.recipe.start_model()
    if start:
        from phiforge.model.hf import load_chat_tokenizer

        return load_chat_tokenizer(start, field=ctx.recipe.start_model_field())
    return load_run_tokenizer(ctx.input_dir("tokenizer"))


def _load_model(ctx: StageContext, name: str):
    """A checkpoint of this run; any architecture when the run started from a model folder."""
    if ctx.recipe.start_model():
        from phiforge.model.hf import load_causal_lm

        return load_causal_lm(ctx.input_dir(name) / "model", device=ctx.device, field=f"{name}/model")
    return load_hf_model(ctx.input_dir(name) / "model", device=ctx.device)


def eval_prompt(model_name: str, question: str, tokenizer=None) -> str:
    """The prompt a checkpoint is evaluated with: chat format after post-training, else the textbook layout.

    The chat format is Phi-4's, or the model's own chat template when ``tokenizer`` has one (a model
    post-trained from its folder answers in the format it was instruction-tuned in).
    """
    if model_name in CHAT_MODELS:
        messages = [{"role": "user", "content": question}]
        if tokenizer is not None:
            return chat_prompt_text(tokenizer, messages)
        return render_chat(messages, add_generation_prompt=True)
    return tinymath.prompt_text(question)


def _evaluate_model(ctx: StageContext, name: str, model, tok, items: list[dict]) -> dict:
    cfg = ctx.recipe.eval
    prompts = [eval_prompt(name, it["question"], tok) for it in items]
    t0 = time.perf_counter()
    completions = generate_greedy(model, tok, prompts, cfg.max_new_tokens, batch_size=cfg.batch_size,
                                  device=ctx.device, progress=lambda i, n: ctx.log(f"{name}: generated {i}/{n}"))
    summary, rows = score(items, completions)
    correct = sum(row["correct"] for row in rows)
    summary["accuracy_ci95"] = list(wilson_interval(correct, len(rows)))
    summary["prompt_format"] = "chat" if name in CHAT_MODELS else "textbook"
    write_jsonl(ctx.stage_dir / "predictions" / f"{name}.jsonl", rows)
    if cfg.seeds:
        summary["sampled"] = _sampled(ctx, name, model, tok, items, prompts)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    lo, hi = summary["accuracy_ci95"]
    ctx.log(f"{name}: accuracy {summary['accuracy']:.1%} (95% CI {lo:.1%}-{hi:.1%}), "
            f"extraction failures {summary['extraction_failure_rate']:.1%}")
    return summary


def _sampled(ctx: StageContext, name: str, model, tok, items: list[dict], prompts: list[str]) -> dict:
    """Accuracy at ``eval.temperature`` once per seed: mean, per-seed values and a 95% t-interval."""
    cfg = ctx.recipe.eval
    accs = []
    for seed in cfg.seeds:
        texts = generate_greedy(model, tok, prompts, cfg.max_new_tokens, batch_size=cfg.batch_size,
                                device=ctx.device, temperature=cfg.temperature, seed=seed)
        summary, rows = score(items, texts)
        write_jsonl(ctx.stage_dir / "predictions" / f"{name}.t{cfg.temperature:g}.seed{seed}.jsonl", rows)
        accs.append(summary["accuracy"])
    mean = statistics.fmean(accs)
    half = t_half_width(accs)
    ctx.log(f"{name}: sampled t={cfg.temperature:g} accuracy {mean:.1%} ± {half:.1%} over {len(accs)} seeds")
    return {"temperature": cfg.temperature, "seeds": list(cfg.seeds), "accuracies": accs, "mean": mean,
            "ci95": [max(0.0, mean - half), min(1.0, mean + half)]}


# two-sided 95% Student-t quantiles by degrees of freedom (1..10); 1.96 beyond
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_half_width(values: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    sd = statistics.stdev(values)
    return _T95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))


def _train_answers(data_dir) -> list[int]:
    path = data_dir / "train" / "textbook.jsonl"
    if not path.is_file():
        return []
    return [a for a in (tinymath.extract_answer(r["text"]) for r in read_jsonl(path)) if a is not None]
