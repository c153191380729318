"""Pivotal Token Search on the planted-pivot policy, where every token's true Δp is known in closed form."""

import json
import math
from collections import Counter

import pytest

from phiforge.backends.base import SamplingParams
from phiforge.posttrain.pts import PTSConfig, PTSQuery, pairs_as_token_rows, pairs_as_trl_rows, search
from phiforge.testing.planted import (ASSISTANT, CORRECT, EOS, FILLER0, Plant, PlantedOracle, PlantedPolicy,
                                      PlantedTask, PlantedTokenizer, random_tasks)


def queries(policy):
    return [PTSQuery(f"q{i}", policy.prompt_ids(i), "yes") for i in range(len(policy.tasks))]


def run(tasks, config, **kwargs):
    policy = PlantedPolicy(tasks)
    return policy, search(policy, queries(policy), PlantedOracle(), config, **kwargs)


def score(tasks, result, p_gap):
    """(true pivots in the searched solutions, of them found, reported pivots that are not true pivots)."""
    truth = {(s.query_id, s.index, i) for s in result.solutions
             for i in tasks[int(s.query_id[1:])].true_pivots(s.ids, p_gap)}
    found = {(p.query_id, p.solution, p.position) for p in result.pivots}
    return len(truth), len(truth & found), len(found - truth)


@pytest.fixture(scope="module")
def medium_tasks():
    return random_tasks(40, seed=3, medium=1.0)


@pytest.fixture(scope="module")
def adaptive_run(medium_tasks):
    return run(medium_tasks, PTSConfig(max_tokens=32, seed=1))


@pytest.fixture(scope="module")
def fixed_run(medium_tasks):
    return run(medium_tasks, PTSConfig.naive(max_tokens=32, seed=1))


# -- the planted policy itself ---------------------------------------------------------------


def test_planted_policy_matches_its_closed_form():
    task = PlantedTask(6, 0.5, (Plant(2, (20, 21), (0.5, 0.5), (0.3, -0.3)),), seed=1)
    policy = PlantedPolicy([task])
    prompt = policy.prompt_ids(0)
    for prefix in ([], [task.step([], 0.0)[0], task.step([0], 0.0)[0], 20]):
        out = policy.sample([prompt + prefix], SamplingParams(n=4000, seed=5, max_tokens=16)).completions[0]
        rate = sum(CORRECT in c.token_ids for c in out) / len(out)
        assert abs(rate - task.p_success(prefix)) < 0.03
    assert task.p_success([0, 0, 20]) == pytest.approx(0.8)
    assert task.deltas([0, 0, 21, 0, 0, 0, CORRECT]) == pytest.approx([0, 0, -0.3, 0, 0, 0, 0.8])


def test_planted_rollouts_are_seeded_per_prompt_and_sample():
    policy = PlantedPolicy(random_tasks(2, seed=0))
    params = SamplingParams(n=3, seed=7, max_tokens=30)
    a = policy.sample([policy.prompt_ids(0), policy.prompt_ids(1)], params).completions
    b = policy.sample([policy.prompt_ids(1)], params).completions
    assert [c.token_ids for c in a[1]] == [c.token_ids for c in b[0]]
    twice = policy.sample([policy.prompt_ids(0)] * 2, params).completions  # numbered on: 6 distinct streams
    assert [c.token_ids for c in twice[0]] == [c.token_ids for c in a[0]]
    assert len({tuple(c.token_ids) for c in twice[0] + twice[1]}) > 3
    assert all(c.logprobs and len(c.logprobs) == len(c.token_ids) for c in a[0])


# -- finding pivots ------------------------------------------------------------------------------


def test_finds_the_planted_pivots_with_few_false_positives(medium_tasks, adaptive_run):
    _, result = adaptive_run
    truth, found, false = score(medium_tasks, result, 0.2)
    assert truth >= 40 and found >= 0.75 * truth
    assert false <= max(3, 0.1 * found)
    for p in result.pivots:  # a false positive is at least a near miss, never a flat token
        true_delta = medium_tasks[int(p.query_id[1:])].deltas(p.prefix_ids + [p.token_id])[-1]
        assert abs(true_delta) > 0.1 and math.copysign(1, true_delta) == math.copysign(1, p.delta)


def test_delta_estimates_are_unbiased_and_pivot_deltas_precise(medium_tasks, adaptive_run):
    # pivots' Δp are stratified through the token's known probability: far tighter than p_after - p_before
    _, result = adaptive_run
    pivot_errors = [p.delta - medium_tasks[int(p.query_id[1:])].deltas(p.prefix_ids + [p.token_id])[-1]
                    for p in result.pivots]
    segment_errors = [seg.delta - (task.p_success(s.ids[:seg.end]) - task.p_success(s.ids[:seg.start]))
                      for s in result.solutions for task in [medium_tasks[int(s.query_id[1:])]]
                      for seg in s.segments if seg.before.n and seg.after.n]
    assert sum(map(abs, pivot_errors)) / len(pivot_errors) < 0.05
    assert abs(sum(segment_errors) / len(segment_errors)) < 0.03 and len(segment_errors) > 100


