"""Judge-guided DPO pairs (App. A.2): scripted candidates and judge, then the real teacher."""

import json
import re

import pytest
from pydantic import ValidationError

from phiforge.dataflow import LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.errors import ConfigError
from phiforge.posttrain.judge import (JudgeGuidedDPOPairs, JudgeGuidedDPOPairsConfig, JudgeVerdict,
                                      prompt_messages, text_row)
from phiforge.synth.jsonask import parse_as
from phiforge.synth.registry import build_step, config_class
from phiforge.testing.scripted import ScriptedBackend

# response text -> (accuracy, style, detail): "A" is more accurate, "B" better overall
SCORES = {"A": (5, 2, 2), "B": (4, 5, 5), "C": (3, 3, 3), "same1": (4, 4, 4), "same2": (4, 4, 4)}


def replies(prompt: str) -> tuple[str, str]:
    one = re.search(r"\[Assistant 1\]\n(.*?)\n\[End of Assistant 1\]", prompt, re.S).group(1)
    two = re.search(r"\[Assistant 2\]\n(.*?)\n\[End of Assistant 2\]", prompt, re.S).group(1)
    return one, two


def verdict(s1, s2, faults=None):
    return json.dumps({"faults": faults or {"1": ["none"], "2": [{"type": "factual error", "fault": "x"}]},
                      "faults_discussion": "compared",
                      **{k: {"1": s1[i], "2": s2[i]} for i, k in enumerate(("accuracy", "style", "detail"))}})


def fair_judge(text, k):
    one, two = replies(text)
    return "Discussion first.\n" + verdict(SCORES[one], SCORES[two])


def biased_judge(text, k):
    """Adds 1 to every score of whichever reply is shown first (position bias)."""
    one, two = replies(text)
    return verdict([min(5, s + 1) for s in SCORES[one]], SCORES[two])


def models(judge=fair_judge, **responses):
    out = {role: ScriptedBackend(lambda t, k, r=r: r[k] if isinstance(r, list) else r, name=role)
           for role, r in (responses or {"teacher": "A", "policy": "B"}).items()}
    out["judge"] = ScriptedBackend(judge, name="judge")
    return out


def run(config, models_, records=None):
    drops = []
    ctx = StepContext("judge_dpo", sink=lambda rec, reason, step: drops.append((rec, reason)))
    step = JudgeGuidedDPOPairs(config, models_)
    out = list(step.run(iter(records or [Record("p0", text="What is 2+2?")]), ctx))
    return out, ctx, drops


def test_accuracy_and_overall_labels_pick_different_winners():
    out, ctx, _ = run(JudgeGuidedDPOPairsConfig(), models())
    by_kind = {r.metadata["kind"]: r for r in out}
    assert set(by_kind) == {"judge_accuracy", "judge_overall"}
    acc, overall = by_kind["judge_accuracy"], by_kind["judge_overall"]
    assert (acc.metadata["chosen"], acc.metadata["rejected"]) == ("A", "B")
    assert (overall.metadata["chosen"], overall.metadata["rejected"]) == ("B", "A")
    assert acc.metadata["chosen_role"] == "teacher" and overall.metadata["chosen_role"] == "policy"
    assert overall.metadata["scores"]["chosen"]["overall"] == pytest.approx(14 / 3)
    assert acc.metadata["max_response_tokens"] is None and acc.messages == [{"role": "user", "content": "What is 2+2?"}]
    assert acc.metadata["judgments"][0]["verdict"]["faults"]["2"][0]["type"] == "factual error"
    assert acc.provenance.technique == "judge_dpo" and acc.provenance.template_id == "judge_pair"
    assert acc.provenance.model == "judge" and acc.provenance.seed_id == "p0"
    assert ctx.counters["pairs_accuracy"] == ctx.counters["pairs_overall"] == 1
    assert ctx.counters["model_calls_judge"] == 2  # both presentation orders
    row = text_row(acc)
    assert {"id", "kind", "messages", "chosen", "rejected", "max_response_tokens"} <= set(row)


@pytest.mark.parametrize("roles, n, pairs", [(("teacher", "policy", "gpt4t"), 1, 3), (("teacher", "policy"), 2, 6),
                                             (("teacher",), 3, 3)])
