"""The ``data`` stage: generate the tiny corpus and/or import user JSONL sources.

Output layout (``runs/<name>/data/``): ``train/<source>.jsonl`` and
``valid/<source>.jsonl`` with ``{"id", "text"}`` rows, and ``eval.jsonl`` with
``{"id", "question", "answer"}`` items; with tinymath also ``posttrain/sft.jsonl``
(``{"id", "messages"}``) and ``posttrain/prompts.jsonl`` (``{"id", "question",
"answer"}``) for the post-training stages. Later issues (synthetic data, curation)
replace or extend what feeds these files; everything downstream reads only them.
"""

from __future__ import annotations

from pathlib import Path

from phiforge.data import tinymath
from phiforge.data.records import read_jsonl, read_jsonl_lines, write_jsonl
from phiforge.errors import DataError
from phiforge.run.context import StageContext

VALID_SHARE = 0.02  # held-out share of a user source (at most data.tinymath.valid_docs docs)


def run_data(ctx: StageContext) -> dict:
    cfg = ctx.recipe.data
    out = ctx.stage_dir
    stats: dict = {"sources": {}, "dropped": {}}
    if cfg.generator == "tinymath":
        _write_tinymath(ctx, out, stats)
    for src in cfg.sources:
        _import_source(src, out, cfg.tinymath.valid_docs, stats)
    if cfg.eval_file:
        items = list(_read_eval(Path(cfg.eval_file)))
        stats["eval_items"] = write_jsonl(out / "eval.jsonl", items)
    for name, s in stats["sources"].items():
        ctx.log(f"source {name}: {s['docs']:,} docs, {s['chars']:,} chars (+{s['valid_docs']} held out)")
    return stats


def _write_tinymath(ctx: StageContext, out: Path, stats: dict) -> None:
    t = ctx.recipe.data.tinymath
    splits = tinymath.generate(ctx.recipe.run.seed, t.textbook_docs, t.web_docs, t.long_docs, t.eval_problems,
                               t.valid_docs, t.web_wrong_rate, t.long_problems)
    for key, rows in splits.items():
        write_jsonl(out / f"{key}.jsonl", rows)
    for name in tinymath_sources():
        rows = splits[f"train/{name}"]
        stats["sources"][name] = {"docs": len(rows), "chars": sum(len(r["text"]) for r in rows),
                                  "valid_docs": len(splits.get(f"valid/{name}", []))}
    stats["eval_items"] = len(splits["eval"])
    if t.web_html:
        _write_web_pages(ctx, out, splits, stats)
    post = tinymath.posttrain_sets(ctx.recipe.run.seed, t.sft_examples, t.posttrain_prompts,
                                   {it["question"] for it in splits["eval"]})
    for key, rows in post.items():
        write_jsonl(out / f"{key}.jsonl", rows)
    stats["posttrain"] = {key.split("/")[1]: len(rows) for key, rows in post.items()}


def _write_web_pages(ctx: StageContext, out: Path, splits: dict, stats: dict) -> None:
    """The web posts as crawled HTML pages with planted dirt: the curate stage's input (``data.tinyweb``)."""
    from phiforge.data.tinyweb import WebPlants, web_pages

    t = ctx.recipe.data.tinymath
    plants = {k: (int(v) if k == "leaked" else v) for k, v in t.web_plants.items()}
    pages = web_pages(splits["train/web"], splits["eval"], ctx.recipe.run.seed, WebPlants(**plants))
    write_jsonl(out / "raw" / "web.jsonl", pages)
    if splits.get("valid/web"):  # held-out posts as pages too, so validation text looks like curated training text
        none = WebPlants(**{k: 0 for k in WebPlants.__dataclass_fields__})
        valid = web_pages(splits["valid/web"], [], ctx.recipe.run.seed + 1, none)
        write_jsonl(out / "raw" / "valid" / "web.jsonl", valid)
    counts: dict[str, int] = {}
    for page in pages:
        counts[page["plant"]] = counts.get(page["plant"], 0) + 1
    stats["raw"] = {"web": {"pages": len(pages), "plants": counts}}
    ctx.log(f"raw web pages: {len(pages):,} (planted: {counts})")


def tinymath_sources() -> tuple[str, ...]:
    return ("textbook", "web", "long")


def _import_source(src, out: Path, max_valid: int, stats: dict) -> None:
    """Copy a user source into the run as ``{"id", "text"}`` rows, dropping empty documents."""
    rows, dropped = [], 0
    for path in src.paths:
        for lineno, obj in read_jsonl_lines(path, required=(src.text_field,)):
            text = obj[src.text_field]
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: field '{src.text_field}' must be a string, "
                                f"got {type(text).__name__}; fix the line or set the source's text_field")
            if not text.strip():
                dropped += 1
                continue
            rows.append({"id": str(obj.get("id", f"{src.name}-{len(rows):08d}")), "text": text})
    if not rows:
        raise DataError(f"source '{src.name}': no non-empty documents in {src.paths}")
    n_valid = min(max_valid, int(len(rows) * VALID_SHARE)) if len(rows) > 50 else 0
    write_jsonl(out / "train" / f"{src.name}.jsonl", rows[:len(rows) - n_valid])
    if n_valid:
        write_jsonl(out / "valid" / f"{src.name}.jsonl", rows[len(rows) - n_valid:])
    stats["sources"][src.name] = {"docs": len(rows) - n_valid, "valid_docs": n_valid,
                                  "chars": sum(len(r["text"]) for r in rows[:len(rows) - n_valid])}
    stats["dropped"][src.name] = {"empty_text": dropped}


def _read_eval(path: Path):
    for i, obj in enumerate(read_jsonl(path, required=("question", "answer"))):
        yield {"id": str(obj.get("id", f"eval-{i:05d}")), "question": obj["question"], "answer": obj["answer"],
               "steps": obj.get("steps")}
