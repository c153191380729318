"""The data-parallel benchmark runs end to end: three layouts, one final loss, ratios written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "data_parallel.py"


@pytest.mark.slow
def test_quick_data_parallel_benchmark(tmp_path):
    out = tmp_path / "data_parallel.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--steps", "3", "--warmup", "1", "--seq-len", "64",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"1 x 2 threads", "2 ranks fsdp", "2 ranks ddp"}
    assert results["1 x 2 threads"]["ratio"] == 1.0
    losses = [r["final_loss"] for r in results.values()]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-4)  # the layouts did the same work
    assert "vs 1 process" in proc.stdout
