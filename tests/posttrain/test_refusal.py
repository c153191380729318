"""Hallucination-refusal data (App. A.1): thresholds on scripted accuracies, parsing, the real teacher."""

import re

import pytest
from pydantic import ValidationError

from phiforge.dataflow import Record
from phiforge.dataflow.step import StepContext
from phiforge.errors import ConfigError
from phiforge.posttrain.judge import text_row
from phiforge.posttrain.refusal import (KINDS, HallucinationRefusal, HallucinationRefusalConfig, parse_bogus,
                                        response_of, row_kinds)
from phiforge.synth.registry import build_step, config_class
from phiforge.testing.scripted import ScriptedBackend

SFT_C, SFT_R, SFT_B = "refusal_sft_correct", "refusal_sft_refuse", "refusal_sft_bogus"
DPO_CR, DPO_RW = "refusal_dpo_correct_over_refusal", "refusal_dpo_refusal_over_wrong"

# question -> the policy's 10 answers: RIGHT matches the key, MAYBE is "uncertain", BROKEN gets invalid JSON
PLAN = {
    "q_always": ["RIGHT"] * 10,
    "q_usually": ["RIGHT"] * 7 + ["WRONG-1", "WRONG-2", "WRONG-3"],
    "q_rarely": ["WRONG-a"] * 9 + ["RIGHT"],
    "q_uncertain": ["RIGHT"] * 4 + ["WRONG-u"] + ["MAYBE"] * 5,
    "q_empty": [""] * 10,
    "q_lowq": ["MAYBE"] * 9 + ["BROKEN"],
}
EXPECTED = {
    "q_always": {SFT_C, DPO_CR, SFT_B},
    "q_usually": {SFT_C, DPO_CR, DPO_RW, SFT_B},
    "q_rarely": {SFT_R, DPO_RW, SFT_B},
    "q_uncertain": {SFT_C, DPO_CR, DPO_RW, SFT_B},  # 4 of 5 graded: accuracy 0.8
    "q_empty": {SFT_R, SFT_B},  # empty answers count as wrong, but none can be a DPO 'rejected'
    "q_lowq": set(),  # nothing graded, bogus rated 2: dropped
}


def policy(text, k):
    question = re.search(r"(q_\w+)", text).group(1)
    return PLAN[question][k]


def checker(text, k):
    answer = re.search(r"<<<\n(.*?)\n>>>", text, re.S).group(1)
    if "BROKEN" in answer:
        return "I refuse to use JSON."
    verdict = "true" if "RIGHT" in answer else '"uncertain"' if "MAYBE" in answer else "false"
    return f"The proposed answer is compared with the key.\n{{\"matches_key\": {verdict}}}"


def teacher(correct="The answer is RIGHT."):
    def reply(text, k):
        question = re.search(r"(q_\w+)", text).group(1)
        if "Role-play an AI language model" in text:
            return f"# Response\nI'm not sure about {question}; I don't know."
        if "Answer the trivia question" in text:
            return f"# Response\n{correct}"
        if "Rewrite the trivia question" in text:
            return f"# Response\nWho founded {question}_bogus?\n# Quality\n{2 if question == 'q_lowq' else 5}"
        raise AssertionError(f"unexpected teacher prompt: {text[:80]}")
    return reply


def models(correct="The answer is RIGHT."):
    return {"policy": ScriptedBackend(policy, "policy"), "judge": ScriptedBackend(checker, "checker"),
            "teacher": ScriptedBackend(teacher(correct), "teacher")}


def run(config=None, models_=None, questions=PLAN):
    drops = []
    ctx = StepContext("hallucination_refusal", sink=lambda rec, reason, step: drops.append((rec, reason)))
    records = [Record(q, text=f"Who is {q}?", metadata={"answer": "RIGHT", "aliases": ["right"]}) for q in questions]
    step = HallucinationRefusal(config or HallucinationRefusalConfig(n_policy_samples=10), models_ or models())
    return list(step.run(iter(records), ctx)), ctx, drops


@pytest.mark.parametrize("n_correct, n_wrong, kinds", [
    (10, 0, {SFT_C, DPO_CR}), (7, 3, {SFT_C, DPO_CR, DPO_RW}), (6, 4, {DPO_CR, DPO_RW}), (5, 5, {DPO_CR, DPO_RW}),
    (2, 8, {SFT_R, DPO_CR, DPO_RW}), (1, 9, {SFT_R, DPO_RW}), (0, 10, {SFT_R, DPO_RW}), (1, 0, set()),
    (0, 0, set()),
])
def test_row_kinds_follow_the_thresholds(n_correct, n_wrong, kinds):
    assert set(row_kinds(n_correct, n_wrong, HallucinationRefusalConfig(n_policy_samples=10))) == kinds


