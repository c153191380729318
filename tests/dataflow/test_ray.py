"""RayExecutor in local mode: same outputs and stats as LocalExecutor, same resume rules."""

from __future__ import annotations

import os

import pytest

from phiforge.dataflow import ExecutorConfig, LocalExecutor, Record, RayExecutor, read_records, write_shards
from phiforge.dataflow.task import marker_path
from phiforge.dataflow.testing import DropOddLength, RewritePrompt, Upper

ray = pytest.importorskip("ray")
STEPS = [DropOddLength(), Upper(), RewritePrompt()]


@pytest.fixture(scope="module")
def ray_session():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def shards(tmp_path):
    records = [Record(f"r{i:03d}", text="ab" * (i % 5) + "c" * (i % 2)) for i in range(30)]
    write_shards(records, tmp_path / "in", records_per_shard=5)
    return tmp_path / "in"


def test_ray_matches_local_and_resumes(ray_session, shards, tmp_path):
    local = LocalExecutor(STEPS, input=str(shards), output_dir=str(tmp_path / "local"), progress=False).run()
    config = ExecutorConfig(input=str(shards), output_dir=str(tmp_path / "ray"), kind="ray", workers=0,
                            progress=False)
    executor = config.build(STEPS)
    assert isinstance(executor, RayExecutor)
    stats = executor.run()
    for key in ("tasks", "records_in", "records_out", "dropped", "drop_reasons", "templates", "steps"):
        assert stats[key] == local[key], key
    for i in range(6):
        name = f"shard-0000{i}.jsonl"
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    marker_path(tmp_path / "ray", 4).unlink()
    again = RayExecutor(STEPS, config).run()
    assert again["tasks_skipped"] == 5 and again["records_out"] == stats["records_out"]
    ids = [r.id for r in read_records(tmp_path / "ray")]
    assert len(ids) == len(set(ids)) == 15


def test_ray_task_cap(ray_session, shards, tmp_path):
    stats = RayExecutor(STEPS, input=str(shards), output_dir=str(tmp_path / "o"), kind="ray", workers=1,
                        progress=False).run()
    assert stats["tasks"] == 6 and stats["records_out"] == 15
