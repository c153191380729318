"""The pure decision rules of Pivotal Token Search: split points, intervals, decisions, pair candidates."""

import math

import pytest

from phiforge.evals.intervals import wilson_interval
from phiforge.posttrain.pts_rules import (Candidate, Side, bounds, diff_interval, gap_decision, rank_candidates,
                                          sides_to_sample, split_point, stratified_delta, window_decision)


# -- split rule ------------------------------------------------------------------------


def test_logprob_split_cuts_where_cumulative_surprisal_reaches_half():
    logprobs = [-0.1, -0.1, -3.0, -0.1, -0.1, -0.1]  # total 3.5, half 1.75: reached at the third token
    assert split_point(logprobs, 0, 6, "logprob") == 3
    assert split_point(logprobs, 0, 6, "count") == 3
    front_loaded = [-3.0, -0.1, -0.1, -0.1]
    assert split_point(front_loaded, 0, 4, "logprob") == 1  # the surprising token alone on the left
    assert split_point(front_loaded, 0, 4, "count") == 2


def test_split_works_inside_a_longer_sequence():
    logprobs = [-9.0, -9.0, -0.1, -2.0, -0.1, -0.1, -9.0]
    assert split_point(logprobs, 2, 6, "logprob") == 4  # segment [2, 6): 0.1, 2.0 reaches 1.15 at index 3
    assert split_point(logprobs, 2, 6, "count") == 4


def test_zero_surprisal_falls_back_to_the_token_count_midpoint():
    assert split_point([0.0] * 5, 0, 5, "logprob") == 2
    assert split_point([-0.0, 0.0, 1e-12, 0.0], 0, 4, "logprob") == 2  # positive rounding noise counts as 0


def test_length_two_segments_always_split_one_and_one():
    for logprobs in ([-5.0, 0.0], [0.0, -5.0], [0.0, 0.0], [-1.0, -1.0]):
        assert split_point(logprobs, 0, 2, "logprob") == 1
        assert split_point(logprobs, 0, 2, "count") == 1


def test_a_huge_last_surprisal_still_leaves_a_right_half():
    assert split_point([-0.1, -0.1, -10.0], 0, 3, "logprob") == 2


def test_split_rejects_single_tokens_and_unknown_rules():
    with pytest.raises(ValueError, match="1 token"):
        split_point([-1.0], 0, 1)
    with pytest.raises(ValueError, match="unknown split rule"):
        split_point([-1.0, -1.0], 0, 2, "middle")


# -- intervals and decisions ---------------------------------------------------------------


def test_bounds_are_wilson_and_exact_values_are_points():
    assert bounds(3, 10, 1.96) == (0.3, *wilson_interval(3, 10, 1.96))
    assert bounds(1, 1, 1.96, exact=True) == (1.0, 1.0, 1.0)
    assert bounds(0, 0, 1.96) == (0.5, 0.0, 1.0)


def test_newcombe_interval_is_narrower_than_adding_half_widths_and_contains_the_point():
    before, after = bounds(10, 40, 1.96), bounds(30, 40, 1.96)
    lo, hi = diff_interval(before, after)
    assert lo < 0.5 < hi
    assert hi - lo < (after[2] - before[1]) - (after[1] - before[2])


def test_gap_decision_big_small_and_undecided():
    assert gap_decision(bounds(8, 40, 1.96), bounds(36, 40, 1.96), 0.2, adaptive=True, saturated=False) == "big"
    assert gap_decision(bounds(36, 40, 1.96), bounds(8, 40, 1.96), 0.2, adaptive=True, saturated=False) == "big"
    assert gap_decision(bounds(100, 200, 1.96), bounds(104, 200, 1.96), 0.2, adaptive=True,
                        saturated=False) == "small"
    assert gap_decision(bounds(4, 8, 1.96), bounds(6, 8, 1.96), 0.2, adaptive=True, saturated=False) is None


def test_saturated_comparisons_fall_back_to_the_point_estimate():
    before, after = bounds(4, 8, 1.96), bounds(6, 8, 1.96)
    assert gap_decision(before, after, 0.2, adaptive=True, saturated=True) == "big"
    # 0.6 - 0.4 is 0.19999999999999996 in floats: still |Δ| >= p_gap
    assert gap_decision(bounds(2, 5, 1.96), bounds(3, 5, 1.96), 0.2, adaptive=False, saturated=True) == "big"
    assert gap_decision(bounds(2, 5, 1.96), bounds(2, 5, 1.96), 0.2, adaptive=False, saturated=True) == "small"
    assert gap_decision(before, after, 0.2, adaptive=False, saturated=False) is None


