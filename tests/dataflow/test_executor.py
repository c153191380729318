"""LocalExecutor: one task per shard, markers, merged stats, resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from phiforge.dataflow import ExecutorConfig, Filter, LocalExecutor, Record, read_dropped, read_records, write_shards
from phiforge.dataflow.task import marker_path
from phiforge.dataflow.testing import DropOddLength, FailOn, Noop, RewritePrompt, Sleep, Upper
from phiforge.errors import ConfigError, StageError

STEPS = [DropOddLength(), Upper(), RewritePrompt()]


@pytest.fixture
def shards(tmp_path):
    records = [Record(f"r{i:03d}", text="ab" * (i % 5) + "c" * (i % 2), metadata={"i": i}) for i in range(40)]
    write_shards(records, tmp_path / "in", records_per_shard=10)
    return tmp_path / "in"


def run_local(shards, out, workers=1, steps=STEPS, **kw):
    return LocalExecutor(steps, input=str(shards), output_dir=str(out), workers=workers, progress=False, **kw).run()


@pytest.mark.parametrize("workers", [1, 2])
def test_stats_outputs_and_dropped_shards(shards, tmp_path, workers):
    stats = run_local(shards, tmp_path / "out", workers=workers)
    assert (stats["tasks"], stats["records_in"], stats["records_out"], stats["dropped"]) == (4, 40, 20, 20)
    assert stats["drop_reasons"] == {"odd_length": 20} and stats["tasks_skipped"] == 0
    assert [s["name"] for s in stats["steps"]] == ["drop_odd_length", "upper", "rewrite_prompt"]
    assert stats["templates"]["rewrite_as_exercise@1"]["renders"] == 20
    out = list(read_records(tmp_path / "out"))
    assert sorted(r.provenance.seed_id for r in out) == [f"r{i:03d}" for i in range(0, 40, 2)]
    dropped = list(read_dropped(tmp_path / "out" / "dropped"))
    assert len(dropped) == 20 and {(reason, step) for _, reason, step in dropped} == {("odd_length", "drop_odd_length")}
    assert (tmp_path / "out" / "_dataflow" / "stats.json").is_file()


def test_one_and_two_workers_give_identical_shards(shards, tmp_path):
    run_local(shards, tmp_path / "a", workers=1)
    run_local(shards, tmp_path / "b", workers=2)
    for name in (f"shard-0000{i}.jsonl" for i in range(4)):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_rerun_skips_done_tasks_and_redoes_incomplete_ones(shards, tmp_path):
    out = tmp_path / "out"
    first = run_local(shards, out)
    marker_path(out, 2).unlink()  # task 2 "crashed" after writing its shard, before its marker
    (out / ".shard-00002.jsonl.tmp-999-abc").write_text('{"id": "half')  # and left a temp file
    again = run_local(shards, out)
    assert again["tasks_skipped"] == 3 and again["records_out"] == first["records_out"]
    assert not list(out.glob(".*"))
    ids = [r.id for r in read_records(out)]
    assert len(ids) == len(set(ids)) == 20


def test_keep_dropped_false_and_formats(shards, tmp_path):
    pytest.importorskip("zstandard")
    stats = run_local(shards, tmp_path / "out", keep_dropped=False, output_format="jsonl.zst")
    assert stats["dropped"] == 20 and not (tmp_path / "out" / "dropped").exists()
    assert len(list(read_records(tmp_path / "out"))) == 20


def test_config_is_validated_before_work(shards, tmp_path):
    with pytest.raises(ConfigError, match="output_format='csv'"):
        ExecutorConfig(input=str(shards), output_dir=str(tmp_path), output_format="csv")
    with pytest.raises(ConfigError, match="workers=0"):
        ExecutorConfig(input=str(shards), output_dir=str(tmp_path), workers=0)
    with pytest.raises(ConfigError, match="no lambdas"):
        run_local(shards, tmp_path / "o", workers=2, steps=[Filter(lambda r: True)])
    with pytest.raises(ConfigError, match="no run"):
        run_local(shards, tmp_path / "o", steps=[object()])
    assert run_local(shards, tmp_path / "o", workers=1, steps=[Filter(lambda r: True)])["records_out"] == 40


def test_changed_inputs_or_steps_are_refused(shards, tmp_path):
    run_local(shards, tmp_path / "out", steps=[Noop()])
    with pytest.raises(ConfigError, match="different steps"):
        run_local(shards, tmp_path / "out", steps=[Upper()])


def test_failing_step_names_the_shard_and_leaves_no_output(shards, tmp_path):
    with pytest.raises(StageError, match=r"task 1 \(.*shard-00001.jsonl\) failed: RuntimeError: boom on r012"):
        run_local(shards, tmp_path / "out", steps=[FailOn("r012")])
    assert not (tmp_path / "out" / "shard-00001.jsonl").exists() and not marker_path(tmp_path / "out", 1).exists()


KILLED_STAGE = textwrap.dedent("""
    import sys
    from phiforge.dataflow import LocalExecutor
    from phiforge.dataflow.testing import Sleep
    if __name__ == "__main__":
        LocalExecutor([Sleep(float(sys.argv[3]))], input=sys.argv[1], output_dir=sys.argv[2], workers=2,
                      progress=False).run()
""")


def test_kill_9_mid_stage_then_rerun_loses_and_duplicates_nothing(tmp_path):
    ids = [f"id{i:03d}" for i in range(48)]
    write_shards((Record(i, text=i) for i in ids), tmp_path / "in", records_per_shard=6)  # 8 shards
    script = tmp_path / "stage.py"
    script.write_text(KILLED_STAGE)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "in"), str(out), "0.05"],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(list((out / "_dataflow" / "completions").glob("*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _kill_group(proc)
    done = len(list((out / "_dataflow" / "completions").glob("*.json")))
    assert 2 <= done < 8, "the kill should land mid-stage"
    stats = LocalExecutor([Sleep(0.0)], input=str(tmp_path / "in"), output_dir=str(out), workers=2,
                          progress=False).run()
    assert stats["tasks_skipped"] >= 2 and stats["records_out"] == 48
    got = [r.id for r in read_records(out)]
    assert sorted(got) == ids  # every id exactly once


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop any worker of the killed stage (they die with their parent on Linux anyway)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class BadRole(Upper):
    def apply(self, record):
        record.messages, record.text = [{"role": "bot", "content": "x"}], None
        return record


def test_bad_step_output_fails_in_the_producing_stage(shards, tmp_path):
    with pytest.raises(StageError, match=r"shard-00000.jsonl: a record the pipeline produced: messages\[0\].role"):
        run_local(shards, tmp_path / "out", steps=[BadRole()])