def test_adaptive_mode_uses_far_fewer_tokens_for_the_same_findings(medium_tasks, adaptive_run, fixed_run):
    truth_a, found_a, false_a = score(medium_tasks, adaptive_run[1], 0.2)
    truth_f, found_f, false_f = score(medium_tasks, fixed_run[1], 0.2)
    assert found_a / truth_a >= found_f / truth_f - 0.1 and false_a <= false_f + 2
    ours, naive = adaptive_run[1].stats, fixed_run[1].stats
    assert ours.rollouts < 0.6 * naive.rollouts
    assert ours.completion_tokens < 0.7 * naive.completion_tokens


def test_pivots_point_into_their_solution(adaptive_run):
    _, result = adaptive_run
    solutions = {(s.query_id, s.index): s for s in result.solutions}
    assert result.pivots
    for p in result.pivots:
        sol = solutions[(p.query_id, p.solution)]
        assert p.prefix_ids == sol.ids[:p.position] and p.token_id == sol.ids[p.position]
        assert p.prompt_ids == [int(p.query_id[1:]) + 1000, ASSISTANT]
        assert abs(p.delta) >= 0.2 - 1e-9 and p.p_after - p.p_before == pytest.approx(p.delta)


def test_solution_records_cover_every_token_and_drop_the_terminal_eos(adaptive_run):
    _, result = adaptive_run
    for sol in result.solutions:
        assert sol.stop_id == EOS and EOS not in sol.ids and len(sol.logprobs) == len(sol.ids)
        assert sol.ids[-1] in (CORRECT, 4) and sol.success == (sol.ids[-1] == CORRECT)
        edges = [(s.start, s.end) for s in sol.segments]
        assert edges[0][0] == 0 and edges[-1][1] == len(sol.ids)
        assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
        assert len(sol.token_delta) == len(sol.ids)
        final = dict(sol.estimates)
        assert sorted(final) == sorted({s.start for s in sol.segments} | {len(sol.ids)})
        for seg in sol.segments:
            assert sol.token_delta[seg.start:seg.end] == [seg.delta] * (seg.end - seg.start)
            assert final[seg.start].n >= seg.before.n and final[seg.end].n >= seg.after.n
            assert seg.kind == "flat" or (seg.end - seg.start == 1 and abs(seg.delta) >= 0.2 - 1e-9)


def test_a_likely_token_is_never_pivotal_and_costs_no_rollouts():
    # every body token has probability 0.95: |Δp| <= 0.05 < p_gap, settled from the log-probs alone
    task = PlantedTask(10, 0.5, seed=2, fork_rate=0.0, peak=0.95)
    _, result = run([task] * 3, PTSConfig(max_tokens=16, seed=0))
    for sol in result.solutions:
        pivots = [p.position for p in result.pivots if p.query_id == sol.query_id]
        assert pivots == [len(sol.ids) - 1] or not pivots  # only the answer can move p
        body_leaves = [s for s in sol.segments if s.end < len(sol.ids) and (s.mass or 0) > 0.8]
        assert all(s.decided_by == "mass_bound" for s in body_leaves)


# -- query window ---------------------------------------------------------------------------------


def test_only_queries_inside_the_window_are_searched():
    tasks = [PlantedTask(8, 0.03, seed=1), PlantedTask(8, 0.5, seed=2), PlantedTask(8, 0.97, seed=3)]
    _, result = run(tasks, PTSConfig(max_tokens=16, seed=0))
    windows = {q.query_id: q.window for q in result.query_estimates}
    assert windows == {"q0": "outside", "q1": "inside", "q2": "outside"}
    assert {s.query_id for s in result.solutions} == {"q1"}
    assert result.stats.drops["outside_window"] == 2 and result.stats.queries_searched == 1
    assert all(q.estimate.n <= 24 for q in result.query_estimates if q.window == "outside")  # decided early


def test_a_wide_window_searches_everything():
    tasks = [PlantedTask(8, 0.03, seed=1), PlantedTask(8, 0.97, seed=3)]
    _, result = run(tasks, PTSConfig(max_tokens=16, seed=0, query_min_p=0.0, query_max_p=1.0))
    assert result.stats.queries_searched == 2 and "outside_window" not in result.stats.drops


# -- pairs from the rollouts ---------------------------------------------------------------------


