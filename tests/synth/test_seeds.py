"""Seed curation (report §2.1, App. D.1.1): two-stage educational filter, excerpt tagging, metadata filter."""

import json

import pytest
from pydantic import ValidationError

from phiforge.dataflow import LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.step import StepContext
from phiforge.synth.seeds import (ExcerptTagger, ExcerptTaggerConfig, ExcerptTagging, PageEducationalFilter,
                                  PageEducationalFilterConfig, PassageScorer, PassageScorerConfig,
                                  PassageSegmenter, PassageSegmenterConfig, SeedMetadataFilter,
                                  SeedMetadataFilterConfig, check_range, educational_filter_steps, number_lines,
                                  parse_grade, split_passages)
from phiforge.testing.scripted import ScriptedBackend

DOC = "\n".join([
    "Home | About | Login",
    "The sum of two odd numbers is even.",
    "Write them as 2a+1 and 2b+1; their sum is 2(a+b+1), a multiple of 2.",
    "ok",
    "Hence 3 + 5 = 8 is even, as the rule predicts.",
    "Footer text.",
])


def tag(start, end, **kw):
    return {"start_line": start, "end_line": end, "information_type": "Proof", "brief_description": "odd sums",
            "complexity": kw.get("complexity", "B"), "factual_obscurity": "E", "chain_of_reasoning": True,
            "reasoning_steps": [{"assumption": "odd = 2k+1", "conclusion": "sum even", "description": "algebra"}],
            "dependencies": kw.get("dependencies", ["definition of odd"])}


def run(step, records):
    ctx = StepContext(step.name)
    out = list(step.run(iter(records), ctx))
    return out, ctx


# --------------------------------------------------------------------------- schema and helpers


@pytest.mark.parametrize("raw, grade", [("b", "B"), ("A+", "A"), ("Grade: C", "C"), (" f ", "F"), ("D-", "D")])
def test_parse_grade_accepts_letter_grades(raw, grade):
    assert parse_grade(raw) == grade


@pytest.mark.parametrize("raw", ["G", "AB", "3", ""])
def test_parse_grade_rejects_the_rest(raw):
    with pytest.raises(ValueError, match="letter grade"):
        parse_grade(raw)


def test_tagging_schema_accepts_list_single_object_and_string_dependencies():
    one = ExcerptTagging.model_validate(tag(2, 3, complexity="b+", dependencies="prior findings; line 3"))
    assert one.excerpts[0].complexity == "B" and one.excerpts[0].dependencies == ["prior findings", "line 3"]
    assert len(ExcerptTagging.model_validate([tag(1, 2), tag(3, 4)]).excerpts) == 2
    with pytest.raises(ValidationError):
        ExcerptTagging.model_validate({"excerpts": [dict(tag(1, 2), complexity="Z")]})


@pytest.mark.parametrize("start, end, mode, expected", [
    (2, 4, "clamp", (2, 4, None)),
    (0, 3, "clamp", (1, 3, None)),
    (5, 12, "clamp", (5, 6, None)),
    (5, 12, "drop", (5, 12, "excerpt_out_of_range")),
    (5, 3, "clamp", (5, 3, "excerpt_bad_line_range")),
    (7, 9, "clamp", (7, 9, "excerpt_out_of_range")),
])
def test_check_range_clamps_or_drops(start, end, mode, expected):
    assert check_range(start, end, 6, mode) == expected


def test_number_lines_pads_numbers():
    assert number_lines(["a"] * 10).splitlines()[0] == " 1| a"


def test_split_passages_packs_paragraphs_and_splits_long_ones():
    text = "A" * 40 + "\n\n" + "B" * 40 + "\n\n \n" + "C" * 90
    assert split_passages(text, target=100, hard_max=200) == ["A" * 40 + "\n\n" + "B" * 40, "C" * 90]
    long = " ".join(["Sentence number one is here."] * 10)
    parts = split_passages(long, target=60, hard_max=60)
    assert all(len(p) <= 60 for p in parts) and " ".join(parts) == long
    assert split_passages("x" * 130, target=50, hard_max=50) == ["x" * 50, "x" * 50, "x" * 30]
    assert split_passages("  \n\n ", 100, 200) == []


def test_configs_reject_unknown_keys_and_bad_lengths():
    with pytest.raises(ValidationError):
        PageEducationalFilterConfig(treshold=3)
    with pytest.raises(ValidationError, match="min_chars <= target_chars"):
        PassageSegmenterConfig(min_chars=500, target_chars=100)