def test_rows_per_question_match_the_policy_accuracy():
    out, ctx, drops = run()
    got = {q: {r.metadata["kind"] for r in out if r.provenance.seed_id == q} for q in PLAN}
    assert got == EXPECTED
    assert ctx.drops == {"bogus_low_quality": 1, "too_few_graded_answers": 1}
    assert {rec.metadata.get("kind", rec.id): reason for rec, reason in drops} == {
        "refusal_bogus_question": "bogus_low_quality", "q_lowq": "too_few_graded_answers"}
    assert set(KINDS) == {SFT_C, SFT_R, SFT_B, DPO_CR, DPO_RW}
    for kind in KINDS:
        assert ctx.counters[kind] == sum(kind in kinds for kinds in EXPECTED.values())
    assert ctx.counters["policy_samples"] == 60 and ctx.counters["checks"] == 50  # empty answers are not checked
    assert ctx.counters["policy_uncertain"] == 14 and ctx.counters["policy_invalid"] == 1
    assert ctx.counters["policy_empty"] == 10 and ctx.counters["no_wrong_answer_text"] == 1
    assert ctx.counters["bogus_kept"] == 5


def test_uncertain_verdicts_leave_the_denominator():
    out, _, _ = run(questions=["q_uncertain"])
    meta = out[0].metadata
    assert (meta["n_correct"], meta["n_wrong"], meta["n_uncertain"], meta["policy_accuracy"]) == (4, 1, 5, 0.8)
    dropped = run(questions=["q_lowq"])[2]
    info = next(rec for rec, reason in dropped if reason == "too_few_graded_answers").metadata["hallucination_refusal"]
    assert (info["n_uncertain"], info["n_invalid"], info["policy_accuracy"]) == (9, 1, None)


def test_dpo_rows_carry_five_tokens_and_the_right_sides():
    out, _, _ = run(questions=["q_usually"])
    rows = {r.metadata["kind"]: r for r in out}
    cr, rw = rows[DPO_CR], rows[DPO_RW]
    assert cr.messages == rw.messages == [{"role": "user", "content": "Who is q_usually?"}]
    assert (cr.metadata["chosen"], cr.metadata["rejected"]) == ("The answer is RIGHT.",
                                                                "I'm not sure about q_usually; I don't know.")
    refusal = "I'm not sure about q_usually; I don't know."
    assert (rw.metadata["chosen"], rw.metadata["rejected"]) == (refusal, "WRONG-1")
    assert rw.metadata["rejected_model"] == "policy" and cr.metadata["rejected_model"] == "teacher"
    assert cr.metadata["max_response_tokens"] == rw.metadata["max_response_tokens"] == 5
    assert rows[SFT_C].messages[-1] == {"role": "assistant", "content": "The answer is RIGHT."}
    bogus = rows[SFT_B]
    assert bogus.messages[0]["content"] == "Who founded q_usually_bogus?" and bogus.metadata["bogus_quality"] == 5
    assert bogus.provenance.template_id == "refusal_refuse" and rw.provenance.technique == "hallucination_refusal"
    row = text_row(rw)
    assert row["id"] == rw.id and row["kind"] == DPO_RW and row["max_response_tokens"] == 5
    whole = run(HallucinationRefusalConfig(n_policy_samples=10, dpo_response_tokens=None), questions=["q_usually"])[0]
    assert all(r.metadata.get("max_response_tokens", "sft") in (None, "sft") for r in whole)


def test_teacher_writes_only_what_the_rows_need():
    mods = models()
    run(HallucinationRefusalConfig(n_policy_samples=10, bogus=False), mods, questions=["q_rarely", "q_empty"])
    prompts = mods["teacher"].prompts
    assert not any("Answer the trivia question" in p for p in prompts)  # no correct rows for these
    assert sum("Role-play" in p for p in prompts) == 2 and not any("Rewrite the trivia" in p for p in prompts)


def test_bogus_quality_threshold():
    out, ctx, _ = run(HallucinationRefusalConfig(n_policy_samples=10, bogus_min_quality=1), questions=["q_lowq"])
    assert [r.metadata["kind"] for r in out] == [SFT_B] and out[0].metadata["bogus_quality"] == 2
    assert ctx.drops == {}


