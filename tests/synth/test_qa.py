"""QA pairs from documents (report §2.1): chain detection, grounded pairs, every drop reason, executor, real teacher."""

import json

import pytest

from phiforge.dataflow import LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.synth.qa import (DocumentQAGenerator, DocumentQAGeneratorConfig, QAPairs, ReasoningChains,
                               answer_in_question, evidence_found, format_steps, normalize_for_match)
from phiforge.testing.scripted import ScriptedBackend

PASSAGE = ("Ice floats on water. Water expands by about 9% when it freezes, so ice is less dense than "
           "liquid water. Because the ice layer insulates the water below, lakes freeze from the top down "
           "and fish survive the winter.")
CHAINS = {"chains": [{"summary": "why ice floats", "steps": [
    "Water expands about 9% on freezing.", "So ice is less dense and floats."]}]}


def pair(q, a, ev, step="density"):
    return {"question": q, "answer": a, "reasoning_step": step, "evidence": ev}


GOOD = pair("Why does a layer of ice form on top of a lake in winter instead of at the bottom?",
            "Water expands when it freezes, so ice is less dense than liquid water and floats.",
            "Water expands by about 9% when it freezes, so ice is less dense than liquid water")
PAIRS = [
    GOOD,
    pair("Why do fish in a frozen lake survive the winter?", "The ice layer insulates the water below.",
         "the ice layer insulates the water below ... fish survive the winter"),          # kept (ellipsis)
    pair("Why?", "Because.", "Ice floats on water."),                                      # qa_question_length
    pair("According to the passage, what happens to water when it freezes?", "It expands.",
         "Water expands by about 9%"),                                                     # qa_refers_to_passage
    pair("What fraction does water expand by when freezing?", "About 9%.", "9%"),          # qa_evidence_too_short
    pair("What is the density of ice in kilograms per litre?", "0.92 kg per litre.",
         "ice has a density of 0.92 kg per litre"),                                        # qa_ungrounded
    pair("Which is true of frozen water: ice is less dense, or ice is denser?", "Ice is less dense.",
         "so ice is less dense than liquid water"),                                        # qa_answer_in_question
    GOOD,                                                                                  # qa_duplicate
    pair("What keeps lake fish alive under the ice?", "Insulation by the ice.",
         "the ice layer insulates the water below"),                                       # qa_over_limit
]


def scripted(text, k):
    if "find its chains of reasoning" in text:
        if "menu" in text:
            return '{"chains": []}'
        if "garbled" in text:
            return "there are some chains"
        return json.dumps(CHAINS)
    if "nothing to ask" in text:
        return '{"pairs": []}'
    if "unparseable" in text:
        return "Q: why? A: because"
    return json.dumps({"pairs": PAIRS})


def run(step, records):
    ctx = StepContext(step.name)
    return list(step.run(iter(records), ctx)), ctx


# --------------------------------------------------------------------------- helpers


def test_normalisation_and_grounding():
    assert normalize_for_match("Ice \u201cfloats\u201d\u2014on  WATER!") == "ice floats on water"
    assert evidence_found("“Ice floats” on water", PASSAGE)
    assert evidence_found("Water expands ... the winter", PASSAGE)
    assert not evidence_found("the winter ... Water expands", PASSAGE)  # parts out of order
    assert not evidence_found("ice float", PASSAGE)                     # whole words only
    assert not evidence_found("...", PASSAGE)


def test_answer_in_question_uses_whole_words():
    assert answer_in_question("Is the total 12 apples?", "12 apples.")
    assert not answer_in_question("What is 5 + 7?", "12")
    assert not answer_in_question("What is 5 + 7?", "1")
    assert not answer_in_question("What?", "!!")


def test_reply_schemas_accept_bare_lists_and_single_items():
    assert len(QAPairs.model_validate([GOOD, GOOD]).pairs) == 2
    assert QAPairs.model_validate(dict(GOOD, reasoning_step=2)).pairs[0].reasoning_step == "2"
    chains = ReasoningChains.model_validate({"steps": [{"from": "a", "to": "b"}]}).chains
    assert chains[0].steps == ["a b"]
    assert format_steps(chains) == "1. a b" and "yourself" in format_steps(None)


# --------------------------------------------------------------------------- the step


def test_pairs_are_checked_and_written_as_chat_records():
    be = ScriptedBackend(scripted)
    step = DocumentQAGenerator(DocumentQAGeneratorConfig(max_pairs=8, max_reasks=1), be)
    recs = [Record("doc", PASSAGE, metadata={"source": "book"}), Record("menu", "menu: home, about"),
            Record("garbled", "garbled text"), Record("ask", "nothing to ask here"),
            Record("bad", "unparseable"), Record("blank", "  ")]
    out, ctx = run(step, recs)
    assert [r.id for r in out] == ["doc/qa/0", "doc/qa/1"]
    assert out[0].messages == [{"role": "user", "content": GOOD["question"]},
                               {"role": "assistant", "content": GOOD["answer"]}]
    assert out[0].metadata == {"source": "book", "passage_id": "doc", "reasoning_step": "density",
                               "evidence": GOOD["evidence"], "pair_index": 0}
    p = out[0].provenance
    assert (p.seed_id, p.technique, p.template_id, p.template_version, p.model) == (
        "doc", "document_qa", "qa_pairs", 1, "scripted")
    pair_drops = {"qa_question_length": 1, "qa_refers_to_passage": 1, "qa_evidence_too_short": 1,
                  "qa_ungrounded": 1, "qa_answer_in_question": 1, "qa_duplicate": 1, "qa_over_limit": 1}
    passage_drops = {"empty_passage": 1, "no_reasoning_chain": 1, "chain_detection_invalid_json": 1,
                     "no_qa_pairs": 1, "qa_invalid_json": 1}
    assert ctx.drops == pair_drops | passage_drops
    assert ctx.counters["passages_expanded"] + sum(passage_drops.values()) == len(recs)
    assert ctx.counters["pairs_proposed"] == len(out) + sum(pair_drops.values()) == len(PAIRS)
    assert any("1. Water expands about 9% on freezing.\n2. So ice is less dense and floats." in t for t in be.prompts)
    assert set(ctx.templates) == {"qa_detect_chains@1", "qa_pairs@1"}


