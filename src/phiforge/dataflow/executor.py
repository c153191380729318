"""Where a pipeline runs: ``LocalExecutor`` (worker processes) and ``RayExecutor`` (a cluster).

*What* runs (a list of ``Step``) is separate from *where* (style rule 4, after
datatrove's executors): every executor makes one task per input shard, skips tasks
whose completion marker exists, runs the rest, and merges every task's stats into
one stage stats dict (also written to ``<output_dir>/_dataflow/stats.json``)::

    config = ExecutorConfig(input="seeds/", output_dir="out/", workers=4)
    stats = LocalExecutor(steps, config).run()    # or config.build(steps).run()

``workers=1`` runs in this process (debuggable; right for a model-calling step that
must not be loaded once per process). ``workers>1`` uses a ``spawn`` (or
``forkserver``) process pool, safe with torch and threads; steps must then be
picklable (defined at module level).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import pickle
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

from phiforge.dataflow.shards import check_format, list_shards
from phiforge.dataflow.stats import merge_stats
from phiforge.dataflow.step import Step
from phiforge.dataflow.task import META_DIR, TaskSpec, read_marker, run_task, write_json_atomic
from phiforge.errors import ConfigError, StageError


@dataclass(kw_only=True)
class ExecutorConfig:
    """Where a stage reads, writes and runs; validated before any work starts."""

    input: str | list[str]
    """Input shards: a folder, a glob (``data/*.jsonl.zst``), a file, or a list of these."""
    output_dir: str
    """Folder for output shards, ``dropped/`` and ``_dataflow/`` markers and stats."""
    output_format: str = "jsonl"
    """``jsonl``, ``jsonl.zst`` (needs zstandard) or ``parquet`` (needs pyarrow)."""
    keep_dropped: bool = True
    """Write dropped records (with drop_reason, drop_step) to ``<output_dir>/dropped/``."""
    validate_output: bool = True
    """Check every record a step yields against the record contract before writing it (~1.5 us/record)."""
    workers: int = 1
    """Local: worker processes (1 = in this process). Ray: at most this many tasks at once (0 = no cap)."""
    kind: Literal["local", "ray"] = "local"
    """Which executor ``build()`` makes."""
    start_method: Literal["spawn", "forkserver"] = "spawn"
    """Local, workers>1: how worker processes start (never ``fork``: unsafe with torch threads)."""
    ray_address: str | None = None
    """Ray: cluster to join if Ray is not initialised yet (None: start a local one)."""
    cpus_per_task: float = 1.0
    """Ray: CPUs reserved per task (fractions allowed)."""
    progress: bool = True
    """Show a progress bar (tqdm) or line of tasks done on stderr."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_format(self.output_format, "output_format")
        if not self.output_dir:
            raise ConfigError("output_dir is empty; give the folder for the stage's shards")
        if self.kind not in ("local", "ray"):
            raise ConfigError(f"kind={self.kind!r}; use 'local' or 'ray'")
        if self.workers < (1 if self.kind == "local" else 0):
            raise ConfigError(f"workers={self.workers} must be >= 1 (local) or >= 0 (ray)")
        if self.start_method not in ("spawn", "forkserver"):
            raise ConfigError(f"start_method={self.start_method!r}; use 'spawn' or 'forkserver' (fork is unsafe)")
        if self.cpus_per_task <= 0:
            raise ConfigError(f"cpus_per_task={self.cpus_per_task} must be > 0")

    def build(self, steps: list[Step]) -> Executor:
        return (RayExecutor if self.kind == "ray" else LocalExecutor)(steps, self)


class Executor:
    """Shared logic: plan tasks, skip completed ones, run the rest, merge stats."""

    def __init__(self, steps: list[Step], config: ExecutorConfig | None = None, **fields):
        if config is not None and fields:
            raise ConfigError(f"give either config or keyword fields, not both (got {sorted(fields)})")
        self.config = config or ExecutorConfig(**fields)
        self.steps = list(steps)
        _check_steps(self.steps, picklable=self._needs_pickle())

    def _needs_pickle(self) -> bool:
        return self.config.workers != 1

    def run(self) -> dict:
        """Run every incomplete task and return the merged stage stats."""
        t0 = time.perf_counter()
        specs = self._plan()
        pending = [s for s in specs if read_marker(s.output_dir, s.index) is None]
        with _Progress(len(specs), len(specs) - len(pending), self.config.progress) as progress:
            for stats in self._run_tasks(pending):
                progress.update(stats)
        return self._finish(specs, len(specs) - len(pending), time.perf_counter() - t0)

    def _run_tasks(self, pending: list[TaskSpec]) -> Iterator[dict]:
        raise NotImplementedError

    def _plan(self) -> list[TaskSpec]:
        """One task per input shard; refuses an output folder made from other inputs or steps."""
        cfg = self.config
        inputs = [str(p.resolve()) for p in list_shards(cfg.input)]
        out = Path(cfg.output_dir).resolve()
        plan = {"inputs": inputs, "output_format": cfg.output_format, "keep_dropped": cfg.keep_dropped,
                "steps": [s.name for s in self.steps]}
        _check_plan(out / META_DIR / "plan.json", plan)
        write_json_atomic(out / META_DIR / "plan.json", plan)
        return [TaskSpec(index=i, num_tasks=len(inputs), input_path=p, output_dir=str(out),
                         output_format=cfg.output_format, keep_dropped=cfg.keep_dropped,
                         validate_output=cfg.validate_output)
                for i, p in enumerate(inputs)]

    def _finish(self, specs: list[TaskSpec], skipped: int, wall: float) -> dict:
        per_task = [read_marker(s.output_dir, s.index) for s in specs]
        missing = [s.input_path for s, st in zip(specs, per_task) if st is None]
        if missing:
            raise StageError(f"{len(missing)} task(s) finished without a completion marker "
                             f"(first: {missing[0]}); rerun the stage")
        stats = merge_stats(per_task)
        stats.update(tasks_skipped=skipped, wall_seconds=round(wall, 4), executor=type(self).__name__,
                     config={k: v for k, v in asdict(self.config).items()})
        write_json_atomic(Path(self.config.output_dir) / META_DIR / "stats.json", stats)
        return stats


def _check_steps(steps: list, picklable: bool) -> None:
    for i, step in enumerate(steps):
        if not callable(getattr(step, "run", None)):
            raise ConfigError(f"pipeline step {i} ({step!r}) has no run(records, ctx) method; "
                              "subclass phiforge.dataflow.Step, Filter or Map")
    if picklable:
        try:
            pickle.dumps(steps)
        except Exception as e:  # noqa: BLE001 - any pickling failure means the same fix
            raise ConfigError(f"pipeline steps cannot be sent to worker processes ({e}); define steps and "
                              "their functions at module level (no lambdas/closures), or use workers=1") from e


def _check_plan(path: Path, plan: dict) -> None:
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return
    changed = [k for k in plan if old.get(k) != plan[k]]
    if changed:
        raise ConfigError(f"{path.parent.parent}: this output folder was made with different "
                          f"{', '.join(changed)}; delete it or choose another output_dir to start over")


class _Progress:
    """tqdm bar of tasks done (if tqdm is installed), else one line per task."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled, self.t0 = total, done, enabled, time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=done, desc="dataflow tasks", unit="task",
                                file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                print(f"[dataflow] {done}/{total} tasks already complete", file=sys.stderr)

    def update(self, stats: dict) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            print(f"[dataflow] {self.done}/{self.total} tasks done ({stats['records_out']} out, "
                  f"{stats['dropped']} dropped, {time.perf_counter() - self.t0:.1f} s)", file=sys.stderr)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.close()
        return False


class LocalExecutor(Executor):
    """One task per input shard on ``workers`` local processes (``workers=1``: in-process)."""

    def _run_tasks(self, pending: list[TaskSpec]) -> Iterator[dict]:
        if self.config.workers == 1:
            for spec in pending:
                yield _run_named(self.steps, spec)
            return
        ctx = multiprocessing.get_context(self.config.start_method)
        with ProcessPoolExecutor(max_workers=self.config.workers, mp_context=ctx,
                                 initializer=_die_with_parent) as pool:
            futures = {pool.submit(_run_named, self.steps, spec) for spec in pending}
            try:
                while futures:
                    done, futures = wait(futures, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield _result(future)
            finally:
                for future in futures:
                    future.cancel()


def _result(future) -> dict:
    try:
        return future.result()
    except BrokenProcessPool as e:
        raise StageError("a worker process died (killed, out of memory, or could not start: see the "
                         "traceback above; a script run from stdin cannot start spawn workers); "
                         "rerunning the stage keeps the shards already completed") from e


def _run_named(steps: list[Step], spec: TaskSpec) -> dict:
    """``run_task`` with the input shard named in any error (what the user needs to find it)."""
    try:
        return run_task(steps, spec)
    except Exception as e:
        raise StageError(f"task {spec.index} ({spec.input_path}) failed: {type(e).__name__}: {e}") from e


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the driver dies, so a killed stage leaves no orphans."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class RayExecutor(Executor):
    """The same tasks as Ray tasks: one per input shard, ``cpus_per_task`` each.

    Needs ``pip install 'phiforge[ray]'``. Joins the running Ray session, or starts one
    (``ray_address`` or local). Output paths must be on storage every node sees.
    Failed tasks are retried by Ray; a task is idempotent (redone from scratch).
    """

    def _needs_pickle(self) -> bool:
        return True

    def _run_tasks(self, pending: list[TaskSpec]) -> Iterator[dict]:
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.config.ray_address, include_dashboard=False)
        remote = ray.remote(num_cpus=self.config.cpus_per_task)(_run_named)
        steps_ref = ray.put(self.steps)
        queue, running = list(pending), []
        cap = self.config.workers or len(pending)
        while queue or running:
            while queue and len(running) < cap:
                running.append(remote.remote(steps_ref, queue.pop(0)))
            done, running = ray.wait(running, num_returns=1)
            yield ray.get(done[0])


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError("RayExecutor needs Ray: pip install 'phiforge[ray]' (or pip install 'ray>=2.9'), "
                          "or use LocalExecutor") from e
    return ray
