"""MATH (simple-evals protocol, symbolic checker): grader validity table, LLM checker, items, load errors."""

import json

import pytest

from phiforge.errors import ConfigError, DataError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.mathtask import extract_math_answer
from phiforge.testing.scripted import ScriptedBackend


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def task(checker=None, grader=None, path="unused"):
    params = {"checker": checker} if checker else {}
    return make_task("math", TaskOptions(path=path, params=params), grader=grader)


def item(answer):
    return {"id": "1", "problem": "p", "answer": answer}


# (response, key, judged equal): the grader-validity table
EQUIVALENCE = [
    ("Answer: 1/2", "\\frac{1}{2}", True),
    ("Answer: 0.5", "\\frac{1}{2}", True),
    ("Answer: \\frac12", "0.5", True),
    ("Answer: $\\dfrac{3}{4}$", "0.75", True),
    ("Answer: \\sqrt{8}", "2\\sqrt{2}", True),
    ("Answer: 2\\sqrt{3}", "\\sqrt{12}", True),
    ("Answer: \\sqrt{8}", "3\\sqrt{2}", False),
    ("Answer: [0, 1)", "[0,1)", True),
    ("Answer: [0, 1]", "[0,1)", False),  # closed where the key is open
    ("Answer: (0, 1)", "[0,1)", False),
    ("Answer: 5 cm", "5", True),  # units are stripped (simple-evals' judge gives units the benefit of the doubt)
    ("Answer: 10\\%", "10", True),
    ("Answer: 1,000", "1000", True),
    ("Answer: \\boxed{7}", "7", True),  # a \boxed{} wrapper on the answer line
    ("so the result is \\boxed{7}.", "7", True),  # no Answer line: the last \boxed{} (our addition)
    ("Answer: 3/4", "0.7", False),
    ("Answer: x=2", "2", True),
    ("Answer: $x = 2$", "2", True),
    ("Answer: \\pi/2", "\\frac{\\pi}{2}", True),
    ("Answer: (1, 2)", "(2, 1)", False),  # ordered pairs keep their order
    ("Answer: 5.", "5", True),
]


@pytest.mark.parametrize("response, key, equal", EQUIVALENCE)
def test_grader_validity(response, key, equal):
    g = task().grade(item(key), response, 0)
    assert g.score == float(equal)
    assert g.label == ("correct" if equal else "incorrect")
    assert g.extra == {"judge": "symbolic"}


@pytest.mark.parametrize("response, found", [
    ("work...\nAnswer: 42\nDone.", "42"),
    ("Answer: 1\nAnswer: 2", "1"),  # the first Answer line, as simple-evals
    ("answer:\n  17", "17"),
    ("Answer: 3 but also \\boxed{4}", "3 but also \\boxed{4}"),  # an Answer line wins over \boxed
    ("\\boxed{a} then \\boxed{b}", "b"),
    ("no final answer", None),
])
def test_extraction(response, found):
    assert extract_math_answer(response) == found


def test_no_answer_is_an_extraction_failure():
    g = task().grade(item("5"), "I could not solve it.", 0)
    assert (g.score, g.extracted, g.label) == (0.0, None, "no_answer")


def test_prompt_asks_for_answer_line():
    (message,) = task().prompt(item("5") | {"problem": "What is 2+3?"}, 0)
    assert "Answer: $ANSWER" in message["content"] and "What is 2+3?" in message["content"]
    assert task().n_max_tokens == 2048 and task().n_repeats == 1


def equality_grader():
    """A judge that says Yes when the two expressions name the same number in words or digits."""
    def reply(prompt, k):
        tail = prompt.rsplit("YOUR TASK", 1)[1]
        return "Yes" if "Expression 1: 7" in tail and "Expression 2: seven" in tail else "No."
    return ScriptedBackend(reply)


def test_llm_checker_is_asked_only_about_what_the_symbolic_check_rejects():
    grader = equality_grader()
    t = task("llm", grader)
    grades = t.grade_many([item("7"), item("7"), item("7"), item("7")],
                          ["Answer: 7", "Answer: seven", "Answer: 8", "nothing"], [0, 0, 0, 0])
    assert [(g.score, g.extra.get("judge")) for g in grades] == [(1.0, "symbolic"), (1.0, "llm"), (0.0, "llm"),
                                                                 (0.0, None)]
    assert len(grader.prompts) == 2  # "seven" and "8"; neither the symbolic match nor the blank
    assert "Expression 1: 7\n    Expression 2: seven" in grader.prompts[0]


def test_llm_only_checker_asks_about_everything_answered():
    grader = equality_grader()
    grades = task("llm_only", grader).grade_many([item("7")] * 2, ["Answer: 7", "Answer: seven"], [0, 0])
    assert [g.score for g in grades] == [0.0, 1.0]  # the judge decides alone, even against the symbolic check
    assert len(grader.prompts) == 2


def test_checker_settings_are_validated():
    with pytest.raises(ConfigError, match="needs a grader model"):
        task("llm")
    with pytest.raises(ConfigError, match="checker must be one of"):
        task("gpt4", ScriptedBackend(lambda p, k: "Yes"))
    with pytest.raises(ConfigError, match="unknown parameter"):
        make_task("math", TaskOptions(path="x", params={"judge": "llm"}))


def test_items_with_solution_or_simple_evals_columns(tmp_path):
    rows = [{"problem": "p", "solution": "so $\\boxed{\\frac{1}{2}}$."}]
    (it,) = task(path=write_jsonl(tmp_path / "a.jsonl", rows)).load()
    assert it["answer"] == "\\frac{1}{2}"
    (it,) = task(path=write_jsonl(tmp_path / "b.jsonl", [{"Question": "q", "Answer": 3}])).load()
    assert (it["problem"], it["answer"]) == ("q", "3")
    with pytest.raises(DataError, match="no answer"):
        task(path=write_jsonl(tmp_path / "c.jsonl", [{"problem": "p", "solution": "no box"}])).load()


def test_missing_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [{"problem": "p", "answer": "1"}, {"problem": "q"}])
    with pytest.raises(DataError, match=r"math\.jsonl:2: .*lacks field\(s\) answer"):
        task(path=path).load()