def test_calls_are_batched_across_passages():
    be = ScriptedBackend(scripted)
    step = DocumentQAGenerator(DocumentQAGeneratorConfig(max_reasks=0), be)
    out, ctx = run(step, [Record(f"d{i}", PASSAGE) for i in range(3)])
    assert ctx.counters["model_calls"] == 6 and be.usage.calls == 6
    assert len(out) == 3 * 2


def test_tagged_reasoning_steps_skip_detection_and_detection_can_be_off():
    be = ScriptedBackend(scripted)
    tagged = Record("t", PASSAGE, metadata={"excerpt": {"reasoning_steps": [
        {"assumption": "water expands on freezing", "conclusion": "ice floats", "description": "density"}]}})
    out, ctx = run(DocumentQAGenerator(DocumentQAGeneratorConfig(), be), [tagged])
    assert ctx.counters["steps_from_tags"] == 1 and ctx.counters["model_calls"] == 1 and len(out) == 2
    assert "1. water expands on freezing -> ice floats (density)" in be.prompts[-1]
    be2 = ScriptedBackend(scripted)
    out, ctx = run(DocumentQAGenerator(DocumentQAGeneratorConfig(detect_chains=False), be2), [Record("p", PASSAGE)])
    assert ctx.counters["model_calls"] == 1 and "find the key reasoning steps of the passage yourself" in be2.prompts[0]


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError):
        DocumentQAGeneratorConfig(max_pair=3)


# --------------------------------------------------------------------------- executor


def test_local_executor_writes_pairs_and_dropped_candidates(tmp_path):
    write_shards([Record("a", PASSAGE), Record("b", "menu only"), Record("c", PASSAGE)], tmp_path / "in",
                 records_per_shard=2)
    step = DocumentQAGenerator(DocumentQAGeneratorConfig(max_pairs=2), ScriptedBackend(scripted))
    stats = LocalExecutor([step], input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), workers=1,
                          progress=False).run()
    out = sorted(read_records(tmp_path / "out"), key=lambda r: r.id)
    assert [r.id for r in out] == ["a/qa/0", "a/qa/1", "c/qa/0", "c/qa/1"]
    assert all(r.messages[0]["role"] == "user" and r.provenance.template_id == "qa_pairs" for r in out)
    dropped = {(rec.id, reason) for rec, reason, _ in read_dropped(tmp_path / "out" / "dropped")}
    assert ("b", "no_reasoning_chain") in dropped and ("a/qa/2", "qa_over_limit") in dropped
    assert stats["drop_reasons"] == {"no_reasoning_chain": 1, "qa_over_limit": 14}
    assert set(stats["templates"]) == {"qa_detect_chains@1", "qa_pairs@1"}
    assert stats["steps"][0]["counters"]["pairs_proposed"] == 18


# --------------------------------------------------------------------------- the real teacher


def test_real_teacher_runs_end_to_end(teacher):
    cfg = DocumentQAGeneratorConfig(detect_max_tokens=48, max_tokens=64, max_reasks=0)
    out, ctx = run(DocumentQAGenerator(cfg, teacher), [Record("ice", PASSAGE)])
    passage_reasons = {"empty_passage", "no_reasoning_chain", "chain_detection_invalid_json", "no_qa_pairs",
                       "qa_invalid_json"}
    passage_drops = sum(n for r, n in ctx.drops.items() if r in passage_reasons)
    assert ctx.counters.get("passages_expanded", 0) + passage_drops == 1
    assert ctx.counters.get("pairs_proposed", 0) == len(out) + sum(ctx.drops.values()) - passage_drops
    assert ctx.counters["model_calls"] >= 1
    for r in out:
        assert [m["role"] for m in r.messages] == ["user", "assistant"] and r.provenance.seed_id == "ice"
        assert evidence_found(r.metadata["evidence"], PASSAGE)
    print("\nreal teacher QA:", {"kept": len(out), **ctx.drops}, ctx.counters)


def test_step_pickles_with_a_recipe_model_ref():
    import pickle

    from phiforge.recipe.schema import ModelRef

    step = pickle.loads(pickle.dumps(DocumentQAGenerator(DocumentQAGeneratorConfig(), ModelRef())))
    assert step.pairs_template.id == "qa_pairs"