class Recording(PlantedPolicy):
    """Keeps every rollout by its prompt, to check pair candidates against what was sampled."""

    def __init__(self, tasks):
        super().__init__(tasks)
        self.rollouts: dict[tuple, list] = {}

    def sample(self, prompts, params, progress=None):
        result = super().sample(prompts, params)
        for prompt, group in zip(prompts, result.completions):
            self.rollouts.setdefault(tuple(prompt), []).extend(c.token_ids for c in group)
        return result


def test_chosen_and_rejected_are_first_tokens_of_the_rollouts_at_the_prefix(medium_tasks):
    policy = Recording(medium_tasks[:20])
    result = search(policy, queries(policy), PlantedOracle(), PTSConfig(max_tokens=32, seed=4, reuse_rollouts=False))
    assert result.pivots
    for p in result.pivots:
        prompt = tuple(p.prompt_ids + p.prefix_ids)
        tally = Counter()
        for ids in policy.rollouts[prompt]:
            ok = PlantedOracle().check(PlantedTokenizer().decode(p.prefix_ids + ids, True), "yes").correct
            tally[(ids[0], ok)] += 1
        for cand in p.candidates:
            assert cand.count == tally[(cand.token_id, True)] + tally[(cand.token_id, False)]
            assert cand.successes == tally[(cand.token_id, True)]
            assert cand.token_id != p.token_id
            assert (cand.count > cand.successes) if p.delta > 0 else (cand.successes > 0)
        if p.candidates:
            other = p.candidates[0].token_id
            assert (p.chosen_id, p.rejected_id) == ((p.token_id, other) if p.delta > 0 else (other, p.token_id))
            assert p.pairs == [(p.chosen_id, p.rejected_id)]
        else:
            assert p.pairs == [] and None in (p.chosen_id, p.rejected_id)
    assert result.stats.drops.get("no_candidate", 0) == sum(not p.candidates for p in result.pivots)


def test_pairs_per_pivot_zero_emits_every_candidate(medium_tasks):
    _, result = run(medium_tasks[:10], PTSConfig(max_tokens=32, seed=1, pairs_per_pivot=0))
    assert any(len(p.pairs) > 1 for p in result.pivots)
    assert all(len(p.pairs) == len(p.candidates) for p in result.pivots)
    assert result.stats.pairs == sum(len(p.pairs) for p in result.pivots)


def test_token_rows_are_token_exact_and_trl_rows_are_text(adaptive_run):
    _, result = adaptive_run
    rows = pairs_as_token_rows(result)
    assert len(rows) == result.stats.pairs > 0 and len({r["id"] for r in rows}) == len(rows)
    by_id = {f"{p.query_id}:{p.solution}:{p.position}:0": p for p in result.pivots}
    for row in rows:
        p = by_id[row["id"]]
        assert row["kind"] == "pts" and row["prompt_ids"] == p.prompt_ids + p.prefix_ids
        assert (row["chosen_ids"], row["rejected_ids"]) == ([p.pairs[0][0]], [p.pairs[0][1]])
        assert row["delta"] == p.delta and row["query_id"] == p.query_id
    decode = PlantedTokenizer().decode
    trl = pairs_as_trl_rows(result, decode)
    assert len(trl) == len(rows)
    row, p = trl[0], by_id[rows[0]["id"]]
    assert row["prompt"] == decode(p.prompt_ids + p.prefix_ids)
    assert row["chosen"] == " " + decode([p.pairs[0][0]]) and set(row) == {"prompt", "chosen", "rejected"}


# -- memo and rollout reuse ---------------------------------------------------------------------------


def test_memo_counts_match_the_rollouts_sampled(medium_tasks):
    policy = Recording(medium_tasks[:12])
    config = PTSConfig(max_tokens=32, seed=2, reuse_rollouts=False)
    result = search(policy, queries(policy), PlantedOracle(), config)
    sampled = {prompt: len(ids) for prompt, ids in policy.rollouts.items()}
    assert sum(sampled.values()) == result.stats.rollouts
    for sol in result.solutions:
        prompt = [int(sol.query_id[1:]) + 1000, ASSISTANT]
        for seg in sol.segments:  # counts as of the decision: never more than was sampled in the end
            for pos, rec in ((seg.start, seg.before), (seg.end, seg.after)):
                if not rec.exact:
                    assert rec.reused == 0 and rec.sampled == rec.n <= sampled.get(tuple(prompt + sol.ids[:pos]), 0)
    for q in result.query_estimates:
        assert q.estimate.n == sampled[(int(q.query_id[1:]) + 1000, ASSISTANT)]
    assert result.stats.rounds == result.stats.sample_calls == result.stats.oracle_calls


