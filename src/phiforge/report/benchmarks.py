"""The report's benchmark page: registry tasks across checkpoints in the Phi-4 report's Table 1 layout.

Rows are benchmarks, columns are this run's checkpoints in pipeline order (as
Table 1 puts models side by side), cells are the primary metric with its 95%
bootstrap interval. Under it: extraction-failure rates (a low score from
unreadable answers is a format problem, not a knowledge one; Table 1's note),
a bar plot with the intervals, and, when ``eval.contamination`` was on, every
score on clean and flagged items separately (report App. B: scores on
contaminated items are not evidence of skill).
"""

from __future__ import annotations

import io

from phiforge.evals import table as eval_table
from phiforge.report.html import (RunView, _img, _pipeline_rank, as_dict, fmt_int, fmt_pct, note, register_section, section,
                                  table)
from phiforge.report.posttrain import LABELS


def benchmarks(view: RunView) -> str | None:
    """Table 1 layout, extraction failures, a bar plot and the contamination split."""
    stats = as_dict(view.json("eval/stats.json"))
    results = {str(m): {str(t): as_dict(s) for t, s in as_dict(v).items()} for m, v in as_dict(stats.get("tasks")).items()}
    if not results:
        return None
    results = dict(sorted(results.items(), key=lambda kv: _pipeline_rank(kv[0])))
    header, rows = eval_table.rows(results)
    header = [header[0]] + [LABELS.get(m, m) for m in header[1:]]
    parts = [note("Primary metric per task with its 95% bootstrap interval over items (percent; AMC: points of "
                  "150). Settings per task: repeats and temperature in the second table."),
             table(header, rows, numeric=range(1, len(header))), _failures(results), _plot(results),
             _contamination(results, as_dict(stats.get("contamination")))]
    return section("benchmarks", "Benchmarks (Table 1 layout)", "\n".join(p for p in parts if p))


def _failures(results: dict) -> str:
    tasks = _tasks(results)
    head = ["task", "items", "repeats", "temperature"] + [f"{LABELS.get(m, m)}: extraction failures" for m in results]
    rows = []
    for t in tasks:
        first = next(results[m][t] for m in results if t in results[m])
        rows.append([t, fmt_int(first.get("n_items")), fmt_int(first.get("repeats")),
                     "—" if first.get("temperature") is None else f"{first['temperature']:g}"]
                    + [fmt_pct(as_dict(results[m].get(t)).get("extraction_failure_rate")) for m in results])
    return "<h3>Settings and extraction failures</h3>\n" + table(head, rows, numeric=range(1, len(head)))


def _tasks(results: dict) -> list[str]:
    seen: list[str] = []
    for per_task in results.values():
        seen += [t for t in per_task if t not in seen]
    return seen


def _plot(results: dict) -> str:
    """Grouped bars: one group per task, one bar per checkpoint, interval whiskers."""
    from matplotlib.figure import Figure

    tasks, models = _tasks(results), list(results)
    fig = Figure(figsize=(max(6.0, 1.2 * len(tasks) * max(1, len(models)) / 2), 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(models))
    for j, m in enumerate(models):
        xs, ys, errs = [], [], [[], []]
        for i, t in enumerate(tasks):
            s = as_dict(results[m].get(t))
            if s.get("score") is None:
                continue
            scale = s.get("metric_scale", 100.0)
            lo, hi = s.get("ci95") or (None, None)
            y = s["score"] * scale
            xs.append(i + (j - (len(models) - 1) / 2) * width)
            ys.append(y)
            errs[0].append(y - lo * scale if lo is not None else 0)
            errs[1].append(hi * scale - y if hi is not None else 0)
        ax.bar(xs, ys, width=width, yerr=errs, capsize=2, label=LABELS.get(m, m))
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right")
    ax.set(ylabel="score (primary metric)", title="benchmarks by checkpoint")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _img(buf.getvalue(), "benchmarks by checkpoint")


def _contamination(results: dict, counts: dict) -> str:
    split_rows = []
    for m, per_task in results.items():
        for t, s in per_task.items():
            by = as_dict(s.get("by_contamination"))
            if by:
                split_rows.append([LABELS.get(m, m), t] + [_split_cell(as_dict(by.get(k))) for k in
                                                           ("clean", "partial", "contaminated")])
    if not split_rows:
        return ""
    intro = note("Eval items looked up in this run's training data with the Phi-4 hybrid 13/7-gram test "
                 f"(report App. B). Items per verdict: {', '.join(f'{t}: {as_dict(c)}' for t, c in counts.items())}.")
    return ("<h3>Scores by contamination</h3>\n" + intro
            + table(["checkpoint", "task", "clean", "partial", "contaminated"], split_rows, numeric=(2, 3, 4)))


def _split_cell(s: dict) -> str:
    if not s.get("n_items"):
        return "— (0 items)"
    return f"{eval_table.cell(s, interval=False)} (n={s['n_items']})"


register_section(benchmarks, after="stage_table")
