"""Self-revision with a critic rubric (App. D.1.2): scripted logic, the real teacher, the executor."""

import json

import pytest
from pydantic import ValidationError

from phiforge.dataflow import LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.synth.jsonask import parse_as
from phiforge.synth.revision import (READING_COMPREHENSION_RUBRIC, RubricCriterion, SelfRevision,
                                     SelfRevisionConfig, critique_schema, split_plan)
from phiforge.testing.scripted import ScriptedBackend

RUBRIC = [{"name": "Accuracy", "description": "correct", "scale_max": 5, "threshold": 4},
          {"name": "Challenge Level", "description": "hard enough", "scale_max": 3, "threshold": 2}]


class CountingBackend(ScriptedBackend):
    """Counts ``sample`` invocations (batching: one call per round per batch, not per record)."""

    def __init__(self, reply, name="scripted"):
        super().__init__(reply, name)
        self.calls = 0

    def sample(self, prompts, params, progress=None):
        self.calls += 1
        return super().sample(prompts, params, progress)


def critic_json(acc, chal):
    return json.dumps({"scores": [{"criterion": "Accuracy", "score": acc, "passed": acc >= 4, "suggestion": "fix"},
                                  {"criterion": "Challenge Level", "score": chal, "suggestion": ["a", "b"]}]})


def scripted(critic=None, draft="PLAN:\n- plan it\n\nRESULT:\nExercise v0", revise=None):
    """Author drafts 'Exercise v0', each revision bumps the version; critic passes from v`pass_at`."""
    def reply(text, k):
        if "strict reviewer" in text:
            return critic(text) if critic else critic_json(2, 1)
        if "Your previous version" in text:
            if revise is not None:
                return revise
            version = int(text.split("<<<\nExercise v")[1][0]) + 1
            return f"PLAN:\n- address critique\nRESULT:\nExercise v{version}"
        return draft
    return reply


def passes_from(version):
    def critic(text):
        v = int(text.split("<<<\nExercise v")[1][0])
        return critic_json(5, 3) if v >= version else critic_json(3, 1)
    return critic


def run(step, records):
    ctx = StepContext("self_revision")
    return list(step.run(iter(records), ctx)), ctx


def config(**kw):
    return SelfRevisionConfig(rubric=RUBRIC, **kw)


def seeds(n=3):
    return [Record(f"s{i}", text=f"Passage {i} about heat.") for i in range(n)]


def test_revises_until_the_rubric_passes_and_keeps_every_round():
    be = CountingBackend(scripted(critic=passes_from(2)))
    out, ctx = run(SelfRevision(config(), be), seeds(3))
    assert [r.id for r in out] == ["s0/self_revision", "s1/self_revision", "s2/self_revision"]
    r = out[0]
    assert r.text == "Exercise v2" and r.metadata["passed"] and r.metadata["final_round"] == 2
    assert [rd["round"] for rd in r.metadata["rounds"]] == [0, 1, 2]
    assert r.metadata["rounds"][0]["scores"] == {"Accuracy": 3, "Challenge Level": 1}
    assert r.metadata["rounds"][0]["failed"] == ["Accuracy", "Challenge Level"]
    assert r.metadata["rounds"][0]["suggestions"]["Challenge Level"] == "a; b"
    assert r.metadata["rounds"][1]["plan"] == "- address critique"
    p = r.provenance
    assert (p.seed_id, p.technique, p.template_id, p.round, p.model) == \
        ("s0", "self_revision", "revision_revise", 2, "scripted")
    # batched: draft, then (critique, revise) x 2, then the passing critique: one call each for 3 records
    assert be.calls == 6
    assert ctx.counters["critiques"] == 9 and ctx.counters["revisions"] == 6 and ctx.counters["passed_at_round_2"] == 3
    assert ctx.counters["model_calls"] == 9 and ctx.counters["model_calls_critic"] == 9
    assert ctx.templates["revision_critique@1"]["renders"] == 9


def test_critique_is_shown_to_the_author():
    be = ScriptedBackend(scripted(critic=passes_from(1)))
    run(SelfRevision(config(), be), seeds(1))
    revise_prompt = next(p for p in be.prompts if "Your previous version" in p)
    assert "- Accuracy: 3/5 (needs 4). Suggestion: fix" in revise_prompt
    assert "Challenge Level: 1/3 (needs 2)" in revise_prompt and "Passage 0 about heat." in revise_prompt
    critic_prompt = next(p for p in be.prompts if "strict reviewer" in p)
    assert "Challenge Level (score 0 to 3; 2 or more passes): hard enough" in critic_prompt


def test_never_passed_is_dropped_after_k_rounds_with_its_history():
    be = CountingBackend(scripted())
    drops = []
    ctx = StepContext("self_revision", sink=lambda rec, reason, step: drops.append((rec, reason)))
    out = list(SelfRevision(config(max_rounds=2), be).run(iter(seeds(2)), ctx))
    assert out == [] and ctx.drops == {"never_passed": 2}
    assert ctx.counters["critiques"] == 6 and ctx.counters["revisions"] == 4
    rec, _ = drops[0]
    assert [rd["round"] for rd in rec.metadata["self_revision"]["rounds"]] == [0, 1, 2]
    assert rec.metadata["self_revision"]["stopped"] == "exhausted"


