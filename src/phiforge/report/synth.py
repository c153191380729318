"""The report's synthetic-data page: per pipeline and technique, counts in/out, drop reasons,
model calls and tokens per kept record, and examples (kept, and one per drop reason)."""

from __future__ import annotations

import json

from phiforge.report.html import (RunView, esc, fmt_int, fmt_seconds, not_run, note, register_section, section,
                                  table)


def synthetic_data(view: RunView) -> str | None:
    stats = view.json("synth/stats.json")
    if stats is None:
        return None if not view.exists("synth") else section("synth", "Synthetic data", not_run("synth not finished"))
    examples = view.json("synth/examples.json") or {}
    parts = [note("Phi-4 report §2.2: every record not kept is dropped with a reason; "
                  "model calls and tokens are per kept record.")]
    for name, pipe in (stats.get("pipelines") or {}).items():
        parts.append(_pipeline(name, pipe, examples.get(name) or {}))
    return section("synth", "Synthetic data", "\n".join(parts))


def _pipeline(name: str, pipe: dict, examples: dict) -> str:
    head = (f"<h3>{esc(name)}</h3>" + note(
        f"input {esc(pipe.get('input'))}: {fmt_int(pipe.get('seeds'))} seeds → {fmt_int(pipe.get('records_out'))} "
        f"kept in {fmt_seconds(pipe.get('seconds'))}"
        + (f"; {fmt_int(pipe.get('documents'))} pretraining documents" if pipe.get("documents") is not None else "")
        + f"; templates: {esc(', '.join(pipe.get('templates') or []) or '—')}"))
    return head + _steps_table(pipe) + _drops_table(pipe) + _examples(examples)


def _steps_table(pipe: dict) -> str:
    rows = []
    for step in pipe.get("steps") or []:
        c = step.get("counters") or {}
        kept = step.get("records_out") or 0
        per = (lambda v: f"{v / kept:,.1f}" if kept else "—")
        rows.append([step.get("technique"), fmt_int(kept), fmt_int(sum((step.get("drop_reasons") or {}).values())),
                     fmt_int(c.get("model_calls")), fmt_int(c.get("completion_tokens")),
                     per(c.get("model_calls") or 0), per((c.get("prompt_tokens") or 0) + (c.get("completion_tokens") or 0))])
    return table(["technique", "out", "dropped", "model calls", "generated tokens", "calls / kept",
                  "tokens / kept"], rows, numeric=(1, 2, 3, 4, 5, 6))


def _drops_table(pipe: dict) -> str:
    rows = [[step.get("technique"), reason, fmt_int(n)] for step in pipe.get("steps") or []
            for reason, n in sorted((step.get("drop_reasons") or {}).items(), key=lambda kv: -kv[1])]
    return table(["technique", "drop reason", "records"], rows, numeric=(2,)) if rows else ""


def _examples(examples: dict) -> str:
    kept = examples.get("kept") or []
    out = [f"<h4>Kept ({len(kept)} shown)</h4>"] + [_example(e) for e in kept]
    dropped = examples.get("dropped") or {}
    if dropped:
        out.append("<h4>Dropped, one per reason</h4>")
        out += [f"<p><b>{esc(reason)}</b></p>" + _example(e[0]) for reason, e in dropped.items() if e]
    return "\n".join(out)


def _example(e: dict) -> str:
    body = e.get("text") if e.get("text") is not None else "\n".join(
        f"[{m.get('role')}] {m.get('content')}" for m in e.get("messages") or [])
    meta = {k: v for k, v in (e.get("metadata") or {}).items() if k in _META_SHOWN}
    tail = f"\n\nmetadata: {json.dumps(meta, ensure_ascii=False)}" if meta else ""
    return f'<pre class="config">{esc(e.get("id"))}\n\n{esc(body)}{esc(tail)}</pre>'


_META_SHOWN = ("answer", "extracted_answer", "verdict", "plurality_answer", "agreement", "cluster_sizes",
               "fidelity", "grade", "rounds_used", "kind", "educational_score")

register_section(synthetic_data, after="stages")
