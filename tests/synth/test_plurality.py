"""PluralityFilter: clustering, every drop reason, ties, prompt styles, the real teacher, the executor."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from phiforge.dataflow import LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.errors import ConfigError
from phiforge.synth.plurality import PluralityFilter, PluralityFilterConfig, cluster_answers
from phiforge.testing.scripted import ScriptedBackend
from phiforge.verify.math import answers_equivalent, normalize_answer

# k-th answer of each scripted question (by a tag in the question text)
ANSWERS = {
    "EASY": ["\\boxed{4}"] * 8,
    "GOOD": ["\\boxed{1/2}", "The final answer is 0.5", "\\boxed{\\frac{1}{2}}", "\\boxed{3}",
             "\\boxed{3}", "\\boxed{0.50}", "no idea", "\\boxed{7}"],
    "HARD": [f"\\boxed{{{i}}}" for i in range(8)],
    "BLANK": ["I am not sure."] * 6 + ["\\boxed{2}", "\\boxed{2}"],
    "TIE": ["\\boxed{5}", "\\boxed{6}", "\\boxed{6}", "\\boxed{5}", "\\boxed{9}", "\\boxed{8}", "\\boxed{1}",
            "\\boxed{2}"],
    "WEAK": ["\\boxed{1}", "\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}", "\\boxed{5}", "\\boxed{6}",
             "\\boxed{7}"],
}


def scripted_reply(text: str, k: int) -> str:
    tag = next(t for t in ANSWERS if t in text)
    return ANSWERS[tag][k % 8]


def questions(*tags: str) -> list[Record]:
    return [Record(f"q-{t.lower()}", text=f"Question {t}: compute it.", metadata={"src": "forum"}) for t in tags]


def run_step(step, records):
    ctx = StepContext(step.name)
    out = list(step.run(iter(records), ctx))
    return out, ctx


def test_cluster_answers_merges_equivalents_against_representatives():
    answers = ["1/2", "0.5", None, "\\frac{1}{2}", "3", "3", "0.50"]
    clusters = cluster_answers(answers, answers_equivalent, normalize_answer)
    assert [(c.representative, c.members) for c in clusters] == [("1/2", [0, 1, 3, 6]), ("3", [4, 5])]


def test_cluster_answers_compares_distinct_answers_only_with_representatives():
    calls = []

    def same(a, b):
        calls.append((a, b))
        return a == b

    assert len(cluster_answers(["7"] * 64, same)) == 1 and calls == []  # identical: grouped by key, no compare
    clusters = cluster_answers([str(i) for i in range(10)], same)
    assert len(clusters) == 10 and len(calls) == 45  # distinct x clusters, never members x members


def test_every_drop_reason_and_the_kept_metadata():
    backend = ScriptedBackend(scripted_reply)
    step = PluralityFilter(PluralityFilterConfig(), backend)
    out, ctx = run_step(step, questions("EASY", "GOOD", "HARD", "BLANK", "WEAK") + [Record("empty", text="  ")])
    assert ctx.drops == {"too_easy_unanimous": 1, "too_hard_inconsistent": 1, "no_extractable_answers": 1,
                         "no_question": 1}
    kept, weak = out
    assert weak.id == "q-weak/plurality" and weak.metadata["agreement"] == 0.25  # 2 of 8: the weakest kept
    assert kept.id == "q-good/plurality" and kept.text == "Question GOOD: compute it."
    m = kept.metadata
    assert m["src"] == "forum" and m["plurality_answer"] == "1/2" and m["agreement"] == round(4 / 7, 4)
    assert m["cluster_sizes"] == [4, 2, 1] and m["cluster_answers"] == ["1/2", "3", "7"]
    assert (m["n_samples"], m["n_extracted"], m["extraction_failures"]) == (8, 7, 1)
    assert m["plurality_tie"] is False and m["answer_kind"] == "math"
    p = kept.provenance
    assert (p.seed_id, p.technique, p.template_id, p.template_version, p.model) == (
        "q-good", "plurality_filter", "plurality_answer_math", 1, "scripted")
    assert ctx.counters["model_calls"] == 5  # one batched request: five prompts, n=8 each
    assert ctx.counters["samples"] == 40 and ctx.counters["kept"] == 2
    assert ctx.templates["plurality_answer_math@1"]["renders"] == 5
    assert all(len(p) > 0 and "\\boxed{ANSWER}" in p for p in backend.prompts)


def test_min_agreement_and_max_agreement_are_configurable():
    step = PluralityFilter(PluralityFilterConfig(min_agreement=0.5, max_agreement=0.9), ScriptedBackend(scripted_reply))
    out, ctx = run_step(step, questions("GOOD", "WEAK", "EASY"))
    assert [r.id for r in out] == ["q-good/plurality"] and ctx.drops == {"too_hard_inconsistent": 1,
                                                                         "too_easy_unanimous": 1}
    loose = PluralityFilter(PluralityFilterConfig(min_agreement=0.0), ScriptedBackend(scripted_reply))
    out, _ = run_step(loose, questions("WEAK", "HARD"))
    assert [r.id for r in out] == ["q-weak/plurality"]  # a one-vote plurality is never kept


def test_ties_take_the_first_sampled_cluster_or_drop():
    out, ctx = run_step(PluralityFilter(PluralityFilterConfig(), ScriptedBackend(scripted_reply)), questions("TIE"))
    assert out[0].metadata["plurality_answer"] == "5" and out[0].metadata["plurality_tie"] is True
    assert ctx.counters["plurality_ties"] == 1
    _, ctx = run_step(PluralityFilter(PluralityFilterConfig(on_tie="drop"), ScriptedBackend(scripted_reply)),
                      questions("TIE"))
    assert ctx.drops == {"plurality_tie": 1}


def test_multiple_choice_answers():
    letters = ["Answer: B", "the answer is (B)", "I pick C", "So the answer is B.", "no clue at all", "Answer: B",
               "\\boxed{C}", "Answer: D"]
    step = PluralityFilter(PluralityFilterConfig(answer_kind="choice", keep_samples=True),
                           ScriptedBackend(lambda t, k: letters[k]))
    out, _ = run_step(step, questions("GOOD"))
    m = out[0].metadata
    assert m["plurality_answer"] == "B" and m["cluster_sizes"] == [4, 2, 1] and m["extraction_failures"] == 1
    assert m["plurality_samples"] == letters
    assert out[0].provenance.template_id == "plurality_answer_choice"


class ParamsSpy(ScriptedBackend):
    def sample(self, prompts, params, progress=None):
        self.seen_params = params
        self.seen_prompts = list(prompts)
        return super().sample(prompts, params)


def test_completion_style_sends_plain_text_with_stops_and_messages_input():
    spy = ParamsSpy(scripted_reply)
    step = PluralityFilter(PluralityFilterConfig(prompt_style="completion", n_samples=8), spy)
    rec = Record("chat", messages=[{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "Question GOOD: halve 1"}])
    out, _ = run_step(step, [rec])
    assert isinstance(spy.seen_prompts[0], str) and spy.seen_prompts[0].rstrip().endswith("Solution:")
    assert spy.seen_params.n == 8 and "\nProblem:" in spy.seen_params.stop
    assert out[0].messages == rec.messages and out[0].provenance.template_id == "plurality_complete_math"


def test_question_key_reads_metadata_and_dropped_records_carry_the_vote():
    step = PluralityFilter(PluralityFilterConfig(question_key="q"), ScriptedBackend(scripted_reply))
    rec = Record("m", text="ignored", metadata={"q": "Question EASY?"})
    seen = []
    ctx = StepContext("plurality_filter", sink=lambda r, reason, s: seen.append((r, reason)))
    assert list(step.run(iter([rec]), ctx)) == []
    (dropped, reason), = seen
    assert reason == "too_easy_unanimous" and dropped.metadata["agreement"] == 1.0 and dropped.id == "m"


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError, match="extra"):
        PluralityFilterConfig(n_sample=8)
    with pytest.raises(ValidationError):
        PluralityFilterConfig(n_samples=1)
    with pytest.raises(ValidationError):
        PluralityFilterConfig(answer_kind="essay")
    with pytest.raises(ConfigError, match="exactly one placeholder"):
        PluralityFilter(PluralityFilterConfig(template="rejection_write_tests"), ScriptedBackend(scripted_reply))


def test_runs_under_local_executor(tmp_path):
    write_shards(questions("EASY", "GOOD", "HARD", "TIE"), tmp_path / "in", records_per_shard=2)
    step = PluralityFilter(PluralityFilterConfig(), ScriptedBackend(scripted_reply))
    stats = LocalExecutor([step], input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), workers=1,
                          progress=False).run()
    assert (stats["records_in"], stats["records_out"], stats["dropped"]) == (4, 2, 2)
    assert stats["drop_reasons"] == {"too_easy_unanimous": 1, "too_hard_inconsistent": 1}
    assert stats["templates"]["plurality_answer_math@1"]["renders"] == 4
    assert stats["steps"][0]["counters"]["model_calls"] == 4
    kept = sorted(read_records(tmp_path / "out"), key=lambda r: r.id)
    assert [r.id for r in kept] == ["q-good/plurality", "q-tie/plurality"]
    dropped = {r.id: (reason, step_name) for r, reason, step_name in read_dropped(tmp_path / "out" / "dropped")}
    assert dropped == {"q-easy": ("too_easy_unanimous", "plurality_filter"),
                       "q-hard": ("too_hard_inconsistent", "plurality_filter")}
    saved = json.loads((tmp_path / "out" / "_dataflow" / "stats.json").read_text())
    assert saved["records_out"] == 2


def test_real_teacher_end_to_end(teacher):
    records = [Record("add", text="What is 2 + 3?"), Record("mul", text="What is 6 times 7?")]
    cfg = PluralityFilterConfig(n_samples=4, max_tokens=32, min_extracted_fraction=0.25)
    out, ctx = run_step(PluralityFilter(cfg, teacher, seed=1), records)
    assert len(out) + sum(ctx.drops.values()) == 2
    assert set(ctx.drops) <= {"too_easy_unanimous", "too_hard_inconsistent", "no_extractable_answers"}
    assert ctx.counters["model_calls"] == 2 and ctx.counters["samples"] == 8
    for r in out:
        assert r.metadata["n_samples"] == 4 and 0 < r.metadata["agreement"] < 1
        assert sum(r.metadata["cluster_sizes"]) == r.metadata["n_extracted"]
        assert r.provenance.model == teacher.name
    print("plurality real teacher:", len(out), "kept;", ctx.drops)
