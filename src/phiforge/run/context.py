"""What a stage function receives: the recipe, its folder, and access to earlier stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
        return resolve_device(self.recipe.run.device)


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
