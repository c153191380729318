"""Multi-agent conversations from snippets (App. D.1.3): scripted logic, the real teacher, the executor."""

import json
import re

import pytest
from pydantic import ValidationError

from phiforge.dataflow import LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.synth.conversation import (DEFAULT_MOVES, MultiAgentConversation, MultiAgentConversationConfig,
                                         clean_turn, revised_message)
from phiforge.testing.scripted import ScriptedBackend

PROFILES = json.dumps({"participants": [{"name": "Ana", "role": "a chemist", "style": "dry"},
                                        {"name": "Ben", "role": "a pupil", "style": "eager"}]})


class CountingBackend(ScriptedBackend):
    def __init__(self, reply, name="scripted"):
        super().__init__(reply, name)
        self.batch_sizes = []

    def sample(self, prompts, params, progress=None):
        self.batch_sizes.append(len(prompts))
        return super().sample(prompts, params, progress)


def speaker(text):
    return re.search(r"You are (.+?), ", text).group(1)


def turn_number(text):
    """Turns already in the prompt's transcript (the drafted turn's index)."""
    if "The conversation so far:\n" not in text:
        return 0
    transcript = text.split("The conversation so far:\n")[1].split("\n\nWrite your")[0].split("\n\nYour draft")[0]
    return len(re.findall(r"^[^:\n]+: (?:draft|revised) ", transcript, re.MULTILINE))


def scripted(profiles=PROFILES, revise=True, empty_at=None):
    """Drafts say 'draft <speaker> <turn>'; revisions say 'revised ...'; turn ``empty_at`` comes back empty."""
    def reply(text, k):
        if "Invent" in text:
            return profiles
        t = turn_number(text)
        if empty_at is not None and t == empty_at and "snippet X" in text:
            return "   "
        if "REVISED MESSAGE" in text:
            draft = text.split("<<<\n")[1].split("\n>>>")[0]
            return f"ASSESSMENT: fine\nBEST NEXT MOVE: go on\nREVISED MESSAGE:\n{draft.replace('draft', 'revised')}" \
                if revise else "I like it."
        return f"{speaker(text)}: draft {speaker(text)} {t}"
    return reply


def run(step, records):
    drops = []
    ctx = StepContext("conv", sink=lambda rec, reason, step: drops.append((rec.id, reason)))
    return list(step.run(iter(records), ctx)), ctx, drops


def test_conversation_alternates_agents_and_revises_every_turn():
    be = CountingBackend(scripted())
    cfg = MultiAgentConversationConfig(turns=4)
    out, ctx, _ = run(MultiAgentConversation(cfg, be), [Record("s0", text="snippet A"), Record("s1", text="snippet B")])
    assert [r.id for r in out] == ["s0/conversation", "s1/conversation"]
    r = out[0]
    assert [m["role"] for m in r.messages] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in r.messages] == ["revised Ana 0", "revised Ben 1", "revised Ana 2", "revised Ben 3"]
    assert r.metadata["agents"] == ["Ana", "Ben", "Ana", "Ben"] and r.metadata["profiles_source"] == "generated"
    assert r.metadata["revised_turns"] == 4 and r.metadata["moves"][0] is None
    assert all(m in DEFAULT_MOVES for m in r.metadata["moves"][1:])
    p = r.provenance
    assert (p.seed_id, p.technique, p.template_id, p.model) == ("s0", "conversation",
                                                                 "conversation_turn", "scripted")
    # one call per stage for the whole batch: profiles, then (turn, revision) x 4
    assert be.batch_sizes == [2] * 9
    assert ctx.counters["turns_generated"] == 8 and ctx.counters["revisions"] == 8
    assert ctx.templates["conversation_opening@1"]["renders"] == 2


def test_agents_see_profile_transcript_and_move():
    be = ScriptedBackend(scripted())
    run(MultiAgentConversation(MultiAgentConversationConfig(turns=3, revisions_per_turn=0), be),
        [Record("s", text="snippet A")])
    third = [p for p in be.prompts if "The conversation so far" in p and "REVISED" not in p][-1]
    assert "You are Ana, a chemist. Your tone and style: dry." in third and "Ben (a pupil)" in third
    assert "Ana: draft Ana 0\n\nBen: draft Ben 1" in third and "snippet A" in third
    assert any(move in third for move in DEFAULT_MOVES)


