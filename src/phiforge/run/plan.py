"""``--dry-run``: validate a recipe and print what a run would do, without doing it.

The plan shows each stage's status in the run folder (done / out of date /
pending), data sizes, model parameters, the token budget and the Table-5-style
mixture with epochs per source. Token counts come from the tokenizer stage when
it has finished, otherwise they are estimated from character counts (marked
"est."). Later issues append sections (e.g. the GPU resource plan) to
``PLAN_SECTIONS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from phiforge.model import presets
from phiforge.recipe.schema import Recipe
from phiforge.run import pipeline, rundir
from phiforge.train.mixture import format_mixture_table, plan_mixture

CHARS_PER_TOKEN_GUESS = 3.5


def print_plan(recipe: Recipe, recipe_path: Path | None, only: str | None, start: str | None,
               out: Callable[[str], None] = print) -> None:
    run_dir = pipeline.run_dir_for(recipe)
    out(f"recipe: {recipe_path or '<defaults>'}\nrun dir: {run_dir}")
    for section in PLAN_SECTIONS:
        text = section(recipe, run_dir, only, start)
        if text:
            out(text)


def stages_section(recipe: Recipe, run_dir: Path, only, start) -> str:
    fps = pipeline.fingerprints(recipe)
    selected = {s.name for s in pipeline.select(recipe, only, start)}
    lines = ["stages:"]
    for stage in pipeline.STAGES:
        marker = rundir.read_marker(run_dir / stage.name)
        status = "disabled" if not pipeline.is_enabled(recipe, stage) else (
            "pending" if marker is None else "done" if marker["fingerprint"] == fps[stage.name] else "out of date")
        action = "run" if stage.name in selected and (status != "done" or only or start or stage.always) else "skip"
        lines.append(f"  {stage.name:<10} {status:<12} {action:<5} {stage.description}")
    return "\n".join(lines)


def data_section(recipe: Recipe, run_dir: Path, only, start) -> str:
    if recipe.start_model():
        return posttrain_files_section(recipe)
    sizes = source_tokens(recipe, run_dir)
    lines = ["data:"]
    for name, (docs, tokens, exact) in sizes.items():
        if tokens < 0:
            lines.append(f"  {name:<12} not on this machine: {', '.join(_missing(recipe, name))} (the data stage "
                         "will fail until these files exist; sizes below are unknown)")
            continue
        lines.append(f"  {name:<12} {docs:>9,} docs {tokens:>13,} tokens{'' if exact else ' (est.)'}")
    return "\n".join(lines)


def posttrain_files_section(recipe: Recipe) -> str:
    """A post-training-only run's inputs: the start model folder and the files the stages read."""
    from phiforge.model.hf import describe_folder

    lines = [f"start model ({recipe.start_model_field()}): {describe_folder(recipe.start_model())}", "data:"]
    files = [("sft.data", ref) for ref in recipe.sft.data if recipe.sft.enabled]
    files += [("pts.prompts", recipe.pts.prompts)] if recipe.pts.enabled else []
    files += [("judge.prompts", recipe.judge.prompts)] if recipe.judge.enabled else []
    files += [("data.eval_file", recipe.data.eval_file)] if recipe.data.eval_file else []
    files += [(f"eval.tasks.{t.label}", t.path) for t in recipe.eval.tasks if recipe.eval.enabled and t.path]
    for key, ref in files:
        if ref in ("refusal",) or ref.startswith(("data:", "synth:", "hf:")):
            lines.append(f"  {key:<22} {ref} (made by this run)")
            continue
        found = Path(ref).expanduser().exists()
        lines.append(f"  {key:<22} {ref}" + ("" if found else " not on this machine (the stage will fail until "
                                                              "it exists)"))
    return "\n".join(lines)


def _missing(recipe: Recipe, name: str) -> list[str]:
    src = next(s for s in recipe.data.sources if s.name == name)
    return [p for p in src.paths if not Path(p).is_file()]


def model_section(recipe: Recipe, run_dir: Path, only, start) -> str:
    if recipe.start_model():
        return ""  # no preset model: the start model folder is printed with the data
    vocab = vocab_size(recipe, run_dir)
    cfg = presets.build_config(recipe.model.preset, {**recipe.model.overrides(), "vocab_size": vocab})
    n = presets.count_params(cfg)
    return (f"model: preset {recipe.model.preset}, vocab {vocab:,}, {cfg.num_hidden_layers} layers, hidden "
            f"{cfg.hidden_size}, heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} (q/kv)\n"
            f"  parameters: {n['total']:,} total, {n['non_embedding']:,} non-embedding")


