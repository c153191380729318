import json

import pytest

from phiforge.errors import ConfigError, DataError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.base import (FewShotGen, MCLogLik, cut_at_stop, gold_aliases, math_prediction, mc_options,
                                       normalize_text)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def mc_rows(n, subject=None):
    rows = [{"id": f"q{i}", "question": f"What is {i} + 1?", "choices": [str(i), str(i + 1), str(i + 2), "none"],
             "answer": "B"} for i in range(n)]
    if subject:
        for r in rows:
            r["subject"] = subject
    return rows


def mc_task(path, **kw):
    params = kw.pop("params", {})
    return make_task("mc_loglik", TaskOptions(path=path, params=params, **kw))


# -- MCLogLik ----------------------------------------------------------------------------------------


def test_mc_letter_layout_snapshot(tmp_path):
    path = write_jsonl(tmp_path / "mmlu.jsonl", mc_rows(3, subject="high_school_math"))
    task = mc_task(path, few_shot=2)
    items = task.load()
    assert [it["id"] for it in items] == ["q2"]  # the first 2 are the examples, not scored
    context, conts, gold = task.choices(items[0])
    assert context == (
        "The following are multiple choice questions (with answers) about high school math.\n\n"
        "What is 0 + 1?\nA. 0\nB. 1\nC. 2\nD. none\nAnswer: B\n\n"
        "What is 1 + 1?\nA. 1\nB. 2\nC. 3\nD. none\nAnswer: B\n\n"
        "What is 2 + 1?\nA. 2\nB. 3\nC. 4\nD. none\nAnswer:")
    assert conts == [" A", " B", " C", " D"] and gold == 1
    assert task.mode == "loglik" and task.chat is False and task.normalise is False


def test_mc_text_scoring_is_arc_style_and_length_normalised(tmp_path):
    path = write_jsonl(tmp_path / "arc.jsonl", mc_rows(3))
    task = mc_task(path, few_shot=1, params={"score": "text"})
    items = task.load()
    context, conts, gold = task.choices(items[0])
    assert context == "Question: What is 0 + 1?\nAnswer: 1\n\nQuestion: What is 1 + 1?\nAnswer:"
    assert conts == [" 1", " 2", " 3", " none"] and gold == 1
    assert task.normalise is True and MCLogLik.normalise is False


def test_mc_few_shot_taken_per_subject_and_excluded(tmp_path):
    rows = mc_rows(4, subject="algebra") + [dict(r, id=f"b{i}", subject="biology") for i, r in enumerate(mc_rows(3))]
    task = mc_task(write_jsonl(tmp_path / "d.jsonl", rows), few_shot=2)
    items = task.load()
    assert [it["id"] for it in items] == ["q2", "q3", "b2"]
    assert [s["id"] for s in task.shots_for(items[0])] == ["q0", "q1"]
    assert [s["id"] for s in task.shots_for(items[2])] == ["b0", "b1"]
    assert "about biology" in task.choices(items[2])[0]


