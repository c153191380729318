"""Numbers from graded rows: the task's metrics, a bootstrap interval, failure rates, the contamination split.

Why bootstrap over items: a benchmark score is an average over a sample of
questions, and the question sample is the main source of uncertainty (the
model's sampling adds to it when repeats > 1). Resampling items (each item keeps
all its repeats) gives an interval for any metric a task defines, including ones
that are not plain means (SimpleQA's F1, AMC points); for plain means the
resampling is vectorised with numpy. simple-evals reports a bootstrap standard
deviation the same way; we report the 95% percentile interval.

The extraction-failure rate (responses from which no answer could be read) is
reported next to every score: the Phi-4 report attributes some low simple-evals
numbers to "strict format requirements" (Table 1 note), so a score that is low
because answers could not be read must say so.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

from phiforge.evals.task import Task

BOOTSTRAP_SAMPLES = 1000
SPLITS = ("clean", "partial", "contaminated")


def summarize(task: Task, groups: Sequence[Sequence[dict]], *, bootstrap: int = BOOTSTRAP_SAMPLES,
              seed: int = 0) -> dict:
    """Metrics, the primary metric with a 95% bootstrap interval, counts and failure rates."""
    groups = [g for g in groups if g]
    rows = [r for g in groups for r in g]
    metrics = task.metrics(groups) if groups else {}
    primary = metrics.get(task.primary_metric)
    lo, hi = bootstrap_interval(task, groups, samples=bootstrap, seed=seed) if groups else (None, None)
    labels = Counter(r.get("label") or "" for r in rows)
    return {
        "task": task.name, "primary_metric": task.primary_metric, "metric_scale": task.metric_scale,
        "score": primary, "ci95": [lo, hi], "metrics": metrics,
        "n_items": len(groups), "n_samples": len(rows),
        "repeats": task.n_repeats if task.mode == "generate" else 1,
        "temperature": task.sampling_temperature if task.mode == "generate" else None,
        "extraction_failure_rate": (sum(r.get("extracted") is None for r in rows) / len(rows)) if rows else None,
        "labels": dict(sorted(labels.items())),
    }


def bootstrap_interval(task: Task, groups: Sequence[Sequence[dict]], *, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of the primary metric over ``samples`` item resamples (None for < 2 items)."""
    if len(groups) < 2 or samples < 1:
        return (None, None)
    if task.metric_is_item_mean:
        values = _mean_resamples(groups, samples, seed)
    else:
        rng = random.Random(seed)
        n = len(groups)
        values = sorted(task.metrics([groups[rng.randrange(n)] for _ in range(n)])[task.primary_metric]
                        for _ in range(samples))
    tail = (1 - level) / 2
    return (_quantile(values, tail), _quantile(values, 1 - tail))


def _mean_resamples(groups: Sequence[Sequence[dict]], samples: int, seed: int) -> list[float]:
    import numpy as np

    per_item = np.array([sum(r["score"] for r in g) / len(g) for g in groups], dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_item), size=(samples, len(per_item)))
    return sorted(per_item[idx].mean(axis=1).tolist())


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already-sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def split_by_contamination(task: Task, groups: Sequence[Sequence[dict]], flags: Mapping[str, str], *,
                           bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """The summary again on clean, partial and contaminated items separately (items without a flag are clean)."""
    buckets: dict[str, list] = {s: [] for s in SPLITS}
    for g in groups:
        if g:
            buckets[flags.get(g[0]["item_id"], "clean")].append(g)
    out = {}
    for split, members in buckets.items():
        s = summarize(task, members, bootstrap=bootstrap, seed=seed) if members else {"n_items": 0}
        out[split] = {k: s.get(k) for k in ("n_items", "score", "ci95", "extraction_failure_rate")}
    return out
