"""Shards: three formats, atomic writes, folder/glob readers, readable by datasets and pandas."""

from __future__ import annotations

import json

import pytest

from phiforge.dataflow import FORMATS, Provenance, Record, ShardWriter, list_shards, read_records, write_shards
from phiforge.errors import DataError


def mixed_records(n: int = 10) -> list[Record]:
    """Text and chat rows with different metadata keys and types: the schema must still be one."""
    out = []
    for i in range(n):
        if i % 2:
            out.append(Record(f"c{i}", messages=[{"role": "user", "content": f"q{i}"},
                                                 {"role": "assistant", "content": "a"}],
                              metadata={"score": i / 3}, provenance=Provenance(round=i, template_version=1)))
        else:
            out.append(Record(f"t{i}", text=f"doc {i} ü", metadata={"lang": "de", "n": [i]} if i else {}))
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_each_format(tmp_path, fmt):
    pytest.importorskip({"jsonl": "json", "jsonl.zst": "zstandard", "parquet": "pyarrow"}[fmt])
    records = mixed_records(25)
    paths = write_shards(records, tmp_path, records_per_shard=10, format=fmt)
    assert [p.name for p in paths] == [f"shard-0000{i}.{fmt}" for i in range(3)]
    assert list(read_records(tmp_path)) == records
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_writer_abort_leaves_nothing(tmp_path):
    target = tmp_path / "shard-00000.jsonl"
    with pytest.raises(RuntimeError):
        with ShardWriter(target) as w:
            w.write_record(Record("a", text="x"))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_list_shards_folder_glob_and_list(tmp_path):
    write_shards(mixed_records(4), tmp_path, records_per_shard=2)
    (tmp_path / ".shard-00009.jsonl.tmp-1").write_text("half")
    (tmp_path / "dropped").mkdir()
    (tmp_path / "dropped" / "shard-00000.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("")
    names = ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert [p.name for p in list_shards(tmp_path)] == names
    assert [p.name for p in list_shards(str(tmp_path / "shard-*.jsonl"))] == names
    assert [p.name for p in list_shards([tmp_path / names[1], tmp_path / names[0]])] == names[::-1]
    with pytest.raises(DataError, match="no shard files found"):
        list_shards(tmp_path / "nothing-*.jsonl")


@pytest.mark.parametrize("fmt", FORMATS)
def test_hugging_face_datasets_reads_the_shards(tmp_path, fmt):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("zstandard")
    write_shards(mixed_records(30), tmp_path / "d", records_per_shard=7, format=fmt)
    builder = "parquet" if fmt == "parquet" else "json"
    ds = datasets.load_dataset(builder, data_files=str(tmp_path / "d" / f"shard-*.{fmt}"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 30 and set(ds.column_names) == set(Record("x", text="").to_dict())
    row = ds[1]
    assert row["messages"][0] == {"role": "user", "content": "q1"} and row["round"] == 1
    assert json.loads(row["metadata"]) == {"score": 1 / 3}
    assert Record.from_dict(ds[2]) == mixed_records(3)[2]


def test_pandas_reads_jsonl_shards(tmp_path):
    pd = pytest.importorskip("pandas")
    path = write_shards(mixed_records(6), tmp_path, records_per_shard=6)[0]
    df = pd.read_json(path, lines=True)
    assert list(df["id"]) == [r.id for r in mixed_records(6)] and len(df.columns) == 10
