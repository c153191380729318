"""The ``curate`` stage: organic sources through extraction, filters, dedup, decontamination and quality.

Phi-4 report §2.3: web dumps are filtered to a small high-quality fraction by
small classifiers trained on LLM annotations (with a non-STEM amplifier), language
ID and the same classifiers for multilingual data, corruption filters on n-gram
statistics and compression ratios, a custom HTML extractor that keeps math, code,
tables and forum structure, deduplication, and the hybrid 13/7-gram benchmark
decontamination of App. B. This stage runs those steps (``phiforge.curate.*``, each
a dataflow ``Step`` with counters and drop reasons) over each source listed in
``[curate] sources``, in the recipe's order, and writes:

    curate/<source>/inputs/      the source as record shards (HTML pages when the data stage wrote them)
    curate/<source>/filtered/    after every step but quality (dropped/ holds each drop and its reason)
    curate/<source>/out/         after the quality classifier
    curate/<source>/quality.pkl  the classifier trained on the annotator's labels (+ agreement in stats)
    curate/train/<source>.jsonl  the curated source, which replaces data/train/<source>.jsonl downstream
    curate/decontam/index.*      the benchmark index, built once from [curate] benchmarks
    curate/mixture.json          the pretraining mixture's tokens and epochs after curation (estimated)

Dedup needs every document of a source in one task, so each source is one input
shard (fine up to a few million documents; larger corpora want a two-phase
dedup, noted in docs/curate.md). Pages planted by the tiny recipe's data stage
carry a ``plant`` tag; the stats count how many of each kind every step caught.
"""

from __future__ import annotations

import importlib
import random
from collections import Counter
from pathlib import Path
from typing import Iterator

from phiforge.data.records import read_jsonl, write_jsonl
from phiforge.dataflow import LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.errors import StageError
from phiforge.recipe.schema import curate_config
from phiforge.run.context import StageContext

TRAIN_DIR = "train"
WHOLE_SOURCE_STEPS = ("dedup",)
STEP_CLASSES = {"html": ("phiforge.curate.html", "HtmlToText"), "langid": ("phiforge.curate.langid", "LanguageID"),
                "language_quota": ("phiforge.curate.langid", "LanguageQuota"),
                "corruption": ("phiforge.curate.corruption", "CorruptionFilter"),
                "dedup": ("phiforge.curate.dedup", "Dedup")}
CHARS_PER_TOKEN_GUESS = 3.5


def run_curate(ctx: StageContext) -> dict:
    cfg = ctx.recipe.curate
    index = _decontam_index(ctx) if "decontam" in cfg.steps else None
    stats: dict = {"sources": {}, "steps": list(cfg.steps)}
    for name in cfg.sources:
        stats["sources"][name] = curate_source(ctx, name, index)
    stats["mixture"] = _mixture(ctx)
    return stats


def curated_files(ctx: StageContext, split: str = TRAIN_DIR) -> dict[str, Path]:
    """``{source: curated file}`` of a split when the curate stage ran (the tokenizer and eval use these)."""
    if not ctx.recipe.curate.enabled or not ctx.has_output("curate"):
        return {}
    folder = ctx.input_dir("curate") / split
    return {p.stem: p for p in sorted(folder.glob("*.jsonl"))}


# ---------------------------------------------------------------------------- one source


def curate_source(ctx: StageContext, name: str, index: Path | None) -> dict:
    cfg = ctx.recipe.curate
    folder = ctx.stage_dir / name
    raw = ctx.input_dir("data") / "raw" / f"{name}.jsonl"
    is_html = raw.is_file()
    n_in = _write_inputs(raw if is_html else ctx.input_dir("data") / "train" / f"{name}.jsonl", folder / "inputs",
                         shards=max(1, cfg.workers) * 4)
    names = [s for s in cfg.steps if s not in ("quality", "amplifier") and (s != "html" or is_html)]
    ctx.log(f"{name}: {n_in:,} documents{' (HTML)' if is_html else ''} -> " + " -> ".join(names))
    out, runs = folder / "inputs", []
    for i, segment in enumerate(segments(names)):
        whole = any(s in WHOLE_SOURCE_STEPS for s in segment)
        if whole:  # dedup compares every pair of documents: one task over one shard
            out = _merged(out, folder / f"merged{i}")
        dest = folder / ("filtered" if i == len(segments(names)) - 1 else f"stage{i}")
        steps = [_build(cfg, s, index) for s in segment]
        if whole:  # one task that needs all documents: in this process
            runs.append(LocalExecutor(steps, input=str(out), output_dir=str(dest), workers=1, progress=False).run())
        else:
            runs.append(ctx.executor(steps, input=str(out), output_dir=str(dest), workers=cfg.workers).run())
        out = dest
    quality = None
    if "quality" in cfg.steps:
        quality = _train_quality(ctx, name, out)
        runs.append(LocalExecutor(_quality_steps(ctx, folder), input=str(out), output_dir=str(folder / "out"),
                                  workers=1, progress=False).run())
        out = folder / "out"
    kept = _write_curated(out, ctx.stage_dir / TRAIN_DIR / f"{name}.jsonl")
    ctx.log(f"{name}: kept {kept:,} of {n_in:,} documents")
    _extract_valid(ctx, name, folder)
    return {"input_docs": n_in, "kept_docs": kept, "html": is_html, "steps": _step_stats(runs),
            "plants": _plant_table(folder, out), "quality": quality}