def test_mc_dev_path_keeps_every_item_and_never_shows_an_item_itself(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", mc_rows(4))
    task = mc_task(path, few_shot=2, params={"dev_path": path})
    items = task.load()
    assert len(items) == 4
    assert [s["id"] for s in task.shots_for(items[0])] == ["q1", "q2"]
    assert [s["id"] for s in task.shots_for(items[3])] == ["q0", "q1"]


def test_mc_zero_shot_and_too_few_items(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", mc_rows(2))
    zero = mc_task(path, few_shot=0)
    assert len(zero.load()) == 2
    assert zero.choices(zero.load()[0])[0].endswith("\n\nWhat is 0 + 1?\nA. 0\nB. 1\nC. 2\nD. none\nAnswer:")
    with pytest.raises(DataError, match="went into the 5-shot examples"):
        mc_task(path).load()


@pytest.mark.parametrize("item, texts, gold", [
    ({"choices": ["x", "y"], "answer": 1}, ["x", "y"], 1),
    ({"choices": ["x", "y"], "answer": "a"}, ["x", "y"], 0),
    ({"A": "p", "B": "q", "C": "r", "answer": "C"}, ["p", "q", "r"], 2),
    ({"choices": {"text": ["p", "q", "r"], "label": ["1", "2", "3"]}, "answerKey": "2"}, ["p", "q", "r"], 1),
    ({"options": [str(i) for i in range(10)], "answer": "J", "answer_index": 9}, [str(i) for i in range(10)], 9),
    ({"choices": ["red", "blue"], "answer": "blue"}, ["red", "blue"], 1),
])
def test_mc_options_layouts(item, texts, gold):
    assert mc_options({"id": "x", "question": "?", **item}) == (texts, gold)


def test_mc_ten_options_get_letters_to_j(tmp_path):
    rows = [{"id": f"p{i}", "question": "q", "options": [f"o{j}" for j in range(10)], "answer": "J"} for i in range(2)]
    task = mc_task(write_jsonl(tmp_path / "pro.jsonl", rows), few_shot=1)
    context, conts, gold = task.choices(task.load()[0])
    assert conts[-1] == " J" and gold == 9 and "\nJ. o9\nAnswer: J\n\n" in context


@pytest.mark.parametrize("item, message", [
    ({"choices": ["x", "y"], "answer": "E"}, "names none"),
    ({"choices": ["x", "y"], "answer": 2}, "names none"),
    ({"choices": ["x"], "answer": 0}, "2..26 options"),
    ({"choices": ["x", "y"]}, "no key"),
    ({"answer": "A"}, "no options"),
])
def test_mc_malformed_items(item, message):
    with pytest.raises(DataError, match=message):
        mc_options({"id": "bad", "question": "?", **item})


def test_mc_bad_file_fails_at_load_and_bad_params(tmp_path):
    rows = mc_rows(3) + [{"id": "bad", "question": "?", "choices": ["x", "y"], "answer": "Z"}]
    with pytest.raises(DataError, match="'bad'"):
        mc_task(write_jsonl(tmp_path / "d.jsonl", rows), few_shot=1).load()
    with pytest.raises(ConfigError, match="params.score"):
        mc_task("x.jsonl", params={"score": "logit"})
    with pytest.raises(ConfigError, match="unknown parameter"):
        mc_task("x.jsonl", params={"match": "exact"})


def test_mc_contamination_text_includes_letter_field_options():
    task = MCLogLik(TaskOptions(path="x"))
    text = task.contamination_text({"id": "1", "question": "Q?", "A": "alpha", "B": "beta", "answer": "A"})
    assert text == "Q?\nalpha\nbeta"


# -- FewShotGen --------------------------------------------------------------------------------------


def gen_task(path, **kw):
    params = kw.pop("params", {})
    return make_task("fewshot_gen", TaskOptions(path=path, params=params, **kw))


def test_gen_prompt_snapshot_and_defaults(tmp_path):
    rows = [{"question": "Capital of France?", "answer": ["Paris", "paris, france"]},
            {"question": "2 + 2?", "answer": 4}, {"question": "Largest planet?", "answer": "Jupiter"}]
    task = gen_task(write_jsonl(tmp_path / "g.jsonl", rows), few_shot=2)
    items = task.load()
    assert [it["id"] for it in items] == ["2"]
    assert task.prompt(items[0], 0) == ("Question: Capital of France?\nAnswer: Paris\n\n"
                                        "Question: 2 + 2?\nAnswer: 4\n\nQuestion: Largest planet?\nAnswer:")
    assert (task.mode, task.chat, task.sampling_temperature, task.n_max_tokens) == ("generate", False, 0.0, 256)
    assert task.stop == ("\n\nQuestion:", "\n\n") and FewShotGen.few_shot == 4


def grade(match, answer, response, stop=None):
    params = {"match": match} if stop is None else {"match": match, "stop": stop}
    task = FewShotGen(TaskOptions(path="x", params=params))
    return task.grade({"id": "1", "question": "q", "answer": answer}, response, 0)


@pytest.mark.parametrize("match, answer, response, score, extracted", [
    ("exact", "Paris", " paris.\n\nQuestion: next", 1.0, "paris."),
    ("exact", ["The Beatles", "Beatles"], " the beatles\nmore", 1.0, "the beatles"),
    ("exact", "Paris", " Paris, France", 0.0, "Paris, France"),
    ("exact", "Paris", "   \n\nQuestion: x", 0.0, None),
    ("contains", {"value": "Jupiter", "aliases": ["planet jupiter"]}, " It is Jupiter, the largest.", 1.0,
     "It is Jupiter, the largest."),
    ("contains", "Jupiter", " Saturn\n\nQuestion: Jupiter?", 0.0, "Saturn"),
    ("math", "\\frac{1}{2}", " 0.5", 1.0, "0.5"),
    ("math", "\\frac{1}{2}", " $\\frac12$", 1.0, "$\\frac12$"),
    ("math", "Natalia sold 48/2 = 24 clips.\n#### 72", " She sold 48.\nThen 24 more, 72 in total.", 1.0, "72"),
    ("math", "72", " so the answer is \\boxed{72}.", 1.0, "72"),
    ("math", "72", " 48 + 24 = 71\n#### 71", 0.0, "71"),
    ("math", "7", " seven", 0.0, "seven"),
    ("math", "7", "", 0.0, None),
])
def test_gen_grading(match, answer, response, score, extracted):
    g = grade(match, answer, response)
    assert (g.score, g.extracted) == (score, extracted)
    assert g.label == ("no_answer" if extracted is None else "correct" if score else "incorrect")


def test_gen_stop_override_and_bad_params():
    assert grade("exact", "a b", "a b\n\nc", stop=[]).extracted == "a b"
    assert FewShotGen(TaskOptions(path="x", params={"stop": ["###"]})).stop == ("###",)
    with pytest.raises(ConfigError, match="params.stop"):
        FewShotGen(TaskOptions(path="x", params={"stop": "\n"}))
    with pytest.raises(ConfigError, match="params.match"):
        FewShotGen(TaskOptions(path="x", params={"match": "fuzzy"}))
    with pytest.raises(ConfigError, match="needs item data"):
        FewShotGen(TaskOptions())


def test_helpers():
    assert normalize_text("The  Beatles!") == "beatles"
    assert cut_at_stop("abc\n\nQuestion: d", ("\n\nQuestion:", "\n\n")) == "abc"
    assert cut_at_stop("abc", ()) == "abc"
    assert gold_aliases({"value": "X", "aliases": ["x", "X", ""]}) == ["X", "x"]
    assert gold_aliases(0) == ["0"]
    assert math_prediction("3\n4") == "4" and math_prediction("#### 5\n") == "5"