def test_zero_or_two_revisions_per_turn():
    be = CountingBackend(scripted())
    out, ctx, _ = run(MultiAgentConversation(MultiAgentConversationConfig(turns=2, revisions_per_turn=0), be),
                      [Record("s", text="snippet A")])
    assert out[0].messages[1]["content"] == "draft Ben 1" and "revisions" not in ctx.counters
    assert len(be.batch_sizes) == 3
    out, ctx, _ = run(MultiAgentConversation(MultiAgentConversationConfig(turns=2, revisions_per_turn=2),
                                             ScriptedBackend(scripted())), [Record("s", text="snippet A")])
    assert out[0].messages[0]["content"] == "revised Ana 0" and ctx.counters["revisions"] == 4


def test_unparsable_revision_keeps_the_draft():
    out, ctx, _ = run(MultiAgentConversation(MultiAgentConversationConfig(turns=2), ScriptedBackend(scripted(
        revise=False))), [Record("s", text="snippet A")])
    assert [m["content"] for m in out[0].messages] == ["draft Ana 0", "draft Ben 1"]
    assert ctx.counters["revision_unparsed"] == 2 and out[0].metadata["revised_turns"] == 0


def test_profiles_from_config_or_fallback_on_invalid_json():
    cfg = MultiAgentConversationConfig(turns=2, profiles=[{"name": "Zed", "role": "a judge", "style": "terse"},
                                                          {"name": "Yan", "role": "a poet", "style": "lyrical"}])
    be = ScriptedBackend(scripted())
    out, _, _ = run(MultiAgentConversation(cfg, be), [Record("s", text="snippet A")])
    assert out[0].metadata["agents"] == ["Zed", "Yan"] and out[0].metadata["profiles_source"] == "config"
    assert not any("Invent" in p for p in be.prompts)
    out, ctx, _ = run(MultiAgentConversation(MultiAgentConversationConfig(turns=2, max_reasks=1),
                                             ScriptedBackend(scripted(profiles="no json"))),
                      [Record("s", text="snippet A")])
    assert out[0].metadata["agents"] == ["Sam", "Dr. Rivera"] and ctx.counters["profiles_fallback"] == 1
    assert out[0].metadata["profiles_source"] == "default" and ctx.counters["json_failed"] == 1


def test_empty_turns_truncate_or_drop():
    records = [Record("x", text="snippet X"), Record("a", text="snippet A"), Record("e", text="  ")]
    out, ctx, drops = run(MultiAgentConversation(MultiAgentConversationConfig(turns=6), ScriptedBackend(
        scripted(empty_at=3))), records)
    assert [(r.id, r.metadata["turns"], r.metadata["ended_early"]) for r in out] == \
        [("x/conversation", 2, True), ("a/conversation", 6, False)]  # turns 0-2, trimmed to end on a reply
    assert drops == [("e", "empty_snippet")] and ctx.counters["empty_turns"] == 1
    out, ctx, drops = run(MultiAgentConversation(MultiAgentConversationConfig(turns=6, min_turns=4), ScriptedBackend(
        scripted(empty_at=3))), records[:1])
    assert out == [] and drops == [("x", "conversation_too_short")]
    out, ctx, drops = run(MultiAgentConversation(MultiAgentConversationConfig(turns=6, truncate_on_empty=False),
                                                 ScriptedBackend(scripted(empty_at=3))), records[:2])
    assert [r.id for r in out] == ["a/conversation"] and drops == [("x", "empty_turn")]


def test_end_on_assistant_and_odd_turns():
    out, _, _ = run(MultiAgentConversation(MultiAgentConversationConfig(turns=3), ScriptedBackend(scripted())),
                    [Record("s", text="snippet A")])
    assert len(out[0].messages) == 2 and out[0].metadata["ended_early"]
    out, _, _ = run(MultiAgentConversation(MultiAgentConversationConfig(turns=3, end_on_assistant=False),
                                           ScriptedBackend(scripted())), [Record("s", text="snippet A")])
    assert [m["role"] for m in out[0].messages] == ["user", "assistant", "user"]


