"""Mixture sampler over named sources with target fractions and epoch accounting.

The Phi-4 report (§3.2, Table 5) sets the pretraining mixture by *token fraction*
per source and reports how many epochs each source is repeated:
epochs = fraction × total tokens / unique tokens. This sampler draws whole packed
sequences from each source in exact proportion with a deterministic
"largest deficit first" schedule: sequence ``i`` of the global stream comes from
the source whose count lags its target ``fraction × (i + 1)`` the most. That makes
the proportions exact at every prefix of training, the stream a pure function
of (seed, step), and resuming a matter of restoring a few counters.

For data parallelism, rank ``r`` of ``world_size`` takes global sequences
``i ≡ r (mod world_size)``: every rank advances the same schedule, and no sequence
is seen by two ranks. After each batch every rank skips to the end of the round
(the next multiple of ``world_size``), so all ranks hold the same global position
and a checkpoint resumes on any number of ranks without repeating a sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from phiforge.errors import ConfigError
from phiforge.train.packing import TokenSource


@dataclass(frozen=True)
class MixtureRow:
    """One line of the Table-5-style plan."""

    source: str
    fraction: float
    unique_tokens: int
    planned_tokens: int

    @property
    def epochs(self) -> float:
        return self.planned_tokens / self.unique_tokens if self.unique_tokens else float("inf")


def normalize_weights(weights: dict[str, float], where: str) -> dict[str, float]:
    """Validate and normalise fractions (they must be ≥ 0 and not all zero)."""
    bad = {k: v for k, v in weights.items() if v < 0}
    if bad:
        raise ConfigError(f"{where}: fractions must be >= 0, got {bad}")
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError(f"{where}: at least one source needs a positive fraction")
    return {k: v / total for k, v in weights.items() if v > 0}


class MixtureSampler:
    """Endless, deterministic, resumable stream of packed sequences from a mixture."""

    def __init__(self, sources: dict[str, TokenSource], weights: dict[str, float], seq_len: int,
                 seed: int, rank: int = 0, world_size: int = 1, where: str = "mixture"):
        missing = sorted(set(weights) - set(sources))
        if missing:
            raise ConfigError(f"{where}: unknown source(s) {missing}; available: {sorted(sources)}")
        self.weights = normalize_weights(weights, where)
        self.names = sorted(self.weights)
        self.sources = {n: sources[n] for n in self.names}
        for src in self.sources.values():
            src.check_fits(seq_len, where)
        self.seq_len, self.seed, self.rank, self.world_size = seq_len, seed, rank, world_size
        self.index = 0
        self.counts = {n: 0 for n in self.names}

    def _pick(self) -> str:
        target = self.index + 1
        return max(self.names, key=lambda n: (self.weights[n] * target - self.counts[n], -self.names.index(n)))

    def _advance(self) -> np.ndarray | None:
        name = self._pick()
        c = self.counts[name]
        self.counts[name] += 1
        mine = self.index % self.world_size == self.rank
        self.index += 1
        return self.sources[name].chunk(c, self.seq_len, self.seed) if mine else None

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """``batch_size`` sequences of ``seq_len + 1`` tokens for this rank."""
        rows: list[np.ndarray] = []
        while len(rows) < batch_size:
            chunk = self._advance()
            if chunk is not None:
                rows.append(chunk)
        while self.index % self.world_size:  # finish the round: every rank's state is the global position
            self._advance()
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def state_dict(self) -> dict:
        return {"index": self.index, "counts": dict(self.counts), "seed": self.seed,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if set(state["counts"]) != set(self.names):
            raise ConfigError(f"checkpoint mixture sources {sorted(state['counts'])} differ from the "
                              f"recipe's {self.names}; resume with the same mixture or start a new run")
        self.index, self.counts = int(state["index"]), {k: int(v) for k, v in state["counts"].items()}

    def epochs_so_far(self) -> dict[str, float]:
        """Epochs consumed per source (sequences drawn × seq_len / unique tokens)."""
        return {n: self.counts[n] * self.seq_len / self.sources[n].n_tokens for n in self.names}

    def plan(self, total_sequences: int) -> list[MixtureRow]:
        return plan_mixture(self.weights, {n: s.n_tokens for n, s in self.sources.items()},
                            total_sequences * self.seq_len)


def plan_mixture(weights: dict[str, float], unique_tokens: dict[str, int], total_tokens: int) -> list[MixtureRow]:
    """Table 5 arithmetic: planned tokens and epochs per source for a token budget."""
    w = normalize_weights(weights, "mixture")
    return [MixtureRow(n, w[n], int(unique_tokens[n]), int(round(w[n] * total_tokens))) for n in sorted(w)]


def format_mixture_table(rows: list[MixtureRow], title: str = "mixture") -> str:
    """A text table like the report's Table 5 (fraction, unique tokens, epochs)."""
    head = f"{title}\n  {'source':<14} {'fraction':>8} {'unique tokens':>14} {'planned tokens':>15} {'epochs':>8}"
    lines = [head]
    for r in rows:
        lines.append(f"  {r.source:<14} {r.fraction:>8.1%} {_human(r.unique_tokens):>14} "
                     f"{_human(r.planned_tokens):>15} {r.epochs:>8.2f}")
    return "\n".join(lines)


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))
