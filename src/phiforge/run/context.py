"""What a stage function receives: the recipe, its folder, and access to earlier stages."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from phiforge.errors import StageError
from phiforge.recipe.schema import Recipe
from phiforge.run.rundir import read_marker


@dataclass
class StageContext:
    recipe: Recipe
    run_dir: Path
    stage: str
    log: Callable[[str], None] = print
    extras: dict = field(default_factory=dict)
    _backends: dict = field(default_factory=dict, repr=False)
    _closer: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def backend(self, role: str = "teacher", policy_stage: str | None = None) -> Any:
        """The ``Backend`` for ``[models.<role>]``, opened on first use and kept for the stage.

        Servers it starts stop when the stage ends (``close``); its token and call
        counts go into the stage's ``stats.json`` under ``models``. ``policy_stage``
        names the trained model the ``policy`` role means when the recipe leaves it
        unset (PTS samples the SFT model; judge-guided DPO the DPO round-1 model).
        """
        if role not in self._backends:
            ref = self.recipe.models.get(role, policy_stage or self.latest_pretrained())
            same = next((r for r, (b, other) in self._backends.items() if other == ref), None)
            if same is not None:  # e.g. the judge is the teacher: one model in memory, not two
                self.log(f"model {role}: same as {same}")
                self._backends[role] = self._backends[same]
                return self._backends[role][0]
            from phiforge.backends.registry import open_backend
            from phiforge.run.progress import ProgressBar

            self.log(f"model {role}: {ref.describe()}")
            bar = ProgressBar(f"[{self.stage}] {role}")
            backend = self._closer.enter_context(open_backend(ref, run_dir=self.run_dir, role=role, progress=bar))
            self._backends[role] = (backend, ref)
        return self._backends[role][0]

    def latest_pretrained(self) -> str:
        """The base model post-training starts from: a stage, or the model folder of a post-training-only run."""
        start = self.recipe.start_model()
        if start:
            return start
        return "midtrain" if self.recipe.midtrain.enabled else "pretrain"

    def has_backend(self, role: str) -> bool:
        return role in self._backends

    def model_usage(self) -> dict:
        """``{roles: {backend, calls, cached_calls, prompt_tokens, completion_tokens, seconds}}``.

        Roles served by one shared backend are reported once, under ``"teacher+judge"``.
        """
        groups: dict[int, list[str]] = {}
        for role, (backend, _) in self._backends.items():
            groups.setdefault(id(backend), []).append(role)
        out = {}
        for roles in groups.values():
            backend = self._backends[roles[0]][0]
            usage = backend.usage.as_dict()
            usage["seconds"] = round(usage["seconds"], 3)
            out["+".join(roles)] = {"backend": getattr(backend, "name", roles[0]), **usage}
        return out

    def close(self) -> None:
        """Stop every server and backend this stage opened (idempotent)."""
        self._closer.close()

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.stage

    def input_dir(self, stage: str) -> Path:
        """The finished output folder of an earlier stage, or a clear error."""
        path = self.run_dir / stage
        if read_marker(path) is None:
            raise StageError(f"stage '{self.stage}' needs the output of stage '{stage}', which has not finished "
                             f"in {self.run_dir}; run the whole recipe, or use --from {stage}")
        return path

    def has_output(self, stage: str) -> bool:
        return read_marker(self.run_dir / stage) is not None

    @property
    def device(self) -> str:
        """The recipe's device; under torchrun with CUDA, this rank's GPU."""
        from phiforge.train.distributed import rank_device

        return rank_device(resolve_device(self.recipe.run.device))

    def executor(self, steps: list, *, input: str, output_dir: str, workers: int, progress: bool = False):
        """A ``phiforge.dataflow`` executor for a data stage's shard tasks: local, or Ray (``run.executor``).

        On Ray, ``workers`` caps the tasks in flight only when > 1 (else Ray schedules
        every shard by its CPUs); steps must then hold recipe model references, not live models.
        """
        from phiforge.dataflow import ExecutorConfig

        run = self.recipe.run
        ray = run.executor == "ray"
        config = ExecutorConfig(input=input, output_dir=output_dir, kind=run.executor, progress=progress,
                                workers=(workers if workers > 1 else 0) if ray else workers,
                                ray_address=run.ray_address, cpus_per_task=run.ray_cpus_per_task)
        return config.build(steps)

    @property
    def remote_tasks(self) -> bool:
        """Whether data-stage tasks run on Ray, outside this process (steps then take model references)."""
        return self.recipe.run.executor == "ray"

    @property
    def dist(self):
        """This process's rank and world size (``phiforge.train.distributed.DistEnv``)."""
        from phiforge.train.distributed import current_env

        return current_env()

    @property
    def parallel(self):
        """How training stages use the ranks: ``[resources]`` sharding and activation checkpointing."""
        from phiforge.train.distributed import ParallelConfig

        return ParallelConfig.from_resources(self.recipe.resources)


def resolve_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise StageError("run.device = 'cuda' but no CUDA device is visible; use run.device = 'auto' or 'cpu'")
    return choice


def resolve_precision(choice: str, device: str) -> str:
    """bf16 autocast on GPUs that support it, fp32 on CPUs (bf16 on 2-core CPUs was ~30x slower)."""
    import torch

    if choice != "auto":
        return choice
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"
