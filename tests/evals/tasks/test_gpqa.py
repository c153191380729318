"""GPQA (simple-evals protocol): per-repeat option shuffles that are deterministic and keyed right."""

import json
import re

import pytest

from phiforge.errors import DataError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.gpqa import extract_gpqa_letter


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ITEM = {"id": "q1", "question": "Which particle mediates the strong force?", "correct_answer": "gluon",
        "incorrect_answers": ["photon", "W boson", "graviton"]}


def make(tmp_path, seed=0, rows=(ITEM,)):
    path = write_jsonl(tmp_path / f"gpqa{seed}.jsonl", list(rows))
    task = make_task("gpqa", TaskOptions(path=path, seed=seed))
    return task, task.load()[0]


def shown_options(task, item, repeat):
    text = task.prompt(item, repeat)[0]["content"]
    return dict(re.findall(r"^([A-D])\) (.*)$", text, flags=re.M))


@pytest.mark.parametrize("response, letter", [
    ("Thinking...\nAnswer: C", "C"),
    ("answer:B", "B"),
    ("Answer: $D$", "D"),
    ("Answer: A then Answer: B", "A"),  # first match
    ("ANSWER: d", "d"),  # kept as written: scores 0 as in simple-evals
    ("Answer:\nC", None),  # only spaces/tabs may separate the colon and the letter
    ("**Answer:** C", None),  # GPQA reads the raw response (no markup stripping)
    ("The answer is C", None),
])
def test_letter_extraction(response, letter):
    assert extract_gpqa_letter(response) == letter


def test_ten_repeats_by_default(tmp_path):
    task, _ = make(tmp_path)
    assert (task.n_repeats, task.sampling_temperature, task.n_max_tokens) == (10, 0.5, 2048)


def test_shuffle_is_deterministic_and_varies_by_repeat_and_seed(tmp_path):
    task, item = make(tmp_path)
    orders = [tuple(shown_options(task, item, k).values()) for k in range(10)]
    assert orders == [tuple(shown_options(task, item, k).values()) for k in range(10)]  # same again
    assert all(sorted(o) == sorted(["gluon", "photon", "W boson", "graviton"]) for o in orders)
    assert len(set(orders)) > 1  # repeats see different orders
    other, item2 = make(tmp_path, seed=1)
    assert [tuple(shown_options(other, item2, k).values()) for k in range(10)] != orders


def test_key_letter_follows_the_shuffle(tmp_path):
    task, item = make(tmp_path)
    for k in range(10):
        right = next(letter for letter, text in shown_options(task, item, k).items() if text == "gluon")
        wrong = next(letter for letter in "ABCD" if letter != right)
        g = task.grade(item, f"Answer: {right}", k)
        assert (g.score, g.label, g.extracted, g.extra["key"]) == (1.0, "correct", right, right)
        assert task.grade(item, f"Answer: {wrong}", k).label == "incorrect"
        assert task.grade(item, "no idea", k).label == "no_answer"


def test_release_column_names(tmp_path):
    row = {"Question": " Q? ", "Correct Answer": "yes\n", "Incorrect Answer 1": "no", "Incorrect Answer 2": "maybe",
           "Incorrect Answer 3": "never", "Record ID": "r1"}
    task, item = make(tmp_path, rows=[row])
    assert (item["question"], item["correct_answer"], item["incorrect_answers"]) == ("Q?", "yes",
                                                                                     ["no", "maybe", "never"])
    assert "never" in task.contamination_text(item)


def test_missing_field_names_file_and_line(tmp_path):
    bad = {k: v for k, v in ITEM.items() if k != "incorrect_answers"} | {"id": "q2"}
    path = write_jsonl(tmp_path / "gpqa.jsonl", [ITEM, bad])
    with pytest.raises(DataError, match=r"gpqa\.jsonl:2: .*incorrect_answers"):
        make_task("gpqa", TaskOptions(path=path)).load()
    path = write_jsonl(tmp_path / "gpqa.jsonl", [ITEM | {"incorrect_answers": ["x", "y"]}])
    with pytest.raises(DataError, match="exactly 3 incorrect answers"):
        make_task("gpqa", TaskOptions(path=path)).load()
