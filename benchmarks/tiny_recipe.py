"""Benchmark: the tiny recipe's wall time and peak RSS per stage, against its budget.

    .venv/bin/python benchmarks/tiny_recipe.py [--recipe recipes/tiny.toml] [key=value ...]

Runs the recipe in a fresh run folder (a temp dir), then prints one row per stage
(wall seconds, peak RSS) and the whole run against the Foundation budget
(≤ 10 minutes, ≤ 6 GB on 2 cores), as ratios. Results also go to
``benchmarks/results/tiny_recipe.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S, BUDGET_MB = 600.0, 6144.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/tiny.toml")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    from phiforge.recipe import load_recipe
    from phiforge.run.pipeline import run_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(args.recipe, [f"run.out_dir={tmp}", "run.name=bench", *args.overrides])
        t0 = time.perf_counter()
        run_dir = run_pipeline(recipe, log=lambda m: print(m, flush=True))
        total = time.perf_counter() - t0
        result = _collect(run_dir, total)
    _print(result)
    out = Path(__file__).parent / "results" / "tiny_recipe.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


def _collect(run_dir: Path, total: float) -> dict:
    run = json.loads((run_dir / "run.json").read_text())
    ev = json.loads((run_dir / "eval" / "stats.json").read_text())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"stages": run["stages"], "total_s": total, "process_peak_rss_mb": peak,
            "accuracy": {k: v["accuracy"] for k, v in ev["models"].items()}, "baselines": ev["baselines"]}


def _print(r: dict) -> None:
    print(f"\n{'stage':<10} {'wall s':>8} {'peak RSS MB':>12}")
    for name, s in r["stages"].items():
        print(f"{name:<10} {s.get('wall_s') or 0:>8.1f} {s.get('peak_rss_mb') or 0:>12.0f}")
    print(f"{'total':<10} {r['total_s']:>8.1f} {r['process_peak_rss_mb']:>12.0f}")
    print(f"accuracy: {r['accuracy']}  trivial baselines: {r['baselines']}")
    print(f"tiny_recipe wall time vs 10-min budget: {r['total_s'] / BUDGET_S:.2f}x; "
          f"peak RSS vs 6 GB budget: {r['process_peak_rss_mb'] / BUDGET_MB:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
