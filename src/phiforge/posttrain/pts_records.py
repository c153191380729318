"""What a Pivotal Token Search run returns (Phi-4 report §4.3): pivots, searched solutions, estimates, counters.

Plain dataclasses of JSON-ready values (``PTSResult.to_dict``), so a stage can write
them as they are and a report page can colour every token of a solution by its Δp.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from phiforge.posttrain.pts_rules import Candidate


@dataclass(frozen=True, slots=True)
class EstimateRecord:
    """p(success | query + prefix) as a count: n rollouts, ``successes`` accepted by the oracle."""

    n: int
    successes: int
    p: float
    lo: float
    """Wilson interval (at the run's ``z``); equal to ``p`` for an exact value."""
    hi: float
    sampled: int
    """Rollouts drawn from this very prefix."""
    reused: int
    """Rollouts drawn from a shorter prefix that continued with this prefix's tokens (rollout reuse)."""
    exact: bool = False
    """The prefix already fills the token budget: its own oracle verdict, nothing to sample."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A leaf of the subdivision of a solution: tokens ``[start, end)`` and p(success) at both ends."""

    start: int
    end: int
    kind: str
    """'pivot' (one token, |Δp| >= p_gap) or 'flat' (|Δp| < p_gap)."""
    before: EstimateRecord
    """p(success | solution[:start]) when the segment was decided (later reuse may add rollouts)."""
    after: EstimateRecord
    """p(success | solution[:end]) when the segment was decided."""
    delta: float
    """Estimated Δp across the segment (stratified when ``mass`` is set); 0.0 when a side has no rollouts."""
    mass: float | None
    """π(segment | prefix): the policy's probability of these tokens (None when not used)."""
    decided_by: str
    """'rollouts', or 'mass_bound' when 1 - mass < p_gap settled it without sampling."""


@dataclass(frozen=True, slots=True)
class Pivot:
    """A pivotal token: the solution's token at ``position`` moves p(success) by ``delta``."""

    query_id: str
    solution: int
    """Index of the searched solution among the query's (``PTSResult.solutions`` has its record)."""
    position: int
    prompt_ids: list[int]
    prefix_ids: list[int]
    """Solution tokens before the pivot; the DPO prompt is ``prompt_ids + prefix_ids``."""
    token_id: int
    p_before: float
    """p(success | prefix). With ``segment_mass`` the stratified estimate q p_after + (1 - q) r (r: success
    rate of the rollouts at the prefix that did not take this token), so ``delta = p_after - p_before``;
    ``before`` keeps the plain counts."""
    p_after: float
    delta: float
    before: EstimateRecord
    after: EstimateRecord
    chosen_id: int | None
    """The pivot if it raises p(success), else the best candidate (None: no candidate)."""
    rejected_id: int | None
    """The pivot if it lowers p(success), else the best candidate (None: no candidate)."""
    candidates: list[Candidate]
    """First tokens of all rollouts at the prefix by the end of the run eligible for the other side, best first."""
    pairs: list[tuple[int, int]]
    """(chosen, rejected) token pairs to train on: one, or one per candidate (``pairs_per_pivot``)."""


@dataclass(frozen=True, slots=True)
class SolutionRecord:
    """A searched T_full: its tokens, how it was cut, and every token's Δp."""

    query_id: str
    index: int
    ids: list[int]
    """The searched tokens: the sampled completion without its terminal stop token."""
    logprobs: list[float]
    """Raw log-prob of each token of ``ids`` under the policy (the split rule's input)."""
    stop_id: int | None
    """The terminal stop token that was removed from ``ids`` (None: there was none)."""
    success: bool
    """The oracle's verdict on the whole completion."""
    segments: list[Segment]
    token_delta: list[float]
    """Δp of the leaf segment each token ended up in (a pivot's own Δp for a pivotal token)."""
    estimates: list[tuple[int, EstimateRecord]]
    """(k, p(success | ids[:k])) for every memo entry on this solution, with its final counts."""


@dataclass(frozen=True, slots=True)
class QueryEstimate:
    """p(success | query) and what the query window made of it."""

    query_id: str
    estimate: EstimateRecord
    window: str
    """'inside' (searched) or 'outside' the [query_min_p, query_max_p] window."""
    solutions: int
    """Solutions searched for this query (0 when outside the window)."""


@dataclass(slots=True)
class PTSStats:
    """Counters of one run: work done (tokens, rollouts, calls, seconds) and why things were dropped."""

    queries: int = 0
    queries_searched: int = 0
    solutions: int = 0
    estimates: int = 0
    pivots: int = 0
    pairs: int = 0
    rounds: int = 0
    sample_calls: int = 0
    oracle_calls: int = 0
    rollouts: int = 0
    """Rollouts sampled (each judged once by the oracle)."""
    reused: int = 0
    """Extra credits: a rollout counted towards a longer prefix's estimate (rollout reuse)."""
    completion_tokens: int = 0
    """Tokens the policy generated, including ``wasted_tokens``."""
    wasted_tokens: int = 0
    """Generated past a prefix's own budget (a round's call uses its largest budget) and cut off."""
    prompt_tokens: int = 0
    """Prompt + prefix tokens sent to the backend (each prompt once per call, as backends count them)."""
    sample_seconds: float = 0.0
    oracle_seconds: float = 0.0
    seconds: float = 0.0
    drops: dict[str, int] = field(default_factory=dict)
    """Reasons, snake_case: outside_window (queries); empty_solution, duplicate_solution (T_full drafts);
    no_candidate (pivots without a DPO pair)."""

    def drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + count

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class PTSResult:
    """Everything a run found; ``pairs_as_token_rows`` / ``pairs_as_trl_rows`` turn it into DPO rows."""

    config: dict[str, Any]
    pivots: list[Pivot]
    solutions: list[SolutionRecord]
    query_estimates: list[QueryEstimate]
    stats: PTSStats

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (candidates as dicts, pairs as lists)."""
        return dataclasses.asdict(self)
