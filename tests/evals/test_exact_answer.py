import pytest

from phiforge.evals.exact_answer import score, trivial_baselines
from phiforge.evals.intervals import wilson_interval


def test_score_counts_correct_and_extraction_failures():
    items = [{"id": "a", "question": "q1 3", "answer": 3, "steps": 1},
             {"id": "b", "question": "q2 5", "answer": 7, "steps": 2},
             {"id": "c", "question": "q3", "answer": 1, "steps": 2}]
    summary, rows = score(items, [" x\nAnswer: 3", " Answer: 8 Answer: 7", "no idea"])
    assert [r["correct"] for r in rows] == [1, 0, 0]
    assert summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["extraction_failure_rate"] == pytest.approx(1 / 3)
    assert summary["accuracy_by_steps"] == {"1": 1.0, "2": 0.0}
    base = trivial_baselines(items, [3, 3, 5])
    assert base["most_common_answer"] == pytest.approx(1 / 3)
    assert base["last_number_in_question"] == pytest.approx(1 / 3)


def test_wilson_interval():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