# --------------------------------------------------------------------------- stage 1: pages


def page_scores(text, k):
    if "junk" in text:
        return "no idea"
    if "great" in text:
        return 'Here: {"score": 4.5, "reason": "worked proof"}'
    if "late" in text:
        return '{"score": 3, "reason": "fixed"}' if "could not be used" in text else '{"score": 9}'
    return '{"score": 1, "reason": "menus"}'


def test_page_filter_keeps_educational_pages_and_drops_with_reasons():
    be = ScriptedBackend(page_scores)
    step = PageEducationalFilter(PageEducationalFilterConfig(threshold=3), be)
    pages = [Record("p1", "a great page"), Record("p2", "menus"), Record("p3", "junk"), Record("p4", "late page")]
    out, ctx = run(step, pages)
    assert [r.id for r in out] == ["p1", "p4"]
    assert out[0].metadata == {"educational_score": 4.5, "educational_reason": "worked proof"}
    assert ctx.drops == {"page_low_educational_value": 1, "page_score_invalid_json": 1}
    assert ctx.counters["kept"] == 2 and ctx.counters["json_valid_after_reask"] == 1
    assert ctx.counters["model_calls"] == 4 + 2 + 1  # one batched call, then re-asks of 2, then 1
    assert "seeds_page_educational@1" in ctx.templates and ctx.templates["seeds_page_educational@1"]["renders"] == 4


def test_page_filter_cuts_long_pages_in_the_prompt():
    be = ScriptedBackend(page_scores)
    step = PageEducationalFilter(PageEducationalFilterConfig(max_chars=100, max_reasks=0), be)
    run(step, [Record("p", "great " + "x" * 5000)])
    assert "x" * 94 in be.prompts[0] and "x" * 95 not in be.prompts[0]


# --------------------------------------------------------------------------- stage 2: passages


def test_segmenter_splits_pages_and_drops_short_passages():
    page = Record("pg", "P" * 300 + "\n\n" + "Q" * 395 + "\n\nshort", metadata={"url": "u"})
    out, ctx = run(PassageSegmenter(PassageSegmenterConfig(target_chars=400, max_chars=800, min_chars=100)),
                   [page, Record("empty", "   ")])
    assert [r.id for r in out] == ["pg/p/0", "pg/p/1"]
    assert out[1].metadata == {"url": "u", "page_id": "pg", "passage_index": 1, "num_passages": 3}
    assert out[0].provenance.seed_id == "pg" and out[0].provenance.technique == "passage_segmentation"
    assert ctx.drops == {"passage_too_short": 1, "empty_page": 1}
    assert ctx.counters == {"pages_expanded": 1, "passages": 3}


def passage_scores(text, k):
    if "facts and proof" in text:
        return '{"factual": 4, "reasoning": 4, "reason": "derivation"}'
    if "facts only" in text:
        return '{"factual": 4, "reasoning": 1, "reason": "a list"}'
    if "chatter" in text:
        return '{"factual": 1, "reasoning": 4, "reason": "vague"}'
    return '{"factual": "lots"}'


def test_passage_scorer_drops_low_factual_low_reasoning_and_invalid():
    step = PassageScorer(PassageScorerConfig(max_reasks=1), ScriptedBackend(passage_scores))
    recs = [Record(i, t) for i, t in [("a", "facts and proof"), ("b", "facts only"), ("c", "chatter"), ("d", "?")]]
    out, ctx = run(step, recs)
    assert [r.id for r in out] == ["a"]
    assert out[0].metadata == {"factual_score": 4.0, "reasoning_score": 4.0, "passage_reason": "derivation"}
    assert ctx.drops == {"passage_low_reasoning": 1, "passage_low_factual": 1, "passage_score_invalid_json": 1}


# --------------------------------------------------------------------------- excerpt tagging


def tagger_reply(text, k):
    if "nothing here" in text:
        return '{"excerpts": []}'
    if "broken" in text:
        return "I think lines 2 to 5."
    return json.dumps({"excerpts": [
        tag(2, 3),            # kept
        tag(5, 9),            # partly outside the 6 lines: clamped to 5-6
        tag(4, 2),            # end before start
        tag(20, 22),          # outside the document
        tag(2, 3),            # same range again
        tag(4, 4),            # "ok": too short
        tag(1, 1),            # over max_excerpts
    ]})


