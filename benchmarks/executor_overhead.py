"""Dataflow executor overhead: records/s through a no-op step vs a plain Python loop.

    .venv/bin/python benchmarks/executor_overhead.py [--records 200000] [--shards 8] [--chars 600] [--repeats 3] [--no-ray]

Why: every synthetic-data technique and curation filter of the Phi-4 recipe
(report §2.2-2.3) runs as steps on ``phiforge.dataflow``; with billions of web
documents to filter, the framework's own cost per record (validation, Record
objects, stats, markers, atomic writes, process start-up) must stay small next to
the I/O it cannot avoid. This measures that cost.

What is identical: the same ``--records`` records (text of ``--chars`` characters,
a small metadata dict and provenance) in the same ``--shards`` JSONL input shards,
written to JSONL. Paths, timed end to end (median of ``--repeats``, fresh output
folder each run):

* ``plain_json``: one Python loop, read a line, ``json.loads``, ``json.dumps``, write
  (what a hand-written script does; no validation, no objects).
* ``plain_orjson``: the same loop with orjson (the JSON library dataflow uses when
  installed), so the ratio below isolates the framework's own cost.
* ``local_1``: ``LocalExecutor(workers=1)``, in-process, ``Noop`` step.
* ``local_2``: ``LocalExecutor(workers=2)``, spawn process pool (start-up included).
* ``ray``: ``RayExecutor`` (``ray.init`` excluded and reported apart; tasks included).

Then a one-shard breakdown of the single-process path (read, parse, validate into
``Record``, back to a flat row, serialise + write) says what dominates. "other
load" is the CPU (in cores) other processes used meanwhile; above ~0.1 on a 2-core
machine the numbers are unreliable and the script says so (measured on the
in-process paths only: the worker processes of ``local_2`` and ``ray`` count as
"other" there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from phiforge.dataflow import LocalExecutor, Provenance, Record, RayExecutor, list_shards, write_shards
from phiforge.dataflow import jsonio
from phiforge.dataflow.shards import ShardWriter, read_rows
from phiforge.dataflow.testing import Noop
from phiforge.testing.load import OtherLoad

RESULTS = Path(__file__).resolve().parent / "results" / "executor_overhead.json"
WORDS = ["the", "sum", "of", "two", "numbers", "is", "seven", "and", "their", "product", "ten", "find", "them"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--chars", type=int, default=600, help="characters of text per record")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def make_inputs(folder: Path, args: argparse.Namespace) -> list[Path]:
    rng = random.Random(0)

    def records():
        for i in range(args.records):
            text = " ".join(rng.choices(WORDS, k=args.chars // 4))[: args.chars]
            yield Record(f"doc-{i:08d}", text=text, metadata={"source": "web", "score": rng.random()},
                         provenance=Provenance(seed_id=f"seed-{i // 4}", technique="none"))
    return write_shards(records(), folder, records_per_shard=-(-args.records // args.shards))


def plain_loop(inputs: list[Path], out: Path, loads, dumps_line) -> None:
    """The baseline: read JSONL, parse, serialise, write JSONL; nothing else."""
    out.mkdir(parents=True)
    for path in inputs:
        with open(path, "rb") as src, open(out / path.name, "wb") as dst:
            for line in src:
                dst.write(dumps_line(loads(line)))


def std_dumps_line(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


def timed_runs(fn, workdir: Path, repeats: int) -> dict:
    """Median seconds of ``fn(out_dir)`` over ``repeats`` fresh output folders, with other load."""
    times, loads = [], []
    for r in range(repeats):
        out = workdir / f"out-{r}"
        shutil.rmtree(out, ignore_errors=True)
        with OtherLoad() as load:
            t0 = time.perf_counter()
            fn(out)
            times.append(time.perf_counter() - t0)
        loads.append(load.cores)
        shutil.rmtree(out, ignore_errors=True)
    return {"seconds": statistics.median(times), "all_seconds": times,
            "other_cores": max((c for c in loads if c is not None), default=None)}


def paths(inputs: list[Path], args, workdir: Path) -> dict:
    def executor(cls, **kw):
        return lambda out: cls([Noop()], input=[str(p) for p in inputs], output_dir=str(out),
                               keep_dropped=False, progress=False, **kw).run()
    runs = {"plain_json": lambda out: plain_loop(inputs, out, json.loads, std_dumps_line)}
    if jsonio.backend() == "orjson":
        runs["plain_orjson"] = lambda out: plain_loop(inputs, out, jsonio.loads, jsonio.dumps_line)
    runs["local_1"] = executor(LocalExecutor, workers=1)
    runs["local_2"] = executor(LocalExecutor, workers=2)
    results = {}
    for name, fn in runs.items():
        results[name] = timed_runs(fn, workdir / name, args.repeats)
    if not args.no_ray:
        results.update(ray_paths(executor(RayExecutor, kind="ray", workers=0), workdir, args))
    for r in results.values():
        if "seconds" in r:
            r["records_per_s"] = args.records / r["seconds"]
    return results


def ray_paths(fn, workdir: Path, args) -> dict:
    try:
        import ray
    except ImportError:
        print("ray not installed: pip install 'phiforge[ray]' (skipping the Ray executor)")
        return {}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - t0
    try:
        fn(workdir / "ray-warmup")  # first tasks start the worker processes
        shutil.rmtree(workdir / "ray-warmup", ignore_errors=True)
        return {"ray": timed_runs(fn, workdir / "ray", args.repeats) | {"init_seconds": init}}
    finally:
        ray.shutdown()


def breakdown(shard: Path, workdir: Path) -> dict:
    """Seconds per record for each layer of the single-process path, on one shard."""
    lines = shard.read_bytes().splitlines()
    rows = [jsonio.loads(x) for x in lines]
    records = [Record.from_dict(r) for r in rows]
    flat = [r.to_dict() for r in records]
    out = {"read_lines": _per_record(lambda: list(read_lines(shard)), len(lines)),
           "parse_json": _per_record(lambda: [jsonio.loads(x) for x in lines], len(lines)),
           "validate_to_record": _per_record(lambda: [Record.from_dict(r) for r in rows], len(lines)),
           "record_to_row": _per_record(lambda: [r.to_dict() for r in records], len(lines)),
           "serialise_write": _per_record(lambda: write_rows(flat, workdir / "bd" / "shard-00000.jsonl"),
                                          len(lines)),
           "read_rows_generator": _per_record(lambda: sum(1 for _ in read_rows(shard)), len(lines))}
    total = sum(v for k, v in out.items() if k != "read_rows_generator" and k != "read_lines")
    out["share"] = {k: out[k] / total for k in ("parse_json", "validate_to_record", "record_to_row",
                                                "serialise_write")}
    return out


def read_lines(path: Path):
    with open(path, "rb") as f:
        yield from f


def write_rows(rows: list[dict], path: Path) -> None:
    with ShardWriter(path) as w:
        for row in rows:
            w.write(row)


def _per_record(fn, n: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n


def report(results: dict, parts: dict, args) -> None:
    base = "plain_orjson" if "plain_orjson" in results else "plain_json"
    print(f"{args.records} records x {args.chars} chars in {args.shards} JSONL shards, no-op step, "
          f"{os.cpu_count()} CPUs, JSON via {jsonio.backend()} (median of {args.repeats}):")
    for name, r in results.items():
        extra = f", ray.init {r['init_seconds']:.1f} s excluded" if "init_seconds" in r else ""
        print(f"  {name:<13} {r['records_per_s']:>10,.0f} rec/s  {r['seconds']:6.2f} s  "
              f"{r['records_per_s'] / results[base]['records_per_s']:.2f}x of {base}{extra}")
    print("single-process breakdown (us/record): " + ", ".join(
        f"{k} {parts[k] * 1e6:.2f} ({parts['share'][k]:.0%})" for k in parts["share"]))
    busy = max_other_load(results)
    if busy is not None and busy > 0.1:
        print(f"WARNING: other processes used up to {busy:.2f} CPU cores meanwhile; rerun on a quiet machine")


def max_other_load(results: dict) -> float | None:
    """Other processes' CPU during the in-process runs (worker processes of local_2/ray count as "other")."""
    loads = [r.get("other_cores") for k, r in results.items() if k in ("plain_json", "plain_orjson", "local_1")]
    return max((c for c in loads if c is not None), default=None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="executor_overhead-") as tmp:
        workdir = Path(tmp)
        inputs = make_inputs(workdir / "in", args)
        results = paths(inputs, args, workdir)
        parts = breakdown(list_shards(workdir / "in")[0], workdir)
        mb = sum(p.stat().st_size for p in inputs) / 1e6
    report(results, parts, args)
    base = "plain_orjson" if "plain_orjson" in results else "plain_json"
    result = {"records": args.records, "shards": args.shards, "chars": args.chars, "input_mb": round(mb, 1),
              "repeats": args.repeats, "cpus": os.cpu_count(), "json": jsonio.backend(),
              "python": platform.python_version(), "machine": platform.machine(), "baseline": base,
              "runs": results, "ratio_to_baseline": {k: r["records_per_s"] / results[base]["records_per_s"]
                                                     for k, r in results.items()},
              "breakdown_seconds_per_record": parts,
              "other_cores_max_in_process": max_other_load(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
