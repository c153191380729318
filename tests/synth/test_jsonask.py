"""JSON extraction, schema validation and re-asking, on a scripted backend."""

import pytest
from pydantic import BaseModel

from phiforge.dataflow.step import StepContext
from phiforge.synth.base import GenerationStep, child_id, user
from phiforge.synth.jsonask import ask_json, extract_json, parse_as
from phiforge.testing.scripted import ScriptedBackend


class Grade(BaseModel):
    score: int
    reason: str


@pytest.mark.parametrize("text, value", [
    ('{"a": 1}', {"a": 1}),
    ('Sure! Here it is:\n```json\n{"a": [1, 2]}\n```\nDone.', {"a": [1, 2]}),
    ('prefix {"a": {"b": "}"}} suffix {"c": 2}', {"a": {"b": "}"}}),
    ('[1, 2, 3]', [1, 2, 3]),
])
def test_extract_json_finds_the_first_value(text, value):
    assert extract_json(text) == value


def test_extract_json_says_what_is_wrong():
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("no json here")
    with pytest.raises(ValueError, match="does not parse"):
        extract_json('{"a": 1, "b": ')


def test_parse_as_names_the_missing_field():
    with pytest.raises(ValueError, match="reason: Field required"):
        parse_as('{"score": 3}', Grade)


def test_invalid_replies_are_reasked_with_the_error_then_given_up():
    def reply(text, k):
        if "good" in text:
            return '{"score": 5, "reason": "fine"}'
        if "late" in text:  # valid only once the error was fed back
            return '{"score": 2, "reason": "fixed"}' if "could not be used" in text else '{"score": 2}'
        return "I cannot do JSON."

    be = ScriptedBackend(reply)
    step = GenerationStep(be)
    ctx = StepContext("t")
    answers = ask_json(step, ctx, [user("good"), user("late"), user("never")], Grade,
                       step.params(temperature=0.0, max_tokens=64), max_reasks=2)
    assert answers[0].value == Grade(score=5, reason="fine") and answers[0].tries == 1
    assert answers[1].value.reason == "fixed" and answers[1].tries == 2
    assert answers[2].value is None and answers[2].tries == 3 and "no JSON" in answers[2].error
    assert ctx.counters["json_valid_first_try"] == 1 and ctx.counters["json_valid_after_reask"] == 1
    assert ctx.counters["json_failed"] == 1 and ctx.counters["json_reasked"] == 3
    assert ctx.counters["model_calls"] == 3 + 2 + 1  # batched: 3 prompts, then 2 re-asks, then 1


def test_model_handles_pickle_only_recipe_refs():
    import pickle

    from phiforge.recipe.schema import ModelRef

    with pytest.raises(TypeError, match="ModelRef"):
        pickle.dumps(GenerationStep(ScriptedBackend(lambda t, k: "")))
    step = pickle.loads(pickle.dumps(GenerationStep({"teacher": ModelRef(), "critic": ModelRef()})))
    assert set(step.models) == {"teacher", "critic"} and step.models["critic"]._backend is None


def test_child_ids_are_stable_and_bounded():
    assert child_id("seed-1", "qa", 0) == "seed-1/qa/0"
    long = child_id("x" * 200, "qa", 0)
    assert len(long) < 40 and long == child_id("x" * 200, "qa", 0)
