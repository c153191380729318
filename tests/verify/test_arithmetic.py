from phiforge.verify.arithmetic import check_arithmetic, equations


def test_every_equation_must_hold():
    good = "Ben starts with 7. 7 + 5 = 12. 12 - 3 = 9. 9 * 2 = 18.\nAnswer: 18"
    assert check_arithmetic(good, 18).reason == "equations_correct"
    bad = "Ada had 18 - 2 = 12. 12 + 2 = 14."
    v = check_arithmetic(bad)
    assert not v.correct and v.reason == "wrong_equation" and v.extracted == "18 - 2 = 12"


def test_answer_must_be_the_last_result_and_steps_must_exist():
    assert check_arithmetic("7 + 5 = 12. Answer: 13", 13).reason == "answer_not_last_result"
    assert check_arithmetic("The answer: 25", 25).reason == "too_few_equations"
    assert check_arithmetic("1.5 x 2 = 3 and 9 / 4 = 2.25", "2.25").correct
    assert check_arithmetic("5 / 0 = 0").reason == "wrong_equation"


def test_equations_parse_negative_and_unicode_ops():
    assert [op for _, op, _, _ in equations("-3 + 5 = 2, 4 × 2 = 8, 8 ÷ 2 = 4")] == ["+", "×", "÷"]
