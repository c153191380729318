import pytest

from phiforge.train.schedule import linear_warmup_linear_decay as lr


def test_warmup_is_linear_to_peak():
    vals = [lr(s, 1.0, 4, 20) for s in range(4)]
    assert vals == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_decay_is_linear_to_floor():
    assert lr(4, 1.0, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr(12, 1.0, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr(20, 1.0, 4, 20, 0.1) == pytest.approx(0.1)
    assert lr(50, 1.0, 4, 20, 0.0) == pytest.approx(0.0)


def test_monotone_after_warmup_and_no_warmup():
    vals = [lr(s, 3e-4, 0, 100) for s in range(100)]
    assert vals[0] == pytest.approx(3e-4)
    assert all(a >= b for a, b in zip(vals, vals[1:]))
