"""Eval-side contamination flags: which items of a task appear in a training corpus, and flags files."""

import json

import pytest

from phiforge.curate.decontam import DecontamConfig, ItemHit
from phiforge.errors import DataError
from phiforge.evals.contamination import flag_items, flag_tasks, read_flags, split_label, write_flags

ITEMS = {
    "copied": "A farmer has 17 cows and buys 23 more at the market. Each cow gives 9 liters of milk a day. "
              "How many liters of milk does the farmer get in one week?",
    "renumbered": "Maria reads 12 pages of her book every morning and 8 pages every evening. Her book has "
                  "400 pages, and she has already read 35 of them. How many more days will she need to "
                  "finish the 400 page book?",
    "tail_kept": "Tom reads 12 pages of a novel every day. The novel has 400 pages in total. "
                 "How many days will it take him to finish the whole novel?",
    "reworded": "A train leaves the station at 3 pm traveling at 60 miles per hour. A second train leaves "
                "the same station at 4 pm traveling at 80 miles per hour in the same direction. "
                "At what time does the second train catch up with the first?",
    "short": "What is 7 times 8?",
    "unseen": "The sum of three consecutive odd integers is 75. What is the largest of the three integers?",
}

CORPUS = [
    "Chapter 1. Cows are large domesticated animals kept on farms for milk and meat.",
    # an exact copy inside a longer web page: a 13-gram hit
    "Homework help forum. Question: " + ITEMS["copied"] + " Answer: 40 cows times 9 liters is 360 per day.",
    # the same problem with every number changed: 7-grams through the numbers are lost, and
    # no 13 words in a row survive
    "Maria reads 15 pages of her book every morning and 5 pages every evening. Her book has "
    "300 pages, and she has already read 20 of them. How many more days will she need to "
    "finish the 300 page book?",
    # numbers changed, but a 13-word tail survives: caught by the 13-gram test, like the
    # report's example (App. B: a 13-gram hit with a 7-gram ratio of 0.395)
    "Tom reads 30 pages of a novel every day. The novel has 600 pages in total. "
    "How many days will it take him to finish the whole novel?",
    # a rephrasing keeps only short phrases
    "Two trains depart from one station, the first at 3 pm at 60 mph and the second an hour later "
    "at 80 mph, heading the same way. When does the faster train reach the slower one?",
    "what is 7 times 8",
]


def flags_for_corpus(**kwargs):
    ids = list(ITEMS)
    return flag_items("gsm_like", [{"id": i} for i in ids], [ITEMS[i] for i in ids], iter(CORPUS), **kwargs)


def test_planted_leaks_are_flagged_and_paraphrases_are_not_contaminated():
    flags = flags_for_corpus()
    assert set(flags) == set(ITEMS)
    assert flags["copied"] == ItemHit("contaminated", 1.0, 1, "13gram")
    assert flags["short"] == ItemHit("contaminated", 1.0, 5, "7gram")
    assert flags["unseen"] == ItemHit("clean", 0.0, None, "")
    assert flags["reworded"].verdict == "clean"
    # 40 words, 34 seven-grams; only the runs between changed numbers survive: "pages of her book
    # every morning and" (1) and "of them how many more days will she need to finish the" (6)
    assert flags["renumbered"] == ItemHit("clean", 7 / 34, None, "")
    tail = flags["tail_kept"]
    assert (tail.verdict, tail.reason, tail.doc) == ("contaminated", "13gram", 3)
    assert tail.ratio < 0.8


def test_renumbered_item_is_partial_under_a_lower_info_threshold():
    flags = flags_for_corpus(config=DecontamConfig(info_threshold=0.2))
    assert flags["renumbered"] == ItemHit("partial", 7 / 34, 2, "7gram")


def test_several_tasks_in_one_pass_match_one_task_at_a_time():
    ids = list(ITEMS)
    items, texts = [{"id": i} for i in ids], [ITEMS[i] for i in ids]
    other = ([{"id": "copied"}], ["An unrelated question about the boiling point of water at sea level?"])
    docs = []
    both = flag_tasks({"gsm_like": (items, texts), "other": other}, (docs.append(d) or d for d in CORPUS))
    assert len(docs) == len(CORPUS)  # streamed once
    assert both["gsm_like"] == flags_for_corpus()
    assert both["other"] == {"copied": ItemHit()}


def test_progress_reports_documents_read():
    seen = []
    flags_for_corpus(progress=seen.append)
    assert seen == [len(CORPUS)]


def test_flag_items_needs_one_text_per_item_and_unique_ids():
    with pytest.raises(ValueError, match="'t' has 2 items but 1 texts"):
        flag_items("t", [{"id": "a"}, {"id": "b"}], ["x"], [])
    with pytest.raises(DataError, match="duplicate item 'a'"):
        flag_items("t", [{"id": "a"}, {"id": "a"}], ["x y z", "x y z"], [])


def test_flags_file_round_trip(tmp_path):
    path = tmp_path / "flags.jsonl"
    flags = flags_for_corpus()
    assert write_flags(path, "gsm_like", flags) == len(ITEMS)
    assert read_flags(path) == {"gsm_like": {i: f.verdict for i, f in flags.items()}}


def test_flags_file_keeps_the_worst_verdict_and_accepts_integer_ids(tmp_path):
    path = tmp_path / "flags.jsonl"
    rows = [{"task": "mmlu", "id": 3, "verdict": "partial", "ratio": 0.6, "benchmark": "mmlu"},
            {"task": "mmlu", "id": "3", "verdict": "contaminated"},
            {"task": "mmlu", "id": "3", "verdict": "clean"},
            {"task": "gpqa", "id": "x", "verdict": "clean"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert read_flags(path) == {"mmlu": {"3": "contaminated"}, "gpqa": {"x": "clean"}}


@pytest.mark.parametrize(("line", "message"), [
    ('{"task": "t", "id": "a", "verdict": "clean"', r"flags\.jsonl:2: malformed JSON"),
    ('{"task": "t", "verdict": "clean"}', r"flags\.jsonl:2: missing field 'id'"),
    ('{"task": "t", "id": "a", "verdict": "dirty"}', r"flags\.jsonl:2: field 'verdict': unknown .*'dirty'"),
    ('{"task": "t", "id": "a", "verdict": "clean", "ratio": 1.5}', r"flags\.jsonl:2: field 'ratio'"),
    ('{"task": "", "id": "a", "verdict": "clean"}', r"flags\.jsonl:2: field 'task'"),
    ('{"task": "t", "id": [1], "verdict": "clean"}', r"flags\.jsonl:2: field 'id'"),
])
def test_malformed_flags_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "flags.jsonl"
    path.write_text('{"task": "t", "id": "ok", "verdict": "clean"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        read_flags(path)


def test_missing_flags_file(tmp_path):
    with pytest.raises(DataError, match="flags file not found"):
        read_flags(tmp_path / "nope.jsonl")


def test_split_label():
    assert [split_label(v) for v in ("clean", "partial", "contaminated")] == ["clean", "partial", "contaminated"]
    with pytest.raises(DataError, match="expected one of clean, partial, contaminated"):
        split_label("Clean")
