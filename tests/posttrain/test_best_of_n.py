"""BestOfN (Phi-4 report §4.1): selection, ties, re-asks, thresholds, screening, verifiers, the real teacher."""

from __future__ import annotations

import json
import pickle
import re

import pytest
from pydantic import ValidationError

from phiforge.backends.base import Completion, SampleResult
from phiforge.dataflow import LocalExecutor, Provenance, Record, read_dropped, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.errors import ConfigError
from phiforge.posttrain.best_of_n import BestOfN, BestOfNConfig, split_prompt
from phiforge.posttrain.sft import check_sft_row, read_sft_rows
from phiforge.testing.scripted import ScriptedBackend

RESPONSE = re.compile(r"Candidate reply:\n<<<\n(.*?)\n>>>", re.DOTALL)


def candidates(*texts):
    """A candidate writer whose k-th sample is ``texts[k]``."""
    return ScriptedBackend(lambda prompt, k: texts[k % len(texts)], name="writer")


def judge(scores: dict[str, object], name="judge"):
    """A judge scoring each reply by table (a non-number is sent as is: invalid JSON)."""
    def reply(prompt, k):
        score = scores[RESPONSE.search(prompt).group(1)]
        if isinstance(score, (int, float)):
            return json.dumps({"rationale": f"scored {score}", "score": score})
        return str(score)
    return ScriptedBackend(reply, name=name)


def run(step, records):
    seen = {}
    ctx = StepContext(step.name, sink=lambda r, reason, s: seen.setdefault(r.id, (reason, r)))
    return list(step.run(iter(records), ctx)), ctx, seen


def judge_prompts(backend):
    return [p for p in backend.prompts if "Candidate reply" in p]


Q = Record("q", text="What is 2 + 2?", metadata={"topic": "add"})


def test_best_candidate_is_kept_with_every_score():
    j = judge({"four": 5, "4, since 2 + 2 = 4": 9, "It is 4.": 7})
    step = BestOfN(BestOfNConfig(n_per_candidate=3), {"teacher": candidates("four", "4, since 2 + 2 = 4", "It is 4."),
                                                      "judge": j})
    (out,), ctx, _ = run(step, [Q])
    assert out.id == "q/best_of_n" and out.messages == [{"role": "user", "content": "What is 2 + 2?"},
                                                        {"role": "assistant", "content": "4, since 2 + 2 = 4"}]
    info = out.metadata["best_of_n"]
    assert out.metadata["topic"] == "add" and (info["chosen"], info["chosen_role"], info["score"]) == (1, "teacher", 9)
    assert [(c["index"], c["score"], c["status"]) for c in info["candidates"]] == [(0, 5, "judged"), (1, 9, "judged"),
                                                                                  (2, 7, "judged")]
    assert info["candidates"][1]["rationale"] == "scored 9" and info["judge_model"] == "judge"
    p = out.provenance
    assert (p.seed_id, p.technique, p.template_id, p.model) == ("q", "best_of_n", "best_of_n_judge", "writer")
    assert ctx.counters["model_calls"] == 1 and ctx.counters["model_calls_judge"] == 3
    assert (ctx.counters["candidates"], ctx.counters["judged_candidates"], ctx.counters["selected"],
            ctx.counters["chosen_teacher"]) == (3, 3, 1, 1)
    assert check_sft_row(out.to_dict(), "out")["messages"] == out.messages  # a valid SFT row


def test_ties_go_to_the_first_candidate_in_role_order():
    j = judge({"a": 8, "b": 8, "c": 8, "d": 6})
    models = {"teacher": candidates("a", "b"), "policy": candidates("c", "d"), "judge": j}
    out, _, _ = run(BestOfN(BestOfNConfig(candidates=["policy", "teacher"], n_per_candidate=2), models), [Q])
    info = out[0].metadata["best_of_n"]
    assert [c["role"] for c in info["candidates"]] == ["policy", "policy", "teacher", "teacher"]
    assert out[0].messages[-1]["content"] == "c" and info["chosen"] == 0


def test_invalid_judge_json_is_reasked_then_given_up():
    asked = {}

    def reply(prompt, k):
        text = RESPONSE.search(prompt).group(1)
        asked[text] = asked.get(text, 0) + 1
        if text == "never":
            return "I like it a lot"
        return '{"score": 11}' if asked[text] == 1 else '{"rationale": "fine", "score": 6}'

    step = BestOfN(BestOfNConfig(n_per_candidate=2, max_reasks=1),
                   {"teacher": candidates("ok", "never"), "judge": ScriptedBackend(reply)})
    (out,), ctx, _ = run(step, [Q])
    assert [c["status"] for c in out.metadata["best_of_n"]["candidates"]] == ["judged", "judge_invalid_json"]
    assert out.messages[-1]["content"] == "ok" and out.metadata["best_of_n"]["score"] == 6
    assert ctx.counters["json_reasked"] == 2 and ctx.counters["json_valid_after_reask"] == 1
    assert ctx.counters["json_failed"] == 1 and ctx.counters["judge_invalid_json_candidates"] == 1
    step = BestOfN(BestOfNConfig(n_per_candidate=1, max_reasks=0),
                   {"teacher": candidates("never"), "judge": ScriptedBackend(reply)})
    out, ctx, dropped = run(step, [Q])
    assert out == [] and ctx.drops == {"judge_invalid_json": 1}
    assert dropped["q"][1].metadata["best_of_n"]["candidates"][0]["status"] == "judge_invalid_json"


