"""The refusal stage in a recipe: teacher and checker behind a real (scripted) OpenAI-compatible
server, the policy the run's own base model; its rows flow into SFT."""

import json
from pathlib import Path

from phiforge.recipe import load_recipe
from phiforge.run import pipeline
from phiforge.testing.http import ScriptedOpenAIServer

ROOT = Path(__file__).resolve().parents[2]


def _reply(prompt, seed, index):
    text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
    if "checking an answer" in text:
        # the tiny policy's answers: graded wrong, except on seeds ending in 0 (some variety)
        return 'Different.\n{"matches_key": ' + ("true" if (seed or 0) % 10 == 0 else "false") + "}"
    if "Rewrite the trivia question" in text:
        return "# Response\nWho painted the ceiling of the Hollins Chapel in Leeds?\n# Quality\n5"
    if "Role-play" in text:
        return "# Response\nI'm not sure; I don't know the answer to that."
    return "# Response\nParis is the capital of France."


def test_refusal_rows_feed_sft(fast_overrides, tmp_path):
    questions = tmp_path / "trivia.jsonl"
    questions.write_text("".join(json.dumps({"id": f"t{i}", "question": f"What is the capital of country {i}?",
                                             "answer": "Paris", "aliases": ["paris"]}) + "\n" for i in range(3)))
    with ScriptedOpenAIServer(reply=_reply) as server:
        overrides = fast_overrides + [
            "models.teacher.backend=\"http\"", f"models.teacher.base_url=\"{server.url}\"",
            "models.teacher.model=\"scripted\"", "models.teacher.profile=\"openai\"",
            "refusal.enabled=true", f"refusal.questions=\"{questions}\"", "refusal.step.n_policy_samples=4",
            "refusal.step.policy_max_tokens=4", "refusal.step.max_tokens=32",
            "data.tinymath.sft_examples=16", "sft.enabled=true", "sft.data=[\"data:posttrain/sft\",\"refusal\"]",
            "sft.max_steps=2", "sft.micro_batch_size=4", "sft.valid_examples=2"]
        run_dir = pipeline.run_pipeline(load_recipe(ROOT / "recipes" / "tiny.toml", overrides), log=lambda m: None)
    stats = json.loads((run_dir / "refusal" / "stats.json").read_text())
    assert stats["questions"] == 3 and stats["models"]["teacher+judge"]["calls"] > 0
    sft_rows = [json.loads(x) for x in (run_dir / "refusal" / "sft.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in sft_rows}
    assert "refusal_sft_bogus" in kinds and kinds <= {"refusal_sft_correct", "refusal_sft_refuse", "refusal_sft_bogus"}
    assert all(r["messages"][-1]["role"] == "assistant" for r in sft_rows)
    pairs = [json.loads(x) for x in (run_dir / "refusal" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(len(p["chosen_ids"]) <= 5 and len(p["rejected_ids"]) <= 5 for p in pairs)  # first 5 tokens
    sft = json.loads((run_dir / "sft" / "stats.json").read_text())
    assert sft["examples"] + sft["valid_examples"] == 16 + len(sft_rows)
