"""Run a function on N CPU ranks (gloo), as torchrun would, for tests and benchmarks.

    results = run_ranks(worker, 2, args=(out_dir,))   # worker(*args) on ranks 0 and 1

Each rank is a fresh ``spawn``-ed process with torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) that joins the
process group through :func:`phiforge.train.distributed.init_distributed`, exactly
the path ``phiforge run`` takes under torchrun. ``worker`` must be importable
(a module-level function). Rank 0's return value comes back through a JSON file.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Callable[..., Any], world_size: int, args: tuple = (), threads: int = 1) -> Any:
    """Run ``worker(*args)`` on ``world_size`` ranks; return rank 0's (JSON-serialisable) result."""
    import torch.multiprocessing as mp

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rank0.json"
        mp.start_processes(_rank_main, args=(world_size, port, threads, worker, args, str(result)),
                           nprocs=world_size, join=True, start_method="spawn")
        return json.loads(result.read_text())


def _rank_main(rank: int, world_size: int, port: int, threads: int, worker, args: tuple, result: str) -> None:
    import torch

    from phiforge.train.distributed import init_distributed, shutdown_distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    init_distributed("cpu")
    try:
        out = worker(*args)
        if rank == 0:
            Path(result).write_text(json.dumps(out))
    finally:
        shutdown_distributed()