def budget_section(recipe: Recipe, run_dir: Path, only, start) -> str:
    sizes = {k: v[1] for k, v in source_tokens(recipe, run_dir).items()}
    ranks = recipe.resources.data_parallel()
    parts = []
    for name in ("pretrain", "midtrain"):
        section = getattr(recipe, name)
        if not pipeline.is_enabled(recipe, pipeline.get_stage(name)):
            continue
        weights = recipe.pretrain.mixture if name == "pretrain" else _midtrain_weights(recipe)
        total = section.tokens(ranks)
        accum = section.grad_accum_for(ranks, name)
        head = (f"{name}: {section.max_steps:,} steps x {section.micro_batch_size} x {accum} (accum)"
                + (f" x {ranks} ranks" if ranks > 1 else "") + f" x {section.seq_len} tokens = {total:,} tokens")
        if any(sizes.get(k, 0) < 0 for k in weights):
            rows = "\n".join(f"  {k:<14} {w / sum(weights.values()):>8.1%}  {int(total * w / sum(weights.values())):>15,} "
                             "planned tokens (unique tokens unknown: data not on this machine)"
                             for k, w in sorted(weights.items()))
            parts.append(f"{head}\n{name} mixture\n{rows}")
            continue
        rows = plan_mixture(weights, {k: max(1, sizes.get(k, 1)) for k in weights}, total)
        parts.append(head + "\n" + format_mixture_table(rows, title=f"{name} mixture"))
    return "\n".join(parts)


def _midtrain_weights(recipe: Recipe) -> dict[str, float]:
    from phiforge.train.stages import midtrain_weights
    return midtrain_weights(recipe.pretrain.mixture, recipe.data.long_source_names(), recipe.midtrain.long_fraction)


def vocab_size(recipe: Recipe, run_dir: Path) -> int:
    stats = _stats(run_dir / "tokenizer")
    if stats and "vocab_size" in stats:
        return int(stats["vocab_size"])
    return presets.PHI4_VOCAB if recipe.tokenizer.kind == "phi4" else recipe.tokenizer.vocab_size


def source_tokens(recipe: Recipe, run_dir: Path) -> dict[str, tuple[int, int, bool]]:
    """``{source: (docs, tokens, exact)}`` from the tokenizer stage, else estimated from characters."""
    stats = _stats(run_dir / "tokenizer")
    if stats and rundir.read_marker(run_dir / "tokenizer"):
        return {k.split("/", 1)[1]: (v["docs"], v["tokens"], True)
                for k, v in stats["sources"].items() if k.startswith("train/")}
    return {name: (docs, int(chars / CHARS_PER_TOKEN_GUESS) if chars >= 0 else -1, False)
            for name, (docs, chars) in source_chars(recipe).items()}


def source_chars(recipe: Recipe) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    if recipe.data.generator == "tinymath":
        from phiforge.data import tinymath
        t = recipe.data.tinymath
        splits = tinymath.generate(recipe.run.seed, t.textbook_docs, t.web_docs, t.long_docs, 1, 1,
                                   t.web_wrong_rate, t.long_problems)
        for name in ("textbook", "web", "long"):
            rows = splits[f"train/{name}"]
            out[name] = (len(rows), sum(len(r["text"]) for r in rows))
    for src in recipe.data.sources:
        if any(not Path(p).is_file() for p in src.paths):
            out[src.name] = (-1, -1)  # not on this machine: the dry-run says so, the data stage fails
            continue
        out[src.name] = (-1, sum(Path(p).stat().st_size for p in src.paths))
    return out


def _stats(stage_dir: Path) -> dict | None:
    path = stage_dir / "stats.json"
    return json.loads(path.read_text()) if path.is_file() else None


def print_presets(out: Callable[[str], None] = print) -> None:
    out(f"{'preset':<10} {'layers':>6} {'hidden':>6} {'mlp':>6} {'heads':>7} {'vocab':>7} {'ctx':>6} {'params':>10}")
    for name in presets.preset_names():
        p = presets.PRESETS[name]
        n = presets.count_params(presets.build_config(name))["total"]
        out(f"{name:<10} {p['num_hidden_layers']:>6} {p['hidden_size']:>6} {p['intermediate_size']:>6} "
            f"{p['num_attention_heads']:>3}/{p['num_key_value_heads']:<3} {p['vocab_size']:>7} "
            f"{p['max_position_embeddings']:>6} {n / 1e6:>9.2f}M")


def models_section(recipe: Recipe, run_dir: Path, only, start) -> str:
    """Which model each role uses (teacher, judge, ...): nothing is loaded or started."""
    lines = ["models (by role):"]
    for role in recipe.models.roles():
        ref = recipe.models.get(role)
        same = " (= teacher)" if role == "judge" and recipe.models.judge is None else \
            " (= the run's latest trained model)" if role == "policy" and recipe.models.policy is None else ""
        lines.append(f"  {role:<10} {ref.describe()}{same}")
    return "\n".join(lines)


