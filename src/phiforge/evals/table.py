"""Models side by side in the Phi-4 report's Table 1 layout: one row per benchmark, one column per model.

Each cell is the task's primary metric on the table's scale (percent, AMC points)
with its 95% bootstrap interval; a second table gives extraction-failure rates,
because a low score from unreadable answers is a different problem from a low
score from wrong ones (report Table 1 note on strict format requirements).
"""

from __future__ import annotations

from collections.abc import Mapping


def rows(results: Mapping[str, Mapping[str, dict]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows from ``{model: {task: summary}}`` (tasks in first-seen order)."""
    models = list(results)
    tasks: list[str] = []
    for per_task in results.values():
        tasks += [t for t in per_task if t not in tasks]
    body = []
    for t in tasks:
        first = next(results[m][t] for m in models if t in results[m])
        body.append([f"{t} ({first.get('primary_metric')})"] + [cell(results[m].get(t)) for m in models])
    return ["Benchmark"] + models, body


def cell(summary: dict | None, *, interval: bool = True) -> str:
    """``84.8 (82.1-87.0)``: the primary metric on its scale with the 95% interval; "—" when not run."""
    if not summary or summary.get("score") is None:
        return "—"
    scale = summary.get("metric_scale", 100.0)
    text = f"{summary['score'] * scale:.1f}"
    lo, hi = summary.get("ci95") or (None, None)
    if interval and lo is not None:
        text += f" ({lo * scale:.1f}-{hi * scale:.1f})"
    return text


def markdown(results: Mapping[str, Mapping[str, dict]]) -> str:
    """The comparison as a Markdown table (printed by ``phiforge eval`` for several models)."""
    header, body = rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)
