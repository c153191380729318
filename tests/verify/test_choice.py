"""Multiple-choice letter extraction and scoring."""

from __future__ import annotations

import pytest

from phiforge.errors import ConfigError
from phiforge.verify.choice import ChoiceOracle, extract_choice, score_choices
from phiforge.verify.oracle import Oracle, accuracy


@pytest.mark.parametrize("text,letter", [
    ("Answer: C", "C"), ("The answer is (B).", "B"), ("**Answer:** D", "D"), ("\\boxed{C}", "C"),
    ("\\boxed{\\text{(A)}}", "A"), ("the correct answer is C.", "C"), ("the answer is option B", "B"),
    ("A cat sat on the mat. So the answer is B", "B"), ("I think (A) is wrong, so D", "D"),
    ("Option A and B are wrong; correct: C.", "C"), ("B) because it is", "B"), ("It's A", "A"),
    ("Answer: A ... on reflection, Answer: D", "D"), ("none here", None), ("Answer: E", None),
    ("Apples and Bananas", None),
])
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_custom_letter_set():
    assert extract_choice("Answer: (J)", letters="ABCDEFGHIJ") == "J"
    assert extract_choice("Answer: (J)") is None


def test_oracle_and_scoring():
    oracle = ChoiceOracle()
    assert isinstance(oracle, Oracle)
    assert oracle.check("The answer is (C)", "c").correct
    v = oracle.check("Answer: B", "(C)")
    assert not v.correct and v.extracted == "B" and v.reason == "mismatch"
    verdicts = oracle.check_many(["Answer: A", "Answer: B", "?"], ["A", "A", "A"])
    assert [v.reason for v in verdicts] == ["match", "mismatch", "no_answer"]
    assert accuracy(verdicts) == pytest.approx(1 / 3)
    assert score_choices(["Answer: A", "Answer: B"], ["A", "B"]) == 1.0


def test_bad_keys_and_letters():
    with pytest.raises(ConfigError, match="not one of"):
        ChoiceOracle().check("Answer: A", "Z")
    with pytest.raises(ConfigError, match="distinct letters"):
        ChoiceOracle(letters="AAB")
