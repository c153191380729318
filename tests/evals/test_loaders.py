"""Eval item files: JSONL, gzip, Parquet, ids, and errors that name the file and line."""

from __future__ import annotations

import gzip
import json

import pytest

from phiforge.errors import ConfigError, DataError
from phiforge.evals.loaders import load_items

ROWS = [{"task_id": None, "question": "a?", "answer": "1"}, {"task_id": "T/2", "question": "b?", "answer": "2"}]


def test_jsonl_gzip_and_parquet_give_the_same_items(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = "".join(json.dumps(r) + "\n" for r in ROWS)
    (tmp_path / "a.jsonl").write_text("\n" + text)  # blank lines are skipped
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write(text)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    loaded = [load_items(str(tmp_path / n), task="t", required=("question",))
              for n in ("a.jsonl", "a.jsonl.gz", "a.parquet")]
    ids = [[it["id"] for it in items] for items in loaded]
    assert ids[0] == ids[1] == ids[2] == ["0", "T/2"]  # task_id when given, else the position among items
    assert all(items[1]["answer"] == "2" for items in loaded)


def test_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a"}\n{"answer": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: task 't' item lacks field\(s\) question"):
        load_items(str(bad), task="t", required=("question",))
    bad.write_text('{"question": "a"}\nnot json\n')
    with pytest.raises(DataError, match="bad.jsonl:2: malformed JSON"):
        load_items(str(bad), task="t")
    bad.write_text('{"id": 1, "question": "a"}\n{"id": 1, "question": "b"}\n')
    with pytest.raises(DataError, match="duplicate item id '1'"):
        load_items(str(bad), task="t")
    with pytest.raises(DataError, match="not found"):
        load_items(str(tmp_path / "missing.jsonl"), task="t")
    bad.write_text("")
    with pytest.raises(DataError, match="holds no items"):
        load_items(str(bad), task="t")
    with pytest.raises(ConfigError, match="hf:<dataset>:<split>"):
        load_items("hf:onlyname", task="t")
