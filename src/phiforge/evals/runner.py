"""Run an evaluation task against a model backend: batched, resumable, one row per item and sample.

Output folder of one (model, task) run::

    samples.jsonl   one row per item and sample: item_id, repeat, prompt, response,
                    extracted, score, label, extra (appended chunk by chunk)
    settings.json   what the samples were made with (task settings + model name)
    summary.json    metrics, 95% bootstrap interval, extraction-failure rate and,
                    with contamination flags, the same per clean/partial/contaminated items

Why chunks: all prompts of a chunk go to the backend in ONE ``sample`` call (the
local backend batches rows and shares each prompt's prefix pass across its
repeats; an HTTP backend sends them concurrently), which is where the speed over
a one-item-at-a-time loop comes from (``benchmarks/eval_throughput.py``). After
each chunk its rows are appended and flushed, so a crashed or interrupted
evaluation resumes with only the missing (item, repeat) pairs; a truncated last
line from a crash is dropped and recomputed. Samples made with other settings are
never mixed in: a changed temperature, prompt option or model is an error unless
``overwrite`` is set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from phiforge.backends.base import SamplingParams
from phiforge.errors import ConfigError
from phiforge.evals.summary import BOOTSTRAP_SAMPLES, split_by_contamination, summarize
from phiforge.evals.task import Task

SAMPLES, SETTINGS, SUMMARY = "samples.jsonl", "settings.json", "summary.json"
Log = Callable[[str], None]


def evaluate_task(task: Task, backend, out_dir: str | Path, *, flags: Mapping[str, str] | None = None,
                  chunk_items: int = 64, bootstrap: int = BOOTSTRAP_SAMPLES, overwrite: bool = False,
                  items: Sequence[dict] | None = None, log: Log | None = None) -> dict:
    """Evaluate ``task`` with ``backend``; returns (and writes) the summary. See the module docstring."""
    log = log or (lambda _m: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = _select_items(task, backend, list(items) if items is not None else task.load(), log)
    _check_settings(out, task, backend, overwrite)
    done = read_samples(out / SAMPLES)
    t0 = time.perf_counter()
    todo = [(it, r) for it in items for r in range(_repeats(task)) if (it["id"], r) not in done]
    if todo:
        log(f"{task.name}: {len(items)} items x {_repeats(task)} samples, {len(todo)} to run "
            f"({len(done)} already done)")
    runner = _loglik_chunk if task.mode == "loglik" else _generate_chunk
    with (out / SAMPLES).open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), chunk_items * _repeats(task)):
            rows = runner(task, backend, todo[start:start + chunk_items * _repeats(task)])
            _append(f, rows)
            done.update({(r["item_id"], r["repeat"]): r for r in rows})
            log(f"{task.name}: {min(start + chunk_items * _repeats(task), len(todo))}/{len(todo)} samples")
    groups = [[done[(it["id"], r)] for r in range(_repeats(task))] for it in items]
    summary = summarize(task, groups, bootstrap=bootstrap, seed=task.options.seed)
    summary["model"] = getattr(backend, "name", "model")
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["items_per_second"] = round(len({it["id"] for it, _ in todo}) / summary["seconds"], 3) \
        if todo and summary["seconds"] > 0 else None
    if flags is not None:
        summary["by_contamination"] = split_by_contamination(task, groups, flags, bootstrap=bootstrap,
                                                             seed=task.options.seed)
    _write_json(out / SUMMARY, summary)
    return summary


def _repeats(task: Task) -> int:
    return task.n_repeats if task.mode == "generate" else 1


def _select_items(task: Task, backend, items: list[dict], log: Log) -> list[dict]:
    if task.options.max_items is not None:
        items = items[:task.options.max_items]
    limit = getattr(backend, "max_positions", None)
    if limit and hasattr(task, "items_fitting"):
        items, skipped = task.items_fitting(items, limit)
        if skipped:
            log(f"{task.name}: skipped lengths {skipped} (over the model's {limit}-token context)")
    if not items:
        raise ConfigError(f"task {task.name!r}: no items to evaluate (check path, max_items and the model's context)")
    return items


# -- settings and stored samples ------------------------------------------------------


def task_settings(task: Task, backend) -> dict:
    """What decides a sample: the task's settings and the model (repeats may grow; more are added)."""
    o = task.options
    return {"task": task.name, "mode": task.mode, "chat": bool(task.chat), "model": getattr(backend, "name", "model"),
            "path": o.path, "temperature": task.sampling_temperature if task.mode == "generate" else None,
            "max_tokens": task.n_max_tokens, "few_shot": task.n_few_shot, "seed": o.seed,
            "params": json.loads(json.dumps(o.params, sort_keys=True, default=str))}