def test_any_vs_any_pairs_every_distinct_candidate(roles, n, pairs):
    texts = {"teacher": ["A", "B", "C"], "policy": ["C", "A"], "gpt4t": ["B"]}
    cfg = JudgeGuidedDPOPairsConfig(candidates=list(roles), n_per_candidate=n, pair_types=["accuracy"],
                                    swap_positions=False)
    # identical texts across roles are allowed here: they are distinct samples only if the text differs
    mods = models(**{r: texts[r] for r in roles})
    out, ctx, _ = run(cfg, mods)
    assert ctx.counters["candidates"] == len(roles) * n
    assert ctx.counters["pairs_formed"] + ctx.counters.get("identical_responses", 0) == pairs
    assert ctx.counters["pairs_judged"] == ctx.counters["pairs_formed"]
    assert len(out) + ctx.drops.get("tie_accuracy", 0) == ctx.counters["pairs_formed"]


def test_identical_responses_are_not_paired_and_the_cap_is_seeded():
    mods = models(teacher=["A", "B", "C"], policy=["A"])
    cfg = JudgeGuidedDPOPairsConfig(n_per_candidate=1, candidates=["teacher", "policy"])
    _, ctx, _ = run(cfg, mods)
    assert "identical_responses" in ctx.counters  # teacher's first sample "A" == policy's "A"
    capped = JudgeGuidedDPOPairsConfig(candidates=["teacher", "policy"], n_per_candidate=3, max_pairs_per_prompt=2,
                                       pair_types=["accuracy"])
    mods = models(teacher=["A", "B", "C"], policy=["B", "C", "A"])
    first = [r.id for r in run(capped, mods)[0]]
    again = [r.id for r in run(capped, models(teacher=["A", "B", "C"], policy=["B", "C", "A"]))[0]]
    assert first == again and run(capped, mods)[1].counters["pairs_formed"] == 2


def test_ties_are_dropped_per_type_with_a_reason():
    out, ctx, drops = run(JudgeGuidedDPOPairsConfig(), models(teacher="same1", policy="same2"))
    assert out == [] and ctx.drops == {"tie_accuracy": 1, "tie_overall": 1}
    assert ctx.counters["ties_accuracy"] == ctx.counters["ties_overall"] == 1
    assert {r.metadata["kind"] for r, _ in drops} == {"judge_accuracy", "judge_overall"}
    # a margin turns a small difference into a tie: C (3,3,3) vs same1 (4,4,4) differ by 1
    out, ctx, _ = run(JudgeGuidedDPOPairsConfig(tie_margin=1.0), models(teacher="C", policy="same1"))
    assert out == [] and ctx.drops == {"tie_accuracy": 1, "tie_overall": 1}


def test_swapped_orders_average_out_position_bias():
    """same1 and same2 score equal; a judge biased to position 1 picks a winner unless both orders are averaged."""
    one_order = JudgeGuidedDPOPairsConfig(swap_positions=False, pair_types=["accuracy"])
    out, ctx, _ = run(one_order, models(biased_judge, teacher="same1", policy="same2"))
    assert [r.metadata["chosen"] for r in out] == ["same1"] and ctx.counters["model_calls_judge"] == 1
    out, ctx, drops = run(JudgeGuidedDPOPairsConfig(pair_types=["accuracy"]),
                          models(biased_judge, teacher="same1", policy="same2"))
    assert out == [] and ctx.drops == {"tie_accuracy": 1} and ctx.counters["position_disagreements"] == 1
    scores = drops[0][0].metadata["scores"]
    assert scores["chosen"]["accuracy"] == scores["rejected"]["accuracy"] == 4.5
    assert [j["order"] for j in drops[0][0].metadata["judgments"]] == [["teacher#0", "policy#0"],
                                                                        ["policy#0", "teacher#0"]]


