"""AMC: official scoring by hand on constructed answer sheets, answer reading, the LLM fallback, loading."""

from __future__ import annotations

import json
import statistics

import pytest

from phiforge.errors import ConfigError, DataError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.amc import AMC, boxed_choice, parse_grader_reply, read_answer
from phiforge.testing.scripted import ScriptedBackend

CHOICES = ["0.5", "2", "3", "\\sqrt{2}", "5"]


def item(n: int, test: str = "2024 AMC 10A", answer: str = "B") -> dict:
    return {"id": f"{test}/{n}", "test": test, "number": n, "question": f"Question {n}?",
            "options": dict(zip("ABCDE", CHOICES)), "answer": answer}


def sheet(correct: int, blank: int, wrong: int) -> list[str]:
    """Responses to questions whose key is B: correct, then blank, then wrong (all boxed)."""
    return (["so \\boxed{B}"] * correct + ["I'll skip: \\boxed{blank}"] * blank + ["\\boxed{(E)}"] * wrong)


def rows(task: AMC, items: list[dict], responses: list[str], repeat: int) -> list[dict]:
    """Graded rows as the runner stores them."""
    grades = task.grade_many(items, responses, [repeat] * len(items))
    return [{"item_id": it["id"], "repeat": repeat, "score": g.score, "label": g.label,
             "extracted": g.extracted, "extra": g.extra} for it, g in zip(items, grades)]


def by_item(*runs: list[dict]) -> list[list[dict]]:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        for row in run:
            groups.setdefault(row["item_id"], []).append(row)
    return list(groups.values())


# --------------------------------------------------------------------------- scoring by hand


def test_one_test_20_correct_3_blank_2_wrong_scores_124_5():
    task, items = AMC(TaskOptions(path="unused")), [item(n) for n in range(1, 26)]
    run = rows(task, items, sheet(20, 3, 2), 0)
    assert [r["label"] for r in run] == ["correct"] * 20 + ["blank"] * 3 + ["wrong"] * 2
    assert [r["extra"]["points"] for r in run[19:22]] == [6.0, 1.5, 1.5] and run[-1]["extra"]["points"] == 0.0
    assert run[20]["score"] == 0.25 and run[20]["extracted"] == "blank"
    m = task.metrics(by_item(run))
    assert m["score"] == 20 * 6 + 3 * 1.5 == 124.5
    assert m["score/2024 AMC 10A"] == 124.5 and m["max_points/2024 AMC 10A"] == 150.0
    assert m["runs"] == 1 and m["score_2sigma"] == 0.0
    assert m["accuracy"] == 20 / 25 and m["blank_rate"] == 3 / 25


def test_two_runs_mean_and_two_sigma():
    task, items = AMC(TaskOptions(path="unused")), [item(n) for n in range(1, 26)]
    first = rows(task, items, sheet(20, 3, 2), 0)  # 124.5
    second = rows(task, items, sheet(25, 0, 0), 1)  # 150
    m = task.metrics(by_item(first, second))
    assert m["score"] == pytest.approx((124.5 + 150) / 2)  # 137.25
    # sample std of two values is |a - b| / sqrt(2) = 25.5 / 1.41421 = 18.0312; 2 sigma = 36.0624
    assert m["score_2sigma"] == pytest.approx(2 * 25.5 / 2 ** 0.5) == pytest.approx(36.0624, abs=1e-4)
    assert m["runs"] == 2 and m["accuracy"] == pytest.approx(45 / 50)


def test_runs_average_over_tests_and_unreadable_answers_score_zero():
    task = AMC(TaskOptions(path="unused"))
    a = [item(n, "10A") for n in range(1, 4)]
    b = [item(n, "12A") for n in range(1, 3)]
    # run 0: 10A = 6 + 1.5 + 0 (no box) = 7.5; 12A = 6 + 6 = 12; mean 9.75
    # run 1: 10A = 0 + 0 + 0 = 0;               12A = 1.5 + 0 = 1.5; mean 0.75
    run0 = rows(task, a + b, ["\\boxed{B}", "\\boxed{blank}", "The answer is B.", "\\boxed{B}", "\\boxed{2}"], 0)
    run1 = rows(task, a + b, ["\\boxed{A}", "\\boxed{C}", "\\boxed{D}", "\\boxed{BLANK}", "\\boxed{E}"], 1)
    assert run0[2]["label"] == "no_answer" and run0[2]["extracted"] is None and run0[2]["score"] == 0.0
    m = task.metrics(by_item(run0, run1))
    assert m["score"] == pytest.approx((9.75 + 0.75) / 2)
    assert m["score_2sigma"] == pytest.approx(2 * statistics.stdev([9.75, 0.75]))
    assert m["score/10A"] == pytest.approx((7.5 + 0) / 2) and m["score/12A"] == pytest.approx((12 + 1.5) / 2)
    assert m["max_points/10A"] == 18.0 and m["max_points/12A"] == 12.0
    assert m["blank_rate"] == pytest.approx(2 / 10)


# --------------------------------------------------------------------------- reading answers


@pytest.mark.parametrize("boxed, choice", [
    ("C", "C"), ("(C)", "C"), ("\\text{C}", "C"), ("\\textbf{(C) }12", "C"), ("C) 12", "C"), ("C. 12", "C"),
    ("\\mathrm{(D)}", "D"), ("blank", "blank"), ("Blank", "blank"), ("\\text{BLANK}", "blank"),
    ("E = 5", None), ("A+B", None), ("e", None), ("12", None), ("AB", None)])
def test_boxed_letters_and_blank(boxed, choice):
    assert boxed_choice(boxed) == choice