def test_a_looser_flat_interval_decides_small_earlier_but_never_big():
    before, after = bounds(8, 16, 1.96), bounds(9, 16, 1.96)
    assert gap_decision(before, after, 0.2, adaptive=True, saturated=False) is None
    loose = (bounds(8, 16, 0.8), bounds(9, 16, 0.8))
    assert gap_decision(before, after, 0.2, adaptive=True, saturated=False, flat=loose) == "small"


def test_stratified_scale_bounds_the_gap_without_rollouts():
    unknown = bounds(0, 0, 1.96)
    assert gap_decision(unknown, unknown, 0.2, adaptive=True, saturated=False, scale=0.15) == "small"
    assert gap_decision(unknown, unknown, 0.2, adaptive=True, saturated=False, scale=0.5) is None
    # the scale shrinks the interval: the same counts decide "small" only when scaled
    r, after = bounds(8, 16, 1.96), bounds(10, 16, 1.96)
    assert gap_decision(r, after, 0.2, adaptive=True, saturated=False) is None
    assert gap_decision(r, after, 0.2, adaptive=True, saturated=False, scale=0.4) == "small"


def test_stratified_delta_is_the_exact_identity():
    q, p_after, r = 0.3, 0.9, 0.2
    p_before = q * p_after + (1 - q) * r
    assert math.isclose(stratified_delta(q, p_after, r), p_after - p_before)


def test_window_decision():
    assert window_decision(bounds(8, 16, 1.96), 0.2, 0.8, adaptive=True, saturated=False) == "inside"
    assert window_decision(bounds(0, 16, 1.96), 0.2, 0.8, adaptive=True, saturated=False) == "outside"
    assert window_decision(bounds(16, 16, 1.96), 0.2, 0.8, adaptive=True, saturated=False) == "outside"
    assert window_decision(bounds(3, 8, 1.96), 0.2, 0.8, adaptive=True, saturated=False) is None
    assert window_decision(bounds(51, 64, 1.96), 0.2, 0.8, adaptive=True, saturated=True) == "inside"
    assert window_decision(bounds(52, 64, 1.96), 0.2, 0.8, adaptive=False, saturated=True) == "outside"
    assert window_decision(bounds(8, 8, 1.96), 0.2, 0.8, adaptive=False, saturated=False) is None


def test_sides_to_sample_shrinks_the_binding_bound_per_token():
    query, full = Side(bounds(16, 32, 1.96), 32, 25.0, True), Side(bounds(0, 8, 1.96), 8, 1.0, True)
    # Δ ≈ -0.5: hi(Δ) must fall below -p_gap; the full solution's upper half-width is cheap to shrink
    assert sides_to_sample(query, full, 1.0, 0.2, 8) == (False, True)
    # same costs: the side with the wider relevant half-width and fewer rollouts
    narrow, wide = Side(bounds(30, 60, 1.96), 60, 10.0, True), Side(bounds(4, 8, 1.96), 8, 10.0, True)
    assert sides_to_sample(narrow, wide, 1.0, 0.2, 8) == (False, True)
    assert sides_to_sample(wide, narrow, 1.0, 0.2, 8) == (True, False)
    assert sides_to_sample(wide, wide, 1.0, 0.2, 8) == (True, True)
    closed = Side(wide.bounds, 64, 10.0, False)
    assert sides_to_sample(narrow, closed, 1.0, 0.2, 8) == (True, False)


# -- DPO pair candidates -----------------------------------------------------------------------


def test_a_raising_pivot_is_rejected_against_failed_first_tokens_lowest_rate_first():
    first = {7: [10, 9], 5: [4, 1], 6: [2, 0], 8: [2, 0], 9: [3, 3], None: [1, 0]}
    ranked = rank_candidates(first, pivot=7, raises=True)
    # 9 never failed, 7 is the pivot, None is an empty rollout; 6 and 8 tie on rate and count -> lower id
    assert [c.token_id for c in ranked] == [6, 8, 5]
    assert ranked[0] == Candidate(6, 2, 0) and ranked[0].rate == 0.0


def test_a_lowering_pivot_is_chosen_against_successful_first_tokens_highest_rate_first():
    first = {3: [10, 1], 4: [2, 2], 5: [5, 5], 6: [4, 1], 7: [3, 0]}
    ranked = rank_candidates(first, pivot=3, raises=False)
    assert [c.token_id for c in ranked] == [5, 4, 6]  # 5 and 4 tie at rate 1: more rollouts first


def test_no_candidate_when_every_rollout_agrees():
    assert rank_candidates({3: [8, 8]}, pivot=3, raises=True) == []
    assert rank_candidates({4: [8, 8]}, pivot=3, raises=True) == []
