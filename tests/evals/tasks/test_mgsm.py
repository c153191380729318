"""MGSM (simple-evals protocol): per-language prompts and answer words, number extraction, metrics, items."""

import json

import pytest

from phiforge.errors import DataError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.mgsm import ANSWER_PREFIX, INSTRUCTIONS, extract_mgsm_number, same_number


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("language, response, number", [
    ("en", "3 + 4 = 7\nAnswer: 7", "7"),
    ("en", "Answer: 1,234", "1234"),
    ("en", "Answer: 18.", "18"),
    ("en", "Answer: 12.50", "12.50"),
    ("de", "Also 5 + 13.\nAntwort: 18", "18"),
    ("es", "Respuesta: 42 manzanas", "42"),
    ("fr", "Réponse : 12", "12"),
    ("ja", "答え: 5", "5"),
    ("zh", "答案：42", "42"),
    ("ru", "Ответ: 3", "3"),
    ("sw", "Jibu: 10", "10"),
    ("bn", "উত্তর: 8", "8"),
    ("te", "సమాధానం: 6", "6"),
    ("th", "คำตอบ: 9", "9"),
    ("de", "Antwort: 3 ... Antwort: 4 Äpfel und 5", "5"),  # after the last answer word, its last number
    ("en", "Answer: -4", "4"),  # no sign, as simple-evals
    ("de", "Answer: 18", None),  # English answer word in a German item
    ("en", "Answer: none", None),
    ("en", "The result is 7.", None),
])
def test_per_language_extraction(language, response, number):
    assert extract_mgsm_number(response, language) == number


def test_number_match():
    assert same_number("18", "18.0") and same_number("18", "18.") and same_number("1234", "1,234")
    assert not same_number("18", "18.5") and not same_number("18", "180")


def test_every_language_has_instruction_naming_its_answer_word():
    assert set(INSTRUCTIONS) == set(ANSWER_PREFIX) == {"en", "bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th",
                                                        "zh"}
    assert all(ANSWER_PREFIX[lang] in text for lang, text in INSTRUCTIONS.items())


def test_prompt_grade_and_metrics(tmp_path):
    rows = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": 7},
            {"question": "Anna hat 10 Äpfel und isst 2. Wie viele?", "answer": "8", "language": "de"},
            {"question": "太郎はりんごを5個持っています。", "answer": "1,000", "language": "ja"}]
    task = make_task("mgsm", TaskOptions(path=write_jsonl(tmp_path / "mgsm.jsonl", rows)))
    en, de, ja = task.load()
    assert (en["language"], de["answer"], ja["answer"]) == ("en", "8", "1000")
    assert task.prompt(de, 0)[0]["content"].startswith(INSTRUCTIONS["de"] + "\n\nAnna hat")
    grades = [task.grade(en, "Answer: 7", 0), task.grade(de, "Antwort: 9", 0), task.grade(ja, "答え：1,000", 0)]
    assert [(g.score, g.label, g.extracted) for g in grades] == [(1.0, "correct", "7"), (0.0, "incorrect", "9"),
                                                                (1.0, "correct", "1000")]
    assert task.grade(de, "Answer: 8", 0).label == "no_answer"
    groups = [[{"score": g.score, "label": g.label, "extracted": g.extracted, **g.extra}] for g in grades]
    m = task.metrics(groups)
    assert m == pytest.approx({"accuracy": 2 / 3, "accuracy/de": 0.0, "accuracy/en": 1.0, "accuracy/ja": 1.0,
                               "accuracy/latin": 0.5, "accuracy/non_latin": 1.0})


def test_simple_evals_tsv_columns_and_bad_language(tmp_path):
    task = make_task("mgsm", TaskOptions(path=write_jsonl(tmp_path / "a.jsonl",
                                                          [{"inputs": "q", "targets": "3", "lang": "SW"}])))
    assert task.load()[0] == {"id": "0", "question": "q", "language": "sw", "answer": "3"}
    task = make_task("mgsm", TaskOptions(path=write_jsonl(tmp_path / "b.jsonl",
                                                          [{"question": "q", "answer": 3, "language": "xx"}])))
    with pytest.raises(DataError, match="language 'xx' is not one of"):
        task.load()
    task = make_task("mgsm", TaskOptions(path=write_jsonl(tmp_path / "c.jsonl", [{"question": "q", "answer": "3.5"}])))
    with pytest.raises(DataError, match="not an integer"):
        task.load()


def test_hugging_face_columns_and_a_default_language_per_file(tmp_path):
    rows = [{"question": "Wie viele?", "answer": None, "answer_number": 12}, {"question": "q", "language": "en",
                                                                             "answer": "x", "answer_number": 3}]
    task = make_task("mgsm", TaskOptions(path=write_jsonl(tmp_path / "de.jsonl", rows), params={"language": "de"}))
    de, en = task.load()
    assert (de["language"], de["answer"], en["language"], en["answer"]) == ("de", "12", "en", "3")
    assert "Antwort" in task.prompt(de, 0)[0]["content"]


def test_missing_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "mgsm.jsonl", [{"question": "q", "answer": 1}, {"question": "q2"}])
    with pytest.raises(DataError, match=r"mgsm\.jsonl:2: .*lacks field\(s\) answer"):
        make_task("mgsm", TaskOptions(path=path)).load()