def _check_settings(out: Path, task: Task, backend, overwrite: bool) -> None:
    now = task_settings(task, backend)
    path = out / SETTINGS
    if path.is_file() and (out / SAMPLES).is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
        if changed and not overwrite:
            raise ConfigError(f"{out}: holds samples made with other settings ({', '.join(changed)} changed: "
                              f"{ {k: before.get(k) for k in changed} } -> { {k: now.get(k) for k in changed} }); "
                              "use another output folder or --overwrite to discard them")
        if changed:
            (out / SAMPLES).unlink()
    _write_json(path, now)


def read_samples(path: Path) -> dict[tuple[str, int], dict]:
    """Rows already computed, keyed by (item_id, repeat); a torn last line (a crash) is cut off."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    good_end, rows = 0, {}
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line)
            rows[(str(row["item_id"]), int(row["repeat"]))] = row
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            break
        good_end += len(line)
    if good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return rows


def _append(f, rows: list[dict]) -> None:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- generation -----------------------------------------------------------------------


def _generate_chunk(task: Task, backend, pairs: list[tuple[dict, int]]) -> list[dict]:
    """One ``sample`` call per distinct sample count: identical prompts (repeats) share a request with n > 1."""
    prompts: dict[str, tuple[object, list[tuple[dict, int]]]] = {}
    for item, repeat in pairs:
        p = task.prompt(item, repeat)
        prompts.setdefault(json.dumps(p, sort_keys=True), (p, []))[1].append((item, repeat))
    by_count: dict[int, list[tuple[object, list]]] = {}
    for p, members in prompts.values():
        by_count.setdefault(len(members), []).append((p, members))
    rows: list[dict] = []
    for n, entries in by_count.items():
        params = SamplingParams(n=n, temperature=task.sampling_temperature, max_tokens=task.n_max_tokens,
                                stop=tuple(getattr(task, "stop", ()) or ()), seed=task.options.seed, logprobs=False)
        result = backend.sample([p for p, _ in entries], params)
        for (p, members), completions in zip(entries, result.completions):
            for (item, repeat), c in zip(members, completions):
                rows.append({"item_id": item["id"], "repeat": repeat, "prompt": p, "response": c.text,
                             "finish_reason": c.finish_reason})
    by_key = {(item["id"], repeat): item for item, repeat in pairs}
    grades = task.grade_many([by_key[(r["item_id"], r["repeat"])] for r in rows], [r["response"] for r in rows],
                             [r["repeat"] for r in rows])
    for r, g in zip(rows, grades):
        r.update(extracted=g.extracted, score=float(g.score), label=g.label, extra=g.extra)
    return rows


# -- log-likelihood multiple choice ----------------------------------------------------------


def _loglik_chunk(task: Task, backend, pairs: list[tuple[dict, int]]) -> list[dict]:
    """All (context, option) pairs of the chunk in one ``score`` call; the most likely option is the answer.

    Context and option are tokenised separately (the option keeps its leading
    space), so every option is scored after the same context tokens; with
    ``task.normalise`` the pick divides by the option's length in characters
    (length-normalised accuracy, for options that are text rather than letters).
    """
    tok = getattr(backend, "tokenizer", None)
    if tok is None or not hasattr(backend, "score"):
        raise ConfigError(f"task {task.name!r} scores options by log-likelihood: it needs a backend with exact "
                          "token log-probs and a tokenizer (local models, or vLLM with `tokenizer` set)")
    specs, prompt_ids, cont_ids = [], [], []
    for item, repeat in pairs:
        context, options, gold = task.choices(item)
        ctx = list(tok(context, add_special_tokens=False)["input_ids"])
        specs.append((item, repeat, context, options, gold, len(prompt_ids)))
        for opt in options:
            prompt_ids.append(ctx)
            cont_ids.append(list(tok(opt, add_special_tokens=False)["input_ids"]))
    logprobs = backend.score(prompt_ids, cont_ids)
    normalise = bool(getattr(task, "normalise", False))
    rows = []
    for item, repeat, context, options, gold, at in specs:
        totals = [sum(lp) for lp in logprobs[at:at + len(options)]]
        keys = [t / max(1, len(o)) for t, o in zip(totals, options)] if normalise else totals
        pick = max(range(len(options)), key=keys.__getitem__)
        rows.append({"item_id": item["id"], "repeat": repeat, "prompt": context, "response": options[pick],
                     "extracted": str(pick), "score": float(pick == gold), "label": "correct" if pick == gold
                     else "incorrect", "extra": {"gold": gold, "logprobs": [round(t, 4) for t in totals]}})
    return rows