def test_min_score_drops_with_the_scores_kept():
    step = BestOfN(BestOfNConfig(n_per_candidate=2, min_score=7), {"teacher": candidates("x", "y"),
                                                                   "judge": judge({"x": 3, "y": 6.5})})
    out, ctx, dropped = run(step, [Q])
    assert out == [] and ctx.drops == {"below_min_score": 1}
    reason, rec = dropped["q"]
    assert rec.id == "q" and rec.metadata["best_of_n"]["score"] == 6.5


def test_screening_leaves_out_empty_truncated_control_token_and_duplicates():
    class Truncating(ScriptedBackend):
        def sample(self, prompts, params, progress=None):
            result = super().sample(prompts, params, progress)
            out = [[Completion(c.text, c.token_ids, c.logprobs, "length" if c.text.endswith("...") else "stop")
                    for c in cs] for cs in result.completions]
            return SampleResult(out, result.usage)

    texts = ("  ", "long answer...", "x <|im_end|> y", "good", " good ", "better")
    j = judge({"good": 7, "better": 6})
    step = BestOfN(BestOfNConfig(n_per_candidate=6), {"teacher": Truncating(lambda p, k: texts[k]), "judge": j})
    (out,), ctx, _ = run(step, [Q])
    info = out.metadata["best_of_n"]
    assert [c["status"] for c in info["candidates"]] == ["empty", "truncated", "control_token", "judged",
                                                         "duplicate", "judged"]
    assert info["candidates"][4]["score"] == 7 and info["chosen"] == 3
    assert len(judge_prompts(j)) == 2  # the duplicate is not judged again
    assert {k: ctx.counters[f"{k}_candidates"] for k in ("empty", "truncated", "control_token", "duplicate")} == {
        "empty": 1, "truncated": 1, "control_token": 1, "duplicate": 1}
    step = BestOfN(BestOfNConfig(n_per_candidate=2, drop_truncated=False),
                   {"teacher": Truncating(lambda p, k: "long answer..."), "judge": judge({"long answer...": 5})})
    assert run(step, [Q])[0][0].messages[-1]["content"] == "long answer..."


def test_math_oracle_filters_before_judging():
    j = judge({"\\boxed{4}": 5, "\\boxed{5}": 10, "The answer is 4": 6})
    step = BestOfN(BestOfNConfig(n_per_candidate=3, oracle="math"),
                   {"teacher": candidates("\\boxed{4}", "\\boxed{5}", "The answer is 4"), "judge": j})
    recs = [Record("ok", text="2+2?", metadata={"answer": "4"}), Record("noref", text="2+2?"),
            Record("wrong", text="2+2?", metadata={"answer": "7"})]
    out, ctx, dropped = run(step, recs)
    assert [r.id for r in out] == ["ok/best_of_n"] and out[0].messages[-1]["content"] == "The answer is 4"
    statuses = [(c["status"], c["verdict"]) for c in out[0].metadata["best_of_n"]["candidates"]]
    assert [s for s, _ in statuses] == ["judged", "failed_verification", "judged"] and statuses[1][1]
    assert ctx.drops == {"no_reference": 1, "no_verified_candidate": 1}
    assert ctx.counters["model_calls"] == 2  # the record without a reference was never sampled
    assert len(judge_prompts(j)) == 2 and all("Reference answer" in p for p in judge_prompts(j))


def no_bad_words(record: Record, text: str) -> bool:
    """A verifier hook: module level, so the step stays picklable."""
    return "bad" not in text and record.id != "skip"