def test_excerpt_tagger_cuts_text_from_lines_and_explains_every_drop():
    be = ScriptedBackend(tagger_reply)
    step = ExcerptTagger(ExcerptTaggerConfig(max_excerpts=6, min_excerpt_chars=10, max_reasks=1), be)
    docs = [Record("d", DOC, metadata={"url": "u"}), Record("e", "nothing here"), Record("f", "broken"),
            Record("g", " \n ")]
    out, ctx = run(step, docs)
    assert [r.id for r in out] == ["d/excerpt/2-3", "d/excerpt/5-6"]
    assert out[0].text == DOC.splitlines()[1] + "\n" + DOC.splitlines()[2]
    assert out[1].text.startswith("Hence 3 + 5") and out[1].metadata["range_clamped"] is True
    meta = out[0].metadata
    assert meta["url"] == "u" and meta["source_id"] == "d" and meta["range_clamped"] is False
    assert meta["excerpt"]["complexity"] == "B" and meta["excerpt"]["chain_of_reasoning"] is True
    assert meta["excerpt"]["reasoning_steps"][0]["conclusion"] == "sum even"
    p = out[0].provenance
    assert (p.seed_id, p.technique, p.template_id, p.template_version, p.model) == (
        "d", "seed_extraction", "seeds_tag_excerpts", 1, "scripted")
    assert ctx.drops == {"excerpt_bad_line_range": 1, "excerpt_out_of_range": 1, "excerpt_duplicate": 1,
                         "excerpt_too_short": 1, "excerpt_over_limit": 1, "no_excerpts_tagged": 1,
                         "tagging_invalid_json": 1, "empty_document": 1}
    assert ctx.counters["excerpts_tagged"] == 7 == len(out) + 5
    assert ctx.counters["documents_expanded"] == 1 and ctx.counters["excerpt_range_clamped"] == 1
    assert "\n1| Home | About | Login" in be.prompts[0] and "(6 lines)" in be.prompts[0]


def test_excerpt_tagger_drop_mode_and_truncation():
    be = ScriptedBackend(lambda t, k: json.dumps([tag(2, 3), tag(3, 5)]))
    step = ExcerptTagger(ExcerptTaggerConfig(out_of_range="drop", max_lines=4, min_excerpt_chars=5), be)
    out, ctx = run(step, [Record("d", DOC)])
    assert [r.id for r in out] == ["d/excerpt/2-3"]
    assert ctx.drops == {"excerpt_out_of_range": 1} and ctx.counters["document_truncated"] == 1
    assert "Footer" not in be.prompts[0]


# --------------------------------------------------------------------------- metadata filter


def tagged(rid, **kw):
    t = tag(1, 2) | kw
    return Record(rid, "x", metadata={"excerpt": ExcerptTagging.model_validate(t).excerpts[0].model_dump()})


def test_seed_metadata_filter_reasons():
    cfg = SeedMetadataFilterConfig(min_complexity="b", require_chain_of_reasoning=True, min_reasoning_steps=1,
                                   information_types=["proof", "Worked Example"])
    recs = [tagged("ok"), tagged("easy", complexity="C"), tagged("flat", chain_of_reasoning=False),
            tagged("nosteps", reasoning_steps=[]), tagged("type", information_type="Anecdote"), Record("raw", "x")]
    out, ctx = run(SeedMetadataFilter(cfg), recs)
    assert [r.id for r in out] == ["ok"]
    assert ctx.drops == {"seed_low_complexity": 1, "seed_no_chain_of_reasoning": 1, "seed_few_reasoning_steps": 1,
                         "seed_information_type": 1, "seed_untagged": 1}
    out, _ = run(SeedMetadataFilter(SeedMetadataFilterConfig(min_complexity=None)), recs[:5])
    assert len(out) == 5


# --------------------------------------------------------------------------- executor


def pipeline_reply(text, k):
    if "EDUCATIONAL POTENTIAL" in text:
        return '{"score": 4, "reason": "ok"}' if "proof" in text else '{"score": 0, "reason": "ads"}'
    if "two separate 0-5 scales" in text:
        return '{"factual": 4, "reasoning": 4, "reason": "ok"}' if "odd" in text else '{"factual": 0, "reasoning": 0}'
    return json.dumps({"excerpts": [tag(1, 2), tag(2, 2, complexity="E")]})


