"""Rewrite and augment (report §2.2): kinds, notes, answer verification, rejection sampling, executor, real teacher."""

import random
import re

import pytest
from pydantic import ValidationError

from phiforge.data import tinymath
from phiforge.dataflow import LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.errors import ConfigError
from phiforge.synth.rewrite import PassageRewriter, PassageRewriterConfig, final_answer
from phiforge.testing.scripted import ScriptedBackend

PROBLEM = tinymath.Problem("Sam", "apples", 5, (("+", 7),))  # 5 + 7 = 12
POST = "[thread] sam had 5 apples then +7. how many now?\n> anon: its 13"
SOLUTION = ("Exercise: Sam has 5 apples. Then Sam buys 7 more. How many apples does Sam have now?\n"
            "Solution:\nSam starts with 5.\n5 + 7 = 12.\nAnswer: 12")


class CutBackend(ScriptedBackend):
    """Replies containing ``[cut]`` come back as truncated by max_tokens."""

    def sample(self, prompts, params, progress=None):
        result = super().sample(prompts, params, progress)
        for completions in result.completions:
            for c in completions:
                if "[cut]" in c.text:
                    c.finish_reason = "length"
        return result


def kind_of(text):
    for marker, kind in (("study notes", "plan"), ("ONE\nself-contained exercise", "exercise"),
                         ("self-contained discussion", "discussion"), ("structured reasoning task", "reasoning_task")):
        if marker in text:
            return kind
    return "other"


def scripted(text, k):
    kind = kind_of(text)
    if kind == "plan":
        return "" if "no notes" in text else "1. Sam has 5 apples and gets 7 more: 5 + 7 = 12."
    if kind == "exercise":
        if "wrong teacher" in text:
            return SOLUTION.replace("Answer: 12", "Answer: 13")
        if "no answer" in text:
            return SOLUTION.replace("Answer: 12", "So that is it, all done.")
        return SOLUTION.replace("Answer: 12", "**Answer:** 12 apples") if "bold" in text else SOLUTION
    if kind == "discussion":
        return "Adding counts: when you gain items you add them, so 5 apples plus 7 apples make 12 apples."
    return "too short"


def run(step, records):
    ctx = StepContext(step.name)
    return list(step.run(iter(records), ctx)), ctx


# --------------------------------------------------------------------------- helpers and config


@pytest.mark.parametrize("text, answer", [
    ("steps\nAnswer: 12", "12"),
    ("**Answer:** 12 apples.", "12"),
    ("Final answer: \\frac{1}{2}", "\\frac{1}{2}"),
    ("Answer: 3\nmore\nAnswer: -4", "-4"),
    ("the answer is 7", None),
    ("ANSWER = 1,200 dollars", "1,200"),
])
def test_final_answer_reads_the_last_answer_line(text, answer):
    assert final_answer(text) == answer


def test_config_validates_kinds_and_templates():
    with pytest.raises(ValidationError, match="no template"):
        PassageRewriterConfig(kinds=["poem"])
    with pytest.raises(ValidationError, match="duplicates"):
        PassageRewriterConfig(kinds=["exercise", "exercise"])
    with pytest.raises(ValidationError):
        PassageRewriterConfig(n=0)
    with pytest.raises(ConfigError, match="placeholders"):
        PassageRewriter(PassageRewriterConfig(kinds=["x"], templates={"x": "qa_pairs"}),
                        ScriptedBackend(scripted))


# --------------------------------------------------------------------------- the step


def test_every_kind_is_written_and_exercises_are_verified():
    be = ScriptedBackend(scripted)
    step = PassageRewriter(PassageRewriterConfig(), be)
    seeds = [Record("good", POST, metadata={"answer": 12}),
             Record("wrong", POST + " wrong teacher", metadata={"answer": 12}),
             Record("noans", POST + " no answer", metadata={"answer": "12"}),
             Record("empty", " ")]
    out, ctx = run(step, seeds)
    assert [r.id for r in out] == ["good/exercise/0", "good/discussion/0", "wrong/discussion/0",
                                   "noans/discussion/0"]
    ex = out[0]
    assert ex.text == SOLUTION
    assert ex.metadata == {"answer": 12, "source_id": "good", "kind": "exercise", "sample_index": 0,
                           "verified": True, "extracted_answer": "12", "verdict": "equivalent"}
    assert out[1].metadata["verified"] is None and out[1].provenance.template_id == "rewrite_discussion"
    p = ex.provenance
    assert (p.seed_id, p.technique, p.template_id, p.template_version, p.model) == (
        "good", "rewrite", "rewrite_exercise", 1, "scripted")
    assert ctx.drops == {"empty_passage": 1, "answer_mismatch": 1, "answer_missing": 1, "output_too_short": 3}
    assert ctx.counters["seeds_expanded"] == 3 and ctx.counters["samples"] == 9 == len(out) + 5
    assert ctx.counters["model_calls"] == 3 + 9  # one batched notes call, one batched call for all kinds
    assert set(ctx.templates) == {"rewrite_plan@1", "rewrite_exercise@1", "rewrite_discussion@1",
                                  "rewrite_reasoning_task@1"}
    exercise_prompt = next(t for t in be.prompts if kind_of(t) == "exercise")
    assert "Notes from a first reading" in exercise_prompt and "5 + 7 = 12" in exercise_prompt
    assert POST in exercise_prompt