@pytest.mark.parametrize("response, found", [
    ("so the answer is \\boxed{\\frac{1}{2}}", ("A", "value")),  # option (A) is 0.5
    ("\\boxed{\\dfrac12}", ("A", "value")), ("\\boxed{\\sqrt 2}", ("D", "value")), ("\\boxed{5}", ("E", "value")),
    ("\\boxed{7}", (None, "none")), ("The answer is (B).", (None, "none")),
    ("first \\boxed{A}, on reflection \\boxed{B}", ("B", "box"))])
def test_read_answer(response, found):
    assert read_answer(response, CHOICES) == found


def test_a_value_matching_two_options_is_not_read():
    assert read_answer("\\boxed{2}", ["2", "2.0", "3", "4", "5"]) == (None, "none")


def test_boxed_value_of_the_right_option_counts_as_correct():
    g = AMC(TaskOptions(path="unused")).grade(item(1), "It is \\boxed{2}.", 0)
    assert (g.score, g.extracted, g.label, g.extra["via"]) == (1.0, "B", "correct", "value")


@pytest.mark.parametrize("reply, choice", [("C", "C"), (" (D).", "D"), ("blank", "blank"), ("Blank.", "blank"),
                                           ("none", None), ("", None), ("I cannot tell", None)])
def test_parse_grader_reply(reply, choice):
    assert parse_grader_reply(reply) == choice


def test_llm_extractor_reads_only_what_the_rules_cannot():
    replies = {"Question 1?": "C", "Question 2?": "none", "Question 3?": "B"}
    grader = ScriptedBackend(lambda text, k: next(v for q, v in replies.items() if q in text))
    task = AMC(TaskOptions(path="unused", params={"extractor": "llm"}), grader=grader)
    items = [item(1), item(2), item(3), item(4)]
    responses = ["I pick option C.", "No idea.", "Final: B is right", "\\boxed{B}"]
    grades = task.grade_many(items, responses, [0] * 4)
    assert [(g.extracted, g.label, g.extra["via"]) for g in grades] == [
        ("C", "wrong", "llm"), (None, "no_answer", "llm"), ("B", "correct", "llm"), ("B", "correct", "box")]
    assert len(grader.prompts) == 3  # the boxed answer never reached the grader
    assert "Solution:\nI pick option C." in grader.prompts[0] and "(E) 5" in grader.prompts[0]


def test_auto_asks_a_grader_only_when_given_one_and_rules_never_does():
    grader = ScriptedBackend(lambda text, k: "C")
    assert AMC(TaskOptions(path="unused"), grader=grader).grade(item(1), "I pick option C.", 0).extracted == "C"
    assert len(grader.prompts) == 1
    g = AMC(TaskOptions(path="unused")).grade(item(1), "I pick option C.", 0)
    assert (g.extracted, g.label, g.score, g.extra["via"]) == (None, "no_answer", 0.0, "none")
    rules = AMC(TaskOptions(path="unused", params={"extractor": "rules"}), grader=grader)
    assert rules.grade(item(1), "I pick option C.", 0).label == "no_answer" and len(grader.prompts) == 1


@pytest.mark.parametrize("params, grader", [({"extractor": "llm"}, None), ({"extractor": "gpt"}, None),
                                            ({"judge": "x"}, None)])
def test_bad_params(params, grader):
    with pytest.raises(ConfigError):
        AMC(TaskOptions(path="unused", params=params), grader=grader)


# --------------------------------------------------------------------------- data and prompt


def test_defaults_and_prompt():
    task = make_task("amc", TaskOptions(path="unused"))
    assert isinstance(task, AMC)
    settings = (task.n_repeats, task.sampling_temperature, task.primary_metric, task.metric_scale)
    assert settings == (10, 0.5, "score", 1.0)
    [message] = task.prompt(item(1), 0)
    text = message["content"]
    for part in ("25-question", "exactly one", "6 points", "1.5 points", "0 points", "step by step",
                 "\\boxed{A}", "\\boxed{E}", "\\boxed{blank}", "Question 1?", "(A) 0.5\n(B) 2", "(E) 5"):
        assert part in text
    with pytest.raises(ConfigError, match="needs item data"):
        AMC()


def test_load_options_dict_or_choices_list(tmp_path):
    path = tmp_path / "amc.jsonl"
    listed = dict(item(2), choices=CHOICES, answer="(d)")
    del listed["options"]
    path.write_text(json.dumps(item(1)) + "\n" + json.dumps(listed) + "\n")
    task = AMC(TaskOptions(path=str(path)))
    items = task.load()
    assert [it["id"] for it in items] == ["2024 AMC 10A/1", "2024 AMC 10A/2"]
    assert task.grade(items[1], "\\boxed{D}", 0).label == "correct"
    assert "\\sqrt{2}" in task.contamination_text(items[0]) and "Question 2?" in task.contamination_text(items[1])


@pytest.mark.parametrize("change, message", [
    ({"answer": "F"}, "letters A-E"), ({"options": {"A": "1", "B": "2"}}, "keys A, B, C, D, E"),
    ({"options": None, "choices": ["1", "2"]}, "list of 5")])
def test_bad_items_name_the_file_and_item(tmp_path, change, message):
    path = tmp_path / "amc.jsonl"
    path.write_text(json.dumps(dict(item(7), **change)) + "\n")
    with pytest.raises(DataError, match=message) as err:
        AMC(TaskOptions(path=str(path))).load()
    assert "amc.jsonl" in str(err.value) and "2024 AMC 10A/7" in str(err.value)


def test_missing_test_field(tmp_path):
    path = tmp_path / "amc.jsonl"
    path.write_text(json.dumps({k: v for k, v in item(1).items() if k != "test"}) + "\n")
    with pytest.raises(DataError, match="test"):
        AMC(TaskOptions(path=str(path))).load()