def _extract_valid(ctx: StageContext, name: str, folder: Path) -> None:
    """Held-out pages (``data/raw/valid/<name>.jsonl``) through the same HTML extraction, nothing else.

    Validation loss must be measured on text shaped like the training text; the
    filters are not applied, so the held-out set stays the same across filter settings.
    """
    raw = ctx.input_dir("data") / "raw" / "valid" / f"{name}.jsonl"
    if not raw.is_file() or "html" not in ctx.recipe.curate.steps:
        return
    _write_inputs(raw, folder / "valid-inputs", shards=1)
    LocalExecutor([_build(ctx.recipe.curate, "html", None)], input=str(folder / "valid-inputs"),
                  output_dir=str(folder / "valid"), workers=1, progress=False).run()
    n = _write_curated(folder / "valid", ctx.stage_dir / "valid" / f"{name}.jsonl")
    ctx.log(f"{name}: {n:,} held-out pages extracted for validation loss")


def segments(steps: list[str]) -> list[list[str]]:
    """Consecutive per-document steps run sharded in parallel; a whole-source step (dedup) gets its own run."""
    out: list[list[str]] = []
    for step in steps:
        if step in WHOLE_SOURCE_STEPS or not out or out[-1][-1] in WHOLE_SOURCE_STEPS:
            out.append([step])
        else:
            out[-1].append(step)
    return out


def _merged(src: Path, folder: Path) -> Path:
    """``src``'s shards as one shard (records in order), rewritten from scratch."""
    for old in folder.glob("shard-*"):
        old.unlink()
    write_shards(read_records(src), folder, records_per_shard=1 << 62)
    return folder