def test_rejection_sampling_keeps_only_verified_samples():
    replies = [SOLUTION.replace("12", "13"), SOLUTION, SOLUTION, SOLUTION.replace("Sam starts", "We start")]
    be = ScriptedBackend(lambda text, k: replies[k])
    cfg = PassageRewriterConfig(kinds=["exercise"], plan_first=False, n=4)
    out, ctx = run(PassageRewriter(cfg, be), [Record("s", POST, metadata={"answer": 12})])
    assert [r.id for r in out] == ["s/exercise/1", "s/exercise/3"] and all(r.metadata["verified"] for r in out)
    assert ctx.drops == {"answer_mismatch": 1, "duplicate_sample": 1} and ctx.counters["verified"] == 2
    assert ctx.counters["model_calls"] == 1 and "Notes from" not in be.prompts[0]
    out, ctx = run(PassageRewriter(cfg.model_copy(update={"max_kept_per_kind": 1}), be),
                   [Record("s", POST, metadata={"answer": 12})])
    assert [r.id for r in out] == ["s/exercise/1"] and ctx.drops["over_limit"] == 1


def test_answer_key_reference_rules_and_unverified_seeds():
    be = ScriptedBackend(scripted)
    cfg = PassageRewriterConfig(kinds=["exercise"], plan_first=False, answer_key="gold")
    out, ctx = run(PassageRewriter(cfg, be), [Record("a", POST + " bold", metadata={"gold": "12"}),
                                              Record("b", POST, metadata={"answer": 99})])
    assert [(r.id, r.metadata["verified"]) for r in out] == [("a/exercise/0", True), ("b/exercise/0", None)]
    strict = cfg.model_copy(update={"require_reference": True, "kinds": ["exercise", "discussion"]})
    out, ctx = run(PassageRewriter(strict, be), [Record("b", POST)])
    assert [r.id for r in out] == ["b/discussion/0"] and ctx.counters["skipped_no_reference"] == 1
    only_ex = cfg.model_copy(update={"require_reference": True})
    out, ctx = run(PassageRewriter(only_ex, be), [Record("b", POST)])
    assert out == [] and ctx.drops == {"no_reference_answer": 1}


def test_rambling_without_the_layout_or_answer_line_is_not_verified():
    """A weak teacher's "the answer is 12" in free text must not pass as a verified solution."""
    replies = ["I like apples. The answer is 12, I think, because apples are nice.",
               "Exercise: count apples.\nSolution:\nThe answer is 12.",
               "Given: 5 apples\nQuestion: how many?\nReasoning:\n1. 5 + 7 = 12\nConclusion: 12 apples."]
    be = ScriptedBackend(lambda text, k: replies[k])
    cfg = PassageRewriterConfig(kinds=["exercise"], plan_first=False, n=3)
    out, ctx = run(PassageRewriter(cfg, be), [Record("s", POST, metadata={"answer": 12})])
    assert out == [] and ctx.drops == {"layout_missing": 2, "answer_missing": 1}
    cfg = PassageRewriterConfig(kinds=["reasoning_task"], plan_first=False, n=3)
    out, ctx = run(PassageRewriter(cfg, be), [Record("s", POST, metadata={"answer": 12})])
    assert [r.id for r in out] == ["s/reasoning_task/2"] and out[0].metadata["verified"] is None


def test_truncated_and_empty_notes():
    be = CutBackend(lambda text, k: "" if kind_of(text) == "plan" else ("[cut] " if k else "") + SOLUTION)
    cfg = PassageRewriterConfig(kinds=["exercise"], n=2)
    out, ctx = run(PassageRewriter(cfg, be), [Record("s", POST, metadata={"answer": 12})])
    assert [r.id for r in out] == ["s/exercise/0"] and ctx.drops == {"truncated_output": 1}
    assert ctx.counters["plan_empty"] == 1 and "Notes from" not in be.prompts[-1]
    keep_cut = cfg.model_copy(update={"drop_truncated": False})
    out, ctx = run(PassageRewriter(keep_cut, be), [Record("s", POST, metadata={"answer": 12})])
    assert len(out) == 2


def test_the_original_exercise_template_can_be_used():
    be = ScriptedBackend(lambda text, k: SOLUTION)
    cfg = PassageRewriterConfig(kinds=["exercise"], templates={"exercise": "rewrite_as_exercise"}, plan_first=False,
                                difficulty="easy", required_markers={})
    out, ctx = run(PassageRewriter(cfg, be), [Record("s", POST, metadata={"answer": 12})])
    assert out[0].provenance.template_id == "rewrite_as_exercise" and "easy exercise" in be.prompts[0]


