"""Instruction reversal with a sandboxed fidelity check (§2.2): scripted logic, the real teacher, the executor."""

import json

import pytest
from pydantic import ValidationError

from phiforge.dataflow import LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.synth.reversal import (InstructionReversal, InstructionReversalConfig, ast_similarity,
                                     normalise_ast, run_tests, strip_leaked_code)
from phiforge.testing.scripted import ScriptedBackend

ADD = "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n"
GOOD_TESTS = json.dumps({"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0",
                                   "```python\nassert add(0, 0) == 0\n```"]})
SAME = "```python\ndef add(x, y):\n    # add them\n    return x + y\n```"


class CountingBackend(ScriptedBackend):
    def __init__(self, reply, name="scripted"):
        super().__init__(reply, name)
        self.batch_sizes = []

    def sample(self, prompts, params, progress=None):
        self.batch_sizes.append(len(prompts))
        return super().sample(prompts, params, progress)


def scripted(instruction="Write a function add(a, b) that returns the sum of a and b.", tests=GOOD_TESTS,
             regenerated=SAME):
    def reply(text, k):
        if "Write the instruction it answers" in text:
            return instruction
        if "unit tests for the Python code" in text:
            return tests(text) if callable(tests) else tests
        if "Write the complete Python code" in text:
            return regenerated(text) if callable(regenerated) else regenerated
        raise AssertionError(text)
    return reply


def run(step, records):
    drops = []
    ctx = StepContext("reversal", sink=lambda rec, reason, step: drops.append((rec, reason)))
    return list(step.run(iter(records), ctx)), ctx, drops


def cfg(**kw):
    return InstructionReversalConfig(sandbox_workers=2, **kw)


def test_faithful_pair_is_kept_with_the_original_code_as_answer():
    be = CountingBackend(scripted())
    out, ctx, drops = run(InstructionReversal(cfg(), be), [Record("c1", text=f"```python\n{ADD}```"),
                                                          Record("c2", text=ADD)])
    assert drops == [] and [r.id for r in out] == ["c1/reversal", "c2/reversal"]
    r = out[0]
    assert r.messages == [{"role": "user", "content": "Write a function add(a, b) that returns the sum of a and b."},
                          {"role": "assistant", "content": f"```python\n{ADD.strip()}\n```"}]
    m = r.metadata
    assert m["pass_rate"] == 1.0 and m["ast_similarity"] == 1.0 and m["fidelity"] == 1.0
    assert m["tests_source"] == "generated" and m["tests_valid"] == 3 and m["regenerated_results"] == [1, 1, 1]
    assert m["tests"][2] == "assert add(0, 0) == 0"
    p = r.provenance
    assert (p.seed_id, p.technique, p.template_id, p.model) == ("c1", "instruction_reversal",
                                                                 "reversal_instruction", "scripted")
    assert be.batch_sizes == [2, 2, 2]  # instruction, tests, regeneration: one call each for the batch
    assert ctx.counters["sandbox_runs"] == 4 and ctx.counters["pairs_kept"] == 2


def test_original_must_pass_the_tests_or_failing_tests_are_pruned():
    tests = json.dumps({"tests": ["assert add(1, 1) == 3", "assert add(2, 2) == 4"]})
    out, _, drops = run(InstructionReversal(cfg(), ScriptedBackend(scripted(tests=tests))), [Record("c", text=ADD)])
    assert out == [] and [reason for _, reason in drops] == ["original_fails_tests"]
    assert drops[0][0].metadata["instruction_reversal"]["tests_source"] == "generated"
    out, ctx, drops = run(InstructionReversal(cfg(prune_failing_tests=True), ScriptedBackend(scripted(tests=tests))),
                          [Record("c", text=ADD)])
    assert drops == [] and out[0].metadata["tests"] == ["assert add(2, 2) == 4"] and ctx.counters["tests_pruned"] == 1
    out, _, drops = run(InstructionReversal(cfg(prune_failing_tests=True, min_tests=2),
                                            ScriptedBackend(scripted(tests=tests))), [Record("c", text=ADD)])
    assert [reason for _, reason in drops] == ["original_fails_tests"]


