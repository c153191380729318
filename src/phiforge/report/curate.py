"""The report's curation page: what each filter removed and why, the planted pages caught, the
decontamination hits, the quality classifier's agreement with its annotator, and the mixture after curation.

Phi-4 report §2.3 / App. B describe the filters; this page makes their effect on
this run's data a table of numbers, so "the filter works" is checked, not assumed.
"""

from __future__ import annotations

from phiforge.dataflow import read_dropped
from phiforge.report.html import (Raw, RunView, as_dict, esc, fmt_float, fmt_int, fmt_pct, not_run, note,
                                  register_section, section, table)

MAX_HITS = 30


def curation(view: RunView) -> str | None:
    stats = view.json("curate/stats.json")
    if stats is None:
        return None
    if not isinstance(stats, dict):
        return section("curation", "Curation", not_run("unreadable curate/stats.json"))
    parts = []
    for name, src in as_dict(stats.get("sources")).items():
        src = as_dict(src)
        parts.append(f"<h3>Source: {esc(name)}</h3>")
        parts.append(note(f"{fmt_int(src.get('input_docs'))} documents in"
                          + (" (HTML pages)" if src.get("html") else "")
                          + f", {fmt_int(src.get('kept_docs'))} kept ({fmt_pct(_ratio(src))})."))
        parts.append(_steps_table(src.get("steps") or []))
        if src.get("plants"):
            parts.append(_plants_table(as_dict(src["plants"])))
        parts.append(_decontam_hits(view, name))
        if src.get("quality"):
            parts.append(_quality(as_dict(src["quality"])))
    parts.append(_mixture(as_dict(stats.get("mixture"))))
    return section("curation", "Curation (organic data)", "\n".join(p for p in parts if p))


def _ratio(src: dict) -> float | None:
    n, k = src.get("input_docs"), src.get("kept_docs")
    return k / n if n else None


def _steps_table(steps: list) -> str:
    rows = []
    for s in steps:
        s = as_dict(s)
        reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(as_dict(s.get("drop_reasons")).items(), key=lambda kv: -kv[1]))
        rows.append([s.get("name"), fmt_int(s.get("records_in")), fmt_int(s.get("records_out")), reasons or "—"])
    return table(["step", "in", "out", "drop reasons"], rows, numeric=(1, 2))


def _plants_table(plants: dict) -> str:
    """Planted page kinds (tiny recipe) by where they ended: kept, or which step dropped them and why."""
    outcomes = sorted({k for v in plants.values() for k in as_dict(v)}, key=lambda k: (k != "kept", k))
    rows = [[kind] + [fmt_int(as_dict(v).get(o)) if as_dict(v).get(o) else "—" for o in outcomes]
            for kind, v in plants.items()]
    return ("<h4>Planted pages: where each kind ended</h4>\n"
            + note("'none' = ordinary posts; each other kind was planted by the data stage to test one filter.")
            + table(["planted kind"] + outcomes, rows, numeric=range(1, len(outcomes) + 1)))


def _decontam_hits(view: RunView, name: str) -> str:
    folders = sorted(view.path(f"curate/{name}").glob("*/dropped"))
    if not folders:
        return ""
    hits = [(r, reason) for folder in folders for r, reason, step in read_dropped(folder) if step == "decontaminate"]
    if not hits:
        return "<h4>Decontamination hits</h4>\n" + note("no document matched a benchmark item.")
    rows = []
    for record, reason in hits[:MAX_HITS]:
        d = as_dict(record.metadata.get("decontam"))
        rows.append([record.id, reason, d.get("benchmark", "—"), d.get("item_id", "—"), fmt_float(d.get("ratio"), 3),
                     Raw(f'<div class="text">{esc(record.content()[:160])}</div>')])
    return ("<h4>Decontamination hits</h4>\n" + note(f"{len(hits)} documents dropped (first {len(rows)} shown)")
            + table(["document", "reason", "benchmark", "item", "7-gram ratio", "text"], rows, numeric=(4,)))


def _quality(q: dict) -> str:
    a = as_dict(q.get("agreement"))
    edu, base = as_dict(a.get("edu")), as_dict(a.get("edu_baseline_mean"))
    topic, tbase = as_dict(a.get("topic")), as_dict(a.get("topic_baseline_majority"))
    rows = [["educational value: Spearman", fmt_float(edu.get("spearman"), 3), fmt_float(base.get("spearman"), 3)],
            ["educational value: within 1", fmt_pct(edu.get("within_1")), fmt_pct(base.get("within_1"))],
            ["educational value: MAE", fmt_float(edu.get("mae"), 3), fmt_float(base.get("mae"), 3)],
            ["topic: accuracy", fmt_pct(topic.get("accuracy")), fmt_pct(tbase.get("accuracy"))],
            ["topic: macro F1", fmt_float(topic.get("macro_f1"), 3), fmt_float(tbase.get("macro_f1"), 3)]]
    intro = note(f"The annotator labelled {fmt_int(q.get('annotated'))} documents ({fmt_int(q.get('labelled'))} "
                 f"usable); a hashed n-gram classifier trained on {fmt_int(a.get('n_train'))} is compared with "
                 f"the annotator on {fmt_int(a.get('n_holdout'))} held-out documents, next to a trivial baseline "
                 "(the training mean / the majority topic).")
    return ("<h4>Quality classifier vs its annotator (held out)</h4>\n" + intro
            + table(["agreement", "classifier", "trivial baseline"], rows, numeric=(1, 2)))


def _mixture(m: dict) -> str:
    rows = [[r.get("source"), fmt_pct(r.get("fraction")), fmt_int(r.get("unique_tokens")),
             fmt_int(r.get("planned_tokens")), fmt_float(r.get("epochs"), 2)] for r in map(as_dict, m.get("rows") or [])]
    if not rows:
        return ""
    warn = "".join(note(f"WARNING: {w}") for w in m.get("warnings") or [])
    return ("<h4>Pretraining mixture after curation</h4>\n"
            + note(f"Table 5 arithmetic (epochs = fraction x {fmt_int(m.get('total_tokens'))} tokens / unique "
                   f"tokens), unique tokens estimated from characters; limit {m.get('max_epochs')} epochs.")
            + table(["source", "fraction", "unique tokens", "planned tokens", "epochs"], rows, numeric=(1, 2, 3, 4))
            + warn)


register_section(curation, after="data_mixture")
