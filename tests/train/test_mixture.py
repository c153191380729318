import numpy as np
import pytest

from phiforge.errors import ConfigError
from phiforge.train.mixture import MixtureSampler, plan_mixture
from phiforge.train.packing import TokenSource

SEQ = 8


def _sources():
    rng = np.random.default_rng(0)
    out = {}
    for name, n_docs, lo in (("a", 40, 10), ("b", 30, 100), ("c", 20, 200)):
        docs = [list(rng.integers(lo, lo + 50, size=rng.integers(5, 30))) for _ in range(n_docs)]
        out[name] = TokenSource.from_token_lists(name, docs, 0)
    return out


def _origin(row: np.ndarray) -> str:
    """Which source a row came from (token ranges are disjoint, 0 is the separator)."""
    t = row[row > 0][0]
    return "a" if t < 100 else "b" if t < 200 else "c"


def test_proportions_are_exact_at_every_prefix():
    s = MixtureSampler(_sources(), {"a": 0.5, "b": 0.3, "c": 0.2}, SEQ, seed=1)
    for i in range(1, 201):
        s.next_batch(1)
        for name, w in s.weights.items():
            assert abs(s.counts[name] - w * i) < 1.0 + 1e-9


def test_batches_come_from_sources_in_proportion():
    s = MixtureSampler(_sources(), {"a": 0.6, "b": 0.4}, SEQ, seed=1)
    rows = s.next_batch(100).numpy()
    origins = [_origin(r) for r in rows]
    assert origins.count("a") == 60 and origins.count("b") == 40


def test_epoch_accounting_matches_counts():
    srcs = _sources()
    s = MixtureSampler(srcs, {"a": 0.5, "c": 0.5}, SEQ, seed=1)
    s.next_batch(200)
    ep = s.epochs_so_far()
    assert ep["a"] == pytest.approx(100 * SEQ / srcs["a"].n_tokens)
    assert ep["c"] == pytest.approx(100 * SEQ / srcs["c"].n_tokens)


def test_table5_arithmetic_reproduces_the_paper():
    # Phi-4 report Table 5: 10T tokens; fraction, unique tokens -> epochs.
    weights = {"web": 0.15, "web_rewrites": 0.15, "synthetic": 0.40, "code": 0.20, "acquired": 0.10}
    unique = {"web": 1.3e12, "web_rewrites": 290e9, "synthetic": 290e9, "code": 820e9, "acquired": 580e9}
    rows = {r.source: r for r in plan_mixture(weights, unique, int(10e12))}
    expected = {"web": 1.2, "web_rewrites": 5.2, "synthetic": 13.8, "code": 2.4, "acquired": 1.7}
    for name, epochs in expected.items():
        assert rows[name].epochs == pytest.approx(epochs, abs=0.06)


def test_ranks_partition_the_global_stream():
    full = MixtureSampler(_sources(), {"a": 0.5, "b": 0.5}, SEQ, seed=2).next_batch(40).numpy()
    r0 = MixtureSampler(_sources(), {"a": 0.5, "b": 0.5}, SEQ, seed=2, rank=0, world_size=2).next_batch(20).numpy()
    r1 = MixtureSampler(_sources(), {"a": 0.5, "b": 0.5}, SEQ, seed=2, rank=1, world_size=2).next_batch(20).numpy()
    assert np.array_equal(r0, full[0::2]) and np.array_equal(r1, full[1::2])


def test_state_dict_resumes_the_same_stream():
    a = MixtureSampler(_sources(), {"a": 0.7, "b": 0.3}, SEQ, seed=3)
    a.next_batch(17)
    state = a.state_dict()
    expected = a.next_batch(30).numpy()
    b = MixtureSampler(_sources(), {"a": 0.7, "b": 0.3}, SEQ, seed=3)
    b.load_state_dict(state)
    assert np.array_equal(b.next_batch(30).numpy(), expected)


def test_unknown_source_and_bad_weights():
    with pytest.raises(ConfigError, match="unknown source"):
        MixtureSampler(_sources(), {"zzz": 1.0}, SEQ, seed=0)
    with pytest.raises(ConfigError, match=">= 0"):
        MixtureSampler(_sources(), {"a": -1.0, "b": 1.0}, SEQ, seed=0)