def test_three_agents_take_turns_in_order():
    three = json.dumps([{"name": n, "role": "r", "style": "s"} for n in ("Ana", "Ben", "Cy")])
    out, _, _ = run(MultiAgentConversation(MultiAgentConversationConfig(turns=4, num_agents=3),
                                           ScriptedBackend(scripted(profiles=three))), [Record("s", text="snippet A")])
    assert out[0].metadata["agents"] == ["Ana", "Ben", "Cy", "Ana"]


def test_config_validation():
    with pytest.raises(ValidationError, match="min_turns"):
        MultiAgentConversationConfig(turns=2, min_turns=3)
    with pytest.raises(ValidationError, match="num_agents"):
        MultiAgentConversationConfig(num_agents=3, profiles=[{"name": "A"}, {"name": "B"}])
    with pytest.raises(ValidationError, match="Extra inputs"):
        MultiAgentConversationConfig(rounds=2)
    assert MultiAgentConversationConfig().turns == 6 and MultiAgentConversationConfig().revisions_per_turn == 1


def test_clean_turn_and_revised_message():
    assert clean_turn("**Ana:** Hello.\nBen: Hi Ana!", "Ana", ["Ben"]) == "Hello."
    assert clean_turn('"Quoted reply."', "Ana", ["Ben"]) == "Quoted reply."
    assert revised_message("ASSESSMENT: ok\n**REVISED MESSAGE:**\nNew text") == "New text"
    assert revised_message("just text") is None


def test_real_teacher_end_to_end(teacher):
    cfg = MultiAgentConversationConfig(turns=2, turn_max_tokens=20, revision_max_tokens=24,
                                       profile_max_tokens=32, max_reasks=0, temperature=0.0)
    records = [Record("a", text="Water boils at 100 degrees Celsius at sea level.")]
    ctx = StepContext("conv")
    out = list(MultiAgentConversation(cfg, teacher).run(iter(records), ctx))
    assert len(out) + sum(ctx.drops.values()) == 1
    assert set(ctx.drops) <= {"empty_turn", "conversation_too_short"}
    assert ctx.counters["turns_generated"] >= 1
    for r in out:
        assert [m["role"] for m in r.messages] == ["user", "assistant"] and len(r.metadata["agents"]) == 2
    print("\nreal teacher conversation:", {"kept": len(out), **ctx.drops}, ctx.counters,
          [m["content"][:80] for r in out for m in r.messages])


def test_local_executor(tmp_path):
    write_shards([Record("x", text="snippet X"), Record("a", text="snippet A"), Record("b", text="snippet B"),
                  Record("e", text="")], tmp_path / "in", records_per_shard=2)
    step = MultiAgentConversation(MultiAgentConversationConfig(turns=6, min_turns=4, batch_size=2),
                                  ScriptedBackend(scripted(empty_at=3)))
    stats = LocalExecutor([step], input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), workers=1,
                          progress=False).run()
    assert (stats["records_in"], stats["records_out"], stats["dropped"]) == (4, 2, 2)
    assert stats["drop_reasons"] == {"conversation_too_short": 1, "empty_snippet": 1}
    assert {"conversation_profiles@1", "conversation_opening@1", "conversation_turn@1",
            "conversation_revise@1"} <= set(stats["templates"])
    out = sorted(read_records(tmp_path / "out"), key=lambda r: r.id)
    assert [r.id for r in out] == ["a/conversation", "b/conversation"] and len(out[0].messages) == 6
    assert {(rec.id, reason) for rec, reason, _ in read_dropped(tmp_path / "out" / "dropped")} == \
        {("x", "conversation_too_short"), ("e", "empty_snippet")}


def test_step_pickles_with_recipe_model_refs():
    import pickle

    from phiforge.recipe.schema import ModelRef

    models = {"teacher": ModelRef(), "critic": ModelRef()}
    step = pickle.loads(pickle.dumps(MultiAgentConversation(MultiAgentConversationConfig(turns=4), models)))
    assert step.config == MultiAgentConversationConfig(turns=4) and step.models["teacher"]._backend is None
