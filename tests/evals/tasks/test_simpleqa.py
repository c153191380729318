"""SimpleQA (simple-evals scoring): the F1 from the report's example, the grader's prompt and replies, rules."""

import json

import pytest

from phiforge.errors import ConfigError, DataError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.simpleqa import parse_grader_reply, rule_grade, simpleqa_metrics
from phiforge.testing.scripted import ScriptedBackend


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def task(backend=None, **params):
    return make_task("simpleqa", TaskOptions(path="unused", params=params), grader=backend)


def groups(correct, incorrect, not_attempted):
    labels = ["correct"] * correct + ["incorrect"] * incorrect + ["not_attempted"] * not_attempted
    return [[{"score": float(lab == "correct"), "label": lab, "extracted": "x"}] for lab in labels]


def test_f1_reproduces_the_reports_example():
    """Report §6 (Fig. 6 discussion): (6% right, 94% wrong) -> F1 6%; (3%, 3%, 94% declined) -> F1 5.6%."""
    before = task().metrics(groups(6, 94, 0))
    assert before["f1"] == pytest.approx(0.06)
    after = task().metrics(groups(3, 3, 94))
    assert after["accuracy_given_attempted"] == pytest.approx(0.5)
    assert after["is_correct"] == pytest.approx(0.03) and after["is_not_attempted"] == pytest.approx(0.94)
    assert after["f1"] == pytest.approx(2 * 0.5 * 0.03 / 0.53)  # 0.0566: the report's "5.6%"
    assert 0.056 < after["f1"] < before["f1"]
    assert task().primary_metric == "f1" and not task().metric_is_item_mean


def test_f1_edge_cases():
    assert simpleqa_metrics(0.0, 0.0, 1.0)["f1"] == 0.0  # nothing attempted
    assert simpleqa_metrics(1.0, 0.0, 0.0)["f1"] == 1.0
    assert task().metrics([])["f1"] == 0.0


@pytest.mark.parametrize("reply, label", [
    ("A", "correct"), ("B", "incorrect"), ("C", "not_attempted"), (" b\n", "not_attempted"),
    ("The grade is B.", "incorrect"), ("INCORRECT", "incorrect"), ("NOT_ATTEMPTED", "not_attempted"),
    ("CORRECT", "correct"), ("not attempted", "not_attempted"), ("no idea", "not_attempted"), ("", "not_attempted"),
])
def test_grader_reply_parsing(reply, label):
    assert parse_grader_reply(reply) == label


def test_llm_grader_sees_question_gold_and_response():
    replies = {"Paris": "A", "Lyon": "B", "I don't know": "C"}
    grader = ScriptedBackend(lambda prompt, k: next(v for r, v in replies.items()
                                                    if f"Predicted answer: {r}\n" in prompt))
    t = task(grader)
    item = {"id": "1", "problem": "What is the capital of France?", "answer": "Paris"}
    grades = t.grade_many([item] * 4, ["Paris", "Lyon", "I don't know", "I don't know"], [0] * 4)
    assert [(g.score, g.label) for g in grades] == [(1.0, "correct"), (0.0, "incorrect"), (0.0, "not_attempted"),
                                                    (0.0, "not_attempted")]
    assert grades[0].extra == {"grader": "llm"} and grades[1].extracted == "Lyon"
    assert len(grader.prompts) == 4
    assert "Question: What is the capital of France?\nGold target: Paris\nPredicted answer: Lyon" in grader.prompts[1]
    assert 'just the letter "A", "B" or "C"' in grader.prompts[0]


@pytest.mark.parametrize("response, gold, label", [
    ("The capital of France is Paris.", "Paris", "correct"),
    ("I'm not sure, but I think it is Paris.", "Paris", "correct"),  # hedged but contains the gold
    ("He is about 1.73 meters tall.", "1.73 m", "correct"),  # a number with a unit word
    ("It sold 1,200 copies.", "1200", "correct"),
    ("It is Lyon.", "Paris", "incorrect"),
    ("It sold 1,300 copies.", "1200", "incorrect"),
    ("I don't know.", "Paris", "not_attempted"),
    ("I cannot determine that from the information I have.", "Paris", "not_attempted"),
    ("There is no information about this.", "Paris", "not_attempted"),
    ("   ", "Paris", "not_attempted"),
    ("Season 7", "Season 7, Episode 20", "incorrect"),
])
def test_rule_grader(response, gold, label):
    assert rule_grade(response, gold) == label


def test_rules_without_a_grader_and_settings():
    t = task()
    g = t.grade({"id": "1", "problem": "q", "answer": "Paris"}, "  ", 0)
    assert (g.score, g.extracted, g.label, g.extra) == (0.0, None, "not_attempted", {"grader": "rules"})
    forced = task(ScriptedBackend(lambda p, k: "A"), grader="rules")
    assert forced.grade({"id": "1", "problem": "q", "answer": "Paris"}, "Lyon", 0).label == "incorrect"
    with pytest.raises(ConfigError, match="needs a grader model"):
        task(grader="llm")
    with pytest.raises(ConfigError, match="grader must be one of"):
        task(grader="gpt4o")


def test_prompt_is_the_bare_question_and_missing_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "sqa.jsonl", [{"problem": "Who?", "answer": "Me"}, {"problem": "When?"}])
    t = make_task("simpleqa", TaskOptions(path=path))
    assert t.prompt({"id": "0", "problem": "Who?", "answer": "Me"}, 0) == [{"role": "user", "content": "Who?"}]
    with pytest.raises(DataError, match=r"sqa\.jsonl:2: .*lacks field\(s\) answer"):
        t.load()
