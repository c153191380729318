"""The record contract: flat rows with fixed column types, validated with file:line errors."""

from __future__ import annotations

import pytest

from phiforge.dataflow import COLUMNS, Provenance, Record, read_records
from phiforge.errors import DataError


def test_round_trip_is_flat_and_complete():
    rec = Record("a", messages=[{"role": "user", "content": "hi"}], metadata={"score": 0.5, "tags": ["x"]},
                 provenance=Provenance(seed_id="s1", technique="rewrite", template_id="t", template_version=2,
                                       model="m", round=1))
    row = rec.to_dict()
    assert tuple(row) == COLUMNS
    assert isinstance(row["metadata"], str)  # encoded: free-form keys must not change the schema
    assert Record.from_dict(row) == rec


def test_minimal_row_and_metadata_object_are_accepted():
    rec = Record.from_dict({"id": "x", "text": "t", "metadata": {"k": 1}})
    assert rec.metadata == {"k": 1} and rec.provenance == Provenance()


@pytest.mark.parametrize("row, fragment", [
    ({"id": "", "text": "t"}, "'id'"),
    ({"id": "a"}, "needs 'text' or 'messages'"),
    ({"id": "a", "text": 3}, "'text' must be a string"),
    ({"id": "a", "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
    ({"id": "a", "messages": [{"role": "user"}]}, "exactly the keys"),
    ({"id": "a", "text": "t", "round": "1"}, "'round' must be int"),
    ({"id": "a", "text": "t", "round": True}, "'round' must be int"),
    ({"id": "a", "text": "t", "lang": "en"}, "put extra fields inside 'metadata'"),
    ({"id": "a", "text": "t", "metadata": "[1]"}, "must encode a JSON object"),
])
def test_bad_rows_name_the_field(row, fragment):
    with pytest.raises(DataError) as e:
        Record.from_dict(row, "f.jsonl:7")
    assert str(e.value).startswith("f.jsonl:7: ") and fragment in str(e.value)


def test_validate_checks_records_built_in_code():
    with pytest.raises(DataError, match="record 'z'.*messages"):
        Record("z", messages="hello").validate()


def test_read_errors_name_file_and_line(tmp_path):
    path = tmp_path / "shard-00000.jsonl"
    path.write_text('{"id": "a", "text": "ok"}\n\n{"id": "b", "text": "ok"\n')
    with pytest.raises(DataError, match=r"shard-00000.jsonl:3: malformed JSON"):
        list(read_records(path))
    path.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": null}\n')
    with pytest.raises(DataError, match=r"shard-00000.jsonl:2: needs 'text' or 'messages'"):
        list(read_records(path))
