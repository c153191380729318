"""The decision rules of Pivotal Token Search (Phi-4 report §4.3, Fig. 4), as pure functions.

Kept apart from the scheduler (``pts_state``, ``pts``) so each rule is unit-tested alone:

* where a segment is split (``split_point``): at the cumulative *surprisal* midpoint,
  the report's "cumulative midpoint of token log probabilities", or at the token-count
  midpoint (the community implementation's ``len // 2``, our naive baseline);
* when an estimate is good enough (``gap_decision``, ``window_decision``): as soon as a
  confidence interval settles the comparison, else at the point estimate once no more
  rollouts may be drawn (the report samples a fixed N; adaptive stopping is ours);
* how to compare two ends of a segment (``stratified_delta``): through the policy's own
  probability of the segment, which bounds how far p(success) can move across it and
  narrows the interval (ours, exact at temperature 1);
* which side of a comparison to sample next (``sides_to_sample``);
* which rollout first tokens become the other half of a DPO pair (``rank_candidates``;
  footnote 7 draws them from the rollouts already sampled, the tie rule is ours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from phiforge.evals.intervals import wilson_interval

# Float slack for "|Δp| >= p_gap" on point estimates: 0.6 - 0.4 is 0.19999999999999996.
EPS = 1e-9

Bounds = tuple[float, float, float]  # (point estimate, interval low, interval high)
Gap = Literal["big", "small"]  # |Δp| >= p_gap, or < p_gap
Window = Literal["inside", "outside"]


def split_point(logprobs: Sequence[float], start: int, end: int, rule: str = "logprob") -> int:
    """Absolute index where segment ``[start, end)`` (at least 2 tokens) is cut; both halves non-empty.

    ``rule="logprob"``: with surprisals s_j = -logprob_j, the left half is the shortest
    run t_start..t_k whose summed surprisal reaches half the segment's total (the
    report's cumulative log-prob midpoint, §4.3). A segment with zero total surprisal
    (all tokens certain, or logprobs rounded to 0) has no such midpoint and falls back to
    the token-count midpoint; so does ``rule="count"``. The cut is clamped so both
    halves keep at least one token (a huge surprisal on the last token would otherwise
    put the whole segment on the left).
    """
    length = end - start
    if length < 2:
        raise ValueError(f"cannot split a segment of {length} token(s)")
    if rule == "count":
        return start + length // 2
    if rule != "logprob":
        raise ValueError(f"unknown split rule {rule!r}; use 'logprob' or 'count'")
    surprisal = [max(0.0, -float(lp)) for lp in logprobs[start:end]]
    half = math.fsum(surprisal) / 2
    if half <= 0:
        return start + length // 2
    total, k = 0.0, length - 1
    for i, s in enumerate(surprisal):
        total += s
        if total >= half * (1 - EPS):
            k = i + 1
            break
    return start + min(max(k, 1), length - 1)


def bounds(successes: int, n: int, z: float, exact: bool = False) -> Bounds:
    """Point estimate and Wilson interval; an exact value (no sampling possible) is its own interval."""
    p = successes / n if n else 0.5
    if exact:
        return (p, p, p)
    lo, hi = wilson_interval(successes, n, z)
    return (p, lo, hi)


def diff_interval(before: Bounds, after: Bounds) -> tuple[float, float]:
    """Interval for Δ = p_after - p_before from the two Wilson intervals (Newcombe 1998, method 10).

    Why not the crude [lo_after - hi_before, hi_after - lo_before]: that adds the two
    half-widths, Newcombe's hybrid adds them in quadrature, so the same coverage needs
    about half the rollouts. Reused rollouts make the two estimates positively
    correlated, which only makes this interval conservative.
    """
    (pa, la, ua), (pb, lb, ub) = before, after
    delta = pb - pa
    return (delta - math.hypot(pb - lb, ua - pa), delta + math.hypot(ub - pb, pa - la))


def gap_decision(before: Bounds, after: Bounds, p_gap: float, *, adaptive: bool, saturated: bool,
                 scale: float = 1.0, flat: tuple[Bounds, Bounds] | None = None) -> Gap | None:
    """Is |Δ| = scale * |p_after - p_before| >= p_gap ("big"), < p_gap ("small"), or not known yet (None)?

    ``scale`` < 1 is the stratified form (``stratified_delta``): ``before`` is then the
    success rate r of the rollouts that left the segment, and ``scale = 1 - q``. Since
    |p_after - r| <= 1, ``scale < p_gap`` settles "small" before any rollout. Adaptive:
    "big" as soon as the (scaled) Newcombe interval lies wholly beyond ±p_gap, "small"
    as soon as the interval from the ``flat`` bounds (the same two estimates at a looser
    confidence; default: the same bounds) lies wholly inside (-p_gap, p_gap).
    ``saturated`` (no more rollouts may be drawn on either side): the point estimate
    decides, as in the report.
    """
    if scale < p_gap - EPS:
        return "small"
    if adaptive:
        lo, hi = diff_interval(before, after)
        if scale * lo >= p_gap or scale * hi <= -p_gap:
            return "big"
        lo, hi = diff_interval(*flat) if flat is not None else (lo, hi)
        if -p_gap < scale * lo and scale * hi < p_gap:
            return "small"
    if saturated:
        return "big" if scale * abs(after[0] - before[0]) >= p_gap - EPS else "small"
    return None


def stratified_delta(q: float, after_p: float, left_p: float) -> float:
    """Δ = p_after - p_before through the policy's probability q of the segment (ours; exact identity).

    A rollout from the earlier prefix either generates the segment (probability q, known
    from T_full's log-probs) and then succeeds with p_after, or leaves it and succeeds
    with rate r (``left_p``): p_before = q p_after + (1 - q) r, so Δ = (1 - q)(p_after - r).
    Estimating r from the rollouts that left, instead of p_before from all, shrinks the
    interval of Δ by the factor 1 - q, and |Δ| <= 1 - q holds with no rollout at all: a
    token the policy picks with probability above 1 - p_gap can never be pivotal. Exact
    when rollouts sample the distribution the log-probs describe (temperature 1, top_p 1).
    """
    return (1.0 - q) * (after_p - left_p)


def window_decision(query: Bounds, min_p: float, max_p: float, *, adaptive: bool, saturated: bool) -> Window | None:
    """Is p(success | query) within [min_p, max_p] (report: 0.2..0.8), or not known yet (None)?

    Adaptive: "inside" once the Wilson interval lies within the window, "outside" once it
    lies wholly beyond one end; when saturated, the point estimate decides.
    """
    p, lo, hi = query
    if adaptive:
        if lo >= min_p - EPS and hi <= max_p + EPS:
            return "inside"
        if hi < min_p or lo > max_p:
            return "outside"
    if saturated:
        return "inside" if min_p - EPS <= p <= max_p + EPS else "outside"
    return None


@dataclass(frozen=True, slots=True)
class Side:
    """One end of an undecided comparison, as far as choosing where to sample next goes."""

    bounds: Bounds
    n: int
    """Rollouts behind ``bounds``."""
    cost: float
    """Expected tokens of one more rollout drawn at this prefix."""
    open: bool
    """May still be sampled (not exact, below max_rollouts)."""
    share: float = 1.0
    """Share of a new rollout that informs ``bounds`` (1 - q for the rollouts that leave a segment)."""


def sides_to_sample(before: Side, after: Side, scale: float, p_gap: float, round_size: int) -> tuple[bool, bool]:
    """Which ends of an undecided comparison get the next round: most interval shrinkage per token.

    The bound of Δ that must still move is the one towards 0 when |Δ| looks >= p_gap (to
    call it "big"), else the one away from 0 (to call it "small"); each side's share of
    that bound is its Wilson half-width on the matching side. One more round shrinks a
    half-width c by about c² · round / (n + round), at ``cost`` tokens per rollout: so
    p(success | full solution), whose rollouts are one EOS token, is sampled before the
    bare query, whose rollouts are whole responses. A side within half the best score
    is sampled too (fewer rounds).
    """
    delta = scale * (after.bounds[0] - before.bounds[0])
    upper = (delta < 0) == (abs(delta) >= p_gap)  # hi(Δ) = Δ + hypot(u_after - p_after, p_before - l_before)
    c_before = before.bounds[0] - before.bounds[1] if upper else before.bounds[2] - before.bounds[0]
    c_after = after.bounds[2] - after.bounds[0] if upper else after.bounds[0] - after.bounds[1]
    scores = [c * c * side.share / ((side.n + round_size * side.share) * max(side.cost, 1.0)) if side.open else -1.0
              for c, side in ((c_before, before), (c_after, after))]
    best = max(scores)
    return (before.open and scores[0] >= best / 2, after.open and scores[1] >= best / 2)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A first token of the rollouts at a pivot's prefix, with how those rollouts fared."""

    token_id: int
    count: int
    """Rollouts at the prefix whose first token this is."""
    successes: int

    @property
    def rate(self) -> float:
        return self.successes / self.count


def rank_candidates(first_tokens: Mapping[int, Sequence[int]], pivot: int, raises: bool) -> list[Candidate]:
    """The other half of a pivot's DPO pair, best first (footnote 7: from rollouts already sampled).

    ``first_tokens`` maps each first token of the rollouts at the pivot's prefix to
    ``(count, successes)``. If the pivot RAISES p(success) it is the chosen token and
    the candidates for rejected are the first tokens of FAILED rollouts (other than the
    pivot), lowest empirical success rate first; if it LOWERS p(success) it is the
    rejected token and the candidates for chosen are first tokens of SUCCESSFUL
    rollouts, highest rate first. Ties: more rollouts first (a better-supported rate),
    then the lower id (determinism). ``None`` (rollouts with no tokens) never counts.
    """
    pool = [Candidate(t, c, s) for t, (c, s) in first_tokens.items()
            if t is not None and t != pivot and (c > s if raises else s > 0)]
    sign = 1 if raises else -1
    return sorted(pool, key=lambda cand: (sign * cand.rate, -cand.count, cand.token_id))