def test_invalid_judge_json_is_reasked_then_dropped():
    def judge(text, k):
        one, two = replies(text)
        if "C" in (one, two):
            return "I think both are fine."  # never valid
        return fair_judge(text, k) if "could not be used" in text else '{"accuracy": {"1": 5}}'
    cfg = JudgeGuidedDPOPairsConfig(candidates=["teacher", "policy", "other"], pair_types=["accuracy"], max_reasks=1)
    out, ctx, drops = run(cfg, models(judge, teacher="A", policy="B", other="C"))
    assert [(r.metadata["chosen"], r.metadata["rejected"]) for r in out] == [("A", "B")]
    assert ctx.drops == {"judge_invalid_json": 2} and ctx.counters["judge_invalid_json"] == 2
    assert ctx.counters["json_valid_after_reask"] == 2 and ctx.counters["json_failed"] == 4
    assert ctx.counters["pairs_judged"] == 1
    dropped = drops[0][0].metadata
    assert dropped["kind"] == "judge_unlabelled" and dropped["judgments"][0]["verdict"] is None


def test_judge_sees_the_reference_only_when_asked():
    records = [Record("p0", text="Capital of France?", metadata={"reference": "Paris"}),
               Record("p1", text="Capital of Peru?")]
    for on in (False, True):
        mods = models()
        _, ctx, _ = run(JudgeGuidedDPOPairsConfig(judge_sees_reference=on), mods, records)
        p0 = [p for p in mods["judge"].prompts if "France" in p]
        assert all(("[Reference answer" in p and "Paris" in p) == on for p in p0)
        assert not any("[Reference answer" in p for p in mods["judge"].prompts if "Peru" in p)
        assert ctx.counters.get("judged_without_reference", 0) == (2 if on else 0)


def test_prompt_is_the_conversation_up_to_the_last_user_turn():
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
             {"role": "assistant", "content": "old answer"}]
    assert prompt_messages(Record("x", messages=convo)) == convo[:4]
    assert prompt_messages(Record("x", messages=[{"role": "assistant", "content": "a"}])) is None
    mods = models()
    out, ctx, _ = run(JudgeGuidedDPOPairsConfig(), mods, [Record("a", messages=convo), Record("b", text="  ")])
    assert ctx.drops == {"no_prompt": 1} and all(r.messages == convo[:4] for r in out)
    assert "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello\n\nUser: 2+2?" in mods["judge"].prompts[0]


def test_too_few_candidates_drops_the_prompt():
    out, ctx, _ = run(JudgeGuidedDPOPairsConfig(), models(teacher="A", policy="  "))
    assert out == [] and ctx.drops == {"too_few_candidates": 1} and ctx.counters["empty_candidates"] == 1


@pytest.mark.parametrize("reply, ok", [
    ('{"accuracy": {"Assistant 1": 4, "Assistant 2": 2.5}, "style": {"1": 3, "2": 3}, "detail": {"1": 1, "2": 5}}',
     True),
    ('{"faults": [["none"], ["logic slip"]], "accuracy": {"1": 4, "2": 2}, "style": {"1": 3, "2": 3}, '
     '"detail": {"1": 1, "2": 5}}', True),
    ('{"accuracy": {"1": 6, "2": 2}, "style": {"1": 3, "2": 3}, "detail": {"1": 1, "2": 5}}', False),
    ('{"accuracy": {"1": 4}, "style": {"1": 3, "2": 3}, "detail": {"1": 1, "2": 5}}', False),
    ('{"accuracy": {"1": true, "2": 2}, "style": {"1": 3, "2": 3}, "detail": {"1": 1, "2": 5}}', False),
])
def test_verdict_schema(reply, ok):
    if ok:
        v = parse_as(reply, JudgeVerdict)
        assert set(v.accuracy) == {"1", "2"}
        assert all(f.type in ("logical error", "other") for fs in v.faults.values() for f in fs)
    else:
        with pytest.raises(ValueError, match="accuracy"):
            parse_as(reply, JudgeVerdict)


