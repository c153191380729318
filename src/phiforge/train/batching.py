"""Global batch arithmetic: how many micro-batches each data-parallel rank accumulates per step.

A step sees ``micro_batch_size x grad_accum x ranks`` sequences. Recipes either fix
``grad_accum`` (the batch then grows with the number of GPUs) or set ``global_batch``
and let the accumulation follow the ranks, so a run that resumes on another number
of GPUs keeps its batch, its LR schedule and its data order (torchtitan and OLMo-core
expose the same choice).
"""

from __future__ import annotations

from phiforge.errors import ConfigError


def grad_accum_for(config, ranks: int, where: str) -> int:
    """Micro-batches per step on each of ``ranks`` ranks for a config with
    ``micro_batch_size``, ``grad_accum`` and ``global_batch`` (None = use ``grad_accum``)."""
    global_batch = getattr(config, "global_batch", None)
    if global_batch is None:
        return config.grad_accum
    if config.grad_accum != 1:
        raise ConfigError(f"{where}: set global_batch ({global_batch}) or grad_accum ({config.grad_accum}), not "
                          "both: with global_batch the accumulation is derived from the number of ranks")
    per_pass = config.micro_batch_size * ranks
    if global_batch % per_pass:
        raise ConfigError(f"{where}.global_batch = {global_batch} is not a multiple of micro_batch_size x ranks = "
                          f"{config.micro_batch_size} x {ranks}; change {where}.global_batch or "
                          f"{where}.micro_batch_size, or run on a number of GPUs that divides it")
    return global_batch // per_pass
