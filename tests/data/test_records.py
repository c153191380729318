import pytest

from phiforge.data import tinymath
from phiforge.data.records import read_jsonl, write_jsonl
from phiforge.errors import DataError


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 1, "text": "ok"}\n\n{"id": 2, "text": oops}\n')
    with pytest.raises(DataError, match=r"d.jsonl:3: malformed JSON"):
        list(read_jsonl(path))


def test_missing_field_and_non_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 1}\n')
    with pytest.raises(DataError, match=r"d.jsonl:1: missing field 'text'"):
        list(read_jsonl(path, required=("text",)))
    path.write_text('[1, 2]\n')
    with pytest.raises(DataError, match="expected a JSON object"):
        list(read_jsonl(path))


def test_invalid_utf8_and_missing_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        list(read_jsonl(path))
    with pytest.raises(DataError, match="not found"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def test_write_is_atomic_and_roundtrips(tmp_path):
    rows = [{"id": str(i), "text": f"doc {i}"} for i in range(5)]
    assert write_jsonl(tmp_path / "o.jsonl", rows) == 5
    assert list(read_jsonl(tmp_path / "o.jsonl")) == rows
    assert [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]


def test_tinymath_is_deterministic_and_eval_is_held_out():
    a = tinymath.generate(7, 500, 300, 5, 50, 20, 0.2)
    b = tinymath.generate(7, 500, 300, 5, 50, 20, 0.2)
    assert a == b
    eval_questions = {it["question"] for it in a["eval"]}
    assert len(eval_questions) == 50
    train_text = "\n".join(r["text"] for r in a["train/textbook"] + a["train/long"])
    assert not any(q in train_text for q in eval_questions)


def test_textbook_solutions_are_correct():
    import random
    rng = random.Random(0)
    for _ in range(200):
        p = tinymath.sample_problem(rng)
        doc = tinymath.textbook_doc(p)
        assert tinymath.extract_answer(doc) == p.answer
        assert all(0 <= v <= 80 for v in p.trace())
        import re
        for lhs, rhs in re.findall(r"(\d+ [-+*] \d+) = (\d+)", doc):
            assert eval(lhs) == int(rhs)