def test_verify_correct_answer_drops_a_wrong_teacher_answer():
    cfg = HallucinationRefusalConfig(n_policy_samples=10, verify_correct_answer=True, bogus=False)
    out, ctx, _ = run(cfg, models(correct="It was Napoleon."), questions=["q_always", "q_usually"])
    assert {r.metadata["kind"] for r in out} == {DPO_RW} and ctx.counters["teacher_answer_rejected"] == 2
    assert ctx.drops == {"no_rows_made": 1}  # q_always had only rows that need the correct answer
    out, ctx, _ = run(cfg, models(), questions=["q_always"])
    assert {r.metadata["kind"] for r in out} == {SFT_C, DPO_CR} and "teacher_answer_rejected" not in ctx.counters


def test_completion_prompts_for_a_base_policy():
    mods = models()
    run(HallucinationRefusalConfig(n_policy_samples=10, policy_prompt_style="completion"), mods, questions=["q_always"])
    assert mods["policy"].prompts == ["Question: Who is q_always?\nAnswer:"]


def test_missing_question_or_key_is_dropped():
    ctx = StepContext("r")
    step = HallucinationRefusal(HallucinationRefusalConfig(n_policy_samples=2), models())
    out = list(step.run(iter([Record("a", text=" "), Record("b", text="q_always?")]), ctx))
    assert out == [] and ctx.drops == {"no_question": 1, "no_answer_key": 1}


@pytest.mark.parametrize("reply, parsed", [
    ("# Response\nWho wrote X?\n# Quality\n4", ("Who wrote X?", 4)),
    ("**Response**\nWho wrote X?\n**Quality**: 5/5", ("Who wrote X?", 5)),
    ("## Response:\nWho wrote X?\n\n## Quality\nI rate it 3.", ("Who wrote X?", 3)),
    ("# Response\nWho wrote X?", None),
    ("Who wrote X? Quality: 4", None),
])
def test_parse_bogus(reply, parsed):
    assert parse_bogus(reply) == parsed


def test_response_sections():
    assert response_of("Sure!\n# Response\nI don't know.\n") == ("I don't know.", True)
    assert response_of("I don't know.") == ("I don't know.", False)


def test_config_errors_say_what_to_change():
    with pytest.raises(ValidationError, match="usually\n.*greater than 0.5"):
        HallucinationRefusalConfig(usually=0.5)
    with pytest.raises(ValidationError, match="sometimes\n.*less than or equal to 0.5"):
        HallucinationRefusalConfig(sometimes=0.6)
    with pytest.raises(ValidationError, match=r"min_graded \(4\) exceeds n_policy_samples \(3\)"):
        HallucinationRefusalConfig(n_policy_samples=3, min_graded=4)
    with pytest.raises(ValidationError, match="Extra inputs"):
        HallucinationRefusalConfig(n_samples=3)
    with pytest.raises(ConfigError, match=r"samples the 'policy' model.*models = \{policy = \"policy\"\}"):
        HallucinationRefusal(HallucinationRefusalConfig(), {"teacher": ScriptedBackend(teacher())})


def test_registry_builds_the_step():
    cfg = config_class("hallucination_refusal").model_validate({"n_policy_samples": 4, "usually": 0.75})
    assert isinstance(build_step("hallucination_refusal", cfg, models()), HallucinationRefusal)


def test_real_teacher_end_to_end(teacher):
    cfg = HallucinationRefusalConfig(n_policy_samples=2, min_graded=1, policy_max_tokens=8, max_tokens=32,
                                     checker_max_tokens=48, max_reasks=0)
    records = [Record("paris", text="What is the capital of France?", metadata={"answer": "Paris"}),
               Record("moon", text="Who was the first person to walk on the Moon?",
                      metadata={"answer": "Neil Armstrong", "aliases": ["Armstrong"]})]
    ctx = StepContext("hallucination_refusal")
    out = list(HallucinationRefusal(cfg, {"teacher": teacher, "policy": teacher, "judge": teacher}).run(
        iter(records), ctx))
    c = ctx.counters
    verdicts = sum(c.get(f"policy_{v}", 0) for v in ("correct", "wrong", "uncertain", "invalid", "empty"))
    assert c["policy_samples"] == verdicts == 4 and c.get("checks", 0) == 4 - c.get("policy_empty", 0)
    assert sum(c.get(k, 0) for k in (SFT_C, SFT_R, SFT_B, DPO_CR, DPO_RW)) == len(out)
    assert set(ctx.drops) <= {"too_few_graded_answers", "no_rows_made", "bogus_unparsed", "bogus_low_quality"}
    for r in out:
        r.validate()
        assert r.provenance.seed_id in ("paris", "moon")
    print("\nreal teacher refusal:", {"rows": len(out), **ctx.drops}, c)