def test_regenerated_code_failures():
    records = [Record("c", text=ADD)]
    broken = ScriptedBackend(scripted(regenerated="```python\ndef add(a, b) return\n```"))
    _, _, drops = run(InstructionReversal(cfg(), broken), records)
    assert [reason for _, reason in drops] == ["regenerated_syntax_error"]
    _, ctx, drops = run(InstructionReversal(cfg(), ScriptedBackend(scripted(regenerated="```python\n```"))), records)
    assert [reason for _, reason in drops] == ["no_code_found"] and ctx.counters["regenerated_empty"] == 1
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    _, _, drops = run(InstructionReversal(cfg(), ScriptedBackend(scripted(regenerated=wrong))), records)
    (rec, reason), = drops
    info = rec.metadata["instruction_reversal"]
    assert reason == "low_fidelity" and info["regenerated_results"] == [0, 0, 1]
    assert info["fidelity"] == pytest.approx(0.7 / 3 + 0.3 * info["ast_similarity"], abs=1e-4)
    loose = InstructionReversal(cfg(keep_threshold=0.4), ScriptedBackend(scripted(regenerated=wrong)))
    out, _, _ = run(loose, records)
    assert out[0].metadata["pass_rate"] == pytest.approx(1 / 3)


def test_missing_or_unparsable_original():
    records = [Record("e", text="  "), Record("p", text="This is prose, not code."),
               Record("m", text="ignored", metadata={"src": ADD})]
    out, _, drops = run(InstructionReversal(cfg(), ScriptedBackend(scripted())), records[:2])
    assert out == [] and [(r.id, reason) for r, reason in drops] == [("e", "no_code_found"),
                                                                      ("p", "original_syntax_error")]
    out, _, _ = run(InstructionReversal(cfg(code_key="src"), ScriptedBackend(scripted())), records[2:])
    assert out[0].messages[1]["content"].startswith("```python\ndef add")


def test_given_tests_skip_generation_and_humaneval_suites_work():
    be = ScriptedBackend(scripted(tests="never asked"))
    records = [Record("l", text=ADD, metadata={"tests": ["assert add(2, 3) == 5"]}),
               Record("h", text=ADD, metadata={"tests": "def check(candidate):\n    assert candidate(2, 2) == 4\n",
                                               "entry_point": "add"})]
    out, _, drops = run(InstructionReversal(cfg(), be), records)
    assert drops == [] and not any("unit tests" in p for p in be.prompts)
    assert [r.metadata["tests_source"] for r in out] == ["metadata", "metadata"]
    assert out[1].metadata["tests"][0].endswith("check(add)") and out[1].metadata["pass_rate"] == 1.0


def test_no_valid_tests_drops_or_falls_back_to_the_ast():
    out, ctx, drops = run(InstructionReversal(cfg(max_reasks=1), ScriptedBackend(scripted(tests="no idea"))),
                          [Record("c", text=ADD)])
    assert [reason for _, reason in drops] == ["no_valid_tests"] and ctx.counters["tests_invalid_json"] == 1
    out, ctx, drops = run(InstructionReversal(cfg(max_reasks=0, require_tests=False),
                                              ScriptedBackend(scripted(tests='{"tests": ["print(1)"]}'))),
                          [Record("c", text=ADD)])
    assert drops == [] and out[0].metadata["pass_rate"] is None and out[0].metadata["fidelity"] == 1.0
    assert "sandbox_runs" not in ctx.counters


def test_leaked_code_is_cut_from_the_instruction_and_empty_instructions_dropped():
    leaky = "Implement add(a, b).\n```python\ndef add(a, b):\n    return a + b\n```\nExample:\n```\nadd(1, 2) -> 3\n```"
    out, ctx, _ = run(InstructionReversal(cfg(), ScriptedBackend(scripted(instruction=leaky))), [Record("c", text=ADD)])
    assert "def add" not in out[0].messages[0]["content"] and "add(1, 2) -> 3" in out[0].messages[0]["content"]
    assert ctx.counters["instruction_code_stripped"] == 1
    only_code = ScriptedBackend(scripted(instruction="```python\ndef add(a, b): pass\n```"))
    _, _, drops = run(InstructionReversal(cfg(), only_code), [Record("c", text=ADD)])
    assert [reason for _, reason in drops] == ["empty_instruction"]
    assert strip_leaked_code("no code") == ("no code", False)


def test_ast_normalisation():
    a = ('def f(xs: list) -> int:\n    """Doc."""\n    total = 0  # running sum\n'
         "    for x in xs:\n        total += x\n    return total\n")
    b = "def g(values):\n    acc = 0\n    for v in values:\n        acc += v\n    return acc\n"
    assert normalise_ast(a) == normalise_ast(b) and ast_similarity(a, b) == 1.0
    assert "'len'" in normalise_ast("n = len(xs)")  # builtins keep their names
    assert ast_similarity(a, "import os\nprint(os.getcwd())") < 0.5


