"""DROP (simple-evals protocol): the official F1/EM rules, extraction, few-shot prompts, items, load errors."""

import json

import pytest

from phiforge.errors import ConfigError, DataError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.drop import drop_em_f1, drop_score, normalise_span


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ITEMS = [
    {"id": "a", "passage": "The Bears scored 7 points; the Lions scored 10.", "question": "Who won?",
     "answers": ["Lions", "the Lions"]},
    {"id": "b", "passage": "Smith and Jones each caught a pass.", "question": "Who caught passes?",
     "answers": [["Smith", "Jones"]]},
]


@pytest.mark.parametrize("text, normalised", [
    ("The Bears", "bears"), ("5", "5.0"), ("5.0 yards", "5.0 yards"), ("$5", "5.0"), ("well-known", "well known"),
    ("A, B and C.", "b and c"),  # "a" is an article
])
def test_normalisation(text, normalised):
    assert normalise_span(text) == normalised


@pytest.mark.parametrize("predicted, gold, em, f1", [
    ("Lions", "the Lions", 1.0, 1.0),  # articles
    ("Lions.", "Lions", 1.0, 1.0),  # punctuation
    ("5", "5.0", 1.0, 1.0),  # numbers compare as floats
    ("5 yards", "5", 0.0, 0.6667),
    ("12 yards", "10 yards", 0.0, 0.0),  # a gold number must appear in the prediction for any credit
    ("Detroit Lions", "Lions", 0.0, 0.6667),
    (["Jones", "Smith"], ["Smith", "Jones"], 1.0, 1.0),  # multi-span: order does not matter
    (["Smith"], ["Smith", "Jones"], 0.0, 0.5),  # one of two spans
    ("Smith and Jones", ["Smith", "Jones"], 0.0, 0.25),  # one predicted bag aligns with one gold span only
    (["Smith", "Jones", "Brown"], ["Smith", "Jones"], 0.0, 0.6667),
    ("", "Lions", 0.0, 0.0),
])
def test_drop_em_f1(predicted, gold, em, f1):
    assert drop_em_f1(predicted, gold) == (em, pytest.approx(f1, abs=1e-4))


def test_alignment_is_optimal_not_greedy():
    # pairs: ("x y z", "x y") 0.8, ("x y z", "z") 0.5, ("x", "x y") 0.667, ("x", "z") 0. Taking the best pair
    # first totals 0.8; the best one-to-one matching totals 0.667 + 0.5.
    em, f1 = drop_em_f1(["x y z", "x"], ["x y", "z"])
    assert f1 == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-4)
    many = [f"span{i}" for i in range(12)]  # beyond 8 spans the matching is greedy
    assert drop_em_f1(many[::-1], many) == (1.0, 1.0)


def test_best_over_acceptable_answers():
    assert drop_score("Lions", ["Bears", "the Lions", ""]) == (1.0, 1.0)
    assert drop_score("anything", ["", "  "]) == (0.0, 0.0)


def make(tmp_path, rows=ITEMS, **options):
    return make_task("drop", TaskOptions(path=write_jsonl(tmp_path / "drop.jsonl", rows), **options))


def test_grade_reads_the_answer_line_else_scores_the_whole_response(tmp_path):
    task = make(tmp_path)
    lions, catchers = task.load()
    g = task.grade(lions, "The Lions had 10 > 7.\nAnswer: the Lions", 0)
    assert (g.score, g.extracted, g.label, g.extra) == (1.0, "the Lions", "exact_match", {"em": 1.0})
    g = task.grade(lions, "Lions", 0)  # no Answer line: simple-evals scores the whole response
    assert (g.score, g.extracted) == (1.0, None)
    g = task.grade(catchers, "Answer: Smith", 0)
    assert (g.score, g.label) == (pytest.approx(0.5), "partial")
    assert task.grade(lions, "Answer: Bears", 0).label == "incorrect"
    rows = [[{"score": 1.0, "label": "exact_match"}], [{"score": 0.5, "label": "partial"},
                                                       {"score": 0.0, "label": "incorrect"}]]
    assert task.metrics(rows) == pytest.approx({"f1": 0.625, "em": 0.5})
    assert task.primary_metric == "f1" and task.metric_is_item_mean


def test_zero_shot_prompt(tmp_path):
    task = make(tmp_path)
    (message,) = task.prompt(task.load()[0], 0)
    text = message["content"]
    assert "# Examples" not in text and "# Your Task" in text
    assert "Passage: The Bears scored 7 points; the Lions scored 10.\nQuestion: Who won?\nAnswer:" in text
    assert text.endswith('"Answer: $ANSWER".')
    assert "Who won?" in task.contamination_text(task.load()[0])


def test_few_shot_examples_from_a_file(tmp_path):
    shots = [{"id": f"s{i}", "passage": f"Passage number {i}.", "question": f"Q{i}?", "answers": [f"ans{i}"]}
             for i in range(5)]
    shots_path = write_jsonl(tmp_path / "train.jsonl", shots)
    task = make(tmp_path, few_shot=2, params={"examples_path": shots_path})
    item = task.load()[0]
    text = task.prompt(item, 0)[0]["content"]
    assert "# Examples" in text and text.count("Passage number") == 2
    assert text == task.prompt(item, 1)[0]["content"]  # fixed per item and seed
    assert text.index("# Examples") < text.index("Passage number") < text.index("# Your Task")
    default = make(tmp_path, params={"examples_path": shots_path})
    assert default.n_few_shot == 3 and default.prompt(item, 0)[0]["content"].count("Passage number") == 3
    with pytest.raises(ConfigError, match="needs params.examples_path"):
        make(tmp_path, few_shot=3)
    with pytest.raises(DataError, match="fewer than few_shot"):
        make(tmp_path, few_shot=9, params={"examples_path": shots_path}).prompt(item, 0)


def test_simple_evals_layout(tmp_path):
    row = {"context": "Passage: P.\nQuestion: How many?\nAnswer:", "completion": " 3", "ref_text": "3|three"}
    task = make(tmp_path, rows=[row])
    (item,) = task.load()
    assert item["answers"] == ["3", "three"] and item["shown_answer"] == "3"
    assert task.grade(item, "Answer: three", 0).score == 1.0


def test_hugging_face_layout_and_numeric_answers(tmp_path):
    rows = [{"passage": "p", "question": "Who?", "answers_spans": {"spans": ["Smith", "Jones"], "types": ["span"] * 2}},
            {"passage": "p", "question": "How many?", "answers_spans": {"spans": ["3"], "types": ["number"]}}]
    assert [it["answers"] for it in make(tmp_path, rows=rows).load()] == [[["Smith", "Jones"]], ["3"]]
    (item,) = make(tmp_path, rows=[ITEMS[0] | {"answers": [7, "seven"]}]).load()
    assert item["answers"] == ["7", "seven"]


def test_missing_field_names_file_and_line(tmp_path):
    rows = [ITEMS[0], {"id": "c", "passage": "p", "question": "q"}]
    with pytest.raises(DataError, match=r"drop\.jsonl:2: .*lacks field\(s\) answers"):
        make(tmp_path, rows=rows).load()
    with pytest.raises(DataError, match="no non-empty answer"):
        make(tmp_path, rows=[ITEMS[0] | {"answers": [""]}]).load()