def test_two_stage_filter_and_tagging_through_the_local_executor(tmp_path):
    proof = "The sum of two odd numbers is even.\nWrite them as 2a+1 and 2b+1; the sum is 2(a+b+1)."
    pages = [Record("page0", "a proof page\n\n" + "x" * 40 + "\n\n" + proof),
             Record("page1", "buy now, cheap ads"), Record("page2", "another proof:\n\n" + proof)]
    write_shards(pages, tmp_path / "in", records_per_shard=2)
    backend = ScriptedBackend(pipeline_reply)
    steps = educational_filter_steps(backend, segment=PassageSegmenterConfig(target_chars=50, max_chars=200,
                                                                             min_chars=20))
    steps += [ExcerptTagger(ExcerptTaggerConfig(min_excerpt_chars=10), backend), SeedMetadataFilter()]
    stats = LocalExecutor(steps, input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), workers=1,
                          progress=False).run()
    out = sorted(read_records(tmp_path / "out"), key=lambda r: r.id)
    assert [r.id for r in out] == ["page0/p/2/excerpt/1-2", "page2/p/1/excerpt/1-2"]
    assert out[0].metadata["educational_score"] == 4 and out[0].metadata["page_id"] == "page0"
    dropped = {(rec.id, reason, step) for rec, reason, step in read_dropped(tmp_path / "out" / "dropped")}
    assert ("page1", "page_low_educational_value", "page_educational_filter") in dropped
    assert ("page0/p/0", "passage_too_short", "passage_segmenter") in dropped
    assert ("page0/p/1", "passage_low_factual", "passage_scorer") in dropped
    assert ("page0/p/2/excerpt/2-2", "seed_low_complexity", "seed_metadata_filter") in dropped
    assert stats["drop_reasons"] == {"page_low_educational_value": 1, "passage_too_short": 2,
                                     "passage_low_factual": 1, "seed_low_complexity": 2}
    assert set(stats["templates"]) == {"seeds_page_educational@1", "seeds_passage_score@1", "seeds_tag_excerpts@1"}
    assert stats["records_in"] == 3 and stats["records_out"] == 2


# --------------------------------------------------------------------------- the real teacher


def test_real_teacher_filter_and_tagging_run_end_to_end(teacher):
    pages = [Record("p0", "Photosynthesis turns light into chemical energy.\n\nChlorophyll absorbs red and "
                          "blue light, so leaves look green because green light is reflected."),
             Record("p1", "Click here to subscribe! Best deals today.")]
    page_cfg = PageEducationalFilterConfig(threshold=0, max_tokens=32, max_reasks=0)
    out, ctx = run(PageEducationalFilter(page_cfg, teacher), pages)
    assert len(out) + sum(ctx.drops.values()) == 2
    assert set(ctx.drops) <= {"page_low_educational_value", "page_score_invalid_json"}
    assert all(0 <= r.metadata["educational_score"] <= 5 for r in out)
    tagger = ExcerptTagger(ExcerptTaggerConfig(max_tokens=40, max_reasks=0), teacher)
    excerpts, tctx = run(tagger, [pages[0]])
    assert tctx.counters["model_calls"] >= 1
    doc_drops = {"tagging_invalid_json", "no_excerpts_tagged"}
    assert sum(tctx.drops.get(r, 0) for r in doc_drops) + tctx.counters.get("documents_expanded", 0) == 1
    assert tctx.counters.get("excerpts_tagged", 0) == len(excerpts) + sum(
        n for r, n in tctx.drops.items() if r not in doc_drops)
    for r in excerpts:
        assert r.text in pages[0].text and r.provenance.seed_id == "p0"
    print("\nreal teacher pages:", {"kept": len(out), **ctx.drops}, "tagger:", {"kept": len(excerpts), **tctx.drops},
          tctx.counters)


def test_steps_pickle_with_recipe_model_refs():
    import pickle

    from phiforge.recipe.schema import ModelRef

    steps = educational_filter_steps(ModelRef()) + [ExcerptTagger(ExcerptTaggerConfig(), ModelRef()),
                                                    SeedMetadataFilter()]
    again = pickle.loads(pickle.dumps(steps))
    assert [s.name for s in again] == ["page_educational_filter", "passage_segmenter", "passage_scorer",
                                       "excerpt_tagger", "seed_metadata_filter"]
