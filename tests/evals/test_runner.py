"""The eval runner: rows per item and sample, batching, resume, settings guard, log-likelihood picks."""

from __future__ import annotations

import json

import pytest
import torch

from phiforge.backends.local import LocalBackend
from phiforge.errors import ConfigError
from phiforge.evals.runner import SAMPLES, evaluate_task, read_samples
from phiforge.evals.task import Grade, Task, TaskOptions
from phiforge.model.presets import build_config, build_model
from phiforge.testing.scripted import ScriptedBackend
from phiforge.tokenize import train_bpe

ITEMS = [{"id": f"q{i}", "q": f"{i} + 1", "a": str(i + 1)} for i in range(10)]


class EchoTask(Task):
    """Items answered right when the reply equals the key; replies 'none' are extraction failures."""

    name = "echo"
    chat = False
    repeats = 3
    bundled_data = True
    known_params = ("vary",)

    def load(self):
        return [dict(it) for it in ITEMS]

    def prompt(self, item, repeat):
        return f"Q: {item['q']}" + (f" #{repeat}" if self.param("vary", False) else "")

    def grade(self, item, response, repeat):
        if response == "none":
            return Grade(0.0, None, "no_answer")
        return Grade(float(response == item["a"]), response, "correct" if response == item["a"] else "incorrect")


def oracle(prompt: str, k: int) -> str:
    """Right on even items; on odd items right only on the first sample; item 9 never answers."""
    i = int(prompt.split()[1])
    if i == 9:
        return "none"
    return str(i + 1) if i % 2 == 0 or k == 0 else "wrong"


def test_rows_and_summary(tmp_path):
    be = ScriptedBackend(oracle)
    s = evaluate_task(EchoTask(TaskOptions()), be, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / SAMPLES).read_text().splitlines()]
    assert len(rows) == 30 and {(r["item_id"], r["repeat"]) for r in rows} == {(f"q{i}", k) for i in range(10)
                                                                               for k in range(3)}
    assert {"prompt", "response", "extracted", "score", "label"} <= set(rows[0])
    # even items 5 x 1.0, odd 1,3,5,7 x 1/3, item 9 x 0  -> (5 + 4/3) / 10
    assert s["score"] == pytest.approx((5 + 4 / 3) / 10)
    assert s["extraction_failure_rate"] == pytest.approx(3 / 30)
    lo, hi = s["ci95"]
    assert lo < s["score"] < hi
    assert s["n_items"] == 10 and s["n_samples"] == 30 and s["repeats"] == 3
    assert len(be.prompts) == 10  # identical prompts of one item share one request with n = 3


def test_repeat_dependent_prompts_are_separate_requests(tmp_path):
    be = ScriptedBackend(lambda p, k: p.split()[1])
    evaluate_task(EchoTask(TaskOptions(params={"vary": True})), be, tmp_path)
    assert len(be.prompts) == 30


class Crash(Exception):
    pass


def test_resume_computes_only_missing_items(tmp_path):
    calls = []

    def flaky(prompt, k):
        calls.append(prompt)
        if len(calls) > 6:  # dies in the third chunk of 2 items x 3 samples... after 2 chunks were written
            raise Crash()
        return oracle(prompt, k)

    with pytest.raises(Crash):
        evaluate_task(EchoTask(TaskOptions()), ScriptedBackend(flaky), tmp_path, chunk_items=1)
    assert len(read_samples(tmp_path / SAMPLES)) == 6
    with (tmp_path / SAMPLES).open("a") as f:
        f.write('{"item_id": "q2", "repe')  # a torn line, as a crash mid-write leaves it
    again = ScriptedBackend(oracle)
    s = evaluate_task(EchoTask(TaskOptions()), again, tmp_path, chunk_items=1)
    assert len(again.prompts) == 8  # q0 and q1 were done
    fresh = evaluate_task(EchoTask(TaskOptions()), ScriptedBackend(oracle), tmp_path / "fresh")
    assert s["score"] == fresh["score"] and s["n_samples"] == 30
    assert len((tmp_path / SAMPLES).read_text().splitlines()) == 30


def test_changed_settings_are_refused_unless_overwrite(tmp_path):
    evaluate_task(EchoTask(TaskOptions()), ScriptedBackend(oracle), tmp_path)
    with pytest.raises(ConfigError, match="temperature"):
        evaluate_task(EchoTask(TaskOptions(temperature=1.0)), ScriptedBackend(oracle), tmp_path)
    be = ScriptedBackend(oracle)
    evaluate_task(EchoTask(TaskOptions(temperature=1.0)), be, tmp_path, overwrite=True)
    assert len(be.prompts) == 10


def test_more_repeats_reuse_existing_samples(tmp_path):
    evaluate_task(EchoTask(TaskOptions(repeats=1)), ScriptedBackend(oracle), tmp_path)
    be = ScriptedBackend(oracle)
    s = evaluate_task(EchoTask(TaskOptions(repeats=3)), be, tmp_path)
    assert s["n_samples"] == 30 and len(be.prompts) == 10


def test_contamination_split(tmp_path):
    flags = {"q0": "contaminated", "q2": "contaminated", "q1": "partial"}
    s = evaluate_task(EchoTask(TaskOptions()), ScriptedBackend(oracle), tmp_path, flags=flags)
    by = s["by_contamination"]
    assert by["contaminated"]["n_items"] == 2 and by["contaminated"]["score"] == 1.0
    assert by["partial"]["n_items"] == 1 and by["partial"]["score"] == pytest.approx(1 / 3)
    assert by["clean"]["n_items"] == 7


def test_max_items(tmp_path):
    s = evaluate_task(EchoTask(TaskOptions(max_items=4)), ScriptedBackend(oracle), tmp_path)
    assert s["n_items"] == 4


# -- log-likelihood multiple choice on a real tiny model ------------------------------------------

CORPUS = ["the cat sat on the mat", "two plus two is four", "red green blue yellow", "answer: a b c d"] * 20


class PickTask(Task):
    name = "pick"
    mode = "loglik"
    chat = False
    bundled_data = True

    def load(self):
        return [{"id": str(i), "context": c} for i, c in enumerate(["the cat sat on the", "two plus two is"])]

    def choices(self, item):
        return item["context"], [" mat", " four", " blue", " d"], 0


def test_loglik_picks_the_most_likely_option(tmp_path):
    tok = train_bpe(CORPUS, vocab_size=300)
    cfg = build_config("tiny", dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=320))
    model = build_model(cfg, seed=0).eval()
    s = evaluate_task(PickTask(), LocalBackend(model, tok), tmp_path)
    rows = [json.loads(x) for x in (tmp_path / SAMPLES).read_text().splitlines()]
    for row in rows:
        ctx = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        totals = []
        for opt in [" mat", " four", " blue", " d"]:
            cont = tok(opt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
            totals.append(sum(logits[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
        assert row["extra"]["logprobs"] == pytest.approx(totals, abs=1e-3)
        assert int(row["extracted"]) == max(range(4), key=totals.__getitem__)
    assert s["n_samples"] == 2 and s["repeats"] == 1
