"""Learning-rate schedule: linear warm-up, then linear decay (Phi-4 report §3).

The report gives the shape and the peak (3e-4 at 14B) but not the warm-up length or
the final LR (UNCONFIRMED); both are recipe keys (``warmup_steps``, ``min_lr_ratio``).
"""

from __future__ import annotations


def linear_warmup_linear_decay(step: int, peak_lr: float, warmup_steps: int, total_steps: int,
                               min_lr_ratio: float = 0.0) -> float:
    """LR for optimizer step ``step`` (0-based): ramps to ``peak_lr``, then decays linearly."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    frac = min(1.0, (step - warmup_steps) / decay_steps)
    floor = peak_lr * min_lr_ratio
    return floor + (peak_lr - floor) * (1.0 - frac)
