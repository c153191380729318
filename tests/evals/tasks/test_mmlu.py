"""MMLU (simple-evals protocol): prompt shape, letter extraction incl. failures, keys, metrics, load errors."""

import json

import pytest

from phiforge.errors import DataError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.mmlu import extract_mmlu_letter


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ITEMS = [
    {"question": "2 + 2 = ?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "elementary_mathematics"},
    {"question": "Capital of France?", "choices": ["Paris", "Rome", "Oslo", "Bern"], "answer": "a",
     "subject": "geography"},
]


@pytest.mark.parametrize("response, letter", [
    ("Let me think.\n4 is right.\nAnswer: B", "B"),
    ("**Answer:** C", "C"),  # markdown bold is removed before matching
    ("Answer: $\\boxed{D}$", "D"),  # so are $ and \boxed{
    ("answer :   A", "A"),
    ("Answer: A\nOn reflection... Answer: B", "A"),  # the first match counts, as in simple-evals
    ("Antwort: C", "C"),
    ("答案：B", "B"),
    ("Answer: Ｃ", "C"),  # full-width letter
    ("الإجابة: ب", "B"),  # Arabic letter
    ("Answer: b", "b"),  # matched in any case, kept as written (so it scores 0, as in simple-evals)
    ("The answer is B.", None),  # no "Answer:" marker: extraction failure, no bare-letter fallback
    ("Answer: E", None),
    ("", None),
])
def test_letter_extraction(response, letter):
    assert extract_mmlu_letter(response) == letter


def test_prompt_asks_for_answer_line_and_lists_options(tmp_path):
    task = make_task("mmlu", TaskOptions(path=write_jsonl(tmp_path / "mmlu.jsonl", ITEMS)))
    item = task.load()[0]
    (message,) = task.prompt(item, 0)
    assert message["role"] == "user"
    assert "'Answer: $LETTER'" in message["content"] and "2 + 2 = ?" in message["content"]
    assert "\nA) 3\nB) 4\nC) 5\nD) 6" in message["content"]
    assert (task.n_repeats, task.sampling_temperature, task.chat, task.mode) == (1, 0.5, True, "generate")


def test_grades_and_labels(tmp_path):
    task = make_task("mmlu", TaskOptions(path=write_jsonl(tmp_path / "mmlu.jsonl", ITEMS)))
    math_item, geo_item = task.load()
    assert math_item["answer"] == "B" and geo_item["answer"] == "A"  # index and lower-case letter keys
    g = task.grade(math_item, "Answer: B", 0)
    assert (g.score, g.extracted, g.label, g.extra) == (1.0, "B", "correct", {"subject": "elementary_mathematics"})
    assert task.grade(math_item, "Answer: C", 0).label == "incorrect"
    assert task.grade(math_item, "Answer: b", 0).score == 0.0
    g = task.grade(math_item, "I think B", 0)
    assert (g.score, g.extracted, g.label) == (0.0, None, "no_answer")


def test_simple_evals_csv_columns(tmp_path):
    row = {"Question": "Q?", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "D", "Subject": "law"}
    task = make_task("mmlu", TaskOptions(path=write_jsonl(tmp_path / "mmlu.jsonl", [row])))
    (item,) = task.load()
    assert (item["choices"], item["answer"], item["subject"]) == (["a", "b", "c", "d"], "D", "law")
    assert "Q?" in task.contamination_text(item) and "c" in task.contamination_text(item)


def test_metrics_per_subject():
    task = make_task("mmlu", TaskOptions(path="unused"))
    def rows(score, subject):
        return [{"score": score, "label": "", "extracted": None, "extra": {"subject": subject}}]

    m = task.metrics([rows(1.0, "law"), rows(0.0, "law"), rows(1.0, "math")])
    assert m == pytest.approx({"accuracy": 2 / 3, "accuracy/law": 0.5, "accuracy/math": 1.0})
    assert task.metric_is_item_mean


def test_missing_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "mmlu.jsonl", [ITEMS[0], {"question": "Q", "choices": ["1", "2", "3", "4"]}])
    with pytest.raises(DataError, match=r"mmlu\.jsonl:2: .*lacks field\(s\) answer"):
        make_task("mmlu", TaskOptions(path=path)).load()


@pytest.mark.parametrize("bad", [{"answer": "E"}, {"answer": 4}, {"choices": ["1", "2", "3"]}])
def test_bad_keys_and_choices_are_data_errors(tmp_path, bad):
    path = write_jsonl(tmp_path / "mmlu.jsonl", [{**ITEMS[0], **bad}])
    with pytest.raises(DataError, match="task 'mmlu': item '0'"):
        make_task("mmlu", TaskOptions(path=path)).load()