def synth_section(recipe: Recipe, run_dir: Path, only, start) -> str:
    """The synthetic-data pipelines: seeds, steps and (when finished) what they kept."""
    if not recipe.synth.enabled:
        return ""
    done = {}
    stats_path = run_dir / "synth" / "stats.json"
    if stats_path.is_file():
        done = json.loads(stats_path.read_text()).get("pipelines", {})
    lines = ["synth pipelines:"]
    for pipe in recipe.synth.pipelines:
        seeds = f"first {pipe.max_records:,}" if pipe.max_records else "all"
        kept = done.get(pipe.name, {}).get("records_out")
        lines.append(f"  {pipe.name:<12} {seeds} of {pipe.input} -> " + " -> ".join(s.technique for s in pipe.steps)
                     + (" (source)" if pipe.source else "") + (f"; kept {kept:,}" if kept is not None else ""))
    return "\n".join(lines)


def posttrain_section(recipe: Recipe, run_dir: Path, only, start) -> str | None:
    """What each enabled post-training stage will do (report §4), in pipeline order."""
    r = recipe
    lines = []
    if r.sft.enabled:
        accum = r.sft.grad_accum_for(r.resources.data_parallel(), "sft")
        lines.append(f"  sft        {r.sft.max_steps} steps x {r.sft.micro_batch_size} x {accum} (accum), "
                     f"examples <= {r.sft.seq_len} tokens, LR {r.sft.lr:g}, packing {r.sft.packing}; "
                     f"data {', '.join(r.sft.data)}")
    if r.pts.enabled:
        c = r.pts.search_config(r.run.seed)
        lines.append(f"  pts        {r.pts.max_queries} queries from {r.pts.prompts} (skip {r.pts.first}), oracle "
                     f"{r.pts.oracle}; p_gap {c.p_gap}, window [{c.query_min_p}, {c.query_max_p}], rollouts "
                     f"{c.round_size}/round up to {c.max_rollouts}, adaptive {c.adaptive}, split {c.split}")
    lines += [_dpo_line("dpo", r.dpo), _judge_line(r), _dpo_line("dpo_judge", r.dpo_judge)]
    lines = [line for line in lines if line]
    return "post-training:\n" + "\n".join(lines) if lines else None


def _dpo_line(name: str, d) -> str | None:
    if not d.enabled:
        return None
    steps = f"{d.max_steps} steps" if d.max_steps else f"{d.epochs:g} epochs"
    return f"  {name:<10} {steps} x {d.micro_batch_size} pairs, beta {d.beta:g}, LR {d.lr:g}, pairs from {', '.join(d.pairs)}"


def _judge_line(r: Recipe) -> str | None:
    if not r.judge.enabled:
        return None
    c = r.judge.step_config()
    return (f"  judge      {r.judge.max_prompts} prompts (skip {r.judge.first}); candidates {', '.join(c.candidates)} "
            f"x {c.n_per_candidate}, judge role {c.judge_role} ({c.scoring} scoring), pair types "
            f"{', '.join(c.pair_types)}, swap positions {c.swap_positions}")


def eval_section(recipe: Recipe, run_dir: Path, only, start) -> str | None:
    """Which checkpoints are evaluated, and the registry benchmarks on each (report §6, docs/evals.md)."""
    e = recipe.eval
    if not e.enabled:
        return None
    models = [m for m in e.models if getattr(recipe, m).enabled]
    if recipe.data.makes_data():
        lines = [f"eval: {', '.join(models)}; exact answer on {e.max_items or 'all'} held-out items"
                 + (f", t={e.temperature:g} x seeds {e.seeds}" if e.seeds else "")]
    else:
        lines = [f"eval: {', '.join(models)}; no held-out exact-answer set (no data stage), tasks only"]
    for t in e.tasks:
        from phiforge.evals.registry import task_class

        on = ", ".join(m for m in (t.models or models) if m in models)
        cls = task_class(t.task)
        sampled = ("log-likelihood" if cls.mode == "loglik" else
                   f"{t.repeats or cls.repeats} x t={cls.temperature if t.temperature is None else t.temperature:g}")
        lines.append(f"  {t.label:<12} {t.task} on {on}; data {t.path or 'bundled'}; {sampled}"
                     + (f"; first {t.max_items}" if t.max_items else ""))
    if e.contamination and e.tasks:
        lines.append("  contamination: items looked up in the run's training data (13/7-gram, report App. B)")
    return "\n".join(lines)


def resources_section(recipe: Recipe, run_dir: Path, only, start) -> str | None:
    """Memory per GPU, FLOPs per token and GPU-days for ``[resources]`` (``phiforge.run.resources``)."""
    from phiforge.run import resources

    vocab = None if recipe.start_model() else vocab_size(recipe, run_dir)
    return resources.format_plan(resources.plan(recipe, vocab=vocab))


PLAN_SECTIONS: list[Callable] = [stages_section, data_section, synth_section, model_section, budget_section,
                                 posttrain_section, eval_section, models_section, resources_section]
