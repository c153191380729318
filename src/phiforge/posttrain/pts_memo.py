"""The memo of Pivotal Token Search (Phi-4 report §4.3: "p(success | ·) ... memoize"), and the solutions it serves.

An ``Estimate`` is one memo entry: the judged rollouts continuing query + prefix, keyed
by the exact prefix token-id tuple. Besides n and successes it keeps every
continuation, because three things read them later:

* rollout reuse: a rollout that went on with the solution's next tokens also counts
  for the longer prefix, including memo entries created after it was sampled;
* the stratified comparison (``pts_rules.stratified_delta``): which rollouts left a
  segment and how they fared;
* DPO pair candidates: the first token of each rollout (footnote 7).

A ``SolutionState`` is one T_full under subdivision. Each keeps, per estimate, the
length of the common prefix of every continuation with the solution's tokens after that
prefix, computed once: "does this rollout follow segment S" is then a comparison, not a
slice, however long S is.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field

from phiforge.posttrain.pts_records import EstimateRecord, Segment
from phiforge.posttrain.pts_rules import Bounds, bounds

Ids = tuple[int, ...]


@dataclass(eq=False)
class Estimate:
    """One memo entry: rollouts judged from query + ``prefix``."""

    prefix: Ids
    budget: int
    """Tokens a rollout from here may generate: ``max_tokens - len(prefix)``."""
    n: int = 0
    successes: int = 0
    sampled: int = 0
    reused: int = 0
    exact: bool = False
    tokens: int = 0
    """Tokens of the rollouts sampled here (their mean predicts the cost of the next ones)."""
    samples: list[tuple[Ids, bool, bool]] = field(default_factory=list, repr=False)
    """(continuation, success, creditable): creditable = sampled here and not a searched solution."""
    first_tokens: dict[int | None, list[int]] = field(default_factory=dict)
    """First token of every continuation -> [count, successes] (DPO pair candidates)."""
    owners: list["SolutionState"] = field(default_factory=list, repr=False)
    """Solutions this prefix is a prefix of."""
    _common: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def add(self, continuation: Ids, success: bool, *, direct: bool, creditable: bool = False) -> None:
        self.samples.append((continuation, success, creditable))
        self.n += 1
        self.successes += success
        if direct:
            self.sampled += 1
            self.tokens += len(continuation)
        else:
            self.reused += 1
        tally = self.first_tokens.setdefault(continuation[0] if continuation else None, [0, 0])
        tally[0] += 1
        tally[1] += success

    def set_exact(self, success: bool) -> None:
        """A prefix that fills the budget: its own verdict is p(success), with certainty."""
        self.exact, self.n, self.successes = True, 1, int(success)

    def common(self, sol: "SolutionState") -> list[int]:
        """Per sample: how many of its first tokens equal the solution's tokens after this prefix."""
        cache = self._common.setdefault(sol.index, [])
        start = len(self.prefix)
        for continuation, _, _ in self.samples[len(cache):]:
            cache.append(common_prefix(continuation, sol.ids, start))
        return cache

    def left(self, sol: "SolutionState", length: int) -> tuple[int, int]:
        """(count, successes) of the samples that did NOT go on with the solution's next ``length`` tokens."""
        count = successes = 0
        for (_, ok, _), common in zip(self.samples, self.common(sol)):
            if common < length:
                count += 1
                successes += ok
        return count, successes

    def bounds(self, z: float) -> Bounds:
        return bounds(self.successes, self.n, z, self.exact)

    def cost(self, guess: float) -> float:
        """Expected tokens of the next rollout: the mean so far, else ``guess``."""
        return self.tokens / self.sampled if self.sampled else guess

    def record(self, z: float) -> EstimateRecord:
        p, lo, hi = self.bounds(z)
        return EstimateRecord(self.n, self.successes, p, lo, hi, self.sampled, self.reused, self.exact)


@dataclass(eq=False)
class SolutionState:
    """One T_full under subdivision: its memo entries by position, open segments, decided leaves."""

    index: int
    ids: Ids
    logprobs: list[float]
    stop_id: int | None
    success: bool
    entries: dict[int, Estimate] = field(default_factory=dict, repr=False)
    """Position k -> the memo entry of ``ids[:k]`` (every memo entry that is a prefix of ``ids``)."""
    positions: list[int] = field(default_factory=list)
    """Sorted keys of ``entries``."""
    frontier: list[tuple[int, int]] = field(default_factory=list)
    """Segments [start, end) not decided yet."""
    leaves: list[Segment] = field(default_factory=list)
    pivot_segments: list[Segment] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)
    """Running sums of ``logprobs``: ``cumulative[k]`` = log π(ids[:k] | query)."""

    def __post_init__(self):
        self.cumulative = [0.0, *itertools.accumulate(self.logprobs)]

    def mass(self, start: int, end: int) -> float:
        """π(ids[start:end] | query + ids[:start]): the policy's probability of generating the segment."""
        return math.exp(min(0.0, self.cumulative[end] - self.cumulative[start]))

    def attach(self, est: Estimate) -> None:
        """Register ``est`` if its prefix is a prefix of this solution."""
        k = len(est.prefix)
        if k <= len(self.ids) and k not in self.entries and self.ids[:k] == est.prefix:
            self.entries[k] = est
            bisect.insort(self.positions, k)
            est.owners.append(self)

    def after(self, k: int) -> list[int]:
        """Positions of memo entries beyond ``k``, nearest first."""
        return self.positions[bisect.bisect_right(self.positions, k):]

    def before(self, k: int) -> list[int]:
        """Positions of memo entries before ``k``."""
        return self.positions[:bisect.bisect_left(self.positions, k)]


@dataclass
class Draft:
    """A rollout from the bare query kept as a T_full to search."""

    ids: Ids
    logprobs: list[float] | None
    finish_reason: str
    success: bool


def common_prefix(continuation: Ids, ids: Ids, start: int) -> int:
    """Length of the common prefix of ``continuation`` and ``ids[start:]`` (no slicing)."""
    limit, k = min(len(continuation), len(ids) - start), 0
    while k < limit and continuation[k] == ids[start + k]:
        k += 1
    return k
