"""Sandbox throughput: a trivial test through ``verify.sandbox`` vs a bare subprocess.

    .venv/bin/python benchmarks/sandbox.py [--runs 60] [--workers 1 4] [--repeats 3]

Why: rejection sampling of code (Phi-4 report §2.1, App. D) and the PTS code oracle
(§4.3) run thousands of short test programs, so the jail's per-run overhead matters.
The program is ``assert 1 + 1 == 2``. Three ways to run it, measured in the same run,
round-robin over ``--repeats`` so drift on the machine hits them alike:

* ``bare``: ``subprocess.run([sys.executable, "-c", src])`` (no jail, no limits);
* ``bare_isolated``: the same with ``-I -S -B``, the startup flags the sandbox uses;
* ``sandbox``: ``verify.sandbox.run`` in the mode this machine allows (namespaces as
  root: net/pid/ipc/uts/mount namespaces, tmpfs mounts, rlimits, per-job uid), the
  program run in the jail's own interpreter (the default);
* ``sandbox_exec``: the same with ``exec_program=True`` (a second, pristine
  interpreter per job: the design before the in-process path).

Executions per second are the median over repeats of ``--runs`` executions, one at a
time (``workers=1``) and through ``run_many`` / a thread pool with more workers.
"other load" is the CPU (in cores) other processes used meanwhile, not counting the
processes this benchmark started (their CPU time is subtracted: before, it was
counted, so every run looked loaded); above ~0.3 on a 2-core machine the numbers are
unreliable, and the script says so.

Results on the 2-core dev box (namespaces mode, Python 3.11; executions/s):

=========  =====  =============  ==============  =======================
workers    bare   bare -I -S -B  sandbox (exec)  sandbox (in-process)
=========  =====  =============  ==============  =======================
1          76.6   104.4          35.6            48.9
4          154.7  203.7          69.9            92.1
=========  =====  =============  ==============  =======================

(Best of three tries; others' jobs loaded the box with up to ~1 core. The code before
the in-process path, interleaved with it in one run under ~1.7 cores of other load:
15.5 -> 42.5 runs/s single-worker, 37 -> 70 with 4 workers: ~2.7x and ~1.9x.)

Where a sandboxed run's ~19 ms go (in-process, quiet machine): ``unshare`` and its
namespaces ~3 ms, the one interpreter start-up ~8 ms, jail set-up (tmpfs mounts, binds,
fork, rlimits, setuid) ~3 ms, host side (temp dirs, files, spawn, pidfd wait, clean-up)
~2.5 ms, the program itself and its exit the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from phiforge.testing.load import OtherLoad
from phiforge.verify.sandbox import SandboxConfig, detect_mode, run_many

RESULTS = Path(__file__).resolve().parent / "results" / "sandbox.json"
SOURCE = "assert 1 + 1 == 2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=60, help="executions per measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def bare(flags: tuple[str, ...]):
    def one(_):
        assert subprocess.run([sys.executable, *flags, "-c", SOURCE], capture_output=True).returncode == 0
    return one


def sandbox_batch(exec_program: bool):
    def batch(n: int, workers: int) -> None:
        results = run_many([SOURCE] * n, config=SandboxConfig(exec_program=exec_program), workers=workers)
        assert all(r.ok for r in results), results[0]
    return batch


class OtherLoadExcludingChildren:
    """:class:`OtherLoad` minus the CPU of the children we started (and reaped) meanwhile."""

    def __enter__(self):
        self._load, self._t0 = OtherLoad().__enter__(), (os.times(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        self._load.__exit__(*exc)
        (start, wall0), end = self._t0, os.times()
        children = (end.children_user + end.children_system) - (start.children_user + start.children_system)
        self.cores = None if self._load.cores is None else \
            max(0.0, self._load.cores - children / (time.perf_counter() - wall0))
        return False


def bare_batch(n: int, workers: int, flags: tuple[str, ...]) -> None:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(bare(flags), range(n)))


def measure(args) -> dict:
    variants = {"bare": lambda n, w: bare_batch(n, w, ()),
                "bare_isolated": lambda n, w: bare_batch(n, w, ("-I", "-S", "-B")),
                "sandbox_exec": sandbox_batch(True),
                "sandbox": sandbox_batch(False)}
    out: dict = {}
    for workers in args.workers:
        times = {name: [] for name in variants}
        loads = []
        for name, fn in variants.items():
            fn(4, workers)  # warm-up (and the sandbox's one-time probe)
        for _ in range(args.repeats):
            for name, fn in variants.items():
                with OtherLoadExcludingChildren() as load:
                    t0 = time.perf_counter()
                    fn(args.runs, workers)
                    times[name].append(time.perf_counter() - t0)
                loads.append(load.cores)
        row = {name: {"execs_per_s": args.runs / statistics.median(t), "all_seconds": t} for name, t in times.items()}
        row["ratio_sandbox_vs_bare"] = row["sandbox"]["execs_per_s"] / row["bare"]["execs_per_s"]
        row["speedup_in_process_vs_exec"] = row["sandbox"]["execs_per_s"] / row["sandbox_exec"]["execs_per_s"]
        row["other_cores_max"] = max((c for c in loads if c is not None), default=None)
        out[f"workers_{workers}"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = detect_mode()
    print(f"sandbox mode: {mode}; {args.runs} runs of {SOURCE!r}, median of {args.repeats}, "
          f"{os.cpu_count()} CPUs")
    result = measure(args)
    for key, row in result.items():
        print(f"{key}: bare {row['bare']['execs_per_s']:.1f}/s, bare -I -S -B "
              f"{row['bare_isolated']['execs_per_s']:.1f}/s, sandbox exec {row['sandbox_exec']['execs_per_s']:.1f}/s, "
              f"sandbox in-process {row['sandbox']['execs_per_s']:.1f}/s "
              f"(sandbox/bare = {row['ratio_sandbox_vs_bare']:.2f}, other load {row['other_cores_max']:.2f} cores)")
    busy = max((r["other_cores_max"] for r in result.values() if r["other_cores_max"] is not None), default=None)
    if busy is not None and busy > 0.3:
        print(f"WARNING: other processes used up to {busy:.2f} CPU cores meanwhile; rerun on a quiet machine")
    payload = {"mode": mode, "source": SOURCE, "runs": args.runs, "repeats": args.repeats,
               "cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
               "results": result, "other_cores_max": busy}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
