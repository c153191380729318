"""Code oracle: solutions against assert-style and HumanEval-style tests, in the sandbox."""

from __future__ import annotations

from phiforge.verify.code import CodeOracle, CodeTests, check_code, check_code_many, extract_code
from phiforge.verify.oracle import Oracle
from phiforge.verify.sandbox import SandboxConfig

ADD = "def add(a, b):\n    return a + b\n"
HUMANEVAL = CodeTests("def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
                      entry_point="add")


def test_pass_and_fail_reasons():
    assert check_code(ADD, "assert add(1, 2) == 3").reason == "passed"
    assert check_code(ADD, "assert add(1, 2) == 4").reason == "assertion_failed"
    assert check_code("def add(a, b) return", "assert True").reason.startswith("syntax_error")
    assert check_code("def add(a, b):\n    return a / 0", HUMANEVAL).reason == "runtime_error: ZeroDivisionError"
    assert check_code(ADD, HUMANEVAL).correct


def test_early_exit_does_not_pass():
    assert check_code("import sys\nsys.exit(0)", "assert False").reason == "exited_early"
    assert not check_code("import os\nos._exit(0)", "assert False").correct


def test_timeout_and_memory():
    cfg = SandboxConfig(timeout_s=1.0, memory_mb=128)
    assert check_code("while True: pass", "pass", config=cfg).reason == "timeout"
    assert check_code("x = bytearray(10**9)", "pass", config=cfg).reason == "memory"


def test_batch_keeps_order():
    sols = [ADD, "def add(a, b):\n    return a - b\n", "def add(a, b) return", ADD]
    verdicts = check_code_many(sols, [HUMANEVAL] * 4, workers=2)
    assert [v.correct for v in verdicts] == [True, False, False, True]
    assert verdicts[2].reason.startswith("syntax_error")


def test_oracle_reads_fenced_code():
    response = "Sure!\n```python\ndef add(a, b):\n    return a + b\n```\nHope it helps."
    assert extract_code(response) == ADD
    assert extract_code("no fences") == "no fences"
    oracle = CodeOracle()
    assert isinstance(oracle, Oracle)
    assert oracle.check(response, HUMANEVAL).correct
    assert [v.correct for v in oracle.check_many([response, "x"], [HUMANEVAL, HUMANEVAL])] == [True, False]
