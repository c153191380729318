import json
import random

import pytest

from phiforge.data import tinymath
from phiforge.errors import ConfigError, DataError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.tinymath import TinyMath, TinyMathMC, mc_numbers, parse_problem


@pytest.fixture(scope="module")
def eval_items():
    return tinymath.generate(seed=7, n_textbook=0, n_web=0, n_long=0, n_eval=40, n_valid=0, web_wrong_rate=0.0)["eval"]


@pytest.fixture
def eval_path(tmp_path, eval_items):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in eval_items), encoding="utf-8")
    return str(path)


def test_textbook_and_chat_prompts(eval_path):
    base = make_task("tinymath", TaskOptions(path=eval_path))
    item = base.load()[0]
    assert base.prompt(item, 0) == tinymath.prompt_text(item["question"]) and base.chat is False
    text = make_task("tinymath", TaskOptions(path=eval_path, params={"format": "text"}))
    assert text.prompt(item, 0) == base.prompt(item, 0) and text.chat is False
    chat = make_task("tinymath", TaskOptions(path=eval_path, params={"format": "chat"}))
    assert chat.chat is True and TinyMath.chat is False
    assert chat.prompt(item, 0) == [{"role": "user", "content": item["question"]}]
    assert (base.mode, base.sampling_temperature, base.n_max_tokens, base.stop) == ("generate", 0.0, 64, ())
    with pytest.raises(ConfigError, match="params.format"):
        make_task("tinymath", TaskOptions(path=eval_path, params={"format": "qa"}))


@pytest.mark.parametrize("response, score, extracted, label", [
    (" Sam starts with 5. 5 + 3 = 8.\nAnswer: 8", 1.0, "8", "correct"),
    (" Answer: 9 Answer: 8", 0.0, "9", "incorrect"),
    (" 5 + 3 = 8.", 0.0, None, "no_answer"),
])
def test_grading_reads_the_first_answer(response, score, extracted, label):
    task = TinyMath(TaskOptions(path="x"))
    g = task.grade({"id": "a", "question": "q", "answer": 8, "steps": 2}, response, 0)
    assert (g.score, g.extracted, g.label, g.extra) == (score, extracted, label, {"steps": 2})


def test_metrics_per_step_count():
    task = TinyMath(TaskOptions(path="x"))
    groups = [[{"score": 1.0, "extra": {"steps": 1}}], [{"score": 0.0, "steps": 2}],
              [{"score": 1.0, "steps": 2}, {"score": 0.0, "steps": 2}], [{"score": 1.0, "extra": {}}]]
    assert task.metrics(groups) == {"accuracy": pytest.approx(0.625), "accuracy/steps=1": 1.0,
                                    "accuracy/steps=2": 0.25}
    assert task.primary_metric == "accuracy" and task.metric_is_item_mean


def test_string_answers_are_read_as_ints_and_bad_ones_rejected(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"question": "q", "answer": "7"}\n{"question": "r", "answer": "seven"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="'1'.*not an integer"):
        TinyMath(TaskOptions(path=str(path))).load()


def test_mc_options_are_valid_and_deterministic():
    for answer in (0, 1, 2, 5, 60):
        for i in range(20):
            options = mc_numbers(answer, f"0:eval-{i}")
            assert len(options) == 4 == len(set(options)) and answer in options
            assert all(n >= 0 and abs(n - answer) <= 3 for n in options)
            assert options == mc_numbers(answer, f"0:eval-{i}")
    golds = {mc_numbers(10, f"0:eval-{i}").index(10) for i in range(40)}
    assert golds == {0, 1, 2, 3}  # the key is not always in the same slot


def test_mc_steps_context_continues_exactly_as_the_training_document(eval_path, eval_items):
    task = make_task("tinymath_mc", TaskOptions(path=eval_path))
    assert (task.mode, task.chat, task.normalise) == ("loglik", False, False)
    for item in task.load():
        context, conts, gold = task.choices(item)
        doc = tinymath.textbook_doc(parse_problem(item))
        assert context + conts[gold] == doc and context.endswith(" =")
        assert context.startswith(tinymath.prompt_text(item["question"]) + " ")
        assert [c.split(".")[0] for c in conts] == [f" {n}" for n in item["options"]]


def test_mc_direct_context(eval_path):
    task = make_task("tinymath_mc", TaskOptions(path=eval_path, params={"context": "direct"}))
    item = task.load()[0]
    context, conts, gold = task.choices(item)
    assert context == f"Problem: {item['question']}\nSolution:\nAnswer:"
    assert conts[gold] == f" {item['answer']}" and len(conts) == 4


def test_mc_parses_every_generated_question():
    rng = random.Random(3)
    for _ in range(300):
        p = tinymath.sample_problem(rng)
        item = {"id": "x", "question": tinymath.question_text(p), "answer": p.answer}
        assert parse_problem(item) == p


def test_mc_foreign_questions_need_the_direct_context(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"question": "What is 2 + 2?", "answer": 4}\n', encoding="utf-8")
    with pytest.raises(DataError, match="context = 'direct'"):
        TinyMathMC(TaskOptions(path=str(path))).load()
    direct = TinyMathMC(TaskOptions(path=str(path), params={"context": "direct"}))
    assert direct.choices(direct.load()[0])[0] == "Problem: What is 2 + 2?\nSolution:\nAnswer:"
    with pytest.raises(ConfigError, match="params.context"):
        TinyMathMC(TaskOptions(path=str(path), params={"context": "cot"}))