def test_keep_unpassed_keeps_the_best_scored_round():
    def critic(text):
        v = int(text.split("<<<\nExercise v")[1][0])
        return critic_json(*{0: (2, 1), 1: (3, 2), 2: (1, 0)}[v])
    out, ctx = run(SelfRevision(config(max_rounds=2, keep_unpassed=True), ScriptedBackend(scripted(critic))), seeds(1))
    (r,) = out
    assert r.text == "Exercise v1" and not r.metadata["passed"] and r.metadata["final_round"] == 1
    assert r.metadata["stopped"] == "exhausted" and len(r.metadata["rounds"]) == 3
    assert r.provenance.round == 1 and ctx.counters["kept_unpassed"] == 1


def test_records_per_round():
    out, _ = run(SelfRevision(config(records_per_round=True), ScriptedBackend(scripted(passes_from(1)))), seeds(1))
    assert [(r.id, r.provenance.round, r.metadata["final"]) for r in out] == \
        [("s0/self_revision/0", 0, False), ("s0/self_revision/1", 1, True)]
    assert out[0].provenance.template_id == "revision_draft" and out[0].metadata["scores"]["Accuracy"] == 3
    assert "rounds" not in out[0].metadata and len(out[1].metadata["rounds"]) == 2


def test_invalid_critic_json_is_reasked_then_dropped():
    def critic(text):
        if "bad" in text:
            return "Looks fine to me!"
        if "could not be used" in text:  # the re-ask names the missing criterion
            assert "missing a score for criterion 'Challenge Level'" in text
            return critic_json(5, 3)
        return json.dumps([{"name": "accuracy", "score": 5}])
    records = [Record("good", text="ok"), Record("bad", text="bad passage")]
    out, ctx = run(SelfRevision(config(max_reasks=1), ScriptedBackend(scripted(critic))), records)
    assert [r.id for r in out] == ["good/self_revision"] and out[0].metadata["final_round"] == 0
    assert ctx.drops == {"critic_invalid_json": 1}
    assert ctx.counters["json_valid_after_reask"] == 1 and ctx.counters["json_failed"] == 1


def test_empty_draft_is_dropped_and_an_unmarked_reply_is_the_artifact():
    out, ctx = run(SelfRevision(config(), ScriptedBackend(scripted(passes_from(0), draft="PLAN: x\nRESULT:\n"))),
                   seeds(1))
    assert out == [] and ctx.drops == {"empty_draft": 1}
    out, ctx = run(SelfRevision(config(), ScriptedBackend(scripted(passes_from(0), draft="Exercise v0 only"))),
                   seeds(1))
    assert out[0].text == "Exercise v0 only" and ctx.counters["author_unmarked_reply"] == 1


def test_empty_revision_ends_the_loop():
    be = ScriptedBackend(scripted(revise="PLAN: nothing\nRESULT:"))
    out, ctx = run(SelfRevision(config(keep_unpassed=True), be), seeds(1))
    assert out[0].metadata["stopped"] == "empty_revision" and out[0].metadata["rounds_run"] == 1
    assert ctx.counters["empty_revision"] == 1 and ctx.counters["critiques"] == 1


def test_existing_draft_in_metadata_or_messages_is_revised_without_drafting():
    be = CountingBackend(scripted(passes_from(1)))
    records = [Record("d", text="Passage.", metadata={"draft": "Exercise v0", "task": "Write a riddle."}),
               Record("m", messages=[{"role": "user", "content": "Explain heat."},
                                     {"role": "assistant", "content": "Exercise v0"}])]
    out, ctx = run(SelfRevision(config(), be), records)
    assert "drafts_written" not in ctx.counters and be.calls == 3  # critique, revise, critique
    assert out[0].text == "Exercise v1" and out[0].metadata["task"] == "Write a riddle."
    assert out[0].metadata["source"] == "draft"
    assert out[1].text is None and out[1].messages == [{"role": "user", "content": "Explain heat."},
                                                       {"role": "assistant", "content": "Exercise v1"}]
    assert out[1].metadata["task"] == "Explain heat." and out[1].metadata["rounds"][0]["artifact"] == "Exercise v0"
    assert any("Write a riddle." in p for p in be.prompts)


def test_messages_ending_on_a_user_turn_get_a_drafted_reply():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Pose a puzzle."}]
    out, ctx = run(SelfRevision(config(), ScriptedBackend(scripted(passes_from(0)))), [Record("u", messages=chat)])
    assert out[0].messages == chat + [{"role": "assistant", "content": "Exercise v0"}]
    assert out[0].metadata["task"] == "Pose a puzzle." and ctx.counters["drafts_written"] == 1
    assert out[0].provenance.template_id == "revision_draft"