def test_sandboxed_harness_isolates_tests_and_skips_main_blocks():
    code = ("import sys\ndef f():\n    while True:\n        pass\ndef g():\n    return 1\n"
            "if __name__ == '__main__':\n    sys.exit(3)\n")
    tests = ["f()", "assert g() == 1", "import os; os._exit(0)"]
    [(first, _)] = run_tests([code], [tests[:2]], InstructionReversalConfig(test_timeout_s=0.5))
    assert first == [0, 1]
    [(outcome, reason), (top_level, why)] = run_tests([code, "raise ValueError"], [tests, ["assert True"]],
                                                      InstructionReversalConfig(test_timeout_s=0.5))
    assert outcome == [0, 0, 0] and reason == "exited_early"  # a test that kills the run fails all of them
    assert top_level == [0] and why == "tests_failed"


def test_config_validation():
    assert InstructionReversalConfig().pass_weight == 0.7 and InstructionReversalConfig().keep_threshold == 0.8
    with pytest.raises(ValidationError, match="test_timeout_s"):
        InstructionReversalConfig(test_timeout_s=30, sandbox_timeout_s=10)
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        InstructionReversalConfig(pass_weight=1.5)
    with pytest.raises(ValidationError, match="Extra inputs"):
        InstructionReversalConfig(threshold=0.5)


def test_real_teacher_end_to_end(teacher):
    config = InstructionReversalConfig(instruction_max_tokens=32, code_max_tokens=48, tests_max_tokens=32,
                                       max_reasks=0, sandbox_workers=2)
    records = [Record("given", text=ADD, metadata={"tests": ["assert add(1, 2) == 3"]}),
               Record("generated", text="def square(n):\n    return n * n\n")]
    ctx = StepContext("reversal")
    out = list(InstructionReversal(config, teacher).run(iter(records), ctx))
    assert len(out) + sum(ctx.drops.values()) == 2
    assert set(ctx.drops) <= {"no_valid_tests", "original_fails_tests", "regenerated_syntax_error", "no_code_found",
                              "low_fidelity", "empty_instruction"}
    for r in out:
        assert r.messages[0]["role"] == "user" and r.metadata["fidelity"] >= 0.8
    print("\nreal teacher reversal:", {"kept": len(out), **ctx.drops}, ctx.counters)


def test_local_executor(tmp_path):
    records = [Record("ok", text=ADD), Record("empty", text=""), Record("sub", text=ADD.replace("add", "sub"))]
    write_shards(records, tmp_path / "in", records_per_shard=2)

    def regenerated(text):
        return SAME if "sub(" not in text else "```python\ndef sub(a, b) return\n```"

    instr = InstructionReversal(cfg(), ScriptedBackend(lambda text, k: scripted(
        instruction="Write sub(a, b)." if "def sub" in text else "Write add(a, b).",
        tests=lambda t: GOOD_TESTS.replace("add", "sub") if "def sub" in t else GOOD_TESTS,
        regenerated=regenerated)(text, k)))
    stats = LocalExecutor([instr], input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), workers=1,
                          progress=False).run()
    assert (stats["records_in"], stats["records_out"], stats["dropped"]) == (3, 1, 2)
    assert stats["drop_reasons"] == {"no_code_found": 1, "regenerated_syntax_error": 1}
    assert {"reversal_instruction@1", "reversal_tests@1", "reversal_regenerate@1"} <= set(stats["templates"])
    assert [r.id for r in read_records(tmp_path / "out")] == ["ok/reversal"]
    assert {(rec.id, reason) for rec, reason, _ in read_dropped(tmp_path / "out" / "dropped")} == \
        {("empty", "no_code_found"), ("sub", "regenerated_syntax_error")}


def test_step_pickles_with_recipe_model_refs():
    import pickle

    from phiforge.recipe.schema import ModelRef

    models = {"teacher": ModelRef(), "critic": ModelRef()}
    step = pickle.loads(pickle.dumps(InstructionReversal(InstructionReversalConfig(keep_threshold=0.9), models)))
    assert step.config == InstructionReversalConfig(keep_threshold=0.9) and step.models["teacher"]._backend is None
