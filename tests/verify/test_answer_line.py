import pytest

from phiforge.errors import ConfigError
from phiforge.verify.answer_line import AnswerLineOracle


def test_first_declared_answer_counts_not_the_last_number():
    oracle = AnswerLineOracle()
    assert oracle.check("5 + 7 = 12.\nAnswer: 12 then 13", 12).correct
    assert not oracle.check("Answer: 11\nAnswer: 12", 12).correct
    v = oracle.check("no answer here 12", 12)
    assert (v.correct, v.extracted, v.reason) == (False, None, "no_answer")
    assert [v.correct for v in oracle.check_many(["Answer: -3", "Answer: 3"], ["-3", -3])] == [True, False]


def test_bad_patterns_are_config_errors():
    with pytest.raises(ConfigError, match="capture group"):
        AnswerLineOracle(pattern="Answer")
    with pytest.raises(ConfigError, match="not a valid regex"):
        AnswerLineOracle(pattern="(")
