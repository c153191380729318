"""FillInTheMiddle: span choice, attempt parsing, grading, hint rounds, tests, the executor, the real teacher."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from phiforge.dataflow import LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.synth.fim import (MISSING, FillInTheMiddle, FillInTheMiddleConfig, code_spans, grade_code, grade_text,
                                is_trivial, looks_like_code, parse_attempt, text_spans)
from phiforge.testing.scripted import ScriptedBackend

CODE = '''import math


def area(r):
    """Area of a circle of radius r."""
    return math.pi * r ** 2


def total_area(radii):
    total = 0.0
    for r in radii:
        total += area(r)
    return total


def noop():
    pass


if __name__ == "__main__": print(total_area([1, 2]))
'''

TEXT = ("The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by the company of Gustave "
        "Eiffel, and it was built from 1887 to 1889 as the centerpiece of the 1889 World's Fair. The tower is "
        "330 metres tall; it was the tallest man-made structure in the world for 41 years. Locals were critical "
        "at first.")


def run_step(step, records):
    seen = {}
    ctx = StepContext(step.name, sink=lambda r, reason, s: seen.setdefault(r.id, (reason, r)))
    out = list(step.run(iter(records), ctx))
    return out, ctx, seen


def attempt(guess: str, code: bool = True) -> str:
    body = f"```python\n{guess}\n```" if code else guess
    return ("Background: it sums areas.\nReasoning: the loop needs an accumulator.\n"
            f"**Final Guess:**\n{body}\n\nComparison: n/a")


# --------------------------------------------------------------------------- spans


def test_code_spans_are_whole_statements_and_function_bodies():
    spans = {(s.kind, s.answer(CODE)) for s in code_spans(CODE, ["statement", "function_body"])}
    assert ("function_body", "total = 0.0\nfor r in radii:\n    total += area(r)\nreturn total") in spans
    assert ("statement", "total += area(r)") in spans and ("statement", "return math.pi * r ** 2") in spans
    assert not any("pass" in a or "Area of" in a or "print" in a for _, a in spans)  # trivial, docstring, one-liner if
    assert {s.kind for s in code_spans(CODE, ["statement"])} == {"statement"}
    assert code_spans("def broken(:\n", ["statement"]) == []


def test_text_spans_carry_a_fact_or_a_number():
    spans = {(s.kind, s.answer(TEXT)) for s in text_spans(TEXT, ["sentence", "clause"])}
    assert ("clause", "The tower is 330 metres tall") in spans
    assert ("clause", "it was the tallest man-made structure in the world for 41 years") in spans
    assert ("sentence", "The Eiffel Tower is a wrought-iron lattice tower in Paris.") in spans
    assert not any("Locals" in a for _, a in spans)  # no number, no proper noun: no fact to reconstruct


@pytest.mark.parametrize("span, kind, trivial", [
    ("   ", "text", True), ("})", "code", True), ("# just a comment", "code", True), ("pass", "code", True),
    ("return total", "code", False), ("It was built in 1889", "text", False)])
def test_trivial_spans(span, kind, trivial):
    assert is_trivial(span, kind) is trivial


def test_span_choice_is_stable_prefers_the_middle_and_respects_limits():
    step = FillInTheMiddle(FillInTheMiddleConfig(), ScriptedBackend(lambda t, k: ""))
    first = step.choose_span("rec-1", CODE, "code")
    assert first == step.choose_span("rec-1", CODE, "code")
    assert CODE[:first.start].strip() and CODE[first.end:].strip()
    ids = {step.choose_span(f"rec-{i}", CODE, "code") for i in range(30)}
    assert len(ids) > 2  # different records get different spans
    tight = FillInTheMiddle(FillInTheMiddleConfig(min_span_chars=40), ScriptedBackend(lambda t, k: ""))
    assert tight.choose_span("x", CODE, "code").kind == "function_body"
    assert FillInTheMiddle(FillInTheMiddleConfig(min_context_chars=10_000), None).choose_span("x", CODE, "code") is None


def test_looks_like_code():
    assert looks_like_code(CODE) and not looks_like_code(TEXT) and not looks_like_code("hello")


# --------------------------------------------------------------------------- parsing and grading


def test_parse_attempt_takes_the_last_final_guess_and_cuts_after_it():
    guess, kept = parse_attempt(attempt("total = 0.0"), "code")
    assert guess == "total = 0.0" and kept.endswith("```") and "Comparison" not in kept
    assert parse_attempt("Final Guess: It is 330 metres tall.\n\nMore text.", "text") == (
        "It is 330 metres tall.", "Final Guess: It is 330 metres tall.")
    assert parse_attempt("### Final guess\n\"in 1889\"", "text")[0] == "in 1889"
    assert parse_attempt("I have no idea.", "text") == (None, "I have no idea.")
    assert parse_attempt(f"Final Guess: {MISSING}", "text")[0] is None
    assert parse_attempt("Final Guess:\n```python\nx = 1\n", "code")[0] == "```python\nx = 1"  # unterminated fence


def test_grading_rules():
    assert grade_code("total+=area( r )  # add", "total += area(r)").method == "ast_equal"
    assert grade_code("    total = 0.0\n\n    # start\n", "total = 0.0").method == "exact"
    wrong = grade_code("total = 1.0", "total = 0.0")
    assert not wrong.passed and 0 < wrong.score < 1 and wrong.method == "token_f1"
    assert grade_text("The tower is 330 metres tall", "the tower is 330 metres tall.", 0.6).method == "exact"
    assert grade_text("the tower is 330 metres high", "The tower is 330 metres tall", 0.6).passed
    assert not grade_text("the tower is 300 metres tall", "The tower is 330 metres tall", 0.6).passed  # wrong number
    assert grade_text("the tower is 300 metres tall", "The tower is 330 metres tall", 0.6, False).passed
    assert not grade_text("a tower", "The tower is 330 metres tall", 0.6).passed


# --------------------------------------------------------------------------- the step


def code_record(rid="code-1", **meta):
    return Record(rid, text=CODE, metadata={"lang": "python", **meta})


def test_code_exercise_keeps_the_best_passing_attempt():
    step = FillInTheMiddle(FillInTheMiddleConfig(k=3, content_kind="code"), ScriptedBackend(lambda t, k: ""))
    answer = step.choose_span("code-1", CODE, "code").answer(CODE)
    replies = ["no sections at all", attempt("x = 1"), attempt(answer)]
    backend = ScriptedBackend(lambda t, k: replies[k])
    out, ctx, _ = run_step(FillInTheMiddle(FillInTheMiddleConfig(k=3), backend), [code_record()])
    (rec,) = out
    assert rec.id == "code-1/fim" and MISSING in rec.messages[0]["content"] and answer not in rec.messages[0]["content"]
    assert rec.messages[1]["content"].startswith("Background:") and "Comparison" not in rec.messages[1]["content"]
    m = rec.metadata
    assert (m["content_kind"], m["missing_span"], m["grade"], m["grade_method"], m["attempt_index"]) == (
        "code", answer, 1.0, "exact", 2)
    assert (m["attempts"], m["passing_attempts"], m["round"], m["hint"], m["lang"]) == (3, 1, 0, None, "python")
    p = rec.provenance
    assert (p.seed_id, p.technique, p.template_id, p.round, p.model) == (
        "code-1", "fill_in_the_middle", "fim_solve_code", 0, "scripted")
    assert ctx.counters["attempts_without_final_guess"] == 1 and ctx.counters["solved_round_0"] == 1
    assert ctx.counters["model_calls"] == 1


def test_hint_round_solves_what_round_zero_could_not():
    step = FillInTheMiddle(FillInTheMiddleConfig(k=2), None)
    answer = step.choose_span("code-1", CODE, "code").answer(CODE)
    backend = ScriptedBackend(lambda t, k: attempt(answer) if "Hint:" in t and k == 1 else attempt("y = 2"))
    out, ctx, _ = run_step(FillInTheMiddle(FillInTheMiddleConfig(k=2, hint_rounds=2), backend), [code_record()])
    m = out[0].metadata
    assert (m["round"], m["attempts"], m["attempt_index"]) == (1, 4, 1) and m["hint"].startswith("Hint:")
    assert "Hint:" in out[0].messages[0]["content"] and out[0].provenance.round == 1
    assert ctx.counters["model_calls"] == 2 and ctx.counters["solved_round_1"] == 1


def test_no_passing_attempt_and_no_suitable_span_are_dropped():
    backend = ScriptedBackend(lambda t, k: attempt("completely = wrong"))
    recs = [code_record(), Record("tiny", text="Hi."), Record("trivial", text="def f():\n    pass\n"),
            Record("empty", messages=[{"role": "user", "content": "no assistant turn"}])]
    out, ctx, dropped = run_step(FillInTheMiddle(FillInTheMiddleConfig(k=2, hint_rounds=1), backend), recs)
    assert out == [] and {k: v[0] for k, v in dropped.items()} == {
        "code-1": "no_passing_attempt", "tiny": "no_suitable_span", "trivial": "no_suitable_span",
        "empty": "no_suitable_span"}
    m = dropped["code-1"][1].metadata
    assert m["attempts"] == 4 and m["passing_attempts"] == 0 and 0 <= m["best_grade"] < 1
    assert ctx.counters["model_calls"] == 2  # one prompt per round


def test_behaviour_equivalent_code_passes_with_tests():
    src = ("def double(x):\n    \"\"\"Twice x.\"\"\"\n    y = x * 2\n    return y\n\n\n"
           "def quadruple(x):\n    return double(double(x))\n")
    cfg = FillInTheMiddleConfig(k=1, code_span_kinds=["function_body"], min_span_chars=5, min_context_chars=10)
    step = FillInTheMiddle(cfg, None)
    assert step.choose_span("d", src, "code").answer(src) == "y = x * 2\nreturn y"
    tests = {"tests": "assert quadruple(3) == 12\nassert double(-1) == -2"}
    backend = ScriptedBackend(lambda t, k: attempt("return x + x"))
    out, _, _ = run_step(FillInTheMiddle(cfg, backend), [Record("d", text=src, metadata=tests)])
    assert out[0].metadata["grade_method"] == "tests_passed" and out[0].metadata["final_guess"] == "return x + x"
    wrong = ScriptedBackend(lambda t, k: attempt("return x + 1"))
    _, ctx, _ = run_step(FillInTheMiddle(cfg, wrong), [Record("d", text=src, metadata=tests)])
    assert ctx.drops == {"no_passing_attempt": 1}


def test_text_exercise_from_a_chat_record():
    cfg = FillInTheMiddleConfig(k=2, text_span_kinds=["clause"], hint_rounds=0)
    step = FillInTheMiddle(cfg, None)
    answer = step.choose_span("t", TEXT, "text").answer(TEXT)
    backend = ScriptedBackend(lambda t, k: attempt(answer.upper() if k else "no idea", code=False))
    rec = Record("t", messages=[{"role": "user", "content": "Tell me about it."},
                                {"role": "assistant", "content": TEXT}])
    out, _, _ = run_step(FillInTheMiddle(cfg, backend), [rec])
    m = out[0].metadata
    assert (m["content_kind"], m["span_kind"], m["grade_method"], m["attempt_index"]) == ("text", "clause", "exact", 1)
    assert out[0].provenance.template_id == "fim_solve_text" and "Passage:" in out[0].messages[0]["content"]


def test_config_is_strict():
    with pytest.raises(ValidationError, match="extra"):
        FillInTheMiddleConfig(kk=3)
    with pytest.raises(ValidationError):
        FillInTheMiddleConfig(code_span_kinds=["character"])


def test_runs_under_local_executor(tmp_path):
    solver = FillInTheMiddle(FillInTheMiddleConfig(k=2, hint_rounds=0), None)
    answer = solver.choose_span("code-1", CODE, "code").answer(CODE)
    write_shards([code_record(), code_record("code-2"), Record("tiny", text="Hi.")], tmp_path / "in",
                 records_per_shard=2)
    backend = ScriptedBackend(lambda t, k: attempt(answer))
    step = FillInTheMiddle(FillInTheMiddleConfig(k=2, hint_rounds=0), backend)
    stats = LocalExecutor([step], input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), progress=False).run()
    solved = {r.id for r in read_records(tmp_path / "out")}
    assert "code-1/fim" in solved and stats["records_in"] == 3
    assert stats["records_out"] + stats["dropped"] == 3
    assert set(stats["drop_reasons"]) <= {"no_suitable_span", "no_passing_attempt"}
    assert stats["drop_reasons"]["no_suitable_span"] == 1
    assert stats["templates"]["fim_solve_code@1"]["renders"] == 2 and "fim_solve_text@1" in stats["templates"]
    dropped = {r.id: reason for r, reason, _ in read_dropped(tmp_path / "out" / "dropped")}
    assert dropped["tiny"] == "no_suitable_span"
    assert json.loads((tmp_path / "out" / "_dataflow" / "stats.json").read_text())["records_out"] == len(solved)


def test_real_teacher_end_to_end(teacher):
    recs = [code_record(), Record("text", text=TEXT), Record("tiny", text="Hi.")]
    cfg = FillInTheMiddleConfig(k=2, hint_rounds=1, max_tokens=40)
    out, ctx, dropped = run_step(FillInTheMiddle(cfg, teacher), recs)
    assert len(out) + len(dropped) == 3 and dropped["tiny"][0] == "no_suitable_span"
    assert set(ctx.drops) <= {"no_passing_attempt", "no_suitable_span"}
    assert ctx.counters["attempts"] == 2 * ctx.counters["model_calls"]  # k attempts per prompt
    assert 2 <= ctx.counters["model_calls"] <= 4  # round 0 for both, hint round only for the unsolved
    for r in out:
        assert r.provenance.model == teacher.name and MISSING in r.messages[0]["content"]
    print("fim real teacher:", len(out), "kept;", ctx.drops, ctx.counters)
