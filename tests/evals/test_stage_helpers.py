"""Eval-stage helpers: the prompt each checkpoint sees, and the interval over sampling seeds."""

import pytest

from phiforge.evals.stage import eval_prompt, t_half_width


def test_post_trained_models_are_asked_in_the_chat_format():
    q = "Sam has 3 apples. How many apples does Sam have now?"
    assert eval_prompt("sft", q) == f"<|im_start|>user<|im_sep|>{q}<|im_end|><|im_start|>assistant<|im_sep|>"
    assert eval_prompt("dpo_judge", q).endswith("<|im_start|>assistant<|im_sep|>")
    assert eval_prompt("midtrain", q) == f"Problem: {q}\nSolution:"


def test_t_interval_over_seeds():
    assert t_half_width([0.5]) == 0.0
    # three seeds: t(0.975, df=2) = 4.303, sd = 0.1, so 4.303 * 0.1 / sqrt(3)
    assert t_half_width([0.4, 0.5, 0.6]) == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)
