"""RejectionSampler and ExecutionValidator: oracles, dedupe, every drop reason, sandbox verdicts, executor, teacher."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from phiforge.dataflow import LocalExecutor, Provenance, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.errors import ConfigError
from phiforge.synth.rejection import (ExecutionValidator, ExecutionValidatorConfig, RejectionSampler,
                                      RejectionSamplerConfig, normalize_solution, reason_slug)
from phiforge.testing.scripted import ScriptedBackend


def run_step(step, records):
    seen = {}
    ctx = StepContext(step.name, sink=lambda r, reason, s: seen.setdefault(r.id, (reason, r)))
    out = list(step.run(iter(records), ctx))
    return out, ctx, seen


MATH = {
    "TWO": ["Two plus two is \\boxed{4}.", "two plus  two is \\boxed{4}.", "I think \\boxed{5}",
            "Since 2+2=4, the final answer is 4", "no answer here"],
    "HALF": ["It is \\boxed{0.5}", "\\boxed{1/3}", "x", "y", "z"],
    "NEVER": ["\\boxed{1}", "\\boxed{2}", "nothing", "\\boxed{3}", "\\boxed{4}"],
}


def math_reply(text: str, k: int) -> str:
    return MATH[next(t for t in MATH if t in text)][k % 5]


# --------------------------------------------------------------------------- RejectionSampler


def test_math_keeps_distinct_correct_solutions_with_pass_counts():
    step = RejectionSampler(RejectionSamplerConfig(k=5, keep_per_problem=2), ScriptedBackend(math_reply))
    recs = [Record("two", text="TWO: what is 2+2?", metadata={"answer": "4", "topic": "add"}),
            Record("half", text="HALF: what is 1/2?", metadata={"plurality_answer": "\\frac{1}{2}"}),
            Record("never", text="NEVER: hard", metadata={"answer": "99"})]
    out, ctx, dropped = run_step(step, recs)
    assert [r.id for r in out] == ["two/rs/0", "two/rs/3", "half/rs/0"]  # sample 1 is a whitespace/case duplicate
    first = out[0]
    assert first.messages == [{"role": "user", "content": "TWO: what is 2+2?"},
                              {"role": "assistant", "content": "Two plus two is \\boxed{4}."}]
    m = first.metadata
    assert (m["pass_count"], m["k"], m["p_correct"], m["reference"], m["extracted"], m["topic"]) == (
        3, 5, 0.6, "4", "4", "add")
    assert out[2].metadata["reference"] == "\\frac{1}{2}" and out[2].metadata["pass_count"] == 1
    p = first.provenance
    assert (p.seed_id, p.technique, p.template_id, p.model) == ("two", "rejection_sampling",
                                                                 "rejection_solve_math", "scripted")
    reason, rec = dropped["never"]
    assert reason == "no_correct_sample" and rec.metadata["pass_count"] == 0
    assert rec.metadata["verdicts"] == ["no_answer", "not_equivalent"]
    assert ctx.counters["model_calls"] == 3 and ctx.counters["samples"] == 15
    assert ctx.counters["correct_samples"] == 4 and ctx.counters["duplicate_correct_samples"] == 1


def test_missing_and_invalid_references_are_dropped():
    step = RejectionSampler(RejectionSamplerConfig(oracle="choice", k=2), ScriptedBackend(lambda t, k: "Answer: B"))
    recs = [Record("none", text="Q?"), Record("bad", text="Q?", metadata={"answer": "E"}),
            Record("empty", text=" ", metadata={"answer": "B"}), Record("ok", text="Q?", metadata={"answer": "(b)"})]
    out, ctx, _ = run_step(step, recs)
    assert ctx.drops == {"no_reference": 1, "invalid_reference": 1, "no_question": 1}
    assert [r.id for r in out] == ["ok/rs/0"] and out[0].metadata["verdict"] == "match"
    assert ctx.counters["model_calls"] == 1  # only the valid problem was asked


def test_record_prompt_option_puts_the_rendered_prompt_in_the_user_turn():
    step = RejectionSampler(RejectionSamplerConfig(k=1, record_prompt="prompt"), ScriptedBackend(math_reply))
    out, _, _ = run_step(step, [Record("two", messages=[{"role": "user", "content": "TWO"}],
                                       metadata={"answer": 4})])
    assert "\\boxed{ANSWER}" in out[0].messages[0]["content"] and out[0].metadata["reference"] == "4"


CODE_SAMPLES = [
    "Approach: add.\n```python\ndef add(a, b):\n    return a + b\n```",
    "```python\ndef add(a, b):\n    return a - b\n```",
    "```python\ndef add(a, b) return a + b\n```",
]


def test_code_oracle_runs_the_tests_in_the_sandbox():
    step = RejectionSampler(RejectionSamplerConfig(oracle="code", k=3, keep_per_problem=3),
                            ScriptedBackend(lambda t, k: CODE_SAMPLES[k]))
    recs = [Record("add", text="Write add(a, b).",
                   metadata={"tests": ["assert add(2, 3) == 5", "assert add(0, 0) == 0"]}),
            Record("he", text="Write add.", metadata={"tests": "def check(f):\n    assert f(1, 1) == 2\n",
                                                       "entry_point": "add"}),
            Record("notests", text="Write add.")]
    out, ctx, dropped = run_step(step, recs)
    assert [r.id for r in out] == ["add/rs/0", "he/rs/0"] and out[0].metadata["verdict"] == "passed"
    assert out[0].metadata["pass_count"] == 1 and "reference" not in out[0].metadata
    assert dropped["notests"][0] == "no_reference"


def test_sampler_config_is_strict():
    with pytest.raises(ValidationError, match="extra"):
        RejectionSamplerConfig(keep=2)
    with pytest.raises(ValidationError):
        RejectionSamplerConfig(oracle="vibes")
    with pytest.raises(ConfigError, match="exactly one placeholder"):
        RejectionSampler(RejectionSamplerConfig(template="fim_solve_text"), ScriptedBackend(math_reply))


# --------------------------------------------------------------------------- ExecutionValidator


def test_reason_slug_and_normalize_solution():
    assert reason_slug("syntax_error: SyntaxError: invalid syntax (line 3)") == "syntax_error"
    assert reason_slug("runtime_error: ZeroDivisionError") == "runtime_error"
    assert reason_slug("killed: SIGKILL") == "killed" and reason_slug("timeout") == "timeout"
    assert normalize_solution("  A\n b  ") == "a b"


def test_given_tests_verdicts_become_drop_reasons():
    step = ExecutionValidator(ExecutionValidatorConfig(when_no_tests="drop", sandbox_timeout_s=1.0))
    tests = {"tests": "assert f(2) == 4"}
    recs = [Record("ok", text="def f(x):\n    return x * 2\n", metadata=dict(tests)),
            Record("wrong", text="def f(x):\n    return x + 3\n", metadata=dict(tests)),
            Record("syntax", text="def f(x)\n    return x\n", metadata=dict(tests)),
            Record("crash", text="def f(x):\n    return x / 0\n", metadata=dict(tests)),
            Record("slow", text="def f(x):\n    while True:\n        pass\n", metadata=dict(tests)),
            Record("chat", messages=[{"role": "user", "content": "double it"},
                                     {"role": "assistant",
                                      "content": "Sure:\n```python\ndef f(x):\n    return 2*x\n```"}],
                   metadata=dict(tests), provenance=Provenance(technique="instruction_reversal")),
            Record("untested", text="def f(x):\n    return x\n"),
            Record("nocode", messages=[{"role": "user", "content": "hi"}])]
    out, ctx, dropped = run_step(step, recs)
    assert [r.id for r in out] == ["ok/exec", "chat/exec"]
    assert {k: v[0] for k, v in dropped.items()} == {
        "wrong": "assertion_failed", "syntax": "syntax_error", "crash": "runtime_error", "slow": "timeout",
        "untested": "no_tests", "nocode": "no_code"}
    assert out[0].metadata["execution"] == {"tests_source": "given", "verdict": "passed"}
    assert out[1].metadata["parent_provenance"] == {"technique": "instruction_reversal"}
    assert out[1].provenance.technique == "execution_validation" and out[1].provenance.model is None
    assert dropped["crash"][1].metadata["execution"]["verdict"] == "runtime_error: ZeroDivisionError"
    assert ctx.counters["passed"] == 2 and "model_calls" not in ctx.counters


def test_run_only_checks_that_code_runs():
    step = ExecutionValidator(ExecutionValidatorConfig(when_no_tests="run_only"))
    out, _, dropped = run_step(step, [Record("a", text="x = 1\nassert x == 1\n"),
                                      Record("b", text="import nonexistent_module_xyz\n")])
    assert [r.id for r in out] == ["a/exec"] and out[0].metadata["execution"]["tests_source"] == "run_only"
    assert dropped["b"][0] == "runtime_error"


def fake_test_writer(text: str, k: int) -> str:
    if "def good" in text:
        return 'Here you go:\n```json\n{"tests": ["assert good(2) == 4", "assert good(0) == 0"]}\n```'
    if "def liar" in text:
        return '{"tests": ["assert liar(2) == 5"]}'
    if "def broken" in text:
        return '{"tests": ["assert broken(1) == 1"]}'
    if "could not be used" in text:  # a re-ask after invalid JSON: still not a test
        return '{"tests": ["print(1)"]}'
    return "I would test it by hand."


def test_generated_tests_are_validated_and_stored():
    backend = ScriptedBackend(fake_test_writer)
    step = ExecutionValidator(ExecutionValidatorConfig(), backend)
    recs = [Record("good", messages=[{"role": "user", "content": "Double a number."},
                                     {"role": "assistant", "content": "def good(x):\n    return 2 * x\n"}]),
            Record("liar", text="def liar(x):\n    return 2 * x\n"),
            Record("broken", text="def broken(x):\n    return x\nraise SystemError('boom')\n"),
            Record("mute", text="def mute(x):\n    return x\n")]
    out, ctx, dropped = run_step(step, recs)
    assert [r.id for r in out] == ["good/exec"]
    m = out[0].metadata
    assert m["tests"] == "assert good(2) == 4\nassert good(0) == 0"
    assert m["execution"] == {"tests_source": "generate", "verdict": "passed"}
    p = out[0].provenance
    assert (p.template_id, p.model, p.seed_id) == ("rejection_write_tests", "scripted", "good")
    assert {k: v[0] for k, v in dropped.items()} == {"liar": "generated_tests_invalid", "broken": "runtime_error",
                                                     "mute": "test_generation_failed"}
    assert dropped["liar"][1].metadata["tests"] == "assert liar(2) == 5"
    assert "Task the code solves:\nDouble a number." in backend.prompts[0]
    assert ctx.counters["tests_generated"] == 4 and ctx.counters["json_failed"] == 1


# --------------------------------------------------------------------------- executor and the real teacher


def test_both_steps_run_under_local_executor(tmp_path):
    recs = [Record("two", text="TWO: 2+2?", metadata={"answer": "4"}),
            Record("never", text="NEVER", metadata={"answer": "99"}),
            Record("code", text="def good(x):\n    return 2 * x\n"),
            Record("mute", text="def mute(x):\n    return x\n")]
    write_shards(recs, tmp_path / "in", records_per_shard=2)
    sampler = RejectionSampler(RejectionSamplerConfig(k=5), ScriptedBackend(math_reply))
    stats = LocalExecutor([sampler], input=str(tmp_path / "in"), output_dir=str(tmp_path / "rs"),
                          progress=False).run()
    assert (stats["records_in"], stats["records_out"], stats["dropped"]) == (4, 1, 3)
    assert stats["drop_reasons"] == {"no_correct_sample": 1, "no_reference": 2}
    assert stats["templates"]["rejection_solve_math@1"]["renders"] == 2
    assert [r.id for r in read_records(tmp_path / "rs")] == ["two/rs/0"]

    validator = ExecutionValidator(ExecutionValidatorConfig(), ScriptedBackend(fake_test_writer))
    stats = LocalExecutor([validator], input=str(tmp_path / "in"), output_dir=str(tmp_path / "ex"),
                          progress=False).run()
    assert stats["records_out"] == 1 and stats["drop_reasons"] == {"test_generation_failed": 3}
    assert stats["templates"]["rejection_write_tests@1"]["renders"] == 4
    dropped = {r.id: reason for r, reason, _ in read_dropped(tmp_path / "ex" / "dropped")}
    assert dropped == {"two": "test_generation_failed", "never": "test_generation_failed",
                       "mute": "test_generation_failed"}
    assert json.loads((tmp_path / "ex" / "_dataflow" / "stats.json").read_text())["records_in"] == 4


def test_real_teacher_end_to_end(teacher):
    recs = [Record("add", text="What is 2 + 3?", metadata={"answer": "5"}),
            Record("sub", text="What is 10 - 4?", metadata={"answer": "6"})]
    out, ctx, dropped = run_step(RejectionSampler(RejectionSamplerConfig(k=4, max_tokens=64), teacher), recs)
    assert len(out) <= 2  # keep_per_problem=1
    assert {r.provenance.seed_id for r in out} | set(dropped) == {"add", "sub"}
    assert ctx.counters["samples"] == 8 and ctx.counters["model_calls"] == 2
    for r in out:
        assert r.messages[1]["role"] == "assistant" and r.metadata["pass_count"] >= 1

    code = [Record("sq", text="def square(x):\n    return x * x\n")]
    step = ExecutionValidator(ExecutionValidatorConfig(test_max_tokens=64, max_reasks=1), teacher)
    out2, ctx2, dropped2 = run_step(step, code)
    assert len(out2) + len(dropped2) == 1
    assert set(ctx2.drops) <= {"generated_tests_invalid", "test_generation_failed", "assertion_failed",
                               "runtime_error", "syntax_error"}
    print("rejection real teacher:", len(out), "kept;", ctx.drops, "| validator:", len(out2), "kept;", ctx2.drops)
