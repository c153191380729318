"""Per-query state machine of Pivotal Token Search (Phi-4 report §4.3, Fig. 4).

Why a state machine and not the report's recursion: there each p(success | ·) call is
a blocking round of sampling for one prefix. Here a query keeps the *frontier* of
segments still undecided; every round the scheduler (``pts.search``) collects the
estimates all queries need (``requests``), samples them in one backend call, hands the
judged rollouts back (``receive``) and lets each query decide what they settle
(``advance``). The decisions are Fig. 4's; only the order of sampling differs, and
sibling segments proceed side by side.

Rollout reuse: sampling is autoregressive, so a rollout from prefix X whose first
tokens are the solution's next tokens S is, from X + S on, a rollout from X + S. Its
verdict is credited to the memo entry of X + S too. This is exact because a prefix's
token budget is ``max_tokens - len(prefix)`` (the whole response is capped, as when
T_full was sampled): the continuation after S had exactly X + S's budget. The rollouts
that *are* the searched solutions are never credited this way, since the prefixes they
would feed were chosen by looking at them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from phiforge.errors import ConfigError
from phiforge.posttrain.pts_memo import Draft, Estimate, Ids, SolutionState, common_prefix
from phiforge.posttrain.pts_records import Pivot, QueryEstimate, Segment, SolutionRecord
from phiforge.posttrain.pts_rules import (EPS, Bounds, Side, bounds, gap_decision, rank_candidates,
                                          sides_to_sample, split_point, stratified_delta, window_decision)

if TYPE_CHECKING:
    from phiforge.posttrain.pts import PTSConfig, PTSQuery


class QueryState:
    """Window test, then subdivision of each solution, for one query; driven round by round."""

    def __init__(self, query: "PTSQuery", config: "PTSConfig", stop_ids: Sequence[int]):
        self.query, self.config, self.stop_ids = query, config, frozenset(stop_ids)
        self.prompt_ids = [int(t) for t in query.prompt_ids]
        self.memo: dict[Ids, Estimate] = {}
        self.solutions: list[SolutionState] = []
        self.drafts: list[Draft] = []
        self.window: str | None = None
        self.done = False
        self.credits = 0
        self.drops: dict[str, int] = {}
        self.use_mass = config.uses_segment_mass
        self.root = self._entry(())

    # -- what to sample ---------------------------------------------------------
    def requests(self) -> list[tuple[Estimate, int]]:
        """Estimates to sample this round, each with how many rounds' worth (``round_size`` each)."""
        if self.done:
            return []
        if self.window is None:
            return [(self.root, self._copies(self.root))]
        wanted: dict[Estimate, None] = {}
        for sol in self.solutions:
            for start, end in sol.frontier:
                for est, want in zip((sol.entries[start], sol.entries[end]), self._sides(sol, start, end)):
                    if want:
                        wanted[est] = None
        return [(est, self._copies(est)) for est in wanted]

    def _open(self, est: Estimate) -> bool:
        return not est.exact and est.n < self.config.max_rollouts

    def _sides(self, sol: SolutionState, start: int, end: int) -> tuple[bool, bool]:
        a, b, cfg = sol.entries[start], sol.entries[end], self.config
        if not cfg.adaptive:
            return (self._open(a), self._open(b))
        cmp = self._compare(sol, start, end, self._claim_z(start, end))
        share = cmp.scale if cmp.left is not None else 1.0
        left_n = cmp.left if cmp.left is not None else a.n
        before = Side(cmp.before, left_n, a.cost(len(sol.ids) - start + 1), self._open(a), share)
        after = Side(cmp.after, b.n, b.cost(len(sol.ids) - end + 1), self._open(b))
        return sides_to_sample(before, after, cmp.scale, cfg.p_gap, cfg.round_size)

    def _copies(self, est: Estimate) -> int:
        """Rounds' worth of rollouts to draw now: all that is missing in fixed-N mode; adaptively one,
        growing by half of what a long-undecided prefix already has (8, 16, 24, 32, 48, 64 with
        round_size 8): two fewer rounds to max_rollouts for about 3% more tokens on the planted benchmark."""
        cfg = self.config
        missing = max(1, math.ceil((cfg.max_rollouts - est.n) / cfg.round_size))
        copies = min(max(1, est.n // (2 * cfg.round_size)), missing) if cfg.adaptive else missing
        if est is self.root:
            copies = max(copies, math.ceil((cfg.solutions_per_query - len(self.drafts)) / cfg.round_size))
        return copies

    # -- new rollouts -----------------------------------------------------------
    def receive(self, est: Estimate, rollouts: Sequence[tuple[Ids, bool, list[float] | None, str]]) -> None:
        """Judged rollouts ``(ids, success, logprobs, finish_reason)`` sampled from ``est``'s prefix."""
        for ids, ok, logprobs, finish in rollouts:
            own = est is self.root and len(self.drafts) < self.config.solutions_per_query
            if own:
                self.drafts.append(Draft(ids, logprobs, finish, ok))
            creditable = self.config.reuse_rollouts and not own
            est.add(ids, ok, direct=True, creditable=creditable)
            if creditable:
                self._credit(est, ids, ok)

    def _credit(self, src: Estimate, ids: Ids, ok: bool) -> None:
        """Count a rollout from ``src`` towards every longer memo entry whose tokens it began with."""
        j, seen = len(src.prefix), set()
        for sol in src.owners:
            common = common_prefix(ids, sol.ids, j)
            for k in sol.after(j):
                if k - j > common or k - j >= len(ids):
                    break
                dst = sol.entries[k]
                if not dst.exact and id(dst) not in seen:
                    seen.add(id(dst))
                    dst.add(ids[k - j:], ok, direct=False)
                    self.credits += 1

    def _back_credit(self, dst: Estimate) -> None:
        """A new memo entry inherits the sampled rollouts of shorter entries that ran through it."""
        k, seen = len(dst.prefix), set()
        for sol in dst.owners:
            for j in sol.before(k):
                src = sol.entries[j]
                if id(src) in seen:
                    continue
                seen.add(id(src))
                for (ids, ok, creditable), common in zip(src.samples, src.common(sol)):
                    if creditable and common >= k - j and len(ids) > k - j:
                        dst.add(ids[k - j:], ok, direct=False)
                        self.credits += 1

    def _entry(self, prefix: Ids) -> Estimate:
        """The memo entry of ``prefix`` (created, attached to its solutions and back-credited if new)."""
        est = self.memo.get(prefix)
        if est is None:
            est = self.memo[prefix] = Estimate(prefix, self.config.max_tokens - len(prefix))
            for sol in self.solutions:
                sol.attach(est)
            if self.config.reuse_rollouts and est.budget > 0:
                self._back_credit(est)
        return est

    # -- decisions --------------------------------------------------------------
    def advance(self) -> None:
        """Decide everything the rollouts so far settle: the window, then segments, splitting as needed."""
        if self.done:
            return
        if self.window is None and not self._decide_window():
            return
        self._decide_segments()
        self.done = not any(sol.frontier for sol in self.solutions)

    def _decide_window(self) -> bool:
        """True once the query is inside the window and its solutions are set up for search."""
        cfg = self.config
        self.window = window_decision(self.root.bounds(cfg.screen_z or cfg.z), cfg.query_min_p, cfg.query_max_p,
                                      adaptive=cfg.adaptive, saturated=not self._open(self.root))
        if self.window == "outside":
            self._drop("outside_window")
            self.done = True
        elif self.window == "inside":
            for index, draft in enumerate(self.drafts):
                self._start_solution(index, draft)
        return self.window == "inside"

    def _start_solution(self, index: int, draft: Draft) -> None:
        if draft.logprobs is None:
            self.use_mass = False
        ids, logprobs, stop_id = self._strip(draft)
        if not ids:
            self._drop("empty_solution")
            return
        if any(sol.ids == ids for sol in self.solutions):  # same T_full twice: same pivots, same pairs
            self._drop("duplicate_solution")
            return
        sol = SolutionState(index, ids, logprobs, stop_id, draft.success)
        self.solutions.append(sol)
        for est in self.memo.values():
            sol.attach(est)
        full = self._entry(ids)
        if full.budget <= 0 and not full.exact:
            full.set_exact(draft.success)
        sol.frontier.append((0, len(ids)))

    def _strip(self, draft: Draft) -> tuple[Ids, list[float], int | None]:
        """The searched sequence: the draft without its terminal stop token (EOS / <|im_end|>)."""
        if draft.logprobs is None and self.config.split == "logprob":
            raise ConfigError("PTS split='logprob' needs per-token log-probs but the backend returned none; "
                              "use a backend that returns them or set split='count'")
        ids = draft.ids
        logprobs = list(draft.logprobs)[:len(ids)] if draft.logprobs is not None else [0.0] * len(ids)
        if draft.finish_reason == "stop" and ids and ids[-1] in self.stop_ids:
            return ids[:-1], logprobs[:-1], ids[-1]
        return ids, logprobs, None

    def _decide_segments(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for sol in self.solutions:
                frontier, sol.frontier = sol.frontier, []
                for segment in frontier:
                    if self._decide(sol, *segment):
                        progressed = True
                    else:
                        sol.frontier.append(segment)

    def _compare(self, sol: SolutionState, start: int, end: int, z: float) -> "_Comparison":
        """How to compare p(success) at the segment's ends: stratified through q when known, else directly."""
        a, b = sol.entries[start], sol.entries[end]
        if not self.use_mass:
            return _Comparison(a.bounds(z), b.bounds(z), 1.0, None)
        q = sol.mass(start, end)
        left, left_ok = a.left(sol, end - start)
        if left == 0 and not (self._open(a) or self._open(b)):
            return _Comparison(a.bounds(z), b.bounds(z), 1.0, q)  # nothing left the segment: r unknown
        return _Comparison(bounds(left_ok, left, z), b.bounds(z), 1.0 - q, q, left)

    def _claim_z(self, start: int, end: int) -> float:
        """z for calling |Δp| >= p_gap: for one token that claims a pivot (a wrong one makes a wrong pair);
        for a longer segment it only leads to a split (a wrong one costs work), so ``screen_z`` will do."""
        cfg = self.config
        return cfg.z if end - start == 1 or cfg.screen_z is None else cfg.screen_z

    def _decide(self, sol: SolutionState, start: int, end: int) -> bool:
        """Fig. 4's Subdivide step for one segment; False while the rollouts cannot tell yet."""
        cfg, a, b = self.config, sol.entries[start], sol.entries[end]
        big_z, flat_z = self._claim_z(start, end), cfg.screen_z or cfg.z
        cmp = self._compare(sol, start, end, big_z)
        screen = cmp if flat_z == big_z else self._compare(sol, start, end, flat_z)
        verdict = gap_decision(cmp.before, cmp.after, cfg.p_gap, adaptive=cfg.adaptive,
                               saturated=not (self._open(a) or self._open(b)), scale=cmp.scale,
                               flat=(screen.before, screen.after))
        if verdict is None:
            return False
        if verdict == "small":
            sol.leaves.append(self._segment(sol, start, end, "flat", cmp))
        elif end - start == 1:
            self._pivot(sol, start, cmp)
        else:
            cut = split_point(sol.logprobs, start, end, cfg.split)
            self._entry(sol.ids[:cut])
            sol.frontier += [(start, cut), (cut, end)]
        return True

    def _segment(self, sol: SolutionState, start: int, end: int, kind: str, cmp: "_Comparison") -> Segment:
        a, b, z = sol.entries[start], sol.entries[end], self.config.z
        by = "mass_bound" if cmp.scale < self.config.p_gap - EPS else "rollouts"
        return Segment(start, end, kind, a.record(z), b.record(z), cmp.delta(a, b), cmp.q, by)

    def _pivot(self, sol: SolutionState, position: int, cmp: "_Comparison") -> None:
        """A pivotal token: its evidence now; its DPO pairs at the end, from every rollout at its prefix."""
        segment = self._segment(sol, position, position + 1, "pivot", cmp)
        sol.leaves.append(segment)
        sol.pivot_segments.append(segment)

    def _pivot_record(self, sol: SolutionState, segment: Segment) -> Pivot:
        """Chosen and rejected tokens from the first tokens of the rollouts at the prefix (footnote 7)."""
        position = segment.start
        token, raises = sol.ids[position], segment.delta > 0
        candidates = rank_candidates(sol.entries[position].first_tokens, token, raises)
        best = candidates[0].token_id if candidates else None
        limit = self.config.pairs_per_pivot or len(candidates)
        pairs = [(token, c.token_id) if raises else (c.token_id, token) for c in candidates[:limit]]
        return Pivot(
            query_id=self.query.id, solution=sol.index, position=position,
            prompt_ids=list(self.prompt_ids), prefix_ids=list(sol.ids[:position]), token_id=token,
            p_before=segment.after.p - segment.delta, p_after=segment.after.p, delta=segment.delta,
            before=segment.before, after=segment.after, chosen_id=token if raises else best,
            rejected_id=best if raises else token, candidates=candidates, pairs=pairs)

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    # -- results ----------------------------------------------------------------
    def pivots(self) -> list[Pivot]:
        """Pivot records, in solution and position order (counts a ``no_candidate`` drop per pivot without a pair)."""
        out = []
        for sol in self.solutions:
            for segment in sorted(sol.pivot_segments, key=lambda s: s.start):
                out.append(self._pivot_record(sol, segment))
                if not out[-1].candidates:
                    self._drop("no_candidate")
        return out

    def solution_records(self) -> list[SolutionRecord]:
        return [_solution_record(self.query.id, sol, self.config.z) for sol in self.solutions]

    def query_record(self) -> QueryEstimate:
        return QueryEstimate(self.query.id, self.root.record(self.config.z), self.window or "undecided",
                             len(self.solutions))


@dataclass(frozen=True)
class _Comparison:
    """Δ = scale * (after.p - before.p): direct (scale 1, before = p(start)) or stratified
    (scale 1 - q, before = success rate of the rollouts at the start that left the segment)."""

    before: Bounds
    after: Bounds
    scale: float
    q: float | None
    left: int | None = None
    """Rollouts at the start that left the segment (stratified form only)."""

    def delta(self, a: Estimate, b: Estimate) -> float:
        """The point estimate of Δ; 0.0 while an end (or the leaving rollouts) has no rollouts."""
        if not b.n or not a.n or self.left == 0:
            return 0.0
        if self.left is not None:
            return stratified_delta(self.q, self.after[0], self.before[0])
        return self.after[0] - self.before[0]


def _solution_record(query_id: str, sol: SolutionState, z: float) -> SolutionRecord:
    leaves = sorted(sol.leaves, key=lambda s: s.start)
    token_delta = [0.0] * len(sol.ids)
    for seg in leaves:
        token_delta[seg.start:seg.end] = [seg.delta] * (seg.end - seg.start)
    estimates = [(k, sol.entries[k].record(z)) for k in sol.positions]
    return SolutionRecord(query_id, sol.index, list(sol.ids), list(sol.logprobs), sol.stop_id, sol.success,
                          leaves, token_delta, estimates)