def test_reuse_credits_rollouts_without_biasing_the_estimates():
    # deterministic body except one fork: rollouts from the query follow the solution up to the fork
    plant = Plant(3, (FILLER0 + 1, FILLER0 + 2), (0.5, 0.5), (0.3, -0.3))
    task = PlantedTask(8, 0.5, (plant,), seed=1, fillers=1, fork_rate=0.0)
    tally = {True: [0, 0.0, 0.0], False: [0, 0.0, 0.0]}  # reuse -> [credits, sum(successes - n p), sum(n p (1-p))]
    for reuse in (True, False):
        for seed in range(12):
            config = PTSConfig.naive(max_tokens=16, seed=seed, max_rollouts=32, p_gap=0.05, reuse_rollouts=reuse,
                                     query_min_p=0.0, query_max_p=1.0)
            _, result = run([task] * 4, config)
            tally[reuse][0] += result.stats.reused
            for sol in result.solutions:
                for seg in sol.segments:
                    rec, p = seg.after, task.p_success(sol.ids[:seg.end])
                    if 0 < p < 1:
                        tally[reuse][1] += rec.successes - rec.n * p
                        tally[reuse][2] += rec.n * p * (1 - p)
    assert tally[True][0] > 100 and tally[False][0] == 0
    for reuse in (True, False):
        assert abs(tally[reuse][1] / math.sqrt(tally[reuse][2])) < 3.5  # pooled z-score of the estimates


def test_reuse_saves_rollouts_on_a_low_entropy_policy():
    tasks = [PlantedTask(16, 0.5, (Plant(9, (20, 21, 22), (0.4, 0.3, 0.3), (0.3, -0.3, 0.0)),), seed=s,
                         fork_rate=0.0, peak=0.97) for s in range(6)]
    on = run(tasks, PTSConfig(max_tokens=24, seed=0))[1].stats
    off = run(tasks, PTSConfig(max_tokens=24, seed=0, reuse_rollouts=False))[1].stats
    assert on.reused > 0 and on.rollouts < off.rollouts


# -- determinism, progress, accounting --------------------------------------------------------


def test_same_seed_same_result_and_the_seed_matters(medium_tasks):
    a = run(medium_tasks[:8], PTSConfig(max_tokens=32, seed=5))[1]
    b = run(medium_tasks[:8], PTSConfig(max_tokens=32, seed=5))[1]
    c = run(medium_tasks[:8], PTSConfig(max_tokens=32, seed=6))[1]
    strip = lambda r: {**r.to_dict(), "stats": {k: v for k, v in r.stats.as_dict().items() if "seconds" not in k}}
    assert strip(a) == strip(b)
    assert strip(a)["solutions"] != strip(c)["solutions"]
    assert json.loads(json.dumps(a.to_dict()))["stats"]["rounds"] == a.stats.rounds  # JSON-ready


def test_progress_and_log_are_called_every_round(medium_tasks):
    seen, lines = [], []
    _, result = run(medium_tasks[:6], PTSConfig(max_tokens=32), progress=lambda d, t: seen.append((d, t)),
                    log=lines.append)
    assert len(seen) == len(lines) == result.stats.rounds and seen[-1] == (6, 6)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and "pts round" in lines[0]


def test_stats_count_tokens_and_nothing_is_wasted_without_length_limits(adaptive_run):
    policy, result = adaptive_run
    s = result.stats
    assert s.completion_tokens == policy.usage.completion_tokens and s.prompt_tokens == policy.usage.prompt_tokens
    assert s.wasted_tokens == 0 and s.queries == 40 and s.solutions == s.queries_searched
    assert s.pivots == len(result.pivots) and s.seconds >= s.sample_seconds > 0


def test_a_tight_budget_cuts_rollouts_to_their_prefix_budget():
    task = PlantedTask(12, 0.5, (Plant(8, (20, 21), (0.5, 0.5), (0.4, -0.4)),), seed=1)
    # 10 tokens: T_full is cut inside the body, every response fails and its full prefix is exact
    _, result = run([task], PTSConfig(max_tokens=10, query_min_p=0.0, query_max_p=1.0))
    sol = result.solutions[0]
    assert len(sol.ids) == 10 and sol.stop_id is None and not sol.success
    assert sol.segments[-1].after.exact and not result.pivots


def test_solutions_per_query(medium_tasks):
    _, result = run(medium_tasks[:4], PTSConfig(max_tokens=32, solutions_per_query=3, round_size=2,
                                                max_rollouts=16))
    counts = Counter(s.query_id for s in result.solutions)
    assert set(counts.values()) == {3} and {s.index for s in result.solutions} == {0, 1, 2}


def test_identical_solutions_are_searched_once():
    task = PlantedTask(6, 0.5, seed=1, fillers=1, fork_rate=0.0)  # only the answer varies
    _, result = run([task], PTSConfig(max_tokens=12, solutions_per_query=6))
    assert len(result.solutions) == len({tuple(s.ids) for s in result.solutions}) <= 2
    assert result.stats.drops["duplicate_solution"] == 6 - len(result.solutions)