def test_callable_verifier_and_config_conflicts():
    step = BestOfN(BestOfNConfig(n_per_candidate=2, judge_sees_reference=False),
                   {"teacher": candidates("bad one", "fine one"), "judge": judge({"fine one": 4})},
                   verifier=no_bad_words)
    out, ctx, _ = run(step, [Record("a", text="Hi", metadata={"reference": "x"}), Record("skip", text="Hi")])
    assert [r.id for r in out] == ["a/best_of_n"] and ctx.drops == {"no_verified_candidate": 1}
    assert [c["verdict"] for c in out[0].metadata["best_of_n"]["candidates"]] == ["failed", "passed"]
    assert ctx.counters["verified_candidates"] == 1 and ctx.counters["failed_verification_candidates"] == 3
    assert not any("Reference answer" in p for p in step.backend("judge").prompts)
    with pytest.raises(ConfigError, match="not both"):
        BestOfN(BestOfNConfig(oracle="math"), candidates("x"), verifier=no_bad_words)
    with pytest.raises(ConfigError, match=r"\['policy'\] have no model"):
        BestOfN(BestOfNConfig(candidates=["teacher", "policy"]), candidates("x"))
    with pytest.raises(ValidationError, match="existing"):
        BestOfNConfig(candidates=["existing"])
    with pytest.raises(ValidationError, match="extra"):
        BestOfNConfig(n=4)


def test_step_pickles_with_model_refs_for_worker_processes():
    from phiforge.recipe.schema import ModelRef

    step = BestOfN(BestOfNConfig(oracle="math"), {"teacher": ModelRef(), "judge": ModelRef()})
    again = pickle.loads(pickle.dumps(step))
    assert again.config == step.config and again.verifier == step.verifier and again.models["judge"]._backend is None
    hooked = pickle.loads(pickle.dumps(BestOfN(BestOfNConfig(), {"teacher": ModelRef()}, verifier=no_bad_words)))
    assert hooked.verifier is no_bad_words


def test_prompts_from_messages_text_and_metadata_and_existing_answers():
    chat = Record("c", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                                 {"role": "assistant", "content": "Old answer."}],
                  provenance=Provenance(model="gpt-x"))
    assert split_prompt(chat) == (chat.messages[:2], "Old answer.")
    assert split_prompt(Record("m", text="ignored", metadata={"q": " Why? "}), "q") == (
        [{"role": "user", "content": "Why?"}], None)
    j = judge({"new": 5, "Old answer.": 8})
    step = BestOfN(BestOfNConfig(n_per_candidate=1, include_existing=True), {"teacher": candidates("new"), "judge": j})
    bad = Record("bad", messages=[{"role": "user", "content": "a <|im_start|> b"}])
    no_user = Record("nouser", messages=[{"role": "assistant", "content": "hello"}])
    out, ctx, _ = run(step, [chat, bad, no_user, Record("blank", text="  ")])
    assert ctx.drops == {"invalid_messages": 1, "no_prompt": 2}
    info = out[0].metadata["best_of_n"]
    assert out[0].messages == chat.messages and (info["chosen_role"], out[0].provenance.model) == ("existing", "gpt-x")
    assert "System: Be brief.\n\nUser: Hi?" in judge_prompts(j)[0]


def test_executor_output_is_read_by_sft(tmp_path):
    write_shards([Record(f"r{i}", text=f"Question {i}?") for i in range(4)], tmp_path / "in", records_per_shard=2)
    scores = {"A0": 4, "A1": 9}
    step = BestOfN(BestOfNConfig(n_per_candidate=2, min_score=5),
                   {"teacher": ScriptedBackend(lambda p, k: f"A{k}" if "Question 3" not in p else "A0"),
                    "judge": judge(scores)})
    stats = LocalExecutor([step], input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), workers=1,
                          progress=False).run()
    assert (stats["records_in"], stats["records_out"], stats["drop_reasons"]) == (4, 3, {"below_min_score": 1})
    assert "best_of_n_judge@1" in stats["templates"]
    rows = read_sft_rows(tmp_path / "out")
    assert sorted(r["id"] for r in rows) == ["r0/best_of_n", "r1/best_of_n", "r2/best_of_n"]
    assert all(r["messages"][-1] == {"role": "assistant", "content": "A1"} for r in rows)
    assert [(rec.id, reason) for rec, reason, _ in read_dropped(tmp_path / "out" / "dropped")] == [
        ("r3", "below_min_score")]


def test_real_teacher_end_to_end(teacher):
    """One prompt, two samples, the same small model as judge: the step runs; a 135M judge may fail JSON."""
    cfg = BestOfNConfig(n_per_candidate=2, max_tokens=16, judge_max_tokens=40, max_reasks=0, drop_truncated=False)
    ctx = StepContext("best_of_n")
    out = list(BestOfN(cfg, teacher).run(iter([Record("a", text="What is the capital of France?",
                                                      metadata={"answer": "Paris"})]), ctx))
    assert len(out) + sum(ctx.drops.values()) == 1
    assert set(ctx.drops) <= {"judge_invalid_json", "no_valid_candidate"}
    assert ctx.counters["candidates"] == 2 and ctx.counters["model_calls"] == 1
    assert 1 <= ctx.counters["model_calls_judge"] <= 2
    for r in out:
        assert 1 <= r.metadata["best_of_n"]["score"] <= 10 and check_sft_row(r.to_dict(), r.id)
    print("\nreal teacher best-of-n:", {"kept": len(out), **ctx.drops}, ctx.counters)