def test_config_errors_say_what_to_change():
    with pytest.raises(ValidationError, match="raise n_per_candidate"):
        JudgeGuidedDPOPairsConfig(candidates=["teacher", "teacher"])
    with pytest.raises(ValidationError, match="cannot make a pair"):
        JudgeGuidedDPOPairsConfig(candidates=["teacher"])
    with pytest.raises(ValidationError, match="pair_types lists a type twice"):
        JudgeGuidedDPOPairsConfig(pair_types=["accuracy", "accuracy"])
    with pytest.raises(ValidationError, match="Input should be 'accuracy' or 'overall'"):
        JudgeGuidedDPOPairsConfig(pair_types=["length"])
    with pytest.raises(ValidationError, match="Extra inputs"):
        JudgeGuidedDPOPairsConfig(swap_position=True)
    with pytest.raises(ConfigError, match=r"candidate role\(s\) \['policy'\] have no model"):
        JudgeGuidedDPOPairs(JudgeGuidedDPOPairsConfig(), {"teacher": ScriptedBackend(lambda t, k: "x")})


def test_registry_builds_the_step():
    cfg = config_class("judge_dpo").model_validate({"candidates": ["teacher", "policy"], "max_pairs_per_prompt": 3})
    step = build_step("judge_dpo", cfg, models())
    assert isinstance(step, JudgeGuidedDPOPairs) and step.config.max_pairs_per_prompt == 3


def test_local_executor_writes_pairs_and_dropped_ties(tmp_path):
    records = [Record("p0", text="Q0"), Record("p1", text="Q1")]
    write_shards(records, tmp_path / "in", records_per_shard=1)
    stats = LocalExecutor([JudgeGuidedDPOPairs(JudgeGuidedDPOPairsConfig(), models(teacher="A", policy="C"))],
                          input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), workers=1,
                          progress=False).run()
    assert stats["records_out"] == 2 and stats["drop_reasons"] == {"tie_overall": 2}
    out = sorted(read_records(tmp_path / "out"), key=lambda r: r.id)
    assert [r.metadata["kind"] for r in out] == ["judge_accuracy", "judge_accuracy"]
    assert {reason for _, reason, _ in read_dropped(tmp_path / "out" / "dropped")} == {"tie_overall"}


def test_real_teacher_end_to_end(teacher):
    cfg = JudgeGuidedDPOPairsConfig(max_tokens=12, judge_max_tokens=48, max_reasks=0, swap_positions=False)
    records = [Record("a", text="Name a primary color."), Record("b", text="What is 3 + 4?")]
    out, ctx, _ = run(cfg, {"teacher": teacher, "policy": teacher, "judge": teacher}, records)
    c = ctx.counters
    formed = c.get("pairs_formed", 0)
    assert c["candidates"] + c.get("empty_candidates", 0) == 4
    assert c.get("pairs_judged", 0) + c.get("judge_invalid_json", 0) == formed
    for kind in ("accuracy", "overall"):
        assert c.get(f"pairs_{kind}", 0) + c.get(f"ties_{kind}", 0) == c.get("pairs_judged", 0)
    assert len(out) == c.get("pairs_accuracy", 0) + c.get("pairs_overall", 0)
    for r in out:
        r.validate()
        assert r.metadata["chosen"] != r.metadata["rejected"]
    print("\nreal teacher judge:", {"kept": len(out), **ctx.drops}, c)


def test_logprob_scoring_reads_scores_off_the_digit_distribution(teacher):
    """scoring = 'logprob' (G-Eval style): valid 1-5 scores from any judge with score(), no JSON needed."""
    from phiforge.dataflow.records import Record
    from phiforge.dataflow.step import StepContext
    from phiforge.posttrain.judge import JudgeGuidedDPOPairs, JudgeGuidedDPOPairsConfig

    cfg = JudgeGuidedDPOPairsConfig(candidates=["teacher", "other"], scoring="logprob", max_tokens=8,
                                    swap_positions=False)
    step = JudgeGuidedDPOPairs(cfg, {"teacher": teacher, "other": teacher, "judge": teacher})
    ctx = StepContext("judge_dpo")
    out = list(step.run(iter([Record(id="r", text="Name a colour.")]), ctx))
    counters = ctx.stats()["counters"]
    assert counters["judge_score_calls"] == 6 and counters["pairs_judged"] == 1
    for rec in out:
        for side in ("chosen", "rejected"):
            assert all(1.0 <= v <= 5.0 for v in rec.metadata["scores"][side].values())
    assert len(out) + sum(ctx.stats()["drop_reasons"].values()) == 2  # one record or tie per pair type