def test_critic_role_uses_its_own_model():
    author = ScriptedBackend(scripted(), name="author")
    critic = ScriptedBackend(scripted(passes_from(0)), name="critic-model")
    out, ctx = run(SelfRevision(config(), {"teacher": author, "critic": critic}), seeds(1))
    assert out[0].metadata["critic_model"] == "critic-model" and out[0].provenance.model == "author"
    assert all("strict reviewer" in p for p in critic.prompts) and len(author.prompts) == 1


def test_config_validation_and_builtin_rubrics():
    assert [c.name for c in SelfRevisionConfig(rubric="reading_comprehension").criteria()] == \
        ["External Knowledge", "Plausibility of Choices", "Challenge Level"]
    assert SelfRevisionConfig().rubric_name() == "reasoning_accuracy" and SelfRevisionConfig().max_rounds == 3
    assert "multiple-choice" in SelfRevisionConfig(rubric="reading_comprehension").default_task()
    with pytest.raises(ValidationError, match="unknown rubric"):
        SelfRevisionConfig(rubric="nope")
    with pytest.raises(ValidationError, match="distinct"):
        SelfRevisionConfig(rubric=[RUBRIC[0], RUBRIC[0]])
    with pytest.raises(ValidationError, match="exceeds scale_max"):
        RubricCriterion(name="x", description="y", scale_max=3, threshold=4)
    with pytest.raises(ValidationError, match="Extra inputs"):
        SelfRevisionConfig(max_round=2)


@pytest.mark.parametrize("reply, ok", [
    ('{"External Knowledge": 3, "Plausibility of Choices": 4, "challenge-level": 5}', True),
    ('[{"criterion": "External Knowledge", "score": 1}, {"name": "Plausibility of Choices", "score": 2},'
     ' {"criterion": "Challenge Level", "score": 1}]', True),
    ('{"critique": [{"criterion": "External Knowledge", "score": 1}]}', False),
    ('{"External Knowledge": 9, "Plausibility of Choices": 4, "Challenge Level": 5}', False),
])
def test_critique_schema_shapes(reply, ok):
    schema = critique_schema(READING_COMPREHENSION_RUBRIC)
    if ok:
        assert len(parse_as(reply, schema).scores) == 3
    else:
        with pytest.raises(ValueError, match="missing a score|outside 0..5"):
            parse_as(reply, schema)


def test_split_plan():
    assert split_plan("PLAN:\n- a\n**RESULT:**\nQ?\nA.") == ("- a", "Q?\nA.", True)
    assert split_plan("## Plan\nx\n## Result\ny") == ("x", "y", True)
    assert split_plan("Results show that...") == ("", "Results show that...", False)


def test_real_teacher_end_to_end(teacher):
    cfg = SelfRevisionConfig(max_rounds=1, max_tokens=24, critic_max_tokens=32, max_reasks=0,
                             keep_unpassed=True, temperature=0.0)
    records = [Record("a", text="Water boils at 100 degrees Celsius at sea level."),
               Record("b", text="A prime number has exactly two divisors.")]
    ctx = StepContext("self_revision")
    out = list(SelfRevision(cfg, teacher).run(iter(records), ctx))
    assert len(out) + sum(ctx.drops.values()) == 2
    assert set(ctx.drops) <= {"empty_draft", "critic_invalid_json", "never_passed"}
    assert ctx.counters["drafts_written"] == 2 and ctx.counters["model_calls"] >= 2
    for r in out:
        assert r.provenance.seed_id in ("a", "b") and r.provenance.technique == "self_revision"
        assert r.metadata["rounds"] and set(r.metadata["scores"]) == {"Factual Accuracy", "Reasoning",
                                                                       "Self-Containedness"}
    print("\nreal teacher self-revision:", {"kept": len(out), **ctx.drops}, ctx.counters)


def test_local_executor(tmp_path):
    write_shards(seeds(4), tmp_path / "in", records_per_shard=2)
    step = SelfRevision(config(max_rounds=1), ScriptedBackend(scripted(critic=lambda t: critic_json(
        5, 3) if "Passage 0" in t or "Passage 2" in t else critic_json(1, 0))))
    stats = LocalExecutor([step], input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), workers=1,
                          progress=False).run()
    assert (stats["records_in"], stats["records_out"], stats["dropped"]) == (4, 2, 2)
    assert stats["drop_reasons"] == {"never_passed": 2}
    assert {"revision_draft@1", "revision_critique@1", "revision_revise@1"} <= set(stats["templates"])
    out = sorted(read_records(tmp_path / "out"), key=lambda r: r.id)
    assert [r.id for r in out] == ["s0/self_revision", "s2/self_revision"] and out[0].provenance.round == 0
    dropped = list(read_dropped(tmp_path / "out" / "dropped"))
    assert {(rec.id, reason) for rec, reason, _ in dropped} == {("s1", "never_passed"), ("s3", "never_passed")}


def test_step_pickles_with_recipe_model_refs():
    import pickle

    from phiforge.recipe.schema import ModelRef

    models = {"teacher": ModelRef(), "critic": ModelRef()}
    step = pickle.loads(pickle.dumps(SelfRevision(SelfRevisionConfig(rubric="reading_comprehension"), models)))
    assert step.config == SelfRevisionConfig(rubric="reading_comprehension") and step.models["teacher"]._backend is None