def _write_inputs(path: Path, folder: Path, shards: int) -> int:
    """The source as record shards (extra fields such as a page's ``plant`` go to metadata)."""
    if not path.is_file():
        raise StageError(f"curate: {path} not found; is the source produced by the data stage?")
    for old in folder.glob("shard-*"):
        old.unlink()
    rows = list(read_jsonl(path, required=("id", "text")))
    write_shards((_record(row) for row in rows), folder, records_per_shard=max(1, -(-len(rows) // shards)))
    return len(rows)


def _record(row: dict) -> Record:
    meta = {k: v for k, v in row.items() if k not in ("id", "text")}
    return Record(str(row["id"]), text=row["text"], metadata=meta)


def _build(cfg, step: str, index: Path | None):
    """The dataflow Step for a curation step name, from its validated recipe table."""
    if step == "decontam":
        from phiforge.curate.decontam_step import Decontaminate, DecontamStepConfig

        return Decontaminate(DecontamStepConfig(index_path=str(index), drop_partial=cfg.drop_partial))
    module, name = STEP_CLASSES[step]
    return getattr(importlib.import_module(module), name)(curate_config(step, getattr(cfg, step)))


def _write_curated(folder: Path, out: Path) -> int:
    rows = ({"id": r.id, "text": r.content()} for r in read_records(folder))
    return write_jsonl(out, rows)


def _step_stats(runs: list[dict]) -> list[dict]:
    """Per step in order: records in and out, drop reasons and counters (from the dataflow stats)."""
    out = []
    for run in runs:
        records = run.get("records_in", 0)
        for step in run.get("steps") or []:
            out.append({"name": step["name"], "records_in": records, "records_out": step["records_out"],
                        "drop_reasons": step.get("drop_reasons", {}), "counters": step.get("counters", {})})
            records = step["records_out"]
    return out


def _plant_table(folder: Path, final: Path) -> dict:
    """``{plant kind: {"kept": n, "<step>/<reason>": n}}`` over the planted pages (tiny recipe)."""
    table: dict[str, Counter] = {}
    for dropped in sorted(d for d in folder.glob("*/dropped") if d.parent.name != "valid"):
        for record, reason, step in read_dropped(dropped):
            table.setdefault(record.metadata.get("plant", "unknown"), Counter())[f"{step}/{reason}"] += 1
    for record in read_records(final):
        table.setdefault(record.metadata.get("plant", "unknown"), Counter())["kept"] += 1
    return {k: dict(v) for k, v in sorted(table.items())}


# ---------------------------------------------------------------------------- decontamination


def _decontam_index(ctx: StageContext) -> Path:
    """The benchmark index over ``[curate] benchmarks``, built once per stage run."""
    from phiforge.curate.decontam_step import build_index

    files = {}
    for ref in ctx.recipe.curate.benchmarks:
        path = ctx.input_dir("data") / "eval.jsonl" if ref == "data:eval" else Path(ref).expanduser()
        files["eval" if ref == "data:eval" else path.stem] = path
    out = ctx.stage_dir / "decontam" / "index"
    build_index(files, out, curate_config("decontam", ctx.recipe.curate.decontam))
    ctx.log(f"decontamination index: {', '.join(files)}")
    return out


# ---------------------------------------------------------------------------- quality


def _train_quality(ctx: StageContext, name: str, filtered: Path) -> dict:
    """The annotator labels a sample of the filtered documents; a hashed n-gram classifier learns the labels.

    Report §2.3: small non-LLM classifiers trained on LLM annotations select web
    data at scale. The agreement with held-out annotator labels (and trivial
    baselines) goes to the stats, so a user can see whether the labels carry signal.
    """
    from phiforge.curate.annotate import annotate
    from phiforge.curate.quality import train_and_evaluate

    cfg = ctx.recipe.curate
    folder = filtered.parent
    docs = list(read_records(filtered))
    if len(docs) < 3:
        raise StageError(f"curate: only {len(docs)} documents of '{name}' survive before the quality step; "
                         "nothing to train a classifier on (loosen the earlier filters or drop 'quality')")
    sample = random.Random(ctx.recipe.run.seed).sample(docs, min(cfg.annotate_docs, len(docs)))
    texts = [r.content() for r in sample]
    ctx.log(f"{name}: annotator '{cfg.annotator}' labels {len(texts)} documents")
    labels = annotate(texts, ctx.backend(cfg.annotator), curate_config("annotate", cfg.annotate))
    ok = [(t, a) for t, a in zip(texts, labels) if a.ok]
    clf, agreement = train_and_evaluate([t for t, _ in ok], [a for _, a in ok], curate_config("classifier", cfg.classifier),
                                        seed=ctx.recipe.run.seed)
    clf.save(folder / "quality.pkl")
    write_jsonl(folder / "annotations.jsonl", [{"id": r.id, **a.to_dict()} for r, a in zip(sample, labels)])
    ctx.log(f"{name}: classifier agreement on {agreement['n_holdout']} held-out labels: "
            + _agreement_line(agreement))
    return {"annotated": len(texts), "labelled": len(ok), "agreement": agreement}


def _agreement_line(a: dict) -> str:
    edu, topic, base = a.get("edu") or {}, a.get("topic") or {}, a.get("topic_baseline_majority") or {}
    return (f"edu Spearman {_r(edu.get('spearman'))}, within-1 {_r(edu.get('within_1'))}; topic accuracy "
            f"{_r(topic.get('accuracy'))} (majority baseline {_r(base.get('accuracy'))})")


def _r(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _quality_steps(ctx: StageContext, folder: Path) -> list:
    from phiforge.curate.quality import NonStemAmplifier, QualityFilter

    cfg = ctx.recipe.curate
    table = dict(cfg.quality, model_path=str(folder / "quality.pkl"))
    steps = [QualityFilter(curate_config("quality", table))]
    if "amplifier" in cfg.steps:
        steps.append(NonStemAmplifier(curate_config("amplifier", cfg.amplifier)))
    return steps


# ---------------------------------------------------------------------------- mixture


def _mixture(ctx: StageContext) -> dict:
    """Table-5 arithmetic for the pretraining mixture after curation (unique tokens estimated from characters)."""
    from dataclasses import asdict

    from phiforge.curate.mixture import build_manifest, format_manifest, write_manifest

    r = ctx.recipe
    curated = {p.stem: p for p in (ctx.stage_dir / TRAIN_DIR).glob("*.jsonl")}
    tokens = {}
    for name in r.pretrain.mixture:
        path = curated.get(name, ctx.input_dir("data") / "train" / f"{name}.jsonl")
        if path.is_file():
            tokens[name] = int(sum(len(row["text"]) for row in read_jsonl(path)) / CHARS_PER_TOKEN_GUESS)
    manifest = build_manifest({k: v for k, v in r.pretrain.mixture.items() if k in tokens}, tokens,
                              r.pretrain.tokens(r.resources.data_parallel()), max_epochs=r.curate.max_epochs,
                              estimated=True)
    write_manifest(ctx.stage_dir / "mixture.json", manifest)
    for line in format_manifest(manifest, "pretraining mixture after curation").splitlines():
        ctx.log(line)
    return asdict(manifest)
