"""Merge per-task stats into one stage stats dict (counters and drop reasons summed)."""

from __future__ import annotations

_SUMMED = ("tasks", "records_in", "records_out", "dropped")


def _add(into: dict[str, int], other: dict[str, int]) -> None:
    for key, n in other.items():
        into[key] = into.get(key, 0) + n


def merge_stats(task_stats: list[dict]) -> dict:
    """Sum tasks' stats: totals, ``seconds`` (task CPU-side time), drop reasons, steps, templates."""
    out: dict = {key: 0 for key in _SUMMED}
    out.update(seconds=0.0, drop_reasons={}, templates={}, steps=[])
    for stats in task_stats:
        for key in _SUMMED:
            out[key] += stats[key]
        out["seconds"] += stats["seconds"]
        _add(out["drop_reasons"], stats["drop_reasons"])
        _merge_templates(out["templates"], stats["templates"])
        _merge_steps(out["steps"], stats["steps"])
    out["seconds"] = round(out["seconds"], 4)
    return out


def _merge_templates(into: dict, other: dict) -> None:
    for key, t in other.items():
        if key in into and into[key]["sha256"] != t["sha256"]:
            raise ValueError(f"template {key} had different texts in different tasks "
                             f"(sha256 {into[key]['sha256']} vs {t['sha256']}); bump its version")
        into.setdefault(key, dict(t, renders=0))["renders"] += t["renders"]


def _merge_steps(into: list[dict], other: list[dict]) -> None:
    for i, step in enumerate(other):
        if i == len(into):
            into.append({"name": step["name"], "records_out": 0, "counters": {}, "drop_reasons": {}})
        into[i]["records_out"] += step["records_out"]
        _add(into[i]["counters"], step["counters"])
        _add(into[i]["drop_reasons"], step["drop_reasons"])