def posted_answer(post: str) -> int:
    """The (possibly wrong) answer a tinymath web post's reply gives."""
    return int(re.findall(r"-?\d+", post.split(">")[-1])[-1])


def test_tinymath_web_posts_become_verified_step_by_step_solutions():
    """The tiny recipe's use: noisy (often wrong) forum posts -> clean solutions checked against the truth."""
    rng = random.Random(0)
    problems = [tinymath.sample_problem(rng) for _ in range(6)]
    posts = {tinymath.web_doc(p, random.Random(i), wrong_rate=0.5): p for i, p in enumerate(problems)}

    def teacher(text, k):  # a "careful" sample 0 that recomputes, a "lazy" sample 1 that copies the post
        post = next(d for d in posts if d in text)
        p = posts[post]
        if k == 0:
            return f"Exercise: {tinymath.question_text(p)}\nSolution:\n{tinymath.solution_text(p)}"
        copied = posted_answer(post)
        return f"Exercise: {tinymath.question_text(p)}\nSolution:\nIt is {copied}.\nAnswer: {copied}"

    seeds = [Record(f"web-{i}", d, metadata={"answer": p.answer}) for i, (d, p) in enumerate(posts.items())]
    cfg = PassageRewriterConfig(kinds=["exercise"], plan_first=False, n=2)
    out, ctx = run(PassageRewriter(cfg, ScriptedBackend(teacher)), seeds)
    wrong_posts = sum(p.answer != posted_answer(d) for d, p in posts.items())
    assert 0 < wrong_posts < len(posts)
    assert all(tinymath.extract_answer(r.text) == r.metadata["answer"] for r in out)
    assert ctx.drops.get("answer_mismatch", 0) == wrong_posts
    assert ctx.drops.get("duplicate_sample", 0) == 0 and len(out) == 2 * len(posts) - wrong_posts


# --------------------------------------------------------------------------- executor


def test_local_executor_writes_rewrites_and_mismatches(tmp_path):
    seeds = [Record("a", POST, metadata={"answer": 12}), Record("b", POST + " wrong teacher", metadata={"answer": 12}),
             Record("c", POST, metadata={"answer": 12})]
    write_shards(seeds, tmp_path / "in", records_per_shard=2)
    step = PassageRewriter(PassageRewriterConfig(kinds=["exercise", "discussion"]), ScriptedBackend(scripted))
    stats = LocalExecutor([step], input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), workers=1,
                          progress=False).run()
    out = sorted(read_records(tmp_path / "out"), key=lambda r: r.id)
    assert [r.id for r in out] == ["a/discussion/0", "a/exercise/0", "b/discussion/0", "c/discussion/0",
                                   "c/exercise/0"]
    dropped = [(rec.id, reason, rec.metadata["extracted_answer"]) for rec, reason, _ in
               read_dropped(tmp_path / "out" / "dropped")]
    assert dropped == [("b/exercise/0", "answer_mismatch", "13")]
    assert stats["drop_reasons"] == {"answer_mismatch": 1} and stats["records_out"] == 5
    assert set(stats["templates"]) == {"rewrite_plan@1", "rewrite_exercise@1", "rewrite_discussion@1"}


# --------------------------------------------------------------------------- the real teacher


def test_real_teacher_runs_end_to_end(teacher):
    rng = random.Random(3)
    problems = [tinymath.sample_problem(rng) for _ in range(2)]
    seeds = [Record(f"web-{i}", tinymath.web_doc(p, rng, 0.0), metadata={"answer": p.answer})
             for i, p in enumerate(problems)]
    cfg = PassageRewriterConfig(kinds=["exercise"], plan_first=True, plan_max_tokens=24, n=2, max_tokens=48,
                                min_chars=10)
    out, ctx = run(PassageRewriter(cfg, teacher), seeds)
    assert ctx.counters["seeds_expanded"] == 2 and ctx.counters["samples"] == 4
    assert ctx.counters["samples"] == len(out) + sum(ctx.drops.values())
    assert set(ctx.drops) <= {"truncated_output", "output_too_short", "duplicate_sample", "layout_missing",
                              "answer_missing", "answer_mismatch"}
    assert all(r.metadata["verified"] is True for r in out)
    print("\nreal teacher rewrite:", {"kept": len(out), **ctx.drops}, ctx.counters)


def test_step_pickles_with_a_recipe_model_ref():
    import pickle

    from phiforge.recipe.schema import ModelRef

    step = pickle.loads(pickle.dumps(PassageRewriter(PassageRewriterConfig(), ModelRef())))
    assert set(step.kind_templates) == {"exercise", "discussion", "reasoning_task"}
